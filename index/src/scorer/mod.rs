//! Exact batch scoring: the [`Scorer`], with a multi-threaded SIMD CPU back
//! end (the reference) and, behind the `cuda` feature, a GPU back end
//! (cuBLAS sgemm for the scores, an NVRTC-compiled per-block partial top-k and
//! merge for the selection).
//!
//! Scores are inner products of the (optionally group-weighted) query with
//! each row, higher is better, NaN mapped to `-inf` and `-0.0` to `0.0`, the
//! same as every other Vitrine index. Under cosine, pass normalised rows and
//! queries. Results are sorted by score descending, ties by doc ascending, on
//! both back ends.
//!
//! **CPU and GPU agreement.** The GPU computes each dot product with a
//! different summation order (cuBLAS) than the CPU (16 lanes, FMA), so scores
//! may differ in the last bits (well under 1e-5 for unit vectors). Exact ties
//! are broken identically (doc ascending, on the device too), so the only
//! permitted difference between the back ends is the order, or the presence
//! at the k-th place, of hits whose scores are equal up to that rounding.
//!
//! ```
//! use vitrine_index::{QueryBatch, Rows, Scorer, ScorerChoice, ScorerOptions};
//!
//! let data = [1.0, 0.0, /**/ 0.0, 1.0, /**/ 0.7, 0.7];
//! let rows = Rows::new(2, &data)?.with_docs(&[10, 20, 30])?;
//! let scorer = Scorer::new(ScorerChoice::Cpu, ScorerOptions::default())?;
//! let hits = scorer.top_k(rows, &QueryBatch::new(&[1.0, 0.1], 2))?;
//! assert_eq!(hits[0].iter().map(|h| h.doc).collect::<Vec<_>>(), [10, 30]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cpu;
#[cfg(feature = "cuda")]
mod gpu;
mod similar_file;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::flat::{check_dim, FlatIndex};
use crate::search::{AllowSet, Hit, VectorIndex};

pub use similar_file::{
    check_similar_destination, create_temp_beside, write_similar_file, PrecomputedSimilar,
    SimilarFileError, SIMILAR_FORMAT_VERSION, SIMILAR_MAGIC,
};

#[cfg(feature = "cuda")]
pub use gpu::GpuInfo;

/// [`ScorerChoice::Auto`] threshold: the GPU is used when `queries in the
/// batch × rows scanned` is at least this.
///
/// Measured on an H200 against its host's 16 CPU threads (`scripts/gpu-check.sh`,
/// rows resident on the device, 128 dimensions, k = 10): a GPU call costs a
/// fixed ~38 µs; at 1,024 × 1 the GPU answered in 38 µs and the CPU in 57 µs,
/// at 16,384 × 1 in 64 µs against 112 µs, at 65,536 × 1 in 66 µs against
/// 425 µs. The threshold sits where the GPU is clearly ahead even of a large
/// CPU; a host with fewer cores only moves the crossover lower.
pub const AUTO_GPU_MIN_WORK: u64 = 1 << 14;

/// The most candidates per query the GPU top-k keeps: `k` plus the longest
/// exclusion list of a batch (excluded rows are fetched, then dropped). A
/// larger batch is refused by [`ScorerChoice::Gpu`] and answered by the CPU
/// under [`ScorerChoice::Auto`], without an upload first.
pub const GPU_MAX_K: usize = 2048;

/// The most CPU threads a [`Scorer`] starts ([`ScorerOptions::threads`]
/// above it is taken as this).
pub const MAX_SCORER_THREADS: usize = 256;

/// Which back end scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ScorerChoice {
    /// The GPU when the `cuda` feature is on, a device is usable and the work
    /// is past [`ScorerOptions::auto_gpu_min_work`]; the CPU otherwise. Every
    /// fallback is logged (`tracing`), never an error.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// Always the GPU; [`Scorer::new`] fails with
    /// [`ScorerError::GpuUnavailable`] when there is none, and a batch
    /// keeping more than [`GPU_MAX_K`] candidates per query is refused.
    Gpu,
}

/// The back end that ran (or would run) a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Multi-threaded SIMD scan.
    Cpu,
    /// cuBLAS + NVRTC top-k.
    Gpu,
}

