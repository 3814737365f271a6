"""Train the Vitrine concept model on the fpi photos (CPU): by default
EfficientNet-Lite0 fine-tuned from ImageNet weights (--arch lite0), or the
from-scratch VitrineNet (--arch vitrine).

    python training/train.py --data ../shared/data/fpi --out models/

Seeded: the split, the order and the augmentation are fixed, but weights may
differ slightly between runs (the model card says by how much); the default
lite0 recipe trains in fp32 (bf16 autocast only with --bf16).  Prepared tensors are cached once under --cache (outside the
repository); a checkpoint is written to --ckpt-dir after every epoch and the
run resumes from it with --resume.  At the end the model is exported
(export.py): ONNX, manifest, fixtures.

Loss (weights in LOSS_WEIGHTS):
  cat      cross-entropy on the category, label smoothing 0.1
  tag      binary cross-entropy per tag group (sum over the group's tags, mean over
           the samples that have the group labelled), averaged over groups
  excl     softmax cross-entropy inside each exclusive group (colour, usage, season,
           gender), averaged over those groups
  concept  pull/push margin loss: y_e (unit 32-d) and the unit concept table W_t;
           pull = mean over active concepts of ||y_e - W_t[a]||^2,
           push = mean over inactive (labelled) concepts of max(0, MARGIN - ||y_e - W_t[i]||)^2
  supcon   supervised contrastive loss (temperature 0.1) on the unit embedding with
           articleType as the label (metric learning for same-type retrieval)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import model as M  # noqa: E402

LOSS_WEIGHTS = {"cat": 1.0, "tag": 1.0, "excl": 0.5, "concept": 0.5, "supcon": 0.5}
LABEL_SMOOTHING = 0.1
CONCEPT_MARGIN = 1.0
SUPCON_T = 0.1
AUG = {"hflip": 0.5, "scale": (0.9, 1.1), "translate": 0.06,  # translate: fraction of half-size (grid units)
       "erase": 0.0, "erase_area": (0.02, 0.15)}  # random erasing (--erase): probability, area fraction


# The shipped recipe per network: lite0 fine-tunes ImageNet weights (fewer
# epochs, lower rate); vitrine trains from scratch (session 2's recipe).
# bf16 autocast made lite0's depthwise convolutions slower on CPU (2.7 s
# against 2.1 s per batch), so it trains in fp32.
ARCH_DEFAULTS = {"lite0": {"epochs": 20, "lr": 1e-3, "bf16": 0},
                 "vitrine": {"epochs": 64, "lr": 3e-3, "bf16": 1}}


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Geometric only, plus random erasing (no colour change: colour is a
    label).  Random horizontal flip, isotropic scale and translation;
    out-of-canvas samples repeat the border, which is the letterbox
    background colour."""
    b = x.shape[0]
    s = torch.empty(b).uniform_(*AUG["scale"], generator=g)
    tx = torch.empty(b).uniform_(-AUG["translate"], AUG["translate"], generator=g)
    ty = torch.empty(b).uniform_(-AUG["translate"], AUG["translate"], generator=g)
    flip = (torch.rand(b, generator=g) < AUG["hflip"]).float() * -2 + 1
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = flip / s
    theta[:, 1, 1] = 1.0 / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if AUG["erase"] > 0:
        # Random erasing: one rectangle per chosen image set to 0 (the
        # normalised mean), so no single part decides the category.
        h, w = x.shape[2], x.shape[3]
        hit = torch.rand(b, generator=g) < AUG["erase"]
        area = torch.empty(b).uniform_(*AUG["erase_area"], generator=g) * h * w
        aspect = torch.empty(b).uniform_(0.5, 2.0, generator=g)
        eh = (area * aspect).sqrt().clamp(1, h).long()
        ew = (area / aspect).sqrt().clamp(1, w).long()
        y0 = (torch.rand(b, generator=g) * (h - eh + 1).float()).long()
        x0 = (torch.rand(b, generator=g) * (w - ew + 1).float()).long()
        for i in torch.nonzero(hit).flatten().tolist():
            x[i, :, y0[i]:y0[i] + eh[i], x0[i]:x0[i] + ew[i]] = 0.0
    return x


