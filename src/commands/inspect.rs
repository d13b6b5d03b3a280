//! The analyst's commands besides `check`: `list` (the models and what they read),
//! `preview` (a model's first rows) and `explain` (its plans). None takes the lock or
//! writes under the output: `preview` and `explain` stage what they compute in a private
//! local temp dir, removed when they finish (also on error or Ctrl-C).

use std::collections::BTreeSet;

use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::commands::run::stage_inputs;
use crate::config::{Engine, Settings};
use crate::error::{Error, Result};
use crate::models::{concurrent_models, run_models_until, ModelRun, Previous, Run};
use crate::models::{discover_models, order_models, Model, ModelSources};
use crate::publish::stage::Staging;
use crate::publish::{Manifest, Output};
use crate::redact::redact;
use crate::session::build_session;
use crate::storage::Location;

/// The models in run order.
fn ordered_models(settings: &Settings) -> Result<Vec<Model>> {
    order_models(discover_models(&ModelSources::of(settings))?)
}

/// The output, read only: None when nothing was ever published there (a local folder that
/// does not exist is not created).
fn existing_output(settings: &Settings) -> Result<Option<Output>> {
    let loc = Location::resolve(&settings.output, &settings.s3)?;
    if loc.local.as_ref().is_some_and(|p| !p.exists()) {
        return Ok(None);
    }
    Ok(Some(Output {
        loc,
        tables: settings.tables.clone(),
    }))
}

/// The newest published snapshot's manifest, if any.
async fn latest_manifest(output: Option<&Output>) -> Result<Option<Manifest>> {
    let Some(output) = output else {
        return Ok(None);
    };
    match output.snapshots().await?.into_iter().max() {
        Some(d) => output.manifest(d).await,
        None => Ok(None),
    }
}

