//! Exact-scan throughput of the scorer, in bytes of vectors scanned per
//! second (criterion's `Bytes` throughput): 100k × 128 rows, batches of 1, 8
//! and 64 queries, k = 10. With `--features cuda` and a usable GPU, the same
//! on the GPU (rows resident on the device).
//!
//! `cargo bench -p vitrine-index --bench scorer [--features cuda]`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vitrine_index::{QueryBatch, Rows, Scorer};

const N: usize = 100_000;
const DIM: usize = 128;

fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

fn scan(c: &mut Criterion, name: &str, scorer: &Scorer) {
    let data = random(1, N * DIM);
    let queries = random(2, 64 * DIM);
    let rows = Rows::new(DIM, &data).expect("rows");
    let loaded = scorer.load(rows);
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    for b in [1usize, 8, 64] {
        // Bytes of vectors scanned per call (each row once per call).
        g.throughput(Throughput::Bytes((N * DIM * 4) as u64));
        let batch = QueryBatch::new(&queries[..b * DIM], 10);
        g.bench_with_input(BenchmarkId::new("batch", b), &batch, |bench, batch| {
            bench.iter(|| loaded.top_k(batch).expect("top-k"))
        });
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    scan(c, "scorer_cpu_100k_x128", &Scorer::cpu(0));
}

#[cfg(feature = "cuda")]
fn gpu(c: &mut Criterion) {
    use vitrine_index::{ScorerChoice, ScorerOptions};
    match Scorer::new(ScorerChoice::Gpu, ScorerOptions::default()) {
        Ok(s) => scan(c, "scorer_gpu_100k_x128", &s),
        Err(e) => eprintln!("GPU bench skipped: {e}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu(_: &mut Criterion) {}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
