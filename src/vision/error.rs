//! The typed error of image decoding and preparation.

use super::DecodeLimits;

/// Why an image could not be decoded or prepared.
///
/// Every variant is about the input image, so the caller can report it per
/// item (an import collects them) and carry on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The bytes are in a supported format but could not be decoded (truncated,
    /// corrupt, or using a feature the decoder lacks).
    #[error("cannot decode image: {reason}")]
    Decode {
        /// What the decoder reported.
        reason: String,
    },
    /// The bytes are not JPEG, PNG, WebP, GIF, BMP or TIFF.
    #[error("unsupported image format: {format} (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnsupportedFormat {
        /// The format that was recognised, or `"unknown"`.
        format: String,
    },
    /// The image is larger than the [`DecodeLimits`] allow. Reported from the
    /// header, before the pixels are allocated.
    #[error("image is {width}×{height} pixels, over the decode limits ({limit})")]
    ImageTooLarge {
        /// Width in pixels (0 when the decoder stopped before reporting it).
        width: u32,
        /// Height in pixels (0 when the decoder stopped before reporting it).
        height: u32,
        /// The limits that were exceeded.
        limit: DecodeLimits,
    },
    /// The image is smaller than `min` pixels on a side.
    #[error("image is {width}×{height} pixels; both sides must be at least {min}")]
    ImageTooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The minimum side length.
        min: u32,
    },
    /// There were no bytes at all.
    #[error("image is empty (zero bytes)")]
    Empty,
}
