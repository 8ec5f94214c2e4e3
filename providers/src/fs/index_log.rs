//! The index log: an append-only file of checksummed records describing every version write
//! and purge, replayed into the in-memory [`super::index::Index`] on open.
//!
//! Layout (all integers little-endian; see `docs/formats.md`):
//!
//! ```text
//! header  : b"STOWFSIX" (8) | format version u8 (= 1) | 7 reserved zero bytes
//! record* : payload length u32 | checksum u32 (first 4 bytes of blake3(payload)) | payload
//! payload : one compact JSON object, `LogRecord`
//! ```
//!
//! A record counts only when its whole frame is present and its checksum matches. A frame cut
//! short at the end of the file is a *torn tail* (a writer died mid-append); a complete frame
//! with a wrong checksum or an undecodable payload is *corruption*. Either way the scan stops
//! there: everything before is served, nothing from there on is.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use stowage_core::{ContentHash, Key, Metadata, Namespace, RecordInfo, Timestamp};

/// First bytes of every index log.
pub(crate) const MAGIC: &[u8; 8] = b"STOWFSIX";
/// The format version this code writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Bytes before the first record.
pub(crate) const HEADER_LEN: u64 = 16;
/// Bytes before each record's payload (length + checksum).
const FRAME_HEADER_LEN: u64 = 8;
/// Larger payloads are refused on write and treated as corruption on read (a flipped bit in a
/// length field must not make a reader allocate gigabytes).
pub(crate) const MAX_PAYLOAD_LEN: u32 = 16 << 20;

/// The header of a fresh log.
pub(crate) fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = FORMAT_VERSION;
    h
}

/// Why a log header was refused.
#[derive(Debug)]
pub(crate) enum HeaderError {
    /// Shorter than a header.
    Short,
    /// Not an index log at all.
    BadMagic,
    /// Written by a different format version.
    Version(u8),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => f.write_str("the file is shorter than the 16-byte header"),
            HeaderError::BadMagic => f.write_str("it does not start with STOWFSIX; it is not a stowage fs index log"),
            HeaderError::Version(v) => write!(
                f,
                "it has format version {v}, this stowage reads version {FORMAT_VERSION}; use a stowage release that knows version {v}"
            ),
        }
    }
}

/// Checks the header of an open log (reads from the start).
pub(crate) fn check_header(file: &mut File) -> io::Result<Result<(), HeaderError>> {
    let mut h = [0u8; HEADER_LEN as usize];
    file.seek(SeekFrom::Start(0))?;
    let mut got = 0;
    while got < h.len() {
        let n = file.read(&mut h[got..])?;
        if n == 0 {
            return Ok(Err(HeaderError::Short));
        }
        got += n;
    }
    if &h[..8] != MAGIC {
        return Ok(Err(HeaderError::BadMagic));
    }
    if h[8] != FORMAT_VERSION {
        return Ok(Err(HeaderError::Version(h[8])));
    }
    Ok(Ok(()))
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub(crate) enum LogRecord {
    /// A new version of a key (put, tombstone or restore).
    #[serde(rename = "v")]
    Version(VersionRecord),
    /// Every version of a key removed for good.
    #[serde(rename = "p")]
    Purge {
        /// Namespace.
        ns: Namespace,
        /// Key.
        k: Key,
    },
}

/// A version write. Short field names keep a 100 000-record log small and quick to replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub k: Key,
    /// Version number.
    pub v: u64,
    /// Payload hash.
    pub h: ContentHash,
    /// Payload size.
    pub s: u64,
    /// created_at, µs since the epoch.
    pub c: i64,
    /// updated_at, µs since the epoch.
    pub u: i64,
    /// deleted_at (tombstones), µs since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<i64>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "metadata_is_empty")]
    pub m: Metadata,
}

fn metadata_is_empty(m: &Metadata) -> bool {
    m.content_type.is_none() && m.tags.is_empty() && m.attributes.is_empty()
}

impl VersionRecord {
    /// The record of `info`.
    pub(crate) fn from_info(info: &RecordInfo) -> Self {
        VersionRecord {
            ns: info.namespace.clone(),
            k: info.key.clone(),
            v: info.version,
            h: info.hash,
            s: info.size,
            c: info.created_at.as_micros(),
            u: info.updated_at.as_micros(),
            d: info.deleted_at.map(|t| t.as_micros()),
            m: info.metadata.clone(),
        }
    }

    /// The [`RecordInfo`] this record describes.
    pub(crate) fn into_info(self) -> RecordInfo {
        RecordInfo {
            namespace: self.ns,
            key: self.k,
            version: self.v,
            hash: self.h,
            size: self.s,
            created_at: Timestamp::from_micros(self.c),
            updated_at: Timestamp::from_micros(self.u),
            deleted_at: self.d.map(Timestamp::from_micros),
            metadata: self.m,
            conflicts: Vec::new(),
        }
    }
}

fn checksum(payload: &[u8]) -> u32 {
    let h = blake3::hash(payload);
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends the framed encoding of `record` to `out`, returning the frame length.
pub(crate) fn encode(record: &LogRecord, out: &mut Vec<u8>) -> io::Result<u64> {
    let payload = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD_LEN)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an index record of {} bytes exceeds the {MAX_PAYLOAD_LEN}-byte limit; store less metadata",
                    payload.len()
                ),
            )
        })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(FRAME_HEADER_LEN + payload.len() as u64)
}

