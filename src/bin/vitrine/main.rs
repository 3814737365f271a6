//! The `vitrine` command line: import, query, the REPL, outfits, evaluations and the benchmark harness.

/// `println!` for lines that hold catalog values (see [`terminal_safe`]).
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", $crate::terminal_safe(&format!($($t)*)))
    };
}

/// `eprintln!` for lines that hold catalog values (see [`terminal_safe`]).
macro_rules! esay {
    ($($t:tt)*) => {
        eprintln!("{}", $crate::terminal_safe(&format!($($t)*)))
    };
}

mod annotate;
mod bench;
mod demo;
mod eval;
mod eval_concepts;
mod import;
mod info;
mod npy;
mod outfit;
mod outfit_eval;
mod precompute;
mod product;
mod repl;
mod scratch;
mod sheet;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "vitrine",
    version,
    about = "An embedded search database for fashion catalogs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Batch jobs over a whole database.
    Precompute {
        #[command(subcommand)]
        what: precompute::PrecomputeCommand,
    },
    /// Category (top 5) and tags of image files, with the bundled model.
    ///
    /// Exit status: 0 when every file was annotated, 3 when some failed
    /// (each named on stderr), 1 on an error or when all failed.
    Annotate(annotate::AnnotateArgs),
    /// Evaluations of the bundled model through the Rust pipeline.
    Eval {
        #[command(subcommand)]
        what: eval::EvalCommand,
    },
    /// Imports a folder of images, or a CSV `id,path[,attrs…]`, into a database.
    ///
    /// Bad images and bad CSV rows are written to the failure report and the
    /// rest is imported. Exit status: 0 when every item was stored (or was
    /// already there), 3 when some failed, 1 on an error or when all failed,
    /// 4 when the database is open in another process (2 is a usage error).
    /// Ctrl-C or SIGTERM stops it between two products.
    Import(import::ImportArgs),
    /// What a database holds (products, spaces, model, outfits) and whether it opened cleanly.
    Info(info::InfoArgs),
    /// Opens a damaged database, keeping what is left (the folder is copied first; stop every process using it).
    ///
    /// Exit status: 0 when repaired (or nothing needed it), 3 when records
    /// were left as they are or fewer products were kept than the last
    /// checkpoint held, 1 on an error (the folder is put back as it was).
    Repair(info::RepairArgs),
    /// Copies a database to a new folder and checks the copy opens (a process serving the database calls `Db::backup` instead).
    Backup(info::BackupArgs),
    /// Outfits: import, list, show, delete, substitute, expand, cover, complete, rules, settings.
    Outfit(outfit::OutfitArgs),
    /// One product: get (attributes, model output, vectors), set attributes, delete; list (every stored id).
    Product(product::ProductArgs),
    /// Builds a demo database from examples/catalog and runs example queries.
    Demo(demo::DemoArgs),
    /// Interactive shell: concept queries, profiles, feedback, user tags, contact sheets.
    Repl(repl::ReplArgs),
    /// Runs one concept query (or any REPL command) and exits.
    Query(repl::QueryArgs),
}

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`vitrine query … | head`): Rust ignores SIGPIPE by default, and
    // every later print would then panic.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The library never installs a logger; the binary logs warnings to stderr
    // (RUST_LOG overrides).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // sled panics while recovering some damaged logs, and the storage layer
    // turns that into an error that says so: one warning line instead of a
    // panic message (any other sled panic still shows, as that warning).
    // The library also catches the panics of the image decoders, tract and
    // hnsw_rs where it calls them on the caller's data, and makes each that
    // item's error (an import reports it): one warning line for those too,
    // not a panic message per bad file. (A panic there that nothing catches
    // still shows, as that line, before the process ends.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let file = info.location().map_or("", |l| l.file());
        let dependency = [
            "/image-",
            "/zune-",
            "/png-",
            "/gif-",
            "/tiff-",
            "/jpeg-decoder-",
            "/weezl-",
            "/fdeflate-",
            "/miniz_oxide-",
            "/flate2-",
            "/byteorder-lite-",
            "/half-",
            "/tract-",
            "/ndarray-",
            "/hnsw_rs-",
        ];
        // (With warnings filtered out, RUST_LOG=error, the full message.)
        let quiet = tracing::enabled!(tracing::Level::WARN);
        if quiet && file.contains("/sled-0.34") {
            tracing::warn!("sled panicked: {info}");
        } else if quiet && dependency.iter().any(|c| file.contains(c)) {
            tracing::warn!("a dependency panicked: {info}");
        } else {
            default_hook(info);
        }
    }));
    let cli = Cli::parse();
    // Their output is the library's structures: a script reading it gets
    // the error there too, unless the command printed its own result
    // first. (`import`, `info` and `query` print their own.)
    let json_errors = match &cli.command {
        Command::Outfit(a) => a.json,
        Command::Product(a) => a.json,
        _ => false,
    };
    let result = match cli.command {
        Command::Bench { what } => bench::run(what),
        Command::Precompute { what } => precompute::run(what),
        Command::Annotate(args) => annotate::run(args),
        Command::Eval { what } => eval::run(what),
        Command::Import(args) => import::run(args),
        Command::Info(args) => info::run(args),
        Command::Repair(args) => info::repair(args),
        Command::Backup(args) => info::backup(args),
        Command::Demo(args) => demo::run(args),
        Command::Repl(args) => repl::run(args),
        Command::Query(args) => repl::query(args),
        Command::Outfit(args) => {
            refuse_repeated_db("outfit");
            outfit::run(&required_db(args.db.clone(), "outfit"), args)
        }
        Command::Product(args) => {
            refuse_repeated_db("product");
            product::run(&required_db(args.db.clone(), "product"), args)
        }
    };
    if let Err(e) = result {
        if let Some(partial) = e.downcast_ref::<Partial>() {
            eprintln!("warning: {}", partial.0);
            std::process::exit(PARTIAL_EXIT);
        }
        let message = error_message(&e);
        if json_errors && !JSON_RESULT.load(std::sync::atomic::Ordering::Relaxed) {
            println!(
                "{}",
                json_text(&serde_json::json!({ "error": message, "locked": locked(&e) }))
            );
        }
        eprintln!("error: {}", terminal_safe(&message));
        std::process::exit(if locked(&e) { LOCKED_EXIT } else { 1 });
    }
}

