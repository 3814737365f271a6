//! CPU back end: rows split into blocks scanned in parallel (rayon), every
//! query of the batch scored against a block while it is in cache, with the
//! crate's SIMD dot kernel; per-thread top-k merged at the end.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::{RowMask, Rows};
use crate::kernels;
use crate::metric::sanitize;
use crate::search::Hit;

/// Rows per work item: 256 rows of 128 floats are 128 KiB, cache-resident
/// while every query of the batch passes over them.
const BLOCK_ROWS: usize = 256;

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

impl Job<'_> {
    #[inline]
    fn excluded(&self, q: usize, doc: u64) -> bool {
        self.exclude
            .is_some_and(|ex| ex[q].binary_search(&doc).is_ok())
    }
}

/// Heap entry whose maximum is the worst kept hit.
#[derive(Clone, Copy, Debug)]
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.doc.cmp(&other.0.doc))
    }
}

/// Bounded top-k: score descending, doc ascending.
#[derive(Clone, Debug)]
pub(crate) struct Collector {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl Collector {
    pub(crate) fn new(k: usize) -> Self {
        Collector {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    /// Whether `(score, doc)` would be kept.
    #[inline]
    pub(crate) fn wants(&self, score: f32, doc: u64) -> bool {
        if self.heap.len() < self.k {
            return self.k > 0;
        }
        match self.heap.peek() {
            Some(top) => Worst(Hit { doc, score }) < *top,
            None => false,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, score: f32, doc: u64) {
        if self.k == 0 {
            return;
        }
        let cand = Worst(Hit { doc, score });
        if self.heap.len() < self.k {
            self.heap.push(cand);
        } else if let Some(mut top) = self.heap.peek_mut() {
            if cand < *top {
                *top = cand;
            }
        }
    }

    fn merge(&mut self, other: Collector) {
        for w in other.heap {
            self.push(w.0.score, w.0.doc);
        }
    }

    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|w| w.0)
            .collect()
    }
}

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
            if col.wants(score, doc) && !job.excluded(qi, doc) {
                col.push(score, doc);
            }
        }
    }
}

/// Exact top-k of every query. Call inside the scorer's thread pool.
pub(crate) fn top_k(job: &Job<'_>) -> Vec<Vec<Hit>> {
    let blocks = job.rows.len().div_ceil(BLOCK_ROWS);
    let fresh = || -> Vec<Collector> { (0..job.count).map(|_| Collector::new(job.k)).collect() };
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
            if c.wants(s, doc) {
                c.push(s, doc);
            }
        }
        let hits = c.into_sorted();
        assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [7, 2]);
        assert!(!Collector::new(0).wants(1.0, 1));
    }
}
