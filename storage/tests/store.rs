//! Store and keyspace behaviour: persistence, durability, corruption, format.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use proptest::prelude::*;
use vitrine_storage::{
    decode_record, Attributes, Durability, Error, Keyspace, Meta, ProductRecord, SpaceSpec, Store,
    StoreOptions, StoredMetric, FORMAT_VERSION,
};

const CHILD_DIR: &str = "VITRINE_TEST_CHILD_DIR";

fn product(i: u64) -> ProductRecord {
    ProductRecord {
        doc: i,
        attrs: Attributes::new()
            .brand(format!("brand-{}", i % 3))
            .price(i as f64 * 1.5)
            .in_stock(i.is_multiple_of(2))
            .set("color", ["red", "blue"][i as usize % 2]),
        vectors: vec![
            ("image".into(), vec![i as f32, -0.5, f32::MIN_POSITIVE]),
            ("text".into(), vec![1.0; 4]),
        ],
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("sku-{i:03}").into_bytes()
}

fn open(dir: &Path) -> (Store, Keyspace<ProductRecord>) {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let ks = store.keyspace("products").unwrap();
    (store, ks)
}

/// Reruns this test binary with only `test` selected and `CHILD_DIR` set, so
/// the child can write and then abort without dropping anything.
fn run_child(test: &str, dir: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        aborted(out.status),
        "child should have aborted: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
fn aborted(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6) // SIGABRT, not a panic in the child
}

#[cfg(not(unix))]
fn aborted(status: ExitStatus) -> bool {
    !status.success()
}

#[test]
fn types_are_send_sync_clone() {
    fn assert<T: Send + Sync + Clone>() {}
    assert::<Store>();
    assert::<Keyspace<ProductRecord>>();
    assert::<Keyspace<std::rc::Rc<u8>>>();
}

#[test]
fn records_persist_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (store, ks) = open(tmp.path());
        for i in 0..50 {
            ks.put(&key(i), &product(i)).unwrap();
        }
        assert!(ks.remove(&key(7)).unwrap());
        assert!(!ks.remove(&key(7)).unwrap());
        let meta = store.keyspace::<Meta>("meta").unwrap();
        meta.put(
            b"meta",
            &Meta {
                spaces: vec![SpaceSpec {
                    name: "image".into(),
                    dim: 3,
                    metric: StoredMetric::Cosine,
                }],
                model_fingerprint: Some("clip-v1".into()),
                index_generation: 9,
            },
        )
        .unwrap();
        assert!(store.size_on_disk().unwrap() > 0);
    }
    let (store, ks) = open(tmp.path());
    assert_eq!(ks.len().unwrap(), 49);
    assert_eq!(ks.name(), "products");
    for i in (0..50).filter(|&i| i != 7) {
        assert_eq!(ks.get(&key(i)).unwrap(), Some(product(i)));
    }
    assert_eq!(ks.get(&key(7)).unwrap(), None);
    let all: Vec<_> = ks.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 49);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "iter is key-ordered"
    );
    let meta = store.keyspace::<Meta>("meta").unwrap();
    // The format-version key lives elsewhere: iterating "meta" sees only records.
    let metas: Vec<_> = meta.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].1.index_generation, 9);
}

#[test]
fn paused_writes_wait_and_reads_go_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let (store, ks) = open(tmp.path());
    ks.put(&key(1), &product(1)).unwrap();
    let (started, written) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let paused = store.pause_writes();
        s.spawn(|| {
            started.store(true, Ordering::SeqCst);
            ks.put(&key(2), &product(2)).unwrap();
            written.store(true, Ordering::SeqCst);
        });
        // The writer is at its put; give a broken pause time to let it in.
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !written.load(Ordering::SeqCst),
            "a write went through the pause"
        );
        // Reads, and opening an existing keyspace, do not wait.
        assert_eq!(ks.get(&key(1)).unwrap(), Some(product(1)));
        store.keyspace::<ProductRecord>("products").unwrap();
        drop(paused);
    });
    assert!(written.load(Ordering::SeqCst));
    assert_eq!(ks.get(&key(2)).unwrap(), Some(product(2)));
}

