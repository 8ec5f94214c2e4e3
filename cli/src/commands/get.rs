//! `stowage get KEY`: streams a payload to stdout or to a file.
//!
//! A file is written beside its target under a temporary name and renamed into place only once
//! the whole payload arrived, so a failed get never leaves a half-written output file. A
//! symbolic link is followed (the file it names is replaced, the link stays); a target that is
//! not a file (a device, a named pipe, a socket) is written into as it is, never replaced.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use stowage_core::{ByteRange, Error, GetOptions, Key, RecordInfo, Result, Version};
use tokio::io::AsyncWriteExt;

use crate::context::Context;
use crate::output::human_size;

/// Arguments of `stowage get`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Record key.
    pub key: String,
    /// Read this version instead of the latest.
    #[arg(long, value_name = "N")]
    pub version: Option<Version>,
    /// Only bytes A through B inclusive (`A-B`), or from A to the end (`A-`). A range is not
    /// hash-checked (only a whole payload can be); `stowage verify` checks stored payloads.
    #[arg(long, value_name = "A-B")]
    pub range: Option<RangeArg>,
    /// Write to FILE instead of stdout (`-` is stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// An inclusive HTTP-style byte range `A-B` or `A-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeArg(pub ByteRange);

impl FromStr for RangeArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let expected =
            || format!("expected A-B (bytes A to B inclusive) or A- (A to the end), got {s:?}");
        let too_large = || {
            format!(
                "range {s:?} names a byte past the largest offset a payload can have ({})",
                u64::MAX - 1
            )
        };
        let number = |t: &str| {
            t.trim().parse::<u64>().map_err(|e| match e.kind() {
                std::num::IntErrorKind::PosOverflow => too_large(),
                _ => expected(),
            })
        };
        let (a, b) = s.split_once('-').ok_or_else(expected)?;
        let start = number(a)?;
        let end = if b.trim().is_empty() {
            None
        } else {
            let last = number(b)?;
            if last < start {
                return Err(format!("range {s:?} ends before it starts"));
            }
            // The last byte a u64 can name ends every payload: that is `A-`.
            last.checked_add(1)
        };
        Ok(RangeArg(ByteRange { start, end }))
    }
}

/// Reads the record and streams its bytes out.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let key = Key::new(args.key)?;
    let options = GetOptions {
        version: args.version,
        range: args.range.map(|r| r.0),
    };
    let handle = ctx.handle().await?;
    let (info, body) = handle.get_with(key.as_str(), options).await?;
    // A range starting past the payload's last byte was refused by the provider
    // (`ByteRange::resolve`), before any byte is written.
    match args.output.filter(|p| p.as_os_str() != "-") {
        None => {
            let mut stdout = tokio::io::stdout();
            body.write_to(&mut stdout)
                .await
                .map_err(|e| naming_output(e, Path::new("stdout")))?;
            Ok(())
        }
        Some(target) => {
            let written = write_output(&target, body).await?;
            report_file(ctx, &info, &target, written)
        }
    }
}

fn report_file(ctx: &Context, info: &RecordInfo, target: &Path, written: u64) -> Result<()> {
    if ctx.out.is_json() {
        return ctx.out.json_line(&info.to_json());
    }
    ctx.out.note(&format!(
        "got {}/{} v{} {} -> {}",
        info.namespace,
        info.key,
        info.version,
        human_size(written),
        target.display()
    ))
}

/// A temporary file beside the target, removed on drop unless renamed into place.
struct PartialFile {
    path: PathBuf,
    done: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `body` to the `-o` target: a regular file (or a link to one) all or nothing, anything
/// else that exists (a device, a named pipe) in place.
async fn write_output(target: &Path, body: stowage_core::Body) -> Result<u64> {
    let inspecting = |e| Error::io(format!("inspecting output {}", target.display()), e);
    let found = |r: std::io::Result<std::fs::Metadata>| match r {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(inspecting(e)),
    };
    let named = found(tokio::fs::symlink_metadata(target).await)?;
    let link = named.as_ref().is_some_and(|m| m.file_type().is_symlink());
    // What the path names once links are followed.
    let resolved = if link {
        found(tokio::fs::metadata(target).await)?
    } else {
        named
    };
    match resolved {
        Some(m) if m.is_dir() => Err(Error::invalid_input(format!(
            "output {} is a directory; name a file",
            target.display()
        ))),
        Some(m) if !m.is_file() => write_in_place(target, body).await,
        Some(m) if link => {
            let real = tokio::fs::canonicalize(target).await.map_err(inspecting)?;
            write_file_atomically(&real, Some(&m), body).await
        }
        Some(m) => write_file_atomically(target, Some(&m), body).await,
        None if link => Err(Error::invalid_input(format!(
            "output {} is a symbolic link to a missing file; name the file itself",
            target.display()
        ))),
        None => write_file_atomically(target, None, body).await,
    }
}

/// Refuses to replace an existing file this user may not write to (as `cp` would refuse to
/// write into it): the check opens it for writing without changing it.
async fn check_writable(target: &Path) -> Result<()> {
    match tokio::fs::OpenOptions::new().write(true).open(target).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(Error::invalid_input(format!(
                "output {} exists and is not writable by this user; stowage replaces only a \
                 file it may write (change its permissions, or name another file)",
                target.display()
            )))
        }
        Err(e) => Err(Error::io(format!("opening output {}", target.display()), e)),
    }
}

