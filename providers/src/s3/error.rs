//! Turns OpenDAL errors into stowage errors that name the endpoint, the bucket and what to do.

use opendal::ErrorKind as DalKind;
use stowage_core::Error;

use super::config::S3Config;
use super::PROVIDER;

/// How much of the condensed cause a message quotes at most.
const CAUSE_CHARS: usize = 300;

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
            match endpoint_path(&self.endpoint) {
                Some(path) => format!(
                    "bucket `{}` does not exist there; the endpoint has a path (`{path}`), which S3 endpoints do not take: drop it, and put a prefix in `root` instead",
                    self.bucket
                ),
                None => format!(
                    "bucket `{}` does not exist there: create it or fix `bucket`",
                    self.bucket
                ),
            }
        } else if let Some(tls) = tls_failure(&err) {
            format!(
                "the TLS handshake failed ({tls}): check that the endpoint speaks https (or use http://) and that its certificate is trusted"
            )
        } else if text.contains("timeout reached") || text.contains(" timeout") {
            format!(
                "no answer within timeout_ms = {} ms: raise timeout_ms or check the server's load",
                self.timeout_ms
            )
        } else if let Some(status) = response_status(&text) {
            // An answer, however unwelcome: the server is there.
            if status >= 500 {
                format!("the server answered HTTP {status}, an error on its side: retry later, or check the server")
            } else {
                format!("the server answered HTTP {status}: see the cause")
            }
        } else if err.is_temporary() || {
            // Only the summary: the full text holds response headers (`connection: …`).
            let summary = summarize(&text);
            summary.contains("error sending request") || summary.contains("connect")
        } {
            "the server did not answer: is it running and reachable at that endpoint?".to_string()
        } else {
            "see the cause".to_string()
        };
        let cause = Cause::of(err);
        Error::Backend {
            provider: PROVIDER.to_string(),
            message: format!(
                "{what} failed at {} (bucket `{}`, root `{}`, up to {} {}): {hint}; cause: {}",
                self.endpoint,
                self.bucket,
                self.root,
                self.retries,
                if self.retries == 1 {
                    "retry"
                } else {
                    "retries"
                },
                cause.summary
            ),
            source: Some(Box::new(cause)),
        }
    }
}

/// The OpenDAL error behind a failed request. `Display` is the short summary the message
/// quotes already (so a printer that appends sources does not repeat it); `Debug` is the full
/// OpenDAL error, HTTP response headers and all, for whoever debugs the request.
pub(crate) struct Cause {
    summary: String,
    error: opendal::Error,
}

impl Cause {
    fn of(error: opendal::Error) -> Self {
        Cause {
            summary: summarize(&error.to_string()),
            error,
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.error)
    }
}

// No `source()`: the summary stands for the OpenDAL error, whose `Display` is the long form.
impl std::error::Error for Cause {}

/// OpenDAL's `Display` of an error, without its `context: { … }` (request URL, the whole HTTP
/// response with its headers, …) and with an `S3Error { code, message, … }` reduced to
/// `S3 <code>: <message>`: `Kind (status) at operation => message[, source: …]`.
fn summarize(text: &str) -> String {
    let (head, rest) = match text.split_once(", context: { ") {
        // The context ends where the message (` => `) or the source begins; its values (URLs,
        // header maps) hold neither.
        Some((head, context)) => match (context.find(" } => "), context.find(" }, source: ")) {
            (Some(m), _) => (head, format!(" => {}", &context[m + " } => ".len()..])),
            (None, Some(s)) => (
                head,
                format!(", source: {}", &context[s + " }, source: ".len()..]),
            ),
            (None, None) => (head, String::new()),
        },
        None => (text, String::new()),
    };
    let rest = match (quoted_field(&rest, "code"), rest.find("S3Error {")) {
        (Some(code), Some(_)) => match quoted_field(&rest, "message") {
            Some(message) => format!(" => S3 {code}: {message}"),
            None => format!(" => S3 {code}"),
        },
        _ => rest,
    };
    let summary = format!("{head}{rest}");
    if summary.chars().count() > CAUSE_CHARS {
        summary
            .chars()
            .take(CAUSE_CHARS)
            .chain("…".chars())
            .collect()
    } else {
        summary
    }
}