/// Errors of the scorer. Never a panic: CUDA failures are wrapped here too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScorerError {
    /// The GPU back end cannot be used (no feature, no driver, no device,
    /// missing cuBLAS/NVRTC, kernel compilation failed).
    #[error("GPU scorer unavailable: {reason}")]
    GpuUnavailable {
        /// Why.
        reason: String,
    },
    /// A CUDA call failed after the GPU was set up.
    #[error("GPU error during {op}: {message}")]
    Gpu {
        /// What was being done.
        op: &'static str,
        /// The CUDA error.
        message: String,
    },
    /// A request argument is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

impl ScorerError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ScorerError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

type Result<T, E = ScorerError> = std::result::Result<T, E>;

/// Settings of a [`Scorer`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScorerOptions {
    /// CPU threads; `0` means one per available CPU. At most
    /// [`MAX_SCORER_THREADS`], and fewer when the process cannot start as
    /// many (none: one scan in the caller's thread).
    pub threads: usize,
    /// [`ScorerChoice::Auto`] uses the GPU from this many row-queries per call.
    pub auto_gpu_min_work: u64,
    /// CUDA device ordinal.
    pub gpu_device: usize,
    /// Fraction of the device's free memory the scorer takes for rows and
    /// scores; rows are streamed in chunks when they do not fit. The top-k
    /// buffers come on top: up to about a sixth more of it at k near
    /// [`GPU_MAX_K`], so keep it at 0.85 or below.
    pub gpu_memory_fraction: f64,
    /// GPU batches of up to this many queries are scored by Vitrine's own
    /// scan kernel (one pass over the rows per 4 queries); larger ones by
    /// cuBLAS sgemm. `0` always uses sgemm. Default
    /// [`GPU_SCAN_KERNEL_MAX_BATCH`].
    pub gpu_scan_kernel_max_batch: usize,
}

/// Default of [`ScorerOptions::gpu_scan_kernel_max_batch`]. For small
/// batches sgemm pads the query dimension to its tile width and stops being
/// memory-bound.
pub const GPU_SCAN_KERNEL_MAX_BATCH: usize = 4;

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            threads: 0,
            auto_gpu_min_work: AUTO_GPU_MIN_WORK,
            gpu_device: 0,
            gpu_memory_fraction: 0.8,
            gpu_scan_kernel_max_batch: GPU_SCAN_KERNEL_MAX_BATCH,
        }
    }
}

/// A borrowed row-major matrix of `len × dim` floats, with an optional doc id
/// per row (row `i` is doc `i` when none are given).
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    dim: usize,
    data: &'a [f32],
    docs: Option<&'a [u64]>,
}

impl<'a> Rows<'a> {
    /// Rows of `dim` floats; `data.len()` must be a multiple of `dim`.
    pub fn new(dim: usize, data: &'a [f32]) -> Result<Self> {
        check_dim(dim).map_err(|e| ScorerError::invalid("dim", e.to_string()))?;
        if data.len() / dim * dim != data.len() {
            return Err(ScorerError::invalid(
                "rows",
                format!("{} floats is not a multiple of dim {dim}", data.len()),
            ));
        }
        if data.len() / dim >= u32::MAX as usize {
            return Err(ScorerError::invalid("rows", "at most 2^32 - 2 rows"));
        }
        Ok(Rows {
            dim,
            data,
            docs: None,
        })
    }

    /// Gives each row a doc id (reported in [`Hit::doc`] and used for tie-breaks).
    pub fn with_docs(mut self, docs: &'a [u64]) -> Result<Self> {
        if docs.len() != self.len() {
            return Err(ScorerError::invalid(
                "docs",
                format!("{} docs for {} rows", docs.len(), self.len()),
            ));
        }
        // A doc twice would be a hit twice (and, on the GPU, take two of
        // the slots fetched per excluded doc).
        let mut sorted = docs.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ScorerError::invalid(
                "docs",
                format!("doc {} is given to two rows", w[0]),
            ));
        }
        self.docs = Some(docs);
        Ok(self)
    }

    /// Floats per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i`. Panics if out of range.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Doc id of row `i`. Panics if out of range.
    #[inline]
    pub fn doc(&self, i: usize) -> u64 {
        match self.docs {
            Some(d) => d[i],
            None => i as u64,
        }
    }

    /// All floats, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}

/// An owned row-major matrix with doc ids, e.g. copied out of a
/// [`FlatIndex`] or an arena.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowMatrix {
    dim: usize,
    data: Vec<f32>,
    docs: Vec<u64>,
    /// Refuses a doc given twice, as [`Rows::with_docs`] does.
    seen: std::collections::HashSet<u64>,
}

