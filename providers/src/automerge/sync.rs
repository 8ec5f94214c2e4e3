//! Replicating two `automerge` stores with Automerge's sync protocol.

use std::collections::BTreeSet;
use std::path::PathBuf;

use automerge::sync::{self, SyncDoc};
use serde::Serialize;
use stowage_core::{Error, Result};

use super::backend::{AutomergeBackend, Inner};
use super::document;
use super::storage::{self, DocLock};
use super::PROVIDER;

/// What [`sync_stores`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Documents looked at (present in either store).
    pub documents: u64,
    /// Documents that gained changes on at least one side.
    pub documents_changed: u64,
    /// Encoded sync-message bytes sent from the first store to the second.
    pub bytes_a_to_b: u64,
    /// Encoded sync-message bytes sent from the second store to the first.
    pub bytes_b_to_a: u64,
    /// Changes the second store received.
    pub changes_a_to_b: u64,
    /// Changes the first store received.
    pub changes_b_to_a: u64,
    /// Sync messages exchanged, both directions.
    pub messages: u64,
}

impl SyncReport {
    /// Bytes sent in both directions.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_a_to_b + self.bytes_b_to_a
    }
}

/// Exchanges changes between two stores, in both directions, for every document either holds,
/// until both hold the same changes: afterwards every record reads identically from both.
///
/// Payload files (`blobs/`) that one side's changes refer to and the other side lacks are
/// copied first (streamed, their hashes checked), before those changes are applied there; both
/// stores are pinned against `gc` meanwhile.
///
/// Each document pair runs Automerge's sync protocol (heads and Bloom filters first, then only
/// the changes the other side lacks), with every message encoded as it would go over a wire so
/// the bytes counted are real. Both documents are locked (exclusively, one document at a time)
/// only while their messages are exchanged and the received changes written.
///
/// ```no_run
/// # async fn demo() -> stowage_core::Result<()> {
/// use stowage_providers::automerge::{sync_stores, AutomergeBackend};
/// let a = AutomergeBackend::from_config(&serde_json::json!({"root": "replica-a"}))?;
/// let b = AutomergeBackend::from_config(&serde_json::json!({"root": "replica-b"}))?;
/// let report = sync_stores(&a, &b).await?;
/// println!("{} bytes sent", report.bytes_sent());
/// # Ok(()) }
/// ```
pub async fn sync_stores(a: &AutomergeBackend, b: &AutomergeBackend) -> Result<SyncReport> {
    if same_root(a, b) {
        return Err(Error::invalid_input(format!(
            "both stores use the root {}; sync needs two different directories",
            a.root().display()
        )));
    }
    let (ia, ib) = (a.inner.clone(), b.inner.clone());
    stowage_core::run_blocking(PROVIDER, move || sync_blocking(&ia, &ib)).await
}

fn same_root(a: &AutomergeBackend, b: &AutomergeBackend) -> bool {
    match (a.root().canonicalize(), b.root().canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.root() == b.root(),
    }
}

/// Document folders relative to the root: `docs/<ns>/<hash>`, the same in every replica.
fn relative_docs(inner: &Inner) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for dir in storage::all_document_dirs(&inner.root)? {
        if let Ok(rel) = dir.strip_prefix(&inner.root) {
            out.insert(rel.to_path_buf());
        }
    }
    Ok(out)
}

