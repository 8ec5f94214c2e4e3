//! `search`: every filter of [`Query`] (prefix, tags, attribute equality and ranges, content
//! type, time windows, tombstones) and every order, paged with cursors.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::check::{ensure, ensure_eq, BehaviourResult, Failure, Outcome, Step};
use super::fixture::fresh_namespace;
use crate::model::{DeleteOptions, Metadata, RecordInfo};
use crate::query::{Order, Query, TimeRange};
use crate::stowage::{NamespaceHandle, Stowage};

fn skip_unless_search(store: &Stowage) -> Option<Outcome> {
    (!store.capabilities().search)
        .then(|| Outcome::Skipped("capabilities().search is false".into()))
}

/// Runs `query` following cursors; returns the records in the order the pages gave them.
async fn search_all(
    ns: &NamespaceHandle,
    query: &Query,
    bound: usize,
) -> Result<Vec<RecordInfo>, Failure> {
    let mut query = query.clone();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for page_no in 0..=bound + 2 {
        let what = format!("search page {page_no} of {query:?}");
        let page = ns.search(&query).await.step(&what)?;
        if let Some(limit) = query.limit {
            ensure!(
                page.items.len() <= limit,
                "{what}: {} items exceed the limit {limit}",
                page.items.len()
            );
        }
        let page_len = page.items.len();
        for item in page.items {
            ensure!(
                seen.insert(item.key.to_string()),
                "{what}: {:?} appeared on an earlier page too",
                item.key.as_str()
            );
            out.push(item);
        }
        match page.next {
            Some(next) => {
                let last = out.last().filter(|_| page_len > 0).ok_or_else(|| {
                    Failure::new(format!(
                        "{what}: an empty page must not carry a next cursor"
                    ))
                })?;
                // One cursor format for every provider (indexed ones included).
                ensure_eq!(
                    next,
                    query.cursor_for(last),
                    "{what}: the next cursor must be Query::cursor_for(last record)"
                );
                query.cursor = Some(next);
            }
            None => return Ok(out),
        }
    }
    Err(Failure::new(format!(
        "search {query:?} did not end: the cursor does not advance"
    )))
}

async fn keys_of(ns: &NamespaceHandle, query: Query) -> Result<Vec<String>, Failure> {
    let mut keys: Vec<String> = search_all(ns, &query, 64)
        .await?
        .into_iter()
        .map(|i| i.key.to_string())
        .collect();
    keys.sort();
    Ok(keys)
}

fn strings(keys: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    v.sort();
    v
}

