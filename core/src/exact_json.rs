//! Whether JSON text survives being parsed into a [`serde_json::Value`] (and so into metadata
//! attributes, or an Automerge document) exactly: every number reads back as the number
//! written and no object key is lost.
//!
//! `serde_json` (built without `arbitrary_precision`, a feature that would change number
//! handling for the whole workspace) turns an integer beyond 64 bits into an `f64` and keeps
//! only the last of duplicate keys, both silently. So where that would lose what a user wrote
//! (the `automerge` provider's JSON payloads, the CLI's `--attr` values) the raw text is
//! scanned once more with [`check`]: an integer literal must fit `i64` or `u64`; a literal
//! with a fraction or exponent must, once parsed as `serde_json` parses it, render (shortest
//! round-trip form, as `get` renders it) to the same decimal number as written (`1e2` → `100.0`
//! and `0.1` → `0.1` are the same number; 30 significant digits are not); an object may not
//! repeat a key (compared after unescaping). The scan only runs on bytes `serde_json` already
//! accepted, so it need not report syntax errors and its depth is bounded by serde_json's.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// The first value of a payload that would not read back exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inexact {
    /// JSON Pointer (RFC 6901) of the value: `""` for the whole payload, `/a/0` for the first
    /// item of the array under key `a`.
    pub pointer: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Why a value would not read back exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An integer literal outside both `i64` and `u64` (it would become a float).
    IntegerOutOfRange(String),
    /// A number that reads back as another number (the literal, then what `get` would give).
    FloatNotExact(String, String),
    /// The object at `pointer` names this key more than once (only one value would be kept).
    DuplicateKey(String),
}

impl fmt::Display for Inexact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "the top-level value".to_string()
        } else {
            format!("the value at JSON path {:?}", shorten(&self.pointer))
        };
        match &self.problem {
            Problem::IntegerOutOfRange(literal) => write!(
                f,
                "{at} ({}) is an integer outside the 64-bit range and would read back as an \
                 approximate float; store it as a JSON string",
                shorten(literal)
            ),
            Problem::FloatNotExact(literal, rendered) => write!(
                f,
                "{at} ({}) has more precision than a 64-bit float holds and would read back \
                 as {rendered}; store it as a JSON string",
                shorten(literal)
            ),
            Problem::DuplicateKey(key) => {
                let object = if self.pointer.is_empty() {
                    "the top-level object".to_string()
                } else {
                    format!("the object at JSON path {:?}", shorten(&self.pointer))
                };
                write!(
                    f,
                    "{object} repeats the key {:?} and only one of its values would be kept; \
                     give each value its own key",
                    shorten(key)
                )
            }
        }
    }
}

/// Cuts a runaway literal, key or path for an error message.
fn shorten(s: &str) -> Cow<'_, str> {
    const SHOWN: usize = 48;
    match s.char_indices().nth(SHOWN) {
        None => Cow::Borrowed(s),
        Some((at, _)) => Cow::Owned(format!("{}… ({} bytes)", &s[..at], s.len())),
    }
}

/// Scans `json` (bytes `serde_json` parsed successfully) for the first value that would not
/// read back exactly.
///
/// ```
/// use stowage_core::exact_json::{check, Problem};
/// assert!(check(br#"{"id": 18446744073709551615, "x": 0.1, "big": 1e300}"#).is_ok());
/// let err = check(br#"{"a": [1, 18446744073709551616]}"#).unwrap_err();
/// assert_eq!(err.pointer, "/a/1");
/// assert!(matches!(err.problem, Problem::IntegerOutOfRange(_)));
/// assert!(check(br#"{"k": 1, "k": 2}"#).is_err());
/// ```
pub fn check(json: &[u8]) -> Result<(), Inexact> {
    let mut scan = Scanner {
        bytes: json,
        pos: 0,
        path: Vec::new(),
    };
    scan.value()
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Where the value being scanned is (escaped only when an error needs the pointer).
    path: Vec<Segment<'a>>,
}

enum Segment<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> u8 {
        self.bytes.get(self.pos).copied().unwrap_or(0)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn pointer(&self) -> String {
        self.path
            .iter()
            .map(|s| match s {
                Segment::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
                Segment::Index(i) => format!("/{i}"),
            })
            .collect()
    }

