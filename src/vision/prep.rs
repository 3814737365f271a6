//! The preparation contract of `training/PREP.md`, step by step.

use super::decode::{decode_rgb, DecodeLimits};
use super::ImageError;

/// Model input width in pixels.
const INPUT_W: usize = 96;
/// Model input height in pixels.
const INPUT_H: usize = 128;
/// Width of the border band used for the background colour.
const BORDER: usize = 4;
/// Foreground test: `max_c |p_c − bg_c| > FG_THRESHOLD` (u8 units).
const FG_THRESHOLD: i64 = 24;
/// Plain background: mean over the band of `max_c |p_c − bg_c|` ≤ this.
const PLAIN_MAX_DEV: i128 = 32;
/// A row (column) is occupied with ≥ max(LINE_MIN, ceil(LINE_FRAC · W (H))) foreground pixels.
const LINE_FRAC: f64 = 0.01;
const LINE_MIN: u64 = 2;
/// Margin around the box, fraction of its longer physical side.
const MARGIN_FRAC: f64 = 0.05;
/// Normalisation, per RGB channel, applied to `v / 255`.
/// The normalisation `(mean, std)` per channel, as a manifest states it.
pub(crate) const NORMALISATION: ([f32; 3], [f32; 3]) = (MEAN, STD);

/// The preparation's numeric constants, by their names in a manifest's
/// `prep` block.
pub(crate) fn prep_constants() -> [(&'static str, f64); 9] {
    [
        ("input_width", INPUT_W as f64),
        ("input_height", INPUT_H as f64),
        ("border", BORDER as f64),
        ("fg_threshold", FG_THRESHOLD as f64),
        ("plain_max_dev", PLAIN_MAX_DEV as f64),
        ("line_frac", LINE_FRAC),
        ("line_min", LINE_MIN as f64),
        ("margin_frac", MARGIN_FRAC),
        ("area_shrink_min", AREA_SHRINK_MIN),
    ]
}

const MEAN: [f32; 3] = [0.5, 0.5, 0.5];
const STD: [f32; 3] = [0.25, 0.25, 0.25];

/// How to neutralise a colour cast before preparing a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WhiteBalance {
    /// Scale each channel so that the three channel means become equal (to
    /// their average). Good for scenes with varied colours.
    GreyWorld,
    /// Scale each channel so that its 99th percentile becomes 255. Good when
    /// the scene holds something white.
    WhitePatch,
}

/// When to correct the illumination (see [`PrepConfig::illumination`]).
///
/// Catalog shots must not be corrected: the model was trained on them as
/// they are. Default: [`Illumination::Off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Illumination {
    /// Never (catalog shots; the training contract).
    #[default]
    Off,
    /// Always (photos).
    Always(WhiteBalance),
    /// Only when the border band shows the background is not plain, i.e. the
    /// image looks like a photo rather than a catalog shot.
    WhenNotPlain(WhiteBalance),
}

/// Settings for [`prepare_image`] and [`prepare_rgb`].
///
/// [`PrepConfig::catalog`] (the default) is the training contract for catalog
/// shots; [`PrepConfig::photo`] also corrects the illumination.
///
/// ```
/// use vitrine::{DecodeLimits, Illumination, PrepConfig, WhiteBalance};
///
/// let c = PrepConfig::default();
/// assert_eq!(c, PrepConfig::catalog());
/// assert_eq!(c.get_pixel_aspect(), 1.0);
/// assert!(c.get_crop());
/// assert_eq!(c.get_illumination(), Illumination::Off);
/// assert_eq!(c.get_limits(), DecodeLimits::default());
/// assert!(c.get_area_shrink());
///
/// let p = PrepConfig::photo();
/// assert_eq!(p.get_illumination(), Illumination::Always(WhiteBalance::GreyWorld));
///
/// // The Fashion Product Images set: 3:4 originals squashed to square pixels.
/// let fpi = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);
/// assert_eq!(fpi.get_pixel_aspect(), 0.75);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PrepConfig {
    pixel_aspect: f64,
    crop: bool,
    illumination: Illumination,
    area_shrink: bool,
    limits: DecodeLimits,
}

