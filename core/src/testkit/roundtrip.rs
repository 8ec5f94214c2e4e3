//! Payloads and metadata come back exactly as written: sizes from empty to a streamed 8 MiB,
//! every byte value, metadata with nested JSON, and byte ranges.

use serde_json::json;

use super::check::{ensure, ensure_eq, expect_err, BehaviourResult, Failure, Outcome, Step};
use super::fixture::{
    fresh_namespace, hash_body, pattern, read_body, streamed_body, streamed_slice,
};
use crate::body::Body;
use crate::error::ErrorKind;
use crate::hash::ContentHash;
use crate::model::{ByteRange, GetOptions, ListOptions, Metadata, RecordInfo};
use crate::stowage::{NamespaceHandle, Stowage};

/// Checks the info a put returned, then that `head`, `get` and `list` return the same info and
/// the same bytes.
async fn check_round_trip(
    handle: &NamespaceHandle,
    key: &str,
    payload: &[u8],
    metadata: Metadata,
) -> Result<RecordInfo, Failure> {
    let what = format!("put of {} bytes under {key:?}", payload.len());
    let info = handle
        .put(key, payload.to_vec(), metadata.clone())
        .await
        .step(&what)?;
    check_new_info(
        &info,
        handle,
        key,
        ContentHash::of(payload),
        payload.len() as u64,
        &what,
    )?;
    ensure_eq!(
        info.metadata,
        metadata,
        "{what}: metadata of the returned info"
    );

    let head = handle.head(key, None).await.step(format!("head {key:?}"))?;
    ensure_eq!(
        head,
        info,
        "head {key:?} after {what} must return what the put returned"
    );

    let (got, body) = handle.get(key).await.step(format!("get {key:?}"))?;
    ensure_eq!(got, info, "get {key:?}: info");
    let bytes = read_body(body, &format!("get {key:?}")).await?;
    ensure!(
        bytes == payload,
        "get {key:?}: payload differs from what was put ({} bytes read, {} written; first difference at byte {:?})",
        bytes.len(),
        payload.len(),
        bytes.iter().zip(payload).position(|(a, b)| a != b)
    );

    let page = handle
        .list(ListOptions {
            prefix: Some(key.to_string()),
            ..Default::default()
        })
        .await
        .step(format!("list with prefix {key:?}"))?;
    let listed: Vec<&RecordInfo> = page
        .items
        .iter()
        .filter(|i| i.key.as_str() == key)
        .collect();
    ensure_eq!(listed, vec![&info], "list with prefix {key:?}: the record");
    Ok(info)
}

/// The fields of the first version of a key, as a put returned them.
fn check_new_info(
    info: &RecordInfo,
    handle: &NamespaceHandle,
    key: &str,
    hash: ContentHash,
    size: u64,
    what: &str,
) -> Result<(), Failure> {
    ensure_eq!(
        info.namespace,
        *handle.namespace(),
        "{what}: namespace of the returned info"
    );
    ensure_eq!(info.key.as_str(), key, "{what}: key of the returned info");
    ensure_eq!(info.version, 1, "{what}: the first version of a key");
    ensure_eq!(info.hash, hash, "{what}: hash of the returned info");
    ensure_eq!(info.size, size, "{what}: size of the returned info");
    ensure_eq!(info.deleted_at, None, "{what}: deleted_at of a live record");
    ensure_eq!(
        info.created_at,
        info.updated_at,
        "{what}: created_at and updated_at of a key's first version"
    );
    Ok(())
}

/// An empty payload is a record like any other (hash of zero bytes, size 0).
pub async fn round_trip_empty(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "rt-empty")?;
    check_round_trip(&ns, "empty", b"", Metadata::new()).await?;
    // An empty body that streams (no chunks at all) must give the same record.
    let info = ns
        .put(
            "empty-stream",
            Body::from_stream(futures::stream::empty(), None),
            Metadata::new(),
        )
        .await
        .step("put of an empty stream")?;
    ensure_eq!(info.size, 0, "put of an empty stream: size");
    ensure_eq!(
        info.hash,
        ContentHash::of(b""),
        "put of an empty stream: hash"
    );
    Ok(Outcome::Passed)
}

