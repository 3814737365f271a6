//! Shared test helpers: deterministic clustered data and brute force.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vitrine_index::Metric;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Standard normal via Box-Muller.
pub fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// `n` points around `clusters` Gaussian centres, plus `queries` fresh points
/// from the same mixture.
pub fn clustered(
    seed: u64,
    n: usize,
    queries: usize,
    dim: usize,
    clusters: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut r = rng(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| gauss(&mut r)).collect())
        .collect();
    let sample = |r: &mut ChaCha8Rng| {
        let c = &centres[r.gen_range(0..clusters)];
        c.iter().map(|x| x + 0.5 * gauss(r)).collect::<Vec<f32>>()
    };
    let data = (0..n).map(|_| sample(&mut r)).collect();
    let qs = (0..queries).map(|_| sample(&mut r)).collect();
    (data, qs)
}

/// Vectors made of `blocks` L2-normalised blocks (Vitrine's concept vectors).
pub fn blockwise(v: &[f32], blocks: usize) -> Vec<f32> {
    let size = v.len() / blocks;
    let mut out = v.to_vec();
    for b in out.chunks_mut(size) {
        let n = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            b.iter_mut().for_each(|x| *x /= n);
        }
    }
    out
}

fn prep(metric: Metric, v: &[f32]) -> Vec<f64> {
    let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    match metric {
        Metric::InnerProduct => v,
        Metric::Cosine => {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect()
        }
    }
}

/// Exact top-k doc ids in f64 (docs are the indexes into `data`).
pub fn brute_force(
    metric: Metric,
    data: &[Vec<f32>],
    q: &[f32],
    k: usize,
    keep: Option<&dyn Fn(u64) -> bool>,
) -> Vec<u64> {
    let q = prep(metric, q);
    let mut scored: Vec<(f64, u64)> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|k| k(*i as u64)))
        .map(|(i, v)| {
            let v = prep(metric, v);
            (v.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>(), i as u64)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(k);
    scored.into_iter().map(|(_, d)| d).collect()
}

/// |got ∩ want| / |want|.
pub fn recall(got: &[u64], want: &[u64]) -> f64 {
    if want.is_empty() {
        return 1.0;
    }
    let hit = want.iter().filter(|d| got.contains(d)).count();
    hit as f64 / want.len() as f64
}
