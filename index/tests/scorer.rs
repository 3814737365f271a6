//! The exact scorer: CPU against a naive scalar reference, the GPU choice's
//! typed errors and `Auto`'s fallback, and (with `--features cuda`,
//! `VITRINE_GPU=1`, `--ignored`) GPU against CPU.

mod common;

use proptest::prelude::*;
use rand::Rng;
use vitrine_index::{
    AllPairsOptions, Backend, FlatIndex, GroupWeights, Hit, Metric, QueryBatch, RowMask, RowMatrix,
    Rows, Scorer, ScorerChoice, ScorerError, ScorerOptions, VectorIndex,
};

/// Naive scalar reference: f64 sums of the weighted query, full sort.
fn reference(
    rows: &Rows<'_>,
    queries: &[f32],
    k: usize,
    weights: Option<&GroupWeights>,
    allow: Option<&RowMask>,
    exclude: Option<&[Vec<u64>]>,
) -> Vec<Vec<Hit>> {
    let d = rows.dim();
    queries
        .chunks_exact(d)
        .enumerate()
        .map(|(qi, q)| {
            let q = weights.map_or_else(|| q.to_vec(), |w| w.apply(q));
            let mut all: Vec<Hit> = (0..rows.len())
                .filter(|&r| allow.is_none_or(|m| m.get(r)))
                .filter(|&r| exclude.is_none_or(|ex| !ex[qi].contains(&rows.doc(r))))
                .map(|r| {
                    let s: f64 = q
                        .iter()
                        .zip(rows.row(r))
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    Hit {
                        doc: rows.doc(r),
                        // Same sanitising as the scorer: -0.0 is 0.0.
                        score: s as f32 + 0.0,
                    }
                })
                .collect();
            all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
            all.truncate(k);
            all
        })
        .collect()
}

/// Same ids in the same order and scores within `tol`, except that hits whose
/// scores are within `tol` of each other may swap (ties under rounding).
fn assert_same(got: &[Vec<Hit>], want: &[Vec<Hit>], tol: f32) {
    assert_close(got, want, |_| tol)
}

/// [`assert_same`] with a tolerance relative to the score's magnitude (at
/// least `rel`): two FP32 back ends that sum in different orders differ by
/// rounding in proportion to the score.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn assert_same_rel(got: &[Vec<Hit>], want: &[Vec<Hit>], rel: f32) {
    let scale = want
        .iter()
        .flatten()
        .map(|h| h.score.abs())
        .fold(1.0f32, f32::max);
    assert_close(got, want, |_| rel * scale)
}

fn assert_close(got: &[Vec<Hit>], want: &[Vec<Hit>], tol_of: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len());
    for (qi, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = tol_of(qi);
        assert_eq!(g.len(), w.len(), "query {qi}: {g:?} vs {w:?}");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a.score - b.score).abs() <= tol,
                "query {qi} rank {i}: score {} vs {}",
                a.score,
                b.score
            );
            if a.doc != b.doc {
                // Allowed only for a near-tie: the other's reference score is as good.
                let other = w.iter().find(|h| h.doc == a.doc).map(|h| h.score);
                let near = other.map_or((b.score - w.last().unwrap().score).abs() <= tol, |s| {
                    (s - b.score).abs() <= 2.0 * tol
                });
                assert!(
                    near,
                    "query {qi} rank {i}: doc {} vs {} ({g:?} vs {w:?})",
                    a.doc, b.doc
                );
            }
        }
    }
}

fn dyadic(max: i32) -> impl Strategy<Value = f32> {
    (-max..=max).prop_map(|i| i as f32 / 16.0)
}

#[derive(Debug, Clone)]
struct Case {
    dim: usize,
    data: Vec<f32>,
    docs: Vec<u64>,
    queries: Vec<f32>,
    k: usize,
    weights: Option<Vec<f32>>,
    allow: Option<Vec<bool>>,
    exclude: Option<Vec<Vec<u64>>>,
}

/// Values are multiples of 1/16 and weights powers of two, so every dot
/// product is exact in f32 whatever the summation order: ids and tie-breaks
/// must match exactly.
fn exact_case() -> impl Strategy<Value = Case> {
    (1usize..5, 1usize..9, 0usize..700, 1usize..6, 0usize..40).prop_flat_map(
        |(blocks, block, n, b, k)| {
            let dim = blocks * block;
            (
                proptest::collection::vec(dyadic(16), n * dim),
                proptest::collection::vec(dyadic(16), b * dim),
                proptest::option::of(proptest::collection::vec(
                    prop_oneof![Just(0.25f32), Just(0.5), Just(1.0), Just(2.0), Just(0.0)],
                    blocks,
                )),
                proptest::option::of(proptest::collection::vec(any::<bool>(), n)),
                proptest::option::of(proptest::collection::vec(
                    proptest::collection::vec(0u64..(2 * n as u64 + 1), 0..4),
                    b,
                )),
                Just((dim, block, n, k)),
                any::<u64>(),
            )
                .prop_map(
                    |(data, queries, weights, allow, exclude, (dim, _block, n, k), salt)| {
                        // Docs: a permutation-ish of distinct ids, not row order.
                        let docs = (0..n as u64).map(|i| (i * 7 + salt % 5) * 2 + 1).collect();
                        Case {
                            dim,
                            data,
                            docs,
                            queries,
                            k,
                            weights,
                            allow,
                            exclude,
                        }
                    },
                )
        },
    )
}

