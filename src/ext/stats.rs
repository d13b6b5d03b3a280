//! `rank_correlation(x, y)`: Spearman's rank correlation of two numeric columns as an
//! aggregate: the Pearson correlation of their ranks, tied values sharing the mean of the
//! ranks they span (so the many customers with 0 purchases in a holdout rank alike). Rows
//! with a NULL in either column take no part; NULL with fewer than two rows or when either
//! column is constant.
//!
//! The state is the (x, y) pairs; the result is computed from them sorted, so it is the same
//! whatever order rows and partitions arrive in.
//!
//! `rank_cuts(x, share, ...)`: for each share (a constant > 0), the value `t` of x with: a row
//! whose x = v (not NULL) has `cast(rank() over (order by x) - 1 as double) / count(*) >= share`
//! exactly when `v > t`; `count(*)` counts every row, NULL x included. A list, one cut per
//! share in the order given; its elements are NULL when x has no value. Bands by rank, such
//! as "the top 20 %", from one pass and a sort of the values alone, not a window's sort of
//! every row. Order and equality are arrow's (IEEE total order, as a sort and `>` use).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{exec_err, internal_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::ColumnarValue;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};

/// `rank_correlation` and `rank_cuts`.
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(RankCorrelation::new()),
        AggregateUDF::from(RankCuts::new()),
    ]
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RankCorrelation {
    signature: Signature,
}

impl RankCorrelation {
    fn new() -> Self {
        RankCorrelation {
            signature: Signature::new(
                TypeSignature::Uniform(2, vec![DataType::Float64]),
                Volatility::Immutable,
            ),
        }
    }
}

impl AggregateUDFImpl for RankCorrelation {
    fn name(&self) -> &str {
        "rank_correlation"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[pairs]", args.name),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Pairs::default()))
    }
}

#[derive(Debug, Default)]
struct Pairs {
    pairs: Vec<(f64, f64)>,
}

