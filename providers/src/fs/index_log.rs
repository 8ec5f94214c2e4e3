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
//! *corruption*. A plain scan stops at either: everything before is served, nothing from there
//! on is (a reader that is not the writer cannot tell a corrupt frame from an append in
//! progress). A scan that may repair (under the writer lock, see [`scan`]) steps over a
//! corrupt region instead: it looks for the next offset where a whole, checksummed, decodable
//! frame starts and goes on from there, so one damaged record costs that record, not every
//! record after it. The caller then rewrites the log without the region (a compaction); a
//! version whose predecessor was lost is written with [`FLAG_AFTER_GAP`], and a log holding
//! such a record has format version 3, so a release that expects contiguous histories refuses
//! it instead of misreading it.
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
/// The format version appends write (an older log is raised to it before the first append).
pub(crate) const FORMAT_VERSION: u8 = 2;
/// The format version of a log holding a version record whose predecessor was lost to damage
/// ([`FLAG_AFTER_GAP`]); only a compaction after a repaired corruption writes it.
pub(crate) const FORMAT_WITH_GAPS: u8 = 3;
/// The newest format version this code reads (it reads every older one too).
pub(crate) const NEWEST_FORMAT: u8 = FORMAT_WITH_GAPS;
/// Offset of the format version byte in the header.
const VERSION_OFFSET: u64 = 8;
/// Bytes before the first record.
pub(crate) const HEADER_LEN: u64 = 16;
/// Bytes before each record's payload (length + checksum).
const FRAME_HEADER_LEN: u64 = 8;
/// Larger payloads are refused on write and treated as corruption on read (a flipped bit in a
/// length field must not make a reader allocate gigabytes).
pub(crate) const MAX_PAYLOAD_LEN: u32 = 16 << 20;

/// The header of a fresh log of format `version`.
pub(crate) fn header(version: u8) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = version;
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
                "it has format version {v}, this stowage reads versions 1 to {NEWEST_FORMAT}; use a stowage release that knows version {v}"
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
    if !(1..=NEWEST_FORMAT).contains(&h[8]) {
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
/// Format version 3: versions of this key before this one were lost to a damaged log region
/// (written by the compaction that repairs it), so this version need not follow the one
/// before it.
const FLAG_AFTER_GAP: u8 = 8;
/// Every flag this code knows; a record with another is corrupt.
const KNOWN_FLAGS: u8 = FLAG_DELETED | FLAG_CONTENT_TYPE | FLAG_INLINE | FLAG_AFTER_GAP;

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
    /// The record may skip versions of its key: it carries [`FLAG_AFTER_GAP`], or it comes
    /// after a damaged region this scan stepped over (which may have held the versions, or
    /// the purge, before it).
    pub after_gap: bool,
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
/// `after_gap` marks a version whose predecessor was lost ([`FLAG_AFTER_GAP`]; only in a log of
/// format [`FORMAT_WITH_GAPS`]). The record is a small hand-written binary encoding (see
/// `docs/formats.md`): replaying 100 000 records must take well under a second.
pub(crate) fn encode(
    record: &LogRecord,
    inline: Option<&[u8]>,
    after_gap: bool,
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
    let written = encode_payload(record, inline_len, after_gap, out);
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
    after_gap: bool,
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
    } | if inline_len.is_some() { FLAG_INLINE } else { 0 }
        | if after_gap { FLAG_AFTER_GAP } else { 0 };
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

/// What [`decode`] read besides the record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Length of the inline payload bytes that follow the frame, if any.
    pub inline_len: Option<u32>,
    /// The record carries [`FLAG_AFTER_GAP`].
    pub after_gap: bool,
}

