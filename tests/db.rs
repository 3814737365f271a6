//! Db API: persistence, filters, typed errors, corruption handling.

mod common;

use std::collections::BTreeMap;

use common::{copy_tree, cosine, vector_for};
use vitrine::{
    Attributes, Db, Error, Filter, HnswParams, Metric, Plan, PlanHint, Search, SimilarTo,
    DEFAULT_SPACE,
};

const DIM: usize = 32;

fn open(dir: &std::path::Path) -> Db {
    Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .build_threads(2)
        .open(dir)
        .expect("open")
}

/// Opened without a checkpoint on drop: a drop then stands for a kill.
fn open_kept(dir: &std::path::Path) -> Db {
    Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .checkpoint_on_drop(false)
        .open(dir)
        .expect("open")
}

fn attrs(i: usize) -> Attributes {
    Attributes::new()
        .brand(["A", "B", "C", "D"][i % 4])
        .category(["shirts", "jeans", "shoes"][i % 3])
        .price((i % 100) as f64)
        .in_stock(!i.is_multiple_of(5))
        .set("colour", ["red", "blue"][i % 2])
}

fn fill(db: &Db, n: usize) {
    for i in 0..n {
        let id = format!("sku-{i}");
        db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
            .unwrap();
    }
}

fn filters() -> Vec<Filter> {
    vec![
        Filter::new(),
        Filter::new().in_stock(),
        Filter::new().category_in(["shirts"]).brand_in(["A", "C"]),
        Filter::new().price_range(10.0..20.0),
        Filter::new().attr_eq("colour", "red").exclude("sku-3"),
        Filter::new().category_in(["jeans"]).price_range(..=5.0),
    ]
}

fn run_queries(db: &Db) -> Vec<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for (qi, f) in filters().iter().enumerate() {
        for j in 0..5 {
            let q = vector_for(&format!("query-{qi}-{j}"), DIM);
            let hits = db.similar(SimilarTo::Vector(&q), 10, f).unwrap();
            out.push(hits.into_iter().map(|h| (h.id, h.score)).collect());
            let id = format!("sku-{}", 20 + j * 7 + qi);
            let hits = db.similar(SimilarTo::Id(&id), 10, f).unwrap();
            out.push(hits.into_iter().map(|h| (h.id, h.score)).collect());
        }
    }
    out
}

/// Unfiltered searches through the graph itself (a catalog under the
/// planner's exact limit is otherwise scanned exactly), and exactly: each
/// query's hit ids.
fn graph_and_exact(db: &Db) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let run = |plan: PlanHint| -> Vec<Vec<String>> {
        (0..20)
            .map(|j| {
                let q = vector_for(&format!("graph-query-{j}"), DIM);
                let r = db
                    .search(&Search::new(SimilarTo::Vector(&q), 10).plan(plan))
                    .unwrap();
                let want = if plan == PlanHint::Graph {
                    Plan::Graph
                } else {
                    Plan::Exact
                };
                assert_eq!(r.plan, want);
                r.hits.into_iter().map(|h| h.id).collect()
            })
            .collect()
    };
    (run(PlanHint::Graph), run(PlanHint::Exact))
}

/// The graph's recall@10 against the exact answers is at least `floor`.
fn assert_graph_recall(db: &Db, floor: f64) {
    let (graph, exact) = graph_and_exact(db);
    let found: usize = graph
        .iter()
        .zip(&exact)
        .map(|(g, e)| g.iter().filter(|id| e.contains(id)).count())
        .sum();
    let total: usize = exact.iter().map(Vec::len).sum();
    assert!(
        found as f64 >= floor * total as f64,
        "graph recall {found}/{total}"
    );
}

#[test]
fn reopen_gives_identical_records_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let (records, results) = {
        let db = open(dir.path());
        fill(&db, 1500);
        db.delete("sku-10").unwrap();
        db.set_in_stock("sku-11", false).unwrap();
        db.upsert(
            "sku-12",
            attrs(13),
            [(DEFAULT_SPACE, vector_for("other", DIM))],
        )
        .unwrap();
        let records: Vec<_> = db.ids().iter().map(|id| db.get(id).unwrap()).collect();
        let results = (run_queries(&db), graph_and_exact(&db));
        db.close().unwrap();
        (records, results)
    };
    let db = open(dir.path());
    assert!(
        db.open_report().rebuilt.is_empty(),
        "a clean close must leave a loadable dump: {:?}",
        db.open_report()
    );
    assert_eq!(db.len(), 1499);
    let again: Vec<_> = db.ids().iter().map(|id| db.get(id).unwrap()).collect();
    assert_eq!(records, again);
    // The loaded graph is the one saved: the same answers through it.
    assert_eq!(results, (run_queries(&db), graph_and_exact(&db)));
    assert!(!db.get("sku-11").unwrap().unwrap().attributes.in_stock);
    assert_eq!(
        db.get("sku-12").unwrap().unwrap().vectors[DEFAULT_SPACE],
        vector_for("other", DIM)
    );
}

#[test]
fn filters_match_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 600);
    for (fi, f) in filters().iter().enumerate() {
        let q = vector_for(&format!("fq-{fi}"), DIM);
        let mut expected: Vec<(f32, String)> = (0..600)
            .map(|i| format!("sku-{i}"))
            .filter(|id| f.matches(id, &db.get(id).unwrap().unwrap().attributes))
            .map(|id| (cosine(&q, &vector_for(&id, DIM)), id))
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(db.count_matching(f).unwrap(), expected.len(), "filter {fi}");
        let res = db
            .search(
                &Search::new(SimilarTo::Vector(&q), 10)
                    .filter(f)
                    .plan(PlanHint::Exact),
            )
            .unwrap();
        assert_eq!(res.plan, Plan::Exact);
        let got: Vec<&str> = res.hits.iter().map(|h| h.id.as_str()).collect();
        let want: Vec<&str> = expected.iter().take(10).map(|e| e.1.as_str()).collect();
        assert_eq!(got, want, "filter {fi}");
        for h in &res.hits {
            assert!(f.matches(&h.id, &h.attributes));
            assert!((h.score - cosine(&q, &vector_for(&h.id, DIM))).abs() < 1e-4);
        }
    }
}

/// The catalog keeps posting lists of stock, category and brand: after any
/// mix of inserts, replacements, attribute edits and deletes, what a filter
/// selects equals a scan of a simple model of the catalog.
#[test]
fn filters_follow_every_kind_of_write() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut model: BTreeMap<String, Attributes> = BTreeMap::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let random_attrs = |rng: &mut rand_chacha::ChaCha8Rng| {
        let mut a = Attributes::new()
            .in_stock(rng.gen_bool(0.6))
            .price(f64::from(rng.gen_range(0..100u32)));
        // Many values, so that lists are short enough to be read (long
        // ones go to the walk): both paths are taken.
        if rng.gen_bool(0.8) {
            a = a.category(
                ["shirts", "jeans", "shoes", "hats", "belts", "socks"][rng.gen_range(0..6)],
            );
        }
        if rng.gen_bool(0.7) {
            a = a.brand(["A", "B", "C", "D", "E", "F", "G", "H"][rng.gen_range(0..8)]);
        }
        // What the model tagged: keys, names as older builds stored them,
        // and a category tag (which category concepts do not read).
        if rng.gen_bool(0.7) {
            let tags = [
                "colour.red",
                "Colour.Blue",
                "pattern.Striped Bold",
                "category.shirts",
                "usage.casual",
            ];
            let n = rng.gen_range(1..4);
            let picked: Vec<&str> = (0..n).map(|_| tags[rng.gen_range(0..tags.len())]).collect();
            a = a.set("vitrine.tags", picked.join(","));
        }
        if rng.gen_bool(0.6) {
            a = a.set(
                "vitrine.category",
                ["Shirts", "Sports Shoes", "Jeans"][rng.gen_range(0..3)],
            );
        }
        a
    };
    let filters = [
        Filter::new().in_stock(),
        Filter::new().stock(false),
        Filter::new().category_in(["jeans"]),
        Filter::new().category_in(["shirts", "shoes", "hats"]),
        Filter::new().brand_in(["B", "D"]),
        Filter::new()
            .in_stock()
            .category_in(["shirts"])
            .brand_in(["A", "C"]),
        Filter::new()
            .in_stock()
            .category_in(["jeans", "shoes"])
            .price_range(10.0..60.0),
        Filter::new().brand_in(["A"]).exclude("p3"),
        Filter::new().in_stock().stock(false),
        Filter::new().price_range(..50.0),
        Filter::new().category_in(["socks"]).price_range(20.0..),
        Filter::new().in_stock().brand_in(["E"]),
        Filter::new()
            .category_in(["belts", "hats"])
            .brand_in(["F", "G", "H"]),
        Filter::new().category_in(Vec::<String>::new()),
        Filter::new().tagged("colour.red"),
        Filter::new().tagged("category.shirts"),
        Filter::new().tagged("category.sports_shoes").in_stock(),
        Filter::new().not_tagged("colour.red").in_stock(),
        Filter::new()
            .tagged("colour.blue")
            .tagged("pattern.striped_bold"),
        Filter::new().tagged("colour.red").category_in(["shirts"]),
        Filter::new().tagged("colour.green"),
    ];
    for step in 0..500 {
        let id = format!("p{}", rng.gen_range(0..60));
        match rng.gen_range(0..5) {
            0 | 1 => {
                let a = random_attrs(&mut rng);
                db.upsert(&id, a.clone(), [(DEFAULT_SPACE, vector_for(&id, DIM))])
                    .unwrap();
                model.insert(id, a);
            }
            2 => {
                let a = random_attrs(&mut rng);
                match db.update_attributes(&id, |x| *x = a.clone()) {
                    Ok(_) => {
                        model.insert(id, a);
                    }
                    Err(Error::NotFound { .. }) => assert!(!model.contains_key(&id)),
                    Err(e) => panic!("{e}"),
                }
            }
            3 => {
                let flip = rng.gen_bool(0.5);
                if model.contains_key(&id) {
                    db.set_in_stock(&id, flip).unwrap();
                    model.get_mut(&id).unwrap().in_stock = flip;
                }
            }
            _ => {
                db.delete(&id).unwrap();
                model.remove(&id);
            }
        }
        if step % 25 == 0 {
            for (fi, f) in filters.iter().enumerate() {
                let want: Vec<String> = model
                    .iter()
                    .filter(|(id, a)| f.matches(id, a))
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(
                    db.ids_matching(f).unwrap(),
                    want,
                    "step {step}, filter {fi}"
                );
                assert_eq!(
                    db.count_matching(f).unwrap(),
                    want.len(),
                    "step {step}, filter {fi}"
                );
            }
        }
    }
    // And the same after a reopen, which fills the lists from storage.
    drop(db);
    let db = open(dir.path());
    for f in &filters {
        let want: Vec<String> = model
            .iter()
            .filter(|(id, a)| f.matches(id, a))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(db.ids_matching(f).unwrap(), want);
    }
}

