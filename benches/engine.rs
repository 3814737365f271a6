//! Criterion benches for the Db: filtered search plans, vector updates and
//! checkpoints (`vitrine bench open` measures opening).
//! `cargo bench --bench engine`; the `vitrine bench` harness covers larger runs.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::{Rng, SeedableRng};
use vitrine::{Attributes, Db, Durability, Filter, Metric, PlanHint, Search, SimilarTo};

const DIM: usize = 128;
const N: usize = 10_000;

fn vector(rng: &mut impl Rng) -> Vec<f32> {
    (0..DIM).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn build(dir: &std::path::Path) -> Db {
    let db = Db::builder()
        .durability(Durability::Periodic {
            interval: std::time::Duration::from_millis(500),
        })
        .vector_space("embedding", DIM, Metric::Cosine)
        .build_threads(2)
        .open(dir)
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for i in 0..N {
        // brand-0 is 1 % of the catalog.
        // What the model tagged: one colour of 100 (1 %) and a pattern.
        let attrs = Attributes::new()
            .brand(format!("brand-{}", i % 100))
            .in_stock(i % 2 == 0)
            .set(
                "vitrine.tags",
                format!("colour.c{},pattern.p{},usage.casual", i % 100, i % 7),
            );
        db.insert(
            &format!("sku-{i}"),
            attrs,
            [("embedding", vector(&mut rng))],
        )
        .unwrap();
    }
    db
}

fn search(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let queries: Vec<Vec<f32>> = (0..64).map(|_| vector(&mut rng)).collect();
    let one_pct = Filter::new().brand_in(["brand-0"]);
    let half = Filter::new().in_stock();
    let mut g = c.benchmark_group("similar_10k");
    let mut i = 0;
    let mut next = move || {
        i = (i + 1) % 64;
        i
    };
    let mut bench = |name: &str, f: &Filter, plan: PlanHint| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let q = &queries[next()];
                db.search(&Search::new(SimilarTo::Vector(q), 10).filter(f).plan(plan))
                    .unwrap()
            })
        });
    };
    bench("unfiltered", &Filter::new(), PlanHint::Auto);
    bench("filter_50pct_graph", &half, PlanHint::Graph);
    bench("filter_1pct_exact", &one_pct, PlanHint::Exact);
    bench("filter_1pct_graph", &one_pct, PlanHint::Graph);
    // A concept condition (`where colour.c0`), as a query's where clause.
    bench(
        "filter_tagged_1pct_exact",
        &Filter::new().tagged("colour.c0"),
        PlanHint::Exact,
    );
    // Products already shown (an infinite-scroll feed): few are dropped
    // from the hits, many are left out of an allow set made by a walk of
    // the catalog (`max_dropped_after` in src/db.rs decides).
    for shown in [60, 100, 1000] {
        let mut f = Filter::new();
        for i in 0..shown {
            f = f.exclude(format!("sku-{}", i * 7));
        }
        bench(&format!("exclude_{shown}_graph"), &f, PlanHint::Graph);
    }
    g.finish();
}

fn insert(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut n = 0u64;
    // 1,000 ids, each written again and again with a new vector: after
    // the first thousand this is an update (a graph insert and a
    // tombstone), and the compactions the tombstones trigger are inside
    // the timed writes, amortised, as a service would pay them.
    c.bench_function("upsert_replacing_vectors_periodic_10k", |b| {
        b.iter_batched(
            || {
                n += 1;
                (format!("new-{}", n % 1000), vector(&mut rng))
            },
            |(id, v)| {
                db.upsert(&id, Attributes::new(), [("embedding", v)])
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

/// A service's timed checkpoint after one change from its stock feed
/// (attributes only: the files stay current) and after one new vector
/// (every vector and the graph are written), in one run. Only the
/// checkpoint is timed: the change is made before each, untimed (a
/// replaced vector's tombstones can trigger a compaction there).
fn checkpoint(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path());
    db.checkpoint().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut n = 0usize;
    let mut g = c.benchmark_group("checkpoint_10k");
    g.bench_function("after_a_stock_change", |b| {
        b.iter_batched(
            || {
                n += 1;
                // The opposite of what it is: a write that changes nothing
                // leaves nothing to checkpoint.
                let id = format!("sku-{}", n % N);
                let now = db.get(&id).unwrap().unwrap().attributes.in_stock;
                db.set_in_stock(&id, !now).unwrap();
            },
            |()| db.checkpoint().unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("after_a_new_vector", |b| {
        b.iter_batched(
            || {
                n += 1;
                db.upsert(
                    &format!("sku-{}", n % N),
                    Attributes::new(),
                    [("embedding", vector(&mut rng))],
                )
                .unwrap();
            },
            |()| db.checkpoint().unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = search, insert, checkpoint
}
criterion_main!(benches);