/// Gives the new file the replaced one's permission bits, and its owner and group where this
/// user may set them (`chown` to another user needs privileges; then the new file is ours).
async fn keep_mode_and_owner(
    file: &tokio::fs::File,
    replaced: &std::fs::Metadata,
    path: &Path,
) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Best effort, before the mode: a change of owner may clear set-user-ID bits.
        let _ = std::os::unix::fs::fchown(file, Some(replaced.uid()), Some(replaced.gid()));
        let _ = std::os::unix::fs::fchown(file, None, Some(replaced.gid()));
    }
    file.set_permissions(replaced.permissions())
        .await
        .map_err(|e| Error::io(format!("setting the permissions of {}", path.display()), e))
}

/// Streams `body` into an existing target that is not a regular file.
async fn write_in_place(target: &Path, body: stowage_core::Body) -> Result<u64> {
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .await
        .map_err(|e| Error::io(format!("opening {}", target.display()), e))?;
    // Flushed by `write_to`; there is nothing to sync or rename.
    body.write_to(&mut out)
        .await
        .map_err(|e| naming_output(e, target))
}

/// A failed write of the payload ([`Body::write_to`](stowage_core::Body::write_to) says
/// "writing payload"), said with the output's name; an error reading the payload stays as it is.
fn naming_output(error: Error, target: &Path) -> Error {
    match error {
        Error::Io { context, source } if context == "writing payload" => {
            Error::io(format!("writing {}", target.display()), source)
        }
        other => other,
    }
}

/// Writes a regular file beside `target` and renames it into place once whole. A file it
/// replaces (`replaced`) must be writable by this user, and its mode (and owner, where
/// possible) carries over to the new file; hard links to the old file keep the old content.
async fn write_file_atomically(
    target: &Path,
    replaced: Option<&std::fs::Metadata>,
    body: stowage_core::Body,
) -> Result<u64> {
    if replaced.is_some() {
        check_writable(target).await?;
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().ok_or_else(|| {
        Error::invalid_input(format!("output {} names no file", target.display()))
    })?;
    let mut partial = None;
    for attempt in 0..100u32 {
        let candidate = dir.join(format!(
            ".{}.stowage-{}-{attempt}.part",
            name.to_string_lossy(),
            std::process::id()
        ));
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
            .await
        {
            Ok(file) => {
                partial = Some((
                    file,
                    PartialFile {
                        path: candidate,
                        done: false,
                    },
                ));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "creating a temporary file in {} for output {} (stowage writes the \
                         payload beside its target and renames it into place once whole, so \
                         the directory must be writable)",
                        dir.display(),
                        target.display()
                    ),
                    e,
                ))
            }
        }
    }
    let (mut file, mut guard) = partial.ok_or_else(|| {
        Error::invalid_input(format!(
            "could not create a temporary file in {}: too many leftovers named .{}.stowage-*",
            dir.display(),
            name.to_string_lossy()
        ))
    })?;
    if let Some(replaced) = replaced {
        keep_mode_and_owner(&file, replaced, &guard.path).await?;
    }
    // On Ctrl-C return an error instead of dying, so the guard removes the partial file.
    let written = tokio::select! {
        result = body.write_to(&mut file) => result.map_err(|e| naming_output(e, target))?,
        _ = tokio::signal::ctrl_c() => {
            return Err(Error::io(
                format!("writing {}", target.display()),
                std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "interrupted; the partial file was removed and the target left as it was",
                ),
            ));
        }
    };
    file.sync_all()
        .await
        .map_err(|e| Error::io(format!("flushing {}", guard.path.display()), e))?;
    file.shutdown()
        .await
        .map_err(|e| Error::io(format!("closing {}", guard.path.display()), e))?;
    drop(file);
    tokio::fs::rename(&guard.path, target).await.map_err(|e| {
        Error::io(
            format!("moving {} to {}", guard.path.display(), target.display()),
            e,
        )
    })?;
    guard.done = true;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> ByteRange {
        s.parse::<RangeArg>().unwrap().0
    }

    #[test]
    fn ranges_are_inclusive_like_http() {
        assert_eq!(
            range("0-9"),
            ByteRange {
                start: 0,
                end: Some(10)
            }
        );
        assert_eq!(
            range("5-5"),
            ByteRange {
                start: 5,
                end: Some(6)
            }
        );
        assert_eq!(
            range("100-"),
            ByteRange {
                start: 100,
                end: None
            }
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in ["", "5", "-5", "a-b", "9-3", "1-2-3"] {
            assert!(bad.parse::<RangeArg>().is_err(), "{bad:?}");
        }
        // The largest u64 as the last byte ends every payload: the same as `A-`, as a start
        // past every payload is left for the read to refuse.
        assert_eq!(range("0-18446744073709551615"), range("0-"));
        assert_eq!(
            range("18446744073709551615-18446744073709551615"),
            range("18446744073709551615-")
        );
        // Numbers too large for any payload say so, not that the form is wrong.
        for huge in ["0-99999999999999999999", "99999999999999999999-"] {
            let err = huge.parse::<RangeArg>().unwrap_err();
            assert!(err.contains("largest offset"), "{huge}: {err}");
        }
    }
}
