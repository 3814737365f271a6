//! `vitrine import`: bulk import of images into an image database, with a
//! progress bar and a failure report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vitrine::{Attributes, Db, ImportItem, ImportOptions, ImportReport, ImportSource, Model};

/// Arguments of `vitrine import`.
#[derive(Args)]
pub struct ImportArgs {
    /// A folder of images (id = file stem), or a CSV file with a header row
    /// whose first two columns are the id and the image path (relative to the
    /// CSV's folder); further columns are attributes (`category`, `brand`,
    /// `price`, `in_stock` go to the built-in fields, others are free-form;
    /// empty cells are left out).
    pub source: PathBuf,
    /// The database folder (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// Where to write the failures, one line per failure:
    /// `id<TAB>path<TAB>reason` (default `<db>/import-failures.tsv`). The
    /// file is rewritten on every run; empty means no failure.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Switch a database built with another model to the bundled one: every
    /// product of SOURCE still from the old model is run through the new
    /// one, keeping its attributes (resumable).
    #[arg(long)]
    pub reembed: bool,
    /// Products already stored take the CSV's attributes (price, stock,
    /// brand, category, other columns), keeping their vectors: the daily
    /// price-and-stock refresh. Without it they are skipped.
    #[arg(long)]
    pub update: bool,
    #[command(flatten)]
    pub prep: PrepArgs,
}

/// Image-preparation flags shared by the image commands.
#[derive(Args, Clone, Copy, Debug)]
pub struct PrepArgs {
    /// The images are from the Fashion Product Images set, stored squashed:
    /// same as `--pixel-aspect 0.75`.
    #[arg(long, conflicts_with = "pixel_aspect")]
    pub fpi: bool,
    /// Width / height of one stored pixel (1.0 for ordinary images).
    #[arg(long, value_name = "RATIO")]
    pub pixel_aspect: Option<f64>,
}

impl PrepArgs {
    /// The preparation these flags ask for (catalog settings otherwise).
    pub fn config(&self) -> anyhow::Result<vitrine::PrepConfig> {
        let aspect = if self.fpi {
            vitrine::PrepConfig::FPI_PIXEL_ASPECT
        } else {
            self.pixel_aspect.unwrap_or(1.0)
        };
        if !(0.01..=100.0).contains(&aspect) {
            bail!("--pixel-aspect must be within 0.01..=100, got {aspect}");
        }
        Ok(vitrine::PrepConfig::catalog().pixel_aspect(aspect))
    }
}

/// Reads a CSV file: the header and the rows (blank lines skipped).
pub fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty());
    let header = match lines.next() {
        Some(h) => vitrine::split_csv_line(h)
            .into_iter()
            .map(|s| s.trim().to_string())
            .collect(),
        None => bail!("{} is empty", path.display()),
    };
    Ok((header, lines.map(vitrine::split_csv_line).collect()))
}

/// The import items of a CSV file `id,path[,attrs…]` (see [`ImportArgs`]).
pub fn csv_items(path: &Path) -> anyhow::Result<Vec<ImportItem>> {
    let (header, rows) = read_csv(path)?;
    if header.len() < 2 {
        bail!(
            "{}: the header needs at least two columns (id, path)",
            path.display()
        );
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::with_capacity(rows.len());
    for (n, row) in rows.into_iter().enumerate() {
        let line = n + 2;
        if row.len() < 2 || row[0].trim().is_empty() || row[1].trim().is_empty() {
            bail!("{}:{line}: id and path are required", path.display());
        }
        let mut attrs = Attributes::new();
        for (key, value) in header.iter().zip(&row).skip(2) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "category" => attrs.category = Some(value.to_string()),
                "brand" => attrs.brand = Some(value.to_string()),
                "price" => {
                    attrs.price = Some(value.parse().with_context(|| {
                        format!("{}:{line}: bad price '{value}'", path.display())
                    })?)
                }
                "in_stock" => {
                    attrs.in_stock = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => bail!("{}:{line}: bad in_stock '{value}'", path.display()),
                    }
                }
                _ => {
                    attrs.extra.insert(key.clone(), value.to_string());
                }
            }
        }
        items.push(ImportItem {
            id: row[0].trim().to_string(),
            path: base.join(row[1].trim()),
            attributes: attrs,
        });
    }
    Ok(items)
}

