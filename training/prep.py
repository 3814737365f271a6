"""Vitrine image preparation, the reference implementation.

The Rust engine (src/vision) must reproduce `prepare()` within 1e-3 per
element of the output tensor.  Every step is deliberately simple and spelled
out in numpy (no PIL resize, no OpenCV) so that it can be ported line by line.
See training/PREP.md for the specification in prose.

Steps
  1. decode to RGB u8, shape (H, W, 3)            -> decode_rgb()
  2. background colour = mean of a border band    -> border_stats()
  3. foreground mask, summed-area table, product box (+ margin)  -> product_box()
  4. crop, letterbox into the model input keeping the *physical* aspect ratio
     (pixel_aspect = physical width of one pixel / its height), bilinear with
     half-pixel centres, no antialias               -> letterbox()
  5. normalise with MEAN/STD, NCHW float32         -> prepare()
"""
from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------- constants
INPUT_W = 96            # model input width  (pixels)
INPUT_H = 128           # model input height (pixels); 3:4 portrait like the catalog originals
BORDER = 4              # border band width (pixels) used for the background colour
FG_THRESHOLD = 24       # a pixel is foreground if max_c |p_c - bg_c| > FG_THRESHOLD (u8 units)
PLAIN_MAX_DEV = 32      # background is "plain" if the mean over the band of
                        # max_c |p_c - bg_c| is <= PLAIN_MAX_DEV (else: no crop)
LINE_FRAC = 0.01        # a row (column) is occupied if its fg count >= max(LINE_MIN, LINE_FRAC * width (height))
LINE_MIN = 2
MARGIN_FRAC = 0.05      # margin added around the box, as a fraction of the box's longer *physical* side
FPI_PIXEL_ASPECT = 0.75 # fpi images are 3:4 portrait originals squashed to 224x224: one pixel is 0.75 as wide as tall
MEAN = (0.5, 0.5, 0.5)  # per channel (RGB), applied to value/255
STD = (0.25, 0.25, 0.25)
AREA_SHRINK_MIN = 4.0   # step 6a: a crop >= this many times its size on the canvas, along an axis, is block-averaged first


