//! `segflow run`: discover → lock → recover → session → sources → models (staged) → checks
//! → commit → retention, as separate steps.
//!
//! SIGTERM and SIGINT stop the run before the commit: its staging is removed, the lock
//! released, and the error says nothing was published. A signal that arrives during the
//! commit (a few object copies or renames and one manifest write) lets the commit finish,
//! so a snapshot is never left half-replaced by a signal.

pub mod lineage;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use datafusion::prelude::SessionContext;

use crate::config::{Engine, Settings, TableFormat};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ingest::{open_sources, planning_as_of, stage_orders, Lines, Sources};
use crate::models::plan_models;
use crate::models::select_run;
use crate::models::{
    concurrent_models, run_checks, run_data_tests, run_models, ModelRun, Previous, StateRun,
};
use crate::models::{DataTest, Model};
use crate::publish::delta::{DeltaInputs, StagedTables};
use crate::publish::draft::StagedModel;
use crate::publish::manifest::{RunInfo, Watermark};
use crate::publish::stage::Staging;
use crate::publish::{LockInfo, Manifest, Output};
use crate::session::build_session;
use crate::shutdown::Shutdown;
use crate::state::{self, Start};

/// Opens the inputs, plans `models` to learn which order columns they read, and stages
/// those columns of the canonical `orders` (see [`stage_orders`]).
pub(crate) async fn stage_inputs(
    ctx: &datafusion::prelude::SessionContext,
    settings: &Settings,
    models: &[Model],
    staging: impl FnOnce(chrono::NaiveDate) -> Staging,
    lines: impl FnOnce(&[crate::publish::manifest::InputFile]) -> Lines,
) -> Result<(Sources, Staging)> {
    let source = open_sources(ctx, settings, lines).await?;
    let used = plan_models(
        ctx,
        settings,
        source.schema(),
        models,
        planning_as_of(settings),
        false,
    )
    .await?
    .orders_columns;
    stage_orders(ctx, settings, source, &used, staging).await
}

/// What a successful run published.
#[derive(Debug)]
pub struct RunSummary {
    pub manifest: Manifest,
    pub output: Output,
}

impl RunSummary {
    /// What `segflow run` prints: where the snapshot and each published table went.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let (m, loc) = (&self.manifest, &self.output.loc);
        let mut out = format!(
            "published as_of={} to {} ({} tables, {} ms)\n",
            m.as_of,
            loc.uri,
            m.tables.len(),
            m.duration_ms
        );
        for (name, t) in &m.tables {
            if m.models.get(name).is_some_and(|x| x.published) {
                let place = match t.delta_version {
                    Some(v) => format!("{} (Delta table, version {v})", loc.display(name)),
                    None => loc.display(&t.path),
                };
                let _ = writeln!(out, "  {:<20} {:>8} rows  {}", name, t.rows, place);
            }
        }
        if let Some(file) = m.report.as_ref().and_then(|r| r.files.first()) {
            let _ = writeln!(out, "  report:   {}", loc.display(file));
        }
        let _ = writeln!(
            out,
            "  manifest: {}",
            loc.display(&crate::publish::manifest_rel(m.as_of))
        );
        let _ = writeln!(
            out,
            "  catalog:  {} (DuckDB; spark.sql beside it)",
            loc.display(&crate::publish::layout::catalog_rel("duckdb.sql"))
        );
        out
    }
}

/// `segflow run`: loads the config, runs (with OpenLineage START and COMPLETE / FAIL events
/// when `[lineage]` is set) and writes the metrics file when one is asked for, for a run
/// that failed too (a metrics file that cannot be written stops the run before it starts;
/// one that fails after the run is reported and leaves the run's exit status).
pub async fn run_command(
    config: &std::path::Path,
    overrides: &crate::config::Overrides,
    metrics_file: Option<&std::path::Path>,
) -> Result<RunSummary> {
    let started = Instant::now();
    if let Some(path) = metrics_file {
        metrics::check_writable(path)?;
    }
    let result = match Settings::load(config, overrides) {
        Ok(settings) => run_with_lineage(&settings).await,
        Err(e) => Err(e),
    };
    if let Some(path) = metrics_file {
        let outcome = metrics::RunOutcome {
            manifest: result.as_ref().ok().map(|s| &s.manifest),
            exit_code: result.as_ref().err().map_or(0, |e| e.exit_code()),
            duration: started.elapsed(),
            finished_at: Utc::now(),
        };
        if let Err(e) = metrics::write(path, &metrics::render(&outcome)) {
            eprintln!("error: {e}");
        }
    }
    result
}

