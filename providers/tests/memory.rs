//! Tests of the `memory` provider (being written).