impl RowMatrix {
    /// An empty matrix of `dim` columns.
    pub fn new(dim: usize) -> Result<Self> {
        check_dim(dim).map_err(|e| ScorerError::invalid("dim", e.to_string()))?;
        Ok(RowMatrix {
            dim,
            data: Vec::new(),
            docs: Vec::new(),
            seen: Default::default(),
        })
    }

    /// Collects `(doc, vector)` rows (e.g. `FlatIndex::iter()`, `ArenaView::iter()`).
    pub fn from_rows<'v>(
        dim: usize,
        rows: impl IntoIterator<Item = (u64, &'v [f32])>,
    ) -> Result<Self> {
        let mut m = RowMatrix::new(dim)?;
        for (doc, v) in rows {
            m.push(doc, v)?;
        }
        Ok(m)
    }

    /// Copies the (normalised, for cosine) rows of a [`FlatIndex`].
    pub fn from_flat(index: &FlatIndex) -> Result<Self> {
        Self::from_rows(index.dim(), index.iter())
    }

    /// Appends a row.
    pub fn push(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(ScorerError::invalid(
                "row",
                format!("doc {doc} has {} floats, dim is {}", v.len(), self.dim),
            ));
        }
        if !self.seen.insert(doc) {
            return Err(ScorerError::invalid(
                "row",
                format!("doc {doc} is given to two rows"),
            ));
        }
        self.data.extend_from_slice(v);
        self.docs.push(doc);
        Ok(())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// A borrowed view.
    pub fn rows(&self) -> Rows<'_> {
        Rows {
            dim: self.dim,
            data: &self.data,
            docs: Some(&self.docs),
        }
    }
}

/// Query-side weights of component groups: a weighted query is
/// `[w_1 q_1 | w_2 q_2 | ...]` where `q_g` is the query restricted to
/// `ranges[g]`. Components outside every range keep weight 1.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupWeights {
    ranges: Vec<Range<usize>>,
    weights: Vec<f32>,
}

impl GroupWeights {
    /// Ranges must be non-empty, increasing and disjoint; weights finite.
    pub fn new(ranges: Vec<Range<usize>>, weights: Vec<f32>) -> Result<Self> {
        if ranges.len() != weights.len() {
            return Err(ScorerError::invalid(
                "weights",
                format!("{} ranges but {} weights", ranges.len(), weights.len()),
            ));
        }
        let mut end = 0;
        for r in &ranges {
            if r.start >= r.end || r.start < end {
                return Err(ScorerError::invalid(
                    "weights",
                    format!("range {r:?} is empty, or overlaps or precedes the previous one"),
                ));
            }
            end = r.end;
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(ScorerError::invalid(
                "weights",
                format!("weight {w} is not finite"),
            ));
        }
        Ok(GroupWeights { ranges, weights })
    }

    /// Consecutive blocks of `block` components, one weight each.
    pub fn blocks(block: usize, weights: Vec<f32>) -> Result<Self> {
        if block == 0 {
            return Err(ScorerError::invalid("weights", "block size 0"));
        }
        if block.checked_mul(weights.len()).is_none() {
            return Err(ScorerError::invalid(
                "weights",
                format!("{} blocks of {block} overflow", weights.len()),
            ));
        }
        let ranges = (0..weights.len())
            .map(|g| g * block..(g + 1) * block)
            .collect();
        Self::new(ranges, weights)
    }

    /// The groups.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// The weights.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The weighted copy of `q` (ranges past `q.len()` are refused by validation).
    pub fn apply(&self, q: &[f32]) -> Vec<f32> {
        let mut out = q.to_vec();
        for (r, &w) in self.ranges.iter().zip(&self.weights) {
            for x in &mut out[r.start.min(q.len())..r.end.min(q.len())] {
                *x *= w;
            }
        }
        out
    }

    fn check(&self, dim: usize) -> Result<()> {
        match self.ranges.last() {
            Some(r) if r.end > dim => Err(ScorerError::invalid(
                "weights",
                format!("range {r:?} exceeds dim {dim}"),
            )),
            _ => Ok(()),
        }
    }
}

/// A set of allowed rows (by row position), as a bitset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowMask {
    len: usize,
    words: Vec<u64>,
}

impl RowMask {
    /// Every one of `len` rows allowed.
    pub fn all(len: usize) -> Self {
        Self::from_fn(len, |_| true)
    }

