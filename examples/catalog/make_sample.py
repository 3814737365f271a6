"""Rebuilds examples/catalog from Fashion Product Images (Small).

Usage: python3 examples/catalog/make_sample.py ../shared/data/fpi

A fixed-seed, varied sample: round-robin over the model's categories (the
articleType, merged as in the manifest's taxonomy; order shuffled with the
seed), each time preferring an image whose articleType and baseColour that
category has not given yet, until 300 images or 2.0 MB. Images are copied unmodified.
"""
import csv, json, os, random, shutil, sys
from collections import defaultdict

SEED = 20240611
MAX_IMAGES = 300
MAX_BYTES = 2_000_000

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fpi"
here = os.path.dirname(os.path.abspath(__file__))
manifest = json.load(open(os.path.join(here, "..", "..", "models", "manifest.json")))
to_cat = manifest["taxonomy"]["article_type_to_category"]
rows = [r for r in csv.DictReader(open(os.path.join(src, "styles.csv"), newline=""))
        if os.path.exists(os.path.join(src, "images", r["id"] + ".jpg"))]
rng = random.Random(SEED)
rows.sort(key=lambda r: int(r["id"]))
by_type = defaultdict(list)
for r in rows:
    by_type[to_cat.get(r["articleType"], "Other")].append(r)
types = sorted(by_type)
rng.shuffle(types)
for t in types:
    rng.shuffle(by_type[t])
seen_colours = defaultdict(set)
seen_types = defaultdict(set)
picked, total = [], 0
while len(picked) < MAX_IMAGES:
    progress = False
    for t in types:
        pool = by_type[t]
        if not pool or len(picked) >= MAX_IMAGES:
            continue
        # Prefer a colour not yet taken for this type.
        fresh = [i for i, r in enumerate(pool) if r["baseColour"] not in seen_colours[t]]
        idx = next((i for i in fresh if pool[i]["articleType"] not in seen_types[t]),
                   fresh[0] if fresh else 0)
        r = pool.pop(idx)
        size = os.path.getsize(os.path.join(src, "images", r["id"] + ".jpg"))
        if total + size > MAX_BYTES:
            continue
        seen_colours[t].add(r["baseColour"])
        seen_types[t].add(r["articleType"])
        picked.append(r)
        total += size
        progress = True
    if not progress:
        break
out_dir = os.path.join(here, "images")
os.makedirs(out_dir, exist_ok=True)
for f in os.listdir(out_dir):
    os.remove(os.path.join(out_dir, f))
picked.sort(key=lambda r: int(r["id"]))
with open(os.path.join(here, "catalog.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["id", "file", "category", "article_type", "colour", "gender", "usage", "season", "price"])
    for r in picked:
        shutil.copyfile(os.path.join(src, "images", r["id"] + ".jpg"), os.path.join(out_dir, r["id"] + ".jpg"))
        w.writerow([r["id"], "images/" + r["id"] + ".jpg", to_cat.get(r["articleType"], "Other"),
                    r["articleType"], r["baseColour"], r["gender"], r["usage"], r["season"], ""])
print(len(picked), "images,", total, "bytes,", len({r["articleType"] for r in picked}), "articleTypes,",
      len({r["baseColour"] for r in picked}), "colours")
