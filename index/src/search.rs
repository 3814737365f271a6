//! Search types shared by all indexes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::config::MAX_EF;
use crate::error::{Error, Result};
use crate::metric::Metric;

/// One search result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Document id.
    pub doc: u64,
    /// Similarity under the index's [`Metric`]; higher is better.
    pub score: f32,
}

/// Caller's preference for how a search is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PlanHint {
    /// Let the planner decide from the filter's size (see [`PlannerConfig`](crate::PlannerConfig));
    /// a `k` of all the allowed vectors, or above 4,096 (the widest beam), is exact.
    #[default]
    Auto,
    /// Always scan the allowed vectors exactly.
    Exact,
    /// Use the graph: exact only when the graph returns too few hits, or
    /// for a `k` above 4,096 (the widest beam).
    Graph,
}

/// How a search was actually executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Plan {
    /// Exact scan over the allowed vectors.
    Exact,
    /// HNSW graph search, re-scored exactly.
    Graph,
}

/// Per-query options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    /// Number of hits wanted. `0` returns nothing; more than available returns all.
    pub k: usize,
    /// Graph candidate list size; `None` uses the index's `ef_search`. Valid: `1..=4096`.
    pub ef: Option<usize>,
    /// Plan preference.
    pub plan: PlanHint,
}

impl SearchOptions {
    /// Options for the `k` best hits, default `ef` and automatic planning.
    pub fn new(k: usize) -> Self {
        SearchOptions {
            k,
            ef: None,
            plan: PlanHint::Auto,
        }
    }

    /// Sets the plan preference.
    pub fn with_plan(mut self, plan: PlanHint) -> Self {
        self.plan = plan;
        self
    }

    /// Sets the graph candidate list size.
    pub fn with_ef(mut self, ef: usize) -> Self {
        self.ef = Some(ef);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(ef) = self.ef {
            if !(1..=MAX_EF).contains(&ef) {
                return Err(Error::invalid("ef", format!("{ef} not in 1..={MAX_EF}")));
            }
        }
        Ok(())
    }
}

/// Result of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOutput {
    /// Hits sorted by score descending, ties by doc ascending. (Under
    /// [`Plan::Graph`], among the candidates the graph found: of many equal
    /// scores at the k-th place, which make the cut can differ from an
    /// exact scan's.)
    pub hits: Vec<Hit>,
    /// Plan that produced them.
    pub plan: Plan,
}

/// Common interface of Vitrine's vector indexes.
pub trait VectorIndex: Send + Sync {
    /// Number of components per vector.
    fn dim(&self) -> usize;
    /// Similarity metric.
    fn metric(&self) -> Metric;
    /// Number of live vectors.
    fn len(&self) -> usize;
    /// Whether the index holds no live vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inserts or replaces the vector of `doc`.
    fn upsert(&mut self, doc: u64, v: &[f32]) -> Result<()>;
    /// Removes `doc`; returns whether it was present.
    fn remove(&mut self, doc: u64) -> bool;
    /// Finds the best `opts.k` documents for `q`, restricted to `allow` when given.
    fn search(
        &self,
        q: &[f32],
        opts: &SearchOptions,
        allow: Option<&AllowSet>,
    ) -> Result<SearchOutput>;
}

/// Sorted, deduplicated set of allowed document ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowSet {
    docs: Vec<u64>,
}

impl AllowSet {
    /// Builds a set from ids in any order, with duplicates.
    pub fn from_unsorted(mut docs: Vec<u64>) -> Self {
        docs.sort_unstable();
        docs.dedup();
        AllowSet { docs }
    }

    /// Builds a set from ids that are already strictly increasing.
    ///
    /// Returns `None` if they are not, so a wrong caller cannot get silently
    /// empty results.
    pub fn from_sorted(docs: Vec<u64>) -> Option<Self> {
        docs.windows(2)
            .all(|w| w[0] < w[1])
            .then_some(AllowSet { docs })
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Whether `doc` is in the set (binary search).
    #[inline]
    pub fn contains(&self, doc: u64) -> bool {
        self.docs.binary_search(&doc).is_ok()
    }

    /// How many ids of the set `indexed` holds, estimated from an even
    /// sample of at most 64 of them (exact for smaller sets). A filter built
    /// from the catalog can name many products with no vector in a space:
    /// planning on the set's length alone would send a filter that leaves a
    /// few vectors to the graph.
    pub(crate) fn estimate_in(&self, indexed: impl Fn(u64) -> bool) -> usize {
        const SAMPLE: usize = 64;
        let n = self.docs.len();
        if n <= SAMPLE {
            return self.docs.iter().filter(|&&d| indexed(d)).count();
        }
        let hits = (0..SAMPLE)
            .filter(|i| indexed(self.docs[i * n / SAMPLE]))
            .count();
        (n * hits).div_ceil(SAMPLE)
    }

    /// Ids in increasing order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.docs.iter().copied()
    }

    /// Ids as a sorted slice.
    pub fn as_slice(&self) -> &[u64] {
        &self.docs
    }
}

impl FromIterator<u64> for AllowSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        AllowSet::from_unsorted(iter.into_iter().collect())
    }
}

/// Heap entry ordered so that the heap's top is the worst kept hit.
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
        // Greater = worse: lower score, then larger doc.
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.doc.cmp(&other.0.doc))
    }
}

/// Bounded top-k collector with a deterministic tie-break (smaller doc wins).
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, doc: u64, score: f32) {
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

    /// Whether `(doc, score)` would be kept (lets callers skip work).
    #[inline]
    pub(crate) fn wants(&self, doc: u64, score: f32) -> bool {
        if self.heap.len() < self.k {
            return self.k > 0;
        }
        self.heap
            .peek()
            .is_some_and(|top| Worst(Hit { doc, score }) < *top)
    }

    /// Adds every hit of `other`.
    pub(crate) fn merge(&mut self, other: TopK) {
        for w in other.heap {
            self.push(w.0.doc, w.0.score);
        }
    }

    /// Hits best first.
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|w| w.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_orders_by_score_then_doc() {
        let mut t = TopK::new(3);
        for (doc, score) in [(5, 1.0), (3, 1.0), (9, 2.0), (1, 0.5), (4, 1.0)] {
            t.push(doc, score);
        }
        let docs: Vec<u64> = t.into_sorted().iter().map(|h| h.doc).collect();
        assert_eq!(docs, vec![9, 3, 4]);
    }

    #[test]
    fn allow_set_sorts_and_dedups() {
        let a = AllowSet::from_unsorted(vec![5, 1, 5, 3]);
        assert_eq!(a.as_slice(), &[1, 3, 5]);
        assert!(a.contains(3) && !a.contains(4));
        assert!(AllowSet::from_sorted(vec![3, 1]).is_none());
        assert!(AllowSet::from_sorted(vec![1, 1]).is_none());
        assert_eq!(AllowSet::from_sorted(vec![1, 2]).unwrap().len(), 2);
    }
}
