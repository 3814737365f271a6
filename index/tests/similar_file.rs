//! Precomputed-similar files past their checksums: a file whose payload
//! was changed and whose checksums were recomputed (what only a forger or
//! a bug would write) is refused, or opens to a table every lookup of which
//! answers, as the format promises.

use proptest::prelude::*;
use vitrine_index::{write_similar_file, PrecomputedSimilar};

const HEADER_LEN: usize = 64;

fn reseal(b: &mut [u8]) {
    let payload = crc32fast::hash(&b[HEADER_LEN..]);
    b[56..60].copy_from_slice(&payload.to_le_bytes());
    let header = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&header.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn resealed_edits_are_refused_or_answer_every_lookup(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sim");
        let ids = ["a", "b", "cé", "d", "e"];
        let lists = vec![
            vec![(1, 0.9), (2, 0.5)],
            vec![],
            vec![(0, -1.0)],
            vec![(4, 0.25), (0, 0.1)],
            vec![(3, 0.7)],
        ];
        write_similar_file(&path, 2, &ids, &lists).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let payload = bytes.len() - HEADER_LEN;
        for (at, x) in &edits {
            bytes[HEADER_LEN + at.index(payload)] ^= x;
        }
        if let Some(cut) = cut {
            bytes.truncate(HEADER_LEN + cut.index(payload));
        }
        reseal(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(f) = PrecomputedSimilar::open(&path) {
            for i in 0..f.len() {
                let id = f.id(i).expect("every position has an id");
                prop_assert_eq!(f.position(id), Some(i));
                let list = f.list_at(i);
                prop_assert!(list.len() <= f.k());
                prop_assert!(list.iter().all(|(j, _)| *j < f.len()));
                prop_assert_eq!(f.get(id).map(|l| l.len()), Some(list.len()));
            }
        }
    }
}
