//! Catalog-image decoding and preparation (issue 4: "Decode" and "Catalog
//! preparation"). Every image is generated here; nothing is read from disk
//! except the optional parity fixtures and the optional fpi sample.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vitrine::{
    prepare_image, prepare_rgb, DecodeLimits, Illumination, ImageError, PrepConfig, PreparedImage,
    WhiteBalance,
};

const W: usize = PreparedImage::WIDTH;
const H: usize = PreparedImage::HEIGHT;

// ------------------------------------------------------------------ helpers

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// JPEG at `quality` (catalog images are usually saved at 85–95).
fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("encode JPEG");
    out
}

fn png(img: RgbImage) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// Tensor value back to u8 units.
fn to_u8_units(v: f32) -> f32 {
    (v * 0.25 + 0.5) * 255.0
}

/// `w × h` of `bg` with the rectangle `[x0, x1) × [y0, y1)` drawn as a
/// textured product (colours far from `bg`).
fn product_on(w: u32, h: u32, bg: [u8; 3], rect: [u32; 4], rng: &mut ChaCha8Rng) -> RgbImage {
    let [x0, y0, x1, y1] = rect;
    let base = [
        rng.gen_range(0..150u8),
        rng.gen_range(0..150u8),
        rng.gen_range(0..150u8),
    ];
    RgbImage::from_fn(w, h, |x, y| {
        if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            // Stripes and noise, always well below the background.
            let stripe = if (x / 3 + y / 5) % 2 == 0 { 40 } else { 0 };
            Rgb(base.map(|c| c + stripe + rng.gen_range(0..20u8)))
        } else {
            // Slight sensor noise on the background.
            Rgb(bg.map(|c| c.saturating_sub(rng.gen_range(0..3u8))))
        }
    })
}

/// The box `prep.py` gives for a product at `rect`: the rectangle plus the
/// margin (5 % of the longer physical side), clamped.
fn expected_box(rect: [u32; 4], w: u32, h: u32, aspect: f64) -> [u32; 4] {
    let [x0, y0, x1, y1] = rect;
    let m = 0.05 * (f64::from(x1 - x0) * aspect).max(f64::from(y1 - y0));
    let (mx, my) = ((m / aspect).floor() as u32, m.floor() as u32);
    [
        x0.saturating_sub(mx),
        y0.saturating_sub(my),
        (x1 + mx).min(w),
        (y1 + my).min(h),
    ]
}

fn assert_box_near(found: [u32; 4], want: [u32; 4], tol: u32, what: &str) {
    for i in 0..4 {
        assert!(
            found[i].abs_diff(want[i]) <= tol,
            "{what}: box {found:?}, expected {want:?} within {tol} px"
        );
    }
}

// --------------------------------------------------------------------- crop

fn check_crop_on(bg: [u8; 3], seed: u64, jpeg: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case in 0..20 {
        let (w, h) = (rng.gen_range(60..400u32), rng.gen_range(60..400u32));
        let x0 = rng.gen_range(6..w / 2);
        let y0 = rng.gen_range(6..h / 2);
        let x1 = rng.gen_range(x0 + 10..w - 5);
        let y1 = rng.gen_range(y0 + 10..h - 5);
        let rect = [x0, y0, x1, y1];
        let img = product_on(w, h, bg, rect, &mut rng);
        let bytes = if jpeg { self::jpeg(&img, 92) } else { png(img) };
        for aspect in [1.0, PrepConfig::FPI_PIXEL_ASPECT] {
            let p = prepare_image(&bytes, &PrepConfig::catalog().pixel_aspect(aspect)).unwrap();
            assert!(
                p.plain_background(),
                "case {case}: background {bg:?} not plain"
            );
            let what =
                format!("case {case} bg {bg:?} {w}x{h} rect {rect:?} aspect {aspect} jpeg {jpeg}");
            assert_box_near(p.crop_box(), expected_box(rect, w, h, aspect), 2, &what);
        }
    }
}

#[test]
fn crop_finds_the_product_on_white() {
    check_crop_on([255, 255, 255], 1, false);
    check_crop_on([255, 255, 255], 2, true);
}

#[test]
fn crop_finds_the_product_on_off_white() {
    check_crop_on([242, 238, 230], 3, false);
    check_crop_on([250, 246, 240], 4, true);
    check_crop_on([232, 232, 232], 5, false);
}