impl Default for PrepConfig {
    fn default() -> Self {
        PrepConfig::catalog()
    }
}

impl PrepConfig {
    /// Pixel aspect of the Fashion Product Images set (its 224 × 224 images
    /// were squashed from 3:4 portrait originals): 0.75.
    pub const FPI_PIXEL_ASPECT: f64 = 0.75;

    /// Catalog shots (the default): square pixels, product crop on a plain
    /// background, no illumination correction, default [`DecodeLimits`].
    pub fn catalog() -> Self {
        PrepConfig {
            pixel_aspect: 1.0,
            crop: true,
            illumination: Illumination::Off,
            area_shrink: true,
            limits: DecodeLimits::default(),
        }
    }

    /// Photos: like [`PrepConfig::catalog`], with grey-world illumination
    /// correction always applied. (The product crop still happens only when
    /// the background is plain.)
    pub fn photo() -> Self {
        PrepConfig {
            illumination: Illumination::Always(WhiteBalance::GreyWorld),
            ..PrepConfig::catalog()
        }
    }

    /// Physical width of a pixel divided by its height. 1.0 (default) for
    /// ordinary images; [`PrepConfig::FPI_PIXEL_ASPECT`] for the fpi set.
    /// Only the letterbox geometry and the margin use it.
    ///
    /// # Panics
    /// If `aspect` is not within `0.01..=100.0` (NaN included); a value
    /// from configuration or user input goes through
    /// [`PrepConfig::try_pixel_aspect`].
    pub fn pixel_aspect(self, aspect: f64) -> Self {
        match self.try_pixel_aspect(aspect) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`PrepConfig::pixel_aspect`], with [`crate::Error::InvalidConfig`]
    /// for a value outside `0.01..=100.0`.
    pub fn try_pixel_aspect(mut self, aspect: f64) -> crate::Result<Self> {
        if !(0.01..=100.0).contains(&aspect) {
            return Err(crate::Error::InvalidConfig(format!(
                "pixel_aspect must be within 0.01..=100, got {aspect}"
            )));
        }
        self.pixel_aspect = aspect;
        Ok(self)
    }

    /// Whether to crop to the product's box when the background is plain.
    /// Default `true`; `false` letterboxes the whole image.
    pub fn crop(mut self, crop: bool) -> Self {
        self.crop = crop;
        self
    }

    /// When and how to correct the illumination. Default [`Illumination::Off`].
    pub fn illumination(mut self, illumination: Illumination) -> Self {
        self.illumination = illumination;
        self
    }

    /// Whether a crop at least [`AREA_SHRINK_MIN`] times the size it is
    /// drawn at on the model's canvas along an axis is first averaged over blocks of ⌊scale⌋ pixels
    /// (training/PREP.md step 6a), so that a large photo is shrunk, not
    /// sampled: the bilinear resize alone reads one or two source rows per
    /// output row, and fine stripes or checks alias into another pattern.
    /// Default `true`. Images at the training scale (at most 2.33×) never
    /// reach it; databases whose images an older build prepared keep it
    /// off ([`crate::Db::prep_config`]).
    pub fn area_shrink(mut self, on: bool) -> Self {
        self.area_shrink = on;
        self
    }

    /// Decode limits. Default [`DecodeLimits::default`]. Photos uploaded
    /// by a service's users deserve tighter ones:
    ///
    /// ```
    /// use vitrine::{DecodeLimits, PrepConfig};
    ///
    /// let mut upload = DecodeLimits::default();
    /// upload.max_width = 4_000;
    /// upload.max_height = 4_000;
    /// upload.max_alloc = 64 * 1024 * 1024;
    /// let prep = PrepConfig::catalog().limits(upload);
    /// // Then `vitrine::annotate_with(&model, &prep, &bytes, 5)`, or
    /// // `db.search_by_image(&model, &prep, &bytes, k, &filter)`.
    /// # let _ = prep;
    /// ```
    pub fn limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pixel aspect.
    pub fn get_pixel_aspect(&self) -> f64 {
        self.pixel_aspect
    }

