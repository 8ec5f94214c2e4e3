//! The data model: metadata, record info, write modes, options, pages, capabilities, reports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::key::{Key, Namespace};

/// A record's version number: starts at 1, +1 per write (put, delete, restore) of that key.
pub type Version = u64;

/// A point in time with microsecond precision, written as RFC 3339 (`2025-01-02T03:04:05.000006Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Microseconds since the Unix epoch.
    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(&self) -> i64 {
        self.0
    }

    /// Converts a `SystemTime`.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_micros() as i64),
            Err(e) => Timestamp(-(e.duration().as_micros() as i64)),
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system_time(&self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }

    /// Parses RFC 3339: `2025-01-02T03:04:05Z`, with fractional seconds, an offset from UTC
    /// (`+01:00`, `-05:30`), lower-case `t` and `z`, or a space for the `T`. The `Z` or the
    /// offset is required, and times before 1970 are refused by name (a [`Timestamp`] counts
    /// from the Unix epoch).
    ///
    /// ```
    /// use stowage_core::Timestamp;
    /// let utc = Timestamp::parse_rfc3339("2025-01-02T03:04:05Z").unwrap();
    /// assert_eq!(Timestamp::parse_rfc3339("2025-01-02T04:04:05+01:00").unwrap(), utc);
    /// assert_eq!(Timestamp::parse_rfc3339("2025-01-01t22:04:05-05:00").unwrap(), utc);
    /// assert!(Timestamp::parse_rfc3339("2025-01-02T03:04:05+1").is_err());
    /// // No offset says nothing of which clock: refused rather than guessed.
    /// assert!(Timestamp::parse_rfc3339("2025-01-02T03:04:05").is_err());
    /// // Valid RFC 3339, but before any time stowage keeps.
    /// let early = Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").unwrap_err();
    /// assert!(early.to_string().contains("before 1970"));
    /// ```
    pub fn parse_rfc3339(s: &str) -> Result<Self> {
        let bad = |e: &dyn fmt::Display| {
            Error::invalid_input(format!(
                "time {s:?} is not RFC 3339 (like 2025-01-02T03:04:05Z or 2025-01-02T04:04:05+01:00): {e}"
            ))
        };
        let upper = s.to_ascii_uppercase();
        // An offset `±HH:MM` at the end: parse the time as UTC, then take the offset off.
        let split = upper
            .len()
            .checked_sub(6)
            .filter(|&at| upper.is_char_boundary(at))
            .map(|at| upper.split_at(at));
        let (utc, offset_minutes) = match split {
            Some((time, offset))
                if offset.is_ascii()
                    && matches!(&offset[..1], "+" | "-")
                    && &offset[3..4] == ":" =>
            {
                let number = |t: &str| {
                    t.parse::<i64>()
                        .ok()
                        .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                };
                let (Some(hours), Some(minutes)) = (number(&offset[1..3]), number(&offset[4..6]))
                else {
                    return Err(bad(&"the offset from UTC must be ±HH:MM"));
                };
                if hours > 23 || minutes > 59 {
                    return Err(bad(&"the offset from UTC must be ±HH:MM, at most ±23:59"));
                }
                let sign = if offset.starts_with('-') { -1 } else { 1 };
                (format!("{time}Z"), sign * (hours * 60 + minutes))
            }
            _ if upper.ends_with('Z') => (upper, 0),
            _ => {
                return Err(bad(
                    &"it says no offset from UTC: end it with Z for UTC, or with an offset such as +01:00",
                ))
            }
        };
        let before_1970 = || {
            Error::invalid_input(format!(
                "time {s:?} is before 1970-01-01T00:00:00Z, the earliest time stowage keeps"
            ))
        };
        if utc.get(..4).and_then(|y| y.parse::<u32>().ok()) < Some(1970)
            && utc.as_bytes().get(4) == Some(&b'-')
        {
            return Err(before_1970());
        }
        let at = humantime::parse_rfc3339_weak(&utc).map_err(|e| bad(&e))?;
        let micros = Self::from_system_time(at).0 - offset_minutes * 60_000_000;
        if micros < 0 {
            return Err(before_1970());
        }
        Ok(Timestamp(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_micros(self.to_system_time())
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl TryFrom<String> for Timestamp {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Timestamp::parse_rfc3339(&value)
    }
}

/// A small stack buffer for a timestamp's text, so serializing one allocates nothing.
struct TimeText {
    buf: [u8; 40],
    len: usize,
}

impl fmt::Write for TimeText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut text = TimeText {
            buf: [0; 40],
            len: 0,
        };
        match fmt::Write::write_fmt(&mut text, format_args!("{self}")) {
            Ok(()) => serializer.serialize_str(
                std::str::from_utf8(&text.buf[..text.len]).expect("fmt writes UTF-8"),
            ),
            // Far-off years do not fit the buffer; they take the allocating path.
            Err(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserialize_text(
            deserializer,
            "an RFC 3339 time like 2025-01-02T03:04:05Z",
            Timestamp::parse_rfc3339,
        )
    }
}

/// Deserializes a value written as one string, parsing the text in place, borrowed or not (no
/// `String` per value); `expecting` says what the text should look like.
pub(crate) fn deserialize_text<'de, D, T, E>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> std::result::Result<T, E>,
) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: fmt::Display,
{
    struct Text<T, E> {
        expecting: &'static str,
        parse: fn(&str) -> std::result::Result<T, E>,
    }
    impl<T, E: fmt::Display> serde::de::Visitor<'_> for Text<T, E> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<Er: serde::de::Error>(self, v: &str) -> std::result::Result<T, Er> {
            (self.parse)(v).map_err(Er::custom)
        }
    }
    deserializer.deserialize_str(Text { expecting, parse })
}