#[test]
fn crop_ignores_specks_and_keeps_a_full_frame_product() {
    // Isolated specks do not open the box: the crop stays on the product.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut img = product_on(200, 300, [255; 3], [60, 80, 140, 220], &mut rng);
    for (x, y) in [(5, 5), (190, 10), (20, 290), (150, 40)] {
        img.put_pixel(x, y, Rgb([0, 0, 0]));
    }
    let p = prepare_rgb(200, 300, img.as_raw(), &PrepConfig::catalog()).unwrap();
    assert_box_near(
        p.crop_box(),
        expected_box([60, 80, 140, 220], 200, 300, 1.0),
        0,
        "specks",
    );

    // A plain image without a product: nothing to crop, the whole image.
    let blank = RgbImage::from_pixel(50, 40, Rgb([250, 250, 250]));
    let p = prepare_rgb(50, 40, blank.as_raw(), &PrepConfig::catalog()).unwrap();
    assert_eq!(p.crop_box(), [0, 0, 50, 40]);
    assert!(p
        .tensor()
        .iter()
        .all(|&v| (v - (250.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6));

    // crop(false) keeps the whole image even on white.
    let p = prepare_rgb(200, 300, img.as_raw(), &PrepConfig::catalog().crop(false)).unwrap();
    assert_eq!(p.crop_box(), [0, 0, 200, 300]);
}

#[test]
fn busy_background_is_not_cropped() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let img = RgbImage::from_fn(120, 90, |_, _| Rgb(rng.gen()));
    let p = prepare_rgb(120, 90, img.as_raw(), &PrepConfig::catalog()).unwrap();
    assert!(!p.plain_background());
    assert_eq!(p.crop_box(), [0, 0, 120, 90]);
    assert_eq!(p.corrected(), None);
}

// ---------------------------------------------------------------- letterbox

/// Bounding box `[x0, y0, x1, y1)` of the canvas pixels that differ from the fill.
fn content_box(p: &PreparedImage) -> [usize; 4] {
    let fill = p.background().map(|v| (v as f32 / 255.0 - 0.5) / 0.25);
    let t = p.tensor();
    let (mut x0, mut y0, mut x1, mut y1) = (W, H, 0, 0);
    for y in 0..H {
        for x in 0..W {
            if (0..3).any(|c| t[c * H * W + y * W + x] != fill[c]) {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
    }
    [x0, y0, x1, y1]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn letterbox_keeps_the_aspect_ratio(
        w in 40u32..500,
        h in 40u32..500,
        fpi in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let aspect = if fpi { PrepConfig::FPI_PIXEL_ASPECT } else { 1.0 };
        let phys = f64::from(w) * aspect / f64::from(h);
        // Content sides are whole pixels: only shapes whose shorter content
        // side is ≥ 55 px can hold 1 % (a 0.5 px rounding is < 1 % of it).
        let short = (W as f64 / phys).min(H as f64).min(W as f64).min(H as f64 * phys);
        prop_assume!(short >= 55.0);
        // Noise everywhere: the background is not plain (no crop) and every
        // content pixel differs from the fill colour.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let img = RgbImage::from_fn(w, h, |_, _| Rgb(rng.gen()));
        let p = prepare_rgb(w, h, img.as_raw(), &PrepConfig::catalog().pixel_aspect(aspect)).unwrap();
        prop_assert_eq!(p.crop_box(), [0, 0, w, h]);
        let [x0, y0, x1, y1] = content_box(&p);
        let (tw, th) = (x1 - x0, y1 - y0);
        // Fits the canvas on one side, centred on the other.
        prop_assert!(tw == W || th == H, "content {}x{} fills neither side", tw, th);
        prop_assert!(x0 == (W - tw) / 2 && y0 == (H - th) / 2);
        let got = tw as f64 / th as f64;
        prop_assert!((got / phys - 1.0).abs() <= 0.01, "aspect {} vs {} ({}x{}, pa {})", got, phys, w, h, aspect);
    }
}

#[test]
fn fpi_square_fills_the_input_exactly() {
    // 224 × 224 at pixel aspect 0.75 is physically 3:4: no letterbox bars.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let img = RgbImage::from_fn(224, 224, |_, _| Rgb(rng.gen()));
    let cfg = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);
    let p = prepare_rgb(224, 224, img.as_raw(), &cfg).unwrap();
    assert_eq!(content_box(&p), [0, 0, W, H]);
}

#[test]
fn identity_resize_copies_pixels() {
    // A busy image of the input's size maps 1:1 onto it: values are exact.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let img = RgbImage::from_fn(W as u32, H as u32, |_, _| Rgb(rng.gen()));
    let p = prepare_rgb(W as u32, H as u32, img.as_raw(), &PrepConfig::catalog()).unwrap();
    let t = p.tensor();
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let want = (f32::from(px[c]) / 255.0 - 0.5) / 0.25;
            assert_eq!(t[c * H * W + i], want);
        }
    }
}

// ------------------------------------------------------------- illumination

fn channel_means(p: &PreparedImage) -> [f64; 3] {
    let t = p.tensor();
    [0, 1, 2].map(|c| {
        t[c * H * W..(c + 1) * H * W]
            .iter()
            .map(|&v| f64::from(to_u8_units(v)))
            .sum::<f64>()
            / (H * W) as f64
    })
}

fn spread(m: [f64; 3]) -> f64 {
    let (lo, hi) = (m[0].min(m[1]).min(m[2]), m[0].max(m[1]).max(m[2]));
    (hi - lo) / hi
}

