//! A/B of two builds of the `kv` plugin (or of one build against the provider linked in): both
//! are loaded into this one process and alternate get by get, so machine load and frequency
//! hit both alike and a difference of 1 % shows. Two copies of one build measure within 0.2 %
//! of each other. For trying a change to the plugin side of the ABI:
//!
//! ```text
//! scripts/build-plugin-fixtures --release && cp target/plugins/release/libstowage_plugin_kv.so /tmp/a.so
//! # change the guest, then
//! scripts/build-plugin-fixtures --release && cp target/plugins/release/libstowage_plugin_kv.so /tmp/b.so
//! STOWAGE_AB_A=/tmp/a.so STOWAGE_AB_B=/tmp/b.so cargo bench -p stowage-tests --bench plugin_ab
//! ```
//!
//! `direct` in place of a path means the provider linked in. Run it both ways round (A/B and
//! B/A): the side loaded second measures a little faster. Without the two variables it says so
//! and measures nothing.

#[path = "../../providers/benches/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use stowage_core::{
    GetOptions, Key, Namespace, PluginLibrary, StorageBackend, StorageProviderFactory,
};
use stowage_plugin_kv::KvFactory;
use support::{mean_and_median_us, put_plain};

fn main() {
    let (Ok(a), Ok(b)) = (std::env::var("STOWAGE_AB_A"), std::env::var("STOWAGE_AB_B")) else {
        println!("plugin_ab: set STOWAGE_AB_A and STOWAGE_AB_B to two plugin files (or `direct`); see the file's docs");
        return;
    };
    let rounds: usize = std::env::var("STOWAGE_AB_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    let runtime = support::runtime();
    let dir = tempfile::tempdir().unwrap();
    let open = |which: &str, name: &str| -> Arc<dyn StorageBackend> {
        let config = json!({ "path": dir.path().join(format!("{name}.redb")) });
        if which == "direct" {
            return runtime.block_on(KvFactory.create(config)).unwrap();
        }
        let library = PluginLibrary::load(PathBuf::from(which)).unwrap();
        let factory = library
            .factories()
            .into_iter()
            .find(|f| f.name() == "kv")
            .expect("the library provides `kv`");
        runtime.block_on(factory.create(config)).unwrap()
    };
    let sides = [open(&a, "a"), open(&b, "b")];
    let ns = Namespace::new("bench").unwrap();
    let key = Key::new("bench/read").unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 4096]);
    runtime.block_on(async {
        for side in &sides {
            put_plain(&**side, &ns, &key, payload.clone()).await;
        }
        let mut times = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
        for round in 0..rounds {
            for s in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                let t = Instant::now();
                let (_, body) = sides[s].get(&ns, &key, GetOptions::default()).await.unwrap();
                std::hint::black_box(body.into_bytes().await.unwrap());
                times[s].push(t.elapsed());
            }
        }
        let [mut ta, mut tb] = times;
        let ((a_mean, a_med), (b_mean, b_med)) = (mean_and_median_us(&mut ta), mean_and_median_us(&mut tb));
        println!(
            "4 KiB get, {rounds} rounds: A {a_mean:.2} µs mean / {a_med:.2} µs median, B {b_mean:.2} / {b_med:.2}; B/A {:.3} mean, {:.3} median",
            b_mean / a_mean,
            b_med / a_med
        );
    });
}
