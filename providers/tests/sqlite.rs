//! Tests of the `sqlite` provider (being written).
