//! The payload store as a whole: dedup across keys and namespaces (proved by what `gc`
//! reclaims), `gc` and `verify` on a healthy store, `namespaces()`, and optional operations that
//! a provider lacks answering `Unsupported`.

use super::check::{ensure, ensure_eq, expect_err, BehaviourResult, Failure, Outcome, Step};
use super::fixture::{fresh_namespace, hash_body, pattern, read_body};
use crate::error::ErrorKind;
use crate::hash::ContentHash;
use crate::model::{DeleteOptions, GcReport, GetOptions, Metadata, NoProgress};
use crate::query::Query;
use crate::stowage::Stowage;

async fn gc(store: &Stowage, what: &str) -> Result<GcReport, Failure> {
    store.gc(&NoProgress).await.step(format!("gc {what}"))
}

/// One payload written under two keys of one namespace and a key of another is stored once:
/// purging two of the three references frees nothing, a tombstone still holds its payload, and
/// purging the last reference frees exactly one payload's bytes.
pub async fn dedup_across_keys_and_namespaces(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !(caps.dedup && caps.gc && caps.purge) {
        return Ok(Outcome::Skipped(
            "needs capabilities().dedup, .gc and .purge".into(),
        ));
    }
    let one = fresh_namespace(store, "dedup")?;
    let two = fresh_namespace(store, "dedup")?;
    let payload = pattern(rand::random(), 100_003);
    let hash = ContentHash::of(&payload);
    gc(store, "before the behaviour (sweeping earlier garbage)").await?;

    for (ns, key) in [(&one, "a"), (&one, "b"), (&two, "a")] {
        let info = ns
            .put(key, payload.clone(), Metadata::new())
            .await
            .step(format!("put {}/{key}", ns.namespace()))?;
        ensure_eq!(info.hash, hash, "put {}/{key}: hash", ns.namespace());
    }
    let report = gc(store, "with three references to one payload").await?;
    ensure_eq!(
        (report.blobs_removed, report.bytes_freed),
        (0, 0),
        "gc with every payload referenced: removed blobs and bytes"
    );

    one.purge("a").await.step("purge first/a")?;
    one.purge("b").await.step("purge first/b")?;
    let report = gc(store, "after purging two of three references").await?;
    ensure_eq!(
        (report.blobs_removed, report.bytes_freed),
        (0, 0),
        "gc after purging two of the three keys that share a payload (the third still needs it)"
    );
    let (_, body) = two.get("a").await.step("get second/a after gc")?;
    ensure_eq!(
        hash_body(body, "get second/a after gc").await?,
        (hash, payload.len() as u64),
        "second/a after gc"
    );

    if caps.delete {
        let other = pattern(rand::random(), 5_001);
        one.put("tomb", other, Metadata::new())
            .await
            .step("put first/tomb")?;
        one.delete("tomb", DeleteOptions::default())
            .await
            .step("delete first/tomb")?;
        let report = gc(store, "with a tombstoned key").await?;
        ensure_eq!(
            (report.blobs_removed, report.bytes_freed),
            (0, 0),
            "gc must keep the payload of a deleted (not purged) key: its versions stay readable"
        );
        one.purge("tomb").await.step("purge first/tomb")?;
        let report = gc(store, "after purging the tombstoned key").await?;
        ensure_eq!(
            (report.blobs_removed, report.bytes_freed),
            (1, 5_001),
            "gc after purging the tombstoned key"
        );
    }

    two.purge("a").await.step("purge second/a")?;
    let report = gc(store, "after purging the last reference").await?;
    ensure_eq!(
        (report.blobs_removed, report.bytes_freed),
        (1, payload.len() as u64),
        "gc after purging all three references: one stored copy (a provider that stored three copies frees three times the bytes)"
    );
    let report = gc(store, "a second time").await?;
    ensure_eq!(
        (report.blobs_removed, report.bytes_freed),
        (0, 0),
        "gc run twice: the second run removes nothing"
    );
    Ok(Outcome::Passed)
}

/// On a healthy store `verify` finds nothing wrong and counts what it checked, and `gc` keeps
/// every payload a version (old, latest or tombstone) needs: all stay readable byte-exactly.
pub async fn gc_and_verify_clean(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !(caps.gc || caps.verify) {
        return Ok(Outcome::Skipped(
            "capabilities().gc and .verify are both false".into(),
        ));
    }
    let ns = fresh_namespace(store, "gcv")?;
    let mut written = Vec::new();
    for i in 0..6u64 {
        let payload = pattern(i + rand::random::<u32>() as u64, 1000 + i as usize * 777);
        let key = format!("k/{}", i % 3);
        written.push((
            key.clone(),
            ns.put(&key, payload.clone(), Metadata::new())
                .await
                .step(format!("put {key}"))?,
            payload,
        ));
    }
    if caps.delete {
        ns.delete("k/0", DeleteOptions::default())
            .await
            .step("delete k/0")?;
    }
    if caps.verify {
        let report = store
            .verify(&NoProgress)
            .await
            .step("verify a healthy store")?;
        ensure!(
            report.is_clean(),
            "verify found problems on a healthy store: {:?}",
            report.problems
        );
        ensure!(
            report.records_checked >= 6,
            "verify checked {} record versions; this behaviour alone wrote at least 6",
            report.records_checked
        );
        ensure!(
            report.blobs_checked >= 6,
            "verify re-hashed {} payloads; this behaviour alone stored 6 distinct ones",
            report.blobs_checked
        );
        ensure!(
            report.bytes_checked >= 6 * 1000,
            "verify re-hashed {} bytes; this behaviour alone stored more",
            report.bytes_checked
        );
    }
    if caps.gc {
        gc(store, "a first time").await?;
        let again = gc(store, "a second time").await?;
        ensure_eq!(
            (again.blobs_removed, again.bytes_freed),
            (0, 0),
            "gc run twice: the second run removes nothing"
        );
        ensure!(
            again.blobs_kept >= 6,
            "gc kept {} payloads; this behaviour alone needs 6",
            again.blobs_kept
        );
        // Old versions (and the payload under a tombstone) must survive gc as well as the
        // latest ones; without versions, only the latest of k/1 and k/2 can be read.
        for (key, info, payload) in &written {
            if !caps.versions && (info.version != 2 || key == "k/0") {
                continue;
            }
            let what = format!("get {key} version {} after gc", info.version);
            let (_, body) = ns
                .get_with(
                    key,
                    GetOptions {
                        version: caps.versions.then_some(info.version),
                        range: None,
                    },
                )
                .await
                .step(&what)?;
            ensure!(
                read_body(body, &what).await? == *payload,
                "{what}: payload differs"
            );
        }
    }
    if caps.verify {
        let report = store.verify(&NoProgress).await.step("verify after gc")?;
        ensure!(
            report.is_clean(),
            "verify after gc found problems: {:?}",
            report.problems
        );
    }
    Ok(Outcome::Passed)
}