/// Where and why a scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Offset of the first byte not served.
    pub offset: u64,
    /// Bytes from `offset` to the end of the file.
    pub bytes: u64,
    /// Torn (an incomplete final frame) or corrupt.
    pub kind: DamageKind,
}

/// The kind of [`Damage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// The last frame is incomplete: a writer stopped mid-append. Nothing acknowledged is lost.
    Torn,
    /// A complete frame failed its checksum or could not be decoded; the reason says which.
    Corrupt(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            DamageKind::Torn => write!(
                f,
                "torn tail at offset {}: the last {} bytes are an incomplete record (a writer stopped mid-append)",
                self.offset, self.bytes
            ),
            DamageKind::Corrupt(reason) => write!(
                f,
                "corrupt record at offset {} ({reason}); it and the {} bytes after it cannot be trusted",
                self.offset, self.bytes
            ),
        }
    }
}

/// The result of a scan.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// End of the last good record.
    pub offset: u64,
    /// Set when the scan stopped before `end`.
    pub damage: Option<Damage>,
}

/// Reads records from `start` up to `end` (the file length the caller saw), calling `apply`
/// with each decoded record and its frame length. `apply` refusing a record (a version that
/// does not follow its predecessor) stops the scan as corruption.
pub(crate) fn scan(
    file: &File,
    start: u64,
    end: u64,
    mut apply: impl FnMut(LogRecord, u64) -> Result<(), String>,
) -> io::Result<ScanEnd> {
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    reader.seek(SeekFrom::Start(start))?;
    let mut offset = start;
    let mut payload = Vec::new();
    let stop = |offset: u64, kind: DamageKind| ScanEnd {
        offset,
        damage: Some(Damage {
            offset,
            bytes: end - offset,
            kind,
        }),
    };
    while offset < end {
        if end - offset < FRAME_HEADER_LEN {
            return Ok(stop(offset, DamageKind::Torn));
        }
        let mut fh = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut fh)?;
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]);
        let sum = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
        if len > MAX_PAYLOAD_LEN {
            return Ok(stop(
                offset,
                DamageKind::Corrupt(format!("length field {len} is over the {MAX_PAYLOAD_LEN}-byte limit")),
            ));
        }
        if end - offset - FRAME_HEADER_LEN < u64::from(len) {
            return Ok(stop(offset, DamageKind::Torn));
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if checksum(&payload) != sum {
            return Ok(stop(offset, DamageKind::Corrupt("checksum mismatch".into())));
        }
        let record: LogRecord = match serde_json::from_slice(&payload) {
            Ok(r) => r,
            Err(e) => {
                return Ok(stop(
                    offset,
                    DamageKind::Corrupt(format!("checksum matches but the record does not decode: {e}")),
                ))
            }
        };
        let frame = FRAME_HEADER_LEN + u64::from(len);
        if let Err(reason) = apply(record, frame) {
            return Ok(stop(offset, DamageKind::Corrupt(reason)));
        }
        offset += frame;
    }
    Ok(ScanEnd {
        offset,
        damage: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(v: u64) -> LogRecord {
        LogRecord::Version(VersionRecord {
            ns: Namespace::new("default").unwrap(),
            k: Key::new("a/b").unwrap(),
            v,
            h: ContentHash::of(b"x"),
            s: 1,
            c: 1,
            u: 2,
            d: None,
            m: Metadata::new().with_tag("t"),
        })
    }

    fn write_log(records: &[LogRecord]) -> (tempfile::NamedTempFile, Vec<u64>) {
        let mut buf = header().to_vec();
        let mut ends = Vec::new();
        for r in records {
            encode(r, &mut buf).unwrap();
            ends.push(buf.len() as u64);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&buf).unwrap();
        (f, ends)
    }

    fn scan_all(f: &File) -> (Vec<LogRecord>, ScanEnd) {
        let len = f.metadata().unwrap().len();
        let mut out = Vec::new();
        let end = scan(f, HEADER_LEN, len, |r, _| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        (out, end)
    }

    #[test]
    fn round_trip() {
        let (f, ends) = write_log(&[rec(1), rec(2)]);
        let mut file = f.reopen().unwrap();
        assert!(check_header(&mut file).unwrap().is_ok());
        let (got, end) = scan_all(&file);
        assert_eq!(got, vec![rec(1), rec(2)]);
        assert_eq!(end.offset, ends[1]);
        assert!(end.damage.is_none());
    }

    #[test]
    fn torn_and_corrupt_tails_stop_the_scan() {
        let (f, ends) = write_log(&[rec(1), rec(2)]);
        let file = f.reopen().unwrap();
        file.set_len(ends[1] - 3).unwrap();
        let (got, end) = scan_all(&file);
        assert_eq!(got, vec![rec(1)]);
        assert_eq!(end.damage.unwrap().kind, DamageKind::Torn);

        let (f, ends) = write_log(&[rec(1), rec(2)]);
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[ends[1] as usize - 2] ^= 0x40;
        std::fs::write(f.path(), &bytes).unwrap();
        let (got, end) = scan_all(&f.reopen().unwrap());
        assert_eq!(got, vec![rec(1)]);
        let damage = end.damage.unwrap();
        assert_eq!(damage.offset, ends[0]);
        assert!(matches!(damage.kind, DamageKind::Corrupt(_)));
    }

    #[test]
    fn bad_headers_are_named() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"STOWFSIX\x09\0\0\0\0\0\0\0").unwrap();
        let err = check_header(&mut f).unwrap().unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"not a log at all").unwrap();
        assert!(matches!(check_header(&mut f).unwrap(), Err(HeaderError::BadMagic)));
    }
}