impl From<Timestamp> for String {
    fn from(value: Timestamp) -> Self {
        value.to_string()
    }
}

/// What a caller attaches to a payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// MIME type of the payload (e.g. `application/json`).
    pub content_type: Option<String>,
    /// A set of labels; `search` can require all of several.
    pub tags: BTreeSet<String>,
    /// Named JSON values; `search` filters on equality and ranges.
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is no content type, no tag and no attribute (what [`Metadata::new`]
    /// makes).
    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.tags.is_empty() && self.attributes.is_empty()
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Sets an attribute.
    pub fn with_attribute(
        mut self,
        name: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Whether the content type names JSON (`application/json`, `application/…+json`, any case,
    /// with or without parameters): the payloads a merging provider keeps as documents.
    ///
    /// ```
    /// use stowage_core::Metadata;
    /// let json = |ct: &str| Metadata::new().with_content_type(ct).is_json();
    /// assert!(json("application/json; charset=utf-8") && json("Application/LD+JSON"));
    /// assert!(!json("text/json") && !Metadata::new().is_json());
    /// ```
    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(is_json_content_type)
    }

    /// Checks the content type, every tag and every attribute name for control characters
    /// (a newline in a tag would read as another line of `stowage head`, as keys refuse them
    /// for the same reason); `InvalidInput` names the field and the character.
    ///
    /// ```
    /// use stowage_core::Metadata;
    /// assert!(Metadata::new().with_tag("draft").validate().is_ok());
    /// assert!(Metadata::new().with_tag("a\nb").validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, text: &str| {
            match text.chars().find(|c| c.is_control()) {
            None => Ok(()),
            Some(c) => Err(Error::invalid_input(format!(
                "{field} {text:?} contains the control character U+{:04X}; {field}s may not hold control characters",
                c as u32
            ))),
        }
        };
        if let Some(ct) = &self.content_type {
            check("content type", ct)?;
        }
        for tag in &self.tags {
            check("tag", tag)?;
        }
        for name in self.attributes.keys() {
            check("attribute name", name)?;
        }
        Ok(())
    }
}

/// Whether a content type names JSON (`application/json`, `application/…+json`, any case, with
/// or without parameters). See [`Metadata::is_json`].
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A field whose concurrent values a merging provider kept (see `automerge`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// JSON-pointer-like path of the field (e.g. `/title`).
    pub path: String,
    /// Every concurrent value, the winning one first.
    pub values: Vec<serde_json::Value>,
}