/// A varied scene under a warm (orange) light.
fn tinted_scene(seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tint = [1.15, 0.9, 0.6];
    RgbImage::from_fn(150, 200, |x, y| {
        let base = [
            30.0 + f64::from((x * 7 + y) % 170),
            30.0 + f64::from((y * 3 + x / 2) % 170),
            30.0 + f64::from((x + y * 5) % 170),
        ];
        Rgb([0, 1, 2]
            .map(|c| (base[c] * tint[c] + rng.gen_range(-5.0..5.0)).clamp(0.0, 255.0) as u8))
    })
}

#[test]
fn grey_world_removes_a_tint() {
    let img = tinted_scene(21);
    let raw = prepare_rgb(150, 200, img.as_raw(), &PrepConfig::catalog().crop(false)).unwrap();
    assert!(
        spread(channel_means(&raw)) > 0.3,
        "the test scene is not tinted"
    );
    let p = prepare_rgb(150, 200, img.as_raw(), &PrepConfig::photo().crop(false)).unwrap();
    assert_eq!(p.corrected(), Some(WhiteBalance::GreyWorld));
    let m = channel_means(&p);
    assert!(spread(m) <= 0.03, "channel means {m:?} not within 3 %");
}

#[test]
fn white_patch_whitens_the_brightest_patch() {
    // A tinted scene with a white card (rendered as (255·1.0, 255·0.85, 255·0.7)).
    let mut img = tinted_scene(22);
    for y in 10..60 {
        for x in 10..60 {
            img.put_pixel(x, y, Rgb([250, 212, 175]));
        }
    }
    let cfg = PrepConfig::catalog()
        .crop(false)
        .illumination(Illumination::Always(WhiteBalance::WhitePatch));
    let p = prepare_rgb(150, 200, img.as_raw(), &cfg).unwrap();
    assert_eq!(p.corrected(), Some(WhiteBalance::WhitePatch));
    // The card, around source (35, 35); 150 × 200 maps onto the whole
    // (3:4) input.
    let t = p.tensor();
    let (x, y) = (35 * W / 150, 35 * H / 200);
    let card = [0, 1, 2].map(|c| to_u8_units(t[c * H * W + y * W + x]));
    assert!(card.iter().all(|&v| v > 245.0), "white card is {card:?}");
}

#[test]
fn illumination_is_off_for_catalog_shots_and_automatic_when_asked() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let shot = product_on(120, 160, [245, 240, 230], [30, 30, 90, 130], &mut rng);
    let auto =
        PrepConfig::catalog().illumination(Illumination::WhenNotPlain(WhiteBalance::GreyWorld));
    let catalog = prepare_rgb(120, 160, shot.as_raw(), &PrepConfig::catalog()).unwrap();
    let with_auto = prepare_rgb(120, 160, shot.as_raw(), &auto).unwrap();
    assert_eq!(catalog.corrected(), None);
    assert_eq!(with_auto, catalog, "a plain catalog shot is left as it is");

    let photo = tinted_scene(24);
    let p = prepare_rgb(150, 200, photo.as_raw(), &auto).unwrap();
    assert!(!p.plain_background());
    assert_eq!(p.corrected(), Some(WhiteBalance::GreyWorld));
}

// ---------------------------------------------------------------- bad input

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A valid PNG header for a `w × h` RGB8 image, with a tiny IDAT (a bomb:
/// the header promises far more than the data).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn sample_photo(w: u32, h: u32) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(w * 31 + h));
    product_on(
        w,
        h,
        [255; 3],
        [w / 4, h / 4, w * 3 / 4, h * 3 / 4],
        &mut rng,
    )
}

#[test]
fn zero_bytes_is_empty() {
    assert_eq!(
        prepare_image(&[], &PrepConfig::default()),
        Err(ImageError::Empty)
    );
}

#[test]
fn text_renamed_to_jpg_is_unsupported() {
    let text = b"id,name\n1,Red shirt\n2,Blue jeans\n";
    let e = prepare_image(text, &PrepConfig::default()).unwrap_err();
    assert!(matches!(e, ImageError::UnsupportedFormat { .. }), "{e:?}");
    // Other formats the crate knows but Vitrine does not take.
    let e = prepare_image(b"P6\n16 16\n255\n", &PrepConfig::default()).unwrap_err();
    assert!(
        matches!(e, ImageError::UnsupportedFormat { ref format } if format == "Pnm"),
        "{e:?}"
    );
    // An iPhone photo (HEIF) is named for what it is; it read "unknown".
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic\0\0\0\x08meta";
    let e = prepare_image(heic, &PrepConfig::default()).unwrap_err();
    assert!(
        matches!(e, ImageError::UnsupportedFormat { ref format } if format.starts_with("HEIC")),
        "{e:?}"
    );
}

