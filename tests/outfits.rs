//! Outfits over a small subset of the Mango catalog (real images, the real
//! model run by tract, a real sled database): storage, bad input,
//! persistence across a reopen and a SIGKILL, rules, substitute, expand,
//! cover, complete, and the CLI (`vitrine outfit …`, `vitrine eval fitb`).
//!
//! Skipped (with a "SKIP" line) when `../shared/data/mango` is absent. The
//! full-data figures come from `vitrine eval outfits` and `vitrine eval
//! fitb` in release (see docs/outfits/README.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vitrine::{
    Attributes, CoverOptions, Db, ExpandOptions, ImportItem, ImportOptions, ImportSource, Model,
    OutfitError, OutfitSettings, PrepConfig, RelationKind,
};

fn mango_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mango")
}

fn have_mango() -> bool {
    let ok = mango_dir().join("products.csv").is_file();
    if !ok {
        eprintln!("SKIP: {} is absent", mango_dir().display());
    }
    ok
}

/// The records of a CSV text, fields trimmed.
fn records(text: &str) -> Vec<Vec<String>> {
    vitrine::parse_csv(text)
        .expect("data CSV")
        .into_iter()
        .map(|r| r.fields.into_iter().map(|f| f.trim().to_string()).collect())
        .collect()
}

fn join(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains(',') || f.contains('"') {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The first `n_outfits` outfits of the Mango set, their products' rows
/// (header + fields) and the header.
struct Subset {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    outfits: BTreeMap<String, Vec<String>>,
}

impl Subset {
    fn take(n_outfits: usize) -> Subset {
        let dir = mango_dir();
        let text = std::fs::read_to_string(dir.join("outfits.csv")).unwrap();
        let mut outfits: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut order = Vec::new();
        for f in records(&text).into_iter().skip(1) {
            if f.len() < 2 {
                continue;
            }
            if !outfits.contains_key(&f[0]) {
                if order.len() == n_outfits {
                    continue;
                }
                order.push(f[0].clone());
            }
            outfits.entry(f[0].clone()).or_default().push(f[1].clone());
        }
        let wanted: HashSet<&String> = outfits.values().flatten().collect();
        let text = std::fs::read_to_string(dir.join("products.csv")).unwrap();
        let mut lines = records(&text).into_iter();
        let header = lines.next().unwrap();
        let rows = lines.filter(|r| wanted.contains(&r[0])).collect();
        Subset {
            header,
            rows,
            outfits,
        }
    }

    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }

    fn items(&self) -> Vec<ImportItem> {
        let (file, fam) = (self.col("des_filename"), self.col("des_product_family"));
        self.rows
            .iter()
            .map(|r| {
                let mut a = Attributes::new().category(r[fam].clone());
                for (k, v) in self.header.iter().zip(r).skip(1) {
                    a.extra.insert(k.clone(), v.clone());
                }
                ImportItem {
                    id: r[0].clone(),
                    path: mango_dir().join(&r[file]),
                    attributes: a,
                }
            })
            .collect()
    }

    fn gt_colour(&self) -> HashMap<String, String> {
        let c = self.col("des_agrup_color_eng");
        self.rows
            .iter()
            .map(|r| (r[0].clone(), r[c].clone()))
            .collect()
    }

    /// Writes the subset as a Mango-format products CSV (absolute image
    /// paths) and an outfits CSV.
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let file = self.col("des_filename");
        let p = dir.join("products.csv");
        let mut s = self.header.join(",") + "\n";
        for r in &self.rows {
            let mut r = r.clone();
            r[file] = mango_dir().join(&r[file]).display().to_string();
            s += &(join(&r) + "\n");
        }
        std::fs::write(&p, s).unwrap();
        let o = dir.join("outfits.csv");
        let mut s = String::from("cod_outfit,cod_modelo_color\n");
        for (id, ps) in &self.outfits {
            for p in ps {
                s += &format!("{id},{p}\n");
            }
        }
        std::fs::write(&o, s).unwrap();
        (p, o)
    }
}

fn import(db: &Db, model: &std::sync::Arc<Model>, items: Vec<ImportItem>) {
    let r = db
        .import(
            ImportSource::Items(items),
            ImportOptions::new()
                .model(model.clone())
                .prep(PrepConfig::catalog()),
        )
        .unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    subset: Subset,
}

/// One imported subset shared by the read-mostly tests; tests hold
/// `LOCK` so that stock changes do not interleave.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        if !have_mango() {
            return None;
        }
        let subset = Subset::take(24);
        let dir = tempfile::tempdir().unwrap();
        let model = Model::bundled().unwrap();
        let db = Db::builder()
            .open_with_model(dir.path().join("db"), &model)
            .unwrap();
        let started = Instant::now();
        import(&db, &model, subset.items());
        eprintln!(
            "imported {} products in {:.1} s",
            db.len(),
            started.elapsed().as_secs_f64()
        );
        for (id, ps) in &subset.outfits {
            db.store_outfit(id, ps).unwrap();
        }
        db.learn_outfit_rules().unwrap();
        Some(Fixture {
            _dir: dir,
            db,
            subset,
        })
    })
    .as_ref()
}

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn outfits_are_stored_listed_shown_and_deleted_and_bad_input_writes_nothing() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    let n = db.outfit_count().unwrap();
    assert_eq!(n, f.subset.outfits.len());
    let (id, ps) = f.subset.outfits.iter().next().unwrap();
    let o = db.outfit(id).unwrap().unwrap();
    assert_eq!(
        o.products(),
        ps.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for s in &o.slots {
        assert_eq!(
            s.category,
            db.get(&s.product).unwrap().unwrap().attributes.category
        );
    }

    // Unknown product: typed error, nothing written.
    let bad = [ps[0].as_str(), "no-such-product"];
    match db.store_outfit("new-outfit", &bad) {
        Err(OutfitError::UnknownProduct { outfit, product }) => {
            assert_eq!(outfit, "new-outfit");
            assert_eq!(product, "no-such-product");
        }
        other => panic!("{other:?}"),
    }
    assert!(db.outfit("new-outfit").unwrap().is_none());
    assert_eq!(db.outfit_count().unwrap(), n);
    // A CSV with one bad row among good ones: nothing at all is written.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("o.csv");
    std::fs::write(
        &csv,
        format!(
            "outfit,product\nx1,{}\nx1,{}\nx2,{}\nx2,missing\n",
            ps[0], ps[1], ps[0]
        ),
    )
    .unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::UnknownProduct { .. })
    ));
    assert!(db.outfit("x1").unwrap().is_none());
    assert_eq!(db.outfit_count().unwrap(), n);
    // Imported leaving out the outfits that name unknown products: the
    // others are stored, and each left out is named with its first unknown
    // product. Other errors still fail it whole. One stored before keeps
    // its earlier version, and is named as such.
    db.store_outfit("x3", &[&ps[1]]).unwrap();
    std::fs::write(
        &csv,
        format!(
            "outfit,product\nx1,{}\nx1,{}\nx2,{}\nx2,missing\nx3,gone\nx3,missing\n",
            ps[0], ps[1], ps[0]
        ),
    )
    .unwrap();
    let done = db.import_outfits_csv_known(&csv).unwrap();
    assert_eq!(done.imported, 1);
    assert_eq!(
        done.left_out,
        [
            ("x2".to_string(), "missing".to_string()),
            ("x3".to_string(), "gone".to_string())
        ]
    );
    assert_eq!(
        db.outfit("x1").unwrap().unwrap().products(),
        [&ps[0], &ps[1]]
    );
    assert_eq!(done.kept_earlier, ["x3"]);
    assert!(db.outfit("x2").unwrap().is_none());
    assert_eq!(db.outfit("x3").unwrap().unwrap().products(), [&ps[1]]);
    assert!(db.delete_outfit("x1").unwrap());
    assert!(db.delete_outfit("x3").unwrap());
    std::fs::write(
        &csv,
        format!("outfit,product\nx1,{}\nx1,{}\nx2,missing\n", ps[0], ps[0]),
    )
    .unwrap();
    assert!(matches!(
        db.import_outfits_csv_known(&csv),
        Err(OutfitError::DuplicateProduct { .. })
    ));
    assert_eq!(db.outfit_count().unwrap(), n);
    // Other bad input.
    assert!(matches!(
        db.store_outfit::<&str>("empty", &[]),
        Err(OutfitError::EmptyOutfit(_))
    ));
    assert!(matches!(
        db.store_outfit("dup", &[ps[0].as_str(), ps[0].as_str()]),
        Err(OutfitError::DuplicateProduct { .. })
    ));
    assert!(matches!(
        db.store_outfit("", &[ps[0].as_str()]),
        Err(OutfitError::InvalidId(_))
    ));
    // An id that looks like another's.
    for id in ["look\u{200b}", "\u{feff}look"] {
        assert!(matches!(
            db.store_outfit(id, &[ps[0].as_str()]),
            Err(OutfitError::InvalidId(_))
        ));
    }
    // A product inserted with vectors only has no model outputs.
    let mut v = vec![0.0f32; Model::bundled().unwrap().embedding_dim()];
    v[0] = 1.0;
    db.insert(
        "vectors-only",
        vitrine::Attributes::new().category("Tops"),
        [(vitrine::EMBEDDING_SPACE, v)],
    )
    .unwrap();
    let stored = db.store_outfit("plain", &[ps[0].as_str(), "vectors-only"]);
    // Ranking it says why, rather than calling it deleted.
    let ranked = db.complete(&[ps[0].as_str()], &[ps[1].as_str(), "vectors-only"]);
    assert!(
        matches!(&ranked, Err(OutfitError::NotAnImageProduct(p)) if p == "vectors-only"),
        "{ranked:?}"
    );
    assert!(db.delete("vectors-only").unwrap());
    assert!(
        matches!(&stored, Err(OutfitError::NotAnImageProduct(p)) if p == "vectors-only"),
        "{stored:?}"
    );
    assert_eq!(db.outfit_count().unwrap(), n);
    // An unclosed quote names the line where it opens.
    std::fs::write(
        &csv,
        format!("outfit,product\nx1,{}\n\"x1,{}\n", ps[0], ps[1]),
    )
    .unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { line: 3, .. })
    ));
    // Bare-CR line ends (an old Mac export) are one record: refused, not
    // "imported 0 outfits".
    std::fs::write(
        &csv,
        format!("outfit,product\rx1,{}\rx1,{}\r", ps[0], ps[1]),
    )
    .unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { ref reason, .. }) if reason.contains("carriage return")
    ));
    // An empty file, or a header alone (a cut export), is refused as the
    // product import refuses one: it read as "imported 0 outfits".
    for (text, says) in [
        ("", "empty"),
        ("outfit,product\r\n , \r\n", "only a header"),
    ] {
        std::fs::write(&csv, text).unwrap();
        assert!(
            matches!(
                db.import_outfits_csv(&csv),
                Err(OutfitError::Csv { ref reason, .. }) if reason.contains(says)
            ),
            "{text:?}"
        );
    }
    assert_eq!(db.outfit_count().unwrap(), n);
    // Too many products: checked before the products themselves.
    let huge: Vec<String> = (0..=vitrine::MAX_OUTFIT_SLOTS)
        .map(|i| format!("p{i}"))
        .collect();
    assert!(matches!(
        db.store_outfit("huge", &huge),
        Err(OutfitError::TooManySlots { slots, .. }) if slots == vitrine::MAX_OUTFIT_SLOTS + 1
    ));
    assert!(matches!(
        db.substitute("no-such-outfit", 3),
        Err(OutfitError::UnknownOutfit(_))
    ));

    // Quoted fields: an outfit id with a comma. A spreadsheet's cleared
    // row (`,`, from Excel with CRLF) is no row: it was refused as "empty
    // outfit or product id".
    std::fs::write(
        &csv,
        format!(
            "outfit,product\r\n\"look, 1\",{}\r\n , \r\n\"look, 1\",\"{}\"\r\n",
            ps[0], ps[1]
        ),
    )
    .unwrap();
    assert_eq!(db.import_outfits_csv(&csv).unwrap(), 1);
    // A device is refused, not read until memory runs out.
    #[cfg(unix)]
    assert!(matches!(
        db.import_outfits_csv("/dev/zero"),
        Err(vitrine::OutfitError::Io { .. })
    ));
    assert_eq!(db.outfit("look, 1").unwrap().unwrap().slots.len(), 2);
    assert!(db.delete_outfit("look, 1").unwrap());
    // Without its header line, the first row would be lost: refused.
    std::fs::write(&csv, format!("x9,{}\nx9,{}\n", ps[0], ps[1])).unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { line: 1, .. })
    ));
    assert!(db.outfit("x9").unwrap().is_none());
    // Also when that first row names an unknown product.
    std::fs::write(&csv, format!("x9,nosuch\nx9,{}\n", ps[1])).unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { line: 1, .. })
    ));
    assert!(db.outfit("x9").unwrap().is_none());
    // A third value on a row is refused, not dropped; so is text that is
    // not UTF-8 (naming its line), and a missing file is an I/O error.
    std::fs::write(&csv, format!("o,p\nx9,{},{}\n", ps[0], ps[1])).unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { line: 2, .. })
    ));
    let mut bytes = format!("o,p\nx9,{}\nx9,", ps[0]).into_bytes();
    bytes.extend([0xff, b'\n']);
    std::fs::write(&csv, bytes).unwrap();
    assert!(matches!(
        db.import_outfits_csv(&csv),
        Err(OutfitError::Csv { line: 3, .. })
    ));
    match db.import_outfits_csv(csv.with_extension("missing")) {
        Err(e @ OutfitError::Io { .. }) => assert!(e.is_user_error(), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(db.outfit("x9").unwrap().is_none());

    // Store, replace, delete; the rules are stale while the outfits differ
    // from those they were learned from.
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    db.store_outfit("tmp", &[ps[0].as_str(), ps[1].as_str()])
        .unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(false));
    assert_eq!(db.outfit_count().unwrap(), n + 1);
    db.store_outfit("tmp", &[ps[1].as_str()]).unwrap();
    assert_eq!(db.outfit("tmp").unwrap().unwrap().slots.len(), 1);
    assert!(db.delete_outfit("tmp").unwrap());
    assert!(!db.delete_outfit("tmp").unwrap());
    assert_eq!(db.outfit_count().unwrap(), n);
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
}

