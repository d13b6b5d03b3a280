//! The duplicate-line gate's count, taken while the orders are staged: every staged line's
//! 128-bit fingerprint (`_line_a`, `_line_b`, see [`crate::ingest::gates::LineHash`]) is collected
//! as the staging pass writes the line, and equal fingerprints are counted after it, sorted.
//! No second pass over the staged lines, no hash table of every line, and the fingerprints
//! are written to the staged table only when the `drop` policy needs them there.
//!
//! The fingerprints are kept in 256 buckets by their first byte (each sorted on its own
//! at the end, in cache, through one scratch array per thread: together they are sorted),
//! within the memory pool. A bucket grows
//! by chunks (64 fingerprints doubling up to 4,096) that are never reallocated: growing one
//! array by copying cost more than the sort. When the pool
//! refuses more, the buckets are sorted and spilled to a temporary file as one sorted run,
//! and the runs are merged at the end.

use std::collections::BinaryHeap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::SpillFile;

use crate::publish::stage::BatchTap;

/// The staged columns holding a line's fingerprint.
pub const COLUMNS: [&str; 2] = ["_line_a", "_line_b"];

const BUCKETS: usize = 256;
const BYTES: usize = std::mem::size_of::<u128>();

/// Collects the fingerprints of the lines a staging pass writes.
pub struct Fingerprints {
    /// Whether the fingerprint columns are written to the staged table too.
    keep: bool,
    state: Mutex<State>,
    disk: Arc<DiskManager>,
}

struct State {
    /// Per bucket, its chunks (each full but the last).
    buckets: Vec<Vec<Vec<u128>>>,
    reservation: MemoryReservation,
    spilled: Vec<Arc<dyn SpillFile>>,
}

/// Fingerprints seen more than once: `(_line_a, _line_b, copies)`, in fingerprint order.
pub type Repeated = Vec<(i64, i64, u64)>;

fn key(a: i64, b: i64) -> u128 {
    (u128::from(a as u64) << 64) | u128::from(b as u64)
}

fn halves(k: u128) -> (i64, i64) {
    ((k >> 64) as u64 as i64, k as u64 as i64)
}

fn bucket(k: u128) -> usize {
    (k >> 120) as usize
}

impl Fingerprints {
    pub fn new(pool: &Arc<dyn MemoryPool>, disk: Arc<DiskManager>, keep: bool) -> Self {
        let reservation = MemoryConsumer::new("duplicate-line fingerprints")
            .with_can_spill(true)
            .register(pool);
        Fingerprints {
            keep,
            state: Mutex::new(State {
                buckets: vec![Vec::new(); BUCKETS],
                reservation,
                spilled: Vec::new(),
            }),
            disk,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| DataFusionError::Internal("fingerprint collector poisoned".into()))
    }

    /// The fingerprints seen more than once, and how often.
    pub fn repeated(&self) -> Result<Repeated> {
        let mut state = self.lock()?;
        if !state.spilled.is_empty() {
            // What is still in memory becomes one more run; the runs are counted as they
            // merge, never held in memory at once.
            self.spill(&mut state)?;
            let mut runs: Vec<Box<dyn Iterator<Item = Result<u128>>>> =
                Vec::with_capacity(state.spilled.len());
            for file in &state.spilled {
                runs.push(Box::new(read_run(file)?));
            }
            let mut counter = Counter::default();
            merge(runs, |k| counter.push(k))?;
            return Ok(counter.finish());
        }
        let buckets = std::mem::replace(&mut state.buckets, vec![Vec::new(); BUCKETS]);
        let halves = each_sorted(
            buckets,
            [Counter::default(), Counter::default()],
            |keys, counter| {
                keys.iter().for_each(|k| counter.push(*k));
                Ok(())
            },
        )?;
        state.reservation.free();
        // The first half's buckets hold smaller keys than the second's.
        Ok(halves.into_iter().flat_map(Counter::finish).collect())
    }

