"""Validation metrics of the exported ONNX model (onnxruntime, CPU).

    python training/evaluate.py --data ../shared/data/fpi --models models/ [--sheet /tmp/worst.png]

Reports (on the fixed validation split of data.py):
  category (merged articleType, see manifest) top-1, top-5, weighted and macro F1
  colour-family top-1 (argmax inside the colour group), top-1 of the other exclusive groups
  per-group tag mAP (mean over tags with >= 1 validation positive of average precision,
  on the samples that have the group labelled)
  same-articleType precision@10 of embedding neighbours (cosine; query = each validation
  image, gallery = the other validation images but those of its sibling group, also with
  them; and gallery = training images, where no sibling is)
  onnxruntime throughput at batch 1, 8, 32 (1 and 2 intra-op threads)
Writes models/metrics.json.  --sheet writes a contact sheet of the worst errors (the
committed one is docs/model/worst-errors.png; its thumbnails are dataset images, see
examples/catalog/README.md for their source and licence).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402

OUTS = ["embedding", "category_logits", "tag_logits", "concept"]


def run_all(sess, X, bs=64):
    res = [[] for _ in OUTS]
    for i in range(0, len(X), bs):
        o = sess.run(OUTS, {"input": np.ascontiguousarray(X[i:i + bs], dtype=np.float32)})
        for k in range(4):
            res[k].append(o[k])
    return [np.concatenate(r) for r in res]


def precision_at_k(q, g, q_lab, g_lab, k=10, exclude_self=False, q_grp=None, g_grp=None):
    """Share of each query's k nearest gallery items with its label; with groups given,
    gallery items of the query's own sibling group are left out (its other colourways)."""
    sims = q @ g.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    if q_grp is not None:
        sims[q_grp[:, None] == g_grp[None, :]] = -np.inf
    nn = np.argsort(-sims, axis=1)[:, :k]
    return float((g_lab[nn] == q_lab[:, None]).mean())


