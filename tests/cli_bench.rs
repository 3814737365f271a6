//! The `vitrine bench ann` harness, run as a real process on .npy files.

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};

mod common;

fn write_npy(path: &Path, rows: usize, cols: usize, data: &[f32]) {
    write_npy_of(
        path,
        "<f4",
        rows,
        cols,
        data.iter().flat_map(|x| x.to_le_bytes()),
    );
}

fn write_npy_of(
    path: &Path,
    descr: &str,
    rows: usize,
    cols: usize,
    data: impl Iterator<Item = u8>,
) {
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

fn clustered(rng: &mut impl Rng, n: usize, centers: &[Vec<f32>]) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let c = &centers[i % centers.len()];
            c.iter()
                .map(|x| x + rng.gen_range(-0.3f32..0.3))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn run(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bench_ann_reports_recall_and_qps_per_ef() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let dim = 24;
    let centers: Vec<Vec<f32>> = (0..20)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect();
    let base = clustered(&mut rng, 3000, &centers);
    let queries = clustered(&mut rng, 60, &centers);
    let (b, q) = (dir.path().join("base.npy"), dir.path().join("q.npy"));
    write_npy(&b, 3000, dim, &base);
    write_npy(&q, 60, dim, &queries);
    let (b, q) = (b.to_str().unwrap(), q.to_str().unwrap());

    let rows = run(&[
        "bench",
        "ann",
        "--base",
        b,
        "--queries",
        q,
        "--ef",
        "16,128",
        "--plan",
        "graph",
        "--json",
    ]);
    // (3,000 points would be scanned exactly under the automatic plan:
    // the graph is what this measures.)
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(r["qps"].as_f64().unwrap() > 0.0);
        assert!(r["filter"].is_null());
        assert_eq!(r["plan"], "graph", "{r}");
    }
    let recall = |r: &serde_json::Value| r["recall"].as_f64().unwrap();
    assert!(recall(&rows[1]) >= 0.95, "{rows:?}");
    assert!(recall(&rows[1]) >= recall(&rows[0]) - 1e-9);

    // One build thread: the same graph, so the same recall, on every run.
    let single = |_| {
        run(&[
            "bench",
            "ann",
            "--base",
            b,
            "--queries",
            q,
            "--ef",
            "4,16",
            "--plan",
            "graph",
            "--threads",
            "1",
            "--json",
        ])
        .iter()
        .map(|r| {
            (
                r["ef_used"].as_u64().unwrap(),
                r["recall"].as_f64().unwrap(),
            )
        })
        .collect::<Vec<_>>()
    };
    let runs: Vec<_> = (0..2).map(single).collect();
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0][0].0, 10, "an ef below k searches with k");
    // An ef a search refuses is a usage error, before the files are read.
    for ef in ["0", "16,5000"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args([
                "bench",
                "ann",
                "--base",
                "missing.npy",
                "--queries",
                q,
                "--ef",
                ef,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{ef}");
    }

    // 1 % filter: the planner answers exactly.
    let rows = run(&[
        "bench",
        "ann",
        "--base",
        b,
        "--queries",
        q,
        "--ef",
        "64",
        "--filter-mod",
        "100",
        "--json",
    ]);
    assert_eq!(rows[0]["filter"], 100);
    assert_eq!(rows[0]["plan"], "exact", "{rows:?}");
    assert!((recall(&rows[0]) - 1.0).abs() < 1e-9, "{rows:?}");
    // A filter that allows fewer ids than k (6): an exact answer has all
    // of them, recall 1 (not 6/10).
    let rows = run(&[
        "bench",
        "ann",
        "--base",
        b,
        "--queries",
        q,
        "--ef",
        "64",
        "--filter-mod",
        "500",
        "--json",
    ]);
    assert!((recall(&rows[0]) - 1.0).abs() < 1e-9, "{rows:?}");

    // A ground-truth file: its answers in any order set the same bar as
    // an exact scan; one made for another metric (Euclidean, on vectors
    // not normalised) is refused, not trusted.
    let top10 = |score: &dyn Fn(&[f32], &[f32]) -> f32| -> Vec<i64> {
        (0..60)
            .flat_map(|qi| {
                let qv = &queries[qi * dim..(qi + 1) * dim];
                let mut ids: Vec<usize> = (0..3000).collect();
                ids.sort_by(|&x, &y| {
                    let s = |i: usize| score(qv, &base[i * dim..(i + 1) * dim]);
                    s(y).total_cmp(&s(x))
                });
                // Worst first: the order is not the file's to promise.
                ids[..10]
                    .iter()
                    .rev()
                    .map(|&i| i as i64)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let cosine = |x: &[f32], y: &[f32]| {
        let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (norm(x) * norm(y))
    };
    let euclid = |x: &[f32], y: &[f32]| -> f32 {
        -x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
    };
    let gt_run = |gt: &[i64]| {
        let g = dir.path().join("gt.npy");
        write_npy_of(&g, "<i8", 60, 10, gt.iter().flat_map(|x| x.to_le_bytes()));
        let args = [
            "bench",
            "ann",
            "--base",
            b,
            "--queries",
            q,
            "--gt",
            g.to_str().unwrap(),
            "--ef",
            "16,128",
            "--plan",
            "graph",
            "--json",
        ];
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = gt_run(&top10(&cosine));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_gt: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(recall(&with_gt[1]) >= 0.95, "{with_gt:?}");
    let out = gt_run(&top10(&euclid));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match --metric"), "{err}");

    // Bad input is an error message, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["bench", "ann", "--base", q, "--queries", "/nonexistent.npy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
}

#[test]
fn precompute_similar_command_writes_a_servable_file() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = vitrine::Db::builder()
            .vector_space("embedding", 3, vitrine::Metric::Cosine)
            .open(&db_dir)
            .unwrap();
        for (id, v, stock) in [
            ("a", [1.0, 0.0, 0.0], true),
            ("b", [0.9, 0.1, 0.0], true),
            ("c", [0.95, 0.05, 0.0], false),
            ("d", [0.0, 0.0, 1.0], true),
        ] {
            let attrs = vitrine::Attributes::new().in_stock(stock);
            db.insert(id, attrs, [("embedding", v.to_vec())]).unwrap();
        }
    }
    // A destination that cannot be written is refused before any scoring.
    let refused = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["precompute", "similar", "--db"])
        .arg(&db_dir)
        .arg("--out")
        .arg(dir.path().join("no-such-folder/similar.vsim"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let says = String::from_utf8_lossy(&refused.stderr);
    assert!(says.contains("folder does not exist"), "{says}");
    let out = dir.path().join("similar.vsim");
    let status = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "precompute",
            "similar",
            "--k",
            "2",
            "--scorer",
            "cpu",
            "--db",
        ])
        .arg(&db_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let served = vitrine::PrecomputedSimilar::open(&out).unwrap();
    let ids: Vec<String> = served
        .get("a")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["b", "d"], "in stock only, never itself");
    // `precompute show` serves the same lists; an unknown id is an error.
    let show = |ids: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["precompute", "show", "--json", "--file"])
            .arg(&out)
            .args(ids)
            .output()
            .unwrap()
    };
    let shown = show(&["a"]);
    assert!(shown.status.success());
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["similar"][0]["id"], "b");
    assert_eq!(v["similar"][1]["id"], "d");
    // A product newer than the file: exit 3 (some shown), one JSON line
    // per id asked; none found: exit 1.
    let partial = show(&["a", "zz"]);
    assert_eq!(partial.status.code(), Some(3));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&partial.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (&lines[1]["id"], &lines[1]["error"]),
        (&"zz".into(), &"not in the file".into())
    );
    assert_eq!(show(&["zz"]).status.code(), Some(1));
    // A link where the file goes is named as one.
    #[cfg(unix)]
    {
        let link = dir.path().join("link.vsim");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        let refused = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["precompute", "similar", "--db"])
            .arg(&db_dir)
            .arg("--out")
            .arg(&link)
            .output()
            .unwrap();
        let says = String::from_utf8_lossy(&refused.stderr);
        assert!(says.contains("is a symbolic link"), "{says}");
        assert_eq!(says.matches("cannot write").count(), 1, "{says}");
    }
    // Every product sold out (a feed glitch): nothing to list, and last
    // night's file stays (it was replaced by one of empty lists, exit 0).
    let served_before = std::fs::read(&out).unwrap();
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        for id in ["a", "b", "d"] {
            db.set_in_stock(id, false).unwrap();
        }
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["precompute", "similar", "--scorer", "cpu", "--db"])
        .arg(&db_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let says = String::from_utf8_lossy(&refused.stderr);
    assert!(says.contains("every list is empty"), "{says}");
    assert_eq!(std::fs::read(&out).unwrap(), served_before);
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        for id in ["a", "b", "d"] {
            db.set_in_stock(id, true).unwrap();
        }
    }

    // backup: a checked copy; an existing destination is refused.
    let copy = dir.path().join("copy");
    let backup = || {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .arg("backup")
            .arg("--db")
            .arg(&db_dir)
            .arg("--out")
            .arg(&copy)
            .output()
            .unwrap()
    };
    let out = backup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backed up 4 products"));
    let copied = vitrine::Db::open(&copy).unwrap();
    assert_eq!(copied.ids(), ["a", "b", "c", "d"]);
    drop(copied);
    let again = backup();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn bench_open_measures_a_folder_of_its_own_only() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let rows = run(&[
        "bench",
        "open",
        "--n",
        "300",
        "--dim",
        "16",
        "--dir",
        fresh.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(rows[0]["n"], 300);
    assert_eq!(rows[0]["rebuilt_on_dump_open"], 0, "{rows:?}");
    assert_eq!(rows[0]["rebuilt_on_rebuild_open"], 1, "{rows:?}");
    for filter in ["none", "in_stock", "brand", "category_in_stock"] {
        assert!(
            rows[0]["search_ms"][filter].as_f64().unwrap() > 0.0,
            "{rows:?}"
        );
    }
    // The REPL's `similar` answers on a database of the library's own
    // vectors (no concepts), as `Db::similar` does; it refused it.
    let query = |line: &str| {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["query", "--db", fresh.to_str().unwrap(), line])
            .output()
            .unwrap()
    };
    let out = query("similar sku-00000000 3 where in_stock");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(shown.lines().count(), 3, "{shown}");
    let out = query("similar sku-00000000 3 where colour.red");
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the database has no concepts"), "{said}");
    // A folder that holds anything is refused and left as it was.
    let used = dir.path().join("used");
    std::fs::create_dir_all(used.join("index")).unwrap();
    std::fs::write(used.join("index").join("keep.txt"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "bench",
            "open",
            "--n",
            "10",
            "--dir",
            used.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(used.join("index").join("keep.txt").is_file());
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);
}

/// A benchmark stopped by Ctrl-C or SIGTERM removes its temporary database
/// (a stopped `bench open` left it behind: hundreds of MB at the default
/// size).
#[cfg(target_os = "linux")]
#[test]
fn a_stopped_bench_removes_its_temporary_database() {
    use std::time::{Duration, Instant};
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
        cmd.args(["bench", "open", "--n", "100000", "--dim", "16"])
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        common::default_stop_signals(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_dir(tmp.path()).unwrap().next().is_none() {
            assert!(Instant::now() < deadline, "no temporary database made");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "it ended before the signal"
        );
        // SAFETY: signals a child this test spawned and has not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + signal), "{stderr}");
        assert!(
            stderr.contains("temporary database was removed"),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