#[test]
fn rules_are_learned_and_inspectable() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let rules = f.db.outfit_rules().unwrap().unwrap();
    let pairs: usize = f
        .subset
        .outfits
        .values()
        .map(|ps| ps.len() * (ps.len() - 1))
        .sum();
    assert_eq!(rules.outfits, f.subset.outfits.len());
    assert_eq!(rules.pairs, pairs);
    let top = rules.top(20, 1);
    assert_eq!(top.len(), 20);
    assert!(top.windows(2).all(|w| w[0].lift >= w[1].lift));
    assert!(rules.patterned_with_solid_lift().is_some());
    assert!(rules.colour_lift("black", "white").is_some());
    // Colour rules of two categories are ordered (x on the first category,
    // y on the second): both orders of two families are reported.
    let at = |c: &str| rules.colours.iter().position(|x| x == c);
    let all = rules.top(usize::MAX, 1);
    assert!(
        all.iter().any(|r| r.context.as_ref().is_some_and(|c| {
            let (a, b) = c.split_once(" + ").unwrap();
            a != b && at(&r.left) > at(&r.right)
        })),
        "no category-pair colour rule with the later family first"
    );
    // Support counts co-worn pairs once: for categories a and b, the pairs
    // of slots of one outfit with those categories.
    let outfits = f.db.outfits().unwrap();
    let category_rules: Vec<_> = all
        .iter()
        .filter(|r| r.kind == vitrine::RuleKind::Category)
        .collect();
    assert!(!category_rules.is_empty(), "no category rules learned");
    for r in category_rules {
        let expected: usize = outfits
            .iter()
            .map(|o| {
                let n = |c: &str| {
                    o.slots
                        .iter()
                        .filter(|s| s.category.as_deref() == Some(c))
                        .count()
                };
                let (a, b) = (n(&r.left), n(&r.right));
                if r.left == r.right {
                    a * a.saturating_sub(1) / 2
                } else {
                    a * b
                }
            })
            .sum();
        assert_eq!(r.support as usize, expected, "{} + {}", r.left, r.right);
    }
    // The category tables cover the categories outfits use, no others.
    let used: std::collections::BTreeSet<String> =
        f.db.outfits()
            .unwrap()
            .iter()
            .flat_map(|o| o.slots.iter().filter_map(|s| s.category.clone()))
            .collect();
    let ruled: std::collections::BTreeSet<String> = rules.categories.iter().cloned().collect();
    assert_eq!(ruled, used);
}

#[test]
fn substitutes_have_the_same_category_and_mostly_the_same_colour_family() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let mut eng = f.db.outfit_engine().unwrap();
    let gt = f.subset.gt_colour();
    let (mut cases, mut same_cat, mut colour_cases, mut same_colour, mut gt_same) = (0, 0, 0, 0, 0);
    for o in f.db.outfits().unwrap() {
        for s in &o.slots {
            eng.assume_sold_out(&[&s.product]);
            let subs = eng.substitute(&o.id, 3).unwrap();
            eng.assume_in_stock(&[&s.product]);
            assert_eq!(subs.len(), 1, "only the sold-out item is substituted");
            assert_eq!(subs[0].original, s.product);
            let Some(top) = subs[0].candidates.first() else {
                continue; // no other product of the category in the subset
            };
            cases += 1;
            assert!(top.score >= subs[0].candidates.last().unwrap().score);
            // A candidate of the original's colour family is flagged (the
            // flag also counts close shades across a family border).
            for c in &subs[0].candidates {
                let family = eng.colour_family(&c.product);
                if family.is_some_and(|f| f != "?") && family == eng.colour_family(&s.product) {
                    assert!(c.same_colour, "{} for {}", c.product, s.product);
                }
            }
            assert!(!o.products().contains(&top.product.as_str()));
            let cat = f.db.get(&top.product).unwrap().unwrap().attributes.category;
            same_cat += usize::from(cat == s.category);
            if subs[0].candidates.iter().any(|c| c.same_colour) {
                colour_cases += 1;
                same_colour += usize::from(top.same_colour);
            }
            gt_same += usize::from(gt.get(&top.product) == gt.get(&s.product));
        }
    }
    eprintln!(
        "substitute: {cases} cases, same category {same_cat}, model colour family kept {same_colour}/{colour_cases}, ground-truth colour group kept {gt_same}/{cases}"
    );
    assert!(cases > 50);
    assert!(
        colour_cases * 2 >= cases,
        "{colour_cases} of {cases} had a same-colour candidate"
    );
    assert_eq!(same_cat, cases);
    assert!(same_colour as f64 >= 0.8 * colour_cases as f64);
}

