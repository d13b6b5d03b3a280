//! Running the models: each executed once as soon as the tables it reads are staged (up
//! to `concurrent_models` at a time), streaming its result to staging Parquet, and
//! registered for the models downstream (no result is held in memory).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use tracing::{debug, info, warn};

use crate::config::ParamValue;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::models::Model;
use crate::publish::stage::{open_staged, StageError, StagedTable, Staging};
use crate::publish::{Manifest, Output};
use crate::redact::redact;

use super::*;

/// What a run's models are computed from.
#[derive(Clone, Copy)]
pub struct ModelRun<'a> {
    pub ctx: &'a SessionContext,
    /// The models in order.
    pub models: &'a [Model],
    pub as_of: NaiveDate,
    /// `[params]` of the config.
    pub config_params: &'a BTreeMap<String, ParamValue>,
    /// The snapshot before this one, read as `previous.<model>`.
    pub previous: &'a Previous<'a>,
    pub staging: &'a Staging,
    /// How incremental models are computed and kept.
    pub state: StateRun<'a>,
}

/// How a run computes its incremental models.
#[derive(Clone, Copy, Default)]
pub struct StateRun<'a> {
    /// The run keeps a state: incremental models are staged into its folder.
    pub keep: bool,
    /// An incremental run: the snapshot whose state the new lines merge into (the staged
    /// `orders` hold only those lines). None: computed from every line.
    pub base: Option<(&'a Output, &'a Manifest)>,
    /// In an incremental run, the kept bases' rows of the customers the new lines touch,
    /// read once for the models that read them (see [`crate::models::touched`]).
    pub touched: Option<&'a crate::models::touched::TouchedRows>,
}

impl StateRun<'_> {
    /// Where `model` is staged: its state folder, or the usual table folder.
    fn staged_rel(&self, staging: &Staging, model: &Model) -> String {
        match self.keep && model.incremental() {
            true => staging.state_rel(&model.name),
            false => staging.table_rel(&model.name, model.header.publish),
        }
    }
}

/// Runs every model in order, writing each once to staging and registering the staged
/// table for the models downstream; returns their outputs (internal models included).
pub async fn run_models(inputs: ModelRun<'_>, concurrency: usize) -> Result<Vec<ModelOutput>> {
    let run = Run {
        until: None,
        concurrency,
    };
    Ok(run_models_until(inputs, run).await?.0)
}

/// How [`run_models_until`] runs the models.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// Stop at this model, planned but not executed.
    pub until: Option<&'a str>,
    /// Models computed side by side (see [`concurrent_models`]).
    pub concurrency: usize,
}

/// Models computed side by side: `[runtime] concurrent_models`, else two while the staged
/// orders (in an incremental run, the new lines) take at most a quarter of `memory_limit`
/// (or there is no limit) and one beyond:
/// two models share the memory pool, and on inputs larger than memory each spilled more and
/// ran longer than the two one after the other (BENCHMARKS.md).
pub fn concurrent_models(settings: &crate::config::Settings, staged_orders_bytes: u64) -> usize {
    let fits = match settings.memory_limit {
        Some(limit) => staged_orders_bytes <= limit as u64 / 4,
        None => true,
    };
    settings
        .concurrent_models
        .unwrap_or(if fits { 2 } else { 1 })
}

/// [`run_models`], stopping at the model named `until` (if any): it is planned over the
/// staged tables upstream, with its parameters bound and `previous.*` registered, and
/// returned unexecuted (for `segflow explain`).
pub async fn run_models_until(
    inputs: ModelRun<'_>,
    run: Run<'_>,
) -> Result<(Vec<ModelOutput>, Option<DataFrame>)> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut running = FuturesUnordered::new();
    let scheduler = Scheduler {
        previous_schema: register_previous_schema(inputs.ctx)?,
        inputs,
    };
    let result = scheduler.schedule(run, &mut running).await;
    if result.is_err() {
        // Models beside the one that failed finish first (their results unused): a model
        // dropped mid-write could leave an upload open or write after staging is removed.
        while running.next().await.is_some() {}
    }
    result
}