#[test]
fn truncated_jpeg_is_a_decode_error() {
    let jpeg = encode(
        &DynamicImage::ImageRgb8(sample_photo(200, 160)),
        ImageFormat::Jpeg,
    );
    assert!(prepare_image(&jpeg, &PrepConfig::default()).is_ok());
    // (Two bytes are not even recognised as JPEG: `UnsupportedFormat`.)
    for cut in [3, 20, 100, jpeg.len() / 3, jpeg.len() / 2, jpeg.len() - 10] {
        let e = prepare_image(&jpeg[..cut], &PrepConfig::default()).unwrap_err();
        assert!(
            matches!(e, ImageError::Decode { .. }),
            "cut at {cut}: {e:?}"
        );
    }
    // Truncated PNG and WebP likewise.
    let p = png(sample_photo(200, 160));
    let e = prepare_image(&p[..p.len() / 2], &PrepConfig::default()).unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }), "{e:?}");
}

#[test]
fn decompression_bomb_is_too_large() {
    let bomb = png_header(30_000, 30_000);
    assert!(bomb.len() < 100);
    let e = prepare_image(&bomb, &PrepConfig::default()).unwrap_err();
    match e {
        ImageError::ImageTooLarge {
            width,
            height,
            limit,
        } => {
            assert_eq!((width, height), (30_000, 30_000));
            assert_eq!(limit, DecodeLimits::default());
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    // Within the side limits but over the allocation limit (10 000² × 3 B).
    let e = prepare_image(&png_header(10_000, 10_000), &PrepConfig::default()).unwrap_err();
    assert!(
        matches!(e, ImageError::ImageTooLarge { width: 10_000, .. }),
        "{e:?}"
    );
    // A grey image is limited as the RGB pixels it becomes: 2 bytes per
    // pixel allowed, 3 needed.
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(200, 160, image::Luma([90])));
    let mut tight = DecodeLimits::default();
    tight.max_alloc = 200 * 160 * 2;
    let e = vitrine::decode_image(&encode(&grey, ImageFormat::Png), tight).unwrap_err();
    assert!(
        matches!(e, ImageError::ImageTooLarge { width: 200, .. }),
        "{e:?}"
    );
    // Tighter configured limits apply to real images too.
    let mut small = DecodeLimits::default();
    small.max_width = 100;
    let e = prepare_image(
        &png(sample_photo(200, 160)),
        &PrepConfig::default().limits(small),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ImageTooLarge {
                width: 200,
                height: 160,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn tiny_images_are_too_small() {
    for (w, h) in [(7, 7), (1, 1), (4, 100), (100, 7)] {
        let img = RgbImage::from_pixel(w, h, Rgb([10, 20, 30]));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let e = prepare_image(
                &encode(&DynamicImage::ImageRgb8(img.clone()), format),
                &PrepConfig::default(),
            )
            .unwrap_err();
            assert_eq!(
                e,
                ImageError::ImageTooSmall {
                    width: w,
                    height: h,
                    min: 8
                }
            );
        }
        let e = prepare_rgb(w, h, img.as_raw(), &PrepConfig::default()).unwrap_err();
        assert!(matches!(e, ImageError::ImageTooSmall { .. }));
    }
    // 8 × 8 is enough.
    let img = RgbImage::from_pixel(8, 8, Rgb([10, 20, 30]));
    assert!(prepare_image(&png(img), &PrepConfig::default()).is_ok());
}

#[test]
fn wrong_pixel_buffer_length_is_an_error() {
    let e = prepare_rgb(10, 10, &[0; 299], &PrepConfig::default()).unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }));
}

#[test]
fn errors_read_well() {
    let e = prepare_image(&png_header(30_000, 30_000), &PrepConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "image is 30000×30000 pixels, over the decode limits (at most 12000×12000 pixels and 256 MiB decoded, as RGB or wider)"
    );
    assert_eq!(ImageError::Empty.to_string(), "image is empty (zero bytes)");
}

// ------------------------------------------------------------------ formats

