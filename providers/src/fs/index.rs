//! The in-memory index: every version of every key, per namespace, in key order, plus a tag
//! index, so `list`, `search`, `head` and `versions` never touch a payload file; and per
//! payload hash, how many versions reference it and, for a payload kept inside the log, where
//! its bytes are.
//!
//! The index is only ever changed by applying [`LogRecord`]s read from the index log, whether
//! at open, when catching up with another process, or after this process's own append: one
//! path, so what a process serves is exactly what the log says.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use stowage_core::{
    ContentHash, Key, ListOptions, Namespace, Order, Page, Query, RecordInfo, Result,
};

use super::index_log::{Framed, InlineAt, LogRecord};

/// Every version of one key, oldest first.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// The versions, oldest first (tombstones included).
    pub versions: Vec<RecordInfo>,
    /// Log bytes of the records behind `versions` (freed by a purge).
    log_bytes: u64,
}

#[derive(Debug, Default)]
struct NsIndex {
    keys: BTreeMap<String, KeyState>,
    /// tag → keys whose latest version (tombstones included) carries it.
    tags: HashMap<String, BTreeSet<String>>,
}

fn untag(index: &mut HashMap<String, BTreeSet<String>>, key: &str, tags: &BTreeSet<String>) {
    for tag in tags {
        if let Some(keys) = index.get_mut(tag) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(tag);
            }
        }
    }
}

/// One payload, as the versions referencing it see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Payload {
    /// Versions (tombstones included) whose hash is this payload's.
    refs: u64,
    /// Where the bytes are in the log, when kept inline; `None`: in a payload file.
    pub inline: Option<InlineAt>,
}

/// Drops one reference to `hash`; the last one frees the payload (and its inline bytes
/// become garbage, counted in `dead`).
fn unref(
    payloads: &mut HashMap<ContentHash, Payload>,
    live_bytes: &mut u64,
    dead: &mut DeadInline,
    hash: &ContentHash,
) {
    let Some(payload) = payloads.get_mut(hash) else {
        return;
    };
    payload.refs -= 1;
    if payload.refs == 0 {
        if let Some(at) = payload.inline {
            *live_bytes -= u64::from(at.len);
            dead.payloads += 1;
            dead.bytes += u64::from(at.len);
        }
        payloads.remove(hash);
    }
}

/// Inline payloads in the log that no version references any more (freed by a compaction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeadInline {
    /// How many.
    pub payloads: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The whole index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: BTreeMap<Namespace, NsIndex>,
    /// Every referenced payload by hash: dedup and the location of inline bytes.
    payloads: HashMap<ContentHash, Payload>,
    /// Log bytes describing versions that still exist, plus the inline bytes of referenced
    /// payloads; the rest of the log is garbage.
    live_bytes: u64,
    versions: u64,
    dead_inline: DeadInline,
}

