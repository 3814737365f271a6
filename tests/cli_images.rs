//! The image commands of the `vitrine` binary: annotate, import, demo and
//! eval classify, run as a user would.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::copy_tree;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vitrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the vitrine binary runs")
}

/// Whether the bundled model is there; the model-dependent tests skip
/// (with a message) when it is not.
fn have_model(test: &str) -> bool {
    let onnx = root().join("models").join(vitrine::BUNDLED_ONNX);
    let ok = onnx.is_file();
    if !ok {
        eprintln!("SKIP {test}: {} is absent", onnx.display());
    }
    ok
}

/// The first `n` images of the sample catalog, sorted by name.
fn sample_images(n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples/catalog/images"))
        .expect("examples/catalog/images exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files.truncate(n);
    assert_eq!(files.len(), n, "the sample catalog has {n} images");
    files
}

/// Copies the first `n` sample images into `dir/images` and returns it.
fn copy_samples(dir: &Path, n: usize) -> PathBuf {
    let src = dir.join("images");
    std::fs::create_dir(&src).unwrap();
    for f in sample_images(n) {
        std::fs::copy(&f, src.join(f.file_name().unwrap())).unwrap();
    }
    src
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Annotations that could not be written (a full disk) fail the command:
/// a batch job must not take an empty file for a success.
#[test]
fn annotate_fails_when_its_output_cannot_be_written() {
    if !have_model("annotate_fails_when_its_output_cannot_be_written") {
        return;
    }
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIP: no /dev/full");
        return;
    }
    let files = sample_images(1);
    let file = files[0].to_str().unwrap();
    for json in [false, true] {
        let mut args = vec!["annotate", "--fpi", file];
        if json {
            args.push("--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(&args)
            .current_dir(root())
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "json {json}: {stderr}");
        assert!(
            stderr.contains("cannot write to standard output"),
            "{stderr}"
        );
    }
    // (A flag that would be ignored is refused: --images only with --sheet.)
    let out = vitrine(&[
        "outfit", "--db", "nowhere", "show", "x", "--images", "p.csv",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn annotate_json_prints_one_object_per_file() {
    if !have_model("annotate_json_prints_one_object_per_file") {
        return;
    }
    let files = sample_images(2);
    let (a, b) = (files[0].to_str().unwrap(), files[1].to_str().unwrap());
    let out = vitrine(&["annotate", "--fpi", "--json", a, b]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, file) in lines.iter().zip([a, b]) {
        let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        assert_eq!(v["file"], file);
        let cats = v["category"].as_array().unwrap();
        assert_eq!(cats.len(), 5);
        let mut last = f64::INFINITY;
        for c in cats {
            assert!(c["label"].is_string());
            let p = c["p"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p) && p <= last, "{line}");
            last = p;
        }
        for t in v["tags"].as_array().unwrap() {
            assert!(t["tag"].as_str().unwrap().contains('.'));
            assert!((0.0..=1.0).contains(&t["score"].as_f64().unwrap()));
        }
    }
}

#[test]
fn annotate_names_a_bad_file_and_exits_3_or_1() {
    if !have_model("annotate_names_a_bad_file_and_exits_3_or_1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A name with an escape sequence is shown without it.
    let bad = dir.path().join("not-an-image\u{1b}[2J.jpg");
    std::fs::write(&bad, "this is text, not a JPEG").unwrap();
    let good = sample_images(1).remove(0);
    let out = vitrine(&[
        "annotate",
        "--json",
        bad.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    // Some files failed: 3, as for an import; all of them: 1.
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not-an-image?[2J.jpg"),
        "error names the file: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // The good file after the bad one was still annotated.
    assert_eq!(text(&out.stdout).lines().count(), 1);
    let out = vitrine(&["annotate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn import_reports_failures_and_a_rerun_skips_everything() {
    if !have_model("import_reports_failures_and_a_rerun_skips_everything") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 5);
    std::fs::write(src.join("broken.jpg"), [0xFF, 0xD8, 0xFF]).unwrap();
    let db = dir.path().join("db");
    let (src_s, db_s) = (src.to_str().unwrap(), db.to_str().unwrap());

    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    // Some items failed: exit status 3, for nightly jobs.
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("6 items: 5 imported, 0 skipped (already present), 1 failed"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(db.join("import-failures.tsv")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 1, "{report}");
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(fields.len(), 3, "{report}");
    assert_eq!(fields[0], "broken");
    assert!(fields[1].ends_with("broken.jpg"));
    assert!(!fields[2].is_empty());

    // Every item failed: the input itself is wrong, exit status 1.
    let only_bad = dir.path().join("only-bad");
    std::fs::create_dir(&only_bad).unwrap();
    std::fs::write(only_bad.join("a.jpg"), [0xFF, 0xD8, 0xFF]).unwrap();
    std::fs::write(only_bad.join("b.png"), b"not a png").unwrap();
    let other_db = dir.path().join("db-bad");
    let out = vitrine(&[
        "import",
        only_bad.to_str().unwrap(),
        "--db",
        other_db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));

    std::fs::remove_file(src.join("broken.jpg")).unwrap();
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("5 items: 0 imported, 5 skipped (already present), 0 failed"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(db.join("import-failures.tsv")).unwrap();
    assert!(report.is_empty(), "{report}");
}

#[test]
fn import_reads_a_csv_with_attributes() {
    if !have_model("import_reads_a_csv_with_attributes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = sample_images(3);
    // As Excel writes "CSV UTF-8": a byte-order mark, CRLF line ends, and a
    // quoted cell may hold commas and line breaks. Built-in columns are
    // recognised in any case.
    let mut csv = String::from("\u{feff}id,path,Category,Price,in_stock,colour,note\r\n");
    for (i, f) in files.iter().enumerate() {
        csv.push_str(&format!(
            "sku-{i},{},Tops,{}.5,{},\"red, dark\",\"slim fit,\r\n12\"\" sleeve\"\r\n",
            f.display(),
            10 + i,
            i != 1
        ));
    }
    let csv_path = dir.path().join("items.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let db = dir.path().join("db");
    let report = dir.path().join("fails.tsv");
    let out = vitrine(&[
        "import",
        csv_path.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3 imported"));
    assert!(report.is_file());
    let model = vitrine::Model::bundled().unwrap();
    let db_dir = db;
    let db = vitrine::Db::builder()
        .open_with_model(&db_dir, &model)
        .unwrap();
    let p = db.get("sku-1").unwrap().unwrap();
    assert_eq!(p.attributes.category.as_deref(), Some("Tops"));
    assert_eq!(p.attributes.price, Some(11.5));
    assert!(!p.attributes.in_stock);
    assert_eq!(p.attributes.extra["colour"], "red, dark");
    assert_eq!(p.attributes.extra["note"], "slim fit,\r\n12\" sleeve");
    drop(db);

    // An unclosed quote fails the file, naming the line where it opens.
    let broken = dir.path().join("broken.csv");
    std::fs::write(
        &broken,
        "id,path,note\nsku-9,x.jpg,ok\nsku-10,y.jpg,\"open\n",
    )
    .unwrap();
    let out = vitrine(&[
        "import",
        broken.to_str().unwrap(),
        "--db",
        db_dir.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("opened on line 3 is never closed"),
        "{stderr}"
    );
    let db = vitrine::Db::builder()
        .open_with_model(&db_dir, &model)
        .unwrap();
    assert_eq!(db.len(), 3, "nothing of the broken file is stored");
    drop(db);

    // Every row bad, into a database that does not exist: none is made.
    let all_bad = dir.path().join("all-bad.csv");
    std::fs::write(&all_bad, "id,path,price\nsku-7,,1\nsku-8,z.jpg,abc\n").unwrap();
    let fresh = dir.path().join("fresh");
    let out = vitrine(&[
        "import",
        all_bad.to_str().unwrap(),
        "--db",
        fresh.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("every one of the 2 rows"), "{stderr}");
    assert!(!fresh.exists());

    // The nightly refresh: sku-1 has a new price; sku-0 and sku-2 are
    // unchanged. Only sku-1 is rewritten, its vectors kept.
    let refreshed = std::fs::read_to_string(&csv_path)
        .unwrap()
        .replace("11.5,false", "9.5,false");
    std::fs::write(&csv_path, refreshed).unwrap();
    let import = |csv: &Path, extra: &[&str]| {
        let mut args = vec![
            "import",
            csv.to_str().unwrap(),
            "--db",
            db_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vitrine(&args)
    };
    let out = import(&csv_path, &[]);
    assert!(
        text(&out.stdout).contains("0 imported, 3 skipped"),
        "without --update nothing changes"
    );
    let out = import(&csv_path, &["--update"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("3 present: 1 updated, 2 unchanged, 0 failed")
            && stdout.contains("3 items: 0 imported"),
        "{stdout}"
    );
    assert!(!stdout.contains("not in"), "{stdout}");
    assert!(!stdout.contains("another image"), "{stdout}");
    // A CSV with fewer columns changes only its own cells: sku-1 stays
    // sold out, in its category, with its colour.
    let prices = dir.path().join("prices.csv");
    std::fs::write(
        &prices,
        format!("id,path,price\nsku-1,{},8\n", files[1].display()),
    )
    .unwrap();
    let out = import(&prices, &["--update"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    // The products the CSV does not list are kept, and counted.
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 stored products are not in"), "{stdout}");
    // ... and which they are can be found: every stored id, sorted.
    let listed = vitrine(&["product", "--db", db_dir.to_str().unwrap(), "list"]);
    assert!(listed.status.success(), "stderr: {}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    let ids: Vec<&str> = listed.lines().collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert!(
        ids.contains(&"sku-1") && ids.windows(2).all(|w| w[0] < w[1]),
        "{listed}"
    );
    let db = vitrine::Db::builder()
        .open_with_model(&db_dir, &model)
        .unwrap();
    let q = db.get("sku-1").unwrap().unwrap();
    assert_eq!(q.attributes.price, Some(8.0));
    assert!(
        !q.attributes.in_stock,
        "no in_stock column: the stock flag stays"
    );
    assert_eq!(q.attributes.category.as_deref(), Some("Tops"));
    assert_eq!(q.attributes.extra["colour"], "red, dark");
    assert_eq!(q.vectors, p.vectors);
    assert_eq!(
        q.attributes.extra[vitrine::ATTR_MODEL],
        p.attributes.extra[vitrine::ATTR_MODEL]
    );
    drop(db);
    // A bad cell fails its row only, into the report (exit status 3). With
    // --update a present product needs no path; a new one does.
    std::fs::write(
        &prices,
        format!(
            "id,path,price\n\nsku-1,{0},abc\nsku-2,,7\n,{0},1\nsku-new,,3\nsku-2,,7,oops\nsku-2,,9\n",
            files[1].display()
        ),
    )
    .unwrap();
    let out = import(&prices, &["--update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let failures = std::fs::read_to_string(db_dir.join("import-failures.tsv")).unwrap();
    assert!(failures.contains("sku-1\t") && failures.contains("line 3: bad price 'abc'"));
    assert!(
        failures.contains("line 5: id and path are required")
            && failures.contains("sku-new\t\tline 6: a new product needs an image path")
            && failures.contains("line 7: 4 cells, but the header has 3 columns")
            && failures.contains("line 8: id sku-2 appears twice in the file"),
        "{failures}"
    );
    // The prices of sku-1 and sku-2 as stored.
    let prices_now = || {
        let db = vitrine::Db::builder()
            .open_with_model(&db_dir, &model)
            .unwrap();
        let price = |id: &str| db.get(id).unwrap().unwrap().attributes.price;
        (price("sku-1"), price("sku-2"))
    };
    assert_eq!(prices_now(), (Some(8.0), Some(7.0)));
    // A row naming another image than the product's is applied, and said
    // to need --refresh; rows of only commas (a spreadsheet's cleared
    // rows) are no rows; a good row after a bad one of its id is its
    // second, not imported.
    std::fs::write(
        &prices,
        format!(
            "id,path,price\nsku-1,{},7.5\n,,\n , ,\nsku-2,,abc\nsku-2,,6\n",
            files[2].display()
        ),
    )
    .unwrap();
    let out = import(&prices, &["--update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("1 present: 1 updated, 0 unchanged, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 present products name another image") && stdout.contains("--refresh"),
        "{stdout}"
    );
    // Every such product is listed in a CSV that --refresh takes as it is.
    let moved = db_dir.join("import-moved.csv");
    assert_eq!(
        std::fs::read_to_string(&moved).unwrap(),
        format!("id,path\nsku-1,{}\n", files[2].display())
    );
    assert!(
        stdout.contains("import-moved.csv --db") && stdout.contains("--refresh --present-only"),
        "{stdout}"
    );
    // sku-2's bad row names it: only sku-0 is not in the file.
    assert!(stdout.contains("1 stored products are not in"), "{stdout}");
    let failures = std::fs::read_to_string(db_dir.join("import-failures.tsv")).unwrap();
    assert_eq!(failures.lines().count(), 2, "{failures}");
    assert!(failures.contains("line 5: bad price 'abc'"), "{failures}");
    assert!(
        failures
            .contains("line 6: id sku-2 appears twice in the file (an earlier row of it is bad)"),
        "{failures}"
    );
    assert_eq!(prices_now(), (Some(7.5), Some(7.0)));
    // The refresh it suggests keeps the pixel aspect the run was given
    // (the database's default may be another source's).
    let out = import(&prices, &["--update", "--pixel-aspect", "0.75"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("--refresh --present-only --pixel-aspect 0.75`"),
        "{stdout}"
    );
    // A listed product deleted since is not brought back by that refresh
    // (it came back in stock, without its price or brand).
    let gone = dir.path().join("gone.csv");
    std::fs::write(&gone, format!("id,path\nsku-gone,{}\n", files[2].display())).unwrap();
    let out = import(&gone, &["--refresh", "--present-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failures = std::fs::read_to_string(db_dir.join("import-failures.tsv")).unwrap();
    assert!(failures.contains("'sku-gone' is not stored"), "{failures}");
    assert!(vitrine::Db::open(&db_dir)
        .unwrap()
        .get("sku-gone")
        .unwrap()
        .is_none());
    // The image it was embedded from, by another route: no notice.
    let folder = files[1].parent().unwrap();
    let detour = folder
        .join("..")
        .join(folder.file_name().unwrap())
        .join(files[1].file_name().unwrap());
    std::fs::write(
        &prices,
        format!("id,path,price\nsku-1,{},7.5\n", detour.display()),
    )
    .unwrap();
    let out = import(&prices, &["--update"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("another image"),
        "{}",
        text(&out.stdout)
    );
    // The list of an earlier run is gone with its cause.
    assert!(!moved.exists());
    // A CSV named relative to the working folder, with a relative image
    // path: the list holds it absolute (it is read from the database's
    // folder, where the relative one named nothing).
    std::fs::copy(&files[2], dir.path().join("new.jpg")).unwrap();
    std::fs::write(
        dir.path().join("rel.csv"),
        "id,path,price\nsku-1,new.jpg,7.5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "import",
            "rel.csv",
            "--db",
            db_dir.to_str().unwrap(),
            "--update",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = std::fs::read_to_string(&moved).unwrap();
    let path = listed
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("sku-1,")
        .unwrap();
    assert!(Path::new(path).is_absolute(), "{listed}");
    assert_eq!(
        std::fs::canonicalize(path).unwrap(),
        std::fs::canonicalize(dir.path().join("new.jpg")).unwrap()
    );
    std::fs::remove_file(&moved).unwrap();
    // A price is finite and >= 0, refused in its row; -0 is 0. A --report
    // naming the CSV itself, or a file of the database's own, is refused
    // before anything runs.
    let body = "id,path,price\nsku-1,,inf\nsku-2,,-0\n";
    std::fs::write(&prices, body).unwrap();
    let sled_log = db_dir.join("sled").join("db");
    // So is one that cannot be written (it failed the import at its end).
    for (report, says) in [
        (prices.clone(), "is the file being imported"),
        (sled_log.clone(), "own sled/ folder"),
        (dir.path().to_path_buf(), "is a folder"),
        (
            dir.path().join("no-such-folder").join("r.tsv"),
            "cannot write the failure report",
        ),
    ] {
        let out = import(&prices, &["--update", "--report", report.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("bad price"),
            "it ran: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(&prices).unwrap(), body);
    // ... also for a database this import would create.
    let fresh = dir.path().join("fresh");
    let report = fresh.join("sled").join("db");
    let out = vitrine(&[
        "import",
        prices.to_str().unwrap(),
        "--db",
        fresh.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("own sled/ folder"),
        "{}",
        text(&out.stderr)
    );
    assert!(!fresh.exists());
    // A report in the folder of a database this import creates is fine
    // (the folder is there by the time the report is written).
    let one = dir.path().join("one.csv");
    std::fs::write(&one, "id,path\nnew-1,new.jpg\n").unwrap();
    let out = vitrine(&[
        "import",
        one.to_str().unwrap(),
        "--db",
        fresh.to_str().unwrap(),
        "--report",
        fresh.join("failures.tsv").to_str().unwrap(),
    ]);
    assert!(
        !text(&out.stderr).contains("cannot write the failure report"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fresh.join("failures.tsv").is_file());
    // A folder below it that does not exist is not made: refused before
    // the import, not after it (which read as a failed import).
    let two = dir.path().join("two.csv");
    std::fs::write(&two, "id,path\nnew-2,new.jpg\n").unwrap();
    let out = vitrine(&[
        "import",
        two.to_str().unwrap(),
        "--db",
        fresh.to_str().unwrap(),
        "--report",
        fresh.join("reports").join("f.tsv").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot write the failure report"),
        "{}",
        text(&out.stderr)
    );
    let got = vitrine(&["product", "--db", fresh.to_str().unwrap(), "get", "new-2"]);
    assert!(!got.status.success(), "imported before the refusal");
    let out = import(&prices, &["--update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let failures = std::fs::read_to_string(db_dir.join("import-failures.tsv")).unwrap();
    assert!(failures.contains("line 2: bad price 'inf'"), "{failures}");
    // Through a symlink (latest.tsv naming a dated report), the file it
    // names is rewritten and the link stays. `/dev/stdout` into a log file
    // (`>> log`) is appended to, not replaced by a rename.
    #[cfg(unix)]
    {
        let dated = dir.path().join("failures-monday.tsv");
        std::fs::write(&dated, "old\n").unwrap();
        let latest = dir.path().join("latest.tsv");
        std::os::unix::fs::symlink(&dated, &latest).unwrap();
        let out = import(&prices, &["--update", "--report", latest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(std::fs::symlink_metadata(&latest)
            .unwrap()
            .file_type()
            .is_symlink());
        let dated_text = std::fs::read_to_string(&dated).unwrap();
        assert!(dated_text.contains("bad price 'inf'"), "{dated_text}");
        assert!(!dated_text.contains("old"), "{dated_text}");
        // A link to tonight's report, not made yet, makes it.
        let tuesday = dir.path().join("failures-tuesday.tsv");
        std::fs::remove_file(&latest).unwrap();
        std::os::unix::fs::symlink("failures-tuesday.tsv", &latest).unwrap();
        let out = import(&prices, &["--update", "--report", latest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(std::fs::symlink_metadata(&latest)
            .unwrap()
            .file_type()
            .is_symlink());
        let tuesday_text = std::fs::read_to_string(&tuesday).unwrap();
        assert!(tuesday_text.contains("bad price 'inf'"), "{tuesday_text}");
        // Such a link into the database's own files is refused.
        let into_sled = dir.path().join("into-sled.tsv");
        std::os::unix::fs::symlink(db_dir.join("sled").join("notes.tsv"), &into_sled).unwrap();
        let out = import(
            &prices,
            &["--update", "--report", into_sled.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("own sled/ folder"),
            "{}",
            text(&out.stderr)
        );
        assert!(!db_dir.join("sled").join("notes.tsv").exists());
        // A link to the CSV itself is the CSV: refused, the CSV kept.
        let link = dir.path().join("current.csv");
        std::os::unix::fs::symlink(&prices, &link).unwrap();
        let out = import(&prices, &["--update", "--report", link.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("is the file being imported"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&prices).unwrap(), body);
        // A regular file under /dev/shm is a file: replaced, not appended to.
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            let report = tempfile::NamedTempFile::new_in(shm).unwrap();
            std::fs::write(report.path(), "last night\n").unwrap();
            let out = import(
                &prices,
                &["--update", "--report", report.path().to_str().unwrap()],
            );
            assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
            let got = std::fs::read_to_string(report.path()).unwrap();
            assert!(
                !got.contains("last night") && got.contains("bad price"),
                "{got}"
            );
        }
        let log = dir.path().join("nightly.log");
        std::fs::write(&log, "yesterday\n").unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["import", prices.to_str().unwrap(), "--db"])
            .arg(&db_dir)
            .args(["--update", "--report", "/dev/stdout"])
            .stdout(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        let log_text = std::fs::read_to_string(&log).unwrap();
        assert!(log_text.starts_with("yesterday\n"), "{log_text}");
        assert!(log_text.contains("bad price 'inf'"), "{log_text}");
    }
    let db = vitrine::Db::builder()
        .open_with_model(&db_dir, &model)
        .unwrap();
    let p2 = db.get("sku-2").unwrap().unwrap().attributes.price.unwrap();
    assert!(p2 == 0.0 && p2.is_sign_positive(), "{p2}");
    drop(db);
    // Attributes come from a CSV whose second column is the image path.
    std::fs::write(&prices, "id,price\nsku-1,8\n").unwrap();
    let out = import(&prices, &["--update"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("second column is the image path"),
        "{}",
        text(&out.stderr)
    );
    let out = import(files[0].parent().unwrap(), &["--update"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("from a CSV file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_writes_contact_sheets() {
    if !have_model("demo_writes_contact_sheets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = vitrine(&["demo", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("300 items: 300 imported"), "{stdout}");
    assert!(stdout.contains("== annotate"), "{stdout}");
    let pngs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), 6, "{pngs:?}");
    for p in &pngs {
        let img = image::open(p).expect("a readable PNG");
        assert!(img.width() > img.height());
    }
    // A rerun imports nothing new.
    let out = vitrine(&["demo", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("0 imported, 300 skipped"));
}

#[test]
fn eval_classify_prints_the_six_figures() {
    if !have_model("eval_classify_prints_the_six_figures") {
        return;
    }
    let data = root().join("../shared/data/fpi");
    if !data.join("styles.csv").is_file() {
        eprintln!(
            "SKIP eval_classify_prints_the_six_figures: {} is absent",
            data.display()
        );
        return;
    }
    let styles = data.join("styles.csv");
    let images = data.join("images");
    let out = vitrine(&[
        "eval",
        "classify",
        "--styles",
        styles.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--limit",
        "60",
        "--json",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 9, "{v}");
    assert_eq!(obj["neighbours_searched_among"], 60, "{v}");
    // Without --split, the output says the training images are in, and
    // that no sibling groups were left out of the neighbours.
    assert_eq!(obj["split"], "all", "{v}");
    assert_eq!(obj["siblings_excluded"], false, "{v}");
    for key in [
        "weighted_f1",
        "top1",
        "top5",
        "colour_top1",
        "precision_at_10",
    ] {
        let x = obj[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    assert_eq!(obj["n"], 60);
    // Under 11 images there are not 10 neighbours: precision@10 was not
    // measured, and says so (null), not 0 nor a precision at fewer.
    for n in [1, 5] {
        let out = vitrine(&[
            "eval",
            "classify",
            "--styles",
            styles.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--limit",
            &n.to_string(),
            "--json",
        ]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
        assert!(v["precision_at_10"].is_null(), "{v}");
        assert_eq!(v["n"], n, "{v}");
    }
}

#[test]
fn sample_catalog_is_small_and_complete() {
    let dir = root().join("examples/catalog");
    let csv = std::fs::read_to_string(dir.join("catalog.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,file,"));
    let mut bytes = 0;
    let mut n = 0;
    for line in lines {
        let file = line.split(',').nth(1).unwrap();
        bytes += std::fs::metadata(dir.join(file)).unwrap().len();
        n += 1;
    }
    assert!(n > 0 && n <= 300, "{n} images");
    assert!(bytes <= 2_500_000, "{bytes} bytes");
    assert!(Path::new(&dir.join("README.md")).is_file());
}

#[test]
fn bench_ingest_reports_every_stage_and_batch() {
    if !have_model("bench_ingest_reports_every_stage_and_batch") {
        return;
    }
    let out = vitrine(&["bench", "ingest", "--n", "6", "--batch", "1,4", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["images"], 6);
    assert!(v["decode_ms_per_image"].as_f64().unwrap() > 0.0);
    assert!(v["prepare_ms_per_image"].as_f64().unwrap() > 0.0);
    assert!(v["infer_ms_per_image"].as_f64().unwrap() > 0.0);
    let batches = v["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2);
    for (b, want) in batches.iter().zip([1, 4]) {
        assert_eq!(b["batch"], want);
        assert!(b["import_images_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn query_command_prints_results_and_positioned_errors() {
    if !have_model("query_command_prints_results_and_positioned_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for f in sample_images(8) {
        std::fs::copy(&f, images.join(f.file_name().unwrap())).unwrap();
    }
    // A retailer's SKU, longer than the table's narrowest id column.
    let long = "SKU-2026-LONG-ID-0001";
    std::fs::copy(&sample_images(9)[8], images.join(format!("{long}.jpg"))).unwrap();
    let out = vitrine(&[
        "import",
        images.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = db.to_str().unwrap();
    // Tables show ids whole: two SKUs differing at their ends were cut
    // to the same 13 characters.
    let out = vitrine(&["query", "--db", db, "+colour.black limit 9"]);
    assert!(text(&out.stdout).contains(long), "{}", text(&out.stdout));
    let first = sample_images(1)[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let out = vitrine(&["query", "--db", db, &format!("similar {first} 8")]);
    assert!(text(&out.stdout).contains(long), "{}", text(&out.stdout));
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "--json",
        "+colour.black -colour.white limit 3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["rank"], i + 1);
        assert_eq!(l["contributions"].as_array().unwrap().len(), 2);
    }
    // `similar` takes a filter from the query language.
    let seed = lines[0]["id"].as_str().unwrap();
    let category = lines[1]["category"].as_str().unwrap();
    let line = format!("similar {seed} 8 where category = \"{category}\"");
    let out = vitrine(&["query", "--db", db, "--json", &line]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let similar: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!similar.is_empty());
    assert!(
        similar.iter().all(|h| h["category"] == category),
        "{similar:?}"
    );
    // Its rows have the keys of `find`'s, but for the terms' contributions.
    let keys = |row: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = row.as_object().unwrap().keys().cloned().collect();
        keys.retain(|k| k != "contributions");
        keys.sort();
        keys
    };
    assert_eq!(keys(&similar[0]), keys(&lines[0]));
    // A query given as several words, a value the shell took the quotes
    // off among them, means what it means in one argument; so do words
    // that parse as given (`find "+colour.black limit 4"`).
    for value in [category, "Two Words"] {
        let whole = format!("+colour.black where category = \"{value}\" limit 4");
        let out = vitrine(&["query", "--db", db, "--json", &whole]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut words = vec!["query", "--db", db, "--json", "+colour.black", "where"];
        words.extend(["category", "=", value, "limit", "4"]);
        let split = vitrine(&words);
        assert!(split.status.success(), "{value}: {}", text(&split.stderr));
        assert_eq!(text(&split.stdout), text(&out.stdout), "{value}");
        words.insert(4, "find");
        let split = vitrine(&words);
        assert_eq!(text(&split.stdout), text(&out.stdout), "{value}");
        let list = format!("+colour.black where category in (\"{value}\", \"Two Words\") limit 4");
        let out = vitrine(&["query", "--db", db, "--json", &list]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let open = format!("({value},");
        let mut words = vec!["query", "--db", db, "--json", "+colour.black", "where"];
        words.extend(["category", "in", &open, "Two Words)", "limit", "4"]);
        let split = vitrine(&words);
        assert!(split.status.success(), "{value}: {}", text(&split.stderr));
        assert_eq!(text(&split.stdout), text(&out.stdout), "{value}");
    }
    // A quote closed too late is still the error it was, not a value
    // that matches nothing.
    for words in [
        &[
            "+colour.black",
            "where",
            "category",
            "=",
            "Casual Shoes limit 4",
        ][..],
        &["+colour.black where category =", "Casual Shoes limit 1"],
    ] {
        let mut args = vec!["query", "--db", db];
        args.extend(words);
        let out = vitrine(&args);
        assert_eq!(out.status.code(), Some(1), "{words:?}");
        assert!(text(&out.stderr).contains("error"), "{words:?}");
    }
    let whole = vitrine(&["query", "--db", db, "--json", "+colour.black limit 4"]);
    for words in [
        &["find", "+colour.black limit 4"][..],
        &["+colour.black", "limit 4"],
        &["find +colour.black", "limit", "4"],
    ] {
        let mut args = vec!["query", "--db", db, "--json"];
        args.extend(words);
        let out = vitrine(&args);
        assert!(out.status.success(), "{words:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), text(&whole.stdout), "{words:?}");
    }
    // Flags after the query still mean themselves.
    for db_flag in [vec!["--db", db], vec![&*format!("--db={db}")]] {
        let mut args = vec!["query", &line];
        args.extend(db_flag.iter().copied());
        args.push("--json");
        let out = vitrine(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), similar.len(), "{args:?}");
    }
    let out = vitrine(&[
        "query",
        "--db",
        db,
        &format!("similar {seed} where price <"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    // With --json, the error is a JSON object on stdout too, as a piped
    // REPL prints it.
    let out = vitrine(&["query", "--db", db, "--json", "find +colour.rd"]);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("colour.red"),
        "{err}"
    );
    // With where it is (0-based), and what kind of mistake: a client points
    // at it without reading the text. A `similar` line's too.
    assert_eq!(err["kind"], "UnknownConcept", "{err}");
    assert_eq!(err["column"], 6, "{err}");
    assert_eq!(err["hint"], "did you mean colour.red?", "{err}");
    let line = format!("similar {seed} where price <");
    let out = vitrine(&["query", "--db", db, "--json", &line]);
    let err: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(err["kind"], "UnexpectedEnd", "{err}");
    assert_eq!(err["column"], line.chars().count(), "{err}");
    // Errors past the parse name their kind as the library does.
    for (line, kind) in [
        (
            "find +colour.red profile nobody".to_string(),
            "UnknownProfile",
        ),
        ("feedback anna no-such-product like".to_string(), "NotFound"),
        ("tag define lonely".to_string(), "NotEnoughExamples"),
    ] {
        let out = vitrine(&["query", "--db", db, "--json", &line]);
        let err: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(err["kind"], kind, "{line}: {err}");
    }
    // So is a database that cannot be opened.
    let missing = images.join("no-such-db");
    let out = vitrine(&[
        "query",
        "--db",
        missing.to_str().unwrap(),
        "--json",
        "find +colour.red",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("no-such-db"),
        "{err}"
    );
    // And by a piped REPL (its stdin here is not a terminal).
    let out = vitrine(&["repl", "--db", missing.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert!(
        err["error"].as_str().unwrap().contains("no-such-db"),
        "{err}"
    );
    // Without the bundled model, `like image` and `annotate` say why it
    // could not be loaded (they pointed at a library call).
    for line in [
        format!("find like image \"{}\"", images.join("x.jpg").display()),
        format!("annotate {}", images.join("x.jpg").display()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["query", "--db", db, &line])
            .env("VITRINE_MODEL_DIR", dir.path().join("no-model"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{line}");
        let err = text(&out.stderr);
        assert!(err.contains("no-model"), "{line}: {err}");
        assert!(!err.contains("Db::"), "{line}: {err}");
    }
    // Clauses other than conditions are refused, a limit too (20, the
    // query language's default, was taken for none and ignored); an error
    // in a condition points at it.
    for (clause, says) in [
        ("where in_stock limit 20", "only conditions"),
        ("where in_stock LIMIT 3", "only conditions"),
        ("where in_stock diverse 0.5", "only conditions"),
        // (A like in the clause was "given twice", under the one typed.)
        ("where in_stock like 5", "only conditions"),
        ("where in_stock and price < x", "price < x"),
        // A second `where` is the clause's own mistake, not a refused clause.
        (
            "where in_stock where brand = A",
            "join conditions with 'and'",
        ),
    ] {
        let out = vitrine(&["query", "--db", db, &format!("similar {seed} 4 {clause}")]);
        assert_eq!(out.status.code(), Some(1), "{clause}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{clause}: {err}");
    }
    // No id: the usage, not a profile named after the condition.
    let out = vitrine(&["query", "--db", db, "similar where in_stock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("usage: similar <id>"),
        "{}",
        text(&out.stderr)
    );
    // A page past the last hit says so, not that no hit reaches min_score.
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "find +colour.red min_score -100 offset 9000",
    ]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("offset 9000 is past the last"), "{said}");
    // A customer id of digits names the user once a profile has that name;
    // `user=` and `k=` say which outright.
    let out = vitrine(&["query", "--db", db, "profile set 4711 colour=1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        format!("similar {seed} 4711 2"),
        format!("similar {seed} k=2 user=4711"),
    ] {
        let out = vitrine(&["query", "--db", db, "--json", &line]);
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 2, "{line}");
    }
    let out = vitrine(&["query", "--db", db, "--json", &format!("similar {seed} 3")]);
    assert_eq!(text(&out.stdout).lines().count(), 3);
    // A new profile setting only a concept weighs every group equally (a
    // preference for red does not stop "more like this" looking alike);
    // one naming a group weighs only that.
    let out = vitrine(&["query", "--db", db, "profile set redfan colour.red=1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A weight given twice is refused (one would be dropped unseen), and
    // changes nothing.
    for twice in ["colour=1 Colour=0", "colour.red=2 colour.RED=0"] {
        let line = format!("profile set redfan {twice}");
        let out = vitrine(&["query", "--db", db, &line]);
        assert_eq!(out.status.code(), Some(1), "{line}");
        assert!(
            text(&out.stderr).contains("is given twice"),
            "{}",
            text(&out.stderr)
        );
    }
    {
        let db = vitrine::Db::open(db).unwrap();
        let p = db.profile("redfan").unwrap().unwrap();
        assert_eq!(p.affinities.get("colour.red"), Some(&1.0), "{p:?}");
        let w: Vec<f32> = p.weights.values().copied().collect();
        assert!(
            w.len() > 1 && w.iter().all(|x| (x - w[0]).abs() < 1e-6 && *x > 0.0),
            "{p:?}"
        );
        let p = db.profile("4711").unwrap().unwrap();
        assert!(
            p.weights.iter().all(|(g, w)| (*w > 0.0) == (g == "colour")),
            "{p:?}"
        );
    }
    // A quote is a character of a user id, given as its own argument, also
    // before a where clause.
    let out = vitrine(&["query", "--db", db, "feedback", "an\"na", seed, "like"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A new user id holding an escape is refused, and does not reach the
    // terminal as one.
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "feedback",
        "a\u{1b}[31mb",
        seed,
        "like",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not show") && !text(&out.stderr).contains('\u{1b}'),
        "{:?}",
        text(&out.stderr)
    );
    let out = vitrine(&[
        "query", "--db", db, "--json", "similar", seed, "an\"na", "2", "where", "in_stock",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    {
        let db = vitrine::Db::open(db).unwrap();
        assert!(db.profile("an\"na").unwrap().is_some());
        assert!(db.profile("anna").unwrap().is_none());
    }
    // Words that do not join concepts, and unknown groups, say so.
    let out = vitrine(&["query", "--db", db, "+colour.red or +colour.blue"]);
    assert!(
        text(&out.stderr).contains("'or' does not join concepts"),
        "{}",
        text(&out.stderr)
    );
    // A mistyped command word is said as the REPL says it, not read as
    // a concept.
    for word in ["shoes", "suit", "top"] {
        let out = vitrine(&["query", "--db", db, word, "limit", "3"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            !text(&out.stderr).contains("unknown command"),
            "{word}: {}",
            text(&out.stderr)
        );
    }
    for (typo, meant) in [("simlar", "similar"), ("prodct", "product")] {
        let out = vitrine(&["query", "--db", db, typo, seed]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr)
                .contains(&format!("unknown command '{typo}' — did you mean {meant}?")),
            "{}",
            text(&out.stderr)
        );
    }
    // Either of two values of a field is `in (…)`: the hint says so.
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "+colour.red where brand = \"Acme\" or brand = \"Zeta\"",
    ]);
    assert!(
        text(&out.stderr).contains("in (\"A\", \"B\")"),
        "{}",
        text(&out.stderr)
    );
    let out = vitrine(&["query", "--db", db, "concepts nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no concept group 'nope'"));
    // The service file serves what `similar` shows.
    let table = dir.path().join("similar.vsim");
    let table_s = table.to_str().unwrap();
    let out = vitrine(&[
        "precompute",
        "similar",
        "--k",
        "3",
        "--db",
        db,
        "--out",
        table_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vitrine(&["precompute", "show", "--file", table_s, seed, "--json"]);
    let served: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = vitrine(&["query", "--db", db, "--json", &format!("similar {seed} 3")]);
    let shown: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    let served_ids: Vec<String> = served["similar"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].to_string())
        .collect();
    assert_eq!(served_ids, shown, "{served}");
    // `--json` after the query, as the README writes it.
    let out = vitrine(&["query", "--db", db, "+colour.black limit 2", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after.len(), 2);
    let out = vitrine(&["query", "--db", db, "+colour.rd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did you mean colour.red?"),
        "{}",
        text(&out.stderr)
    );
    // A script piped into the REPL runs every line, and fails as a whole
    // when one failed.
    let run_script = |script: &[u8]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["repl", "--db", db])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script).unwrap();
        child.wait_with_output().unwrap()
    };
    // A carriage return inside a line is refused, not read as words of
    // the first command (`product delete A\rproduct get B` deleted B too);
    // so is a line of megabytes (split into words, it took gigabytes).
    let long = format!("product get {}\n", "a ".repeat(600_000));
    for (script, says) in [
        (
            format!("product get {seed}\rproduct get {seed}\n"),
            "carriage return",
        ),
        (long, "bytes long"),
    ] {
        let out = run_script(script.as_bytes());
        assert!(!out.status.success());
        let said = text(&out.stdout);
        assert!(said.contains(says), "{}", &said[..said.len().min(500)]);
    }
    let out = run_script(b"concepts Pattern\noutfit list --json\n");
    assert!(out.status.success(), "{}", text(&out.stdout));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("pattern.striped"),
        "group names in any case: {shown}"
    );
    let last = shown.lines().last().unwrap_or("").to_string();
    assert!(
        serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| v.is_array()),
        "{last}"
    );
    // A piped script with --json prints JSON lines only (no banner).
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["repl", "--db", db, "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"find +colour.black limit 2\nconcepts pattern\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert!(
        lines.len() >= 3 && lines[0].contains("\"rank\""),
        "{lines:?}"
    );
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    // `show` names its sheet after the first free name: a dangling link
    // under that name is not free (it was written through).
    #[cfg(unix)]
    {
        use std::io::Write;
        let work = tempfile::tempdir().unwrap();
        let victim = work.path().join("elsewhere.png");
        std::os::unix::fs::symlink(&victim, work.path().join("vitrine-show-1.png")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["repl", "--db", db])
            .current_dir(work.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"find +colour.black limit 2\nshow\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!victim.exists(), "written through the link");
        assert!(
            work.path().join("vitrine-show-2.png").is_file(),
            "{}",
            text(&out.stdout)
        );
    }
    let out = run_script(b"find +colour.rd\nconcepts pattern\n");
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("did you mean colour.red?") && shown.contains("pattern.striped"),
        "{shown}"
    );
    // An empty answer says when min_score is why.
    let out = vitrine(&["query", "--db", db, "+colour.black min_score 50"]);
    assert!(
        text(&out.stdout).contains("no hit scores at least 50 (the best scores"),
        "{}",
        text(&out.stdout)
    );
    // An empty answer says when the where conditions are why.
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "+colour.black where category = \"no such category\"",
    ]);
    assert!(
        text(&out.stdout).contains(
            "none of the 9 products passes the where conditions: \
             no product has category = 'no such category'"
        ),
        "{}",
        text(&out.stdout)
    );
    // And in JSON, on stderr: the lines of stdout are the hits.
    let out = vitrine(&[
        "query",
        "--db",
        db,
        "--json",
        "+colour.black where category = \"no such category\"",
    ]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("no product has category = 'no such category'"),
        "{}",
        text(&out.stderr)
    );
    // Typos a search engineer makes are named: a built-in written as a
    // free attribute, a clause written as a condition.
    for (query, said) in [
        (
            "+colour.black where stock = 1",
            "did you mean the built-in in_stock",
        ),
        (
            "+colour.black where in_stock and limit = 5",
            "`limit` is a clause of the query",
        ),
    ] {
        let out = vitrine(&["query", "--db", db, query]);
        assert!(
            text(&out.stdout).contains(said),
            "{query}: {}",
            text(&out.stdout)
        );
    }
    // A line that is not UTF-8 fails alone; the script goes on.
    let out = run_script(b"find +colour.r\xe9d\nconcepts pattern\n");
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("not UTF-8") && shown.contains("pattern.striped"),
        "{shown}"
    );
    // A BOM before the first line is skipped, and tag names are taken as
    // `tag list` shows them (user.…), non-ASCII ones included.
    let script = format!(
        "\u{feff}concepts pattern\ntag define größe {seed}\ntag weight user.größe 2\n\
         tag delete user.größe\ntag define cozy {seed}\ntag delete User.COZY\n"
    );
    let out = run_script(script.as_bytes());
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    assert!(
        shown.contains("pattern.striped")
            && shown.contains("user.größe weight 2")
            && shown.contains("deleted user.größe")
            && shown.contains("deleted user.cozy"),
        "{shown}"
    );
    // Any REPL command works too.
    let out = vitrine(&["query", "--db", db, "concepts", "pattern"]);
    assert!(
        text(&out.stdout).contains("pattern.striped"),
        "{}",
        text(&out.stdout)
    );
    // Arguments a command would ignore are refused, and `profile reset`
    // does not invent a profile for an unknown user.
    for line in [
        &["info", "now"][..],
        &["concepts", "pattern", "colour"],
        &["json", "on", "off"],
        &["profile", "reset", "nobody"],
        &["profile", "delete", "nobody"],
    ] {
        let mut args = vec!["query", "--db", db];
        args.extend_from_slice(line);
        let out = vitrine(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{line:?}: {}",
            text(&out.stdout)
        );
    }
    // `profile delete` forgets a user: no longer listed, nor shown.
    let script =
        format!("feedback gone-soon {first} like\nprofile delete gone-soon\nprofile list\n");
    let out = run_script(script.as_bytes());
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    assert!(shown.contains("deleted profile gone-soon"), "{shown}");
    assert!(!shown.contains("  gone-soon"), "{shown}");
    let out = vitrine(&["query", "--db", db, "profile", "show", "gone-soon"]);
    assert_eq!(out.status.code(), Some(1));
    // As a one-shot command too (it read as a query's profile clause).
    let out = run_script(format!("feedback gone-too {first} like\n").as_bytes());
    assert!(out.status.success());
    let out = vitrine(&["query", "--db", db, "profile", "delete", "gone-too"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let out = vitrine(&["query", "--db", db, "profile", "show", "gone-too"]);
    assert_eq!(out.status.code(), Some(1));
    // An option where `similar` takes a user says so.
    let out = run_script(format!("similar {first} 3 --json\n").as_bytes());
    assert!(
        text(&out.stdout).contains("similar takes no option '--json' (`json on`"),
        "{}",
        text(&out.stdout)
    );
    // A bare `outfit` or `product` shows its help, not an error.
    for cmd in ["outfit", "product"] {
        let out = vitrine(&["query", "--db", db, cmd]);
        assert!(out.status.success(), "{cmd}: {}", text(&out.stdout));
        assert!(
            text(&out.stdout).contains("Usage:") && !text(&out.stdout).starts_with("error"),
            "{cmd}: {}",
            text(&out.stdout)
        );
    }
    // `--db` may also follow the subcommand; without it, a usage error.
    let out = vitrine(&["outfit", "list", "--db", db]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // With --json, an error is a JSON line on stdout too.
    for cmd in [
        &["outfit", "--db", db, "--json", "show", "no-such-outfit"][..],
        &["product", "--db", db, "--json", "get", "no-such-product"],
    ] {
        let out = vitrine(cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim())
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {}", text(&out.stdout)));
        assert!(
            line["error"].as_str().unwrap().contains("no-such"),
            "{line}"
        );
        assert_eq!(line["locked"], false);
    }
    // Not after a result of its own: stdout stays one JSON object.
    let out = vitrine(&[
        "product",
        "--db",
        db,
        "--json",
        "delete",
        "no-such-1",
        "no-such-2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"unknown\""), "{lines:?}");
    for cmd in [&["outfit", "list"][..], &["product", "get", "x"]] {
        let out = vitrine(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        assert!(
            text(&out.stderr).contains("needs --db"),
            "{}",
            text(&out.stderr)
        );
    }
    // Given twice, on either side of the subcommand, `--db` is refused:
    // clap kept the last one, silently. So are values a flag would
    // otherwise quietly move or drop.
    let other = format!("--db={db}-other");
    for cmd in [
        &["outfit", "--db", db, "list", "--db", "other"][..],
        &["product", "--db", db, "delete", "x", other.as_str()],
        &["bench", "ingest", "--batch", "0,8"],
        &["eval", "classify", "--batch", "128"],
        &[
            "eval",
            "fitb",
            "--products",
            "p",
            "--outfits",
            "o",
            "--questions",
            "q",
            "--all-methods",
            "--method",
            "visual",
        ],
        &[
            "eval",
            "outfits",
            "--products",
            "p",
            "--outfits",
            "o",
            "--db",
            "d",
            "--palette",
            "-1",
        ],
    ] {
        let out = vitrine(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", text(&out.stderr));
    }
    assert!(vitrine(&["product", "--db", db, "get", "x"]).status.code() != Some(2));
    let out = vitrine(&["query", "--db", db, "profile", "list"]);
    assert!(
        !text(&out.stdout).contains("nobody"),
        "{}",
        text(&out.stdout)
    );
    // --json holds for every command, tags and profiles too, and a query
    // may open with its profile clause.
    let ids: Vec<String> = sample_images(8)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let json_lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["query", "--db", db, "--json"];
        all.extend_from_slice(args);
        let out = vitrine(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
            .collect()
    };
    let tag = json_lines(&["tag", "define", "mine", &ids[0], &ids[1]]);
    assert_eq!(tag[0]["tag"], "user.mine");
    let tag = json_lines(&["tag", "weight", "mine", "0.75"]);
    assert_eq!(tag[0]["weight"], 0.75);
    // Defined again, it says what the definition replaced.
    let out = vitrine(&["query", "--db", db, "tag", "define", "mine", &ids[0]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "replaces the earlier definition: 2 example(s), 0 counter-example(s), weight 0.75"
        ),
        "{}",
        text(&out.stdout)
    );
    json_lines(&["profile", "set", "anna", "colour=1"]);
    let users = json_lines(&["profile", "list"]);
    assert!(users.iter().any(|u| u["user"] == "anna"), "{users:?}");
    // A verb in any case, as the command word.
    let shown = json_lines(&["PROFILE", "Show", "anna"]);
    assert_eq!(shown[0]["user"], "anna", "{shown:?}");
    let hits = json_lines(&["profile", "anna", "+colour.black", "limit", "2"]);
    assert!(
        !hits.is_empty() && hits.iter().all(|h| h["id"].is_string()),
        "{hits:?}"
    );
    let gone = json_lines(&["tag", "delete", "mine"]);
    assert_eq!(gone[0]["deleted"], "user.mine");
    // A command's words may come whole or in pieces from the shell.
    for args in [
        vec!["similar", ids[0].as_str(), "2 where in_stock"],
        vec!["similar", ids[0].as_str(), "2"],
    ] {
        let hits = json_lines(&args);
        assert_eq!(hits.len(), 2, "{args:?}: {hits:?}");
    }
    let one = format!("similar {} 2", ids[0]);
    assert_eq!(json_lines(&[one.as_str()]).len(), 2);
    // Products named like the commands' words are named in quotes.
    {
        let d = vitrine::Db::open(db).unwrap();
        for (id, from) in [("logistic", &ids[2]), ("not", &ids[3]), ("where", &ids[4])] {
            let p = d.get(from).unwrap().unwrap();
            d.insert(id, p.attributes, p.vectors).unwrap();
        }
    }
    let line = format!(
        r#"tag define words "logistic" "not" not "where" {}"#,
        ids[5]
    );
    let tag = json_lines(&[line.as_str()]);
    assert_eq!(tag[0]["method"], "Centroid", "{tag:?}");
    assert_eq!(tag[0]["positives"], serde_json::json!(["logistic", "not"]));
    assert_eq!(tag[0]["negatives"], serde_json::json!(["where", ids[5]]));
    let hits = json_lines(&[r#"similar "where" 2"#]);
    assert_eq!(hits.len(), 2, "{hits:?}");
    // Ids from a file, one per line (a list past a line's cap), for
    // examples and counter-examples alike.
    let lists = tempfile::tempdir().unwrap();
    let (pos, neg) = (lists.path().join("pos.txt"), lists.path().join("neg.txt"));
    std::fs::write(&pos, format!("{}\n\n {} \n", ids[0], ids[1])).unwrap();
    std::fs::write(&neg, format!("{}\n", ids[5])).unwrap();
    let line = format!(
        "tag define listed @{} {} not @{}",
        pos.display(),
        ids[2],
        neg.display()
    );
    let tag = json_lines(&[line.as_str()]);
    assert_eq!(
        tag[0]["positives"],
        serde_json::json!([ids[0], ids[1], ids[2]])
    );
    assert_eq!(tag[0]["negatives"], serde_json::json!([ids[5]]));
    let missing = format!(
        "tag define listed @{}",
        lists.path().join("no.txt").display()
    );
    let out = vitrine(&["query", "--db", db, &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("goes in quotes"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eval_concepts_json_has_the_documented_keys() {
    let fpi = root().join("../shared/data/fpi");
    if !fpi.join("styles.csv").is_file()
        || !have_model("eval_concepts_json_has_the_documented_keys")
    {
        eprintln!("SKIP eval_concepts_json_has_the_documented_keys: ../shared/data/fpi is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (styles, images) = (fpi.join("styles.csv"), fpi.join("images"));
    let run = |split: &str, limit: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "concepts",
            "--styles",
            styles.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--split",
            split,
            "--limit",
            limit,
            "--profiles",
            "3",
            "--references",
            "3",
            "--db",
            db.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        vitrine(&args)
    };
    let out = run("val", "80", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "p20_category",
        "p20_colour",
        "p20_conjunction",
        "profile_recall",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    assert_eq!(v["n"], 80);
    assert_eq!(v["split"], "val");
    // Reused with another preparation: refused, not mixed in.
    let out = run("val", "80", &["--pixel-aspect", "1.0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pixel aspect"),
        "{}",
        text(&out.stderr)
    );
    // The folder holds another split's products: refused before anything
    // is imported into it (it imported this run's, then refused).
    let out = run("train", "5", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("80 products this run does not label"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(vitrine::Db::open(&db).unwrap().len(), 80);
}

/// A catalog in a folder named in Latin-1 (an old share): its image paths
/// are stored as text, lossily, and every nightly --update found every
/// product's image moved, and listed paths that name no file.
// Linux: macOS's file systems refuse a name that is not UTF-8.
#[cfg(target_os = "linux")]
#[test]
fn an_update_in_a_folder_not_named_in_utf8_finds_nothing_moved() {
    use std::os::unix::ffi::OsStrExt;
    if !have_model("an_update_in_a_folder_not_named_in_utf8_finds_nothing_moved") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&sample_images(1)[0], folder.join("a.jpg")).unwrap();
    let csv = folder.join("cat.csv");
    std::fs::write(&csv, "id,path,price\na,a.jpg,5\n").unwrap();
    let db = dir.path().join("db");
    let import = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .arg("import")
            .arg(&csv)
            .arg("--db")
            .arg(&db)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = import(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = import(&["--update"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("another image"), "{stdout}");
    assert!(!db.join("import-moved.csv").exists());
    // A photo that did change, to a path that cannot be written as text:
    // said, and no list of only a header (which the refresh it suggested
    // refused).
    std::fs::copy(&sample_images(2)[1], folder.join("b.jpg")).unwrap();
    std::fs::write(&csv, "id,path,price\na,b.jpg,5\n").unwrap();
    let out = import(&["--update"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("not UTF-8 text"), "{stdout}");
    assert!(!stdout.contains("import-moved.csv --db"), "{stdout}");
    assert!(!db.join("import-moved.csv").exists());
}

#[test]
fn eval_concepts_refuses_counts_that_measure_nothing() {
    // With no reference products the recall was 0/0, and the report's
    // minimum said 1.0.
    for flag in ["--references", "--profiles"] {
        let out = vitrine(&[
            "eval",
            "concepts",
            "--styles",
            "styles.csv",
            "--images",
            "images",
            flag,
            "0",
        ]);
        assert!(!out.status.success(), "{flag} 0 was accepted");
        assert!(
            text(&out.stderr).contains("must be at least 1"),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn import_refuses_another_models_database_unless_reembedding() {
    if !have_model("import_refuses_another_models_database_unless_reembedding") {
        return;
    }
    // "Another model": the bundled weights with one category renamed (a
    // different fingerprint), in a model folder of its own.
    let dir = tempfile::tempdir().unwrap();
    let other = other_model_dir(dir.path());

    let src = copy_samples(dir.path(), 3);
    let db = dir.path().join("db");
    let (src_s, db_s) = (src.to_str().unwrap(), db.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["import", src_s, "--db", db_s, "--fpi"])
        .env("VITRINE_MODEL_DIR", &other)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));

    // The bundled model refuses it, naming the way out.
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--reembed"),
        "{}",
        text(&out.stderr)
    );
    // A nightly --update still refreshes prices and stock (it runs no
    // model), and refuses only the new product, whose vectors would not
    // compare: exit 3, some rows failed.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let first = files[0].file_stem().unwrap().to_str().unwrap().to_string();
    let csv = dir.path().join("nightly.csv");
    std::fs::write(
        &csv,
        format!(
            "id,path,price\n{first},,12.5\nbrand-new,{},3\n",
            files[1].display()
        ),
    )
    .unwrap();
    let out = vitrine(&["import", csv.to_str().unwrap(), "--db", db_s, "--update"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 updated"), "{stdout}");
    assert!(stdout.contains("1 new products not imported"), "{stdout}");
    let out = vitrine(&["product", "--db", db_s, "get", &first, "brand-new"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("12.5"), "{stdout}");
    assert!(!out.status.success(), "brand-new was imported: {stdout}");
    // Outfits read only the stored vectors: they work too.
    let out = vitrine(&["outfit", "--db", db_s, "list"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    // A --reembed from a CSV that no longer lists a product leaves that
    // one of the old model: a failure, named in the report (exit 3).
    let ids: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    let listed = dir.path().join("listed.csv");
    std::fs::write(
        &listed,
        format!(
            "id,path\n{},{}\n{},{}\n",
            ids[0],
            files[0].display(),
            ids[1],
            files[1].display()
        ),
    )
    .unwrap();
    // A --reembed from `source`: exit 3, the one product it lacks counted,
    // and the report's one line, which names it.
    let reembed_lacking_one = |source: &Path| -> String {
        let out = vitrine(&[
            "import",
            source.to_str().unwrap(),
            "--db",
            db_s,
            "--fpi",
            "--reembed",
        ]);
        assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
        // (Which the summary's failed count, of the images, leaves out.)
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("1 stored products are not in")
                && stdout.contains("1 of them are still of the previous model"),
            "{stdout}"
        );
        let failures = std::fs::read_to_string(db.join("import-failures.tsv")).unwrap();
        assert_eq!(failures.lines().count(), 1, "{failures}");
        assert!(
            failures.starts_with(&format!("{}\t\tnot in ", ids[2])),
            "{failures}"
        );
        failures
    };
    let failures = reembed_lacking_one(&listed);
    assert!(
        failures.contains("listed.csv, so not re-embedded"),
        "{failures}"
    );
    // The same from a folder that lacks it.
    let two = dir.path().join("two");
    std::fs::create_dir(&two).unwrap();
    for f in &files[..2] {
        std::fs::copy(f, two.join(f.file_name().unwrap())).unwrap();
    }
    reembed_lacking_one(&two);
    // --reembed from the folder re-embeds the one left; a second run has
    // nothing left to do.
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi", "--reembed"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "3 items: 1 imported (1 of them re-embedded or refreshed), 2 skipped (already of \
             this model)"
        ),
        "{}",
        text(&out.stdout)
    );
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 items: 0 imported, 3 skipped"),
        "{}",
        text(&out.stdout)
    );
}

/// A model folder of the bundled weights with one category renamed:
/// another model, for VITRINE_MODEL_DIR.
fn other_model_dir(dir: &Path) -> PathBuf {
    let other = dir.join("other-model");
    std::fs::create_dir(&other).unwrap();
    let models = root().join("models");
    std::fs::copy(
        models.join(vitrine::BUNDLED_ONNX),
        other.join(vitrine::BUNDLED_ONNX),
    )
    .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("manifest.json")).unwrap()).unwrap();
    let c0 = m["taxonomy"]["categories"][0].as_str().unwrap().to_string();
    m["taxonomy"]["categories"][0] = serde_json::Value::String(format!("{c0} (renamed)"));
    std::fs::write(other.join("manifest.json"), m.to_string()).unwrap();
    other
}

/// A re-embedding that switched the model and stopped before its first
/// product: `info` says every product is of the model before.
#[test]
fn info_names_products_of_a_model_the_database_left() {
    if !have_model("info_names_products_of_a_model_the_database_left") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let other = other_model_dir(dir.path());
    let src = copy_samples(dir.path(), 2);
    let db = dir.path().join("db");
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "import",
            src.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--fpi",
        ])
        .env("VITRINE_MODEL_DIR", &other)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let old = {
        let d = vitrine::Db::open(&db).unwrap();
        let old = d.model_fingerprint().unwrap();
        d.adopt_model(&vitrine::Model::bundled().unwrap()).unwrap();
        old
    };
    let out = vitrine(&["info", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("2 products from {old}")), "{shown}");
}

#[test]
fn info_reports_contents_and_a_rebuilt_index() {
    if !have_model("info_reports_contents_and_a_rebuilt_index") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 4);
    let db = dir.path().join("db");
    let (src_s, db_s) = (src.to_str().unwrap(), db.to_str().unwrap());
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));

    let info = |expect_clean: bool| -> serde_json::Value {
        let out = vitrine(&["info", "--db", db_s, "--json"]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["products"], 4);
        assert_eq!(v["in_stock"], 4);
        assert_eq!(v["model"]["is_bundled"], true);
        // The database remembers the import's `--fpi`.
        assert_eq!(v["preparation"]["pixel_aspect"], 0.75);
        assert_eq!(v["preparation"]["recorded"], true);
        assert_eq!(v["outfits"], 0);
        assert_eq!(v["opened"]["damaged_records"], 0);
        let rebuilt = v["opened"]["rebuilt_indexes"].as_array().unwrap();
        assert_eq!(rebuilt.is_empty(), expect_clean, "{v}");
        v
    };
    let v = info(true);
    assert!(v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "embedding" && s["dim"] == 128));

    // A damaged index dump is named, the index is rebuilt from sled, and
    // the rebuilt index is dumped again: the next open is clean.
    let dump = db.join("index/embedding/index.vtx");
    let damage = || {
        let mut bytes = std::fs::read(&dump).unwrap();
        bytes[20] ^= 0xFF;
        std::fs::write(&dump, bytes).unwrap();
    };
    damage();
    let v = info(false);
    let why = v["opened"]["rebuilt_indexes"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(why.contains("index.vtx"), "{why}");
    info(true);
    damage();
    let out = vitrine(&["info", "--db", db_s]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("index of embedding rebuilt from storage"),
        "{shown}"
    );
    assert!(shown.contains("products   4 (4 in stock"), "{shown}");
    assert!(shown.contains("(the bundled model)"), "{shown}");
    // Without the bundled model there is nothing to compare with: unknown,
    // not "another model".
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["info", "--db", db_s])
        .env("VITRINE_MODEL_DIR", dir.path().join("no-model"))
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("the bundled model could not be loaded to compare"),
        "{shown}"
    );
    assert!(!shown.contains("not the bundled model"), "{shown}");

    // A side record this build cannot read (a user tag of a newer build):
    // named, and the open no longer called clean.
    {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Newer(u8);
        impl vitrine_storage::Record for Newer {
            const VERSION: u8 = 200;
        }
        let store =
            vitrine_storage::Store::open(&db, vitrine_storage::StoreOptions::default()).unwrap();
        store
            .keyspace::<Newer>("vitrine.user_tags")
            .unwrap()
            .put(b"future", &Newer(1))
            .unwrap();
        store.flush().unwrap();
    }
    let out = vitrine(&["info", "--db", db_s]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("cannot read the user tags"), "{shown}");
    assert!(!shown.contains("clean"), "{shown}");
    let v = info(true);
    assert_eq!(v["user_tags"], serde_json::Value::Null, "{v}");
    assert_eq!(
        v["opened"]["unreadable"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    {
        let store =
            vitrine_storage::Store::open(&db, vitrine_storage::StoreOptions::default()).unwrap();
        store
            .keyspace::<vitrine_storage::Meta>("vitrine.user_tags")
            .unwrap()
            .remove(b"future")
            .unwrap();
        store.flush().unwrap();
    }

    // A damaged arena: reported, read from storage, rewritten.
    let arena = db.join("arena/embedding.arena");
    let mut bytes = std::fs::read(&arena).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&arena, bytes).unwrap();
    let v = info(true);
    assert_eq!(
        v["opened"]["damaged_arenas"][0]["space"], "embedding",
        "{v}"
    );
    let v = info(true);
    assert!(
        v["opened"]["damaged_arenas"].as_array().unwrap().is_empty(),
        "{v}"
    );

    // A damaged sled snapshot: refused, then repaired from sled's log.
    let snap = std::fs::read_dir(db.join("sled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("snap.")
        })
        .expect("sled wrote a snapshot");
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&snap, bytes).unwrap();
    // A database kept from other users (a service's umask 077).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = vitrine(&["info", "--db", db_s]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("vitrine repair"),
        "{}",
        text(&out.stderr)
    );
    // The database's folder is a mount point: the file system's
    // `lost+found`, which only root may read, is not the database's.
    std::fs::create_dir(db.join("lost+found")).unwrap();
    std::fs::write(db.join("lost+found").join("#1234"), b"x").unwrap();
    let out = vitrine(&["repair", "--db", db_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 products kept"),
        "{}",
        text(&out.stdout)
    );
    info(true);
    // The damaged folder was copied first, snapshot and all.
    let copy = dir.path().join("db.before-repair");
    assert!(copy.join("sled").join(snap.file_name().unwrap()).is_file());
    assert!(!copy.join("lost+found").exists());
    assert!(db.join("lost+found").join("#1234").is_file());
    // ... keeping each file's permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let copied = std::fs::metadata(copy.join("sled").join(snap.file_name().unwrap())).unwrap();
        assert_eq!(copied.permissions().mode() & 0o777, 0o600);
    }

    // A damaged sled config: sled writes it again.
    let conf = db.join("sled").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[8] ^= 0xFF;
    std::fs::write(&conf, bytes).unwrap();
    assert!(!vitrine(&["info", "--db", db_s]).status.success());
    let out = vitrine(&["repair", "--db", db_s]);
    assert!(
        text(&out.stdout).contains("4 products kept"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(dir.path().join("db.before-repair-2").is_dir());
    info(true);
    // A healthy database: every record is read, nothing changes, no copy stays.
    let out = vitrine(&["repair", "--db", db_s]);
    assert!(
        text(&out.stdout).contains("nothing to repair"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dir.path().join("db.before-repair-3").exists());
    // A repair killed while putting its copy back leaves no folder at the
    // path, and copies next to it: commands say so, and an import does not
    // make a new database over the gap.
    let aside = dir.path().join("db.repair-failed");
    std::fs::rename(&db, &aside).unwrap();
    let out = vitrine(&["info", "--db", db_s]);
    assert!(
        text(&out.stderr).contains("a repair left"),
        "{}",
        text(&out.stderr)
    );
    let out = vitrine(&["import", src_s, "--db", db_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a repair left"),
        "{}",
        text(&out.stderr)
    );
    assert!(!db.exists());
    std::fs::rename(&aside, &db).unwrap();
    info(true);

    // Index files without storage are not "no database".
    let orphan = dir.path().join("orphan");
    std::fs::create_dir_all(orphan.join("index")).unwrap();
    let out = vitrine(&["info", "--db", orphan.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("but not its storage"),
        "{}",
        text(&out.stderr)
    );

    let out = vitrine(&["info", "--db", dir.path().join("nothing").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no database at"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn product_get_set_and_delete() {
    if !have_model("product_get_set_and_delete") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 3);
    let db = dir.path().join("db");
    let (src_s, db_s) = (src.to_str().unwrap(), db.to_str().unwrap());
    let out = vitrine(&["import", src_s, "--db", db_s, "--fpi"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let ids: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    let get = |id: &str| -> serde_json::Value {
        let out = vitrine(&["product", "--db", db_s, "get", id, "--json"]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // An id given twice is one product.
    let twice = vitrine(&["product", "--db", db_s, "get", &ids[0], &ids[0], "--json"]);
    assert_eq!(text(&twice.stdout).lines().count(), 1);
    let before = get(&ids[0]);
    assert_eq!(before["vector_dims"]["embedding"], 128);
    assert!(before["attributes"][vitrine::ATTR_MODEL].is_string());

    let out = vitrine(&[
        "product",
        "--db",
        db_s,
        "set",
        &ids[0],
        "Price=12.5",
        "IN_STOCK=no",
        "season=summer",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let after = get(&ids[0]);
    assert_eq!(after["price"], 12.5);
    assert_eq!(after["in_stock"], false);
    assert_eq!(after["attributes"]["season"], "summer");
    assert!(after["attributes"].get("Price").is_none(), "{after}");
    assert_eq!(after["category"], before["category"]);
    // A bad value or an engine attribute changes nothing.
    for bad in [
        "price=cheap",
        "price=-1",
        "vitrine.model=x",
        "Vitrine.model=x",
        "in_stock=maybe",
        // (Single quotes would be stored, unlike the query language's.)
        "category='Shirts'",
        // (A key CSV import refuses: no CSV could name it.)
        "col\tour=red",
    ] {
        let out = vitrine(&["product", "--db", db_s, "set", &ids[0], "brand=B", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
    assert_eq!(get(&ids[0])["brand"], serde_json::Value::Null);
    // A near-spelling of a built-in is a free attribute, and said so.
    let out = vitrine(&["product", "--db", db_s, "set", &ids[0], "In Stock=no"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not the built-in in_stock"),
        "{}",
        text(&out.stderr)
    );
    vitrine(&["product", "--db", db_s, "set", &ids[0], "In Stock="]);
    // `key=` removes.
    vitrine(&["product", "--db", db_s, "set", &ids[0], "season="]);
    assert!(get(&ids[0])["attributes"].get("season").is_none());

    // Delete: the known ids go, an unknown one is said, and the batch
    // that left some is exit 3 (1 when none went).
    // (An id no product can have is unknown too: the ones after it go.)
    let out = vitrine(&["product", "--db", db_s, "delete", "", &ids[1], "no-such-id"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("no-such-id"),
        "{}",
        text(&out.stderr)
    );
    let out = vitrine(&["product", "--db", db_s, "get", &ids[1]]);
    assert_eq!(out.status.code(), Some(1));
    let out = vitrine(&["product", "--db", db_s, "delete", &ids[1]]);
    assert_eq!(out.status.code(), Some(1));
    // Through `query`, an empty argument is one too (it was dropped); a
    // get that shows some is exit 3.
    let out = vitrine(&["query", "--db", db_s, "product", "get", "", &ids[2]]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    // Before the command word, one is nothing.
    let out = vitrine(&["query", "--db", db_s, "", "product", "get", &ids[2]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vitrine(&["info", "--db", db_s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["products"], 2);
    // The REPL has the same commands.
    let out = vitrine(&["query", "--db", db_s, "product", "get", &ids[2]]);
    assert!(
        text(&out.stdout).contains("in stock   yes"),
        "{}",
        text(&out.stdout)
    );

    // A changed photo: --refresh re-runs the model on it, attributes kept.
    let embedding = |id: &str| {
        let db = vitrine::Db::open(&db).unwrap();
        db.get(id).unwrap().unwrap().vectors["embedding"].clone()
    };
    let (a, b) = (&ids[0], &ids[2]);
    let (old_a, emb_b) = (embedding(a), embedding(b));
    assert_ne!(get(a)["category"], get(b)["category"]);
    std::fs::copy(src.join(format!("{b}.jpg")), src.join(format!("{a}.jpg"))).unwrap();
    let out = vitrine(&["import", src_s, "--db", db_s]);
    // (The deleted product comes back; the two stored ones are skipped.)
    assert!(
        text(&out.stdout).contains("2 skipped"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(embedding(a), old_a, "a plain import skips stored products");
    let out = vitrine(&["import", src_s, "--db", db_s, "--refresh"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 imported (3 of them re-embedded or refreshed)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(embedding(a), emb_b);
    assert_eq!(get(a)["price"], 12.5);
    // The category the model gave the old photo follows the new one.
    assert_eq!(get(a)["category"], get(b)["category"]);
}

/// The summary counts every failure the exit status does, bad CSV rows
/// too, in text and in `--json`.
#[test]
fn the_import_summary_counts_bad_rows_as_failures() {
    if !have_model("the_import_summary_counts_bad_rows_as_failures") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 2);
    let names: Vec<String> = sample_images(2)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    std::fs::write(src.join("junk.jpg"), "not an image").unwrap();
    let csv = src.join("products.csv");
    std::fs::write(
        &csv,
        format!(
            "id,path,price\nsku-1,{},10\nsku-2,{},abc\nsku-3,junk.jpg,5\n",
            names[0], names[1]
        ),
    )
    .unwrap();
    let import = |db: &str, json: bool| {
        let db = dir.path().join(db);
        let mut args = vec![
            "import",
            csv.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        vitrine(&args)
    };
    let out = import("text", false);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 items: 1 imported, 0 skipped (already present), 2 failed"),
        "{}",
        text(&out.stdout)
    );
    let out = import("json", true);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (key, n) in [
        ("items", 3),
        ("imported", 1),
        ("failed", 2),
        ("bad_rows", 1),
    ] {
        assert_eq!(summary[key], n, "{key}: {summary}");
    }
    assert!(
        summary["report"]
            .as_str()
            .unwrap()
            .ends_with("import-failures.tsv"),
        "{summary}"
    );
    assert!(
        summary["notes"][0].as_str().unwrap().contains("1 bad rows"),
        "{summary}"
    );
    assert!(
        summary["stopped"].is_null() && summary["error"].is_null(),
        "{summary}"
    );
    // An update counts the present products' rows too.
    let out = vitrine(&[
        "import",
        csv.to_str().unwrap(),
        "--db",
        dir.path().join("json").to_str().unwrap(),
        "--update",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["unchanged"], 1, "{summary}");
    assert_eq!(
        summary["items"], 3,
        "1 unchanged, 1 bad row, 1 bad image: {summary}"
    );
    // A run where every item fails into a new database prints its summary
    // too, and leaves neither the database nor the folders made for it.
    let all_bad = src.join("all-bad.csv");
    std::fs::write(&all_bad, "id,path\nx,junk.jpg\n").unwrap();
    let deep = dir.path().join("a").join("b").join("db");
    let out = vitrine(&[
        "import",
        all_bad.to_str().unwrap(),
        "--db",
        deep.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["items"].clone(), summary["failed"].clone()),
        (1.into(), 1.into())
    );
    assert!(!dir.path().join("a").exists());
    // The report cannot share stdout with the summary, by any name.
    for stdout in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
        let out = vitrine(&[
            "import",
            csv.to_str().unwrap(),
            "--db",
            dir.path().join("json").to_str().unwrap(),
            "--json",
            "--report",
            stdout,
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{stdout}: {}",
            text(&out.stderr)
        );
    }
    // A run refused before it began prints its object too.
    let nowhere = dir.path().join("no-such-folder").join("r.tsv");
    let out = vitrine(&[
        "import",
        csv.to_str().unwrap(),
        "--db",
        dir.path().join("json").to_str().unwrap(),
        "--json",
        "--report",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["stopped"]
            .as_str()
            .unwrap()
            .contains("failure report"),
        "{summary}"
    );
}

/// An import where every item fails leaves no database behind: it would
/// hold nothing but the report, which goes to stderr (or `--report`).
#[test]
fn an_import_where_every_image_fails_makes_no_database() {
    if !have_model("an_import_where_every_image_fails_makes_no_database") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("images");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.jpg"), "not an image").unwrap();
    std::fs::write(src.join("b.png"), [0x89, b'P', b'N', b'G', 0, 0]).unwrap();
    let db = dir.path().join("db");
    let report = dir.path().join("failures.tsv");
    for with_report in [false, true] {
        let mut args = vec![
            "import",
            src.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ];
        if with_report {
            args.extend(["--report", report.to_str().unwrap()]);
        }
        let out = vitrine(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("every one of the 2 items failed")
                && stderr.contains("no database was made"),
            "{stderr}"
        );
        assert!(!db.exists(), "a database of nothing was left behind");
        if with_report {
            let lines = std::fs::read_to_string(&report).unwrap();
            assert_eq!(lines.lines().count(), 2, "{lines}");
        } else {
            assert!(stderr.contains("failed: a\t"), "{stderr}");
        }
    }
    // Into a database that exists, it stays, with its report.
    std::fs::create_dir(&db).unwrap();
    let out = vitrine(&[
        "import",
        src.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(db.join("import-failures.tsv").is_file());
}

/// A damaged segment header is refused before sled writes, and `info
/// --json` says it is damage (for a monitor).
#[test]
fn a_damaged_segment_header_is_reported_as_damage() {
    if !have_model("a_damaged_segment_header_is_reported_as_damage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 2);
    let db = dir.path().join("db");
    let d = db.to_str().unwrap();
    assert_eq!(
        vitrine(&["import", src.to_str().unwrap(), "--db", d])
            .status
            .code(),
        Some(0)
    );
    let log = db.join("sled").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[8] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let out = vitrine(&["info", "--db", d, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["damaged"].clone(), v["locked"].clone()),
        (true.into(), false.into()),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("sled/db"), "{v}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "the refused open wrote"
    );
    // Its only segment skipped, nothing is left: the repair says so and
    // puts the folder back as it was.
    let out = vitrine(&["repair", "--db", d]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no product is readable"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
    // Storage gone beside its index files is damage too.
    std::fs::remove_dir_all(db.join("sled")).unwrap();
    let out = vitrine(&["info", "--db", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["damaged"], true, "{v}");
}

/// `--update` given a folder is a usage error (exit 2), as other wrong
/// combinations of flags are, and makes no database.
#[test]
fn update_from_a_folder_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let out = vitrine(&[
        "import",
        dir.path().to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--update",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a folder"),
        "{}",
        text(&out.stderr)
    );
    assert!(!db.exists());
}

/// A failure report that cannot be written is found before the import,
/// not after it stored every product (it then failed with no summary).
#[test]
fn an_unwritable_default_report_stops_the_import_before_it_starts() {
    if !have_model("an_unwritable_default_report_stops_the_import_before_it_starts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 1);
    let db = dir.path().join("db");
    let import = || {
        vitrine(&[
            "import",
            src.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
    };
    assert_eq!(import().status.code(), Some(0));
    let more = sample_images(2).remove(1);
    std::fs::copy(&more, src.join(more.file_name().unwrap())).unwrap();
    let report = db.join("import-failures.tsv");
    let _ = std::fs::remove_file(&report);
    std::fs::create_dir(&report).unwrap();
    let out = import();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a folder, where the failure report goes"),
        "{}",
        text(&out.stderr)
    );
    let model = vitrine::Model::bundled().unwrap();
    let opened = vitrine::Db::builder().open_with_model(&db, &model).unwrap();
    assert_eq!(opened.len(), 1, "nothing was imported");
}

#[cfg(target_os = "linux")]
#[test]
fn a_file_name_that_is_not_utf8_fails_as_an_item() {
    use std::os::unix::ffi::OsStrExt;
    if !have_model("a_file_name_that_is_not_utf8_fails_as_an_item") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 2);
    let first = sample_images(1).remove(0);
    let odd = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::copy(&first, &odd).unwrap();
    // A file that is not an image is ignored, whatever its name.
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9.txt")),
        "notes",
    )
    .unwrap();
    let db = dir.path().join("db");
    let out = vitrine(&[
        "import",
        src.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 items: 2 imported, 0 skipped (already present), 1 failed"),
        "{}",
        text(&out.stdout)
    );
    let report = std::fs::read_to_string(db.join("import-failures.tsv")).unwrap();
    assert!(report.contains("not UTF-8"), "{report}");
}

#[test]
fn a_source_without_products_or_with_engine_columns_fails_and_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("photos");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let header_only = dir.path().join("products.csv");
    std::fs::write(&header_only, "id,path,brand\n").unwrap();
    let engine_column = dir.path().join("engine.csv");
    std::fs::write(&engine_column, "id,path,vitrine.model\nsku-1,,bogus\n").unwrap();
    // A byte-order mark inside the header: a column that looks like the
    // built-in in_stock, and would be a free attribute.
    let hidden_column = dir.path().join("hidden.csv");
    std::fs::write(&hidden_column, "id,path,\u{feff}in_stock\nsku-1,,0\n").unwrap();
    // An export that lost its header line: its first row would name the
    // columns, and be imported as none.
    let headerless = dir.path().join("headerless.csv");
    std::fs::write(
        &headerless,
        "sku-1,img/a.jpg,19.90,yes\nsku-2,img/b.jpg,29.90,no\n",
    )
    .unwrap();
    // ... with no image paths (a nightly --update of prices and stock).
    let headerless_update = dir.path().join("prices.csv");
    std::fs::write(&headerless_update, "sku-1,,19.90,yes\nsku-2,,29.90,no\n").unwrap();
    let nameless_path = dir.path().join("stock.csv");
    std::fs::write(&nameless_path, "sku-1,,Red\nsku-2,,Blue\n").unwrap();
    let db = dir.path().join("db");
    for (source, says) in [
        (&empty, "no images in"),
        (&header_only, "has no product rows"),
        (&engine_column, "column 'vitrine.model' cannot be imported"),
        (
            &hidden_column,
            "column '\\u{feff}in_stock' holds a character that does not show",
        ),
        (&headerless, "the first line looks like a product row"),
        (&headerless_update, "its image path column has no name"),
        (&nameless_path, "its image path column has no name"),
    ] {
        let out = vitrine(&[
            "import",
            source.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
        assert!(!db.exists(), "a failed import left a database behind");
    }
    // Last night's report does not stand for a run that refused its file.
    std::fs::create_dir(&db).unwrap();
    let report = db.join("import-failures.tsv");
    std::fs::write(&report, "").unwrap();
    let out = vitrine(&[
        "import",
        headerless.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let now = std::fs::read_to_string(&report).unwrap();
    assert!(
        now.contains("the import stopped: ") && now.contains("product row"),
        "{now:?}"
    );
    // An --update of `source` that fails as a whole: the report it leaves.
    let failed_update = |source: &std::path::Path, code: i32| {
        std::fs::write(&report, "last night\n").unwrap();
        let out = vitrine(&[
            "import",
            source.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--update",
        ]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stderr: {}",
            text(&out.stderr)
        );
        let now = std::fs::read_to_string(&report).unwrap();
        assert!(!now.contains("last night"), "{now:?}");
        now
    };
    // Nor when tonight's export is missing.
    let now = failed_update(&dir.path().join("missing.csv"), 1);
    assert!(
        now.contains("--update takes attributes from a CSV file"),
        "{now:?}"
    );
    // Nor when the database cannot be opened: another process holds it
    // (exit 4: retry later).
    let held = vitrine::Db::open(&db).unwrap();
    let prices = dir.path().join("prices-ok.csv");
    std::fs::write(&prices, "id,path,price\nsku-1,,19.90\n").unwrap();
    let now = failed_update(&prices, 4);
    assert!(
        now.contains("the import stopped: cannot open the database"),
        "{now:?}"
    );
    drop(held);
}

/// A byte flipped in sled's log, near its end (the entries its snapshot
/// points to): every command ends with an error naming `sled`, and `repair`
/// either keeps what is left or puts every file back as it found it.
#[test]
fn repair_of_a_damaged_sled_log_keeps_or_restores_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    // Written over three sessions, so that sled's snapshot points into its
    // log and a damaged page is found only when it is read.
    for round in 0..3u32 {
        let db = vitrine::Db::open(&pristine).unwrap();
        for i in 0..800u32 {
            let v: Vec<f32> = (0..vitrine::DEFAULT_DIM)
                .map(|d| ((i * 31 + d as u32 * 7 + round) % 97) as f32 + 1.0)
                .collect();
            let attrs = vitrine::Attributes::new().brand(format!("b{}", i % 7));
            db.upsert(&format!("sku-{i}"), attrs, [(vitrine::DEFAULT_SPACE, v)])
                .unwrap();
        }
        db.close().unwrap();
    }
    let log = std::fs::read(pristine.join("sled").join("db")).unwrap();
    let pages: Vec<usize> = (0..log.len() / 4096)
        .rev()
        .filter(|p| log[p * 4096..(p + 1) * 4096].iter().any(|b| *b != 0))
        .collect();
    let sled_files = |db: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(db.join("sled"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    };
    let (mut refused, mut outcomes) = (0, std::collections::BTreeSet::new());
    for page in pages {
        let case = dir.path().join(format!("case-{page}"));
        copy_tree(&pristine, &case);
        let file = case.join("sled").join("db");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[page * 4096 + 100] ^= 0xFF;
        std::fs::write(&file, bytes).unwrap();
        let damaged = sled_files(&case);
        // Cheap in-process check first, on a copy: sled's recovery clears
        // its log after the damage, so an open changes the folder.
        let probe = dir.path().join(format!("probe-{page}"));
        copy_tree(&case, &probe);
        let opens = vitrine::Db::open(&probe).is_ok();
        std::fs::remove_dir_all(&probe).unwrap();
        if opens {
            std::fs::remove_dir_all(&case).unwrap();
            continue;
        }
        refused += 1;
        let c = case.to_str().unwrap();
        let repair = vitrine(&["repair", "--db", c]);
        let copy = dir.path().join(format!("case-{page}.before-repair"));
        if matches!(repair.status.code(), Some(0 | 3)) {
            assert_eq!(
                sled_files(&copy),
                damaged,
                "the copy is the damaged folder, taken before any open"
            );
        }
        eprintln!("page {page}: repair exit {:?}", repair.status.code());
        match repair.status.code() {
            Some(code @ (0 | 3)) => {
                // sled's files were rewritten from what it could read: the
                // database now opens clean, with most products kept; fewer
                // than the checkpoint held, or records left on unreadable
                // pages, is exit 3, and said.
                let said = text(&repair.stderr);
                let lost = said.contains("were not kept") || said.contains("left behind");
                assert_eq!(code == 3, lost, "{code}: {said}");
                let v = vitrine(&["info", "--db", c, "--json"]);
                assert!(v.status.success(), "{}", text(&v.stderr));
                let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
                assert_eq!(v["opened"]["damaged_records"], 0, "{v}");
                assert!(v["products"].as_u64().unwrap() > 700, "{v}");
                // The index holds every product kept, and nothing else.
                let db = vitrine::Db::open(&case).unwrap();
                let ids = db.ids();
                let hits = db
                    .similar(
                        vitrine::SimilarTo::Id(&ids[0]),
                        10_000,
                        &vitrine::Filter::new(),
                    )
                    .unwrap();
                assert_eq!(hits.len(), ids.len() - 1);
            }
            Some(1) => {
                // The folder is put back from the copy, byte for byte
                // (sled's failed opens may have cleared part of its log).
                assert_eq!(sled_files(&case), damaged, "the folder is as it was");
                assert!(!copy.exists(), "the copy went back into place");
                let info = vitrine(&["info", "--db", c]);
                assert_eq!(info.status.code(), Some(1), "{}", text(&info.stderr));
                assert!(
                    text(&info.stderr).contains("sled"),
                    "{}",
                    text(&info.stderr)
                );
            }
            other => panic!("repair ended with {other:?}: {}", text(&repair.stderr)),
        }
        outcomes.insert(repair.status.code());
        if outcomes.len() == 2 || refused == 4 {
            break;
        }
    }
    assert!(refused > 0, "no flip damaged the database");

    // An emptied log: nothing can be kept, and the folder goes back as it was.
    let case = dir.path().join("emptied");
    copy_tree(&pristine, &case);
    std::fs::write(case.join("sled").join("db"), b"").unwrap();
    let damaged = sled_files(&case);
    let repair = vitrine(&["repair", "--db", case.to_str().unwrap()]);
    assert_eq!(repair.status.code(), Some(1), "{}", text(&repair.stdout));
    assert!(
        text(&repair.stderr).contains("no product is readable"),
        "{}",
        text(&repair.stderr)
    );
    assert_eq!(sled_files(&case), damaged);
    assert!(!dir.path().join("emptied.before-repair").exists());
    // The same without a copy: sled's old files (as its failed opens left
    // them) go back into place, not an empty database.
    let case = dir.path().join("emptied-no-copy");
    copy_tree(&pristine, &case);
    std::fs::write(case.join("sled").join("db"), b"").unwrap();
    let repair = vitrine(&["repair", "--db", case.to_str().unwrap(), "--no-copy"]);
    assert_eq!(repair.status.code(), Some(1), "{}", text(&repair.stdout));
    assert!(
        text(&repair.stdout).contains("put sled's old files back in place"),
        "{}",
        text(&repair.stdout)
    );
    let names: Vec<String> = std::fs::read_dir(&case)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("sled.before-salvage")),
        "{names:?}"
    );
    // The checkpoint, the evidence of what was lost, is kept: every open
    // still refuses the folder rather than open what is left.
    assert!(case.join("arena").exists() && case.join("index").exists());
    let info = vitrine(&["info", "--db", case.to_str().unwrap()]);
    assert_eq!(info.status.code(), Some(1), "{}", text(&info.stdout));

    // A repair killed between moving sled's old files aside and the new ones
    // in: commands say so, and the next repair moves them back first.
    let case = dir.path().join("swap");
    copy_tree(&pristine, &case);
    let before = vitrine::Db::open(&case).unwrap().ids();
    std::fs::write(case.join("sled.swap"), "sled.before-salvage").unwrap();
    std::fs::rename(case.join("sled"), case.join("sled.before-salvage")).unwrap();
    std::fs::create_dir_all(case.join("sled.salvage").join("sled")).unwrap();
    // Not ours: kept.
    std::fs::create_dir_all(case.join("sled.salvaged-by-hand")).unwrap();
    let c = case.to_str().unwrap();
    let info = vitrine(&["info", "--db", c]);
    assert_eq!(info.status.code(), Some(1));
    assert!(
        text(&info.stderr).contains("interrupted `vitrine repair`")
            && text(&info.stderr).contains("sled.before-salvage"),
        "{}",
        text(&info.stderr)
    );
    // Nothing opens it meanwhile (an open would make an empty sled/).
    let e = vitrine::Db::open(&case).expect_err("refused");
    assert!(
        e.to_string().contains("interrupted `vitrine repair`"),
        "{e}"
    );
    assert!(!case.join("sled").exists());
    let repair = vitrine(&["repair", "--db", c]);
    assert!(repair.status.success(), "{}", text(&repair.stderr));
    assert!(
        text(&repair.stdout).contains("moved sled's files back"),
        "{}",
        text(&repair.stdout)
    );
    assert!(vitrine::Db::open(&case).unwrap().ids() == before);
    assert!(!case.join("sled.salvage").exists());
    assert!(!case.join("sled.swap").exists());
    assert!(case.join("sled.salvaged-by-hand").exists());
    assert!(vitrine(&["info", "--db", c]).status.success());
}

/// A damaged record is not damage to sled's files: repair says which
/// record, and sets none of sled's files aside.
#[test]
fn repair_of_a_damaged_record_names_it_and_leaves_sleds_files() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = db_with_a_raw_record(dir.path(), "meta", b"meta", &[9]);
    let out = vitrine(&["repair", "--db", db_dir.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("meta/meta"), "{text}");
    assert!(!text.contains("sled's log itself"), "{text}");
    // Nothing of sled's was set aside on the way (repair puts the folder
    // back at the end, so the folder alone would not show it).
    assert!(
        !text.contains("moved ") && !text.contains("aside"),
        "{text}"
    );
    let set_aside: Vec<_> = std::fs::read_dir(&db_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sled-"))
        .collect();
    assert!(set_aside.is_empty(), "{set_aside:?}");
}

/// A product record that does not decode (sled reads every page): repair
/// names it instead of saying there is nothing to repair, and exits 3 (it
/// left them: `repair && ...` must not read that as done).
#[test]
fn repair_names_records_that_do_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = db_with_a_raw_record(dir.path(), "products", b"sku-1", &[9]);
    let out = vitrine(&["repair", "--db", db_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(!stdout.contains("nothing to repair"), "{stdout}");
    assert!(
        stdout.contains("do not decode") && stdout.contains("sku-1"),
        "{stdout}"
    );
}

/// A database in `dir/db` of two products, then `bytes` written raw under
/// `key` of sled tree `tree` (as damage would leave them).
fn db_with_a_raw_record(dir: &Path, tree: &str, key: &[u8], bytes: &[u8]) -> PathBuf {
    let db_dir = dir.join("db");
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        for id in ["sku-1", "sku-2"] {
            let v = vec![1.0f32; vitrine::DEFAULT_DIM];
            db.insert(
                id,
                vitrine::Attributes::new(),
                [(vitrine::DEFAULT_SPACE, v)],
            )
            .unwrap();
        }
        db.close().unwrap();
    }
    let store =
        vitrine_storage::Store::open(&db_dir, vitrine_storage::StoreOptions::default()).unwrap();
    // (Raw bytes: the record type only names the codec, which put_raw skips.)
    let ks: vitrine_storage::Keyspace<vitrine_storage::Meta> = store.keyspace(tree).unwrap();
    ks.put_raw(key, bytes).unwrap();
    store.flush().unwrap();
    db_dir
}

/// Storage emptied (its log lost), checkpoint files left: repair refuses,
/// even without a copy, and leaves the evidence (a repair would have
/// written a new empty schema and removed the checkpoint files).
#[test]
fn repair_of_an_emptied_storage_refuses_and_keeps_the_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = db_with_a_raw_record(dir.path(), "unused", b"k", b"v");
    std::fs::remove_dir_all(db_dir.join("sled")).unwrap();
    std::fs::create_dir(db_dir.join("sled")).unwrap();
    let out = vitrine(&["repair", "--db", db_dir.to_str().unwrap(), "--no-copy"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("restore the database from a backup"),
        "{text}"
    );
    assert!(db_dir.join("arena").read_dir().unwrap().next().is_some());
    assert!(matches!(
        vitrine::Db::open(&db_dir),
        Err(vitrine::Error::Corruption { .. })
    ));
}

/// The hint after `outfit import --learn` names the colour attribute the
/// outfits' products carry, not that of the products whose ids sort first.
#[test]
fn the_colour_attribute_hint_reads_the_outfits_products() {
    if !have_model("the_colour_attribute_hint_reads_the_outfits_products") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = sample_images(6);
    let mut csv = String::from("id,path,colour,colour_group\n");
    for (i, f) in files.iter().enumerate() {
        let (source, colour, group) = if i < 3 {
            ("a", ["red", "blue", "red"][i], "")
        } else {
            ("b", "", ["RED", "BLUE", "GREEN"][i - 3])
        };
        csv += &format!("{source}{i},{},{colour},{group}\n", f.display());
    }
    let products = dir.path().join("products.csv");
    std::fs::write(&products, csv).unwrap();
    let db = dir.path().join("db");
    let db_s = db.to_str().unwrap();
    let out = vitrine(&["import", products.to_str().unwrap(), "--db", db_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let looks = dir.path().join("looks.csv");
    std::fs::write(&looks, "outfit,product\no1,b3\no1,b4\no2,b4\no2,b5\n").unwrap();
    let out = vitrine(&[
        "outfit",
        "--db",
        db_s,
        "import",
        looks.to_str().unwrap(),
        "--learn",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("--colour-attribute colour_group"), "{err}");
}

/// `outfit import` fails whole on an outfit naming a product the database
/// does not hold, saying how to import the others; `--skip-unknown` does,
/// naming what it left out.
#[test]
fn outfit_import_can_leave_out_outfits_of_unknown_products() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        for p in ["p1", "p2"] {
            let v = vec![1.0; vitrine::DEFAULT_DIM];
            db.insert(p, vitrine::Attributes::new(), [(vitrine::DEFAULT_SPACE, v)])
                .unwrap();
        }
    }
    let csv = dir.path().join("looks.csv");
    std::fs::write(&csv, "outfit,product\na,p1\na,p2\nb,p1\nb,gone\n").unwrap();
    let (d, c) = (db_dir.to_str().unwrap(), csv.to_str().unwrap());
    let out = vitrine(&["outfit", "--db", d, "import", c]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("'gone'") && err.contains("--skip-unknown"),
        "{err}"
    );
    assert_eq!(
        vitrine::Db::open(&db_dir).unwrap().outfit_count().unwrap(),
        0
    );
    let out = vitrine(&["outfit", "--db", d, "import", c, "--skip-unknown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 1 outfits"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("left out 1 outfits") && err.contains("outfit b names gone"),
        "{err}"
    );
    let out = vitrine(&["outfit", "--db", d, "--json", "import", c, "--skip-unknown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["imported"], 1);
    assert_eq!(v["left_out"][0]["outfit"], "b");
    assert_eq!(v["left_out"][0]["unknown_product"], "gone");
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        assert_eq!(db.outfit("a").unwrap().unwrap().products(), ["p1", "p2"]);
        assert!(db.outfit("b").unwrap().is_none());
        // An outfit left out that was stored before keeps that version:
        // said, with how to remove it.
        db.store_outfit("b", &["p2"]).unwrap();
    }
    let out = vitrine(&["outfit", "--db", d, "import", c, "--skip-unknown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("1 of them were stored before and keep their earlier version")
            && err.contains("outfit b")
            && err.contains("outfit delete"),
        "{err}"
    );
    let out = vitrine(&["outfit", "--db", d, "--json", "import", c, "--skip-unknown"]);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["kept_earlier"][0], "b");
    let db = vitrine::Db::open(&db_dir).unwrap();
    assert_eq!(db.outfit("b").unwrap().unwrap().products(), ["p2"]);
}

/// Catalog values reach the terminal without their control characters: an
/// outfit id or a category holding an escape sequence cannot drive it, nor
/// a tab split a field. (Product ids cannot hold one since session 17.)
#[test]
fn catalog_values_are_printed_without_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let (p, o) = ("p", "look\u{1b}[2J\t1");
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        let v = vec![1.0; vitrine::DEFAULT_DIM];
        let attrs = vitrine::Attributes::new().category("c\u{1b}]0;pwned\u{7}");
        db.insert(p, attrs, [(vitrine::DEFAULT_SPACE, v)]).unwrap();
        // An outfit id cannot hold one (it could not be typed back).
        assert!(matches!(
            db.store_outfit(o, &[p]),
            Err(vitrine::OutfitError::InvalidId(_))
        ));
        db.store_outfit("look 1", &[p]).unwrap();
    }
    let d = db_dir.to_str().unwrap();
    let out = vitrine(&["outfit", "--db", d, "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.contains("look 1\tp"), "{shown:?}");
    // Shown, too, on a database made without a model: no colour family.
    let out = vitrine(&["outfit", "--db", d, "show", "look 1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(
        shown.contains("1. p\tc?]0;pwned?\tcolour ?\tin stock"),
        "{shown:?}"
    );
    // Errors that quote a value, too.
    let out = vitrine(&["outfit", "--db", d, "show", "x\u{1b}[2J"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{:?}",
        text(&out.stderr)
    );
}

/// `outfit show` on a database made with the model tells a product stored
/// without model outputs (plain vectors) from one no longer in the catalog.
#[test]
fn outfit_show_tells_plain_products_from_deleted_ones() {
    if !have_model("outfit_show_tells_plain_products_from_deleted_ones") {
        return;
    }
    let model = vitrine::Model::bundled().expect("the bundled model loads");
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = vitrine::Db::builder()
            .open_with_model(&db_dir, &model)
            .unwrap();
        let v = vec![1.0; 128];
        let c = vec![1.0; db.concept_layout().unwrap().dim];
        for p in ["plain", "gone"] {
            db.insert(
                p,
                vitrine::Attributes::new(),
                [
                    (vitrine::EMBEDDING_SPACE, v.clone()),
                    (vitrine::CONCEPT_SPACE, c.clone()),
                ],
            )
            .unwrap();
        }
        db.store_outfit("look", &["plain", "gone"]).unwrap();
        // Stored again without model outputs, in a category it did not
        // have; the other one deleted.
        db.upsert(
            "plain",
            vitrine::Attributes::new().category("Knitwear"),
            [(vitrine::EMBEDDING_SPACE, v)],
        )
        .unwrap();
        assert!(db.delete("gone").unwrap());
    }
    let d = db_dir.to_str().unwrap();
    let out = vitrine(&["outfit", "--db", d, "show", "look"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("1. plain\tKnitwear (stored as -)\tcolour ?\tin stock"),
        "{shown:?}"
    );
    assert!(
        shown.contains("2. gone\t-\tcolour ?\tno longer in the catalog"),
        "{shown:?}"
    );
    // The JSON says as much.
    let out = vitrine(&["outfit", "--db", d, "show", "look", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots = v["slots"].as_array().unwrap();
    assert_eq!(slots[0]["product"], "plain");
    assert_eq!(slots[0]["category"], serde_json::Value::Null);
    assert_eq!(slots[0]["current_category"], "Knitwear");
    assert_eq!(slots[0]["in_stock"], true);
    assert_eq!(slots[1]["in_catalog"], false);
    assert_eq!(slots[1]["in_stock"], serde_json::Value::Null);
}

/// A database of another model opens once in the REPL: `info` there tells
/// what that open did (an index rebuilt from storage), as `vitrine info`
/// does.
#[test]
fn repl_info_on_another_models_database_reports_its_open() {
    if !have_model("repl_info_on_another_models_database_reports_its_open") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let other = other_model_dir(dir.path());
    let src = copy_samples(dir.path(), 3);
    let db = dir.path().join("db");
    let db_s = db.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["import", src.to_str().unwrap(), "--db", db_s, "--fpi"])
        .env("VITRINE_MODEL_DIR", &other)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    std::fs::remove_dir_all(db.join("index")).unwrap();
    let out = vitrine(&["query", "--db", db_s, "info"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("rebuilt from storage"), "{shown}");
    // Outfit commands open it too.
    let out = vitrine(&["outfit", "--db", db_s, "list"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
}

/// `repair --rewrite` remakes a healthy database's storage from its live
/// records (the space sled keeps of old versions goes): every product,
/// vector and outfit stays, and the next open is clean.
#[test]
fn repair_rewrite_keeps_everything_and_gives_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let vector = |i: usize, round: usize| -> Vec<f32> {
        (0..32)
            .map(|d| ((i * 31 + d * 7 + round) % 97) as f32 + 1.0)
            .collect()
    };
    let sled_bytes = |p: &Path| -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        }
        walk(&p.join("sled"))
    };
    {
        let db = vitrine::Db::builder()
            .vector_space("embedding", 32, vitrine::Metric::Cosine)
            .open(&db_dir)
            .unwrap();
        // Every product written many times: old versions for sled to keep.
        for round in 0..20 {
            for i in 0..300 {
                let a = vitrine::Attributes::new().price(round as f64 + i as f64);
                db.upsert(&format!("p{i:03}"), a, [("embedding", vector(i, round))])
                    .unwrap();
            }
        }
        db.store_outfit("look", &["p001", "p002"]).unwrap();
    }
    let before = sled_bytes(&db_dir);
    let out = vitrine(&[
        "repair",
        "--db",
        db_dir.to_str().unwrap(),
        "--rewrite",
        "--no-copy",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("rewritten: 300 products kept, 1 outfits"),
        "{stdout}"
    );
    assert!(stdout.contains("to give its"), "{stdout}");
    // The old files are set aside, for the operator to remove.
    let old: Vec<_> = std::fs::read_dir(&db_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sled.before-salvage")
        })
        .collect();
    assert_eq!(old.len(), 1, "{stdout}");
    let after = sled_bytes(&db_dir);
    eprintln!("sled: {before} bytes before, {after} after");
    assert!(after < before, "{before} -> {after}");
    let db = vitrine::Db::open(&db_dir).unwrap();
    assert!(
        db.open_report().rebuilt.is_empty(),
        "{:?}",
        db.open_report()
    );
    assert_eq!(db.len(), 300);
    for i in [0, 150, 299] {
        let p = db.get(&format!("p{i:03}")).unwrap().unwrap();
        assert_eq!(p.attributes.price, Some(19.0 + i as f64));
        assert_eq!(p.vectors["embedding"], vector(i, 19));
    }
    assert_eq!(db.outfit("look").unwrap().unwrap().slots.len(), 2);
}

/// `vitrine args` sent Ctrl-C after each delay in turn (after `reset`),
/// until a run ends by exiting rather than by the signal: a signal that
/// lands before the command installs its handler (during the open) ends it
/// as usual, and is tried again later. A run that was going when the
/// signal came and then went on for a second to succeed ignored it (a
/// stop took 60-90 ms here): that fails here (to the caller, a success
/// reads as a run that ended before the signal, which a fast machine may
/// give).
#[cfg(unix)]
fn interrupted(
    args: &[&str],
    delays: &[u64],
    signal: libc::c_int,
    reset: impl Fn(),
) -> Option<Output> {
    for &delay in delays {
        reset();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        common::default_stop_signals(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let running = child.try_wait().unwrap().is_none();
        let signalled = std::time::Instant::now();
        // (One that ended was reaped by try_wait: its pid may be another's.)
        if running {
            // SAFETY: signals a child this test spawned and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
        let o = child.wait_with_output().unwrap();
        let after = signalled.elapsed();
        assert!(
            !(running && o.status.success() && after > std::time::Duration::from_secs(1)),
            "the command went on for {after:?} after Ctrl-C and succeeded: it ignored the \
             signal\n{}",
            text(&o.stderr)
        );
        if o.status.code().is_some() {
            return Some(o);
        }
    }
    None
}

/// Ctrl-C (or SIGTERM) during an import stops it between two products: what was stored
/// stays, the command says so (exit 1, and the report's last line), and
/// the same command resumes.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_an_import_cleanly_and_it_resumes() {
    if !have_model("ctrl_c_stops_an_import_cleanly_and_it_resumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("examples/catalog/images");
    let db = dir.path().join("db");
    let args = [
        "import",
        src.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--fpi",
    ];
    // SIGTERM (what `timeout` and service managers send) stops it as
    // Ctrl-C does.
    for (signal, name) in [(libc::SIGINT, "Ctrl-C"), (libc::SIGTERM, "SIGTERM")] {
        // Longer waits only on a machine slow to load the model.
        let out = interrupted(&args, &[800, 1500, 2500, 4000, 8000, 16000], signal, || {
            let _ = std::fs::remove_dir_all(&db);
        })
        .expect("Ctrl-C reached every run before its import began");
        if out.status.success() {
            eprintln!("SKIPPED: the import ended before {name} (a fast machine)");
            continue;
        }
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        let report = std::fs::read_to_string(db.join("import-failures.tsv")).unwrap();
        assert!(report.contains(&format!("stopped by {name}")), "{report}");
        let stored = vitrine::Db::open(&db).unwrap().len();
        assert!(stored < 300, "{stored}");
        let out = vitrine(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("{} skipped (already present)", stored)),
            "{stored}: {stdout}"
        );
        assert_eq!(vitrine::Db::open(&db).unwrap().len(), 300);
    }
}

/// Ctrl-C during an `--update`'s writes to present products (one durable
/// write per row: minutes for a large nightly file) stops it between two
/// rows, as an import stops between two products: exit 1, and this run's
/// report (the process used to die by the signal, leaving the last run's
/// report to stand for this one).
#[cfg(unix)]
#[test]
fn ctrl_c_stops_an_update_between_two_rows() {
    if !have_model("ctrl_c_stops_an_update_between_two_rows") {
        return;
    }
    let model = vitrine::Model::bundled().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    // Rows enough for the run to go on for seconds after a Ctrl-C it
    // ignored.
    let n = 16_000;
    {
        let db = vitrine::Db::builder()
            .model_spaces(&model)
            .durability(vitrine::Durability::Periodic {
                interval: std::time::Duration::from_millis(500),
            })
            .open(&db_dir)
            .unwrap();
        let spaces = db.spaces();
        for i in 0..n {
            let vectors = spaces.iter().map(|s| {
                let mut v = vec![0.0f32; s.dim];
                v[i % s.dim] = 1.0;
                (s.name.as_str(), v)
            });
            db.insert(
                &format!("p{i:05}"),
                vitrine::Attributes::new().price(1.0),
                vectors,
            )
            .unwrap();
        }
        db.flush().unwrap();
    }
    let csv = dir.path().join("prices.csv");
    let mut rows = String::from("id,path,price\n");
    for i in 0..n {
        rows += &format!("p{i:05},,2.5\n");
    }
    std::fs::write(&csv, rows).unwrap();
    // An old report, which this run's must replace.
    std::fs::write(db_dir.join("import-failures.tsv"), "last night\n").unwrap();
    let args = [
        "import",
        csv.to_str().unwrap(),
        "--db",
        db_dir.to_str().unwrap(),
        "--update",
        "--json",
    ];
    let out = interrupted(
        &args,
        &[1500, 3000, 5000, 10000, 20000],
        libc::SIGINT,
        || {},
    )
    .expect("Ctrl-C reached every run before its updates began");
    if out.status.success() {
        eprintln!("SKIPPED: the update ended before Ctrl-C (a fast machine)");
        return;
    }
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by Ctrl-C after"), "{stderr}");
    let report = std::fs::read_to_string(db_dir.join("import-failures.tsv")).unwrap();
    assert!(report.contains("stopped by Ctrl-C after"), "{report}");
    let db = vitrine::Db::open(&db_dir).unwrap();
    let updated = (0..n)
        .filter(|i| {
            db.get(&format!("p{i:05}"))
                .unwrap()
                .unwrap()
                .attributes
                .price
                == Some(2.5)
        })
        .count();
    eprintln!("{updated} of {n} rows applied before Ctrl-C");
    assert!(updated < n, "{updated}");
    // With --json, a monitor reads why it stopped and what it did.
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["stopped"]
            .as_str()
            .unwrap()
            .contains("stopped by Ctrl-C"),
        "{summary}"
    );
    assert_eq!(summary["updated"], updated, "{summary}");
}

/// `eval outfits --sheets` into a folder it cannot write fails at once,
/// not after the evaluation whose figures it would lose.
#[test]
fn eval_outfits_checks_its_sheets_folder_first() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let missing = dir.path().join("missing.csv");
    let m = missing.to_str().unwrap();
    let out = vitrine(&[
        "eval",
        "outfits",
        "--products",
        m,
        "--outfits",
        m,
        "--db",
        dir.path().join("db").to_str().unwrap(),
        "--sheets",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot write contact sheets into"),
        "{stderr}"
    );
}

/// A page of a query ranks from its offset: the third result is rank 3,
/// in JSON as in the table.
#[test]
fn a_query_page_ranks_from_its_offset() {
    if !have_model("a_query_page_ranks_from_its_offset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = copy_samples(dir.path(), 6);
    let db = dir.path().join("db");
    let db_s = db.to_str().unwrap();
    let out = vitrine(&["import", src.to_str().unwrap(), "--db", db_s, "--fpi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = vitrine(&["query", "--db", db_s, "--json", "find +colour.blue limit 4"]);
    let page = vitrine(&[
        "query",
        "--db",
        db_s,
        "--json",
        "find +colour.blue offset 2 limit 2",
    ]);
    assert!(page.status.success(), "{}", text(&page.stderr));
    let rows = |o: &std::process::Output| -> Vec<serde_json::Value> {
        text(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (all, page) = (rows(&all), rows(&page));
    assert_eq!(page.len(), 2);
    for (p, a) in page.iter().zip(&all[2..]) {
        assert_eq!(p["id"], a["id"]);
        assert_eq!(p["rank"], a["rank"]);
    }
    assert_eq!(page[0]["rank"], 3);
}

/// Vector `i` of the small databases of the failed-repair tests.
fn small_vector(i: usize) -> Vec<f32> {
    (0..16)
        .map(|d| ((i * 31 + d * 7) % 97) as f32 + 1.0)
        .collect()
}

fn open_small(db_dir: &Path) -> vitrine::Result<vitrine::Db> {
    vitrine::Db::builder()
        .vector_space("embedding", 16, vitrine::Metric::Cosine)
        .open(db_dir)
}

/// Stores products `p00`… of `range` and closes.
fn fill_small(db_dir: &Path, range: std::ops::Range<usize>) {
    let db = open_small(db_dir).unwrap();
    for i in range {
        db.insert(
            &format!("p{i:02}"),
            vitrine::Attributes::new(),
            [("embedding", small_vector(i))],
        )
        .unwrap();
    }
    db.close().unwrap();
}

/// Runs `vitrine repair` with `args` while a file stands where the index
/// dumps' folder goes (so its checkpoint fails after the first arena is
/// written); expects it to fail, and takes the file away again.
fn repair_failing_its_checkpoint(db_dir: &Path, args: &[&str]) -> Output {
    let index = db_dir.join("index");
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::write(&index, b"not a folder").unwrap();
    let mut all = vec!["repair", "--db", db_dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = vitrine(&all);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    std::fs::remove_file(&index).unwrap();
    out
}

/// A `repair --rewrite --no-copy` that fails after its checkpoint began
/// puts sled's old files back and removes the checkpoint files it wrote:
/// they were ahead of the old files, and every open refused the healthy
/// database as one that had lost acknowledged writes.
#[test]
fn a_failed_rewrite_without_a_copy_leaves_the_database_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    fill_small(&db_dir, 0..50);
    let out = repair_failing_its_checkpoint(&db_dir, &["--rewrite", "--no-copy"]);
    assert!(
        text(&out.stdout).contains("put sled's old files back"),
        "{}",
        text(&out.stdout)
    );
    let db = open_small(&db_dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(db.len(), 50);
    assert_eq!(
        db.get("p07").unwrap().unwrap().vectors["embedding"],
        small_vector(7)
    );
}

/// `repair --rewrite` of a healthy database that holds no product (every
/// one deleted before a re-import) rewrites it, rather than refusing it as
/// one whose storage lost everything.
#[test]
fn repair_rewrite_of_an_empty_healthy_database_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = vitrine::Db::builder()
            .vector_space("embedding", 4, vitrine::Metric::Cosine)
            .open(&db_dir)
            .unwrap();
        db.insert(
            "gone",
            vitrine::Attributes::new(),
            [("embedding", vec![1.0; 4])],
        )
        .unwrap();
        db.delete("gone").unwrap();
    }
    let out = vitrine(&[
        "repair",
        "--db",
        db_dir.to_str().unwrap(),
        "--rewrite",
        "--no-copy",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("rewritten: 0 products kept"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(vitrine::Db::open(&db_dir).unwrap().len(), 0);
}

/// The same failure on a database an open refuses (its storage lost
/// products the checkpoint holds) leaves it refused: the failed checkpoint
/// replaced the old checkpoint files, and removing its own would leave no
/// evidence, so the next open would serve what is left as if nothing were
/// lost.
#[test]
fn a_failed_repair_without_a_copy_keeps_a_refused_database_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    fill_small(&db_dir, 0..60);
    common::copy_tree(&db_dir.join("sled"), &dir.path().join("old-sled"));
    fill_small(&db_dir, 60..100);
    std::fs::remove_dir_all(db_dir.join("sled")).unwrap();
    common::copy_tree(&dir.path().join("old-sled"), &db_dir.join("sled"));
    assert!(
        open_small(&db_dir).is_err(),
        "storage that lost 40 products opened"
    );
    repair_failing_its_checkpoint(&db_dir, &["--no-copy"]);
    match open_small(&db_dir) {
        Err(e) => assert!(e.to_string().contains("lost acknowledged writes"), "{e}"),
        Ok(db) => panic!("opened with {} products, the loss hidden", db.len()),
    }
}

/// A carriage return alone in a catalog CSV (mixed line ends) would join
/// two rows, the second one's fields landing in the first's columns: the
/// import is refused, naming the line, and makes no database.
#[test]
fn a_bare_carriage_return_in_a_catalog_csv_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("catalog.csv");
    std::fs::write(&csv, "id,path,brand\nm1,a.jpg,A\rm2,b.jpg,B\n").unwrap();
    let db = dir.path().join("db");
    let out = vitrine(&[
        "import",
        csv.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("carriage return"),
        "{err}"
    );
    assert!(!db.exists());
}

/// A database open in another process is exit 4, whatever the command: a
/// nightly job retries later, where exit 1 means something is broken.
#[test]
fn a_locked_database_is_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let held = vitrine::Db::open(&db_dir).unwrap();
    let d = db_dir.to_str().unwrap();
    for args in [
        vec!["info", "--db", d],
        vec!["product", "--db", d, "list"],
        vec!["outfit", "--db", d, "list"],
        vec!["query", "--db", d, "+colour.red"],
    ] {
        let out = vitrine(&args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("open elsewhere"), "{args:?}");
    }
    drop(held);
    assert_eq!(vitrine(&["info", "--db", d]).status.code(), Some(0));
}

/// A folder's `.jfif` and `.jpe` files are JPEGs and are imported; the
/// entries an import does not read are named in its notes (they were only
/// logged: a catalog lost its `.jfif` products with exit 0).
#[test]
fn a_folder_import_reads_jfif_and_names_what_it_does_not_read() {
    if !have_model("a_folder_import_reads_jfif_and_names_what_it_does_not_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    let files = sample_images(3);
    for (f, name) in files.iter().zip(["a.jpg", "b.jfif", "c.JPE"]) {
        std::fs::copy(f, images.join(name)).unwrap();
    }
    std::fs::write(images.join("notes.txt"), "x").unwrap();
    std::fs::write(images.join(".hidden"), "x").unwrap();
    // A folder named as an image is an item that fails, not an entry left.
    std::fs::create_dir(images.join("d.jpg")).unwrap();
    let db = dir.path().join("db");
    let out = vitrine(&[
        "import",
        images.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        (&summary["imported"], &summary["failed"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("2 entries of")
            && notes.contains("notes.txt, sub")
            && !notes.contains("d.jpg"),
        "{notes}"
    );
}

/// A first import killed before it wrote the schema leaves a `sled` folder
/// without one. Read commands refuse it and write nothing, so the import
/// run again makes the database; they wrote the default schema, which
/// every later import refused as a schema mismatch.
#[test]
fn reads_of_a_first_import_stopped_early_leave_it_importable() {
    if !have_model("reads_of_a_first_import_stopped_early_leave_it_importable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("sled")).unwrap();
    let d = db.to_str().unwrap();
    for cmd in [
        &["info", "--db", d][..],
        &["product", "--db", d, "list"],
        &["outfit", "--db", d, "list"],
        &["query", "--db", d, "info"],
        &["repair", "--db", d, "--no-copy"],
        &["backup", "--db", d, "--out", "/nonexistent/never"],
    ] {
        let out = vitrine(cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        assert!(
            text(&out.stderr).contains("a first import stopped"),
            "{cmd:?}: {}",
            text(&out.stderr)
        );
    }
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for f in sample_images(2) {
        std::fs::copy(&f, images.join(f.file_name().unwrap())).unwrap();
    }
    let out = vitrine(&["import", images.to_str().unwrap(), "--db", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(vitrine::Db::open(&db).unwrap().len(), 2);
}

/// A repair killed while it removed sled's old files (a copy of the
/// database was kept) left them half-removed, which the next repair listed
/// as "sled's old files from an earlier repair". They are removed under a
/// hidden name now, and the next repair clears what a kill left of that.
#[test]
fn a_repair_clears_old_files_a_killed_one_left_half_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    {
        let db = vitrine::Db::open(&db_dir).unwrap();
        let v = vec![0.5; vitrine::DEFAULT_DIM];
        db.insert(
            "sku-1",
            vitrine::Attributes::new(),
            [(vitrine::DEFAULT_SPACE, v)],
        )
        .unwrap();
    }
    let half = db_dir.join(".sled.before-salvage.removing-4242");
    std::fs::create_dir_all(half.join("blobs")).unwrap();
    std::fs::write(half.join("conf"), "x").unwrap();
    // Until then a backup leaves them out, as it leaves sled's old files.
    let copy = dir.path().join("copy");
    let out = vitrine(&[
        "backup",
        "--db",
        db_dir.to_str().unwrap(),
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!copy.join(".sled.before-salvage.removing-4242").exists());
    let out = vitrine(&["repair", "--db", db_dir.to_str().unwrap(), "--no-copy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!half.exists());
    assert!(
        !text(&out.stdout).contains("old files"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(vitrine::Db::open(&db_dir).unwrap().len(), 1);
}