/// `namespaces()` lists the namespaces that hold at least one record (a tombstone counts), and
/// no longer one whose every key was purged.
pub async fn namespaces_listed(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !caps.list_namespaces {
        return Ok(Outcome::Skipped(
            "capabilities().list_namespaces is false".into(),
        ));
    }
    let one = fresh_namespace(store, "nsl")?;
    let two = fresh_namespace(store, "nsl")?;
    let unused = fresh_namespace(store, "nsl")?;
    one.put("x", "1", Metadata::new())
        .await
        .step("put x in the first namespace")?;
    two.put("y", "2", Metadata::new())
        .await
        .step("put y in the second namespace")?;
    let listed = store.namespaces().await.step("namespaces()")?;
    for ns in [&one, &two] {
        ensure!(
            listed.contains(ns.namespace()),
            "namespaces() misses {} which holds a record: {listed:?}",
            ns.namespace()
        );
    }
    ensure!(
        !listed.contains(unused.namespace()),
        "namespaces() lists {} which was never written",
        unused.namespace()
    );
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    ensure_eq!(
        listed,
        sorted,
        "namespaces() must be sorted and without duplicates"
    );
    if caps.delete {
        two.delete("y", DeleteOptions::default())
            .await
            .step("delete y")?;
        let listed = store
            .namespaces()
            .await
            .step("namespaces() after a delete")?;
        ensure!(
            listed.contains(two.namespace()),
            "namespaces() drops {} although it holds a tombstone",
            two.namespace()
        );
    }
    if caps.purge {
        two.purge("y").await.step("purge y")?;
        let listed = store
            .namespaces()
            .await
            .step("namespaces() after purging every key")?;
        ensure!(
            !listed.contains(two.namespace()),
            "namespaces() still lists {} after its only key was purged",
            two.namespace()
        );
        ensure!(
            listed.contains(one.namespace()),
            "namespaces() lost {} after another namespace was purged",
            one.namespace()
        );
    }
    Ok(Outcome::Passed)
}

/// Every optional operation the capabilities deny answers `Unsupported` — not a panic, not a
/// silent success — and changes nothing.
pub async fn unsupported_operations_say_so(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    let ns = fresh_namespace(store, "unsup")?;
    ns.put("k", "payload", Metadata::new())
        .await
        .step("put k")?;
    let kind = ErrorKind::Unsupported;
    let mut checked = Vec::new();
    if !caps.delete {
        expect_err(
            ns.delete("k", DeleteOptions::default()).await,
            kind,
            "delete without capabilities().delete",
        )?;
        checked.push("delete");
    }
    if !caps.search {
        expect_err(
            ns.search(&Query::new()).await,
            kind,
            "search without capabilities().search",
        )?;
        checked.push("search");
    }
    if !caps.versions {
        expect_err(
            ns.versions("k").await,
            kind,
            "versions without capabilities().versions",
        )?;
        checked.push("versions");
    }
    if !caps.restore {
        expect_err(
            ns.restore("k", None).await,
            kind,
            "restore without capabilities().restore",
        )?;
        checked.push("restore");
    }
    if !caps.purge {
        expect_err(
            ns.purge("k").await,
            kind,
            "purge without capabilities().purge",
        )?;
        checked.push("purge");
    }
    if !caps.gc {
        expect_err(
            store.gc(&NoProgress).await,
            kind,
            "gc without capabilities().gc",
        )?;
        checked.push("gc");
    }
    if !caps.verify {
        expect_err(
            store.verify(&NoProgress).await,
            kind,
            "verify without capabilities().verify",
        )?;
        checked.push("verify");
    }
    if !caps.list_namespaces {
        expect_err(
            store.namespaces().await,
            kind,
            "namespaces without capabilities().list_namespaces",
        )?;
        checked.push("namespaces");
    }
    let (info, body) = ns
        .get("k")
        .await
        .step("get k after the unsupported calls")?;
    ensure_eq!(info.version, 1, "k's version after the unsupported calls");
    ensure_eq!(
        read_body(body, "get k").await?,
        b"payload".to_vec(),
        "k's payload after the unsupported calls"
    );
    if checked.is_empty() {
        return Ok(Outcome::Skipped(
            "the provider supports every optional operation; nothing to check".into(),
        ));
    }
    Ok(Outcome::Passed)
}