/// The value of `name: "…"` in a `Debug` rendering (`S3Error { code: "NoSuchBucket", … }`).
fn quoted_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("{name}: \""))? + name.len() + 3;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The path of an endpoint URL (`http://host:9000/some/path` → `/some/path`), if it has one.
fn endpoint_path(endpoint: &str) -> Option<&str> {
    let rest = endpoint.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    (!path.trim_matches('/').is_empty()).then_some(path)
}

/// What in `err`'s chain of causes says a TLS handshake failed (https spoken to a plain-http
/// server, an untrusted certificate), if anything: OpenDAL's own text keeps only the outermost
/// cause ("error sending request"), so the chain is walked.
fn tls_failure(err: &opendal::Error) -> Option<String> {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let text = c.to_string();
        let lower = text.to_ascii_lowercase();
        if [
            "tls",
            "certificate",
            "handshake",
            "corrupt message",
            "invalidcontenttype",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            return Some(text);
        }
        cause = c.source();
    }
    None
}

/// Whether OpenDAL says the object does not exist.
pub(crate) fn is_not_found(err: &opendal::Error) -> bool {
    // A missing bucket is also a 404; it must not read as "no such record".
    err.kind() == DalKind::NotFound && !err.to_string().contains("NoSuchBucket")
}

/// The HTTP status of the response an OpenDAL error quotes (`response: Parts { status: 503, …`),
/// if the server answered at all.
fn response_status(text: &str) -> Option<u16> {
    let at = text.find("response: Parts {")?;
    let rest = &text[at..];
    let digits = rest[rest.find("status: ")? + "status: ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

/// Whether a conditional request lost (`If-None-Match: *` on an existing object, `If-Match` on
/// a changed one).
pub(crate) fn is_precondition_failed(err: &opendal::Error) -> bool {
    err.kind() == DalKind::ConditionNotMatch
}

#[cfg(test)]
mod tests {
    use super::{endpoint_path, summarize};

    #[test]
    fn an_endpoint_path_is_found() {
        assert_eq!(endpoint_path("http://h:9000/some/path"), Some("/some/path"));
        assert_eq!(endpoint_path("http://h:9000/"), None);
        assert_eq!(endpoint_path("http://h:9000"), None);
        assert_eq!(endpoint_path("the AWS endpoint of region x"), None);
    }

    #[test]
    fn summaries_drop_the_response_and_keep_the_s3_error() {
        let full = "NotFound (persistent) at list, context: { uri: http://h/b?list-type=2, response: Parts { status: 404, version: HTTP/1.1, headers: {\"x-amz-request-id\": \"R\", \"content-length\": \"352\"} }, service: s3, path: meta/, listed: 0 } => S3Error { code: \"NoSuchBucket\", message: \"The specified bucket does not exist\", resource: \"b\", request_id: \"R\" }";
        assert_eq!(
            summarize(full),
            "NotFound (persistent) at list => S3 NoSuchBucket: The specified bucket does not exist"
        );
        let unsent = "Unexpected (persistent) at list, context: { url: http://h/b, called: http_util::Client::send, service: s3, path: meta/ } => send http request, source: error sending request for url (http://h/b)";
        assert_eq!(
            summarize(unsent),
            "Unexpected (persistent) at list => send http request, source: error sending request for url (http://h/b)"
        );
        let no_message =
            "Unexpected (temporary) at read, context: { timeout: 300 }, source: deadline";
        assert_eq!(
            summarize(no_message),
            "Unexpected (temporary) at read, source: deadline"
        );
        assert_eq!(summarize("plain"), "plain");
    }

    #[test]
    fn the_status_of_an_answer_is_found_and_headers_are_not_taken_for_it() {
        use super::response_status;
        let answered = "Unexpected (temporary) at list, context: { uri: http://h/b?list-type=2, response: Parts { status: 503, version: HTTP/1.1, headers: {\"connection\": \"close\"} }, service: s3 } => S3Error { code: \"SlowDown\" }";
        assert_eq!(response_status(answered), Some(503));
        let unsent = "Unexpected (persistent) at list, context: { url: http://h/b } => send http request, source: error sending request for url (http://h/b): client error (Connect)";
        assert_eq!(response_status(unsent), None);
    }
}