/// The order in which models start when several are ready (positions in `models`, which
/// are in the run's order: each after the models it reads): the one at the head of the
/// longest chain of work first, that chain being the model and the models that read it,
/// directly or through others, each weighted by `took` (its duration in the snapshot
/// before, in ms; 1 when unknown), ties in the run's order. Models that nothing else waits
/// for then fill the slots beside that chain instead of delaying it.
pub(crate) fn start_order(models: &[Model], took: impl Fn(&str) -> Option<u64>) -> Vec<usize> {
    let mut chain = vec![0u64; models.len()];
    for (i, model) in models.iter().enumerate().rev() {
        let longest_reader = models[i + 1..]
            .iter()
            .zip(&chain[i + 1..])
            .filter(|(reader, _)| reader.tables_read().any(|t| *t == model.name))
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0);
        chain[i] = took(&model.name).unwrap_or(1).max(1) + longest_reader;
    }
    let mut order: Vec<usize> = (0..models.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(chain[i]));
    order
}

/// A model being computed: its place in the run, what its plan shows, and its staged table
/// with the time it took.
type Computing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (usize, PlanFacts, Computed)> + Send + 'a>>;

/// What a model's plan shows of its result (see [`crate::models::keys`]): its unique keys,
/// and the table column each of its columns passes on (by position), if any.
pub(crate) struct PlanFacts {
    unique_keys: Vec<BTreeSet<String>>,
    sources: Vec<Option<(String, String)>>,
}

/// What computing one model gave: its staged table, schema and duration, and whether it is
/// a kept state model's delta read over its base; or why not.
type Computed = std::result::Result<(StagedTable, SchemaRef, Duration, Option<Layered>), Failed>;

/// A staged delta of kept state, which models downstream read over the kept base.
pub(crate) struct Layered {
    /// Where the base is read from ([`crate::models::keys::plan_location`]), to know the
    /// keys its model's checks proved when it was written.
    base: Option<String>,
}

/// A model that could not be computed.
pub(crate) struct Failed {
    error: Error,
    /// The memory pool refused an allocation.
    out_of_memory: bool,
}

/// Starts each model once the models it reads are staged (see [`run_models_until`]).
pub(crate) struct Scheduler<'a> {
    inputs: ModelRun<'a>,
    previous_schema: Arc<MemorySchemaProvider>,
}

/// Where a run stands: which models started and finished, which shared the memory pool,
/// which wait to rerun alone.
struct RunState {
    /// Each model's output, once it is staged.
    finished: Vec<Option<ModelOutput>>,
    started: Vec<bool>,
    /// Whether another model ran while it did (it shared the memory pool); read by the
    /// running model when it runs out of memory.
    shared: Vec<Arc<AtomicBool>>,
    /// Models to rerun alone, one by one, once the running ones finish.
    reruns: VecDeque<usize>,
    /// The keys of the staged models, for the models downstream.
    known: HashMap<String, Vec<BTreeSet<String>>>,
}

impl RunState {
    fn new(models: usize) -> Self {
        RunState {
            finished: vec![None; models],
            started: vec![false; models],
            shared: (0..models)
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            reruns: VecDeque::new(),
            known: HashMap::new(),
        }
    }

    /// The outputs of the models staged so far.
    fn staged(&self) -> Vec<&ModelOutput> {
        self.finished.iter().flatten().collect()
    }