/// What `head`, `list`, `search`, `versions` and writes return about one version of a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordInfo {
    /// The namespace the record lives in.
    pub namespace: Namespace,
    /// The record's key.
    pub key: Key,
    /// This version's number.
    pub version: Version,
    /// Hash of this version's payload (for a tombstone: of the payload it deleted).
    pub hash: ContentHash,
    /// Payload size in bytes.
    pub size: u64,
    /// When the key's first version was written.
    pub created_at: Timestamp,
    /// When this version was written.
    pub updated_at: Timestamp,
    /// Set on a tombstone: when the record was deleted.
    pub deleted_at: Option<Timestamp>,
    /// The metadata of this version.
    pub metadata: Metadata,
    /// Concurrent values kept by a merging provider; empty elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
}

impl RecordInfo {
    /// Whether this version is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The flat JSON form the CLI prints (`{namespace, key, version, hash, size, content_type,
    /// tags, attributes, created_at, updated_at, deleted_at}`, plus `conflicts` when non-empty).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "namespace": self.namespace,
            "key": self.key,
            "version": self.version,
            "hash": self.hash,
            "size": self.size,
            "content_type": self.metadata.content_type,
            "tags": self.metadata.tags,
            "attributes": self.metadata.attributes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deleted_at": self.deleted_at,
        });
        if !self.conflicts.is_empty() {
            v["conflicts"] = serde_json::to_value(&self.conflicts).unwrap_or_default();
        }
        v
    }
}

/// How a put treats what is already stored under the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    /// Write a new version whatever is there.
    #[default]
    Overwrite,
    /// Write only if the key has no live version (absent or deleted).
    Create,
    /// Write only if the key's latest version (a tombstone counts) is exactly this one; `0`
    /// means the key has no version at all (never written, or purged).
    IfVersion(Version),
    /// "My writer read this version": a merging provider merges the change against it; every
    /// other provider treats it as [`PutMode::IfVersion`].
    Base(Version),
}

impl PutMode {
    /// Checks this mode's precondition against the key's latest version: `None` when the key
    /// has no version (never written, or purged), else its number and whether it is a
    /// tombstone. The one rule every provider applies, with the [`Error::Conflict`] every one
    /// reports (the current version in it, when there is one).
    ///
    /// ```
    /// use stowage_core::{ErrorKind, Key, Namespace, PutMode};
    /// let (ns, key) = (Namespace::new("acme").unwrap(), Key::new("k").unwrap());
    /// assert!(PutMode::Create.check(&ns, &key, Some((3, true))).is_ok());
    /// let err = PutMode::IfVersion(2).check(&ns, &key, Some((3, false))).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Conflict);
    /// assert!(err.to_string().contains("expected version 2"));
    /// ```
    pub fn check(self, ns: &Namespace, key: &Key, latest: Option<(Version, bool)>) -> Result<()> {
        let holds = match self {
            PutMode::Overwrite => true,
            PutMode::Create => latest.is_none_or(|(_, deleted)| deleted),
            PutMode::IfVersion(v) | PutMode::Base(v) => latest.map_or(0, |(l, _)| l) == v,
        };
        if holds {
            return Ok(());
        }
        Err(Error::Conflict {
            namespace: ns.to_string(),
            key: key.to_string(),
            expected: self.expected(),
            current: latest.map(|(v, _)| v),
        })
    }

    /// [`check`](Self::check) against the key's latest record (`None` when it has none), as
    /// a provider that holds the record has it.
    pub fn check_latest(
        self,
        ns: &Namespace,
        key: &Key,
        latest: Option<&RecordInfo>,
    ) -> Result<()> {
        self.check(ns, key, latest.map(|r| (r.version, r.is_deleted())))
    }

    /// What this mode expects of the key, as a [`Error::Conflict`] names it.
    pub fn expected(self) -> String {
        match self {
            PutMode::Overwrite => "any version".into(),
            PutMode::Create => "no live version".into(),
            PutMode::IfVersion(v) | PutMode::Base(v) => format!("version {v}"),
        }
    }
}

/// A byte range `[start, end)` of a payload; `end: None` reads to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte (inclusive).
    pub start: u64,
    /// End (exclusive); `None` means the end of the payload.
    pub end: Option<u64>,
}

