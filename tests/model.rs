//! Random operation sequences against a `BTreeMap` reference, with reopens.

mod common;

use std::collections::BTreeMap;

use common::cosine;
use proptest::prelude::*;
use vitrine::{Attributes, Db, Error, Filter, Metric, PlanHint, Search, SimilarTo};

const DIM: usize = 8;
const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

#[derive(Clone, Debug)]
enum Op {
    Insert(usize, Vec<f32>, bool),
    Upsert(usize, Vec<f32>, bool),
    Delete(usize),
    SetInStock(usize, bool),
    Reopen { checkpoint: bool },
    Search(Vec<f32>, bool),
}

fn vec_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1.0f32..1.0, DIM)
        .prop_filter("non-zero", |v| v.iter().any(|x| x.abs() > 1e-3))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..IDS.len(), vec_strategy(), any::<bool>()).prop_map(|(i, v, s)| Op::Insert(i, v, s)),
        3 => (0..IDS.len(), vec_strategy(), any::<bool>()).prop_map(|(i, v, s)| Op::Upsert(i, v, s)),
        2 => (0..IDS.len()).prop_map(Op::Delete),
        2 => (0..IDS.len(), any::<bool>()).prop_map(|(i, s)| Op::SetInStock(i, s)),
        1 => any::<bool>().prop_map(|checkpoint| Op::Reopen { checkpoint }),
        2 => (vec_strategy(), any::<bool>()).prop_map(|(v, f)| Op::Search(v, f)),
    ]
}

fn open(dir: &std::path::Path, checkpoint_on_drop: bool) -> Db {
    Db::builder()
        .vector_space("embedding", DIM, Metric::Cosine)
        .build_threads(1)
        .checkpoint_on_drop(checkpoint_on_drop)
        .open(dir)
        .unwrap()
}

fn check(db: &Db, model: &BTreeMap<String, (Attributes, Vec<f32>)>) {
    assert_eq!(db.len(), model.len());
    assert_eq!(db.ids(), model.keys().cloned().collect::<Vec<_>>());
    for id in IDS {
        let got = db.get(id).unwrap();
        match model.get(id) {
            None => assert!(got.is_none(), "{id} should be absent"),
            Some((attrs, v)) => {
                let p = got.unwrap_or_else(|| panic!("{id} missing"));
                assert_eq!(&p.attributes, attrs);
                assert_eq!(&p.vectors["embedding"], v);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn db_matches_a_btreemap(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Some(open(dir.path(), true));
        let mut model: BTreeMap<String, (Attributes, Vec<f32>)> = BTreeMap::new();
        for op in ops {
            let d = db.as_ref().unwrap();
            match op {
                Op::Insert(i, v, s) => {
                    let attrs = Attributes::new().in_stock(s).brand(format!("b{i}"));
                    let r = d.insert(IDS[i], attrs.clone(), [("embedding", v.clone())]);
                    if model.contains_key(IDS[i]) {
                        prop_assert!(matches!(r, Err(Error::AlreadyExists { .. })), "insert over an existing id");
                    } else {
                        r.unwrap();
                        model.insert(IDS[i].into(), (attrs, v));
                    }
                }
                Op::Upsert(i, v, s) => {
                    let attrs = Attributes::new().in_stock(s).price(i as f64);
                    d.upsert(IDS[i], attrs.clone(), [("embedding", v.clone())]).unwrap();
                    model.insert(IDS[i].into(), (attrs, v));
                }
                Op::Delete(i) => {
                    let existed = d.delete(IDS[i]).unwrap();
                    prop_assert_eq!(existed, model.remove(IDS[i]).is_some());
                }
                Op::SetInStock(i, s) => {
                    let r = d.set_in_stock(IDS[i], s);
                    match model.get_mut(IDS[i]) {
                        Some((attrs, _)) => { r.unwrap(); attrs.in_stock = s; }
                        None => prop_assert!(matches!(r, Err(Error::NotFound { .. })), "set_in_stock on a missing id"),
                    }
                }
                Op::Reopen { checkpoint } => {
                    // A handle opened without checkpoint-on-drop closes like a crash
                    // after its last acknowledged write: the next open rebuilds.
                    drop(db.take());
                    db = Some(open(dir.path(), checkpoint));
                }
                Op::Search(q, in_stock) => {
                    let f = if in_stock { Filter::new().in_stock() } else { Filter::new() };
                    // (Auto scans a catalog this small exactly; Graph asks the
                    // graph, loaded or rebuilt after a reopen.)
                    for plan in [PlanHint::Exact, PlanHint::Auto, PlanHint::Graph] {
                        let hits = d.search(&Search::new(SimilarTo::Vector(&q), 3).filter(&f).plan(plan)).unwrap().hits;
                        let mut want: Vec<(f32, &String)> = model.iter()
                            .filter(|(_, (a, _))| !in_stock || a.in_stock)
                            .map(|(id, (_, v))| (cosine(&q, v), id)).collect();
                        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
                        prop_assert_eq!(hits.len(), want.len().min(3));
                        for (h, w) in hits.iter().zip(&want) {
                            // Ties may order differently; scores must agree.
                            prop_assert!((h.score - w.0).abs() < 1e-4, "{} vs {}", h.score, w.0);
                            // And each hit is the product it names.
                            let (attrs, v) = &model[&h.id];
                            prop_assert!((h.score - cosine(&q, v)).abs() < 1e-4, "{} is not its own score", h.id);
                            prop_assert!(!in_stock || attrs.in_stock, "{} is out of stock", h.id);
                        }
                    }
                }
            }
            check(db.as_ref().unwrap(), &model);
        }
    }
}
