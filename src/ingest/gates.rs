//! Input gates: bad order lines caught while the staging pass streams the source.
//!
//! Every source row goes through one filter, [`GateTally`], which decides whether the models
//! see it and counts what the manifest and the gates need, so the gates cost no scan of their
//! own. Rows of a dropped status and, with an explicit as_of, rows after it are counted,
//! never gated. Each gate has a policy ([`Policy`]): `fail` fails the run (exit 1), `drop`
//! leaves the rows out and publishes them under `_rejected/as_of=D/` with the gate's name (a
//! second pass over the source, [`GateReason`], only when some row was dropped), `warn`
//! counts and logs them. Rows with a NULL or future order_ts never reach the models: they
//! have no day, or one after the snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, TimestampMicrosecondType};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::config::{Gates, InputSpec, Policy};
use crate::error::{Error, Result};
use crate::publish::manifest::GateStat;

/// A row as the line gates judge it.
pub struct Line {
    /// customer_id is NULL or empty.
    pub null_customer: bool,
    /// order_ts (UTC µs), if not NULL.
    pub ts: Option<i64>,
    /// order_ts is later than the run's clock.
    pub future: bool,
    /// revenue, if not NULL.
    pub revenue: Option<f64>,
    /// The source maps a status column and the line's status is not a return status.
    pub not_a_return: bool,
}

/// How a gate finds the lines it catches.
pub enum Catch {
    /// Judged line by line as the orders are staged.
    Line(fn(&Line) -> bool),
    /// Lines identical in every mapped column to an earlier one (by their fingerprints,
    /// collected as the orders are staged; needs a mapped order_id).
    Repeated,
}

/// The source column a canonical column is mapped from.
pub type SourceColumn<'a> = &'a dyn Fn(&str) -> String;

/// One input gate: its name in `[gates]`, messages, the manifest and `_rejected`; its
/// policy when the config sets none; which lines it catches; and what those lines have,
/// for the message (given the source column of a canonical column, and the input).
pub struct GateSpec {
    pub name: &'static str,
    pub default: Policy,
    pub catch: Catch,
    pub what: fn(SourceColumn, &InputSpec) -> String,
}

/// Every input gate, in the order a line is judged (a line caught by several is rejected
/// under the first). A new gate is one entry here, plus its tests.
pub const GATES: [GateSpec; 6] = [
    GateSpec {
        name: "null_customer_id",
        default: Policy::Fail,
        catch: Catch::Line(|l| l.null_customer),
        what: |source, _| {
            format!(
                "have a NULL or empty customer_id (source column `{}`)",
                source("customer_id")
            )
        },
    },
    GateSpec {
        name: "null_order_ts",
        default: Policy::Fail,
        catch: Catch::Line(|l| l.ts.is_none()),
        what: |source, _| {
            format!(
                "have a NULL order_ts (source column `{}`)",
                source("order_ts")
            )
        },
    },
    GateSpec {
        name: "future_order_ts",
        default: Policy::Fail,
        catch: Catch::Line(|l| l.future),
        what: |source, _| {
            format!(
                "have an order_ts (source column `{}`) later than the current time",
                source("order_ts")
            )
        },
    },
    GateSpec {
        name: "invalid_revenue",
        default: Policy::Fail,
        catch: Catch::Line(|l| l.revenue.is_none_or(|r| !r.is_finite())),
        what: |source, _| {
            format!(
                "have a NULL, NaN or infinite revenue (source column `{}`)",
                source("revenue")
            )
        },
    },
    GateSpec {
        name: "negative_revenue",
        default: Policy::Warn,
        catch: Catch::Line(|l| l.not_a_return && l.revenue.is_some_and(|r| r < 0.0)),
        what: |source, spec| {
            format!(
                "have a negative revenue (source column `{}`) and a status (source column `{}`) that is not a return status ({})",
                source("revenue"),
                source("status"),
                match spec.return_status.is_empty() {
                    true => "return_status is empty".to_string(),
                    false => spec.return_status.join(", "),
                }
            )
        },
    },
    GateSpec {
        name: DUPLICATE_LINES,
        default: Policy::Warn,
        catch: Catch::Repeated,
        what: |_, _| "repeat another line in every mapped column".to_string(),
    },
];

