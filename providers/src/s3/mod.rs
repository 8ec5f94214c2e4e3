//! The `s3` provider: records in any S3-compatible object store (AWS S3, MinIO, Ceph, R2,
//! Garage, moto) through Apache OpenDAL, with no database beside it.
//!
//! - Payloads are content-addressed at `blobs/<blake3 hex>` and stored once per bucket+root,
//!   whatever keys and namespaces use them; large ones go up as multipart uploads, streamed.
//!   A put that finds its blob stored with another size (truncated or overwritten) writes it
//!   again, so putting the original bytes again repairs it.
//! - Each version of a key is one metadata object, `meta/<ns>/<hex key>/<version>.json`,
//!   created with `If-None-Match: *`: the server lets exactly one of racing writers claim a
//!   version number, so `IfVersion` and `Create` hold without locks (the server must enforce
//!   conditional writes, as AWS S3 has since 2024 and MinIO, R2 and moto do).
//! - `list` maps onto one S3 listing of the namespace's metadata prefix (hex keys list in key
//!   byte order); `search` reads the latest metadata of every key (a scan, and
//!   `capabilities().search_is_scan` says so).
//! - Object names hold the hex of the key, and S3 takes names of at most 1024 bytes: a key
//!   longer than `(992 - root - namespace) / 2` bytes (492 with no root in `default`) is named
//!   by its blake3 hash instead, and listings merge those keys into key order.
//! - `gc` may run while others write: it deletes a payload no version references only once its
//!   LastModified is older than `gc_grace_secs` (an hour by default), since a put uploads its
//!   payload before it claims the version, and a put that finds its payload stored renews an
//!   old one first.
//! - Retries and timeouts are OpenDAL's `RetryLayer` and `TimeoutLayer`, set from the config;
//!   errors name the endpoint and bucket.
//!
//! ```toml
//! [storage]
//! provider = "s3"
//! [storage.config]
//! bucket = "my-records"
//! endpoint = "http://127.0.0.1:9000"
//! root = "prod"
//! access_key_id = "${AWS_ACCESS_KEY_ID}"
//! secret_access_key = "${AWS_SECRET_ACCESS_KEY}"
//! ```
//!
//! `docs/formats.md` describes the layout; `docs/benchmarks.md` the measured costs.

mod backend;
mod blob;
mod config;
mod error;
mod layout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::services::S3;
use opendal::Operator;
use stowage_core::{
    BuiltinProvider, Capabilities, Error, Result, StorageBackend, StorageProviderFactory,
};

pub use backend::S3Backend;
pub use config::S3Config;

/// The provider name configs select (`provider = "s3"`).
pub const PROVIDER: &str = "s3";

/// Makes `s3` backends from config.
#[derive(Debug, Default, Clone, Copy)]
pub struct S3Factory;

/// The `s3` provider's factory.
pub fn factory() -> Arc<dyn StorageProviderFactory> {
    Arc::new(S3Factory)
}

inventory::submit! {
    BuiltinProvider { factory }
}

/// Credentials from the config, else from the usual AWS environment variables.
fn credentials(cfg: &S3Config) -> Option<(String, String, Option<String>)> {
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        return Some((id.clone(), secret.clone(), cfg.session_token.clone()));
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let id = env("AWS_ACCESS_KEY_ID")?;
    let secret = env("AWS_SECRET_ACCESS_KEY")?;
    Some((
        id,
        secret,
        cfg.session_token
            .clone()
            .or_else(|| env("AWS_SESSION_TOKEN")),
    ))
}

/// An OpenDAL operator for `cfg`, with its retry and timeout layers (no I/O).
pub fn operator(cfg: &S3Config) -> Result<Operator> {
    // No profile files and no instance-metadata endpoint: credentials come from the config or
    // the environment only, so nothing is fetched from an address the user did not name.
    let mut builder = S3::default()
        .bucket(&cfg.bucket)
        .region(&cfg.region)
        .root(&cfg.normalized_root())
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(endpoint) = &cfg.endpoint {
        builder = builder.endpoint(endpoint);
    }
    if !cfg.force_path_style {
        builder = builder.enable_virtual_host_style();
    }
    builder = match credentials(cfg) {
        Some((id, secret, token)) => {
            let b = builder.access_key_id(&id).secret_access_key(&secret);
            match token {
                Some(t) => b.session_token(&t),
                None => b,
            }
        }
        None => builder.allow_anonymous(),
    };
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let op = Operator::new(builder)
        .map_err(|e| {
            Error::invalid_config(
                "storage.config",
                format!("OpenDAL refused the s3 config: {e}"),
            )
        })?
        .layer(
            TimeoutLayer::new()
                .with_timeout(timeout)
                .with_io_timeout(timeout),
        )
        .layer(
            RetryLayer::new()
                .with_max_times(cfg.retries)
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter(),
        )
        .finish();
    Ok(op)
}

#[async_trait]
impl StorageProviderFactory for S3Factory {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn description(&self) -> &str {
        "any S3-compatible object store via Apache OpenDAL: content-addressed payloads, versions claimed with conditional creates, search by scan"
    }

    fn config_schema(&self) -> serde_json::Value {
        S3Config::schema()
    }

    fn capabilities(&self) -> Capabilities {
        backend::capabilities()
    }

    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        S3Config::parse(config).map(|_| ())
    }

    async fn create(&self, config: serde_json::Value) -> Result<Arc<dyn StorageBackend>> {
        let cfg = S3Config::parse(&config)?;
        let op = operator(&cfg)?;
        tracing::debug!(target: "stowage_providers::s3", config = ?cfg, "creating s3 backend");
        Ok(S3Backend::new(op, &cfg))
    }
}
