//! Conditional writes: `Create`, `IfVersion`, `Base`, conditional deletes, and racing writers —
//! a failed precondition is `Conflict { current }` and writes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::check::{
    ensure, ensure_eq, expect_conflict, expect_err, BehaviourResult, Failure, Outcome, Step,
};
use super::fixture::{fresh_namespace, read_body};
use crate::error::{Error, ErrorKind};
use crate::model::{DeleteOptions, Metadata, PutMode, RecordInfo};
use crate::stowage::{NamespaceHandle, Stowage};

/// Requires the latest version of `key` to be `expected` exactly, with `payload`.
async fn unchanged(
    ns: &NamespaceHandle,
    key: &str,
    expected: &RecordInfo,
    payload: &[u8],
    after: &str,
) -> Result<(), Failure> {
    let (info, body) = ns
        .get(key)
        .await
        .step(format!("get {key:?} after {after}"))?;
    ensure_eq!(
        info,
        *expected,
        "{key:?} after {after} (a failed precondition writes nothing)"
    );
    let bytes = read_body(body, &format!("get {key:?} after {after}")).await?;
    ensure!(
        bytes == payload,
        "{key:?} after {after}: the payload changed although the write was refused"
    );
    Ok(())
}

/// `Create` writes only when the key has no live version; otherwise `Conflict` with the current
/// version, and nothing is written. After a delete, `Create` succeeds again.
pub async fn put_create(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !caps.create_only {
        return Ok(Outcome::Skipped(
            "capabilities().create_only is false".into(),
        ));
    }
    let ns = fresh_namespace(store, "create")?;
    let v1 = ns
        .put_with("doc", "first", Metadata::new(), PutMode::Create)
        .await
        .step("Create on an absent key")?;
    ensure_eq!(v1.version, 1, "Create on an absent key: version");
    expect_conflict(
        ns.put_with(
            "doc",
            "second",
            Metadata::new().with_tag("x"),
            PutMode::Create,
        )
        .await,
        Some(1),
        "Create on an existing key",
    )?;
    unchanged(&ns, "doc", &v1, b"first", "a refused Create").await?;
    if caps.versions {
        let n = ns
            .versions("doc")
            .await
            .step("versions after a refused Create")?
            .len();
        ensure_eq!(n, 1, "number of versions after a refused Create");
    }
    if caps.delete {
        ns.delete("doc", DeleteOptions::default())
            .await
            .step("delete doc")?;
        let v3 = ns
            .put_with("doc", "third", Metadata::new(), PutMode::Create)
            .await
            .step("Create on a deleted key")?;
        ensure_eq!(
            v3.version,
            3,
            "Create on a deleted key: version (after the tombstone)"
        );
    }
    Ok(Outcome::Passed)
}

