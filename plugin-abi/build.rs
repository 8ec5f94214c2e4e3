//! Records the target triple this crate is compiled for, so host and plugin can compare theirs.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=STOWAGE_PLUGIN_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
