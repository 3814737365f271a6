//! `precompute_similar`: equal to brute force, consistent with `Db::search`,
//! round-trips through the file, and a damaged file is refused.

mod common;

use vitrine::{
    Attributes, Db, Filter, Metric, PlanHint, PrecomputeError, PrecomputeOptions,
    PrecomputedSimilar, ScorerChoice, Search, SimilarFileError, SimilarTable, SimilarTo,
};

const DIM: usize = 16;

fn catalog(dir: &std::path::Path) -> Db {
    let db = Db::builder()
        .vector_space("embedding", DIM, Metric::Cosine)
        .checkpoint_on_drop(false)
        .open(dir)
        .unwrap();
    for i in 0..120 {
        let id = format!("sku-{i:03}");
        let mut a = Attributes::new().in_stock(i % 5 != 0);
        if i % 3 == 0 {
            a = a.set("model_id", format!("m{}", i % 12));
        }
        // A few products without a vector.
        if i % 37 == 36 {
            db.insert(&id, a, Vec::<(&str, Vec<f32>)>::new()).unwrap();
        } else {
            db.insert(&id, a, [("embedding", common::vector_for(&id, DIM))])
                .unwrap();
        }
    }
    db
}

/// Brute force from the public API: every pair, f64 cosine.
fn brute(db: &Db, k: usize, variant_key: Option<&str>) -> Vec<(String, Vec<(String, f32)>)> {
    let products: Vec<_> = db
        .ids()
        .iter()
        .map(|id| db.get(id).unwrap().unwrap())
        .collect();
    products
        .iter()
        .map(|p| {
            let mut hits = Vec::new();
            if let Some(v) = p.vectors.get("embedding") {
                let variant = variant_key.and_then(|key| p.attributes.get(key));
                for o in &products {
                    let Some(w) = o.vectors.get("embedding") else {
                        continue;
                    };
                    let same_variant = variant.is_some()
                        && variant == variant_key.and_then(|key| o.attributes.get(key));
                    if o.id == p.id || !o.attributes.in_stock || same_variant {
                        continue;
                    }
                    hits.push((o.id.clone(), common::cosine(v, w)));
                }
            }
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
            (p.id.clone(), hits)
        })
        .collect()
}

fn assert_close(got: &[(String, f32)], want: &[(String, f32)], what: &str) {
    assert_eq!(
        got.iter().map(|h| &h.0).collect::<Vec<_>>(),
        want.iter().map(|h| &h.0).collect::<Vec<_>>(),
        "{what}"
    );
    for (a, b) in got.iter().zip(want) {
        assert!((a.1 - b.1).abs() < 1e-5, "{what}: {} vs {}", a.1, b.1);
    }
}

#[test]
fn precompute_equals_brute_force_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let db = catalog(&dir.path().join("db"));
    let in_stock = Filter::new().in_stock();
    for variant_key in [None, Some("model_id")] {
        let options = PrecomputeOptions {
            variant_key: variant_key.map(str::to_string),
            scorer: Some(ScorerChoice::Cpu),
            batch: 17,
            ..PrecomputeOptions::default()
        };
        let out = dir.path().join("similar.vsim");
        let table = db.precompute_similar(8, &in_stock, &options).unwrap();
        table.write(&out).unwrap();
        assert_eq!(table.ids, db.ids());
        let served = PrecomputedSimilar::open(&out).unwrap();
        assert_eq!(served.len(), 120);
        assert_eq!(served.k(), 8);
        for (id, want) in brute(&db, 8, variant_key) {
            let got = table.get(&id).unwrap();
            assert_close(&got, &want, &format!("{id} {variant_key:?}"));
            assert_eq!(
                served.get(&id).unwrap(),
                got,
                "{id}: file differs from memory"
            );
        }
        assert!(served.get("nope").is_none());
    }
}

#[test]
fn precompute_agrees_with_exact_search() {
    let dir = tempfile::tempdir().unwrap();
    let db = catalog(dir.path());
    let table = db
        .precompute_similar(5, &Filter::new().in_stock(), &PrecomputeOptions::default())
        .unwrap();
    for id in db.ids().iter().step_by(7) {
        if db.get(id).unwrap().unwrap().vectors.is_empty() {
            assert_eq!(table.get(id).unwrap(), []);
            continue;
        }
        let f = Filter::new().in_stock();
        let hits = db
            .search(
                &Search::new(SimilarTo::Id(id), 5)
                    .filter(&f)
                    .plan(PlanHint::Exact),
            )
            .unwrap()
            .hits;
        let want: Vec<(String, f32)> = hits.into_iter().map(|h| (h.id, h.score)).collect();
        assert_close(&table.get(id).unwrap(), &want, id);
    }
}