/// Prepares `bytes` with no crop and checks every canvas pixel is `want` (u8 units).
fn assert_uniform(bytes: &[u8], want: [f32; 3], what: &str) {
    let p = prepare_image(bytes, &PrepConfig::catalog()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let t = p.tensor();
    for c in 0..3 {
        for &v in &t[c * H * W..(c + 1) * H * W] {
            assert!(
                (to_u8_units(v) - want[c]).abs() < 0.01,
                "{what}: channel {c} is {}",
                to_u8_units(v)
            );
        }
    }
}

#[test]
fn decodes_grey_16_bit_alpha_and_webp() {
    let (w, h) = (40, 30);
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([77u8])));
    assert_uniform(&encode(&grey, ImageFormat::Png), [77.0; 3], "grey PNG");

    // 16-bit: 0x4D4D is 77 · 257, which scales back to exactly 77.
    let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(
        w,
        h,
        Rgb([0x4D4Du16, 0x1414, 0xC8C8]),
    ));
    assert_uniform(
        &encode(&rgb16, ImageFormat::Png),
        [77.0, 20.0, 200.0],
        "RGB16 PNG",
    );
    let la16 =
        DynamicImage::ImageLumaA16(ImageBuffer::from_pixel(w, h, LumaA([0x4D4Du16, 0x8000])));
    // Half transparent: 77 · 128/255 + 255 · 127/255, onto white.
    assert_uniform(
        &encode(&la16, ImageFormat::Png),
        [166.0; 3],
        "grey+alpha 16-bit PNG",
    );

    // Transparency is composited onto white, whatever the hidden colour.
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(w, h, Rgba([10u8, 120, 230, 0])));
    assert_uniform(&encode(&rgba, ImageFormat::Png), [255.0; 3], "RGBA PNG");
    let half = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(w, h, Rgba([0u8, 100, 200, 128])));
    // c · 128/255 + 255 · 127/255, rounded.
    assert_uniform(
        &encode(&half, ImageFormat::Png),
        [127.0, 177.0, 227.0],
        "half-transparent PNG",
    );
    let opaque =
        DynamicImage::ImageRgba8(ImageBuffer::from_pixel(w, h, Rgba([10u8, 120, 230, 255])));
    assert_uniform(
        &encode(&opaque, ImageFormat::Png),
        [10.0, 120.0, 230.0],
        "opaque RGBA PNG",
    );

    // WebP (the image crate encodes lossless WebP), RGB and RGBA.
    let rgb = DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb([200, 100, 50])));
    assert_uniform(
        &encode(&rgb, ImageFormat::WebP),
        [200.0, 100.0, 50.0],
        "WebP",
    );
    assert_uniform(
        &encode(&opaque, ImageFormat::WebP),
        [10.0, 120.0, 230.0],
        "RGBA WebP",
    );
    assert_uniform(
        &encode(&rgba, ImageFormat::WebP),
        [255.0; 3],
        "transparent WebP",
    );

    // BMP and TIFF are lossless; GIF is palette-quantised, and one colour
    // survives that exactly.
    for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::Gif] {
        assert_uniform(
            &encode(&rgb, format),
            [200.0, 100.0, 50.0],
            &format!("{format:?}"),
        );
    }

    // JPEG, colour and grey: lossy, so only roughly.
    let photo = sample_photo(120, 160);
    let a = prepare_image(&jpeg(&photo, 90), &PrepConfig::catalog()).unwrap();
    let b = prepare_rgb(120, 160, photo.as_raw(), &PrepConfig::catalog()).unwrap();
    let mean_abs = a
        .tensor()
        .iter()
        .zip(b.tensor())
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / a.tensor().len() as f32;
    assert!(mean_abs < 0.05, "JPEG differs by {mean_abs} on average");
    let grey_jpeg = encode(
        &DynamicImage::ImageRgb8(photo).grayscale(),
        ImageFormat::Jpeg,
    );
    assert!(prepare_image(&grey_jpeg, &PrepConfig::catalog()).is_ok());
}

/// `jpeg` with an EXIF block whose only tag is the orientation.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0II*\0".to_vec();
    exif.extend(8u32.to_le_bytes()); // first IFD
    exif.extend(1u16.to_le_bytes()); // one entry
    exif.extend(0x0112u16.to_le_bytes()); // Orientation
    exif.extend(3u16.to_le_bytes()); // SHORT
    exif.extend(1u32.to_le_bytes());
    exif.extend(orientation.to_le_bytes());
    exif.extend([0, 0]);
    exif.extend(0u32.to_le_bytes()); // no next IFD
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend(u16::try_from(exif.len() + 2).unwrap().to_be_bytes());
    out.extend(exif);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_turns_the_image_upright() {
    // A landscape file that a viewer shows as portrait (orientation 6:
    // rotate 90° clockwise) is prepared as the portrait it shows.
    let photo = sample_photo(160, 120);
    let plain = jpeg(&photo, 95);
    let p = prepare_image(&plain, &PrepConfig::catalog()).unwrap();
    assert_eq!(p.source_size(), (160, 120));
    let turned = prepare_image(&with_orientation(&plain, 6), &PrepConfig::catalog()).unwrap();
    assert_eq!(turned.source_size(), (120, 160));
    let upright = image::imageops::rotate90(&photo);
    let want = prepare_rgb(120, 160, upright.as_raw(), &PrepConfig::catalog()).unwrap();
    let mean_abs = turned
        .tensor()
        .iter()
        .zip(want.tensor())
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / want.tensor().len() as f32;
    assert!(
        mean_abs < 0.05,
        "differs from the rotated pixels by {mean_abs}"
    );
    // Orientation 1 (as shot) changes nothing.
    let same = prepare_image(&with_orientation(&plain, 1), &PrepConfig::catalog()).unwrap();
    assert_eq!(same.tensor(), p.tensor());
    // Limits of width and height apply to the upright image: a stored
    // 160 x 120 shown as 120 x 160 fits 130 wide by 170 high.
    let mut portrait = DecodeLimits::default();
    portrait.max_width = 130;
    portrait.max_height = 170;
    let turned = prepare_image(
        &with_orientation(&plain, 6),
        &PrepConfig::catalog().limits(portrait),
    )
    .unwrap();
    assert_eq!(turned.source_size(), (120, 160));
    assert!(prepare_image(&plain, &PrepConfig::catalog().limits(portrait)).is_err());
}