    /// Marks the model at `position`, starting beside running models, and the models
    /// started and not finished as sharing the memory pool.
    fn share(&mut self, position: usize) {
        self.shared[position].store(true, Ordering::Relaxed);
        for (p, s) in self.shared.iter().enumerate() {
            if self.started[p] && self.finished[p].is_none() && p != position {
                s.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Every model's output, in the run's order (an internal error if one never started).
    fn outputs(self, models: &[Model]) -> Result<Vec<ModelOutput>> {
        if let Some(position) = self.finished.iter().position(Option::is_none) {
            let model = &models[position];
            return Err(Error::Model {
                file: model.file.clone(),
                model: model.name.clone(),
                message: "was never started: a model it reads did not run (internal error)".into(),
            });
        }
        Ok(self.finished.into_iter().flatten().collect())
    }
}

impl<'a> Scheduler<'a> {
    /// Runs the models, up to `run.concurrency` side by side, started in the run's order as
    /// soon as the models they read (current or previous tables) are staged; with one at a
    /// time, and for `explain` (which stops at a model), they run in that order. A model
    /// that runs out of memory beside others is rerun alone once they finish.
    async fn schedule(
        &self,
        run: Run<'_>,
        running: &mut futures::stream::FuturesUnordered<Computing<'a>>,
    ) -> Result<(Vec<ModelOutput>, Option<DataFrame>)> {
        use futures::stream::StreamExt;
        let models = self.inputs.models;
        let names: BTreeSet<&str> = models.iter().map(|m| m.name.as_str()).collect();
        let limit = if run.until.is_some() {
            1
        } else {
            run.concurrency.max(1)
        };
        let mut state = RunState::new(models.len());
        // One at a time (and for `explain`), in the run's order; side by side, the longest
        // chain of work first.
        let order: Vec<usize> = match limit {
            1 => (0..models.len()).collect(),
            _ => start_order(models, |name| {
                let previous = self.inputs.previous.manifest?;
                previous.models.get(name).map(|t| t.duration_ms)
            }),
        };
        loop {
            for position in self.to_start(&mut state, &names, &order, running.len(), limit) {
                let model = &models[position];
                let (df, params) = self.plan(model, &state.staged()).await?;
                if run.until == Some(model.name.as_str()) {
                    let outputs = state.finished.into_iter().flatten().collect();
                    return Ok((outputs, Some(df)));
                }
                if !running.is_empty() {
                    state.share(position);
                }
                debug!(model = %model.name, beside = running.len(), "model started");
                let beside = Arc::clone(&state.shared[position]);
                running.push(self.start(position, df, params, &state.known, beside));
            }
            let Some((position, facts, computed)) = running.next().await else {
                break;
            };
            self.finish(&mut state, position, facts, computed).await?;
        }
        Ok((state.outputs(models)?, None))
    }

    /// The models to start now, beside `running` ones (marked started): once none runs, the
    /// next model to rerun (alone: nothing else starts before it finishes); while none waits
    /// to rerun, and fewer than `limit` run, each model not started whose models read (those
    /// of `names`) are staged, taken in `order` (positions in the run).
    fn to_start(
        &self,
        state: &mut RunState,
        names: &BTreeSet<&str>,
        order: &[usize],
        running: usize,
        limit: usize,
    ) -> Vec<usize> {
        let mut starting = Vec::new();
        match state.reruns.front() {
            Some(&position) if running == 0 => {
                state.reruns.pop_front();
                starting.push(position);
            }
            Some(_) => {}
            None => {
                for &position in order {
                    let model = &self.inputs.models[position];
                    if running + starting.len() >= limit {
                        break;
                    }
                    let ready = !state.started[position]
                        && model
                            .tables_read()
                            .filter(|d| names.contains(d.as_str()))
                            .all(|d| state.finished.iter().flatten().any(|o| &o.name == d));
                    if ready {
                        state.started[position] = true;
                        starting.push(position);
                    }
                }
            }
        }
        starting
    }

    /// Computes the model at `position`, planned as `df` with `params`, into staging (see
    /// [`compute_model`]), showing its progress; gives its unique keys (given the `known`
    /// keys of the models it reads) and what it took. `beside` is its flag of
    /// [`RunState::shared`].
    fn start(
        &self,
        position: usize,
        df: DataFrame,
        params: BTreeMap<String, ScalarValue>,
        known: &HashMap<String, Vec<BTreeSet<String>>>,
        beside: Arc<AtomicBool>,
    ) -> Computing<'a> {
        let (ctx, models, staging) = (self.inputs.ctx, self.inputs.models, self.inputs.staging);
        let state = self.inputs.state;
        let model = &models[position];
        let facts = PlanFacts {
            unique_keys: crate::models::keys::unique_keys(&df, known),
            sources: crate::models::keys::column_sources(&df),
        };
        let progress =
            crate::progress::ModelProgress::start(&model.name, position + 1, models.len());
        Box::pin(async move {
            let clock = Instant::now();
            let computed = compute_model(ctx, model, &params, df, staging, state, &beside).await;
            let computed = computed.map(|(staged, schema, base)| {
                let duration = clock.elapsed();
                progress.finish(&model.name, staged.rows, duration);
                (staged, schema, duration, base)
            });
            (position, facts, computed)
        })
    }

    /// Records the model at `position` as computed, for the models downstream; or, when it
    /// ran out of memory beside other models, removes what it staged and queues it to
    /// rerun alone.
    async fn finish(
        &self,
        state: &mut RunState,
        position: usize,
        facts: PlanFacts,
        computed: Computed,
    ) -> Result<()> {
        let model = &self.inputs.models[position];
        let (staged, schema, duration, base) = match computed {
            Ok(c) => c,
            Err(Failed {
                error,
                out_of_memory: true,
            }) if state.shared[position].load(Ordering::Relaxed) => {
                warn!(model = %model.name, %error,
                    "model ran out of memory beside other models; rerunning it alone once they finish");
                let staging = self.inputs.staging;
                staging
                    .out
                    .delete_prefix(&self.inputs.state.staged_rel(staging, model))
                    .await?;
                state.shared[position].store(false, Ordering::Relaxed);
                state.reruns.push_back(position);
                return Ok(());
            }
            Err(f) => return Err(f.error),
        };
        info!(model = %model.name, rows = staged.rows, duration_ms = duration.as_millis() as u64, "model computed");
        let sources = schema
            .fields()
            .iter()
            .zip(facts.sources)
            .filter_map(|(f, s)| Some((f.name().clone(), s?)))
            .collect();
        let output = ModelOutput {
            name: model.name.clone(),
            file: model.file.clone(),
            schema,
            rows: staged.rows,
            duration,
            publish: model.header.publish,
            partition_by: model.header.partition_by.clone(),
            location: crate::models::keys::location_key(
                &self.inputs.staging.out.loc.dir_url(&staged.rel),
            ),
            sources,
            staged,
            unique_keys: facts.unique_keys,
            layered: base.is_some(),
        };
        let base = base.and_then(|b| b.base);
        state.known.extend(known_keys(model, &output, base));
        state.finished[position] = Some(output);
        // Only incremental models read the kept rows of the touched customers.
        if let Some(touched) = self.inputs.state.touched {
            let models = self.inputs.models.iter().zip(&state.finished);
            if models.clone().any(|(m, _)| m.incremental())
                && models
                    .into_iter()
                    .all(|(m, f)| !m.incremental() || f.is_some())
            {
                touched.release();
            }
        }
        failpoint::hit("staging").await;
        Ok(())
    }

    /// Plans `model` over the staged tables, with `previous.*` registered; returns the plan
    /// and its bound parameters (to plan it again, should it rerun on sort-merge joins).
    async fn plan(
        &self,
        model: &Model,
        staged: &[&ModelOutput],
    ) -> Result<(DataFrame, BTreeMap<String, ScalarValue>)> {
        let params = model_params(model, self.inputs.as_of, self.inputs.config_params)?;
        register_previous_deps(
            self.inputs.ctx,
            model,
            &params,
            &self.previous_schema,
            self.inputs.previous,
            staged,
        )
        .await?;
        match self.inputs.state.base {
            Some((output, base)) if model.incremental() => {
                let slice = match crate::models::incremental::by_customer(model) {
                    true => {
                        crate::models::incremental::plan_touched(self.inputs.ctx, model, &params)
                            .await?
                    }
                    false => plan_model(self.inputs.ctx, model, &params).await?,
                };
                let kept = Kept {
                    output,
                    base,
                    touched: self.inputs.state.touched,
                };
                let df = plan_incremental(self.inputs.ctx, model, slice, kept).await?;
                Ok((df, params))
            }
            _ => Ok((plan_model(self.inputs.ctx, model, &params).await?, params)),
        }
    }
}

/// Where an incremental run's kept state is: the output, the snapshot whose state the new
/// lines merge into, and the rows of it the run reads once.
struct Kept<'a> {
    output: &'a Output,
    base: &'a Manifest,
    touched: Option<&'a crate::models::touched::TouchedRows>,
}

/// An incremental model in an incremental run: `slice` (the model over the new lines)
/// merged into the rows `base`'s state keeps (see [`crate::models::incremental`]).
async fn plan_incremental(
    ctx: &SessionContext,
    model: &Model,
    slice: DataFrame,
    Kept {
        output,
        base,
        touched,
    }: Kept<'_>,
) -> Result<DataFrame> {
    use crate::models::incremental::{merged_state, plan_merge, replaced_by, touched_state};
    let err = |e| model_error(model, e);
    let kept = output
        .open_state(ctx, base, &model.name, replaced_by(model))
        .await
        .map_err(err)?;
    let schema = slice.schema().as_arrow().clone();
    // The kept rows of the customers the new lines touch, read once for this merge and
    // the models downstream that recompute those customers, when the slice's customers
    // are the lines' own (then they are among the touched ones).
    let touched_kept = match touched {
        Some(touched) if of_the_lines_customers(ctx, &slice).await => {
            crate::models::touched::kept_state(
                ctx,
                output,
                base,
                &model.name,
                replaced_by(model),
                touched,
            )
            .await
            .map_err(err)?
        }
        _ => kept.clone(),
    };
    let touched = touched_state(model, touched_kept, &slice)?;
    let merged = plan_merge(ctx, model, touched, slice.clone()).await?;
    match crate::publish::state::shared_base(Some(base), &model.name) {
        // The base stays shared: the run writes the delta's rows it keeps, and the merged.
        Some(table) if !table.delta.is_empty() => {
            let delta = output
                .open_files(ctx, &table.delta, table.buckets)
                .await
                .map_err(err)?;
            merged_state(model, delta, &slice, merged, &schema)
        }
        Some(_) => crate::models::incremental::conform_merge(model, merged, &schema),
        // A new base: every kept row the new lines leave as it was, and the merged.
        None => merged_state(model, kept, &slice, merged, &schema),
    }
}

/// Whether `slice`'s customer_id passes on the staged lines' customer_id unchanged: its
/// customers are then among those the lines touch.
async fn of_the_lines_customers(ctx: &SessionContext, slice: &DataFrame) -> bool {
    use crate::models::incremental::CUSTOMER;
    let Ok(orders) = ctx.table("orders").await else {
        return false;
    };
    let Some(lines) = crate::models::keys::plan_location(orders.logical_plan()) else {
        return false;
    };
    let Some(position) = slice
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == CUSTOMER)
    else {
        return false;
    };
    crate::models::keys::column_sources(slice)
        .get(position)
        .cloned()
        .flatten()
        .is_some_and(|(table, column)| table == lines && column == CUSTOMER)
}

