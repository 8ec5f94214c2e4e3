//! Printing results as concise text or as one JSON object per line (`--json`).
//!
//! In JSON mode stdout carries only result objects; a record is exactly
//! `RecordInfo::to_json()`. Hints (such as "more results: use --after") go to stderr in both
//! modes so they never corrupt the data on stdout.

use std::io::Write;

use stowage_core::{Error, RecordInfo, Result};

/// The printer of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
    quiet: bool,
}

impl Output {
    /// A printer for JSON (`--json`) or text, optionally quiet (`-q`).
    pub fn new(json: bool, quiet: bool) -> Self {
        Output { json, quiet }
    }

    /// Whether results are printed as JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one JSON object on one line.
    pub fn json_line(&self, value: &serde_json::Value) -> Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, value)
            .map_err(|e| Error::io("writing JSON to stdout", e.into()))?;
        out.write_all(b"\n").map_err(stdout_error)
    }

    /// Prints a line of requested data (shown even with `-q`).
    pub fn data(&self, line: &str) -> Result<()> {
        writeln!(std::io::stdout().lock(), "{line}").map_err(stdout_error)
    }

    /// Prints a confirmation such as `put default/a v3 …` (hidden with `-q`).
    pub fn note(&self, line: &str) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        self.data(line)
    }

    /// Prints a hint on stderr (hidden with `-q`).
    pub fn hint(&self, line: &str) {
        if !self.quiet {
            stderr_line(format_args!("{line}"));
        }
    }

    /// Prints a record the command wrote or touched: JSON, or `verb ns/key vN hash size`.
    pub fn written(&self, verb: &str, info: &RecordInfo) -> Result<()> {
        if self.json {
            return self.json_line(&info.to_json());
        }
        self.note(&format!(
            "{verb} {}/{} v{} {} {}",
            info.namespace,
            info.key,
            info.version,
            info.hash,
            human_size(info.size)
        ))
    }

    /// Prints records one per line: JSON objects, or aligned `key  vN  size` text.
    pub fn record_lines(&self, items: &[RecordInfo]) -> Result<()> {
        if self.json {
            for info in items {
                self.json_line(&info.to_json())?;
            }
            return Ok(());
        }
        let width = items
            .iter()
            .map(|i| i.key.as_str().chars().count())
            .max()
            .unwrap_or(0);
        let mut out = std::io::stdout().lock();
        for info in items {
            let deleted = if info.is_deleted() { "  (deleted)" } else { "" };
            writeln!(
                out,
                "{:<width$}  v{}  {}{deleted}",
                info.key.as_str(),
                info.version,
                human_size(info.size)
            )
            .map_err(stdout_error)?;
        }
        Ok(())
    }

    /// Prints every field of one record: JSON, or one `field: value` line each.
    pub fn record_details(&self, info: &RecordInfo) -> Result<()> {
        if self.json {
            return self.json_line(&info.to_json());
        }
        let meta = &info.metadata;
        let mut lines = vec![
            format!("namespace:    {}", info.namespace),
            format!("key:          {}", info.key),
            format!("version:      {}", info.version),
            format!("hash:         {}", info.hash),
            format!(
                "size:         {} ({})",
                human_size(info.size),
                counted(info.size, "byte")
            ),
            format!(
                "content-type: {}",
                meta.content_type.as_deref().unwrap_or("-")
            ),
            format!(
                "tags:         {}",
                if meta.tags.is_empty() {
                    "-".to_string()
                } else {
                    meta.tags.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        ];
        if meta.attributes.is_empty() {
            lines.push("attributes:   -".to_string());
        } else {
            for (name, value) in &meta.attributes {
                lines.push(format!("attribute:    {name}={value}"));
            }
        }
        lines.push(format!("created:      {}", info.created_at));
        lines.push(format!("updated:      {}", info.updated_at));
        if let Some(t) = info.deleted_at {
            lines.push(format!("deleted:      {t}"));
        }
        for c in &info.conflicts {
            let values: Vec<String> = c.values.iter().map(|v| v.to_string()).collect();
            lines.push(format!("conflict:     {} = {}", c.path, values.join(" | ")));
        }
        self.data(&lines.join("\n"))
    }
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::io("writing to stdout", e)
}

/// Writes one line to stderr. A stderr that cannot be written (a full disk, a closed pipe) loses
/// the line and nothing else: the command still ends with its own exit code (`eprintln!` would
/// panic instead).
pub fn stderr_line(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A count with its noun, singular for one: `1 byte`, `2 bytes`, `0 records`. Every count the
/// CLI words goes through here.
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A size for people: `12 B`, `1.5 KiB`, `3.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }
}
