//! Invalid parameters and arguments are typed errors and never reach hnsw_rs.

use vitrine_index::{
    Error, FlatIndex, HnswIndex, HnswParams, IndexConfig, Metric, PlannerConfig, SearchOptions,
    SpaceIndex, VectorIndex,
};

fn with(f: impl FnOnce(&mut HnswParams)) -> IndexConfig {
    let mut cfg = IndexConfig::default();
    f(&mut cfg.hnsw);
    cfg
}

fn invalid(r: vitrine_index::Result<SpaceIndex>, field: &str) {
    match r {
        Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    }
}

#[test]
fn bad_hnsw_params_are_refused() {
    let cases: Vec<(IndexConfig, &str)> = vec![
        (with(|p| p.max_connections = 300), "max_connections"),
        (with(|p| p.max_connections = 257), "max_connections"),
        (with(|p| p.max_connections = 256), "max_connections"),
        (with(|p| p.max_connections = 0), "max_connections"),
        (with(|p| p.max_connections = 3), "max_connections"),
        (with(|p| p.ef_construction = 0), "ef_construction"),
        (with(|p| p.ef_construction = 8), "ef_construction"),
        (with(|p| p.ef_construction = 5000), "ef_construction"),
        (with(|p| p.ef_search = 0), "ef_search"),
        (with(|p| p.ef_search = 4097), "ef_search"),
        (with(|p| p.max_layers = 0), "max_layers"),
        (with(|p| p.max_layers = 17), "max_layers"),
        (with(|p| p.max_layers = 8), "max_layers"),
    ];
    for (cfg, field) in cases {
        invalid(SpaceIndex::new(4, Metric::Cosine, cfg.clone()), field);
        let flat = FlatIndex::new(4, Metric::Cosine).unwrap();
        invalid(SpaceIndex::build(flat, cfg.clone(), 1), field);
        assert!(HnswIndex::new(4, Metric::Cosine, cfg.hnsw.clone()).is_err());
    }
    // Boundaries are accepted.
    let ok = with(|p| {
        p.max_connections = 255;
        p.ef_construction = 255;
        p.max_layers = 16;
        p.ef_search = 4096;
    });
    SpaceIndex::new(4, Metric::Cosine, ok).unwrap();
}

#[test]
fn bad_index_config_is_refused() {
    for ratio in [0.0, -1.0, f64::NAN] {
        let cfg = IndexConfig {
            compaction_ratio: ratio,
            ..IndexConfig::default()
        };
        invalid(SpaceIndex::new(4, Metric::Cosine, cfg), "compaction_ratio");
    }
    let cfg = IndexConfig {
        planner: PlannerConfig {
            exact_max_count: 0,
            exact_max_fraction: 1.5,
        },
        ..IndexConfig::default()
    };
    invalid(
        SpaceIndex::new(4, Metric::Cosine, cfg),
        "exact_max_fraction",
    );
    invalid(
        SpaceIndex::new(0, Metric::Cosine, IndexConfig::default()),
        "dim",
    );
}

#[test]
fn bad_queries_are_refused() {
    let mut idx = SpaceIndex::new(3, Metric::Cosine, IndexConfig::default()).unwrap();
    idx.upsert(1, &[1.0, 0.0, 0.0]).unwrap();
    let q = [1.0, 0.0, 0.0];
    assert!(matches!(
        idx.search(&[1.0, 0.0], &SearchOptions::new(1), None),
        Err(Error::DimensionMismatch {
            expected: 3,
            found: 2
        })
    ));
    assert!(matches!(
        idx.search(&[f32::NAN, 0.0, 0.0], &SearchOptions::new(1), None),
        Err(Error::NonFinite)
    ));
    assert!(matches!(
        idx.search(&[0.0; 3], &SearchOptions::new(1), None),
        Err(Error::ZeroVector)
    ));
    assert!(matches!(
        idx.search(&q, &SearchOptions::new(1).with_ef(0), None),
        Err(Error::InvalidArgument { field: "ef", .. })
    ));
    assert!(idx
        .search(&q, &SearchOptions::new(0), None)
        .unwrap()
        .hits
        .is_empty());
    assert_eq!(
        idx.search(&q, &SearchOptions::new(usize::MAX), None)
            .unwrap()
            .hits
            .len(),
        1
    );
    assert!(matches!(idx.upsert(2, &[0.0; 3]), Err(Error::ZeroVector)));
    assert!(matches!(
        idx.upsert(2, &[1.0, f32::NAN, 0.0]),
        Err(Error::NonFinite)
    ));
    assert_eq!(idx.len(), 1);
    assert_eq!(idx.graph().points(), 1);
}