fn run_case(c: &Case, scorer: &Scorer) -> (Vec<Vec<Hit>>, Vec<Vec<Hit>>) {
    let rows = Rows::new(c.dim, &c.data)
        .unwrap()
        .with_docs(&c.docs)
        .unwrap();
    let block = c.weights.as_ref().map(|w| c.dim / w.len());
    let weights = c
        .weights
        .clone()
        .map(|w| GroupWeights::blocks(block.unwrap(), w).unwrap());
    let allow = c
        .allow
        .as_ref()
        .map(|a| RowMask::from_fn(a.len(), |i| a[i]));
    let mut batch = QueryBatch::new(&c.queries, c.k);
    if let Some(w) = &weights {
        batch = batch.weights(w);
    }
    if let Some(a) = &allow {
        batch = batch.allow(a);
    }
    if let Some(e) = &c.exclude {
        batch = batch.exclude_each(e);
    }
    let got = scorer.top_k(rows, &batch).unwrap();
    let want = reference(
        &rows,
        &c.queries,
        c.k,
        weights.as_ref(),
        allow.as_ref(),
        c.exclude.as_deref(),
    );
    (got, want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn cpu_matches_reference_exactly_on_dyadic_vectors(c in exact_case(), threads in 1usize..4) {
        let scorer = Scorer::cpu(threads);
        let (got, want) = run_case(&c, &scorer);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn cpu_matches_reference_on_random_vectors(
        seed in any::<u64>(), n in 1usize..1500, dim in 1usize..70, b in 1usize..9, k in 1usize..30,
        weighted in any::<bool>(), masked in any::<bool>(),
    ) {
        let mut r = common::rng(seed);
        let data: Vec<f32> = (0..n * dim).map(|_| r.gen_range(-1.0..1.0)).collect();
        let queries: Vec<f32> = (0..b * dim).map(|_| r.gen_range(-1.0..1.0)).collect();
        let groups = dim.min(4);
        let c = Case {
            dim,
            docs: (0..n as u64).rev().collect(),
            weights: weighted.then(|| (0..groups).map(|_| r.gen_range(0.0..2.0)).collect()),
            allow: masked.then(|| (0..n).map(|_| r.gen_bool(0.3)).collect()),
            exclude: Some((0..b).map(|_| vec![r.gen_range(0..n as u64)]).collect()),
            data,
            queries,
            k,
        };
        // GroupWeights::blocks needs dim divisible by the group count.
        let c = Case { weights: c.weights.filter(|w| dim % w.len() == 0), ..c };
        let (got, want) = run_case(&c, &Scorer::cpu(2));
        assert_same(&got, &want, 1e-5);
    }
}

#[test]
fn cpu_matches_reference_on_realistic_vectors() {
    // Clustered, block-normalised concept vectors (the shape of real
    // embeddings; the trained model's vectors are not in the repository).
    let (data, queries) = common::clustered(7, 4000, 24, 128, 12);
    let data: Vec<f32> = data.iter().flat_map(|v| common::blockwise(v, 4)).collect();
    let queries: Vec<f32> = queries
        .iter()
        .flat_map(|v| common::blockwise(v, 4))
        .collect();
    let rows = Rows::new(128, &data).unwrap();
    let w = GroupWeights::blocks(32, vec![1.0, 0.5, 2.0, 0.0]).unwrap();
    for weights in [None, Some(&w)] {
        let mut batch = QueryBatch::new(&queries, 25);
        if let Some(w) = weights {
            batch = batch.weights(w);
        }
        let got = Scorer::cpu(0).top_k(rows, &batch).unwrap();
        assert_same(
            &got,
            &reference(&rows, &queries, 25, weights, None, None),
            1e-5,
        );
    }
}

/// A batch of more queries than one CPU pass holds (a GPU-sized batch,
/// scanned in passes): each query keeps its own mask and exclusions.
#[test]
fn a_large_batch_is_scored_in_passes_query_by_query() {
    let mut rng = common::rng(11);
    let (n, dim, b) = (300usize, 8usize, 640usize);
    // Multiples of 1/16: every sum is exact, so ids and ties must match.
    let mut value = || f32::from(rng.gen_range(-16i8..=16)) / 16.0;
    let data: Vec<f32> = (0..n * dim).map(|_| value()).collect();
    let queries: Vec<f32> = (0..b * dim).map(|_| value()).collect();
    let docs: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
    let rows = Rows::new(dim, &data).unwrap().with_docs(&docs).unwrap();
    let masks: Vec<RowMask> = (0..b)
        .map(|q| RowMask::from_fn(n, |r| (r + q) % 5 != 0))
        .collect();
    let exclude: Vec<Vec<u64>> = (0..b).map(|q| vec![docs[q % n]]).collect();
    for threads in [1, 3] {
        let got = Scorer::cpu(threads)
            .top_k(
                rows,
                &QueryBatch::new(&queries, 7)
                    .allow_each(&masks)
                    .exclude_each(&exclude),
            )
            .unwrap();
        let want: Vec<Vec<Hit>> = (0..b)
            .map(|q| {
                let one = &queries[q * dim..(q + 1) * dim];
                reference(&rows, one, 7, None, Some(&masks[q]), Some(&exclude[q..=q])).remove(0)
            })
            .collect();
        assert_eq!(got, want, "{threads} threads");
    }
}

#[test]
fn scorer_agrees_with_flat_index() {
    let (data, queries) = common::clustered(3, 2000, 10, 32, 8);
    let mut flat = FlatIndex::new(32, Metric::Cosine).unwrap();
    for (i, v) in data.iter().enumerate() {
        flat.upsert(i as u64 * 3, v).unwrap();
    }
    let m = RowMatrix::from_flat(&flat).unwrap();
    let scorer = Scorer::cpu(2);
    for q in &queries {
        let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        let qn: Vec<f32> = q.iter().map(|x| x / norm).collect();
        let got = scorer.top_k(m.rows(), &QueryBatch::new(&qn, 10)).unwrap();
        let want = flat
            .search(q, &vitrine_index::SearchOptions::new(10), None)
            .unwrap()
            .hits;
        assert_same(&got, &[want], 1e-5);
    }
}

#[test]
fn similar_all_excludes_self_and_named_docs() {
    let (data, _) = common::clustered(11, 600, 0, 16, 5);
    let data: Vec<f32> = data.concat();
    let docs: Vec<u64> = (0..600).map(|i| 1000 + i).collect();
    let rows = Rows::new(16, &data).unwrap().with_docs(&docs).unwrap();
    let allow = RowMask::from_fn(600, |i| i % 4 != 0);
    let group = |i: usize| -> Vec<u64> {
        (0..600)
            .filter(|j| j % 10 == i % 10)
            .map(|j| 1000 + j as u64)
            .collect()
    };
    let scorer = Scorer::cpu(2);
    let loaded = scorer.load(rows);
    let out = loaded
        .similar_all(&AllPairsOptions {
            k: 7,
            batch: 64,
            allow: Some(&allow),
            exclude: Some(&|i| group(i)),
        })
        .unwrap();
    assert_eq!(out.len(), 600);
    for (i, hits) in out.iter().enumerate() {
        let mut ex = group(i);
        ex.push(docs[i]);
        let want = &reference(&rows, rows.row(i), 7, None, Some(&allow), Some(&[ex]))[0];
        assert_same(std::slice::from_ref(hits), std::slice::from_ref(want), 1e-5);
        assert!(hits
            .iter()
            .all(|h| h.doc != docs[i] && (h.doc - 1000) % 4 != 0));
    }
}

#[test]
fn per_query_masks_and_edge_cases() {
    let data: Vec<f32> = (0..50).map(|i| i as f32).collect();
    let rows = Rows::new(1, &data).unwrap();
    let masks = [RowMask::from_fn(50, |i| i < 10), RowMask::none(50)];
    let out = Scorer::cpu(1)
        .top_k(rows, &QueryBatch::new(&[1.0, 1.0], 3).allow_each(&masks))
        .unwrap();
    assert_eq!(out[0].iter().map(|h| h.doc).collect::<Vec<_>>(), [9, 8, 7]);
    assert!(out[1].is_empty());
    // k = 0, no queries, bad shapes.
    let s = Scorer::cpu(1);
    assert_eq!(
        s.top_k(rows, &QueryBatch::new(&[1.0], 0)).unwrap(),
        [vec![]]
    );
    assert!(s.top_k(rows, &QueryBatch::new(&[], 3)).unwrap().is_empty());
    assert!(Rows::new(3, &data).is_err());
    assert!(Rows::new(0, &data).is_err());
    let data2 = [0.0f32; 4];
    let r2 = Rows::new(2, &data2).unwrap();
    assert!(matches!(
        s.top_k(r2, &QueryBatch::new(&[1.0, 2.0, 3.0], 1)),
        Err(ScorerError::InvalidArgument { .. })
    ));
    assert!(s.top_k(r2, &QueryBatch::new(&[f32::NAN, 1.0], 1)).is_err());
    let w = GroupWeights::blocks(2, vec![1.0, 1.0]).unwrap();
    assert!(s
        .top_k(r2, &QueryBatch::new(&[1.0, 1.0], 1).weights(&w))
        .is_err());
    // Finite queries and weights whose product overflows.
    let big = GroupWeights::blocks(2, vec![1e20]).unwrap();
    assert!(matches!(
        s.top_k(r2, &QueryBatch::new(&[1e20, 1e20], 1).weights(&big)),
        Err(ScorerError::InvalidArgument { .. })
    ));
    // A doc given to two rows.
    assert!(matches!(
        Rows::new(2, &data2).unwrap().with_docs(&[7, 7]),
        Err(ScorerError::InvalidArgument { .. })
    ));
    // ... also in an owned matrix.
    let mut m = vitrine_index::RowMatrix::new(2).unwrap();
    m.push(7, &[1.0, 0.0]).unwrap();
    assert!(matches!(
        m.push(7, &[0.0, 1.0]),
        Err(ScorerError::InvalidArgument { .. })
    ));
    assert_eq!(m.len(), 1);
}

/// Whether a GPU is there to be used: asked for (`VITRINE_GPU=1`) in a
/// build that can use one (without `cuda`, the variable changes nothing).
fn gpu_expected() -> bool {
    cfg!(feature = "cuda") && std::env::var("VITRINE_GPU").as_deref() == Ok("1")
}

#[test]
fn gpu_choice_is_a_typed_error_without_a_gpu() {
    if gpu_expected() {
        return;
    }
    let err = Scorer::new(ScorerChoice::Gpu, ScorerOptions::default()).unwrap_err();
    let ScorerError::GpuUnavailable { reason } = &err else {
        panic!("expected GpuUnavailable, got {err}");
    };
    if cfg!(feature = "cuda") {
        assert!(!reason.contains("without the cuda feature"), "{reason}");
    } else {
        assert_eq!(reason, "built without the cuda feature");
    }
}

#[test]
fn auto_falls_back_to_the_cpu() {
    if gpu_expected() {
        return;
    }
    let options = ScorerOptions {
        auto_gpu_min_work: 1,
        ..ScorerOptions::default()
    };
    let scorer = Scorer::new(ScorerChoice::Auto, options).unwrap();
    assert!(!scorer.gpu_available());
    let data: Vec<f32> = (0..300).map(|i| (i as f32).sin()).collect();
    let loaded = scorer.load(Rows::new(3, &data).unwrap());
    assert_eq!(loaded.backend_for(10), Backend::Cpu);
    let (hits, backend) = loaded
        .top_k_with_backend(&QueryBatch::new(&[1.0, 0.0, 0.0], 5))
        .unwrap();
    assert_eq!(backend, Backend::Cpu);
    assert_eq!(
        hits[0],
        Scorer::cpu(1)
            .top_k(loaded.rows(), &QueryBatch::new(&[1.0, 0.0, 0.0], 5))
            .unwrap()[0]
    );
    assert!(Scorer::new(
        ScorerChoice::Auto,
        ScorerOptions {
            gpu_memory_fraction: 0.0,
            ..ScorerOptions::default()
        }
    )
    .is_err());
}

/// GPU against CPU. Run by `scripts/gpu-check.sh`:
/// `VITRINE_GPU=1 cargo test -p vitrine-index --features cuda --test scorer -- --ignored gpu_`.
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    fn random(seed: u64, n: usize, dim: usize) -> Vec<f32> {
        let mut r = common::rng(seed);
        (0..n * dim).map(|_| r.gen_range(-1.0f32..1.0)).collect()
    }

    /// Both GPU scoring paths: the scan kernel for every batch, and sgemm
    /// for every batch.
    fn gpus(memory_fraction: f64) -> Vec<Scorer> {
        [usize::MAX, 0]
            .into_iter()
            .map(|max| {
                let options = ScorerOptions {
                    gpu_memory_fraction: memory_fraction,
                    gpu_scan_kernel_max_batch: max,
                    ..ScorerOptions::default()
                };
                Scorer::new(ScorerChoice::Gpu, options).expect("GPU scorer")
            })
            .collect()
    }

    fn both() -> Option<(Vec<Scorer>, Scorer)> {
        if !gpu_expected() {
            eprintln!("SKIP: set VITRINE_GPU=1 on a machine with a GPU");
            return None;
        }
        let gpus = gpus(0.8);
        eprintln!("{:?}", gpus[0].gpu_info().unwrap());
        Some((gpus, Scorer::cpu(0)))
    }

    /// GPU against CPU: the same ids, scores equal up to FP32 summation
    /// order (relative 1e-5), near-ties under that rounding may swap.
    fn compare(gpus: &[Scorer], cpu: &Scorer, rows: Rows<'_>, batch: &QueryBatch<'_>) {
        let c = cpu.top_k(rows, batch).unwrap();
        for gpu in gpus {
            let g = gpu.top_k(rows, batch).unwrap();
            assert_same_rel(&g, &c, 1e-5);
        }
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_matches_cpu_100k_random() {
        let Some((gpu, cpu)) = both() else { return };
        let data = random(1, 100_000, 128);
        let queries = random(2, 64, 128);
        let docs: Vec<u64> = (0..100_000u64).map(|i| i * 13 % 100_003).collect();
        let rows = Rows::new(128, &data).unwrap().with_docs(&docs).unwrap();
        for k in [1, 10, 100, 1000] {
            compare(&gpu, &cpu, rows, &QueryBatch::new(&queries, k));
        }
        let allow = RowMask::from_fn(100_000, |i| i % 7 != 3);
        let ex: Vec<Vec<u64>> = (0..64).map(|i| vec![docs[i], docs[i * 3]]).collect();
        compare(
            &gpu,
            &cpu,
            rows,
            &QueryBatch::new(&queries, 20)
                .allow(&allow)
                .exclude_each(&ex),
        );
        let each: Vec<RowMask> = (0..64)
            .map(|q| RowMask::from_fn(100_000, |i| (i + q) % 5 == 0))
            .collect();
        compare(
            &gpu,
            &cpu,
            rows,
            &QueryBatch::new(&queries, 20).allow_each(&each),
        );
        // Exact ties: dyadic values, ties broken by doc on both.
        let tied: Vec<f32> = data.iter().map(|x| (x * 4.0).round() / 4.0).collect();
        let rows = Rows::new(128, &tied).unwrap().with_docs(&docs).unwrap();
        let q: Vec<f32> = queries.iter().map(|x| (x * 2.0).round() / 2.0).collect();
        let c = cpu.top_k(rows, &QueryBatch::new(&q, 50)).unwrap();
        for gpu in &gpu {
            let g = gpu.top_k(rows, &QueryBatch::new(&q, 50)).unwrap();
            assert_eq!(
                g, c,
                "exactly representable scores must give identical results"
            );
        }
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_matches_cpu_weighted_groups() {
        let Some((gpu, cpu)) = both() else { return };
        let (data, queries) = common::clustered(5, 100_000, 32, 128, 50);
        let data: Vec<f32> = data.iter().flat_map(|v| common::blockwise(v, 4)).collect();
        let queries: Vec<f32> = queries
            .iter()
            .flat_map(|v| common::blockwise(v, 4))
            .collect();
        let rows = Rows::new(128, &data).unwrap();
        for w in [
            [1.0, 1.0, 1.0, 1.0],
            [2.0, 0.5, 0.0, 1.0],
            [0.0, 0.0, 3.0, 0.25],
        ] {
            let w = GroupWeights::blocks(32, w.to_vec()).unwrap();
            compare(&gpu, &cpu, rows, &QueryBatch::new(&queries, 20).weights(&w));
        }
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_matches_cpu_real_embeddings() {
        let Some((gpu, cpu)) = both() else { return };
        // Optional: VITRINE_REAL_EMBEDDINGS=path of raw little-endian f32, 128 per row.
        let Ok(path) = std::env::var("VITRINE_REAL_EMBEDDINGS") else {
            eprintln!("SKIP: VITRINE_REAL_EMBEDDINGS not set");
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let n = data.len() / 128;
        let data = &data[..n * 128];
        let rows = Rows::new(128, data).unwrap();
        let queries = &data[..128 * 64.min(n)];
        compare(&gpu, &cpu, rows, &QueryBatch::new(queries, 20));
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_matches_cpu_odd_dims() {
        let Some((gpu, cpu)) = both() else { return };
        // 207: the concept space; 13: scalar tails; 300: 32-row scan blocks;
        // 1000: a wide one (both kernels run every case: see `gpus`).
        for (dim, n) in [(207, 30_001), (13, 5_003), (300, 2_000), (1000, 3_000)] {
            let data = random(20 + dim as u64, n, dim);
            let queries = random(21, 11, dim);
            let rows = Rows::new(dim, &data).unwrap();
            compare(&gpu, &cpu, rows, &QueryBatch::new(&queries, 15));
        }
    }

    /// Rows the tails of a scan group or a streamed chunk would drop are
    /// planted to win: each query's top hit is a copy of it, scaled, at the
    /// end, the start, or a power-of-two boundary. Dyadic values, so the
    /// GPU must equal the CPU exactly. Also k > n, a mask allowing nothing,
    /// and NaN and -0 rows.
    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_matches_cpu_planted_tails_and_edges() {
        let Some((mut gpu, cpu)) = both() else { return };
        // About 20 MB, from the free memory the device reports, so that
        // the rows stream in chunks on any card (a fixed fraction of an
        // H200's memory held every case whole).
        let free = gpu[0].gpu_info().unwrap().free_memory as f64;
        gpu.extend(gpus(20e6 / free));
        for (dim, n) in [(207, 30_001), (13, 5_003), (128, 65_537)] {
            let mut data: Vec<f32> = random(30 + dim as u64, n, dim)
                .iter()
                .map(|x| (x * 4.0).round() / 4.0)
                .collect();
            // Query q: 1 at coordinate q, noise of at most 1/4 elsewhere;
            // its planted row: 64 at coordinate q. It scores 64; any other
            // row at most 1 + 206 / 4 or 64 / 4.
            let mut queries: Vec<f32> = random(31, 12, dim)
                .iter()
                .map(|x| (x * 2.0).round() / 8.0)
                .collect();
            let mut at: Vec<usize> = vec![n - 1, n - 2, n - 3, 0, 1];
            at.extend((10..17).map(|p| (1usize << p) - 1).filter(|&i| i < n - 3));
            at.truncate(12);
            for (q, &row) in at.iter().enumerate() {
                queries[q * dim + q] = 1.0;
                data[row * dim..(row + 1) * dim].fill(0.0);
                data[row * dim + q] = 64.0;
            }
            // A NaN row and a -0 row, never answers above a real score.
            data[(n / 2) * dim..(n / 2 + 1) * dim].fill(f32::NAN);
            data[(n / 3) * dim..(n / 3 + 1) * dim].fill(-0.0);
            let rows = Rows::new(dim, &data).unwrap();
            let queries = &queries[..at.len() * dim];
            let c = cpu.top_k(rows, &QueryBatch::new(queries, 5)).unwrap();
            for (q, hits) in c.iter().enumerate() {
                assert_eq!(hits[0].doc, at[q] as u64, "the planted row wins on the CPU");
            }
            for g in &gpu {
                assert_eq!(g.top_k(rows, &QueryBatch::new(queries, 5)).unwrap(), c);
                let none = RowMask::none(n);
                let out = g
                    .top_k(rows, &QueryBatch::new(queries, 5).allow(&none))
                    .unwrap();
                assert!(out.iter().all(Vec::is_empty));
            }
        }
        // k > n.
        let data: Vec<f32> = (0..5 * 8).map(|i| ((i % 7) as f32) / 4.0).collect();
        let rows = Rows::new(8, &data).unwrap();
        let q = [0.5f32; 8];
        let c = cpu.top_k(rows, &QueryBatch::new(&q, 20)).unwrap();
        assert_eq!(c[0].len(), 5);
        for g in &gpu {
            assert_eq!(g.top_k(rows, &QueryBatch::new(&q, 20)).unwrap(), c);
        }
    }

    /// Streamed chunks, their boundaries answered in full: a memory budget
    /// of about 20 MB (from the free memory the device reports) streams
    /// 65,537 × 128 rows in chunks of about 11,500; query j's 2,000 winners,
    /// in a known order, straddle the estimated end of chunk j + 1 (an
    /// error of ±1,000 rows in the estimate still puts the boundary among
    /// them). Exact values: the GPU must equal the CPU.
    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_streams_chunk_boundaries_in_full() {
        let Some((gpu, cpu)) = both() else { return };
        let free = gpu[0].gpu_info().unwrap().free_memory as f64;
        let budget = 20e6;
        let gpu = gpus(budget / free);
        let (dim, n, k) = (128usize, 65_537usize, 2_000usize);
        let chunk = (budget * 0.30 / (dim * 4 + 8) as f64) as usize;
        let mut data: Vec<f32> = random(40, n, dim)
            .iter()
            .map(|x| (x * 4.0).round() / 4.0)
            .collect();
        let mut queries = vec![0.0f32; 4 * dim];
        let mut want = Vec::new();
        for j in 0..4 {
            queries[j * dim + j] = 1.0;
            let start = ((j + 1) * chunk).min(n - k / 2) - k / 2;
            for (i, r) in (start..start + k).enumerate() {
                data[r * dim + j] = 64.0 + i as f32 / 64.0;
            }
            want.push(
                (start..start + k)
                    .rev()
                    .map(|r| r as u64)
                    .collect::<Vec<_>>(),
            );
        }
        let rows = Rows::new(dim, &data).unwrap();
        let c = cpu.top_k(rows, &QueryBatch::new(&queries, k)).unwrap();
        for (j, hits) in c.iter().enumerate() {
            let docs: Vec<u64> = hits.iter().map(|h| h.doc).collect();
            assert_eq!(docs, want[j], "the planted rows win on the CPU, in order");
        }
        for g in &gpu {
            assert_eq!(g.top_k(rows, &QueryBatch::new(&queries, k)).unwrap(), c);
        }
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_streams_chunks_when_memory_is_short() {
        let Some((_, cpu)) = both() else { return };
        // A tiny memory fraction forces the streaming path.
        let gpu = gpus(0.0005);
        let data = random(9, 300_000, 64);
        let queries = random(10, 16, 64);
        compare(
            &gpu,
            &cpu,
            Rows::new(64, &data).unwrap(),
            &QueryBatch::new(&queries, 30),
        );
    }

    #[test]
    #[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda); run on a GPU machine by scripts/gpu-check.sh"]
    fn gpu_similar_all_matches_cpu() {
        let Some((gpu, cpu)) = both() else { return };
        let data = random(12, 20_000, 128);
        let rows = Rows::new(128, &data).unwrap();
        let allow = RowMask::from_fn(20_000, |i| i % 3 != 0);
        let opts = AllPairsOptions {
            k: 20,
            batch: 4096,
            allow: Some(&allow),
            exclude: None,
        };
        let c = cpu.load(rows).similar_all(&opts).unwrap();
        for gpu in &gpu {
            let g = gpu.load(rows).similar_all(&opts).unwrap();
            assert_same_rel(&g, &c, 1e-5);
        }
    }
}

/// Figures for the issue, as JSON to `$VITRINE_FIGURES_OUT` (default
/// `gpu-figures.json`): GPU scan throughput against the device's memory
/// bandwidth, the `Auto` crossover batch size, and the catalog-wide
/// precompute (1M × 128, k = 20) on GPU and CPU. Run by `scripts/gpu-check.sh`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU (VITRINE_GPU=1, --features cuda), takes a minute; run by scripts/gpu-check.sh, figures in docs/gpu/"]
fn gpu_figures() {
    use std::time::Instant;
    if !gpu_expected() {
        eprintln!("SKIP: set VITRINE_GPU=1 on a machine with a GPU");
        return;
    }
    let out = std::env::var("VITRINE_FIGURES_OUT").unwrap_or_else(|_| "gpu-figures.json".into());
    let n: usize = std::env::var("VITRINE_FIGURES_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dim = 128;
    let mut fig = serde_like::Obj::default();
    let save = |fig: &serde_like::Obj| std::fs::write(&out, fig.to_string()).unwrap();

    let gpu = Scorer::new(ScorerChoice::Gpu, ScorerOptions::default()).expect("GPU scorer");
    let cpu = Scorer::cpu(0);
    let info = gpu.gpu_info().unwrap();
    fig.s("device", &info.name);
    fig.n("total_memory_bytes", info.total_memory as f64);
    fig.n(
        "peak_bandwidth_bytes_per_s",
        info.peak_bandwidth.unwrap_or(f64::NAN),
    );
    let copy = gpu.gpu_copy_bandwidth(4 << 30).unwrap();
    fig.n("dtod_copy_bandwidth_bytes_per_s", copy);
    fig.n(
        "cpu_threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    );
    save(&fig);

    let mut r = common::rng(42);
    let data: Vec<f32> = (0..n * dim).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let queries: Vec<f32> = (0..1024 * dim).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let rows = Rows::new(dim, &data).unwrap();
    let g = gpu.load(rows);
    let c = cpu.load(rows);
    let median = |f: &mut dyn FnMut(), reps: usize| -> f64 {
        f();
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[reps / 2]
    };
    let bytes = (n * dim * 4) as f64;
    for b in [1usize, 8, 64] {
        let batch = QueryBatch::new(&queries[..b * dim], 10);
        let t = median(&mut || drop(g.top_k(&batch).unwrap()), 20);
        fig.n(&format!("gpu_scan_b{b}_seconds"), t);
        fig.n(&format!("gpu_scan_b{b}_bytes_per_s"), bytes / t);
        if let Some(p) = info.peak_bandwidth {
            fig.n(&format!("gpu_scan_b{b}_fraction_of_peak"), bytes / t / p);
        }
        // Copy bandwidth counts bytes read and written; a scan only reads.
        fig.n(&format!("gpu_scan_b{b}_fraction_of_copy"), bytes / t / copy);
    }
    save(&fig);

    // Scan kernel against sgemm, per batch size (rows resident).
    let paths: Vec<Scorer> = [usize::MAX, 0]
        .into_iter()
        .map(|max| {
            let o = ScorerOptions {
                gpu_scan_kernel_max_batch: max,
                ..ScorerOptions::default()
            };
            Scorer::new(ScorerChoice::Gpu, o).expect("GPU scorer")
        })
        .collect();
    let (kernel, gemm) = (paths[0].load(rows), paths[1].load(rows));
    let mut table = Vec::new();
    for b in [1usize, 2, 4, 8, 16, 32, 64] {
        let batch = QueryBatch::new(&queries[..b * dim], 10);
        let tk = median(&mut || drop(kernel.top_k(&batch).unwrap()), 9);
        let ts = median(&mut || drop(gemm.top_k(&batch).unwrap()), 9);
        table.push(format!("[{b},{tk},{ts}]"));
    }
    fig.raw(
        "scan_path_table_batch_kernel_s_sgemm_s",
        &format!("[{}]", table.join(",")),
    );
    drop((kernel, gemm));
    save(&fig);

    // Crossover in batch size: 1M rows resident on the device (the Db case).
    let mut crossover = None;
    let mut table = Vec::new();
    for b in [1usize, 2, 4, 8, 16, 32, 64, 128, 256] {
        let batch = QueryBatch::new(&queries[..b * dim], 10);
        let tg = median(&mut || drop(g.top_k(&batch).unwrap()), 5);
        let tc = median(&mut || drop(c.top_k(&batch).unwrap()), 3);
        table.push(format!("[{b},{tg},{tc}]"));
        if crossover.is_none() && tg < tc {
            crossover = Some(b);
        }
    }
    fig.raw(
        "crossover_table_batch_gpu_s_cpu_s",
        &format!("[{}]", table.join(",")),
    );
    fig.n(
        "crossover_batch_resident",
        crossover.map_or(f64::NAN, |b| b as f64),
    );
    save(&fig);

    // Crossover in work (rows x queries): smaller collections, batch 1 and 16.
    let mut best: Option<usize> = None;
    let mut table = Vec::new();
    for m in [1024usize, 4096, 16_384, 65_536, 262_144] {
        let sub = Rows::new(dim, &data[..m * dim]).unwrap();
        let (gs, cs) = (gpu.load(sub), cpu.load(sub));
        for b in [1usize, 16] {
            let batch = QueryBatch::new(&queries[..b * dim], 10);
            let tg = median(&mut || drop(gs.top_k(&batch).unwrap()), 9);
            let tc = median(&mut || drop(cs.top_k(&batch).unwrap()), 9);
            table.push(format!("[{m},{b},{tg},{tc}]"));
            if tg < tc {
                best = Some(best.map_or(m * b, |w| w.min(m * b)));
            }
        }
    }
    fig.raw(
        "crossover_table_rows_batch_gpu_s_cpu_s",
        &format!("[{}]", table.join(",")),
    );
    fig.n(
        "crossover_work_min_gpu_faster",
        best.map_or(f64::NAN, |w| w as f64),
    );
    save(&fig);

    // Precompute, 1M x 128, k = 20: all of it on the GPU; the CPU on a
    // sample of queries, extrapolated linearly (the job is linear in queries).
    let opts = AllPairsOptions {
        k: 20,
        batch: 8192,
        allow: None,
        exclude: None,
    };
    let t = Instant::now();
    let all = gpu.load(rows).similar_all(&opts).unwrap();
    fig.n("precompute_gpu_seconds", t.elapsed().as_secs_f64());
    assert_eq!(all.len(), n);
    save(&fig);
    let sample = 2048.min(n);
    let t = Instant::now();
    let ex: Vec<Vec<u64>> = (0..sample as u64).map(|i| vec![i]).collect();
    let cpu_hits = c
        .top_k(&QueryBatch::new(&data[..sample * dim], 20).exclude_each(&ex))
        .unwrap();
    let tc = t.elapsed().as_secs_f64();
    fig.n("precompute_cpu_sample_queries", sample as f64);
    fig.n("precompute_cpu_sample_seconds", tc);
    fig.n(
        "precompute_cpu_seconds_extrapolated",
        tc * n as f64 / sample as f64,
    );
    let mut differing = 0;
    for (gh, ch) in all.iter().zip(&cpu_hits) {
        if gh.iter().map(|h| h.doc).ne(ch.iter().map(|h| h.doc)) {
            differing += 1;
        }
    }
    fig.n(
        "precompute_sample_lists_differing_gpu_vs_cpu",
        differing as f64,
    );
    save(&fig);
    eprintln!("{fig}");
}

/// Minimal JSON object writer (no serde in this crate's dev-dependencies).
#[cfg(feature = "cuda")]
mod serde_like {
    #[derive(Default)]
    pub struct Obj(Vec<(String, String)>);
    impl Obj {
        pub fn n(&mut self, k: &str, v: f64) {
            let v = if v.is_finite() {
                format!("{v}")
            } else {
                "null".into()
            };
            self.0.push((k.into(), v));
        }
        pub fn s(&mut self, k: &str, v: &str) {
            self.0.push((k.into(), format!("{v:?}")));
        }
        pub fn raw(&mut self, k: &str, v: &str) {
            self.0.push((k.into(), v.into()));
        }
    }
    impl std::fmt::Display for Obj {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let body: Vec<String> = self
                .0
                .iter()
                .map(|(k, v)| format!("  {k:?}: {v}"))
                .collect();
            write!(f, "{{\n{}\n}}\n", body.join(",\n"))
        }
    }
}