    /// None of `len` rows allowed.
    pub fn none(len: usize) -> Self {
        RowMask {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Row `i` allowed when `f(i)`.
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> bool) -> Self {
        let mut m = Self::none(len);
        for i in 0..len {
            if f(i) {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        m
    }

    /// The rows of `rows` whose doc is in `allow`.
    pub fn from_allow_set(rows: &Rows<'_>, allow: &AllowSet) -> Self {
        Self::from_fn(rows.len(), |i| allow.contains(rows.doc(i)))
    }

    /// Number of rows covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it covers no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether row `i` is allowed (false past the end).
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Allows or forbids row `i`. Panics past the end.
    pub fn set(&mut self, i: usize, allowed: bool) {
        assert!(i < self.len, "row {i} out of {}", self.len);
        if allowed {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Number of allowed rows.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Rows allowed by both.
    pub fn and(&self, other: &RowMask) -> RowMask {
        RowMask {
            len: self.len.min(other.len),
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
}

/// A batch of queries and what to return for each.
#[derive(Clone, Copy, Debug)]
pub struct QueryBatch<'a> {
    queries: &'a [f32],
    k: usize,
    weights: Option<&'a GroupWeights>,
    allow: Option<&'a RowMask>,
    allow_each: Option<&'a [RowMask]>,
    exclude_each: Option<&'a [Vec<u64>]>,
}

impl<'a> QueryBatch<'a> {
    /// The `k` best rows for each query; `queries` is row-major, `dim` per query.
    pub fn new(queries: &'a [f32], k: usize) -> Self {
        QueryBatch {
            queries,
            k,
            weights: None,
            allow: None,
            allow_each: None,
            exclude_each: None,
        }
    }

    /// Weighs component groups of every query.
    pub fn weights(mut self, weights: &'a GroupWeights) -> Self {
        self.weights = Some(weights);
        self
    }

    /// Only rows in `mask`, for every query.
    pub fn allow(mut self, mask: &'a RowMask) -> Self {
        self.allow = Some(mask);
        self
    }

    /// Only rows in `masks[i]` for query `i` (combined with [`allow`](Self::allow)).
    pub fn allow_each(mut self, masks: &'a [RowMask]) -> Self {
        self.allow_each = Some(masks);
        self
    }

    /// Never return the docs in `exclude[i]` for query `i`.
    pub fn exclude_each(mut self, exclude: &'a [Vec<u64>]) -> Self {
        self.exclude_each = Some(exclude);
        self
    }

    /// Hits wanted per query.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of queries, given the rows' dimension.
    fn count(&self, dim: usize) -> Result<usize> {
        if self.queries.len() / dim * dim != self.queries.len() {
            return Err(ScorerError::invalid(
                "queries",
                format!(
                    "{} floats is not a multiple of dim {dim}",
                    self.queries.len()
                ),
            ));
        }
        Ok(self.queries.len() / dim)
    }

    fn validate(&self, rows: &Rows<'_>) -> Result<usize> {
        let b = self.count(rows.dim())?;
        if let Some(i) = self.queries.iter().position(|x| !x.is_finite()) {
            return Err(ScorerError::invalid(
                "queries",
                format!("component {i} is {}", self.queries[i]),
            ));
        }
        if let Some(w) = self.weights {
            w.check(rows.dim())?;
            // Finite parts can overflow once weighted.
            let weighted = self.prepared(rows.dim());
            if let Some(i) = weighted.iter().position(|x| !x.is_finite()) {
                return Err(ScorerError::invalid(
                    "weights",
                    format!("weighted query component {i} is {}", weighted[i]),
                ));
            }
        }
        let n = rows.len();
        if let Some(m) = self.allow {
            if m.len() != n {
                return Err(ScorerError::invalid(
                    "allow",
                    format!("mask of {} rows for {n} rows", m.len()),
                ));
            }
        }
        if let Some(ms) = self.allow_each {
            if ms.len() != b || ms.iter().any(|m| m.len() != n) {
                return Err(ScorerError::invalid(
                    "allow_each",
                    format!("needs {b} masks of {n} rows"),
                ));
            }
        }
        if let Some(ex) = self.exclude_each {
            if ex.len() != b {
                return Err(ScorerError::invalid(
                    "exclude_each",
                    format!("{} lists for {b} queries", ex.len()),
                ));
            }
        }
        Ok(b)
    }

    /// Queries with the weights applied.
    fn prepared(&self, dim: usize) -> Cow<'a, [f32]> {
        match self.weights {
            None => Cow::Borrowed(self.queries),
            Some(w) => Cow::Owned(
                self.queries
                    .chunks_exact(dim)
                    .flat_map(|q| w.apply(q))
                    .collect(),
            ),
        }
    }

    /// Exclusion lists, sorted for binary search.
    /// Whether the GPU top-k can hold this batch's candidates ([`GPU_MAX_K`])
    /// over `rows` rows.
    fn fits_gpu(&self, rows: usize) -> bool {
        let longest = self
            .exclude_each
            .map_or(0, |ex| ex.iter().map(Vec::len).max().unwrap_or(0));
        self.k.saturating_add(longest).min(rows) <= GPU_MAX_K
    }

    fn sorted_exclusions(&self) -> Option<Vec<Vec<u64>>> {
        self.exclude_each.map(|ex| {
            ex.iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.sort_unstable();
                    e.dedup();
                    e
                })
                .collect()
        })
    }
}

/// The most queries [`LoadedRows::similar_all`] sends the scorer at once
/// (the GPU's batch); a larger [`AllPairsOptions::batch`] is cut to it.
pub const MAX_ALL_PAIRS_BATCH: usize = 8192;

/// Options of [`LoadedRows::similar_all`].
#[derive(Clone, Copy, Default)]
pub struct AllPairsOptions<'a> {
    /// Hits per row.
    pub k: usize,
    /// Queries per scorer call; `0` picks one for the back end. At most
    /// [`MAX_ALL_PAIRS_BATCH`].
    pub batch: usize,
    /// Only these rows are candidates (every row is still a query).
    pub allow: Option<&'a RowMask>,
    /// Docs never returned for the query of row `i`, besides the row's own doc.
    pub exclude: Option<&'a dyn Fn(usize) -> Vec<u64>>,
}

impl std::fmt::Debug for AllPairsOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllPairsOptions")
            .field("k", &self.k)
            .field("batch", &self.batch)
            .field("allow", &self.allow.map(RowMask::count))
            .field("exclude", &self.exclude.is_some())
            .finish()
    }
}

