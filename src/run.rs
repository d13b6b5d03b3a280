//! `segflow run`: discover → plan and run → check → stage → publish, as separate steps.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use tracing::info;

use crate::config::Settings;
use crate::engine::{run_checks, run_models};
use crate::error::{Error, Result};
use crate::models::{discover_models, order_models, select_models, ModelSources};
use crate::publish::{host_name, previous_tables, LockInfo, Manifest, ModelTiming, Output};
use crate::session::build_session;
use crate::sources::register_sources;

/// What a successful run published.
#[derive(Debug)]
pub struct RunSummary {
    pub manifest: Manifest,
    pub output_root: std::path::PathBuf,
}

/// Runs the whole job: exit 0 only when everything is published.
pub async fn run(settings: &Settings) -> Result<RunSummary> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id()
    );

    // Discover and order models first: a broken model fails before any I/O.
    let models = discover_models(&ModelSources {
        builtin: settings.builtin_models,
        paths: settings.model_paths.clone(),
    })?;
    let models = order_models(models)?;
    let (models, publish_only) = select_models(models, &settings.select)?;
    info!(models = models.len(), "models discovered");

    let output = Output::open(&settings.output)?;
    let me = LockInfo {
        run_id: run_id.clone(),
        host: host_name(),
        pid: std::process::id(),
        started_at,
    };
    output.acquire_lock(&me, settings.lock_timeout).await?;
    let result = run_locked(
        settings,
        &output,
        &run_id,
        started_at,
        clock,
        models,
        publish_only,
    )
    .await;
    if result.is_err() {
        output.remove_staging(&run_id);
    }
    output.release_lock(&run_id).await;
    result
}

async fn run_locked(
    settings: &Settings,
    output: &Output,
    run_id: &str,
    started_at: chrono::DateTime<Utc>,
    clock: Instant,
    models: Vec<crate::models::Model>,
    publish_only: std::collections::BTreeSet<String>,
) -> Result<RunSummary> {
    let ctx = build_session(settings)?;
    let sources = register_sources(&ctx, settings).await?;
    let as_of = sources.as_of;
    info!(%as_of, rows = sources.orders.rows_visible, "inputs registered");

    let previous = output.previous_snapshot(as_of).await?;
    if let Some(p) = &previous {
        info!(previous_as_of = %p.as_of, "previous snapshot found");
    }
    let wanted = models
        .iter()
        .flat_map(|m| m.previous_deps.iter().cloned())
        .collect();
    let previous_tables = previous_tables(&ctx, output, previous.as_ref(), &wanted).await?;
    let outputs = run_models(&ctx, &models, as_of, &settings.params, &previous_tables).await?;

    let failures = run_checks(&ctx, &models).await?;
    if !failures.is_empty() {
        return Err(Error::ChecksFailed {
            count: failures.len(),
            details: failures.join("\n"),
        });
    }

    let tables = output
        .stage_tables(&ctx, &outputs, run_id, as_of, &publish_only)
        .await?;
    let staged: Vec<String> = tables.keys().cloned().collect();

    // A partial (--select) run keeps the other tables of the snapshot it replaces.
    let mut all_tables = BTreeMap::new();
    if !settings.select.is_empty() {
        if let Some(existing) = output.manifest(as_of).await? {
            all_tables = existing.tables;
        }
    }
    all_tables.extend(tables);
    let manifest = Manifest {
        run_id: run_id.to_string(),
        as_of,
        segflow_version: env!("CARGO_PKG_VERSION").to_string(),
        datafusion_version: datafusion::DATAFUSION_VERSION.to_string(),
        config_hash: settings.config_hash.clone(),
        started_at,
        finished_at: Utc::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        input: Some(sources.orders.clone()),
        models: outputs
            .iter()
            .map(|o| {
                (
                    o.name.clone(),
                    ModelTiming {
                        rows: o.rows,
                        duration_ms: o.duration.as_millis() as u64,
                        published: o.publish && publish_only.contains(&o.name),
                    },
                )
            })
            .collect(),
        tables: all_tables,
    };
    output.commit(run_id, &manifest, &staged).await?;
    info!(%as_of, tables = staged.len(), "snapshot published");
    Ok(RunSummary {
        manifest,
        output_root: output.root().to_path_buf(),
    })
}