/// Shared by `IfVersion` and (on non-merging providers) `Base`: stale and absent versions
/// conflict with the current version and write nothing; the right one writes; tombstones count.
async fn check_version_precondition(
    store: &Stowage,
    label: &str,
    mode: fn(u64) -> PutMode,
) -> BehaviourResult {
    let caps = store.capabilities();
    let ns = fresh_namespace(store, label)?;
    let name = format!("{:?}", mode(1));
    expect_conflict(
        ns.put_with("doc", "x", Metadata::new(), mode(1)).await,
        None,
        format!("{name} on an absent key"),
    )?;
    expect_err(
        ns.head("doc", None).await,
        ErrorKind::NotFound,
        format!("head after a refused {name} on an absent key"),
    )?;

    // Version 0 names "no version at all": it creates the key, once.
    let v1 = ns
        .put_with("doc", "one", Metadata::new(), mode(0))
        .await
        .step(format!("{:?} on an absent key", mode(0)))?;
    ensure_eq!(v1.version, 1, "{:?} on an absent key: version", mode(0));
    let v2 = ns
        .put_with("doc", "two", Metadata::new(), mode(1))
        .await
        .step(format!("{name} with the current version"))?;
    ensure_eq!(v2.version, 2, "{name} with the current version: version");
    ensure_eq!(
        v2.created_at,
        v1.created_at,
        "{name} with the current version: created_at"
    );
    for stale in [1u64, 3, 0] {
        expect_conflict(
            ns.put_with("doc", "stale", Metadata::new(), mode(stale))
                .await,
            Some(2),
            format!("{:?} when the current version is 2", mode(stale)),
        )?;
    }
    unchanged(&ns, "doc", &v2, b"two", &format!("refused {name} writes")).await?;
    if caps.delete {
        ns.delete("doc", DeleteOptions::default())
            .await
            .step("delete doc")?;
        expect_conflict(
            ns.put_with("doc", "x", Metadata::new(), mode(2)).await,
            Some(3),
            format!("{:?} when the latest version is the tombstone 3", mode(2)),
        )?;
        let v4 = ns
            .put_with("doc", "four", Metadata::new(), mode(3))
            .await
            .step(format!("{:?} on the tombstone's version", mode(3)))?;
        ensure_eq!(v4.version, 4, "{name} after a tombstone: version");
    }
    Ok(Outcome::Passed)
}

/// `IfVersion(v)` writes only when the latest version (tombstones count) is exactly `v`; `0`
/// when the key has no version at all.
pub async fn put_if_version(store: &Stowage) -> BehaviourResult {
    if !store.capabilities().if_version {
        return Ok(Outcome::Skipped(
            "capabilities().if_version is false".into(),
        ));
    }
    check_version_precondition(store, "ifver", PutMode::IfVersion).await
}

/// On a provider that does not merge, `Base(v)` behaves exactly like `IfVersion(v)`.
pub async fn put_base_without_merge(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if caps.merge {
        return Ok(Outcome::Skipped(
            "capabilities().merge is true: Base merges (see race_base_merge)".into(),
        ));
    }
    if !caps.if_version {
        return Ok(Outcome::Skipped(
            "capabilities().if_version is false".into(),
        ));
    }
    check_version_precondition(store, "base", PutMode::Base).await
}

/// `delete` with `if_version` deletes only when the latest version is that one; otherwise
/// `Conflict` and nothing written.
pub async fn delete_if_version(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !(caps.delete && caps.if_version) {
        return Ok(Outcome::Skipped(
            "needs capabilities().delete and .if_version".into(),
        ));
    }
    let ns = fresh_namespace(store, "delver")?;
    ns.put("doc", "one", Metadata::new())
        .await
        .step("put #1 of doc")?;
    let v2 = ns
        .put("doc", "two", Metadata::new())
        .await
        .step("put #2 of doc")?;
    expect_conflict(
        ns.delete(
            "doc",
            DeleteOptions {
                if_version: Some(1),
            },
        )
        .await,
        Some(2),
        "delete with if_version 1 when the current version is 2",
    )?;
    unchanged(&ns, "doc", &v2, b"two", "a refused conditional delete").await?;
    let tomb = ns
        .delete(
            "doc",
            DeleteOptions {
                if_version: Some(2),
            },
        )
        .await
        .step("delete with the current if_version")?;
    ensure_eq!(
        tomb.version,
        3,
        "conditional delete: the tombstone's version"
    );
    expect_err(
        ns.get("doc").await,
        ErrorKind::NotFound,
        "get after a conditional delete",
    )?;
    Ok(Outcome::Passed)
}

const WRITERS: usize = 32;
const STEPS: u64 = 4;