/// Excluded ids are left out by their documents (a filter of only those
/// needs no walk of the catalog): exact searches against brute force, with
/// few excluded, many (past what the search drops after), and with other
/// conditions, from an id and from a vector.
#[test]
fn excluded_ids_are_left_out_as_brute_force_says() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 300);
    let check = |f: &Filter, what: &str| {
        let ids = db.ids();
        for j in 0..6 {
            let seed = ids[j * 11 + 1].clone();
            let q = vector_for(&format!("exclude-query-{j}"), DIM);
            for (to, own) in [
                (SimilarTo::Id(&seed), Some(seed.as_str())),
                (SimilarTo::Vector(&q), None),
            ] {
                let query = own.map_or(q.clone(), |id| vector_for(id, DIM));
                let mut want: Vec<(f32, String)> = ids
                    .iter()
                    .filter(|id| Some(id.as_str()) != own)
                    .filter(|id| f.matches(id, &db.get(id).unwrap().unwrap().attributes))
                    .map(|id| (common::cosine(&query, &vector_for(id, DIM)), id.clone()))
                    .collect();
                want.sort_by(|a, b| b.0.total_cmp(&a.0));
                let want: Vec<String> = want.into_iter().take(10).map(|(_, id)| id).collect();
                let got: Vec<String> = db
                    .search(&Search::new(to, 10).filter(f).plan(PlanHint::Exact))
                    .unwrap()
                    .hits
                    .into_iter()
                    .map(|h| h.id)
                    .collect();
                assert_eq!(got, want, "{what}, query {j}");
            }
        }
    };
    let few = (0..5).fold(Filter::new(), |f, i| f.exclude(format!("sku-{}", i * 3)));
    let many = (0..150).fold(Filter::new(), |f, i| f.exclude(format!("sku-{}", i * 2)));
    let stocked = few.clone().in_stock().exclude("no-such-sku");
    check(&few, "few excluded");
    check(&many, "many excluded");
    check(&stocked, "in stock, few excluded");
    // Stock alone (its allow set is kept between searches) follows every
    // change of stock: flips, deletes and new products.
    for (round, f) in [Filter::new().in_stock(), Filter::new().stock(false)]
        .iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        check(f, &format!("stock alone, round {round}"));
        for i in 0..40 {
            let id = format!("sku-{}", (round * 37 + i * 7) % 300);
            if db.get(&id).unwrap().is_some() {
                db.set_in_stock(&id, i % 2 == 0).unwrap();
            }
        }
        db.delete(&format!("sku-{}", round * 5 + 100)).unwrap();
        let new = format!("new-{round}");
        db.insert(&new, attrs(round), [(DEFAULT_SPACE, vector_for(&new, DIM))])
            .unwrap();
    }
}

#[test]
fn similar_to_id_leaves_the_product_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 200);
    for f in [
        Filter::new(),
        Filter::new().category_in(["shirts", "jeans", "shoes"]),
    ] {
        let hits = db.similar(SimilarTo::Id("sku-3"), 5, &f).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.id != "sku-3"));
    }
    let own = vector_for("sku-3", DIM);
    let hits = db
        .similar(SimilarTo::Vector(&own), 1, &Filter::new())
        .unwrap();
    assert_eq!(hits[0].id, "sku-3");
}

/// Under the inner product a zero vector may be stored (it scores 0
/// against anything), but as a query it ranks nothing: refused, as cosine
/// refuses it, instead of returning the first products stored.
#[test]
fn a_zero_query_under_the_inner_product_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .vector_space("dot", DIM, Metric::InnerProduct)
        .open(dir.path())
        .unwrap();
    for i in 0..20 {
        let id = format!("sku-{i}");
        db.insert(&id, attrs(i), [("dot", vector_for(&id, DIM))])
            .unwrap();
    }
    db.insert("zero", attrs(0), [("dot", vec![0.0; DIM])])
        .unwrap();
    let e = db
        .similar(SimilarTo::Vector(&[0.0; DIM]), 5, &Filter::new())
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidVector { ref space, .. } if space == "dot") && e.is_user_error(),
        "{e}"
    );
    let e = db
        .similar(SimilarTo::Id("zero"), 5, &Filter::new())
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidVector { ref reason, .. } if reason.contains("'zero'")),
        "{e}"
    );
    // Other queries still rank, the zero product among them (score 0).
    let hits = db
        .similar(SimilarTo::Id("sku-1"), 21, &Filter::new())
        .unwrap();
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().any(|h| h.id == "zero" && h.score == 0.0));
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 50);
    let before: BTreeMap<String, _> = db
        .ids()
        .into_iter()
        .map(|id| {
            let p = db.get(&id).unwrap();
            (id, p)
        })
        .collect();
    let v = vector_for("x", DIM);

    let e = db
        .insert(
            "new",
            Attributes::new(),
            [(DEFAULT_SPACE, vec![1.0; DIM + 1])],
        )
        .unwrap_err();
    assert!(matches!(e, Error::DimensionMismatch { expected: DIM, found, .. } if found == DIM + 1));
    let e = db
        .upsert("sku-1", Attributes::new(), [(DEFAULT_SPACE, vec![1.0; 3])])
        .unwrap_err();
    assert!(matches!(e, Error::DimensionMismatch { .. }));
    let e = db
        .insert("new", Attributes::new(), [("colour", v.clone())])
        .unwrap_err();
    assert!(
        matches!(e, Error::UnknownVector { ref name, .. } if name == "colour"),
        "{e}"
    );
    let e = db
        .insert("", Attributes::new(), [(DEFAULT_SPACE, v.clone())])
        .unwrap_err();
    assert!(matches!(e, Error::EmptyId));
    // No command line, CSV row or report line could name it.
    let e = db
        .insert(
            "sku-1\nsku-2",
            Attributes::new(),
            [(DEFAULT_SPACE, v.clone())],
        )
        .unwrap_err();
    assert!(matches!(e, Error::IdWithHiddenCharacter { .. }), "{e}");
    assert!(e.is_user_error());
    // Nor tell apart a second product that looks like the first.
    for id in [
        "sku-1\u{200b}",
        "\u{feff}sku-1",
        "sku\u{200e}-1",
        "sku-1\u{2060}",
        "sku-1\u{2028}",
        "sku-1\u{200d}",
        "sku-1\u{fe0f}",
        "sku-1\u{e0041}",
        "sku-1\u{115f}",
    ] {
        let e = db
            .insert(id, Attributes::new(), [(DEFAULT_SPACE, v.clone())])
            .unwrap_err();
        assert!(matches!(e, Error::IdWithHiddenCharacter { .. }), "{e}");
        assert!(e.to_string().contains("\\u{"), "escaped: {e}");
    }
    assert_eq!(db.len(), before.len());
    // Text written with joiners and variation selectors is no hidden
    // character: Persian, Sinhala, emoji, a keycap, a flag.
    for id in [
        "ماده\u{200c}ای",
        "ශ්\u{200d}රී",
        "sun\u{2600}\u{fe0f}",
        "\u{1f469}\u{200d}\u{1f4bb}",
        "\u{1f441}\u{fe0f}\u{200d}\u{1f5e8}\u{fe0f}",
        "size-1\u{fe0f}\u{20e3}",
        "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
    ] {
        db.insert(id, Attributes::new(), [(DEFAULT_SPACE, v.clone())])
            .unwrap();
        assert!(db.delete(id).unwrap(), "{id}");
    }
    let e = db
        .insert(
            &"x".repeat(5000),
            Attributes::new(),
            [(DEFAULT_SPACE, v.clone())],
        )
        .unwrap_err();
    assert!(matches!(e, Error::IdTooLong { .. }));
    for price in [f64::NAN, f64::INFINITY, -5.0] {
        let e = db
            .upsert(
                "sku-2",
                Attributes::new().price(price),
                [(DEFAULT_SPACE, v.clone())],
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidAttribute { ref key, .. } if key == "price")
                && e.is_user_error(),
            "{e}"
        );
    }
    // A brand or category in `extra` (a service filling the struct from
    // JSON): stored there, no filter could find it. Nor in another case
    // (`Price`), which the CLI's files and queries read as the built-in.
    for key in [
        "brand", "category", "price", "in_stock", "Price", "IN_STOCK", "Category",
    ] {
        let mut attrs = Attributes::new();
        attrs.extra.insert(key.into(), "Acme".into());
        let e = db
            .upsert("sku-2", attrs, [(DEFAULT_SPACE, v.clone())])
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidAttribute { key: ref k, .. } if k == key)
                && e.is_user_error(),
            "{e}"
        );
        let e = db
            .update_attributes("sku-3", |a| {
                a.extra.insert(key.into(), "Acme".into());
            })
            .unwrap_err();
        assert!(matches!(e, Error::InvalidAttribute { .. }), "{e}");
    }
    let mut nan = v.clone();
    nan[3] = f32::NAN;
    let e = db
        .upsert("sku-2", Attributes::new(), [(DEFAULT_SPACE, nan)])
        .unwrap_err();
    assert!(matches!(e, Error::InvalidVector { .. }));
    let e = db
        .upsert(
            "sku-2",
            Attributes::new(),
            [(DEFAULT_SPACE, vec![0.0; DIM])],
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidVector { .. }));
    let e = db
        .insert("sku-4", Attributes::new(), [(DEFAULT_SPACE, v.clone())])
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }));
    let e = db.set_in_stock("missing", true).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    let e = db
        .similar(SimilarTo::Vector(&[1.0, 2.0]), 3, &Filter::new())
        .unwrap_err();
    assert!(matches!(e, Error::DimensionMismatch { .. }));
    let e = db
        .similar(SimilarTo::Id("missing"), 3, &Filter::new())
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    assert!(e.is_user_error());
    let e = db
        .search(&Search::new(SimilarTo::Vector(&v), 3).space("nope"))
        .unwrap_err();
    assert!(matches!(e, Error::UnknownVector { .. }));

    let after: BTreeMap<String, _> = db
        .ids()
        .into_iter()
        .map(|id| {
            let p = db.get(&id).unwrap();
            (id, p)
        })
        .collect();
    assert_eq!(before, after);
    assert!(db
        .similar(SimilarTo::Vector(&v), 0, &Filter::new())
        .unwrap()
        .is_empty());
    // Huge k: every product, no huge allocation, whatever the plan.
    for plan in [PlanHint::Graph, PlanHint::Exact, PlanHint::Auto] {
        let s = Search::new(SimilarTo::Vector(&v), 1 << 40).plan(plan);
        assert_eq!(db.search(&s).unwrap().hits.len(), 50, "{plan:?}");
    }
    let all = db
        .similar(SimilarTo::Id("sku-1"), usize::MAX, &Filter::new())
        .unwrap();
    assert_eq!(all.len(), 49);
}

