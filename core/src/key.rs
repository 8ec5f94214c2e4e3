//! Validated names: [`Namespace`] (the tenant) and [`Key`] (a record's path-like name).
//!
//! Both are checked when built, so every backend receives only names that follow the rules and
//! a hostile name is refused before any I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// A tenant: every operation runs inside exactly one. Matches `[a-z0-9][a-z0-9_-]{0,62}`.
///
/// ```
/// use stowage_core::Namespace;
/// assert!(Namespace::new("acme-1").is_ok());
/// assert!(Namespace::new("Acme").is_err());
/// assert_eq!(Namespace::default().as_str(), "default");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

impl Namespace {
    /// The namespace used when none is named.
    pub const DEFAULT: &'static str = "default";

    /// Validates `name` as a namespace.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match namespace_problem(name.as_bytes()) {
            Some(reason) => Err(Error::InvalidNamespace {
                namespace: name,
                reason,
            }),
            None => Ok(Namespace(name)),
        }
    }

    /// [`set`](Self::set) for a name the caller has just checked (with
    /// [`namespace_bytes_valid`]).
    pub(crate) fn set_prechecked(&mut self, name: &str) {
        debug_assert!(namespace_problem(name.as_bytes()).is_none(), "{name:?}");
        self.0.clear();
        self.0.push_str(name);
    }

    /// Validates `name` into this namespace, keeping its buffer: the plugin guest keeps one
    /// namespace per thread instead of allocating one on every call. Unchanged on error.
    pub(crate) fn set(&mut self, name: &str) -> Result<()> {
        if let Some(reason) = namespace_problem(name.as_bytes()) {
            return Err(Error::InvalidNamespace {
                namespace: name.to_string(),
                reason,
            });
        }
        self.set_prechecked(name);
        Ok(())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(Self::DEFAULT.to_string())
    }
}

impl TryFrom<String> for Namespace {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Namespace::new(value)
    }
}

impl From<Namespace> for String {
    fn from(value: Namespace) -> Self {
        value.0
    }
}

impl std::str::FromStr for Namespace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Namespace::new(s)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.0)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A record's name: path-like UTF-8, 1–1024 bytes, `/`-separated segments, none empty, none
/// `.` or `..`, no leading `/`, no NUL, control character or `\`. Compared byte-exactly.
///
/// ```
/// use stowage_core::Key;
/// assert!(Key::new("tapes/2025/a.json").is_ok());
/// for bad in ["", "/abs", "a//b", "../etc/passwd", "a/./b", "a\\b", "nul\0"] {
///     assert!(Key::new(bad).is_err(), "{bad:?}");
/// }
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if let Some(reason) = key_problem(&key) {
            return Err(Error::InvalidKey { key, reason });
        }
        Ok(Key(key))
    }

    /// [`set`](Self::set) for a key the caller has just checked (with
    /// [`key_bytes_plainly_valid`]).
    pub(crate) fn set_prechecked(&mut self, key: &str) {
        debug_assert!(key_problem(key).is_none(), "{key:?}");
        self.0.clear();
        self.0.push_str(key);
    }

    /// Validates `key` into this key, keeping its buffer (see [`Namespace::set`]). Unchanged
    /// on error.
    pub(crate) fn set(&mut self, key: &str) -> Result<()> {
        if let Some(reason) = key_problem(key) {
            return Err(Error::InvalidKey {
                key: key.to_string(),
                reason,
            });
        }
        self.set_prechecked(key);
        Ok(())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// Whether `bytes` is a valid namespace (and so ASCII): the plugin guest's check of its input
/// before any UTF-8 decoding.
pub(crate) fn namespace_bytes_valid(bytes: &[u8]) -> bool {
    namespace_problem(bytes).is_none()
}

/// Why `name` is not a valid namespace, or `None` if it is.
fn namespace_problem(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("it is empty".into());
    }
    if bytes.len() > 63 {
        return Some("it is longer than 63 bytes".into());
    }
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return Some("it must start with a lowercase letter or a digit".into());
    }
    bytes
        .iter()
        .find(|&&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'))
        .map(|c| format!("character {:?} is not allowed", char::from(*c)))
}

/// Whether `key` obviously breaks no rule, in one pass over its bytes: no byte that could
/// start a control character or a backslash, and no empty, `.` or `..` segment. Keys are
/// checked on every call that names one (and again inside a plugin), so the common case
/// avoids the char-by-char checks; anything doubtful goes to [`key_problem`]'s full rules.
fn key_is_plainly_valid(key: &str) -> bool {
    key_bytes_plainly_valid(key.as_bytes())
}

/// [`key_is_plainly_valid`] over bytes not yet known to be UTF-8 (the plugin guest's input):
/// with [`is_ascii`](slice::is_ascii) as well, they are a valid key and valid UTF-8 in one
/// pass.
pub(crate) fn key_bytes_plainly_valid(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return false;
    }
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // C0 controls, DEL, `\`, and 0xC2, the lead byte of the C1 controls (U+0080–U+009F).
        if b < 0x20 || b == 0x7F || b == b'\\' || b == 0xC2 {
            return false;
        }
        if b == b'/' {
            if !plain_segment(&bytes[segment_start..i]) {
                return false;
            }
            segment_start = i + 1;
        }
    }
    plain_segment(&bytes[segment_start..])
}