/// The exact scorer. `Send + Sync`; cheap to share behind an `Arc`.
pub struct Scorer {
    choice: ScorerChoice,
    options: ScorerOptions,
    pool: Option<Arc<rayon::ThreadPool>>,
    fallback_logged: AtomicBool,
    /// Whether a GPU failure (not an absent GPU) was warned about.
    failure_logged: AtomicBool,
    #[cfg(feature = "cuda")]
    gpu: std::sync::OnceLock<std::result::Result<Arc<gpu::GpuScorer>, String>>,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("choice", &self.choice)
            .field("options", &self.options)
            .finish()
    }
}

impl Default for Scorer {
    fn default() -> Self {
        Scorer::cpu(0)
    }
}

impl Scorer {
    /// A scorer for `choice`. [`ScorerChoice::Gpu`] sets the device up now
    /// and fails with [`ScorerError::GpuUnavailable`] when it cannot (always,
    /// in a build without the `cuda` feature); `Auto` sets it up on the first
    /// call large enough to want it.
    pub fn new(choice: ScorerChoice, options: ScorerOptions) -> Result<Self> {
        if !(options.gpu_memory_fraction > 0.0 && options.gpu_memory_fraction <= 1.0) {
            return Err(ScorerError::invalid(
                "gpu_memory_fraction",
                format!("{} not in (0, 1]", options.gpu_memory_fraction),
            ));
        }
        let threads = if options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.threads
        };
        // Fewer threads when the process cannot start as many (at its
        // thread limit); none, and one scan in the caller's thread, when
        // it cannot start one. Never rayon's global pool: started under the
        // same shortage it panics, and stays broken for the whole process.
        let mut want = threads.clamp(1, MAX_SCORER_THREADS);
        let pool = loop {
            match rayon::ThreadPoolBuilder::new()
                .num_threads(want)
                .thread_name(|i| format!("vitrine-scorer-{i}"))
                .build()
            {
                Ok(p) => break Some(Arc::new(p)),
                Err(e) if want > 1 => {
                    tracing::warn!(error = %e, threads = want, "scorer thread pool not created; trying half as many");
                    want /= 2;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scorer thread pool not created; scoring in the caller's thread");
                    break None;
                }
            }
        };
        let scorer = Scorer {
            choice,
            options,
            pool,
            fallback_logged: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
            #[cfg(feature = "cuda")]
            gpu: std::sync::OnceLock::new(),
        };
        if choice == ScorerChoice::Gpu {
            scorer.gpu()?;
        }
        Ok(scorer)
    }

    /// A CPU scorer with `threads` threads (`0`: one per CPU).
    pub fn cpu(threads: usize) -> Self {
        let options = ScorerOptions {
            threads,
            ..ScorerOptions::default()
        };
        // Only the memory fraction can be refused, and the default is valid.
        Scorer::new(ScorerChoice::Cpu, options).unwrap_or_else(|_| Scorer {
            choice: ScorerChoice::Cpu,
            options: ScorerOptions::default(),
            pool: None,
            fallback_logged: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
            #[cfg(feature = "cuda")]
            gpu: std::sync::OnceLock::new(),
        })
    }

    /// The choice it was made with.
    pub fn choice(&self) -> ScorerChoice {
        self.choice
    }

    /// Its options.
    pub fn options(&self) -> &ScorerOptions {
        &self.options
    }

    /// Whether a GPU is usable (sets it up on first call). Always false
    /// without the `cuda` feature and for [`ScorerChoice::Cpu`].
    pub fn gpu_available(&self) -> bool {
        self.choice != ScorerChoice::Cpu && self.gpu().is_ok()
    }

    /// Device name, memory and bandwidth figures.
    #[cfg(feature = "cuda")]
    pub fn gpu_info(&self) -> Result<GpuInfo> {
        Ok(self.gpu()?.info().clone())
    }

    /// Measures device-to-device copy bandwidth (bytes read + written per
    /// second) over `bytes`, the practical ceiling for scan throughput.
    #[cfg(feature = "cuda")]
    pub fn gpu_copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        self.gpu()?.copy_bandwidth(bytes)
    }

    #[cfg(feature = "cuda")]
    fn gpu(&self) -> Result<Arc<gpu::GpuScorer>> {
        let r = self.gpu.get_or_init(|| {
            gpu::GpuScorer::new(
                self.options.gpu_device,
                self.options.gpu_memory_fraction,
                self.options.gpu_scan_kernel_max_batch,
            )
            .map(Arc::new)
            .map_err(|e| match e {
                ScorerError::GpuUnavailable { reason } => reason,
                other => other.to_string(),
            })
        });
        match r {
            Ok(g) => Ok(g.clone()),
            Err(reason) => Err(ScorerError::GpuUnavailable {
                reason: reason.clone(),
            }),
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn gpu(&self) -> Result<()> {
        Err(ScorerError::GpuUnavailable {
            reason: "built without the cuda feature".into(),
        })
    }

    /// Binds rows to this scorer. On the GPU they are uploaded once, on the
    /// first call that runs there, and stay resident while the
    /// [`LoadedRows`] lives (when they fit; else they are streamed in chunks).
    pub fn load<'a>(&'a self, rows: Rows<'a>) -> LoadedRows<'a> {
        LoadedRows {
            scorer: self,
            rows,
            #[cfg(feature = "cuda")]
            device: std::sync::OnceLock::new(),
        }
    }

    /// One-off [`LoadedRows::top_k`]. On the GPU this uploads every row
    /// first, a cost [`AUTO_GPU_MIN_WORK`] does not count (it was measured
    /// with the rows resident): for several batches over the same rows,
    /// [`load`](Self::load) them once.
    pub fn top_k(&self, rows: Rows<'_>, batch: &QueryBatch<'_>) -> Result<Vec<Vec<Hit>>> {
        self.load(rows).top_k(batch)
    }

    /// Runs `f` in the scorer's pool (in the caller's thread when there is
    /// none: `f` must not use rayon then).
    fn run_cpu<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    fn log_fallback(&self, reason: &str, work: u64) {
        if !self.fallback_logged.swap(true, Ordering::Relaxed) {
            tracing::info!(reason, work, "Auto scorer falls back to the CPU");
        } else {
            tracing::debug!(reason, work, "Auto scorer falls back to the CPU");
        }
    }
}

/// Rows bound to a [`Scorer`] (see [`Scorer::load`]).
pub struct LoadedRows<'a> {
    scorer: &'a Scorer,
    rows: Rows<'a>,
    #[cfg(feature = "cuda")]
    device: std::sync::OnceLock<std::result::Result<gpu::DeviceRows, String>>,
}

