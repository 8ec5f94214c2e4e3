//! A seeded random walk over the whole contract, checked step by step against a model.
//!
//! The other behaviours each pin one rule on a short script. This one mixes every operation
//! the provider supports — puts under each [`PutMode`], deletes, restores, purges, reads of
//! old versions, listings, searches, `gc`, and puts racing each other or `gc` — on a handful
//! of keys that share payloads, and
//! after every step compares what the provider answered with what the contract says it must
//! answer, worked out from a plain in-memory history of every key. Interleavings a script
//! would not think of (a purge of a key whose payload another key still uses, then `gc`, then
//! a put of that payload again; a restore of a version whose payload was deduplicated; a
//! conditional write against a tombstone) come up in every run.
//!
//! Sequences are deterministic: the seeds are fixed, so a failure reproduces, and its message
//! names the seed, the step and the steps before it. `STOWAGE_TESTKIT_SEEDS` (comma-separated
//! numbers) runs other seeds, and `STOWAGE_TESTKIT_STEPS` another length.

use std::collections::BTreeMap;

use super::check::{ensure, ensure_eq, BehaviourResult, Failure, Outcome, Step};
use super::fixture::{chunked_body, fresh_namespace, pattern, read_body};
use crate::error::ErrorKind;
use crate::hash::ContentHash;
use crate::model::{
    ByteRange, Capabilities, DeleteOptions, GetOptions, ListOptions, Metadata, NoProgress, PutMode,
    RecordInfo,
};
use crate::query::Query;
use crate::stowage::{NamespaceHandle, Stowage};

/// The seeds run when `STOWAGE_TESTKIT_SEEDS` is not set.
const SEEDS: [u64; 2] = [0x5eed_0001, 0x5eed_0002];
/// Steps of each sequence when `STOWAGE_TESTKIT_STEPS` is not set.
const STEPS: usize = 150;
/// Every this many steps, every key is read back whole (all versions, listings).
const FULL_CHECK_EVERY: usize = 25;
/// Keys of the walk: few, so operations meet on the same keys; a prefix pair for listings.
const KEYS: [&str; 5] = ["a", "a/b", "b", "dir/x.json", "z-\u{e9}t\u{e9}"];
/// Payload sizes of the pool: mostly small, two past the usual inline and chunk thresholds
/// of the built-in providers (16 KiB, 64 KiB).
const SIZES: [usize; 7] = [0, 1, 37, 300, 4096, 20_000, 70_000];
const TAGS: [&str; 2] = ["red", "blue"];

/// A seeded random sequence of every operation the capabilities allow, on five keys in each
/// of two namespaces, sharing a small pool of payloads (the larger ones sometimes streamed),
/// each answer checked against a model of the contract: version numbers, tombstones,
/// preconditions and the `current` version of each conflict, restores, purges (numbering
/// restarts), payload bytes, byte ranges and hashes, metadata, `head` and `versions`,
/// listings with and without tombstones (under a prefix, after a key, in pages of one to
/// three), tag and attribute search, and `gc` never removing a payload still referenced —
/// also while a put of that payload is in flight. Two puts of one key at once must both land
/// (overwrites) or have exactly one winner (`IfVersion`, `Create`). Every record read back
/// must equal, field for field, the info its write returned.
pub async fn random_operations(store: &Stowage) -> BehaviourResult {
    walk_seeds(&[store]).await
}

/// [`random_operations`] through two stores opened on the same storage — what two processes
/// sharing a database file, a directory or a bucket see. Each step goes through one of the
/// two, chosen at random, and is checked against the one model, so a cache, an index or a
/// version counter that one store keeps and the other's writes make stale shows up as a wrong
/// answer. Not part of [`behaviours`](super::behaviours), which get one store: call it from a
/// provider's own tests with two stores made from one config.
pub async fn random_operations_shared(a: &Stowage, b: &Stowage) -> BehaviourResult {
    ensure_eq!(
        a.capabilities(),
        b.capabilities(),
        "the two stores' capabilities"
    );
    walk_seeds(&[a, b]).await
}