/// Two sold-out items of one category draw on the same products: each
/// slot's first candidate is another product, so that taking the firsts
/// gives an outfit without repeats.
#[test]
fn two_sold_out_items_of_one_category_get_different_first_substitutes() {
    if !have_mango() {
        return;
    }
    let subset = Subset::take(12);
    let model = Model::bundled().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder().open_with_model(dir.path(), &model).unwrap();
    import(&db, &model, subset.items());
    // Every pair of products of the most common category, as an outfit
    // whose two items are sold out.
    let mut by_category: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in db.ids() {
        let category = db.get(&id).unwrap().unwrap().attributes.category;
        by_category.entry(category.unwrap()).or_default().push(id);
    }
    let members = by_category.values().max_by_key(|m| m.len()).unwrap();
    assert!(members.len() >= 8, "{by_category:?}");
    let pairs: Vec<(&String, &String)> = members
        .iter()
        .flat_map(|a| members.iter().filter(move |b| a < *b).map(move |b| (a, b)))
        .collect();
    for (n, (a, b)) in pairs.iter().enumerate() {
        db.store_outfit(&format!("pair-{n}"), &[a.as_str(), b.as_str()])
            .unwrap();
    }
    let mut eng = db.outfit_engine().unwrap();
    for (n, (a, b)) in pairs.iter().enumerate() {
        eng.assume_sold_out(&[a, b]);
        let subs = eng.substitute(&format!("pair-{n}"), 3).unwrap();
        eng.assume_in_stock(&[a, b]);
        assert_eq!(subs.len(), 2);
        let (first, second) = (&subs[0].candidates, &subs[1].candidates);
        assert_eq!((first.len(), second.len()), (3, 3));
        assert!(
            second.iter().all(|c| c.product != first[0].product),
            "{a} and {b}: {first:?}\n{second:?}"
        );
    }
}

#[test]
fn expansions_are_in_stock_without_repeats_and_keep_colour_relations() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    let outfits = db.outfits().unwrap();
    // Sell out a few products: expansions must avoid them.
    let sold: Vec<String> = outfits
        .iter()
        .skip(5)
        .take(3)
        .map(|o| o.slots[0].product.clone())
        .collect();
    for p in &sold {
        db.set_in_stock(p, false).unwrap();
    }
    // Back in stock however this test ends: the fixture is shared.
    let _restock = Restock(db, sold.clone());
    let eng = db.outfit_engine().unwrap();
    let (mut rel, mut kept, mut n) = (0, 0, 0);
    let started = Instant::now();
    for o in outfits.iter().take(4) {
        let ex = eng.expand(&o.id, 3, &ExpandOptions::new()).unwrap();
        assert!(!ex.is_empty());
        let anchors: HashSet<&String> = ex.iter().map(|e| &e.products[0]).collect();
        assert_eq!(anchors.len(), ex.len(), "a new anchor each time");
        for e in &ex {
            n += 1;
            assert_eq!(e.products.len(), o.slots.len());
            assert_ne!(e.products[0], o.slots[0].product);
            let uniq: HashSet<&String> = e.products.iter().collect();
            assert_eq!(uniq.len(), e.products.len(), "no repeats");
            for p in &e.products {
                assert_eq!(eng.in_stock(p), Some(true), "{p} in stock");
                assert!(!sold.contains(p));
            }
            for (slot, p) in o.slots.iter().zip(&e.products) {
                let c = db.get(p).unwrap().unwrap().attributes.category;
                assert_eq!(c, slot.category);
            }
            assert!(!e.explanation.is_empty());
            rel += e.relations.len();
            kept += e.relations.iter().filter(|r| r.kept).count();
        }
    }
    eprintln!(
        "expand: {n} outfits in {:.0} ms, {kept}/{rel} colour relations kept",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(rel > 0, "no colour relations to keep");
    assert!(kept as f64 >= 0.8 * rel as f64, "{kept}/{rel}");
}

/// A template with two slots of one category, whose category has two other
/// products in stock: the second expansion would take them again, swapped
/// between the slots. No expansion repeats another's products.
#[test]
fn expansions_never_repeat_a_product_set() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    let mut by_category: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in db.ids() {
        let a = db.attributes(&id).unwrap();
        if let (true, Some(c)) = (a.in_stock, a.category) {
            by_category.entry(c).or_default().push(id);
        }
    }
    let members = by_category
        .values()
        .find(|m| m.len() >= 4)
        .expect("a category of four products");
    let sold = members[4..].to_vec();
    for p in &sold {
        db.set_in_stock(p, false).unwrap();
    }
    let _restock = Restock(db, sold);
    let template = [members[0].clone(), members[1].clone()];
    db.store_outfit("two-of-a-kind", &template).unwrap();
    let made = db.expand("two-of-a-kind", 3, &ExpandOptions::new().anchor_slot(0));
    db.delete_outfit("two-of-a-kind").unwrap();
    let made = made.unwrap();
    assert!(!made.is_empty());
    let sets: HashSet<std::collections::BTreeSet<&String>> =
        made.iter().map(|e| e.products.iter().collect()).collect();
    assert_eq!(sets.len(), made.len(), "{made:?}");
}

/// Puts products back in stock when dropped.
struct Restock<'a>(&'a Db, Vec<String>);

impl Drop for Restock<'_> {
    fn drop(&mut self) {
        for p in &self.1 {
            let _ = self.0.set_in_stock(p, true);
        }
    }
}

/// The palette weight makes expansions follow the template's own colours
/// (closer measured colours, slot by slot) without costing any of the
/// template's colour relations. (Its effect on ground-truth groups is
/// measured on the full catalog by `vitrine eval outfits`: this subset has
/// one to five products per category.)
#[test]
fn palette_keeps_expansions_near_the_template_colours() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    let eng = db.outfit_engine().unwrap();
    let gt = f.subset.gt_colour();
    // The measured colour (absent when no foreground was found).
    let lab = |id: &str| -> Option<[f32; 3]> {
        let p = db.get(id).unwrap().unwrap();
        let v = p.attributes.extra.get(vitrine::ATTR_COLOUR_LAB)?;
        Some(serde_json::from_str(v).unwrap())
    };
    // (mean ΔE to the template product, relations kept, relations,
    // ground-truth shared groups kept, shared pairs)
    let measure = |opts: &ExpandOptions| {
        let (mut sum, mut n) = (0.0f32, 0);
        let (mut kept, mut rel, mut gt_kept, mut gt_shared) = (0, 0, 0, 0);
        for o in db.outfits().unwrap() {
            for e in eng.expand(&o.id, 3, opts).unwrap() {
                for (slot, p) in o.slots.iter().zip(&e.products) {
                    if let (Some(a), Some(b)) = (lab(&slot.product), lab(p)) {
                        sum += vitrine::delta_e(a, b);
                        n += 1;
                    }
                }
                rel += e.relations.len();
                kept += e.relations.iter().filter(|r| r.kept).count();
                for r in &e.relations {
                    if gt[&o.slots[r.a].product] == gt[&o.slots[r.b].product] {
                        gt_shared += 1;
                        gt_kept += usize::from(gt[&e.products[r.a]] == gt[&e.products[r.b]]);
                    }
                }
            }
        }
        (sum / n.max(1) as f32, kept, rel, gt_kept, gt_shared)
    };
    let (de0, kept0, rel0, gt0, shared0) = measure(&ExpandOptions::new().palette(0.0));
    let (de2, kept2, rel2, gt2, shared2) = measure(&ExpandOptions::new());
    eprintln!(
        "palette 0: mean ΔE to the template {de0:.1}, relations kept {kept0}/{rel0}, shared groups kept {gt0}/{shared0}; \
         palette 2: {de2:.1}, {kept2}/{rel2}, {gt2}/{shared2}"
    );
    assert_eq!(rel0, rel2);
    assert!(rel0 > 100);
    assert!(de2 < 0.8 * de0, "{de2} vs {de0}");
    assert!(kept2 >= kept0, "{kept2} vs {kept0}");
    // A huge weight is the largest one: 3e38 overflowed the scores, and
    // the outfits came out in product-id order.
    let huge = measure(&ExpandOptions::new().palette(3e38));
    let most = measure(&ExpandOptions::new().palette(vitrine::MAX_PALETTE));
    assert_eq!(huge, most);
    assert!(most.0 <= de2, "{most:?}");
}