impl std::fmt::Debug for LoadedRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedRows")
            .field("dim", &self.rows.dim())
            .field("len", &self.rows.len())
            .finish()
    }
}

impl<'a> LoadedRows<'a> {
    /// The rows.
    pub fn rows(&self) -> Rows<'a> {
        self.rows
    }

    /// The back end a batch of `queries` queries would run on (sets the GPU
    /// up under `Auto` when the work is large enough to ask).
    pub fn backend_for(&self, queries: usize) -> Backend {
        let work = queries as u64 * self.rows.len() as u64;
        match self.scorer.choice {
            ScorerChoice::Cpu => Backend::Cpu,
            ScorerChoice::Gpu => Backend::Gpu,
            ScorerChoice::Auto => {
                if work >= self.scorer.options.auto_gpu_min_work && self.scorer.gpu_available() {
                    Backend::Gpu
                } else {
                    Backend::Cpu
                }
            }
        }
    }

    /// The exact top `batch.k()` rows for each query, best first (score
    /// descending, doc ascending).
    pub fn top_k(&self, batch: &QueryBatch<'_>) -> Result<Vec<Vec<Hit>>> {
        Ok(self.top_k_with_backend(batch)?.0)
    }

    /// [`top_k`](Self::top_k), also saying which back end answered.
    pub fn top_k_with_backend(&self, batch: &QueryBatch<'_>) -> Result<(Vec<Vec<Hit>>, Backend)> {
        let b = batch.validate(&self.rows)?;
        if b == 0 || batch.k == 0 || self.rows.is_empty() {
            return Ok((vec![Vec::new(); b], Backend::Cpu));
        }
        let work = b as u64 * self.rows.len() as u64;
        match self.scorer.choice {
            ScorerChoice::Cpu => Ok((self.cpu(batch, b), Backend::Cpu)),
            ScorerChoice::Gpu => Ok((self.gpu(batch, b)?, Backend::Gpu)),
            ScorerChoice::Auto => {
                if work < self.scorer.options.auto_gpu_min_work {
                    return Ok((self.cpu(batch, b), Backend::Cpu));
                }
                if !batch.fits_gpu(self.rows.len()) {
                    if self.scorer.gpu_available() {
                        self.scorer
                            .log_fallback("k plus the exclusions exceed GPU_MAX_K", work);
                    }
                    return Ok((self.cpu(batch, b), Backend::Cpu));
                }
                match self.gpu(batch, b) {
                    Ok(hits) => Ok((hits, Backend::Gpu)),
                    Err(e) => {
                        if matches!(e, ScorerError::GpuUnavailable { .. }) {
                            self.scorer.log_fallback(&e.to_string(), work);
                        } else if !self.scorer.failure_logged.swap(true, Ordering::Relaxed) {
                            // A failed upload is cached, and met by every
                            // later batch: one warning.
                            tracing::warn!(error = %e, work, "GPU scoring failed; the CPU answers");
                        } else {
                            tracing::debug!(error = %e, work, "GPU scoring failed; the CPU answers");
                        }
                        Ok((self.cpu(batch, b), Backend::Cpu))
                    }
                }
            }
        }
    }

    fn cpu(&self, batch: &QueryBatch<'_>, b: usize) -> Vec<Vec<Hit>> {
        let queries = batch.prepared(self.rows.dim());
        let exclude = batch.sorted_exclusions();
        let job = self.job(batch, b, &queries, exclude.as_deref());
        let parallel = self.scorer.pool.is_some();
        self.scorer.run_cpu(|| cpu::top_k(&job, parallel))
    }

    #[cfg(not(feature = "cuda"))]
    fn gpu(&self, _batch: &QueryBatch<'_>, _b: usize) -> Result<Vec<Vec<Hit>>> {
        self.scorer.gpu().map(|_| Vec::new())
    }

    #[cfg(feature = "cuda")]
    fn gpu(&self, batch: &QueryBatch<'_>, b: usize) -> Result<Vec<Vec<Hit>>> {
        let g = self.scorer.gpu()?;
        let device = self
            .device
            .get_or_init(|| g.upload(&self.rows).map_err(|e| e.to_string()));
        let device = device.as_ref().map_err(|m| ScorerError::Gpu {
            op: "uploading rows",
            message: m.clone(),
        })?;
        let queries = batch.prepared(self.rows.dim());
        let exclude = batch.sorted_exclusions();
        g.top_k(device, &self.job(batch, b, &queries, exclude.as_deref()))
    }

    /// The back-end-neutral description of one batch.
    fn job<'j>(
        &'j self,
        batch: &QueryBatch<'j>,
        count: usize,
        queries: &'j [f32],
        exclude: Option<&'j [Vec<u64>]>,
    ) -> cpu::Job<'j> {
        cpu::Job {
            rows: self.rows,
            queries,
            count,
            k: batch.k,
            allow: batch.allow,
            allow_each: batch.allow_each,
            exclude,
        }
    }

    /// For every row, its top `k` other rows: the catalog-wide "similar
    /// items" job. Each row is a query; its own doc is never returned, nor
    /// those `options.exclude` names, and only `options.allow` rows are
    /// candidates. Runs in batches through [`top_k`](Self::top_k).
    pub fn similar_all(&self, options: &AllPairsOptions<'_>) -> Result<Vec<Vec<Hit>>> {
        Ok(self.similar_all_with_backend(options)?.0)
    }

    /// [`similar_all`](Self::similar_all), also saying which back end
    /// answered: [`Backend::Gpu`] only when it answered every batch.
    pub fn similar_all_with_backend(
        &self,
        options: &AllPairsOptions<'_>,
    ) -> Result<(Vec<Vec<Hit>>, Backend)> {
        let n = self.rows.len();
        let d = self.rows.dim();
        // Each query also fetches its own row and exclusions (GPU_MAX_K);
        // the CPU's batches stay small.
        let gpu_k = options.k.saturating_add(1) <= GPU_MAX_K;
        let batch = match options.batch {
            0 => match self.backend_for(n.min(MAX_ALL_PAIRS_BATCH)) {
                Backend::Gpu if gpu_k => MAX_ALL_PAIRS_BATCH,
                _ => 256,
            },
            // Results are collected per query (and per CPU worker) before a
            // batch ends: a caller's batch is capped at the GPU's own.
            b => b.min(MAX_ALL_PAIRS_BATCH),
        };
        let mut out = Vec::with_capacity(n);
        let mut all_gpu = n > 0;
        let mut start = 0;
        while start < n {
            let end = (start + batch).min(n);
            let exclude: Vec<Vec<u64>> = (start..end)
                .map(|i| {
                    let mut e = options.exclude.map(|f| f(i)).unwrap_or_default();
                    e.push(self.rows.doc(i));
                    e
                })
                .collect();
            let mut q = QueryBatch::new(&self.rows.data()[start * d..end * d], options.k)
                .exclude_each(&exclude);
            if let Some(a) = options.allow {
                q = q.allow(a);
            }
            let (hits, backend) = self.top_k_with_backend(&q)?;
            tracing::debug!(start, end, n, ?backend, "similar_all batch");
            all_gpu &= backend == Backend::Gpu;
            out.extend(hits);
            start = end;
        }
        let backend = if all_gpu { Backend::Gpu } else { Backend::Cpu };
        Ok((out, backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn group_weights_validate() {
        assert!(GroupWeights::new(vec![0..2, 1..3], vec![1.0, 1.0]).is_err());
        assert!(GroupWeights::new(vec![0..2], vec![f32::NAN]).is_err());
        assert!(GroupWeights::new(vec![0..2], vec![]).is_err());
        let w = GroupWeights::blocks(2, vec![2.0, 0.5]).unwrap();
        assert_eq!(
            w.apply(&[1.0, 1.0, 1.0, 1.0, 1.0]),
            [2.0, 2.0, 0.5, 0.5, 1.0]
        );
    }

    #[test]
    fn row_mask_bits() {
        let mut m = RowMask::from_fn(130, |i| i % 3 == 0);
        assert_eq!(m.count(), 44);
        assert!(m.get(129) && !m.get(128) && !m.get(500));
        m.set(128, true);
        assert!(m.get(128));
        assert_eq!(m.and(&RowMask::none(130)).count(), 0);
    }

    /// A scorer whose pool could not start scans in the caller's thread
    /// (never rayon's global pool), block after block, to the same answer.
    #[test]
    fn a_scorer_without_a_pool_scans_in_the_callers_thread() {
        let dim = 5;
        let n = 3 * cpu::BLOCK_ROWS + 17;
        let data: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
            .collect();
        let queries: Vec<f32> = data[..4 * dim].to_vec();
        let rows = Rows::new(dim, &data).unwrap();
        let batch = QueryBatch::new(&queries, 25);
        let pooled = Scorer::cpu(3).top_k(rows, &batch).unwrap();
        let mut alone = Scorer::cpu(3);
        alone.pool = None;
        let main = std::thread::current().id();
        let got = alone.run_cpu(|| (std::thread::current().id(), ()));
        assert_eq!(got.0, main);
        assert_eq!(alone.top_k(rows, &batch).unwrap(), pooled);
    }
}
