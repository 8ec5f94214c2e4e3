//! The `memory` provider (being written).
