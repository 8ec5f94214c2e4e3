//! `list`: latest version of each key in byte order of key, pages joined by cursors without a
//! duplicate or a gap, `start_after`, `prefix`, and tombstones on request.

use std::collections::HashSet;

use super::check::{ensure, ensure_eq, expect_err, BehaviourResult, Failure, Outcome, Step};
use super::fixture::fresh_namespace;
use crate::error::ErrorKind;
use crate::model::{DeleteOptions, ListOptions, Metadata};
use crate::query::{Order, Query};
use crate::stowage::{NamespaceHandle, Stowage};

/// Keys chosen so byte order differs from naive orders: case, `-`/`.`/`/`/`_` around the
/// separator, a decomposed and a precomposed `é`, CJK, an emoji, digits.
const KEYS: &[&str] = &[
    "0",
    "9/9",
    "A/x",
    "B",
    "Z",
    "a",
    "a-b",
    "a.b",
    "a/b",
    "a/b/c",
    "a/bc",
    "a0",
    "a_b",
    "ab",
    "abc/d",
    "b",
    "e\u{301}",
    "z",
    "zz/\u{fc}",
    "~tilde",
    "\u{e9}",
    "\u{e9}t\u{e9}/x",
    "\u{65e5}\u{672c}",
    "\u{1f980}",
];

/// Writes every key of [`KEYS`] (one of them twice); returns the keys in byte order.
async fn populate(ns: &NamespaceHandle) -> Result<Vec<String>, Failure> {
    for key in KEYS {
        ns.put(key, key.to_string(), Metadata::new())
            .await
            .step(format!("put {key:?}"))?;
    }
    ns.put("a/b", "second version", Metadata::new())
        .await
        .step("second put of \"a/b\"")?;
    let mut sorted: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(sorted)
}

/// Follows cursors from `options`, requiring every page to respect the limit and to move
/// forward; returns every key in the order the pages gave them.
async fn page_through(
    ns: &NamespaceHandle,
    mut options: ListOptions,
    total_hint: usize,
) -> Result<Vec<String>, Failure> {
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    // Bounded so a cursor that never advances fails instead of looping forever.
    for page_no in 0..=total_hint + 2 {
        let what = format!("list page {page_no} with {options:?}");
        let page = ns.list(options.clone()).await.step(&what)?;
        if let Some(limit) = options.limit {
            ensure!(
                page.items.len() <= limit,
                "{what}: {} items exceed the limit {limit}",
                page.items.len()
            );
        }
        for item in &page.items {
            let key = item.key.to_string();
            ensure!(
                seen.insert(key.clone()),
                "{what}: key {key:?} appeared on an earlier page too"
            );
            keys.push(key);
        }
        match page.next {
            Some(next) => {
                let last = page.items.last().ok_or_else(|| {
                    Failure::new(format!(
                        "{what}: an empty page must not carry a next cursor"
                    ))
                })?;
                // One cursor format for every provider, so a cursor outlives a migration.
                ensure_eq!(
                    next,
                    ListOptions::cursor_for(last.key.as_str()),
                    "{what}: the next cursor must be ListOptions::cursor_for(last key)"
                );
                options.cursor = Some(next);
            }
            None => return Ok(keys),
        }
    }
    Err(Failure::new(format!(
        "listing with {options:?} did not end after {} pages: the cursor does not advance",
        total_hint + 2
    )))
}