#[test]
fn catalog_colour_groups_decide_colour_families_when_configured() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    assert_eq!(db.outfit_settings().unwrap(), OutfitSettings::default());
    assert!(matches!(
        db.set_outfit_settings(&OutfitSettings::new().colour_attribute("  ")),
        Err(OutfitError::InvalidArgument(_))
    ));
    assert!(matches!(
        db.set_outfit_settings(&OutfitSettings::new().colour_attribute("colour_gruop")),
        Err(OutfitError::InvalidArgument(ref m)) if m.contains("no product has")
    ));
    let attr = "des_agrup_color_eng";
    db.set_outfit_settings(&OutfitSettings::new().colour_attribute(attr))
        .unwrap();
    assert_eq!(
        db.outfit_rules_current().unwrap(),
        Some(false),
        "new colour families: the rules are stale"
    );
    let rules = db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    let eng = db.outfit_engine().unwrap();
    let gt = f.subset.gt_colour();

    // Every product's family is its catalog group.
    let mismatched: Vec<&String> = gt
        .iter()
        .filter(|(id, g)| eng.colour_family(id) != Some(g.as_str()))
        .map(|(id, _)| id)
        .collect();
    // The rules are learned over the catalog groups.
    let groups: HashSet<&String> = gt.values().collect();
    let rule_groups = groups.iter().filter(|g| rules.colours.contains(g)).count();
    // Substitutes: the catalog group of the original whenever the category
    // has one in stock; expansions: every shared group stays shared.
    let mut eng = eng;
    let (mut colour_cases, mut same) = (0, 0);
    let (mut shared, mut shared_kept) = (0, 0);
    for o in db.outfits().unwrap() {
        for s in &o.slots {
            eng.assume_sold_out(&[&s.product]);
            let subs = eng.substitute(&o.id, 50).unwrap();
            eng.assume_in_stock(&[&s.product]);
            let cands = &subs[0].candidates;
            if cands
                .iter()
                .any(|c| gt.get(&c.product) == gt.get(&s.product))
            {
                colour_cases += 1;
                same += usize::from(gt.get(&cands[0].product) == gt.get(&s.product));
            }
        }
    }
    for o in db.outfits().unwrap().iter().take(6) {
        for e in eng.expand(&o.id, 3, &ExpandOptions::new()).unwrap() {
            for r in e
                .relations
                .iter()
                .filter(|r| r.kind == RelationKind::SameColour)
            {
                shared += 1;
                shared_kept += usize::from(gt[&e.products[r.a]] == gt[&e.products[r.b]]);
            }
        }
    }
    // Another attribute whose values are all the model's own family names
    // adds no colour name, yet the rules were learned with another one.
    let ids: Vec<String> = gt.keys().cloned().collect();
    for (n, id) in ids.iter().enumerate() {
        let family = ["black", "white"][n % 2];
        db.update_attributes(id, |a| {
            a.extra.insert("plain_colour".into(), family.into());
        })
        .unwrap();
    }
    // Back to the defaults (other tests share this database) before asserting.
    db.set_outfit_settings(&OutfitSettings::default()).unwrap();
    db.learn_outfit_rules().unwrap();
    db.set_outfit_settings(&OutfitSettings::new().colour_attribute("plain_colour"))
        .unwrap();
    let current_after_switch = db.outfit_rules_current().unwrap();
    db.set_outfit_settings(&OutfitSettings::default()).unwrap();
    assert_eq!(current_after_switch, Some(false));
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));

    eprintln!(
        "catalog colours: substitute kept the group {same}/{colour_cases}, expansions kept {shared_kept}/{shared} shared groups"
    );
    assert!(mismatched.is_empty(), "{mismatched:?}");
    assert_eq!(rule_groups, groups.len());
    assert!(colour_cases > 50);
    assert!(
        same as f64 >= 0.9 * colour_cases as f64,
        "{same}/{colour_cases}"
    );
    assert!(shared > 10);
    assert!(
        shared_kept as f64 >= 0.9 * shared as f64,
        "{shared_kept}/{shared}"
    );
}

#[test]
fn cover_and_complete() {
    let Some(f) = fixture() else { return };
    let _g = lock();
    let db = &f.db;
    let templates: Vec<String> = db
        .outfits()
        .unwrap()
        .into_iter()
        .take(6)
        .map(|o| o.id)
        .collect();
    let plan = db
        .cover(&templates, &CoverOptions::new().outfits_per_template(3))
        .unwrap();
    eprintln!(
        "cover: {} outfits, {} of {} covered ({:.2}); baseline {:.2}",
        plan.outfits.len(),
        plan.covered,
        plan.in_stock,
        plan.fraction,
        plan.baseline_fraction
    );
    assert!(plan.fraction > 0.0 && plan.fraction <= 1.0);
    assert!(plan.covered >= plan.baseline_covered);
    // A budget larger than the inventory: the rounds stop once one covers
    // nothing new, having covered at least as much.
    let full = db
        .cover(&templates, &CoverOptions::new().outfits_per_template(1000))
        .unwrap();
    assert!(full.outfits.len() < templates.len() * 1000);
    assert!(full.covered >= plan.covered && full.covered <= full.in_stock);
    // A template named twice is planned once.
    let twice = vec![templates[0].clone(), templates[0].clone()];
    let one = db
        .cover(&twice, &CoverOptions::new().outfits_per_template(2))
        .unwrap();
    let once = db
        .cover(&twice[..1], &CoverOptions::new().outfits_per_template(2))
        .unwrap();
    assert!(!once.outfits.is_empty());
    let products = |p: &vitrine::CoverPlan| {
        p.outfits
            .iter()
            .map(|e| e.products.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(products(&one), products(&once));
    assert_eq!(one.covered, once.covered);

    // Complete: the candidates come back ranked, every one of them.
    let o = db.outfits().unwrap().into_iter().nth(1).unwrap();
    let given: Vec<&str> = o.products()[1..].to_vec();
    let answer = o.products()[0];
    let eng = db.outfit_engine().unwrap();
    let others: Vec<String> = db
        .ids()
        .into_iter()
        .filter(|p| p != answer && eng.in_stock(p) == Some(true) && !given.contains(&p.as_str()))
        .take(3)
        .collect();
    let mut cands = vec![answer.to_string()];
    cands.extend(others);
    let ranked = db.complete(&given, &cands).unwrap();
    assert_eq!(ranked.len(), 4);
    assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));
    // Given items and repeats among the candidates are not ranked.
    let mut noisy = cands.clone();
    noisy.push(cands[1].clone());
    noisy.push(given[0].to_string());
    let again = db.complete(&given, &noisy).unwrap();
    let ids =
        |r: &[vitrine::ScoredCandidate]| r.iter().map(|c| c.product.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&ranked));
    // The default method computes every signal; the visual one learns
    // nothing and says so, instead of reporting zeros.
    assert!(ranked
        .iter()
        .all(|c| c.rules.is_some() && c.compat.is_some() && c.kernel.is_some()));
    let visual = eng
        .complete_with(&given, &cands, vitrine::CompleteMethod::Visual)
        .unwrap();
    assert_eq!(visual.len(), 4);
    assert!(visual
        .iter()
        .all(|c| c.rules.is_none() && c.compat.is_none() && c.kernel.is_none()));
    let rules_only = eng
        .complete_with(&given, &cands, vitrine::CompleteMethod::Rules)
        .unwrap();
    assert_eq!(rules_only.len(), 4);
    assert!(rules_only
        .iter()
        .all(|c| c.rules.is_some() && c.kernel.is_none()));
    assert!(matches!(
        db.complete(&given, &["nope"]),
        Err(OutfitError::UnknownProduct { .. })
    ));
}

/// The templates a cover plan skipped, with the product that stopped each.
fn skipped(plan: &vitrine::CoverPlan) -> Vec<(String, String)> {
    plan.skipped
        .iter()
        .map(|s| (s.outfit.clone(), s.product.clone()))
        .collect()
}

/// A small separate database (12 products) for the reopen and kill tests.
fn small_db(dir: &Path) -> Option<(Subset, std::sync::Arc<Model>)> {
    if !have_mango() {
        return None;
    }
    let subset = Subset::take(2);
    let model = Model::bundled().unwrap();
    let db = Db::builder().open_with_model(dir, &model).unwrap();
    import(&db, &model, subset.items());
    Some((subset, model))
}

/// Opens the database of [`small_db`] and stores the subset's outfits.
fn open_with_outfits(dir: &Path, model: &Model, subset: &Subset) -> Db {
    let db = Db::builder().open_with_model(dir, model).unwrap();
    for (id, ps) in &subset.outfits {
        db.store_outfit(id, ps).unwrap();
    }
    db
}

/// Learned rules that do not decode (damaged, or a newer build's) are
/// none, as rules never learned: they stop no outfit operation, and
/// learning writes them again. An outfit that does not decode is left out
/// of the list (and of what is learned from it), not an error of them all.
#[test]
fn unreadable_rules_or_outfits_stop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let ids: Vec<String> = subset.outfits.keys().cloned().collect();
    {
        let db = open_with_outfits(dir.path(), &model, &subset);
        db.learn_outfit_rules().unwrap();
    }
    {
        let store =
            vitrine_storage::Store::open(dir.path(), vitrine_storage::StoreOptions::default())
                .unwrap();
        // Of the current record versions (an older one is learned again
        // as such), their payloads damaged.
        for (tree, key, bytes) in [
            (
                "vitrine.outfit_rules",
                &b"rules"[..],
                &b"\x04\xff\xff damaged"[..],
            ),
            (
                "vitrine.outfits",
                ids[1].as_bytes(),
                b"\x01\xff\xff damaged",
            ),
        ] {
            let ks: vitrine_storage::Keyspace<Raw> = store.keyspace(tree).unwrap();
            assert!(ks.contains(key).unwrap(), "{tree}");
            ks.put_raw(key, bytes).unwrap();
        }
        store.flush().unwrap();
    }
    let db = Db::builder().open_with_model(dir.path(), &model).unwrap();
    assert_eq!(db.outfit_rules().unwrap(), None);
    let listed: Vec<String> = db.outfits().unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(listed, [ids[0].clone()]);
    assert_eq!(db.outfit_count().unwrap(), 2);
    db.substitute(&ids[0], 3).unwrap();
    let rules = db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules().unwrap(), Some(rules));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Raw(Vec<u8>);

impl vitrine_storage::Record for Raw {
    const VERSION: u8 = 0;
}