def throughput(path, X, threads, batch, seconds=3.0):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(X[:batch], dtype=np.float32)
    for _ in range(3):
        sess.run(OUTS, {"input": x})
    n, t0 = 0, time.time()
    lat = []
    while time.time() - t0 < seconds:
        t = time.time()
        sess.run(OUTS, {"input": x})
        lat.append(time.time() - t)
        n += batch
    el = time.time() - t0
    return {"images_per_s": round(n / el, 1), "median_batch_ms": round(1000 * float(np.median(lat)), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/fpi")
    ap.add_argument("--models", default="models/")
    ap.add_argument("--cache", default="/tmp/vitrine_cache")
    ap.add_argument("--sheet", default="", help="PNG path for the worst-errors contact sheet")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import onnxruntime as ort
    from sklearn.metrics import average_precision_score, f1_score
    import train as T

    man = json.load(open(os.path.join(a.models, "manifest.json")))
    onnx_path = os.path.join(a.models, man["onnx"])
    tax, train, val, X, tr_idx, va_idx = T.setup(types.SimpleNamespace(data=a.data, cache=a.cache))
    if man.get("split", {}).get("fingerprint") != D.split_fingerprint(val):
        sys.exit(f"{man['onnx']} was trained on split {man.get('split', {}).get('fingerprint')}, not on data.py's "
                 f"{D.split_fingerprint(val)}: its validation figures would count images it trained on")
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    t0 = time.time()
    emb, cl, tl, con = run_all(sess, X[va_idx])
    emb_tr = run_all(sess, X[tr_idx])[0]
    t_inf = time.time() - t0

    cat_va, tags_va, mask_va = tax.encode(val)
    m = {"split": {"train": len(train), "validation": len(val)}}
    pred = cl.argmax(1)
    top5 = np.argsort(-cl, 1)[:, :5]
    m["category"] = {
        "n_classes": len(tax.categories),
        "top1": round(float((pred == cat_va).mean()), 4),
        "top5": round(float((top5 == cat_va[:, None]).any(1).mean()), 4),
        "weighted_f1": round(float(f1_score(cat_va, pred, average="weighted")), 4),
        "macro_f1": round(float(f1_score(cat_va, pred, average="macro")), 4),
        # Against the raw articleType: an image of a merged (rare) type counts as an error.
        "weighted_f1_raw_article_type": round(float(f1_score(
            [it.article_type for it in val], [tax.categories[p] for p in pred], average="weighted",
            zero_division=0)), 4),
    }
    # confusions
    conf = Counter((tax.categories[t], tax.categories[p]) for t, p in zip(cat_va, pred) if t != p)
    m["category"]["top_confusions"] = [{"true": t, "pred": p, "n": n} for (t, p), n in conf.most_common(12)]
    per_class = {}
    for ci, c in enumerate(tax.categories):
        sel = cat_va == ci
        if sel.sum():
            per_class[c] = {"n": int(sel.sum()), "recall": round(float((pred[sel] == ci).mean()), 3)}
    m["category"]["per_class_recall"] = per_class

    groups = {}
    for g in tax.groups:
        s, e = g["start"], g["end"]
        lab = mask_va[:, s] > 0
        y, sc = tags_va[lab, s:e], tl[lab, s:e]
        aps = {}
        for j, t in enumerate(g["tags"]):
            if y[:, j].sum() > 0:
                aps[t] = round(float(average_precision_score(y[:, j], sc[:, j])), 4)
        gm = {"labelled": int(lab.sum()), "mAP": round(float(np.mean(list(aps.values()))), 4), "AP": aps}
        if g["exclusive"]:
            gm["top1"] = round(float((sc.argmax(1) == y.argmax(1)).mean()), 4)
            if g["name"] == "colour":
                cc = Counter((g["tags"][t], g["tags"][p]) for t, p in zip(y.argmax(1), sc.argmax(1)) if t != p)
                gm["top_confusions"] = [{"true": t, "pred": p, "n": n} for (t, p), n in cc.most_common(10)]
        groups[g["name"]] = gm
    m["tags"] = groups
    m["colour_top1"] = groups["colour"]["top1"]

    at_va = np.array([it.article_type for it in val])
    at_tr = np.array([it.article_type for it in train])
    group = D.sibling_groups(train + val, a.data)
    grp_va = np.array([group[it.id] for it in val])
    m["retrieval"] = {
        # The query's own sibling group (its colourways, byte-identical copies) is left out
        # of the gallery: otherwise they answer it, as near-duplicates.
        "precision_at_10_val_in_val": round(precision_at_k(emb, emb, at_va, at_va, 10, True, grp_va, grp_va), 4),
        "precision_at_10_val_in_val_with_siblings": round(precision_at_k(emb, emb, at_va, at_va, 10, True), 4),
        "precision_at_10_val_in_train": round(precision_at_k(emb, emb_tr, at_va, at_tr, 10), 4),
        "label": "raw articleType (not the merged category)",
    }
    # concept sanity: how often the top affinity among category concepts is the true category
    table = np.asarray(man["concept_table"]["vectors"], dtype=np.float32)
    ncat = len(tax.categories)
    m["concept_category_top1"] = round(float(((con @ table[:ncat].T).argmax(1) == cat_va).mean()), 4)

    size = os.path.getsize(onnx_path)
    m["model_bytes"] = size
    m["model_mb"] = round(size / 1e6, 2)
    # Every image, validation and training (the training embeddings serve
    # P@10 against the training gallery).
    m["inference_all_s"] = round(t_inf, 1)
    tp = {}
    for th in (1, 2):
        for b in (1, 8, 32):
            tp[f"threads{th}_batch{b}"] = throughput(onnx_path, X[va_idx], th, b)
    m["onnxruntime_throughput"] = tp
    targets = {
        "weighted_f1>=0.85": m["category"]["weighted_f1"] >= 0.85,
        "top5>=0.97": m["category"]["top5"] >= 0.97,
        "colour_top1>=0.75": m["colour_top1"] >= 0.75,
        "precision_at_10>=0.85": m["retrieval"]["precision_at_10_val_in_val"] >= 0.85,
        "model<=20MB": size <= 20_000_000,
    }
    m["targets_met"] = targets

    # worst errors: confident wrong category predictions
    prob = np.exp(cl - cl.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    wrong = np.nonzero(pred != cat_va)[0]
    order = wrong[np.argsort(-prob[wrong, pred[wrong]])][:24]
    m["worst_errors"] = [{"id": val[i].id, "true": tax.categories[cat_va[i]], "pred": tax.categories[pred[i]],
                          "p": round(float(prob[i, pred[i]]), 3), "name": val[i].name} for i in order]
    with open(os.path.join(a.models, "metrics.json"), "w") as f:
        json.dump(m, f, indent=1)
    print(json.dumps({k: m[k] for k in ["split", "colour_top1", "retrieval", "model_mb", "targets_met",
                                        "concept_category_top1"]}, indent=1))
    print(json.dumps({k: v for k, v in m["category"].items() if k != "per_class_recall"}, indent=1))
    print(json.dumps({g: {k: v for k, v in d.items() if k in ("mAP", "top1", "labelled")} for g, d in groups.items()}))
    print(json.dumps(tp))

    if a.sheet:
        from PIL import Image, ImageDraw
        cols, tw, th = 8, 112, 150
        sheet = Image.new("RGB", (cols * tw, ((len(order) + cols - 1) // cols) * th), "white")
        dr = ImageDraw.Draw(sheet)
        for k, i in enumerate(order):
            im = Image.open(os.path.join(a.data, "images", f"{val[i].id}.jpg")).convert("RGB").resize((tw, tw - 10))
            x, y = (k % cols) * tw, (k // cols) * th
            sheet.paste(im, (x, y))
            dr.text((x + 2, y + tw - 8), f"T:{tax.categories[cat_va[i]]}"[:18], fill=(0, 0, 0))
            dr.text((x + 2, y + tw + 6), f"P:{tax.categories[pred[i]]}"[:18], fill=(200, 0, 0))
            dr.text((x + 2, y + tw + 20), f"{val[i].id} p={prob[i, pred[i]]:.2f}", fill=(90, 90, 90))
        sheet.save(a.sheet)
        print("sheet", a.sheet)


if __name__ == "__main__":
    main()