    /// Whether the product crop is on.
    pub fn get_crop(&self) -> bool {
        self.crop
    }

    /// The illumination setting.
    pub fn get_illumination(&self) -> Illumination {
        self.illumination
    }

    /// Whether large crops are area-averaged first ([`PrepConfig::area_shrink`]).
    pub fn get_area_shrink(&self) -> bool {
        self.area_shrink
    }

    /// The decode limits.
    pub fn get_limits(&self) -> DecodeLimits {
        self.limits
    }
}

/// The downscale (crop size over its size on the model's canvas, along one
/// axis) from
/// which [`PrepConfig::area_shrink`] averages blocks first: 4. Below it the
/// bilinear step reads at least every other pixel; training images (at
/// most 2.33×) and Mango's catalog images (at most 2.6×) stay below it.
pub const AREA_SHRINK_MIN: f64 = 4.0;

/// PREP.md step 6a, one axis: the block size, ⌊scale⌋ from
/// [`AREA_SHRINK_MIN`] on, else 1.
fn shrink_factor(src_len: usize, dst_len: usize) -> usize {
    let scale = src_len as f64 / dst_len as f64;
    if scale >= AREA_SHRINK_MIN {
        scale.floor() as usize
    } else {
        1
    }
}

/// PREP.md step 6a: the crop `[x0, y0, x1, y1]` of `px` (width `w`)
/// averaged over `fx × fy` blocks (the last ones partial), rounded to u8.
/// Returns the pixels and their width and height.
fn area_shrink(
    px: &[u8],
    w: usize,
    [x0, y0, x1, y1]: [usize; 4],
    fx: usize,
    fy: usize,
) -> (Vec<u8>, usize, usize) {
    let (cw, ch) = (x1 - x0, y1 - y0);
    let (rw, rh) = (cw.div_ceil(fx), ch.div_ceil(fy));
    let mut out = vec![0u8; rw * rh * 3];
    for by in 0..rh {
        let ys = y0 + by * fy..(y0 + (by + 1) * fy).min(y1);
        for bx in 0..rw {
            let xs = x0 + bx * fx..(x0 + (bx + 1) * fx).min(x1);
            let n = (ys.len() * xs.len()) as u64;
            let mut sum = [0u64; 3];
            for y in ys.clone() {
                for p in px[(y * w + xs.start) * 3..(y * w + xs.end) * 3].chunks_exact(3) {
                    for c in 0..3 {
                        sum[c] += u64::from(p[c]);
                    }
                }
            }
            for c in 0..3 {
                out[(by * rw + bx) * 3 + c] = ((sum[c] + n / 2) / n) as u8;
            }
        }
    }
    (out, rw, rh)
}

/// A prepared image: the model-input tensor plus what the preparation found.
#[derive(Clone, PartialEq)]
pub struct PreparedImage {
    tensor: Vec<f32>,
    crop_box: [u32; 4],
    background: [f64; 3],
    plain: bool,
    corrected: Option<WhiteBalance>,
    source: (u32, u32),
    colour: Option<[f32; 3]>,
}

impl std::fmt::Debug for PreparedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tensor is 36 864 values: show its size only.
        f.debug_struct("PreparedImage")
            .field("tensor_len", &self.tensor.len())
            .field("crop_box", &self.crop_box)
            .field("background", &self.background)
            .field("plain", &self.plain)
            .field("corrected", &self.corrected)
            .field("source", &self.source)
            .field("colour", &self.colour)
            .finish()
    }
}

