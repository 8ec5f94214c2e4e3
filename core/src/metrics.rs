//! [`Metrics`]: optional counters of operations, bytes and errors per provider and operation,
//! fed by the one place every backend call passes through ([`crate::Stowage::call`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::ErrorKind;

/// Counters of one (provider, operation) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperationStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Payload bytes moved by successful calls (written by put, read by get).
    pub bytes: u64,
    /// Total time spent, in microseconds.
    pub total_micros: u64,
}

/// Counters shared by every store it is attached to (`StowageBuilder::metrics`).
///
/// ```
/// use stowage_core::Metrics;
/// let m = Metrics::new();
/// m.record("memory", "put", Ok(4096), 12);
/// assert_eq!(m.snapshot()["memory"]["put"].bytes, 4096);
/// ```
#[derive(Debug, Default)]
pub struct Metrics {
    stats: Mutex<BTreeMap<String, BTreeMap<String, OperationStats>>>,
}

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call: `outcome` is the bytes moved, or the error kind.
    pub fn record(
        &self,
        provider: &str,
        operation: &str,
        outcome: Result<u64, ErrorKind>,
        micros: u64,
    ) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let entry = stats
            .entry(provider.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_default();
        entry.calls += 1;
        entry.total_micros += micros;
        match outcome {
            Ok(bytes) => entry.bytes += bytes,
            Err(_) => entry.errors += 1,
        }
    }

    /// A copy of every counter: provider → operation → stats.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, OperationStats>> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How many payload bytes a call's result moved, for spans and metrics.
pub trait PayloadBytes {
    /// Bytes moved by `operation` (0 when the call moves no payload).
    fn payload_bytes(&self, operation: &str) -> u64 {
        let _ = operation;
        0
    }
}

impl PayloadBytes for crate::model::RecordInfo {
    fn payload_bytes(&self, operation: &str) -> u64 {
        // A put moved the payload it stored; head, delete and restore move none.
        if operation == "put" {
            self.size
        } else {
            0
        }
    }
}
impl PayloadBytes for () {}
impl PayloadBytes for u64 {}
impl PayloadBytes for crate::model::GcReport {
    fn payload_bytes(&self, _operation: &str) -> u64 {
        self.bytes_freed
    }
}
impl PayloadBytes for crate::model::VerifyReport {
    fn payload_bytes(&self, _operation: &str) -> u64 {
        self.bytes_checked
    }
}
impl<T> PayloadBytes for Vec<T> {}
impl<T> PayloadBytes for crate::model::Page<T> {}
impl PayloadBytes for (crate::model::RecordInfo, crate::body::Body) {
    fn payload_bytes(&self, _operation: &str) -> u64 {
        self.1.size_hint().unwrap_or(self.0.size)
    }
}