/// The gates judged line by line (a prefix of [`GATES`]).
const LINE_GATES: usize = 5;

/// Whether the line gate `N` of [`GATES`] catches `line`. With `N` a constant, the gate's
/// function is known at compile time and inlined: called through the table's pointers,
/// the five gates cost a third of the judging of every staged line.
#[inline(always)]
fn catches<const N: usize>(line: &Line) -> bool {
    match GATES[N].catch {
        Catch::Line(catches) => catches(line),
        Catch::Repeated => false,
    }
}

/// What each line gate says of `line`, in [`GATES`] order (a new line gate adds its index
/// here: the array's length is [`LINE_GATES`]).
#[inline(always)]
fn line_catches(line: &Line) -> [bool; LINE_GATES] {
    [
        catches::<0>(line),
        catches::<1>(line),
        catches::<2>(line),
        catches::<3>(line),
        catches::<4>(line),
    ]
}

/// The name of the gate for lines identical in every mapped column.
pub const DUPLICATE_LINES: &str = "duplicate_lines";

/// The policy of every gate of [`GATES`] under `[gates]`, in that order; an unknown gate
/// name in the config is an error naming it.
pub fn policies(gates: &Gates) -> Result<[Policy; GATES.len()]> {
    if let Some(unknown) = gates
        .policies
        .keys()
        .find(|n| !GATES.iter().any(|g| g.name == n.as_str()))
    {
        return Err(Error::ConfigValue {
            key: format!("gates.{unknown}"),
            message: format!(
                "unknown gate `{unknown}` (known gates: {}, max_input_age_days)",
                GATES.map(|g| g.name).join(", ")
            ),
        });
    }
    Ok(GATES.map(|g| gates.policies.get(g.name).copied().unwrap_or(g.default)))
}

/// The policy of the gate `name` (one of [`GATES`]).
pub fn policy(policies: &[Policy; GATES.len()], name: &str) -> Policy {
    GATES
        .iter()
        .position(|g| g.name == name)
        .map_or(Policy::Warn, |i| policies[i])
}

/// What the staging pass counted over every source row of `orders`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GateCounts {
    pub rows: u64,
    /// Lines of a `drop_status`.
    pub dropped: u64,
    /// Rows after an explicit as_of.
    pub after_as_of: u64,
    /// Rows each line gate caught (by [`GATES`] position).
    pub caught: [u64; LINE_GATES],
    /// Rows left out by a `drop` policy.
    pub rejected: u64,
    /// Rows the models see.
    pub visible: u64,
    /// Latest order date (days since the epoch) of a kept row not in the future: the
    /// default as_of.
    pub latest: Option<i32>,
    /// Latest order date of a row the models see (the freshness gate).
    pub latest_visible: Option<i32>,
}

impl GateCounts {
    fn add(&mut self, other: &GateCounts) {
        self.rows += other.rows;
        self.dropped += other.dropped;
        self.after_as_of += other.after_as_of;
        for (a, b) in self.caught.iter_mut().zip(other.caught) {
            *a += b;
        }
        self.rejected += other.rejected;
        self.visible += other.visible;
        self.latest = self.latest.max(other.latest);
        self.latest_visible = self.latest_visible.max(other.latest_visible);
    }

    /// Per line gate: rows caught and its policy (every gate, caught or not).
    pub fn stats(&self, policies: &[Policy; GATES.len()]) -> BTreeMap<String, GateStat> {
        GATES
            .iter()
            .zip(self.caught)
            .zip(policies)
            .map(|((g, rows), &policy)| (g.name.to_string(), GateStat { rows, policy }))
            .collect()
    }
}

