//! A full disk under a `Db`: a write whose flush fails may still be served
//! by sled (it took the record, then could not make it durable). The
//! catalog and indexes must then follow sled, so that a read of the product
//! and a search agree, and a retry of the write is refused, not reported
//! done, until the process restarts.
#![cfg(target_os = "linux")]

#[path = "../storage/tests/support/tmpfs.rs"]
mod tmpfs;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vitrine::{Attributes, Db, Filter, Metric};

const CHILD_DIR: &str = "VITRINE_TEST_DB_FULL_DISK_DIR";
const CHILD_MODE: &str = "VITRINE_TEST_DB_FULL_DISK_MODE";
const DIM: usize = 16;

fn vector(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|j| ((i * 7 + j * 3) % 11) as f32 + 1.0)
        .collect()
}

/// 4 KiB of brand, different for each `i`: every write is a change.
fn brand(i: usize) -> String {
    format!("{i:04}").repeat(1024)
}

/// The child, on a fresh tmpfs at `$VITRINE_TEST_DB_FULL_DISK_DIR`: fills
/// the disk but for 200 KiB, then inserts products (mode `insert`) or
/// changes one product's attributes (mode `update`) until a write fails.
#[test]
#[ignore = "the child process of the full-disk test below, which runs it"]
fn child_fills_the_disk_under_a_db() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return; // only meaningful as the child of the test below
    };
    let dir = Path::new(&dir);
    let update = std::env::var(CHILD_MODE).unwrap() == "update";
    let db = Db::builder()
        .vector_space("embedding", DIM, Metric::Cosine)
        .checkpoint_on_drop(false)
        .open(dir.join("db"))
        .unwrap();
    db.insert(
        "first",
        Attributes::new().in_stock(true),
        [("embedding", vector(0))],
    )
    .unwrap();
    let free = tmpfs::free_bytes(dir);
    std::fs::write(dir.join("filler"), vec![0u8; (free - (200 << 10)) as usize]).unwrap();
    let (i, id, error) = (1..10_000)
        .find_map(|i| {
            let id = if update {
                "first".to_string()
            } else {
                format!("p{i}")
            };
            let written = if update {
                db.update_attributes(&id, |a| a.brand = Some(brand(i)))
                    .map(drop)
            } else {
                db.insert(
                    &id,
                    Attributes::new().brand(brand(i)),
                    [("embedding", vector(i))],
                )
            };
            match written {
                Ok(()) => None,
                Err(e) => Some((i, id, e)),
            }
        })
        .expect("the disk never filled");
    let full = error
        .io_error()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull);
    assert!(full, "{error:?}");
    // The failed write itself tells the caller to restart.
    assert!(error.needs_restart() && !error.is_user_error(), "{error:?}");
    // What sled serves, the catalog in memory serves too (brands shown by
    // their first 4 characters: which write they came from).
    let short = |b: Option<String>| b.map(|b| b[..4].to_string());
    let stored = db.get(&id).unwrap().map(|p| short(p.attributes.brand));
    let in_memory = db.attributes(&id).map(|a| short(a.brand));
    assert_eq!(in_memory, stored, "after {error}");
    let listed = db.ids_matching(&Filter::new()).unwrap().contains(&id);
    assert_eq!(listed, stored.is_some());
    // A retry of a write sled may have taken (or any write that would
    // change nothing) is refused like every other: a stock change, the
    // insert that failed, a delete of what is gone.
    let retry = db.set_in_stock("first", true).unwrap_err();
    assert!(retry.needs_restart(), "{retry:?}");
    if !update {
        let again = db.insert(
            &id,
            Attributes::new().brand(brand(i)),
            [("embedding", vector(i))],
        );
        assert!(
            again.as_ref().is_err_and(|e| e.needs_restart()),
            "{again:?}"
        );
    }
    let gone = db.delete("never-stored");
    assert!(gone.as_ref().is_err_and(|e| e.needs_restart()), "{gone:?}");
    let reached = stored == Some(short(Some(brand(i))));
    println!("FAILED ON {id} ({error}); sled took it: {reached}");
}

const CLI_CHILD_DIR: &str = "VITRINE_TEST_CLI_FULL_DISK_DIR";

