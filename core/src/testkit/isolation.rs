//! Namespace isolation: a handle on namespace B cannot read, list, search, delete, version,
//! restore or purge a record of namespace A — nor learn that it exists.

use super::check::{ensure, ensure_eq, BehaviourResult, Outcome, Step};
use super::fixture::{all_keys, fresh_namespace, read_body};
use crate::model::{DeleteOptions, GetOptions, ListOptions, Metadata, PutMode};
use crate::query::Query;
use crate::stowage::{NamespaceHandle, Stowage};

/// What every key-addressed operation answers for `key` in `ns`, as `(operation, answer)`:
/// the error's kind and message, or the success.
async fn probe(ns: &NamespaceHandle, key: &str) -> Vec<(String, String)> {
    fn show<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
        match r {
            Ok(v) => format!("Ok({v:?})"),
            Err(e) => format!("{:?}: {e}", e.kind()),
        }
    }
    vec![
        ("get".into(), show(ns.get(key).await.map(|(i, _)| i))),
        (
            "get version 1".into(),
            show(
                ns.get_with(
                    key,
                    GetOptions {
                        version: Some(1),
                        range: None,
                    },
                )
                .await
                .map(|(i, _)| i),
            ),
        ),
        ("head".into(), show(ns.head(key, None).await)),
        ("head version 2".into(), show(ns.head(key, Some(2)).await)),
        ("versions".into(), show(ns.versions(key).await)),
        (
            "delete".into(),
            show(ns.delete(key, DeleteOptions::default()).await),
        ),
        (
            "delete if_version 4".into(),
            show(
                ns.delete(
                    key,
                    DeleteOptions {
                        if_version: Some(4),
                    },
                )
                .await,
            ),
        ),
        ("restore".into(), show(ns.restore(key, None).await)),
        (
            "restore version 1".into(),
            show(ns.restore(key, Some(1)).await),
        ),
        ("purge".into(), show(ns.purge(key).await)),
        (
            "put IfVersion(4)".into(),
            show(
                ns.put_with(key, "probe", Metadata::new(), PutMode::IfVersion(4))
                    .await,
            ),
        ),
    ]
}

/// Namespace B answers every operation on a key that only namespace A holds exactly as it
/// answers for a key that exists nowhere (same error kind and message), its lists and searches
/// stay empty, its own writes start at version 1 and its purge leaves A's record alone; and a
/// namespace whose name extends another's shares nothing with it.
pub async fn namespace_isolation(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    let a = fresh_namespace(store, "iso")?;
    // B's name extends A's: a provider that joins names and keys without a separator would
    // mix them up.
    let b = store
        .namespace(&format!("{}-b", a.namespace()))
        .step("opening namespace B")?;

    let before = probe(&b, "secret").await;
    let mut a_versions = 0u64;
    let meta = Metadata::new()
        .with_tag("secret")
        .with_attribute("owner", "a");
    a.put("secret", "a's payload", meta.clone())
        .await
        .step("put secret in A")?;
    a.put("secret", "a's payload v2", meta.clone())
        .await
        .step("second put of secret in A")?;
    a_versions += 2;
    if caps.delete {
        a.delete("secret", DeleteOptions::default())
            .await
            .step("delete secret in A")?;
        a.put("secret", "a's payload v4", meta.clone())
            .await
            .step("put secret in A after delete")?;
        a_versions += 2;
    }
    a.put("secret/child", "child", meta.clone())
        .await
        .step("put secret/child in A")?;
    a.put("-b/secret", "looks like B", meta.clone())
        .await
        .step("put -b/secret in A")?;
    let a_head = a.head("secret", None).await.step("head secret in A")?;

    let after = probe(&b, "secret").await;
    for ((op, was), (_, now)) in before.iter().zip(&after) {
        ensure!(
            was == now,
            "namespace B answers {op} on a key that only A holds differently from a key that exists nowhere:\n  absent everywhere: {was}\n  held by A:         {now}"
        );
    }
    ensure!(
        all_keys(&b, true).await?.is_empty(),
        "namespace B lists A's records"
    );
    let page = b
        .list(ListOptions {
            prefix: Some("secret".into()),
            include_deleted: true,
            ..Default::default()
        })
        .await
        .step("list with a prefix in B")?;
    ensure!(
        page.items.is_empty(),
        "namespace B lists A's records under prefix secret: {:?}",
        page.items
    );
    if caps.search {
        let mut q = Query::new().tag("secret");
        q.include_deleted = true;
        let found = b.search(&q).await.step("search in B")?;
        ensure!(
            found.items.is_empty(),
            "namespace B's search finds A's records: {:?}",
            found.items
        );
        let found = b
            .search(&Query::new())
            .await
            .step("search everything in B")?;
        ensure!(
            found.items.is_empty(),
            "namespace B's search finds A's records: {:?}",
            found.items
        );
    }

    // B's probes wrote nothing to A (a probe that succeeded wrote to B only).
    ensure_eq!(
        a.head("secret", None)
            .await
            .step("head secret in A after B's probes")?,
        a_head,
        "A's record after B's operations"
    );

    let b_purge = b.purge("secret").await;
    if caps.purge {
        // The probe's IfVersion(4) must have failed, so B holds nothing to purge.
        ensure!(
            b_purge.is_err(),
            "namespace B purged {b_purge:?} version(s) of a key only A holds"
        );
    }
    let b_info = b
        .put_with("secret", "b's payload", Metadata::new(), PutMode::Create)
        .await
        .step("Create secret in B")?;
    ensure_eq!(
        b_info.version,
        1,
        "B's first write of a key A also holds: version"
    );
    ensure_eq!(
        b_info.namespace,
        *b.namespace(),
        "B's write: namespace of the returned info"
    );
    let (_, body) = b.get("secret").await.step("get secret in B")?;
    ensure_eq!(
        read_body(body, "get secret in B").await?,
        b"b's payload".to_vec(),
        "secret in B"
    );
    if caps.purge {
        ensure_eq!(
            b.purge("secret").await.step("purge secret in B")?,
            1,
            "purge secret in B: versions removed"
        );
    }
    let (info, body) = a
        .get("secret")
        .await
        .step("get secret in A after B wrote and purged it")?;
    ensure_eq!(
        info,
        a_head,
        "A's record after B wrote and purged the same key"
    );
    let bytes = read_body(body, "get secret in A").await?;
    ensure!(
        bytes.starts_with(b"a's payload"),
        "A's payload changed: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    if caps.versions {
        let n = a
            .versions("secret")
            .await
            .step("versions of secret in A")?
            .len() as u64;
        ensure_eq!(n, a_versions, "number of A's versions after B's operations");
    }
    ensure_eq!(
        all_keys(&a, false).await?,
        vec![
            "-b/secret".to_string(),
            "secret".to_string(),
            "secret/child".to_string()
        ],
        "A's keys after B's operations"
    );
    if caps.list_namespaces {
        let namespaces = store.namespaces().await.step("namespaces()")?;
        ensure!(
            namespaces.contains(a.namespace()),
            "namespaces() misses {}: {namespaces:?}",
            a.namespace()
        );
    }
    Ok(Outcome::Passed)
}
