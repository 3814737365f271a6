//! Filtered-query latency, exact scan vs graph, across selectivities.
//! Used to set `PlannerConfig`'s defaults.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vitrine_index::{
    AllowSet, FlatIndex, IndexConfig, Metric, PlanHint, SearchOptions, SpaceIndex, VectorIndex,
};

const N: usize = 20_000;
const DIM: usize = 128;

fn gauss(r: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = r.gen_range(f64::EPSILON..1.0);
    let u2: f64 = r.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn setup() -> (SpaceIndex, Vec<Vec<f32>>) {
    let mut r = ChaCha8Rng::seed_from_u64(42);
    let centres: Vec<Vec<f32>> = (0..100)
        .map(|_| (0..DIM).map(|_| gauss(&mut r)).collect())
        .collect();
    let sample = |r: &mut ChaCha8Rng| {
        let c = &centres[r.gen_range(0..100)];
        c.iter().map(|x| x + 0.5 * gauss(r)).collect::<Vec<f32>>()
    };
    let mut flat = FlatIndex::with_capacity(DIM, Metric::Cosine, N).unwrap();
    for i in 0..N {
        flat.upsert(i as u64, &sample(&mut r)).unwrap();
    }
    let queries = (0..64).map(|_| sample(&mut r)).collect();
    (
        SpaceIndex::build(flat, IndexConfig::default(), 0).unwrap(),
        queries,
    )
}

fn planner(c: &mut Criterion) {
    let (index, queries) = setup();
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let mut group = c.benchmark_group("filtered_k10");
    for pct in [0.5f64, 1.0, 5.0, 10.0, 25.0, 50.0] {
        let allow: AllowSet = (0..N as u64).filter(|_| r.gen_bool(pct / 100.0)).collect();
        for (name, plan) in [("exact", PlanHint::Exact), ("graph", PlanHint::Graph)] {
            let opts = SearchOptions::new(10).with_plan(plan);
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(name, pct), &allow, |b, allow| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    index.search(&queries[i], &opts, Some(allow)).unwrap()
                })
            });
        }
    }
    for (name, plan) in [("exact", PlanHint::Exact), ("graph", PlanHint::Graph)] {
        let opts = SearchOptions::new(10).with_plan(plan);
        let mut i = 0;
        group.bench_function(BenchmarkId::new(name, "unfiltered"), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                index.search(&queries[i], &opts, None).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