/// Executes a planned model into staging and registers the staged table for the models
/// downstream (over the kept base when it is a delta of kept state: then [`Layered`]).
///
/// When hash joins run out of memory, the model is rerun on sort-merge joins if it ran
/// alone; if other models ran `beside` it, it fails as out of memory instead, for the
/// scheduler to rerun it alone first (sort-merge joins beside the same models mostly ran
/// out of memory again, and the attempt took the cores the other models needed).
pub(crate) async fn compute_model(
    ctx: &SessionContext,
    model: &Model,
    params: &BTreeMap<String, ScalarValue>,
    df: DataFrame,
    staging: &Staging,
    state: StateRun<'_>,
    beside: &AtomicBool,
) -> std::result::Result<(StagedTable, SchemaRef, Option<Layered>), Failed> {
    let failed = |error: Error| Failed {
        error,
        out_of_memory: false,
    };
    let planned = df.schema().as_arrow().clone();
    check_partition_by(model, &Arc::new(planned.clone())).map_err(failed)?;
    let into_state = state.keep && model.incremental();
    let stage = |df: DataFrame| async move {
        match into_state {
            true => staging.write_state(df, &model.name).await,
            false => {
                staging
                    .write_table(
                        df,
                        &model.name,
                        model.header.publish,
                        &model.header.partition_by,
                    )
                    .await
            }
        }
    };
    // A merge is planned from the kept state, not from the model's query alone.
    let replannable = !(model.incremental() && state.base.is_some());
    let first = if failpoint::fails("out_of_memory") {
        Err(StageError::Engine(DataFusionError::ResourcesExhausted(
            "failpoint out_of_memory".into(),
        )))
    } else {
        stage(df).await
    };
    let staged = match first {
        Err(StageError::Engine(e))
            if replannable
                && !beside.load(Ordering::Relaxed)
                && out_of_memory_in_hash_join(ctx, &e) =>
        {
            // Hash joins are fast but keep their build side in memory; sort-merge joins
            // spill. Rerun the model with them, from a clean staging directory.
            warn!(model = %model.name, error = %redact(&e.strip_backtrace()),
                "model ran out of memory with hash joins; rerunning it with sort-merge joins, which spill");
            staging
                .out
                .delete_prefix(&state.staged_rel(staging, model))
                .await
                .map_err(failed)?;
            let mut state = ctx.state();
            state.config_mut().options_mut().optimizer.prefer_hash_join = false;
            let df = plan_model_with(state, model, params)
                .await
                .map_err(failed)?;
            stage(df).await
        }
        other => other,
    };
    let staged = staged.map_err(|e| Failed {
        out_of_memory: matches!(&e, StageError::Engine(e) if out_of_memory(e)),
        error: stage_error(model, e),
    })?;
    let (table, schema) = open_staged(ctx, &staged, &staging.out.loc, &planned)
        .await
        .map_err(|e| failed(model_error(model, e)))?;
    // An incremental run that wrote a delta: models downstream read it over the shared base.
    let shared = match (into_state, state.base) {
        (true, Some((output, base))) => {
            crate::publish::state::shared_base(Some(base), &model.name).map(|t| (output, t))
        }
        _ => None,
    };
    let mut layered = None;
    let table = match shared {
        Some((output, kept)) => {
            // The model's checks query the delta (see `checks::delta_table`).
            ctx.register_table(
                crate::models::checks::delta_table(&model.name),
                table.clone(),
            )
            .map_err(|e| failed(model_error(model, e)))?;
            let over_base = async {
                let raw = output.open_files(ctx, &kept.files, kept.buckets).await?;
                let base = crate::publish::stage::conform(raw.clone(), &schema, &[])?;
                layered = Some(Layered {
                    base: crate::models::keys::plan_location(base.logical_plan()),
                });
                let delta = ctx.read_table(table)?;
                let replaced_by = crate::models::incremental::replaced_by(model);
                let table = crate::publish::state::LayeredTable::new(base, delta, replaced_by)?;
                match state.touched {
                    Some(touched)
                        if replaced_by
                            .iter()
                            .any(|c| c == crate::models::incremental::CUSTOMER) =>
                    {
                        let rows = touched.rows(ctx, &model.name, raw).await?;
                        let rows = crate::publish::stage::conform(rows, &schema, &[])?;
                        Ok(table.with_touched(crate::models::incremental::CUSTOMER, rows))
                    }
                    _ => Ok::<_, DataFusionError>(table),
                }
            };
            Arc::new(over_base.await.map_err(|e| failed(model_error(model, e)))?)
        }
        None => table,
    };
    ctx.register_table(model.name.as_str(), table)
        .map_err(|e| failed(model_error(model, e)))?;
    Ok((staged, schema, layered))
}

