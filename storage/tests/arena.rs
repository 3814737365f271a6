//! Vector arena: round trips, and refusal of every kind of damaged file.

use std::path::Path;

use proptest::prelude::*;
use vitrine_storage::{open_arena_bytes, write_arena, Arena, Error};

const HEADER: usize = 64;

fn rows(n: u64, dim: usize) -> Vec<(u64, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let v = (0..dim)
                .map(|j| i as f32 * 10.0 + j as f32 - 0.25)
                .collect();
            (i * 7 + 3, v)
        })
        .collect()
}

fn write(path: &Path, dim: u32, generation: u64, rows: &[(u64, Vec<f32>)]) {
    write_arena(
        path,
        dim,
        generation,
        rows.iter().map(|(d, v)| (*d, v.as_slice())),
    )
    .unwrap();
}

/// A small valid arena file's bytes (5 rows of dim 3: 64 + 40 + 60 bytes).
fn sample() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.arena");
    write(&path, 3, 42, &rows(5, 3));
    std::fs::read(&path).unwrap()
}

/// Copies `bytes` into 4-byte aligned storage, as a mapped file would be.
fn validate(bytes: &[u8]) -> Result<(), Error> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    buf[..bytes.len()].copy_from_slice(bytes);
    open_arena_bytes(&buf[..bytes.len()]).map(|_| ())
}

fn reason_of(r: Result<(), Error>) -> String {
    match r {
        Err(Error::ArenaCorrupt { reason, .. }) => reason,
        other => panic!("expected ArenaCorrupt, got {other:?}"),
    }
}

fn open_file(dir: &Path, bytes: &[u8]) -> Result<Arena, Error> {
    let path = dir.join("damaged.arena");
    std::fs::write(&path, bytes).unwrap();
    let r = Arena::open(&path);
    if let Err(Error::ArenaCorrupt { path: p, .. }) = &r {
        assert_eq!(p, &path, "error names the file");
    }
    r
}

fn with_header_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.arena");
    let mut data = rows(100, 5);
    data[3].1[1] = f32::NAN;
    data[4].1[0] = -0.0;
    write(&path, 5, 7, &data);
    let arena = Arena::open(&path).unwrap();
    assert_eq!((arena.dim(), arena.len(), arena.generation()), (5, 100, 7));
    assert!(!arena.is_empty());
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (i, (doc, v)) in data.iter().enumerate() {
        assert_eq!(arena.doc(i), *doc);
        assert_eq!(bits(arena.vector(i)), bits(v));
    }
    let iterated: Vec<_> = arena.iter().map(|(d, v)| (d, bits(v))).collect();
    let want: Vec<_> = data.iter().map(|(d, v)| (*d, bits(v))).collect();
    assert_eq!(iterated, want);
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        HEADER + 100 * 8 + 100 * 5 * 4
    );

    // Overwriting replaces the file atomically and leaves no temp files.
    write(&path, 2, 8, &rows(3, 2));
    let arena = Arena::open(&path).unwrap();
    assert_eq!((arena.dim(), arena.len(), arena.generation()), (2, 3, 8));
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["image.arena"]);
}

#[test]
fn empty_arena_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.arena");
    write(&path, 4, 1, &[]);
    let arena = Arena::open(&path).unwrap();
    assert!(arena.is_empty());
    assert_eq!(arena.iter().count(), 0);
    assert_eq!(arena.view().dim(), 4);
}