/// Exit status of a command refused because the database is open in
/// another process: a job can retry later, where exit 1 means broken.
const LOCKED_EXIT: i32 = 4;

/// Whether `e` says the database is open elsewhere, whatever API error
/// carries it.
fn locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let db = c
            .downcast_ref::<vitrine::Error>()
            .or_else(|| match c.downcast_ref::<vitrine::IngestError>() {
                Some(vitrine::IngestError::Db(e)) => Some(e),
                _ => None,
            })
            .or_else(|| match c.downcast_ref::<vitrine::ConceptError>() {
                Some(vitrine::ConceptError::Db(e)) => Some(e),
                _ => None,
            })
            .or_else(|| match c.downcast_ref::<vitrine::OutfitError>() {
                Some(vitrine::OutfitError::Db(e)) => Some(e),
                _ => None,
            });
        db.is_some_and(vitrine::Error::is_locked)
            || c.downcast_ref::<vitrine_storage::Error>()
                .is_some_and(|e| matches!(e, vitrine_storage::Error::Locked { .. }))
    })
}

/// `--db` of `outfit` and `product` is global, and clap parses a global
/// argument per level: given before and after the subcommand, the last
/// one won, silently (`product --db prod delete x --db staging` deleted
/// from staging). Refused here as clap refuses a flag given twice.
fn refuse_repeated_db(subcommand: &str) {
    let given = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .filter(|a| a == "--db" || a.as_encoded_bytes().starts_with(b"--db="))
        .count();
    if given > 1 {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand_mut(subcommand)
            .expect("a subcommand of the CLI")
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--db <DB>' cannot be used multiple times",
            )
            .exit()
    }
}

