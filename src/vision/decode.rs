//! Decoding JPEG, PNG, WebP, GIF, BMP and TIFF to RGB u8 under explicit
//! limits, upright as their EXIF orientation says.

use std::fmt;
use std::io::Cursor;

use image::error::{LimitErrorKind, UnsupportedErrorKind};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::ImageError;

/// The smallest accepted side length, in pixels.
pub(crate) const MIN_SIDE: u32 = 8;

/// Limits applied while decoding, checked on the header before any pixel
/// buffer is allocated, so a decompression bomb is refused cheaply.
///
/// ```
/// use vitrine::DecodeLimits;
///
/// let limits = DecodeLimits::default();
/// assert_eq!(limits.max_width, 12_000);
/// assert_eq!(limits.max_height, 12_000);
/// assert_eq!(limits.max_alloc, 256 * 1024 * 1024);
/// assert_eq!(limits.max_file_bytes, 256 * 1024 * 1024);
///
/// // Tighter limits for an upload endpoint.
/// let mut upload = DecodeLimits::default();
/// upload.max_width = 4_000;
/// upload.max_height = 4_000;
/// upload.max_alloc = 64 * 1024 * 1024;
/// upload.max_file_bytes = 16 * 1024 * 1024;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DecodeLimits {
    /// Largest accepted width in pixels. Default 12 000.
    pub max_width: u32,
    /// Largest accepted height in pixels. Default 12 000.
    pub max_height: u32,
    /// Largest decoded buffer, in bytes, counted at the larger of the
    /// image's own bytes per pixel (4 for RGBA8, 6 for RGB16) and 3 (the
    /// RGB copy that is kept: a grey image counts as RGB). Default 256 MiB.
    /// Also passed to the decoders for their internal allocations. Peak
    /// memory while decoding can reach about three times this: the decoded
    /// buffer, the RGB copy, and a rotated copy for EXIF orientations that
    /// turn the image by 90°.
    pub max_alloc: u64,
    /// Largest image file [`DecodeLimits::read_file`] reads, in bytes.
    /// Default 256 MiB, the default decoded size: an uncompressed file the
    /// decoder would take is read (a 22-megapixel studio TIFF is 67 MB).
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_width: 12_000,
            max_height: 12_000,
            max_alloc: 256 * 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

impl fmt::Display for DecodeLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {}×{} pixels and {} MiB decoded, as RGB or wider",
            self.max_width,
            self.max_height,
            self.max_alloc / (1024 * 1024)
        )
    }
}

impl DecodeLimits {
    /// Reads an image file whole, refusing anything but a regular file
    /// (a device or pipe never ends) and files over
    /// [`max_file_bytes`](Self::max_file_bytes).
    pub fn read_file(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        use std::io::{Error, ErrorKind, Read};
        // Checked before opening: opening a pipe waits for a writer.
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
        }
        if meta.len() > self.max_file_bytes {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} bytes; image files are limited to {}",
                    meta.len(),
                    self.max_file_bytes
                ),
            ));
        }
        let file = std::fs::File::open(path)?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // The file may grow while it is read: never past the limit.
        file.take(self.max_file_bytes.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > self.max_file_bytes {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "image file over the size limit",
            ));
        }
        Ok(bytes)
    }

    /// The decoder's limits for a stored (not yet rotated) image: width
    /// and height swap when the orientation turns it a quarter.
    fn to_image_limits(self, rotated: bool) -> Limits {
        let mut l = Limits::no_limits();
        let (w, h) = if rotated {
            (self.max_height, self.max_width)
        } else {
            (self.max_width, self.max_height)
        };
        l.max_image_width = Some(w);
        l.max_image_height = Some(h);
        l.max_alloc = Some(self.max_alloc);
        l
    }

    fn too_large(self, width: u32, height: u32) -> ImageError {
        ImageError::ImageTooLarge {
            width,
            height,
            limit: self,
        }
    }

    /// Checks the dimensions and a decoded size of `bytes_per_pixel`.
    pub(crate) fn check(
        self,
        width: u32,
        height: u32,
        bytes_per_pixel: u64,
    ) -> Result<(), ImageError> {
        let bytes = u64::from(width)
            .saturating_mul(u64::from(height))
            .saturating_mul(bytes_per_pixel);
        if width > self.max_width || height > self.max_height || bytes > self.max_alloc {
            return Err(self.too_large(width, height));
        }
        if width < MIN_SIDE || height < MIN_SIDE {
            return Err(ImageError::ImageTooSmall {
                width,
                height,
                min: MIN_SIDE,
            });
        }
        Ok(())
    }
}