impl PreparedImage {
    /// Model input width: 96.
    pub const WIDTH: usize = INPUT_W;
    /// Model input height: 128.
    pub const HEIGHT: usize = INPUT_H;
    /// Channels (RGB): 3.
    pub const CHANNELS: usize = 3;

    /// The normalised tensor, CHW (`3 × 128 × 96`), RGB, `f32`. Stack
    /// tensors for an NCHW batch.
    pub fn tensor(&self) -> &[f32] {
        &self.tensor
    }

    /// The tensor, by value.
    pub fn into_tensor(self) -> Vec<f32> {
        self.tensor
    }

    /// The crop box in source pixels, `[x0, y0, x1, y1]`, half-open (the
    /// whole image when nothing was cropped).
    pub fn crop_box(&self) -> [u32; 4] {
        self.crop_box
    }

    /// The background colour estimated from the border band (RGB, u8 units,
    /// unrounded); also the letterbox fill.
    pub fn background(&self) -> [f64; 3] {
        self.background
    }

    /// Whether the background was plain (white, off-white or any flat colour).
    pub fn plain_background(&self) -> bool {
        self.plain
    }

    /// The illumination correction that was applied, if any.
    pub fn corrected(&self) -> Option<WhiteBalance> {
        self.corrected
    }

    /// Size of the decoded source image, `(width, height)`.
    pub fn source_size(&self) -> (u32, u32) {
        self.source
    }

    /// The product's dominant colour in CIELAB (D65), measured on the crop's
    /// pixels that differ from the background: the plain background, or on
    /// a busier one the median of the image's outer ring when at least half
    /// of that ring is near it (a backdrop the product runs off), else all
    /// of them; `None` when too few pixels are left. A product that fills
    /// the frame (a detail shot, a fabric swatch) makes its own main colour
    /// that ring's: what is measured is then its second colour (the white
    /// of a navy shirt's stripes), or nothing.
    pub fn dominant_colour(&self) -> Option<[f32; 3]> {
        self.colour
    }
}

/// Decodes image `bytes` (JPEG, PNG, WebP, GIF, BMP, TIFF) and prepares them for the model.
///
/// Never panics, whatever the bytes: bad input is an [`ImageError`]. Limits
/// are checked on the header, before pixels are allocated, so
/// [`DecodeLimits`] bound the memory: besides decoding (see
/// [`DecodeLimits::max_alloc`]), the preparation needs a count per row and
/// per column, the model's input canvas, and a white-balanced copy of the
/// pixels (3 bytes each) when it corrects the illumination.
///
/// ```
/// use vitrine::{prepare_image, ImageError, PrepConfig};
///
/// assert_eq!(prepare_image(b"", &PrepConfig::default()), Err(ImageError::Empty));
/// assert!(matches!(
///     prepare_image(b"not an image at all", &PrepConfig::default()),
///     Err(ImageError::UnsupportedFormat { .. })
/// ));
/// ```
pub fn prepare_image(bytes: &[u8], config: &PrepConfig) -> Result<PreparedImage, ImageError> {
    let rgb = decode_rgb(bytes, config.limits)?;
    let (w, h) = rgb.dimensions();
    prepare_rgb(w, h, rgb.as_raw(), config)
}

/// Prepares already decoded pixels: `width × height` RGB u8, row-major,
/// interleaved.
///
/// Errors: [`ImageError::Decode`] when `pixels` has the wrong length,
/// [`ImageError::ImageTooSmall`] below 8 × 8, [`ImageError::ImageTooLarge`]
/// beyond the configured limits (at 3 bytes per pixel).
pub fn prepare_rgb(
    width: u32,
    height: u32,
    pixels: &[u8],
    config: &PrepConfig,
) -> Result<PreparedImage, ImageError> {
    config.limits.check(width, height, 3)?;
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3));
    if expected != Some(pixels.len()) {
        return Err(ImageError::Decode {
            reason: format!(
                "{} bytes of pixels for a {width}×{height} RGB image (expected 3 per pixel)",
                pixels.len()
            ),
        });
    }
    let img = Rgb {
        w: width as usize,
        h: height as usize,
        px: pixels,
    };
    Ok(prepare_checked(img, config))
}