/// How rows are judged: the run's statuses, as_of, clock and policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GateRules {
    /// Lower-cased statuses to drop.
    pub drop_status: Vec<String>,
    /// Lower-cased statuses of return lines (negative revenue is expected there).
    pub return_status: Vec<String>,
    /// Whether the source maps a status column (the negative_revenue gate needs it).
    pub status_mapped: bool,
    /// The explicit as_of (days since the epoch).
    pub as_of: Option<i32>,
    /// The wall clock at the start of the run (µs since the epoch, UTC).
    pub now_us: i64,
    /// The policy of each of [`GATES`].
    pub policies: [Policy; GATES.len()],
    /// An incremental run's slice: the state holds the lines dated up to this day (days
    /// since the epoch) of the files it lists. A line is judged (and counted) only when it
    /// is new to the state: from a new file (the sixth argument true) dated up to then or
    /// undated, or from any file dated after.
    pub slice: Option<i32>,
}

/// One batch judged: the counts, whether each row is kept, and the gate that rejected it.
struct Judged {
    counts: GateCounts,
    keep: Vec<bool>,
    /// The index in [`GATES`] of the gate that rejected each line.
    rejected_by: Vec<Option<usize>>,
}

fn udf_err(name: &str, message: String) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Internal(format!("{name}: {message}"))
}

impl GateRules {
    /// `s` lower-cased is one of `list`, without lower-casing every value: ASCII values are
    /// compared ignoring ASCII case (the same for them), others lower-cased.
    fn listed(list: &[String], s: Option<&str>) -> bool {
        let Some(s) = s else { return false };
        if s.is_ascii() {
            list.iter().any(|d| s.eq_ignore_ascii_case(d))
        } else {
            list.contains(&s.to_lowercase())
        }
    }

    /// Per row of `status`: (one of drop_status, one of return_status).
    fn status_flags(
        &self,
        status: &ArrayRef,
        rows: usize,
    ) -> datafusion::error::Result<Vec<(bool, bool)>> {
        let flags = |s: Option<&str>| {
            (
                Self::listed(&self.drop_status, s),
                Self::listed(&self.return_status, s),
            )
        };
        Ok(match status.data_type() {
            DataType::Null => vec![(false, false); rows],
            DataType::Utf8 => status.as_string::<i32>().iter().map(flags).collect(),
            DataType::LargeUtf8 => status.as_string::<i64>().iter().map(flags).collect(),
            DataType::Utf8View => status.as_string_view().iter().map(flags).collect(),
            other => return Err(udf_err("segflow_gates", format!("status is {other}"))),
        })
    }