fn plain_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"" | b"." | b"..")
}

/// Why `key` is not a valid key, or `None` if it is.
fn key_problem(key: &str) -> Option<String> {
    if key_is_plainly_valid(key) {
        return None;
    }
    key_problem_in_full(key)
}

/// Every key rule, in the order their messages take precedence.
fn key_problem_in_full(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("a key must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Some(format!(
            "a key is at most {MAX_KEY_LEN} bytes, this one is {}",
            key.len()
        ));
    }
    if key.starts_with('/') {
        return Some("a key must not start with `/` (keys are relative)".into());
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Some(format!(
            "a key must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    if key.contains('\\') {
        return Some("a key must not contain `\\`; use `/` to separate segments".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Some(
                    "a key must not contain an empty segment (`//` or a trailing `/`)".into(),
                )
            }
            "." | ".." => return Some(format!("a key must not contain a `{segment}` segment")),
            _ => {}
        }
    }
    None
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Key::new(value)
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        Key::new(value)
    }
}

impl From<Key> for String {
    fn from(value: Key) -> Self {
        value.0
    }
}

impl std::str::FromStr for Key {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Key::new(s)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check never lets through a key the full rules refuse: every string of up
    /// to four characters over an alphabet of separators, dots, controls (C0, DEL, both ends
    /// of C1), their neighbours and multi-byte letters gets the same verdict and message.
    #[test]
    fn the_fast_key_check_agrees_with_the_full_rules() {
        let alphabet = [
            "a", "/", ".", "\\", "\u{0}", "\u{1f}", " ", "\u{7f}", "\u{80}", "\u{9f}", "\u{a0}",
            "é", "\u{2028}",
        ];
        let mut keys = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            frontier = frontier
                .iter()
                .flat_map(|k| alphabet.iter().map(move |c| format!("{k}{c}")))
                .collect();
            keys.extend(frontier.iter().cloned());
        }
        keys.push("x".repeat(MAX_KEY_LEN));
        keys.push("x".repeat(MAX_KEY_LEN + 1));
        keys.push(format!("{}/", "x".repeat(MAX_KEY_LEN - 1)));
        for key in &keys {
            assert_eq!(key_problem(key), key_problem_in_full(key), "{key:?}");
        }
        assert!(keys.iter().filter(|k| key_is_plainly_valid(k)).count() > 300);
    }

    /// `set` (the plugin guest's reused buffers) accepts and refuses exactly what `new` does,
    /// with the same error, and leaves the value alone when it refuses.
    #[test]
    fn set_checks_like_new_and_keeps_the_old_value_on_error() {
        fn agree<T: Clone + PartialEq + std::fmt::Debug>(
            value: &mut T,
            candidate: &str,
            new: impl Fn(&str) -> Result<T>,
            set: impl Fn(&mut T, &str) -> Result<()>,
        ) {
            let before = value.clone();
            match (new(candidate), set(value, candidate)) {
                (Ok(fresh), Ok(())) => assert_eq!(&fresh, value),
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string());
                    assert_eq!(value, &before, "{candidate:?}");
                }
                (a, b) => panic!("{candidate:?}: new gave {a:?}, set gave {b:?}"),
            }
        }
        let mut key = Key::new("a-much-longer/first/key").unwrap();
        let mut ns = Namespace::new("first").unwrap();
        for candidate in ["b", "../x", "/abs", "a//b", "a\0b", "ok/again", ""] {
            agree(&mut key, candidate, |k| Key::new(k), Key::set);
        }
        for candidate in ["b", "Acme", "", "x-y_z", &"n".repeat(64), "9", "é", "a b"] {
            assert_eq!(
                namespace_bytes_valid(candidate.as_bytes()),
                Namespace::new(candidate).is_ok(),
                "{candidate:?}"
            );
            agree(&mut ns, candidate, |n| Namespace::new(n), Namespace::set);
        }
        assert_eq!(key.as_str(), "ok/again");
        assert_eq!(ns.as_str(), "9");
        ns.set_prechecked("prechecked");
        key.set_prechecked("pre/checked");
        assert_eq!((ns.as_str(), key.as_str()), ("prechecked", "pre/checked"));
    }

    #[test]
    fn keys_follow_the_rules() {
        for good in [
            "a",
            "a/b",
            "a.b/c..d/.hidden",
            "ünï/cødé",
            &"x".repeat(1024),
        ] {
            assert!(Key::new(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "../x",
            "a/../b",
            "a/.",
            "a\\b",
            "a\0b",
            "a\nb",
            "a\u{7f}",
            &"x".repeat(1025),
        ] {
            let err = Key::new(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidKey, "{bad:?}");
        }
    }

    #[test]
    fn namespaces_follow_the_rules() {
        for good in ["default", "a", "0", "acme_1-x", &"a".repeat(63)] {
            assert!(Namespace::new(good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a", "_a", "A", "a/b", "a.b", "..", &"a".repeat(64)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?}");
        }
    }
}
