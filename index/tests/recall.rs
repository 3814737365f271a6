//! Recall of the graph plan against brute force on clustered data.

mod common;

use std::sync::OnceLock;

use common::{brute_force, clustered, recall};
use vitrine_index::{
    AllowSet, FlatIndex, IndexConfig, Metric, Plan, PlanHint, SearchOptions, SpaceIndex,
    VectorIndex,
};

const N: usize = 20_000;
const DIM: usize = 128;
const QUERIES: usize = 200;
const K: usize = 10;

struct Fixture {
    data: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    index: SpaceIndex,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (data, queries) = clustered(42, N, QUERIES, DIM, 100);
        let mut flat = FlatIndex::with_capacity(DIM, Metric::Cosine, N).unwrap();
        for (i, v) in data.iter().enumerate() {
            flat.upsert(i as u64, v).unwrap();
        }
        let index = SpaceIndex::build(flat, IndexConfig::default(), 2).unwrap();
        Fixture {
            data,
            queries,
            index,
        }
    })
}

/// A filter: the allow set the index is given, and the predicate it was
/// made from, which the brute force uses (so that a broken `AllowSet`
/// cannot make both sides wrong the same way).
type Filter<'a> = (&'a AllowSet, &'a dyn Fn(u64) -> bool);

/// Mean recall@K; asserts every search used `expect_plan`.
fn mean_recall(opts: &SearchOptions, filter: Option<Filter<'_>>, expect_plan: Plan) -> f64 {
    let f = fixture();
    let allow = filter.map(|(a, _)| a);
    let keep = filter.map(|(_, k)| k);
    let mut total = 0.0;
    for q in &f.queries {
        let out = f.index.search(q, opts, allow).unwrap();
        assert_eq!(out.plan, expect_plan);
        assert!(out.hits.windows(2).all(|w| w[0].score >= w[1].score));
        if let Some(k) = keep {
            assert!(out.hits.iter().all(|h| k(h.doc)));
        }
        let got: Vec<u64> = out.hits.iter().map(|h| h.doc).collect();
        total += recall(&got, &brute_force(Metric::Cosine, &f.data, q, K, keep));
    }
    total / f.queries.len() as f64
}

#[test]
fn unfiltered_graph_recall() {
    let r = mean_recall(&SearchOptions::new(K), None, Plan::Graph);
    eprintln!("unfiltered recall@{K} = {r:.4}");
    assert!(r >= 0.95, "recall {r}");
}

#[test]
fn half_filter_graph_recall() {
    let even = |d: u64| d.is_multiple_of(2);
    let allow: AllowSet = (0..N as u64).filter(|&d| even(d)).collect();
    assert_eq!(fixture().index.plan_for(Some(&allow)), Plan::Graph);
    let r = mean_recall(&SearchOptions::new(K), Some((&allow, &even)), Plan::Graph);
    eprintln!("50% filter recall@{K} = {r:.4}");
    assert!(r >= 0.95, "recall {r}");
    let forced = SearchOptions::new(K).with_plan(PlanHint::Graph);
    let r = mean_recall(&forced, Some((&allow, &even)), Plan::Graph);
    assert!(r >= 0.95, "forced graph recall {r}");
}

#[test]
fn one_percent_filter_is_exact() {
    let keep = |d: u64| d % 100 == 7;
    let allow: AllowSet = (0..N as u64).filter(|&d| keep(d)).collect();
    assert_eq!(fixture().index.plan_for(Some(&allow)), Plan::Exact);
    let r = mean_recall(&SearchOptions::new(K), Some((&allow, &keep)), Plan::Exact);
    assert_eq!(r, 1.0);
}

