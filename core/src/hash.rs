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
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash([u8; 32]);

/// Length of the textual form: `blake3:` and 64 hex digits.
const TEXT_LEN: usize = 7 + 64;

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

impl ContentHash {
    /// Writes `blake3:<hex>` into `buf` without allocating (hashes are serialized in every
    /// record's JSON, the plugin ABI's included).
    fn text<'b>(&self, buf: &'b mut [u8; TEXT_LEN]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        buf[..7].copy_from_slice(Self::PREFIX.as_bytes());
        for (i, b) in self.0.iter().enumerate() {
            buf[7 + 2 * i] = DIGITS[(b >> 4) as usize];
            buf[8 + 2 * i] = DIGITS[(b & 0xf) as usize];
        }
        std::str::from_utf8(buf).expect("ASCII by construction")
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text(&mut [0; TEXT_LEN]))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text(&mut [0; TEXT_LEN]))
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        crate::model::deserialize_text(
            deserializer,
            "a content hash `blake3:<64 hex digits>`",
            str::parse::<ContentHash>,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    #[test]
    fn hashes_and_times_keep_their_text_in_json() {
        let h = ContentHash::of(b"hello");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"blake3:{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), h);
        // An escaped string is not borrowed from the input; it must parse all the same.
        let escaped = json.replacen('b', "\\u0062", 1);
        assert_eq!(serde_json::from_str::<ContentHash>(&escaped).unwrap(), h);
        let err = serde_json::from_str::<ContentHash>("\"sha256:00\"").unwrap_err();
        assert!(err.to_string().contains("blake3:"), "{err}");

        for micros in [0, 1_767_225_600_000_006, 253_402_300_799_999_999] {
            let t = Timestamp::from_micros(micros);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
            assert_eq!(
                serde_json::from_str::<Timestamp>(&json).unwrap(),
                t,
                "{json}"
            );
        }
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