impl ByteRange {
    /// Clamps the range to a payload of `size` bytes, returning `(offset, length)`. An inverted
    /// range, or one that starts past the payload's last byte (`start >= size`, as HTTP has
    /// it), is `InvalidInput` — except a range from 0 of an empty payload, which is empty.
    ///
    /// ```
    /// use stowage_core::ByteRange;
    /// let r = |start, end| ByteRange { start, end };
    /// assert_eq!(r(2, Some(100)).resolve(10).unwrap(), (2, 8));
    /// assert_eq!(r(0, None).resolve(0).unwrap(), (0, 0));
    /// assert!(r(10, None).resolve(10).is_err());
    /// assert!(r(5, Some(4)).resolve(10).is_err());
    /// ```
    pub fn resolve(&self, size: u64) -> Result<(u64, u64)> {
        let end = self.end.unwrap_or(size).min(size);
        if let Some(e) = self.end {
            if e < self.start {
                return Err(Error::invalid_input(format!(
                    "range {}..{e} ends before it starts",
                    self.start
                )));
            }
        }
        if self.start > size || (self.start == size && size > 0) {
            return Err(Error::invalid_input(match size {
                0 => format!(
                    "range starts at byte {} but the payload is empty",
                    self.start
                ),
                1 => format!(
                    "range starts at byte {} but the payload has 1 byte (the last is byte 0)",
                    self.start
                ),
                _ => format!(
                    "range starts at byte {} but the payload has {size} bytes (the last is byte {})",
                    self.start,
                    size - 1
                ),
            }));
        }
        Ok((self.start, end.saturating_sub(self.start)))
    }
}

/// Options of `get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// A specific version; `None` for the latest live one.
    pub version: Option<Version>,
    /// Only these bytes.
    pub range: Option<ByteRange>,
}

/// Options of `delete`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Delete only if the latest version is this one.
    pub if_version: Option<Version>,
}

/// Options of `list`: records in byte order of key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this (byte-wise; need not end at a `/`).
    pub prefix: Option<String>,
    /// Only keys strictly after this one.
    pub start_after: Option<String>,
    /// At most this many records per page.
    pub limit: Option<usize>,
    /// Include records whose latest version is a tombstone (shown as that tombstone).
    pub include_deleted: bool,
    /// The `next` cursor of a previous page.
    pub cursor: Option<String>,
}

/// One page of results and the cursor for the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The results of this page.
    pub items: Vec<T>,
    /// Opaque cursor for the next page; `None` when this was the last one.
    pub next: Option<String>,
}

/// What a page of records answering a `list` or `search` must hold to, as
/// [`page_problem`] checks it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageRules<'a> {
    /// Only keys under this prefix.
    pub prefix: Option<&'a str>,
    /// Only keys after this one (`list`).
    pub start_after: Option<&'a str>,
    /// At most this many records.
    pub limit: Option<usize>,
    /// The cursor the call was given: the page's `next` must be another.
    pub cursor: Option<&'a str>,
    /// Keys in strictly ascending order (`list`).
    pub by_key: bool,
}

/// What is wrong with a page of `items` (and `next` cursor) answering a call on namespace `ns`
/// under `rules`, if anything: a record of another namespace, more than the limit, a `next`
/// cursor equal to the one given (following it would never end), a key outside the prefix, not
/// after `start_after`, or out of order. One rule set for every place that checks a page (each
/// namespace handle, and the plugin host at the trust boundary).
pub(crate) fn page_problem(
    ns: &str,
    items: &[RecordInfo],
    next: Option<&str>,
    rules: &PageRules<'_>,
) -> Option<String> {
    if let Some(other) = items.iter().find(|i| i.namespace.as_str() != ns) {
        return Some(format!(
            "a record of namespace {:?} in a page for namespace {ns:?}",
            other.namespace.as_str()
        ));
    }
    if let Some(limit) = rules.limit.filter(|&l| items.len() > l) {
        return Some(format!(
            "a page of {} items for a limit of {limit}",
            items.len()
        ));
    }
    if next.is_some() && next == rules.cursor {
        return Some(format!(
            "a next cursor equal to the cursor it was given ({:?}): following it would never end",
            next.unwrap_or_default()
        ));
    }
    for (n, item) in items.iter().enumerate() {
        let key = item.key.as_str();
        if let Some(prefix) = rules.prefix.filter(|p| !key.starts_with(p)) {
            return Some(format!(
                "key {key:?} outside the requested prefix {prefix:?}"
            ));
        }
        if !rules.by_key {
            continue;
        }
        if let Some(after) = rules.start_after.filter(|a| key <= *a) {
            return Some(format!("key {key:?} not after start_after {after:?}"));
        }
        if let Some(previous) = n.checked_sub(1).map(|p| items[p].key.as_str()) {
            if previous >= key {
                return Some(format!(
                    "keys not in strictly ascending order: {key:?} follows {previous:?}"
                ));
            }
        }
    }
    None
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}

