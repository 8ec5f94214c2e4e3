//! The `s3` provider (being written).