/// A borrowed RGB u8 image.
#[derive(Clone, Copy)]
struct Rgb<'a> {
    w: usize,
    h: usize,
    px: &'a [u8],
}

impl Rgb<'_> {
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }
}

/// PREP.md step 3: the border band's integer sums and its plainness.
struct Border {
    /// Per-channel sum over the band.
    sum: [i64; 3],
    /// Number of band pixels.
    n: i64,
    plain: bool,
}

impl Border {
    fn background(&self) -> [f64; 3] {
        self.sum.map(|s| s as f64 / self.n as f64)
    }

    /// `n × max_c |p_c − bg_c|`, exactly.
    fn dev(&self, p: [u8; 3]) -> i64 {
        (0..3)
            .map(|c| (i64::from(p[c]) * self.n - self.sum[c]).abs())
            .max()
            .unwrap_or(0)
    }
}

fn band_width(img: Rgb<'_>) -> usize {
    BORDER.min(img.h / 2).min(img.w / 2).max(1)
}

fn border(img: Rgb<'_>) -> Border {
    let b = band_width(img);
    // The band's pixels, row by row (PREP.md sums them as whole image minus
    // inner rectangle; the integers are the same, without a per-channel
    // table of 24 bytes per pixel).
    let band = |f: &mut dyn FnMut([u8; 3])| {
        for y in 0..img.h {
            if y < b || y >= img.h - b {
                (0..img.w).for_each(|x| f(img.at(x, y)));
            } else {
                (0..b).chain(img.w - b..img.w).for_each(|x| f(img.at(x, y)));
            }
        }
    };
    let mut sum = [0i64; 3];
    band(&mut |p| {
        for (s, v) in sum.iter_mut().zip(p) {
            *s += i64::from(v);
        }
    });
    let n = (img.w * img.h - (img.w - 2 * b) * (img.h - 2 * b)) as i64;
    let mut bd = Border {
        sum,
        n,
        plain: false,
    };
    let mut total: i128 = 0;
    band(&mut |p| total += i128::from(bd.dev(p)));
    bd.plain = total <= PLAIN_MAX_DEV * i128::from(n) * i128::from(n);
    bd
}

/// PREP.md step 4: the product box (before the margin), or `None`.
fn product_box(img: Rgb<'_>, bd: &Border) -> Option<[usize; 4]> {
    let (w, h) = (img.w, img.h);
    let threshold = FG_THRESHOLD * bd.n;
    // Foreground pixels per row and per column: the box needs only whole
    // lines' counts (a mask and its summed-area table cost 9 bytes a
    // pixel, three times the image).
    let (mut rows, mut cols) = (vec![0u64; h], vec![0u64; w]);
    for (y, line) in img.px.chunks_exact(3 * w).enumerate() {
        for (x, p) in line.chunks_exact(3).enumerate() {
            if bd.dev([p[0], p[1], p[2]]) > threshold {
                rows[y] += 1;
                cols[x] += 1;
            }
        }
    }
    let row_min = LINE_MIN.max((LINE_FRAC * w as f64).ceil() as u64);
    let col_min = LINE_MIN.max((LINE_FRAC * h as f64).ceil() as u64);
    let y0 = rows.iter().position(|&n| n >= row_min)?;
    let y1 = rows.iter().rposition(|&n| n >= row_min)? + 1;
    let x0 = cols.iter().position(|&n| n >= col_min)?;
    let x1 = cols.iter().rposition(|&n| n >= col_min)? + 1;
    Some([x0, y0, x1, y1])
}

