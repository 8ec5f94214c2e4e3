//! [`Query`] for `search`, and the shared filtering, ordering and cursor logic that scanning
//! providers call instead of re-writing it (indexed providers translate the same rules into
//! their query language and use the same cursor format).

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{ListOptions, Page, RecordInfo, Timestamp};

/// A filter on one attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AttrFilter {
    /// The attribute equals this JSON value exactly.
    Eq {
        /// Attribute name.
        name: String,
        /// Required value.
        value: serde_json::Value,
    },
    /// The attribute lies in `[min, max)`, ordered as [`compare_json`] orders values: numbers
    /// numerically, strings (such as RFC 3339 times) byte-wise, booleans `false` before `true`.
    /// A null, array or object, or a value whose type differs from a bound's, does not match.
    Range {
        /// Attribute name.
        name: String,
        /// Inclusive lower bound.
        min: Option<serde_json::Value>,
        /// Exclusive upper bound.
        max: Option<serde_json::Value>,
    },
}

impl AttrFilter {
    /// Whether `value` (the record's attribute, if it has one) passes.
    pub fn accepts(&self, value: Option<&serde_json::Value>) -> bool {
        let Some(value) = value else { return false };
        match self {
            AttrFilter::Eq { value: want, .. } => json_eq(value, want),
            AttrFilter::Range { min, max, .. } => {
                let lower_ok = min.as_ref().is_none_or(|m| {
                    matches!(
                        compare_json(value, m),
                        Some(Ordering::Greater | Ordering::Equal)
                    )
                });
                let upper_ok = max
                    .as_ref()
                    .is_none_or(|m| matches!(compare_json(value, m), Some(Ordering::Less)));
                lower_ok && upper_ok
            }
        }
    }

    /// The attribute this filter is on.
    pub fn name(&self) -> &str {
        match self {
            AttrFilter::Eq { name, .. } | AttrFilter::Range { name, .. } => name,
        }
    }
}

/// Equality that treats `1` and `1.0` as equal, and compares numbers exactly (two integers
/// that differ compare unequal even where their nearest `f64`s are the same).
fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        _ => a == b,
    }
}

/// A JSON number as what it exactly is: an integer (every `i64` and `u64` fits an `i128`) or a
/// float.
enum Exact {
    Int(i128),
    Float(f64),
}

fn exact(n: &serde_json::Number) -> Option<Exact> {
    if let Some(i) = n.as_i64() {
        Some(Exact::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Exact::Int(i128::from(u)))
    } else {
        n.as_f64().map(Exact::Float)
    }
}

/// Orders an integer and a float by their exact values (no rounding of the integer).
fn compare_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // Every finite f64 of magnitude below 2^127 truncates to an i128 exactly; beyond that the
    // float is larger in magnitude than any integer a JSON number here can hold.
    if f >= 1.7e38 {
        return Some(Ordering::Less);
    }
    if f <= -1.7e38 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - whole)),
        other => Some(other),
    }
}

/// Orders two JSON numbers by their exact values: `9007199254740993` is greater than
/// `9007199254740992`, although both round to the same `f64`.
fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    match (exact(a)?, exact(b)?) {
        (Exact::Int(x), Exact::Int(y)) => Some(x.cmp(&y)),
        (Exact::Float(x), Exact::Float(y)) => x.partial_cmp(&y),
        (Exact::Int(x), Exact::Float(y)) => compare_int_float(x, y),
        (Exact::Float(x), Exact::Int(y)) => compare_int_float(y, x).map(Ordering::reverse),
    }
}

/// Orders two JSON scalars of the same kind; `None` for mixed or non-scalar kinds. Numbers
/// compare by their exact values, integers beyond 2^53 included.
pub fn compare_json(a: &serde_json::Value, b: &serde_json::Value) -> Option<Ordering> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// A time window `[since, until)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// Inclusive start.
    pub since: Option<Timestamp>,
    /// Exclusive end.
    pub until: Option<Timestamp>,
}