#[test]
fn writing_replaces_only_an_earlier_similar_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = catalog(&dir.path().join("db"));
    let table = db
        .precompute_similar(3, &Filter::new(), &PrecomputeOptions::default())
        .unwrap();
    let out = dir.path().join("nightly.vsim");
    table.write(&out).unwrap();
    table.write(&out).unwrap(); // last night's file is replaced
    let huge = db
        .precompute_similar(1 << 40, &Filter::new(), &PrecomputeOptions::default())
        .unwrap();
    // 117 of the 120 products have a vector: at most 116 neighbours each.
    assert_eq!(huge.k, 116, "k is lowered to the other products");
    // Lists are held until the end: a k that stays above the cap is refused.
    let bigger = catalog(&dir.path().join("bigger"));
    for i in 0..vitrine::MAX_SIMILAR_K + 1 {
        let id = format!("x{i}");
        bigger
            .insert(
                &id,
                Attributes::new(),
                [("embedding", common::vector_for(&id, DIM))],
            )
            .unwrap();
    }
    let e = bigger
        .precompute_similar(1 << 40, &Filter::new(), &PrecomputeOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("k must be at most 1000"), "{e}");
    let mut zero = huge;
    zero.k = 0;
    zero.lists.iter_mut().for_each(Vec::clear);
    let e = zero.write(&dir.path().join("zero.vsim")).unwrap_err();
    assert!(e.to_string().contains("k must be at least 1"), "{e}");
    let precious = dir.path().join("db").join("notes.txt");
    std::fs::write(&precious, "not ours").unwrap();
    for target in [precious.clone(), dir.path().join("db")] {
        let e = table.write(&target).unwrap_err();
        assert!(e.to_string().contains("refusing to replace"), "{e}");
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "not ours");
    assert!(PrecomputedSimilar::open(&out).is_ok());
    // The same checks, with a missing folder, before any table exists.
    assert!(SimilarTable::check_destination(&out).is_ok());
    assert!(SimilarTable::check_destination(&dir.path().join("new.vsim")).is_ok());
    for (target, says) in [
        (precious.clone(), "refusing to replace"),
        (dir.path().join("db"), "refusing to replace"),
        (dir.path().join("no-such/x.vsim"), "folder does not exist"),
        // A name the file system takes, but not the temporary file's
        // (longer): found before the scoring, not after.
        (
            dir.path().join(format!("{}.vsim", "n".repeat(245))),
            "name too long",
        ),
    ] {
        let e = SimilarTable::check_destination(&target).unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
        let e = table.write(&target).unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn damaged_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = catalog(&dir.path().join("db"));
    let out = dir.path().join("nightly.vsim");
    db.precompute_similar(4, &Filter::new().in_stock(), &PrecomputeOptions::default())
        .unwrap()
        .write(&out)
        .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    for at in [3, 17, 100, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        std::fs::write(&out, &bad).unwrap();
        let e = PrecomputedSimilar::open(&out).unwrap_err();
        assert!(
            matches!(e, SimilarFileError::Corrupt { .. }),
            "byte {at}: {e}"
        );
        assert!(e.to_string().contains("nightly.vsim"), "{e}");
    }
    // A flipped bit of the version field reads as damage too, not only as
    // a newer build's file.
    let mut bad = bytes.clone();
    bad[9] ^= 0x01;
    std::fs::write(&out, &bad).unwrap();
    let e = PrecomputedSimilar::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("format version 257") && e.contains("damaged, or written by a newer build"),
        "{e}"
    );
    for len in [0, 10, 64, bytes.len() - 8] {
        std::fs::write(&out, &bytes[..len]).unwrap();
        assert!(matches!(
            PrecomputedSimilar::open(&out),
            Err(SimilarFileError::Corrupt { .. })
        ));
    }
    assert!(matches!(
        PrecomputedSimilar::open(dir.path().join("missing.vsim")),
        Err(SimilarFileError::Io { .. })
    ));
    // A named pipe given as the file: refused, not waited on for ever.
    #[cfg(unix)]
    {
        let fifo = dir.path().join("pipe.vsim");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let (tx, rx) = std::sync::mpsc::channel();
            let opening = fifo.clone();
            std::thread::spawn(move || tx.send(PrecomputedSimilar::open(&opening).map(|_| ())));
            let r = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the open of a named pipe returns");
            assert!(
                matches!(&r, Err(SimilarFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidInput),
                "{r:?}"
            );
        }
    }
}