/// `png` with an `eXIf` chunk, holding only the orientation, after the
/// pixel data (where libpng writes one set in the end info).
fn png_with_late_orientation(png: &[u8], orientation: u16) -> Vec<u8> {
    let mut exif = b"II*\0".to_vec();
    exif.extend(8u32.to_le_bytes());
    exif.extend(1u16.to_le_bytes());
    exif.extend(0x0112u16.to_le_bytes());
    exif.extend(3u16.to_le_bytes());
    exif.extend(1u32.to_le_bytes());
    exif.extend(orientation.to_le_bytes());
    exif.extend([0, 0]);
    exif.extend(0u32.to_le_bytes());
    let mut chunk = u32::try_from(exif.len()).unwrap().to_be_bytes().to_vec();
    let mut body = b"eXIf".to_vec();
    body.extend(&exif);
    chunk.extend(&body);
    chunk.extend(crc32fast::hash(&body).to_be_bytes());
    // Before IEND (the last 12 bytes).
    let (head, iend) = png.split_at(png.len() - 12);
    assert_eq!(&iend[4..8], b"IEND");
    [head, &chunk, iend].concat()
}

#[test]
fn png_orientation_after_the_pixels_turns_the_image_upright() {
    let photo = sample_photo(160, 120);
    let plain = png(photo);
    let late = png_with_late_orientation(&plain, 6);
    assert_eq!(
        prepare_image(&plain, &PrepConfig::catalog())
            .unwrap()
            .source_size(),
        (160, 120)
    );
    assert_eq!(
        prepare_image(&late, &PrepConfig::catalog())
            .unwrap()
            .source_size(),
        (120, 160)
    );
    let d = vitrine::decode_image(&late, DecodeLimits::default()).unwrap();
    assert_eq!((d.width, d.height), (120, 160));
}

#[test]
fn tensor_is_finite_and_in_range() {
    let p = prepare_image(&png(sample_photo(300, 200)), &PrepConfig::photo()).unwrap();
    assert_eq!(p.tensor().len(), 3 * H * W);
    assert!(p
        .tensor()
        .iter()
        .all(|v| v.is_finite() && (-2.0..=2.0).contains(v)));
    assert_eq!(p.source_size(), (300, 200));
    assert_eq!(p.clone().into_tensor(), p.tensor());
}

// ---------------------------------------------------------------- no panics

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = prepare_image(&bytes, &PrepConfig::default());
    }

    #[test]
    fn corrupted_images_never_panic(
        format in 0usize..6,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let img = DynamicImage::ImageRgb8(sample_photo(40, 30));
        let mut bytes = encode(&img, [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::WebP,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ][format]);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v;
        }
        let n = cut.index(bytes.len() + 1);
        for cfg in [PrepConfig::default(), PrepConfig::photo()] {
            if let Ok(p) = prepare_image(&bytes[..n], &cfg) {
                prop_assert!(p.tensor().iter().all(|v| v.is_finite()));
            }
        }
    }
}

// ------------------------------------------------------- real data, optional

fn shared_fpi() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fpi/images");
    dir.is_dir().then_some(dir)
}

#[test]
fn real_fpi_images_prepare_sanely() {
    let Some(dir) = shared_fpi() else {
        eprintln!("SKIP: ../shared/data/fpi/images is absent");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let cfg = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);
    // VITRINE_FPI_ALL=1 prepares every image instead of a sample of 40.
    let all = std::env::var_os("VITRINE_FPI_ALL").is_some();
    let take = if all { files.len() } else { 40 };
    let step = if all { 1 } else { (files.len() / 40).max(1) };
    let (mut plain, mut cropped, mut n) = (0, 0, 0);
    for f in files.iter().step_by(step).take(take) {
        n += 1;
        let bytes = std::fs::read(f).unwrap();
        let p = prepare_image(&bytes, &cfg).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let (w, h) = p.source_size();
        let [x0, y0, x1, y1] = p.crop_box();
        assert!(
            x0 < x1 && x1 <= w && y0 < y1 && y1 <= h,
            "{}: box {:?}",
            f.display(),
            p.crop_box()
        );
        assert!(p
            .tensor()
            .iter()
            .all(|v| v.is_finite() && (-2.0..=2.0).contains(v)));
        plain += usize::from(p.plain_background());
        cropped += usize::from(p.crop_box() != [0, 0, w, h]);
    }
    // Catalog shots: nearly all on plain backgrounds, most of them cropped.
    assert!(plain * 4 >= n * 3, "only {plain} of {n} plain");
    assert!(cropped * 2 >= n, "only {cropped} of {n} cropped");
    eprintln!("fpi: {n} images, {plain} plain, {cropped} cropped");
}

// ------------------------------------------------------ parity with prep.py

