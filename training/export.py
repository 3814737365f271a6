"""Export a checkpoint: ONNX (opset 17, dynamic batch), models/manifest.json, fixtures.

    python training/export.py --ckpt /tmp/vitrine_run/last.pt --data ../shared/data/fpi --out models/

Writes
  models/vitrine-fashion-v3.onnx (--arch lite0) or vitrine-fashion-v1.onnx
  (--arch vitrine; a v3 file already there is left in place, and the
  manifest names the file the engine loads)
  models/manifest.json          input/normalisation/prep constants, outputs and roles,
                                taxonomy, groups (ranges, exclusivity), per-tag thresholds
                                calibrated on validation, concept table, correlated tags
  models/fixtures/input.npy     a few prepared validation images, float32 NCHW
  models/fixtures/reference_outputs.npz / .json   PyTorch fp32 outputs for input.npy
  models/fixtures/prep_*.png + prep_*.npy          synthetic (non-dataset) images and their
                                prepared tensors, for the Rust prep parity test (PNG is
                                lossless, so the test does not depend on a JPEG decoder)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import fixtures  # noqa: E402
import model as M  # noqa: E402
import prep  # noqa: E402

# The model's name follows its architecture: retraining v1's recipe must not
# write a file that claims to be v3 (the engine loads what the manifest names).
MODEL_NAMES = {"lite0": "vitrine-fashion-v3", "vitrine": "vitrine-fashion-v1"}
OUTPUT_NAMES = ["embedding", "category_logits", "tag_logits", "concept"]
FIXTURE_IDS_N = 3


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_thresholds(tax, tag_logits, tags, mask):
    """Per tag: the probability threshold in {0.05, 0.10, ..., 0.95} that maximises F1
    on the validation samples that have the tag's group labelled (ties: the lower);
    0.5 where validation has no positive."""
    p = sigmoid(tag_logits)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    out = {}
    for j, name in enumerate(tax.tag_names):
        lab = mask[:, j] > 0
        y, s = tags[lab, j] > 0, p[lab, j]
        if y.sum() == 0:
            out[name] = {"threshold": 0.5, "f1": None, "val_positives": 0}
            continue
        best_t, best_f = 0.5, -1.0
        for t in grid:
            pred = s >= t
            tp = float((pred & y).sum())
            f1 = 2 * tp / max(1.0, float(pred.sum() + y.sum()))
            if f1 > best_f + 1e-12:
                best_t, best_f = float(t), f1
        out[name] = {"threshold": best_t, "f1": round(best_f, 4), "val_positives": int(y.sum())}
    return out


def export(ck_path, data_dir, out_dir, cache_dir="/tmp/vitrine_cache", replace=False):
    import train as T
    torch.set_num_threads(2)
    ck = torch.load(ck_path, weights_only=False)
    args = types.SimpleNamespace(data=data_dir, cache=cache_dir)
    tax, train, val, X, tr_idx, va_idx = T.setup(args)
    group = D.sibling_groups(train + val, data_dir)
    if ck.get("split") != D.split_fingerprint(val):
        sys.exit(f"{ck_path} was trained on split {ck.get('split')}, not on data.py's "
                 f"{D.split_fingerprint(val)}: its thresholds and figures would use images it trained on")
    arch = ck["args"].get("arch", "vitrine")
    model_name = MODEL_NAMES[arch]
    onnx_name = model_name + ".onnx"
    D.check_replaces(out_dir, onnx_name, replace)
    net = M.build(arch, ck["n_categories"], ck["n_tags"], ck["n_concepts"], pretrained=False)
    net.load_state_dict(ck["model"])
    net.eval()
    wrapper = M.ExportWrapper(net).eval()

    Xva = np.ascontiguousarray(X[va_idx])
    with torch.no_grad():
        outs = [[], [], [], []]
        for i in range(0, len(Xva), 256):
            o = wrapper(torch.from_numpy(Xva[i:i + 256]))
            for k in range(4):
                outs[k].append(o[k].numpy())
        emb, cl, tl, con = [np.concatenate(o) for o in outs]
    _, tags_va, mask_va = tax.encode(val)
    thresholds = calibrate_thresholds(tax, tl, tags_va, mask_va)

    os.makedirs(os.path.join(out_dir, "fixtures"), exist_ok=True)
    onnx_path = os.path.join(out_dir, onnx_name)
    dummy = torch.from_numpy(Xva[:2])
    torch.onnx.export(
        wrapper, (dummy,), onnx_path, opset_version=17, dynamo=False,
        input_names=["input"], output_names=OUTPUT_NAMES,
        dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
        do_constant_folding=True,
    )
    import onnx
    om = onnx.load(onnx_path)
    onnx.checker.check_model(om)

    # fixtures: first FIXTURE_IDS_N validation ids, prepared fresh from the JPEG files
    fx_items = val[:FIXTURE_IDS_N]
    fx = np.stack([prep.prepare(prep.decode_rgb(os.path.join(data_dir, "images", f"{it.id}.jpg")),
                                D.PIXEL_ASPECT) for it in fx_items]).astype(np.float32)
    np.save(os.path.join(out_dir, "fixtures", "input.npy"), fx)
    with torch.no_grad():
        ref = [o.numpy() for o in wrapper(torch.from_numpy(fx))]
    np.savez(os.path.join(out_dir, "fixtures", "reference_outputs.npz"), **dict(zip(OUTPUT_NAMES, ref)))
    with open(os.path.join(out_dir, "fixtures", "reference_outputs.json"), "w") as f:
        json.dump({"ids": [it.id for it in fx_items], "pixel_aspect": D.PIXEL_ASPECT,
                   "input_shape": list(fx.shape), "tolerance": 1e-4,
                   "outputs": {n: r.tolist() for n, r in zip(OUTPUT_NAMES, ref)}}, f)
    # prep parity fixtures (synthetic PNGs + expected tensors)
    parity = fixtures.write_prep_parity(out_dir)

    # onnxruntime check
    ort_info = {}
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        o = sess.run(OUTPUT_NAMES, {"input": fx})
        ort_info["fixture_max_abs_diff"] = {n: float(np.abs(a - b).max()) for n, a, b in zip(OUTPUT_NAMES, o, ref)}
        o2 = sess.run(OUTPUT_NAMES, {"input": Xva[:64]})
        ort_info["val64_max_abs_diff"] = {n: float(np.abs(a - b[:64]).max()) for n, a, b in
                                          zip(OUTPUT_NAMES, o2, [emb, cl, tl, con])}
        print("onnxruntime check", json.dumps(ort_info), flush=True)
    except ImportError:
        ort_info["skipped"] = "onnxruntime not installed"

    table = net.normalized_concept_table().detach().numpy()
    with open(onnx_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    ntags = tax.n_tags
    manifest = {
        "name": model_name,
        "onnx": onnx_name,
        "onnx_sha256": sha,
        "opset": 17,
        "input": {"name": "input", "shape": ["batch", 3, prep.INPUT_H, prep.INPUT_W], "layout": "NCHW",
                  "dtype": "float32", "channel_order": "RGB"},
        "normalisation": {"mean": list(prep.MEAN), "std": list(prep.STD),
                          "formula": "x = (v / 255 - mean[c]) / std[c], v in u8 units after resize"},
        "prep": prep.constants(),
        "outputs": [
            {"name": "embedding", "shape": ["batch", M.EMBED_DIM], "role": "visual embedding, L2-normalised; cosine = dot"},
            {"name": "category_logits", "shape": ["batch", len(tax.categories)], "role": "softmax over taxonomy.categories"},
            {"name": "tag_logits", "shape": ["batch", ntags],
             "role": "independent sigmoid per tag; groups give index ranges; for exclusive groups keep at most the argmax"},
            {"name": "concept", "shape": ["batch", M.CONCEPT_DIM],
             "role": "concept projection y_e, L2-normalised; affinity(t) = dot(concept, concept_table.vectors[t])"},
        ],
        "taxonomy": tax.to_json(),
        "tag_names": tax.tag_names,
        "tag_thresholds": thresholds,
        "threshold_rule": "per tag, F1-maximising probability threshold on the validation split (grid 0.05..0.95 step 0.05); pattern tags on the images whose name carries a pattern keyword only",
        "concept_table": {"names": tax.concept_names(), "dim": M.CONCEPT_DIM, "normalised": True,
                          "vectors": [[float(v) for v in row] for row in table],
                          "margin": T.CONCEPT_MARGIN},
        "correlated_tags": {"rule": "pairs from different groups (categories count as a group), training split, "
                                    "lift = P(a,b)/(P(a)P(b)) >= 1.5, joint support >= 15, top 200 by lift",
                            "pairs": D.correlated_tags(train, tax)},
        "split": {"rule": f"by sibling group (products named alike once colour words are dropped, and "
                          f"byte-identical photos; data.sibling_groups): "
                          f"validation iff sha256('{D.SPLIT_SEED}:' + smallest id of the group) as u64 / 2^64 < {D.VAL_FRAC}",
                  "train": len(train), "validation": len(val),
                  "fingerprint": D.split_fingerprint(val),
                  "validation_ids": sorted(it.id for it in val),
                  "validation_groups": [group[i] for i in sorted(it.id for it in val)]},
        "training": {"epochs_done": ck["epoch"] + 1, "args": ck["args"], "loss_weights": ck.get("loss_weights", T.LOSS_WEIGHTS),
                     "label_smoothing": T.LABEL_SMOOTHING, "supcon_temperature": T.SUPCON_T,
                     "augmentation": {**T.AUG, "erase": ck["args"].get("erase", T.AUG["erase"])}, "history_tail": ck["history"][-3:]},
        "fixtures": {"input": "fixtures/input.npy", "ids": [it.id for it in fx_items],
                     "reference": "fixtures/reference_outputs.npz", "tolerance": 1e-4,
                     "prep_parity": parity},
        "onnxruntime_check": ort_info,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"exported {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.2f} MB), manifest, fixtures", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/vitrine_run/last.pt")
    ap.add_argument("--data", default="../shared/data/fpi")
    ap.add_argument("--out", default="models/")
    ap.add_argument("--cache", default="/tmp/vitrine_cache")
    ap.add_argument("--replace", action="store_true",
                    help="write over a manifest in --out that names another model (the bundled one)")
    a = ap.parse_args()
    export(a.ckpt, a.data, a.out, a.cache, a.replace)