def supcon_loss(z, labels, t=SUPCON_T):
    sim = z @ z.t() / t
    b = z.shape[0]
    eye = torch.eye(b, dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    npos = pos.sum(1)
    valid = npos > 0
    if not valid.any():
        return sim.sum() * 0
    l = -(log_prob * pos).sum(1)[valid] / npos[valid]
    return l.mean()


def concept_loss(y_e, table, active, known):
    """y_e (B, K) unit; table (C, K) unit; active/known (B, C) float."""
    d2 = (2 - 2 * y_e @ table.t()).clamp_min(0)
    d = torch.sqrt(d2 + 1e-8)
    inactive = known * (1 - active)
    pull = (active * d2).sum(1) / active.sum(1).clamp_min(1)
    push = (inactive * F.relu(CONCEPT_MARGIN - d) ** 2).sum(1) / inactive.sum(1).clamp_min(1)
    return (pull + push).mean()


def compute_losses(out, batch, tax):
    emb, cat_logits, tag_logits, concept = out
    cat, tags, mask, at = batch
    emb, cat_logits, tag_logits, concept = emb.float(), cat_logits.float(), tag_logits.float(), concept.float()
    L = {}
    L["cat"] = F.cross_entropy(cat_logits, cat, label_smoothing=LABEL_SMOOTHING)
    bce = F.binary_cross_entropy_with_logits(tag_logits, tags, reduction="none") * mask
    tag_terms, excl_terms = [], []
    for g in tax.groups:
        s, e = g["start"], g["end"]
        lab = mask[:, s] > 0
        if lab.sum() == 0:
            continue
        tag_terms.append(bce[:, s:e].sum(1)[lab].mean())
        if g["exclusive"]:
            excl_terms.append(F.cross_entropy(tag_logits[lab, s:e], tags[lab, s:e].argmax(1)))
    L["tag"] = torch.stack(tag_terms).mean()
    L["excl"] = torch.stack(excl_terms).mean()
    n_cat = cat_logits.shape[1]
    cat1h = F.one_hot(cat, n_cat).float()
    active = torch.cat([cat1h, tags], 1)
    known = torch.cat([torch.ones_like(cat1h), mask], 1)
    L["concept"] = concept_loss(concept, out_table_cache["table"], active, known)
    L["supcon"] = supcon_loss(emb, at)
    total = sum(LOSS_WEIGHTS[k] * v for k, v in L.items())
    return total, L


out_table_cache = {}


def param_groups(net, wd):
    decay, no_decay = [], []
    for n, p in net.named_parameters():
        (decay if (p.ndim >= 2 and n != "concept_table") else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step, total, warmup, base):
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def predict(net, x, bs=256):
    net.eval()
    outs = [[], [], [], []]
    for i in range(0, x.shape[0], bs):
        o = net(torch.from_numpy(np.ascontiguousarray(x[i:i + bs])).to(memory_format=torch.channels_last))
        for k in range(4):
            outs[k].append(o[k].float())
    return [torch.cat(o).numpy() for o in outs]


def setup(args):
    tax, train, val = D.load(args.data)
    rows = D.read_styles(args.data)
    items, _ = D.build_items(rows)
    os.makedirs(args.cache, exist_ok=True)
    import prep
    import hashlib
    key = f"fpi_{prep.INPUT_W}x{prep.INPUT_H}_n{len(items)}_" + hashlib.sha256(
        json.dumps(prep.constants(), sort_keys=True).encode()).hexdigest()[:10]
    X = D.cache_tensors(args.data, items, os.path.join(args.cache, key + ".npy"))
    pos = {it.id: i for i, it in enumerate(items)}
    tr_idx = np.array([pos[it.id] for it in train])
    va_idx = np.array([pos[it.id] for it in val])
    return tax, train, val, X, tr_idx, va_idx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/fpi")
    ap.add_argument("--out", default="models/")
    ap.add_argument("--epochs", type=int, default=None, help="default: ARCH_DEFAULTS[arch]")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None, help="default: ARCH_DEFAULTS[arch]")
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", type=int, default=None,
                    help="bf16 autocast for the training forward pass (CPU AVX512-BF16); default: ARCH_DEFAULTS[arch]")
    ap.add_argument("--cache", default="/tmp/vitrine_cache")
    ap.add_argument("--ckpt-dir", default="/tmp/vitrine_run")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", default="", help="start from these weights with a fresh optimizer and "
                    "LR schedule (a second cosine cycle / warm restart)")
    ap.add_argument("--erase", type=float, default=0.5, help="random-erasing probability (augmentation)")
    ap.add_argument("--max-batches", type=int, default=0, help="timing runs: stop each epoch after N batches")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--replace", action="store_true",
                    help="export over a manifest in --out that names another model (the bundled one)")
    ap.add_argument("--loss-weights", default="", help="override LOSS_WEIGHTS, e.g. supcon=1.0,excl=1.0")
    ap.add_argument("--arch", default="lite0", choices=sorted(ARCH_DEFAULTS),
                    help="vitrine: VitrineNet from scratch; lite0: EfficientNet-Lite0 from ImageNet weights")
    args = ap.parse_args()
    for kv in filter(None, args.loss_weights.split(",")):
        k, v = kv.split("=")
        if k not in LOSS_WEIGHTS:
            sys.exit(f"unknown loss term {k!r} (known: {', '.join(LOSS_WEIGHTS)})")
        LOSS_WEIGHTS[k] = float(v)
    for k, v in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    if not args.no_export:
        # Before an hour of training, not after it.
        import export
        D.check_replaces(args.out, export.MODEL_NAMES[args.arch] + ".onnx", args.replace)
    torch.set_num_threads(args.threads)
    AUG["erase"] = args.erase
    seed_all(args.seed)
    t_start = time.time()
    tax, train, val, X, tr_idx, va_idx = setup(args)
    print(f"data ready: train {len(tr_idx)} val {len(va_idx)} cats {len(tax.categories)} tags {tax.n_tags} "
          f"({time.time() - t_start:.0f}s)", flush=True)

    cat_all, tags_all, mask_all = tax.encode(train + val)
    # articleType ids for supcon
    at_names = sorted(set(it.article_type for it in train + val))
    at_all = np.array([at_names.index(it.article_type) for it in train + val])
    ntr = len(train)
    cat_tr, tags_tr, mask_tr, at_tr = cat_all[:ntr], tags_all[:ntr], mask_all[:ntr], at_all[:ntr]
    cat_va = cat_all[ntr:]

    n_concepts = len(tax.concept_names())
    net = M.build(args.arch, len(tax.categories), tax.n_tags, n_concepts).to(memory_format=torch.channels_last)
    print(f"params {M.count_params(net)}", flush=True)
    opt = torch.optim.AdamW(param_groups(net, args.wd), lr=args.lr)
    steps_per_epoch = len(tr_idx) // args.batch
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    os.makedirs(args.ckpt_dir, exist_ok=True)
    ck_path = os.path.join(args.ckpt_dir, "last.pt")
    start_epoch, history = 0, []
    if args.init_from:
        ck0 = torch.load(args.init_from, weights_only=False)
        if ck0.get("split") != D.split_fingerprint(val):
            sys.exit(f"{args.init_from} was trained on another split ({ck0.get('split')}): starting from "
                     "its weights would carry its training images into this validation split")
        net.load_state_dict(ck0["model"])
        history = [dict(h, stage=0) for h in ck0["history"]]
        print(f"initialised from {args.init_from} ({len(history)} epochs of history)", flush=True)
    if args.resume and os.path.exists(ck_path):
        ck = torch.load(ck_path, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        if ck.get("split") != D.split_fingerprint(val):
            sys.exit(f"{ck_path} was trained on another split ({ck.get('split')}); start a new run")
        if "torch_rng" in ck:
            torch.set_rng_state(ck["torch_rng"])  # dropout continues its sequence
        print(f"resumed at epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        net.train()
        rng = np.random.RandomState(args.seed * 1000 + epoch)
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = rng.permutation(len(tr_idx))
        sums, correct, seen = {}, 0, 0
        for b in range(steps_per_epoch):
            sel = perm[b * args.batch:(b + 1) * args.batch]
            x = torch.from_numpy(X[tr_idx[sel]])
            x = augment(x, g).contiguous(memory_format=torch.channels_last)
            batch = (torch.from_numpy(cat_tr[sel]), torch.from_numpy(tags_tr[sel]),
                     torch.from_numpy(mask_tr[sel]), torch.from_numpy(at_tr[sel]))
            step = epoch * steps_per_epoch + b
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, total_steps, warmup, args.lr)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
                out = net(x)
            out_table_cache["table"] = net.normalized_concept_table()
            loss, parts = compute_losses(out, batch, tax)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(loss.detach())
            correct += int((out[1].argmax(1) == batch[0]).sum())
            seen += len(sel)
        t_train = time.time() - t0
        emb, cl, tl, _ = predict(net, X[va_idx])
        val_top1 = float((cl.argmax(1) == cat_va).mean())
        cg = tax.groups[0]
        _, tags_va, mask_va = tax.encode(val)
        lab = mask_va[:, cg["start"]] > 0
        col_top1 = float((tl[lab, cg["start"]:cg["end"]].argmax(1) == tags_va[lab, cg["start"]:cg["end"]].argmax(1)).mean())
        rec = {"epoch": epoch, "train_s": round(t_train, 1), "epoch_s": round(time.time() - t0, 1),
               "lr": opt.param_groups[0]["lr"], "train_top1": round(correct / max(1, seen), 4),
               "val_top1": round(val_top1, 4), "val_colour_top1": round(col_top1, 4),
               **{f"loss_{k}": round(v / steps_per_epoch, 4) for k, v in sums.items()}}
        if args.init_from:
            rec["stage"] = 1
        history.append(rec)
        print(json.dumps(rec), flush=True)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history,
                    "args": vars(args), "loss_weights": LOSS_WEIGHTS, "n_categories": len(tax.categories), "n_tags": tax.n_tags,
                    "n_concepts": n_concepts, "split": D.split_fingerprint(val),
                    "torch_rng": torch.get_rng_state()}, ck_path + ".tmp")
        os.replace(ck_path + ".tmp", ck_path)

    wall = time.time() - t_start
    print(f"training done, wall {wall:.0f}s", flush=True)
    with open(os.path.join(args.ckpt_dir, "history.json"), "w") as f:
        json.dump({"history": history, "wall_s_this_process": wall, "args": vars(args)}, f, indent=1)
    if not args.no_export:
        import export
        export.export(ck_path, args.data, args.out, args.cache, args.replace)


if __name__ == "__main__":
    main()
