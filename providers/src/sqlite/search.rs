//! `list` and `search` as SQL over the `latest`, `tags` and `attrs` tables, giving the same
//! results, order and cursors as [`ListOptions::apply`] and [`Query::apply`].

use std::fmt::Write as _;

use sqlx::query::Query as SqlxQuery;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::Sqlite;
use stowage_core::{AttrFilter, ListOptions, Order, Query, Result};

use super::records::{RECORD_COLUMNS, RECORD_COLUMNS_R};

/// A value bound to a numbered parameter.
#[derive(Clone, Debug)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
    Real(f64),
}

/// SQL text with its numbered parameters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Statement {
    /// The SQL, using `?N` placeholders.
    pub text: String,
    params: Vec<Param>,
}

impl Statement {
    /// Adds a parameter, returning its placeholder.
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("?{}", self.params.len())
    }

    /// The sqlx query with every parameter bound.
    pub(crate) fn bind(&self) -> SqlxQuery<'_, Sqlite, SqliteArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for p in &self.params {
            q = match p {
                Param::Text(s) => q.bind(s.as_str()),
                Param::Int(i) => q.bind(*i),
                Param::Real(f) => q.bind(*f),
            };
        }
        q
    }
}

/// The least string greater than every string starting with `prefix` (byte-wise, which for
/// UTF-8 is code point order), or `None` when no such string exists.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        while next <= char::MAX as u32 {
            if let Some(c) = char::from_u32(next) {
                chars.push(c);
                return Some(chars.into_iter().collect());
            }
            next += 1;
        }
    }
    None
}

fn push_prefix(sql: &mut Statement, column: &str, prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    let lo = sql.param(Param::Text(prefix.to_string()));
    let _ = write!(sql.text, " AND {column} >= {lo}");
    if let Some(hi) = prefix_upper_bound(prefix) {
        let hi = sql.param(Param::Text(hi));
        let _ = write!(sql.text, " AND {column} < {hi}");
    }
}

/// The listing statement; the caller fetches `limit + 1` rows to learn whether a next page exists.
pub(crate) fn list_statement(ns: &str, options: &ListOptions) -> Result<Statement> {
    let mut sql = Statement::default();
    let ns = sql.param(Param::Text(ns.to_string()));
    let _ = write!(
        sql.text,
        "SELECT {RECORD_COLUMNS} FROM latest WHERE ns = {ns}"
    );
    if !options.include_deleted {
        sql.text.push_str(" AND deleted_at IS NULL");
    }
    if let Some(p) = &options.prefix {
        push_prefix(&mut sql, "key", p);
    }
    if let Some(bound) = options.lower_bound()? {
        let b = sql.param(Param::Text(bound));
        let _ = write!(sql.text, " AND key > {b}");
    }
    sql.text.push_str(" ORDER BY key");
    if let Some(limit) = options.limit {
        let l = sql.param(Param::Int(
            limit.saturating_add(1).min(i64::MAX as usize) as i64
        ));
        let _ = write!(sql.text, " LIMIT {l}");
    }
    Ok(sql)
}

/// Which rows a search walks first; every other filter is checked by primary-key look-ups on
/// the rows it yields. Each choice yields keys in order, so a key-ordered page stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Driver {
    /// `latest` itself (by key, prefix range, or a time index).
    Latest,
    /// The keys carrying the `n`th tag of the query (primary key of `tags`).
    Tag(usize),
    /// The keys whose attribute equals the `n`th filter's value (`attrs_by_num`/`attrs_by_str`).
    Attr(usize),
}

/// The drivers worth comparing for `query`: its tags, its equality filters on a number,
/// boolean or string, and `latest` when a prefix narrows it.
pub(crate) fn driver_candidates(query: &Query) -> Vec<Driver> {
    let mut out = Vec::new();
    if query.prefix.as_deref().is_some_and(|p| !p.is_empty()) {
        out.push(Driver::Latest);
    }
    out.extend((0..query.tags.len()).map(Driver::Tag));
    for (i, f) in query.attributes.iter().enumerate() {
        if let AttrFilter::Eq { value, .. } = f {
            if value.is_number() || value.is_boolean() || value.is_string() {
                out.push(Driver::Attr(i));
            }
        }
    }
    out
}