/// Maps an `image` error to ours; `dims` is the header's size when known.
fn map_error(e: image::ImageError, limits: DecodeLimits, dims: (u32, u32)) -> ImageError {
    match e {
        image::ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError | LimitErrorKind::InsufficientMemory => {
                limits.too_large(dims.0, dims.1)
            }
            _ => ImageError::Decode {
                reason: l.to_string(),
            },
        },
        image::ImageError::Unsupported(u) => match u.kind() {
            UnsupportedErrorKind::Format(hint) => ImageError::UnsupportedFormat {
                format: hint.to_string(),
            },
            _ => ImageError::Decode {
                reason: u.to_string(),
            },
        },
        other => ImageError::Decode {
            reason: other.to_string(),
        },
    }
}

/// Decodes JPEG, PNG, WebP, GIF (first frame), BMP or TIFF (first page)
/// bytes to RGB u8 (grey expanded, 16-bit scaled to 8-bit, transparency
/// composited onto white, the catalog background), turned upright as the
/// EXIF orientation says, so the model sees what a viewer shows. (No image
/// of the training data has an alpha channel or an orientation.) TIFF
/// covers grey, RGB, RGBA and CMYK at 8 or 16 bits; palette, YCbCr,
/// grey-with-alpha, CIELab and CMYK-with-alpha TIFFs are refused as
/// undecodable.
pub(crate) fn decode_rgb(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ImageError> {
    // The decoders are third-party code fed the caller's bytes; some have
    // panicked on malformed files. Such a panic is this file's error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_checked(bytes, limits)
    }))
    .unwrap_or_else(|_| {
        Err(ImageError::Decode {
            reason: "the image decoder panicked on this file".into(),
        })
    })
}

fn decode_checked(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode {
            reason: e.to_string(),
        })?;
    let format = reader.format();
    match format {
        Some(
            ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff,
        ) => {}
        Some(other) => {
            return Err(ImageError::UnsupportedFormat {
                format: format!("{other:?}"),
            })
        }
        // An iPhone's photos (HEIF), often renamed .jpg: named, as AVIF is.
        None if bytes.get(4..8) == Some(b"ftyp")
            && bytes.get(8..12).is_some_and(|brand| {
                [
                    b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1",
                ]
                .contains(&brand.try_into().unwrap_or(&[0u8; 4]))
            }) =>
        {
            return Err(ImageError::UnsupportedFormat {
                format: "HEIC/HEIF (an iPhone photo: export it as JPEG)".to_owned(),
            })
        }
        None => {
            return Err(ImageError::UnsupportedFormat {
                format: "unknown".to_owned(),
            })
        }
    }
    if format == Some(ImageFormat::Jpeg) {
        // The JPEG decoder is lenient and fills missing data with grey; a
        // truncated file is an error here (as in the training reference).
        jpeg_reaches_end(bytes).map_err(|reason| ImageError::Decode { reason })?;
    }
    // Read the header with only the allocation limit, so that an oversized
    // image is reported with its dimensions; the full limits follow.
    let mut header_limits = Limits::no_limits();
    header_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = reader;
    reader.limits(header_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_error(e, limits, (0, 0)))?;
    let (width, height) = decoder.dimensions();
    // An unreadable orientation tag is no reason to refuse the pixels.
    use image::metadata::Orientation;
    let orientation = match decoder.orientation() {
        // The PNG header reader stops at the pixel data: an eXIf chunk
        // after it (where libpng writes one) is read here.
        Ok(Orientation::NoTransforms) | Err(_) if format == Some(ImageFormat::Png) => {
            png_late_orientation(bytes).unwrap_or(Orientation::NoTransforms)
        }
        Ok(o) => o,
        Err(_) => Orientation::NoTransforms,
    };
    // Checked as the pixels will be kept (upright, 3 bytes per pixel, as
    // prepare_rgb checks them) and as the decoder holds them: an image the
    // preparation would refuse is refused before it is decoded.
    let bpp = u64::from(decoder.color_type().bytes_per_pixel());
    let (upright_w, upright_h) = if rotates(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    limits.check(upright_w, upright_h, bpp.max(3))?;
    if format == Some(ImageFormat::Gif) {
        // The decoder holds the first frame whole, at its own size, which
        // may exceed the logical screen `dimensions` reports (or cover
        // only part of it: the screen, already checked, is then the size).
        if let Some((w, h)) = gif_first_frame(bytes) {
            limits.check(w.max(width), h.max(height), 4)?;
        }
    }
    let premultiplied = format == Some(ImageFormat::Tiff) && tiff_associated_alpha(bytes);
    decoder
        .set_limits(limits.to_image_limits(rotates(orientation)))
        .map_err(|e| map_error(e, limits, (width, height)))?;
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| map_error(e, limits, (width, height)))?;
    tracing::trace!(?format, width, height, color = ?image.color(), "decoded image");
    let mut rgb = DynamicImage::ImageRgb8(if image.color().has_alpha() {
        on_white(&image.into_rgba8(), premultiplied)
    } else {
        image.into_rgb8()
    });
    if rgb.width() != width || rgb.height() != height {
        return Err(ImageError::Decode {
            reason: format!(
                "decoder returned {}×{} pixels for a {width}×{height} header",
                rgb.width(),
                rgb.height()
            ),
        });
    }
    rgb.apply_orientation(orientation);
    Ok(rgb.into_rgb8())
}

