//! The REPL as a person uses it: tmux types into a real terminal running
//! `vitrine repl` and the test reads the screen back.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vitrine::{Attributes, Db, ImportItem, ImportOptions, ImportSource, Model, PrepConfig};

struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` in a detached `width × height` session.
    fn start(&self, cmd: &str, width: u32, height: u32) {
        let (w, h) = (width.to_string(), height.to_string());
        self.run(&[
            "new-session",
            "-d",
            "-s",
            &self.session,
            "-x",
            &w,
            "-y",
            &h,
            cmd,
        ]);
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Pastes `text` as a terminal does (bracketed, when the program asks).
    fn paste(&self, text: &str) {
        self.run(&["set-buffer", "-b", "paste", "--", text]);
        self.run(&[
            "paste-buffer",
            "-p",
            "-r",
            "-b",
            "paste",
            "-t",
            &self.session,
        ]);
    }

    fn screen(&self) -> String {
        self.run(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-200",
            "-t",
            &self.session,
        ])
    }

    /// Waits until the last line on the screen is an empty prompt: the
    /// previous command is done and the line editor reads again.
    fn wait_for_prompt(&self) {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::trim_end)
                == Some("vitrine>")
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("no prompt came back:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the command run after the REPL (`touch done`) made `done`.
    fn wait_until_quit(&self, done: &std::path::Path) {
        let start = Instant::now();
        while !done.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the REPL did not quit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the screen shows `what` (and returns the screen).
    fn wait_for(&self, what: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("the screen never showed {what:?}:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// A database in `dir/db` holding one product of plain vectors.
fn one_product_db(dir: &std::path::Path) -> PathBuf {
    let db_dir = dir.join("db");
    let db = Db::open(&db_dir).unwrap();
    let mut v = vec![0.0f32; vitrine::DEFAULT_DIM];
    v[0] = 1.0;
    db.insert("only-one", Attributes::new(), [(vitrine::DEFAULT_SPACE, v)])
        .unwrap();
    db_dir
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn repl_completes_queries_shows_and_reports_errors() {
    if !have_tmux() {
        eprintln!("SKIP repl_completes_queries_shows_and_reports_errors: tmux is not installed");
        return;
    }
    let model = Model::bundled().expect("the committed bundled model loads");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let db_dir = tmp.path().join("db");
    {
        let db = Db::builder().open_with_model(&db_dir, &model).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("examples/catalog/images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let items = files
            .iter()
            .take(24)
            .map(|p| ImportItem {
                id: p.file_stem().unwrap().to_string_lossy().into_owned(),
                path: p.clone(),
                attributes: Attributes::default(),
            })
            .collect();
        let r = db
            .import(
                ImportSource::Items(items),
                ImportOptions::new()
                    .model(model.clone())
                    .prep(PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT)),
            )
            .unwrap();
        assert!(r.failures.is_empty());
    }
    let sheet = tmp.path().join("sheet.png");
    let tmux = Tmux {
        socket: format!("vitrine-test-{}", std::process::id()),
        session: "repl".into(),
    };
    let cmd = format!(
        "env HOME={} {} repl --db {}",
        tmp.path().display(),
        env!("CARGO_BIN_EXE_vitrine"),
        db_dir.display()
    );
    tmux.start(&cmd, 220, 60);
    tmux.wait_for("vitrine> ");

    // Completion of a command, then of a concept name.
    tmux.keys(&["conc", "Tab"]);
    tmux.wait_for("vitrine> concepts");
    tmux.keys(&[" colour", "Enter"]);
    tmux.wait_for("colour.red");
    tmux.keys(&["find +colour.re", "Tab"]);
    tmux.wait_for("vitrine> find +colour.red");
    tmux.keys(&[" limit 3", "Enter"]);
    // A results row: its term's contribution (`+colour.red +0.93`).
    let s = tmux.wait_for("+colour.red +");
    assert!(s.contains("why"), "{s}");

    // A paste of two lines is two commands, not one with the second's
    // words as arguments.
    // (Once the editor reads again: it asks for bracketed pastes then.)
    tmux.wait_for_prompt();
    tmux.paste("concepts pattern\nconcepts season");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("season.");
    assert!(s.contains("pattern.striped"), "{s}");

    // show writes a contact sheet of those results.
    tmux.keys(&[&format!("show {}", sheet.display()), "Enter"]);
    tmux.wait_for("wrote ");
    assert!(image::open(&sheet).is_ok(), "{}", sheet.display());

    // A malformed query: a caret and a suggestion, and the session goes on.
    tmux.keys(&["find +colour.rd limit 3", "Enter"]);
    tmux.wait_for("did you mean colour.red?");
    tmux.keys(&["help", "Enter"]);
    tmux.wait_for("feedback <user> <id> like|skip|buy");
    // History is saved where HOME points as each line is typed (before
    // quit: a Ctrl-C during a slow command ends the process). The file can
    // exist before its lines are written: wait for the content.
    let start = Instant::now();
    let history = tmp.path().join(".vitrine_history");
    let mut h = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        h = std::fs::read_to_string(&history).unwrap_or_default();
        if h.contains("find +colour.red limit 3") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(h.contains("find +colour.red limit 3"), "{h}");
    tmux.keys(&["quit", "Enter"]);
}

/// Under TERM=dumb the line editor reads stdin by itself: the REPL must not
/// hold stdin's lock meanwhile (it did, and hung after the first prompt).
#[test]
fn repl_answers_under_a_dumb_terminal() {
    if !have_tmux() {
        eprintln!("SKIP repl_answers_under_a_dumb_terminal: tmux is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db_dir = one_product_db(tmp.path());
    let tmux = Tmux {
        socket: format!("vitrine-dumb-{}", std::process::id()),
        session: "repl".into(),
    };
    let done = tmp.path().join("done");
    let cmd = format!(
        "env TERM=dumb HOME={} {} repl --db {}; touch {}",
        tmp.path().display(),
        env!("CARGO_BIN_EXE_vitrine"),
        db_dir.display(),
        done.display()
    );
    tmux.start(&cmd, 200, 40);
    tmux.wait_for("vitrine> ");
    tmux.keys(&["info", "Enter"]);
    tmux.wait_for("products   1 (");
    tmux.keys(&["quit", "Enter"]);
    tmux.wait_until_quit(&done);
}

/// With stdout redirected to a file, the prompt and the typed line are
/// shown on the terminal, and the file holds only what commands print.
#[test]
fn repl_keeps_redirected_output_clean() {
    if !have_tmux() {
        eprintln!("SKIP repl_keeps_redirected_output_clean: tmux is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db_dir = one_product_db(tmp.path());
    let tmux = Tmux {
        socket: format!("vitrine-redirect-{}", std::process::id()),
        session: "repl".into(),
    };
    let (out, done) = (tmp.path().join("out.jsonl"), tmp.path().join("done"));
    let cmd = format!(
        "env HOME={} {} repl --db {} --json > {}; touch {}",
        tmp.path().display(),
        env!("CARGO_BIN_EXE_vitrine"),
        db_dir.display(),
        out.display(),
        done.display()
    );
    tmux.start(&cmd, 200, 40);
    tmux.wait_for("vitrine> ");
    tmux.keys(&["info", "Enter"]);
    tmux.wait_for("vitrine> info");
    tmux.keys(&["quit", "Enter"]);
    tmux.wait_until_quit(&done);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line:?}\n{text:?}"
        );
    }
}