/// The child, on a fresh tmpfs: a model database of 600 products, the disk
/// filled but for 1 MiB (the open takes some), then `vitrine import --update` of a CSV that
/// gives each a 4 KiB brand. Prints the command's status and stderr.
#[test]
#[ignore = "the child process of the full-disk update test below, which runs it"]
fn child_updates_on_a_full_disk() {
    let Some(dir) = std::env::var_os(CLI_CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let model = vitrine::Model::bundled().unwrap();
    let db_dir = dir.join("db");
    let n = 600;
    {
        let db = Db::builder().model_spaces(&model).open(&db_dir).unwrap();
        let spaces = db.spaces();
        for i in 0..n {
            let vectors = spaces.iter().map(|s| {
                let mut v = vec![0.0f32; s.dim];
                v[i % s.dim] = 1.0;
                (s.name.as_str(), v)
            });
            db.insert(&format!("p{i:03}"), Attributes::new(), vectors)
                .unwrap();
        }
    }
    let csv = dir.join("brands.csv");
    let mut rows = String::from("id,path,brand\n");
    for i in 0..n {
        rows += &format!("p{i:03},,{}\n", brand(i));
    }
    std::fs::write(&csv, rows).unwrap();
    let free = tmpfs::free_bytes(dir);
    std::fs::write(dir.join("filler"), vec![0u8; (free - (1 << 20)) as usize]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "import",
            csv.to_str().unwrap(),
            "--db",
            db_dir.to_str().unwrap(),
            "--update",
        ])
        .output()
        .unwrap();
    println!("STATUS {:?}", out.status.code());
    println!("STDERR\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `import --update` on a disk that fills stops at the first row storage
/// refuses, and says why once: it went on through every later row, each
/// refused and reported as a failed row of its own.
#[test]
fn an_update_stops_when_the_disk_fills() {
    if !Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(vitrine::BUNDLED_ONNX)
        .is_file()
    {
        eprintln!("SKIPPED: the bundled model is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_updates_on_a_full_disk",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CLI_CHILD_DIR, dir.path());
    let Some(child) = tmpfs::spawn_on_tmpfs(cmd, dir.path(), c"size=32m") else {
        return;
    };
    let (status, stdout, stderr) = tmpfs::wait_bounded(child, Duration::from_secs(300));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("STATUS Some(1)"), "{stdout}");
    assert!(stdout.contains("No space left"), "{stdout}");
    assert!(stdout.contains("free space, then run"), "{stdout}");
    let refused = stdout.matches("an I/O error earlier").count();
    assert!(refused <= 1, "{refused} rows refused one by one:\n{stdout}");
}

const REPAIR_CHILD_DIR: &str = "VITRINE_TEST_REPAIR_FULL_DISK_DIR";

/// The child, on a fresh tmpfs: a small database, the disk filled but for
/// 64 KiB, then `vitrine repair`, whose copy cannot be written. Prints the
/// command's status and stderr.
#[test]
#[ignore = "the child process of the full-disk repair test below, which runs it"]
fn child_repairs_on_a_full_disk() {
    let Some(dir) = std::env::var_os(REPAIR_CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let db_dir = dir.join("db");
    {
        let db = Db::builder()
            .vector_space("v", DIM, Metric::Cosine)
            .open(&db_dir)
            .unwrap();
        for i in 0..200 {
            db.insert(&format!("p{i:03}"), Attributes::new(), [("v", vector(i))])
                .unwrap();
        }
    }
    let free = tmpfs::free_bytes(dir);
    std::fs::write(dir.join("filler"), vec![0u8; (free - (64 << 10)) as usize]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["repair", "--db", db_dir.to_str().unwrap()])
        .output()
        .unwrap();
    println!("STATUS {:?}", out.status.code());
    println!("STDERR\n{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "LEFT {:?}",
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
}

/// A repair whose copy fills the disk names the file it could not write,
/// and does not send the operator to `--no-copy` (meant for a database
/// that cannot be read): it named only the copy's folder, and no side.
#[test]
fn a_repair_whose_copy_fills_the_disk_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_repairs_on_a_full_disk",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(REPAIR_CHILD_DIR, dir.path());
    let Some(child) = tmpfs::spawn_on_tmpfs(cmd, dir.path(), c"size=16m") else {
        return;
    };
    let (status, stdout, stderr) = tmpfs::wait_bounded(child, Duration::from_secs(300));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("STATUS Some(1)"), "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    assert!(stdout.contains("No space left"), "{stdout}");
    assert!(
        stdout.contains("cannot write ") && stdout.contains("db.before-repair.incomplete/"),
        "the file is not named:\n{stdout}"
    );
    assert!(!stdout.contains("--no-copy"), "{stdout}");
    // The partial copy is gone.
    let left = stdout.lines().find(|l| l.starts_with("LEFT")).unwrap();
    assert!(!left.contains("before-repair"), "{left}");
}

#[test]
fn a_write_whose_flush_fails_leaves_memory_as_sled_serves_it() {
    for mode in ["insert", "update"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "child_fills_the_disk_under_a_db",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_MODE, mode);
        let Some(child) = tmpfs::spawn_on_tmpfs(cmd, dir.path(), c"size=16m") else {
            return;
        };
        let (status, stdout, stderr) = tmpfs::wait_bounded(child, Duration::from_secs(120));
        assert!(
            status.success() && stdout.contains("FAILED ON"),
            "{mode}: {status}\n{stdout}\n{stderr}"
        );
        eprintln!(
            "{mode}: {}",
            stdout.lines().find(|l| l.contains("FAILED ON")).unwrap()
        );
    }
}

/// An import whose products fit on the disk but whose index files do not
/// fails (exit 1, saying the products are stored). It said "300 imported"
/// and exited 0, the full disk only in a log line, and every later open
/// rebuilt the indexes.
#[test]
fn an_import_whose_indexes_cannot_be_saved_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("models").join(vitrine::BUNDLED_ONNX).is_file() {
        eprintln!("SKIPPED: the bundled model is absent");
        return;
    }
    let csv = root.join("examples/catalog/catalog.csv");
    // Sizes around where the 300 sample products fit and their indexes do
    // not (3 MiB here); which one lands there depends on the file system.
    for size in [c"size=2560k", c"size=3m", c"size=3584k"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
        cmd.arg("import")
            .arg(&csv)
            .arg("--db")
            .arg(dir.path().join("db"));
        let Some(child) = tmpfs::spawn_on_tmpfs(cmd, dir.path(), size) else {
            return;
        };
        let (status, stdout, stderr) = tmpfs::wait_bounded(child, Duration::from_secs(300));
        assert!(
            !(status.success() && stderr.contains("No space left")),
            "{size:?}: a full disk, and exit 0\n{stdout}\n{stderr}"
        );
        if stdout.contains("300 imported") && !status.success() {
            assert!(stderr.contains("saving the indexes failed"), "{stderr}");
        }
    }
}
