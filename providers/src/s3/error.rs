//! Turns OpenDAL errors into stowage errors that name the endpoint, the bucket and what to do.

use opendal::ErrorKind as DalKind;
use stowage_core::Error;

use super::config::S3Config;
use super::PROVIDER;

/// How much of the underlying error a message quotes.
const CAUSE_CHARS: usize = 600;

/// Where requests go, for error messages (never the credentials).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    endpoint: String,
    bucket: String,
    root: String,
    retries: usize,
    timeout_ms: u64,
}

impl Target {
    /// The target of a config.
    pub(crate) fn of(cfg: &S3Config) -> Self {
        Target {
            endpoint: cfg.endpoint_label(),
            bucket: cfg.bucket.clone(),
            root: cfg.normalized_root(),
            retries: cfg.retries,
            timeout_ms: cfg.timeout_ms,
        }
    }

    /// The endpoint as shown in messages.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket name.
    pub(crate) fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `Backend` error for a failed request: what was done, where, after how many retries, and
    /// a hint chosen from the kind of failure.
    pub(crate) fn error(&self, what: impl std::fmt::Display, err: opendal::Error) -> Error {
        let text = err.to_string();
        let hint = if err.kind() == DalKind::PermissionDenied
            || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
        {
            "the server refused the credentials: check access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)".to_string()
        } else if text.contains("NoSuchBucket") {
            format!(
                "bucket `{}` does not exist there: create it or fix `bucket`",
                self.bucket
            )
        } else if text.contains("timeout reached") {
            format!(
                "no answer within timeout_ms = {} ms: raise timeout_ms or check the server's load",
                self.timeout_ms
            )
        } else if err.is_temporary()
            || text.contains("error sending request")
            || text.contains("connect")
        {
            "the server did not answer: is it running and reachable at that endpoint?".to_string()
        } else {
            "see the cause".to_string()
        };
        // The cause can carry a whole HTTP response; the full error stays in `source`.
        let cause: String = if text.chars().count() > CAUSE_CHARS {
            text.chars().take(CAUSE_CHARS).chain("…".chars()).collect()
        } else {
            text
        };
        Error::Backend {
            provider: PROVIDER.to_string(),
            message: format!(
                "{what} failed at {} (bucket `{}`, root `{}`, up to {} retries): {hint}; cause: {cause}",
                self.endpoint, self.bucket, self.root, self.retries
            ),
            source: Some(Box::new(err)),
        }
    }
}

/// Whether OpenDAL says the object does not exist.
pub(crate) fn is_not_found(err: &opendal::Error) -> bool {
    // A missing bucket is also a 404; it must not read as "no such record".
    err.kind() == DalKind::NotFound && !err.to_string().contains("NoSuchBucket")
}

/// Whether a conditional request lost (`If-None-Match: *` on an existing object, `If-Match` on
/// a changed one).
pub(crate) fn is_precondition_failed(err: &opendal::Error) -> bool {
    err.kind() == DalKind::ConditionNotMatch
}