impl Accumulator for Pairs {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (Some(x), Some(y)) = (values.first(), values.get(1)) else {
            return internal_err!("rank_correlation takes two arguments");
        };
        let x = x.as_primitive::<Float64Type>();
        let y = y.as_primitive::<Float64Type>();
        for i in 0..x.len() {
            if x.is_null(i) || y.is_null(i) {
                continue;
            }
            let (a, b) = (x.value(i), y.value(i));
            if a.is_nan() || b.is_nan() {
                return exec_err!("rank_correlation: NaN is not a rankable value");
            }
            self.pairs.push((a, b));
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(blobs) = states
            .first()
            .and_then(|s| s.as_any().downcast_ref::<BinaryArray>())
        else {
            return internal_err!("rank_correlation: the state is not binary");
        };
        for blob in blobs.iter().flatten() {
            let mut numbers = blob_numbers(blob);
            while let (Some(a), Some(b)) = (numbers.next(), numbers.next()) {
                self.pairs.push((a, b));
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let blob = numbers_blob(self.pairs.iter().flat_map(|(a, b)| [*a, *b]));
        Ok(vec![ScalarValue::Binary(Some(blob))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(spearman(&mut self.pairs)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.pairs.capacity() * 16
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RankCuts {
    signature: Signature,
}

impl RankCuts {
    fn new() -> Self {
        RankCuts {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for RankCuts {
    fn name(&self) -> &str {
        "rank_cuts"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() < 2 {
            return plan_err!("rank_cuts takes a numeric column and at least one share");
        }
        if let Some(t) = arg_types.iter().find(|t| !t.is_numeric() && !t.is_null()) {
            return plan_err!("rank_cuts takes numbers, not {t}");
        }
        Ok(vec![DataType::Float64; arg_types.len()])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::Float64, true))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[values]", args.name),
                DataType::Binary,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[rows]", args.name),
                DataType::UInt64,
                true,
            )),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let empty = RecordBatch::new_empty(Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        let shares = args.exprs[1..]
            .iter()
            .map(|e| match e.evaluate(&empty) {
                Ok(ColumnarValue::Scalar(ScalarValue::Float64(Some(s)))) if s > 0.0 => Ok(s),
                _ => plan_err!("rank_cuts: each share must be a constant number > 0, not {e}"),
            })
            .collect::<Result<Vec<f64>>>()?;
        Ok(Box::new(Cuts {
            shares,
            values: Vec::new(),
            rows: 0,
        }))
    }
}

#[derive(Debug)]
struct Cuts {
    shares: Vec<f64>,
    values: Vec<f64>,
    /// Every row seen, NULL x included.
    rows: u64,
}

impl Accumulator for Cuts {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(x) = values.first() else {
            return internal_err!("rank_cuts takes a column");
        };
        let x = x.as_primitive::<Float64Type>();
        self.rows += x.len() as u64;
        self.values.extend(x.iter().flatten());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (Some(blobs), Some(rows)) = (
            states
                .first()
                .and_then(|s| s.as_any().downcast_ref::<BinaryArray>()),
            states
                .get(1)
                .and_then(|s| s.as_any().downcast_ref::<UInt64Array>()),
        ) else {
            return internal_err!("rank_cuts: the state is not (binary, u64)");
        };
        for blob in blobs.iter().flatten() {
            self.values.extend(blob_numbers(blob));
        }
        self.rows += rows.iter().flatten().sum::<u64>();
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Binary(Some(numbers_blob(self.values.iter().copied()))),
            ScalarValue::UInt64(Some(self.rows)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.values.sort_unstable_by_key(|v| total_key(*v));
        let cuts: Float64Array = self
            .shares
            .iter()
            .map(|share| rank_cut(&self.values, self.rows, *share))
            .collect();
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &cuts.iter().map(ScalarValue::Float64).collect::<Vec<_>>(),
            &DataType::Float64,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.values.capacity() * 8 + self.shares.capacity() * 8
    }
}

/// The cut of `share` > 0 over `sorted` values (total order) of `rows` rows: with c the
/// fewest values below that reach the share (`c / rows >= share`, in f64 as SQL computes
/// it), the c-th smallest value — a value has at least c values below it exactly when it is
/// greater; the largest value when no value has c below it; None without values.
fn rank_cut(sorted: &[f64], rows: u64, share: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let reaches = |c: u64| (c as f64) / (rows as f64) >= share;
    // From the rounded guess, at most a step or two to the exact count.
    let mut c = ((share * rows as f64).ceil().max(1.0) as u64).min(rows + 1);
    while c > 1 && reaches(c - 1) {
        c -= 1;
    }
    while c <= rows && !reaches(c) {
        c += 1;
    }
    let c = usize::try_from(c).unwrap_or(usize::MAX).min(sorted.len());
    Some(sorted[c - 1])
}

/// A partial state's numbers as one binary value (little-endian f64s).
fn numbers_blob(numbers: impl Iterator<Item = f64>) -> Vec<u8> {
    numbers.flat_map(f64::to_le_bytes).collect()
}

/// The numbers of a [`numbers_blob`].
fn blob_numbers(blob: &[u8]) -> impl Iterator<Item = f64> + '_ {
    blob.chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Spearman's rho with mean ranks for ties; sorts `pairs` first so the sums run in one order
/// (which also ranks the first values: ties are neighbours).
fn spearman(pairs: &mut [(f64, f64)]) -> Option<f64> {
    // Pairs equal in both keys are the same bits, so an unstable sort gives one order.
    pairs.sort_unstable_by_key(|p| (total_key(p.0), total_key(p.1)));
    if pairs.len() < 2 {
        return None;
    }
    let rx = ranks_in_order(pairs.len(), |k| k, |i| pairs[i].0);
    let ry = mean_ranks(pairs.iter().map(|p| p.1).collect());
    let n = pairs.len() as f64;
    let mean = (n + 1.0) / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        let (dx, dy) = (a - mean, b - mean);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// `f64::total_cmp`'s order as an unsigned integer's: negative values (sign bit set) flip
/// all their bits, the others set the sign bit.
pub(crate) fn total_key(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The rank (1-based) of every value, ties getting the mean of the ranks they span.
fn mean_ranks(values: Vec<f64>) -> Vec<f64> {
    // Sorted by value, ties by position (plain integers sort without a comparator).
    let mut keyed: Vec<(u64, usize)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (total_key(*v), i))
        .collect();
    keyed.sort_unstable();
    ranks_in_order(values.len(), |k| keyed[k].1, |i| values[i])
}

/// The mean ranks of `n` values, `at(k)` the index of the k-th smallest.
fn ranks_in_order(n: usize, at: impl Fn(usize) -> usize, value: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut ranks = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let first = value(at(start));
        let mut end = start + 1;
        while end < n && value(at(end)) == first {
            end += 1;
        }
        // positions start..end hold ranks start+1 ..= end
        let rank = (start + 1 + end) as f64 / 2.0;
        for k in start..end {
            ranks[at(k)] = rank;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The band a value falls in by rank, as `rank() over (order by x)` would give it: the
    /// count of values strictly lower, over all rows.
    fn below_share(values: &[Option<f64>], v: f64) -> f64 {
        let below = values
            .iter()
            .flatten()
            .filter(|x| x.total_cmp(&v).is_lt())
            .count();
        below as f64 / values.len() as f64
    }

    /// For every value and share, `v > cut` says exactly what the rank says, on values with
    /// ties, NULLs, negative numbers and sizes around the shares' multiples.
    #[test]
    fn rank_cuts_agree_with_the_rank_of_every_value() {
        let shares = [0.1, 0.2, 0.3, 0.5, 0.8, 0.9, 1.0, 1.5];
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for n in [1usize, 2, 3, 5, 9, 10, 11, 20, 99, 100, 101, 1000] {
            let values: Vec<Option<f64>> = (0..n)
                .map(|_| match next() % 10 {
                    0 => None,
                    k => Some((k as f64 - 5.0) * (next() % 4) as f64),
                })
                .collect();
            let mut sorted: Vec<f64> = values.iter().flatten().copied().collect();
            sorted.sort_unstable_by_key(|v| total_key(*v));
            for share in shares {
                let cut = rank_cut(&sorted, n as u64, share);
                for v in values.iter().flatten() {
                    let by_rank = below_share(&values, *v) >= share;
                    let by_cut = cut.is_some_and(|t| v.total_cmp(&t).is_gt());
                    assert_eq!(
                        by_rank, by_cut,
                        "n {n}, share {share}, value {v}, cut {cut:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rank_cuts_of_no_values_are_null() {
        assert_eq!(rank_cut(&[], 5, 0.5), None);
    }

    /// scipy.stats.spearmanr gives these (mean ranks for ties).
    #[test]
    fn spearman_matches_scipy_with_ties() {
        let mut pairs = vec![(1.0, 2.0), (2.0, 1.0), (3.0, 4.0), (4.0, 3.0), (5.0, 5.0)];
        assert!((spearman(&mut pairs).unwrap() - 0.8).abs() < 1e-12);
        // x = [0, 0, 0, 1, 2, 2], y = [0, 1, 0, 0, 3, 2]
        let mut pairs = vec![
            (0.0, 0.0),
            (0.0, 1.0),
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 3.0),
            (2.0, 2.0),
        ];
        let want = 0.7214084193623483;
        assert!((spearman(&mut pairs).unwrap() - want).abs() < 1e-12);
        assert_eq!(spearman(&mut [(1.0, 1.0)]), None);
        assert_eq!(spearman(&mut [(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn total_key_orders_as_total_cmp() {
        let values = [
            -f64::NAN,
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            5e-324,
            1.0,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ];
        for a in values {
            for b in values {
                assert_eq!(total_key(a).cmp(&total_key(b)), a.total_cmp(&b), "{a} {b}");
            }
        }
    }

    #[test]
    fn spearman_does_not_depend_on_the_order_of_the_pairs() {
        let pairs: Vec<(f64, f64)> = (0..1000)
            .map(|i| (f64::from(i % 37) * 0.1, f64::from((i * 7919) % 101) - 50.0))
            .collect();
        let mut reversed: Vec<(f64, f64)> = pairs.iter().rev().copied().collect();
        let mut pairs = pairs;
        let want = spearman(&mut pairs).unwrap();
        assert_eq!(spearman(&mut reversed).unwrap().to_bits(), want.to_bits());
    }

    #[test]
    fn mean_ranks_share_ties() {
        assert_eq!(
            mean_ranks(vec![3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
    }
}
