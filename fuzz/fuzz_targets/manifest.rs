//! Arbitrary bytes as a model manifest: typed errors, never a panic. The
//! manifest is parsed and checked before the ONNX bytes (empty here) are
//! read, so every input reaches `Manifest::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vitrine::Model::from_bytes(b"", data);
});