def decode_rgb(path_or_bytes) -> np.ndarray:
    """Decode to RGB u8 (H, W, 3). PIL's JPEG decoder (libjpeg-turbo, ISLOW IDCT,
    fancy upsampling) is the reference; the Rust `image` crate (zune-jpeg) can
    differ by a few u8 levels on some pixels, which is why the parity test is
    run on the *decoded* u8 arrays (see PREP.md)."""
    from PIL import Image
    import io
    from PIL import ImageOps
    if isinstance(path_or_bytes, (bytes, bytearray)):
        im = Image.open(io.BytesIO(path_or_bytes))
    else:
        im = Image.open(path_or_bytes)
    # Upright as the EXIF orientation says; transparency onto white (the
    # catalog background), an alpha channel's or a PNG's one transparent
    # colour (tRNS) alike, as the engine's decoder expands it. The training
    # images have neither.
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I"):
        # 16-bit grey: Pillow's convert("RGB") clips; the engine scales to
        # 8 bits with rounding, (v + 128) // 257, and composites its tRNS
        # grey value (alpha 0) onto white.
        v16 = np.asarray(im, dtype=np.uint32)
        v = ((v16 + 128) // 257).astype(np.uint8)
        if "transparency" in im.info:
            v = np.where(v16 == int(im.info["transparency"]), np.uint8(255), v)
        return np.repeat(v[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        a = rgba[..., 3:4]
        rgb = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
        return rgb.astype(np.uint8)
    im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def summed_area_table(a: np.ndarray) -> np.ndarray:
    """I[y, x] = sum of a[0:y, 0:x]; shape (H+1, W+1), int64."""
    h, w = a.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(a.astype(np.int64), axis=0), axis=1)
    return sat


def rect_sum(sat: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> int:
    """Sum over rows [y0, y1) and columns [x0, x1) in O(1)."""
    return int(sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0])


def border_mask(h: int, w: int, b: int = BORDER) -> np.ndarray:
    b = max(1, min(b, h // 2, w // 2))
    m = np.zeros((h, w), dtype=bool)
    m[:b, :] = True
    m[h - b:, :] = True
    m[:, :b] = True
    m[:, w - b:] = True
    return m


def border_stats(img: np.ndarray):
    """Returns (bg_sum[3] int64, n int, plain bool).

    bg = bg_sum / n is the mean colour of the border band (exact integer sums;
    in Rust: per-channel SATs, band sum = whole - inner rectangle).
    plain: mean over band pixels of max_c |p_c*n - bg_sum_c| <= PLAIN_MAX_DEV*n,
    evaluated in integers as sum(max_c |p_c*n - bg_sum_c|) <= PLAIN_MAX_DEV*n*n.
    """
    h, w, _ = img.shape
    m = border_mask(h, w)
    band = img[m].astype(np.int64)            # (n, 3)
    n = band.shape[0]
    bg_sum = band.sum(axis=0)                 # (3,)
    dev = np.abs(band * n - bg_sum[None, :]).max(axis=1)
    plain = int(dev.sum()) <= PLAIN_MAX_DEV * n * n
    return bg_sum, n, plain


def foreground_mask(img: np.ndarray, bg_sum: np.ndarray, n: int) -> np.ndarray:
    """fg[y,x] = max_c |p_c*n - bg_sum_c| > FG_THRESHOLD*n  (exact integer test)."""
    d = np.abs(img.astype(np.int64) * n - bg_sum[None, None, :]).max(axis=2)
    return d > FG_THRESHOLD * n


def product_box(img: np.ndarray, pixel_aspect: float = 1.0):
    """Returns ((x0, y0, x1, y1) half-open crop box in pixels, bg colour float64[3]).

    1. bg colour and plainness from the border band;
    2. fg mask, its SAT I;
    3. row r occupied  <=> I[r+1,W]-I[r,W] >= max(LINE_MIN, ceil(LINE_FRAC*W));
       col c occupied  <=> I[H,c+1]-I[H,c] >= max(LINE_MIN, ceil(LINE_FRAC*H));
    4. box = [first occupied col, last occupied col + 1) x [first row, last row + 1);
       none occupied or background not plain -> full image;
    5. margin: m = MARGIN_FRAC * max(bw*pixel_aspect, bh) (physical units);
       mx = floor(m / pixel_aspect), my = floor(m); expand and clamp to the image.
    """
    h, w, _ = img.shape
    bg_sum, n, plain = border_stats(img)
    bg = bg_sum.astype(np.float64) / n
    if not plain:
        return (0, 0, w, h), bg
    fg = foreground_mask(img, bg_sum, n)
    sat = summed_area_table(fg)
    row_counts = sat[1:, w] - sat[:-1, w]           # (H,)
    col_counts = sat[h, 1:] - sat[h, :-1]           # (W,)
    row_min = max(LINE_MIN, math.ceil(LINE_FRAC * w))
    col_min = max(LINE_MIN, math.ceil(LINE_FRAC * h))
    rows = np.nonzero(row_counts >= row_min)[0]
    cols = np.nonzero(col_counts >= col_min)[0]
    if rows.size == 0 or cols.size == 0:
        return (0, 0, w, h), bg
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    bw, bh = x1 - x0, y1 - y0
    m = MARGIN_FRAC * max(bw * pixel_aspect, float(bh))
    mx = int(math.floor(m / pixel_aspect))
    my = int(math.floor(m))
    x0, y0 = max(0, x0 - mx), max(0, y0 - my)
    x1, y1 = min(w, x1 + mx), min(h, y1 + my)
    return (x0, y0, x1, y1), bg


def bilinear_axis(src_len: int, dst_len: int):
    """Source indices and weights for one axis, half-pixel centres, no antialias.
    s = (d + 0.5) * src_len / dst_len - 0.5, clamped to [0, src_len - 1];
    i0 = floor(s), i1 = min(i0 + 1, src_len - 1), f = s - i0.  (float32 math)"""
    d = np.arange(dst_len, dtype=np.float32)
    scale = np.float32(src_len) / np.float32(dst_len)
    s = (d + np.float32(0.5)) * scale - np.float32(0.5)
    s = np.clip(s, np.float32(0.0), np.float32(src_len - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, src_len - 1)
    f = (s - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, f


def resize_bilinear(src: np.ndarray, dst_w: int, dst_h: int) -> np.ndarray:
    """src (h, w, 3) u8/float -> (dst_h, dst_w, 3) float32 in u8 units.
    Horizontal pass first: row value = a*(1-fx) + b*fx; then vertical the same way."""
    src = src.astype(np.float32)
    h, w, _ = src.shape
    xi0, xi1, fx = bilinear_axis(w, dst_w)
    yi0, yi1, fy = bilinear_axis(h, dst_h)
    fx = fx[None, :, None]
    tmp = src[:, xi0, :] * (np.float32(1) - fx) + src[:, xi1, :] * fx      # (h, dst_w, 3)
    fy = fy[:, None, None]
    out = tmp[yi0, :, :] * (np.float32(1) - fy) + tmp[yi1, :, :] * fy       # (dst_h, dst_w, 3)
    return out.astype(np.float32)


def letterbox_geometry(cw: int, ch: int, pixel_aspect: float, W: int = INPUT_W, H: int = INPUT_H):
    """Content size and offset in the W x H canvas (all f64 math, then integers).
    phys_w = cw * pixel_aspect; s = min(W / phys_w, H / ch);
    tw = clamp(round_half_up(phys_w * s), 1, W); th = clamp(round_half_up(ch * s), 1, H);
    ox = (W - tw) // 2; oy = (H - th) // 2."""
    phys_w = cw * pixel_aspect
    s = min(W / phys_w, H / float(ch))
    tw = min(W, max(1, int(math.floor(phys_w * s + 0.5))))
    th = min(H, max(1, int(math.floor(ch * s + 0.5))))
    return tw, th, (W - tw) // 2, (H - th) // 2


def shrink_factor(src_len: int, dst_len: int) -> int:
    """Step 6a's block length along one axis: floor(src_len / dst_len) from
    AREA_SHRINK_MIN on, else 1 (int / int is the correctly rounded f64
    quotient, as the engine's)."""
    scale = src_len / dst_len
    return int(math.floor(scale)) if scale >= AREA_SHRINK_MIN else 1


def area_shrink(c: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """Step 6a: crop RGB u8 (ch, cw, 3) -> u8 (ceil(ch/fy), ceil(cw/fx), 3), the
    mean of each fx x fy block from the crop's origin (the last ones partial),
    rounded as (sum + n // 2) // n in integers."""
    ch, cw, _ = c.shape
    ys = np.arange(0, ch, fy)
    xs = np.arange(0, cw, fx)
    s = np.add.reduceat(c.astype(np.int64), ys, axis=0)
    s = np.add.reduceat(s, xs, axis=1)
    n = (np.minimum(fy, ch - ys)[:, None] * np.minimum(fx, cw - xs)[None, :])[:, :, None]
    return ((s + n // 2) // n).astype(np.uint8)


def letterbox(img: np.ndarray, pixel_aspect: float = 1.0, W: int = INPUT_W, H: int = INPUT_H,
              crop: bool = True, area_shrink_on: bool = True):
    """RGB u8 (h, w, 3) -> float32 (H, W, 3) in u8 units, plus the fill colour."""
    h, w, _ = img.shape
    if crop:
        (x0, y0, x1, y1), bg = product_box(img, pixel_aspect)
    else:
        bg_sum, n, _ = border_stats(img)
        (x0, y0, x1, y1), bg = (0, 0, w, h), bg_sum.astype(np.float64) / n
    c = img[y0:y1, x0:x1]
    tw, th, ox, oy = letterbox_geometry(x1 - x0, y1 - y0, pixel_aspect, W, H)
    if area_shrink_on:
        # Step 6a; tw, th stay those of the unshrunk crop.
        fx, fy = shrink_factor(x1 - x0, tw), shrink_factor(y1 - y0, th)
        if fx > 1 or fy > 1:
            c = area_shrink(c, fx, fy)
    canvas = np.empty((H, W, 3), dtype=np.float32)
    canvas[:, :, :] = bg.astype(np.float32)[None, None, :]
    canvas[oy:oy + th, ox:ox + tw, :] = resize_bilinear(c, tw, th)
    return canvas, bg


def normalise(canvas: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 u8-units -> (3, H, W) float32: (v / 255 - MEAN_c) / STD_c."""
    mean = np.asarray(MEAN, dtype=np.float32)[None, None, :]
    std = np.asarray(STD, dtype=np.float32)[None, None, :]
    x = (canvas / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def prepare(img: np.ndarray, pixel_aspect: float = 1.0, crop: bool = True,
            area_shrink_on: bool = True) -> np.ndarray:
    """RGB u8 (h, w, 3) -> float32 (3, INPUT_H, INPUT_W). Add the batch axis for NCHW."""
    canvas, _ = letterbox(img, pixel_aspect, crop=crop, area_shrink_on=area_shrink_on)
    return normalise(canvas)


def prepare_path(path, pixel_aspect: float = 1.0) -> np.ndarray:
    return prepare(decode_rgb(path), pixel_aspect)


def constants() -> dict:
    """Everything the Rust side needs, for models/manifest.json."""
    return {
        "input_width": INPUT_W, "input_height": INPUT_H, "layout": "NCHW", "dtype": "float32",
        "channel_order": "RGB",
        "mean": list(MEAN), "std": list(STD), "scale": "value/255 then (x-mean)/std",
        "border": BORDER, "fg_threshold": FG_THRESHOLD, "plain_max_dev": PLAIN_MAX_DEV,
        "line_frac": LINE_FRAC, "line_min": LINE_MIN, "margin_frac": MARGIN_FRAC,
        "area_shrink_min": AREA_SHRINK_MIN,
        "pixel_aspect_training_fpi": FPI_PIXEL_ASPECT,
        "pixel_aspect_default": 1.0,
        "resize": "bilinear, half-pixel centres, no antialias, edge clamp, horizontal pass then vertical, float32",
        "letterbox_fill": "border-band mean colour (unrounded), normalised like the image",
        "spec": "training/PREP.md",
    }


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="prepare one image and print stats / save a PNG preview")
    ap.add_argument("image")
    ap.add_argument("--pixel-aspect", type=float, default=1.0)
    ap.add_argument("--png")
    a = ap.parse_args()
    img = decode_rgb(a.image)
    box, bg = product_box(img, a.pixel_aspect)
    x = prepare(img, a.pixel_aspect)
    print("box", box, "bg", bg, "tensor", x.shape, float(x.mean()), float(x.std()))
    if a.png:
        from PIL import Image
        c, _ = letterbox(img, a.pixel_aspect)
        Image.fromarray(np.clip(c + 0.5, 0, 255).astype(np.uint8)).save(a.png)