    /// Judges one batch. Arguments: the NULL-or-empty customer flag, order_ts (UTC µs),
    /// order_date, status, revenue.
    fn judge(&self, args: &ScalarFunctionArgs) -> datafusion::error::Result<Judged> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let err = |what: &str, a: &ArrayRef| {
            udf_err("segflow_gates", format!("{what} is {}", a.data_type()))
        };
        let null_customer = arrays[0]
            .as_boolean_opt()
            .ok_or_else(|| err("customer flag", &arrays[0]))?;
        let ts = arrays[1]
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| err("order_ts", &arrays[1]))?;
        let dates = arrays[2]
            .as_primitive_opt::<Date32Type>()
            .ok_or_else(|| err("order_date", &arrays[2]))?;
        let status = self.status_flags(&arrays[3], rows)?;
        let revenue = arrays[4]
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| err("revenue", &arrays[4]))?;
        let new_file = match (self.slice, arrays.get(5)) {
            (Some(_), Some(a)) => Some(a.as_boolean_opt().ok_or_else(|| err("new-file flag", a))?),
            _ => None,
        };
        let mut counts = GateCounts::default();
        let mut keep = Vec::with_capacity(rows);
        let mut rejected_by = Vec::with_capacity(rows);
        for (i, &(dropped, returned)) in status.iter().enumerate() {
            let t = ts.is_valid(i).then(|| ts.value(i));
            let d = dates.is_valid(i).then(|| dates.value(i));
            if let (Some(through), Some(new_file)) = (self.slice, new_file) {
                let new = new_file.is_valid(i) && new_file.value(i);
                let in_slice = match new {
                    true => d.is_none_or(|d| d <= through),
                    false => d.is_some_and(|d| d > through),
                };
                if !in_slice {
                    keep.push(false);
                    rejected_by.push(None);
                    continue;
                }
            }
            counts.rows += 1;
            let future = t.is_some_and(|t| t > self.now_us);
            if !dropped && t.is_some() && !future {
                counts.latest = counts.latest.max(d);
            }
            let after = matches!((self.as_of, d), (Some(a), Some(d)) if d > a);
            if dropped || after {
                counts.dropped += u64::from(dropped);
                counts.after_as_of += u64::from(after && !dropped);
                keep.push(false);
                rejected_by.push(None);
                continue;
            }
            // A row the run uses: the gates judge it.
            let line = Line {
                null_customer: null_customer.is_valid(i) && null_customer.value(i),
                ts: t,
                future,
                revenue: revenue.is_valid(i).then(|| revenue.value(i)),
                not_a_return: self.status_mapped && !returned,
            };
            let mut rejected = None;
            for (n, caught) in line_catches(&line).into_iter().enumerate() {
                if caught {
                    counts.caught[n] += 1;
                    if rejected.is_none() && self.policies[n] == Policy::Drop {
                        rejected = Some(n);
                    }
                }
            }
            let visible = rejected.is_none() && t.is_some() && !future;
            counts.rejected += u64::from(rejected.is_some());
            counts.visible += u64::from(visible);
            if visible {
                counts.latest_visible = counts.latest_visible.max(d);
            }
            keep.push(visible);
            rejected_by.push(rejected);
        }
        Ok(Judged {
            counts,
            keep,
            rejected_by,
        })
    }
}

fn gate_signature() -> &'static Signature {
    static SIGNATURE: std::sync::OnceLock<Signature> = std::sync::OnceLock::new();
    SIGNATURE.get_or_init(|| Signature::any(6, Volatility::Volatile))
}

/// `segflow_gate_tally(null_customer, order_ts, order_date, status, revenue, new_file)`: the filter
/// of the staging pass. True for the rows the models see; each batch's counts are added to
/// the total. Volatile, so the optimizer neither folds nor moves it; a filter evaluates it
/// once per row.
#[derive(Debug)]
pub struct GateTally {
    pub rules: GateRules,
    counts: std::sync::Mutex<GateCounts>,
}

impl GateTally {
    pub fn new(rules: GateRules) -> Self {
        GateTally {
            rules,
            counts: Default::default(),
        }
    }

    pub fn counts(&self) -> GateCounts {
        *self.total()
    }

    /// The running total (a panic elsewhere cannot leave it half-updated: `add` does not
    /// fail).
    fn total(&self) -> std::sync::MutexGuard<'_, GateCounts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PartialEq for GateTally {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for GateTally {}

impl std::hash::Hash for GateTally {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self, state);
    }
}

impl ScalarUDFImpl for GateTally {
    fn name(&self) -> &str {
        "segflow_gate_tally"
    }

    fn signature(&self) -> &Signature {
        gate_signature()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let judged = self.rules.judge(&args)?;
        self.total().add(&judged.counts);
        let mut keep = BooleanBufferBuilder::new(rows);
        for k in judged.keep {
            keep.append(k);
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            keep.finish(),
            None,
        ))))
    }
}

/// `segflow_gate_reason(...)` (the arguments of [`GateTally`]): the name of the gate whose
/// `drop` policy leaves the row out, NULL for every other row. The `_rejected` pass filters
/// on it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct GateReason(pub GateRules);

impl ScalarUDFImpl for GateReason {
    fn name(&self) -> &str {
        "segflow_gate_reason"
    }

