//! Content addressing: [`ContentHash`] (`blake3:<hex>`) and the streaming [`ContentHasher`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The blake3 hash of a payload, written `blake3:<64 hex digits>`.
///
/// ```
/// use stowage_core::ContentHash;
/// let h = ContentHash::of(b"hello");
/// assert!(h.to_string().starts_with("blake3:"));
/// assert_eq!(h.to_string().parse::<ContentHash>().unwrap(), h);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The prefix of the textual form.
    pub const PREFIX: &'static str = "blake3:";

    /// Hashes a whole in-memory payload.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ContentHash(bytes)
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `blake3:` prefix (for file and object names).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (no prefix).
    pub fn from_hex(hex_digits: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out)
            .map_err(|e| Error::invalid_input(format!("bad content hash {hex_digits:?}: {e}")))?;
        Ok(ContentHash(out))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for ContentHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let hex_digits = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            Error::invalid_input(format!("content hash {s:?} must start with `blake3:`"))
        })?;
        Self::from_hex(hex_digits)
    }
}

impl TryFrom<String> for ContentHash {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<ContentHash> for String {
    fn from(value: ContentHash) -> Self {
        value.to_string()
    }
}

/// Hashes a payload chunk by chunk while it streams, counting its size.
#[derive(Default, Clone)]
pub struct ContentHasher {
    inner: blake3::Hasher,
    size: u64,
}

impl ContentHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.inner.update(chunk);
        self.size += chunk.len() as u64;
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hash and size of everything fed.
    pub fn finish(&self) -> (ContentHash, u64) {
        (ContentHash(*self.inner.finalize().as_bytes()), self.size)
    }
}
