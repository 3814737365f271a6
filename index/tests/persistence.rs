//! save/load round trips and every way a saved index can be refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::clustered;
use vitrine_index::{
    AllowSet, FlatIndex, IndexConfig, LoadError, Metric, PlanHint, SearchOptions, SpaceIndex,
    VectorIndex,
};

const DIM: usize = 16;

fn sample() -> (SpaceIndex, Vec<Vec<f32>>) {
    let (data, queries) = clustered(3, 1500, 30, DIM, 10);
    let mut flat = FlatIndex::new(DIM, Metric::Cosine).unwrap();
    for (i, v) in data.iter().enumerate() {
        flat.upsert(i as u64, v).unwrap();
    }
    // One build thread: a parallel build differs from run to run, and the
    // damage tests below flip bytes at offsets that follow its layout.
    let mut idx = SpaceIndex::build(flat, IndexConfig::default(), 1).unwrap();
    // Leave tombstones in the saved graph.
    for d in 0..40u64 {
        idx.remove(d);
    }
    for d in 40..60u64 {
        idx.upsert(d, &data[d as usize + 100]).unwrap();
    }
    assert_eq!(idx.tombstones(), 60);
    (idx, queries)
}

fn all_results(idx: &SpaceIndex, queries: &[Vec<f32>]) -> Vec<Vec<(u64, u32)>> {
    let allow: AllowSet = (0..1500).filter(|d| d % 3 == 0).collect();
    let mut out = Vec::new();
    for q in queries {
        for plan in [PlanHint::Graph, PlanHint::Exact] {
            for a in [None, Some(&allow)] {
                let r = idx
                    .search(q, &SearchOptions::new(10).with_plan(plan), a)
                    .unwrap();
                out.push(r.hits.iter().map(|h| (h.doc, h.score.to_bits())).collect());
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load(dir: &Path, idx: &SpaceIndex, generation: u64) -> Result<SpaceIndex, LoadError> {
    SpaceIndex::load(dir, generation, idx.flat().clone(), IndexConfig::default())
}

#[test]
fn save_load_roundtrip_gives_identical_results() {
    let (idx, queries) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("space");
    idx.save(&dir, 3).unwrap();
    // Saving again over an existing save replaces it.
    idx.save(&dir, 3).unwrap();
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "temp dir left behind"
    );

    let mut loaded = load(&dir, &idx, 3).unwrap();
    assert_eq!(loaded.tombstones(), idx.tombstones());
    assert_eq!(loaded.len(), idx.len());
    assert_eq!(all_results(&loaded, &queries), all_results(&idx, &queries));

    // The loaded graph keeps working: insert, replace, save again.
    loaded.upsert(5000, &queries[0]).unwrap();
    loaded.upsert(100, &queries[1]).unwrap();
    let out = loaded
        .search(
            &queries[0],
            &SearchOptions::new(1).with_plan(PlanHint::Graph),
            None,
        )
        .unwrap();
    assert_eq!(out.hits[0].doc, 5000);
    loaded.save(&dir, 4).unwrap();
    let again = load(&dir, &loaded, 4).unwrap();
    assert_eq!(
        all_results(&again, &queries),
        all_results(&loaded, &queries)
    );
}

#[test]
fn empty_index_roundtrip() {
    let idx = SpaceIndex::new(4, Metric::InnerProduct, IndexConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("e");
    idx.save(&dir, 1).unwrap();
    let mut l = load(&dir, &idx, 1).unwrap();
    assert!(l.is_empty());
    l.upsert(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    assert_eq!(
        l.search(&[1.0, 0.0, 0.0, 0.0], &SearchOptions::new(1), None)
            .unwrap()
            .hits[0]
            .doc,
        1
    );
}

#[test]
fn stale_missing_and_mismatch() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("space");
    assert!(matches!(load(&dir, &idx, 1), Err(LoadError::Missing { path }) if path == dir));
    idx.save(&dir, 7).unwrap();
    assert!(matches!(
        load(&dir, &idx, 8),
        Err(LoadError::Stale {
            found: 7,
            expected: 8,
            ..
        })
    ));
    fs::remove_file(dir.join("index.vtx")).unwrap();
    assert!(matches!(
        load(&dir, &idx, 7),
        Err(LoadError::Missing { .. })
    ));

    idx.save(&dir, 7).unwrap();
    let cfg = IndexConfig::default;
    let mut fewer = idx.flat().clone();
    fewer.remove(1000);
    // A failed load gives the vectors back, for a rebuild without a copy.
    let Err(failed) = SpaceIndex::load_or_give_back(&dir, 7, fewer.clone(), cfg()) else {
        panic!("loaded against fewer vectors");
    };
    assert!(matches!(failed.0, LoadError::Mismatch { .. }));
    assert_eq!(failed.1.len(), fewer.len());
    assert!(!failed.1.contains(1000) && failed.1.contains(1001));
    let loaded = SpaceIndex::load_or_give_back(&dir, 7, idx.flat().clone(), cfg()).unwrap();
    assert_eq!(loaded.into_flat().len(), idx.flat().len());
    assert!(matches!(
        SpaceIndex::load(&dir, 7, fewer, cfg()),
        Err(LoadError::Mismatch { .. })
    ));
    let mut other = idx.flat().clone();
    other.remove(1000);
    other.upsert(99_999, &[1.0; DIM]).unwrap();
    assert!(matches!(
        SpaceIndex::load(&dir, 7, other, cfg()),
        Err(LoadError::Mismatch { .. })
    ));
    let wrong_dim = FlatIndex::new(DIM + 1, Metric::Cosine).unwrap();
    assert!(matches!(
        SpaceIndex::load(&dir, 7, wrong_dim, cfg()),
        Err(LoadError::Mismatch { .. })
    ));
    let mut wrong_metric = FlatIndex::new(DIM, Metric::InnerProduct).unwrap();
    for (d, v) in idx.flat().iter() {
        wrong_metric.upsert(d, v).unwrap();
    }
    assert!(matches!(
        SpaceIndex::load(&dir, 7, wrong_metric, cfg()),
        Err(LoadError::Mismatch { .. })
    ));
    let mut bad_cfg = cfg();
    bad_cfg.hnsw.max_connections = 1000;
    assert!(matches!(
        SpaceIndex::load(&dir, 7, idx.flat().clone(), bad_cfg),
        Err(LoadError::Config(_))
    ));
}

/// Applies `damage` to a copy of a good save and expects `Corrupt` naming `file`.
fn expect_corrupt(
    good: &Path,
    idx: &SpaceIndex,
    n: usize,
    file: &str,
    damage: impl Fn(&mut Vec<u8>),
) {
    let dir = good.with_file_name(format!("case{n}"));
    copy_dir(good, &dir);
    let p: PathBuf = dir.join(file);
    let mut bytes = fs::read(&p).unwrap();
    damage(&mut bytes);
    fs::write(&p, &bytes).unwrap();
    match load(&dir, idx, 7) {
        Err(LoadError::Corrupt { path, reason }) => {
            assert_eq!(path, p, "case {n}: {reason}");
        }
        Err(other) => panic!("case {n} ({file}): expected Corrupt, got {other:?}"),
        Ok(_) => panic!("case {n} ({file}): damaged index loaded"),
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_files_are_refused() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let mut n = 0;
    for file in ["index.vtx", "graph.hnsw.graph", "graph.hnsw.data"] {
        let len = fs::metadata(good.join(file)).unwrap().len() as usize;
        for cut in [0, 1, len / 2, len - 1] {
            n += 1;
            expect_corrupt(&good, &idx, n, file, |b| b.truncate(cut));
        }
        for pos in [0, 9, len / 3, len / 2, len - 5, len - 1] {
            n += 1;
            expect_corrupt(&good, &idx, n, file, |b| b[pos] ^= 0x10);
        }
        n += 1;
        expect_corrupt(&good, &idx, n, file, |b| b.extend_from_slice(&[0; 7]));
    }
    // A missing dump file with a valid header.
    let dir = tmp.path().join("nodata");
    copy_dir(&good, &dir);
    fs::remove_file(dir.join("graph.hnsw.data")).unwrap();
    assert!(matches!(
        load(&dir, &idx, 7),
        Err(LoadError::Corrupt { .. })
    ));
    // The untouched save still loads.
    load(&good, &idx, 7).unwrap();
}

/// Loads in a thread, so that a load blocked on a named pipe fails the test
/// instead of hanging it.
#[cfg(unix)]
fn load_within(dir: &Path, idx: &SpaceIndex, secs: u64) -> Result<SpaceIndex, LoadError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (dir, flat) = (dir.to_path_buf(), idx.flat().clone());
    std::thread::spawn(move || {
        let _ = tx.send(SpaceIndex::load(&dir, 7, flat, IndexConfig::default()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the load returns instead of blocking")
}

#[cfg(unix)]
#[test]
fn files_that_are_not_regular_or_too_long_are_refused_before_they_are_read() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    for (n, file) in ["index.vtx", "graph.hnsw.data"].into_iter().enumerate() {
        let dir = tmp.path().join(format!("fifo{n}"));
        copy_dir(&good, &dir);
        let p = dir.join(file);
        fs::remove_file(&p).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success());
        match load_within(&dir, &idx, 20) {
            Err(LoadError::Corrupt { path, reason }) => {
                assert_eq!(path, p);
                assert!(reason.contains("not a regular file"), "{reason}");
            }
            other => panic!("{file} as a pipe: {other:?}"),
        }
    }
    // A header whose file goes on for a terabyte past its points (sparse,
    // so it costs no disk): refused from its first bytes, not read whole.
    let dir = tmp.path().join("long");
    copy_dir(&good, &dir);
    let p = dir.join("index.vtx");
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1 << 40).unwrap();
    match load_within(&dir, &idx, 20) {
        Err(LoadError::Corrupt { path, reason }) => {
            assert_eq!(path, p);
            assert!(
                reason.contains("longer than a header of 1520 points"),
                "{reason}"
            );
        }
        other => panic!("a terabyte header: {other:?}"),
    }
    // So is a data dump of the wrong length, whatever its size.
    let dir = tmp.path().join("longdata");
    copy_dir(&good, &dir);
    let p = dir.join("graph.hnsw.data");
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    match load_within(&dir, &idx, 20) {
        Err(LoadError::Corrupt { path, reason }) => {
            assert_eq!(path, p);
            assert!(reason.contains(&format!("expected {len}")), "{reason}");
        }
        other => panic!("a terabyte data dump: {other:?}"),
    }
}

#[test]
fn the_widest_graph_keeps_growing_after_a_reload() {
    // hnsw_rs saves M in one byte: the widest graph accepted must still
    // link the points inserted after it is loaded.
    let (data, _) = clustered(5, 1200, 1, DIM, 10);
    let cfg = IndexConfig {
        hnsw: vitrine_index::HnswParams {
            max_connections: MAX_M,
            ef_construction: MAX_M,
            ..Default::default()
        },
        ..IndexConfig::default()
    };
    let mut flat = FlatIndex::new(DIM, Metric::Cosine).unwrap();
    for (i, v) in data[..1000].iter().enumerate() {
        flat.upsert(i as u64, v).unwrap();
    }
    // (One thread: the same graph every run.)
    let idx = SpaceIndex::build(flat, cfg.clone(), 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("space");
    idx.save(&dir, 1).unwrap();
    let mut idx = SpaceIndex::load(&dir, 1, idx.flat().clone(), cfg).unwrap();
    for (i, v) in data[1000..].iter().enumerate() {
        idx.upsert(1000 + i as u64, v).unwrap();
    }
    let graph = SearchOptions::new(1).with_plan(PlanHint::Graph);
    let lost = data[1000..]
        .iter()
        .enumerate()
        .filter(|(i, v)| idx.search(v, &graph, None).unwrap().hits[0].doc != 1000 + *i as u64)
        .count();
    assert_eq!(
        lost, 0,
        "points inserted after the reload that the graph cannot reach"
    );
}

/// hnsw_rs saves a graph's level scale (1 / ln M) but loads the field as a
/// factor on it: each save and load shrank the levels of new points. Our
/// saves write the factor 1.0, through any number of reloads.
#[test]
fn the_level_scale_survives_reloads() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let scale = |dir: &Path| {
        let graph = fs::read(dir.join("graph.hnsw.graph")).unwrap();
        f64::from_ne_bytes(graph[6..14].try_into().unwrap())
    };
    let mut idx = idx;
    for generation in 1..=3 {
        let dir = tmp.path().join(format!("g{generation}"));
        idx.save(&dir, generation).unwrap();
        assert_eq!(scale(&dir), 1.0, "save {generation}");
        idx = load(&dir, &idx, generation).unwrap();
    }
    // A forged factor (checksums recomputed) is refused, not loaded.
    let good = tmp.path().join("g3");
    for bad in [f64::NAN, 0.0, -1.0, 2.0] {
        let mut graph = fs::read(good.join("graph.hnsw.graph")).unwrap();
        graph[6..14].copy_from_slice(&bad.to_ne_bytes());
        let dir = tmp.path().join(format!("bad-{}", bad.to_bits()));
        forge(&good, &dir, &[("graph.hnsw.graph", graph)]);
        assert!(
            matches!(load(&dir, &idx, 3), Err(LoadError::Corrupt { .. })),
            "factor {bad}"
        );
    }
}

const MAX_M: usize = 255;

/// A neighbour distance that is NaN (a forged dump, checksums recomputed)
/// is refused when the index loads: searches never read it, but the first
/// insert that links to its point sorts the list, and hnsw_rs panics there.
#[test]
fn a_nan_neighbour_distance_is_refused_at_load() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let mut graph = fs::read(good.join("graph.hnsw.graph")).unwrap();
    // The first point record: magic, id (8), layer (1), rank (4), then its
    // layer-0 neighbour count (8) and first neighbour: id (8), layer (1),
    // rank (4), distance (4).
    let magic = 0x000a_678fu32.to_ne_bytes();
    let at = graph.windows(4).position(|w| w == magic).unwrap();
    let count = u64::from_ne_bytes(graph[at + 17..at + 25].try_into().unwrap());
    assert!(count >= 1);
    let dist = at + 25 + 13;
    let stored = f32::from_ne_bytes(graph[dist..dist + 4].try_into().unwrap());
    assert!(stored.is_finite() && stored >= 0.0, "{stored}");
    graph[dist..dist + 4].copy_from_slice(&f32::NAN.to_ne_bytes());
    let dir = tmp.path().join("nan");
    copy_dir(&good, &dir);
    fs::write(dir.join("graph.hnsw.graph"), &graph).unwrap();
    let mut h =
        vitrine_index::parse_index_header(&fs::read(good.join("index.vtx")).unwrap()).unwrap();
    h.graph = vitrine_index::FileSum {
        len: graph.len() as u64,
        crc: crc32fast::hash(&graph),
    };
    fs::write(
        dir.join("index.vtx"),
        vitrine_index::encode_index_header(&h),
    )
    .unwrap();
    match load(&dir, &idx, 7) {
        Err(LoadError::Corrupt { reason, .. }) => assert!(reason.contains("distance"), "{reason}"),
        other => panic!("{:?}", other.map(|_| "loaded")),
    }
}

/// Damaged hnsw_rs files under a header that vouches for them (lengths and
/// checksums made to match, as a bug or a forger could): hnsw_rs's own
/// loader reads them, and it asserts and calls `process::exit` on some
/// damage. A load must still end in an error or a usable index (this
/// process exiting fails the test).
#[test]
fn damaged_dumps_with_matching_checksums_never_exit() {
    let (idx, queries) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let (mut refused, mut loaded) = (0, 0);
    for file in ["graph.hnsw.graph", "graph.hnsw.data"] {
        let bytes = fs::read(good.join(file)).unwrap();
        let len = bytes.len();
        let mut cases: Vec<Vec<u8>> = [0, 1, 8, len / 4, len / 2, len - 1]
            .iter()
            .map(|&cut| bytes[..cut].to_vec())
            .collect();
        let sweep = (1..32).map(|i| i * len / 32);
        for pos in [0, 3, 8, 12, 40, len - 5].into_iter().chain(sweep) {
            let mut b = bytes.clone();
            for x in &mut b[pos..(pos + 4).min(len)] {
                *x ^= 0xff;
            }
            cases.push(b);
        }
        for (n, damaged) in cases.into_iter().enumerate() {
            // (Named apart from the file, so that an error names the file
            // only by blaming it.)
            let dir = tmp.path().join(format!("case-{}-{n}", file.len()));
            forge(&good, &dir, &[(file, damaged)]);
            match load(&dir, &idx, 7) {
                Err(e) => {
                    refused += 1;
                    // A damaged magic (case 6 flips bytes 0..4) is blamed
                    // on the file that holds it.
                    if n == 6 {
                        assert!(
                            matches!(&e, vitrine_index::LoadError::Corrupt { path, .. }
                                if path.file_name() == Some(std::ffi::OsStr::new(file))),
                            "{file}: {e}"
                        );
                    }
                }
                Ok(loaded_idx) => {
                    assert_ne!(n, 6, "{file}: a damaged magic loaded");
                    loaded += 1;
                    // Whatever the graph holds, answers are live documents
                    // with their exact scores.
                    for q in queries.iter().take(3) {
                        let graph = SearchOptions::new(10).with_plan(PlanHint::Graph);
                        let out = loaded_idx.search(q, &graph, None).unwrap();
                        let exact = idx.search(q, &SearchOptions::new(1500), None).unwrap();
                        for h in &out.hits {
                            let want = exact.hits.iter().find(|e| e.doc == h.doc);
                            assert_eq!(want.map(|e| e.score), Some(h.score), "{file} case {n}");
                        }
                    }
                }
            }
        }
    }
    eprintln!("damaged dumps: {refused} refused, {loaded} loaded");
    assert!(refused > 0);
}

/// A description naming another element type, or a point count hnsw_rs
/// counts down from as a negative i64: refused by our check, before
/// hnsw_rs's loader panics on them (a panic caught is still a panic
/// message, and an abort under `panic = "abort"`).
#[test]
fn descriptions_hnsw_rs_would_panic_on_are_refused_first() {
    if cfg!(target_endian = "big") {
        return;
    }
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let bytes = fs::read(good.join("graph.hnsw.graph")).unwrap();
    // magic 4, mode 1, M 1, level scale 8, layers 1, ef 8: the point count
    // is bytes 23..31, the dimension 31..39, then the two names.
    let mut points = bytes.clone();
    points[30] ^= 0x80;
    let dist_len = u64::from_ne_bytes(bytes[39..47].try_into().unwrap()) as usize;
    let t = 47 + dist_len + 8;
    assert_eq!(&bytes[t..t + 3], b"f32");
    let mut element = bytes.clone();
    element[t + 1..t + 3].copy_from_slice(b"64");
    for (what, damaged, says) in [
        ("points", points, "points described"),
        ("element", element, "element type 'f64'"),
    ] {
        let dir = tmp.path().join(what);
        forge(&good, &dir, &[("graph.hnsw.graph", damaged)]);
        match load(&dir, &idx, 7) {
            Err(LoadError::Corrupt { reason, .. }) => {
                assert!(reason.contains(says), "{what}: {reason}")
            }
            other => panic!("{what}: {:?}", other.map(|_| "loaded")),
        }
    }
}

/// Rewrites `file` of the save in `good` into a copy at `dir`, with the
/// header's length and checksum of it made to match (a forged dump).
fn forge(good: &Path, dir: &Path, edits: &[(&str, Vec<u8>)]) {
    copy_dir(good, dir);
    let mut h =
        vitrine_index::parse_index_header(&fs::read(good.join("index.vtx")).unwrap()).unwrap();
    for (file, bytes) in edits {
        fs::write(dir.join(file), bytes).unwrap();
        let sum = vitrine_index::FileSum {
            len: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        };
        if file.ends_with("graph") {
            h.graph = sum;
        } else {
            h.data = sum;
        }
    }
    fs::write(
        dir.join("index.vtx"),
        vitrine_index::encode_index_header(&h),
    )
    .unwrap();
}

/// Fields of a checksummed dump that hnsw_rs trusts and our header also
/// holds must agree with it: hnsw_rs sizes every insert's heaps by the
/// dump's ef (2^56 aborts the process), and a point id twice would answer
/// one document twice and another never.
#[test]
fn a_forged_dump_disagreeing_with_the_header_is_refused() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let graph = fs::read(good.join("graph.hnsw.graph")).unwrap();
    let data = fs::read(good.join("graph.hnsw.data")).unwrap();
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
    // Description (version 4): magic, mode, M, level scale, layers, ef.
    assert_eq!(u32_at(&graph, 0), 0x002a_6779);
    const EF_AT: usize = 4 + 1 + 1 + 8 + 1;
    assert_eq!(u64_at(&graph, EF_AT), 200, "the default ef_construction");

    let mut big_ef = graph.clone();
    big_ef[EF_AT..EF_AT + 8].copy_from_slice(&(1u64 << 56).to_ne_bytes());
    let dir = tmp.path().join("ef");
    forge(&good, &dir, &[("graph.hnsw.graph", big_ef)]);
    let e = load(&dir, &idx, 7).expect_err("a dump with another ef loaded");
    assert!(e.to_string().contains("ef_construction"), "{e}");

    // The first two points of layer 0 and their data records; the second
    // is given the first one's id in both files.
    let first = (0..graph.len() - 4)
        .find(|&i| u32_at(&graph, i) == 0x000a_678f)
        .unwrap();
    let mut at = first + 4 + 8 + 1 + 4;
    for _ in 0..16 {
        let k = u64_at(&graph, at) as usize;
        at += 8 + k * (8 + 1 + 4 + 4);
    }
    assert_eq!(u32_at(&graph, at), 0x000a_678f, "the second point");
    let (id0, id1) = (u64_at(&graph, first + 4), u64_at(&graph, at + 4));
    assert_ne!(id0, id1);
    let record = 4 + 8 + 8 + DIM * 4;
    assert_eq!(u64_at(&data, 12 + 4), id0);
    assert_eq!(u64_at(&data, 12 + record + 4), id1);
    let mut g = graph.clone();
    g[at + 4..at + 12].copy_from_slice(&id0.to_ne_bytes());
    let mut d = data.clone();
    d[12 + record + 4..12 + record + 12].copy_from_slice(&id0.to_ne_bytes());
    let dir = tmp.path().join("repeat");
    forge(
        &good,
        &dir,
        &[("graph.hnsw.graph", g), ("graph.hnsw.data", d)],
    );
    let e = load(&dir, &idx, 7).expect_err("a dump with a point id twice loaded");
    assert!(e.to_string().contains("repeated"), "{e}");

    // Untouched, the same forging loads.
    let dir = tmp.path().join("same");
    forge(&good, &dir, &[("graph.hnsw.graph", graph)]);
    load(&dir, &idx, 7).unwrap();
}

/// An entry point below the graph's top layer (a forged dump, checksums
/// recomputed) is refused: hnsw_rs's drop frees the layers up to the entry
/// point's only, and would leak the points above it.
#[test]
fn an_entry_point_below_the_top_layer_is_refused_at_load() {
    let (idx, _) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    idx.save(&good, 7).unwrap();
    let graph = fs::read(good.join("graph.hnsw.graph")).unwrap();
    // The file ends with the entry point: id (8), layer (1), rank (4).
    let layer = graph.len() - 5;
    assert!(graph[layer] >= 1, "a sample of one layer");
    let mut forged = graph.clone();
    forged[layer] = 0;
    forged[layer + 1..].copy_from_slice(&0i32.to_ne_bytes());
    let dir = tmp.path().join("low-entry");
    forge(&good, &dir, &[("graph.hnsw.graph", forged)]);
    match load(&dir, &idx, 7) {
        Err(LoadError::Corrupt { reason, .. }) => {
            assert!(reason.contains("top layer"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    load(&good, &idx, 7).unwrap();
}
