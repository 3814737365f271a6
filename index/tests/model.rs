//! SpaceIndex against a HashMap + brute-force model, and header fuzzing.

use std::collections::HashMap;

use proptest::prelude::*;
use vitrine_index::{
    encode_index_header, parse_index_header, AllowSet, Hit, IndexConfig, Metric, PlanHint,
    SearchOptions, SpaceIndex, VectorIndex,
};

const DIM: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Upsert(u64, [i8; DIM]),
    Remove(u64),
    /// Save, then go on with the index loaded from the save.
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..24, prop::array::uniform4(-3i8..=3)).prop_map(|(d, v)| Op::Upsert(d, v)),
        2 => (0u64..24).prop_map(Op::Remove),
        1 => Just(Op::Reload),
    ]
}

fn vecf(v: &[i8; DIM]) -> Vec<f32> {
    v.iter().map(|&x| f32::from(x)).collect()
}

/// Small integer vectors under InnerProduct: every dot is exact in f32, so
/// scores and tie-breaks must match the model bit for bit.
fn model_search(
    model: &HashMap<u64, Vec<f32>>,
    q: &[f32],
    k: usize,
    allow: Option<&AllowSet>,
) -> Vec<Hit> {
    let mut hits: Vec<Hit> = model
        .iter()
        .filter(|(d, _)| allow.is_none_or(|a| a.contains(**d)))
        .map(|(&doc, v)| Hit {
            doc,
            score: v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() + 0.0,
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
    hits.truncate(k);
    hits
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn space_index_matches_model(
        ops in prop::collection::vec(op(), 1..120),
        q in prop::array::uniform4(-3i8..=3),
        k in 0usize..30,
        allow in prop::collection::vec(0u64..24, 0..12),
    ) {
        let mut idx = SpaceIndex::new(DIM, Metric::InnerProduct, IndexConfig::default()).unwrap();
        let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
        let tmp = tempfile::tempdir().unwrap();
        for (generation, op) in ops.iter().enumerate() {
            match op {
                Op::Reload => {
                    let dir = tmp.path().join("space");
                    idx.save(&dir, generation as u64).unwrap();
                    let flat = idx.flat().clone();
                    idx = SpaceIndex::load(&dir, generation as u64, flat, IndexConfig::default())
                        .unwrap();
                }
                Op::Upsert(d, v) => {
                    idx.upsert(*d, &vecf(v)).unwrap();
                    model.insert(*d, vecf(v));
                }
                Op::Remove(d) => {
                    prop_assert_eq!(idx.remove(*d), model.remove(d).is_some());
                }
            }
            prop_assert_eq!(idx.len(), model.len());
            prop_assert!(idx.tombstones() as f64 <= 0.25 * idx.graph().points() as f64);
        }
        for d in 0..24u64 {
            prop_assert_eq!(idx.get(d), model.get(&d).map(|v| v.as_slice()));
        }
        let q = vecf(&q);
        let allow = AllowSet::from_unsorted(allow);
        for a in [None, Some(&allow)] {
            let opts = SearchOptions::new(k).with_plan(PlanHint::Exact);
            let got = idx.search(&q, &opts, a).unwrap();
            prop_assert_eq!(got.hits, model_search(&model, &q, k, a));
            // The graph may miss hits but never returns dead or disallowed docs.
            let g = idx.search(&q, &SearchOptions::new(k).with_plan(PlanHint::Graph), a).unwrap();
            // As many as exist (a short graph answer falls back to a scan),
            // each once, with its current vector's score, best first.
            prop_assert_eq!(g.hits.len(), model_search(&model, &q, k, a).len());
            let all = model_search(&model, &q, usize::MAX, a);
            for h in &g.hits {
                prop_assert!(model.contains_key(&h.doc));
                prop_assert!(a.is_none_or(|a| a.contains(h.doc)));
                let want = all.iter().find(|m| m.doc == h.doc).map(|m| m.score.to_bits());
                prop_assert_eq!(Some(h.score.to_bits()), want, "doc {}", h.doc);
            }
            let mut docs: Vec<u64> = g.hits.iter().map(|h| h.doc).collect();
            docs.sort_unstable();
            docs.dedup();
            prop_assert_eq!(docs.len(), g.hits.len(), "a doc twice: {:?}", g.hits);
            prop_assert!(g.hits.windows(2).all(|w| {
                w[0].score.total_cmp(&w[1].score).then(w[1].doc.cmp(&w[0].doc)).is_gt()
            }), "not best first: {:?}", g.hits);
        }
    }

    #[test]
    fn header_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_index_header(&bytes);
    }

    /// Past the checksum: a header whose fields were changed (bytes XORed
    /// in) and its checksum recomputed either is refused or is exactly what
    /// it encodes back to (no byte goes unchecked), and never panics.
    #[test]
    fn edited_headers_with_a_valid_checksum_parse_whole_or_not_at_all(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let good = saved_header();
        // Magic and version stay: past them is what the checksum guards.
        let (start, end) = (12, good.len() - 4);
        let mut edited = good.clone();
        for (at, x) in &edits {
            edited[start + at.index(end - start)] ^= x;
        }
        let crc = crc32fast::hash(&edited[..end]);
        edited[end..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(h) = parse_index_header(&edited) {
            prop_assert_eq!(encode_index_header(&h), edited);
        }
    }

    #[test]
    fn damaged_headers_are_refused(pos in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let good = saved_header();
        let header = parse_index_header(&good).unwrap();
        prop_assert_eq!(encode_index_header(&header), good.clone());
        let mut flipped = good.clone();
        flipped[pos.index(good.len())] ^= 1 << bit;
        prop_assert!(parse_index_header(&flipped).is_err());
        prop_assert!(parse_index_header(&good[..cut.index(good.len())]).is_err());
    }
}

/// The header file of a small saved index with a tombstone.
fn saved_header() -> Vec<u8> {
    let mut idx = SpaceIndex::new(DIM, Metric::Cosine, IndexConfig::default()).unwrap();
    for d in 0..5u64 {
        idx.upsert(d, &[1.0, d as f32, 0.5, 0.0]).unwrap();
    }
    idx.remove(2);
    let dir = tempfile::tempdir().unwrap();
    idx.save(&dir.path().join("i"), 1).unwrap();
    std::fs::read(dir.path().join("i").join("index.vtx")).unwrap()
}