#[test]
fn gpu_choice_without_a_gpu_is_a_typed_error_and_auto_works() {
    // (Without `cuda` no GPU can be used, whatever VITRINE_GPU says.)
    if cfg!(feature = "cuda") && std::env::var("VITRINE_GPU").as_deref() == Ok("1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = catalog(dir.path());
    let gpu = PrecomputeOptions {
        scorer: Some(ScorerChoice::Gpu),
        ..PrecomputeOptions::default()
    };
    let e = db.precompute_similar(3, &Filter::new(), &gpu).unwrap_err();
    assert!(
        matches!(
            e,
            PrecomputeError::Scorer(vitrine_index::ScorerError::GpuUnavailable { .. })
        ) && e.is_user_error(),
        "{e}"
    );
    let auto = db
        .precompute_similar(3, &Filter::new(), &PrecomputeOptions::default())
        .unwrap();
    assert_eq!(auto.backend, vitrine_index::Backend::Cpu);
    let unknown = PrecomputeOptions {
        space: Some("nope".into()),
        ..PrecomputeOptions::default()
    };
    assert!(matches!(
        db.precompute_similar(3, &Filter::new(), &unknown),
        Err(ref e @ vitrine::PrecomputeError::Db(
            vitrine::Error::UnknownVector { .. }
        )) if e.is_user_error()
    ));
}

#[test]
fn a_variant_key_that_groups_a_whole_brand_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .vector_space("embedding", DIM, Metric::Cosine)
        .checkpoint_on_drop(false)
        .open(dir.path())
        .unwrap();
    for i in 0..=vitrine::MAX_VARIANTS {
        let id = format!("p{i:05}");
        db.insert(
            &id,
            Attributes::new().set("brand", "A"),
            [("embedding", common::vector_for(&id, DIM))],
        )
        .unwrap();
    }
    let options = PrecomputeOptions {
        variant_key: Some("brand".into()),
        ..Default::default()
    };
    match db.precompute_similar(5, &Filter::new(), &options) {
        Err(ref e @ PrecomputeError::TooManyVariants { count, .. }) => {
            assert_eq!(count, vitrine::MAX_VARIANTS + 1);
            assert!(e.is_user_error());
        }
        other => panic!("expected TooManyVariants, got {other:?}"),
    }
    // A key no product has (a typo) groups nothing; the engine's own
    // attributes group no variants (the model's name emptied every list).
    for (key, says) in [
        ("brnad", "no product has"),
        ("vitrine.model", "the engine's own"),
        ("price", "not a free attribute"),
    ] {
        let options = PrecomputeOptions {
            variant_key: Some(key.into()),
            ..Default::default()
        };
        match db.precompute_similar(5, &Filter::new(), &options) {
            Err(PrecomputeError::Db(vitrine::Error::InvalidConfig(m))) => {
                assert!(m.contains(says), "{key}: {m}")
            }
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// A zero vector under the inner product ranks nothing: `similar` refuses
/// it as a query, so its list is empty, not the first k ids at score 0.
/// Others still list it (score 0), as a search does.
#[test]
fn a_zero_vector_under_the_inner_product_gets_no_list() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .vector_space("dot", DIM, Metric::InnerProduct)
        .checkpoint_on_drop(false)
        .open(dir.path())
        .unwrap();
    for i in 0..20 {
        let id = format!("sku-{i:02}");
        db.insert(
            &id,
            Attributes::new(),
            [("dot", common::vector_for(&id, DIM))],
        )
        .unwrap();
    }
    db.insert("zero", Attributes::new(), [("dot", vec![0.0; DIM])])
        .unwrap();
    assert!(db
        .similar(SimilarTo::Id("zero"), 5, &Filter::new())
        .is_err());
    let t = db
        .precompute_similar(20, &Filter::new(), &PrecomputeOptions::default())
        .unwrap();
    assert_eq!(t.get("zero"), Some(Vec::new()));
    let online: Vec<String> = db
        .similar(SimilarTo::Id("sku-01"), 20, &Filter::new())
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    let listed = t.get("sku-01").unwrap();
    assert!(
        listed.iter().any(|(id, s)| id == "zero" && *s == 0.0),
        "{listed:?}"
    );
    assert_eq!(
        listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        online
    );
}