#[test]
fn an_unfinished_sled_snapshot_is_set_aside() {
    // An open that fails on a full disk can leave sled an empty
    // `snap.<lsn>.generating`, which sled 0.34 would then read, and refuse.
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_store, ks) = open(tmp.path());
        for i in 0..20 {
            ks.put(&key(i), &product(i)).unwrap();
        }
    }
    let sled = tmp.path().join("sled");
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    std::fs::write(sled.join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
    let (_store, ks) = open(tmp.path());
    for i in 0..20 {
        assert_eq!(ks.get(&key(i)).unwrap(), Some(product(i)));
    }
    assert!(!names(&sled).iter().any(|n| n.contains("7FFFFFFFFFFFFFFF")));
    assert!(
        names(tmp.path()).contains(&"sled-snap.7FFFFFFFFFFFFFFF.generating.unfinished".to_string())
    );
}

#[test]
fn batch_applies_atomically_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, ks) = open(tmp.path());
    ks.put(&key(1), &product(1)).unwrap();
    let mut b = ks.batch();
    b.put(&key(2), &product(2)).unwrap();
    b.remove(&key(1));
    b.put(&key(3), &product(3)).unwrap();
    b.put(&key(3), &product(4)).unwrap();
    assert!(
        ks.contains(&key(1)).unwrap(),
        "nothing applied before apply()"
    );
    ks.apply(b).unwrap();
    assert!(!ks.contains(&key(1)).unwrap());
    assert_eq!(ks.get(&key(2)).unwrap(), Some(product(2)));
    assert_eq!(ks.get(&key(3)).unwrap(), Some(product(4)));
    ks.apply(ks.batch()).unwrap();
    assert_eq!(ks.len().unwrap(), 2);
}

#[test]
fn generate_id_is_monotonic_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let last = {
        let (store, _) = open(tmp.path());
        let a = store.generate_id().unwrap();
        let b = store.generate_id().unwrap();
        assert!(b > a);
        b
    };
    let (store, _) = open(tmp.path());
    assert!(store.generate_id().unwrap() > last);
}

/// A salvage carries the id counter over however far it has run: a store
/// whose counter is near 2⁴⁰ (sled adds two million at each open, so a
/// long-lived store gets there) is salvaged at once, and the copy's ids
/// continue past the old ones, in the copy and after it is reopened.
/// (Counting up one id at a time never ended.)
#[test]
fn a_salvage_carries_a_far_id_counter_over() {
    let tmp = tempfile::tempdir().unwrap();
    let sled_dir = tmp.path().join("db").join("sled");
    for _ in 0..2 {
        // Reopened with a huge persist interval (a multiple of the default
        // one, as sled needs), sled starts past twice it.
        let db = raw_sled_with(
            sled::Config::new()
                .path(&sled_dir)
                .idgen_persist_interval(550_000_000_000),
        );
        db.generate_id().unwrap();
        db.flush().unwrap();
    }
    let (store, ks) = open(&tmp.path().join("db"));
    ks.put(&key(1), &product(1)).unwrap();
    let old = store.generate_id().unwrap();
    assert!(old >= 1 << 40, "{old}");
    let dest = tmp.path().join("salvaged");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let salvaged = store.salvage_into(&dest).map(|r| r.records);
        let _ = tx.send((salvaged, store.generate_id().unwrap(), dest));
    });
    let (salvaged, old, dest) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the salvage did not end");
    assert!(salvaged.unwrap() >= 1);
    for _ in 0..2 {
        let (fresh, copied) = open(&dest);
        assert_eq!(copied.get(&key(1)).unwrap(), Some(product(1)));
        assert!(fresh.generate_id().unwrap() > old);
    }
}