/// Reads a little-endian `float32` `.npy` file (C order): shape and values.
fn read_npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = std::str::from_utf8(bytes.get(start..start + header_len).ok_or("short header")?)
        .map_err(|e| e.to_string())?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!("expected '<f4' data, header {header}"));
    }
    if header.contains("'fortran_order': True") {
        return Err("Fortran order not supported".into());
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("shape {shape_text}: {e}")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let n: usize = shape.iter().product();
    if data.len() != n * 4 {
        return Err(format!("{} data bytes for shape {shape:?}", data.len()));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

/// `models/manifest.json` → `fixtures.prep_parity`, as `training/export.py`
/// writes it: a list of `{"png", "expected", "pixel_aspect", "box_x0y0x1y1",
/// "background", "tolerance"}`, the files in `models/fixtures/`.
#[test]
fn parity_with_the_reference_prep() {
    // VITRINE_PREP_FIXTURES points at another `models` folder (for checks).
    let models = std::env::var_os("VITRINE_PREP_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    let manifest_path = models.join("manifest.json");
    // The fixtures are committed with the model: missing ones fail.
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let parity = manifest
        .pointer("/fixtures/prep_parity")
        .expect("manifest.json lists fixtures.prep_parity");
    let entries = parity.as_array().expect("fixtures.prep_parity is a list");
    assert!(!entries.is_empty(), "fixtures.prep_parity is empty");
    let fixtures = models.join("fixtures");
    let mut worst = 0f32;
    for e in entries {
        let text = |key: &str| {
            e[key]
                .as_str()
                .unwrap_or_else(|| panic!("prep_parity entry without \"{key}\": {e}"))
                .to_owned()
        };
        let (png_name, npy_name) = (text("png"), text("expected"));
        let aspect = e["pixel_aspect"].as_f64().expect("pixel_aspect");
        let tolerance = e["tolerance"].as_f64().unwrap_or(1e-3) as f32;
        let png_bytes = std::fs::read(fixtures.join(&png_name)).expect("fixture PNG");
        let npy_bytes = std::fs::read(fixtures.join(&npy_name)).expect("fixture .npy");
        let (shape, want) =
            read_npy_f32(&npy_bytes).unwrap_or_else(|err| panic!("{npy_name}: {err}"));
        assert_eq!(
            shape.iter().product::<usize>(),
            3 * H * W,
            "{npy_name}: shape {shape:?}"
        );
        let p = prepare_image(&png_bytes, &PrepConfig::catalog().pixel_aspect(aspect))
            .unwrap_or_else(|err| panic!("{png_name}: {err}"));
        if let Some(b) = e.get("box_x0y0x1y1") {
            let b: Vec<u32> = serde_json::from_value(b.clone()).expect("box: four integers");
            assert_eq!(p.crop_box().to_vec(), b, "{png_name}: crop box");
        }
        if let Some(bg) = e.get("background") {
            let bg: Vec<f64> = serde_json::from_value(bg.clone()).expect("background: 3 numbers");
            let got = p.background();
            assert!(
                (0..3).all(|c| (got[c] - bg[c]).abs() < 1e-9),
                "{png_name}: background {got:?}, reference {bg:?}"
            );
        }
        for (i, (got, want)) in p.tensor().iter().zip(&want).enumerate() {
            let d = (got - want).abs();
            worst = worst.max(d);
            assert!(
                d <= tolerance,
                "{png_name}: element {i} is {got}, reference {want}"
            );
        }
    }
    eprintln!(
        "parity: {} fixtures, worst difference {worst:e}",
        entries.len()
    );
}

/// A CMYK JPEG (Adobe APP14, as PIL and Photoshop write it; fixture made with
/// PIL from RGB (200, 100, 50)) decodes to the same colour.
#[test]
fn decodes_cmyk_jpeg() {
    let bytes = include_bytes!("fixtures/cmyk.jpg");
    let p = prepare_image(bytes, &PrepConfig::catalog()).expect("CMYK JPEG");
    let t = p.tensor();
    for (c, want) in [200.0f32, 100.0, 50.0].into_iter().enumerate() {
        let mean = t[c * H * W..(c + 1) * H * W]
            .iter()
            .map(|&v| to_u8_units(v))
            .sum::<f32>()
            / (H * W) as f32;
        assert!((mean - want).abs() < 6.0, "channel {c}: {mean} vs {want}");
    }
}

#[test]
fn image_files_are_read_within_a_size_limit_and_only_when_regular() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jpg");
    std::fs::write(&file, vec![7u8; 100]).unwrap();
    let mut limits = DecodeLimits::default();
    assert_eq!(limits.read_file(&file).unwrap().len(), 100);
    limits.max_file_bytes = 99;
    let e = limits.read_file(&file).unwrap_err();
    assert!(e.to_string().contains("limited to 99"), "{e}");
    #[cfg(unix)]
    {
        // A device never ends; reading it must not start.
        let e = DecodeLimits::default()
            .read_file(std::path::Path::new("/dev/zero"))
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
    assert!(DecodeLimits::default().read_file(dir.path()).is_err());
}

/// A large photo of fine stripes is shrunk, not sampled: with the area
/// shrink (default) the model sees the stripes' average grey; without it
/// every output row reads a black source row.
#[test]
fn a_large_striped_photo_is_averaged_not_sampled() {
    let (w, h) = (2400u32, 3200u32); // 25x the 96 x 128 input
    let img = RgbImage::from_fn(w, h, |_, y| {
        if y % 25 < 13 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let plain = PrepConfig::catalog().crop(false);
    let mean = |c: &PrepConfig| {
        let p = prepare_rgb(w, h, img.as_raw(), c).unwrap();
        let t = p.tensor();
        let m = t.iter().sum::<f32>() / t.len() as f32;
        let spread = t.iter().fold(0f32, |s, v| s.max((v - m).abs()));
        (m, spread)
    };
    // 12 white rows of 25: 122.4, rounded to 122 per block.
    let want = (122.0 / 255.0 - 0.5) / 0.25;
    let (m, spread) = mean(&plain);
    assert!((m - want).abs() < 0.01 && spread < 0.01, "{m} ± {spread}");
    let (m, _) = mean(&plain.clone().area_shrink(false));
    assert!((m + 2.0).abs() < 0.01, "sampled: {m}");
    // Below the threshold nothing changes: the training contract.
    let small = RgbImage::from_fn(224, 224, |x, y| {
        Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 90])
    });
    let a = prepare_rgb(224, 224, small.as_raw(), &PrepConfig::catalog()).unwrap();
    let b = prepare_rgb(
        224,
        224,
        small.as_raw(),
        &PrepConfig::catalog().area_shrink(false),
    )
    .unwrap();
    assert_eq!(a.tensor(), b.tensor());
}

/// A GIF whose 8 × 8 logical screen holds a `w` × `h` first frame (its
/// pixel data is not valid: the frame's size must refuse it first).
fn gif_with_frame(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[8, 0, 8, 0, 0x80, 0, 0]); // screen, 2-colour table
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]); // graphic control
    g.push(0x2C);
    for v in [0, 0, w, h] {
        g.extend_from_slice(&v.to_le_bytes());
    }
    g.extend_from_slice(&[0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    g
}

#[test]
fn gif_limits_apply_to_the_first_frame_not_only_the_screen() {
    let mut limits = DecodeLimits::default();
    limits.max_width = 4_000;
    let e = vitrine::decode_image(&gif_with_frame(8_000, 8_000), limits).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ImageTooLarge {
                width: 8_000,
                height: 8_000,
                ..
            }
        ),
        "{e:?}"
    );
    // A frame within the limits goes on to the decoder (which finds the
    // pixel data invalid), a frame smaller than the screen too (the screen
    // is the image), and an encoded GIF decodes.
    for (w, h) in [(8, 8), (4, 4)] {
        let e = vitrine::decode_image(&gif_with_frame(w, h), limits).unwrap_err();
        assert!(matches!(e, ImageError::Decode { .. }), "{w}×{h}: {e:?}");
    }
    let rgb = DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 30, Rgb([200, 100, 50])));
    assert!(vitrine::decode_image(&encode(&rgb, ImageFormat::Gif), limits).is_ok());
}