/// Rows counted per candidate when estimating, so an estimate costs little however large the
/// namespace is.
pub(crate) const ESTIMATE_CAP: i64 = 1000;

/// One statement returning, per candidate, how many rows it would yield (capped).
pub(crate) fn estimate_statement(ns: &str, query: &Query, candidates: &[Driver]) -> Statement {
    let mut sql = Statement::default();
    let ns_p = sql.param(Param::Text(ns.to_string()));
    let cap = sql.param(Param::Int(ESTIMATE_CAP));
    let mut parts = Vec::new();
    for d in candidates {
        let mut inner = Statement {
            text: String::new(),
            params: std::mem::take(&mut sql.params),
        };
        match *d {
            Driver::Latest => {
                let _ = write!(inner.text, "SELECT 1 FROM latest d WHERE d.ns = {ns_p}");
                push_prefix(&mut inner, "d.key", query.prefix.as_deref().unwrap_or(""));
            }
            Driver::Tag(i) => {
                let tag = query.tags.iter().nth(i).cloned().unwrap_or_default();
                let t = inner.param(Param::Text(tag));
                let _ = write!(
                    inner.text,
                    "SELECT 1 FROM tags d WHERE d.ns = {ns_p} AND d.tag = {t}"
                );
            }
            Driver::Attr(i) => {
                let cond = driver_attr_condition(&mut inner, &query.attributes[i]);
                let _ = write!(
                    inner.text,
                    "SELECT 1 FROM attrs d WHERE d.ns = {ns_p} AND {cond}"
                );
            }
        }
        sql.params = inner.params;
        parts.push(format!(
            "(SELECT count(*) FROM ({} LIMIT {cap}))",
            inner.text
        ));
    }
    sql.text = format!("SELECT {}", parts.join(", "));
    sql
}

/// The condition selecting the driver rows of an attribute equality, written so SQLite walks
/// the index that ends in `key`.
fn driver_attr_condition(sql: &mut Statement, filter: &AttrFilter) -> String {
    let name = sql.param(Param::Text(filter.name().to_string()));
    let value = match filter {
        AttrFilter::Eq { value, .. } => value,
        AttrFilter::Range { .. } => return "0".into(),
    };
    match value {
        serde_json::Value::String(s) => {
            let v = sql.param(Param::Text(s.clone()));
            format!("d.name = {name} AND d.str = {v}")
        }
        serde_json::Value::Bool(b) => {
            let v = sql.param(Param::Real(if *b { 1.0 } else { 0.0 }));
            format!("d.name = {name} AND d.kind = 'bool' AND d.num = {v}")
        }
        other => match other.as_f64() {
            // A superset where the value is not exact as REAL; the statement is then inexact
            // (see `eq_condition`).
            Some(f) => {
                let v = sql.param(Param::Real(f));
                format!("d.name = {name} AND d.kind = 'number' AND d.num = {v}")
            }
            None => "0".into(),
        },
    }
}

/// Below this magnitude every integer is exactly an `f64`, so a number stored in `attrs.num`
/// (REAL) that equals a query value there is that value. From 2^53 on, neighbouring integers
/// share one REAL: a comparison on `num` only narrows the candidates and the exact one is made
/// on the record's metadata ([`Query::apply`]).
const EXACT_REAL_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Whether comparing `attrs.num` with `f` decides the comparison with the JSON number exactly.
fn real_is_exact(f: f64) -> bool {
    f.abs() < EXACT_REAL_LIMIT
}

