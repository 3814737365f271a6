//! Exact index: contiguous rows scanned with the SIMD dot kernel.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::metric::Metric;
use crate::search::{AllowSet, Hit, Plan, SearchOptions, SearchOutput, TopK, VectorIndex};

/// Largest supported dimension (the on-disk header stores it as `u32`; this
/// keeps single rows and allocations reasonable).
pub(crate) const MAX_DIM: usize = 1 << 16;

pub(crate) fn check_dim(dim: usize) -> Result<()> {
    if dim == 0 || dim > MAX_DIM {
        return Err(Error::invalid("dim", format!("{dim} not in 1..={MAX_DIM}")));
    }
    Ok(())
}

/// Exact vector store and brute-force index.
///
/// Rows live in one contiguous `Vec<f32>`; removal moves the last row into the
/// hole, so row order is not insertion order. Under [`Metric::Cosine`] rows are
/// stored normalised. Searches always report [`Plan::Exact`].
#[derive(Clone, Debug)]
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    data: Vec<f32>,
    docs: Vec<u64>,
    pos: HashMap<u64, usize>,
}

impl FlatIndex {
    /// Creates an empty index. Fails if `dim` is 0 or above 65536.
    pub fn new(dim: usize, metric: Metric) -> Result<Self> {
        Self::with_capacity(dim, metric, 0)
    }

    /// Creates an empty index with room for `n` vectors.
    /// Fails, rather than aborting, when that room cannot be had.
    pub fn with_capacity(dim: usize, metric: Metric, n: usize) -> Result<Self> {
        check_dim(dim)?;
        let too_many = |_| Error::invalid("capacity", format!("no room for {n} vectors of {dim}"));
        let mut data = Vec::new();
        data.try_reserve_exact(n.checked_mul(dim).ok_or_else(|| too_many(()))?)
            .map_err(|_| too_many(()))?;
        let mut docs = Vec::new();
        docs.try_reserve_exact(n).map_err(|_| too_many(()))?;
        let mut pos = HashMap::new();
        pos.try_reserve(n).map_err(|_| too_many(()))?;
        Ok(FlatIndex {
            dim,
            metric,
            data,
            docs,
            pos,
        })
    }

    /// The stored (for Cosine: normalised) vector of `doc`.
    pub fn get(&self, doc: u64) -> Option<&[f32]> {
        self.pos.get(&doc).map(|&i| self.row(i))
    }

    /// Whether `doc` is stored.
    pub fn contains(&self, doc: u64) -> bool {
        self.pos.contains_key(&doc)
    }