impl Index {
    /// Applies one log record, framed as `framed` says. A version that does not follow its
    /// key's latest one is refused: the log is then not one this provider wrote.
    pub(crate) fn apply(&mut self, record: LogRecord, framed: Framed) -> Result<(), String> {
        let frame_len = framed.frame_len;
        match record {
            LogRecord::Version(info) => {
                if let Some(at) = framed.inline {
                    if u64::from(at.len) != info.size {
                        return Err(format!(
                            "version {} of {}/{} carries {} inline payload bytes but has size {}",
                            info.version, info.namespace, info.key, at.len, info.size
                        ));
                    }
                }
                let has_versions = self
                    .namespaces
                    .get(&info.namespace)
                    .is_some_and(|nsi| nsi.keys.contains_key(info.key.as_str()));
                if framed.after_gap && info.version == 1 && has_versions {
                    // Numbering restarted after damage: the purge that restarted it was lost.
                    self.purge(&info.namespace, &info.key);
                }
                if !self.namespaces.contains_key(&info.namespace) {
                    self.namespaces
                        .insert(info.namespace.clone(), NsIndex::default());
                }
                let nsi = self
                    .namespaces
                    .get_mut(&info.namespace)
                    .expect("inserted above");
                let NsIndex { keys, tags } = nsi;
                let key = info.key.as_str();
                let state = match keys.get_mut(key) {
                    Some(s) => s,
                    None => keys.entry(key.to_string()).or_default(),
                };
                let expected = state.versions.last().map_or(1, |l| l.version + 1);
                // After damage (or in a log rewritten after it) versions before this one may be
                // lost: a later version is taken, never an earlier one.
                let gap = framed.after_gap && info.version > expected;
                if info.version != expected && !gap {
                    if state.versions.is_empty() {
                        keys.remove(key);
                    }
                    return Err(format!(
                        "version {} of {}/{key} does not follow version {}",
                        info.version,
                        info.namespace,
                        expected - 1
                    ));
                }
                // Most writes keep a key's tags: then the tag index is already right.
                let previous = state.versions.last().map(|p| &p.metadata.tags);
                if previous != Some(&info.metadata.tags) {
                    if let Some(prev) = previous {
                        untag(tags, key, prev);
                    }
                    for tag in &info.metadata.tags {
                        // Look up before inserting: most tags exist already, and `entry` would
                        // allocate a copy of the tag for every record.
                        match tags.get_mut(tag.as_str()) {
                            Some(keys) => {
                                keys.insert(key.to_string());
                            }
                            None => {
                                tags.insert(tag.clone(), BTreeSet::from([key.to_string()]));
                            }
                        }
                    }
                }
                state.log_bytes += frame_len;
                let payload = self.payloads.entry(info.hash).or_insert(Payload {
                    refs: 0,
                    inline: None,
                });
                payload.refs += 1;
                // A later copy of a payload's bytes replaces the one located before, which
                // becomes garbage: a re-put writes the bytes again when the stored copy is
                // damaged (a repair), and copies of a healthy payload are equal anyway.
                if let Some(at) = framed.inline {
                    if let Some(old) = payload.inline.replace(at) {
                        self.live_bytes -= u64::from(old.len);
                    }
                    self.live_bytes += u64::from(at.len);
                }
                state.versions.push(info);
                self.live_bytes += frame_len;
                self.versions += 1;
            }
            LogRecord::Purge { ns, k } => self.purge(&ns, &k),
        }
        Ok(())
    }

    /// Forgets every version of a key.
    fn purge(&mut self, ns: &Namespace, k: &Key) {
        let Some(nsi) = self.namespaces.get_mut(ns) else {
            return;
        };
        if let Some(state) = nsi.keys.remove(k.as_str()) {
            if let Some(latest) = state.versions.last() {
                untag(&mut nsi.tags, k.as_str(), &latest.metadata.tags);
            }
            self.live_bytes -= state.log_bytes;
            self.versions -= state.versions.len() as u64;
            for info in &state.versions {
                unref(
                    &mut self.payloads,
                    &mut self.live_bytes,
                    &mut self.dead_inline,
                    &info.hash,
                );
            }
        }
        if nsi.keys.is_empty() {
            self.namespaces.remove(ns);
        }
    }

    /// Log bytes of records that still describe a version, plus the inline bytes of payloads
    /// still referenced.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Inline payloads in the log that no version references any more.
    pub(crate) fn dead_inline(&self) -> DeadInline {
        self.dead_inline
    }

    /// Every referenced payload kept inline, with where its bytes are.
    pub(crate) fn inline_payloads(&self) -> impl Iterator<Item = (&ContentHash, InlineAt)> {
        self.payloads
            .iter()
            .filter_map(|(h, p)| Some((h, p.inline?)))
    }

    /// The payload of `hash`, if any version references it.
    pub(crate) fn payload(&self, hash: &ContentHash) -> Option<&Payload> {
        self.payloads.get(hash)
    }

    /// Number of versions (all keys, all namespaces).
    pub(crate) fn version_count(&self) -> u64 {
        self.versions
    }

    /// Every version of `key`, oldest first; `None` if the key has none.
    pub(crate) fn versions(&self, ns: &Namespace, key: &Key) -> Option<&[RecordInfo]> {
        self.namespaces
            .get(ns)?
            .keys
            .get(key.as_str())
            .map(|s| s.versions.as_slice())
            .filter(|v| !v.is_empty())
    }