    /// Sorts the buckets and writes them to temporary files (one per half of the buckets),
    /// each a sorted run.
    fn spill(&self, state: &mut State) -> Result<()> {
        let buckets = std::mem::replace(&mut state.buckets, vec![Vec::new(); BUCKETS]);
        let files = [
            self.disk.create_tmp_file("duplicate-line fingerprints")?,
            self.disk.create_tmp_file("duplicate-line fingerprints")?,
        ];
        let writers = [
            BufWriter::new(files[0].open_writer()?),
            BufWriter::new(files[1].open_writer()?),
        ];
        let outs = each_sorted(buckets, writers, |keys, out| {
            for k in keys {
                out.write_all(&k.to_le_bytes())?;
            }
            Ok(())
        })?;
        for out in outs {
            out.into_inner().map_err(|e| e.into_error())?.finish()?;
        }
        state.spilled.extend(files);
        state.reservation.free();
        Ok(())
    }
}

impl BatchTap for Fingerprints {
    fn written_schema(&self, schema: &SchemaRef) -> Result<SchemaRef> {
        for c in COLUMNS {
            schema.index_of(c)?;
        }
        if self.keep {
            return Ok(schema.clone());
        }
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| !COLUMNS.contains(&f.name().as_str()))
            .cloned()
            .collect();
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )))
    }

    fn tap(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let (ia, ib) = (schema.index_of(COLUMNS[0])?, schema.index_of(COLUMNS[1])?);
        let (a, b) = (
            batch.column(ia).as_primitive_opt::<Int64Type>(),
            batch.column(ib).as_primitive_opt::<Int64Type>(),
        );
        let (Some(a), Some(b)) = (a, b) else {
            return Err(DataFusionError::Internal(
                "the line fingerprints are not Int64".into(),
            ));
        };
        let mut counts = [0usize; BUCKETS];
        let keys: Vec<u128> = a
            .values()
            .iter()
            .zip(b.values().iter())
            .map(|(a, b)| {
                let k = key(*a, *b);
                counts[bucket(k)] += 1;
                k
            })
            .collect();
        {
            let mut state = self.lock()?;
            let bytes = new_chunks(&state.buckets, &counts) * BYTES;
            if state.reservation.try_grow(bytes).is_err() {
                self.spill(&mut state)?;
                let bytes = new_chunks(&state.buckets, &counts) * BYTES;
                state.reservation.try_grow(bytes)?;
            }
            for k in keys {
                let chunks = &mut state.buckets[bucket(k)];
                match chunks.last_mut() {
                    Some(last) if last.len() < last.capacity() => last.push(k),
                    _ => {
                        let mut chunk = Vec::with_capacity(chunk_size(chunks.len()));
                        chunk.push(k);
                        chunks.push(chunk);
                    }
                }
            }
        }
        if self.keep {
            return Ok(batch);
        }
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| *i != ia && *i != ib)
            .collect();
        Ok(batch.project(&keep)?)
    }
}

/// The capacity of a bucket's chunk after `chunks` chunks.
fn chunk_size(chunks: usize) -> usize {
    64 << chunks.min(6)
}

/// The fingerprints' room the chunks a batch needs add (`counts`: its lines per bucket).
fn new_chunks(buckets: &[Vec<Vec<u128>>], counts: &[usize; BUCKETS]) -> usize {
    let mut room = 0;
    for (chunks, n) in buckets.iter().zip(counts) {
        let mut free = chunks.last().map_or(0, |c| c.capacity() - c.len());
        let mut count = chunks.len();
        while free < *n {
            free += chunk_size(count);
            room += chunk_size(count);
            count += 1;
        }
    }
    room
}