/// A one-byte payload round-trips.
pub async fn round_trip_one_byte(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "rt-one")?;
    check_round_trip(&ns, "one", b"\x00", Metadata::new()).await?;
    check_round_trip(&ns, "one-ff", b"\xff", Metadata::new()).await?;
    Ok(Outcome::Passed)
}

/// Every byte value 0..=255 round-trips in order (no text re-encoding, no NUL truncation).
pub async fn round_trip_all_byte_values(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "rt-bytes")?;
    let all: Vec<u8> = (0..=255u8).collect();
    check_round_trip(&ns, "bytes/ascending", &all, Metadata::new()).await?;
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    check_round_trip(&ns, "bytes/descending", &reversed, Metadata::new()).await?;
    let binary = pattern(7, 64 * 1024 + 3);
    check_round_trip(&ns, "bytes/pattern", &binary, Metadata::new()).await?;
    Ok(Outcome::Passed)
}

/// An 8 MiB payload streamed in 64 KiB chunks (with and without a size hint) is stored with the
/// right hash and size, and streams back intact.
pub async fn round_trip_large_streamed(store: &Stowage) -> BehaviourResult {
    const SIZE: usize = 8 * 1024 * 1024;
    let ns = fresh_namespace(store, "rt-large")?;
    for (key, chunk, hint) in [
        ("large/hinted", 64 * 1024, true),
        ("large/unhinted", 100_000, false),
    ] {
        let seed = rand::random::<u64>();
        let (body, hash) = streamed_body(seed, SIZE, chunk, hint);
        let what = format!("streamed put of 8 MiB under {key:?} (size hint: {hint})");
        let info = ns.put(key, body, Metadata::new()).await.step(&what)?;
        check_new_info(&info, &ns, key, hash, SIZE as u64, &what)?;
        let (got, body) = ns.get(key).await.step(format!("get {key:?}"))?;
        ensure_eq!(got, info, "get {key:?}: info");
        let (read_hash, read_size) = hash_body(body, &format!("get {key:?}")).await?;
        ensure_eq!(read_size, SIZE as u64, "get {key:?}: bytes streamed back");
        ensure_eq!(
            read_hash,
            hash,
            "get {key:?}: hash of the bytes streamed back"
        );
    }
    // A range from the middle of a large payload, across chunk boundaries.
    let seed = rand::random::<u64>();
    let (body, _) = streamed_body(seed, SIZE, 64 * 1024, true);
    ns.put("large/ranged", body, Metadata::new())
        .await
        .step("streamed put of large/ranged")?;
    let (start, end) = (SIZE as u64 / 2 - 100_000, SIZE as u64 / 2 + 100_000);
    let what = format!("get large/ranged with range {start}..{end}");
    let (_, body) = ns
        .get_with(
            "large/ranged",
            GetOptions {
                version: None,
                range: Some(ByteRange {
                    start,
                    end: Some(end),
                }),
            },
        )
        .await
        .step(&what)?;
    let got = read_body(body, &what).await?;
    ensure!(
        got == streamed_slice(seed, 64 * 1024, start as usize, end as usize),
        "{what}: {} bytes came back that differ from the payload's bytes {start}..{end}",
        got.len()
    );
    Ok(Outcome::Passed)
}