/// `segflow list`: every model with its kind, grain, partitioning, what it reads, whether
/// the newest snapshot publishes it, and its description.
pub async fn list(settings: &Settings) -> Result<String> {
    let models = ordered_models(settings)?;
    let output = existing_output(settings)?;
    let latest = latest_manifest(output.as_ref()).await?;
    let header = [
        "MODEL",
        "KIND",
        "GRAIN",
        "PARTITION BY",
        "READS",
        "PUBLISHED",
        "DESCRIPTION",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in &models {
        let mut reads: Vec<String> = m.inputs.iter().cloned().collect();
        reads.extend(m.deps.iter().cloned());
        reads.extend(m.previous_deps.iter().map(|d| format!("previous.{d}")));
        let published = match &latest {
            Some(l) if l.tables.contains_key(&m.name) => format!("as_of={}", l.as_of),
            _ if !m.header.publish => "never (internal)".into(),
            _ => "not yet".into(),
        };
        let or_dash = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        rows.push(vec![
            m.name.clone(),
            match (m.header.publish, m.incremental()) {
                (true, _) => "table",
                (false, true) => "incremental",
                (false, false) => "internal",
            }
            .into(),
            or_dash(&m.header.grain),
            or_dash(&m.header.partition_by),
            or_dash(&reads),
            published,
            m.header.description.clone(),
        ]);
    }
    let mut text = align(&header, &rows);
    text.push_str(&match (&latest, &output) {
        (Some(l), _) => format!(
            "{} model(s); newest snapshot as_of={} at {}\n",
            models.len(),
            l.as_of,
            settings.output
        ),
        _ => format!(
            "{} model(s); no snapshot published at {} yet\n",
            models.len(),
            settings.output
        ),
    });
    Ok(text)
}

/// Columns padded to the widest cell (the last column is not padded).
fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A scratch run: the models `target` needs, staged into a private temp dir.
struct Scratch {
    _dir: tempfile::TempDir,
    ctx: SessionContext,
    as_of: NaiveDate,
    /// Rows of the staged target (when it was computed).
    rows: Option<u64>,
    /// The target planned over the staged tables upstream (when not computed).
    planned: Option<DataFrame>,
}

/// Computes what `target` reads (and `target` itself unless `plan_only`) into a temp dir
/// under `[runtime] temp_dir` (else the system's), with the previous snapshot of the real
/// output readable as `previous.*`.
async fn scratch_run(
    settings: &Settings,
    target: &str,
    as_of: Option<NaiveDate>,
    plan_only: bool,
) -> Result<Scratch> {
    let models = ordered_models(settings)?;
    if !models.iter().any(|m| m.name == target) {
        return Err(Error::Argument {
            flag: "MODEL",
            message: format!(
                "no model named `{target}` (models: {})",
                models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    // The target and everything it reads, in run order.
    let mut needed: BTreeSet<String> = [target.to_string()].into();
    for m in models.iter().rev() {
        if needed.contains(&m.name) {
            needed.extend(m.deps.iter().chain(m.previous_deps.iter()).cloned());
        }
    }
    let models: Vec<Model> = models
        .into_iter()
        .filter(|m| needed.contains(&m.name))
        .collect();

    let mut settings = settings.clone();
    if as_of.is_some() {
        settings.as_of = as_of;
    }
    let base = settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| Error::io("create temp dir", &base, e))?;
    let dir = tempfile::Builder::new()
        .prefix("segflow-scratch-")
        .tempdir_in(&base)
        .map_err(|e| Error::io("create temp dir", &base, e))?;
    let scratch = Output::open(
        &dir.path().display().to_string(),
        &settings.s3,
        &Default::default(),
    )?;
    // Customers erased from the output (`segflow forget`) are left out here too.
    let real = existing_output(&settings)?;
    if let Some(output) = &real {
        if let Some(erased) = output.erased_ids().await?.filter(|e| !e.is_empty()) {
            settings.privacy.erased = Some(std::sync::Arc::new(erased));
        }
    }
    let ctx = build_session(&settings)?;
    let run_id = format!("scratch-{}", std::process::id());
    let (sources, staging) = stage_inputs(
        &ctx,
        &settings,
        &models,
        |as_of| Staging {
            out: scratch.clone(),
            run_id: run_id.clone(),
            as_of,
        },
        |_| crate::ingest::Lines::All,
    )
    .await?;
    let previous_manifest = match &real {
        Some(o) => o.previous_snapshot(sources.as_of).await?,
        None => None,
    };
    let previous = Previous {
        output: real.as_ref().unwrap_or(&scratch),
        manifest: previous_manifest.as_ref(),
        erased: settings.privacy.erased.as_ref(),
    };
    let inputs = ModelRun {
        ctx: &ctx,
        models: &models,
        as_of: sources.as_of,
        config_params: &settings.params,
        previous: &previous,
        staging: &staging,
        state: crate::models::StateRun::default(),
    };
    let (outputs, planned) = run_models_until(
        inputs,
        Run {
            until: plan_only.then_some(target),
            concurrency: concurrent_models(&settings, sources.staged_bytes),
        },
    )
    .await?;
    let rows = outputs.iter().find(|o| o.name == target).map(|o| o.rows);
    Ok(Scratch {
        _dir: dir,
        ctx,
        as_of: sources.as_of,
        rows,
        planned,
    })
}

/// `segflow preview`: runs `model` and what it reads, and shows its first `limit` rows as
/// an aligned table.
pub async fn preview(
    settings: &Settings,
    model: &str,
    limit: usize,
    as_of: Option<NaiveDate>,
) -> Result<String> {
    let scratch = scratch_run(settings, model, as_of, false).await?;
    let engine =
        |e: datafusion::error::DataFusionError| Error::engine(format!("preview {model}"), e);
    let batches: Vec<RecordBatch> = scratch
        .ctx
        .table(model)
        .await
        .map_err(engine)?
        .limit(0, Some(limit))
        .map_err(engine)?
        .collect()
        .await
        .map_err(engine)?;
    let shown: usize = batches.iter().map(|b| b.num_rows()).sum();
    let table = pretty_format_batches(&batches)
        .map_err(|e| engine(e.into()))?
        .to_string();
    Ok(format!(
        "{table}\n{model} as_of={}: {} row(s), {shown} shown (nothing published)\n",
        scratch.as_of,
        scratch.rows.unwrap_or(0)
    ))
}

/// `segflow explain`: the logical and physical plan of `model` over the staged tables it
/// reads; with `analyze`, the model is executed and the plan shows its metrics.
pub async fn explain(settings: &Settings, model: &str, analyze: bool) -> Result<String> {
    let scratch = scratch_run(settings, model, None, true).await?;
    let df = scratch.planned.ok_or_else(|| Error::Argument {
        flag: "MODEL",
        message: format!("model `{model}` was not planned"),
    })?;
    let render = |sections: Vec<crate::session::PlanSection>| {
        sections
            .into_iter()
            .map(|(kind, plan)| format!("== {kind} ==\n{plan}\n\n"))
            .collect::<String>()
    };
    if let Engine::Ballista(_) = &settings.engine {
        let sections =
            crate::cluster::explain(settings, df.logical_plan().clone(), analyze).await?;
        return Ok(render(sections));
    }
    let engine = |e: datafusion::error::DataFusionError| Error::Model {
        file: String::new(),
        model: model.to_string(),
        message: redact(&e.strip_backtrace()),
    };
    let sections = crate::session::explain_sections(df, analyze)
        .await
        .map_err(engine)?;
    Ok(render(sections))
}
