"""Dataset, taxonomy and split for the Vitrine concept model.

Reads `styles.csv` of the fpi set ("Fashion Product Images (Small)") and builds:
  * category  = articleType; types with fewer than RARE_MIN images (whole csv) are
    merged into "<subCategory> (other)" (a type's most common subCategory); a merged bucket still below MERGED_MIN goes to
    "<masterCategory> (other)", and below that to "Other".
  * tag groups (sigmoid heads, concatenated in this order):
      colour  (exclusive)  baseColour -> COLOUR_FAMILY (15 families)
      usage   (exclusive)  usage; Smart Casual and Travel -> casual
      season  (exclusive)  season as labelled (one per product in the data)
      gender  (exclusive)  gender
      pattern (not exclusive) weak labels from productDisplayName keywords (NOISY:
              brand/line names such as "Turtle Check" or adidas "3 Stripes" fire the
              keyword; absence of a keyword does not mean "solid", so products with
              no keyword have the pattern group masked out of the loss and metrics)
    A value of "NA"/empty leaves that group unlabelled (masked) for the product.
  * a fixed-seed split by sibling group (sibling_groups: products named alike once colour
    words are dropped, and byte-identical photos): SPLIT_SEED, VAL_FRAC of groups go to validation.
  * correlated tags: co-occurrence lift over the training split.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

RARE_MIN = 20      # articleType with fewer images than this is merged into its subCategory
MERGED_MIN = 10    # a merged bucket smaller than this goes one level up
VAL_FRAC = 0.15
SPLIT_SEED = "vitrine-fpi-split-v2"   # split key: sha256(SPLIT_SEED + ":" + group key), see sibling_groups

COLOUR_FAMILY = {
    "Black": "black",
    "White": "white", "Off White": "white",
    "Grey": "grey", "Charcoal": "grey", "Grey Melange": "grey",
    "Blue": "blue", "Turquoise Blue": "blue", "Teal": "blue",
    "Navy Blue": "navy",
    "Red": "red", "Maroon": "red", "Burgundy": "red",
    "Pink": "pink", "Magenta": "pink", "Peach": "pink",
    "Green": "green", "Olive": "green", "Sea Green": "green", "Fluorescent Green": "green",
    "Yellow": "yellow", "Mustard": "yellow",
    "Orange": "orange", "Rust": "orange",
    "Brown": "brown", "Coffee Brown": "brown", "Tan": "brown", "Taupe": "brown",
    "Beige": "beige", "Cream": "beige", "Khaki": "beige", "Nude": "beige", "Skin": "beige",
    "Purple": "purple", "Lavender": "purple", "Mauve": "purple",
    "Silver": "metallic", "Steel": "metallic", "Gold": "metallic", "Copper": "metallic",
    "Bronze": "metallic", "Metallic": "metallic",
    "Multi": "multi",
}
COLOURS = ["black", "white", "grey", "blue", "navy", "red", "pink", "green", "yellow",
           "orange", "brown", "beige", "purple", "metallic", "multi"]
USAGE_MAP = {"Casual": "casual", "Smart Casual": "casual", "Travel": "casual",
             "Formal": "formal", "Sports": "sports", "Ethnic": "ethnic"}
USAGES = ["casual", "formal", "sports", "ethnic"]
SEASONS = ["spring", "summer", "fall", "winter"]
GENDERS = ["men", "women", "unisex", "boys", "girls"]
PATTERN_KEYWORDS = {
    "striped": ["stripe", "striped", "stripes"],
    "checked": ["check", "checked", "checks", "checkered", "plaid"],
    "printed": ["print", "printed", "prints", "graphic"],
    "solid": ["solid", "plain"],
    "floral": ["floral", "flower", "flowers"],
    "polka": ["polka", "dot", "dots", "dotted"],
}
PATTERNS = list(PATTERN_KEYWORDS)

GROUPS = [  # (name, tags, exclusive)
    ("colour", COLOURS, True),
    ("usage", USAGES, True),
    ("season", SEASONS, True),
    ("gender", GENDERS, True),
    ("pattern", PATTERNS, False),
]


@dataclass
class Item:
    id: int
    category: str
    article_type: str
    base_colour: str
    tags: dict = field(default_factory=dict)   # group -> list of tag names ([] = unlabelled)
    name: str = ""


def pattern_tags(name: str):
    words = set(re.findall(r"[a-z]+", name.lower()))
    return [p for p, kws in PATTERN_KEYWORDS.items() if words.intersection(kws)]


def read_styles(data_dir: str):
    path = os.path.join(data_dir, "styles.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    img_dir = os.path.join(data_dir, "images")
    rows = [r for r in rows if os.path.exists(os.path.join(img_dir, f"{r['id']}.jpg"))]
    return rows


def category_map(rows):
    """articleType -> category name (see module doc)."""
    at = Counter(r["articleType"] for r in rows)

    def most_common(column):
        # A type filed under several (Messenger Bag: 4 Bags, 3 Accessories):
        # the most common, the first seen on a tie; not the last row's.
        counts = Counter((r["articleType"], r[column]) for r in rows)
        best = {}
        for (t, v), n in counts.items():
            if t not in best or n > counts[(t, best[t])]:
                best[t] = v
        return best

    sub_of = most_common("subCategory")
    master_of = most_common("masterCategory")
    m = {}
    for t, n in at.items():
        m[t] = t if n >= RARE_MIN else f"{sub_of[t]} (other)"
    merged = Counter(m[r["articleType"]] for r in rows)
    for t in at:
        if m[t].endswith("(other)") and merged[m[t]] < MERGED_MIN:
            m[t] = f"{master_of[t]} (other)"
    merged = Counter(m[r["articleType"]] for r in rows)
    for t in at:
        if m[t].endswith("(other)") and merged[m[t]] < MERGED_MIN:
            m[t] = "Other"
    return m


def build_items(rows):
    cmap = category_map(rows)
    items = []
    for r in rows:
        tags = {
            "colour": [COLOUR_FAMILY[r["baseColour"]]] if r["baseColour"] in COLOUR_FAMILY else [],
            "usage": [USAGE_MAP[r["usage"]]] if r["usage"] in USAGE_MAP else [],
            "season": [r["season"].lower()] if r["season"].lower() in SEASONS else [],
            "gender": [r["gender"].lower()] if r["gender"].lower() in GENDERS else [],
            "pattern": pattern_tags(r["productDisplayName"]),
        }
        items.append(Item(int(r["id"]), cmap[r["articleType"]], r["articleType"], r["baseColour"],
                          tags, r["productDisplayName"]))
    items.sort(key=lambda it: it.id)
    return items, cmap


def in_val(key: int) -> bool:
    h = hashlib.sha256(f"{SPLIT_SEED}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64 < VAL_FRAC


# Words dropped from a display name before siblings are compared: fpi lists one
# style in several colourways, named alike but for the colour.
COLOUR_WORDS = {w.lower() for k in COLOUR_FAMILY for w in k.split()} | {
    "navy", "melange", "multicolour", "multicoloured", "multi-coloured", "colour", "color",
    "light", "dark"}


def colourless_name(name: str) -> str:
    words = re.findall(r"[a-z0-9]+", name.lower().replace("'s", ""))
    return " ".join(w for w in words if w not in COLOUR_WORDS)


def sibling_groups(items, data_dir: str):
    """Group key (smallest id) per item id.  Two products are siblings when their names
    match once colour words are dropped (colourways of one style, wherever their ids
    are; generic names such as "W Women Printed Kurtas" make groups of up to 81), or
    when their JPEG files are byte-identical; groups are the transitive closure.  The
    split goes by group, so no validation product shares a colour-stripped name or a
    photo with a training product."""
    parent = {it.id: it.id for it in items}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_named, first_with = {}, {}
    for it in sorted(items, key=lambda it: it.id):
        name = colourless_name(it.name)
        if name:
            union(first_named.setdefault(name, it.id), it.id)
        with open(os.path.join(data_dir, "images", f"{it.id}.jpg"), "rb") as f:
            digest = hashlib.sha256(f.read()).digest()
        union(first_with.setdefault(digest, it.id), it.id)
    return {it.id: find(it.id) for it in items}


class Taxonomy:
    def __init__(self, items, cmap):
        self.categories = sorted(set(it.category for it in items))
        self.cat_index = {c: i for i, c in enumerate(self.categories)}
        self.groups = []
        off = 0
        self.tag_names = []
        for name, tags, excl in GROUPS:
            self.groups.append({"name": name, "start": off, "end": off + len(tags),
                                "exclusive": excl, "tags": list(tags)})
            self.tag_names += [f"{name}.{t}" for t in tags]
            off += len(tags)
        self.n_tags = off
        self.cmap = cmap

    def encode(self, items):
        """-> cat (N,) int64, tags (N, T) float32, tag_mask (N, T) float32 (1 = labelled)."""
        n = len(items)
        cat = np.array([self.cat_index[it.category] for it in items], dtype=np.int64)
        tags = np.zeros((n, self.n_tags), dtype=np.float32)
        mask = np.zeros((n, self.n_tags), dtype=np.float32)
        for i, it in enumerate(items):
            for g in self.groups:
                act = it.tags[g["name"]]
                if not act:
                    continue
                mask[i, g["start"]:g["end"]] = 1.0
                for t in act:
                    tags[i, g["start"] + g["tags"].index(t)] = 1.0
        return cat, tags, mask

    def concept_names(self):
        """Concepts of the margin loss: every category, then every tag."""
        return [f"category.{c}" for c in self.categories] + self.tag_names

    def to_json(self):
        return {
            "categories": self.categories,
            "category_rule": (f"category = articleType; an articleType with fewer than {RARE_MIN} "
                              f"images in styles.csv is merged into '<subCategory> (other)'; a merged "
                              f"bucket with fewer than {MERGED_MIN} images goes to '<masterCategory> (other)', "
                              f"then to 'Other'"),
            "article_type_to_category": dict(sorted(self.cmap.items())),
            "groups": self.groups,
            "colour_family_map": COLOUR_FAMILY,
            "usage_map": USAGE_MAP,
            "pattern_keywords": PATTERN_KEYWORDS,
            "pattern_note": ("weak, noisy labels from productDisplayName keywords; brand and line names "
                             "(e.g. 'Turtle Check', adidas '3 Stripes') also fire; products with no keyword "
                             "are unlabelled for the pattern group, not 'solid'"),
        }


def correlated_tags(items, tax: Taxonomy, min_support=15, min_lift=1.5, max_pairs=200):
    """Pairs (a, b) from different groups (categories count as a group) with
    lift = P(a,b) / (P(a) P(b)) >= min_lift and joint support >= min_support,
    on the given items (training split).  Probabilities over items where both groups are labelled."""
    names = [f"category.{c}" for c in tax.categories] + tax.tag_names
    gid = [0] * len(tax.categories)
    for gi, g in enumerate(tax.groups):
        gid += [gi + 1] * (g["end"] - g["start"])
    cat, tags, mask = tax.encode(items)
    n = len(items)
    C = np.zeros((n, len(tax.categories)), dtype=np.float32)
    C[np.arange(n), cat] = 1
    X = np.concatenate([C, tags], 1)
    M = np.concatenate([np.ones_like(C), mask], 1)
    out = []
    joint = X.T @ X
    both = M.T @ M
    xm = X.T @ M          # xm[a,b] = count(a active and b's group labelled)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if gid[a] == gid[b] or joint[a, b] < min_support:
                continue
            nb = both[a, b]
            pa, pb = xm[a, b] / nb, xm[b, a] / nb
            lift = (joint[a, b] / nb) / (pa * pb)
            if lift >= min_lift:
                out.append({"a": names[a], "b": names[b], "lift": round(float(lift), 3),
                            "support": int(joint[a, b])})
    out.sort(key=lambda d: (-d["lift"], d["a"], d["b"]))
    return out[:max_pairs]


def load(data_dir: str):
    rows = read_styles(data_dir)
    items, cmap = build_items(rows)
    tax = Taxonomy(items, cmap)
    group = sibling_groups(items, data_dir)
    train = [it for it in items if not in_val(group[it.id])]
    val = [it for it in items if in_val(group[it.id])]
    return tax, train, val


def split_fingerprint(val) -> str:
    """Identifies a validation split: checkpoints and manifests carry it, and export and
    evaluation refuse a model trained on another split (its figures would be inflated)."""
    ids = ",".join(str(i) for i in sorted(it.id for it in val))
    return f"{SPLIT_SEED}:" + hashlib.sha256(ids.encode()).hexdigest()[:16]


PIXEL_ASPECT = 0.75  # fpi: squashed 3:4 originals (see PREP.md)


def cache_tensors(data_dir: str, items, cache_path: str):
    """Prepared float32 tensors (N, 3, H, W) cached as .npy (outside the repo)."""
    import prep
    if os.path.exists(cache_path):
        arr = np.load(cache_path, mmap_mode="r")
        if arr.shape[0] == len(items):
            return np.asarray(arr)
    out = np.empty((len(items), 3, prep.INPUT_H, prep.INPUT_W), dtype=np.float32)
    for i, it in enumerate(items):
        img = prep.decode_rgb(os.path.join(data_dir, "images", f"{it.id}.jpg"))
        out[i] = prep.prepare(img, PIXEL_ASPECT)
    tmp = cache_path + ".tmp.npy"
    np.save(tmp, out)
    os.replace(tmp, cache_path)
    return out


if __name__ == "__main__":
    import sys
    tax, train, val = load(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fpi")
    print("train", len(train), "val", len(val), "categories", len(tax.categories), "tags", tax.n_tags)
    cnt = Counter(it.category for it in train + val)
    print(sorted(cnt.items(), key=lambda kv: -kv[1]))
    _, tags, mask = tax.encode(train)
    for g in tax.groups:
        s = slice(g["start"], g["end"])
        print(g["name"], dict(zip(g["tags"], tags[:, s].sum(0).astype(int))), "labelled", int(mask[:, g["start"]].sum()))
    for p in correlated_tags(train, tax)[:25]:
        print(p)


def check_replaces(out_dir, onnx_name, replace):
    """Refuses to write over a manifest in `out_dir` that names another
    model (the shipped v2 in `models/`): the engine loads whatever the
    manifest names, so an export would switch every user of this checkout
    to an unshipped model. `--replace` says that is meant."""
    path = os.path.join(out_dir, "manifest.json")
    try:
        with open(path) as f:
            current = json.load(f).get("onnx")
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError) as e:
        raise SystemExit(f"{path} cannot be read ({e}); pass --replace to write over it")
    if current != onnx_name and not replace:
        raise SystemExit(
            f"{path} names {current}, not {onnx_name}: exporting here would replace the bundled "
            f"model. Export elsewhere (--out /tmp/vitrine_export/) or pass --replace to replace it."
        )