/// Whether an EXIF orientation swaps width and height.
fn rotates(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// Decoded pixels: `width × height` RGB u8, row-major, interleaved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodedImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}

/// Decodes image bytes as [`prepare_image`](crate::prepare_image) does before
/// it prepares them: JPEG, PNG, WebP, GIF, BMP or TIFF, upright by the EXIF
/// orientation, transparency composited onto white, under `limits`.
///
/// ```
/// use vitrine::{decode_image, DecodeLimits, ImageError};
///
/// assert_eq!(decode_image(b"", DecodeLimits::default()), Err(ImageError::Empty));
/// ```
pub fn decode_image(bytes: &[u8], limits: DecodeLimits) -> Result<DecodedImage, ImageError> {
    let rgb = decode_rgb(bytes, limits)?;
    Ok(DecodedImage {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
}

/// Composites `rgba` onto white: a cut-out product on a transparent
/// background looks as it would in the catalog, whatever colour the hidden
/// pixels under the transparency have. `premultiplied`: the colours are
/// already multiplied by their alpha (a TIFF's associated alpha).
fn on_white(rgba: &image::RgbaImage, premultiplied: bool) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let blend = |c: u8| {
            let c = u32::from(c);
            let fg = if premultiplied { c * 255 } else { c * a };
            ((fg + 255 * (255 - a) + 127) / 255).min(255) as u8
        };
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

/// The width and height of a GIF's first frame (its image descriptor).
fn gif_first_frame(bytes: &[u8]) -> Option<(u32, u32)> {
    let u16_at = |p: usize| {
        bytes
            .get(p..p + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    // Header (6), logical screen descriptor (7), global colour table.
    let flags = *bytes.get(10)?;
    let mut pos = 13
        + if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        };
    loop {
        match *bytes.get(pos)? {
            0x2C => return Some((u16_at(pos + 5)?, u16_at(pos + 7)?)),
            0x21 => {
                // Extension: label, then data sub-blocks up to an empty one.
                pos += 2;
                loop {
                    let len = usize::from(*bytes.get(pos)?);
                    pos += 1 + len;
                    if len == 0 {
                        break;
                    }
                }
            }
            _ => return None,
        }
    }
}

/// Whether a TIFF's first image has associated (premultiplied) alpha:
/// `ExtraSamples` = 1. The decoder passes such colours on as they are.
fn tiff_associated_alpha(bytes: &[u8]) -> bool {
    let le = match bytes.get(..4) {
        Some(b"II*\0") => true,
        Some(b"MM\0*") => false,
        _ => return false, // BigTIFF has no alpha the decoder reads differently
    };
    let u16_at = |p: usize| {
        let b: [u8; 2] = bytes.get(p..p.checked_add(2)?)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |p: usize| {
        let b: [u8; 4] = bytes.get(p..p.checked_add(4)?)?.try_into().ok()?;
        let v = if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        };
        usize::try_from(v).ok()
    };
    let Some(ifd) = u32_at(4) else {
        return false;
    };
    let entries = u16_at(ifd).map_or(0, usize::from);
    (0..entries).any(|i| {
        let e = ifd + 2 + 12 * i;
        // SHORT values; up to two sit in the entry, more at an offset.
        let first = match (u16_at(e), u16_at(e + 2), u32_at(e + 4)) {
            (Some(338), Some(3), Some(1..=2)) => u16_at(e + 8),
            (Some(338), Some(3), Some(3..)) => u32_at(e + 8).and_then(u16_at),
            _ => None,
        };
        first == Some(1)
    })
}

/// The orientation in a PNG's `eXIf` chunk, wherever it is (the chunk may
/// follow the pixel data).
fn png_late_orientation(bytes: &[u8]) -> Option<image::metadata::Orientation> {
    let mut pos = 8; // after the signature
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = usize::try_from(u32::from_be_bytes([head[0], head[1], head[2], head[3]])).ok()?;
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        match &head[4..8] {
            b"eXIf" => return image::metadata::Orientation::from_exif_chunk(data),
            b"IEND" => return None,
            _ => pos = pos.checked_add(len)?.checked_add(12)?,
        }
    }
    None
}

/// Walks the JPEG marker segments (and the entropy-coded data of each scan)
/// and checks that the end-of-image marker is reached before the data ends.
/// Bytes after the marker are ignored; stray bytes between segments are
/// skipped, as the decoder does.
fn jpeg_reaches_end(bytes: &[u8]) -> Result<(), String> {
    let truncated = || "truncated JPEG (no end-of-image marker)".to_owned();
    let mut pos = 2; // after SOI
    loop {
        // Find the next marker: 0xFF, optional fill bytes, a non-zero code.
        while *bytes.get(pos).ok_or_else(truncated)? != 0xFF {
            pos += 1;
        }
        while *bytes.get(pos).ok_or_else(truncated)? == 0xFF {
            pos += 1;
        }
        let marker = bytes[pos];
        pos += 1;
        match marker {
            0xD9 => return Ok(()),
            // Standalone markers (and a stray stuffed zero): no length.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = match bytes.get(pos..pos + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(truncated()),
        };
        // The length counts its own two bytes: a shorter one would walk
        // into the segment's payload (a thumbnail's end marker).
        if len < 2 {
            return Err(format!("malformed JPEG (a segment of length {len})"));
        }
        pos += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker other than a
            // stuffed zero or a restart marker.
            loop {
                match bytes.get(pos..pos + 2) {
                    None => return Err(truncated()),
                    Some([0xFF, 0x00 | 0xD0..=0xD7]) => pos += 2,
                    Some([0xFF, _]) => break,
                    Some(_) => pos += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::jpeg_reaches_end;

    #[test]
    fn jpeg_walk_needs_the_end_marker() {
        // SOI, an APP1 whose payload holds a thumbnail's EOI, SOS, data.
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        assert!(
            jpeg_reaches_end(&j).is_err(),
            "EOI inside APP1 does not count"
        );
        let mut complete = j.clone();
        complete.extend_from_slice(&[0xFF, 0xD9, 0x00, 0x01]); // trailing bytes are fine
        assert!(jpeg_reaches_end(&complete).is_ok());
        // A segment length running past the end.
        assert!(jpeg_reaches_end(&[0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x40, 0x00]).is_err());
        assert!(jpeg_reaches_end(&[0xFF, 0xD8]).is_err());
        assert!(jpeg_reaches_end(&[0xFF, 0xD8, 0xFF, 0xFF, 0xD9]).is_ok());
        // A length shorter than its own bytes does not step into the
        // payload to find the thumbnail's end marker there.
        for short in [0u8, 1] {
            let mut j = j.clone();
            j[5] = short;
            assert!(jpeg_reaches_end(&j).is_err(), "length {short}");
        }
    }
}