/// Hands each bucket's keys, sorted, to `visit` with its half's state (`states`), in bucket
/// order within a half; the buckets are split in two halves of about equal size, one per
/// thread, and the states returned in half order. A bucket's chunks are gathered into one
/// scratch array per thread and freed as soon as it is sorted: sorting never holds a second
/// copy of the fingerprints (gathering every bucket into an array of its own did, and
/// the allocator kept the freed chunks mapped: 100 M lines peaked at 3.5 GiB instead of 2.9).
fn each_sorted<R: Send>(
    buckets: Vec<Vec<Vec<u128>>>,
    states: [R; 2],
    visit: impl Fn(&[u128], &mut R) -> Result<()> + Sync,
) -> Result<[R; 2]> {
    let total: usize = buckets.iter().flatten().map(Vec::len).sum();
    let half = |buckets: Vec<Vec<Vec<u128>>>, mut state: R| -> Result<R> {
        let largest = buckets
            .iter()
            .map(|b| b.iter().map(Vec::len).sum::<usize>())
            .max()
            .unwrap_or(0);
        let mut scratch: Vec<u128> = Vec::with_capacity(largest);
        let mut spread: Vec<u128> = Vec::new();
        for chunks in buckets {
            scratch.clear();
            for c in chunks {
                scratch.extend_from_slice(&c);
            }
            let sorted = sort_bucket(&mut scratch, &mut spread);
            visit(sorted, &mut state)?;
        }
        Ok(state)
    };
    let mut seen = 0;
    let split = buckets
        .iter()
        .position(|b| {
            seen += b.iter().map(Vec::len).sum::<usize>();
            seen * 2 >= total
        })
        .map_or(buckets.len(), |i| i + 1);
    let mut first = buckets;
    let second = first.split_off(split);
    let [one, two] = states;
    if total < 100_000 {
        return Ok([half(first, one)?, half(second, two)?]);
    }
    std::thread::scope(|scope| {
        let later = scope.spawn(|| half(second, two));
        let first = half(first, one);
        let second = later
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        Ok([first?, second?])
    })
}