/// The search statement walking `driver` first, and whether it is exact. An exact statement
/// applies every filter, the order, the cursor and `limit + 1`; an inexact one (equality on a
/// JSON array or object, which SQL cannot compare the way [`Query`] does) returns a superset
/// for [`Query::apply`].
pub(crate) fn search_statement(
    ns: &str,
    query: &Query,
    driver: Driver,
) -> Result<(Statement, bool)> {
    let cursor = query.decode_cursor()?;
    let mut sql = Statement::default();
    let mut exact = true;
    let ns_p = sql.param(Param::Text(ns.to_string()));
    let kcol = match driver {
        Driver::Latest => {
            let _ = write!(
                sql.text,
                "SELECT {RECORD_COLUMNS_R} FROM latest r WHERE r.ns = {ns_p}"
            );
            "r.key"
        }
        Driver::Tag(i) => {
            let tag = query.tags.iter().nth(i).cloned().unwrap_or_default();
            let t = sql.param(Param::Text(tag));
            let _ = write!(
                sql.text,
                "SELECT {RECORD_COLUMNS_R} FROM tags d CROSS JOIN latest r ON r.ns = d.ns AND r.key = d.key \
                 WHERE d.ns = {ns_p} AND d.tag = {t}"
            );
            "d.key"
        }
        Driver::Attr(i) => {
            let cond = driver_attr_condition(&mut sql, &query.attributes[i]);
            let _ = write!(
                sql.text,
                "SELECT {RECORD_COLUMNS_R} FROM attrs d CROSS JOIN latest r ON r.ns = d.ns AND r.key = d.key \
                 WHERE d.ns = {ns_p} AND {cond}"
            );
            "d.key"
        }
    };
    if !query.include_deleted {
        sql.text.push_str(" AND r.deleted_at IS NULL");
    }
    if let Some(p) = &query.prefix {
        push_prefix(&mut sql, kcol, p);
    }
    if let Some(ct) = &query.content_type {
        let p = sql.param(Param::Text(ct.clone()));
        let _ = write!(sql.text, " AND r.content_type = {p}");
    }
    for (column, range) in [
        ("r.created_at", &query.created),
        ("r.updated_at", &query.updated),
    ] {
        if let Some(since) = range.since {
            let p = sql.param(Param::Int(since.as_micros()));
            let _ = write!(sql.text, " AND {column} >= {p}");
        }
        if let Some(until) = range.until {
            let p = sql.param(Param::Int(until.as_micros()));
            let _ = write!(sql.text, " AND {column} < {p}");
        }
    }
    for (i, tag) in query.tags.iter().enumerate() {
        if driver == Driver::Tag(i) {
            continue;
        }
        let p = sql.param(Param::Text(tag.clone()));
        let _ = write!(
            sql.text,
            " AND EXISTS (SELECT 1 FROM tags t WHERE t.ns = {ns_p} AND t.tag = {p} AND t.key = r.key)"
        );
    }
    for (i, filter) in query.attributes.iter().enumerate() {
        if driver == Driver::Attr(i) {
            if let AttrFilter::Eq {
                value: serde_json::Value::Number(n),
                ..
            } = filter
            {
                exact &= n.as_f64().is_some_and(real_is_exact);
            }
            continue;
        }
        let name = sql.param(Param::Text(filter.name().to_string()));
        let cond = match filter {
            AttrFilter::Eq { value, .. } => {
                let (cond, is_exact) = eq_condition(&mut sql, value);
                exact &= is_exact;
                cond
            }
            AttrFilter::Range { min, max, .. } => {
                let mut parts = Vec::new();
                for (bound, op) in [(min, ">="), (max, "<")] {
                    if let Some(bound) = bound {
                        let (cond, is_exact) = bound_condition(&mut sql, bound, op);
                        exact &= is_exact;
                        parts.push(cond);
                    }
                }
                if parts.is_empty() {
                    "1".to_string()
                } else {
                    parts.join(" AND ")
                }
            }
        };
        let _ = write!(
            sql.text,
            " AND EXISTS (SELECT 1 FROM attrs a WHERE a.ns = {ns_p} AND a.key = r.key AND a.name = {name} AND {cond})"
        );
    }
    let time_column = match query.order {
        Order::Key => None,
        Order::Created => Some("r.created_at"),
        Order::Updated => Some("r.updated_at"),
    };
    let (cmp, dir) = if query.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(pos) = cursor {
        let k = sql.param(Param::Text(pos.key));
        match (time_column, pos.time) {
            (Some(col), Some(t)) => {
                let t = sql.param(Param::Int(t.as_micros()));
                let _ = write!(sql.text, " AND ({col}, {kcol}) {cmp} ({t}, {k})");
            }
            _ => {
                let _ = write!(sql.text, " AND {kcol} {cmp} {k}");
            }
        }
    }
    match time_column {
        Some(col) => {
            let _ = write!(sql.text, " ORDER BY {col} {dir}, {kcol} {dir}");
        }
        None => {
            let _ = write!(sql.text, " ORDER BY {kcol} {dir}");
        }
    }
    if exact {
        if let Some(limit) = query.limit {
            let l = sql.param(Param::Int(
                limit.saturating_add(1).min(i64::MAX as usize) as i64
            ));
            let _ = write!(sql.text, " LIMIT {l}");
        }
    }
    Ok((sql, exact))
}