    fn fail(&self, problem: Problem) -> Result<(), Inexact> {
        Err(Inexact {
            pointer: self.pointer(),
            problem,
        })
    }

    fn value(&mut self) -> Result<(), Inexact> {
        self.skip_ws();
        match self.peek() {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                self.string();
                Ok(())
            }
            b't' | b'n' => {
                self.pos += 4;
                Ok(())
            }
            b'f' => {
                self.pos += 5;
                Ok(())
            }
            0 => Ok(()),
            _ => self.number(),
        }
    }

    fn object(&mut self) -> Result<(), Inexact> {
        self.pos += 1;
        let mut seen: HashSet<Cow<'a, str>> = HashSet::new();
        while self.next_item(b'}') {
            let raw = self.string();
            let key = decode_string(raw);
            if !seen.insert(key.clone()) {
                return self.fail(Problem::DuplicateKey(key.into_owned()));
            }
            self.skip_ws();
            self.pos += 1; // ':'
            self.path.push(Segment::Key(key));
            self.value()?;
            self.path.pop();
        }
        Ok(())
    }

    fn array(&mut self) -> Result<(), Inexact> {
        self.pos += 1;
        let mut index = 0usize;
        while self.next_item(b']') {
            self.path.push(Segment::Index(index));
            self.value()?;
            self.path.pop();
            index += 1;
        }
        Ok(())
    }

    /// Inside an object or array: skips white space and commas up to the next member (`true`)
    /// or past the closing `close` (`false`; also at the end of the input).
    fn next_item(&mut self, close: u8) -> bool {
        loop {
            self.skip_ws();
            match self.peek() {
                b',' => self.pos += 1,
                c if c == close || c == 0 => {
                    self.pos += 1;
                    return false;
                }
                _ => return true,
            }
        }
    }

    /// Skips a string at `pos` (its opening quote) and returns it with its quotes.
    fn string(&mut self) -> &'a [u8] {
        let start = self.pos;
        self.pos += 1;
        while self.pos < self.bytes.len() {
            match self.bytes[self.pos] {
                // An escape's second byte is never the closing quote; `\uXXXX` goes on in hex.
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    break;
                }
                _ => self.pos += 1,
            }
        }
        &self.bytes[start..self.pos.min(self.bytes.len())]
    }

    fn number(&mut self) -> Result<(), Inexact> {
        let start = self.pos;
        while matches!(self.peek(), b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            self.pos += 1;
        }
        // ASCII by the loop above.
        let literal = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default();
        match number_problem(literal) {
            None => Ok(()),
            Some(problem) => self.fail(problem),
        }
    }
}

/// A string token (with quotes) as the text it stands for.
fn decode_string(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'\\') {
        if let Ok(s) = std::str::from_utf8(&raw[1..raw.len().saturating_sub(1).max(1)]) {
            return Cow::Borrowed(s);
        }
    }
    match serde_json::from_slice::<String>(raw) {
        Ok(s) => Cow::Owned(s),
        Err(_) => String::from_utf8_lossy(raw),
    }
}

/// What is wrong with a number literal, if anything.
fn number_problem(literal: &str) -> Option<Problem> {
    if !literal.contains(['.', 'e', 'E']) {
        let fits = literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok();
        return (!fits).then(|| Problem::IntegerOutOfRange(literal.to_string()));
    }
    // Parsed exactly as the payload itself was, then rendered as `get` renders it.
    let rendered = serde_json::from_str::<serde_json::Number>(literal)
        .ok()
        .and_then(|n| n.as_f64())
        .and_then(serde_json::Number::from_f64)
        .map(|n| n.to_string());
    match rendered {
        Some(r) if Decimal::parse(&r) == Decimal::parse(literal) => None,
        Some(r) => Some(Problem::FloatNotExact(literal.to_string(), r)),
        None => Some(Problem::FloatNotExact(
            literal.to_string(),
            "no finite number".into(),
        )),
    }
}

