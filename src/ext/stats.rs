//! `rank_correlation(x, y)`: Spearman's rank correlation of two numeric columns as an
//! aggregate: the Pearson correlation of their ranks, tied values sharing the mean of the
//! ranks they span (so the many customers with 0 purchases in a holdout rank alike). Rows
//! with a NULL in either column take no part; NULL with fewer than two rows or when either
//! column is constant.
//!
//! The state is the (x, y) pairs; the result is computed from them sorted, so it is the same
//! whatever order rows and partitions arrive in.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{exec_err, internal_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};

/// `rank_correlation`.
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    vec![AggregateUDF::from(RankCorrelation::new())]
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
            let mut numbers = blob
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
            while let (Some(a), Some(b)) = (numbers.next(), numbers.next()) {
                self.pairs.push((a, b));
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut blob = Vec::with_capacity(self.pairs.len() * 16);
        for (a, b) in &self.pairs {
            blob.extend_from_slice(&a.to_le_bytes());
            blob.extend_from_slice(&b.to_le_bytes());
        }
        Ok(vec![ScalarValue::Binary(Some(blob))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(spearman(&mut self.pairs)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.pairs.capacity() * 16
    }
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
