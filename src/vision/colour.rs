//! The product's own colour, measured on its pixels: CIELAB (D65) of the
//! dominant cluster of the foreground.
//!
//! The model's colour head sees the whole letterboxed image, so a tinted
//! studio background (Mango's beige, say) can pull it; measuring only the
//! pixels that differ from the estimated background, and taking the largest
//! of three k-means clusters rather than the mean (a striped shirt is not
//! its average), gives a colour that outfit relations can compare with ΔE.

/// sRGB (u8 units) to CIELAB, D65 white.
pub fn srgb_to_lab(rgb: [f32; 3]) -> [f32; 3] {
    let lin = |c: f32| {
        let c = (c / 255.0).clamp(0.0, 1.0);
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let [r, g, b] = rgb.map(lin);
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.950_47;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.088_83;
    let f = |t: f32| {
        if t > 0.008_856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// CIE76 colour difference.
pub fn delta_e(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Foreground pixels are at least this far (Euclidean, u8 RGB) from the
/// background colour.
const FOREGROUND_DISTANCE: f32 = 40.0;
/// Fewer foreground pixels than this: no colour.
const MIN_PIXELS: usize = 32;
/// At most this many pixels enter the clustering (a grid over the box).
const SAMPLE: usize = 4096;

/// The background as the border sees it even when the border is not plain
/// (a model shot whose product runs off an edge): the per-channel median of
/// the outermost two-pixel ring, when at least half of that ring lies
/// within [`FOREGROUND_DISTANCE`] of it.
pub(crate) fn border_median(px: &[u8], w: usize, h: usize) -> Option<[f64; 3]> {
    if w < 4 || h < 4 {
        return None;
    }
    let mut ring: Vec<[u8; 3]> = Vec::with_capacity(4 * (w + h));
    for y in 0..h {
        for x in 0..w {
            if x < 2 || y < 2 || x + 2 >= w || y + 2 >= h {
                let i = (y * w + x) * 3;
                ring.push([px[i], px[i + 1], px[i + 2]]);
            }
        }
    }
    let median = |c: usize| {
        let mut v: Vec<u8> = ring.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        f64::from(v[v.len() / 2])
    };
    let m = [median(0), median(1), median(2)];
    let near = ring
        .iter()
        .filter(|p| {
            (0..3)
                .map(|c| (f64::from(p[c]) - m[c]).powi(2))
                .sum::<f64>()
                .sqrt()
                < f64::from(FOREGROUND_DISTANCE)
        })
        .count();
    (near * 2 >= ring.len()).then_some(m)
}

/// The dominant colour (CIELAB) of the pixels of `px` (interleaved RGB u8,
/// `w` wide) inside `[x0, y0, x1, y1)`, leaving out those close to
/// `background` when it is given. `None` when too few pixels remain.
pub(crate) fn dominant_lab(
    px: &[u8],
    w: usize,
    [x0, y0, x1, y1]: [usize; 4],
    background: Option<[f64; 3]>,
) -> Option<[f32; 3]> {
    // A square grid of about 4 × SAMPLE points (more on a strip narrower
    // than the stride; thinned below): a stride in raster order
    // would keep the same few columns whenever it divides the width (8 of
    // 2048 on a 2048² photo).
    let area = (x1 - x0) * (y1 - y0);
    let step = ((area as f64 / (SAMPLE * 4) as f64).sqrt().ceil() as usize).max(1);
    // No wider than the crop: a strip narrower than half the stride had
    // no column on the grid.
    let (step_x, step_y) = (step.min(x1 - x0).max(1), step.min(y1 - y0).max(1));
    let mut rgb: Vec<[f32; 3]> = Vec::new();
    for y in (y0 + step_y / 2..y1).step_by(step_y) {
        for x in (x0 + step_x / 2..x1).step_by(step_x) {
            let i = (y * w + x) * 3;
            let p = [px[i], px[i + 1], px[i + 2]].map(f32::from);
            if let Some(bg) = background {
                let d = (0..3)
                    .map(|c| (p[c] - bg[c] as f32).powi(2))
                    .sum::<f32>()
                    .sqrt();
                if d < FOREGROUND_DISTANCE {
                    continue;
                }
            }
            rgb.push(p);
        }
    }
    if rgb.len() < MIN_PIXELS {
        return None;
    }
    // At most 4: every 4th foreground point still spans the whole product.
    let step = rgb.len().div_ceil(SAMPLE);
    let lab: Vec<[f32; 3]> = rgb.iter().step_by(step).map(|&p| srgb_to_lab(p)).collect();
    Some(largest_cluster(&lab))
}

/// k-means (k = 3, 8 rounds) seeded at the 1/6, 1/2 and 5/6 quantiles of
/// lightness; the centroid of the most populated cluster.
fn largest_cluster(lab: &[[f32; 3]]) -> [f32; 3] {
    let mut by_l: Vec<usize> = (0..lab.len()).collect();
    by_l.sort_by(|&a, &b| lab[a][0].total_cmp(&lab[b][0]));
    let mut centres: Vec<[f32; 3]> = [1, 3, 5]
        .iter()
        .map(|q| lab[by_l[(by_l.len() * q / 6).min(by_l.len() - 1)]])
        .collect();
    let mut counts = vec![0usize; centres.len()];
    for _ in 0..8 {
        let mut sums = vec![[0f32; 3]; centres.len()];
        counts.iter_mut().for_each(|c| *c = 0);
        for p in lab {
            let j = (0..centres.len())
                .min_by(|&a, &b| delta_e(*p, centres[a]).total_cmp(&delta_e(*p, centres[b])))
                .unwrap_or(0);
            counts[j] += 1;
            for c in 0..3 {
                sums[j][c] += p[c];
            }
        }
        for (j, s) in sums.iter().enumerate() {
            if counts[j] > 0 {
                centres[j] = s.map(|v| v / counts[j] as f32);
            }
        }
    }
    let best = (0..centres.len()).max_by_key(|&j| counts[j]).unwrap_or(0);
    centres[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_of_reference_colours() {
        let white = srgb_to_lab([255.0; 3]);
        assert!((white[0] - 100.0).abs() < 0.1 && white[1].abs() < 0.5 && white[2].abs() < 0.5);
        let black = srgb_to_lab([0.0; 3]);
        assert!(black[0].abs() < 0.1);
        let red = srgb_to_lab([255.0, 0.0, 0.0]);
        assert!(
            (red[0] - 53.2).abs() < 0.5 && (red[1] - 80.1).abs() < 1.0,
            "{red:?}"
        );
    }

    #[test]
    fn the_product_not_the_background() {
        // A 40x40 beige canvas with a 20x20 navy square holding a thin white stripe.
        let (w, h) = (40usize, 40usize);
        let mut px = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let c: [u8; 3] = if (10..30).contains(&x) && (10..30).contains(&y) {
                    if y == 15 {
                        [250, 250, 250]
                    } else {
                        [20, 30, 90]
                    }
                } else {
                    [225, 205, 170]
                };
                px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
            }
        }
        let lab = dominant_lab(&px, w, [0, 0, w, h], Some([225.0, 205.0, 170.0])).unwrap();
        let navy = srgb_to_lab([20.0, 30.0, 90.0]);
        assert!(delta_e(lab, navy) < 1.0, "{lab:?} vs {navy:?}");
        // Without the background estimate the beige dominates.
        let all = dominant_lab(&px, w, [0, 0, w, h], None).unwrap();
        assert!(delta_e(all, srgb_to_lab([225.0, 205.0, 170.0])) < 1.0);
        // Nothing but background: no colour.
        assert_eq!(
            dominant_lab(&px, w, [0, 0, 5, 5], Some([225.0, 205.0, 170.0])),
            None
        );
    }

    #[test]
    fn the_sample_spans_every_column() {
        // Navy with a 1-pixel white pinstripe every 256 columns: a raster
        // stride of 256 (this size's 4 × SAMPLE share) saw only the stripes.
        let (w, h) = (2048usize, 2048usize);
        let mut px = vec![0u8; w * h * 3];
        for (i, p) in px.chunks_exact_mut(3).enumerate() {
            let c: [u8; 3] = if i % w % 256 == 255 {
                [250, 250, 250]
            } else {
                [20, 30, 90]
            };
            p.copy_from_slice(&c);
        }
        let lab = dominant_lab(&px, w, [0, 0, w, h], None).unwrap();
        let navy = srgb_to_lab([20.0, 30.0, 90.0]);
        assert!(delta_e(lab, navy) < 1.0, "{lab:?} vs {navy:?}");
    }

    #[test]
    fn a_tall_narrow_strip_is_sampled() {
        // 16 × 1,000,000: a stride of 32 started past the last column.
        let (w, h) = (16usize, 1_000_000usize);
        let px: Vec<u8> = [20u8, 30, 90].repeat(w * h);
        let lab = dominant_lab(&px, w, [0, 0, w, h], None).unwrap();
        let navy = srgb_to_lab([20.0, 30.0, 90.0]);
        assert!(delta_e(lab, navy) < 1.0, "{lab:?} vs {navy:?}");
        let wide: Vec<u8> = [20u8, 30, 90].repeat(w * h);
        let lab = dominant_lab(&wide, h, [0, 0, h, w], None).unwrap();
        assert!(delta_e(lab, navy) < 1.0, "{lab:?} vs {navy:?}");
    }
}
