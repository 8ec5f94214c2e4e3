//! Versions, tombstones, restore and purge: numbering, what each version reads as, and what a
//! delete, a restore or a purge leaves behind.

use super::check::{ensure, ensure_eq, expect_err, BehaviourResult, Outcome, Step};
use super::fixture::{all_keys, fresh_namespace, read_body};
use crate::error::ErrorKind;
use crate::hash::ContentHash;
use crate::model::{DeleteOptions, GetOptions, Metadata, RecordInfo};
use crate::query::Query;
use crate::stowage::{NamespaceHandle, Stowage};

/// Reads `key` at `version` and requires `payload`.
async fn expect_payload(
    ns: &NamespaceHandle,
    key: &str,
    version: Option<u64>,
    payload: &[u8],
) -> Result<RecordInfo, super::Failure> {
    let what = format!("get {key:?} version {version:?}");
    let (info, body) = ns
        .get_with(
            key,
            GetOptions {
                version,
                range: None,
            },
        )
        .await
        .step(&what)?;
    let bytes = read_body(body, &what).await?;
    ensure!(
        bytes == payload,
        "{what}: expected the payload {:?}, got {:?}",
        String::from_utf8_lossy(payload),
        String::from_utf8_lossy(&bytes)
    );
    Ok(info)
}

/// Each write of a key gets the next version number, from 1; `created_at` stays the first
/// version's time and `updated_at` never goes back.
pub async fn version_numbering(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "vnum")?;
    let mut first: Option<RecordInfo> = None;
    let mut previous: Option<RecordInfo> = None;
    for n in 1..=5u64 {
        let info = ns
            .put("doc", format!("v{n}"), Metadata::new())
            .await
            .step(format!("put #{n} of doc"))?;
        ensure_eq!(info.version, n, "put #{n} of doc: version");
        if let Some(first) = &first {
            ensure_eq!(
                info.created_at,
                first.created_at,
                "put #{n} of doc: created_at stays the first version's"
            );
        }
        if let Some(prev) = &previous {
            ensure!(
                info.updated_at >= prev.updated_at,
                "put #{n} of doc: updated_at {} is before the previous version's {}",
                info.updated_at,
                prev.updated_at
            );
        }
        let head = ns
            .head("doc", None)
            .await
            .step(format!("head doc after put #{n}"))?;
        ensure_eq!(head, info, "head doc after put #{n}");
        first.get_or_insert(info.clone());
        previous = Some(info);
    }
    // Numbering is per key: another key starts at 1.
    let other = ns
        .put("doc2", "x", Metadata::new())
        .await
        .step("put doc2")?;
    ensure_eq!(other.version, 1, "first put of another key: version");
    Ok(Outcome::Passed)
}

/// Old versions stay readable by number (`get`, `head`, ranges), and `versions` lists them all,
/// oldest first; a version that never existed is `NotFound`.
pub async fn old_versions_readable(store: &Stowage) -> BehaviourResult {
    if !store.capabilities().versions {
        return Ok(Outcome::Skipped("capabilities().versions is false".into()));
    }
    let ns = fresh_namespace(store, "vold")?;
    let mut written = Vec::new();
    for n in 1..=3u64 {
        let meta = Metadata::new().with_attribute("n", n);
        written.push(
            ns.put("doc", format!("payload {n}"), meta)
                .await
                .step(format!("put #{n} of doc"))?,
        );
    }
    for (i, info) in written.iter().enumerate() {
        let v = i as u64 + 1;
        let got = expect_payload(&ns, "doc", Some(v), format!("payload {v}").as_bytes()).await?;
        ensure_eq!(got, *info, "get doc version {v}: info");
        let head = ns
            .head("doc", Some(v))
            .await
            .step(format!("head doc version {v}"))?;
        ensure_eq!(head, *info, "head doc version {v}");
    }
    let versions = ns.versions("doc").await.step("versions of doc")?;
    ensure_eq!(versions, written, "versions of doc (oldest first)");
    for missing in [0u64, 4, 1000] {
        expect_err(
            ns.head("doc", Some(missing)).await,
            ErrorKind::NotFound,
            format!("head doc version {missing}"),
        )?;
        expect_err(
            ns.get_with(
                "doc",
                GetOptions {
                    version: Some(missing),
                    range: None,
                },
            )
            .await,
            ErrorKind::NotFound,
            format!("get doc version {missing}"),
        )?;
    }
    expect_err(
        ns.versions("never-written").await,
        ErrorKind::NotFound,
        "versions of a key never written",
    )?;
    Ok(Outcome::Passed)
}