/// [`run`], with OpenLineage START and COMPLETE / FAIL events when `[lineage]` is set.
async fn run_with_lineage(settings: &Settings) -> Result<RunSummary> {
    let Some(config) = settings.lineage.clone() else {
        return run(settings).await;
    };
    let lineage = lineage::Lineage::new(config, Utc::now());
    let inputs = lineage::input_datasets(settings).await;
    lineage.start(&inputs).await;
    let result = run(settings).await;
    match &result {
        Ok(summary) => {
            let outputs = lineage::output_datasets(&summary.manifest, &summary.output.loc);
            lineage.complete(&inputs, &outputs).await;
        }
        Err(e) => {
            lineage
                .fail(&inputs, &crate::redact::redact(&e.to_string()))
                .await
        }
    }
    result
}

/// A run's staged result, ready to commit.
struct Prepared {
    manifest: Manifest,
    /// Staged files of each folder to publish, relative to its staging directory.
    staged: BTreeMap<String, Vec<String>>,
    /// Delta output: the run's session and the published tables, written as Delta commits.
    delta: Option<(SessionContext, StagedTables)>,
}

/// Runs the whole job: exit 0 only when everything is published.
pub async fn run(settings: &Settings) -> Result<RunSummary> {
    let mut shutdown = Shutdown::install()?;
    // Models first: a broken model fails before any I/O.
    let selection = select_run(settings)?;
    info!(models = selection.models.len(), "models discovered");
    let started_at = Utc::now();
    let clock = Instant::now();
    let run_id = format!(
        "{}-{}",
        started_at.format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id()
    );
    let tests: Vec<&DataTest> = selection.tests.iter().collect();
    let output = Output::open(&settings.output, &settings.s3, &settings.tables)?;
    // A cluster that cannot be reached stops the run before the lock is taken.
    if let Engine::Ballista(scheduler) = &settings.engine {
        crate::cluster::reachable(scheduler).await?;
    }
    let _governor = crate::memory::Governor::start(settings.memory_limit);
    let me = LockInfo::new(&run_id, started_at);
    let lock = tokio::select! {
        l = output.acquire_lock(&me, settings.lock_timeout) => Arc::new(l?),
        s = shutdown.wait() => return Err(Error::Interrupted { signal: s }),
    };
    let heartbeat = lock.keep_alive(settings.lock_timeout);
    let selected = Selected {
        models: &selection.models,
        tests: &tests,
        publish_only: &selection.publish_only,
    };
    let prepared = tokio::select! {
        p = prepare(settings, &output, &run_id, started_at, clock, &selected) => p,
        s = shutdown.wait() => Err(Error::Interrupted { signal: s }),
    };
    let result = match prepared {
        Ok(mut p) => {
            let delta = p
                .delta
                .as_ref()
                .map(|(ctx, tables)| DeltaInputs { ctx, tables });
            output
                .commit(&lock, &mut p.manifest, &p.staged, delta.as_ref())
                .await
                .map(|()| p.manifest)
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        output.remove_staging(&run_id).await;
    }
    if let (Ok(m), Some(keep)) = (&result, settings.keep_snapshots) {
        // The snapshot is published; a failed clean-up of old ones is retried next run.
        if let Err(e) = output.apply_retention(keep).await {
            warn!(error = %e, "cannot delete old snapshots");
        }
        info!(as_of = %m.as_of, keep, "retention applied");
    }
    if result.is_ok() {
        // After the manifest and retention, so the catalog is never ahead of them; a
        // catalog that cannot be written is rewritten by the next run.
        if let Err(e) = output.write_catalog(&run_id).await {
            warn!(error = %e, "cannot write the catalog");
        }
    }
    drop(heartbeat);
    lock.release().await;
    result.map(|manifest| RunSummary { manifest, output })
}

/// The ids of a new snapshot must join those of the kept ones: a run whose pseudonym key
/// (or whose choice to pseudonymise) differs from the newest kept snapshot's stops, naming
/// both fingerprints.
pub(crate) async fn check_pseudonyms(settings: &Settings, output: &Output) -> Result<()> {
    let Some(newest) = output.snapshots().await?.pop() else {
        return Ok(());
    };
    let Some(kept) = output.manifest(newest).await? else {
        return Ok(());
    };
    let now = settings.privacy.pseudonym.as_ref().map(|k| k.fingerprint());
    let then = kept.privacy.as_ref().map(|p| p.key_fingerprint.as_str());
    let message = match (then, now) {
        (Some(a), Some(b)) if a == b => return Ok(()),
        (None, None) => return Ok(()),
        (Some(a), Some(b)) => format!(
            "the pseudonym key changed: snapshot {newest} was published under the key with \
             fingerprint {a}, this run's key has fingerprint {b}; its ids would not join the \
             kept history (set the key back, or publish to a new output)"
        ),
        (Some(a), None) => format!(
            "snapshot {newest} was published with pseudonymised ids (key fingerprint {a}): \
             this run would publish raw ids beside them; set [privacy] pseudonymise = true \
             and {}",
            crate::privacy::KEY_ENV
        ),
        (None, Some(_)) => format!(
            "snapshot {newest} was published with raw customer ids: pseudonymised ids would \
             not join its history (and it holds raw ids): publish to a new output"
        ),
    };
    Err(Error::ConfigValue {
        key: crate::privacy::KEY_ENV.into(),
        message,
    })
}

/// What a run computes: the models in order, the data tests that can run, the models to
/// publish.
#[derive(Clone, Copy)]
struct Selected<'a> {
    models: &'a [Model],
    tests: &'a [&'a DataTest],
    publish_only: &'a BTreeSet<String>,
}