/// The import source for a folder or a CSV file.
pub fn source_of(path: &Path) -> anyhow::Result<ImportSource> {
    if path.is_dir() {
        Ok(ImportSource::Dir(path.to_path_buf()))
    } else if path.is_file() {
        Ok(ImportSource::Items(csv_items(path)?))
    } else {
        bail!("{} is neither a folder nor a file", path.display())
    }
}

/// Imports `source` into `db` with a progress bar on stderr (hidden when
/// stderr is not a terminal).
pub fn import_with_progress(
    db: &Db,
    model: &std::sync::Arc<Model>,
    prep: vitrine::PrepConfig,
    source: ImportSource,
) -> anyhow::Result<ImportReport> {
    import_with_options(db, model, prep, source, false, false)
}

fn import_with_options(
    db: &Db,
    model: &std::sync::Arc<Model>,
    prep: vitrine::PrepConfig,
    source: ImportSource,
    reembed: bool,
    update: bool,
) -> anyhow::Result<ImportReport> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = |p: &vitrine::ImportProgress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done() as u64);
        bar.set_message(format!("skipped {} failed {}", p.skipped, p.failed));
    };
    let options = ImportOptions::new()
        .model(model.clone())
        .prep(prep)
        .reembed(reembed)
        .update_attributes(update)
        .progress(progress);
    let report = db.import(source, options);
    bar.finish_and_clear();
    Ok(report?)
}

/// One line of the failure report: `id<TAB>path<TAB>reason`.
pub fn failure_line(f: &vitrine::ImportFailure) -> String {
    let clean = |s: String| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}",
        clean(f.id.clone()),
        clean(f.path.display().to_string()),
        clean(f.error.to_string())
    )
}

/// Prints the summary of an import.
pub fn print_summary(report: &ImportReport) {
    let p = &report.progress;
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        p.stored as f64 / secs
    } else {
        0.0
    };
    println!(
        "{} items: {} imported, {}{} skipped (already present), {} failed, in {secs:.1} s ({rate:.1} images/s)",
        p.total,
        p.stored,
        if p.updated > 0 { format!("{} updated, ", p.updated) } else { String::new() },
        p.skipped,
        p.failed
    );
}

/// Runs `vitrine import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let prep = args.prep.config()?;
    let source = source_of(&args.source)?;
    let model = Model::bundled().context("cannot load the bundled model")?;
    let db = match Db::builder().open_with_model(&args.db, &model) {
        Ok(db) => db,
        // Built with another model: re-embedding opens it as it is, and the
        // import switches it.
        Err(vitrine::IngestError::ModelMismatch { .. }) if args.reembed => Db::open(&args.db)
            .with_context(|| format!("cannot open the database {}", args.db.display()))?,
        Err(e @ vitrine::IngestError::ModelMismatch { .. }) => {
            return Err(anyhow::Error::from(e).context(format!(
                "cannot open the database {}; `vitrine import --reembed` switches it to the bundled model",
                args.db.display()
            )))
        }
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context(format!("cannot open the database {}", args.db.display())))
        }
    };
    let report = import_with_options(&db, &model, prep, source, args.reembed, args.update)?;
    db.flush()?;
    print_summary(&report);
    let report_path = args
        .report
        .unwrap_or_else(|| args.db.join("import-failures.tsv"));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&report_path)
            .with_context(|| format!("cannot write {}", report_path.display()))?,
    );
    for f in &report.failures {
        writeln!(out, "{}", failure_line(f))?;
    }
    out.flush()?;
    if !report.failures.is_empty() {
        println!("failures written to {}", report_path.display());
    }
    // Some failures in a large catalog are normal (see the report); all of
    // them means the input itself is wrong.
    let p = &report.progress;
    if p.failed > 0 && p.stored + p.updated + p.skipped == 0 {
        bail!(
            "every one of the {} items failed (see {})",
            p.failed,
            report_path.display()
        );
    }
    Ok(())
}
