//! Conditional writes: `Create`, `IfVersion`, `Base`, conditional deletes, and racing writers —
//! a failed precondition is `Conflict { current }` and writes nothing.

use std::collections::BTreeSet;

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

    let v1 = ns
        .put("doc", "one", Metadata::new())
        .await
        .step("put doc")?;
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

/// `IfVersion(v)` writes only when the latest version (tombstones count) is exactly `v`.
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
        let mut tasks = Vec::with_capacity(WRITERS);
        for w in 0..WRITERS {
            let ns = ns.clone();
            tasks.push(tokio::spawn(async move {
                let payload = format!("step {v} writer {w}");
                let result = ns
                    .put_with(
                        "contended",
                        payload.clone(),
                        Metadata::new(),
                        PutMode::IfVersion(v),
                    )
                    .await;
                (payload, result)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (payload, result) = task
                .await
                .map_err(|e| Failure::new(format!("step {v}: a writer task failed: {e}")))?;
            match result {
                Ok(info) => winners.push((payload, info)),
                Err(Error::Conflict { current, .. }) => ensure_eq!(
                    current,
                    Some(v + 1),
                    "step {v}: a losing writer's Conflict must name the winner's version"
                ),
                Err(e) => {
                    return Err(Failure::new(format!(
                        "step {v}: a racing IfVersion({v}) writer got {:?} instead of success or Conflict: {e}",
                        e.kind()
                    )))
                }
            }
        }
        ensure!(
            winners.len() == 1,
            "step {v}: {} of {WRITERS} racing IfVersion({v}) writers succeeded; exactly one must (winners wrote versions {:?})",
            winners.len(),
            winners.iter().map(|(_, i)| i.version).collect::<Vec<_>>()
        );
        let (payload, info) = &winners[0];
        ensure_eq!(info.version, v + 1, "step {v}: the winner's version");
        unchanged(
            &ns,
            "contended",
            info,
            payload.as_bytes(),
            &format!("race step {v}"),
        )
        .await?;
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
    let mut tasks = Vec::with_capacity(WRITERS);
    for w in 0..WRITERS {
        let ns = ns.clone();
        let meta = json();
        tasks.push(tokio::spawn(async move {
            let doc = format!(r#"{{"base":true,"w{w}":{w}}}"#);
            ns.put_with("doc", doc, meta, PutMode::Base(1)).await
        }));
    }
    for (w, task) in tasks.into_iter().enumerate() {
        let result = task
            .await
            .map_err(|e| Failure::new(format!("merging writer {w}: task failed: {e}")))?;
        result.step(format!("merging writer {w}: put with Base(1)"))?;
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