#[test]
fn bad_input_is_refused_and_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.arena");
    write(&path, 3, 1, &rows(2, 3));
    let bad = [(1u64, &[1.0f32, 2.0][..])];
    assert!(matches!(
        write_arena(&path, 3, 2, bad),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        write_arena(&path, 0, 2, []),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(Arena::open(&path).unwrap().generation(), 1);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    match write_arena(&tmp.path().join("missing/a.arena"), 3, 1, []) {
        Err(Error::Io { .. }) => {}
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn every_truncation_is_refused() {
    let good = sample();
    assert!(validate(&good).is_ok());
    let tmp = tempfile::tempdir().unwrap();
    for len in 0..good.len() {
        reason_of(validate(&good[..len]));
        match open_file(tmp.path(), &good[..len]) {
            Err(Error::ArenaCorrupt { .. }) => {}
            other => panic!("truncated to {len}: expected ArenaCorrupt, got {other:?}"),
        }
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(reason_of(validate(&longer)).contains("implies"));
    assert!(matches!(
        open_file(tmp.path(), &longer),
        Err(Error::ArenaCorrupt { .. })
    ));
}

#[test]
fn every_single_bit_flip_is_refused() {
    let good = sample();
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            reason_of(validate(&bad));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    for byte in [12, 20, 33, 61, HEADER + 3, good.len() - 1] {
        let mut bad = good.clone();
        bad[byte] ^= 0x10;
        assert!(matches!(
            open_file(tmp.path(), &bad),
            Err(Error::ArenaCorrupt { .. })
        ));
    }
}

#[test]
fn unknown_version_and_wrong_magic_are_refused() {
    let good = sample();
    let mut v2 = good.clone();
    v2[8..12].copy_from_slice(&2u32.to_le_bytes());
    let v2 = with_header_crc(v2);
    assert!(reason_of(validate(&v2)).contains("version 2"));
    let mut magic = good.clone();
    magic[..8].copy_from_slice(b"VTRNARNB");
    let magic = with_header_crc(magic);
    assert!(reason_of(validate(&magic)).contains("magic"));
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        open_file(tmp.path(), &v2),
        Err(Error::ArenaCorrupt { .. })
    ));
    assert!(matches!(
        open_file(tmp.path(), &magic),
        Err(Error::ArenaCorrupt { .. })
    ));
}

#[test]
fn consistent_but_lying_headers_are_refused() {
    let good = sample();
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        with_header_crc(b)
    };
    // Huge count / dim with a correct header checksum: no overflow, no panic.
    reason_of(validate(&patch(16, &u64::MAX.to_le_bytes())));
    reason_of(validate(&patch(12, &u32::MAX.to_le_bytes())));
    assert!(reason_of(validate(&patch(12, &0u32.to_le_bytes()))).contains("dimension"));
    assert!(reason_of(validate(&patch(36, &[1]))).contains("flags"));
    assert!(reason_of(validate(&patch(50, &[1]))).contains("reserved"));
    assert!(reason_of(validate(&patch(32, &[0, 0, 0, 0]))).contains("payload checksum"));
}

#[test]
fn missing_file_is_io_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nope.arena");
    match Arena::open(&path) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn misaligned_buffers_are_refused_not_panicked_on() {
    let good = sample();
    let mut words = vec![0u32; good.len() / 4 + 2];
    let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    buf[1..=good.len()].copy_from_slice(&good);
    assert!(matches!(
        open_arena_bytes(&buf[1..=good.len()]),
        Err(Error::InvalidInput(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..256), fix in any::<bool>()) {
        if fix && bytes.len() >= HEADER {
            bytes[..12].copy_from_slice(b"VTRNARNA\x01\0\0\0");
            bytes = with_header_crc(bytes);
        }
        let _ = validate(&bytes);
    }
}

/// Two threads writing one path publish one whole file: each call writes
/// a temp file of its own (they shared one, and a rename published a mix).
#[test]
fn concurrent_writes_of_one_path_publish_a_whole_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.arena");
    let (a, b) = (rows(20_000, 16), rows(30_000, 16));
    for _ in 0..8 {
        std::thread::scope(|s| {
            for data in [&a, &b] {
                s.spawn(|| {
                    // The loser's rename may find the file replaced; only
                    // what is published matters.
                    let _ = write_arena(&path, 16, 1, data.iter().map(|(d, v)| (*d, v.as_slice())));
                });
            }
        });
        let arena = Arena::open(&path).unwrap();
        assert!(arena.len() == a.len() || arena.len() == b.len());
    }
}

/// A row past the end panics, whatever its size (a huge one wrapped into
/// range in a release build and read row 0).
#[test]
fn a_row_past_the_end_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.arena");
    write(&path, 4, 1, &rows(1, 4));
    let arena = Arena::open(&path).unwrap();
    for i in [1usize, 1 << 61, 1 << 62] {
        let doc = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arena.doc(i)));
        assert!(doc.is_err(), "doc({i})");
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arena.vector(i).len()));
        assert!(v.is_err(), "vector({i})");
    }
}
