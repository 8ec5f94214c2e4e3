//! [`AttrArg`]: the `K=V` value of `--attr`, `--attr-min` and `--attr-max`.

use std::str::FromStr;

use stowage_core::exact_json::{self, Inexact, Problem};

/// An attribute name and JSON value given as `K=V` on the command line.
///
/// `V` is parsed as JSON when it parses (`200`, `1.5`, `true`, `null`, `"007"`, `[1,2]`),
/// otherwise it is taken as a plain string, so `--attr status=ok` needs no quoting while
/// `--attr code='"007"'` keeps a numeric-looking string a string.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrArg {
    /// Attribute name (the part before the first `=`).
    pub name: String,
    /// Attribute value.
    pub value: serde_json::Value,
}

impl FromStr for AttrArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
        if name.is_empty() {
            return Err(format!("the attribute name before `=` is empty in {s:?}"));
        }
        let value = match json_text(raw) {
            // Not JSON: a plain string, whatever digits it holds.
            Err(NotJson) => serde_json::Value::String(raw.to_string()),
            Ok(text) => {
                // What JSON parsing would change (an integer beyond 64 bits read as the nearest
                // float, a number with more digits than a float holds, a repeated object key)
                // is refused rather than stored as something else.
                if let Err(inexact) = exact_json::check(text.as_bytes()) {
                    return Err(refusal(name, raw, &inexact));
                }
                serde_json::from_str(&text)
                    .unwrap_or_else(|_| serde_json::Value::String(raw.to_string()))
            }
        };
        Ok(AttrArg {
            name: name.to_string(),
            value,
        })
    }
}

/// Why `--attr NAME=RAW` is refused: what would change, and how to keep it.
fn refusal(name: &str, raw: &str, inexact: &Inexact) -> String {
    let whole = inexact.pointer.is_empty();
    match &inexact.problem {
        Problem::IntegerOutOfRange(literal) if whole => format!(
            "the value of {name} ({raw}) is an integer beyond 64 bits, which would be stored as the nearest float; quote it to keep it exactly as a string: {name}='\"{raw}\"'"
        ),
        Problem::IntegerOutOfRange(literal) => format!(
            "the value of {name} holds {literal}, an integer beyond 64 bits, which would be stored as the nearest float; quote it to keep it exactly as a string: \"{literal}\""
        ),
        Problem::FloatNotExact(literal, stored) if whole => format!(
            "the value of {name} ({raw}) has more digits than a 64-bit float holds and would be stored as {stored}; quote it to keep it exactly as a string: {name}='\"{raw}\"'"
        ),
        Problem::FloatNotExact(literal, stored) => format!(
            "the value of {name} holds {literal}, which has more digits than a 64-bit float holds and would be stored as {stored}; quote it to keep it exactly as a string: \"{literal}\""
        ),
        Problem::DuplicateKey(key) => format!(
            "the value of {name} repeats the key {key:?} (in the object at JSON path {:?}), and only one of its values would be kept; give each value its own key",
            inexact.pointer
        ),
    }
}

/// `raw` is not JSON (so it is taken as a plain string).
struct NotJson;

