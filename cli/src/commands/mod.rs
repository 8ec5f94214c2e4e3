//! One module per command: each defines its clap `Args` and an async `run(ctx, args)`.
//!
//! To add a command: add a module here, a variant to `Command` in `main.rs`, and its arm in
//! `Command::run`.

pub mod bench;
pub mod copy;
pub mod gc;
pub mod get;
pub mod head;
pub mod ls;
pub mod plugins;
pub mod providers;
pub mod purge;
pub mod put;
pub mod restore;
pub mod rm;
pub mod search;
pub mod sync;
pub mod verify;
pub mod versions;

/// Clap value parser for a count that must be at least 1 (`NonZeroUsize`, `NonZeroU64`): says
/// so, where the standard library's own error reads "number would be zero for non-zero type".
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    text.parse::<T>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::Zero => "must be at least 1".to_string(),
        std::num::IntErrorKind::Empty | std::num::IntErrorKind::InvalidDigit => {
            "expected a whole number of at least 1".to_string()
        }
        _ => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU64, NonZeroUsize};

    use super::at_least_one;

    #[test]
    fn counts_below_one_say_so() {
        assert_eq!(at_least_one::<NonZeroUsize>("3").unwrap().get(), 3);
        assert_eq!(
            at_least_one::<NonZeroU64>("0").unwrap_err(),
            "must be at least 1"
        );
        assert_eq!(
            at_least_one::<NonZeroUsize>("x").unwrap_err(),
            "expected a whole number of at least 1"
        );
    }
}
