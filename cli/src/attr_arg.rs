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
        let value = serde_json::from_str(raw)
            .unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
        // JSON reads an integer beyond 64 bits as the nearest float: a different number.
        let digits = raw.strip_prefix('-').unwrap_or(raw);
        let is_integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        if is_integer && value.as_i64().is_none() && value.as_u64().is_none() {
            return Err(format!(
                "the value of {name} ({raw}) is an integer beyond 64 bits, which would be stored as the nearest float; quote it to keep it exactly as a string: {name}='\"{raw}\"'"
            ));
        }
        Ok(AttrArg {
            name: name.to_string(),
            value,
        })
    }
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