#[test]
fn outfits_and_rules_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let settings = OutfitSettings::new().colour_attribute("des_agrup_color_eng");
    let (outfits, rules) = {
        let db = Db::builder().open_with_model(dir.path(), &model).unwrap();
        for (id, ps) in &subset.outfits {
            db.store_outfit(id, ps).unwrap();
        }
        db.set_outfit_settings(&settings).unwrap();
        let rules = db.learn_outfit_rules().unwrap();
        (db.outfits().unwrap(), rules)
    };
    let db = Db::builder().open_with_model(dir.path(), &model).unwrap();
    assert_eq!(db.outfits().unwrap(), outfits);
    assert_eq!(db.outfit_rules().unwrap().unwrap(), rules);
    assert_eq!(db.outfit_settings().unwrap(), settings);
}

#[test]
fn rules_learned_under_another_model_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let rules = db.learn_outfit_rules().unwrap();
    assert_eq!(rules.model.as_deref(), Some(model.fingerprint()));
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    // The same weights with one category renamed: another model, of the
    // same concept dimension.
    let dir_m = Model::bundled_dir();
    let onnx = std::fs::read(dir_m.join(vitrine::BUNDLED_ONNX)).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir_m.join(vitrine::MANIFEST_FILE)).unwrap())
            .unwrap();
    let c0 = m["taxonomy"]["categories"][0].as_str().unwrap().to_string();
    m["taxonomy"]["categories"][0] = serde_json::Value::String(format!("{c0} (renamed)"));
    let other = std::sync::Arc::new(Model::from_bytes(&onnx, m.to_string().as_bytes()).unwrap());
    db.adopt_model(&other).unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(false));
    assert!(db.outfit_engine().unwrap().outfit_rules().is_none());
    let (a, b) = {
        let o = subset.outfits.values().next().unwrap();
        (o[0].clone(), o[1].clone())
    };
    // Products a re-embedding has not reached are in another space: no
    // outfit operation reads them.
    // Not the caller's error: the re-embedding is not finished.
    assert!(matches!(
        db.complete(&[a.as_str()], &[b.as_str()]),
        Err(ref e @ OutfitError::OfAnotherModel(ref p)) if *p == a && !e.is_user_error()
    ));
    // A cover plans the templates it can and lists the others.
    let templates: Vec<&str> = subset.outfits.keys().map(String::as_str).collect();
    let plan = db.cover(&templates, &CoverOptions::new()).unwrap();
    assert!(plan.outfits.is_empty());
    assert_eq!(plan.skipped.len(), templates.len(), "{:?}", plan.skipped);
    let r = db
        .import(
            ImportSource::Items(subset.items()),
            ImportOptions::new()
                .model(other.clone())
                .prep(PrepConfig::catalog())
                .reembed(true),
        )
        .unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    // Methods that need the rules say they are stale, not missing.
    // Not the client's to fix: the operator learns them again.
    assert!(matches!(
        db.complete(&[a.as_str()], &[b.as_str()]),
        Err(ref e @ OutfitError::StaleRules) if !e.is_user_error()
    ));
    db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    assert!(db.outfit_engine().unwrap().outfit_rules().is_some());
}

/// The rules remember what they read of the outfits' products: another
/// category, another image or a deletion makes them stale, as a changed
/// outfit does, until they are learned again.
#[test]
fn rules_are_stale_when_a_product_of_an_outfit_changes() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let learned = db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    let outfit = subset.outfits.values().next().unwrap();
    let (p, q) = (outfit[0].as_str(), outfit[1].as_str());
    // A stock change is no change to what the rules learned from.
    db.update_attributes(p, |a| a.in_stock = false).unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));

    db.update_attributes(p, |a| a.category = Some("renamed".into()))
        .unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(false));
    db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));

    // Another image: q's vectors (and attributes) under p's id.
    let mut other = db.get(q).unwrap().unwrap();
    other.attributes.category = Some("renamed".into());
    db.upsert(p, other.attributes, other.vectors).unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(false));
    let relearned = db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    assert_ne!(relearned, learned);

    assert!(db.delete(p).unwrap());
    assert_eq!(db.outfit_rules_current().unwrap(), Some(false));
    db.learn_outfit_rules().unwrap();
    assert_eq!(db.outfit_rules_current().unwrap(), Some(true));
    // The category only the deleted product had is empty now (what `outfit
    // substitute` says of a slot keeping it), another is not.
    let eng = db.outfit_engine().unwrap();
    assert_eq!(eng.category_size("renamed"), 0);
    let q_category = db.get(q).unwrap().unwrap().attributes.category.unwrap();
    assert!(eng.category_size(&q_category) > 0);
}

