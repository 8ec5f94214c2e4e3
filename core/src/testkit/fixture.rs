//! What behaviours set up: a fresh namespace per behaviour, deterministic payloads, bodies that
//! really stream, and reading a body back without trusting the provider's hash.

use bytes::Bytes;
use futures::stream;

use super::check::{Failure, Step};
use crate::body::Body;
use crate::hash::{ContentHash, ContentHasher};
use crate::stowage::{NamespaceHandle, Stowage};

/// A handle on a namespace no other behaviour (and no earlier run) uses: `ck-<label>-<random>`.
///
/// `label` must be lowercase ASCII letters, digits, `-` or `_` (at most 40 bytes).
pub fn fresh_namespace(store: &Stowage, label: &str) -> Result<NamespaceHandle, Failure> {
    let name = format!("ck-{label}-{:016x}", rand::random::<u64>());
    store
        .namespace(&name)
        .step(format!("opening fresh namespace {name:?}"))
}

/// `len` bytes of a deterministic pseudo-random pattern chosen by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        // xorshift64*: cheap, and every seed gives a different payload (so hashes differ).
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// `bytes` as a stream of `chunk`-sized pieces with no size given: what a caller streaming a
/// payload of unknown length hands a provider.
pub fn chunked_body(bytes: &[u8], chunk: usize) -> Body {
    let pieces: Vec<crate::Result<Bytes>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(stream::iter(pieces), None)
}

/// A body that yields `total` pattern bytes in `chunk`-sized chunks, generated lazily so the
/// whole payload is never in memory on the writing side; returns the expected hash too.
pub fn streamed_body(
    seed: u64,
    total: usize,
    chunk: usize,
    with_size_hint: bool,
) -> (Body, ContentHash) {
    let mut hasher = ContentHasher::new();
    let mut offset = 0;
    while offset < total {
        let n = chunk.min(total - offset);
        hasher.update(&pattern(seed.wrapping_add(offset as u64), n));
        offset += n;
    }
    let (hash, _) = hasher.finish();
    let chunks = stream::unfold(0usize, move |offset| async move {
        if offset >= total {
            return None;
        }
        let n = chunk.min(total - offset);
        let bytes = Bytes::from(pattern(seed.wrapping_add(offset as u64), n));
        Some((Ok(bytes), offset + n))
    });
    let hint = with_size_hint.then_some(total as u64);
    (Body::from_stream(chunks, hint), hash)
}

/// Bytes `start..end` of the payload [`streamed_body`] yields for the same `seed` and `chunk`,
/// regenerated without building the whole payload.
pub fn streamed_slice(seed: u64, chunk: usize, start: usize, end: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(end.saturating_sub(start));
    let mut offset = start - start % chunk;
    while offset < end {
        let bytes = pattern(seed.wrapping_add(offset as u64), chunk);
        let from = start.saturating_sub(offset);
        let to = (end - offset).min(chunk);
        out.extend_from_slice(&bytes[from..to]);
        offset += chunk;
    }
    out
}

/// Reads a body chunk by chunk, hashing what arrives; returns the hash and size actually read.
pub async fn hash_body(mut body: Body, what: &str) -> Result<(ContentHash, u64), Failure> {
    let mut hasher = ContentHasher::new();
    while let Some(chunk) = body.next_chunk().await {
        let chunk = chunk.step(format!("{what}: reading the payload stream"))?;
        hasher.update(&chunk);
    }
    Ok(hasher.finish())
}

/// Reads a (small) body whole.
pub async fn read_body(body: Body, what: &str) -> Result<Vec<u8>, Failure> {
    Ok(body
        .into_bytes()
        .await
        .step(format!("{what}: reading the payload"))?
        .to_vec())
}

/// Lists every key of a handle's namespace (following cursors), tombstones included or not.
pub async fn all_keys(
    handle: &NamespaceHandle,
    include_deleted: bool,
) -> Result<Vec<String>, Failure> {
    let items = handle
        .list_all(crate::ListOptions {
            include_deleted,
            ..Default::default()
        })
        .await
        .step("listing the whole namespace")?;
    Ok(items.into_iter().map(|i| i.key.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_body_matches_its_hash_and_slices() {
        let (body, hash) = streamed_body(42, 1000, 64, true);
        assert_eq!(body.size_hint(), Some(1000));
        let whole = body.into_bytes().await.unwrap();
        assert_eq!(whole.len(), 1000);
        assert_eq!(ContentHash::of(&whole), hash);
        for (start, end) in [(0, 1000), (100, 900), (63, 65), (64, 128), (999, 1000)] {
            assert_eq!(
                streamed_slice(42, 64, start, end),
                whole[start..end],
                "{start}..{end}"
            );
        }
        let (other, other_hash) = streamed_body(43, 1000, 64, false);
        assert_eq!(other.size_hint(), None);
        assert_ne!(other_hash, hash, "another seed gives another payload");
    }

    #[test]
    fn patterns_differ_by_seed_and_keep_their_length() {
        assert_eq!(pattern(1, 13).len(), 13);
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(5, 64), pattern(5, 64));
    }
}
