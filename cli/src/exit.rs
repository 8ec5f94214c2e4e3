//! Exit codes, and the one stderr line every failure ends as.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (I/O, backend, corrupt data, a `verify` that found problems) |
//! | 2 | invalid input: usage, key, namespace, argument, config, unknown provider, refused plugin |
//! | 3 | not found |
//! | 4 | precondition failed / conflict; nothing was written |
//! | 5 | the configured provider does not support the operation |

use std::process::ExitCode;

use stowage_core::{Error, ErrorKind};

use crate::output::stderr_line;

/// Success.
pub const OK: u8 = 0;
/// Any failure not covered by a more specific code.
pub const FAILURE: u8 = 1;
/// Usage errors and invalid keys, namespaces, arguments and configs.
pub const INVALID_INPUT: u8 = 2;
/// No such record or version.
pub const NOT_FOUND: u8 = 3;
/// A precondition (`--if-absent`, `--if-version`, `--base-version`) failed.
pub const CONFLICT: u8 = 4;
/// The provider does not support the operation.
pub const UNSUPPORTED: u8 = 5;

/// The exit code for an error of this kind.
pub fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidKey
        | ErrorKind::InvalidNamespace
        | ErrorKind::InvalidInput
        | ErrorKind::InvalidConfig
        | ErrorKind::UnknownProvider
        // A plugin library refused at load time, or one declaring a provider name already
        // taken: what the config (or `plugins check`) names is wrong.
        | ErrorKind::Plugin
        | ErrorKind::ProviderExists => INVALID_INPUT,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Conflict => CONFLICT,
        ErrorKind::Unsupported => UNSUPPORTED,
        _ => FAILURE,
    }
}

/// Why a command failed: a core error reported as it reads, or a sentence the CLI words itself
/// where the error's own would mislead (a `copy` stopped by a conflict after writing other
/// records).
#[derive(Debug)]
pub enum Failure {
    /// A core error; its kind gives the exit code.
    Error(Error),
    /// A message and the exit code that goes with it.
    Worded {
        /// The `stowage: ` line's text.
        message: String,
        /// The exit code.
        code: u8,
    },
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Error(error)
    }
}

/// Prints a failure as one `stowage: <message>` line on stderr and returns its exit code.
pub fn report_failure(failure: &Failure) -> ExitCode {
    match failure {
        Failure::Error(e) => report(e),
        Failure::Worded { message, code } => {
            stderr_line(format_args!("stowage: {}", one_line(message)));
            ExitCode::from(*code)
        }
    }
}

/// Prints `stowage: <message>` on stderr (one line) and returns the exit code for `error`.
///
/// A closed stdout (`stowage get k | head -c 10`) is not a failure of stowage: it exits 0
/// silently, as other Unix tools do.
pub fn report(error: &Error) -> ExitCode {
    if is_broken_pipe(error) {
        return ExitCode::from(OK);
    }
    stderr_line(format_args!("stowage: {}", one_line(&error.chain())));
    ExitCode::from(code_for(error.kind()))
}

/// Handles a command-line parsing error: `--help` and `--version` print as clap renders them and
/// exit 0; a usage error becomes one `stowage:` line naming the problem and the usage, exit 2.
pub fn clap_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    match error.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stdout, which is no one's problem.
            let _ = error.print();
            if error.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(INVALID_INPUT)
            } else {
                ExitCode::from(OK)
            }
        }
        _ => {
            let message = one_line_usage_error(&error.render().to_string());
            stderr_line(format_args!("stowage: {message} (see --help)"));
            ExitCode::from(INVALID_INPUT)
        }
    }
}

/// Folds clap's rendered usage error (paragraphs: `error: …`, `tip: …`, `Usage: …`) into one
/// line that keeps the problem, any tip and possible values, and the usage.
fn one_line_usage_error(rendered: &str) -> String {
    let mut parts = Vec::new();
    let mut usage = None;
    for paragraph in rendered.split("\n\n") {
        let text = one_line(paragraph);
        if let Some(rest) = text.strip_prefix("error:") {
            parts.insert(0, rest.trim().trim_end_matches(':').to_string());
        } else if let Some(rest) = text.strip_prefix("Usage:") {
            usage = Some(rest.trim().to_string());
        } else if text.starts_with("tip:") || text.contains("possible values") {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        parts.push("invalid command line".to_string());
    }
    let mut line = parts.join("; ");
    if let Some(usage) = usage {
        line.push_str("; usage: ");
        line.push_str(&usage);
    }
    line
}

/// Folds a multi-line message into one line.
/// `text` as one line for a terminal: its lines joined, and any other control character (a
/// carriage return that would overwrite the line, an escape sequence from a plugin's message)
/// shown escaped (`\u{1b}`), never sent to the terminal as it is.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .flat_map(|c| {
            let shown: Vec<char> = if c.is_control() {
                c.escape_unicode().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect()
}

fn is_broken_pipe(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let line = one_line("boom\u{1b}]0;pwned\u{7}\u{1b}[2K\rstowage: all good\r\nsecond");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("\\u{1b}") && line.ends_with("second"),
            "{line:?}"
        );
    }

    #[test]
    fn kinds_map_to_the_documented_codes() {
        assert_eq!(code_for(ErrorKind::InvalidKey), 2);
        assert_eq!(code_for(ErrorKind::InvalidNamespace), 2);
        assert_eq!(code_for(ErrorKind::InvalidInput), 2);
        assert_eq!(code_for(ErrorKind::InvalidConfig), 2);
        assert_eq!(code_for(ErrorKind::UnknownProvider), 2);
        assert_eq!(code_for(ErrorKind::Plugin), 2);
        assert_eq!(code_for(ErrorKind::ProviderExists), 2);
        assert_eq!(code_for(ErrorKind::NotFound), 3);
        assert_eq!(code_for(ErrorKind::Conflict), 4);
        assert_eq!(code_for(ErrorKind::Unsupported), 5);
        assert_eq!(code_for(ErrorKind::Io), 1);
        assert_eq!(code_for(ErrorKind::Corrupt), 1);
        assert_eq!(code_for(ErrorKind::Backend), 1);
    }

    #[test]
    fn usage_errors_keep_the_problem_tip_and_usage() {
        let rendered = "error: the following required arguments were not provided:\n  <KEY>\n\n\
                        Usage: stowage get <KEY>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(rendered),
            "the following required arguments were not provided: <KEY>; usage: stowage get <KEY>"
        );
        let rendered = "error: unexpected argument '--limt' found\n\n  tip: a similar argument \
                        exists: '--limit'\n\nUsage: stowage ls [OPTIONS]\n";
        let line = one_line_usage_error(rendered);
        assert!(
            line.starts_with("unexpected argument '--limt' found; tip:"),
            "{line}"
        );
        assert!(line.ends_with("usage: stowage ls [OPTIONS]"), "{line}");
    }

    #[test]
    fn messages_become_one_line_with_their_source() {
        let e = Error::io(
            "opening out.bin",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied\nreally"),
        );
        let line = one_line(&e.chain());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("opening out.bin") && line.contains("denied really"),
            "{line}"
        );
    }
}