#[test]
fn space_names_that_are_not_plain_words_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep.txt");
    std::fs::write(&keep, "still here").unwrap();
    let db_dir = dir.path().join("db");
    for name in ["..", "../x", "/tmp", "a.b", "", "a b", &"x".repeat(65)] {
        let e = Db::builder()
            .vector_space(name, 4, Metric::Cosine)
            .open(&db_dir)
            .err()
            .unwrap_or_else(|| panic!("space '{name}' was accepted"));
        assert!(
            matches!(e, Error::InvalidConfig(_)) && e.is_user_error(),
            "{e}"
        );
    }
    assert!(keep.is_file());
    assert!(Db::builder()
        .vector_space("image-v2_1", 4, Metric::Cosine)
        .open(&db_dir)
        .is_ok());
}

#[test]
fn declaring_another_schema_on_an_existing_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close().unwrap();
    let e = Db::builder()
        .vector_space(DEFAULT_SPACE, DIM * 2, Metric::Cosine)
        .open(dir.path())
        .expect_err("schema mismatch");
    assert!(matches!(e, Error::SchemaMismatch(_)), "{e}");
    // Opening without declaring spaces takes the stored schema.
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.spaces()[0].dim, DIM);
    let e = Db::builder()
        .hnsw(vitrine::HnswParams {
            max_connections: 300,
            ..Default::default()
        })
        .open(dir.path().join("other"))
        .expect_err("invalid params");
    // Out-of-range settings are the caller's to fix, wherever they are checked.
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.is_user_error(),
        "{e:?}"
    );
    // Planner settings and space names too, before any file is made.
    let e = Db::builder()
        .planner(vitrine::PlannerConfig {
            exact_max_fraction: 2.0,
            ..Default::default()
        })
        .open(dir.path().join("other"))
        .expect_err("invalid planner");
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    let e = Db::builder()
        .vector_space("img", 4, Metric::Cosine)
        .vector_space("Img", 4, Metric::Cosine)
        .open(dir.path().join("other"))
        .expect_err("names equal but for case");
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    for ratio in [0.0, -0.5, 1.5, f64::NAN] {
        let e = Db::builder()
            .compaction_ratio(ratio)
            .open(dir.path().join("other"))
            .expect_err("invalid ratio");
        assert!(matches!(e, Error::InvalidConfig(_)), "{ratio}: {e:?}");
    }
    let e = db
        .search(&Search::new(SimilarTo::Vector(&vector_for("q", DIM)), 5).ef(0))
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.is_user_error(),
        "{e:?}"
    );
    assert!(!dir.path().join("other").exists());
}

/// A product too large to store is the caller's to fix, and nothing of it
/// is stored: not even the checkpoint's generation moves, so a kill after
/// it does not make the next open rebuild the index.
#[test]
fn a_product_too_large_to_store_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_kept(dir.path());
    db.insert(
        "small",
        attrs(1),
        [(DEFAULT_SPACE, vector_for("small", DIM))],
    )
    .unwrap();
    db.checkpoint().unwrap();
    let description = "a".repeat(17 << 20);
    let huge = Attributes::new().set("description", description.clone());
    let e = db
        .insert("big", huge, [(DEFAULT_SPACE, vector_for("big", DIM))])
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidAttribute { .. }) && e.is_user_error(),
        "{e:?}"
    );
    assert!(db.get("big").unwrap().is_none());
    assert_eq!(db.len(), 1);
    let e = db
        .update_attributes("small", |a| {
            *a = a.clone().set("description", description);
        })
        .unwrap_err();
    assert!(e.is_user_error(), "{e:?}");
    assert_eq!(db.get("small").unwrap().unwrap().attributes, attrs(1));
    drop(db);
    let db = open(dir.path());
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    assert_eq!(db.len(), 1);
}

/// Writes of attributes only leave the checkpoint's files current: a stock
/// feed between two timed checkpoints does not make the next one rewrite
/// every vector, nor a kill make the next open rebuild the index.
#[test]
fn attribute_writes_leave_the_checkpoint_current() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_kept(dir.path());
    fill(&db, 20);
    db.checkpoint().unwrap();
    db.set_in_stock("sku-1", false).unwrap();
    db.update_attributes("sku-2", |a| a.price = Some(99.0))
        .unwrap();
    db.upsert(
        "sku-3",
        attrs(3).brand("Other"),
        [(DEFAULT_SPACE, vector_for("sku-3", DIM))],
    )
    .unwrap();
    // A product without vectors is in no index.
    db.insert("plain", attrs(4), Vec::<(&str, Vec<f32>)>::new())
        .unwrap();
    drop(db);
    let db = open_kept(dir.path());
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    assert!(!db.attributes("sku-1").unwrap().in_stock);
    assert_eq!(db.attributes("sku-2").unwrap().price, Some(99.0));
    assert_eq!(
        db.attributes("sku-3").unwrap().brand.as_deref(),
        Some("Other")
    );
    assert_eq!(db.len(), 21);
    // A vector that changes makes the files stale, and they are rebuilt.
    db.upsert(
        "sku-3",
        attrs(3),
        [(DEFAULT_SPACE, vector_for("moved", DIM))],
    )
    .unwrap();
    drop(db);
    let db = open_kept(dir.path());
    assert_eq!(db.open_report().rebuilt.len(), 1);
    let hits = db
        .similar(
            SimilarTo::Vector(&vector_for("moved", DIM)),
            1,
            &Filter::new(),
        )
        .unwrap();
    assert_eq!(hits[0].id, "sku-3");
}

/// A compaction that a write of attributes only ran (the ratio crossed at
/// open, say) is saved by the next checkpoint, though the write left the
/// vectors as they were: the next open does not compact again.
#[test]
fn a_compaction_run_by_an_attribute_write_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let with_ratio = |ratio: f64| {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .compaction_ratio(ratio)
            .checkpoint_on_drop(false)
            .open(dir.path())
            .unwrap()
    };
    let db = with_ratio(1.0);
    fill(&db, 40);
    for i in 0..10 {
        let id = format!("sku-{i}");
        db.upsert(&id, attrs(i), [(DEFAULT_SPACE, vector_for("moved", DIM))])
            .unwrap();
    }
    db.checkpoint().unwrap();
    assert_eq!(db.space_stats()[0].tombstones, 10);
    drop(db);
    let db = with_ratio(0.1);
    assert_eq!(db.space_stats()[0].tombstones, 10);
    db.upsert(
        "sku-20",
        attrs(20).brand("Other"),
        [(DEFAULT_SPACE, vector_for("sku-20", DIM))],
    )
    .unwrap();
    assert_eq!(db.space_stats()[0].tombstones, 0);
    db.checkpoint().unwrap();
    drop(db);
    let db = with_ratio(0.1);
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    assert_eq!(db.space_stats()[0].tombstones, 0);
}

/// An upsert that changes only attributes keeps the graph as it is: no
/// tombstone, so no rebuild on every price or stock change.
#[test]
fn an_upsert_with_the_same_vector_leaves_no_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for i in 0..50 {
        let id = format!("p{i}");
        db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
            .unwrap();
    }
    for round in 0..20 {
        for i in 0..50 {
            let id = format!("p{i}");
            let a = attrs(i).price(round as f64);
            db.upsert(&id, a, [(DEFAULT_SPACE, vector_for(&id, DIM))])
                .unwrap();
        }
    }
    assert_eq!(db.space_stats()[0].tombstones, 0);
    db.upsert("p0", attrs(0), [(DEFAULT_SPACE, vector_for("moved", DIM))])
        .unwrap();
    assert_eq!(db.space_stats()[0].tombstones, 1);
    // Past the ratio (0.25 of 51 points), the write that crosses it
    // compacts the graph: no tombstone is left, every product is found.
    for i in 1..20 {
        let id = format!("p{i}");
        let a = attrs(i).price(19.0);
        db.upsert(
            &id,
            a,
            [(DEFAULT_SPACE, vector_for(&format!("{id}-v2"), DIM))],
        )
        .unwrap();
    }
    let stats = &db.space_stats()[0];
    assert!(stats.tombstones < 13, "{stats:?}");
    assert_eq!(stats.vectors, 50);
    for i in 1..20 {
        let id = format!("p{i}");
        let hits = db
            .similar(
                SimilarTo::Vector(&vector_for(&format!("{id}-v2"), DIM)),
                1,
                &Filter::new(),
            )
            .unwrap();
        assert_eq!(hits[0].id, id);
    }
    let hits = db
        .similar(
            SimilarTo::Vector(&vector_for("moved", DIM)),
            1,
            &Filter::new(),
        )
        .unwrap();
    assert_eq!(hits[0].id, "p0");
    assert_eq!(db.get("p3").unwrap().unwrap().attributes.price, Some(19.0));
}