async fn prepare(
    settings: &Settings,
    output: &Output,
    run_id: &str,
    started_at: DateTime<Utc>,
    clock: Instant,
    selected: &Selected<'_>,
) -> Result<Prepared> {
    output.recover(run_id).await?;
    check_pseudonyms(settings, output).await?;
    // Erased customers (`segflow forget`) are left out as the inputs are mapped.
    let with_erased;
    let settings = match output.erased_ids().await? {
        Some(erased) if !erased.is_empty() => {
            let mut s = settings.clone();
            s.privacy.erased = Some(Arc::new(erased));
            with_erased = s;
            &with_erased
        }
        _ => settings,
    };
    failpoint::hit("after_lock").await;
    let ctx = build_session(settings)?;
    output.loc.register(&ctx);
    // The models' session: this one, or one bound to the cluster.
    let models_ctx = match &settings.engine {
        Engine::Local => ctx.clone(),
        Engine::Ballista(scheduler) => {
            let cluster = crate::cluster::connect(settings, scheduler).await?;
            output.loc.register(&cluster);
            cluster
        }
    };
    let computed = compute(&ctx, &models_ctx, settings, output, run_id, selected).await?;
    if ctx.session_id() != models_ctx.session_id() {
        // The report reads the staged models in this process.
        for o in &computed.outputs {
            let table = models_ctx
                .table_provider(o.name.as_str())
                .await
                .map_err(|e| Error::engine(format!("open {}", o.name), e))?;
            ctx.register_table(o.name.as_str(), table)
                .map_err(|e| Error::engine(format!("register {}", o.name), e))?;
        }
    }
    let as_of = computed.sources.as_of;
    let models: Vec<StagedModel> = computed
        .outputs
        .iter()
        .map(|o| StagedModel {
            name: &o.name,
            rows: o.rows,
            duration: o.duration,
            published: o.publish && selected.publish_only.contains(&o.name),
            partition_by: &o.partition_by,
            staged: &o.staged,
        })
        .collect();
    // A partial (--select) run keeps the other tables of the snapshot it replaces.
    let draft = output
        .draft(
            run_id,
            as_of,
            &models,
            computed.sources.rejected.as_ref(),
            !settings.select.is_empty(),
        )
        .await?;
    let mut staged = draft.staged;
    let delta = (output.tables.format == TableFormat::Delta).then(|| {
        // Published tables go in as Delta commits, not as folders.
        let tables = computed
            .outputs
            .iter()
            .filter(|o| staged.remove(&o.name).is_some())
            .map(|o| (o.name.clone(), (o.staged.clone(), o.schema.clone())))
            .collect();
        (ctx.clone(), tables)
    });
    let mut manifest =
        Manifest {
            run_id: run_id.to_string(),
            as_of,
            segflow_version: env!("CARGO_PKG_VERSION").to_string(),
            datafusion_version: datafusion::DATAFUSION_VERSION.to_string(),
            config_hash: settings.config_hash.clone(),
            started_at,
            finished_at: Utc::now(),
            duration_ms: clock.elapsed().as_millis() as u64,
            input: Some(computed.sources.orders.clone()),
            models: draft.models,
            tables: draft.tables,
            rejected: draft.rejected,
            report: None,
            warnings: computed.warnings,
            run: Some(computed.run),
            state: None,
            audiences: None,
            privacy: settings.privacy.pseudonym.as_ref().map(|k| {
                crate::publish::manifest::PrivacyEntry {
                    key_fingerprint: k.fingerprint().to_string(),
                }
            }),
            erasure: settings.privacy.erased.as_ref().map(|e| {
                crate::publish::manifest::ErasureEntry {
                    erased_ids: e.len() as u64,
                    erasures: Vec::new(),
                }
            }),
        };
    if let Some(hash) = computed.state_hash {
        let tables: Vec<(&str, &[String], &crate::publish::stage::StagedTable)> = computed
            .outputs
            .iter()
            .filter_map(|o| {
                let model = selected
                    .models
                    .iter()
                    .find(|m| m.name == o.name && m.incremental())?;
                Some((
                    o.name.as_str(),
                    crate::models::incremental::replaced_by(model),
                    &o.staged,
                ))
            })
            .collect();
        let watermark = Watermark {
            through: as_of,
            latest_order_date: computed.sources.latest,
            latest_visible: computed.sources.latest_visible,
            files: computed.sources.files.clone(),
        };
        let base = computed.state_base.as_ref();
        let (entry, files) = output.state_entry(run_id, as_of, &tables, base, hash, watermark);
        staged.insert(crate::publish::layout::STATE.to_string(), files);
        manifest.state = Some(entry);
    } else if !settings.select.is_empty() {
        // A partial run keeps the state of the snapshot it replaces (it covers what it did).
        manifest.state = output.manifest(as_of).await?.and_then(|m| m.state);
    }
    // The audiences' upload files, from the members this run computed (a `--select` run
    // that did not compute them keeps the replaced snapshot's).
    if draft.staged_names.contains(crate::audiences::MODEL) {
        let staged_files =
            crate::audiences::stage(&ctx, output, run_id, as_of, &settings.audiences).await?;
        if let Some((entry, files)) = staged_files {
            staged.insert(crate::publish::layout::AUDIENCES.to_string(), files);
            manifest.audiences = Some(entry);
        }
    } else if !settings.select.is_empty() {
        manifest.audiences = output.manifest(as_of).await?.and_then(|m| m.audiences);
    }
    // The report reads the snapshot's tables back: what this run staged, and what a
    // `--select` run keeps of the snapshot it replaces.
    let report = crate::report::stage(&ctx, output, &manifest, &draft.staged_names).await?;
    staged.insert(
        crate::publish::layout::REPORT.to_string(),
        vec![crate::publish::layout::REPORT_FILE.to_string()],
    );
    manifest.report = Some(report);
    manifest.finished_at = Utc::now();
    manifest.duration_ms = clock.elapsed().as_millis() as u64;
    Ok(Prepared {
        manifest,
        staged,
        delta,
    })
}