/// `delete` writes a tombstone (next version, `deleted_at` set, hash/size/metadata of the version
/// it deleted) that hides the key from get/head/list/search unless deleted records are asked
/// for; deleting what has no live version is `NotFound`; a put after a delete continues the
/// numbering.
pub async fn tombstones(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !caps.delete {
        return Ok(Outcome::Skipped("capabilities().delete is false".into()));
    }
    let ns = fresh_namespace(store, "tomb")?;
    let meta = Metadata::new().with_tag("t").with_attribute("a", 1);
    let v1 = ns
        .put("doc", "one", Metadata::new())
        .await
        .step("put #1 of doc")?;
    let v2 = ns
        .put("doc", "two", meta.clone())
        .await
        .step("put #2 of doc")?;
    ns.put("other", "x", meta.clone()).await.step("put other")?;

    let tomb = ns
        .delete("doc", DeleteOptions::default())
        .await
        .step("delete doc")?;
    ensure_eq!(tomb.version, 3, "delete doc: the tombstone's version");
    ensure!(
        tomb.is_deleted(),
        "delete doc: the returned tombstone has no deleted_at"
    );
    ensure_eq!(
        tomb.deleted_at,
        Some(tomb.updated_at),
        "delete doc: deleted_at is the tombstone's updated_at"
    );
    ensure_eq!(
        tomb.hash,
        v2.hash,
        "delete doc: the tombstone's hash is the deleted version's"
    );
    ensure_eq!(tomb.size, v2.size, "delete doc: the tombstone's size");
    ensure_eq!(tomb.metadata, meta, "delete doc: the tombstone's metadata");
    ensure_eq!(
        tomb.created_at,
        v1.created_at,
        "delete doc: the tombstone's created_at"
    );
    ensure!(
        tomb.updated_at >= v2.updated_at,
        "delete doc: the tombstone's updated_at is before version 2's"
    );

    expect_err(
        ns.get("doc").await,
        ErrorKind::NotFound,
        "get doc after delete",
    )?;
    expect_err(
        ns.head("doc", None).await,
        ErrorKind::NotFound,
        "head doc after delete",
    )?;
    ensure_eq!(
        all_keys(&ns, false).await?,
        vec!["other".to_string()],
        "list after deleting doc"
    );
    let with_deleted = ns
        .list_all(crate::ListOptions {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .step("list with include_deleted")?;
    ensure_eq!(
        with_deleted
            .iter()
            .map(|i| i.key.as_str())
            .collect::<Vec<_>>(),
        vec!["doc", "other"],
        "list with include_deleted"
    );
    ensure_eq!(
        with_deleted[0],
        tomb,
        "list with include_deleted shows the tombstone"
    );
    if caps.search {
        let live = ns
            .search(&Query::new().tag("t"))
            .await
            .step("search tag t after delete")?;
        ensure_eq!(
            live.items
                .iter()
                .map(|i| i.key.as_str())
                .collect::<Vec<_>>(),
            vec!["other"],
            "search tag t after deleting doc"
        );
        let mut q = Query::new().tag("t");
        q.include_deleted = true;
        let all = ns
            .search(&q)
            .await
            .step("search tag t with include_deleted")?;
        ensure_eq!(
            all.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            vec!["doc", "other"],
            "search tag t with include_deleted"
        );
    }
    if caps.versions {
        expect_payload(&ns, "doc", Some(2), b"two").await?;
        expect_err(
            ns.head("doc", Some(3)).await,
            ErrorKind::NotFound,
            "head doc at the tombstone's version",
        )?;
        let versions = ns.versions("doc").await.step("versions of doc")?;
        ensure_eq!(
            versions,
            vec![v1.clone(), v2, tomb.clone()],
            "versions of doc, tombstone included"
        );
    }

    expect_err(
        ns.delete("doc", DeleteOptions::default()).await,
        ErrorKind::NotFound,
        "deleting doc twice",
    )?;
    expect_err(
        ns.delete("never-written", DeleteOptions::default()).await,
        ErrorKind::NotFound,
        "deleting a key never written",
    )?;

    let v4 = ns
        .put("doc", "four", Metadata::new())
        .await
        .step("put after delete")?;
    ensure_eq!(
        v4.version,
        4,
        "put after delete: numbering continues past the tombstone"
    );
    ensure_eq!(
        v4.created_at,
        v1.created_at,
        "put after delete: created_at stays the first version's"
    );
    ensure_eq!(v4.deleted_at, None, "put after delete: deleted_at");
    expect_payload(&ns, "doc", None, b"four").await?;
    Ok(Outcome::Passed)
}

/// `restore` without a version brings back the newest live version as a new version.
pub async fn restore_default_version(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !(caps.restore && caps.delete) {
        return Ok(Outcome::Skipped(
            "needs capabilities().restore and .delete".into(),
        ));
    }
    let ns = fresh_namespace(store, "rdef")?;
    let v1 = ns
        .put("doc", "one", Metadata::new())
        .await
        .step("put #1 of doc")?;
    let meta = Metadata::new()
        .with_content_type("text/plain")
        .with_tag("second");
    let v2 = ns
        .put("doc", "two", meta.clone())
        .await
        .step("put #2 of doc")?;
    ns.delete("doc", DeleteOptions::default())
        .await
        .step("delete doc")?;

    let restored = ns.restore("doc", None).await.step("restore doc")?;
    ensure_eq!(
        restored.version,
        4,
        "restore doc: a restore writes a new version"
    );
    ensure_eq!(restored.deleted_at, None, "restore doc: deleted_at");
    ensure_eq!(
        restored.hash,
        v2.hash,
        "restore doc: hash of the newest live version"
    );
    ensure_eq!(restored.size, v2.size, "restore doc: size");
    ensure_eq!(
        restored.metadata,
        meta,
        "restore doc: metadata of the newest live version"
    );
    ensure_eq!(
        restored.created_at,
        v1.created_at,
        "restore doc: created_at"
    );
    let got = expect_payload(&ns, "doc", None, b"two").await?;
    ensure_eq!(got, restored, "get doc after restore: info");
    ensure_eq!(
        all_keys(&ns, false).await?,
        vec!["doc".to_string()],
        "list after restore"
    );

    expect_err(
        ns.restore("never-written", None).await,
        ErrorKind::NotFound,
        "restore of a key never written",
    )?;
    Ok(Outcome::Passed)
}

/// `restore(v)` copies live version `v` into a new version, also when the key is live (a
/// revert); a tombstone's version or one that never existed is `NotFound`.
pub async fn restore_specific_version(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !(caps.restore && caps.delete && caps.versions) {
        return Ok(Outcome::Skipped(
            "needs capabilities().restore, .delete and .versions".into(),
        ));
    }
    let ns = fresh_namespace(store, "rspec")?;
    let meta1 = Metadata::new().with_attribute("n", 1);
    let v1 = ns
        .put("doc", "one", meta1.clone())
        .await
        .step("put #1 of doc")?;
    ns.put("doc", "two", Metadata::new())
        .await
        .step("put #2 of doc")?;
    ns.delete("doc", DeleteOptions::default())
        .await
        .step("delete doc")?;

    let restored = ns
        .restore("doc", Some(1))
        .await
        .step("restore doc version 1")?;
    ensure_eq!(restored.version, 4, "restore doc version 1: version");
    ensure_eq!(restored.hash, v1.hash, "restore doc version 1: hash");
    ensure_eq!(restored.metadata, meta1, "restore doc version 1: metadata");
    expect_payload(&ns, "doc", None, b"one").await?;

    let reverted = ns
        .restore("doc", Some(2))
        .await
        .step("restore doc version 2 while live")?;
    ensure_eq!(
        reverted.version,
        5,
        "restore doc version 2 while live: version"
    );
    expect_payload(&ns, "doc", None, b"two").await?;

    expect_err(
        ns.restore("doc", Some(3)).await,
        ErrorKind::NotFound,
        "restore doc at a tombstone's version",
    )?;
    expect_err(
        ns.restore("doc", Some(99)).await,
        ErrorKind::NotFound,
        "restore doc version 99",
    )?;
    let count = ns.versions("doc").await.step("versions of doc")?.len();
    ensure_eq!(
        count,
        5,
        "versions of doc after refused restores (nothing may be written)"
    );
    Ok(Outcome::Passed)
}

/// `purge` removes every version of one key for good (numbering restarts at 1, `created_at`
/// anew), returns how many it removed, and touches no other key, not even ones sharing a prefix.
pub async fn purge(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    if !caps.purge {
        return Ok(Outcome::Skipped("capabilities().purge is false".into()));
    }
    let ns = fresh_namespace(store, "purge")?;
    let old = ns
        .put("p/k", "one", Metadata::new())
        .await
        .step("put #1 of p/k")?;
    ns.put("p/k", "two", Metadata::new())
        .await
        .step("put #2 of p/k")?;
    let mut expected_count = 2;
    if caps.delete {
        ns.delete("p/k", DeleteOptions::default())
            .await
            .step("delete p/k")?;
        expected_count += 1;
    }
    let mut neighbours = Vec::new();
    for key in ["p/k2", "p/kk", "p/k/child", "p", "q/k"] {
        let info = ns
            .put(key, key.to_string(), Metadata::new())
            .await
            .step(format!("put {key}"))?;
        neighbours.push(info);
    }

    let removed = ns.purge("p/k").await.step("purge p/k")?;
    ensure_eq!(
        removed,
        expected_count,
        "purge p/k: number of versions removed"
    );
    expect_err(
        ns.get("p/k").await,
        ErrorKind::NotFound,
        "get p/k after purge",
    )?;
    expect_err(
        ns.head("p/k", None).await,
        ErrorKind::NotFound,
        "head p/k after purge",
    )?;
    if caps.versions {
        expect_err(
            ns.head("p/k", Some(1)).await,
            ErrorKind::NotFound,
            "head p/k version 1 after purge",
        )?;
        expect_err(
            ns.versions("p/k").await,
            ErrorKind::NotFound,
            "versions of p/k after purge",
        )?;
    }
    if caps.restore {
        expect_err(
            ns.restore("p/k", None).await,
            ErrorKind::NotFound,
            "restore p/k after purge",
        )?;
    }
    let listed = all_keys(&ns, true).await?;
    ensure!(
        !listed.iter().any(|k| k == "p/k"),
        "list with include_deleted after purge still shows p/k: {listed:?}"
    );
    for info in &neighbours {
        let key = info.key.as_str();
        let got = expect_payload(&ns, key, None, key.as_bytes()).await?;
        ensure_eq!(got, *info, "{key} after purging p/k");
    }
    expect_err(
        ns.purge("p/k").await,
        ErrorKind::NotFound,
        "purging p/k twice",
    )?;
    expect_err(
        ns.purge("never-written").await,
        ErrorKind::NotFound,
        "purging a key never written",
    )?;

    let fresh = ns
        .put("p/k", "again", Metadata::new())
        .await
        .step("put p/k after purge")?;
    ensure_eq!(fresh.version, 1, "put p/k after purge: numbering restarts");
    ensure_eq!(
        fresh.created_at,
        fresh.updated_at,
        "put p/k after purge: created_at is anew"
    );
    ensure!(
        fresh.created_at >= old.created_at,
        "put p/k after purge: created_at went back in time"
    );
    ensure_eq!(
        fresh.hash,
        ContentHash::of(b"again"),
        "put p/k after purge: hash"
    );
    expect_payload(&ns, "p/k", None, b"again").await?;
    Ok(Outcome::Passed)
}