/// The products tree, opened under the engine, to damage it.
fn raw_products(
    dir: &std::path::Path,
) -> (
    vitrine_storage::Store,
    vitrine_storage::Keyspace<vitrine_storage::ProductRecord>,
) {
    let store =
        vitrine_storage::Store::open(dir, vitrine_storage::StoreOptions::default()).unwrap();
    let products = store.keyspace("products").unwrap();
    (store, products)
}

/// A NaN price stored before prices were checked (an older build took it)
/// blocks no edit that leaves the price alone, and an unchanged product
/// is not rewritten.
#[test]
fn a_legacy_nan_price_blocks_no_other_edit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 10);
        db.close().unwrap();
    }
    {
        let (store, products) = raw_products(dir.path());
        let mut r = products.get(b"sku-3").unwrap().unwrap();
        r.attrs.price = Some(f64::NAN);
        products.put(b"sku-3", &r).unwrap();
        store.flush().unwrap();
    }
    let db = open(dir.path());
    assert!(db
        .get("sku-3")
        .unwrap()
        .unwrap()
        .attributes
        .price
        .unwrap()
        .is_nan());
    assert!(!db.update_attributes("sku-3", |_| {}).unwrap());
    db.set_in_stock("sku-3", false).unwrap();
    assert!(!db.get("sku-3").unwrap().unwrap().attributes.in_stock);
    // A new NaN is still refused; a good price replaces the old one.
    let e = db
        .update_attributes("sku-3", |a| a.price = Some(f64::INFINITY))
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidAttribute { ref key, .. } if key == "price"),
        "{e}"
    );
    assert!(db
        .update_attributes("sku-3", |a| a.price = Some(5.0))
        .unwrap());
    assert_eq!(
        db.get("sku-3").unwrap().unwrap().attributes.price,
        Some(5.0)
    );
}

/// `n` products, checkpointed and closed, then `records` written raw over
/// their keys (damage, or a newer build's records).
fn filled_and_damaged(dir: &std::path::Path, n: usize, records: &[(&[u8], &[u8])]) {
    let db = open(dir);
    fill(&db, n);
    db.close().unwrap();
    let (store, products) = raw_products(dir);
    for (key, bytes) in records {
        products.put_raw(key, bytes).unwrap();
    }
    store.flush().unwrap();
}

#[test]
fn a_damaged_record_names_its_key_and_the_rest_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    filled_and_damaged(
        dir.path(),
        100,
        &[
            (b"sku-7", b"\x01\xff\xff\xff garbage"),
            (b"sku-8", b"\x63 from the future"),
        ],
    );
    let db = open(dir.path());
    let damaged = &db.open_report().damaged;
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert!(damaged.iter().any(|d| d.contains("sku-7")), "{damaged:?}");
    for key in ["sku-7", "sku-8"] {
        match db.get(key) {
            Err(Error::Corruption { location, .. }) => {
                // The record, and which database it is in.
                assert!(location.contains(key), "{location}");
                let sled = dir.path().join("sled");
                assert!(location.ends_with(&*sled.to_string_lossy()), "{location}");
            }
            other => panic!("expected a corruption error for {key}, got {other:?}"),
        }
    }
    assert_eq!(db.len(), 98);
    for i in (0..100).filter(|i| *i != 7 && *i != 8) {
        let id = format!("sku-{i}");
        assert_eq!(
            db.get(&id).unwrap().unwrap().vectors[DEFAULT_SPACE],
            vector_for(&id, DIM)
        );
    }
    let hits = db
        .similar(
            SimilarTo::Vector(&vector_for("sku-9", DIM)),
            3,
            &Filter::new(),
        )
        .unwrap();
    assert_eq!(hits[0].id, "sku-9");
    // An upsert repairs the damaged key.
    db.upsert(
        "sku-7",
        attrs(7),
        [(DEFAULT_SPACE, vector_for("sku-7", DIM))],
    )
    .unwrap();
    assert!(db.get("sku-7").unwrap().is_some());
    drop(db);
}

/// A damaged record under an id no build makes now (an older build's, with
/// a control character) is replaced by an upsert too, as it would be were
/// it whole.
#[test]
fn a_damaged_record_of_an_older_builds_id_is_replaced_by_an_upsert() {
    let dir = tempfile::tempdir().unwrap();
    filled_and_damaged(dir.path(), 10, &[(b"old\tid", b"\x01\xff\xff garbage")]);
    let db = open(dir.path());
    assert!(matches!(db.get("old\tid"), Err(Error::Corruption { .. })));
    db.upsert("old\tid", attrs(1), [(DEFAULT_SPACE, vector_for("x", DIM))])
        .unwrap();
    assert_eq!(db.get("old\tid").unwrap().unwrap().attributes, attrs(1));
    // A new id with one is still refused.
    assert!(matches!(
        db.upsert("new\tid", attrs(1), [(DEFAULT_SPACE, vector_for("x", DIM))]),
        Err(Error::IdWithHiddenCharacter { .. })
    ));
    drop(db);
    let db = open(dir.path());
    assert!(db.open_report().damaged.is_empty());
    assert_eq!(db.len(), 11);
}

/// A damaged record replaced by a product without vectors, and no
/// checkpoint after: its old doc left storage, and the checkpoint's arena
/// that still holds it does not read as lost writes at the next open.
#[test]
fn a_damaged_record_replaced_without_vectors_opens_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    filled_and_damaged(dir.path(), 20, &[(b"sku-7", b"\x01\xff\xff\xff garbage")]);
    let db = open_kept(dir.path());
    assert_eq!(db.open_report().damaged.len(), 1);
    db.upsert("sku-7", attrs(7), Vec::<(&str, Vec<f32>)>::new())
        .unwrap();
    drop(db);
    let db = open_kept(dir.path());
    assert!(db.open_report().damaged.is_empty());
    assert_eq!(db.len(), 20);
    assert!(db.get("sku-7").unwrap().unwrap().vectors.is_empty());
}

#[test]
fn storage_that_lost_products_is_refused_until_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 40);
        db.close().unwrap(); // the checkpoint's arena records all 40
    }
    let arena = default_arena(dir.path());
    let arena_bytes = std::fs::read(&arena).unwrap();
    {
        // What a damaged log does: records vanish behind the engine's back,
        // with no generation bump.
        let (store, products) = raw_products(dir.path());
        for i in 30..40 {
            assert!(products.remove(format!("sku-{i}").as_bytes()).unwrap());
        }
        store.flush().unwrap();
    }
    match Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .open(dir.path())
    {
        Err(Error::Corruption { location, reason }) => {
            assert!(location.ends_with("sled"), "{location}");
            assert!(reason.contains("10 of the 40"), "{reason}");
        }
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok(db) => panic!("opened with {} products", db.len()),
    }
    assert_eq!(
        std::fs::read(&arena).unwrap(),
        arena_bytes,
        "the evidence is kept"
    );

    let db = Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .accept_data_loss(true)
        .open(dir.path())
        .unwrap();
    assert_eq!(db.len(), 30);
    let hits = db
        .similar(
            SimilarTo::Vector(&vector_for("sku-35", DIM)),
            40,
            &Filter::new(),
        )
        .unwrap();
    assert_eq!(
        hits.len(),
        30,
        "no lost product comes back from the old index"
    );
    db.close().unwrap();
    // Accepted once, the database is consistent again.
    assert_eq!(open(dir.path()).len(), 30);
}

/// Storage (and the index dump) back at an older checkpoint while the
/// arena is at a newer one: lost writes, refused until accepted. Accepted,
/// the first write moves the database past that arena's generation: a
/// write, then a kill before any checkpoint, must not make it read as
/// current again (its lost products then refused a healthy database).
#[test]
fn an_accepted_loss_of_writes_stays_accepted_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 30);
        db.close().unwrap();
    }
    for sub in ["sled", "index"] {
        copy_tree(&dir.path().join(sub), &old.path().join(sub));
    }
    {
        let db = open(dir.path());
        for i in 30..40 {
            let id = format!("sku-{i}");
            db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
                .unwrap();
        }
        db.close().unwrap();
    }
    for sub in ["sled", "index"] {
        std::fs::remove_dir_all(dir.path().join(sub)).unwrap();
        copy_tree(&old.path().join(sub), &dir.path().join(sub));
    }
    let builder = || {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .checkpoint_on_drop(false)
    };
    let refused = || match builder().open(dir.path()) {
        Err(Error::Corruption { reason, .. }) => assert!(reason.contains("generation"), "{reason}"),
        Err(e) => panic!("expected lost writes, got {e}"),
        Ok(db) => panic!("opened with {} products", db.len()),
    };
    refused();
    // An open that accepts the loss and writes nothing (as a failed
    // `vitrine repair`'s probe) leaves the evidence: still refused.
    drop(builder().accept_data_loss(true).open(dir.path()).unwrap());
    refused();
    let db = builder().accept_data_loss(true).open(dir.path()).unwrap();
    assert_eq!(db.len(), 30);
    assert_eq!(db.open_report().damaged_arenas.len(), 1);
    db.insert(
        "late",
        attrs(99),
        [(DEFAULT_SPACE, vector_for("late", DIM))],
    )
    .unwrap();
    drop(db); // a kill: no checkpoint
    let db = builder().open(dir.path()).unwrap();
    assert_eq!(db.len(), 31);
    assert!(db.get("late").unwrap().is_some());
}