/// Sorts the keys of one bucket (all with the same first byte), into `spread` or in place,
/// and returns them sorted. A large bucket is first spread by the keys' second byte
/// (one counting pass; fingerprints are uniform) and each of the 256 ranges sorted on its
/// own: at 10 M lines that halved the time of sorting whole buckets.
fn sort_bucket<'a>(keys: &'a mut [u128], spread: &'a mut Vec<u128>) -> &'a [u128] {
    const SPREAD_FROM: usize = 4096;
    if keys.len() < SPREAD_FROM {
        keys.sort_unstable();
        return keys;
    }
    let byte = |k: u128| ((k >> 112) & 0xff) as usize;
    let mut starts = [0usize; 257];
    for k in keys.iter() {
        starts[byte(*k) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    spread.clear();
    spread.resize(keys.len(), 0);
    let mut next = starts;
    for k in keys.iter() {
        let b = byte(*k);
        spread[next[b]] = *k;
        next[b] += 1;
    }
    for w in starts.windows(2) {
        spread[w[0]..w[1]].sort_unstable();
    }
    spread
}

/// Counts equal neighbours in a sorted sequence of keys, keeping those seen more than once.
#[derive(Default)]
struct Counter {
    current: Option<(u128, u64)>,
    repeated: Repeated,
}

impl Counter {
    fn push(&mut self, k: u128) {
        match &mut self.current {
            Some((c, n)) if *c == k => *n += 1,
            _ => {
                self.flush();
                self.current = Some((k, 1));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((c, n)) = self.current.take().filter(|(_, n)| *n > 1) {
            let (a, b) = halves(c);
            self.repeated.push((a, b, n));
        }
    }

    fn finish(mut self) -> Repeated {
        self.flush();
        self.repeated
    }
}

/// A spilled run, read back in order.
fn read_run(file: &Arc<dyn SpillFile>) -> Result<impl Iterator<Item = Result<u128>>> {
    let path = file.path().ok_or_else(|| {
        DataFusionError::Internal("fingerprint runs are spilled to local files".into())
    })?;
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    Ok(std::iter::from_fn(move || {
        let mut bytes = [0u8; BYTES];
        match reader.read_exact(&mut bytes) {
            Ok(()) => Some(Ok(u128::from_le_bytes(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(e.into())),
        }
    }))
}

/// Merges sorted runs into one sorted sequence, handed to `emit` key by key.
fn merge(
    mut runs: Vec<Box<dyn Iterator<Item = Result<u128>>>>,
    mut emit: impl FnMut(u128),
) -> Result<()> {
    use std::cmp::Reverse;
    let mut heap = BinaryHeap::new();
    for (i, run) in runs.iter_mut().enumerate() {
        if let Some(k) = run.next() {
            heap.push(Reverse((k?, i)));
        }
    }
    while let Some(Reverse((k, i))) = heap.pop() {
        emit(k);
        if let Some(next) = runs[i].next() {
            heap.push(Reverse((next?, i)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::execution::disk_manager::DiskManagerBuilder;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, UnboundedMemoryPool};

    fn batch(lines: &[(i64, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("_line_a", DataType::Int64, false),
            Field::new("_line_b", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(lines.iter().map(|_| "c"))),
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|l| l.0))),
                Arc::new(Int64Array::from_iter_values(lines.iter().map(|l| l.1))),
            ],
        )
        .unwrap()
    }

    fn disk() -> Arc<DiskManager> {
        Arc::new(DiskManagerBuilder::default().build().unwrap())
    }

    #[test]
    fn duplicates_are_counted_per_full_fingerprint_even_when_one_half_collides() {
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let f = Fingerprints::new(&pool, disk(), false);
        // (1, 10) twice: one extra; (3, 30) three times: two extra; (1, 11), (2, 20) and
        // (-1, 10) (the same second half, a negative first) once each.
        let written = f
            .tap(batch(&[(1, 10), (3, 30), (1, 11), (-1, 10)]))
            .unwrap();
        f.tap(batch(&[(2, 20), (1, 10), (3, 30), (3, 30)])).unwrap();
        assert_eq!(written.num_columns(), 1, "fingerprints are not written");
        assert_eq!(written.num_rows(), 4);
        let mut repeated = f.repeated().unwrap();
        repeated.sort();
        assert_eq!(repeated, vec![(1, 10, 2), (3, 30, 3)]);
    }

    #[test]
    fn a_large_bucket_spread_by_its_second_byte_sorts_like_a_plain_sort() {
        // One bucket (first byte 0x7f) of 50 000 keys, many repeated, some differing only
        // in the low bits, the second byte skewed to a few values.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut keys: Vec<u128> = (0..50_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let second = if i % 3 == 0 { 0x11 } else { x & 0xff };
                (0x7f_u128 << 120) | (u128::from(second) << 112) | u128::from(x % 20_000)
            })
            .collect();
        let mut expected = keys.clone();
        expected.sort_unstable();
        let mut spread = Vec::new();
        assert_eq!(sort_bucket(&mut keys, &mut spread), expected.as_slice());
        // and a small one is sorted in place
        let mut small = vec![5u128, 1, 3, 1];
        assert_eq!(sort_bucket(&mut small, &mut spread), &[1, 1, 3, 5]);
    }

    #[test]
    fn the_drop_policy_keeps_the_fingerprint_columns() {
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let f = Fingerprints::new(&pool, disk(), true);
        let b = batch(&[(1, 1), (1, 1)]);
        assert_eq!(f.written_schema(&b.schema()).unwrap(), b.schema());
        assert_eq!(f.tap(b).unwrap().num_columns(), 3);
        assert_eq!(f.repeated().unwrap(), vec![(1, 1, 2)]);
    }

    #[test]
    fn a_full_memory_pool_spills_sorted_runs_and_the_count_is_the_same() {
        // Pseudo-random fingerprints from a small set, so many repeat, in many batches.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lines: Vec<Vec<(i64, i64)>> = (0..40)
            .map(|_| {
                (0..5_000)
                    .map(|_| {
                        let v = next() % 3_000;
                        ((v.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as i64, v as i64)
                    })
                    .collect()
            })
            .collect();
        let mut expected = std::collections::BTreeMap::new();
        for l in lines.iter().flatten() {
            *expected.entry(*l).or_insert(0u64) += 1;
        }
        let mut expected: Vec<(i64, i64, u64)> = expected
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|((a, b), n)| (a, b, n))
            .collect();
        expected.sort();
        for limit in [usize::MAX, 1 << 20] {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
            let f = Fingerprints::new(&pool, disk(), false);
            for l in &lines {
                f.tap(batch(l)).unwrap();
            }
            let spilled = f.lock().unwrap().spilled.len();
            assert_eq!(spilled > 0, limit != usize::MAX, "limit {limit}");
            let mut got = f.repeated().unwrap();
            got.sort();
            assert_eq!(got, expected, "limit {limit}");
            assert_eq!(pool.reserved(), 0);
        }
    }
}
