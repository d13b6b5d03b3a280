//! The run report: one self-contained HTML page per snapshot, `_report/as_of=D/index.html`,
//! staged with the tables and committed by the same manifest.
//!
//! Every number comes from the snapshot's tables, read back through the session after the
//! checks passed (the staged files this run publishes, or the published files of tables a
//! `--select` run keeps), and from the manifest (run facts). Charts are inline SVG drawn
//! when the report is made ([`charts`]); the page has no scripts and no external resources.
//! Each number shown in a table carries its exact value in `data-v` (and the table, row key
//! and column in `data-table`, `data-key`, `data-col`), so tests compare it with the tables.
//!
//! A section whose table is absent, or lacks a column the section needs, is left out (a
//! project without the built-in models gets a report with its run facts).

mod audiences;
mod channels;
pub mod charts;
mod clv;
mod cohorts;
mod format;
mod frame;
mod lifecycle;
mod migration;
mod page;
mod products;
mod rfm;
mod run;
mod scorecard;

use audiences::*;
use channels::*;
use clv::*;
use cohorts::*;
use format::*;
pub use frame::*;
use lifecycle::*;
use migration::*;
use page::*;
use products::*;
use rfm::*;
use run::*;
use scorecard::*;

use std::collections::BTreeMap;

use datafusion::prelude::*;
use object_store::{ObjectStoreExt, PutPayload};
use tracing::info;

use crate::error::{Error, Result};
use crate::publish::layout::{report_file_rel, report_rel, staged_report_rel};
use crate::publish::{Manifest, Output, ReportEntry};
use crate::storage::retrying;

const TEMPLATE: &str = include_str!("report.html");

/// The order the scorecard lists segmentations in (others follow by name).
const SEGMENTATIONS: [&str; 6] = ["rfm", "lifecycle", "clv", "channel", "country", "device"];
/// Lifecycle stages from first purchase to churn.
const STAGES: [&str; 5] = ["new", "active", "at_risk", "lapsed", "churned"];
const RISKS: [&str; 3] = ["high", "medium", "low"];

fn report_err(section: &str, message: impl std::fmt::Display) -> Error {
    Error::Report {
        section: section.to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------

/// Renders the report of the snapshot `manifest` describes and stages it under
/// `_staging/<run_id>/_report/as_of=D/index.html`; the commit publishes it with the tables.
/// `computed` are the tables this run staged (registered in `ctx` under their names); the
/// manifest's other tables (kept by a `--select` run) are read from their published files.
pub async fn stage(
    ctx: &SessionContext,
    output: &Output,
    manifest: &Manifest,
    computed: &std::collections::BTreeSet<String>,
) -> Result<ReportEntry> {
    let mut map = BTreeMap::new();
    for (name, entry) in &manifest.tables {
        let df = if computed.contains(name) {
            ctx.table(name.as_str()).await
        } else {
            output.open_snapshot(ctx, name, entry, manifest.as_of).await
        }
        .map_err(|e| Error::engine(format!("report: read table {name}"), e))?;
        map.insert(name.clone(), df);
    }
    let html = render(&Tables(map), manifest).await?;
    let rel = staged_report_rel(&manifest.run_id, manifest.as_of);
    let path = output.loc.path(&rel);
    let bytes = html.len() as u64;
    let payload = PutPayload::from(html.into_bytes());
    retrying("put", || output.loc.store.put(&path, payload.clone()))
        .await
        .map_err(|e| output.err(format!("write {rel}"), e))?;
    Ok(ReportEntry {
        files: vec![report_file_rel(manifest.as_of)],
        path: report_rel(manifest.as_of),
        bytes,
    })
}

/// The report of `manifest`'s snapshot as one HTML page.
pub async fn render(tables: &Tables, manifest: &Manifest) -> Result<String> {
    let started = std::time::Instant::now();
    let mut sections = vec![];
    if !manifest.warnings.is_empty() {
        let mut section = Section::new(
            "warnings",
            "Warnings",
            "Checks of severity warn that failed in this run: the tables were published, \
             but these need a look.",
        );
        section.notes.clone_from(&manifest.warnings);
        sections.push(section);
    }
    for section in [
        scorecard(tables).await?,
        rfm_grid(tables).await?,
        lifecycle(tables).await?,
        cohorts(tables).await?,
        product_value(tables).await?,
        channel_value(tables).await?,
        migration(tables).await?,
        clv(tables).await?,
        audiences(tables).await?,
    ]
    .into_iter()
    .flatten()
    {
        sections.push(section);
    }
    sections.push(run_facts(manifest));

    let mut facts = vec![Fact {
        label: "as of",
        text: manifest.as_of.to_string(),
    }];
    if let Some(t) = manifest.tables.get("customer_facts") {
        facts.push(Fact {
            label: "customers",
            text: fmt_int(t.rows as i64),
        });
    }
    if let Some(input) = &manifest.input {
        // An incremental run read only the lines its state lacked.
        let incremental = manifest
            .run
            .as_ref()
            .is_some_and(|r| r.full_reason.is_none());
        facts.push(Fact {
            label: if incremental {
                "new order lines"
            } else {
                "order lines"
            },
            text: fmt_int(input.rows_visible as i64),
        });
    }
    facts.push(Fact {
        label: "tables",
        text: manifest.tables.len().to_string(),
    });
    let page = Page {
        as_of: manifest.as_of.to_string(),
        generated: manifest.started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        facts,
        sections,
    };
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| report_err("template", e))?;
    let html = env
        .get_template("report.html")
        .and_then(|t| t.render(minijinja::value::Serde(&page)))
        .map_err(|e| report_err("template", e))?;
    info!(
        sections = page.sections.len(),
        bytes = html.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "report rendered"
    );
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_shown_with_thousands_separators_and_kept_exact() {
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_int(-1234), "-1,234");
        assert_eq!(fmt_int(12), "12");
        assert_eq!(fmt_money(12345.678), "12,346");
        assert_eq!(fmt_money(12.345), "12.35");
        assert_eq!(fmt_pct(0.1234), "12.3 %");
        let v = Value::f("share", Some(0.1 + 0.2), fmt_pct);
        assert_eq!(v.v.as_deref(), Some("0.30000000000000004"));
        assert_eq!(Value::f("share", None, fmt_pct).v, None);
    }

    #[test]
    fn clv_bins_run_one_two_five() {
        let e = clv_edges();
        assert_eq!(&e[..7], &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        // A value on an edge belongs to the bin above it.
        assert_eq!(e.partition_point(|x| *x <= 10.0), 4);
        assert_eq!(e.partition_point(|x| *x <= 0.5), 0);
    }
}
