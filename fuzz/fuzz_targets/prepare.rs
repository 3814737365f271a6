//! Arbitrary bytes through decode + catalog preparation: must never panic.
//!
//! `cargo +nightly fuzz run prepare` (from `fuzz/`). Seed the corpus with a
//! few small JPEG, PNG and WebP files for a faster start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitrine::{prepare_image, DecodeLimits, Illumination, PrepConfig, WhiteBalance};

// libfuzzer-sys installs a panic hook that aborts before unwinding, which
// would report the decoders' panics, caught by the library and returned as typed
// errors, as crashes. The default hook lets them unwind to the library's
// `catch_unwind`; a panic that escapes still aborts in libfuzzer-sys's
// wrapper.
fuzz_target!(init: { drop(std::panic::take_hook()); }, |data: &[u8]| {
    // Tight limits keep each run small; the limit checks themselves are part
    // of what is fuzzed.
    let mut limits = DecodeLimits::default();
    limits.max_width = 2048;
    limits.max_height = 2048;
    limits.max_alloc = 16 * 1024 * 1024;
    // The setting comes from the last byte, apart from the image: the first
    // bytes pick the format, so every format meets every setting.
    let Some((&mode, image)) = data.split_last() else {
        return;
    };
    let config = match mode % 5 {
        0 => PrepConfig::catalog(),
        1 => PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT),
        2 => PrepConfig::photo().crop(false),
        3 => {
            PrepConfig::catalog().illumination(Illumination::WhenNotPlain(WhiteBalance::WhitePatch))
        }
        _ => PrepConfig::catalog().area_shrink(false),
    }
    .limits(limits);
    if let Ok(prepared) = prepare_image(image, &config) {
        assert!(prepared.tensor().iter().all(|v| v.is_finite()));
        let (w, h) = prepared.source_size();
        let [x0, y0, x1, y1] = prepared.crop_box();
        assert!(x0 < x1 && x1 <= w && y0 < y1 && y1 <= h);
    }
});
