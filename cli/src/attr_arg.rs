//! [`AttrArg`]: the `K=V` value of `--attr`, `--attr-min` and `--attr-max`.

use std::str::FromStr;

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
        let value = match integer_tokens(raw) {
            // Not JSON: a plain string, whatever digits it holds.
            Err(NotJson) => serde_json::Value::String(raw.to_string()),
            Ok((text, integers)) => {
                // JSON reads an integer beyond 64 bits as the nearest float: another number.
                if let Some(big) = integers.iter().find(|t| !fits_64_bits(t)) {
                    return Err(if big.as_str() == raw.trim() {
                        format!(
                            "the value of {name} ({raw}) is an integer beyond 64 bits, which would be stored as the nearest float; quote it to keep it exactly as a string: {name}='\"{raw}\"'"
                        )
                    } else {
                        format!(
                            "the value of {name} holds {big}, an integer beyond 64 bits, which would be stored as the nearest float; quote it to keep it exactly as a string: \"{big}\""
                        )
                    });
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

/// `raw` is not JSON (so it is taken as a plain string).
struct NotJson;

/// If `raw` is JSON: its text with every integer `-0` written `0` (JSON readers take `-0` for
/// the float -0.0; as an integer it is 0), and its integer tokens (numbers without a fraction or
/// exponent) outside strings, as written.
fn integer_tokens(raw: &str) -> Result<(String, Vec<String>), NotJson> {
    if serde_json::from_str::<serde::de::IgnoredAny>(raw).is_err() {
        return Err(NotJson);
    }
    let (mut text, mut integers) = (String::with_capacity(raw.len()), Vec::new());
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
            if token.contains(['.', 'e', 'E']) {
                text.push_str(&token);
            } else {
                text.push_str(if token == "-0" { "0" } else { &token });
                integers.push(token);
            }
        } else {
            in_string = c == '"';
            text.push(c);
        }
    }
    Ok((text, integers))
}

/// Whether an integer token fits `i64` or `u64`.
fn fits_64_bits(token: &str) -> bool {
    token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()
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