/// What a provider really supports. Callers ask; the conformance kit chooses tests by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Old versions stay readable (`get` with a version, `versions`).
    pub versions: bool,
    /// `delete` writes a tombstone.
    pub delete: bool,
    /// `restore` undeletes.
    pub restore: bool,
    /// `purge` removes a key for good.
    pub purge: bool,
    /// `search` with [`crate::Query`].
    pub search: bool,
    /// `search` reads every record (no index): say so to the user.
    pub search_is_scan: bool,
    /// `get` with a byte range reads only those bytes.
    pub range_reads: bool,
    /// `PutMode::Create` is atomic.
    pub create_only: bool,
    /// `PutMode::IfVersion` is atomic: of racing writers exactly one wins per version.
    pub if_version: bool,
    /// `PutMode::Base` merges instead of checking (a merging provider).
    pub merge: bool,
    /// Payloads are stored once per hash (dedup across keys and namespaces).
    pub dedup: bool,
    /// `gc` reclaims unreferenced payloads.
    pub gc: bool,
    /// `verify` re-hashes stored payloads.
    pub verify: bool,
    /// `namespaces` lists the namespaces that hold records.
    pub list_namespaces: bool,
    /// Replicas can be synced (`sync`).
    pub sync: bool,
    /// Data survives the process (not in memory only).
    pub durable: bool,
}

/// What `gc` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Payload blobs removed.
    pub blobs_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Payload blobs still referenced and kept.
    pub blobs_kept: u64,
}

/// A problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    /// Namespace of an affected record, if the problem maps to one.
    pub namespace: Option<String>,
    /// Key of an affected record.
    pub key: Option<String>,
    /// Version of an affected record.
    pub version: Option<Version>,
    /// The payload hash involved.
    pub hash: Option<ContentHash>,
    /// `missing`, `corrupt`, or another short word.
    pub problem: String,
    /// Human detail.
    pub detail: String,
}

/// What `verify` checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Record versions checked.
    pub records_checked: u64,
    /// Payload blobs re-hashed.
    pub blobs_checked: u64,
    /// Payload bytes re-hashed.
    pub bytes_checked: u64,
    /// Everything wrong; empty when the store is sound.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Receives progress of long operations (`verify`, `gc`, `copy`); the CLI shows a bar.
pub trait Progress: Send + Sync {
    /// The total amount of work, once known.
    fn set_total(&self, total: u64);
    /// `n` more units done.
    fn inc(&self, n: u64);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _n: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_and_lower_case_read_as_the_same_instant() {
        let utc = Timestamp::parse_rfc3339("2025-01-02T03:04:05.5Z").unwrap();
        for same in [
            "2025-01-02T03:04:05.5+00:00",
            "2025-01-02T03:04:05.5-00:00",
            "2025-01-02t03:04:05.5z",
            "2025-01-02 03:04:05.5Z",
            "2025-01-02T08:34:05.5+05:30",
            "2025-01-01T23:04:05.5-04:00",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(same).unwrap(), utc, "{same}");
        }
    }

    #[test]
    fn malformed_times_and_offsets_are_refused_naming_the_input() {
        for bad in [
            "2025-01-02T03:04:05+1",
            "2025-01-02T03:04:05+24:00",
            "2025-01-02T03:04:05+01:60",
            "2025-01-02T03:04:05+0a:00",
            "2025-01-02T03:04:05+-1:00",
            "2025-01-02T03:04:05é",
            "2025-01-02T03:04:0é:00",
            "yesterday",
            "",
        ] {
            let err = Timestamp::parse_rfc3339(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
