//! FlatIndex and the SIMD kernel.

mod common;

use rand::Rng;
use vitrine_index::{
    dot_product, AllowSet, Error, FlatIndex, Metric, Plan, SearchOptions, VectorIndex,
};

#[test]
fn simd_dot_matches_scalar_reference() {
    let mut r = common::rng(1);
    for _ in 0..2000 {
        let n = r.gen_range(1..300);
        let a: Vec<f32> = (0..n).map(|_| r.gen_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| r.gen_range(-2.0..2.0)).collect();
        let reference: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let scale: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        let got = dot_product(&a, &b).unwrap() as f64;
        assert!(
            (got - reference).abs() <= 1e-5 * scale.max(1.0),
            "n={n} got {got} want {reference}"
        );
    }
    assert_eq!(dot_product(&[1.0], &[1.0, 2.0]), None);
}

#[test]
fn upsert_get_remove_and_swap() {
    let mut f = FlatIndex::with_capacity(2, Metric::InnerProduct, 4).unwrap();
    f.upsert(10, &[1.0, 2.0]).unwrap();
    f.upsert(20, &[3.0, 4.0]).unwrap();
    f.upsert(30, &[5.0, 6.0]).unwrap();
    f.upsert(20, &[7.0, 8.0]).unwrap();
    assert_eq!(f.len(), 3);
    assert!(f.remove(10));
    assert!(!f.remove(10));
    assert_eq!(f.get(30), Some(&[5.0, 6.0][..]));
    assert_eq!(f.get(20), Some(&[7.0, 8.0][..]));
    let mut all: Vec<u64> = f.iter().map(|(d, _)| d).collect();
    all.sort();
    assert_eq!(all, vec![20, 30]);
}

#[test]
fn search_ties_subsets_and_edge_cases() {
    let mut f = FlatIndex::new(2, Metric::InnerProduct).unwrap();
    for d in [5u64, 3, 9, 1] {
        f.upsert(d, &[1.0, 0.0]).unwrap();
    }
    f.upsert(7, &[2.0, 0.0]).unwrap();
    let out = f.search(&[1.0, 0.0], &SearchOptions::new(3), None).unwrap();
    assert_eq!(out.plan, Plan::Exact);
    let docs: Vec<u64> = out.hits.iter().map(|h| h.doc).collect();
    assert_eq!(docs, vec![7, 1, 3]);
    assert_eq!(out.hits[0].score, 2.0);

    let allow = AllowSet::from_unsorted(vec![9, 5, 100]);
    let out = f
        .search(&[1.0, 0.0], &SearchOptions::new(10), Some(&allow))
        .unwrap();
    assert_eq!(
        out.hits.iter().map(|h| h.doc).collect::<Vec<_>>(),
        vec![5, 9]
    );
    // A filter larger than the index takes the full-scan path.
    let big: AllowSet = (0..1000).collect();
    let out = f
        .search(&[1.0, 0.0], &SearchOptions::new(2), Some(&big))
        .unwrap();
    assert_eq!(
        out.hits.iter().map(|h| h.doc).collect::<Vec<_>>(),
        vec![7, 1]
    );

    assert!(f
        .search(&[1.0, 0.0], &SearchOptions::new(0), None)
        .unwrap()
        .hits
        .is_empty());
    assert_eq!(
        f.search(&[1.0, 0.0], &SearchOptions::new(99), None)
            .unwrap()
            .hits
            .len(),
        5
    );
    assert!(matches!(
        f.search(&[1.0], &SearchOptions::new(1), None),
        Err(Error::DimensionMismatch {
            expected: 2,
            found: 1
        })
    ));
    assert!(matches!(
        f.search(&[f32::NAN, 0.0], &SearchOptions::new(1), None),
        Err(Error::NonFinite)
    ));
}

#[test]
fn cosine_validation_and_normalisation() {
    let mut f = FlatIndex::new(3, Metric::Cosine).unwrap();
    assert!(matches!(f.upsert(1, &[0.0; 3]), Err(Error::ZeroVector)));
    assert!(matches!(
        f.upsert(1, &[f32::INFINITY, 0.0, 0.0]),
        Err(Error::NonFinite)
    ));
    // A large but finite vector has a direction like any other (its
    // squared norm overflows f32, not f64); under inner product, where it
    // is kept as given, it is refused.
    let mut large = FlatIndex::new(3, Metric::Cosine).unwrap();
    large.upsert(1, &[1e30, 1e30, 0.0]).unwrap();
    let v = large.get(1).unwrap();
    assert!(
        (v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
        "{v:?}"
    );
    let mut ip = FlatIndex::new(3, Metric::InnerProduct).unwrap();
    assert!(matches!(
        ip.upsert(1, &[1e30, 1e30, 0.0]),
        Err(Error::NonFinite)
    ));
    assert!(matches!(
        f.upsert(1, &[1.0]),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(f.is_empty());
    f.upsert(1, &[3.0, 4.0, 0.0]).unwrap();
    assert_eq!(f.get(1), Some(&[0.6, 0.8, 0.0][..]));
    let out = f
        .search(&[0.0, 2.0, 0.0], &SearchOptions::new(1), None)
        .unwrap();
    assert!((out.hits[0].score - 0.8).abs() < 1e-6);
    assert!(matches!(
        f.search(&[0.0; 3], &SearchOptions::new(1), None),
        Err(Error::ZeroVector)
    ));
    assert!(FlatIndex::new(0, Metric::Cosine).is_err());
}