/// Decodes one record.
pub(crate) fn decode(payload: &[u8]) -> Result<(LogRecord, Decoded), String> {
    let mut c = Cursor { buf: payload };
    let kind = c.u8("kind")?;
    let ns_len = c.u8("namespace")? as usize;
    let ns = Namespace::new(c.string(ns_len, "namespace")?).map_err(|e| e.to_string())?;
    let key = Key::new(c.str16("key")?).map_err(|e| e.to_string())?;
    let mut decoded = Decoded::default();
    let record = match kind {
        KIND_PURGE => LogRecord::Purge { ns, k: key },
        KIND_VERSION => {
            let version = c.u64("version")?;
            let hash = ContentHash::from_bytes(c.take(32, "hash")?.try_into().expect("32 bytes"));
            let size = c.u64("size")?;
            let created_at = Timestamp::from_micros(c.i64("created_at")?);
            let updated_at = Timestamp::from_micros(c.i64("updated_at")?);
            let flags = c.u8("flags")?;
            if flags & !KNOWN_FLAGS != 0 {
                return Err(format!("unknown record flags {flags:#x}"));
            }
            decoded.after_gap = flags & FLAG_AFTER_GAP != 0;
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
                decoded.inline_len = Some(len);
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
    Ok((record, decoded))
}

/// Where and why a scan stopped before the end of the file, or a region it stepped over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Offset of the first byte not served.
    pub offset: u64,
    /// Bytes not served: to the end of the file, or (for [`DamageKind::SteppedOver`]) to the
    /// next whole frame.
    pub bytes: u64,
    /// Torn (an incomplete final frame), corrupt, or a corrupt region stepped over.
    pub kind: DamageKind,
}

/// The kind of [`Damage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// The last frame is incomplete: a writer stopped mid-append. Nothing acknowledged is lost.
    Torn,
    /// A complete frame failed its checksum or could not be decoded; the reason says which.
    /// Nothing after it is a whole frame.
    Corrupt(String),
    /// Like `Corrupt`, but a whole frame follows the region, and the scan went on from it.
    SteppedOver(String),
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
            DamageKind::SteppedOver(reason) => write!(
                f,
                "corrupt record at offset {} ({reason}); the {} bytes up to the next whole record were stepped over and the records after them kept",
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
    /// Corrupt regions a stepping scan went past, in order (always empty for a plain one).
    pub stepped_over: Vec<Damage>,
}

/// One frame read at a known offset.
// Returned once per record and matched at once: boxing the record would cost an allocation per
// record of a replay.
#[allow(clippy::large_enum_variant)]
enum FrameRead {
    /// A decoded record.
    Whole(LogRecord, Decoded, u64),
    /// The file ends inside the frame or its inline bytes.
    Torn,
    /// A complete frame that is not a record; why.
    Bad(String),
}

/// Reads the frame at the reader's position (`offset`), leaving the reader after the frame
/// (inline bytes not read).
fn read_frame(
    reader: &mut BufReader<&File>,
    offset: u64,
    end: u64,
    payload: &mut Vec<u8>,
) -> io::Result<FrameRead> {
    if end - offset < FRAME_HEADER_LEN {
        return Ok(FrameRead::Torn);
    }
    let mut fh = [0u8; FRAME_HEADER_LEN as usize];
    reader.read_exact(&mut fh)?;
    let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]);
    let sum = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
    if len > MAX_PAYLOAD_LEN {
        return Ok(FrameRead::Bad(format!(
            "length field {len} is over the {MAX_PAYLOAD_LEN}-byte limit"
        )));
    }
    if end - offset - FRAME_HEADER_LEN < u64::from(len) {
        return Ok(FrameRead::Torn);
    }
    payload.resize(len as usize, 0);
    reader.read_exact(payload)?;
    if checksum(payload) != sum {
        return Ok(FrameRead::Bad("checksum mismatch".into()));
    }
    let frame = FRAME_HEADER_LEN + u64::from(len);
    Ok(match decode(payload) {
        Ok((_, d))
            if d.inline_len
                .is_some_and(|n| end - offset - frame < u64::from(n)) =>
        {
            FrameRead::Torn
        }
        Ok((record, d)) => FrameRead::Whole(record, d, frame),
        Err(e) => FrameRead::Bad(format!(
            "checksum matches but the record does not decode: {e}"
        )),
    })
}

