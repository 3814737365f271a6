//! A full disk: a write that fails with ENOSPC is a typed error naming
//! sled's folder, the process still ends (sled's close would otherwise wait
//! forever for its log), and every acknowledged write survives a reopen by
//! the next process.
//!
//! The child runs on a small private tmpfs (`support/tmpfs.rs`), which
//! needs the privilege to mount (root, as in CI); elsewhere the test skips
//! with a message.
#![cfg(target_os = "linux")]

#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vitrine_storage::{Error, Store, StoreOptions};

const CHILD_DIR: &str = "VITRINE_TEST_FULL_DISK_DIR";

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Blob(Vec<u8>);

impl vitrine_storage::Record for Blob {
    const VERSION: u8 = 1;
}

/// Record `i`: 4 KiB, every 16th 256 KiB (sled writes those to a blob file
/// of their own, as it does the outfit rules).
fn blob(i: u32) -> Blob {
    let len = if i % 16 == 15 { 256 << 10 } else { 4096 };
    Blob((0..len).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect())
}

/// The child, on a fresh 8 MiB tmpfs at `$VITRINE_TEST_FULL_DISK_DIR`:
/// fills the disk but for 200 KiB, writes until a write fails, drops the
/// store, frees the space, reopens and checks every acknowledged write.
#[test]
#[ignore = "the child process of the full-disk test, which runs it"]
fn child_fills_the_disk() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return; // only meaningful as the child of the test below
    };
    let dir = Path::new(&dir);
    let db = dir.join("db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let ks = store.keyspace::<Blob>("blobs").unwrap();
    let filler = dir.join("filler");
    let free = tmpfs::free_bytes(dir);
    std::fs::write(&filler, vec![0u8; (free - (200 << 10)) as usize]).unwrap();
    let mut acked = 0u32;
    let error = loop {
        match ks.put(&acked.to_be_bytes(), &blob(acked)) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the disk never filled");
    };
    assert!(store.io_failed());
    assert!(
        matches!(&error, Error::WriteFailed { path, .. } if path.ends_with("sled")),
        "{error:?}"
    );
    println!("ACKED {acked}: {error}");
    // Later writes and flushes are refused at once (sled's flush can hang
    // after an I/O error).
    for later in [ks.put(b"later", &blob(0)), store.flush()] {
        let e = later.unwrap_err();
        assert!(matches!(&e, Error::FailedEarlier { .. }), "{e:?}");
    }
    drop(ks);
    drop(store);
    println!("CLOSED");
    // This process keeps the files: a reopen here says so at once.
    let again = Store::open(&db, StoreOptions::default()).unwrap_err();
    assert!(matches!(again, Error::HeldAfterIoError { .. }), "{again:?}");

    // sled's files stay locked while this process lives: the next process
    // reopens them. exec() becomes it, in this mount namespace (where the
    // tmpfs is), and closes sled's files on the way.
    std::fs::remove_file(&filler).unwrap();
    let e = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_reopens",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REOPEN_DIR, &db)
        .env(REOPEN_ACKED, acked.to_string())
        .exec();
    panic!("exec failed: {e}");
}

const REOPEN_DIR: &str = "VITRINE_TEST_FULL_DISK_REOPEN";
const REOPEN_ACKED: &str = "VITRINE_TEST_FULL_DISK_ACKED";

/// The grandchild: reopens the store and checks every acknowledged write.
#[test]
#[ignore = "the grandchild process of the full-disk test, which runs it"]
fn child_reopens() {
    let Some(db) = std::env::var_os(REOPEN_DIR) else {
        return;
    };
    let acked: u32 = std::env::var(REOPEN_ACKED).unwrap().parse().unwrap();
    let store = Store::open(Path::new(&db), StoreOptions::default()).unwrap();
    let ks = store.keyspace::<Blob>("blobs").unwrap();
    for i in 0..acked {
        assert_eq!(
            ks.get(&i.to_be_bytes()).unwrap(),
            Some(blob(i)),
            "write {i}"
        );
    }
    ks.put(b"after", &blob(7)).unwrap();
    println!("VERIFIED");
}

#[test]
fn a_full_disk_is_a_typed_error_the_process_ends_and_acknowledged_writes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_fills_the_disk",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR, dir.path());
    let Some(child) = tmpfs::spawn_on_tmpfs(cmd, dir.path(), c"size=8m") else {
        return;
    };
    let (status, stdout, stderr) = tmpfs::wait_bounded(child, Duration::from_secs(60));
    assert!(
        status.success() && stdout.contains("CLOSED") && stdout.contains("VERIFIED"),
        "{status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("No space left"), "{stdout}");
}