/// Starts `WRITERS` concurrent puts of `key` with `mode`, writer `w` writing `payload(w)`. The
/// writers wait at a barrier until all are running, so their calls overlap as much as the
/// runtime allows. Returns each writer's payload and result, in writer order.
async fn race(
    ns: &NamespaceHandle,
    key: &'static str,
    mode: PutMode,
    metadata: Metadata,
    payload: impl Fn(usize) -> String,
    tag: &str,
) -> Result<Vec<(String, crate::Result<RecordInfo>)>, Failure> {
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::with_capacity(WRITERS);
    for w in 0..WRITERS {
        let (ns, barrier, metadata, payload) =
            (ns.clone(), barrier.clone(), metadata.clone(), payload(w));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = ns.put_with(key, payload.clone(), metadata, mode).await;
            (payload, result)
        }));
    }
    let mut out = Vec::with_capacity(WRITERS);
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| Failure::new(format!("{tag}: a writer task failed: {e}")))?,
        );
    }
    Ok(out)
}

/// Requires exactly one success among racing conditional writes, writing `version`, and every
/// other result to be `Conflict { current: Some(version) }`; returns the winner.
fn one_winner(
    results: Vec<(String, crate::Result<RecordInfo>)>,
    version: u64,
    tag: &str,
) -> Result<(String, RecordInfo), Failure> {
    let mut winners = Vec::new();
    for (payload, result) in results {
        match result {
            Ok(info) => winners.push((payload, info)),
            Err(Error::Conflict { current, .. }) => ensure_eq!(
                current,
                Some(version),
                "{tag}: a losing writer's Conflict must name the winner's version"
            ),
            Err(e) => {
                return Err(Failure::new(format!(
                    "{tag}: a racing writer got {:?} instead of success or Conflict: {e}",
                    e.kind()
                )))
            }
        }
    }
    ensure!(
        winners.len() == 1,
        "{tag}: {} of {WRITERS} racing writers succeeded; exactly one must (they wrote versions {:?})",
        winners.len(),
        winners.iter().map(|(_, i)| i.version).collect::<Vec<_>>()
    );
    let winner = winners.remove(0);
    ensure_eq!(winner.1.version, version, "{tag}: the winner's version");
    Ok(winner)
}

/// 32 writers race `IfVersion(v)` on one key, several times over: each time exactly one wins
/// (writing `v + 1`), every other gets `Conflict { current: v + 1 }`, and the key holds the
/// winner's payload.
pub async fn race_if_version(store: &Stowage) -> BehaviourResult {
    if !store.capabilities().if_version {
        return Ok(Outcome::Skipped(
            "capabilities().if_version is false".into(),
        ));
    }
    let ns = fresh_namespace(store, "race")?;
    ns.put("contended", "start", Metadata::new())
        .await
        .step("put the contended key")?;
    for v in 1..=STEPS {
        let tag = format!("IfVersion({v}) race, step {v}");
        let results = race(
            &ns,
            "contended",
            PutMode::IfVersion(v),
            Metadata::new(),
            |w| format!("step {v} writer {w}"),
            &tag,
        )
        .await?;
        let (payload, info) = one_winner(results, v + 1, &tag)?;
        unchanged(&ns, "contended", &info, payload.as_bytes(), &tag).await?;
    }
    Ok(Outcome::Passed)
}

/// 32 writers race `Create` on an absent key (and, after a delete, on a deleted one): exactly
/// one wins, every other gets `Conflict { current }` naming the winner's version.
pub async fn race_create(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !caps.create_only {
        return Ok(Outcome::Skipped(
            "capabilities().create_only is false".into(),
        ));
    }
    let ns = fresh_namespace(store, "racecreate")?;
    let rounds: &[u64] = if caps.delete { &[1, 3] } else { &[1] };
    for &version in rounds {
        if version > 1 {
            ns.delete("contended", DeleteOptions::default())
                .await
                .step("delete the contended key")?;
        }
        let tag = format!("Create race for version {version}");
        let results = race(
            &ns,
            "contended",
            PutMode::Create,
            Metadata::new(),
            |w| format!("{tag} writer {w}"),
            &tag,
        )
        .await?;
        let (payload, info) = one_winner(results, version, &tag)?;
        unchanged(&ns, "contended", &info, payload.as_bytes(), &tag).await?;
    }
    Ok(Outcome::Passed)
}