/// Paging with `limit` + cursor returns every key once, in byte order (non-ASCII included),
/// each as its latest version; no limit gives one page; deleted keys only on request.
pub async fn list_pagination(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "list")?;
    let mut expected = populate(&ns).await?;

    let whole = ns
        .list(ListOptions::default())
        .await
        .step("list without a limit")?;
    ensure_eq!(whole.next, None, "list without a limit: next cursor");
    let keys: Vec<String> = whole.items.iter().map(|i| i.key.to_string()).collect();
    ensure_eq!(keys, expected, "list without a limit: keys in byte order");
    let ab = whole.items.iter().find(|i| i.key.as_str() == "a/b");
    ensure_eq!(
        ab.map(|i| i.version),
        Some(2),
        "list shows the latest version of \"a/b\""
    );

    for limit in [1usize, 3, 5, 7, 24, 100] {
        let options = ListOptions {
            limit: Some(limit),
            ..Default::default()
        };
        let got = page_through(&ns, options, expected.len()).await?;
        ensure_eq!(got, expected, "keys listed in pages of {limit}");
    }
    let exact = ns
        .list(ListOptions {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .step("list with a limit above the number of keys")?;
    ensure_eq!(
        exact.next,
        None,
        "list with a limit above the number of keys: next cursor"
    );

    if store.capabilities().delete {
        for key in ["a/bc", "\u{1f980}"] {
            ns.delete(key, DeleteOptions::default())
                .await
                .step(format!("delete {key:?}"))?;
        }
        let with_deleted = expected.clone();
        expected.retain(|k| k != "a/bc" && k != "\u{1f980}");
        let live = page_through(
            &ns,
            ListOptions {
                limit: Some(4),
                ..Default::default()
            },
            with_deleted.len(),
        )
        .await?;
        ensure_eq!(
            live,
            expected,
            "keys listed in pages of 4 after two deletes"
        );
        let all = page_through(
            &ns,
            ListOptions {
                limit: Some(4),
                include_deleted: true,
                ..Default::default()
            },
            with_deleted.len(),
        )
        .await?;
        ensure_eq!(
            all,
            with_deleted,
            "keys listed with include_deleted in pages of 4"
        );
    }
    Ok(Outcome::Passed)
}

/// `start_after` (present or absent key), `prefix` (byte-wise, not only at `/`), and both
/// together with paging.
pub async fn list_prefix_and_start_after(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "listpfx")?;
    let sorted = populate(&ns).await?;
    let expect = |prefix: Option<&str>, after: Option<&str>| -> Vec<String> {
        sorted
            .iter()
            .filter(|k| prefix.is_none_or(|p| k.as_bytes().starts_with(p.as_bytes())))
            .filter(|k| after.is_none_or(|a| k.as_bytes() > a.as_bytes()))
            .cloned()
            .collect()
    };
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (None, Some("a/b")),
        (None, Some("a/bb")),
        (None, Some("\u{e9}")),
        (None, Some("\u{1f980}")),
        (None, Some("")),
        (Some("a/"), None),
        (Some("a"), None),
        (Some("a/b"), None),
        (Some("\u{65e5}"), None),
        (Some("\u{e9}"), None),
        (Some("nothing-here"), None),
        (Some("a"), Some("a/b")),
        (Some("a/"), Some("a/b/c")),
        (Some("zz/"), Some("zz/\u{fc}")),
    ];
    for (prefix, after) in cases {
        let want = expect(*prefix, *after);
        for limit in [None, Some(2)] {
            let options = ListOptions {
                prefix: prefix.map(str::to_string),
                start_after: after.map(str::to_string),
                limit,
                ..Default::default()
            };
            let got = page_through(&ns, options, sorted.len()).await?;
            ensure_eq!(
                got,
                want,
                "list with prefix {prefix:?}, start_after {after:?}, limit {limit:?}"
            );
        }
    }
    Ok(Outcome::Passed)
}

/// A cursor no listing returned, or a search cursor from another order, is `InvalidInput`.
pub async fn bad_cursors_rejected(store: &Stowage) -> BehaviourResult {
    let ns = fresh_namespace(store, "cursor")?;
    ns.put("k", "v", Metadata::new()).await.step("put k")?;
    for cursor in ["garbage", "k:zz", "k:ff", "t:12:6b"] {
        expect_err(
            ns.list(ListOptions {
                cursor: Some(cursor.into()),
                ..Default::default()
            })
            .await,
            ErrorKind::InvalidInput,
            format!("list with the cursor {cursor:?}"),
        )?;
    }
    if store.capabilities().search {
        for (order, cursor) in [
            (Order::Key, "garbage"),
            (Order::Key, "t:12:6b"),
            (Order::Created, "k:6b"),
            (Order::Updated, "t:notanumber:6b"),
        ] {
            let mut query = Query::new().order_by(order, false);
            query.cursor = Some(cursor.into());
            expect_err(
                ns.search(&query).await,
                ErrorKind::InvalidInput,
                format!("search ordered by {order:?} with the cursor {cursor:?}"),
            )?;
        }
    }
    Ok(Outcome::Passed)
}