async fn walk_seeds(stores: &[&Stowage]) -> BehaviourResult {
    let seeds = env_numbers("STOWAGE_TESTKIT_SEEDS")?.unwrap_or_else(|| SEEDS.to_vec());
    let steps = match env_numbers("STOWAGE_TESTKIT_STEPS")? {
        Some(v) if v.len() == 1 => v[0] as usize,
        Some(_) => {
            return Err(Failure::new(
                "STOWAGE_TESTKIT_STEPS must be one number".to_string(),
            ))
        }
        None => STEPS,
    };
    for seed in seeds {
        // Two namespaces with the same key names, so a purge, a gc or a shared payload in one
        // that reaches into the other shows up.
        let first = vec![
            fresh_namespace(stores[0], "walk")?,
            fresh_namespace(stores[0], "walk")?,
        ];
        let mut handles = vec![first];
        for store in &stores[1..] {
            let names: Vec<String> = handles[0]
                .iter()
                .map(|h| h.namespace().to_string())
                .collect();
            let mut other = Vec::new();
            for name in names {
                other.push(
                    store
                        .namespace(&name)
                        .step(format!("opening namespace {name:?} on the second store"))?,
                );
            }
            handles.push(other);
        }
        let mut walk = Walk::new(handles, seed);
        if let Err(failure) = walk.run(steps).await {
            return Err(Failure::new(format!(
                "seed {seed:#x}, step {}: {}\n  steps before it (newest last):\n{}",
                walk.step,
                failure.message(),
                walk.recent()
            )));
        }
    }
    Ok(Outcome::Passed)
}