/// 32 writers put the same key at once without a precondition: all succeed, each gets its own
/// version number (1 to 32, none twice, none skipped), and each version holds its writer's payload.
pub async fn concurrent_overwrites_get_distinct_versions(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    let ns = fresh_namespace(store, "overwrite")?;
    let mut by_version = std::collections::BTreeMap::new();
    let results = race(
        &ns,
        "busy",
        PutMode::Overwrite,
        Metadata::new(),
        |w| format!("writer {w}"),
        "overwrite race",
    )
    .await?;
    for (payload, result) in results {
        let info = result.step(format!("concurrent put of {payload:?}"))?;
        if let Some(other) = by_version.insert(info.version, payload.clone()) {
            return Err(Failure::new(format!(
                "concurrent puts {other:?} and {payload:?} both got version {}",
                info.version
            )));
        }
    }
    let versions: Vec<u64> = by_version.keys().copied().collect();
    ensure_eq!(
        versions,
        (1..=WRITERS as u64).collect::<Vec<_>>(),
        "versions handed to {WRITERS} concurrent puts"
    );
    let latest = ns
        .head("busy", None)
        .await
        .step("head after the concurrent puts")?;
    ensure_eq!(
        latest.version,
        WRITERS as u64,
        "latest version after the concurrent puts"
    );
    if caps.versions {
        let listed = ns
            .versions("busy")
            .await
            .step("versions after the concurrent puts")?;
        ensure_eq!(listed.len(), WRITERS, "number of versions listed");
        for (version, payload) in &by_version {
            let what = format!("get busy version {version}");
            let (_, body) = ns
                .get_with(
                    "busy",
                    crate::model::GetOptions {
                        version: Some(*version),
                        range: None,
                    },
                )
                .await
                .step(&what)?;
            let bytes = read_body(body, &what).await?;
            ensure!(
                bytes == payload.as_bytes(),
                "{what}: holds {:?}, but that version was returned to the writer of {payload:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    Ok(Outcome::Passed)
}

/// On a merging provider, 32 writers that all read version 1 put with `Base(1)`, each adding
/// its own field to a JSON document: every write succeeds and none is lost — the merged latest
/// version holds every writer's field.
pub async fn race_base_merge(store: &Stowage) -> BehaviourResult {
    if !store.capabilities().merge {
        return Ok(Outcome::Skipped(
            "capabilities().merge is false: Base is IfVersion (see put_base_without_merge)".into(),
        ));
    }
    let ns = fresh_namespace(store, "merge")?;
    let json = || Metadata::new().with_content_type("application/json");
    ns.put("doc", r#"{"base":true}"#, json())
        .await
        .step("put the base document")?;
    let results = race(
        &ns,
        "doc",
        PutMode::Base(1),
        json(),
        |w| format!(r#"{{"base":true,"w{w}":{w}}}"#),
        "Base(1) race",
    )
    .await?;
    for (payload, result) in results {
        result.step(format!("merging put of {payload} with Base(1)"))?;
    }
    let (info, body) = ns.get("doc").await.step("get the merged document")?;
    let bytes = read_body(body, "get the merged document").await?;
    let merged: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(format!(
            "the merged document is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    let fields: BTreeSet<String> = merged
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let lost: Vec<String> = (0..WRITERS)
        .map(|w| format!("w{w}"))
        .filter(|f| !fields.contains(f))
        .collect();
    ensure!(
        lost.is_empty(),
        "merging Base(1) writes lost fields {lost:?}; the merged version {} is {merged}",
        info.version
    );
    ensure_eq!(
        merged.get("base"),
        Some(&serde_json::Value::Bool(true)),
        "the base field of the merged document"
    );
    Ok(Outcome::Passed)
}
