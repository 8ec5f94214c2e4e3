//! Key handling: hostile keys refused with `InvalidKey` before anything is written, and keys at
//! the edges of the rules (1024 bytes, unicode, look-alike forms) stored byte-exactly.

use super::check::{ensure, ensure_eq, expect_err, BehaviourResult, Failure, Outcome, Step};
use super::fixture::{all_keys, fresh_namespace, read_body};
use crate::error::ErrorKind;
use crate::model::{DeleteOptions, GetOptions, ListOptions, Metadata, PutMode};
use crate::stowage::Stowage;
use crate::MAX_KEY_LEN;

/// Keys that try to escape a namespace or a directory, or break the rules otherwise.
fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "../etc/passwd",
        "a/../../b",
        "..",
        ".",
        "a/./b",
        "/abs",
        "/",
        "a//b",
        "trailing/",
        "",
        "nul\0byte",
        "back\\slash",
        "..\\..\\windows",
        "ctrl\u{1}char",
        "new\nline",
        "tab\tkey",
        "del\u{7f}char",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    keys.push("x".repeat(MAX_KEY_LEN + 1));
    keys.push("\u{e9}".repeat(MAX_KEY_LEN / 2) + "x");
    keys
}

/// Every operation given a hostile key (`../etc/passwd`, `/abs`, `a//b`, NUL, `\`, 1025 bytes, …)
/// fails with `InvalidKey` and leaves the namespace empty.
pub async fn hostile_keys_rejected(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "hostile")?;
    for key in hostile_keys() {
        let shown = if key.len() > 40 {
            format!("a {}-byte key", key.len())
        } else {
            format!("{key:?}")
        };
        let kind = ErrorKind::InvalidKey;
        expect_err(
            ns.put(&key, "x", Metadata::new()).await,
            kind,
            format!("put {shown}"),
        )?;
        expect_err(
            ns.put_with(&key, "x", Metadata::new(), PutMode::Create)
                .await,
            kind,
            format!("put Create {shown}"),
        )?;
        expect_err(ns.get(&key).await, kind, format!("get {shown}"))?;
        expect_err(
            ns.get_with(
                &key,
                GetOptions {
                    version: Some(1),
                    range: None,
                },
            )
            .await,
            kind,
            format!("get version 1 of {shown}"),
        )?;
        expect_err(ns.head(&key, None).await, kind, format!("head {shown}"))?;
        expect_err(
            ns.delete(&key, DeleteOptions::default()).await,
            kind,
            format!("delete {shown}"),
        )?;
        expect_err(ns.versions(&key).await, kind, format!("versions {shown}"))?;
        expect_err(
            ns.restore(&key, None).await,
            kind,
            format!("restore {shown}"),
        )?;
        expect_err(ns.purge(&key).await, kind, format!("purge {shown}"))?;
    }
    let left = all_keys(&ns, true).await?;
    ensure!(
        left.is_empty(),
        "records appeared after refused hostile keys: {left:?}"
    );
    if store.capabilities().list_namespaces {
        let namespaces = store.namespaces().await.step("namespaces()")?;
        ensure!(
            !namespaces.contains(ns.namespace()),
            "namespaces() lists {} although every write to it was refused",
            ns.namespace()
        );
    }
    Ok(Outcome::Passed)
}

/// Keys of exactly 1024 bytes (one long segment of multi-byte characters, or many segments),
/// unicode keys, look-alikes (precomposed vs decomposed `é`) and punctuation are stored,
/// listed and read back byte-exactly, each as its own record.
pub async fn long_and_unicode_keys(store: &Stowage) -> BehaviourResult {
    let caps = store.capabilities();
    let ns = fresh_namespace(store, "keys")?;
    let one_segment = "\u{e9}".repeat(MAX_KEY_LEN / 2);
    let mut many_segments = "seg/".repeat(MAX_KEY_LEN / 4);
    many_segments.replace_range(MAX_KEY_LEN - 4.., "tail");
    let mut keys = vec![
        one_segment,
        many_segments,
        "\u{65e5}\u{672c}\u{8a9e}/\u{43a}\u{43b}\u{44e}\u{447}/\u{1f980}.json".to_string(),
        "\u{e9}".to_string(),
        "e\u{301}".to_string(),
        "\u{3a9}mega/\u{df}".to_string(),
        " space in key".to_string(),
        "a b/c d".to_string(),
        "quote\"s'".to_string(),
        "percent%20/plus+/amp&/hash#/q?x=1".to_string(),
        "*star:colon;semi|pipe<lt>gt".to_string(),
        "...dots/..hidden/.profile".to_string(),
        "CON/aux/nul.txt".to_string(),
        "Case".to_string(),
        "case".to_string(),
    ];
    for key in &keys {
        ensure!(
            key.len() <= MAX_KEY_LEN,
            "kit bug: key of {} bytes",
            key.len()
        );
        ns.put(key, key.clone(), Metadata::new())
            .await
            .step(format!("put a {}-byte key {:?}", key.len(), truncate(key)))?;
    }
    ensure_eq!(
        keys[0].len(),
        MAX_KEY_LEN,
        "kit bug: length of the long key"
    );
    ensure_eq!(
        keys[1].len(),
        MAX_KEY_LEN,
        "kit bug: length of the many-segment key"
    );
    for key in &keys {
        let what = format!("get {:?}", truncate(key));
        let (info, body) = ns.get(key).await.step(&what)?;
        ensure_eq!(
            info.key.as_str(),
            key.as_str(),
            "{what}: key of the returned info"
        );
        let bytes = read_body(body, &what).await?;
        ensure!(
            bytes == key.as_bytes(),
            "{what}: payload belongs to another key: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    ensure_eq!(
        all_keys(&ns, false).await?,
        keys,
        "list of the unicode and long keys (byte order)"
    );
    let pfx = ns
        .list_all(ListOptions {
            prefix: Some("e\u{301}".into()),
            ..Default::default()
        })
        .await
        .step("list with the decomposed prefix")?;
    ensure_eq!(
        pfx.iter().map(|i| i.key.to_string()).collect::<Vec<_>>(),
        vec!["e\u{301}".to_string()],
        "list with prefix \"e\\u{{301}}\" (no unicode normalisation)"
    );
    let long = keys
        .iter()
        .find(|k| k.starts_with('\u{e9}') && k.len() == MAX_KEY_LEN)
        .cloned();
    let long = long.ok_or_else(|| Failure::new("kit bug: long key missing"))?;
    if caps.versions {
        ns.put(&long, "v2", Metadata::new())
            .await
            .step("second put of the long key")?;
        let versions = ns.versions(&long).await.step("versions of the long key")?;
        ensure_eq!(versions.len(), 2, "versions of the long key");
    }
    if caps.delete {
        ns.delete(&long, DeleteOptions::default())
            .await
            .step("delete the long key")?;
        expect_err(
            ns.get(&long).await,
            ErrorKind::NotFound,
            "get the long key after delete",
        )?;
        if caps.restore {
            ns.restore(&long, None).await.step("restore the long key")?;
        }
    }
    if caps.purge {
        ns.purge(&long).await.step("purge the long key")?;
        expect_err(
            ns.head(&long, None).await,
            ErrorKind::NotFound,
            "head the long key after purge",
        )?;
    }
    Ok(Outcome::Passed)
}

fn truncate(key: &str) -> String {
    key.chars().take(24).collect::<String>() + if key.chars().count() > 24 { "…" } else { "" }
}