#[test]
fn immediate_writes_survive_abort_without_flush() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let (_store, ks) = open(Path::new(&dir));
        for i in 0..10 {
            ks.put(&key(i), &product(i)).unwrap();
        }
        ks.remove(&key(3)).unwrap();
        let mut b = ks.batch();
        b.put(&key(20), &product(20)).unwrap();
        b.remove(&key(4));
        ks.apply(b).unwrap();
        // No drop, no flush: only what each write made durable survives.
        std::process::abort();
    }
    let tmp = tempfile::tempdir().unwrap();
    run_child("immediate_writes_survive_abort_without_flush", tmp.path());
    let (store, ks) = open(tmp.path());
    assert_eq!(store.durability(), Durability::Immediate);
    let got: BTreeMap<_, _> = ks.iter().collect::<Result<_, _>>().unwrap();
    let want: BTreeMap<_, _> = (0..10)
        .chain([20])
        .filter(|i| ![3, 4].contains(i))
        .map(|i| (key(i), product(i)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn periodic_writes_survive_abort_after_store_flush() {
    let periodic = StoreOptions {
        durability: Durability::Periodic {
            interval: Duration::from_secs(3600),
        },
        ..StoreOptions::default()
    };
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let store = Store::open(Path::new(&dir), periodic).unwrap();
        let ks = store.keyspace::<ProductRecord>("products").unwrap();
        for i in 0..10 {
            ks.put(&key(i), &product(i)).unwrap();
            assert_eq!(
                ks.get(&key(i)).unwrap(),
                Some(product(i)),
                "visible at once"
            );
        }
        store.flush().unwrap();
        std::process::abort();
    }
    let tmp = tempfile::tempdir().unwrap();
    run_child(
        "periodic_writes_survive_abort_after_store_flush",
        tmp.path(),
    );
    let store = Store::open(tmp.path(), periodic.clone()).unwrap();
    assert_eq!(store.durability(), periodic.durability);
    let ks = store.keyspace::<ProductRecord>("products").unwrap();
    assert_eq!(ks.len().unwrap(), 10);
}

fn corrupt_fixture() -> (tempfile::TempDir, Store, Keyspace<ProductRecord>) {
    let tmp = tempfile::tempdir().unwrap();
    let (store, ks) = open(tmp.path());
    for i in [0, 1, 8, 9] {
        ks.put(&key(i), &product(i)).unwrap();
    }
    let valid = valid_encoding(5);
    ks.put_raw(
        b"sku-002-garbage",
        &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    )
    .unwrap();
    let mut wrong_version = valid.clone();
    wrong_version[0] = 9;
    ks.put_raw(b"sku-003-version", &wrong_version).unwrap();
    ks.put_raw(b"sku-004-truncated", &valid[..valid.len() / 2])
        .unwrap();
    let mut trailing = valid.clone();
    trailing.push(0);
    ks.put_raw(b"sku-005-trailing", &trailing).unwrap();
    ks.put_raw(b"sku-006-empty", &[]).unwrap();
    ks.put_raw(&[b's', 0xff, 0x00], &[1, 2]).unwrap();
    (tmp, store, ks)
}

/// `[VERSION][bincode payload]`, the documented record encoding.
fn valid_encoding(i: u64) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend(bincode::serde::encode_to_vec(product(i), bincode::config::standard()).unwrap());
    assert_eq!(decode_record::<ProductRecord>(&v).unwrap(), product(i));
    v
}

#[test]
fn damaged_records_are_typed_errors_naming_tree_and_key() {
    let (_tmp, _store, ks) = corrupt_fixture();
    let corruption = |k: &[u8]| match ks.get(k) {
        Err(Error::Corruption {
            store,
            tree,
            key,
            reason,
        }) => {
            assert_eq!(tree, "products");
            assert!(store.ends_with("sled"), "{}", store.display());
            (key, reason)
        }
        other => panic!("expected Corruption for {k:?}, got {other:?}"),
    };
    assert_eq!(corruption(b"sku-002-garbage").0, "sku-002-garbage");
    let (k, reason) = corruption(b"sku-004-truncated");
    assert_eq!(k, "sku-004-truncated");
    assert!(reason.contains("undecodable"), "{reason}");
    let (_, reason) = corruption(b"sku-005-trailing");
    assert!(reason.contains("trailing"), "{reason}");
    let (_, reason) = corruption(b"sku-006-empty");
    assert!(reason.contains("empty"), "{reason}");
    assert_eq!(corruption(&[b's', 0xff, 0x00]).0, "0x73ff00");
    match ks.get(b"sku-003-version") {
        Err(Error::UnknownRecordVersion {
            tree,
            key,
            store: _,
            found: 9,
            supported: 1,
        }) => assert_eq!(
            (tree.as_str(), key.as_str()),
            ("products", "sku-003-version")
        ),
        other => panic!("expected UnknownRecordVersion, got {other:?}"),
    }
    // Neighbours are untouched, and contains() does not decode.
    for i in [0, 1, 8, 9] {
        assert_eq!(ks.get(&key(i)).unwrap(), Some(product(i)));
    }
    assert!(ks.contains(b"sku-002-garbage").unwrap());
    assert_eq!(ks.len().unwrap(), 10);
}

