//! From a source to the canonical columns: the `[input.*.columns]` mapping, the casts and
//! time zone of the day, and synthetic order ids when a source has none.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{cast, col, lit, Expr, ExprFunctionExt, SortExpr};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::canonical::{canonical_columns, ts_type};
use crate::config::{InputSpec, Settings};
use crate::error::{Error, Result};

use super::*;

/// Selects and casts the canonical columns; a missing or ill-typed source column is an
/// error naming both the source and the canonical column.
///
/// The casts segflow adds (`segflow_integer_text`, `segflow_utc_timestamp`,
/// `segflow_local_date`) are the session's registered functions, taken by name.
pub(super) fn map_columns(
    ctx: &SessionContext,
    raw: DataFrame,
    spec: &InputSpec,
    settings: &Settings,
) -> Result<(DataFrame, BTreeSet<&'static str>)> {
    let function = |name: &str| {
        ctx.udf(name)
            .map_err(|e| Error::engine(format!("function {name}"), e))
    };
    let schema = raw.schema().clone();
    let available: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut exprs: Vec<Expr> = Vec::new();
    let mut present = BTreeSet::new();
    let mut order_date: Option<Expr> = None;
    for (canonical, target, required) in canonical_columns(&spec.name) {
        let mapped = spec.columns.get(canonical);
        let source = mapped.map(String::as_str).unwrap_or(canonical);
        let field = schema.fields().iter().find(|f| f.name() == source);
        let Some(field) = field else {
            if let Some(m) = mapped {
                return Err(input_err(
                    spec,
                    format!(
                        "source column `{m}` (mapped to canonical column `{canonical}`) does not exist; available columns: {}",
                        available.join(", ")
                    ),
                ));
            }
            if required {
                return Err(input_err(
                    spec,
                    format!(
                        "required column `{canonical}` not found; map it with [input.{}.columns] {canonical} = \"<source column>\" (available columns: {})",
                        spec.name,
                        available.join(", ")
                    ),
                ));
            }
            let default = if canonical == "quantity" {
                lit(ScalarValue::Int64(Some(1)))
            } else {
                lit(ScalarValue::try_from(&target).map_err(|e| Error::engine("typed null", e))?)
            };
            exprs.push(default.alias(canonical));
            continue;
        };
        present.insert(canonical);
        let source_type = field.data_type().clone();
        check_castable(spec, canonical, source, &source_type, &target)?;
        let column = Expr::Column(Column::new_unqualified(source));
        let expr = match (&target, &source_type) {
            // A date is a local calendar day: its midnight in the configured time zone.
            (DataType::Timestamp(..), DataType::Date32 | DataType::Date64) => {
                match settings.timezone {
                    Some(tz) => cast(
                        cast(
                            cast(column, DataType::Timestamp(TimeUnit::Microsecond, None)),
                            DataType::Timestamp(TimeUnit::Microsecond, Some(tz.name().into())),
                        ),
                        ts_type(),
                    ),
                    None => cast(column, ts_type()),
                }
            }
            // Strings stay views: the staged table is read back as views anyway, and the
            // cast copied every string of every line.
            (DataType::Utf8, DataType::Utf8View) => column,
            (DataType::Utf8, from) if from.is_integer() => {
                function("segflow_integer_text")?.call(vec![column])
            }
            (DataType::Timestamp(..), DataType::Timestamp(..)) => {
                function("segflow_utc_timestamp")?.call(vec![column])
            }
            (DataType::Timestamp(..), _) => cast(column, ts_type()),
            (DataType::Date32, DataType::Timestamp(..)) => {
                cast(cast(column, ts_type()), DataType::Date32)
            }
            _ => cast(column, target.clone()),
        };
        // Pseudonymised here, before anything is staged, gated or rejected.
        let expr = match (&settings.privacy.pseudonym, canonical) {
            (Some(key), "customer_id") => crate::privacy::pseudonymised(key, expr),
            _ => expr,
        };
        if spec.name == "orders" && canonical == "order_ts" {
            // A date source is already the local calendar day.
            order_date = Some(match source_type {
                DataType::Date32 | DataType::Date64 => cast(
                    Expr::Column(Column::new_unqualified(source)),
                    DataType::Date32,
                ),
                _ => {
                    let zone = ScalarValue::Utf8(settings.timezone.map(|tz| tz.name().into()));
                    function("segflow_local_date")?.call(vec![expr.clone(), lit(zone)])
                }
            });
        }
        exprs.push(expr.alias(canonical));
    }
    if let Some(order_date) = order_date {
        exprs.insert(3, order_date.alias("order_date"));
    }
    if available.iter().any(|c| c == NEW_FILE) {
        exprs.push(Expr::Column(Column::new_unqualified(NEW_FILE)));
    }
    let mut df = raw
        .select(exprs)
        .map_err(|e| input_err(spec, format!("cannot map columns: {e}")))?;
    let erased = settings.privacy.erased.as_ref().filter(|e| !e.is_empty());
    if let Some(erased) = erased.filter(|_| present.contains("customer_id")) {
        // Erased customers (`segflow forget`) are left out before anything is staged,
        // gated or rejected, though the source may still hold them.
        df = crate::privacy::without_erased(erased, df)
            .map_err(|e| input_err(spec, format!("cannot leave out erased customers: {e}")))?;
    }
    Ok((df, present))
}

pub(super) fn check_castable(
    spec: &InputSpec,
    canonical: &str,
    source: &str,
    from: &DataType,
    to: &DataType,
) -> Result<()> {
    let base = match from {
        DataType::Dictionary(_, v) => v.as_ref(),
        other => other,
    };
    let ok = match to {
        DataType::Utf8 => {
            base.is_integer()
                || matches!(
                    base,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
        DataType::Float64 | DataType::Int64 => base.is_numeric(),
        DataType::Timestamp(..) | DataType::Date32 => {
            matches!(
                base,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            )
        }
        DataType::Boolean => matches!(base, DataType::Boolean) || base.is_integer(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(input_err(
            spec,
            format!(
                "source column `{source}` (canonical `{canonical}`) has type {from}, which cannot be used as {to}"
            ),
        ))
    }
}

/// Every source row is its own order: number each customer's rows by all their values
/// (time first), so identical rows (real duplicate orders) get distinct ids, the ids do not
/// depend on scan order, earlier orders keep their ids as history grows, and the numbering
/// runs in parallel per customer. Ids look like `<customer_id>#000000001`.
pub(super) fn synthetic_order_ids(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    let sort: Vec<SortExpr> = [
        "order_ts",
        "revenue",
        "quantity",
        "cost",
        "product_id",
        "category",
        "channel",
        "country",
        "region",
        "device",
        "status",
    ]
    .iter()
    .map(|c| col(*c).sort(true, true))
    .collect();
    let rn = row_number()
        .partition_by(vec![col("customer_id")])
        .order_by(sort)
        .build()?
        .alias("_row");
    let df = df.window(vec![rn])?;
    let cols: Vec<Expr> = orders_schema()
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "order_id" {
                datafusion::functions::string::expr_fn::concat(vec![
                    col("customer_id"),
                    lit("#"),
                    datafusion::functions::unicode::expr_fn::lpad(vec![
                        cast(col("_row"), DataType::Utf8),
                        lit(9i64),
                        lit("0"),
                    ]),
                ])
                .alias("order_id")
            } else {
                col(f.name())
            }
        })
        .collect();
    df.select(cols)
}
