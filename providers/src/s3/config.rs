//! [`S3Config`]: the `[storage.config]` table of the `s3` provider, its JSON Schema and its
//! checks (all done before any I/O).

use std::fmt;

use serde::Deserialize;
use stowage_core::{parse_config, Error, Result};

use super::layout::MAX_ROOT_LEN;
use super::PROVIDER;

/// Smallest part S3 accepts for every part of a multipart upload but the last.
const MIN_PART_SIZE_MIB: u64 = 5;

/// Configuration of the `s3` provider.
///
/// ```
/// let cfg = stowage_providers::s3::S3Config::parse(&serde_json::json!({
///     "bucket": "my-bucket",
///     "endpoint": "http://127.0.0.1:9000",
///     "secret_access_key": "hunter2",
///     "access_key_id": "me",
/// })).unwrap();
/// assert!(!format!("{cfg:?}").contains("hunter2"));
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket that holds the store (must exist).
    pub bucket: String,
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` for MinIO; empty for AWS's own endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region the bucket lives in (`us-east-1` by default; most S3-compatible servers ignore it).
    #[serde(default = "default_region")]
    pub region: String,
    /// Prefix inside the bucket under which every object of the store lives (`""` = bucket root).
    #[serde(default)]
    pub root: String,
    /// Access key id; when absent, `AWS_ACCESS_KEY_ID` from the environment, else anonymous.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; when absent, `AWS_SECRET_ACCESS_KEY` from the environment.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials; when absent, `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Address buckets as `endpoint/bucket` (MinIO, Ceph, moto) rather than `bucket.endpoint`.
    #[serde(default = "default_true")]
    pub force_path_style: bool,
    /// Time limit of one request (and of each read or write step of a stream), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many times a failed request that may succeed later is retried, with backoff.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Size of one part of a multipart upload, in MiB (at least 5); payloads larger than one
    /// part are uploaded in parts, so memory use stays near two parts per upload.
    #[serde(default = "default_part_size_mib")]
    pub part_size_mib: u64,
    /// Age (by the server's LastModified) a payload nothing references must reach before `gc`
    /// deletes it, in seconds (default 3600, at most 30 days): a put uploads its payload before
    /// it claims the version, and gc must not take the payload in between. Also the age at
    /// which a staging object counts as abandoned. `0` turns the protection off (gc deletes
    /// every unreferenced payload at once; it still waits for this process's own puts in
    /// flight, but not for other processes'): only for tests, or a store one process writes to.
    #[serde(default = "default_gc_grace_secs")]
    pub gc_grace_secs: u64,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_true() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_retries() -> usize {
    3
}

fn default_part_size_mib() -> u64 {
    8
}

fn default_gc_grace_secs() -> u64 {
    3600
}

/// The longest `gc_grace_secs` accepted: 30 days.
const MAX_GC_GRACE_SECS: u64 = 30 * 24 * 3600;

impl fmt::Debug for S3Config {
    // By hand so secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("root", &self.root)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("force_path_style", &self.force_path_style)
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .field("part_size_mib", &self.part_size_mib)
            .field("gc_grace_secs", &self.gc_grace_secs)
            .finish()
    }
}

