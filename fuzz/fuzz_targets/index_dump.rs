//! Arbitrary bytes as an index dump: the header parser, then a full `load`
//! from a folder holding those bytes as the header and as both hnsw_rs files.
//! Must end in a typed `LoadError`, never a panic or a `process::exit`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vitrine_index::{FlatIndex, IndexConfig, Metric, SpaceIndex, VectorIndex};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir")).path()
}

fuzz_target!(|data: &[u8]| {
    let _ = vitrine_index::parse_index_header(data);

    let d = dir().join("index");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("index.vtx"), data).expect("write");
    std::fs::write(d.join("graph.hnsw.graph"), data).expect("write");
    std::fs::write(d.join("graph.hnsw.data"), data).expect("write");
    let mut flat = FlatIndex::with_capacity(4, Metric::Cosine, 2).expect("flat");
    flat.upsert(1, &[1.0, 0.0, 0.0, 0.0]).expect("upsert");
    flat.upsert(2, &[0.0, 1.0, 0.0, 0.0]).expect("upsert");
    for generation in [0, 1] {
        let _ = SpaceIndex::load(&d, generation, flat.clone(), IndexConfig::default());
    }
});
