//! Audiences (`[[audiences]]`): the consented customers of chosen segments, published as
//! the table `audience_members` (with each member's change since the previous snapshot) and
//! as upload files under `_audiences/as_of=D/` for the tools that act on them.
//!
//! The table is a model generated from the config (so it is planned, checked, staged and
//! published like any other): a member is a customer whose segment in the audience's
//! segmentation is one of its segments, who consented (the audience's `consent` column of
//! `customers` is true) and who has an email address. `change` is `entered` (not a member
//! in the previous snapshot), `stayed`, or `left` (a member then, not now: consent
//! withdrawn, segment changed, or gone), so a tool can remove people.
//!
//! Upload files hold the members who entered or stayed: an email audience `<name>.csv`
//! (header `email`, the address trimmed) — the one place an email leaves segflow, and only
//! with consent; an ads audience `<name>.google.csv` (Customer Match, header `Email`) and
//! `<name>.meta.csv` (custom audiences, header `email`), each value the SHA-256 hex of the
//! trimmed, lower-cased address.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use crate::config::audiences::{Audience, Channel, SEGMENTATIONS};
use crate::error::{Error, Result};
use crate::publish::layout::AUDIENCES;
use crate::publish::manifest::{AudienceSummary, AudiencesEntry};
use crate::publish::{staging_rel, Output};
use crate::storage::retrying;

/// The generated model's name.
pub const MODEL: &str = "audience_members";

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The `audience_members` model (front matter and query) for `audiences`; None without any.
pub fn model_sql(audiences: &[Audience]) -> Option<String> {
    if audiences.is_empty() {
        return None;
    }
    let members: Vec<String> = audiences
        .iter()
        .map(|a| {
            let (_, table, column) = SEGMENTATIONS
                .iter()
                .find(|(s, _, _)| *s == a.segmentation)
                .copied()
                .unwrap_or(SEGMENTATIONS[0]);
            let segments: Vec<String> = a.segments.iter().map(|s| quote(s)).collect();
            format!(
                "    select {name} as audience, s.customer_id, s.{column} as segment\n    \
                 from {table} s\n    join contacts c on c.customer_id = s.customer_id\n    \
                 where s.{column} in ({segments}) and c.{consent} and c.email is not null",
                name = quote(&a.name),
                segments = segments.join(", "),
                consent = a.consent,
            )
        })
        .collect();
    let names: Vec<String> = audiences.iter().map(|a| quote(&a.name)).collect();
    Some(format!(
        r#"/*---
description = "Members of each audience configured under [[audiences]] (the consented customers with an email address of the audience's segments), and who left since the previous snapshot."
grain = ["audience", "customer_id"]

[columns]
audience    = "The audience's name."
customer_id = "Customer key."
segment     = "The member's segment (for `left`: the segment they had)."
change      = "entered (not a member in the previous snapshot), stayed, or left (a member then, not now)."

[checks]
unique          = ["audience, customer_id"]
not_null        = ["audience", "customer_id", "change"]
accepted_values = {{ change = ["entered", "stayed", "left"] }}
---*/
with contacts as (
    select customer_id,
           coalesce(bool_or(email_opt_in), false) as email_opt_in,
           coalesce(bool_or(ads_opt_in), false)   as ads_opt_in,
           {CONTACT_EMAIL} as email
    from customers
    group by customer_id
),

now_members as (
{members}
),

before_members as (
    select audience, customer_id, segment
    from previous.audience_members
    where change <> 'left' and audience in ({names})
)

select coalesce(n.audience, b.audience)       as audience,
       coalesce(n.customer_id, b.customer_id) as customer_id,
       coalesce(n.segment, b.segment)         as segment,
       case when b.customer_id is null then 'entered'
            when n.customer_id is null then 'left'
            else 'stayed' end                 as change
from now_members n
full join before_members b on b.audience = n.audience and b.customer_id = n.customer_id
"#,
        members = members.join("\n    union all\n"),
        names = names.join(", "),
    ))
}

/// A customer's email address in `customers`: the smallest trimmed, non-empty one (the
/// model's membership and the upload files take the same).
pub(crate) const CONTACT_EMAIL: &str = "min(case when trim(email) <> '' then trim(email) end)";

