//! `stowage search`: records by prefix, tags, attributes, content type and time.

use std::num::NonZeroUsize;

use stowage_core::{AttrFilter, Order, Query, Result, Timestamp};

use super::at_least_one;
use crate::attr_arg::AttrArg;
use crate::context::Context;

/// Page size used to walk all results without holding them all in memory.
const WALK_PAGE: usize = 1000;

/// Result order of `--order`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderArg {
    /// Key, byte-wise.
    Key,
    /// Time of the key's first version.
    Created,
    /// Time of the latest version.
    Updated,
}

impl From<OrderArg> for Order {
    fn from(value: OrderArg) -> Self {
        match value {
            OrderArg::Key => Order::Key,
            OrderArg::Created => Order::Created,
            OrderArg::Updated => Order::Updated,
        }
    }
}

/// Arguments of `stowage search`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Require a tag (repeatable: all must be present).
    #[arg(long = "tag", value_name = "TAG", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub tags: Vec<String>,
    /// Require an attribute to equal VALUE (JSON when it parses, else a string; repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<AttrArg>,
    /// Require an attribute >= VALUE (numbers numerically, strings byte-wise).
    #[arg(long = "attr-min", value_name = "NAME=VALUE")]
    pub attr_min: Vec<AttrArg>,
    /// Require an attribute < VALUE (numbers numerically, strings byte-wise).
    #[arg(long = "attr-max", value_name = "NAME=VALUE")]
    pub attr_max: Vec<AttrArg>,
    /// Require this exact content type.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Only records updated at or after T (RFC 3339, e.g. 2025-01-02T03:04:05Z).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only records updated before T (RFC 3339).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Result order.
    #[arg(long, value_enum, default_value_t = OrderArg::Key)]
    pub order: OrderArg,
    /// Reverse the order.
    #[arg(long)]
    pub desc: bool,
    /// Print at most N records.
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroUsize>)]
    pub limit: Option<NonZeroUsize>,
    /// Also match records whose latest version is a tombstone.
    #[arg(long)]
    pub deleted: bool,
}

impl Args {
    /// The query these arguments describe; a malformed time is `InvalidInput`.
    pub fn query(&self) -> Result<Query> {
        let mut query = Query::new().order_by(self.order.into(), self.desc);
        query.prefix = self.prefix.clone();
        query.tags.extend(self.tags.iter().cloned());
        query.content_type = self.content_type.clone();
        query.include_deleted = self.deleted;
        query.updated.since = self.since.as_deref().map(parse_time).transpose()?;
        query.updated.until = self.until.as_deref().map(parse_time).transpose()?;
        for a in &self.attrs {
            query.attributes.push(AttrFilter::Eq {
                name: a.name.clone(),
                value: a.value.clone(),
            });
        }
        // One range filter per attribute, so `--attr-min n=1 --attr-max n=5` is `1 <= n < 5`.
        let mut ranges: Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> =
            Vec::new();
        let mut bound = |a: &AttrArg, is_min: bool| {
            let i = match ranges.iter().position(|(n, _, _)| *n == a.name) {
                Some(i) => i,
                None => {
                    ranges.push((a.name.clone(), None, None));
                    ranges.len() - 1
                }
            };
            if is_min {
                ranges[i].1 = Some(a.value.clone());
            } else {
                ranges[i].2 = Some(a.value.clone());
            }
        };
        self.attr_min.iter().for_each(|a| bound(a, true));
        self.attr_max.iter().for_each(|a| bound(a, false));
        for (name, min, max) in ranges {
            query.attributes.push(AttrFilter::Range { name, min, max });
        }
        Ok(query)
    }
}

fn parse_time(s: &str) -> Result<Timestamp> {
    Timestamp::parse_rfc3339(s)
}

/// Runs the search: one page of `--limit`, or every result page by page.
pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut query = args.query()?;
    query.limit = Some(args.limit.map_or(WALK_PAGE, NonZeroUsize::get));
    let handle = ctx.handle().await?;
    let mut seen = std::collections::HashSet::new();
    loop {
        let page = handle.search(&query).await?;
        ctx.out.record_lines(&page.items)?;
        match (page.next, args.limit) {
            (None, _) => return Ok(()),
            (Some(_), Some(limit)) => {
                ctx.out.hint(&format!(
                    "more records match than the {} shown; raise --limit or narrow the search",
                    crate::output::counted(limit.get() as u64, "record")
                ));
                return Ok(());
            }
            (Some(next), None) => {
                query.cursor = Some(super::cursor_once(
                    &mut seen,
                    next,
                    handle.store().provider(),
                )?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: Args,
    }

    fn query(argv: &[&str]) -> Result<Query> {
        let mut full = vec!["search"];
        full.extend_from_slice(argv);
        Harness::try_parse_from(full).unwrap().args.query()
    }

    #[test]
    fn min_and_max_of_one_attribute_form_one_range() {
        let q = query(&["--attr-min", "n=1", "--attr-max", "n=5", "--attr", "s=ok"]).unwrap();
        assert_eq!(q.attributes.len(), 2);
        assert!(q.attributes.contains(&AttrFilter::Eq {
            name: "s".into(),
            value: json!("ok")
        }));
        assert!(q.attributes.contains(&AttrFilter::Range {
            name: "n".into(),
            min: Some(json!(1)),
            max: Some(json!(5))
        }));
    }

    #[test]
    fn times_order_and_tags_are_carried() {
        let q = query(&[
            "--since",
            "2025-01-01T00:00:00Z",
            "--until",
            "2025-02-01T00:00:00Z",
            "--order",
            "updated",
            "--desc",
            "--tag",
            "a",
            "--tag",
            "b",
        ])
        .unwrap();
        assert!(q.updated.since.is_some() && q.updated.until.is_some());
        assert!(q.created.is_unbounded());
        assert_eq!((q.order, q.descending), (Order::Updated, true));
        assert_eq!(q.tags.len(), 2);
    }

    #[test]
    fn a_bad_time_is_invalid_input() {
        let err = query(&["--since", "yesterday"]).unwrap_err();
        assert_eq!(err.kind(), stowage_core::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("yesterday"));
    }
}
