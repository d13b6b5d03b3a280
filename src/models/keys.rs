//! Unique keys of a model's result, read off its logical plan, so that a `unique` check
//! that holds by construction is not queried.
//!
//! DataFusion's functional dependencies give a GROUP BY's keys but drop every key at a
//! join. [`plan_keys`] also follows keys through the joins of the built-in library: an
//! inner or left join whose other side is unique on its join columns (at most one match per
//! row) keeps this side's keys, and a join with a relation of at most one row (an aggregate
//! without GROUP BY, a FROM-less SELECT) keeps them too. Tables upstream (staged models)
//! bring the keys already known for them. A kept state table read over its base (the base
//! without the rows whose replacing columns the delta holds, and the delta: see
//! [`crate::publish::state::layered`]) has a key of both layers that includes the
//! replacing columns.
//!
//! Keys count rows whose key columns are all non-NULL, as the `unique` check does, so an
//! outer join's NULL-extended rows never break one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::{DFSchema, NullEquality};
use datafusion::datasource::listing::{ListingTable, ListingTableUrl};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan, Operator, TableScan};
use datafusion::prelude::DataFrame;

/// A set of output column positions that is unique; empty: at most one row.
type Key = BTreeSet<usize>;

/// Column sets (by name) unique in `df`'s result: from DataFusion's functional dependencies
/// and from [`plan_keys`], with `known` the keys of the tables it may read, by their
/// [`location_key`] (a table is known by where it was written, not by a name an alias or a
/// CTE could take).
pub fn unique_keys(
    df: &DataFrame,
    known: &HashMap<String, Vec<BTreeSet<String>>>,
) -> Vec<BTreeSet<String>> {
    let schema = df.schema();
    let name = |i: usize| schema.field(i).name().clone();
    let mut keys: Vec<BTreeSet<String>> = schema
        .functional_dependencies()
        .iter()
        .filter(|d| d.mode == datafusion::common::Dependency::Single)
        .filter(|d| !d.source_indices.is_empty())
        .filter(|d| d.source_indices.iter().all(|&i| i < schema.fields().len()))
        .map(|d| d.source_indices.iter().map(|&i| name(i)).collect())
        .collect();
    for key in plan_keys(df.logical_plan(), known) {
        let key: BTreeSet<String> = key.into_iter().map(name).collect();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// The key of `known` for the table directory `url`.
pub fn location_key(url: &str) -> Option<String> {
    ListingTableUrl::parse(url)
        .ok()
        .map(|u| u.as_str().to_string())
}

/// Where the table `plan` reads is read from, when it reads one Parquet listing table and
/// passes on its rows as they are (renaming or converting columns).
pub fn plan_location(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(scan) => scan_location(scan),
        LogicalPlan::Projection(p) => plan_location(&p.input),
        LogicalPlan::SubqueryAlias(a) => plan_location(&a.input),
        _ => None,
    }
}

/// Where a scan reads, when it reads one Parquet listing table (a bucketed internal table
/// reads its files through one): its directory, or its files, one per line.
fn scan_location(scan: &TableScan) -> Option<String> {
    let provider = source_as_provider(&scan.source).ok()?;
    let provider = match provider.downcast_ref::<crate::ext::buckets::BucketedTable>() {
        Some(bucketed) => Arc::clone(&bucketed.inner),
        None => provider,
    };
    let listing = provider.downcast_ref::<ListingTable>()?;
    match listing.table_paths().as_slice() {
        [] => None,
        [one] => Some(one.as_str().to_string()),
        many => Some(
            many.iter()
                .map(ListingTableUrl::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    }
}

/// Keys of `plan`'s output (positions in its schema); conservative: a node it does not
/// know has none.
fn plan_keys(plan: &LogicalPlan, known: &HashMap<String, Vec<BTreeSet<String>>>) -> Vec<Key> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let Some(keys) = scan_location(scan).and_then(|l| known.get(&l)) else {
                return Vec::new();
            };
            let fields = scan.projected_schema.fields();
            let position = |c: &String| fields.iter().position(|f| f.name() == c);
            keys.iter()
                .filter_map(|k| k.iter().map(position).collect::<Option<Key>>())
                .collect()
        }
        LogicalPlan::EmptyRelation(e) if e.produce_one_row => vec![Key::new()],
        // Same columns in the same positions.
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::SubqueryAlias(_)
        // Window expressions are appended after the input's columns.
        | LogicalPlan::Window(_) => plan
            .inputs()
            .first()
            .map(|input| plan_keys(input, known))
            .unwrap_or_default(),
        LogicalPlan::Union(u) => match u.inputs.as_slice() {
            [first, second] => match replacing_columns(first, second) {
                Some(replacing) => {
                    let second = plan_keys(second, known);
                    let mut keys: Vec<Key> = Vec::new();
                    for a in plan_keys(first, known) {
                        for b in &second {
                            let key: Key = a.iter().chain(b).chain(&replacing).copied().collect();
                            if !keys.contains(&key) {
                                keys.push(key);
                            }
                        }
                    }
                    keys
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        },
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let mut keys = plan_keys(input, known);
            keys.push((0..input.schema().fields().len()).collect());
            keys
        }
        LogicalPlan::Projection(p) => {
            map_keys(plan_keys(&p.input, known), &moved(&p.expr, p.input.schema()))
        }
        LogicalPlan::Aggregate(a) => {
            if a.group_expr.is_empty() {
                return vec![Key::new()];
            }
            if a.group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
            {
                return Vec::new();
            }
            // The group columns come first in the output, in GROUP BY order.
            let mut keys = vec![(0..a.group_expr.len()).collect::<Key>()];
            let moved = moved(&a.group_expr, a.input.schema());
            for key in map_keys(plan_keys(&a.input, known), &moved) {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            keys
        }
        LogicalPlan::Join(j) => {
            let (left, right) = (plan_keys(&j.left, known), plan_keys(&j.right, known));
            let null_safe = j.null_equality == NullEquality::NullEqualsNothing;
            // The equi-join columns of each side: from `on`, and from the ON clause's
            // `a = b` conjuncts (the unoptimized plan keeps them in `filter`).
            let mut pairs: Vec<(Option<usize>, Option<usize>)> = j
                .on
                .iter()
                .map(|(l, r)| {
                    (
                        column_position(l, j.left.schema()),
                        column_position(r, j.right.schema()),
                    )
                })
                .collect();
            if let Some(filter) = &j.filter {
                for conjunct in split_conjunction(filter) {
                    let Expr::BinaryExpr(b) = conjunct else { continue };
                    if b.op != Operator::Eq {
                        continue;
                    }
                    let at = |e: &Expr| {
                        (column_position(e, j.left.schema()), column_position(e, j.right.schema()))
                    };
                    match (at(&b.left), at(&b.right)) {
                        ((Some(l), None), (None, Some(r))) | ((None, Some(r)), (Some(l), None)) => {
                            pairs.push((Some(l), Some(r)))
                        }
                        _ => {}
                    }
                }
            }
            let side_columns = |take_left: bool| -> BTreeSet<usize> {
                pairs
                    .iter()
                    .filter_map(|(l, r)| if take_left { *l } else { *r })
                    .collect()
            };
            // At most one match per row of the other side.
            let unique_on = |keys: &[Key], take_left: bool| {
                let cols = side_columns(take_left);
                null_safe && keys.iter().any(|k| k.is_subset(&cols))
            };
            let shift = j.left.schema().fields().len();
            let right_shifted =
                || right.iter().map(|k| k.iter().map(|i| i + shift).collect()).collect::<Vec<Key>>();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left,
                JoinType::RightSemi | JoinType::RightAnti => right,
                JoinType::Inner => {
                    let mut keys = Vec::new();
                    if unique_on(&right, false) {
                        keys.extend(left.iter().cloned());
                    }
                    if unique_on(&left, true) {
                        keys.extend(right_shifted());
                    }
                    keys
                }
                JoinType::Left if unique_on(&right, false) => left,
                JoinType::Right if unique_on(&left, true) => right_shifted(),
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// When `first` is the rows of a table without those whose columns at some positions
/// `second` holds (an anti join with `second`'s columns at the same positions), those
/// positions: no row of `first` has the values of a row of `second` there, so a union of
/// the two is unique on any columns that include them and a key of each.
fn replacing_columns(first: &LogicalPlan, second: &LogicalPlan) -> Option<Key> {
    let LogicalPlan::Join(j) = first else {
        return None;
    };
    let LogicalPlan::Projection(p) = j.right.as_ref() else {
        return None;
    };
    if j.join_type != JoinType::LeftAnti || j.filter.is_some() || j.on.is_empty() {
        return None;
    }
    if p.input.as_ref() != second
        || j.left.schema().fields().len() != second.schema().fields().len()
    {
        return None;
    }
    j.on.iter()
        .map(|(l, r)| {
            let left = column_position(l, j.left.schema())?;
            let right = column_position(r, j.right.schema())?;
            let from = column_position(p.expr.get(right)?, second.schema())?;
            (left == from).then_some(left)
        })
        .collect()
}

/// For each column of `df`'s result, the table column (by the table's [`location_key`], and
/// the column's name) whose values it passes on unchanged, where the plan shows one: each
/// of its values is then one of that column's, or NULL (a join's side that found no match).
/// A `relationships` check from such a column to that table's column holds by construction.
pub fn column_sources(df: &DataFrame) -> Vec<Option<(String, String)>> {
    plan_sources(df.logical_plan())
}

fn plan_sources(plan: &LogicalPlan) -> Vec<Option<(String, String)>> {
    let none = || vec![None; plan.schema().fields().len()];
    let pass = |input: &LogicalPlan, exprs: &[Expr]| {
        let sources = plan_sources(input);
        exprs
            .iter()
            .map(|e| {
                column_position(e, input.schema()).and_then(|i| sources.get(i).cloned().flatten())
            })
            .collect::<Vec<_>>()
    };
    match plan {
        LogicalPlan::TableScan(scan) => match scan_location(scan) {
            Some(location) => scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| Some((location.clone(), f.name().clone())))
                .collect(),
            None => none(),
        },
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(Distinct::All(_))
        | LogicalPlan::Window(_) => {
            let Some(input) = plan.inputs().first().copied() else {
                return none();
            };
            let mut sources = plan_sources(input);
            sources.resize(plan.schema().fields().len(), None);
            sources
        }
        LogicalPlan::Projection(p) => pass(&p.input, &p.expr),
        LogicalPlan::Aggregate(a)
            if !a
                .group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_))) =>
        {
            let mut sources = pass(&a.input, &a.group_expr);
            sources.resize(plan.schema().fields().len(), None);
            sources
        }
        LogicalPlan::Join(j) => {
            let (left, right) = (plan_sources(&j.left), plan_sources(&j.right));
            let mut sources = match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => right,
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    left.into_iter().chain(right).collect()
                }
            };
            sources.resize(plan.schema().fields().len(), None);
            sources
        }
        _ => none(),
    }
}