    /// Every version in the store, namespace by namespace, key by key, oldest first.
    pub(crate) fn all_versions(&self) -> impl Iterator<Item = &RecordInfo> {
        self.namespaces
            .values()
            .flat_map(|ns| ns.keys.values())
            .flat_map(|s| s.versions.iter())
    }

    /// Hashes referenced by any version (tombstones reference what they deleted, so a
    /// `restore` can bring it back).
    pub(crate) fn referenced_hashes(&self) -> HashSet<ContentHash> {
        self.payloads.keys().copied().collect()
    }

    /// Namespaces with at least one key.
    pub(crate) fn namespaces(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .filter(|(_, nsi)| !nsi.keys.is_empty())
            .map(|(ns, _)| ns.clone())
            .collect()
    }

    /// The latest version of each key, walking the key order from the listing's bounds.
    pub(crate) fn list(&self, ns: &Namespace, options: &ListOptions) -> Result<Page<RecordInfo>> {
        let Some(nsi) = self.namespaces.get(ns) else {
            return options.apply(Vec::new());
        };
        let bound = options.lower_bound()?;
        let prefix = options.prefix.as_deref();
        let start = start_bound(prefix, bound.as_deref());
        let want = options.limit.map(|l| l.saturating_add(1));
        let mut out = Vec::new();
        for (key, state) in nsi.keys.range::<str, _>((start, Bound::Unbounded)) {
            if prefix.is_some_and(|p| !key.as_bytes().starts_with(p.as_bytes())) {
                break;
            }
            if !options.accepts_key(key, bound.as_deref()) {
                continue;
            }
            let Some(latest) = state.versions.last() else {
                continue;
            };
            if latest.is_deleted() && !options.include_deleted {
                continue;
            }
            out.push(latest.clone());
            if want.is_some_and(|w| out.len() >= w) {
                break;
            }
        }
        options.apply(out)
    }

    /// Runs `query`: candidates come from the tag index (the rarest required tag) or the key
    /// range of the prefix; only matching records are cloned.
    pub(crate) fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let pos = query.decode_cursor()?;
        let Some(nsi) = self.namespaces.get(ns) else {
            return query.apply(Vec::new());
        };
        let latest = |key: &str| nsi.keys.get(key).and_then(|s| s.versions.last());
        let candidates: Box<dyn Iterator<Item = &RecordInfo> + '_> = if query.tags.is_empty() {
            let prefix = query.prefix.as_deref();
            Box::new(
                nsi.keys
                    .range::<str, _>((start_bound(prefix, None), Bound::Unbounded))
                    .take_while(move |(k, _)| {
                        prefix.is_none_or(|p| k.as_bytes().starts_with(p.as_bytes()))
                    })
                    .filter_map(|(_, s)| s.versions.last()),
            )
        } else {
            let mut rarest: Option<&BTreeSet<String>> = None;
            for tag in &query.tags {
                match nsi.tags.get(tag) {
                    None => return query.apply(Vec::new()),
                    Some(keys) if rarest.is_none_or(|r| keys.len() < r.len()) => {
                        rarest = Some(keys)
                    }
                    Some(_) => {}
                }
            }
            Box::new(rarest.into_iter().flatten().filter_map(move |k| latest(k)))
        };
        // Key order ascending is the order both candidate sources yield, so the page can stop
        // at limit + 1 matches; other orders need every match sorted.
        let early_stop = query.order == Order::Key && !query.descending;
        let want = query
            .limit
            .map(|l| l.saturating_add(1))
            .filter(|_| early_stop);
        let mut out = Vec::new();
        for info in candidates {
            if !query.matches(info) {
                continue;
            }
            if early_stop && pos.as_ref().is_some_and(|p| !query.is_after(info, p)) {
                continue;
            }
            out.push(info.clone());
            if want.is_some_and(|w| out.len() >= w) {
                break;
            }
        }
        query.apply(out)
    }
}

