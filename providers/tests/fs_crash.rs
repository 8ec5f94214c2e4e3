//! Tests of the `fs` provider (being written).
