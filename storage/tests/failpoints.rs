//! Crash recovery at each failpoint (run with `--features failpoints`).
//!
//! Each test reruns this binary as a child with `VITRINE_FAILPOINT` set; the
//! child aborts at the point, and the parent checks what survived.
#![cfg(feature = "failpoints")]

use std::path::Path;
use std::process::{Command, Stdio};

use vitrine_storage::{write_arena, Arena, Keyspace, Store, StoreOptions};

const CHILD_DIR: &str = "VITRINE_TEST_CHILD_DIR";

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Note(String);

impl vitrine_storage::Record for Note {
    const VERSION: u8 = 1;
}

fn note(s: &str) -> Note {
    Note(s.to_owned())
}

fn open(dir: &Path) -> (Store, Keyspace<Note>) {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let ks = store.keyspace("ks").unwrap();
    (store, ks)
}

/// Runs `test` in a child with the failpoint armed and checks it aborted.
fn crash_child(test: &str, failpoint: &str, dir: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env("VITRINE_FAILPOINT", failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        aborted(out.status),
        "child should have aborted at {failpoint}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
fn aborted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6) // SIGABRT, not a panic or a clean exit
}

#[cfg(not(unix))]
fn aborted(status: std::process::ExitStatus) -> bool {
    !status.success()
}

fn seed(dir: &Path) {
    let (_store, ks) = open(dir);
    ks.put(b"old", &note("kept")).unwrap();
}

/// In a child: a hit failpoint aborts, as a crash would.
fn arm() {
    vitrine_storage::set_failpoint_action(|_| std::process::abort());
}

fn child_put(dir: &Path) -> ! {
    arm();
    let (_store, ks) = open(dir);
    ks.put(b"new", &note("maybe")).unwrap();
    // Reaching here means the failpoint did not fire: exit cleanly so the
    // parent's assertion fails.
    std::process::exit(0);
}

#[test]
fn crash_before_apply_loses_only_the_write() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child_put(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    seed(tmp.path());
    crash_child(
        "crash_before_apply_loses_only_the_write",
        "storage::before_apply",
        tmp.path(),
    );
    let (_store, ks) = open(tmp.path());
    assert_eq!(ks.get(b"old").unwrap(), Some(note("kept")));
    assert_eq!(ks.get(b"new").unwrap(), None);
}

#[test]
fn crash_before_flush_leaves_a_consistent_store() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child_put(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    seed(tmp.path());
    crash_child(
        "crash_before_flush_leaves_a_consistent_store",
        "storage::before_flush",
        tmp.path(),
    );
    let (_store, ks) = open(tmp.path());
    assert_eq!(ks.get(b"old").unwrap(), Some(note("kept")));
    // Unacknowledged: either outcome is fine, a damaged record is not.
    let new = ks.get(b"new").unwrap();
    assert!(new.is_none() || new == Some(note("maybe")));
}

#[test]
fn crash_mid_arena_write_keeps_the_old_arena() {
    let v = [1.0f32, 2.0];
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        arm();
        write_arena(&Path::new(&dir).join("a.arena"), 2, 2, [(9, &v[..])]).unwrap();
        std::process::exit(0);
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.arena");
    write_arena(&path, 2, 1, [(1, &v[..]), (2, &v[..])]).unwrap();
    crash_child(
        "crash_mid_arena_write_keeps_the_old_arena",
        "arena::mid_write",
        tmp.path(),
    );
    let arena = Arena::open(&path).unwrap();
    assert_eq!((arena.generation(), arena.len()), (1, 2));
    // The next write succeeds despite the crashed writer's leftover temp file.
    write_arena(&path, 2, 3, [(5, &v[..])]).unwrap();
    assert_eq!(Arena::open(&path).unwrap().generation(), 3);
}