fn start_bound<'a>(prefix: Option<&'a str>, after: Option<&'a str>) -> Bound<&'a str> {
    match (prefix, after) {
        (Some(p), Some(a)) if p.as_bytes() > a.as_bytes() => Bound::Included(p),
        (_, Some(a)) => Bound::Excluded(a),
        (Some(p), None) => Bound::Included(p),
        (None, None) => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_core::{Metadata, Timestamp};

    fn framed(frame_len: u64) -> Framed {
        Framed {
            frame_len,
            inline: None,
            after_gap: false,
        }
    }

    fn put(idx: &mut Index, key: &str, v: u64, tags: &[&str]) -> Result<(), String> {
        put_payload(idx, key, v, tags, key.as_bytes(), None)
    }

    /// A version applied as coming after a damaged region.
    fn put_after_gap(idx: &mut Index, key: &str, v: u64, tags: &[&str]) -> Result<(), String> {
        let payload = format!("{key}{v}");
        put_framed(idx, key, v, tags, payload.as_bytes(), None, true)
    }

    fn history(idx: &Index, key: &str) -> Vec<u64> {
        idx.versions(&Namespace::default(), &Key::new(key).unwrap())
            .map(|v| v.iter().map(|i| i.version).collect())
            .unwrap_or_default()
    }

    #[test]
    fn after_damage_lost_versions_and_a_lost_purge_are_taken_in_stride() {
        let mut idx = Index::default();
        put(&mut idx, "a", 1, &["old"]).unwrap();
        put(&mut idx, "a", 2, &["old"]).unwrap();
        // Version 3 was lost: 4 is taken only as coming after damage.
        assert!(put(&mut idx, "a", 4, &[]).is_err());
        put_after_gap(&mut idx, "a", 4, &["new"]).unwrap();
        assert_eq!(history(&idx, "a"), [1, 2, 4]);
        // Never an earlier or repeated version.
        assert!(put_after_gap(&mut idx, "a", 3, &[]).is_err());
        assert!(put_after_gap(&mut idx, "a", 4, &[]).is_err());
        assert_eq!(history(&idx, "a"), [1, 2, 4]);
        // A version 1 of a key with versions: the purge before it was lost.
        put_after_gap(&mut idx, "a", 1, &["fresh"]).unwrap();
        assert_eq!(history(&idx, "a"), [1]);
        assert_eq!(idx.version_count(), 1);
        assert_eq!(idx.live_bytes(), 100);
        let ns = Namespace::default();
        for (tag, hits) in [("old", 0), ("new", 0), ("fresh", 1)] {
            let found = idx.search(&ns, &Query::new().tag(tag)).unwrap().items;
            assert_eq!(found.len(), hits, "{tag}");
        }
        // A key first seen after damage may start anywhere.
        put_after_gap(&mut idx, "b", 7, &[]).unwrap();
        assert_eq!(history(&idx, "b"), [7]);
        put(&mut idx, "b", 8, &[]).unwrap();
        assert_eq!(history(&idx, "b"), [7, 8]);
    }

    fn put_payload(
        idx: &mut Index,
        key: &str,
        v: u64,
        tags: &[&str],
        payload: &[u8],
        inline: Option<InlineAt>,
    ) -> Result<(), String> {
        put_framed(idx, key, v, tags, payload, inline, false)
    }

    fn put_framed(
        idx: &mut Index,
        key: &str,
        v: u64,
        tags: &[&str],
        payload: &[u8],
        inline: Option<InlineAt>,
        after_gap: bool,
    ) -> Result<(), String> {
        let mut m = Metadata::new();
        for t in tags {
            m = m.with_tag(*t);
        }
        idx.apply(
            LogRecord::Version(RecordInfo {
                namespace: Namespace::default(),
                key: Key::new(key).unwrap(),
                version: v,
                hash: ContentHash::of(payload),
                size: payload.len() as u64,
                created_at: Timestamp::from_micros(0),
                updated_at: Timestamp::from_micros(0),
                deleted_at: None,
                metadata: m,
                conflicts: Vec::new(),
            }),
            Framed {
                frame_len: 100,
                inline,
                after_gap,
            },
        )
    }

    #[test]
    fn versions_must_follow_and_purge_frees_bytes() {
        let mut idx = Index::default();
        put(&mut idx, "a", 1, &["x"]).unwrap();
        put(&mut idx, "a", 2, &["y"]).unwrap();
        assert!(put(&mut idx, "a", 4, &[]).is_err());
        assert!(put(&mut idx, "b", 2, &[]).is_err());
        assert!(idx
            .versions(&Namespace::default(), &Key::new("b").unwrap())
            .is_none());
        assert_eq!(idx.live_bytes(), 200);
        let q = Query::new().tag("x");
        assert!(idx
            .search(&Namespace::default(), &q)
            .unwrap()
            .items
            .is_empty());
        let q = Query::new().tag("y");
        assert_eq!(
            idx.search(&Namespace::default(), &q).unwrap().items.len(),
            1
        );
        idx.apply(
            LogRecord::Purge {
                ns: Namespace::default(),
                k: Key::new("a").unwrap(),
            },
            framed(50),
        )
        .unwrap();
        assert_eq!(idx.live_bytes(), 0);
        assert_eq!(idx.version_count(), 0);
        assert!(idx
            .search(&Namespace::default(), &q)
            .unwrap()
            .items
            .is_empty());
        put(&mut idx, "a", 1, &[]).unwrap();
    }

    #[test]
    fn list_pages_match_the_shared_rules() {
        let mut idx = Index::default();
        for k in ["a/1", "a/2", "a/3", "b/1", "ab"] {
            put(&mut idx, k, 1, &["t"]).unwrap();
        }
        let ns = Namespace::default();
        let mut opts = ListOptions {
            prefix: Some("a/".into()),
            limit: Some(2),
            ..Default::default()
        };
        let p1 = idx.list(&ns, &opts).unwrap();
        assert_eq!(
            p1.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        opts.cursor = p1.next;
        let p2 = idx.list(&ns, &opts).unwrap();
        assert_eq!(
            p2.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a/3"]
        );
        assert!(p2.next.is_none());
        let q = Query::new().tag("t").limit(2);
        let s1 = idx.search(&ns, &q).unwrap();
        assert_eq!(
            s1.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        let mut q2 = q.clone();
        q2.cursor = s1.next;
        let s2 = idx.search(&ns, &q2).unwrap();
        assert_eq!(
            s2.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a/3", "ab"]
        );
    }

    #[test]
    fn inline_payloads_are_counted_by_reference() {
        let mut idx = Index::default();
        let ns = Namespace::default();
        let at = |offset| InlineAt { offset, len: 5 };
        let hash = ContentHash::of(b"hello");
        put_payload(&mut idx, "a", 1, &[], b"hello", Some(at(10))).unwrap();
        // A second record of the same payload without bytes (dedup), one with a second copy
        // (a repair of a damaged first copy): reads move to the later copy, and the first one
        // becomes garbage.
        put_payload(&mut idx, "b", 1, &[], b"hello", None).unwrap();
        assert_eq!(idx.payload(&hash).unwrap().inline, Some(at(10)));
        put_payload(&mut idx, "c", 1, &[], b"hello", Some(at(500))).unwrap();
        assert_eq!(idx.payload(&hash).unwrap().inline, Some(at(500)));
        assert_eq!(idx.live_bytes(), 300 + 5);
        // Inline bytes must match the size the record claims.
        let short = put_payload(&mut idx, "d", 1, &[], b"hello!", Some(at(900)));
        assert!(short.unwrap_err().contains("inline"));
        for (k, left) in [("a", 200 + 5), ("b", 100 + 5), ("c", 0)] {
            idx.apply(
                LogRecord::Purge {
                    ns: ns.clone(),
                    k: Key::new(k).unwrap(),
                },
                framed(50),
            )
            .unwrap();
            assert_eq!(idx.live_bytes(), left, "after purging {k}");
        }
        assert!(idx.payload(&hash).is_none());
        assert!(idx.referenced_hashes().is_empty());
        assert_eq!(
            idx.dead_inline(),
            DeadInline {
                payloads: 1,
                bytes: 5
            }
        );
    }
}
