//! The `automerge` provider (being written).