/// The exact value of a JSON number literal: `digits × 10^exponent`, with `digits` free of
/// leading and trailing zeros (empty for zero, whose sign is ignored: `-0` is `0`).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(literal: &str) -> Decimal {
        // Far beyond any f64 exponent; saturating here keeps a huge written exponent from
        // overflowing while still comparing unequal to anything a float renders.
        const EXPONENT_CAP: i64 = 1 << 40;
        let (negative, rest) = match literal.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, literal),
        };
        let (mantissa, written_exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        let mut exponent: i64 = 0;
        let (exp_negative, exp_digits) = match written_exponent.as_bytes().first() {
            Some(b'-') => (true, &written_exponent[1..]),
            Some(b'+') => (false, &written_exponent[1..]),
            _ => (false, written_exponent),
        };
        for d in exp_digits.bytes() {
            exponent = (exponent * 10 + i64::from(d - b'0')).min(EXPONENT_CAP);
        }
        if exp_negative {
            exponent = -exponent;
        }
        let (int_part, frac_part) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        exponent -= frac_part.len() as i64;
        let all: String = int_part.chars().chain(frac_part.chars()).collect();
        let trimmed = all.trim_start_matches('0');
        let significant = trimmed.trim_end_matches('0');
        exponent += (trimmed.len() - significant.len()) as i64;
        if significant.is_empty() {
            return Decimal {
                negative: false,
                digits: String::new(),
                exponent: 0,
            };
        }
        Decimal {
            negative,
            digits: significant.to_string(),
            exponent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> Option<Inexact> {
        serde_json::from_str::<serde_json::Value>(json).expect("valid JSON");
        check(json.as_bytes()).err()
    }

    #[test]
    fn the_same_number_in_another_spelling_passes() {
        for ok in [
            "1e2",
            "100.0",
            "1E+2",
            "0.1",
            "-0",
            "-0.0",
            "0e999999999999999999999",
            "1.5e-7",
            "123.4560",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1.2345678901234568e22",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "5e-324",
            r#"{"a": [1, 2.5, {"b": null, "c": true, "d": false}], "e": "x\"}\\"}"#,
            r#"{"a": 1, "A": 2, "a\/": 3}"#,
            r#"[{"a": 1}, {"a": 2}]"#,
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn integers_beyond_64_bits_are_found_with_their_path() {
        let p = problem(r#"{"x": {"big": 12345678901234567890123}}"#).unwrap();
        assert_eq!(p.pointer, "/x/big");
        assert_eq!(
            p.problem,
            Problem::IntegerOutOfRange("12345678901234567890123".into())
        );
        assert_eq!(
            problem("18446744073709551616").unwrap().problem,
            Problem::IntegerOutOfRange("18446744073709551616".into())
        );
        assert!(problem("-9223372036854775809").is_some());
    }

    #[test]
    fn floats_that_do_not_round_trip_are_found() {
        let p = problem(r#"{"a/b~": [0.1, 0.10000000000000001]}"#).unwrap();
        assert_eq!(p.pointer, "/a~1b~0/1");
        assert_eq!(
            p.problem,
            Problem::FloatNotExact("0.10000000000000001".into(), "0.1".into())
        );
        assert!(problem("3.14159265358979323846264338327950").is_some());
        assert!(problem("1e-400").is_some());
        assert!(problem("123456789012345678901234567890.0").is_some());
    }

    #[test]
    fn duplicate_keys_are_found_after_unescaping() {
        let p = problem(r#"{"a": {"k": 1, "\u006b": 2}}"#).unwrap();
        assert_eq!(p.pointer, "/a");
        assert_eq!(p.problem, Problem::DuplicateKey("k".into()));
        let p = problem(r#"{"k": 1, "k": 1}"#).unwrap();
        assert_eq!(p.pointer, "");
        assert!(p.to_string().contains("top-level object"), "{p}");
    }

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(Decimal::parse("1e2"), Decimal::parse("100.0"));
        assert_eq!(Decimal::parse("0.0"), Decimal::parse("-0e5"));
        assert_ne!(Decimal::parse("1e2"), Decimal::parse("-100"));
        assert_ne!(
            Decimal::parse("1e99999999999999999999"),
            Decimal::parse("1e308")
        );
    }
}
