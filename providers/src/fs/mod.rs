//! The `fs` provider (being written).