/// Each filter alone and combined: prefix, tags (all of), attribute equality (numbers equal
/// across `1`/`1.0`, no match across types, nested JSON), numeric and string ranges `[min, max)`,
/// content type, missing attributes, and tombstones only with `include_deleted`.
pub async fn search_filters(store: &Stowage) -> BehaviourResult {
    if let Some(skip) = skip_unless_search(store) {
        return Ok(skip);
    }
    let ns = fresh_namespace(store, "search")?;
    let json_ct = "application/json";
    let records = [
        (
            "s/a",
            Metadata::new()
                .with_content_type(json_ct)
                .with_tag("prod")
                .with_tag("tapes")
                .with_attribute("status", 200)
                .with_attribute("size", 10)
                .with_attribute("name", "alpha")
                .with_attribute("when", "2025-01-01T00:00:00Z")
                // 2^53 + 1: the same f64 as s/b's, another integer.
                .with_attribute("id", 9_007_199_254_740_993u64),
        ),
        (
            "s/b",
            Metadata::new()
                .with_content_type("text/plain")
                .with_tag("prod")
                .with_attribute("status", 404)
                .with_attribute("size", 20.5)
                .with_attribute("name", "beta")
                .with_attribute("when", "2025-02-01T00:00:00Z")
                .with_attribute("id", 9_007_199_254_740_992u64),
        ),
        (
            "s/c",
            Metadata::new()
                .with_content_type(json_ct)
                .with_tag("tapes")
                .with_attribute("status", 200)
                .with_attribute("size", 30)
                .with_attribute("name", "gamma")
                .with_attribute("nested", json!({"x": 1, "y": [true, null]}))
                .with_attribute("id", u64::MAX),
        ),
        (
            "t/d",
            Metadata::new()
                .with_tag("prod")
                .with_tag("tapes")
                .with_tag("extra")
                .with_attribute("status", "200")
                .with_attribute("size", -5)
                .with_attribute("name", "delta")
                .with_attribute("id", -9_007_199_254_740_993i64),
        ),
        (
            "t/e",
            Metadata::new()
                .with_content_type(json_ct)
                .with_attribute("status", 500)
                .with_attribute("size", 1000.0),
        ),
    ];
    for (key, meta) in &records {
        ns.put(key, *key, meta.clone())
            .await
            .step(format!("put {key}"))?;
    }
    let deletes = store.capabilities().delete;
    if deletes {
        let meta = Metadata::new()
            .with_tag("prod")
            .with_attribute("status", 200);
        ns.put("s/gone", "gone", meta).await.step("put s/gone")?;
        ns.delete("s/gone", DeleteOptions::default())
            .await
            .step("delete s/gone")?;
    }
    let range = |name: &str, min: Option<serde_json::Value>, max: Option<serde_json::Value>| {
        Query::new().attr_range(name, min, max)
    };
    let cases: Vec<(&str, Query, Vec<&str>)> = vec![
        (
            "no filter",
            Query::new(),
            vec!["s/a", "s/b", "s/c", "t/d", "t/e"],
        ),
        (
            "prefix s/",
            Query::new().prefix("s/"),
            vec!["s/a", "s/b", "s/c"],
        ),
        (
            "prefix s (not at a slash)",
            Query::new().prefix("s"),
            vec!["s/a", "s/b", "s/c"],
        ),
        ("prefix nothing", Query::new().prefix("u/"), vec![]),
        (
            "tag prod",
            Query::new().tag("prod"),
            vec!["s/a", "s/b", "t/d"],
        ),
        (
            "tags prod and tapes",
            Query::new().tag("prod").tag("tapes"),
            vec!["s/a", "t/d"],
        ),
        ("tag nope", Query::new().tag("nope"), vec![]),
        (
            "status == 200",
            Query::new().attr_eq("status", 200),
            vec!["s/a", "s/c"],
        ),
        (
            "status == 200.0",
            Query::new().attr_eq("status", 200.0),
            vec!["s/a", "s/c"],
        ),
        (
            "status == \"200\"",
            Query::new().attr_eq("status", "200"),
            vec!["t/d"],
        ),
        (
            "name == beta",
            Query::new().attr_eq("name", "beta"),
            vec!["s/b"],
        ),
        (
            "nested == object",
            Query::new().attr_eq("nested", json!({"y": [true, null], "x": 1})),
            vec!["s/c"],
        ),
        ("missing == 1", Query::new().attr_eq("missing", 1), vec![]),
        (
            "size in [10, 30)",
            range("size", Some(json!(10)), Some(json!(30))),
            vec!["s/a", "s/b"],
        ),
        (
            "size >= 0",
            range("size", Some(json!(0)), None),
            vec!["s/a", "s/b", "s/c", "t/e"],
        ),
        ("size < 0", range("size", None, Some(json!(0))), vec!["t/d"]),
        (
            "size in [20.5, 1000.5)",
            range("size", Some(json!(20.5)), Some(json!(1000.5))),
            vec!["s/b", "s/c", "t/e"],
        ),
        (
            "status in [100, 300) (numbers only)",
            range("status", Some(json!(100)), Some(json!(300))),
            vec!["s/a", "s/c"],
        ),
        (
            "name in [b, e)",
            range("name", Some(json!("b")), Some(json!("e"))),
            vec!["s/b", "t/d"],
        ),
        (
            "when >= 2025-01-15",
            range("when", Some(json!("2025-01-15")), None),
            vec!["s/b"],
        ),
        (
            "id == 2^53 + 1 (integers compare exactly)",
            Query::new().attr_eq("id", 9_007_199_254_740_993u64),
            vec!["s/a"],
        ),
        (
            "id == 2^53",
            Query::new().attr_eq("id", 9_007_199_254_740_992u64),
            vec!["s/b"],
        ),
        (
            "id in [2^53 + 1, u64::MAX)",
            range(
                "id",
                Some(json!(9_007_199_254_740_993u64)),
                Some(json!(u64::MAX)),
            ),
            vec!["s/a"],
        ),
        (
            "id >= u64::MAX",
            range("id", Some(json!(u64::MAX)), None),
            vec!["s/c"],
        ),
        (
            "id < -2^53",
            range("id", None, Some(json!(-9_007_199_254_740_992i64))),
            vec!["t/d"],
        ),
        (
            "content type json",
            Query {
                content_type: Some(json_ct.into()),
                ..Query::new()
            },
            vec!["s/a", "s/c", "t/e"],
        ),
        (
            "prefix s/, tag tapes, status == 200",
            Query::new()
                .prefix("s/")
                .tag("tapes")
                .attr_eq("status", 200),
            vec!["s/a", "s/c"],
        ),
        (
            "tag prod, size in [0, 15)",
            Query::new()
                .tag("prod")
                .attr_range("size", Some(json!(0)), Some(json!(15))),
            vec!["s/a"],
        ),
    ];
    for (what, query, want) in cases {
        for limit in [None, Some(2)] {
            let mut q = query.clone();
            q.limit = limit;
            let got = keys_of(&ns, q).await?;
            ensure_eq!(got, strings(&want), "search {what} (limit {limit:?})");
        }
    }
    if deletes {
        let mut q = Query::new().tag("prod");
        q.include_deleted = true;
        ensure_eq!(
            keys_of(&ns, q).await?,
            strings(&["s/a", "s/b", "s/gone", "t/d"]),
            "search tag prod with include_deleted"
        );
        let mut q = Query::new().attr_eq("status", 200);
        q.include_deleted = true;
        ensure_eq!(
            keys_of(&ns, q).await?,
            strings(&["s/a", "s/c", "s/gone"]),
            "search status == 200 with include_deleted"
        );
    }
    Ok(Outcome::Passed)
}

