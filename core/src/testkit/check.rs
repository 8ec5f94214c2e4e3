//! How a behaviour reports: [`Outcome`] when it ran to the end, [`Failure`] naming the step that
//! went wrong and what differed, and the small assertion vocabulary the behaviours share.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// How a behaviour ended when nothing was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check passed.
    Passed,
    /// The provider's capabilities rule the behaviour out; the reason says which one.
    Skipped(String),
}

/// A behaviour found the provider doing something other than the contract says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure with a message naming the step and what differed.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What every behaviour returns.
pub type BehaviourResult = std::result::Result<Outcome, Failure>;

/// Fails the behaviour with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::testkit::Failure::new(format!($($arg)+)));
        }
    };
}

/// Fails the behaviour unless `actual == expected`, showing both.
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($arg:tt)+) => {
        match (&$actual, &$expected) {
            (actual, expected) => {
                if actual != expected {
                    return Err($crate::testkit::Failure::new(format!(
                        "{}: expected {:?}, got {:?}",
                        format!($($arg)+),
                        expected,
                        actual
                    )));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// Turns a stowage error into a [`Failure`] naming the step that hit it.
pub(crate) trait Step<T> {
    /// `Ok` passes through; an error becomes "`what`: unexpected error …".
    fn step(self, what: impl fmt::Display) -> std::result::Result<T, Failure>;
}

impl<T> Step<T> for crate::Result<T> {
    fn step(self, what: impl fmt::Display) -> std::result::Result<T, Failure> {
        self.map_err(|e| Failure::new(format!("{what}: unexpected error ({:?}): {e}", e.kind())))
    }
}

/// Requires `result` to be an error of `kind`, returning it for closer checks.
pub(crate) fn expect_err<T: fmt::Debug>(
    result: crate::Result<T>,
    kind: ErrorKind,
    what: impl fmt::Display,
) -> std::result::Result<Error, Failure> {
    match result {
        Ok(v) => Err(Failure::new(format!(
            "{what}: expected a {kind:?} error, but it succeeded with {v:?}"
        ))),
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(Failure::new(format!(
            "{what}: expected a {kind:?} error, got {:?}: {e}",
            e.kind()
        ))),
    }
}

/// Requires a `Conflict` whose `current` is `current`.
pub(crate) fn expect_conflict<T: fmt::Debug>(
    result: crate::Result<T>,
    current: Option<u64>,
    what: impl fmt::Display,
) -> std::result::Result<(), Failure> {
    let what = what.to_string();
    match expect_err(result, ErrorKind::Conflict, &what)? {
        Error::Conflict { current: got, .. } if got == current => Ok(()),
        Error::Conflict { current: got, .. } => Err(Failure::new(format!(
            "{what}: the conflict should report current version {current:?}, it reported {got:?}"
        ))),
        other => Err(Failure::new(format!(
            "{what}: ErrorKind::Conflict must come from Error::Conflict, got {other:?}"
        ))),
    }
}