#[test]
fn iter_reports_damaged_records_and_continues() {
    let (_tmp, _store, ks) = corrupt_fixture();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for item in ks.iter() {
        match item {
            Ok((k, v)) => good.push((k, v)),
            Err(Error::Corruption { tree, key, .. })
            | Err(Error::UnknownRecordVersion { tree, key, .. }) => {
                assert_eq!(tree, "products");
                bad.push(key);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let want: Vec<_> = [0, 1, 8, 9].map(|i| (key(i), product(i))).into();
    assert_eq!(
        good, want,
        "records after the damaged ones are still yielded"
    );
    assert_eq!(
        bad,
        [
            "sku-002-garbage",
            "sku-003-version",
            "sku-004-truncated",
            "sku-005-trailing",
            "sku-006-empty",
            "0x73ff00",
        ]
    );
}

/// sled opened directly, waiting (as `Store::open` does) while a child
/// process another test forks still shares a dropped store's lock.
fn raw_sled(dir: &std::path::Path) -> sled::Db {
    raw_sled_with(sled::Config::new().path(dir))
}

/// [`raw_sled`] with a configuration of the caller's.
fn raw_sled_with(config: sled::Config) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("WouldBlock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn newer_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    {
        let db = raw_sled(&tmp.path().join("sled"));
        let stored = db.get(b"vitrine.format_version").unwrap().unwrap();
        assert_eq!(stored.as_ref(), FORMAT_VERSION.to_le_bytes());
        db.insert(
            b"vitrine.format_version",
            &(FORMAT_VERSION + 1).to_le_bytes(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    match Store::open(tmp.path(), StoreOptions::default()) {
        Err(
            e @ Error::UnsupportedFormat {
                found, supported, ..
            },
        ) => {
            assert!(
                e.to_string().contains(&tmp.path().display().to_string()),
                "{e}"
            );
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    {
        let db = raw_sled(&tmp.path().join("sled"));
        db.insert(b"vitrine.format_version", &[1u8, 0, 0]).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Store::open(tmp.path(), StoreOptions::default()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn reserved_keyspace_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    assert!(matches!(
        store.keyspace::<Meta>("__sled__default"),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn store_open_on_a_file_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    match Store::open(&file, StoreOptions::default()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, file),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn attributes_defaults_and_lookup() {
    let a = Attributes::default();
    assert!(a.in_stock);
    let a = a.set("brand", "Acme").set("size", "M");
    assert_eq!(a.brand.as_deref(), Some("Acme"));
    assert_eq!(a.get("brand"), Some("Acme"));
    assert_eq!(a.get("size"), Some("M"));
    assert!(!a.extra.contains_key("brand"));
}

#[test]
fn vectors_are_encoded_as_raw_bytes() {
    let r = ProductRecord {
        doc: 1,
        attrs: Attributes::new(),
        vectors: vec![("v".into(), vec![1.0; 256])],
    };
    let encoded = bincode::serde::encode_to_vec(&r, bincode::config::standard()).unwrap();
    // 1 KiB of floats plus a few bytes of framing; per-float varint framing
    // would not fit.
    assert!(encoded.len() < 1024 + 32, "{}", encoded.len());
    let nan = ProductRecord {
        vectors: vec![("v".into(), vec![f32::NAN, -0.0, f32::INFINITY])],
        ..r
    };
    let mut bytes = vec![1u8];
    bytes.extend(bincode::serde::encode_to_vec(&nan, bincode::config::standard()).unwrap());
    let back = decode_record::<ProductRecord>(&bytes).unwrap();
    let bits = |r: &ProductRecord| {
        r.vectors[0]
            .1
            .iter()
            .map(|f| f.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&back), bits(&nan));
    assert_eq!(back.vector("v").map(<[f32]>::len), Some(3));
    assert_eq!(back.vector("w"), None);
}

#[test]
fn decode_record_truncations_are_errors() {
    let bytes = valid_encoding(3);
    for len in 0..bytes.len() {
        match decode_record::<ProductRecord>(&bytes[..len]) {
            Err(Error::Corruption { tree, key, .. }) => {
                assert_eq!((tree.as_str(), key.as_str()), ("<bytes>", "<bytes>"));
            }
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
}

proptest! {
    #[test]
    fn decode_record_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_record::<ProductRecord>(&bytes);
        let _ = decode_record::<Meta>(&bytes);
    }

    #[test]
    fn huge_length_prefixes_are_errors(len in any::<u64>(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        // ProductRecord: doc varint, then brand Some + a string length prefix.
        let mut bytes = vec![1u8, 0, 1, 253];
        bytes.extend(len.to_le_bytes());
        bytes.extend(tail);
        prop_assert!(decode_record::<ProductRecord>(&bytes).is_err());
    }
}

#[test]
fn a_second_open_says_the_store_is_in_use_and_a_damaged_conf_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ks) = open(dir.path());
    ks.put(&key(1), &product(1)).unwrap();
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path().join("sled")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second handle opened a locked store"),
    }
    drop((ks, store));

    let conf = dir.path().join("sled").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[3..11].copy_from_slice(b"garbage!");
    std::fs::write(&conf, bytes).unwrap();
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(e @ Error::StoreDamaged { .. }) => {
            assert!(e.to_string().contains("sled"), "{e}")
        }
        Err(e) => panic!("expected StoreDamaged, got {e}"),
        Ok(_) => panic!("a damaged conf opened"),
    }
}

/// A segment header that fails its checksum: sled would skip the segment
/// as free and write over it, so that writes acknowledged after the open
/// are lost at the next one. The open is refused, naming the log, and the
/// log is left as it was; a repair's open takes it.
#[test]
fn a_damaged_segment_header_is_refused_before_sled_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ks) = open(dir.path());
    for i in 0..20 {
        ks.put(&key(i), &product(i)).unwrap();
    }
    store.flush().unwrap();
    drop((ks, store));
    let log = dir.path().join("sled").join("db");
    for at in [0usize, 8, 16] {
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(&log, &bytes).unwrap();
        match Store::open(dir.path(), StoreOptions::default()) {
            Err(e @ Error::StoreDamaged { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("sled/db") && text.contains("offset 0"),
                    "{text}"
                )
            }
            Err(e) => panic!("expected StoreDamaged, got {e}"),
            Ok(_) => panic!("a log with a damaged segment header opened"),
        }
        assert_eq!(
            std::fs::read(&log).unwrap(),
            bytes,
            "the refused open wrote"
        );
        bytes[at] ^= 0x01;
        std::fs::write(&log, &bytes).unwrap();
    }
    let (store, ks) = open(dir.path());
    assert_eq!(ks.len().unwrap(), 20);
    drop((ks, store));
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[4] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let options = StoreOptions {
        accept_damaged_segments: true,
        ..StoreOptions::default()
    };
    Store::open(dir.path(), options).expect("a repair opens it");
    // An open that waits for another handle to let go checks the files
    // once it has, not never.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[4] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let (store, ks) = open(dir.path());
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[4] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop((ks, store));
    });
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(Error::StoreDamaged { .. }) => {}
        Err(e) => panic!("expected StoreDamaged, got {e}"),
        Ok(_) => panic!("the damaged header went unchecked while the lock was held"),
    }
    holder.join().unwrap();
}

/// A damaged blob file (a large record's) is named when sled's open fails.
#[test]
fn a_damaged_blob_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let (store, ks) = open(dir.path());
        let mut big = product(1);
        big.vectors[1].1 = vec![round as f32; 100_000];
        ks.put(&key(1), &big).unwrap();
        ks.put(&key(2), &product(2)).unwrap();
        store.flush().unwrap();
    }
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("sled").join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!blobs.is_empty(), "no blob written");
    for blob in &blobs {
        let mut bytes = std::fs::read(blob).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(blob, &bytes).unwrap();
    }
    let outcome = match Store::open(dir.path(), StoreOptions::default()) {
        Ok(store) => {
            let ks: Keyspace<ProductRecord> = store.keyspace("products").unwrap();
            ks.get(&key(1)).map(|_| ())
        }
        Err(e) => Err(e),
    };
    let e = outcome.expect_err("a damaged blob read");
    assert!(e.to_string().contains("blobs/"), "{e}");
}

/// One flipped byte in sled's log: opening, scanning and counting end, with
/// the data or a typed error. sled 0.34's own `Tree::len` and iterator
/// yield the error of a damaged page forever, and its recovery can panic.
#[test]
fn a_flipped_byte_in_sleds_log_ends_in_an_error_not_a_hang() {
    let pristine = tempfile::tempdir().unwrap();
    // Rewritten over three sessions, so that sled's snapshot points into
    // the log and pages are read only when a scan reaches them.
    for round in 0..3 {
        let (store, ks) = open(pristine.path());
        for i in 0..1500 {
            let mut p = product(i);
            p.vectors[1].1 = vec![(i + round) as f32; 128];
            ks.put(&key(i), &p).unwrap();
        }
        store.flush().unwrap();
    }
    let log = std::fs::read(pristine.path().join("sled").join("db")).unwrap();
    // Flips land in the parts of the log that hold data (sled leaves
    // freed segments zeroed), spread evenly, 100 bytes into a 4 KiB page.
    let pages: Vec<usize> = (0..log.len() / 4096)
        .filter(|p| log[p * 4096..(p + 1) * 4096].iter().any(|b| *b != 0))
        .collect();
    // From the end: the newest pages are the ones the snapshot points to.
    let cases: Vec<u64> = pages
        .iter()
        .rev()
        .flat_map(|p| [p * 4096 + 2100, p * 4096 + 100])
        .map(|o| o as u64)
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let pristine_path = pristine.path().to_path_buf();
    // A hang leaves this thread spinning; the receiver's deadline fails the test.
    std::thread::spawn(move || {
        for &offset in &cases {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(&pristine_path, dir.path());
            let file = dir.path().join("sled").join("db");
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[offset as usize] ^= 0x10;
            std::fs::write(&file, bytes).unwrap();
            let outcome = match Store::open(dir.path(), StoreOptions::default()) {
                Err(e) => format!("open: {e}"),
                Ok(store) => {
                    let ks: Keyspace<ProductRecord> = store.keyspace("products").unwrap();
                    let errors = ks.iter().filter(Result::is_err).count();
                    match ks.len() {
                        Ok(n) => format!("len {n}, {errors} errors"),
                        Err(e) => {
                            // A repair copies what is readable into fresh
                            // files: forwards up to the damage, backwards
                            // down to it.
                            let forwards = ks.iter().take_while(Result::is_ok).count();
                            let dest = dir.path().join("salvaged");
                            let salvaged = store.salvage_into(&dest).unwrap();
                            assert!(salvaged.damaged_keyspaces.iter().any(|k| k == "products"));
                            let fresh = Store::open(&dest, StoreOptions::default()).unwrap();
                            let copied: Keyspace<ProductRecord> =
                                fresh.keyspace("products").unwrap();
                            let n = copied.len().unwrap();
                            assert!(copied.iter().all(|r| r.is_ok()), "the copy reads clean");
                            assert!(n > forwards && n < 1500, "{forwards} forwards, {n} copied");
                            assert!(
                                fresh.generate_id().unwrap() > store.generate_id().unwrap() - 2
                            );
                            format!("len: {e}; {forwards} read forwards, {n} salvaged")
                        }
                    }
                }
            };
            let done = outcome.starts_with("len: ");
            tx.send((offset, outcome)).unwrap();
            if done {
                break;
            }
        }
    });
    // Until a flip hits a page that only a scan reads (the case that hung).
    loop {
        let (offset, outcome) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a damaged log hung the store, or no flip reached a page read after open");
        eprintln!("offset {offset}: {outcome}");
        if outcome.starts_with("len: ") {
            assert!(outcome.contains("damaged"), "{outcome}");
            break;
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A batch that meets a page that cannot be read is refused whole: a key
/// of it on a readable page is not applied, and other writes go on.
#[test]
fn a_batch_over_an_unreadable_page_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, ks) = open(dir.path());
        // Enough records for several pages; the large one, last in key
        // order, is on a page of its own with its neighbours.
        let mut batch = ks.batch();
        for i in 0..2000 {
            batch.put(&key(i), &product(i)).unwrap();
        }
        ks.apply(batch).unwrap();
        let mut p = product(99);
        p.vectors[1].1 = vec![0.5; 200_000];
        ks.put(b"~huge", &p).unwrap();
        store.flush().unwrap();
    }
    for _ in 1..3 {
        let (store, ks) = open(dir.path());
        ks.put(&key(0), &product(5)).unwrap();
        store.flush().unwrap();
    }
    for f in std::fs::read_dir(dir.path().join("sled").join("blobs")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let (store, ks) = open(dir.path());
    assert!(ks.get(b"~huge").is_err());
    assert_eq!(ks.get(&key(1)).unwrap(), Some(product(1)));
    let mut batch = ks.batch();
    batch.put(&key(1), &product(7)).unwrap();
    batch.put(b"~huge", &product(8)).unwrap();
    match ks.apply(batch) {
        Err(Error::StoreDamaged { reason, .. }) => assert!(reason.contains("huge"), "{reason}"),
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
    assert_eq!(ks.get(&key(1)).unwrap(), Some(product(1)));
    assert!(!store.io_failed());
    ks.put(&key(2), &product(9)).unwrap();
    drop((store, ks));
    let (_store, ks) = open(dir.path());
    assert_eq!(ks.get(&key(1)).unwrap(), Some(product(1)));
    assert_eq!(ks.get(&key(2)).unwrap(), Some(product(9)));
}

/// A record whose blob file is gone: the store opens, a full read names its
/// keyspace, and a salvage keeps every other record.
#[test]
fn a_missing_blob_is_found_by_a_full_read_and_left_behind_by_a_salvage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, ks) = open(dir.path());
        for i in 0..20 {
            ks.put(&key(i), &product(i)).unwrap();
        }
        let big: Keyspace<ProductRecord> = store.keyspace("big").unwrap();
        let mut p = product(99);
        p.vectors[1].1 = vec![0.5; 200_000]; // stored by sled as a blob file
        big.put(b"huge", &p).unwrap();
        store.flush().unwrap();
    }
    // More sessions, so that sled's snapshot covers the blob's entry and
    // only a read of the record looks for the file.
    for round in 1..3 {
        let (store, ks) = open(dir.path());
        for i in 0..20 {
            let mut p = product(i);
            p.doc += round * 100;
            ks.put(&key(i), &p).unwrap();
        }
        store.flush().unwrap();
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
    let (store, ks) = open(dir.path());
    assert_eq!(store.unreadable_keyspaces().unwrap(), ["big"]);
    // A write to the unreadable page fails, naming it, and is no reason to
    // refuse other writes (nothing was written).
    let big: Keyspace<ProductRecord> = store.keyspace("big").unwrap();
    // A read of it is the store's damage, naming the record, as a write
    // says (not a record that fails to decode, which a scan may skip).
    for e in [
        big.get(b"huge").unwrap_err(),
        big.iter().find_map(|r| r.err()).unwrap(),
        big.keys().find_map(|r| r.err()).unwrap(),
    ] {
        match e {
            Error::StoreDamaged { reason, .. } => {
                assert!(reason.contains("in big cannot be read"), "{reason}");
            }
            other => panic!("expected StoreDamaged, got {other:?}"),
        }
    }
    match big.get(b"huge").unwrap_err() {
        Error::StoreDamaged { reason, .. } => assert!(reason.contains("huge"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match big.put(b"huge", &product(98)) {
        Err(Error::StoreDamaged { reason, .. }) => assert!(reason.contains("huge"), "{reason}"),
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
    assert!(matches!(
        big.remove(b"huge"),
        Err(Error::StoreDamaged { .. })
    ));
    assert!(!store.io_failed());
    ks.put(&key(1), &product(1)).unwrap();
    let mut p = product(1);
    p.doc += 200;
    ks.put(&key(1), &p).unwrap();
    drop(big);
    let dest = dir.path().join("salvaged");
    let salvaged = store.salvage_into(&dest).unwrap();
    assert_eq!(salvaged.damaged_keyspaces, ["big"]);
    let fresh = Store::open(&dest, StoreOptions::default()).unwrap();
    assert!(fresh.unreadable_keyspaces().unwrap().is_empty());
    let copied: Keyspace<ProductRecord> = fresh.keyspace("products").unwrap();
    for i in 0..20 {
        assert_eq!(copied.get(&key(i)).unwrap(), ks.get(&key(i)).unwrap());
    }
}

/// sled 0.34 "flushes" its log with `sync_file_range` and never syncs its
/// blob files; under `Immediate` every acknowledged write must also be
/// fsynced, large records (sled blobs) included. Watched with strace, where
/// the machine has it (ptrace allowed).
#[test]
fn immediate_writes_fsync_the_log_and_blob_files() {
    const WRITES: usize = 5;
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let (_store, ks) = open(Path::new(&dir));
        for i in 0..WRITES as u64 {
            let mut p = product(i);
            if i == 2 {
                // Past sled's inline limit (a quarter of a 512 KiB segment).
                p.vectors[0].1 = vec![0.5; 200_000];
            }
            ks.put(&key(i), &p).unwrap();
        }
        return;
    }
    let strace_works = Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !strace_works {
        eprintln!("skipped: strace is not installed or ptrace is not allowed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // strace prints paths with their links resolved.
    let db = dir.path().canonicalize().unwrap().join("db");
    let trace = dir.path().join("trace.txt");
    let out = Command::new("strace")
        .arg("-f")
        .arg("-y")
        .args(["-e", "trace=fsync,fdatasync"])
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "immediate_writes_fsync_the_log_and_blob_files",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&trace).unwrap();
    let log = db.join("sled").join("db");
    let log_syncs = trace
        .lines()
        .filter(|l| l.contains(&format!("<{}>", log.display())))
        .count();
    // One per write, and one at open.
    assert!(
        log_syncs > WRITES,
        "{log_syncs} fsyncs of sled's log for {WRITES} writes:\n{trace}"
    );
    let blobs = db.join("sled").join("blobs");
    assert!(
        trace
            .lines()
            .any(|l| l.contains(&format!("<{}/", blobs.display()))),
        "no fsync of a blob file:\n{trace}"
    );
}

/// A record type that may grow past the default limit (learned rules).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Large(Vec<u8>);

impl vitrine_storage::Record for Large {
    const VERSION: u8 = 1;
    const MAX_BYTES: usize = vitrine_storage::LARGE_RECORD_BYTES;
}

/// The default type's twin, with the default limit.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Small(Vec<u8>);

impl vitrine_storage::Record for Small {
    const VERSION: u8 = 1;
}

#[test]
fn records_over_the_default_limit_need_a_raised_max_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let bytes = vec![7u8; vitrine_storage::MAX_RECORD_BYTES + 1024];
    let small: Keyspace<Small> = store.keyspace("small").unwrap();
    match small.put(b"k", &Small(bytes.clone())) {
        Err(Error::RecordTooLarge { max, .. }) => {
            assert_eq!(max, vitrine_storage::MAX_RECORD_BYTES)
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(small.get(b"k").unwrap().is_none());
    let large: Keyspace<Large> = store.keyspace("large").unwrap();
    large.put(b"k", &Large(bytes.clone())).unwrap();
    drop((small, large, store));
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let large: Keyspace<Large> = store.keyspace("large").unwrap();
    assert!(large.get(b"k").unwrap() == Some(Large(bytes)));
}
