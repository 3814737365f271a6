//! Arbitrary bytes as stored records: typed errors only, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitrine_storage::{decode_record, Meta, ProductRecord};

fuzz_target!(|data: &[u8]| {
    let _ = decode_record::<ProductRecord>(data);
    let _ = decode_record::<Meta>(data);
});