impl S3Config {
    /// Parses and checks a config without any I/O; every error names the field.
    pub fn parse(config: &serde_json::Value) -> Result<Self> {
        if config.is_null()
            || config
                .as_object()
                .is_some_and(|o| !o.contains_key("bucket"))
        {
            return Err(Error::invalid_config(
                "storage.config.bucket",
                "is required: the name of an existing bucket (provider `s3`)",
            ));
        }
        let cfg: S3Config = parse_config(PROVIDER, config)?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let field = |name: &str| format!("storage.config.{name}");
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            && b.as_bytes()[0].is_ascii_alphanumeric()
            && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(Error::invalid_config(
                field("bucket"),
                format!("{b:?} is not an S3 bucket name (3-63 characters: a-z, 0-9, '-', '.', starting and ending with a letter or digit)"),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(Error::invalid_config(
                    field("endpoint"),
                    format!("{endpoint:?} is not a URL like http://127.0.0.1:9000 or https://s3.example.com"),
                ));
            }
        }
        if self.region.is_empty() {
            return Err(Error::invalid_config(
                field("region"),
                "must not be empty (use us-east-1 when the server ignores it)",
            ));
        }
        if self.root.split('/').any(|s| s == "." || s == "..") || self.root.contains('\\') {
            return Err(Error::invalid_config(
                field("root"),
                format!("{:?} must be a plain prefix like `stores/prod` (no `.`/`..` segments, no `\\`)", self.root),
            ));
        }
        let root_len = self.root_segments().len();
        if root_len >= MAX_ROOT_LEN {
            return Err(Error::invalid_config(
                field("root"),
                format!(
                    "is {root_len} bytes; it must be shorter than {MAX_ROOT_LEN}, so that every object name (root, namespace, key) fits in the 1024 bytes S3 takes"
                ),
            ));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err(Error::invalid_config(
                    field("secret_access_key"),
                    "is missing while access_key_id is set; give both or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid_config(
                    field("access_key_id"),
                    "is missing while secret_access_key is set; give both or neither",
                ))
            }
            _ => {}
        }
        if self.timeout_ms == 0 {
            return Err(Error::invalid_config(
                field("timeout_ms"),
                "must be at least 1 (milliseconds)",
            ));
        }
        if self.retries > 100 {
            return Err(Error::invalid_config(
                field("retries"),
                format!("{} is too many; use at most 100", self.retries),
            ));
        }
        if !(MIN_PART_SIZE_MIB..=5 * 1024).contains(&self.part_size_mib) {
            return Err(Error::invalid_config(
                field("part_size_mib"),
                format!(
                    "{} is outside what S3 accepts ({MIN_PART_SIZE_MIB} to 5120 MiB)",
                    self.part_size_mib
                ),
            ));
        }
        if self.gc_grace_secs > MAX_GC_GRACE_SECS {
            return Err(Error::invalid_config(
                field("gc_grace_secs"),
                format!(
                    "{} is more than 30 days ({MAX_GC_GRACE_SECS} seconds); the default, 3600, outlasts any upload",
                    self.gc_grace_secs
                ),
            ));
        }
        Ok(())
    }

    /// How old an unreferenced payload must be before gc deletes it (zero: no protection).
    pub fn gc_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.gc_grace_secs)
    }

    /// The part size in bytes.
    pub fn part_size(&self) -> usize {
        (self.part_size_mib * 1024 * 1024) as usize
    }

    /// The endpoint as shown in messages (`default AWS endpoint` when none is configured).
    pub fn endpoint_label(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("the AWS endpoint of region {}", self.region))
    }

    /// The prefix inside the bucket, normalised to `/a/b/` form for OpenDAL.
    pub fn normalized_root(&self) -> String {
        let segments = self.root_segments();
        if segments.is_empty() {
            "/".to_string()
        } else {
            format!("/{segments}/")
        }
    }

    /// The root's segments joined by single slashes: `a//b/` is `a/b`, as OpenDAL names the
    /// objects. The layout measures object names from this, so `a//b` and `a/b` are one store
    /// (a long key's object name is cut to fit at the same length in both).
    fn root_segments(&self) -> String {
        self.root
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// JSON Schema of the config.
    pub fn schema() -> serde_json::Value {
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "s3 provider config",
            "type": "object",
            "additionalProperties": false,
            "required": ["bucket"],
            "properties": {
                "bucket": {"type": "string", "minLength": 3, "maxLength": 63, "pattern": "^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
                           "description": "Bucket that holds the store (must exist)."},
                "endpoint": {"type": "string", "pattern": "^https?://.+",
                             "description": "Endpoint URL, e.g. http://127.0.0.1:9000; omit for AWS."},
                "region": {"type": "string", "minLength": 1, "default": "us-east-1",
                           "description": "Region of the bucket."},
                "root": {"type": "string", "default": "",
                         "description": "Prefix inside the bucket under which the store lives (at most 511 bytes without its slashes)."},
                "access_key_id": {"type": "string",
                                  "description": "Access key id; default AWS_ACCESS_KEY_ID, else anonymous."},
                "secret_access_key": {"type": "string", "writeOnly": true,
                                      "description": "Secret access key; default AWS_SECRET_ACCESS_KEY. Never logged."},
                "session_token": {"type": "string", "writeOnly": true,
                                  "description": "Session token of temporary credentials; default AWS_SESSION_TOKEN."},
                "force_path_style": {"type": "boolean", "default": true,
                                     "description": "Path-style addressing (endpoint/bucket) instead of bucket.endpoint."},
                "timeout_ms": {"type": "integer", "minimum": 1, "default": 30000,
                               "description": "Time limit of one request or stream step, in milliseconds."},
                "retries": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3,
                            "description": "Retries of a request that may succeed later, with backoff."},
                "part_size_mib": {"type": "integer", "minimum": MIN_PART_SIZE_MIB, "maximum": 5120, "default": 8,
                                  "description": "Multipart upload part size in MiB."},
                "gc_grace_secs": {"type": "integer", "minimum": 0, "maximum": MAX_GC_GRACE_SECS, "default": 3600,
                                  "description": "Seconds an unreferenced payload must age before gc deletes it (protects uploads not yet claimed); 0 turns that off, for tests only."}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stowage_core::ErrorKind;

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other}"),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let cfg = S3Config::parse(&json!({"bucket": "b-1"})).unwrap();
        assert_eq!(cfg.region, "us-east-1");
        assert!(cfg.force_path_style);
        assert_eq!(cfg.retries, 3);
        assert_eq!(cfg.normalized_root(), "/");
        assert_eq!(cfg.part_size(), 8 << 20);
        assert_eq!(cfg.gc_grace_secs, 3600);
        let off = S3Config::parse(&json!({"bucket": "b-1", "gc_grace_secs": 0})).unwrap();
        assert!(off.gc_grace().is_zero());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({}), "bucket"),
            (json!({"bucket": "Bad_Bucket"}), "bucket"),
            (
                json!({"bucket": "ok-b", "endpoint": "127.0.0.1:9000"}),
                "endpoint",
            ),
            (json!({"bucket": "ok-b", "root": "a/../b"}), "root"),
            (
                json!({"bucket": "ok-b", "root": "r".repeat(MAX_ROOT_LEN)}),
                "root",
            ),
            (
                json!({"bucket": "ok-b", "access_key_id": "x"}),
                "secret_access_key",
            ),
            (
                json!({"bucket": "ok-b", "secret_access_key": "x"}),
                "access_key_id",
            ),
            (json!({"bucket": "ok-b", "timeout_ms": 0}), "timeout_ms"),
            (
                json!({"bucket": "ok-b", "part_size_mib": 1}),
                "part_size_mib",
            ),
            (
                json!({"bucket": "ok-b", "gc_grace_secs": 31 * 24 * 3600}),
                "gc_grace_secs",
            ),
            (
                json!({"bucket": "ok-b", "gc_grace_secs": -1}),
                "storage.config",
            ),
            (json!({"bucket": "ok-b", "bukket": "x"}), "storage.config"),
        ];
        for (cfg, field) in cases {
            let err = S3Config::parse(&cfg).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig);
            let named = field_of(err);
            assert!(
                named.contains(field),
                "config {cfg} should name {field}, named {named}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let cfg = S3Config::parse(&json!({
            "bucket": "ok-b", "access_key_id": "AKIDPUBLIC", "secret_access_key": "s3cr3t-value",
            "session_token": "tok3n-value"
        }))
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cr3t-value") && !shown.contains("tok3n-value"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn root_is_normalised() {
        let cfg = S3Config::parse(&json!({"bucket": "ok-b", "root": "/stores/prod/"})).unwrap();
        assert_eq!(cfg.normalized_root(), "/stores/prod/");
        let doubled = S3Config::parse(&json!({"bucket": "ok-b", "root": "stores//prod"})).unwrap();
        assert_eq!(doubled.normalized_root(), "/stores/prod/");
    }
}