/// The position in `schema` of the column `e` is (behind any alias), if it is one.
fn column_position(e: &Expr, schema: &DFSchema) -> Option<usize> {
    let mut e = e;
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    match e {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        _ => None,
    }
}

/// For each input column that one of `exprs` passes on unchanged, the position of the first
/// such expression (the output column it becomes).
fn moved(exprs: &[Expr], input: &DFSchema) -> HashMap<usize, usize> {
    let mut moved = HashMap::new();
    for (out, e) in exprs.iter().enumerate() {
        if let Some(i) = column_position(e, input) {
            moved.entry(i).or_insert(out);
        }
    }
    moved
}

/// The keys whose every column `moved` maps, mapped.
fn map_keys(keys: Vec<Key>, moved: &HashMap<usize, usize>) -> Vec<Key> {
    keys.into_iter()
        .filter_map(|k| k.iter().map(|i| moved.get(i).copied()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use std::sync::Arc;

    /// A session with `t(k, v)` and `u(k, v)` (in memory, neither unique) and `g(k, v)`, a
    /// Parquet table (in the returned folder, at the returned location) unique on `k`.
    async fn tables() -> (SessionContext, tempfile::TempDir, String) {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        ctx.register_batch("t", batch.clone()).unwrap();
        ctx.register_batch("u", batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let g = format!("{}/", dir.path().display());
        ctx.sql("select k, v from t where v > 1")
            .await
            .unwrap()
            .write_parquet(&g, DataFrameWriteOptions::new(), None)
            .await
            .unwrap();
        ctx.register_parquet("g", &g, ParquetReadOptions::default())
            .await
            .unwrap();
        (ctx, dir, g)
    }

    /// The keys of `sql` over [`tables`], with `g` known to be unique on `k`.
    async fn keys(sql: &str) -> Vec<Vec<String>> {
        let (ctx, _dir, g) = tables().await;
        // `bg`: the same files as a bucketed internal table.
        let inner = ctx.table_provider("g").await.unwrap();
        let buckets = crate::ext::buckets::Buckets {
            count: 1,
            hashed: DataType::Utf8,
        };
        ctx.register_table(
            "bg",
            Arc::new(crate::ext::buckets::BucketedTable { inner, buckets }),
        )
        .unwrap();
        // Kept state read over its base by k: `lg`, g's rows with a delta unique on k over
        // them; `lu`, u's (not unique) with the same delta; `lv`, g's with the delta over
        // them by v.
        let delta = || async {
            ctx.sql("select k, max(v) v from t group by k")
                .await
                .unwrap()
        };
        let by = |c: &str| vec![c.to_string()];
        for (name, base, by) in [
            ("lg", "g", by("k")),
            ("lu", "u", by("k")),
            ("lv", "g", by("v")),
        ] {
            let base = ctx.table(base).await.unwrap();
            let layered = crate::publish::state::layered(base, delta().await, &by).unwrap();
            ctx.register_table(name, layered.into_view()).unwrap();
        }
        let known = HashMap::from([(
            location_key(&g).unwrap(),
            vec![BTreeSet::from(["k".to_string()])],
        )]);
        let df = ctx.sql(sql).await.unwrap();
        let mut keys: Vec<Vec<String>> = unique_keys(&df, &known)
            .into_iter()
            .map(|k| k.into_iter().collect())
            .collect();
        keys.sort();
        keys
    }

    /// The table column each column of `sql` over [`tables`] passes on: `g.k`, `g.v` or
    /// nothing (`-`).
    async fn sources(sql: &str) -> Vec<String> {
        let (ctx, _dir, g) = tables().await;
        let at = location_key(&g).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        column_sources(&df)
            .into_iter()
            .map(|s| match s {
                Some((l, c)) if l == at => format!("g.{c}"),
                Some((l, c)) => format!("{l}.{c}"),
                None => "-".to_string(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_column_passed_on_unchanged_through_projections_joins_and_groups_keeps_its_source() {
        assert_eq!(sources("select v, k as c from g").await, ["g.v", "g.k"]);
        assert_eq!(
            sources("select x.k, x.v + 1 as w, t.v from g x right join t on t.k = x.k").await,
            ["g.k", "-", "-"]
        );
        assert_eq!(
            sources(
                "with c as (select k, count(*) n from g where v > 0 group by k) \
                 select c.k, c.n, s.m from (select max(v) m from t) s cross join c"
            )
            .await,
            ["g.k", "-", "-"]
        );
        assert_eq!(
            sources("select k, rank() over (order by v) r from g order by r limit 5").await,
            ["g.k", "-"]
        );
        // Converted, computed or rolled up: not the table's values.
        assert_eq!(
            sources("select upper(k) k, cast(v as double) v from g").await,
            ["-", "-"]
        );
        assert_eq!(
            sources("select k, sum(v) from g group by rollup(k)").await,
            ["-", "-"]
        );
        assert_eq!(
            sources("select k from g union all select k from t").await,
            ["-"]
        );
        assert_eq!(
            sources("select k from g where exists (select 1 from t where t.k = g.k)").await,
            ["g.k"]
        );
    }

    fn k(sets: &[&[&str]]) -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = sets
            .iter()
            .map(|s| s.iter().map(|c| c.to_string()).collect())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn group_by_keys_are_unique_unions_joins_rollups_and_functions_of_keys_are_not() {
        assert_eq!(
            keys("select k, sum(v) s from t group by k").await,
            k(&[&["k"]])
        );
        assert_eq!(
            keys("select k as c, count(*) n from t group by k").await,
            k(&[&["c"]])
        );
        assert_eq!(
            keys("select k, v from t group by k, v").await,
            k(&[&["k", "v"]])
        );
        assert_eq!(
            keys(
                "select k, n from (select k, count(*) n from t group by k) where n > 1 order by n"
            )
            .await,
            k(&[&["k"]])
        );
        assert_eq!(keys("select k, v from t").await, k(&[]));
        assert_eq!(
            keys("select k from t group by k union all select k from u group by k").await,
            k(&[])
        );
        assert_eq!(
            keys("select a.k from (select k from t group by k) a join u on a.k = u.k").await,
            k(&[])
        );
        assert_eq!(
            keys("select k, sum(v) from t group by rollup(k)").await,
            k(&[])
        );
        assert_eq!(
            keys("select upper(k) as k from (select k from t group by k)").await,
            k(&[])
        );
    }

    #[tokio::test]
    async fn a_join_keeps_a_sides_keys_when_the_other_side_matches_at_most_once() {
        let by_k = "(select k, sum(v) s from t group by k)";
        // Both sides unique on the join column: either side's key is one.
        assert_eq!(
            keys(&format!(
                "select a.k, b.s from {by_k} a join {by_k} b on b.k = a.k"
            ))
            .await,
            k(&[&["k"]])
        );
        // The other side is a table known to be unique on k.
        assert_eq!(
            keys(&format!(
                "select a.k, g.v from {by_k} a left join g on g.k = a.k"
            ))
            .await,
            k(&[&["k"]])
        );
        // A one-row relation (an aggregate without GROUP BY, a FROM-less SELECT).
        assert_eq!(
            keys(&format!(
                "select a.k, n.c, x.one from {by_k} a cross join (select count(*) c from u) n \
                 cross join (select 1 as one) x"
            ))
            .await,
            k(&[&["k"]])
        );
        // The window columns come after the input's.
        assert_eq!(
            keys(&format!("select k, rank() over (order by s) r from {by_k}")).await,
            k(&[&["k"]])
        );
        // A side that may match many rows, or the unique side of a full join: no key.
        assert_eq!(
            keys(&format!("select a.k from {by_k} a join t on t.k = a.k")).await,
            k(&[])
        );
        assert_eq!(
            keys(&format!(
                "select a.k from {by_k} a full join g on g.k = a.k"
            ))
            .await,
            k(&[])
        );
        // Unique on the join columns is not unique on fewer of them.
        assert_eq!(
            keys("select a.k, a.v from (select k, v from t group by k, v) a join g on g.k = a.k and g.v = a.v")
                .await,
            k(&[&["k", "v"]])
        );
        assert_eq!(
            keys(&format!(
                "select a.k from {by_k} a join (select k, v from t group by k, v) b on b.k = a.k"
            ))
            .await,
            k(&[])
        );
        // A table is known by where it is, not by its name.
        assert_eq!(keys("select k from t g").await, k(&[]));
        assert_eq!(
            keys("with g as (select k from t) select k from g").await,
            k(&[])
        );
        assert_eq!(keys("select k from g").await, k(&[&["k"]]));
        // Also when its files are read as a bucketed internal table.
        assert_eq!(keys("select k, v from bg").await, k(&[&["k"]]));
        // Kept state read over its base: a key of both layers that includes the columns
        // by which the delta's rows replace the base's.
        assert_eq!(keys("select v, k as c from lg").await, k(&[&["c"]]));
        assert_eq!(
            keys("select x.k, g.v from lg x left join g on g.k = x.k").await,
            k(&[&["k"]])
        );
        assert_eq!(keys("select k from lu").await, k(&[]));
        assert_eq!(keys("select k, v from lv").await, k(&[&["k", "v"]]));
        assert_eq!(
            keys("select k from g union all select k from g").await,
            k(&[])
        );
        // Rows kept by a semi join keep their keys.
        assert_eq!(
            keys(&format!(
                "select k from {by_k} a where exists (select 1 from t where t.k = a.k)"
            ))
            .await,
            k(&[&["k"]])
        );
    }
}
