//! CPU back end: rows split into blocks scanned in parallel (rayon), every
//! query of the batch scored against a block while it is in cache, with the
//! crate's SIMD dot kernel; per-thread top-k merged at the end.

use rayon::prelude::*;

use super::{RowMask, Rows};
use crate::kernels;
use crate::metric::sanitize;
use crate::search::Hit;

/// Rows per work item: 256 rows of 128 floats are 128 KiB, cache-resident
/// while every query of the batch passes over them.
pub(crate) const BLOCK_ROWS: usize = 256;

pub(crate) struct Job<'a> {
    pub rows: Rows<'a>,
    /// Weighted queries, row-major.
    pub queries: &'a [f32],
    pub count: usize,
    pub k: usize,
    pub allow: Option<&'a RowMask>,
    pub allow_each: Option<&'a [RowMask]>,
    /// Sorted, deduplicated.
    pub exclude: Option<&'a [Vec<u64>]>,
}

/// Queries scored together: every worker holds a top-k collector per query
/// of the pass (`k` hits each, up to 4,096), so a batch sized for the GPU
/// (8,192 queries) is scanned in passes of this many.
pub(crate) const MAX_PASS_QUERIES: usize = 256;

impl<'a> Job<'a> {
    /// Queries `start..end` of the job, as a job of their own.
    fn part(&self, start: usize, end: usize) -> Job<'a> {
        let d = self.rows.dim();
        Job {
            rows: self.rows,
            queries: &self.queries[start * d..end * d],
            count: end - start,
            k: self.k,
            allow: self.allow,
            allow_each: self.allow_each.map(|m| &m[start..end]),
            exclude: self.exclude.map(|e| &e[start..end]),
        }
    }

    #[inline]
    fn excluded(&self, q: usize, doc: u64) -> bool {
        self.exclude
            .is_some_and(|ex| ex[q].binary_search(&doc).is_ok())
    }
}

/// The scorer's per-query top-k is the index's collector.
pub(crate) type Collector = crate::search::TopK;

fn scan_block(job: &Job<'_>, block: usize, acc: &mut [Collector]) {
    let n = job.rows.len();
    let d = job.rows.dim();
    let r0 = block * BLOCK_ROWS;
    let r1 = (r0 + BLOCK_ROWS).min(n);
    for (qi, col) in acc.iter_mut().enumerate() {
        let q = &job.queries[qi * d..(qi + 1) * d];
        let own = job.allow_each.map(|m| &m[qi]);
        for r in r0..r1 {
            if job.allow.is_some_and(|m| !m.get(r)) || own.is_some_and(|m| !m.get(r)) {
                continue;
            }
            let score = sanitize(kernels::dot(q, job.rows.row(r)));
            let doc = job.rows.doc(r);
            if col.wants(doc, score) && !job.excluded(qi, doc) {
                col.push(doc, score);
            }
        }
    }
}

/// Exact top-k of every query: `parallel`, inside the scorer's thread
/// pool; otherwise block after block in the caller's thread.
pub(crate) fn top_k(job: &Job<'_>, parallel: bool) -> Vec<Vec<Hit>> {
    if job.count > MAX_PASS_QUERIES {
        return (0..job.count)
            .step_by(MAX_PASS_QUERIES)
            .flat_map(|s| {
                top_k(
                    &job.part(s, (s + MAX_PASS_QUERIES).min(job.count)),
                    parallel,
                )
            })
            .collect();
    }
    let blocks = job.rows.len().div_ceil(BLOCK_ROWS);
    let fresh = || -> Vec<Collector> { (0..job.count).map(|_| Collector::new(job.k)).collect() };
    if !parallel {
        let mut acc = fresh();
        for block in 0..blocks {
            scan_block(job, block, &mut acc);
        }
        return acc.into_iter().map(Collector::into_sorted).collect();
    }
    let merged = (0..blocks)
        .into_par_iter()
        .fold(fresh, |mut acc, block| {
            scan_block(job, block, &mut acc);
            acc
        })
        .reduce_with(|mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        })
        .unwrap_or_else(fresh);
    merged.into_iter().map(Collector::into_sorted).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_orders_and_bounds() {
        let mut c = Collector::new(2);
        for (doc, s) in [(4, 1.0), (2, 1.0), (9, 0.5), (7, 2.0)] {
            if c.wants(doc, s) {
                c.push(doc, s);
            }
        }
        let hits = c.into_sorted();
        assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [7, 2]);
        assert!(!Collector::new(0).wants(1, 1.0));
    }
}