/// Ends the process with a usage error of `subcommand` (status 2), as clap
/// reports one: for a combination clap cannot see, such as a flag that
/// takes a file given a folder.
pub(crate) fn usage_error(subcommand: &str, message: String) -> ! {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand_mut(subcommand)
        .expect("a subcommand of the CLI")
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// `--db` of `outfit` and `product` is global, so that it may also follow
/// the subcommand, and clap cannot require a global argument: a missing one
/// is reported here, as clap reports a usage error (status 2).
fn required_db(db: Option<std::path::PathBuf>, subcommand: &str) -> std::path::PathBuf {
    db.unwrap_or_else(|| {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand_mut(subcommand)
            .expect("a subcommand of the CLI")
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("`vitrine {subcommand}` needs --db <DB>, the database folder"),
            )
            .exit()
    })
}

/// Exit status of a batch that did its work except for some items (an
/// error is 1; 2 is a usage error, as clap reports it).
const PARTIAL_EXIT: i32 = 3;

/// A batch that did its work except for some items, which it reported:
/// exit status [`PARTIAL_EXIT`].
#[derive(Debug)]
pub(crate) struct Partial(pub String);

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Partial {}

/// Opens an existing database once, and says whether `model` fits it: its
/// spaces are there with the model's sizes, and [`vitrine::Db::check_model`]
/// takes it (a database without a fingerprint adopts the model's, as with
/// `open_with_model`). A database of another model, of other sizes or of
/// none (the library's own vectors) opens all the same: the REPL and the
/// outfit commands then work on the stored vectors alone. Opened once, so
/// that `info` reports what this open did (indexes rebuilt), not a second
/// open of the files the first one saved.
pub(crate) fn open_for_model(
    path: &std::path::Path,
    model: Option<&vitrine::Model>,
) -> anyhow::Result<(vitrine::Db, bool)> {
    use anyhow::Context;
    let db = open_existing(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    let Some(model) = model else {
        return Ok((db, false));
    };
    let spaces = db.spaces();
    if !model.vector_spaces().iter().all(|s| spaces.contains(s)) {
        return Ok((db, false));
    }
    match db.check_model(model) {
        Ok(()) => Ok((db, true)),
        Err(
            vitrine::IngestError::ModelMismatch { .. }
            | vitrine::IngestError::ModelShape { .. }
            | vitrine::IngestError::Db(vitrine::Error::SchemaMismatch(_)),
        ) => Ok((db, false)),
        Err(e) => {
            Err(anyhow::Error::from(e)
                .context(format!("cannot open the database {}", path.display())))
        }
    }
}

/// An id as part of a file name: letters, digits, `.`, `_` and `-` kept,
/// anything else (a `/`, a control character) as `_`, at most 64 of them.
pub(crate) fn file_safe(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Opens the database in `path`, never making one: a folder a first
/// import left before it wrote the schema stays as it is (a read command
/// there wrote the default schema, which every later import refused).
pub(crate) fn open_existing(path: &std::path::Path) -> vitrine::Result<vitrine::Db> {
    vitrine::Db::builder().create(false).open(path)
}

/// Commands that read a database refuse a folder that holds none, instead
/// of creating an empty one where a path was mistyped.
pub(crate) fn existing_db(path: &std::path::Path) -> anyhow::Result<()> {
    let sled = path.join("sled");
    match std::fs::metadata(&sled) {
        Ok(m) if m.is_dir() => Ok(()),
        // A folder we may not read is not "no database".
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("cannot read {}: {e}", sled.display())
        }
        _ if interrupted_repair(path).is_some() && info::repair_running(path) => anyhow::bail!(
            "a `vitrine repair` is running on {}: wait for it to end",
            path.display()
        ),
        _ if interrupted_repair(path).is_some() => anyhow::bail!(
            "{}: an interrupted `vitrine repair` left sled's files in {}; run \
             `vitrine repair --db {}` again (it moves them back first)",
            path.display(),
            interrupted_repair(path).unwrap_or_default().display(),
            path.display()
        ),
        _ if path.join("index").is_dir() || path.join("arena").is_dir() => anyhow::bail!(
            "{} holds a database's index files but not its storage ({} is missing): \
             restore it from a backup, or move the folder away and import again",
            path.display(),
            sled.display()
        ),
        _ if !path.exists() => {
            // A repair stopped while putting its copy back leaves the folder
            // under another name.
            let copies = repair_leftovers(path);
            if copies.is_empty() {
                anyhow::bail!(
                    "no database at {} (build one with `vitrine import`)",
                    path.display()
                )
            }
            anyhow::bail!(
                "no database at {}; a repair left {} next to it: move the right one back to {}",
                path.display(),
                copies.join(", "),
                path.display()
            )
        }
        _ => anyhow::bail!(
            "no database at {} (build one with `vitrine import`)",
            path.display()
        ),
    }
}

pub(crate) use vitrine_storage::SWAP_MARKER;

pub(crate) use vitrine_storage::interrupted_swap as interrupted_repair;

/// Refuses to make a new database where a repair, killed while putting its
/// copy back, left none: an import would hide the copies next to it.
pub(crate) fn no_repair_leftovers(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let copies = repair_leftovers(path);
    if copies.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "no database at {}; a repair left {} next to it: move the right one back to {} \
         (or remove them to start a new database there)",
        path.display(),
        copies.join(", "),
        path.display()
    )
}