fn sync_blocking(a: &Inner, b: &Inner) -> Result<SyncReport> {
    a.ensure_root()?;
    b.ensure_root()?;
    // Lock in one global order (by root) so two syncs running the other way cannot deadlock.
    let a_first = a.root <= b.root;
    // Files copied in must survive a `gc` of the receiving store until the changes referring
    // to them are written there.
    let _pins = if a_first {
        (a.blobs.pin()?, b.blobs.pin()?)
    } else {
        (b.blobs.pin()?, a.blobs.pin()?)
    };
    let mut report = SyncReport::default();
    let mut all = relative_docs(a)?;
    all.extend(relative_docs(b)?);
    for rel in all {
        report.documents += 1;
        let (first, second) = if a_first { (a, b) } else { (b, a) };
        let (d1, d2) = (
            first.doc(first.root.join(&rel), None),
            second.doc(second.root.join(&rel), None),
        );
        let mut g1 = d1.lock().unwrap_or_else(|e| e.into_inner());
        let mut g2 = d2.lock().unwrap_or_else(|e| e.into_inner());
        let mut l1 = DocLock::acquire(g1.dir(), true, true)?.expect("created on demand");
        let mut l2 = DocLock::acquire(g2.dir(), true, true)?.expect("created on demand");
        g1.reload(&mut l1, &first.settings.actor)?;
        g2.reload(&mut l2, &second.settings.actor)?;
        let (da, la, db, lb) = if a_first {
            (&mut *g1, &mut l1, &mut *g2, &mut l2)
        } else {
            (&mut *g2, &mut l2, &mut *g1, &mut l1)
        };
        let (heads_a, heads_b) = (da.doc.get_heads(), db.doc.get_heads());
        // Equal heads: the same changes on both sides, so no file to copy.
        if heads_a != heads_b {
            let (refs_a, refs_b) = (document::blob_refs(&da.doc), document::blob_refs(&db.doc));
            copy_blobs(a, b, refs_a.difference(&refs_b))?;
            copy_blobs(b, a, refs_b.difference(&refs_a))?;
        }
        let (mut state_a, mut state_b) = (sync::State::new(), sync::State::new());
        loop {
            let mut quiet = true;
            if let Some(msg) = da.doc.generate_sync_message(&mut state_a) {
                quiet = false;
                let bytes = msg.encode();
                report.bytes_a_to_b += bytes.len() as u64;
                report.messages += 1;
                let msg = sync::Message::decode(&bytes)
                    .map_err(|e| Error::backend(PROVIDER, "decoding a sync message", e))?;
                db.doc
                    .receive_sync_message(&mut state_b, msg)
                    .map_err(|e| {
                        Error::backend(
                            PROVIDER,
                            format!("receiving changes into {}", db.dir().display()),
                            e,
                        )
                    })?;
            }
            if let Some(msg) = db.doc.generate_sync_message(&mut state_b) {
                quiet = false;
                let bytes = msg.encode();
                report.bytes_b_to_a += bytes.len() as u64;
                report.messages += 1;
                let msg = sync::Message::decode(&bytes)
                    .map_err(|e| Error::backend(PROVIDER, "decoding a sync message", e))?;
                da.doc
                    .receive_sync_message(&mut state_a, msg)
                    .map_err(|e| {
                        Error::backend(
                            PROVIDER,
                            format!("receiving changes into {}", da.dir().display()),
                            e,
                        )
                    })?;
            }
            if quiet {
                break;
            }
        }
        let gained_a = da.doc.get_changes_meta(&heads_a).len() as u64;
        let gained_b = db.doc.get_changes_meta(&heads_b).len() as u64;
        report.changes_b_to_a += gained_a;
        report.changes_a_to_b += gained_b;
        if gained_a > 0 {
            da.after_external_merge(&heads_a, &a.settings, la)?;
        }
        if gained_b > 0 {
            db.after_external_merge(&heads_b, &b.settings, lb)?;
        }
        if gained_a + gained_b > 0 {
            report.documents_changed += 1;
        }
    }
    Ok(report)
}

/// Copies into `to` the payload files of `refs` (referred to by changes `to` is about to
/// receive) that it lacks, and makes its `FORMAT` version 2 first if there are any.
fn copy_blobs<'a>(
    from: &Inner,
    to: &Inner,
    refs: impl Iterator<Item = &'a super::blobs::BlobRef>,
) -> Result<()> {
    let mut refs = refs.peekable();
    if refs.peek().is_none() {
        return Ok(());
    }
    to.ensure_blob_format()?;
    for blob in refs {
        if !to.blobs.has(blob) {
            to.blobs.copy_from(&from.blobs, *blob)?;
        }
    }
    Ok(())
}
