//! Summed-area tables: O(1) sums, means and variances of any rectangle.

use std::ops::Range;

/// A summed-area table of an interleaved 8-bit image, per channel.
///
/// Entry `(x, y)` holds the exact (`u64`) sum of every sample in rows `0..y`
/// and columns `0..x`, and the same for squared samples, so the sum, mean and
/// variance of any rectangle take four lookups. Rectangles are half-open
/// ranges `x0..x1` × `y0..y1`, clamped to the image.
///
/// Memory: 16 bytes per pixel and channel.
///
/// ```
/// use vitrine::IntegralImage;
///
/// // A 3 × 2 single-channel image.
/// let ii = IntegralImage::new(3, 2, 1, &[1, 2, 3, 4, 5, 6]).unwrap();
/// assert_eq!(ii.sum(0, 0..3, 0..2), 21);
/// assert_eq!(ii.sum(0, 1..3, 1..2), 11);
/// assert_eq!(ii.mean(0, 0..2, 0..2), Some(3.0));
/// assert_eq!(ii.variance(0, 0..3, 0..1), Some(2.0 / 3.0));
/// assert_eq!(ii.mean(0, 2..2, 0..2), None); // empty rectangle
/// ```
#[derive(Debug, Clone)]
pub struct IntegralImage {
    width: u32,
    height: u32,
    channels: usize,
    /// `(height + 1) × (width + 1) × channels`, row-major, interleaved.
    sums: Vec<u64>,
    /// Same layout as `sums`, of squared samples.
    squares: Vec<u64>,
}

impl IntegralImage {
    /// Builds the table of a `width × height` image with `channels`
    /// interleaved 8-bit samples per pixel, row-major.
    ///
    /// Returns `None` when the image is empty (a zero side), `channels` is
    /// not within 1..=64, or `samples` does not hold exactly
    /// `width × height × channels` values.
    pub fn new(width: u32, height: u32, channels: usize, samples: &[u8]) -> Option<Self> {
        let (w, h) = (width as usize, height as usize);
        // An empty image must not size the tables by its other side alone.
        if w == 0
            || h == 0
            || !(1..=64).contains(&channels)
            || w.checked_mul(h)?.checked_mul(channels)? != samples.len()
        {
            return None;
        }
        let stride = (w + 1).checked_mul(channels)?;
        let len = stride.checked_mul(h + 1)?;
        let mut sums = vec![0u64; len];
        let mut squares = vec![0u64; len];
        let mut row_sum = vec![0u64; channels];
        let mut row_sq = vec![0u64; channels];
        for y in 0..h {
            row_sum.fill(0);
            row_sq.fill(0);
            let src = &samples[y * w * channels..(y + 1) * w * channels];
            let above = y * stride;
            let here = (y + 1) * stride;
            for x in 0..w {
                for c in 0..channels {
                    let v = u64::from(src[x * channels + c]);
                    row_sum[c] += v;
                    let i = (x + 1) * channels + c;
                    sums[here + i] = sums[above + i] + row_sum[c];
                    row_sq[c] += v * v;
                    squares[here + i] = squares[above + i] + row_sq[c];
                }
            }
        }
        Some(IntegralImage {
            width,
            height,
            channels,
            sums,
            squares,
        })
    }

    /// Width of the image in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height of the image in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Clamps a rectangle to the image; `None` when it is empty.
    fn clamp(&self, x: Range<u32>, y: Range<u32>) -> Option<(usize, usize, usize, usize)> {
        let x1 = x.end.min(self.width) as usize;
        let y1 = y.end.min(self.height) as usize;
        let x0 = x.start as usize;
        let y0 = y.start as usize;
        (x0 < x1 && y0 < y1).then_some((x0, y0, x1, y1))
    }

    fn rect(&self, table: &[u64], channel: usize, r: (usize, usize, usize, usize)) -> u64 {
        let (x0, y0, x1, y1) = r;
        let stride = (self.width as usize + 1) * self.channels;
        let at = |x: usize, y: usize| table[y * stride + x * self.channels + channel];
        // Inclusion–exclusion; the order keeps every step non-negative.
        at(x1, y1) + at(x0, y0) - at(x0, y1) - at(x1, y0)
    }

    fn check_channel(&self, channel: usize) {
        assert!(
            channel < self.channels,
            "channel {channel} out of range for a {}-channel integral image",
            self.channels
        );
    }

    /// Number of pixels in the rectangle after clamping it to the image.
    pub fn area(&self, x: Range<u32>, y: Range<u32>) -> u64 {
        self.clamp(x, y)
            .map_or(0, |(x0, y0, x1, y1)| ((x1 - x0) * (y1 - y0)) as u64)
    }

    /// Exact sum of channel `channel` over columns `x` and rows `y`
    /// (0 for an empty rectangle).
    ///
    /// # Panics
    /// If `channel >= self.channels()`.
    pub fn sum(&self, channel: usize, x: Range<u32>, y: Range<u32>) -> u64 {
        self.check_channel(channel);
        self.clamp(x, y)
            .map_or(0, |r| self.rect(&self.sums, channel, r))
    }

    /// Mean of channel `channel` over the rectangle; `None` when it is empty.
    ///
    /// # Panics
    /// If `channel >= self.channels()`.
    pub fn mean(&self, channel: usize, x: Range<u32>, y: Range<u32>) -> Option<f64> {
        self.check_channel(channel);
        let r = self.clamp(x, y)?;
        let n = ((r.2 - r.0) * (r.3 - r.1)) as f64;
        Some(self.rect(&self.sums, channel, r) as f64 / n)
    }

    /// Population variance of channel `channel` over the rectangle, computed
    /// from exact integer sums; `None` when it is empty.
    ///
    /// # Panics
    /// If `channel >= self.channels()`.
    pub fn variance(&self, channel: usize, x: Range<u32>, y: Range<u32>) -> Option<f64> {
        self.check_channel(channel);
        let r = self.clamp(x, y)?;
        let n = ((r.2 - r.0) * (r.3 - r.1)) as u128;
        let s = u128::from(self.rect(&self.sums, channel, r));
        let q = u128::from(self.rect(&self.squares, channel, r));
        // n·Σv² − (Σv)² ≥ 0 exactly (Cauchy–Schwarz).
        let num = n * q - s * s;
        Some(num as f64 / (n * n) as f64)
    }
}