#[test]
fn a_deleted_product_leaves_the_other_templates_plannable() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let ids: Vec<&String> = subset.outfits.keys().collect();
    let (broken, gone) = (ids[0], &subset.outfits[ids[0]][0]);
    assert!(!subset.outfits[ids[1]].contains(gone));
    assert!(db.delete(gone).unwrap());
    // An anchor slot of the other template that other products can take
    // (in 12 products, its first slot's category holds only its own).
    let options = (0..subset.outfits[ids[0]]
        .len()
        .min(subset.outfits[ids[1]].len()))
        .map(|a| {
            CoverOptions::new()
                .outfits_per_template(2)
                .expand(ExpandOptions::new().anchor_slot(a))
        })
        .find(|o| !db.cover(&ids[1..], o).unwrap().outfits.is_empty())
        .expect("an anchor slot of the other template that can be replaced");
    let plan = db.cover(&ids, &options).unwrap();
    assert_eq!(skipped(&plan), vec![(broken.clone(), gone.clone())]);
    // The same plan as the other template's alone.
    let alone = db.cover(&ids[1..], &options).unwrap();
    assert!(alone.skipped.is_empty());
    assert!(!plan.outfits.is_empty());
    assert_eq!(plan.outfits, alone.outfits);
    // An anchor slot past the broken template's last is the caller's
    // mistake, said as for any template, not hidden by the skip.
    let far = CoverOptions::new().expand(ExpandOptions::new().anchor_slot(64));
    match db.cover(&ids, &far) {
        Err(OutfitError::InvalidArgument(m)) => assert!(m.contains(broken.as_str()), "{m}"),
        other => panic!("{other:?}"),
    }
    // Expanding the broken template says which product is missing...
    match db.expand(broken, 2, &ExpandOptions::new()) {
        Err(OutfitError::UnknownProduct { product, .. }) => assert_eq!(&product, gone),
        other => panic!("{other:?}"),
    }
    // ...and substitutes for it come from the category its slot stored.
    let slot_category = db.outfit(broken).unwrap().unwrap().slots[0]
        .category
        .clone();
    let subs = db.substitute(broken, 50).unwrap();
    let gone_slot = subs
        .iter()
        .find(|s| s.slot == 0)
        .expect("a substitution for slot 0");
    assert_eq!(&gone_slot.original, gone);
    assert_eq!(gone_slot.category, slot_category);
    let eng = db.outfit_engine().unwrap();
    // Too many outfits at once, or a partial outfit naming a product twice
    // or too many, is the caller's error.
    let big = vitrine::MAX_EXPANSIONS + 1;
    assert!(matches!(
        db.expand(ids[1], big, &ExpandOptions::new()),
        Err(OutfitError::InvalidArgument(ref m)) if m.contains(&big.to_string())
    ));
    assert!(matches!(
        db.cover(&ids[1..], &CoverOptions::new().outfits_per_template(big)),
        Err(OutfitError::InvalidArgument(_))
    ));
    // So is a diversity outside 0..=1, as a query's `diverse` is.
    for d in [f32::NAN, 1.5, -0.1] {
        assert!(matches!(
            db.expand(ids[1], 2, &ExpandOptions::new().diversity(d)),
            Err(OutfitError::InvalidArgument(ref m)) if m.contains("diversity")
        ));
    }
    let (a, b) = (
        subset.outfits[ids[1]][0].as_str(),
        subset.outfits[ids[1]][1].as_str(),
    );
    assert!(matches!(
        eng.complete(&[a, b, a], &[gone_slot.candidates[0].product.as_str()]),
        Err(OutfitError::DuplicateProduct { ref product, .. }) if product == a
    ));
    assert!(matches!(
        eng.complete(&vec![a; vitrine::MAX_OUTFIT_SLOTS], &[b]),
        Err(OutfitError::TooManySlots { slots, .. }) if slots == vitrine::MAX_OUTFIT_SLOTS + 1
    ));
    let in_category: Vec<String> = db
        .ids()
        .into_iter()
        .filter(|id| {
            eng.in_stock(id) == Some(true)
                && db.get(id).unwrap().unwrap().attributes.category == slot_category
                && !subset.outfits[broken].contains(id)
        })
        .collect();
    let mut got: Vec<String> = gone_slot
        .candidates
        .iter()
        .map(|c| c.product.clone())
        .collect();
    got.sort();
    let mut want = in_category.clone();
    want.sort();
    assert!(
        !want.is_empty(),
        "the subset has another product of that category"
    );
    assert_eq!(got, want, "every in-stock product of the category, ranked");

    // A product stored with model outputs after the engine read the
    // catalog is named as such, not as one without outputs; an empty
    // partial outfit is refused.
    let source = db.get(&want[0]).unwrap().unwrap();
    db.insert("late", Attributes::new(), source.vectors.clone())
        .unwrap();
    assert!(matches!(
        eng.complete(&["late"], &[want[0].as_str()]),
        Err(ref e @ OutfitError::NotInSnapshot(ref p)) if p == "late" && !e.is_user_error()
    ));
    assert!(matches!(
        eng.complete(&[] as &[&str], &[want[0].as_str()]),
        Err(OutfitError::InvalidArgument(_))
    ));
    // An anchor without a category has nothing to replace it: cover skips
    // its template and says so.
    db.store_outfit("no-category", &["late", want[0].as_str()])
        .unwrap();
    let plan = db
        .cover(
            &["no-category"],
            &CoverOptions::new().outfits_per_template(2),
        )
        .unwrap();
    assert_eq!(
        skipped(&plan),
        vec![("no-category".to_string(), "late".to_string())]
    );
    assert!(plan.outfits.is_empty());
    match db.expand("no-category", 2, &ExpandOptions::new()) {
        Err(
            e @ OutfitError::UnfillableSlot {
                slot: 0,
                anchor: true,
                category: None,
                ..
            },
        ) => {
            assert_eq!(plan.skipped[0].reason, e.to_string());
            assert!(e.to_string().contains("has no category"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(db.delete_outfit("no-category").unwrap());
    assert!(db.delete("late").unwrap());

    // A product of the other template stored again without model outputs:
    // that template is skipped too, and substitute says why.
    let other = ids[1];
    let plain = &subset.outfits[other][0];
    let v = db.get(plain).unwrap().unwrap().vectors[vitrine::EMBEDDING_SPACE].clone();
    db.upsert(plain, Attributes::new(), [(vitrine::EMBEDDING_SPACE, v)])
        .unwrap();
    let plan = db
        .cover(&ids[..2], &CoverOptions::new().outfits_per_template(2))
        .unwrap();
    assert_eq!(plan.skipped.len(), 2, "{:?}", plan.skipped);
    assert!(skipped(&plan).contains(&(other.clone(), plain.clone())));
    assert!(matches!(
        db.substitute(other, 3),
        Err(OutfitError::NotAnImageProduct(p)) if &p == plain
    ));
}

const CHILD_ENV: &str = "VITRINE_OUTFITS_KILL_CHILD";

#[test]
fn outfits_and_rules_survive_a_kill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // Child: store outfits, learn, say so, and wait to be killed.
        let model = Model::bundled().unwrap();
        let db = Db::builder().open_with_model(&dir, &model).unwrap();
        let subset = Subset::take(2);
        for (id, ps) in &subset.outfits {
            db.store_outfit(id, ps).unwrap();
        }
        let rules = db.learn_outfit_rules().unwrap();
        println!("READY {} {}", db.outfit_count().unwrap(), rules.pairs);
        std::thread::sleep(Duration::from_secs(300));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "outfits_and_rules_survive_a_kill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print "test name ... " on the same line first.
        if let Some(at) = line.find("READY ") {
            ready = Some(line[at + 6..].trim().to_string());
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let ready = ready.expect("the child reported READY");
    let db = Db::builder().open_with_model(dir.path(), &model).unwrap();
    assert_eq!(db.outfit_count().unwrap(), subset.outfits.len());
    let rules = db.outfit_rules().unwrap().expect("rules survive the kill");
    assert_eq!(ready, format!("{} {}", subset.outfits.len(), rules.pairs));
    for (id, ps) in &subset.outfits {
        assert_eq!(&db.outfit(id).unwrap().unwrap().products(), ps);
    }
}

fn vitrine(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vitrine {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `eval fitb-split` writes its three files together: a run that fails
/// leaves the set the folder held (it overwrote the outfit files, then
/// failed on the questions, leaving questions of another split beside
/// them).
#[test]
fn fitb_split_replaces_its_three_files_together() {
    if !have_mango() {
        return;
    }
    let subset = Subset::take(60);
    let dir = tempfile::tempdir().unwrap();
    let (products, outfits) = subset.write(dir.path());
    let split = |seed: &str, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["eval", "fitb-split", "--products"])
            .arg(&products)
            .arg("--outfits")
            .arg(&outfits)
            .arg("--out-dir")
            .arg(out)
            .args(["--seed", seed])
            .output()
            .unwrap()
    };
    let names = ["learn-outfits.csv", "test-outfits.csv", "questions.jsonl"];
    let read = |out: &Path| -> Vec<String> {
        names
            .iter()
            .map(|n| std::fs::read_to_string(out.join(n)).unwrap_or_default())
            .collect()
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(split("1", &a).status.success());
    assert!(split("2", &b).status.success());
    let (one, two) = (read(&a), read(&b));
    assert!(one.iter().all(|t| !t.is_empty()), "{one:?}");
    assert_ne!(
        one[0], two[0],
        "the seeds split alike: nothing to tell apart"
    );
    // Seed 2 into seed 1's folder, whose questions file cannot be replaced.
    std::fs::remove_file(a.join(names[2])).unwrap();
    std::fs::create_dir(a.join(names[2])).unwrap();
    std::fs::write(a.join(names[2]).join("x"), "x").unwrap();
    let out = split("2", &a);
    assert!(!out.status.success());
    assert!(read(&a)[..2] == one[..2], "the outfit files were replaced");
    // No temporary file is left.
    let left: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Then it replaces all three.
    std::fs::remove_dir_all(a.join(names[2])).unwrap();
    assert!(split("2", &a).status.success());
    assert!(read(&a) == two, "not seed 2's files");
}

#[test]
fn cli_outfit_commands_and_eval_fitb() {
    if !have_mango() {
        return;
    }
    let subset = Subset::take(3);
    let dir = tempfile::tempdir().unwrap();
    let (products, outfits) = subset.write(dir.path());
    let db = dir.path().join("db");
    let d = db.to_str().unwrap();
    // Products in through the generic importer (id,path,category,colour group).
    let csv = dir.path().join("import.csv");
    let (file, fam) = (subset.col("des_filename"), subset.col("des_product_family"));
    let group = subset.col("des_agrup_color_eng");
    let mut s = String::from("id,path,category,des_agrup_color_eng\n");
    for r in &subset.rows {
        // Quoted where needed: some family names hold a comma.
        s += &join(&[
            r[0].clone(),
            mango_dir().join(&r[file]).display().to_string(),
            r[fam].clone(),
            r[group].clone(),
        ]);
        s += "\n";
    }
    std::fs::write(&csv, s).unwrap();
    vitrine(&["import", csv.to_str().unwrap(), "--db", d]);

    let learned = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "outfit",
            "--db",
            d,
            "import",
            outfits.to_str().unwrap(),
            "--learn",
        ])
        .output()
        .unwrap();
    assert!(learned.status.success());
    let out = String::from_utf8_lossy(&learned.stdout);
    assert!(out.contains("imported 3 outfits"), "{out}");
    // The catalog's colour groups are there: the engine says how to use them.
    let hint = String::from_utf8_lossy(&learned.stderr);
    assert!(
        hint.contains("--colour-attribute des_agrup_color_eng"),
        "{hint}"
    );
    let out = vitrine(&["outfit", "--db", d, "list"]);
    assert!(out.starts_with("3 outfits"), "{out}");
    let (id, ps) = subset.outfits.iter().next().unwrap();
    let sheet = dir.path().join("sheet.png");
    let out = vitrine(&[
        "outfit",
        "--db",
        d,
        "show",
        id,
        "--sheet",
        sheet.to_str().unwrap(),
        "--images",
        products.to_str().unwrap(),
    ]);
    assert!(out.contains(&ps[0]), "{out}");
    assert!(image::open(&sheet).unwrap().width() > 100);
    // Without --images, the files the products were imported from.
    std::fs::remove_file(&sheet).unwrap();
    vitrine(&[
        "outfit",
        "--db",
        d,
        "show",
        id,
        "--sheet",
        sheet.to_str().unwrap(),
    ]);
    assert!(image::open(&sheet).unwrap().width() > 100);
    let out = vitrine(&[
        "outfit",
        "--db",
        d,
        "rules",
        "--top",
        "5",
        "--min-support",
        "1",
    ]);
    assert!(out.contains("lift"), "{out}");
    let out = vitrine(&["outfit", "--db", d, "settings"]);
    assert!(out.contains("measured on the pixels"), "{out}");
    let attr = "des_agrup_color_eng";
    vitrine(&["outfit", "--db", d, "settings", "--colour-attribute", attr]);
    let out = vitrine(&["outfit", "--db", d, "--json", "settings"]);
    assert!(out.contains(attr), "{out}");
    vitrine(&["outfit", "--db", d, "settings", "--measured-colour"]);
    let out = vitrine(&["outfit", "--db", d, "settings"]);
    assert!(out.contains("measured on the pixels"), "{out}");
    let out = vitrine(&[
        "outfit",
        "--db",
        d,
        "--json",
        "substitute",
        id,
        "--sold-out",
        &ps[0],
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["original"], ps[0].as_str());
    let out = vitrine(&["outfit", "--db", d, "--json", "expand", id, "-n", "2"]);
    // One JSON value per line, as the REPL's JSON mode promises.
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!v.as_array().unwrap().is_empty());
    // No outfits asked for is a usage error, as for substitute and cover.
    let zero = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["outfit", "--db", d, "expand", id, "-n", "0"])
        .output()
        .unwrap();
    assert_eq!(zero.status.code(), Some(2));
    let out = vitrine(&["outfit", "--db", d, "cover", "--per-template", "2"]);
    assert!(out.contains("in-stock products"), "{out}");
    let given = ps[1..].join(",");
    let cands = format!("{},{}", ps[0], subset.outfits.values().nth(1).unwrap()[0]);
    let out = vitrine(&[
        "outfit",
        "--db",
        d,
        "complete",
        "--given",
        &given,
        "--candidates",
        &cands,
    ]);
    assert!(out.starts_with("score: "), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("1. "), "{out}");
    // Or every in-stock product of a category, best first.
    let category = {
        let db = vitrine::Db::open(d).unwrap();
        db.get(&ps[0])
            .unwrap()
            .unwrap()
            .attributes
            .category
            .unwrap()
    };
    let out = vitrine(&[
        "outfit",
        "--db",
        d,
        "--json",
        "complete",
        "--given",
        &given,
        "--category",
        &category,
        "--limit",
        "3",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ranked = v.as_array().unwrap();
    assert!(!ranked.is_empty() && ranked.len() <= 3, "{out}");
    assert!(ranked
        .windows(2)
        .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    // A category in another case is not one, but the error names it.
    let lower = category.to_lowercase();
    assert_ne!(lower, category);
    let miss = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "outfit",
            "--db",
            d,
            "complete",
            "--given",
            &given,
            "--category",
            &lower,
        ])
        .output()
        .unwrap();
    assert_eq!(miss.status.code(), Some(1));
    let said = String::from_utf8_lossy(&miss.stderr);
    assert!(
        said.contains(&format!("did you mean '{category}'")),
        "{said}"
    );
    // Nothing left to rank is an error, not an empty answer.
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["outfit", "--db", d, "complete", "--given", &given])
        .args(["--candidates", &ps[1]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("nothing to rank"), "{said}");
    let rules: serde_json::Value =
        serde_json::from_str(&vitrine(&["outfit", "--db", d, "--json", "rules"])).unwrap();
    assert_eq!(rules["stale"], false, "{rules}");
    // As `tag delete` does, JSON names what was deleted.
    let out = vitrine(&["outfit", "--db", d, "--json", "delete", id]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deleted"], *id, "{out}");
    // Deleting it again is an error; the rules are now stale, and the
    // commands that use them say so.
    let again = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["outfit", "--db", d, "delete", id])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let rules = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["outfit", "--db", d, "rules"])
        .output()
        .unwrap();
    assert!(rules.status.success());
    assert!(
        String::from_utf8_lossy(&rules.stderr).contains("stale"),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );
    // Deleting a product that an outfit names says which outfit.
    let (other, members) = subset.outfits.iter().nth(1).unwrap();
    let deleted = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["product", "--db", d, "delete", &members[0]])
        .output()
        .unwrap();
    assert!(deleted.status.success());
    let warned = String::from_utf8_lossy(&deleted.stderr);
    assert!(
        warned.contains(&format!(
            "outfit {other} names deleted product(s) {}",
            members[0]
        )),
        "{warned}"
    );

    // Listing outfits needs no model: without the bundled one the database
    // opens as it is.
    let listed = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["outfit", "--db", d, "list"])
        .env(vitrine::MODEL_DIR_ENV, dir.path().join("no-model"))
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // eval fitb on a fresh database: one question per outfit.
    let q = dir.path().join("q.jsonl");
    let mut s = String::new();
    let all: Vec<&String> = subset.outfits.values().flatten().collect();
    for ps in subset.outfits.values() {
        let mut cands = vec![ps[0].clone()];
        cands.extend(
            all.iter()
                .filter(|p| !ps.contains(p))
                .take(3)
                .map(|p| p.to_string()),
        );
        s += &serde_json::json!({"given": ps[1..], "candidates": cands, "answer": ps[0], "extra": 1})
            .to_string();
        s += "\n";
    }
    std::fs::write(&q, s).unwrap();
    let fitb = |questions: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["eval", "fitb", "--products"])
            .arg(&products)
            .arg("--outfits")
            .arg(&outfits)
            .arg("--questions")
            .arg(questions)
            .arg("--json")
            .output()
            .unwrap()
    };
    let out = fitb(&q);
    assert!(out.status.success());
    // These answers are in the learning outfits: said, the JSON unchanged.
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("3 of 3 answers are in the learning outfits"),
        "{warned}"
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["n"], 3);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v.as_object().unwrap().len(), 2);
    // Questions about products P does not hold: no figure, an error (a
    // 0 % would read as measured).
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(
        &unknown,
        "{\"given\": [\"nope-1\"], \"candidates\": [\"nope-2\", \"nope-3\"], \"answer\": \"nope-2\"}\n",
    )
    .unwrap();
    let out = fitb(&unknown);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("none of the 1 questions"), "{said}");
    assert!(out.stdout.is_empty());

    // A twin of the answer (the same photo, its path relative to the
    // products file) ties with it under every method: the tie is shared
    // (1/2), not won by whichever candidate is listed first.
    let twin_dir = dir.path().join("twin");
    std::fs::create_dir(&twin_dir).unwrap();
    let (ps, first) = {
        let ps = subset.outfits.values().next().unwrap();
        (
            ps.clone(),
            subset.rows.iter().find(|r| r[0] == ps[0]).unwrap().clone(),
        )
    };
    std::fs::copy(mango_dir().join(&first[file]), twin_dir.join("twin.jpg")).unwrap();
    let mut twin = first.clone();
    twin[0] = "twin".into();
    twin[file] = "twin.jpg".into();
    let mut rows = std::fs::read_to_string(&products).unwrap();
    rows += &(join(&twin) + "\n");
    let twin_products = twin_dir.join("products.csv");
    std::fs::write(&twin_products, rows).unwrap();
    let tq = twin_dir.join("q.jsonl");
    let question =
        serde_json::json!({"given": ps[1..], "candidates": [ps[0], "twin"], "answer": ps[0]});
    std::fs::write(&tq, format!("{question}\n")).unwrap();
    // `how`: `--method M`, or `--all-methods`.
    let fitb_with = |questions: &Path, how: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "eval",
            "fitb",
            "--products",
            twin_products.to_str().unwrap(),
            "--outfits",
            outfits.to_str().unwrap(),
            "--questions",
            questions.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(how);
        serde_json::from_str(vitrine(&args).trim()).unwrap()
    };
    for method in ["full", "rules", "visual"] {
        let v = fitb_with(&tq, &["--method", method]);
        assert_eq!(v["n"], 1, "{method}");
        assert_eq!(v["accuracy"].as_f64(), Some(0.5), "{method}");
    }
    // --all-methods names each row by the --method value that gives it.
    let rows = fitb_with(&tq, &["--all-methods"]);
    let methods: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["random", "visual", "rules", "compat", "kernel", "learned", "full"]
    );
    for row in rows.as_array().unwrap() {
        if ["full", "rules", "visual"].contains(&row["method"].as_str().unwrap()) {
            assert_eq!(row["accuracy"].as_f64(), Some(0.5), "{row}");
        }
    }
    // The random baseline draws from the candidates the methods rank:
    // given items and repeats among them are no candidates (it drew one
    // of 5 or more here, where the methods chose among 1).
    let given_too = twin_dir.join("given_too.jsonl");
    let mut cands: Vec<&String> = ps[1..].iter().chain(&ps[1..]).collect();
    cands.push(&ps[0]);
    let question = serde_json::json!({"given": ps[1..], "candidates": cands, "answer": ps[0]});
    std::fs::write(&given_too, format!("{question}\n").repeat(4)).unwrap();
    let v = fitb_with(&given_too, &["--method", "random"]);
    assert_eq!(v["accuracy"].as_f64(), Some(1.0), "{v}");
    // A cover budget out of range is refused before any work.
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["eval", "outfits", "--products"])
        .arg(&products)
        .arg("--outfits")
        .arg(&outfits)
        .args(["--cover-per-template", "10,0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("a count from 1 to 10000"), "{said}");
    // One-item outfits: a plan of them keeps no relations, and says
    // null ("n/a"), not a measured 0 %.
    let single_dir = dir.path().join("single");
    std::fs::create_dir(&single_dir).unwrap();
    let singles = single_dir.join("outfits.csv");
    let mut text = String::from("cod_outfit,cod_modelo_color\n");
    for (id, ps) in &subset.outfits {
        text += &format!("{id},{}\n", ps[0]);
    }
    std::fs::write(&singles, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["eval", "outfits", "--products"])
        .arg(&products)
        .arg("--outfits")
        .arg(&singles)
        .arg("--db")
        .arg(single_dir.join("db"))
        .args(["--cover-per-template", "1", "--json"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cover = &v["cover"][0];
    assert!(cover["templates"].as_u64() > Some(0), "{v}");
    assert!(cover["relations_kept_pct"].is_null(), "{v}");

    // A product whose image is missing: its outfit is left out (said), and
    // the run goes on with the others (it stopped, after the whole import,
    // at the outfit naming it).
    let (gone_outfit, gone) = subset
        .outfits
        .iter()
        .rev()
        .find_map(|(o, ps)| {
            ps.iter()
                .find(|p| subset.outfits.values().filter(|x| x.contains(p)).count() == 1)
                .map(|p| (o.clone(), p.clone()))
        })
        .unwrap();
    let gone_dir = dir.path().join("gone");
    std::fs::create_dir(&gone_dir).unwrap();
    let rows: String = std::fs::read_to_string(&products)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = records(l).remove(0);
            if f[0] == gone {
                f[file] = "missing.jpg".into();
            }
            join(&f) + "\n"
        })
        .collect();
    let gone_products = gone_dir.join("products.csv");
    std::fs::write(&gone_products, rows).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["eval", "fitb", "--products"])
        .arg(&gone_products)
        .arg("--outfits")
        .arg(&outfits)
        .arg("--questions")
        .arg(&q)
        .arg("--json")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "left out 1 outfits naming products not in the database (first: outfit {gone_outfit} names {gone})"
        )),
        "{said}"
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    // The question naming the missing product is skipped.
    assert_eq!(v["n"], 2, "{said}");
    // The file is still checked as it is: one without its header is
    // refused, not imported without its first row.
    let headerless = gone_dir.join("headerless.csv");
    let text = std::fs::read_to_string(&outfits).unwrap();
    std::fs::write(&headerless, text.split_once('\n').unwrap().1).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["eval", "fitb", "--products"])
        .arg(&gone_products)
        .arg("--outfits")
        .arg(&headerless)
        .arg("--questions")
        .arg(&q)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("the first line must be a header"), "{said}");
}