/// A payload stream that fails part-way makes the put fail and writes nothing: a new key stays
/// absent, an existing one keeps its version, and `verify` finds no dangling reference.
pub async fn failed_body_writes_nothing(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "badbody")?;
    let broken = || {
        let chunks: Vec<crate::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::from(pattern(1, 300_000))),
            Ok(bytes::Bytes::from(pattern(2, 300_000))),
            Err(crate::Error::io(
                "reading the client's upload",
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the client went away"),
            )),
        ];
        Body::from_stream(futures::stream::iter(chunks), Some(1_000_000))
    };
    let result = ns.put("new", broken(), Metadata::new()).await;
    ensure!(
        result.is_err(),
        "put with a payload stream that fails must fail, got {result:?}"
    );
    expect_err(
        ns.head("new", None).await,
        ErrorKind::NotFound,
        "head after a failed put of a new key",
    )?;
    ensure!(
        super::fixture::all_keys(&ns, true).await?.is_empty(),
        "a failed put left a record in the listing"
    );

    let v1 = ns
        .put("old", "kept", Metadata::new())
        .await
        .step("put old")?;
    let result = ns.put("old", broken(), Metadata::new()).await;
    ensure!(
        result.is_err(),
        "second put with a failing stream must fail, got {result:?}"
    );
    let (info, body) = ns.get("old").await.step("get old after a failed put")?;
    ensure_eq!(info, v1, "old after a failed put (nothing may be written)");
    ensure_eq!(
        read_body(body, "get old").await?,
        b"kept".to_vec(),
        "old's payload after a failed put"
    );
    let next = ns
        .put("old", "next", Metadata::new())
        .await
        .step("put old after the failed put")?;
    ensure_eq!(
        next.version,
        2,
        "the failed put must not use up a version number"
    );
    if store.capabilities().verify {
        let report = store
            .verify(&crate::NoProgress)
            .await
            .step("verify after failed puts")?;
        ensure!(
            report.is_clean(),
            "verify after failed puts found problems: {:?}",
            report.problems
        );
    }
    Ok(Outcome::Passed)
}

/// A payload stream that yields more or fewer bytes than the size it declared (a transfer cut
/// short, a file changed while it was read) fails the put with `InvalidInput` and writes
/// nothing, small or large, over a new key or an existing one.
pub async fn body_of_another_size_writes_nothing(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "badsize")?;
    let v1 = ns
        .put("old", "kept", Metadata::new())
        .await
        .step("put old")?;
    let cases: [(&str, Vec<usize>, u64); 5] = [
        ("11 bytes declaring 8", vec![11], 8),
        ("11 bytes declaring 14", vec![11], 14),
        ("nothing declaring 5", vec![], 5),
        (
            "600 000 bytes declaring 599 999",
            vec![300_000, 300_000],
            599_999,
        ),
        (
            "600 000 bytes declaring 600 001",
            vec![300_000, 300_000],
            600_001,
        ),
    ];
    for (what, chunks, declared) in cases {
        let body = || {
            let chunks: Vec<crate::Result<bytes::Bytes>> = chunks
                .iter()
                .enumerate()
                .map(|(i, &n)| Ok(bytes::Bytes::from(pattern(i as u64 + 7, n))))
                .collect();
            Body::from_stream(futures::stream::iter(chunks), Some(declared))
        };
        for key in ["new", "old"] {
            let result = ns.put(key, body(), Metadata::new()).await;
            match result {
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                other => {
                    return Err(Failure::new(format!(
                        "put of {key} with {what}: expected InvalidInput, got {other:?}"
                    )))
                }
            }
        }
        expect_err(
            ns.head("new", None).await,
            ErrorKind::NotFound,
            format!("head of new after a put with {what}"),
        )?;
        let (info, body) = ns.get("old").await.step("get old")?;
        ensure_eq!(
            info,
            v1,
            "old after a put with {what} (nothing may be written)"
        );
        ensure_eq!(
            read_body(body, "get old").await?,
            b"kept".to_vec(),
            "old's payload after a put with {what}"
        );
    }
    let next = ns
        .put("old", "next", Metadata::new())
        .await
        .step("put old after the refused puts")?;
    ensure_eq!(
        next.version,
        2,
        "the refused puts must not use up version numbers"
    );
    Ok(Outcome::Passed)
}