/// An uncompressed little-endian 8 × 8 RGBA TIFF of one pixel value, its
/// alpha marked by `extra_samples` (1 associated, 2 unassociated).
fn rgba_tiff(pixel: [u8; 4], extra_samples: u16) -> Vec<u8> {
    let (w, h) = (8u32, 8u32);
    let entries: [(u16, u16, u32); 10] = [
        (256, 3, w),
        (257, 3, h),
        (258, 3, 134), // 4 × 8 bits, after the directory
        (259, 3, 1),
        (262, 3, 2),
        (273, 4, 142),
        (277, 3, 4),
        (278, 3, h),
        (279, 4, w * h * 4),
        (338, 3, u32::from(extra_samples)),
    ];
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        let count: u32 = if tag == 258 { 4 } else { 1 };
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        if kind == 3 && count == 1 {
            t.extend_from_slice(&(value as u16).to_le_bytes());
            t.extend_from_slice(&[0, 0]);
        } else {
            t.extend_from_slice(&value.to_le_bytes());
        }
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 134);
    for _ in 0..4 {
        t.extend_from_slice(&8u16.to_le_bytes());
    }
    for _ in 0..w * h {
        t.extend_from_slice(&pixel);
    }
    t
}

#[test]
fn tiff_alpha_is_composited_once_associated_or_not() {
    // (200, 50, 50) at half opacity, on white: about (228, 153, 153).
    for (stored, extra) in [([100, 25, 25, 128], 1), ([200, 50, 50, 128], 2)] {
        let d = vitrine::decode_image(&rgba_tiff(stored, extra), DecodeLimits::default())
            .unwrap_or_else(|e| panic!("ExtraSamples {extra}: {e}"));
        for (got, want) in d.pixels[..3].iter().zip([227u8, 152, 152]) {
            assert!(
                got.abs_diff(want) <= 1,
                "ExtraSamples {extra}: {:?}",
                &d.pixels[..3]
            );
        }
    }
}