    /// All `(doc, vector)` pairs, in storage order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &[f32])> + '_ {
        self.docs
            .iter()
            .zip(self.data.chunks_exact(self.dim))
            .map(|(&d, v)| (d, v))
    }

    /// All stored document ids, in storage order.
    pub fn docs(&self) -> &[u64] {
        &self.docs
    }

    #[inline]
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Stores a vector that is already as this index keeps it (the output
    /// of [`Metric::prepare`], read back from a checkpoint), without
    /// preparing it again: normalising a unit vector again can change its
    /// last bits. Fails on a wrong dimension, a non-finite value or norm,
    /// and under cosine on a vector that is not of unit length.
    pub fn upsert_stored(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(Error::DimensionMismatch {
                expected: self.dim,
                found: v.len(),
            });
        }
        let norm_sq = crate::metric::checked_norm_sq(v)?;
        if self.metric == Metric::Cosine && (norm_sq - 1.0).abs() > 1e-4 {
            return Err(if norm_sq == 0.0 {
                Error::ZeroVector
            } else {
                Error::invalid(
                    "vector",
                    format!(
                        "norm {:.6} under cosine: not as prepare() stores it",
                        norm_sq.sqrt()
                    ),
                )
            });
        }
        self.upsert_prepared(doc, v);
        Ok(())
    }

    /// Inserts an already validated and prepared vector.
    pub(crate) fn upsert_prepared(&mut self, doc: u64, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        match self.pos.get(&doc) {
            Some(&i) => self.data[i * self.dim..(i + 1) * self.dim].copy_from_slice(v),
            None => {
                self.pos.insert(doc, self.docs.len());
                self.docs.push(doc);
                self.data.extend_from_slice(v);
            }
        }
    }

    /// Exact top-k for a prepared query, restricted to `allow`.
    pub(crate) fn search_prepared(
        &self,
        q: &[f32],
        k: usize,
        allow: Option<&AllowSet>,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        if k == 0 {
            return Vec::new();
        }
        // A filter keeping a good part of the rows (every product but the
        // query's own, say) is scanned in row order, in parallel: looking
        // its docs up one by one costs more than the rows it skips.
        let dense = allow.is_none_or(|a| a.len().saturating_mul(4) > self.docs.len());
        if dense {
            let helpers = ScanHelpers::reserve(scan_threads(self.docs.len() * self.dim) - 1);
            if helpers.count > 0 {
                return self.search_parallel(q, k, allow, helpers.count + 1);
            }
        }
        match allow {
            // Small filter: visit only its rows.
            Some(a) if a.len() <= self.docs.len() => {
                for doc in a.iter() {
                    if let Some(&i) = self.pos.get(&doc) {
                        top.push(doc, self.metric.score(q, self.row(i)));
                    }
                }
            }
            Some(a) => {
                for (i, &doc) in self.docs.iter().enumerate() {
                    if a.contains(doc) {
                        top.push(doc, self.metric.score(q, self.row(i)));
                    }
                }
            }
            None => {
                for (doc, row) in self.iter() {
                    top.push(doc, self.metric.score(q, row));
                }
            }
        }
        top.into_sorted()
    }

    /// The full scan split over `threads` scoped threads, each keeping its
    /// own top-k; merged by the same (score, doc) order, so the result is
    /// the sequential scan's.
    fn search_parallel(
        &self,
        q: &[f32],
        k: usize,
        allow: Option<&AllowSet>,
        threads: usize,
    ) -> Vec<Hit> {
        let chunk = self.docs.len().div_ceil(threads);
        let scan = |t: usize| {
            let mut top = TopK::new(k);
            let start = (t * chunk).min(self.docs.len());
            let end = ((t + 1) * chunk).min(self.docs.len());
            for i in start..end {
                let doc = self.docs[i];
                if allow.is_none_or(|a| a.contains(doc)) {
                    top.push(doc, self.metric.score(q, self.row(i)));
                }
            }
            top.into_sorted()
        };
        // The calling thread scans the first chunk, and any chunk whose
        // thread the system refuses (a task limit): a search never fails
        // for want of threads.
        let parts: Vec<Vec<Hit>> = std::thread::scope(|s| {
            let spawned: Vec<_> = (1..threads)
                .map(|t| {
                    std::thread::Builder::new()
                        .spawn_scoped(s, move || scan(t))
                        .map_err(|_| t)
                })
                .collect();
            let mut parts = vec![scan(0)];
            for h in spawned {
                parts.push(match h {
                    Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    Err(t) => scan(t),
                });
            }
            parts
        });
        let mut top = TopK::new(k);
        for h in parts.into_iter().flatten() {
            top.push(h.doc, h.score);
        }
        top.into_sorted()
    }

    /// Exact top-k among `candidates` (unknown docs are skipped).
    pub(crate) fn rescore(
        &self,
        q: &[f32],
        k: usize,
        candidates: impl Iterator<Item = u64>,
    ) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for doc in candidates {
            if let Some(&i) = self.pos.get(&doc) {
                top.push(doc, self.metric.score(q, self.row(i)));
            }
        }
        top.into_sorted()
    }

    /// Number of `allow` ids that are stored here.
    pub(crate) fn count_allowed(&self, allow: &AllowSet) -> usize {
        allow.iter().filter(|d| self.pos.contains_key(d)).count()
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.docs.len()
    }

    fn upsert(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        let v = self.metric.prepare(self.dim, v)?;
        self.upsert_prepared(doc, &v);
        Ok(())
    }

    fn remove(&mut self, doc: u64) -> bool {
        let Some(i) = self.pos.remove(&doc) else {
            return false;
        };
        let last = self.docs.len() - 1;
        if i != last {
            let moved = self.docs[last];
            self.data
                .copy_within(last * self.dim..(last + 1) * self.dim, i * self.dim);
            self.docs[i] = moved;
            self.pos.insert(moved, i);
        }
        self.docs.pop();
        self.data.truncate(last * self.dim);
        true
    }

    fn search(
        &self,
        q: &[f32],
        opts: &SearchOptions,
        allow: Option<&AllowSet>,
    ) -> Result<SearchOutput> {
        opts.validate()?;
        let q = self.metric.prepare(self.dim, q)?;
        Ok(SearchOutput {
            hits: self.search_prepared(&q, opts.k, allow),
            plan: Plan::Exact,
        })
    }
}

/// Rows × dimensions from which an exact scan is split over threads: below
/// it, starting threads costs more than it saves.
pub(crate) const PARALLEL_SCAN_MIN_WORK: usize = 1 << 22;