/// Rules learned from the same products and outfits are the same whatever
/// order the products were stored in (categories were numbered in that
/// order, and ties among rules broken by it).
#[test]
fn rules_do_not_depend_on_the_order_products_were_stored_in() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let learned = db.learn_outfit_rules().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = Db::builder()
        .open_with_model(other_dir.path(), &model)
        .unwrap();
    for id in db.ids().iter().rev() {
        let p = db.get(id).unwrap().unwrap();
        other.upsert(id, p.attributes, p.vectors).unwrap();
    }
    for (id, ps) in &subset.outfits {
        other.store_outfit(id, ps).unwrap();
    }
    let relearned = other.learn_outfit_rules().unwrap();
    assert_eq!(relearned.categories, learned.categories);
    assert_eq!(relearned.top(100, 1), learned.top(100, 1));
    assert_eq!(relearned, learned);
}

/// Products with byte-identical images (35 groups in Mango) score the same
/// everywhere. Which comes first is decided by product id, so two
/// databases that stored the same products in other orders substitute,
/// expand and cover alike.
#[test]
fn ties_are_broken_by_product_id_not_by_storage_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let source = open_with_outfits(dir.path(), &model, &subset);
    let template = subset.outfits.keys().next().unwrap();
    let items = &subset.outfits[template];
    let twins: Vec<String> = ["b", "a", "c"]
        .iter()
        .flat_map(|t| [format!("twin-{t}-0"), format!("twin-{t}-1")])
        .collect();
    let plan = |twins: Vec<&String>| {
        let d = tempfile::tempdir().unwrap();
        let db = Db::builder().open_with_model(d.path(), &model).unwrap();
        let mut order = source.ids();
        order.extend(twins.iter().map(|t| t.to_string()));
        for id in order {
            // A twin is a copy of the template's first or second item.
            let of = id
                .strip_prefix("twin-")
                .map_or(id.as_str(), |t| &items[usize::from(t.ends_with('1'))]);
            let p = source.get(of).unwrap().unwrap();
            db.upsert(&id, p.attributes, p.vectors).unwrap();
        }
        for (id, ps) in &subset.outfits {
            db.store_outfit(id, ps).unwrap();
        }
        db.set_in_stock(&items[0], false).unwrap();
        let subs = db.substitute(template, 4).unwrap();
        let expanded = db.expand(template, 3, &ExpandOptions::new()).unwrap();
        let ids: Vec<&String> = subset.outfits.keys().collect();
        let covered = db
            .cover(&ids, &CoverOptions::new().outfits_per_template(3))
            .unwrap();
        (subs, expanded, covered.outfits)
    };
    let forward = plan(twins.iter().collect());
    let backward = plan(twins.iter().rev().collect());
    // The sold-out item's twins look exactly like it: the first comes
    // first, by id.
    let first = forward.0.iter().find(|s| s.slot == 0).unwrap();
    assert_eq!(first.candidates[0].product, "twin-a-0", "{first:?}");
    assert_eq!(first.candidates[1].product, "twin-b-0", "{first:?}");
    assert_eq!(forward.0, backward.0);
    assert_eq!(forward.1, backward.1);
    assert_eq!(forward.2, backward.2);
}

