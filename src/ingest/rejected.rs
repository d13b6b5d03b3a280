//! The lines the gates leave out: repeated lines found by their fingerprints, the rows a
//! `drop` gate caught, staged under `_rejected`.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemTable;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{col, lit, Expr, ExprFunctionExt, ScalarUDF};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::ingest::fingerprints::{Repeated, COLUMNS as FINGERPRINT};
use crate::ingest::gates::{GateReason, GateRules, GateTally, LineHash};

use super::*;

/// The rows the gates left out, to stage under `_rejected` (the rows a `drop` gate caught,
/// and the extra copies of repeated lines when `duplicate_lines` drops), if there are any.
pub(super) async fn rejected_plan(
    ctx: &SessionContext,
    mapped: &DataFrame,
    present: &BTreeSet<&'static str>,
    rules: &GateRules,
    rejected_lines: u64,
    drop_duplicates: Option<&Duplicates>,
) -> datafusion::error::Result<Option<DataFrame>> {
    let mut rows = match rejected_lines {
        0 => None,
        _ => Some(rejected_rows(mapped.clone(), present, rules)?),
    };
    if let Some(d) = drop_duplicates {
        let copies = d.extra_copies(ctx, mapped.clone(), present, rules).await?;
        rows = Some(match rows {
            Some(r) => r.union(copies)?,
            None => copies,
        });
    }
    Ok(rows)
}

/// The line fingerprint (two 64-bit hashes of every mapped column, `_line_a`, `_line_b`).
pub(super) fn line_fingerprint(present: &BTreeSet<&'static str>) -> Vec<Expr> {
    let hash = |seed: i64, name: &str| {
        let mut args = vec![lit(seed)];
        args.extend(present.iter().map(|c| col(*c)));
        ScalarUDF::new_from_impl(LineHash).call(args).alias(name)
    };
    let [a, b] = FINGERPRINT;
    vec![hash(0x5e9f, a), hash(0x10e5, b)]
}

/// Lines identical in every mapped column (equal fingerprints) among the staged orders.
pub(super) struct Duplicates {
    /// Copies beyond the first of each duplicated line.
    pub(crate) extra: u64,
    /// Duplicated lines (groups of identical copies).
    pub(crate) groups: u64,
    /// The fingerprints of the duplicated lines.
    pub(crate) keys: Vec<datafusion::arrow::array::RecordBatch>,
}

impl Duplicates {
    /// From the fingerprints the staging pass saw more than once.
    pub(crate) fn new(repeated: Repeated) -> datafusion::error::Result<Duplicates> {
        use datafusion::arrow::array::{Int64Array, RecordBatch};
        let extra = repeated.iter().map(|(_, _, n)| n - 1).sum();
        let groups = repeated.len() as u64;
        let schema = Arc::new(Schema::new(vec![
            Field::new(FINGERPRINT[0], DataType::Int64, false),
            Field::new(FINGERPRINT[1], DataType::Int64, false),
        ]));
        let keys = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(repeated.iter().map(|f| f.0))),
                Arc::new(Int64Array::from_iter_values(repeated.iter().map(|f| f.1))),
            ],
        )?;
        Ok(Duplicates {
            extra,
            groups,
            keys: vec![keys],
        })
    }

    fn keys(&self, ctx: &SessionContext) -> datafusion::error::Result<DataFrame> {
        let schema = match self.keys.first() {
            Some(b) => b.schema(),
            None => {
                return datafusion::common::internal_err!("no duplicated lines");
            }
        };
        ctx.read_table(Arc::new(MemTable::try_new(
            schema,
            vec![self.keys.clone()],
        )?))?
        .select(vec![
            col(FINGERPRINT[0]).alias("_dup_a"),
            col(FINGERPRINT[1]).alias("_dup_b"),
        ])
    }

    /// What turns the staged orders into the orders with one copy of each duplicated
    /// line, in the `planned` columns (for [`Staging::restage`]).
    pub(crate) fn one_copy_each(
        &self,
        ctx: &SessionContext,
        planned: &Schema,
    ) -> datafusion::error::Result<impl FnOnce(DataFrame) -> datafusion::error::Result<DataFrame>>
    {
        use datafusion::common::JoinType;
        let keys = self.keys(ctx)?;
        let names: Vec<String> = planned.fields().iter().map(|f| f.name().clone()).collect();
        Ok(move |lines: DataFrame| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let on = FINGERPRINT;
            let dup = ["_dup_a", "_dup_b"];
            let single = lines
                .clone()
                .join(keys.clone(), JoinType::LeftAnti, &on, &dup, None)?
                .select_columns(&names)?;
            let mut with_keys = names.clone();
            with_keys.extend(on);
            let one_copy = lines
                .join(keys, JoinType::LeftSemi, &on, &dup, None)?
                .select_columns(&with_keys)?
                .distinct()?
                .select_columns(&names)?;
            single.union(one_copy)
        })
    }

    /// The source rows beyond the first copy of each duplicated line the run uses, in the
    /// columns of the rejected rows, gate `duplicate_lines`.
    async fn extra_copies(
        &self,
        ctx: &SessionContext,
        mapped: DataFrame,
        present: &BTreeSet<&'static str>,
        rules: &GateRules,
    ) -> datafusion::error::Result<DataFrame> {
        use datafusion::common::JoinType;
        let names: Vec<String> = mapped
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // The rows the run uses, judged again (the counts of this pass are not kept).
        let used = ScalarUDF::new_from_shared_impl(Arc::new(GateTally::new(rules.clone())))
            .call(gate_args(present, rules));
        let names: Vec<String> = names.into_iter().filter(|n| n != NEW_FILE).collect();
        let mut columns: Vec<Expr> = names.iter().map(|n| col(n.as_str())).collect();
        columns.extend(line_fingerprint(present));
        let copy = row_number()
            .partition_by(FINGERPRINT.map(col).to_vec())
            .build()?
            .alias("_copy");
        let mut out: Vec<Expr> = names.iter().map(|n| col(n.as_str())).collect();
        out.push(lit(crate::ingest::gates::DUPLICATE_LINES).alias("gate"));
        mapped
            .filter(used)?
            .select(columns)?
            .join(
                self.keys(ctx)?,
                JoinType::LeftSemi,
                &FINGERPRINT,
                &["_dup_a", "_dup_b"],
                None,
            )?
            .window(vec![copy])?
            .filter(col("_copy").gt(lit(1u64)))?
            .select(out)
    }
}

/// The source rows a `drop` policy left out, with the gate's name in column `gate`: a
/// second pass over the source, run only when some row was dropped.
pub(super) fn rejected_rows(
    mapped: DataFrame,
    present: &BTreeSet<&'static str>,
    rules: &GateRules,
) -> datafusion::error::Result<DataFrame> {
    let reason =
        ScalarUDF::new_from_impl(GateReason(rules.clone())).call(gate_args(present, rules));
    let mut columns: Vec<Expr> = mapped
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name() != NEW_FILE)
        .map(|f| col(f.name().as_str()))
        .collect();
    columns.push(reason.alias("gate"));
    mapped.select(columns)?.filter(col("gate").is_not_null())
}