/// Pauses so the next write gets a later timestamp even on a coarse clock.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// `created` and `updated` windows `[since, until)` select by the key's first version time and
/// by its latest version's time respectively.
pub async fn search_time_windows(store: &Stowage) -> BehaviourResult {
    if let Some(skip) = skip_unless_search(store) {
        return Ok(skip);
    }
    let ns = fresh_namespace(store, "searcht")?;
    let mut infos = Vec::new();
    for key in ["w1", "w2", "w3", "w4"] {
        infos.push(
            ns.put(key, key, Metadata::new())
                .await
                .step(format!("put {key}"))?,
        );
        tick().await;
    }
    let w1b = ns
        .put("w1", "updated", Metadata::new())
        .await
        .step("second put of w1")?;
    for pair in infos.windows(2) {
        ensure!(
            pair[0].created_at < pair[1].created_at,
            "writes {}ms apart got created_at {} and {}: timestamps must increase",
            5,
            pair[0].created_at,
            pair[1].created_at
        );
    }
    let (c1, c2, c4) = (
        infos[0].created_at,
        infos[1].created_at,
        infos[3].created_at,
    );
    ensure_eq!(w1b.created_at, c1, "second put of w1: created_at");
    let window = |since, until| TimeRange { since, until };
    let cases: Vec<(&str, Query, Vec<&str>)> = vec![
        (
            "created in [w2, w4)",
            Query {
                created: window(Some(c2), Some(c4)),
                ..Query::new()
            },
            vec!["w2", "w3"],
        ),
        (
            "created since w2",
            Query {
                created: window(Some(c2), None),
                ..Query::new()
            },
            vec!["w2", "w3", "w4"],
        ),
        (
            "created before w2",
            Query {
                created: window(None, Some(c2)),
                ..Query::new()
            },
            vec!["w1"],
        ),
        (
            "updated since w1's update",
            Query {
                updated: window(Some(w1b.updated_at), None),
                ..Query::new()
            },
            vec!["w1"],
        ),
        (
            "updated before w3",
            Query {
                updated: window(None, Some(infos[2].updated_at)),
                ..Query::new()
            },
            vec!["w2"],
        ),
        (
            "created before w2 and updated since w4",
            Query {
                created: window(None, Some(c2)),
                updated: window(Some(c4), None),
                ..Query::new()
            },
            vec!["w1"],
        ),
    ];
    for (what, query, want) in cases {
        ensure_eq!(keys_of(&ns, query).await?, strings(&want), "search {what}");
    }
    Ok(Outcome::Passed)
}

/// Results ordered by key, created or updated time (ties by key), ascending and descending,
/// come out in that order across pages joined by cursors.
pub async fn search_ordering(store: &Stowage) -> BehaviourResult {
    if let Some(skip) = skip_unless_search(store) {
        return Ok(skip);
    }
    let ns = fresh_namespace(store, "searcho")?;
    // Written out of key order, then two of them updated, so the three orders all differ.
    for key in ["m", "c", "x", "a", "\u{e9}", "k", "b/1"] {
        ns.put(key, key, Metadata::new().with_tag("o"))
            .await
            .step(format!("put {key}"))?;
        tick().await;
    }
    for key in ["c", "a"] {
        ns.put(key, "updated", Metadata::new().with_tag("o"))
            .await
            .step(format!("update {key}"))?;
        tick().await;
    }
    let all = search_all(&ns, &Query::new(), 16).await?;
    for order in [Order::Key, Order::Created, Order::Updated] {
        for descending in [false, true] {
            let mut expected = all.clone();
            expected.sort_by(|a, b| {
                let time = |i: &RecordInfo| match order {
                    Order::Key => None,
                    Order::Created => Some(i.created_at),
                    Order::Updated => Some(i.updated_at),
                };
                let ord = time(a)
                    .cmp(&time(b))
                    .then_with(|| a.key.as_str().as_bytes().cmp(b.key.as_str().as_bytes()));
                if descending {
                    ord.reverse()
                } else {
                    ord
                }
            });
            let want: Vec<&str> = expected.iter().map(|i| i.key.as_str()).collect();
            for limit in [None, Some(1), Some(3)] {
                let mut query = Query::new().tag("o").order_by(order, descending);
                query.limit = limit;
                let got = search_all(&ns, &query, 16).await?;
                let got: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
                ensure_eq!(
                    got,
                    want,
                    "search ordered by {order:?} (descending: {descending}, limit {limit:?})"
                );
            }
        }
    }
    Ok(Outcome::Passed)
}
