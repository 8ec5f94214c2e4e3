//! Tests of the `s3` provider (being written).