/// A filter built from a catalog can name many documents this space has no
/// vector for: 100 indexed ones among 50,000 is a selective filter.
#[test]
fn a_filter_of_mostly_unindexed_documents_is_exact() {
    let keep = |d: u64| d % 200 == 3 || d >= N as u64;
    let mut docs: Vec<u64> = (0..N as u64).filter(|d| d % 200 == 3).collect();
    docs.extend(N as u64..N as u64 + 50_000);
    let allow = AllowSet::from_unsorted(docs);
    assert_eq!(fixture().index.plan_for(Some(&allow)), Plan::Exact);
    let r = mean_recall(&SearchOptions::new(K), Some((&allow, &keep)), Plan::Exact);
    assert_eq!(r, 1.0);
}

#[test]
fn scores_are_identical_across_plans() {
    let f = fixture();
    let allow: AllowSet = (0..N as u64).filter(|d| d % 2 == 1).collect();
    let mut same = 0;
    for q in f.queries.iter().take(50) {
        let g = f
            .index
            .search(
                q,
                &SearchOptions::new(K).with_plan(PlanHint::Graph),
                Some(&allow),
            )
            .unwrap();
        let e = f
            .index
            .search(
                q,
                &SearchOptions::new(K).with_plan(PlanHint::Exact),
                Some(&allow),
            )
            .unwrap();
        assert_eq!(e.plan, Plan::Exact);
        for h in &g.hits {
            if let Some(x) = e.hits.iter().find(|x| x.doc == h.doc) {
                assert_eq!(x.score.to_bits(), h.score.to_bits());
                same += 1;
            }
        }
    }
    // Compared on most hits: the graph finds most of the exact top k.
    assert!(same >= 50 * K * 8 / 10, "{same} of {} hits shared", 50 * K);
}

/// The planner takes the exact scan for a k wider than the graph's widest
/// beam (4,096), where it would otherwise walk the graph; a k within it
/// stays on the graph. So does a search that asks for the graph.
#[test]
fn a_k_past_the_widest_beam_is_planned_exact() {
    let f = fixture();
    let q = &f.queries[0];
    let narrow = f.index.search(q, &SearchOptions::new(K), None).unwrap();
    assert_eq!(narrow.plan, Plan::Graph);
    let wide = f.index.search(q, &SearchOptions::new(5_000), None).unwrap();
    assert_eq!(wide.plan, Plan::Exact);
    assert_eq!(wide.hits.len(), 5_000);
    let got: Vec<u64> = wide.hits.iter().map(|h| h.doc).collect();
    let exact = brute_force(Metric::Cosine, &f.data, q, 5_000, None);
    // (f32 scores against f64: a tie at the boundary may swap.)
    assert!(recall(&got, &exact) >= 0.999);
    let asked = SearchOptions::new(5_000).with_plan(PlanHint::Graph);
    let graph = f.index.search(q, &asked, None).unwrap();
    assert_eq!(graph.plan, Plan::Exact);
    assert_eq!(graph.hits, wide.hits);
}

/// A graph walk asked for under a filter that allows nothing would visit
/// every node looking for a point that passes: answered at once, as is a
/// search for no hits.
#[test]
fn nothing_to_find_is_answered_without_a_walk() {
    let f = fixture();
    let none = AllowSet::from_unsorted(Vec::new());
    let asked = SearchOptions::new(K).with_plan(PlanHint::Graph);
    let out = f.index.search(&f.queries[0], &asked, Some(&none)).unwrap();
    assert_eq!(out.plan, Plan::Exact);
    assert!(out.hits.is_empty());
    // Nor under one that allows only documents the index does not hold.
    let absent = AllowSet::from_unsorted(vec![u64::MAX - 1, u64::MAX]);
    let out = f
        .index
        .search(&f.queries[0], &asked, Some(&absent))
        .unwrap();
    assert_eq!(out.plan, Plan::Exact);
    assert!(out.hits.is_empty()); // Nor is one walked to find nothing.
    let zero = SearchOptions::new(0).with_plan(PlanHint::Graph);
    let out = f.index.search(&f.queries[0], &zero, None).unwrap();
    assert_eq!(out.plan, Plan::Exact);
    assert!(out.hits.is_empty());
}
