//! Graph recall under InnerProduct on concept-style vectors (L2-normalised blocks).

mod common;

use common::{blockwise, brute_force, clustered, recall};
use vitrine_index::{
    FlatIndex, IndexConfig, Metric, Plan, PlanHint, SearchOptions, SpaceIndex, VectorIndex,
};

#[test]
fn blockwise_inner_product_recall() {
    let (raw, raw_q) = clustered(11, 5000, 100, 64, 50);
    let data: Vec<Vec<f32>> = raw.iter().map(|v| blockwise(v, 4)).collect();
    let queries: Vec<Vec<f32>> = raw_q.iter().map(|v| blockwise(v, 4)).collect();
    let mut flat = FlatIndex::new(64, Metric::InnerProduct).unwrap();
    for (i, v) in data.iter().enumerate() {
        flat.upsert(i as u64, v).unwrap();
    }
    let idx = SpaceIndex::build(flat, IndexConfig::default(), 2).unwrap();
    let mut total = 0.0;
    for q in &queries {
        let out = idx
            .search(q, &SearchOptions::new(10).with_plan(PlanHint::Graph), None)
            .unwrap();
        assert_eq!(out.plan, Plan::Graph);
        let got: Vec<u64> = out.hits.iter().map(|h| h.doc).collect();
        total += recall(&got, &brute_force(Metric::InnerProduct, &data, q, 10, None));
    }
    let r = total / queries.len() as f64;
    eprintln!("inner-product blockwise recall@10 = {r:.4}");
    assert!(r >= 0.95, "recall {r}");
}