/// Content type, tags and attributes (including nested JSON, numbers, booleans, null, unicode)
/// come back exactly, from every operation that returns metadata.
pub async fn metadata_round_trip(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "rt-meta")?;
    let rich = Metadata::new()
        .with_content_type("application/json; charset=utf-8")
        .with_tag("prod")
        .with_tag("tapes")
        .with_tag("ünïcode tag")
        .with_attribute("status", 200)
        .with_attribute("ratio", 0.25)
        .with_attribute("negative", -17)
        .with_attribute("ok", true)
        .with_attribute("nothing", serde_json::Value::Null)
        .with_attribute("when", "2025-01-02T03:04:05Z")
        .with_attribute("name", "日本語 \"quoted\" \\ back")
        .with_attribute(
            "nested",
            json!({"a": [1, 2, {"b": null}], "c": {"d": "e"}, "empty": {}, "list": []}),
        );
    check_round_trip(&ns, "meta/rich", b"{}", rich.clone()).await?;
    check_round_trip(&ns, "meta/none", b"x", Metadata::new()).await?;
    let only_type = Metadata::new().with_content_type("text/plain");
    check_round_trip(&ns, "meta/type-only", b"y", only_type).await?;

    // A new version carries its own metadata, not a merge with the previous one.
    let second = Metadata::new().with_tag("second");
    let v2 = ns
        .put("meta/rich", "[]", second.clone())
        .await
        .step("second put of meta/rich")?;
    ensure_eq!(
        v2.metadata,
        second,
        "second put of meta/rich: metadata must replace, not merge"
    );
    let head = ns.head("meta/rich", None).await.step("head meta/rich")?;
    ensure_eq!(
        head.metadata,
        second,
        "head meta/rich after the second put: metadata"
    );
    if store.capabilities().versions {
        let old = ns
            .head("meta/rich", Some(1))
            .await
            .step("head meta/rich version 1")?;
        ensure_eq!(
            old.metadata,
            rich,
            "head meta/rich version 1: metadata of the old version"
        );
    }
    Ok(Outcome::Passed)
}

/// Byte ranges: `[start, end)`, open end, end past the payload (clamped), ranges of old
/// versions, and a start past the payload or an end before the start are `InvalidInput`.
pub async fn byte_ranges(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "ranges")?;
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let info = ns
        .put("ranged", payload.clone(), Metadata::new())
        .await
        .step("put ranged")?;
    let cases: [(u64, Option<u64>); 6] = [
        (0, Some(10)),
        (100, Some(200)),
        (4000, None),
        (0, None),
        (4095, Some(4096)),
        (4090, Some(10_000)),
    ];
    for (start, end) in cases {
        let what = format!("get ranged with range {start}..{end:?}");
        let (got, body) = ns
            .get_with(
                "ranged",
                GetOptions {
                    version: None,
                    range: Some(ByteRange { start, end }),
                },
            )
            .await
            .step(&what)?;
        ensure_eq!(got, info, "{what}: the info describes the whole record");
        let bytes = read_body(body, &what).await?;
        let stop = end.unwrap_or(4096).min(4096) as usize;
        ensure!(
            bytes == payload[start as usize..stop],
            "{what}: expected bytes {start}..{stop} ({} bytes), got {} bytes that differ",
            stop - start as usize,
            bytes.len()
        );
    }
    // A start at the payload's end is past its last byte, as in HTTP.
    for (start, end) in [
        (5000u64, None),
        (5000, Some(6000)),
        (20, Some(10)),
        (4096, None),
        (4096, Some(5000)),
    ] {
        expect_err(
            ns.get_with(
                "ranged",
                GetOptions {
                    version: None,
                    range: Some(ByteRange { start, end }),
                },
            )
            .await,
            ErrorKind::InvalidInput,
            format!("get ranged with the invalid range {start}..{end:?}"),
        )?;
    }
    if store.capabilities().versions {
        ns.put("ranged", "new version", Metadata::new())
            .await
            .step("second put of ranged")?;
        let what = "get ranged version 1 with range 10..20";
        let (got, body) = ns
            .get_with(
                "ranged",
                GetOptions {
                    version: Some(1),
                    range: Some(ByteRange {
                        start: 10,
                        end: Some(20),
                    }),
                },
            )
            .await
            .step(what)?;
        ensure_eq!(got.version, 1, "{what}: version");
        ensure_eq!(
            read_body(body, what).await?,
            payload[10..20].to_vec(),
            "{what}: bytes"
        );
    }
    Ok(Outcome::Passed)
}
