//! Model test: random put/remove/batch/reopen sequences against a BTreeMap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use vitrine_storage::{Durability, Keyspace, Record, Store, StoreOptions};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Rec {
    n: u64,
    s: String,
    v: Vec<(String, Vec<u8>)>,
}

impl Record for Rec {
    const VERSION: u8 = 7;
}

#[derive(Clone, Debug)]
enum BatchOp {
    Put(Vec<u8>, Rec),
    Remove(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Rec),
    Remove(Vec<u8>),
    Batch(Vec<BatchOp>),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small key domain so puts, removes and batches collide often.
    prop_oneof![
        (0u8..6).prop_map(|k| vec![k]),
        (0u8..3).prop_map(|k| format!("key-{k}").into_bytes()),
        Just(Vec::new()),
    ]
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        any::<u64>(),
        ".{0,8}",
        prop::collection::vec((".{0,3}", prop::collection::vec(any::<u8>(), 0..4)), 0..3),
    )
        .prop_map(|(n, s, v)| Rec { n, s, v })
}

fn op() -> impl Strategy<Value = Op> {
    let batch_op = prop_oneof![
        (key(), rec()).prop_map(|(k, r)| BatchOp::Put(k, r)),
        key().prop_map(BatchOp::Remove),
    ];
    prop_oneof![
        4 => (key(), rec()).prop_map(|(k, r)| Op::Put(k, r)),
        2 => key().prop_map(Op::Remove),
        2 => prop::collection::vec(batch_op, 0..6).prop_map(Op::Batch),
        1 => Just(Op::Reopen),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Immediate),
        Just(Durability::Periodic {
            interval: Duration::from_secs(3600)
        }),
    ]
}

fn open(dir: &Path, durability: Durability) -> (Store, Keyspace<Rec>) {
    let store = Store::open(
        dir,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let ks = store.keyspace("recs").unwrap();
    (store, ks)
}

fn check(ks: &Keyspace<Rec>, model: &BTreeMap<Vec<u8>, Rec>) -> Result<(), TestCaseError> {
    let got: BTreeMap<Vec<u8>, Rec> = ks.iter().collect::<Result<_, _>>().unwrap();
    let keys: Vec<Vec<u8>> = ks.keys().collect::<Result<_, _>>().unwrap();
    assert_eq!(keys, got.keys().cloned().collect::<Vec<_>>());
    prop_assert_eq!(&got, model);
    prop_assert_eq!(ks.len().unwrap(), model.len());
    prop_assert_eq!(ks.is_empty(), model.is_empty());
    for k in model.keys() {
        prop_assert_eq!(ks.get(k).unwrap(), model.get(k).cloned());
        prop_assert!(ks.contains(k).unwrap());
    }
    for k in [vec![5u8], b"key-2".to_vec(), Vec::new()] {
        prop_assert_eq!(ks.get(&k).unwrap(), model.get(&k).cloned());
        prop_assert_eq!(ks.contains(&k).unwrap(), model.contains_key(&k));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn keyspace_matches_btreemap(durability in durability(), ops in prop::collection::vec(op(), 1..25)) {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, mut ks) = open(tmp.path(), durability);
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, r) => {
                    ks.put(&k, &r).unwrap();
                    model.insert(k, r);
                }
                Op::Remove(k) => {
                    let existed = ks.remove(&k).unwrap();
                    prop_assert_eq!(existed, model.remove(&k).is_some());
                }
                Op::Batch(bops) => {
                    let mut b = ks.batch();
                    for bop in bops {
                        match bop {
                            BatchOp::Put(k, r) => {
                                b.put(&k, &r).unwrap();
                                model.insert(k, r);
                            }
                            BatchOp::Remove(k) => {
                                b.remove(&k);
                                model.remove(&k);
                            }
                        }
                    }
                    ks.apply(b).unwrap();
                }
                Op::Reopen => {
                    drop(ks);
                    drop(store);
                    (store, ks) = open(tmp.path(), durability);
                }
            }
            check(&ks, &model)?;
        }
        drop(ks);
        drop(store);
        let (_store, ks) = open(tmp.path(), durability);
        check(&ks, &model)?;
    }
}