/// PREP.md step 4, margin: `m = MARGIN_FRAC · max(bw · a, bh)`, `mx = ⌊m / a⌋`, `my = ⌊m⌋`.
fn add_margin(b: [usize; 4], w: usize, h: usize, aspect: f64) -> [usize; 4] {
    let [x0, y0, x1, y1] = b;
    let (bw, bh) = ((x1 - x0) as f64, (y1 - y0) as f64);
    let m = MARGIN_FRAC * (bw * aspect).max(bh);
    // Saturating float → int casts; the clamps below bound the result.
    let mx = (m / aspect).floor() as usize;
    let my = m.floor() as usize;
    [
        x0.saturating_sub(mx),
        y0.saturating_sub(my),
        x1.saturating_add(mx).min(w),
        y1.saturating_add(my).min(h),
    ]
}

/// PREP.md step 5: content size and offset in the canvas.
fn letterbox_geometry(cw: usize, ch: usize, aspect: f64) -> (usize, usize, usize, usize) {
    let phys_w = cw as f64 * aspect;
    let s = (INPUT_W as f64 / phys_w).min(INPUT_H as f64 / ch as f64);
    let tw = ((phys_w * s + 0.5).floor() as usize).clamp(1, INPUT_W);
    let th = ((ch as f64 * s + 0.5).floor() as usize).clamp(1, INPUT_H);
    (tw, th, (INPUT_W - tw) / 2, (INPUT_H - th) / 2)
}

