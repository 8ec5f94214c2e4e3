//! A large, varied set of records for the copy tests, written through the library (one CLI
//! process per record would take minutes), and the comparisons that prove two stores hold the
//! same records.
//!
//! The corpus: `keys` keys spread over three namespaces; most payloads small (16 B – 2 KiB),
//! a few large (1, 2, 4 and 8 MiB, and some that cross the 256 KiB streaming chunk), some
//! identical (dedup); every 10th key has three versions, every 25th ends as a tombstone, every
//! 50th is then restored.

#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use stowage_core::{
    DeleteOptions, ErrorKind, ListOptions, Metadata, RecordInfo, Registry, Stowage,
};

/// The namespaces the corpus writes to.
pub const NAMESPACES: [&str; 3] = ["default", "tenant-a", "tenant-b"];

/// What [`populate`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Keys written.
    pub keys: u64,
    /// Versions written (puts, tombstones, restores).
    pub versions: u64,
    /// Payload bytes of every put.
    pub bytes: u64,
}

/// Opens a store of `provider` with `config` in an isolated registry of the built-ins.
pub async fn open(provider: &str, config: Value) -> Stowage {
    let registry = Arc::new(Registry::new());
    stowage_providers::register_all(&registry).unwrap();
    Stowage::builder()
        .registry(registry)
        .with_storage(provider, config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("opening a {provider} store: {e}"))
}

/// The payload size of key `i`.
fn size_of(i: u64) -> usize {
    const MIB: usize = 1 << 20;
    match i {
        1 => 8 * MIB,
        2 => 4 * MIB,
        3 | 4 => 2 * MIB,
        5..=8 => MIB,
        _ if i % 1000 == 7 => 300 * 1024 + 5,
        _ => 16 + (mix(i) % 2032) as usize,
    }
}

/// A cheap deterministic hash of a number (splitmix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` pseudo-random bytes from `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed;
    while out.len() < len {
        state = mix(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The namespace and key of record `i`.
pub fn place(i: u64) -> (&'static str, String) {
    (
        NAMESPACES[(i % 3) as usize],
        format!("rec/{:02}/{i:05}.bin", i % 17),
    )
}

/// Writes the corpus of `keys` keys into `store`, `concurrency` keys at a time.
pub async fn populate(store: &Stowage, keys: u64, concurrency: usize) -> Written {
    futures::stream::iter(0..keys)
        .map(|i| write_key(store, i))
        .buffer_unordered(concurrency)
        .try_fold(
            Written {
                keys: 0,
                versions: 0,
                bytes: 0,
            },
            |acc, w| async move {
                Ok::<_, stowage_core::Error>(Written {
                    keys: acc.keys + w.keys,
                    versions: acc.versions + w.versions,
                    bytes: acc.bytes + w.bytes,
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("populating the source store: {e}"))
}

async fn write_key(store: &Stowage, i: u64) -> stowage_core::Result<Written> {
    let (ns, key) = place(i);
    let h = store.namespace(ns)?;
    let mut w = Written {
        keys: 1,
        versions: 0,
        bytes: 0,
    };
    let rounds = if i.is_multiple_of(10) { 3 } else { 1 };
    for round in 0..rounds {
        // Every 101st key repeats key 0's first payload: the target must dedup, not mix up.
        let seed = if i.is_multiple_of(101) && round == 0 {
            0
        } else {
            i * 4 + round
        };
        let payload = bytes(seed, if seed == 0 { size_of(0) } else { size_of(i) });
        let mut meta = Metadata::new()
            .with_tag(format!("batch-{}", i % 5))
            .with_attribute("n", i)
            .with_attribute("round", round);
        if i.is_multiple_of(3) {
            meta = meta.with_content_type("application/octet-stream");
        }
        w.bytes += payload.len() as u64;
        h.put(&key, payload, meta).await?;
        w.versions += 1;
    }
    if i.is_multiple_of(25) {
        h.delete(&key, DeleteOptions::default()).await?;
        w.versions += 1;
        if i.is_multiple_of(50) {
            h.restore(&key, None).await?;
            w.versions += 1;
        }
    }
    Ok(w)
}

/// The fields of a record that a copy preserves (timestamps are the target's own).
pub fn comparable(record: &Value) -> Value {
    serde_json::json!({
        "namespace": record["namespace"],
        "key": record["key"],
        "version": record["version"],
        "hash": record["hash"],
        "size": record["size"],
        "content_type": record["content_type"],
        "tags": record["tags"],
        "attributes": record["attributes"],
        "deleted": !record["deleted_at"].is_null(),
    })
}

/// Every version of every key (tombstones included) of every namespace of `store`, as
/// comparable JSON, read through the library.
pub async fn all_histories(store: &Stowage) -> BTreeMap<(String, String), Vec<Value>> {
    let mut out = BTreeMap::new();
    for ns in NAMESPACES {
        let h = store.namespace(ns).unwrap();
        let listing = h
            .list_all(ListOptions {
                include_deleted: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let histories: Vec<(String, Vec<RecordInfo>)> = futures::stream::iter(listing)
            .map(|info| {
                let h = h.clone();
                async move {
                    let key = info.key.to_string();
                    let versions = h.versions(&key).await.unwrap();
                    (key, versions)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (key, versions) in histories {
            let json = versions.iter().map(|v| comparable(&v.to_json())).collect();
            out.insert((ns.to_string(), key), json);
        }
    }
    out
}

/// A tokio runtime for the library parts of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Checks that `store` holds every version of `histories` (from [`all_histories`] of another
/// store) with the same hash, size and metadata, reading each version by number: a live one
/// must read back equal, a tombstone must answer `NotFound` for its number. With the latest
/// version of every key compared separately (a listing), and versions numbered contiguously
/// from 1 by every provider, that proves the histories equal. One read per version rather than
/// a `versions` call per key: on an object store that is a GET each instead of a LIST each,
/// and the S3 test server answers a LIST by scanning the whole bucket.
pub async fn assert_holds_histories(
    store: &Stowage,
    histories: &BTreeMap<(String, String), Vec<Value>>,
) {
    let checks: Vec<(String, String, Value)> = histories
        .iter()
        .flat_map(|((ns, key), history)| {
            history
                .iter()
                .map(move |v| (ns.clone(), key.clone(), v.clone()))
        })
        .collect();
    futures::stream::iter(checks)
        .for_each_concurrent(16, |(ns, key, expected)| async move {
            let h = store.namespace(&ns).unwrap();
            let version = expected["version"].as_u64().unwrap();
            let found = h.head(&key, Some(version)).await;
            if expected["deleted"] == Value::Bool(true) {
                let err = found.expect_err("a tombstone version read back as live");
                assert_eq!(
                    err.kind(),
                    ErrorKind::NotFound,
                    "{ns}/{key} v{version}: {err}"
                );
            } else {
                let info = found.unwrap_or_else(|e| panic!("{ns}/{key} v{version}: {e}"));
                assert_eq!(
                    comparable(&info.to_json()),
                    expected,
                    "{ns}/{key} version {version}"
                );
            }
        })
        .await;
}