/// An arena that cannot be rewritten at open (a folder in its place): the
/// open report says the rebuilt files were not saved, not that they were.
#[test]
fn an_open_report_says_when_the_rebuilt_files_could_not_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 10);
        db.close().unwrap();
    }
    let arena = dir
        .path()
        .join("arena")
        .join(format!("{DEFAULT_SPACE}.arena"));
    std::fs::remove_file(&arena).unwrap();
    std::fs::create_dir(&arena).unwrap();
    let db = open(dir.path());
    assert_eq!(db.len(), 10);
    let report = db.open_report();
    assert_eq!(report.damaged_arenas.len(), 1);
    let unsaved = report
        .unsaved
        .as_deref()
        .expect("the failed save is reported");
    assert!(unsaved.contains(".arena"), "{unsaved}");
    drop(db);
    std::fs::remove_dir(&arena).unwrap();
    let db = open(dir.path());
    assert!(db.open_report().unsaved.is_none());
}

/// Storage back at an older checkpoint and the arena removed (as its docs
/// advise after a disk error): the index dump, at the newer generation,
/// still proves the loss. Refused until accepted, and accepted for good.
#[test]
fn an_index_dump_ahead_of_storage_proves_lost_writes_without_an_arena() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 30);
        db.close().unwrap();
    }
    copy_tree(&dir.path().join("sled"), &old.path().join("sled"));
    {
        let db = open(dir.path());
        db.delete("sku-3").unwrap();
        db.close().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    copy_tree(&old.path().join("sled"), &dir.path().join("sled"));
    std::fs::remove_dir_all(dir.path().join("arena")).unwrap();
    let builder = || {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .checkpoint_on_drop(false)
    };
    let refused = || match builder().open(dir.path()) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("index dump"), "{reason}")
        }
        Err(e) => panic!("expected lost writes, got {e}"),
        Ok(db) => panic!(
            "opened with {} products, the deleted one back: {}",
            db.len(),
            db.get("sku-3").unwrap().is_some()
        ),
    };
    refused();
    let db = builder().accept_data_loss(true).open(dir.path()).unwrap();
    assert_eq!(db.len(), 30);
    let rebuilt = &db.open_report().rebuilt;
    assert!(
        rebuilt.iter().any(|(_, why)| why.contains("writes lost")),
        "{rebuilt:?}"
    );
    db.insert(
        "late",
        attrs(99),
        [(DEFAULT_SPACE, vector_for("late", DIM))],
    )
    .unwrap();
    drop(db); // a kill: no checkpoint
    let db = builder().open(dir.path()).unwrap();
    assert_eq!(db.len(), 31);
}

/// An arena (sealed, as a crafted file would be) at the last generation:
/// refused as lost writes, and once accepted, no overflow past it.
#[test]
fn an_arena_at_the_last_generation_does_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 10);
        db.close().unwrap();
    }
    let arena = default_arena(dir.path());
    let mut bytes = std::fs::read(&arena).unwrap();
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&arena, bytes).unwrap();
    let builder = || Db::builder().vector_space(DEFAULT_SPACE, DIM, Metric::Cosine);
    assert!(matches!(
        builder().open(dir.path()),
        Err(Error::Corruption { .. })
    ));
    let db = builder().accept_data_loss(true).open(dir.path()).unwrap();
    db.insert(
        "late",
        attrs(99),
        [(DEFAULT_SPACE, vector_for("late", DIM))],
    )
    .unwrap();
    db.close().unwrap();
    let db = builder().open(dir.path()).unwrap();
    assert_eq!(db.len(), 11);
}

/// The checkpoint's file of the default space's vectors.
fn default_arena(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("arena").join(format!("{DEFAULT_SPACE}.arena"))
}

fn damage_dump(dir: &std::path::Path, how: &str) {
    let index = dir.join("index").join(DEFAULT_SPACE);
    let mut files: Vec<_> = std::fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let mut bytes = std::fs::read(&f).unwrap();
        match how {
            "truncate" => bytes.truncate(bytes.len() / 2),
            _ => {
                let at = bytes.len() / 3;
                bytes[at] ^= 0x10;
            }
        }
        std::fs::write(&f, bytes).unwrap();
        if how == "truncate" {
            break;
        }
    }
}

/// A database remembers the graph parameters it was built with: opened
/// without any, it keeps them (compactions too); opened with others, it
/// rebuilds its graph with them once, and says so.
#[test]
fn graph_parameters_are_kept_until_others_are_given() {
    let dir = tempfile::tempdir().unwrap();
    let saved = || {
        let p =
            vitrine_index::SpaceIndex::saved_params(&dir.path().join("index").join(DEFAULT_SPACE))
                .unwrap();
        (p.max_connections, p.ef_construction, p.ef_search)
    };
    let params = |m, ef_c| HnswParams {
        max_connections: m,
        ef_construction: ef_c,
        ef_search: 40,
        ..HnswParams::default()
    };
    let with = |p: HnswParams| {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .hnsw(p)
            .open(dir.path())
            .unwrap()
    };
    let db = with(params(24, 100));
    fill(&db, 400);
    db.close().unwrap();
    assert_eq!(saved(), (24, 100, 40));

    // Opened with the defaults: the graph is loaded, and a compaction
    // (a third of the products deleted) rebuilds it with its own.
    let db = open(dir.path());
    assert!(db.open_report().rebuilt.is_empty());
    let ids = db.ids();
    for id in &ids[..150] {
        assert!(db.delete(id).unwrap());
    }
    db.close().unwrap();
    // (ef_search is a search setting: the builder's, 64 by default.)
    assert_eq!(saved(), (24, 100, 64));

    // Others given: rebuilt once with them.
    let db = with(params(32, 100));
    let rebuilt = &db.open_report().rebuilt;
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    assert!(
        rebuilt[0].1.contains("max_connections 24 -> 32"),
        "{rebuilt:?}"
    );
    assert_eq!(db.len(), 250);
    db.close().unwrap();
    assert_eq!(saved(), (32, 100, 40));
    let db = with(params(32, 100));
    assert!(db.open_report().rebuilt.is_empty());
    drop(db);
    let db = open(dir.path());
    assert!(db.open_report().rebuilt.is_empty());
    drop(db);

    // A write left without a checkpoint: the stale dump is rebuilt, with
    // the parameters its header names.
    let db = open_kept(dir.path());
    fill(&db, 1);
    drop(db);
    let db = open(dir.path());
    assert_eq!(db.open_report().rebuilt.len(), 1);
    db.close().unwrap();
    assert_eq!(saved(), (32, 100, 64));

    // A checkpoint killed while swapping its dump in: the old one is aside
    // (where the save moves it first), the new one in a temporary folder.
    // The old one is put back; with a write since, it is stale and rebuilt
    // with its own parameters, not the defaults.
    let db = open_kept(dir.path());
    db.upsert(
        "extra",
        attrs(1),
        [(DEFAULT_SPACE, vector_for("extra", DIM))],
    )
    .unwrap();
    drop(db);
    let index = dir.path().join("index");
    let aside = index.join(format!(".vitrine-replaced-{DEFAULT_SPACE}"));
    std::fs::rename(index.join(DEFAULT_SPACE), &aside).unwrap();
    std::fs::create_dir(index.join(".vitrine-index-killed")).unwrap();
    // As an older build left it: the parameters only in the dump's header
    // (this build keeps them in sled too, and reads them there first).
    {
        let store = vitrine_storage::Store::open(dir.path(), Default::default()).unwrap();
        let ks = store
            .keyspace::<common::Raw>("vitrine.graph_params")
            .unwrap();
        assert!(ks.remove(DEFAULT_SPACE.as_bytes()).unwrap());
    }
    let db = open(dir.path());
    assert_eq!(db.open_report().rebuilt.len(), 1);
    assert!(!aside.exists() && !index.join(".vitrine-index-killed").exists());
    db.close().unwrap();
    assert_eq!(saved(), (32, 100, 64));
    // Killed after the new one was in place: the old one aside is removed.
    std::fs::create_dir(&aside).unwrap();
    let db = open(dir.path());
    assert!(db.open_report().rebuilt.is_empty());
    assert!(!aside.exists());
    drop(db);

    // The index files are a cache: removed, the graph is rebuilt from sled
    // with the parameters sled keeps, not the defaults.
    std::fs::remove_dir_all(&index).unwrap();
    let db = open(dir.path());
    assert_eq!(db.open_report().rebuilt.len(), 1);
    db.close().unwrap();
    assert_eq!(saved(), (32, 100, 64));
}

#[test]
fn a_damaged_index_dump_is_rebuilt_with_a_reason() {
    for how in ["truncate", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        let results = {
            let db = open(dir.path());
            fill(&db, 800);
            let r = run_queries(&db);
            db.close().unwrap();
            r
        };
        damage_dump(dir.path(), how);
        let db = open(dir.path());
        let rebuilt = &db.open_report().rebuilt;
        assert_eq!(rebuilt.len(), 1, "{how}: {rebuilt:?}");
        assert!(!rebuilt[0].1.is_empty());
        assert_eq!(db.len(), 800);
        // Exact-plan results do not depend on the graph.
        for (fi, f) in filters().iter().enumerate() {
            let q = vector_for(&format!("dq-{fi}"), DIM);
            let s = Search::new(SimilarTo::Vector(&q), 10)
                .filter(f)
                .plan(PlanHint::Exact);
            assert_eq!(db.search(&s).unwrap().hits.len(), 10);
        }
        let recovered = run_queries(&db);
        let overlap: usize = results
            .iter()
            .zip(&recovered)
            .map(|(a, b)| a.iter().filter(|x| b.iter().any(|y| y.0 == x.0)).count())
            .sum();
        let total: usize = results.iter().map(Vec::len).sum();
        assert!(overlap as f64 >= 0.9 * total as f64, "{overlap}/{total}");
        // (Those ran exactly at this size: the rebuilt graph itself.)
        assert_graph_recall(&db, 0.9);
        drop(db);
        // The rebuilt index was saved: the next open loads it.
        let db = open(dir.path());
        assert!(db.open_report().rebuilt.is_empty(), "{how}");
    }
}