fn env_numbers(name: &str) -> Result<Option<Vec<u64>>, Failure> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.map_err(|_| Failure::new(format!("{name}: {s:?} is not a number")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// One version of a key as the model knows it: the info its write returned, and its payload.
#[derive(Clone)]
struct Known {
    info: RecordInfo,
    payload: usize,
}

struct Walk {
    /// The namespaces through each store (`[store][namespace]`); `side` and `nsi` are the
    /// store and namespace this step goes through.
    handles: Vec<Vec<NamespaceHandle>>,
    side: usize,
    nsi: usize,
    caps: Capabilities,
    rng: u64,
    step: usize,
    log: Vec<String>,
    /// Every key's history by (namespace, key), oldest first; a purged key is absent.
    keys: BTreeMap<(usize, &'static str), Vec<Known>>,
    payloads: Vec<Vec<u8>>,
}

impl Walk {
    fn new(handles: Vec<Vec<NamespaceHandle>>, seed: u64) -> Self {
        let payloads = SIZES
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(seed ^ ((i as u64 + 1) * 0x9e37), len))
            .collect();
        Walk {
            caps: handles[0][0].store().capabilities(),
            handles,
            side: 0,
            nsi: 0,
            rng: seed | 1,
            step: 0,
            log: Vec::new(),
            keys: BTreeMap::new(),
            payloads,
        }
    }

    /// The namespace through the store this step uses.
    fn ns(&self) -> &NamespaceHandle {
        &self.handles[self.side][self.nsi]
    }

    /// This step's namespace through the other store (this one's when there is only one).
    fn other_side(&self) -> &NamespaceHandle {
        let other = (self.side + 1) % self.handles.len();
        &self.handles[other][self.nsi]
    }

    /// The model's history of `key` in this step's namespace.
    fn history(&self, key: &'static str) -> Option<&Vec<Known>> {
        self.keys.get(&(self.nsi, key))
    }

    /// The latest version of every key of this step's namespace, in key order.
    fn latest_of_namespace(&self) -> impl Iterator<Item = &Known> {
        self.keys
            .iter()
            .filter(|((n, _), _)| *n == self.nsi)
            .filter_map(|(_, h)| h.last())
    }

    /// Notes a step in the log, naming the namespace and (when there are two) the store.
    fn note(&mut self, what: &str) {
        let entry = match self.handles.len() {
            1 => format!("[ns {}] {what}", self.nsi + 1),
            _ => format!("[store {}, ns {}] {what}", self.side + 1, self.nsi + 1),
        };
        self.log.push(entry);
    }

    fn recent(&self) -> String {
        let from = self.log.len().saturating_sub(12);
        self.log[from..]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect()
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick_key(&mut self) -> &'static str {
        KEYS[self.below(KEYS.len())]
    }

    /// Small payloads four times as often as the large ones.
    fn pick_payload(&mut self) -> usize {
        if self.chance(80) {
            self.below(5)
        } else {
            5 + self.below(2)
        }
    }

    fn pick_metadata(&mut self) -> Metadata {
        let mut meta = Metadata::new();
        for tag in TAGS {
            if self.chance(40) {
                meta = meta.with_tag(tag);
            }
        }
        if self.chance(50) {
            meta = meta.with_attribute("n", self.below(3) as i64);
        }
        if self.chance(20) {
            meta = meta.with_content_type("application/x-walk");
        }
        meta
    }

    fn latest(&self, key: &'static str) -> Option<&Known> {
        self.history(key).and_then(|h| h.last())
    }

    fn latest_version(&self, key: &'static str) -> Option<u64> {
        self.latest(key).map(|k| k.info.version)
    }

    /// What a read of `version` (the latest when `None`) must return: a version that exists
    /// and is not a tombstone, else nothing (NotFound).
    fn readable(&self, key: &'static str, version: Option<u64>) -> Option<&Known> {
        match version {
            None => self.live(key),
            Some(v) => self
                .history(key)
                .and_then(|h| h.iter().find(|k| k.info.version == v))
                .filter(|k| !k.info.is_deleted()),
        }
    }

    fn live(&self, key: &'static str) -> Option<&Known> {
        self.latest(key).filter(|k| !k.info.is_deleted())
    }

    /// A version number near the key's history: often right, sometimes stale, ahead or 0.
    fn pick_expected(&mut self, key: &'static str) -> u64 {
        let latest = self.latest_version(key).unwrap_or(0);
        match self.below(4) {
            0 | 1 => latest,
            2 => latest.saturating_sub(1 + self.below(2) as u64),
            _ => latest + 1,
        }
    }

    async fn run(&mut self, steps: usize) -> Result<(), Failure> {
        let c = self.caps;
        // (weight, operation) of what the capabilities allow.
        let ops: Vec<(usize, Op)> = [
            (30, Op::Put, true),
            (6, Op::PutCreate, c.create_only),
            (8, Op::PutIfVersion, c.if_version),
            (3, Op::PutBase, c.if_version && !c.merge),
            (8, Op::Delete, c.delete),
            (4, Op::Restore, c.restore && c.delete),
            (4, Op::RestoreVersion, c.restore && c.delete && c.versions),
            (3, Op::Purge, c.purge),
            (10, Op::Get, true),
            (6, Op::GetVersion, c.versions),
            (3, Op::Head, true),
            (4, Op::Versions, c.versions),
            (3, Op::List, true),
            (3, Op::Search, c.search),
            (2, Op::Gc, c.gc),
            (4, Op::Race, true),
        ]
        .into_iter()
        .filter(|(_, _, allowed)| *allowed)
        .map(|(w, op, _)| (w, op))
        .collect();
        let total: usize = ops.iter().map(|(w, _)| w).sum();
        for step in 1..=steps {
            self.step = step;
            if self.handles.len() > 1 {
                self.side = self.below(self.handles.len());
            }
            self.nsi = self.below(2);
            let mut roll = self.below(total);
            let op = ops
                .iter()
                .find(|(w, _)| {
                    let hit = roll < *w;
                    roll = roll.saturating_sub(*w);
                    hit
                })
                .map(|(_, op)| *op)
                .expect("a weight was picked");
            self.apply(op).await?;
            if step % FULL_CHECK_EVERY == 0 || step == steps {
                for side in 0..self.handles.len() {
                    for nsi in 0..2 {
                        (self.side, self.nsi) = (side, nsi);
                        self.note("(full check)");
                        self.full_check().await?;
                    }
                }
            }
        }
        if c.verify {
            let report = self.handles[0][0]
                .store()
                .verify(&NoProgress)
                .await
                .step("verify after the walk")?;
            ensure!(
                report.problems.is_empty(),
                "verify after the walk found problems: {:?}",
                report.problems
            );
        }
        Ok(())
    }

    async fn apply(&mut self, op: Op) -> Result<(), Failure> {
        let key = self.pick_key();
        match op {
            Op::Put | Op::PutCreate | Op::PutIfVersion | Op::PutBase => {
                let mode = match op {
                    Op::Put => PutMode::Overwrite,
                    Op::PutCreate => PutMode::Create,
                    Op::PutIfVersion => PutMode::IfVersion(self.pick_expected(key)),
                    _ => PutMode::Base(self.pick_expected(key)),
                };
                let payload = self.pick_payload();
                let meta = self.pick_metadata();
                self.put(key, mode, payload, meta).await
            }
            Op::Delete => {
                let if_version = self.chance(40).then(|| self.pick_expected(key));
                self.delete(key, if_version).await
            }
            Op::Restore => self.restore(key, None).await,
            Op::RestoreVersion => {
                let latest = self.latest_version(key).unwrap_or(0);
                let v = 1 + self.below(latest as usize + 1) as u64;
                self.restore(key, Some(v)).await
            }
            Op::Purge => self.purge(key).await,
            Op::Get => self.check_get(key, None).await,
            Op::GetVersion => {
                let latest = self.latest_version(key).unwrap_or(0);
                let v = 1 + self.below(latest as usize + 1) as u64;
                self.check_get(key, Some(v)).await
            }
            Op::Head => {
                let latest = self.latest_version(key).unwrap_or(0);
                let version = (self.caps.versions && self.chance(40))
                    .then(|| 1 + self.below(latest as usize + 1) as u64);
                let what = format!("head {key:?} (version {version:?})");
                self.note(&what);
                let got = self.ns().head(key, version).await;
                let want = self.readable(key, version).map(|k| k.info.clone());
                expect_info(got, want.as_ref(), &what)
            }
            Op::Versions => self.check_versions(key).await,
            Op::List => self.check_list().await,
            Op::Search => {
                let tag = TAGS[self.below(TAGS.len())];
                let n = self.chance(40).then(|| self.below(3) as i64);
                self.check_search(tag, n).await
            }
            Op::Race => self.race(key).await,
            Op::Gc => {
                self.note("gc");
                self.ns().store().gc(&NoProgress).await.step("gc")?;
                Ok(())
            }
        }
    }

    /// Two puts of one key at once — through both stores when there are two — under one mode:
    /// both overwrites land as the next two versions in some order; of two `IfVersion`s of the
    /// latest or two `Create`s of a key with no live version exactly one wins and the other's
    /// conflict names the winner's version.
    async fn race(&mut self, key: &'static str) -> Result<(), Failure> {
        if self.caps.gc && self.chance(30) {
            return self.race_with_gc(key).await;
        }
        let latest = self.latest(key).map(|k| k.info.clone());
        let mode = match self.below(10) {
            0..=3 if self.caps.if_version => {
                PutMode::IfVersion(latest.as_ref().map_or(0, |l| l.version))
            }
            4..=5 if self.caps.create_only => PutMode::Create,
            _ => PutMode::Overwrite,
        };
        let (pa, pb) = (self.pick_payload(), self.pick_payload());
        let (ma, mb) = (self.pick_metadata(), self.pick_metadata());
        let what = format!(
            "race of two puts of {key:?} ({mode:?}; {} and {} bytes)",
            self.payloads[pa].len(),
            self.payloads[pb].len()
        );
        self.note(&what);
        let (ha, hb) = (self.ns().clone(), self.other_side().clone());
        let (ra, rb) = futures::join!(
            ha.put_with(key, self.payloads[pa].clone(), ma.clone(), mode),
            hb.put_with(key, self.payloads[pb].clone(), mb.clone(), mode)
        );
        let create_refused =
            mode == PutMode::Create && latest.as_ref().is_some_and(|l| !l.is_deleted());
        if create_refused {
            let current = latest.as_ref().map(|l| l.version);
            expect_conflict(ra, current, &format!("{what}, first"))?;
            return expect_conflict(rb, current, &format!("{what}, second"));
        }
        let mut landed: Vec<(RecordInfo, usize, Metadata)> = Vec::new();
        let mut refused = Vec::new();
        for (result, payload, meta) in [(ra, pa, ma), (rb, pb, mb)] {
            match result {
                Ok(info) => landed.push((info, payload, meta)),
                Err(e) => refused.push(e),
            }
        }
        let next = latest.as_ref().map_or(1, |l| l.version + 1);
        match mode {
            PutMode::Overwrite => ensure!(
                refused.is_empty(),
                "{what}: an overwrite was refused: {:?}",
                refused
            ),
            _ => {
                ensure_eq!(landed.len(), 1, "{what}: writers that won");
                let e = refused.pop().expect("one refused");
                expect_conflict::<()>(Err(e), Some(next), &format!("{what}, the loser"))?;
            }
        }
        landed.sort_by_key(|(info, _, _)| info.version);
        for (info, payload, meta) in landed {
            self.land_put(key, info, payload, &meta, &what)?;
        }
        Ok(())
    }

    /// A put racing `gc` (through the other store when there are two), of a payload no
    /// version references now if there is one — stored earlier, so a put that finds it and
    /// skips the upload meets a `gc` about to remove it: the put must land and its payload
    /// must stay readable.
    async fn race_with_gc(&mut self, key: &'static str) -> Result<(), Failure> {
        let unreferenced: Vec<usize> = (0..self.payloads.len())
            .filter(|p| !self.keys.values().flatten().any(|k| k.payload == *p))
            .collect();
        let payload = match unreferenced.len() {
            0 => self.pick_payload(),
            n => unreferenced[self.below(n)],
        };
        let meta = self.pick_metadata();
        let what = format!(
            "put of {key:?} ({} bytes) racing gc",
            self.payloads[payload].len()
        );
        self.note(&what);
        let (ha, hb) = (self.ns().clone(), self.other_side().clone());
        let (put, gc) = futures::join!(
            ha.put_with(
                key,
                self.payloads[payload].clone(),
                meta.clone(),
                PutMode::Overwrite
            ),
            hb.store().gc(&NoProgress)
        );
        gc.step(format!("{what}: the gc"))?;
        let info = put.step(&what)?;
        self.land_put(key, info, payload, &meta, &what)?;
        self.check_get(key, None).await
    }

    async fn put(
        &mut self,
        key: &'static str,
        mode: PutMode,
        payload: usize,
        meta: Metadata,
    ) -> Result<(), Failure> {
        let what = format!(
            "put {key:?} ({} bytes, {mode:?}, tags {:?})",
            self.payloads[payload].len(),
            meta.tags
        );
        self.note(&what);
        // Larger payloads are streamed half the time, in pieces and with no size given.
        let body = if self.payloads[payload].len() >= 4096 && self.chance(50) {
            chunked_body(&self.payloads[payload], 4000)
        } else {
            crate::body::Body::from(self.payloads[payload].clone())
        };
        let got = self.ns().put_with(key, body, meta.clone(), mode).await;
        let latest = self.latest(key).map(|k| k.info.clone());
        let allowed = match mode {
            PutMode::Overwrite => true,
            PutMode::Create => latest.as_ref().is_none_or(RecordInfo::is_deleted),
            // Version 0 is "no version at all" (never written, or purged).
            PutMode::IfVersion(v) | PutMode::Base(v) => {
                latest.as_ref().map_or(0, |l| l.version) == v
            }
        };
        if !allowed {
            return expect_conflict(got, latest.map(|l| l.version), &what);
        }
        let info = got.step(&what)?;
        self.land_put(key, info, payload, &meta, &what)
    }

    /// Checks the version a put wrote of `payload` with `meta` and adds it to the model.
    fn land_put(
        &mut self,
        key: &'static str,
        info: RecordInfo,
        payload: usize,
        meta: &Metadata,
        what: &str,
    ) -> Result<(), Failure> {
        self.check_new_version(key, &info, what)?;
        let bytes = &self.payloads[payload];
        ensure_eq!(info.hash, ContentHash::of(bytes), "{what}: hash");
        ensure_eq!(info.size, bytes.len() as u64, "{what}: size");
        ensure_eq!(info.deleted_at, None, "{what}: deleted_at");
        ensure_eq!(&info.metadata, meta, "{what}: metadata");
        self.keys
            .entry((self.nsi, key))
            .or_default()
            .push(Known { info, payload });
        Ok(())
    }

    /// What every new version (put, tombstone, restore) must be: the next number (1 after a
    /// purge), the key's first `created_at`, an `updated_at` that does not go back.
    fn check_new_version(
        &self,
        key: &'static str,
        info: &RecordInfo,
        what: &str,
    ) -> Result<(), Failure> {
        ensure_eq!(info.key.as_str(), key, "{what}: key");
        ensure_eq!(
            info.namespace.as_str(),
            self.ns().namespace().as_str(),
            "{what}: namespace"
        );
        let history = self.history(key);
        ensure_eq!(
            info.version,
            history
                .and_then(|h| h.last())
                .map_or(1, |l| l.info.version + 1),
            "{what}: version"
        );
        if let Some(history) = history {
            let first = &history[0].info;
            let last = &history[history.len() - 1].info;
            ensure_eq!(
                info.created_at,
                first.created_at,
                "{what}: created_at stays the first version's"
            );
            ensure!(
                info.updated_at >= last.updated_at,
                "{what}: updated_at {} is before the previous version's {}",
                info.updated_at,
                last.updated_at
            );
        }
        Ok(())
    }

    async fn delete(&mut self, key: &'static str, if_version: Option<u64>) -> Result<(), Failure> {
        let what = format!("delete {key:?} (if_version {if_version:?})");
        self.note(&what);
        let got = self.ns().delete(key, DeleteOptions { if_version }).await;
        let Some(live) = self.live(key).cloned() else {
            // Nothing live: NotFound. With a precondition that the tombstone's version does not
            // meet, a Conflict naming the current version is as right (the contract does not
            // say which check comes first); without any version at all it must be NotFound.
            let latest = self.latest_version(key);
            return match (got, latest, if_version) {
                (Err(e), Some(current), Some(v))
                    if v != current && e.kind() == ErrorKind::Conflict =>
                {
                    expect_conflict::<RecordInfo>(Err(e), Some(current), &what)
                }
                (got, _, _) => expect_kind(got, ErrorKind::NotFound, &what),
            };
        };
        if let Some(v) = if_version {
            if v != live.info.version {
                return expect_conflict(got, Some(live.info.version), &what);
            }
        }
        let tomb = got.step(&what)?;
        self.land_copy(key, tomb, &live, true, &what)
    }

    /// Checks a version that copies `source`'s content (a tombstone of it, or a restore of it)
    /// and adds it to the model.
    fn land_copy(
        &mut self,
        key: &'static str,
        info: RecordInfo,
        source: &Known,
        deleted: bool,
        what: &str,
    ) -> Result<(), Failure> {
        self.check_new_version(key, &info, what)?;
        ensure_eq!(info.is_deleted(), deleted, "{what}: deleted");
        ensure_eq!(
            info.hash,
            source.info.hash,
            "{what}: hash of the version copied"
        );
        ensure_eq!(
            info.size,
            source.info.size,
            "{what}: size of the version copied"
        );
        ensure_eq!(
            info.metadata,
            source.info.metadata,
            "{what}: metadata of the version copied"
        );
        self.keys.entry((self.nsi, key)).or_default().push(Known {
            info,
            payload: source.payload,
        });
        Ok(())
    }

    async fn restore(&mut self, key: &'static str, version: Option<u64>) -> Result<(), Failure> {
        let what = format!("restore {key:?} (version {version:?})");
        self.note(&what);
        let got = self.ns().restore(key, version).await;
        let source = self.history(key).and_then(|h| match version {
            Some(v) => h
                .iter()
                .find(|k| k.info.version == v && !k.info.is_deleted()),
            None => h.iter().rev().find(|k| !k.info.is_deleted()),
        });
        let Some(source) = source.cloned() else {
            return expect_kind(got, ErrorKind::NotFound, &what);
        };
        let info = got.step(&what)?;
        self.land_copy(key, info, &source, false, &what)
    }

    async fn purge(&mut self, key: &'static str) -> Result<(), Failure> {
        let what = format!("purge {key:?}");
        self.note(&what);
        let got = self.ns().purge(key).await;
        let Some(history) = self.keys.remove(&(self.nsi, key)) else {
            return expect_kind(got, ErrorKind::NotFound, &what);
        };
        let removed = got.step(&what)?;
        ensure_eq!(removed, history.len() as u64, "{what}: versions removed");
        Ok(())
    }

    async fn check_get(&mut self, key: &'static str, version: Option<u64>) -> Result<(), Failure> {
        let want = self.readable(key, version).cloned();
        // A byte range now and then, mostly inside the payload, sometimes past or reversed.
        let range = (self.caps.range_reads && self.chance(35)).then(|| {
            let size = want.as_ref().map_or(100, |k| k.info.size);
            let start = self.next() % (size + 2);
            let end = match self.below(3) {
                0 => None,
                _ => Some((start + self.next() % (size + 3)).saturating_sub(1)),
            };
            ByteRange { start, end }
        });
        let what = format!("get {key:?} (version {version:?}, range {range:?})");
        self.note(&what);
        let got = self.ns().get_with(key, GetOptions { version, range }).await;
        let Some(want) = want else {
            return expect_kind(got, ErrorKind::NotFound, &what);
        };
        let payload = &self.payloads[want.payload];
        let expected = match range.map(|r| r.resolve(payload.len() as u64)) {
            None => &payload[..],
            Some(Ok((start, len))) => &payload[start as usize..(start + len) as usize],
            Some(Err(e)) => return expect_kind(got, e.kind(), &what),
        };
        let (info, body) = got.step(&what)?;
        ensure_eq!(info, want.info, "{what}: info (as its write returned it)");
        let bytes = read_body(body, &what).await?;
        ensure!(
            bytes == expected,
            "{what}: the payload differs ({} bytes read, {} expected)",
            bytes.len(),
            expected.len()
        );
        Ok(())
    }

    async fn check_versions(&mut self, key: &'static str) -> Result<(), Failure> {
        let what = format!("versions {key:?}");
        self.note(&what);
        let got = self.ns().versions(key).await;
        let Some(history) = self.history(key) else {
            return expect_kind(got, ErrorKind::NotFound, &what);
        };
        let want: Vec<RecordInfo> = history.iter().map(|k| k.info.clone()).collect();
        ensure_eq!(got.step(&what)?, want, "{what}");
        Ok(())
    }

    /// Both listings (with and without tombstones), sometimes under a prefix or after a key,
    /// read in pages of one to three so cursors are followed.
    async fn check_list(&mut self) -> Result<(), Failure> {
        let prefix = self
            .chance(30)
            .then(|| ["a", "a/", "dir/", "z"][self.below(4)].to_string());
        let start_after = self.chance(25).then(|| self.pick_key().to_string());
        let limit = self.chance(50).then(|| 1 + self.below(3));
        for include_deleted in [false, true] {
            let what = format!(
                "list (prefix {prefix:?}, start_after {start_after:?}, pages of {limit:?}, include_deleted {include_deleted})"
            );
            self.note(&what);
            let got = self
                .ns()
                .list_all(ListOptions {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit,
                    include_deleted,
                    cursor: None,
                })
                .await
                .step(&what)?;
            let want: Vec<RecordInfo> = self
                .latest_of_namespace()
                .filter(|k| include_deleted || !k.info.is_deleted())
                .filter(|k| {
                    prefix
                        .as_deref()
                        .is_none_or(|p| k.info.key.as_str().starts_with(p))
                })
                .filter(|k| {
                    start_after
                        .as_deref()
                        .is_none_or(|a| k.info.key.as_str() > a)
                })
                .map(|k| k.info.clone())
                .collect();
            ensure_eq!(got, want, "{what}");
        }
        Ok(())
    }

    async fn check_search(&mut self, tag: &str, n: Option<i64>) -> Result<(), Failure> {
        let what = format!("search tag {tag:?}, attribute n = {n:?}");
        self.note(&what);
        let mut query = Query::new().tag(tag);
        if let Some(n) = n {
            query = query.attr_eq("n", n);
        }
        let page = self.ns().search(&query).await.step(&what)?;
        let mut got: Vec<RecordInfo> = page.items;
        got.sort_by(|a, b| a.key.cmp(&b.key));
        let want: Vec<RecordInfo> = self
            .latest_of_namespace()
            .filter(|k| !k.info.is_deleted() && k.info.metadata.tags.contains(tag))
            .filter(|k| n.is_none_or(|n| k.info.metadata.attributes.get("n") == Some(&n.into())))
            .map(|k| k.info.clone())
            .collect();
        ensure_eq!(got, want, "{what} (sorted by key)");
        Ok(())
    }

    /// Reads everything back: every key's latest and, where versions are kept, every version
    /// and the history; both listings.
    async fn full_check(&mut self) -> Result<(), Failure> {
        for key in KEYS {
            self.check_get(key, None).await?;
            if self.caps.versions {
                self.check_versions(key).await?;
                let versions: Vec<u64> = self
                    .history(key)
                    .map(|h| h.iter().map(|k| k.info.version).collect())
                    .unwrap_or_default();
                for v in versions {
                    self.check_get(key, Some(v)).await?;
                }
            }
        }
        self.check_list().await
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put,
    PutCreate,
    PutIfVersion,
    PutBase,
    Delete,
    Restore,
    RestoreVersion,
    Purge,
    Get,
    GetVersion,
    Head,
    Versions,
    List,
    Search,
    Gc,
    Race,
}

fn expect_kind<T: std::fmt::Debug>(
    got: crate::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Result<(), Failure> {
    super::check::expect_err(got, kind, what).map(|_| ())
}

fn expect_conflict<T: std::fmt::Debug>(
    got: crate::Result<T>,
    current: Option<u64>,
    what: &str,
) -> Result<(), Failure> {
    super::check::expect_conflict(
        got,
        current,
        format!("{what} (a precondition the model says fails)"),
    )
}

/// `head` of the latest live version: `want` or NotFound.
fn expect_info(
    got: crate::Result<RecordInfo>,
    want: Option<&RecordInfo>,
    what: &str,
) -> Result<(), Failure> {
    match want {
        None => expect_kind(got, ErrorKind::NotFound, what),
        Some(want) => {
            let got = got.step(what)?;
            ensure_eq!(&got, want, "{what}: info (as its write returned it)");
            Ok(())
        }
    }
}