/// True when the memory pool refused an allocation while the session prefers hash joins,
/// whose build sides cannot spill (a sort-merge plan may fit where they did not).
pub(crate) fn out_of_memory_in_hash_join(ctx: &SessionContext, e: &DataFusionError) -> bool {
    ctx.state().config().options().optimizer.prefer_hash_join && out_of_memory(e)
}

/// True when the memory pool refused an allocation.
pub(crate) fn out_of_memory(e: &DataFusionError) -> bool {
    matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
}

/// A staging failure as a model error naming the file.
pub(crate) fn stage_error(model: &Model, e: StageError) -> Error {
    match e {
        StageError::Engine(e) => {
            let mut err = model_error(model, e);
            if let Error::Model { message, .. } = &mut err {
                *message = redact(&format!("cannot write table: {message}"));
            }
            err
        }
        StageError::PartitionValue { column, value } => Error::Model {
            file: model.file.clone(),
            model: model.name.clone(),
            message: format!(
                "partition column `{column}` has the value `{value}`, which contains `=` and cannot be a hive partition value"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(reads: &[(&str, &str)]) -> Vec<Model> {
        let models = reads
            .iter()
            .map(|(name, sql)| {
                crate::models::parse_model(name, &format!("{name}.sql"), sql.to_string()).unwrap()
            })
            .collect();
        crate::models::order_models(models).unwrap()
    }

    fn names(models: &[Model], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| models[i].name.clone()).collect()
    }

    #[test]
    fn the_model_heading_the_longest_chain_of_work_starts_first() {
        // `facts` leads to `score` and `summary`; `side` and `lone` are read by nothing.
        let models = models(&[
            ("facts", "select 1 as x"),
            ("lone", "select 1 as x"),
            ("score", "select x from facts"),
            ("side", "select x from facts"),
            (
                "summary",
                "select s.x from score s join previous.summary p on p.x = s.x",
            ),
        ]);
        // Unknown durations: the longest chain by models.
        let order = start_order(&models, |_| None);
        assert_eq!(
            names(&models, &order),
            ["facts", "score", "lone", "side", "summary"]
        );
        // Durations of the snapshot before: `side` took longer than `score` and `summary`
        // together, so it heads the longest chain below `facts`.
        let took = |name: &str| match name {
            "facts" => Some(100),
            "side" => Some(50),
            "score" => Some(20),
            "summary" => Some(10),
            _ => None,
        };
        let order = start_order(&models, took);
        assert_eq!(
            names(&models, &order),
            ["facts", "side", "score", "summary", "lone"]
        );
    }
}