impl TimeRange {
    /// Whether `t` lies in the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Whether the window is unbounded.
    pub fn is_unbounded(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }
}

/// What `search` results are ordered by (ties broken by key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Key, byte-wise.
    #[default]
    Key,
    /// `created_at`.
    Created,
    /// `updated_at`.
    Updated,
}

/// A search over the latest version of every record of a namespace.
///
/// ```
/// use stowage_core::{Query, AttrFilter};
/// let q = Query::new().prefix("tapes/").tag("prod").attr_eq("status", 200).limit(10);
/// assert_eq!(q.tags.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Query {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Records carrying every one of these tags.
    pub tags: BTreeSet<String>,
    /// Every attribute filter must pass.
    pub attributes: Vec<AttrFilter>,
    /// Exact content type.
    pub content_type: Option<String>,
    /// Window on `created_at`.
    pub created: TimeRange,
    /// Window on `updated_at`.
    pub updated: TimeRange,
    /// Result order.
    pub order: Order,
    /// Reverse the order.
    pub descending: bool,
    /// Page size; `None` for everything.
    pub limit: Option<usize>,
    /// The `next` cursor of a previous page.
    pub cursor: Option<String>,
    /// Also match records whose latest version is a tombstone.
    pub include_deleted: bool,
}

/// Where a cursor points: after the record with this sort value and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorPos {
    /// The time sort value (for `Created`/`Updated` order).
    pub time: Option<Timestamp>,
    /// The key.
    pub key: String,
}

