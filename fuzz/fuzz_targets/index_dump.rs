//! Index dumps, two ways. Arbitrary bytes as the header, and as a header's
//! body under a valid magic, version and checksum: a header that parses
//! encodes back to the same bytes (every byte is checked). Then a
//! real saved graph whose two hnsw_rs files are damaged by the input (bytes
//! XORed in at an offset, or the file cut short) under a header that vouches
//! for them (lengths and checksums made to match), so that hnsw_rs's own
//! loader, with its asserts and `process::exit` calls, reads them. A `load`
//! must end in a typed `LoadError` or a usable index, never a panic or an
//! exit; usable means the graph answers a search and takes an insert and a
//! removal.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vitrine_index::{
    encode_index_header, parse_index_header, FileSum, FlatIndex, IndexConfig, Metric, PlanHint,
    SearchOptions, SpaceIndex, VectorIndex,
};

const HEADER: &str = "index.vtx";
const GRAPH: &str = "graph.hnsw.graph";
const DATA: &str = "graph.hnsw.data";

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn flat() -> FlatIndex {
    let mut flat = FlatIndex::with_capacity(4, Metric::Cosine, 32).expect("flat");
    for i in 0..32u64 {
        let x = i as f32;
        flat.upsert(i, &[1.0 + x, (x * 0.7).sin(), (x * 1.3).cos(), 0.5])
            .expect("upsert");
    }
    flat
}

/// A real dump of 32 points, saved once: (folder, graph bytes, data bytes).
fn template() -> &'static (PathBuf, Vec<u8>, Vec<u8>) {
    static T: OnceLock<(PathBuf, Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let d = dir().join("template");
        let index = SpaceIndex::build(flat(), IndexConfig::default(), 1).expect("build");
        index.save(&d, 1).expect("save");
        let graph = std::fs::read(d.join(GRAPH)).expect("graph");
        let data = std::fs::read(d.join(DATA)).expect("data");
        (d, graph, data)
    })
}

/// `bytes` damaged by `input`: XORed in at `at`, or, when the first input
/// byte is odd, also cut to `at`.
fn damage(bytes: &[u8], input: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = input.split_first() else {
        return bytes.to_vec();
    };
    let Some((at, rest)) = rest.split_first_chunk::<2>() else {
        return bytes.to_vec();
    };
    let at = usize::from(u16::from_le_bytes(*at)) % (bytes.len() + 1);
    let mut out = bytes.to_vec();
    for (b, x) in out[at..].iter_mut().zip(rest) {
        *b ^= x;
    }
    if mode % 2 == 1 {
        out.truncate(at);
    }
    out
}

// libfuzzer-sys installs a panic hook that aborts before unwinding, which
// would report the hnsw_rs loader's panics, caught by the library and returned as typed
// errors, as crashes. The default hook lets them unwind to the library's
// `catch_unwind`; a panic that escapes still aborts in libfuzzer-sys's
// wrapper.
fuzz_target!(init: { drop(std::panic::take_hook()); }, |data: &[u8]| {
    let (t, graph, dump) = template();
    // 1. The input as a header: as it is, and as the body of one (the
    // template's magic and version before it, its checksum after it), so
    // that the fields behind the checksum are fuzzed too.
    let mut whole = std::fs::read(t.join(HEADER)).expect("header")[..12].to_vec();
    whole.extend_from_slice(data);
    whole.extend_from_slice(&crc32(&whole).to_le_bytes());
    for bytes in [data, &whole[..]] {
        if let Ok(h) = parse_index_header(bytes) {
            assert_eq!(encode_index_header(&h), bytes, "a parsed header re-encodes");
        }
    }
    let d = dir().join("index");
    let flat = flat();

    // 2. A real dump, damaged, under a header that vouches for it.
    let (first, second) = data.split_at(data.len() / 2);
    let graph = damage(graph, first);
    let dump = damage(dump, second);
    let mut header =
        parse_index_header(&std::fs::read(t.join(HEADER)).expect("header")).expect("parse");
    header.graph = FileSum {
        len: graph.len() as u64,
        crc: crc32(&graph),
    };
    header.data = FileSum {
        len: dump.len() as u64,
        crc: crc32(&dump),
    };
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join(HEADER), encode_index_header(&header)).expect("write");
    std::fs::write(d.join(GRAPH), &graph).expect("write");
    std::fs::write(d.join(DATA), &dump).expect("write");
    if let Ok(mut index) = SpaceIndex::load(&d, 1, flat, IndexConfig::default()) {
        // 32 points: the planner alone would answer exactly.
        let graph = SearchOptions::new(5).with_plan(PlanHint::Graph);
        let q = [1.0, 0.0, 0.0, 0.0];
        let _ = index.search(&q, &graph, None);
        index.upsert(1000, &[0.5, 0.5, 0.5, 0.5]).expect("insert");
        index.remove(0);
        let _ = index.search(&q, &graph, None);
    }
});

fn crc32(bytes: &[u8]) -> u32 {
    // The IEEE CRC-32 the header records, bit by bit (the fuzz crate keeps
    // its dependencies to the engine's own).
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
