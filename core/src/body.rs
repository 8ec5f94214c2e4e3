//! [`Body`]: a payload as a stream of byte chunks, with a cheap in-memory variant.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};
use crate::hash::{ContentHash, ContentHasher};

/// Size of the chunks [`Body::from_reader`] and [`Body::from_file`] read.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// How many bytes at the end of a body [`Body::write_to`] holds back until the body ended
/// without an error (such as a hash mismatch found at its end).
pub const WRITE_HOLDBACK: usize = 4 * 1024 * 1024;

/// A payload: either bytes in memory or a stream of chunks, so no provider needs to hold a large
/// payload whole.
///
/// ```
/// # tokio_test_block(async {
/// use stowage_core::Body;
/// let body = Body::from("hello");
/// assert_eq!(&body.into_bytes().await.unwrap()[..], b"hello");
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Body {
    inner: Inner,
}

enum Inner {
    Bytes(Bytes),
    Stream {
        stream: BoxStream<'static, Result<Bytes>>,
        size_hint: Option<u64>,
    },
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::from_bytes(Bytes::new())
    }

    /// A body over bytes in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Body {
            inner: Inner::Bytes(bytes.into()),
        }
    }

    /// A body over a stream of chunks; `size_hint` is the exact size when known.
    pub fn from_stream(
        stream: impl Stream<Item = Result<Bytes>> + Send + 'static,
        size_hint: Option<u64>,
    ) -> Self {
        Body {
            inner: Inner::Stream {
                stream: stream.boxed(),
                size_hint,
            },
        }
    }

    /// A body read from an async reader in [`CHUNK_SIZE`] chunks.
    pub fn from_reader(
        reader: impl AsyncRead + Send + Unpin + 'static,
        size_hint: Option<u64>,
    ) -> Self {
        Body::reading(reader, size_hint, Arc::from("reading payload"))
    }

    /// [`Body::from_reader`], its read errors saying `doing` (which names the source).
    fn reading(
        reader: impl AsyncRead + Send + Unpin + 'static,
        size_hint: Option<u64>,
        doing: Arc<str>,
    ) -> Self {
        let stream = stream::try_unfold((reader, doing), |(mut reader, doing)| async move {
            let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
            while buf.len() < CHUNK_SIZE {
                let n = reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::io(doing.to_string(), e))?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                Ok(None)
            } else {
                Ok(Some((buf.freeze(), (reader, doing))))
            }
        });
        Body::from_stream(stream, size_hint)
    }

    /// A body streamed from a file.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // A pipe or device reports length 0: only a regular file's length is its size.
        let len = file
            .metadata()
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let doing = Arc::from(format!("reading {}", path.display()));
        Ok(Body::reading(file, len, doing))
    }

    /// The exact size, when known without reading.
    pub fn size_hint(&self) -> Option<u64> {
        match &self.inner {
            Inner::Bytes(b) => Some(b.len() as u64),
            Inner::Stream { size_hint, .. } => *size_hint,
        }
    }

    /// The bytes, if this body is in memory (no I/O needed).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Bytes(b) => Some(b),
            Inner::Stream { .. } => None,
        }
    }

    /// The bytes of an in-memory body, taken out without I/O; any other body comes back as it
    /// was.
    ///
    /// ```
    /// # use stowage_core::Body;
    /// assert_eq!(&Body::from_bytes("hi").try_into_bytes().unwrap()[..], b"hi");
    /// ```
    pub fn try_into_bytes(self) -> std::result::Result<Bytes, Body> {
        match self.inner {
            Inner::Bytes(b) => Ok(b),
            inner @ Inner::Stream { .. } => Err(Body { inner }),
        }
    }

    /// The next chunk, `None` at the end. In-memory bodies yield one chunk (none if empty).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        match &mut self.inner {
            Inner::Bytes(b) => {
                if b.is_empty() {
                    None
                } else {
                    Some(Ok(std::mem::take(b)))
                }
            }
            Inner::Stream { stream, .. } => stream.next().await,
        }
    }

    /// Reads the whole body into memory. Use for small payloads only.
    pub async fn into_bytes(self) -> Result<Bytes> {
        match self.inner {
            Inner::Bytes(b) => Ok(b),
            Inner::Stream {
                mut stream,
                size_hint,
            } => {
                let mut buf =
                    BytesMut::with_capacity(size_hint.unwrap_or(0).min(64 << 20) as usize);
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                Ok(buf.freeze())
            }
        }
    }

    /// The body checked as it streams: once its last chunk has passed, its bytes must hash
    /// to `hash` and number `size`, or the stream ends with the error `mismatch(got, n)` (the
    /// hash and count read) instead of ending normally. A provider wraps every whole-payload
    /// read of content-addressed storage in it, so damaged bytes are never served as a good
    /// payload; a reader that stops early checks nothing.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use stowage_core::{Body, ContentHash, Error};
    /// let claimed = ContentHash::of(b"hello");
    /// let damaged = Body::from("hellO").verified(claimed, 5, |got, n| {
    ///     Error::corrupt("demo", format!("read {n} bytes hashing to {got}"))
    /// });
    /// assert!(damaged.into_bytes().await.is_err());
    /// let good = Body::from("hello").verified(claimed, 5, |_, _| unreachable!());
    /// assert_eq!(&good.into_bytes().await.unwrap()[..], b"hello");
    /// # });
    /// ```
    pub fn verified(
        self,
        hash: ContentHash,
        size: u64,
        mismatch: impl FnOnce(ContentHash, u64) -> Error + Send + 'static,
    ) -> Body {
        let size_hint = self.size_hint();
        let state = Some((self.into_stream(), ContentHasher::new(), mismatch));
        let checked = stream::unfold(state, move |state| async move {
            let (mut inner, mut hasher, mismatch) = state?;
            match inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    Some((Ok(chunk), Some((inner, hasher, mismatch))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None => {
                    let (got, n) = hasher.finish();
                    (got != hash || n != size).then(|| (Err(mismatch(got, n)), None))
                }
            }
        });
        Body::from_stream(checked, size_hint)
    }

    /// The body held to the size it declared: a stream that yields more bytes than its
    /// [`size_hint`](Self::size_hint), or ends before it, ends with an `InvalidInput` error
    /// instead (a cut transfer, a file changed while being read), so a writer stores nothing
    /// rather than a payload of another size. Bodies without a hint, and in-memory ones, are
    /// returned as they are. [`NamespaceHandle::put`](crate::NamespaceHandle::put) applies it
    /// to every body it writes.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use bytes::Bytes;
    /// use stowage_core::{Body, ErrorKind};
    /// let chunks = || futures::stream::iter([Ok(Bytes::from_static(b"hello"))]);
    /// let short = Body::from_stream(chunks(), Some(8)).exact();
    /// assert_eq!(short.into_bytes().await.unwrap_err().kind(), ErrorKind::InvalidInput);
    /// let long = Body::from_stream(chunks(), Some(3)).exact();
    /// assert_eq!(long.into_bytes().await.unwrap_err().kind(), ErrorKind::InvalidInput);
    /// let right = Body::from_stream(chunks(), Some(5)).exact();
    /// assert_eq!(&right.into_bytes().await.unwrap()[..], b"hello");
    /// # });
    /// ```
    pub fn exact(self) -> Body {
        let declared = match &self.inner {
            Inner::Stream {
                size_hint: Some(n), ..
            } => *n,
            _ => return self,
        };
        let state = Some((self.into_stream(), 0u64));
        let checked = stream::unfold(state, move |state| async move {
            let (mut inner, seen) = state?;
            match inner.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > declared {
                        return Some((
                            Err(Error::invalid_input(format!(
                                "the payload yielded more than the {declared} bytes it declared; nothing was written"
                            ))),
                            None,
                        ));
                    }
                    Some((Ok(chunk), Some((inner, seen))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None if seen < declared => Some((
                    Err(Error::invalid_input(format!(
                        "the payload ended after {seen} of the {declared} bytes it declared (cut short, or changed while being read); nothing was written"
                    ))),
                    None,
                )),
                None => None,
            }
        });
        Body::from_stream(checked, Some(declared))
    }

    /// The body as a stream of chunks.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        match self.inner {
            Inner::Bytes(b) if b.is_empty() => stream::empty().boxed(),
            Inner::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
            Inner::Stream { stream, .. } => stream,
        }
    }

    /// Copies the whole body into an async writer, returning the byte count.
    ///
    /// The last [`WRITE_HOLDBACK`] bytes are held back until the body has ended without an
    /// error: a [`verified`](Self::verified) body reports a hash mismatch only at its end, so a
    /// damaged payload of up to that size writes nothing at all, and a larger one never its
    /// tail. A writer that cannot be replaced afterwards (stdout) gets no damaged small payload.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use stowage_core::{Body, ContentHash, Error};
    /// let damaged = Body::from("hellO").verified(ContentHash::of(b"hello"), 5, |_, _| {
    ///     Error::corrupt("demo", "hash mismatch")
    /// });
    /// let mut out = Vec::new();
    /// assert!(damaged.write_to(&mut out).await.is_err());
    /// assert!(out.is_empty());
    /// # });
    /// ```
    pub async fn write_to(
        mut self,
        writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let failed = |e| Error::io("writing payload", e);
        let mut held = std::collections::VecDeque::<Bytes>::new();
        let mut held_len = 0usize;
        let mut n = 0u64;
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            held_len += chunk.len();
            held.push_back(chunk);
            // Release the oldest chunks while what stays held still covers the hold-back.
            while held
                .front()
                .is_some_and(|front| held_len - front.len() >= WRITE_HOLDBACK)
            {
                let front = held.pop_front().expect("checked");
                held_len -= front.len();
                writer.write_all(&front).await.map_err(failed)?;
                n += front.len() as u64;
            }
        }
        for chunk in held {
            writer.write_all(&chunk).await.map_err(failed)?;
            n += chunk.len() as u64;
        }
        writer.flush().await.map_err(failed)?;
        Ok(n)
    }
}