/// The SQL condition (on `attrs a`) for "equals `value`", and whether it is exact.
fn eq_condition(sql: &mut Statement, value: &serde_json::Value) -> (String, bool) {
    use serde_json::Value;
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) => {
                let p = sql.param(Param::Real(f));
                (
                    format!("a.kind = 'number' AND a.num = {p}"),
                    real_is_exact(f),
                )
            }
            None => ("a.kind = 'number'".into(), false),
        },
        Value::String(s) => {
            let p = sql.param(Param::Text(s.clone()));
            (format!("a.kind = 'string' AND a.str = {p}"), true)
        }
        Value::Bool(b) => {
            let p = sql.param(Param::Real(if *b { 1.0 } else { 0.0 }));
            (format!("a.kind = 'bool' AND a.num = {p}"), true)
        }
        Value::Null => ("a.kind = 'null'".into(), true),
        Value::Array(_) => ("a.kind = 'array'".into(), false),
        Value::Object(_) => ("a.kind = 'object'".into(), false),
    }
}

/// The SQL condition (on `attrs a`) for "compares `op` (`>=` or `<`) to `bound`", following
/// [`stowage_core::compare_json`]: only a value of the bound's kind can pass. Also whether it
/// is exact: on a number beyond [`EXACT_REAL_LIMIT`] it is a superset (`<` widened to `<=`,
/// as rounding to REAL keeps order but may merge neighbours).
fn bound_condition(sql: &mut Statement, bound: &serde_json::Value, op: &str) -> (String, bool) {
    use serde_json::Value;
    match bound {
        Value::Number(n) => match n.as_f64() {
            Some(f) if real_is_exact(f) => {
                let p = sql.param(Param::Real(f));
                (format!("a.kind = 'number' AND a.num {op} {p}"), true)
            }
            Some(f) => {
                let p = sql.param(Param::Real(f));
                let op = if op == "<" { "<=" } else { op };
                (format!("a.kind = 'number' AND a.num {op} {p}"), false)
            }
            None => ("0".into(), true),
        },
        Value::String(s) => {
            let p = sql.param(Param::Text(s.clone()));
            (format!("a.kind = 'string' AND a.str {op} {p}"), true)
        }
        Value::Bool(b) => {
            let p = sql.param(Param::Real(if *b { 1.0 } else { 0.0 }));
            (format!("a.kind = 'bool' AND a.num {op} {p}"), true)
        }
        Value::Null | Value::Array(_) | Value::Object(_) => ("0".into(), true),
    }
}

/// Applies the page rule every provider shares: keep `limit` rows, and if more came back the
/// cursor resumes after the last one kept.
pub(crate) fn page_rows(mut rows: Vec<SqliteRow>, limit: Option<usize>) -> (Vec<SqliteRow>, bool) {
    match limit {
        Some(limit) if rows.len() > limit => {
            rows.truncate(limit);
            (rows, true)
        }
        _ => (rows, false),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bound_is_the_next_code_point() {
        assert_eq!(prefix_upper_bound("a/b").as_deref(), Some("a/c"));
        assert_eq!(prefix_upper_bound("").as_deref(), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