#[test]
fn readers_run_while_a_writer_writes() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Db>();
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(open(dir.path()));
    fill(&db, 300);
    std::thread::scope(|s| {
        for r in 0..2 {
            let db = &db;
            s.spawn(move || {
                for j in 0..200 {
                    let q = vector_for(&format!("r{r}-{j}"), DIM);
                    let hits = db
                        .similar(SimilarTo::Vector(&q), 5, &Filter::new().in_stock())
                        .unwrap();
                    assert_eq!(hits.len(), 5, "reader {r}, query {j}");
                    assert!(hits.iter().all(|h| h.attributes.in_stock));
                }
            });
        }
        let db = &db;
        s.spawn(move || {
            for i in 300..500 {
                let id = format!("sku-{i}");
                db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
                    .unwrap();
                if i % 3 == 0 {
                    db.delete(&format!("sku-{}", i - 250)).unwrap();
                }
            }
        });
    });
    assert_eq!(db.len(), 500 - 67);
}

#[test]
fn a_backup_is_consistent_while_writes_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(open(&dir.path().join("live")));
    fill(&db, 200);
    db.store_outfit("o1", &["sku-1", "sku-2"]).unwrap();
    let (stop, acked) = (AtomicBool::new(false), AtomicUsize::new(0));
    let copy = dir.path().join("copy");
    let outfits = AtomicUsize::new(0);
    let (before, after) = std::thread::scope(|s| {
        // Side records (outfits) are written past the writer lock, through
        // the store's write gate.
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                db.store_outfit(&format!("side-{i}"), &["sku-3", "sku-4"])
                    .unwrap();
                i += 1;
                outfits.store(i, Ordering::SeqCst);
            }
        });
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w-{i}");
                db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
                    .unwrap();
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        });
        while acked.load(Ordering::SeqCst) < 20 {
            std::thread::yield_now();
        }
        let before = acked.load(Ordering::SeqCst);
        db.backup(&copy).unwrap();
        let after = acked.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        (before, after)
    });
    // A destination that exists, or inside the database, is refused.
    assert!(matches!(db.backup(&copy), Err(Error::InvalidConfig(_))));
    let inside = dir.path().join("live/sub/copy");
    assert!(matches!(db.backup(&inside), Err(Error::InvalidConfig(_))));
    assert!(!dir.path().join("live/sub").exists());
    // Also through a folder that does not exist yet, and nothing is made.
    let around = dir.path().join("nope/../live/sub/copy2");
    assert!(matches!(db.backup(&around), Err(Error::InvalidConfig(_))));
    assert!(!dir.path().join("live/sub").exists());
    assert!(!dir.path().join("nope").exists());
    // A folder that exists, named through one that does not: refused, not
    // replaced by the copy.
    std::fs::create_dir(dir.path().join("kept")).unwrap();
    for around in ["nope/../kept", "nope/.."] {
        let e = db.backup(dir.path().join(around)).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{around}: {e}");
        assert!(!dir.path().join("nope").exists(), "{around}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("kept")).unwrap().count(),
        0
    );
    // Through a link, `..` is its target's parent, as the system reads it:
    // `link/../kept` lands in `elsewhere/kept`, which does not exist.
    #[cfg(unix)]
    {
        std::fs::create_dir_all(dir.path().join("elsewhere/sub")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere/sub"), dir.path().join("link"))
            .unwrap();
        db.backup(dir.path().join("link/../kept")).unwrap();
        assert!(dir.path().join("elsewhere/kept/sled").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.path().join("kept")).unwrap().count(),
            0
        );
    }
    drop(db);

    let backup = open(&copy);
    assert!(
        backup.open_report().rebuilt.is_empty(),
        "{:?}",
        backup.open_report()
    );
    let n = backup.len();
    // (One insert may have returned without being counted yet when the
    // backup took the writer: the writer thread counts after the call.)
    assert!(
        (200 + before..=200 + after + 1).contains(&n),
        "{n} not in {before}..={after}"
    );
    for i in 0..200 {
        assert!(backup.get(&format!("sku-{i}")).unwrap().is_some());
    }
    // Writes are whole and in order: the copy holds a prefix of them.
    for i in 0..n - 200 {
        assert!(backup.get(&format!("w-{i}")).unwrap().is_some(), "w-{i}");
    }
    // o1, then a prefix of the side outfits, each whole.
    let stored = backup.outfits().unwrap();
    assert!(stored.iter().any(|o| o.id == "o1"));
    assert!(stored.iter().all(|o| o.slots.len() == 2));
    assert!(stored.len() <= 1 + outfits.load(Ordering::SeqCst));
    for i in 0..stored.len() - 1 {
        let id = format!("side-{i}");
        assert!(
            stored.iter().any(|o| o.id == id),
            "{id} missing: not a prefix"
        );
    }
    // It is a database of its own.
    backup
        .insert("new", attrs(0), [(DEFAULT_SPACE, vector_for("new", DIM))])
        .unwrap();
}

/// Two backups to one place at once: one is made, the other refused as
/// "already exists" (it copied the whole database, then failed to rename,
/// with an untyped I/O error).
#[test]
fn two_backups_to_one_place_make_one_and_refuse_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("live"));
    fill(&db, 300);
    let copy = dir.path().join("copy");
    for round in 0..3 {
        let start = std::sync::Barrier::new(2);
        let results: Vec<vitrine::Result<()>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        db.backup(&copy)
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let made = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(made, 1, "round {round}: {results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, vitrine::Error::InvalidConfig(m) if m.contains("already exists")),
                "round {round}: {r}"
            );
        }
        assert_eq!(vitrine::Db::open(&copy).unwrap().len(), 300);
        std::fs::remove_dir_all(&copy).unwrap();
    }
}

/// The index dumps are a cache: a backup whose checkpoint cannot be
/// written (a full disk under the database, here a folder standing where
/// the arena's temporary file goes) is made without them, and the copy
/// rebuilds them when it opens.
#[test]
fn a_backup_is_made_when_the_checkpoint_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let db = open(&live);
    for i in 0..50 {
        let id = format!("sku-{i}");
        db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
            .unwrap();
    }
    // A folder where the arena is renamed to: its rename fails.
    let blocker = default_arena(&live);
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    assert!(db.checkpoint().is_err(), "the blocker does not block");
    let copy = dir.path().join("copy");
    db.backup(&copy).unwrap();
    std::fs::remove_dir_all(&blocker).unwrap();
    drop(db);
    let backup = open(&copy);
    assert_eq!(backup.len(), 50);
    assert!(
        !backup.open_report().rebuilt.is_empty(),
        "{:?}",
        backup.open_report()
    );
    let q = vector_for("sku-7", DIM);
    let r = backup
        .search(&Search::new(SimilarTo::Vector(&q), 1))
        .unwrap();
    assert_eq!(r.hits[0].id, "sku-7");
}

#[test]
fn a_killed_checkpoint_leaves_no_debris_and_a_backup_of_a_clean_database_only_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    {
        let db = open(&live);
        fill(&db, 50);
    }
    // What a checkpoint killed mid-way leaves behind.
    let stale_index = live.join("index/.vitrine-index-stale");
    std::fs::create_dir_all(&stale_index).unwrap();
    std::fs::write(stale_index.join("graph.hnsw.graph"), b"half").unwrap();
    let stale_arena = live.join(format!("arena/.{DEFAULT_SPACE}.arena.tmp-999"));
    std::fs::write(&stale_arena, b"half").unwrap();
    let db = open(&live);
    assert!(!stale_index.exists() && !stale_arena.exists());
    // Nothing written since the last checkpoint: the backup leaves every
    // file of the source as it was.
    let snapshot = |root: &std::path::Path| -> BTreeMap<std::path::PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for sub in ["index", "arena"] {
            let mut stack = vec![root.join(sub)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        out.insert(p.clone(), std::fs::read(&p).unwrap());
                    }
                }
            }
        }
        out
    };
    let before = snapshot(&live);
    // The old sled files a `repair --no-copy` kept are no part of the
    // database: neither copied nor counted in its size.
    // Nor are a failed salvage's files, or files set aside, or the file
    // system's `lost+found` of a folder that is a mount point (which only
    // root may read: the backup failed on it).
    let size = db.size_on_disk().unwrap();
    let names = [
        "sled.before-salvage-2",
        "sled.salvaged",
        "sled-conf.damaged",
        "lost+found",
    ];
    for name in names {
        let leftovers = live.join(name);
        std::fs::create_dir(&leftovers).unwrap();
        std::fs::write(leftovers.join("db"), vec![7u8; 1 << 20]).unwrap();
    }
    assert!(db.size_on_disk().unwrap() < size + (1 << 19));
    db.backup(dir.path().join("copy")).unwrap();
    assert_eq!(snapshot(&live), before);
    for name in names {
        assert!(!dir.path().join("copy").join(name).exists(), "{name}");
        assert!(live.join(name).join("db").exists());
    }
    drop(db);
    let copy = open(&dir.path().join("copy"));
    assert_eq!(copy.len(), 50);
    assert!(copy.open_report().rebuilt.is_empty());
}

/// A checkpoint at storage's generation that holds fewer products than
/// storage (what a salvage that keeps the generation leaves): storage wins,
/// and every product is found again.
#[test]
fn a_checkpoint_that_lacks_stored_products_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (full, part) = (dir.path().join("full"), dir.path().join("part"));
    // Not unit length: the checkpoint holds them normalised, as the index does.
    let scaled = |id: &str| -> Vec<f32> { vector_for(id, DIM).iter().map(|x| x * 3.0).collect() };
    for (path, n) in [(&full, 30), (&part, 10)] {
        let db = open(path);
        for i in 0..n {
            let id = format!("p{i}");
            db.insert(&id, attrs(i), [(DEFAULT_SPACE, scaled(&id))])
                .unwrap();
        }
        db.close().unwrap();
    }
    // A checkpoint that matches storage is used as it is.
    let db = open(&part);
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    drop(db);
    for sub in ["arena", "index"] {
        std::fs::remove_dir_all(full.join(sub)).unwrap();
        copy_tree(&part.join(sub), &full.join(sub));
    }
    let db = open(&full);
    assert_eq!(db.len(), 30);
    assert_eq!(db.space_stats()[0].vectors, 30);
    assert!(
        db.open_report()
            .rebuilt
            .iter()
            .any(|(s, _)| s == DEFAULT_SPACE),
        "{:?}",
        db.open_report()
    );
    for i in [0, 15, 29] {
        let id = format!("p{i}");
        let hits = db
            .similar(SimilarTo::Vector(&vector_for(&id, DIM)), 1, &Filter::new())
            .unwrap();
        assert_eq!(hits[0].id, id);
    }
    assert_eq!(db.count_matching(&Filter::new()).unwrap(), 30);
    let all = db
        .similar(
            SimilarTo::Vector(&vector_for("q", DIM)),
            100,
            &Filter::new(),
        )
        .unwrap();
    assert_eq!(all.len(), 30);
}

