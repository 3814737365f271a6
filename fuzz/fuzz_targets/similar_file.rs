//! Arbitrary bytes as a precomputed-similar file (`vitrine precompute
//! similar`): opening and every lookup must end in a typed error or a
//! bounded answer, never a panic. Fuzzing builds skip the checksums, so
//! the layout checks behind them are reached.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vitrine_index::PrecomputedSimilar;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("similar.vsim");
    std::fs::write(&path, data).expect("write");
    if let Ok(file) = PrecomputedSimilar::open(&path) {
        for i in 0..file.len().min(64) {
            std::hint::black_box(file.list_at(i));
            if let Some(id) = file.id(i) {
                std::hint::black_box(file.get(id));
            }
        }
        std::hint::black_box(file.position("x"));
    }
});
