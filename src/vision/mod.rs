//! Catalog-image preparation: decode, find the product, letterbox, normalise.
//!
//! The preparation reproduces the contract in `training/PREP.md` (reference
//! implementation: `training/prep.py`) so that the model sees at serving time
//! exactly what it saw in training:
//!
//! 1. decode JPEG, PNG, WebP, GIF, BMP or TIFF to RGB u8 (upright) under explicit [`DecodeLimits`]
//!    (grey and palette images are expanded, transparency is composited
//!    onto white, 16-bit is scaled down; palette, YCbCr, grey-with-alpha,
//!    CIELab and CMYK-with-alpha TIFFs are refused; [`decode_image`] alone);
//! 2. estimate the background colour from a 4-pixel border band and test
//!    whether it is plain;
//! 3. on a plain background, find the product's box from a foreground mask
//!    (counted per row and column) and add a 5 % margin;
//! 4. letterbox the crop into the 96 × 128 model input with the background
//!    colour, keeping the physical aspect ratio ([`PrepConfig::pixel_aspect`]),
//!    with a half-pixel-centre bilinear resize;
//! 5. normalise to `(v / 255 − 0.5) / 0.25` and lay out as CHW `f32`.
//!
//! Photos (not catalog shots) can have their illumination corrected first,
//! see [`Illumination`]; catalog shots are left untouched by default.
//!
//! ```
//! use vitrine::{prepare_rgb, PrepConfig, PreparedImage};
//!
//! // A 60 × 80 white image with a dark 20 × 30 "product".
//! let (w, h) = (60u32, 80u32);
//! let mut px = vec![255u8; (w * h * 3) as usize];
//! for y in 25..55 {
//!     for x in 20..40 {
//!         let i = ((y * w + x) * 3) as usize;
//!         px[i..i + 3].copy_from_slice(&[40, 40, 120]);
//!     }
//! }
//! let prepared = prepare_rgb(w, h, &px, &PrepConfig::catalog())?;
//! assert_eq!(prepared.tensor().len(), 3 * PreparedImage::HEIGHT * PreparedImage::WIDTH);
//! // The box is the product plus a margin of 5 % of its longer side (1 px).
//! assert_eq!(prepared.crop_box(), [19, 24, 41, 56]);
//! # Ok::<(), vitrine::ImageError>(())
//! ```

mod colour;
mod decode;
mod error;
mod prep;

pub use colour::{delta_e, srgb_to_lab};
pub use decode::{decode_image, DecodeLimits, DecodedImage};
pub use error::ImageError;
pub(crate) use prep::{prep_constants, NORMALISATION};
pub use prep::{
    prepare_image, prepare_rgb, Illumination, PrepConfig, PreparedImage, WhiteBalance,
    AREA_SHRINK_MIN,
};
