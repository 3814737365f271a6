"""Prep parity fixtures: synthetic pictures (not from any dataset) and the
tensors training/prep.py makes of them, for the Rust test
`parity_with_the_reference_prep` (tests/vision.rs).

    python training/fixtures.py --out models/

writes models/fixtures/prep_*.png and prep_*.npy and rewrites the
manifest's `fixtures.prep_parity` list and `prep` constants; training/export.py
calls the same code when it exports a model. Needs numpy and Pillow only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prep  # noqa: E402


def synthetic_images():
    """name -> (array, pixel aspect, PNG save options). Deterministic."""
    rng = np.random.RandomState(7)
    ims = {}
    # 1: fpi-like 224x224, near-white background with a dark garment-like shape, slight noise
    a = np.full((224, 224, 3), 250, np.uint8)
    a[40:190, 70:160] = (30, 60, 120)
    a[40:80, 40:190] = (30, 60, 120)
    a[100:110, 80:150] = (200, 30, 30)
    a = np.clip(a.astype(int) + rng.randint(-3, 4, a.shape), 0, 255).astype(np.uint8)
    ims["prep_square"] = (a, prep.FPI_PIXEL_ASPECT, {})
    # 2: portrait catalog-like 239x334 (mango size), grey background, off-centre product
    b = np.full((334, 239, 3), (236, 234, 230), np.uint8)
    yy, xx = np.mgrid[0:334, 0:239]
    ell = ((yy - 200) / 100.0) ** 2 + ((xx - 100) / 60.0) ** 2 <= 1
    b[ell] = np.stack([(xx[ell] * 255 // 239), (yy[ell] * 255 // 334), np.full(ell.sum(), 90)], 1).astype(np.uint8)
    ims["prep_portrait"] = (b, 1.0, {})
    # 3: wide landscape, cluttered (non-plain) border -> no crop
    c = np.repeat(np.repeat(rng.randint(0, 256, (12, 30, 3)), 10, axis=0), 10, axis=1).astype(np.uint8)
    ims["prep_noisy_wide"] = (c, 1.0, {})
    # 4: a large photo (step 6a): a shirt of 3-px navy/white stripes and a
    # red checked band on white, shrunk about 9x along each axis
    d = np.full((1600, 1200, 3), 252, np.uint8)
    yy, xx = np.mgrid[0:1600, 0:1200]
    shirt = (yy >= 250) & (yy < 1400) & (xx >= 200) & (xx < 1000)
    stripes = (yy // 3) % 2 == 0
    d[shirt & stripes] = (20, 30, 90)
    d[shirt & ~stripes] = (245, 245, 245)
    band = shirt & (yy >= 700) & (yy < 820)
    d[band & (((xx // 5) + (yy // 5)) % 2 == 0)] = (190, 20, 30)
    ims["prep_large_stripes"] = (d, 1.0, {})
    # 5: an RGB PNG whose one transparent colour (tRNS) is its black
    # background: composited onto white, as the engine's decoder does
    e = np.zeros((200, 160, 3), np.uint8)
    e[40:170, 30:130] = (120, 160, 60)
    e[80:100, 50:110] = (255, 255, 255)
    ims["prep_trns"] = (e, 1.0, {"transparency": (0, 0, 0)})
    # 6: 16-bit grey, scaled to 8 bits with rounding; its transparent grey
    # value (tRNS) marks a cut-out inside the product
    f = np.full((180, 140), 60000, np.uint16)
    f[30:150, 20:120] = (np.arange(100, dtype=np.uint16) * 500 + 1000)[None, :]
    f[80:100, 40:60] = 777
    ims["prep_grey16"] = (f, 1.0, {"transparency": 777})
    return ims


def write_prep_parity(out_dir: str) -> list:
    """Writes the fixtures under out_dir/fixtures; returns the manifest's
    `fixtures.prep_parity` list. Tensors come from the decoded PNG files, so
    prep.decode_rgb (transparency, 16 bits) is part of what is compared."""
    from PIL import Image
    fixtures = os.path.join(out_dir, "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    parity = []
    for name, (img, pa, opts) in synthetic_images().items():
        path = os.path.join(fixtures, name + ".png")
        Image.fromarray(img).save(path, **opts)
        rgb = prep.decode_rgb(path)
        box, bg = prep.product_box(rgb, pa)
        t = prep.prepare(rgb, pa)
        np.save(os.path.join(fixtures, name + ".npy"), t)
        parity.append({"png": name + ".png", "expected": name + ".npy", "pixel_aspect": pa,
                       "box_x0y0x1y1": [int(v) for v in box], "background": [float(v) for v in bg],
                       "tolerance": 1e-3})
    return parity


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models/")
    a = ap.parse_args()
    parity = write_prep_parity(a.out)
    path = os.path.join(a.out, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["fixtures"]["prep_parity"] = parity
    manifest["prep"] = {**manifest["prep"], **prep.constants()}
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(parity)} prep parity fixtures in {a.out}fixtures; manifest updated")