/// If `raw` is JSON: its text with every integer `-0` written `0` (JSON readers take `-0` for
/// the float -0.0; as an integer it is 0).
fn json_text(raw: &str) -> Result<String, NotJson> {
    if serde_json::from_str::<serde::de::IgnoredAny>(raw).is_err() {
        return Err(NotJson);
    }
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = chars.next() {
        if in_string {
            text.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '-' || c.is_ascii_digit() {
            let mut token = c.to_string();
            while let Some(&n) = chars.peek() {
                if !(n.is_ascii_digit() || matches!(n, '.' | 'e' | 'E' | '+' | '-')) {
                    break;
                }
                token.push(n);
                chars.next();
            }
            text.push_str(if token == "-0" { "0" } else { &token });
        } else {
            in_string = c == '"';
            text.push(c);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> AttrArg {
        s.parse().unwrap()
    }

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(parse("n=200").value, json!(200));
        assert_eq!(parse("x=1.5").value, json!(1.5));
        assert_eq!(parse("ok=true").value, json!(true));
        assert_eq!(parse("gone=null").value, json!(null));
        assert_eq!(parse("code=\"007\"").value, json!("007"));
        assert_eq!(parse("list=[1,2]").value, json!([1, 2]));
    }

    #[test]
    fn integers_beyond_64_bits_are_refused() {
        assert_eq!(parse("id=18446744073709551615").value, json!(u64::MAX));
        assert_eq!(parse("id=-9223372036854775808").value, json!(i64::MIN));
        for raw in ["id=18446744073709551616", "id=-9223372036854775809"] {
            let err = raw.parse::<AttrArg>().unwrap_err();
            assert!(
                err.contains("beyond 64 bits") && err.contains("id='\""),
                "{err}"
            );
        }
        assert_eq!(
            parse("id=\"18446744073709551616\"").value,
            json!("18446744073709551616")
        );
    }

    #[test]
    fn minus_zero_is_the_integer_zero() {
        assert_eq!(parse("n=-0").value, json!(0));
        assert!(parse("n=-0").value.is_u64());
        assert_eq!(parse("n=[-0, -0.0]").value, json!([0, -0.0]));
        assert_eq!(parse("n=-0.0").value, json!(-0.0));
        assert_eq!(parse(r#"n={"-0": "-0"}"#).value, json!({"-0": "-0"}));
    }

    #[test]
    fn integers_beyond_64_bits_inside_a_value_are_refused() {
        for raw in [
            r#"n={"x":99999999999999999999}"#,
            "n=[1, -9223372036854775809]",
            r#"n={"a":{"b":[18446744073709551616]}}"#,
        ] {
            let err = raw.parse::<AttrArg>().unwrap_err();
            assert!(
                err.contains("beyond 64 bits") && err.contains("quote it"),
                "{raw}: {err}"
            );
        }
        // Inside strings, with a fraction or an exponent, or in a value that is not JSON.
        assert_eq!(
            parse(r#"n={"x":"99999999999999999999"}"#).value,
            json!({"x": "99999999999999999999"})
        );
        assert_eq!(
            parse(r#"n={"x\"99999999999999999999":1}"#).value,
            json!({"x\"99999999999999999999": 1})
        );
        assert_eq!(parse("n=[1e20, 1.5]").value, json!([1e20, 1.5]));
        assert_eq!(
            parse("n=99999999999999999999x").value,
            json!("99999999999999999999x")
        );
        assert_eq!(parse("n=[18446744073709551615]").value, json!([u64::MAX]));
    }

    #[test]
    fn values_json_would_change_are_refused() {
        // More digits than a 64-bit float holds, at the top or inside.
        let err = "x=0.12345678901234567890123"
            .parse::<AttrArg>()
            .unwrap_err();
        assert!(
            err.contains("more digits than a 64-bit float") && err.contains("x='\""),
            "{err}"
        );
        let err = r#"x={"a":[1.00000000000000000000001]}"#.parse::<AttrArg>().unwrap_err();
        assert!(
            err.contains("stored as 1.0") && err.contains("quote it"),
            "{err}"
        );
        // A repeated key would keep one of its values.
        let err = r#"x={"a":{"k":1,"k":2}}"#.parse::<AttrArg>().unwrap_err();
        assert!(
            err.contains("repeats the key \"k\"") && err.contains("/a"),
            "{err}"
        );
        // Exact numbers in other spellings stay numbers.
        assert_eq!(parse("x=1e2").value, json!(100.0));
        assert_eq!(parse("x=0.1").value, json!(0.1));
        assert_eq!(parse("x=-0.0").value, json!(-0.0));
    }

    #[test]
    fn other_values_are_strings() {
        let a = parse("status=ok");
        assert_eq!((a.name.as_str(), a.value), ("status", json!("ok")));
        assert_eq!(parse("eq=a=b").value, json!("a=b"));
        assert_eq!(parse("empty=").value, json!(""));
        assert_eq!(
            parse("t=2025-01-02T03:04:05Z").value,
            json!("2025-01-02T03:04:05Z")
        );
    }

    #[test]
    fn malformed_pairs_are_refused() {
        assert!("novalue".parse::<AttrArg>().is_err());
        assert!("=x".parse::<AttrArg>().is_err());
    }
}
