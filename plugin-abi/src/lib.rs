//! The C wire contract between the stowage host and provider plugins.
//!
//! Only `#[repr(C)]` types and constants live here; the host-side loader and the guest-side
//! export macro are in `stowage-core`.

/// Major version of the plugin ABI: a plugin built for another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// Minor version of the plugin ABI: vtables only grow; a plugin with a newer minor is refused.
pub const ABI_MINOR: u32 = 0;