/// Reopening again and again never rebuilds a matching checkpoint: the
/// vectors read back from it are kept as stored (normalising a unit vector
/// again changes the last bits of some low-dimensional ones).
#[test]
fn reopening_keeps_a_matching_checkpoint_however_often() {
    let dir = tempfile::tempdir().unwrap();
    let open8 = || {
        Db::builder()
            .vector_space(DEFAULT_SPACE, 8, Metric::Cosine)
            .build_threads(1)
            .open(dir.path())
            .unwrap()
    };
    let v = |i: usize| -> Vec<f32> {
        (0..8)
            .map(|d| ((i * 7919 + d * 104_729) % 1000) as f32 / 37.0 - 13.0)
            .collect()
    };
    {
        let db = open8();
        for i in 0..2000 {
            db.insert(&format!("p{i}"), Attributes::new(), [(DEFAULT_SPACE, v(i))])
                .unwrap();
        }
    }
    for round in 0..4 {
        let db = open8();
        assert!(
            db.open_report().rebuilt.is_empty(),
            "round {round}: {:?}",
            db.open_report().rebuilt
        );
        // A write, so that the next close writes a new checkpoint.
        db.set_in_stock("p0", round % 2 == 0).unwrap();
    }
}

#[test]
fn a_failed_checkpoint_does_not_make_later_writes_look_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .build_threads(2)
            .checkpoint_on_drop(false)
            .open(&path)
            .unwrap();
        fill(&db, 20);
        // The index folder cannot be made: the arena is written, the dump
        // is not.
        let index = path.join("index");
        if index.is_dir() {
            std::fs::remove_dir_all(&index).unwrap();
        }
        std::fs::write(&index, b"in the way").unwrap();
        assert!(db.checkpoint().is_err());
        assert!(db.delete("sku-3").unwrap());
        // Dropped without a checkpoint, as in a crash.
    }
    std::fs::remove_file(path.join("index")).unwrap();
    // The arena written by the failed checkpoint still holds sku-3; it must
    // read as stale, not as sled having lost a write.
    let db = open(&path);
    assert_eq!(db.len(), 19);
    assert!(db.get("sku-3").unwrap().is_none());
}

#[test]
fn filtered_graph_search_recall_holds_against_brute_force() {
    // Large enough that the planner picks the graph for a filter that
    // allows 80 % of the products (over 8,192 and over a fifth).
    const N: usize = 11_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .build_threads(2)
        .durability(vitrine::Durability::Periodic {
            interval: std::time::Duration::from_secs(1),
        })
        .open(dir.path())
        .unwrap();
    fill(&db, N);
    let filter = Filter::new().in_stock();
    let (mut found, mut wanted) = (0usize, 0usize);
    for qi in 0..40 {
        let q = vector_for(&format!("recall-{qi}"), DIM);
        let res = db
            .search(&Search::new(SimilarTo::Vector(&q), 10).filter(&filter))
            .unwrap();
        assert_eq!(res.plan, Plan::Graph, "query {qi}");
        assert_eq!(res.hits.len(), 10);
        let ids: std::collections::HashSet<&str> = res.hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids.len(), 10, "query {qi}: ten distinct products");
        for h in &res.hits {
            assert!(filter.matches(&h.id, &h.attributes), "{} is sold out", h.id);
            // The score belongs to the product named: recompute it by id.
            let s = cosine(&q, &vector_for(&h.id, DIM));
            assert!((h.score - s).abs() < 1e-4, "{}: {} vs {s}", h.id, h.score);
        }
        let mut exact: Vec<(f32, String)> = (0..N)
            .filter(|i| i % 5 != 0)
            .map(|i| format!("sku-{i}"))
            .map(|id| (cosine(&q, &vector_for(&id, DIM)), id))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let kth = exact[9].0;
        // Tie-aware: a hit counts when it scores at least the 10th best.
        found += res
            .hits
            .iter()
            .filter(|h| cosine(&q, &vector_for(&h.id, DIM)) >= kth - 1e-6)
            .count();
        wanted += 10;
    }
    let recall = found as f64 / wanted as f64;
    eprintln!("filtered graph recall@10 over {N}: {recall:.3}");
    assert!(recall >= 0.9, "recall@10 {recall:.3}");
}

/// A stored schema that cannot be right (a space of 0 dimensions) is
/// damage, named, not the caller's mistake.
#[test]
fn a_damaged_stored_schema_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        fill(&db, 3);
        db.close().unwrap();
    }
    {
        let store =
            vitrine_storage::Store::open(dir.path(), vitrine_storage::StoreOptions::default())
                .unwrap();
        let ks: vitrine_storage::Keyspace<vitrine_storage::Meta> = store.keyspace("meta").unwrap();
        let mut meta = ks.get(b"meta").unwrap().unwrap();
        meta.spaces[0].dim = 0;
        ks.put(b"meta", &meta).unwrap();
        store.flush().unwrap();
    }
    for declared in [false, true] {
        let b = Db::builder();
        let b = if declared {
            b.vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        } else {
            b
        };
        match b.open(dir.path()) {
            Err(e @ Error::Corruption { .. }) => {
                assert!(!e.is_user_error());
                assert!(e.to_string().contains("meta/meta"), "{e}");
            }
            Err(e) => panic!("expected Corruption, got {e}"),
            Ok(_) => panic!("opened a schema with a 0-dimensional space"),
        }
    }
}

/// Reads that need no write go on while a write is held up (a backup or a
/// compaction holds the writer for long): here the model fingerprint,
/// asked by every image search and outfit command.
#[test]
fn the_model_fingerprint_is_read_while_a_write_waits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 2);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let db = &db;
        let id = db.ids()[0].clone();
        s.spawn(move || {
            db.update_attributes(&id, |a| {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                a.brand = Some("held".into());
            })
            .unwrap();
        });
        started_rx.recv().unwrap();
        s.spawn(move || read_tx.send(db.model_fingerprint()).unwrap());
        let read = read_rx.recv_timeout(std::time::Duration::from_secs(20));
        release_tx.send(()).unwrap();
        assert!(read.is_ok(), "model_fingerprint waited for the writer");
    });
}

/// A product record sled cannot read (its blob file lost), the last
/// writes not checkpointed (a crash): the open refuses with `Corruption`
/// naming sled, instead of stopping its scan there and opening without the
/// products after it (then checkpointing the truncated catalog, which hid
/// the loss from every later open). `accept_data_loss` opens what can be
/// read.
#[test]
fn an_unreadable_product_page_is_refused_not_skipped() {
    // With checkpoints, and without any (then only storage can tell that
    // products are missing).
    for checkpointed in [true, false] {
        unreadable_page_case(checkpointed);
    }
}

fn unreadable_page_case(checkpointed: bool) {
    let dir = tempfile::tempdir().unwrap();
    // Over three sessions, so that sled's snapshot covers the blob's entry
    // and only a read of the record looks for the file; the last one is
    // not checkpointed.
    for round in 0..3 {
        let db = Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .checkpoint_on_drop(checkpointed && round < 2)
            .open(dir.path())
            .unwrap();
        for i in round * 50..(round + 1) * 50 {
            let id = format!("sku-{i:03}");
            let mut a = attrs(i);
            if i == 25 {
                // Large enough that sled keeps the record in a blob file.
                a = a.set("note", "x".repeat(300_000));
            }
            db.insert(&id, a, [(DEFAULT_SPACE, vector_for(&id, DIM))])
                .unwrap();
        }
    }
    let blobs = dir.path().join("sled").join("blobs");
    let files: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "the large record went to a blob file");
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    let open = |accept: bool| {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .checkpoint_on_drop(false)
            .accept_data_loss(accept)
            .open(dir.path())
    };
    match open(false) {
        Err(e @ Error::Corruption { .. }) => {
            assert!(e.to_string().contains("sled"), "{e}");
        }
        Err(e) => panic!("expected Corruption, got {e}"),
        Ok(db) => panic!(
            "opened with {} of 150 products (checkpointed: {checkpointed})",
            db.len()
        ),
    }
    let db = open(true).unwrap();
    assert!(db.len() < 150);
    assert!(!db.open_report().damaged.is_empty());
}

/// Storage emptied (its log lost) while checkpoint files remain: the open
/// refuses, and writes no new schema over the evidence (which would then
/// read as the caller's schema mistake, or an empty database).
#[test]
fn an_emptied_storage_with_checkpoint_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = |accept: bool| {
        Db::builder()
            .vector_space("img", 8, Metric::Cosine)
            .accept_data_loss(accept)
            .open(dir.path())
    };
    {
        let db = open(false).unwrap();
        db.insert("a", Attributes::new(), [("img", vec![1.0; 8])])
            .unwrap();
        db.close().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    for attempt in 0..2 {
        // Also as Db::open with the default schema, which would have stored it.
        let r = if attempt == 0 {
            open(false)
        } else {
            Db::open(dir.path())
        };
        match r {
            Err(e @ Error::Corruption { .. }) => {
                assert!(!e.is_user_error());
                // Not the repair a lost log gives nothing to.
                let m = e.to_string();
                assert!(
                    m.contains("import the catalog again") && !m.contains("repair`"),
                    "{m}"
                );
            }
            Err(e) => panic!("expected Corruption, got {e}"),
            Ok(db) => panic!("opened with {} products", db.len()),
        }
    }
    // Accepting the loss opens it empty, with the declared schema.
    let db = open(true).unwrap();
    assert_eq!(db.len(), 0);
}