impl Query {
    /// An empty query (matches every live record).
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires a key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Requires a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Requires an attribute to equal a value.
    pub fn attr_eq(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.attributes.push(AttrFilter::Eq {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Requires an attribute in `[min, max)`.
    pub fn attr_range(
        mut self,
        name: impl Into<String>,
        min: Option<serde_json::Value>,
        max: Option<serde_json::Value>,
    ) -> Self {
        self.attributes.push(AttrFilter::Range {
            name: name.into(),
            min,
            max,
        });
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Sets the order.
    pub fn order_by(mut self, order: Order, descending: bool) -> Self {
        self.order = order;
        self.descending = descending;
        self
    }

    /// Whether `info` passes every filter (ignores order, limit and cursor).
    pub fn matches(&self, info: &RecordInfo) -> bool {
        if info.is_deleted() && !self.include_deleted {
            return false;
        }
        if let Some(p) = &self.prefix {
            if !info.key.as_str().as_bytes().starts_with(p.as_bytes()) {
                return false;
            }
        }
        if !self.tags.iter().all(|t| info.metadata.tags.contains(t)) {
            return false;
        }
        if let Some(ct) = &self.content_type {
            if info.metadata.content_type.as_deref() != Some(ct.as_str()) {
                return false;
            }
        }
        if !self.created.contains(info.created_at) || !self.updated.contains(info.updated_at) {
            return false;
        }
        self.attributes
            .iter()
            .all(|f| f.accepts(info.metadata.attributes.get(f.name())))
    }

    fn sort_time(&self, info: &RecordInfo) -> Option<Timestamp> {
        match self.order {
            Order::Key => None,
            Order::Created => Some(info.created_at),
            Order::Updated => Some(info.updated_at),
        }
    }

    /// Compares two records in this query's result order.
    pub fn compare(&self, a: &RecordInfo, b: &RecordInfo) -> Ordering {
        let ord = self
            .sort_time(a)
            .cmp(&self.sort_time(b))
            .then_with(|| a.key.as_str().as_bytes().cmp(b.key.as_str().as_bytes()));
        if self.descending {
            ord.reverse()
        } else {
            ord
        }
    }

    /// The cursor that resumes after `info`.
    pub fn cursor_for(&self, info: &RecordInfo) -> String {
        match self.sort_time(info) {
            None => format!("k:{}", hex::encode(info.key.as_str())),
            Some(t) => format!("t:{}:{}", t.as_micros(), hex::encode(info.key.as_str())),
        }
    }

    /// Decodes this query's cursor, if it has one.
    pub fn decode_cursor(&self) -> Result<Option<CursorPos>> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let bad = || {
            Error::invalid_input(format!(
                "search cursor {c:?} is not one this query returned"
            ))
        };
        let pos = if let Some(k) = c.strip_prefix("k:") {
            if self.order != Order::Key {
                return Err(bad());
            }
            CursorPos {
                time: None,
                key: decode_hex_key(k).ok_or_else(bad)?,
            }
        } else if let Some(rest) = c.strip_prefix("t:") {
            if self.order == Order::Key {
                return Err(bad());
            }
            let (t, k) = rest.split_once(':').ok_or_else(bad)?;
            CursorPos {
                time: Some(Timestamp::from_micros(t.parse().map_err(|_| bad())?)),
                key: decode_hex_key(k).ok_or_else(bad)?,
            }
        } else {
            return Err(bad());
        };
        Ok(Some(pos))
    }

    /// Whether `info` comes strictly after the cursor position in this query's order.
    pub fn is_after(&self, info: &RecordInfo, pos: &CursorPos) -> bool {
        let ord = self
            .sort_time(info)
            .cmp(&pos.time)
            .then_with(|| info.key.as_str().as_bytes().cmp(pos.key.as_bytes()));
        if self.descending {
            ord == Ordering::Less
        } else {
            ord == Ordering::Greater
        }
    }

    /// Filters, orders and pages `candidates` (latest versions, any order): the whole search
    /// for a provider that scans.
    pub fn apply(
        &self,
        candidates: impl IntoIterator<Item = RecordInfo>,
    ) -> Result<Page<RecordInfo>> {
        let pos = self.decode_cursor()?;
        let mut items: Vec<RecordInfo> = candidates
            .into_iter()
            .filter(|i| self.matches(i))
            .filter(|i| pos.as_ref().is_none_or(|p| self.is_after(i, p)))
            .collect();
        items.sort_by(|a, b| self.compare(a, b));
        let mut next = None;
        if let Some(limit) = self.limit {
            if items.len() > limit {
                items.truncate(limit);
                next = items.last().map(|i| self.cursor_for(i));
            }
        }
        Ok(Page { items, next })
    }
}

fn decode_hex_key(h: &str) -> Option<String> {
    String::from_utf8(hex::decode(h).ok()?).ok()
}

impl ListOptions {
    /// The cursor that resumes a listing after `key`.
    pub fn cursor_for(key: &str) -> String {
        format!("k:{}", hex::encode(key))
    }

    /// The exclusive lower bound on keys: the later of `start_after` and the cursor.
    pub fn lower_bound(&self) -> Result<Option<String>> {
        let from_cursor =
            match &self.cursor {
                None => None,
                Some(c) => Some(c.strip_prefix("k:").and_then(decode_hex_key).ok_or_else(
                    || {
                        Error::invalid_input(format!(
                            "list cursor {c:?} is not one a listing returned"
                        ))
                    },
                )?),
            };
        Ok(match (from_cursor, self.start_after.clone()) {
            (Some(a), Some(b)) => Some(if a.as_bytes() >= b.as_bytes() { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// Whether `key` passes the prefix and lower bound (computed by [`Self::lower_bound`]).
    pub fn accepts_key(&self, key: &str, lower_bound: Option<&str>) -> bool {
        self.prefix
            .as_ref()
            .is_none_or(|p| key.as_bytes().starts_with(p.as_bytes()))
            && lower_bound.is_none_or(|b| key.as_bytes() > b.as_bytes())
    }

    /// Filters, orders and pages `latest` (the latest version of each key, any order): the whole
    /// listing for a provider that scans.
    pub fn apply(&self, latest: impl IntoIterator<Item = RecordInfo>) -> Result<Page<RecordInfo>> {
        let bound = self.lower_bound()?;
        let mut items: Vec<RecordInfo> = latest
            .into_iter()
            .filter(|i| self.include_deleted || !i.is_deleted())
            .filter(|i| self.accepts_key(i.key.as_str(), bound.as_deref()))
            .collect();
        items.sort_by(|a, b| a.key.as_str().as_bytes().cmp(b.key.as_str().as_bytes()));
        let mut next = None;
        if let Some(limit) = self.limit {
            if items.len() > limit {
                items.truncate(limit);
                next = items.last().map(|i| Self::cursor_for(i.key.as_str()));
            }
        }
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use serde_json::json;

    use super::{compare_json, AttrFilter};

    #[test]
    fn large_integers_compare_exactly() {
        // Both round to the f64 9007199254740992.0.
        let (a, b) = (json!(9007199254740993u64), json!(9007199254740992u64));
        assert_eq!(compare_json(&a, &b), Some(Ordering::Greater));
        let eq = AttrFilter::Eq {
            name: "id".into(),
            value: a.clone(),
        };
        assert!(eq.accepts(Some(&a)));
        assert!(!eq.accepts(Some(&b)));
        let range = AttrFilter::Range {
            name: "id".into(),
            min: Some(a.clone()),
            max: None,
        };
        assert!(range.accepts(Some(&a)));
        assert!(!range.accepts(Some(&b)));
        assert_eq!(
            compare_json(&json!(u64::MAX), &json!(i64::MIN)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn ranges_order_booleans_and_refuse_mixed_types() {
        let range =
            |min: Option<serde_json::Value>, max: Option<serde_json::Value>| AttrFilter::Range {
                name: "flag".into(),
                min,
                max,
            };
        // false < true, as the doc comment on `Range` says.
        assert!(range(Some(json!(true)), None).accepts(Some(&json!(true))));
        assert!(!range(Some(json!(true)), None).accepts(Some(&json!(false))));
        assert!(range(None, Some(json!(true))).accepts(Some(&json!(false))));
        // A value of another type than the bound, or a null, array or object, does not match.
        assert!(!range(Some(json!(0)), None).accepts(Some(&json!(true))));
        assert!(!range(Some(json!("a")), None).accepts(Some(&json!(1))));
        for v in [json!(null), json!([1]), json!({"a": 1})] {
            assert!(!range(None, Some(json!(9))).accepts(Some(&v)), "{v}");
        }
    }

    #[test]
    // The literals are spelt as other languages print them, digits beyond f64's included.
    #[allow(clippy::excessive_precision)]
    fn floats_parse_to_the_nearest_f64() {
        // Python's and JavaScript's shortest spelling of these floats; serde_json's default
        // fast parser lands one step off on them (the workspace enables `float_roundtrip`).
        for (text, want) in [
            ("976255.1055929201", 976255.1055929201f64),
            ("365688.91691258556", 365688.91691258556),
            ("9007199254740993.0", 9007199254740992.0),
            ("2.2250738585072011e-308", 2.2250738585072011e-308),
        ] {
            let got: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}");
            assert_eq!(
                serde_json::to_string(&got).unwrap().parse::<f64>().unwrap(),
                want
            );
        }
    }

    #[test]
    fn integers_and_floats_compare_by_value() {
        assert!(AttrFilter::Eq {
            name: "n".into(),
            value: json!(1),
        }
        .accepts(Some(&json!(1.0))));
        assert_eq!(compare_json(&json!(2), &json!(2.5)), Some(Ordering::Less));
        assert_eq!(
            compare_json(&json!(-2), &json!(-2.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_json(&json!(3), &json!(2.5)),
            Some(Ordering::Greater)
        );
        // 2^53 + 1 is not the float 2^53.
        assert_eq!(
            compare_json(&json!(9007199254740993u64), &json!(9007199254740992.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_json(&json!(u64::MAX), &json!(1e300)),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_json(&json!(i64::MIN), &json!(-1e300)),
            Some(Ordering::Greater)
        );
    }
}