    fn signature(&self) -> &Signature {
        gate_signature()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let judged = self.0.judge(&args)?;
        let reasons: StringArray = judged
            .rejected_by
            .iter()
            .map(|g| g.map(|n| GATES[n].name))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(reasons)))
    }
}

/// `segflow_line_hash(seed, c1, c2, ...)`: a 64-bit hash of a row's values (and which of
/// them are NULL), as Int64. Two calls with different seeds give a 128-bit fingerprint: lines
/// with equal fingerprints are treated as identical in every column (the chance that two
/// different lines among 10^9 share one is below 10^-20).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LineHash;

impl ScalarUDFImpl for LineHash {
    fn name(&self) -> &str {
        "segflow_line_hash"
    }

    fn signature(&self) -> &Signature {
        static SIGNATURE: std::sync::OnceLock<Signature> = std::sync::OnceLock::new();
        SIGNATURE.get_or_init(|| Signature::variadic_any(Volatility::Immutable))
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        use datafusion::arrow::array::{Int64Array, UInt64Array};
        use datafusion::common::hash_utils::{create_hashes, RandomState};
        let rows = args.number_rows;
        let seed = match args.args.first() {
            Some(ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Int64(Some(s)))) => *s,
            _ => {
                return Err(udf_err(
                    "segflow_line_hash",
                    "the seed must be an Int64 literal".into(),
                ))
            }
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args[1..])?;
        // Which values are NULL, so NULLs in different columns never hash alike.
        let mut pattern = vec![0u64; rows];
        for (c, a) in arrays.iter().enumerate() {
            if let Some(nulls) = a.logical_nulls() {
                for i in (0..rows).filter(|i| nulls.is_null(*i)) {
                    pattern[i] |= 1 << (c % 64);
                }
            }
        }
        let mut all: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(pattern))];
        all.extend(arrays);
        let mut hashes = vec![0u64; rows];
        create_hashes(&all, &RandomState::with_seed(seed as u64), &mut hashes)?;
        Ok(ColumnarValue::Array(Arc::new(
            Int64Array::from_iter_values(hashes.into_iter().map(|h| h as i64)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_compare_like_lower_in_list_for_ascii_and_other_text() {
        let list: Vec<String> = ["Cancelled", "ÄNDERUNG", "test"]
            .iter()
            .map(|s| s.to_lowercase())
            .collect();
        for (status, listed) in [
            (Some("cancelled"), true),
            (Some("CANCELLED"), true),
            (Some("cAnCeLlEd"), true),
            (Some("cancelled "), false),
            (Some("Änderung"), true),
            (Some("änderung"), true),
            (Some("anderung"), false),
            (Some("TEST"), true),
            (Some(""), false),
            (None, false),
        ] {
            let lower_in_list = status
                .map(|s| list.contains(&s.to_lowercase()))
                .unwrap_or(false);
            assert_eq!(GateRules::listed(&list, status), listed, "{status:?}");
            assert_eq!(lower_in_list, listed, "{status:?}");
        }
    }

    #[test]
    fn policies_take_each_gates_default_unless_set_and_an_unknown_gate_is_named() {
        let mut gates = Gates::default();
        assert_eq!(
            policies(&gates).unwrap(),
            [
                Policy::Fail,
                Policy::Fail,
                Policy::Fail,
                Policy::Fail,
                Policy::Warn,
                Policy::Warn
            ]
        );
        gates
            .policies
            .insert("negative_revenue".into(), Policy::Drop);
        gates.policies.insert(DUPLICATE_LINES.into(), Policy::Fail);
        let set = policies(&gates).unwrap();
        assert_eq!((set[4], set[5]), (Policy::Drop, Policy::Fail));
        assert_eq!(policy(&set, DUPLICATE_LINES), Policy::Fail);
        gates.policies.insert("null_customer".into(), Policy::Warn);
        let err = policies(&gates).unwrap_err().to_string();
        assert!(
            err.contains("gates.null_customer") && err.contains("known gates: null_customer_id"),
            "{err}"
        );
    }
}
