//! Deletes, replacements and compaction.

mod common;

use common::{clustered, recall};
use vitrine_index::{
    AllowSet, FlatIndex, IndexConfig, Metric, Plan, PlanHint, SearchOptions, SpaceIndex,
    VectorIndex,
};

const DIM: usize = 16;

fn build(n: usize, cfg: IndexConfig) -> (SpaceIndex, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (data, queries) = clustered(7, n, 50, DIM, 20);
    let mut flat = FlatIndex::new(DIM, Metric::Cosine).unwrap();
    for (i, v) in data.iter().enumerate() {
        flat.upsert(i as u64, v).unwrap();
    }
    (SpaceIndex::build(flat, cfg, 1).unwrap(), data, queries)
}

fn graph(k: usize) -> SearchOptions {
    SearchOptions::new(k).with_plan(PlanHint::Graph)
}

#[test]
fn removed_and_replaced_docs_never_come_back() {
    let (mut index, data, queries) = build(2000, IndexConfig::default());
    let mut reference = index.flat().clone();
    // Remove 100 docs and move 50 others onto the removed docs' old vectors,
    // so a stale graph node would be the query's exact match.
    for d in 0..100u64 {
        assert!(index.remove(d));
        assert!(reference.remove(d));
    }
    assert!(!index.remove(5));
    for d in 100..150u64 {
        let v = &data[(d - 100) as usize];
        index.upsert(d, v).unwrap();
        reference.upsert(d, v).unwrap();
    }
    assert_eq!(index.tombstones(), 150);
    assert_eq!(index.len(), 1900);
    assert_eq!(index.get(3), None);
    assert_eq!(index.get(120), reference.get(120));

    // Old vectors of the moved docs (100..150) are stale graph nodes.
    for q in queries.iter().chain(data[100..200].iter()) {
        let out = index.search(q, &graph(10), None).unwrap();
        assert_eq!(out.plan, Plan::Graph);
        for h in &out.hits {
            assert!(h.doc >= 100, "removed doc {} returned", h.doc);
            let only = AllowSet::from_unsorted(vec![h.doc]);
            let e = reference
                .search(q, &SearchOptions::new(1), Some(&only))
                .unwrap();
            assert_eq!(e.hits[0].score, h.score, "stale vector for {}", h.doc);
        }
        let exact = reference.search(q, &SearchOptions::new(10), None).unwrap();
        for h in &out.hits {
            if let Some(e) = exact.hits.iter().find(|e| e.doc == h.doc) {
                assert_eq!(e.score, h.score, "stale score for {}", h.doc);
            }
        }
    }
    // The moved docs are found at their new place with score ~1.
    for d in 100..150u64 {
        let out = index
            .search(&data[(d - 100) as usize], &graph(1), None)
            .unwrap();
        assert_eq!(out.hits[0].doc, d);
        assert!(out.hits[0].score > 0.9999);
    }
}

#[test]
fn compaction_triggers_past_ratio_and_matches_brute_force() {
    let cfg = IndexConfig {
        compaction_ratio: 0.25,
        ..IndexConfig::default()
    };
    let (mut index, _data, queries) = build(1000, cfg);
    let mut reference = index.flat().clone();
    let mut saw_tombstones = 0;
    for d in 0..300u64 {
        index.remove(d);
        reference.remove(d);
        saw_tombstones = saw_tombstones.max(index.tombstones());
        assert!(index.tombstones() as f64 <= 0.25 * 1000.0 + 1.0);
    }
    // 250 tombstones / 1000 points is not past the ratio; the 251st is.
    assert_eq!(saw_tombstones, 250);
    assert_eq!(index.tombstones(), 300 - 251);
    assert_eq!(index.len(), 700);

    let mut total = 0.0;
    for q in &queries {
        let exact = reference.search(q, &SearchOptions::new(10), None).unwrap();
        let e = index
            .search(q, &SearchOptions::new(10).with_plan(PlanHint::Exact), None)
            .unwrap();
        assert_eq!(e.hits, exact.hits);
        let g = index.search(q, &graph(10), None).unwrap();
        let got: Vec<u64> = g.hits.iter().map(|h| h.doc).collect();
        let want: Vec<u64> = exact.hits.iter().map(|h| h.doc).collect();
        total += recall(&got, &want);
    }
    let r = total / queries.len() as f64;
    assert!(r >= 0.95, "recall after compaction {r}");

    index.compact(2).unwrap();
    assert_eq!(index.tombstones(), 0);
    assert_eq!(index.graph().points(), 700);
}

#[test]
fn remove_everything_then_reinsert() {
    let (mut index, data, _) = build(300, IndexConfig::default());
    for d in 0..300u64 {
        assert!(index.remove(d));
    }
    assert!(index.is_empty());
    let out = index.search(&data[0], &graph(5), None).unwrap();
    assert!(out.hits.is_empty());
    index.upsert(7, &data[0]).unwrap();
    let out = index.search(&data[0], &graph(5), None).unwrap();
    assert_eq!(out.hits.len(), 1);
    assert_eq!(out.hits[0].doc, 7);
}

/// A graph built for compaction is swapped in only over the vectors it was
/// built of: a change since (even one that keeps the count) refuses it.
#[test]
fn a_compacted_graph_is_refused_after_a_change() {
    let (mut index, data, _) = build(300, IndexConfig::default());
    let built = index.build_compacted().unwrap();
    assert!(index.remove(1));
    index.upsert(10_000, &data[2]).unwrap();
    assert!(index.replace_graph(built).is_err());
    // Built again, it goes in, and the new document is found by the graph.
    let built = index.build_compacted().unwrap();
    index.replace_graph(built).unwrap();
    let out = index.search(&data[2], &graph(2), None).unwrap();
    assert!(out.hits.iter().any(|h| h.doc == 10_000), "{:?}", out.hits);
    // An upsert that changes nothing is no change.
    let built = index.build_compacted().unwrap();
    index.upsert(3, &data[3]).unwrap();
    index.replace_graph(built).unwrap();
}

/// A graph built of one index is refused by another, even one with the
/// same number of points and changes.
#[test]
fn a_compacted_graph_goes_only_into_its_own_index() {
    let (a, _, _) = build(200, IndexConfig::default());
    let (mut b, _, _) = build(200, IndexConfig::default());
    let built = a.build_compacted().unwrap();
    assert!(b.replace_graph(built).is_err());
}