/// An audience's upload files (name and header) and the query of their one column: the
/// same rows for every file of the audience.
fn uploads(a: &Audience) -> (String, Vec<(String, &'static str)>) {
    let members = format!(
        "select c.email from {MODEL} m join (select customer_id, {CONTACT_EMAIL} as email \
         from customers group by customer_id) c on c.customer_id = m.customer_id \
         where m.audience = {} and m.change <> 'left' and c.email is not null",
        quote(&a.name)
    );
    match a.channel {
        Channel::Email => (
            format!("select email from ({members}) u order by email"),
            vec![(format!("{}.csv", a.name), "email")],
        ),
        Channel::Ads => (
            format!(
                "select distinct encode(sha256(lower(email)), 'hex') as h from ({members}) u order by h"
            ),
            vec![
                (format!("{}.google.csv", a.name), "Email"),
                (format!("{}.meta.csv", a.name), "email"),
            ],
        ),
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Writes every audience's upload files into the run's staging (`_audiences/as_of=D/`) from
/// the staged `audience_members` and the `customers` input in `ctx`; returns the manifest
/// entry and the staged files (relative to that folder), or None without audiences.
pub async fn stage(
    ctx: &SessionContext,
    output: &Output,
    run_id: &str,
    as_of: chrono::NaiveDate,
    audiences: &[Audience],
) -> Result<Option<(AudiencesEntry, Vec<String>)>> {
    if audiences.is_empty() {
        return Ok(None);
    }
    let engine = |what: String| move |e| Error::engine(what, e);
    let counts = ctx
        .sql(&format!(
            "select audience, change, count(*) as n from {MODEL} group by audience, change"
        ))
        .await
        .map_err(engine(format!("count {MODEL}")))?
        .collect()
        .await
        .map_err(engine(format!("count {MODEL}")))?;
    let mut changes: BTreeMap<(String, String), u64> = BTreeMap::new();
    for batch in &counts {
        let cast = |i: usize| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let (aud, change) = (
            cast(0).map_err(|e| Error::engine("count audiences", e.into()))?,
            cast(1).map_err(|e| Error::engine("count audiences", e.into()))?,
        );
        let n = batch
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for r in 0..batch.num_rows() {
            changes.insert(
                (
                    aud.as_string::<i32>().value(r).to_string(),
                    change.as_string::<i32>().value(r).to_string(),
                ),
                u64::try_from(n.value(r)).unwrap_or_default(),
            );
        }
    }
    let folder = format!("{AUDIENCES}/as_of={as_of}");
    let mut entry = AudiencesEntry {
        path: folder.clone(),
        files: Vec::new(),
        bytes: 0,
        audiences: BTreeMap::new(),
    };
    let mut staged = Vec::new();
    for a in audiences {
        let count = |c: &str| {
            changes
                .get(&(a.name.clone(), c.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let mut summary = AudienceSummary {
            channel: a.channel.name().to_string(),
            segmentation: a.segmentation.clone(),
            segments: a.segments.clone(),
            members: count("entered") + count("stayed"),
            entered: count("entered"),
            stayed: count("stayed"),
            left: count("left"),
            files: Vec::new(),
        };
        let (query, files) = uploads(a);
        let what = format!("audience {}", a.name);
        let mut body = String::new();
        let mut stream = ctx
            .sql(&query)
            .await
            .map_err(engine(what.clone()))?
            .execute_stream()
            .await
            .map_err(engine(what.clone()))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(engine(what.clone()))?;
            let values = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| Error::engine(what.clone(), e.into()))?;
            let values = values.as_string::<i32>();
            for r in 0..values.len() {
                if values.is_valid(r) {
                    body.push_str(&csv_field(values.value(r)));
                    body.push('\n');
                }
            }
        }
        for (file, header) in files {
            let text = format!("{header}\n{body}");
            let rel = format!("{}/{folder}/{file}", staging_rel(run_id));
            let path = output.loc.path(&rel);
            entry.bytes += text.len() as u64;
            let payload = PutPayload::from(text.into_bytes());
            retrying("put", || output.loc.store.put(&path, payload.clone()))
                .await
                .map_err(|e| output.err(format!("write {rel}"), e))?;
            let published = format!("{folder}/{file}");
            summary.files.push(published.clone());
            entry.files.push(published);
            staged.push(file);
        }
        entry.audiences.insert(a.name.clone(), summary);
    }
    Ok(Some((entry, staged)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("a@example.com"), "a@example.com");
        assert_eq!(
            csv_field("\"a,b\"@example.com"),
            "\"\"\"a,b\"\"@example.com\""
        );
    }
}
