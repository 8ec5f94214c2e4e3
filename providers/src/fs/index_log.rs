//! The index log: an append-only file of checksummed records describing every version write
//! and purge, replayed into the in-memory [`super::index::Index`] on open.
//!
//! Layout (all integers little-endian; see `docs/formats.md`):
//!
//! ```text
//! header  : b"STOWFSIX" (8) | format version u8 (= 2) | 7 reserved zero bytes
//! record* : payload length u32 | checksum u32 (first 4 bytes of blake3(payload)) | payload
//!           | inline payload bytes (only when the payload's flags say so)
//! payload : kind u8 (1 version, 2 purge) | namespace | key | [version fields] (docs/formats.md)
//! ```
//!
//! A record counts only when its whole frame (and its inline bytes) are present and its
//! checksum matches. A record cut short at the end of the file is a *torn tail* (a writer died
//! mid-append); a complete frame with a wrong checksum or an undecodable payload is
//! *corruption*. Either way the scan stops there: everything before is served, nothing from
//! there on is.
//!
//! Inline payload bytes are not covered by the frame checksum: a scan seeks over them (within
//! its read buffer, or past it for large ones), never copying or hashing them, so replay cost
//! hardly grows with payload size. They are checked against the record's blake3 content hash
//! whenever they are read whole, as payload files are.
//!
//! Format version 1 is version 2 without inline payloads; a version-1 log is read as it is and
//! its version byte is raised to 2 (see [`upgrade_header`]) before the first append.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use stowage_core::{ContentHash, Key, Metadata, Namespace, RecordInfo, Timestamp};

use super::config::MAX_INLINE;

/// First bytes of every index log.
pub(crate) const MAGIC: &[u8; 8] = b"STOWFSIX";
/// The format version this code writes (it reads this one and every older one).
pub(crate) const FORMAT_VERSION: u8 = 2;
/// Offset of the format version byte in the header.
const VERSION_OFFSET: u64 = 8;
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
                "it has format version {v}, this stowage reads versions 1 to {FORMAT_VERSION}; use a stowage release that knows version {v}"
            ),
        }
    }
}

/// Checks the header of an open log (reads from the start); returns its format version.
pub(crate) fn check_header(file: &mut File) -> io::Result<Result<u8, HeaderError>> {
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
    if !(1..=FORMAT_VERSION).contains(&h[8]) {
        return Ok(Err(HeaderError::Version(h[8])));
    }
    Ok(Ok(h[8]))
}

/// Raises an older log's version byte to [`FORMAT_VERSION`], so releases that only know the old
/// format refuse it (with a message naming both versions) instead of misreading inline
/// payloads. Called under the writer lock, before the first append to such a log.
pub(crate) fn upgrade_header(file: &File, sync: bool) -> io::Result<()> {
    write_at(file, &[FORMAT_VERSION], VERSION_OFFSET)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::Write;
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}

/// Reads `buf.len()` bytes at `offset` without moving any shared file position, so readers on
/// several threads can share one open log.
#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Reads `buf.len()` bytes at `offset`.
#[cfg(windows)]
pub(crate) fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LogRecord {
    /// A new version of a key (put, tombstone or restore).
    Version(RecordInfo),
    /// Every version of a key removed for good.
    Purge {
        /// Namespace.
        ns: Namespace,
        /// Key.
        k: Key,
    },
}

const KIND_VERSION: u8 = 1;
const KIND_PURGE: u8 = 2;
const FLAG_DELETED: u8 = 1;
const FLAG_CONTENT_TYPE: u8 = 2;
/// Format version 2: the record ends with `inline_len: u32` and that many payload bytes follow
/// the frame.
const FLAG_INLINE: u8 = 4;

/// Where a payload kept inside the log lives: `len` bytes at `offset` of the log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlineAt {
    /// Offset of the first payload byte in the log file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// What a scan found besides the record itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Framed {
    /// Bytes of the frame (length, checksum and record), inline payload bytes not included.
    pub frame_len: u64,
    /// The payload bytes that follow the frame, if the record carries them.
    pub inline: Option<InlineAt>,
}

fn checksum(payload: &[u8]) -> u32 {
    let h = blake3::hash(payload);
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn too_long(what: &str, len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} of {len} bytes is over the index log's {max}-byte limit"),
    )
}