/// PREP.md step 6, one axis: `(i0, i1, f)` per destination index, in f32.
fn bilinear_axis(src_len: usize, dst_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = src_len as f32 / dst_len as f32;
    let last = (src_len - 1) as f32;
    (0..dst_len)
        .map(|d| {
            let s = ((d as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src_len - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// The whole pipeline on a validated image (≥ 8 × 8, right length).
fn prepare_checked(img: Rgb<'_>, config: &PrepConfig) -> PreparedImage {
    let mut corrected_px: Option<Vec<u8>> = None;
    let mut corrected = None;
    if let Illumination::Always(wb) = config.illumination {
        corrected_px = Some(white_balance(img, wb));
        corrected = Some(wb);
    }
    let mut img = match &corrected_px {
        Some(px) => Rgb { px, ..img },
        None => img,
    };
    let mut bd = border(img);
    let auto_px;
    if let (Illumination::WhenNotPlain(wb), false) = (config.illumination, bd.plain) {
        auto_px = white_balance(img, wb);
        img = Rgb {
            px: &auto_px,
            ..img
        };
        bd = border(img);
        corrected = Some(wb);
    }
    let (w, h) = (img.w, img.h);
    let bg = bd.background();
    let crop = if config.crop && bd.plain {
        product_box(img, &bd).map(|b| add_margin(b, w, h, config.pixel_aspect))
    } else {
        None
    };
    let [x0, y0, x1, y1] = crop.unwrap_or([0, 0, w, h]);
    let (cw, ch) = (x1 - x0, y1 - y0);
    let (tw, th, ox, oy) = letterbox_geometry(cw, ch, config.pixel_aspect);
    tracing::debug!(
        width = w,
        height = h,
        plain = bd.plain,
        crop = ?[x0, y0, x1, y1],
        content = ?(tw, th, ox, oy),
        ?corrected,
        "prepared image"
    );

    // Canvas, HWC in u8 units, filled with the background.
    let fill = bg.map(|v| v as f32);
    let mut canvas = vec![0f32; INPUT_H * INPUT_W * 3];
    for p in canvas.chunks_exact_mut(3) {
        p.copy_from_slice(&fill);
    }
    // Step 6a: a large crop is area-averaged first (it is then under 2×).
    let (fx, fy) = if config.area_shrink {
        (shrink_factor(cw, tw), shrink_factor(ch, th))
    } else {
        (1, 1)
    };
    let shrunk;
    let (src, sw, [sx0, sy0, sx1], sch) = if fx > 1 || fy > 1 {
        shrunk = area_shrink(img.px, w, [x0, y0, x1, y1], fx, fy);
        let (_, rw, rh) = shrunk;
        (&shrunk.0[..], rw, [0, 0, rw], rh)
    } else {
        (img.px, w, [x0, y0, x1], ch)
    };
    let scw = sx1 - sx0;
    // Horizontal pass over every crop row, then vertical.
    let xs = bilinear_axis(scw, tw);
    let ys = bilinear_axis(sch, th);
    let mut tmp = vec![0f32; sch * tw * 3];
    for y in 0..sch {
        let row = &src[((sy0 + y) * sw + sx0) * 3..((sy0 + y) * sw + sx1) * 3];
        for (d, &(i0, i1, f)) in xs.iter().enumerate() {
            for c in 0..3 {
                let a = f32::from(row[i0 * 3 + c]);
                let b = f32::from(row[i1 * 3 + c]);
                tmp[(y * tw + d) * 3 + c] = a * (1.0 - f) + b * f;
            }
        }
    }
    for (d, &(i0, i1, f)) in ys.iter().enumerate() {
        let out = &mut canvas[((oy + d) * INPUT_W + ox) * 3..((oy + d) * INPUT_W + ox + tw) * 3];
        let a = &tmp[i0 * tw * 3..(i0 + 1) * tw * 3];
        let b = &tmp[i1 * tw * 3..(i1 + 1) * tw * 3];
        for k in 0..tw * 3 {
            out[k] = a[k] * (1.0 - f) + b[k] * f;
        }
    }

    // Normalise, CHW.
    let plane = INPUT_H * INPUT_W;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, p) in canvas.chunks_exact(3).enumerate() {
        for c in 0..3 {
            tensor[c * plane + i] = (p[c] / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let colour_bg = if bd.plain {
        Some(bg)
    } else {
        super::colour::border_median(img.px, w, h)
    };
    let colour = super::colour::dominant_lab(img.px, w, [x0, y0, x1, y1], colour_bg);
    PreparedImage {
        tensor,
        crop_box: [x0, y0, x1, y1].map(|v| v as u32),
        background: bg,
        plain: bd.plain,
        corrected,
        source: (w as u32, h as u32),
        colour,
    }
}

/// Illumination correction: per-channel gains, rounded back to u8.
fn white_balance(img: Rgb<'_>, method: WhiteBalance) -> Vec<u8> {
    let gains: [f32; 3] = match method {
        WhiteBalance::GreyWorld => {
            let mut sums = [0u64; 3];
            for p in img.px.chunks_exact(3) {
                for (s, v) in sums.iter_mut().zip(p) {
                    *s += u64::from(*v);
                }
            }
            let n = (img.w * img.h) as f64;
            let means = sums.map(|s| s as f64 / n);
            let grey = (means[0] + means[1] + means[2]) / 3.0;
            means.map(|m| if m > 0.5 { (grey / m) as f32 } else { 1.0 })
        }
        WhiteBalance::WhitePatch => {
            let mut hist = [[0u64; 256]; 3];
            for p in img.px.chunks_exact(3) {
                for c in 0..3 {
                    hist[c][usize::from(p[c])] += 1;
                }
            }
            let n = (img.w * img.h) as u64;
            // Smallest value with at least 99 % of the pixels at or below it.
            let target = n - n / 100;
            hist.map(|hc| {
                let mut acc = 0;
                let p99 = hc
                    .iter()
                    .position(|&k| {
                        acc += k;
                        acc >= target
                    })
                    .unwrap_or(255);
                if p99 == 0 {
                    1.0
                } else {
                    255.0 / p99 as f32
                }
            })
        }
    };
    let gains = gains.map(|g| g.clamp(0.2, 5.0));
    tracing::trace!(?method, ?gains, "illumination correction");
    let mut out = img.px.to_vec();
    for p in out.chunks_exact_mut(3) {
        for c in 0..3 {
            p[c] = (f32::from(p[c]) * gains[c]).round().min(255.0) as u8;
        }
    }
    out
}
