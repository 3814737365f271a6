//! Arbitrary bytes as a vector arena file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = vitrine_storage::open_arena_bytes(data) {
        for (_, v) in view.iter() {
            std::hint::black_box(v);
        }
    }
});