impl Stream for Body {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.inner {
            Inner::Bytes(b) => {
                if b.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(std::mem::take(b))))
                }
            }
            Inner::Stream { stream, .. } => stream.as_mut().poll_next(cx),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Inner::Stream { size_hint, .. } => write!(f, "Body::Stream(size_hint: {size_hint:?})"),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(value: Bytes) -> Self {
        Body::from_bytes(value)
    }
}

impl From<Vec<u8>> for Body {
    fn from(value: Vec<u8>) -> Self {
        Body::from_bytes(value)
    }
}

impl From<&'static [u8]> for Body {
    fn from(value: &'static [u8]) -> Self {
        Body::from_bytes(Bytes::from_static(value))
    }
}

impl From<&'static str> for Body {
    fn from(value: &'static str) -> Self {
        Body::from_bytes(Bytes::from_static(value.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(value: String) -> Self {
        Body::from_bytes(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named pipe reports length 0; its bytes must not be held to that.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_body_from_a_named_pipe_declares_no_size() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("running mkfifo");
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, b"hello through a pipe").unwrap())
        };
        let body = Body::from_file(&fifo).await.unwrap();
        assert_eq!(body.size_hint(), None);
        let bytes = body.exact().into_bytes().await.unwrap();
        assert_eq!(&bytes[..], b"hello through a pipe");
        writer.join().unwrap();
    }
}
