//! Arbitrary text through the CSV reader: records, an unclosed quote or a
//! record of too many fields, never a panic; written back with every field quoted, the records read
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(records) = vitrine::parse_csv(text) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    assert!(records.windows(2).all(|w| w[0].line < w[1].line));
    assert!(records.iter().all(|r| r.line >= 1 && r.line <= lines));
    let quoted: Vec<String> = records
        .iter()
        .map(|r| {
            r.fields
                .iter()
                .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let again = vitrine::parse_csv(&quoted.join("\n")).expect("quoted fields close");
    assert_eq!(
        again.iter().map(|r| &r.fields).collect::<Vec<_>>(),
        records.iter().map(|r| &r.fields).collect::<Vec<_>>()
    );
});