/// Reads records from `start` up to `end` (the file length the caller saw), calling `apply`
/// with each decoded record, its frame length and where its inline payload lies (skipped, not
/// read). `apply` refusing a record (a version that does not follow its predecessor) makes
/// that frame corrupt.
///
/// A plain scan stops at the first torn or corrupt frame. With `step_over` (only under the
/// writer lock, where no append can be in progress and a bad frame is damage, not a write being
/// made) a corrupt frame is stepped over: the scan goes on at the next offset where a whole
/// frame starts ([`find_frame`]), and the records after it are applied as [`Framed::after_gap`].
pub(crate) fn scan(
    file: &File,
    start: u64,
    end: u64,
    step_over: bool,
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
    let mut stepped_over = Vec::new();
    let stop = |offset: u64, kind: DamageKind, stepped_over: Vec<Damage>| ScanEnd {
        offset,
        damage: Some(Damage {
            offset,
            bytes: end - offset,
            kind,
        }),
        stepped_over,
    };
    while offset < end {
        // Why the frame at `offset` is bad, where the next one starts when that is known, and
        // whether it looked torn.
        let (reason, after, torn) = match read_frame(&mut reader, offset, end, &mut payload)? {
            // The end of a log a writer stopped appending to, unless a whole frame follows:
            // then the length that runs past the end was damaged.
            FrameRead::Torn if !step_over => {
                return Ok(stop(offset, DamageKind::Torn, stepped_over))
            }
            FrameRead::Torn => (
                "its length runs past the end of the log, yet whole records follow".to_string(),
                None,
                true,
            ),
            FrameRead::Bad(reason) => (reason, None, false),
            FrameRead::Whole(record, decoded, frame) => {
                let inline = decoded.inline_len.map(|len| InlineAt {
                    offset: offset + frame,
                    len,
                });
                let framed = Framed {
                    frame_len: frame,
                    inline,
                    after_gap: decoded.after_gap || !stepped_over.is_empty(),
                };
                let inline = inline.map_or(0, |i| u64::from(i.len));
                match apply(record, framed) {
                    Ok(()) => {
                        // Inline bytes are skipped, not read: replay cost must not grow with
                        // the payloads' size.
                        reader.seek_relative(inline as i64)?;
                        offset += frame + inline;
                        continue;
                    }
                    // A whole record that does not fit the history: its own bytes are the
                    // damage (searching inside them could take inline bytes for a frame).
                    Err(reason) => (reason, Some(offset + frame + inline), false),
                }
            }
        };
        let next = match (step_over, after) {
            (false, _) => None,
            (true, Some(after)) => (after < end).then_some(after),
            (true, None) => find_frame(file, offset + 1, end)?,
        };
        let Some(next) = next else {
            let kind = if torn {
                DamageKind::Torn
            } else {
                DamageKind::Corrupt(reason)
            };
            return Ok(stop(offset, kind, stepped_over));
        };
        stepped_over.push(Damage {
            offset,
            bytes: next - offset,
            kind: DamageKind::SteppedOver(reason),
        });
        reader.seek(SeekFrom::Start(next))?;
        offset = next;
    }
    Ok(ScanEnd {
        offset,
        damage: None,
        stepped_over,
    })
}

