//! Arbitrary text through the concept query parser: typed errors, never a
//! panic. The vocabulary is a small fixed layout with one user tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitrine::{ConceptGroup, ConceptLayout, ConceptQuery, TagMethod, UserTag, Vocabulary};

fn vocabulary() -> Vocabulary {
    let group = |name: &str, start: usize, concepts: &[&str]| ConceptGroup {
        name: name.into(),
        start,
        len: concepts.len().max(4),
        exclusive: true,
        concepts: concepts.iter().map(|c| c.to_string()).collect(),
        labels: concepts.iter().map(|c| c.to_string()).collect(),
    };
    let layout = ConceptLayout {
        dim: 12,
        groups: vec![
            group("visual", 0, &[]),
            group("category", 4, &["shirts", "sports_shoes", "tops", "jeans"]),
            group("colour", 8, &["red", "blue", "black", "white"]),
        ],
    };
    let tag = UserTag {
        name: "funky".into(),
        vector: vec![0.5; 12],
        method: TagMethod::Centroid,
        weight: 0.5,
        positives: vec!["a".into()],
        negatives: vec![],
    };
    Vocabulary::new(layout, [tag])
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let vocab = vocabulary();
        match ConceptQuery::parse(text, &vocab) {
            Ok(q) => assert!(!q.terms().is_empty() || text.to_lowercase().contains("like")),
            Err(e) => {
                assert!(e.column <= text.chars().count());
                let _ = e.render(text);
            }
        }
    }
});