/// A sold-out product whose category was cleared since is replaced from
/// the category its slot stored, as a deleted product is: before, it had
/// no candidates, which read as nothing of its kind being in stock.
#[test]
fn a_product_whose_category_was_cleared_is_replaced_from_its_slots_category() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let template = subset.outfits.keys().next().unwrap();
    let item = &subset.outfits[template][0];
    let stored = db.outfit(template).unwrap().unwrap().slots[0]
        .category
        .clone();
    assert!(stored.is_some());
    let p = db.get(item).unwrap().unwrap();
    let mut attributes = p.attributes;
    attributes.category = None;
    attributes.in_stock = false;
    db.upsert(item, attributes, p.vectors).unwrap();
    let subs = db.substitute(template, 5).unwrap();
    let s = subs.iter().find(|s| s.slot == 0).unwrap();
    assert_eq!(s.category, stored);
    assert!(!s.candidates.is_empty(), "{s:?}");
    for c in &s.candidates {
        let a = db.get(&c.product).unwrap().unwrap().attributes;
        assert_eq!(a.category, stored, "{}", c.product);
        assert!(a.in_stock);
    }
    // Stored again (a routine re-import), the slot keeps its category.
    db.store_outfit(template, &subset.outfits[template])
        .unwrap();
    let again = db.outfit(template).unwrap().unwrap();
    assert_eq!(again.slots[0].category, stored);
    assert_eq!(
        db.substitute(template, 5).unwrap()[0].candidates,
        s.candidates
    );
    // Expansions replace it (the anchor) from that category too.
    let made = db.expand(template, 2, &ExpandOptions::new()).unwrap();
    assert!(!made.is_empty());
    for e in &made {
        let a = db.get(&e.products[0]).unwrap().unwrap().attributes;
        assert_eq!(a.category, stored, "{e:?}");
    }
    // A product in stock whose category was cleared can still fill its own
    // slot when nothing else of the stored category is in stock.
    let second = &subset.outfits[template][1];
    let its = db.outfit(template).unwrap().unwrap().slots[1]
        .category
        .clone();
    for id in db.ids() {
        let a = db.get(&id).unwrap().unwrap().attributes;
        if a.category == its && &id != second {
            db.set_in_stock(&id, false).unwrap();
        }
    }
    let p = db.get(second).unwrap().unwrap();
    let mut attributes = p.attributes;
    attributes.category = None;
    db.upsert(second, attributes, p.vectors).unwrap();
    let made = db.expand(template, 2, &ExpandOptions::new()).unwrap();
    assert!(!made.is_empty());
    assert!(made.iter().all(|e| &e.products[1] == second), "{made:?}");
}

/// A template one of whose categories is sold out makes no outfit: expand
/// says which slot and category, and cover lists the template as skipped
/// with that reason. Before, both made no outfit and said nothing.
#[test]
fn a_sold_out_category_names_the_slot_it_leaves_empty() {
    let dir = tempfile::tempdir().unwrap();
    let Some((subset, model)) = small_db(dir.path()) else {
        return;
    };
    let db = open_with_outfits(dir.path(), &model, &subset);
    let ids: Vec<&String> = subset.outfits.keys().collect();
    let template = ids[0];
    let o = db.outfit(template).unwrap().unwrap();
    let category = o.slots[1].category.clone().unwrap();
    let mut sold = 0;
    for id in db.ids() {
        if db.get(&id).unwrap().unwrap().attributes.category.as_deref() == Some(&category) {
            db.set_in_stock(&id, false).unwrap();
            sold += 1;
        }
    }
    assert!(sold > 0);
    let e = db.expand(template, 3, &ExpandOptions::new()).unwrap_err();
    match &e {
        OutfitError::UnfillableSlot {
            outfit,
            slot,
            product,
            category: c,
            anchor: false,
            in_stock: 0,
            ..
        } => {
            assert_eq!((outfit, *slot), (template, 1));
            assert_eq!(product, &o.slots[1].product);
            assert_eq!(c.as_deref(), Some(category.as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_user_error());
    assert!(e.to_string().contains(&category), "{e}");
    let plan = db
        .cover(&ids, &CoverOptions::new().outfits_per_template(2))
        .unwrap();
    let left_out: Vec<_> = plan
        .skipped
        .iter()
        .filter(|s| &s.outfit == template)
        .collect();
    assert_eq!(left_out.len(), 1, "{:?}", plan.skipped);
    assert_eq!(left_out[0].reason, e.to_string());
    assert!(plan.outfits.iter().all(|x| &x.template != template));

    // Two slots of one category with one product of it in stock: the
    // second has nothing left (an outfit repeats no product).
    let source = db.get(&o.slots[1].product).unwrap().unwrap();
    db.upsert("twin", source.attributes.clone(), source.vectors.clone())
        .unwrap();
    db.set_in_stock("twin", true).unwrap();
    let pair = [o.slots[0].product.as_str(), &o.slots[1].product, "twin"];
    db.store_outfit("pair", &pair).unwrap();
    match db.expand("pair", 2, &ExpandOptions::new()) {
        Err(OutfitError::UnfillableSlot {
            slot: 2,
            in_stock: 1,
            slots: 2,
            anchor: false,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The same with both items sold out: the second slot's list is empty,
    // and says the product in stock was ranked first for the first.
    db.upsert("twin2", source.attributes, source.vectors)
        .unwrap();
    db.set_in_stock("twin2", false).unwrap();
    let pair = [o.slots[0].product.as_str(), &o.slots[1].product, "twin2"];
    db.store_outfit("pair2", &pair).unwrap();
    let subs = db.substitute("pair2", 3).unwrap();
    let slots: Vec<(usize, bool, Vec<&str>, Vec<&str>)> = subs
        .iter()
        .map(|s| {
            let c = s.candidates.iter().map(|c| c.product.as_str()).collect();
            (
                s.slot,
                s.deleted,
                c,
                s.taken.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        slots,
        [
            (1, false, vec!["twin"], vec![]),
            (2, false, vec![], vec!["twin"])
        ]
    );
}