/// What a run computed: the staged inputs, the staged models, the warnings of their checks,
/// how (full or incremental), and the hash of the state it keeps (if it keeps one).
struct Computed {
    sources: Sources,
    outputs: Vec<crate::models::ModelOutput>,
    warnings: Vec<String>,
    run: RunInfo,
    state_hash: Option<String>,
    /// The snapshot an incremental run merged into (its state's base layers may be shared).
    state_base: Option<Manifest>,
}

/// Stages the inputs (in `ctx`, this process's session), computes the selected models
/// (beside the previous snapshot) in `models_ctx` (the same session, or one bound to a
/// cluster), and runs their checks and data tests there: an error among them fails the run.
async fn compute(
    ctx: &datafusion::prelude::SessionContext,
    models_ctx: &datafusion::prelude::SessionContext,
    settings: &Settings,
    output: &Output,
    run_id: &str,
    selected: &Selected<'_>,
) -> Result<Computed> {
    let (models, tests) = (selected.models, selected.tests);
    let hash = state::state_hash(settings, models);
    let keep_state = match state::cannot_keep(settings, models) {
        Some(why) => {
            info!(why = %why, "this run keeps no incremental state");
            false
        }
        None => true,
    };
    let mut start = state::start(output, settings, settings.as_of, &hash, keep_state).await?;
    let (sources, staging) = loop {
        let staging = |as_of| Staging {
            out: output.clone(),
            run_id: run_id.to_string(),
            as_of,
        };
        let (sources, staging) = stage_inputs(ctx, settings, models, staging, |files| {
            state::choose_lines(&mut start, files)
        })
        .await?;
        match &start {
            // The latest order date is the state's own (no later line came): a rerun of
            // that date, which starts from the state before it.
            Start::From(base) if sources.as_of <= base.as_of => {
                output.remove_staging(run_id).await;
                start =
                    state::start(output, settings, Some(sources.as_of), &hash, keep_state).await?;
            }
            _ => break (sources, staging),
        }
    };
    let as_of = sources.as_of;
    let keep_state = keep_state
        && (sources.order_ids || {
            info!(
                why = state::NO_ORDER_IDS,
                "this run keeps no incremental state"
            );
            false
        });
    let run = state::run_info(&start);
    match &run.full_reason {
        None => info!(%as_of, state_as_of = ?run.state_from, rows = sources.orders.rows_visible,
            "incremental run: new lines staged"),
        Some(why) => info!(%as_of, full_reason = %why, rows = sources.orders.rows_visible,
            "full run: every line staged"),
    }
    let base = match &start {
        Start::From(m) => Some((output, m.as_ref())),
        Start::Full(_) => None,
    };
    if ctx.session_id() != models_ctx.session_id() {
        // The staged inputs, as the models' session sees them.
        for name in crate::models::INPUT_TABLES {
            let table = ctx
                .table_provider(*name)
                .await
                .map_err(|e| Error::engine(format!("open {name}"), e))?;
            models_ctx
                .register_table(*name, table)
                .map_err(|e| Error::engine(format!("register {name}"), e))?;
        }
    }
    let ctx = models_ctx;

    let previous = output.previous_snapshot(as_of).await?;
    if let Some(p) = &previous {
        info!(previous_as_of = %p.as_of, "previous snapshot found");
    }
    // The staged lines decide whether two models fit in memory side by side: the line-level
    // models aggregate them. An incremental run stages only the new lines; its models read
    // the kept state instead, per order, day and customer, as compact as the tables a full
    // run's customer-level models read (BENCHMARKS.md, "Two models at a time").
    let concurrency = concurrent_models(settings, sources.staged_bytes);
    info!(
        concurrent_models = concurrency,
        "models computed up to this many at a time"
    );
    let touched = crate::models::touched::TouchedRows::default();
    let previous = Previous {
        output,
        manifest: previous.as_ref(),
        erased: settings.privacy.erased.as_ref(),
    };
    let inputs = ModelRun {
        ctx,
        models,
        as_of,
        config_params: &settings.params,
        previous: &previous,
        staging: &staging,
        state: StateRun {
            keep: keep_state,
            base,
            // On a cluster the executors read the state: rows kept in this process would
            // travel inside every plan that reads them.
            touched: (base.is_some() && matches!(settings.engine, Engine::Local))
                .then_some(&touched),
        },
    };
    let outputs = run_models(inputs, concurrency).await?;

    let mut findings = run_checks(ctx, models, &outputs).await?;
    findings.extend(run_data_tests(ctx, tests, as_of, &settings.params).await?);
    if !findings.errors.is_empty() {
        return Err(Error::ChecksFailed {
            count: findings.errors.len(),
            details: findings.errors.join("\n"),
        });
    }
    Ok(Computed {
        sources,
        outputs,
        warnings: findings.warnings,
        run,
        state_hash: keep_state.then_some(hash),
        state_base: match start {
            Start::From(m) => Some(*m),
            Start::Full(_) => None,
        },
    })
}
