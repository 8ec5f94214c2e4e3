//! Version numbers of a document's changes.
//!
//! Version `N` is the state after the `N`th change of a deterministic topological order of the
//! change graph (the genesis change is not a version): Kahn's algorithm, where among the changes
//! whose dependencies are all placed the one with the smallest `(time, change hash)` goes
//! next. Every replica holding the same changes therefore numbers them identically. A change
//! made on top of everything known (every put on one root, which reloads under the document
//! lock first) sorts last, so its number never moves; a change merged in later that is
//! concurrent with known ones (a `Base` put, a sync) may sort between them and shift the
//! numbers of the later concurrent changes by one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use automerge::{ActorId, Automerge, ChangeHash};

/// One version: the change that made it and where the document stood after it.
#[derive(Clone, Debug)]
pub(crate) struct VersionEntry {
    /// The change hash.
    pub(crate) hash: ChangeHash,
    /// Its actor.
    pub(crate) actor: ActorId,
    /// Its time, milliseconds since the Unix epoch.
    pub(crate) time_ms: i64,
    /// The heads of the document after the first `N` versions (and genesis).
    pub(crate) heads: Vec<ChangeHash>,
}

/// The versions of one document, kept in step with its change graph.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: Vec<VersionEntry>,
    index: HashMap<ChangeHash, usize>,
    /// Heads after the last version (genesis included).
    tip: Vec<ChangeHash>,
    /// Bumped whenever existing numbers may have moved, so caches keyed by version reset.
    epoch: u64,
}

impl History {
    /// The versions, oldest first (`entries()[0]` is version 1).
    pub(crate) fn entries(&self) -> &[VersionEntry] {
        &self.entries
    }

    /// The latest version number (0 before the first put).
    pub(crate) fn latest(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The entry of version `v`.
    pub(crate) fn get(&self, v: u64) -> Option<&VersionEntry> {
        if v == 0 {
            return None;
        }
        self.entries.get(v as usize - 1)
    }

    /// The version number of a change.
    pub(crate) fn version_of(&self, hash: &ChangeHash) -> Option<u64> {
        self.index.get(hash).map(|i| *i as u64 + 1)
    }

    /// Changes whenever version numbers may have moved.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets everything (after a purge).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.tip.clear();
        self.epoch += 1;
    }

    /// Brings the numbering up to date with `doc`: appends changes made on top of everything
    /// known, and renumbers from scratch when a concurrent change arrived.
    pub(crate) fn refresh(&mut self, doc: &Automerge, genesis: &ActorId) {
        let mut heads = doc.get_heads();
        heads.sort();
        if heads == self.tip {
            return;
        }
        let new = doc.get_changes_meta(&self.tip);
        for meta in &new {
            let tip: HashSet<&ChangeHash> = self.tip.iter().collect();
            let covers_tip = tip.iter().all(|h| meta.deps.contains(h));
            if meta.actor.as_ref() == genesis && meta.deps.is_empty() && self.tip.is_empty() {
                self.tip = vec![meta.hash];
                continue;
            }
            if !covers_tip {
                self.rebuild(doc, genesis);
                return;
            }
            self.push(
                meta.hash,
                meta.actor.as_ref().clone(),
                meta.timestamp,
                vec![meta.hash],
            );
        }
        let mut tip = self.tip.clone();
        tip.sort();
        if tip != heads {
            self.rebuild(doc, genesis);
        }
    }

    fn push(&mut self, hash: ChangeHash, actor: ActorId, time_ms: i64, heads: Vec<ChangeHash>) {
        self.index.insert(hash, self.entries.len());
        self.entries.push(VersionEntry {
            hash,
            actor,
            time_ms,
            heads: heads.clone(),
        });
        self.tip = heads;
    }

    fn rebuild(&mut self, doc: &Automerge, genesis: &ActorId) {
        self.entries.clear();
        self.index.clear();
        self.tip.clear();
        self.epoch += 1;
        let all = doc.get_changes_meta(&[]);
        let mut pending: HashMap<ChangeHash, usize> = HashMap::new();
        let mut dependents: HashMap<ChangeHash, Vec<usize>> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for (i, meta) in all.iter().enumerate() {
            pending.insert(meta.hash, meta.deps.len());
            for d in &meta.deps {
                dependents.entry(*d).or_default().push(i);
            }
            if meta.deps.is_empty() {
                ready.push(Reverse((meta.timestamp, meta.hash, i)));
            }
        }
        let mut heads: Vec<ChangeHash> = Vec::new();
        while let Some(Reverse((_, hash, i))) = ready.pop() {
            let meta = &all[i];
            heads.retain(|h| !meta.deps.contains(h));
            heads.push(hash);
            heads.sort();
            if meta.actor.as_ref() == genesis && meta.deps.is_empty() {
                self.tip = heads.clone();
            } else {
                self.push(
                    hash,
                    meta.actor.as_ref().clone(),
                    meta.timestamp,
                    heads.clone(),
                );
            }
            for &j in dependents.get(&hash).map(Vec::as_slice).unwrap_or(&[]) {
                let left = pending
                    .get_mut(&all[j].hash)
                    .expect("every change is counted");
                *left -= 1;
                if *left == 0 {
                    ready.push(Reverse((all[j].timestamp, all[j].hash, j)));
                }
            }
        }
        self.tip = heads;
    }
}