/// Threads for a scan of `work` rows × dimensions: one per available CPU
/// (at most 8), or 1 below [`PARALLEL_SCAN_MIN_WORK`].
fn scan_threads(work: usize) -> usize {
    if work < PARALLEL_SCAN_MIN_WORK {
        return 1;
    }
    cpus()
        .min(8)
        .min(work / (PARALLEL_SCAN_MIN_WORK / 4))
        .max(1)
}

/// Available CPUs, read once (std reads cgroup files for it on each call).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Helper threads of parallel scans running now, in the whole process.
static SCAN_HELPERS_BUSY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Helper threads a parallel scan holds: all scans of the process together
/// hold at most one per CPU, so 32 concurrent searches of a large catalog
/// do not start 224 threads on 16 cores (a scan that finds none free runs
/// in its caller's thread alone). Released on drop.
struct ScanHelpers {
    count: usize,
}

impl ScanHelpers {
    fn reserve(want: usize) -> ScanHelpers {
        use std::sync::atomic::Ordering;
        let cap = cpus();
        let mut count = 0;
        if want > 0 {
            let _ = SCAN_HELPERS_BUSY.fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                count = want.min(cap.saturating_sub(busy));
                (count > 0).then_some(busy + count)
            });
        }
        ScanHelpers { count }
    }
}

impl Drop for ScanHelpers {
    fn drop(&mut self) {
        if self.count > 0 {
            SCAN_HELPERS_BUSY.fetch_sub(self.count, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored vectors are checked as `prepare` leaves them, and room that
    /// cannot be had is an error, not an abort.
    #[test]
    fn stored_vectors_and_capacity_are_checked() {
        let mut cos = FlatIndex::new(2, Metric::Cosine).unwrap();
        assert!(cos.upsert_stored(1, &[0.6, 0.8]).is_ok());
        assert!(cos.upsert_stored(2, &[1e30, 1e30]).is_err());
        assert!(matches!(
            cos.upsert_stored(3, &[0.0, 0.0]),
            Err(Error::ZeroVector)
        ));
        let mut ip = FlatIndex::new(2, Metric::InnerProduct).unwrap();
        assert!(ip.upsert_stored(1, &[3.0, 4.0]).is_ok());
        assert!(matches!(
            ip.upsert_stored(2, &[3e38, 3e38]),
            Err(Error::NonFinite)
        ));
        assert!(FlatIndex::with_capacity(4, Metric::Cosine, 1 << 62).is_err());
        assert!(FlatIndex::with_capacity(4, Metric::Cosine, 1000).is_ok());
    }

    /// The threaded scan returns exactly the sequential one, ties included.
    #[test]
    fn parallel_scan_equals_sequential() {
        let (n, dim) = (40_000usize, 128usize);
        assert!(n * dim >= PARALLEL_SCAN_MIN_WORK);
        let mut f = FlatIndex::with_capacity(dim, Metric::InnerProduct, n).unwrap();
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Coarse values: many exact ties.
            ((x % 5) as f32 - 2.0) / 2.0
        };
        for i in 0..n {
            let v: Vec<f32> = (0..dim).map(|_| next()).collect();
            f.upsert(i as u64 * 3, &v).unwrap();
        }
        let q: Vec<f32> = (0..dim).map(|_| next()).collect();
        let allow = AllowSet::from_unsorted((0..n as u64 * 3).filter(|d| d % 7 != 0).collect());
        for allow in [None, Some(&allow)] {
            for k in [1, 10, 500] {
                let par = f.search_parallel(&q, k, allow, 4);
                let mut top = TopK::new(k);
                for (i, &doc) in f.docs.iter().enumerate() {
                    if allow.is_none_or(|a| a.contains(doc)) {
                        top.push(doc, f.metric.score(&q, f.row(i)));
                    }
                }
                assert_eq!(par, top.into_sorted(), "k {k}");
            }
        }
    }

    /// Parallel scans of the whole process share one helper thread per
    /// CPU: a scan that finds none free runs alone, and a finished scan
    /// gives its helpers back. (No other test of this binary reserves any.)
    #[test]
    fn parallel_scans_share_one_helper_per_cpu() {
        let cap = cpus();
        let all = ScanHelpers::reserve(cap + 5);
        assert_eq!(all.count, cap);
        assert_eq!(ScanHelpers::reserve(3).count, 0);
        assert_eq!(ScanHelpers::reserve(0).count, 0);
        drop(all);
        let some = ScanHelpers::reserve(2);
        assert_eq!(some.count, cap.min(2));
        assert_eq!(ScanHelpers::reserve(cap).count, cap - some.count);
    }
}