/// `<db>.before-repair*` and `<db>.repair-failed*` folders next to `db`
/// (not copies cut short, `.incomplete`).
fn repair_leftovers(db: &std::path::Path) -> Vec<String> {
    let (Some(parent), Some(name)) = (db.parent(), db.file_name()) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let name = name.to_string_lossy();
    let mut found: Vec<String> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(name.as_ref()).is_some_and(|rest| {
                (rest.starts_with(".before-repair") || rest.starts_with(".repair-failed"))
                    && !rest.contains(".incomplete")
            })
        })
        .map(|n| parent.join(n).display().to_string())
        .collect();
    found.sort();
    found
}

/// Text bound for the terminal that may hold catalog values (ids,
/// categories, CSV cells): control characters other than tabs and line
/// breaks are shown as `?`, so a value holding an escape sequence cannot
/// drive the terminal.
pub(crate) fn terminal_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' && c != '\n' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `v` as one line of JSON, safe for a terminal: serde_json writes DEL and
/// the C1 controls (U+0080 to U+009F, which terminals read as escape
/// sequences) as they are; here they are `\u00XX` escapes, still the same
/// JSON string.
pub(crate) fn json_text(v: &impl serde::Serialize) -> String {
    json_escape_controls(serde_json::to_string(v))
}

/// Set once a command of `--json` printed its result: an error after it
/// (`product delete` of unknown ids) is not printed as a second object.
static JSON_RESULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`json_text`] of a command's result (see [`JSON_RESULT`]).
pub(crate) fn json_result(v: &impl serde::Serialize) -> String {
    JSON_RESULT.store(true, std::sync::atomic::Ordering::Relaxed);
    json_text(v)
}

/// [`json_text`], indented.
pub(crate) fn json_pretty(v: &impl serde::Serialize) -> String {
    json_escape_controls(serde_json::to_string_pretty(v))
}

fn json_escape_controls(json: serde_json::Result<String>) -> String {
    match json {
        // Outside strings JSON is ASCII: every such character is in one.
        Ok(text) => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                if ('\u{7f}'..='\u{9f}').contains(&c) {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push(c);
                }
            }
            out
        }
        Err(e) => format!("{{\"error\": \"cannot write JSON: {e}\"}}"),
    }
}

/// One value of a tab-separated line: every control character (tabs and
/// line breaks too) as `?`, so that it stays one field.
pub(crate) fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `s` as one word of a POSIX shell command a note prints to be pasted:
/// as it is when plain, else in single quotes (control characters as `?`).
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", field(s).replace('\'', "'\\''"))
    }
}

/// An error and its causes on one line, each cause said once: our typed
/// errors already put their source in their own message.
pub(crate) fn error_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    /// A catalog value holding an 8-bit CSI (U+009B) or DEL reaches the
    /// terminal escaped in JSON output, and reads back as the same value.
    #[test]
    fn json_text_escapes_what_terminals_act_on() {
        let value = serde_json::json!({"category": "\u{9b}2J shirts \u{7f} é 👕 \u{a0}\u{1b}"});
        let text = super::json_text(&value);
        assert!(!text.contains(|c: char| c.is_control()), "{text:?}");
        assert!(
            text.contains("\\u009b2J") && text.contains("\\u007f"),
            "{text}"
        );
        assert!(text.contains("é 👕 \u{a0}"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
