//! The `sqlite` provider (being written).