/// The first offset in `from..end` where a whole frame starts: its length within bounds, its
/// checksum right, its record decodable, its inline bytes before `end`. Two tests on the bytes
/// at hand (a record starts with its kind, 1 or 2, then a namespace length of 1 to 63) rule out
/// all but a few offsets before a payload is read and hashed. Inline payload bytes are the
/// user's and not checksummed, so a payload that itself holds a log frame could be taken for
/// one; that needs such a payload in the very region that was damaged.
fn find_frame(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    /// Length, checksum, kind and namespace length.
    const PREFIX: usize = FRAME_HEADER_LEN as usize + 2;
    const WINDOW: usize = 1 << 20;
    let mut window = vec![0u8; WINDOW];
    let mut payload = Vec::new();
    let mut base = from;
    while end.saturating_sub(base) >= PREFIX as u64 {
        let n = (end - base).min(WINDOW as u64) as usize;
        read_at(file, &mut window[..n], base)?;
        for i in 0..=n - PREFIX {
            let h = &window[i..i + PREFIX];
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let at = base + i as u64;
            if len > MAX_PAYLOAD_LEN
                || u64::from(len) > end - at - FRAME_HEADER_LEN
                || !matches!(h[8], KIND_VERSION | KIND_PURGE)
                || !(1..=63).contains(&h[9])
            {
                continue;
            }
            payload.resize(len as usize, 0);
            read_at(file, &mut payload, at + FRAME_HEADER_LEN)?;
            if checksum(&payload) != u32::from_le_bytes([h[4], h[5], h[6], h[7]]) {
                continue;
            }
            let frame = FRAME_HEADER_LEN + u64::from(len);
            match decode(&payload) {
                Ok((_, d))
                    if d.inline_len
                        .is_some_and(|n| end - at - frame < u64::from(n)) => {}
                Ok(_) => return Ok(Some(at)),
                Err(_) => {}
            }
        }
        if n < WINDOW {
            break;
        }
        // The next window starts at the first offset this one could not test whole.
        base += (n - PREFIX + 1) as u64;
    }
    Ok(None)
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
        let mut buf = header(FORMAT_VERSION).to_vec();
        let mut ends = Vec::new();
        for (r, inline) in records {
            encode(r, *inline, false, &mut buf).unwrap();
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
        scan_with(f, false, |_| true)
    }

    /// Scans all of `f`, stepping over damage or not; `accept` plays the index (a record it
    /// refuses is not applied).
    fn scan_with(
        f: &File,
        step_over: bool,
        accept: impl Fn(&LogRecord) -> bool,
    ) -> (Vec<LogRecord>, Vec<Framed>, ScanEnd) {
        let len = f.metadata().unwrap().len();
        let (mut records, mut framed) = (Vec::new(), Vec::new());
        let end = scan(f, HEADER_LEN, len, step_over, |r, fr| {
            if !accept(&r) {
                return Err("refused".into());
            }
            records.push(r);
            framed.push(fr);
            Ok(())
        })
        .unwrap();
        (records, framed, end)
    }

    fn flip(f: &tempfile::NamedTempFile, at: u64, mask: u8) {
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[at as usize] ^= mask;
        std::fs::write(f.path(), &bytes).unwrap();
    }

    #[test]
    fn a_repairing_scan_steps_over_a_corrupt_record_and_keeps_the_rest() {
        let big = vec![0xA5u8; 70_000];
        let records = [
            (rec(1), Some(&b"one"[..])),
            (rec(2), Some(&b"two"[..])),
            (rec(3), Some(&big[..])),
            (rec(4), None),
        ];
        // A flipped byte inside record 2 (its checksum no longer matches), then one in its
        // length field (where record 3 starts is no longer known), then both at once.
        for (what, masks) in [
            ("payload", vec![(10u64, 0x10u8)]),
            ("length", vec![(2, 0x01)]),
            ("length and payload", vec![(0, 0x7f), (12, 0x04)]),
        ] {
            let (f, ends) = write_log_inline(&records);
            for (at, mask) in &masks {
                flip(&f, ends[0] + at, *mask);
            }
            let file = f.reopen().unwrap();
            // A plain scan stops there, as it must when the bad frame may be an append in
            // progress.
            let (got, _, end) = scan_with(&file, false, |_| true);
            assert_eq!(got, vec![rec(1)], "{what}");
            let damage = end.damage.unwrap();
            assert_eq!(damage.offset, ends[0], "{what}");
            assert!(matches!(damage.kind, DamageKind::Corrupt(_)), "{what}");

            let (got, framed, end) = scan_with(&file, true, |_| true);
            assert_eq!(got, vec![rec(1), rec(3), rec(4)], "{what}");
            assert_eq!((end.offset, end.damage), (ends[3], None), "{what}");
            assert_eq!(end.stepped_over.len(), 1, "{what}");
            let region = &end.stepped_over[0];
            assert_eq!(
                (region.offset, region.bytes),
                (ends[0], ends[1] - ends[0]),
                "{what}"
            );
            assert!(matches!(region.kind, DamageKind::SteppedOver(_)), "{what}");
            assert!(region.to_string().contains("stepped over"), "{region}");
            let gaps: Vec<bool> = framed.iter().map(|f| f.after_gap).collect();
            assert_eq!(gaps, [false, true, true], "{what}");
            assert_eq!(framed[1].inline.unwrap().len as usize, big.len());
        }

        // Damage in the last record: nothing whole follows, so it is a corrupt tail as before.
        let (f, ends) = write_log_inline(&records);
        flip(&f, ends[2] + 9, 0x02);
        let (got, _, end) = scan_with(&f.reopen().unwrap(), true, |_| true);
        assert_eq!(got.len(), 3);
        assert!(end.stepped_over.is_empty());
        let damage = end.damage.unwrap();
        assert_eq!((damage.offset, damage.bytes), (ends[2], ends[3] - ends[2]));
        assert!(matches!(damage.kind, DamageKind::Corrupt(_)));
    }

    #[test]
    fn a_record_the_index_refuses_is_stepped_over_exactly() {
        // Record 2's inline bytes hold a whole frame of their own: only a search would find it.
        let (inner, _) = write_log(&[rec(9)]);
        let inner = std::fs::read(inner.path()).unwrap()[HEADER_LEN as usize..].to_vec();
        let (f, ends) =
            write_log_inline(&[(rec(1), None), (rec(2), Some(&inner[..])), (rec(3), None)]);
        let refuse_2 = |r: &LogRecord| !matches!(r, LogRecord::Version(i) if i.version == 2);
        let (got, framed, end) = scan_with(&f.reopen().unwrap(), true, refuse_2);
        assert_eq!(got, vec![rec(1), rec(3)]);
        assert_eq!(end.stepped_over.len(), 1);
        assert_eq!(
            (end.stepped_over[0].offset, end.stepped_over[0].bytes),
            (ends[0], ends[1] - ends[0])
        );
        assert!(framed[1].after_gap);
        // Without stepping over, the refusal stops the scan as corruption.
        let (got, _, end) = scan_with(&f.reopen().unwrap(), false, refuse_2);
        assert_eq!(got, vec![rec(1)]);
        assert!(matches!(end.damage.unwrap().kind, DamageKind::Corrupt(_)));
    }

    #[test]
    fn the_after_gap_flag_round_trips_and_unknown_flags_are_corrupt() {
        let mut buf = header(FORMAT_WITH_GAPS).to_vec();
        encode(&rec(5), None, true, &mut buf).unwrap();
        let end_first = buf.len();
        encode(&rec(6), None, false, &mut buf).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&buf).unwrap();
        let mut file = f.reopen().unwrap();
        assert_eq!(check_header(&mut file).unwrap().unwrap(), FORMAT_WITH_GAPS);
        let (got, framed, end) = scan_framed(&file);
        assert_eq!((got, end.damage), (vec![rec(5), rec(6)], None));
        assert_eq!(
            framed.iter().map(|f| f.after_gap).collect::<Vec<_>>(),
            [true, false]
        );
        // A flag this code does not know (with the checksum made right again) is refused.
        let payload_start = HEADER_LEN as usize + FRAME_HEADER_LEN as usize;
        let mut payload = buf[payload_start..end_first].to_vec();
        let (_, decoded) = decode(&payload).unwrap();
        assert!(decoded.after_gap);
        // kind, namespace length and "default", key length and "a/b", version, hash, size,
        // created and updated times.
        let flags_at = 1 + 1 + 7 + 2 + 3 + 8 + 32 + 8 + 8 + 8;
        assert_eq!(payload[flags_at] & FLAG_AFTER_GAP, FLAG_AFTER_GAP);
        payload[flags_at] |= 0x40;
        let err = decode(&payload).unwrap_err();
        assert!(err.contains("unknown record flags"), "{err}");
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
        // Stepping over changes nothing for a torn tail: no whole frame follows it.
        let (got, _, end) = scan_with(&file, true, |_| true);
        assert_eq!(got, vec![rec(1)]);
        assert!(end.stepped_over.is_empty());
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
        assert!(encode(&purge, Some(b"x"), false, &mut out).is_err());
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
