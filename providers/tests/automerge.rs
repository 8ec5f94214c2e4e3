//! Tests of the `automerge` provider (being written).