/// Deleting a tag in a database without a concept space (no model): there
/// is no such tag, and nothing else to clean up.
#[test]
fn deleting_a_tag_without_a_concept_space_is_false() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert!(!db.delete_tag("x").unwrap());
}

/// The operational errors a service acts on can be told apart without
/// naming the storage crate: a second open (retry later), and an I/O error
/// underneath, whichever layer met it.
#[test]
fn operational_errors_can_be_matched() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 3);
    let e = Db::builder()
        .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
        .open(dir.path())
        .expect_err("a second handle opened a locked database");
    assert!(
        e.is_locked() && !e.needs_restart() && !e.is_user_error(),
        "{e}"
    );
    assert!(e.io_error().is_none(), "{e}");
    let other = tempfile::tempdir().unwrap();
    let file = other.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A destination the caller named that cannot be made is the caller's
    // to change (it was an I/O error like a failing disk's); so is a
    // database "folder" that is a file.
    let e = db.backup(file.join("copy")).unwrap_err();
    assert!(e.io_error().is_some() && !e.is_locked(), "{e:?}");
    assert!(e.is_user_error(), "{e:?}");
    let e = db.backup("").unwrap_err();
    assert!(e.is_user_error(), "{e:?}");
    let e = Db::open(&file).unwrap_err();
    assert!(
        matches!(e, Error::BadPath { .. }) && e.is_user_error(),
        "{e:?}"
    );
    assert!(e.to_string().contains("not a database folder"), "{e}");
    // ... or a folder under a file, or an empty path (which made the
    // database in the working folder).
    for bad in [file.join("db"), std::path::PathBuf::new()] {
        let e = Db::open(&bad).unwrap_err();
        assert!(
            matches!(e, Error::BadPath { .. }) && e.is_user_error(),
            "{bad:?}: {e:?}"
        );
    }
    assert!(!std::path::Path::new("sled").exists());
    // A link in the database folder (a folder moved to another disk) is
    // no request of the caller's to change.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&file, dir.path().join("moved")).unwrap();
        let e = db.backup(other.path().join("copy")).unwrap_err();
        assert!(!e.is_user_error(), "{e:?}");
        assert!(e.to_string().contains("moved"), "{e}");
        assert!(!other.path().join("copy").exists());
    }
}

/// With automatic compaction off, tombstones stay until `compact`, which
/// drops them, keeps every answer, and is saved by the next checkpoint.
#[test]
fn compact_reclaims_tombstones_when_automatic_compaction_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let open_off = || {
        Db::builder()
            .vector_space(DEFAULT_SPACE, DIM, Metric::Cosine)
            .compaction_ratio(1.0)
            .open(dir.path())
            .unwrap()
    };
    let tombstones = |db: &Db| db.space_stats()[0].tombstones;
    let db = open_off();
    fill(&db, 300);
    for i in 100..300 {
        assert!(db.delete(&format!("sku-{i}")).unwrap());
    }
    assert_eq!(tombstones(&db), 200);
    let before = run_queries(&db);
    assert_eq!(db.compact().unwrap(), 200);
    assert_eq!(tombstones(&db), 0);
    assert_eq!(db.space_stats()[0].graph_points, 100);
    assert_eq!(run_queries(&db), before);
    assert_graph_recall(&db, 0.9);
    let compacted = graph_and_exact(&db);
    assert_eq!(db.compact().unwrap(), 0);
    db.close().unwrap();
    let db = open_off();
    assert!(db.open_report().rebuilt.is_empty());
    assert_eq!(tombstones(&db), 0);
    assert_eq!(run_queries(&db), before);
    assert_eq!(graph_and_exact(&db), compacted);
}

/// A checkpoint with nothing new to write rewrites no file (a service may
/// call it on a timer), nor after writes of attributes only (the files
/// hold vectors); after a vector's write it does.
#[cfg(unix)]
#[test]
fn a_checkpoint_with_nothing_new_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for i in 0..50 {
        let id = format!("sku-{i}");
        db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
            .unwrap();
    }
    db.checkpoint().unwrap();
    let arena = default_arena(dir.path());
    let inode = || std::fs::metadata(&arena).unwrap().ino();
    let first = inode();
    db.checkpoint().unwrap();
    assert_eq!(inode(), first, "a clean checkpoint rewrote the arena");
    db.set_in_stock("sku-1", false).unwrap();
    db.checkpoint().unwrap();
    assert_eq!(inode(), first, "a stock change rewrote the arena");
    db.upsert(
        "sku-1",
        attrs(1).in_stock(false),
        [(DEFAULT_SPACE, vector_for("sku-1 again", DIM))],
    )
    .unwrap();
    db.checkpoint().unwrap();
    assert_ne!(inode(), first, "a checkpoint after a write wrote nothing");
    drop(db);
    let db = open(dir.path());
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    assert!(!db.get("sku-1").unwrap().unwrap().attributes.in_stock);
}

/// `Search::offset` pages a search: with the exact plan, the second page
/// is the 11th to 20th of 20; excluded ids stay out of every page.
#[test]
fn offset_pages_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for i in 0..100 {
        let id = format!("sku-{i}");
        db.insert(&id, attrs(i), [(DEFAULT_SPACE, vector_for(&id, DIM))])
            .unwrap();
    }
    let q = vector_for("query", DIM);
    let ids = |s: Search<'_>| -> Vec<String> {
        db.search(&s.plan(vitrine::PlanHint::Exact))
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.id)
            .collect()
    };
    let twenty = ids(Search::new(SimilarTo::Vector(&q), 20));
    assert_eq!(
        ids(Search::new(SimilarTo::Vector(&q), 10).offset(10)),
        twenty[10..]
    );
    // "More like this", page 2: the product itself on no page.
    let like = ids(Search::new(SimilarTo::Id("sku-3"), 20));
    assert!(!like.contains(&"sku-3".to_string()));
    assert_eq!(
        ids(Search::new(SimilarTo::Id("sku-3"), 10).offset(10)),
        like[10..]
    );
    // Past the end: what is left.
    assert_eq!(
        ids(Search::new(SimilarTo::Vector(&q), 10).offset(95)).len(),
        5
    );
}

/// The layers' errors inside `vitrine::Error` can be named and matched
/// from `vitrine` alone (the layer crates are not published).
#[test]
fn layer_errors_are_named_from_vitrine() {
    let params = vitrine::HnswParams {
        max_connections: 1_000,
        ..Default::default()
    };
    let e: vitrine::IndexError = params.validate().unwrap_err();
    assert!(e.to_string().contains("max_connections"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let _held = Db::open(dir.path()).unwrap();
    let e = Db::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            vitrine::Error::Storage(vitrine::StorageError::Locked { .. })
        ),
        "{e:?}"
    );
    let _: (usize, u64) = (vitrine::GPU_MAX_K, vitrine::AUTO_GPU_MIN_WORK);
}

/// A new database, and a backup, in folders that did not exist sync each
/// new folder's entry in its parent: otherwise a power loss after `open`
/// or `backup` returned can take the new folders, and everything in them.
/// Watched with strace, where the machine has it (ptrace allowed).
#[test]
fn a_new_database_and_a_backup_sync_the_folders_they_make() {
    const CHILD: &str = "VITRINE_TEST_BACKUP_SYNC_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = std::path::Path::new(&dir);
        let db = open(&dir.join("fresh").join("db"));
        db.insert("a", attrs(1), [(DEFAULT_SPACE, vector_for("a", DIM))])
            .unwrap();
        db.backup(dir.join("new").join("nested").join("copy"))
            .unwrap();
        return;
    }
    let strace_works = std::process::Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !strace_works {
        eprintln!("skipped: strace is not installed or ptrace is not allowed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "a_new_database_and_a_backup_sync_the_folders_they_make",
            "--exact",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&trace).unwrap();
    // `fresh` holds the new database's entry; `new`, the backup's.
    for folder in [dir.path().join("fresh"), dir.path().join("new")] {
        let synced = format!("<{}>", folder.canonicalize().unwrap().display());
        assert!(
            trace
                .lines()
                .any(|l| l.ends_with(&synced) || l.contains(&format!("{synced})"))),
            "{} never synced:\n{trace}",
            folder.display()
        );
    }
}

/// `attr_eq` on a field with its own condition would match nothing (the
/// database keeps no `price` or `in_stock` among the free attributes): a
/// search, a count and a precompute refuse it, saying what to use.
#[test]
fn attr_eq_on_price_or_stock_is_refused_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    fill(&db, 20);
    // Nor another case of a built-in's name, which no product can hold.
    for (key, instead) in [
        ("price", "price_range"),
        ("in_stock", "Filter::stock"),
        ("Price", "price_range"),
        ("IN_STOCK", "Filter::stock"),
    ] {
        let f = Filter::new().attr_eq(key, "1");
        let said = |r: Result<usize, Error>| match r {
            Err(Error::InvalidFilter(m)) => assert!(m.contains(instead), "{m}"),
            other => panic!("attr_eq({key}): {other:?}"),
        };
        said(db.count_matching(&f));
        said(db.ids_matching(&f).map(|v| v.len()));
        said(db.similar(SimilarTo::Id("sku-1"), 5, &f).map(|h| h.len()));
        let opts = vitrine::PrecomputeOptions::default();
        assert!(matches!(
            db.precompute_similar(5, &f, &opts),
            Err(vitrine::PrecomputeError::Db(Error::InvalidFilter(_)))
        ));
        let opts = vitrine::PrecomputeOptions {
            variant_key: Some(key.into()),
            ..Default::default()
        };
        assert!(matches!(
            db.precompute_similar(5, &Filter::new(), &opts),
            Err(vitrine::PrecomputeError::Db(Error::InvalidConfig(_)))
        ));
    }
    // Brand and category read their fields through `attr_eq` as written,
    // in any case (as a CSV's `Brand` column and a query's `where Brand`).
    for key in ["brand", "Brand", "BRAND"] {
        assert_eq!(
            db.count_matching(&Filter::new().attr_eq(key, "A")).unwrap(),
            5
        );
    }
    assert_eq!(
        db.count_matching(&Filter::new().attr_eq("colour", "red"))
            .unwrap(),
        10
    );
}