fn put_str16(out: &mut Vec<u8>, what: &str, s: &str) -> io::Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| too_long(what, s.len(), u16::MAX as usize))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends the framed encoding of `record` to `out`, followed by `inline` (the payload bytes of
/// a version record kept in the log), returning the frame length (inline bytes not included).
/// The record is a small hand-written binary encoding (see `docs/formats.md`): replaying
/// 100 000 records must take well under a second.
pub(crate) fn encode(
    record: &LogRecord,
    inline: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let inline_len = match inline {
        Some(bytes) if bytes.len() as u64 > MAX_INLINE => {
            return Err(too_long(
                "an inline payload",
                bytes.len(),
                MAX_INLINE as usize,
            ))
        }
        Some(bytes) => {
            if !matches!(record, LogRecord::Version(_)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only a version record can carry an inline payload",
                ));
            }
            Some(bytes.len() as u32)
        }
        None => None,
    };
    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    let payload_start = out.len();
    let written = encode_payload(record, inline_len, out);
    if let Err(e) = written {
        out.truncate(frame_start);
        return Err(e);
    }
    let len = out.len() - payload_start;
    if len > MAX_PAYLOAD_LEN as usize {
        out.truncate(frame_start);
        return Err(too_long("an index record", len, MAX_PAYLOAD_LEN as usize));
    }
    let sum = checksum(&out[payload_start..]);
    out[frame_start..frame_start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[frame_start + 4..payload_start].copy_from_slice(&sum.to_le_bytes());
    if let Some(bytes) = inline {
        out.extend_from_slice(bytes);
    }
    Ok(FRAME_HEADER_LEN + len as u64)
}

fn encode_payload(
    record: &LogRecord,
    inline_len: Option<u32>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let (kind, ns, key) = match record {
        LogRecord::Version(i) => (KIND_VERSION, &i.namespace, &i.key),
        LogRecord::Purge { ns, k } => (KIND_PURGE, ns, k),
    };
    out.push(kind);
    // Namespaces are at most 63 bytes and keys at most 1024 (checked by their constructors).
    out.push(ns.as_str().len() as u8);
    out.extend_from_slice(ns.as_str().as_bytes());
    put_str16(out, "a key", key.as_str())?;
    let LogRecord::Version(info) = record else {
        return Ok(());
    };
    out.extend_from_slice(&info.version.to_le_bytes());
    out.extend_from_slice(info.hash.as_bytes());
    out.extend_from_slice(&info.size.to_le_bytes());
    out.extend_from_slice(&info.created_at.as_micros().to_le_bytes());
    out.extend_from_slice(&info.updated_at.as_micros().to_le_bytes());
    let meta = &info.metadata;
    let flags = if info.deleted_at.is_some() {
        FLAG_DELETED
    } else {
        0
    } | if meta.content_type.is_some() {
        FLAG_CONTENT_TYPE
    } else {
        0
    } | if inline_len.is_some() { FLAG_INLINE } else { 0 };
    out.push(flags);
    if let Some(d) = info.deleted_at {
        out.extend_from_slice(&d.as_micros().to_le_bytes());
    }
    if let Some(ct) = &meta.content_type {
        put_str16(out, "a content type", ct)?;
    }
    out.extend_from_slice(&(meta.tags.len() as u32).to_le_bytes());
    for tag in &meta.tags {
        put_str16(out, "a tag", tag)?;
    }
    if meta.attributes.is_empty() {
        out.extend_from_slice(&0u32.to_le_bytes());
    } else {
        let json = serde_json::to_vec(&meta.attributes).map_err(io::Error::other)?;
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
    }
    if let Some(len) = inline_len {
        out.extend_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Reads fields off a payload; every read names what was short.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("record ends inside its {what}"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(self.u64(what)? as i64)
    }
    fn string(&mut self, n: usize, what: &str) -> Result<String, String> {
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn str16(&mut self, what: &str) -> Result<String, String> {
        let n = self.u16(what)? as usize;
        self.string(n, what)
    }
}

/// Decodes one record; the second value is the length of the inline payload bytes that follow
/// its frame, if any.
pub(crate) fn decode(payload: &[u8]) -> Result<(LogRecord, Option<u32>), String> {
    let mut c = Cursor { buf: payload };
    let kind = c.u8("kind")?;
    let ns_len = c.u8("namespace")? as usize;
    let ns = Namespace::new(c.string(ns_len, "namespace")?).map_err(|e| e.to_string())?;
    let key = Key::new(c.str16("key")?).map_err(|e| e.to_string())?;
    let mut inline_len = None;
    let record = match kind {
        KIND_PURGE => LogRecord::Purge { ns, k: key },
        KIND_VERSION => {
            let version = c.u64("version")?;
            let hash = ContentHash::from_bytes(c.take(32, "hash")?.try_into().expect("32 bytes"));
            let size = c.u64("size")?;
            let created_at = Timestamp::from_micros(c.i64("created_at")?);
            let updated_at = Timestamp::from_micros(c.i64("updated_at")?);
            let flags = c.u8("flags")?;
            let deleted_at = if flags & FLAG_DELETED != 0 {
                Some(Timestamp::from_micros(c.i64("deleted_at")?))
            } else {
                None
            };
            let mut metadata = Metadata::new();
            if flags & FLAG_CONTENT_TYPE != 0 {
                metadata.content_type = Some(c.str16("content type")?);
            }
            for _ in 0..c.u32("tag count")? {
                metadata.tags.insert(c.str16("tag")?);
            }
            let attrs_len = c.u32("attributes")? as usize;
            if attrs_len > 0 {
                metadata.attributes = serde_json::from_slice(c.take(attrs_len, "attributes")?)
                    .map_err(|e| format!("attributes do not decode: {e}"))?;
            }
            if flags & FLAG_INLINE != 0 {
                let len = c.u32("inline length")?;
                if u64::from(len) > MAX_INLINE {
                    return Err(format!(
                        "inline payload length {len} is over the {MAX_INLINE}-byte limit"
                    ));
                }
                inline_len = Some(len);
            }
            LogRecord::Version(RecordInfo {
                namespace: ns,
                key,
                version,
                hash,
                size,
                created_at,
                updated_at,
                deleted_at,
                metadata,
                conflicts: Vec::new(),
            })
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    if !c.buf.is_empty() {
        return Err(format!("{} unexpected bytes after the record", c.buf.len()));
    }
    Ok((record, inline_len))
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
/// with each decoded record, its frame length and where its inline payload lies (skipped, not
/// read). `apply` refusing a record (a version that does not follow its predecessor) stops the
/// scan as corruption.
pub(crate) fn scan(
    file: &File,
    start: u64,
    end: u64,
    mut apply: impl FnMut(LogRecord, Framed) -> Result<(), String>,
) -> io::Result<ScanEnd> {
    // Sized to the bytes to read: a catch-up after one append reads a few hundred bytes, and a
    // large buffer would cost an mmap per call.
    let capacity = usize::try_from(end.saturating_sub(start))
        .unwrap_or(usize::MAX)
        .clamp(4096, 256 * 1024);
    let mut reader = BufReader::with_capacity(capacity, file);
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
                DamageKind::Corrupt(format!(
                    "length field {len} is over the {MAX_PAYLOAD_LEN}-byte limit"
                )),
            ));
        }
        if end - offset - FRAME_HEADER_LEN < u64::from(len) {
            return Ok(stop(offset, DamageKind::Torn));
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if checksum(&payload) != sum {
            return Ok(stop(
                offset,
                DamageKind::Corrupt("checksum mismatch".into()),
            ));
        }
        let (record, inline_len) = match decode(&payload) {
            Ok(r) => r,
            Err(e) => {
                return Ok(stop(
                    offset,
                    DamageKind::Corrupt(format!(
                        "checksum matches but the record does not decode: {e}"
                    )),
                ))
            }
        };
        let frame = FRAME_HEADER_LEN + u64::from(len);
        let inline = match inline_len {
            Some(n) if end - offset - frame < u64::from(n) => {
                return Ok(stop(offset, DamageKind::Torn));
            }
            Some(n) => {
                // Skipped, not read: replay cost must not grow with the payloads' size.
                reader.seek_relative(i64::from(n))?;
                Some(InlineAt {
                    offset: offset + frame,
                    len: n,
                })
            }
            None => None,
        };
        let framed = Framed {
            frame_len: frame,
            inline,
        };
        if let Err(reason) = apply(record, framed) {
            return Ok(stop(offset, DamageKind::Corrupt(reason)));
        }
        offset += frame + inline.map_or(0, |i| u64::from(i.len));
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
        LogRecord::Version(RecordInfo {
            namespace: Namespace::new("default").unwrap(),
            key: Key::new("a/b").unwrap(),
            version: v,
            hash: ContentHash::of(b"x"),
            size: 1,
            created_at: Timestamp::from_micros(1),
            updated_at: Timestamp::from_micros(2),
            deleted_at: (v & 1 == 0).then(|| Timestamp::from_micros(3)),
            metadata: Metadata::new()
                .with_tag("t")
                .with_tag("ü")
                .with_content_type("text/plain")
                .with_attribute("n", v)
                .with_attribute("o", serde_json::json!({"a": [1, null]})),
            conflicts: Vec::new(),
        })
    }

    fn write_log(records: &[LogRecord]) -> (tempfile::NamedTempFile, Vec<u64>) {
        write_log_inline(
            &records
                .iter()
                .map(|r| (r.clone(), None))
                .collect::<Vec<_>>(),
        )
    }

    fn write_log_inline(
        records: &[(LogRecord, Option<&[u8]>)],
    ) -> (tempfile::NamedTempFile, Vec<u64>) {
        let mut buf = header().to_vec();
        let mut ends = Vec::new();
        for (r, inline) in records {
            encode(r, *inline, &mut buf).unwrap();
            ends.push(buf.len() as u64);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&buf).unwrap();
        (f, ends)
    }

    fn scan_all(f: &File) -> (Vec<LogRecord>, ScanEnd) {
        let (records, _, end) = scan_framed(f);
        (records, end)
    }

    fn scan_framed(f: &File) -> (Vec<LogRecord>, Vec<Framed>, ScanEnd) {
        let len = f.metadata().unwrap().len();
        let (mut records, mut framed) = (Vec::new(), Vec::new());
        let end = scan(f, HEADER_LEN, len, |r, fr| {
            records.push(r);
            framed.push(fr);
            Ok(())
        })
        .unwrap();
        (records, framed, end)
    }

    #[test]
    fn round_trip() {
        let (f, ends) = write_log(&[rec(1), rec(2)]);
        let mut file = f.reopen().unwrap();
        assert_eq!(check_header(&mut file).unwrap().unwrap(), FORMAT_VERSION);
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
        assert!(matches!(
            check_header(&mut f).unwrap(),
            Err(HeaderError::BadMagic)
        ));
    }

    #[test]
    fn inline_payloads_are_located_and_skipped() {
        let big = vec![0x5Au8; 300_000];
        let (f, ends) = write_log_inline(&[
            (rec(1), Some(b"hello")),
            (rec(2), None),
            (rec(3), Some(&big)),
            (rec(4), Some(b"")),
        ]);
        let file = f.reopen().unwrap();
        let (got, framed, end) = scan_framed(&file);
        assert_eq!(got, vec![rec(1), rec(2), rec(3), rec(4)]);
        assert!(end.damage.is_none());
        assert_eq!(end.offset, ends[3]);
        let at = framed[0].inline.unwrap();
        assert_eq!(at.offset + u64::from(at.len), ends[0]);
        let mut buf = vec![0u8; at.len as usize];
        read_at(&file, &mut buf, at.offset).unwrap();
        assert_eq!(buf, b"hello");
        assert_eq!(framed[1].inline, None);
        assert_eq!(framed[1].frame_len, ends[1] - ends[0]);
        let at = framed[2].inline.unwrap();
        assert_eq!(
            (at.offset, at.len),
            (ends[2] - big.len() as u64, big.len() as u32)
        );
        assert_eq!(framed[3].inline.unwrap().len, 0);

        // Inline bytes cut short by the end of the file: a torn tail, cut before the record.
        file.set_len(ends[2] - 1).unwrap();
        let (got, end) = scan_all(&file);
        assert_eq!(got, vec![rec(1), rec(2)]);
        let damage = end.damage.unwrap();
        assert_eq!((damage.offset, damage.kind), (ends[1], DamageKind::Torn));

        // A flipped inline byte is not the scan's business (the content hash catches it).
        let (f, _) = write_log_inline(&[(rec(1), Some(b"hello")), (rec(2), None)]);
        let mut bytes = std::fs::read(f.path()).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[at] ^= 1;
        std::fs::write(f.path(), &bytes).unwrap();
        let (got, end) = scan_all(&f.reopen().unwrap());
        assert_eq!((got.len(), end.damage), (2, None));

        let mut out = Vec::new();
        let purge = LogRecord::Purge {
            ns: Namespace::default(),
            k: Key::new("a").unwrap(),
        };
        assert!(encode(&purge, Some(b"x"), &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn version_1_logs_are_read_and_upgraded() {
        let (f, _) = write_log(&[rec(1), rec(2)]);
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[8] = 1;
        std::fs::write(f.path(), &bytes).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        assert_eq!(check_header(&mut file).unwrap().unwrap(), 1);
        let (got, end) = scan_all(&file);
        assert_eq!((got.len(), end.damage), (2, None));
        upgrade_header(&file, true).unwrap();
        assert_eq!(check_header(&mut file).unwrap().unwrap(), FORMAT_VERSION);
        assert_eq!(std::fs::read(f.path()).unwrap()[9..], bytes[9..]);
    }
}
