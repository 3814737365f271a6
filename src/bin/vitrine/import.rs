//! `vitrine import`: bulk import of images into an image database, with a
//! progress bar and a failure report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vitrine::{
    Attributes, Db, ImportItem, ImportOptions, ImportReport, ImportSource, Model, ATTR_MODEL,
    ATTR_SOURCE,
};

/// Arguments of `vitrine import`.
#[derive(Args)]
pub struct ImportArgs {
    /// A folder of images (id = file stem, without white space at its ends, but
    /// for a product an older build stored with them), or a CSV file with a header row
    /// whose first two columns are the id and the image path (relative to the
    /// CSV's folder); further columns are attributes (`category`, `brand`,
    /// `price`, `in_stock`, in any case, go to the built-in fields (another
    /// spelling, `In Stock`, is noted); others
    /// are free-form, named as written; empty cells are left out). UTF-8,
    /// comma-separated; a quoted cell may hold commas and line breaks.
    pub source: PathBuf,
    /// The database folder (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// Where to write the failures, one line per failure:
    /// `id<TAB>path<TAB>reason` (default `<db>/import-failures.tsv`). The
    /// file is rewritten on every run that opens the database, and by a run
    /// stopped before it (SOURCE refused as a whole, or the database not
    /// opened), with one line saying why (the default file only if it
    /// exists); empty means no failure.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Switch a database built with another model to the bundled one: every
    /// product of SOURCE still from the old model is run through the new
    /// one, keeping its attributes (resumable).
    #[arg(long)]
    pub reembed: bool,
    /// Products already stored take the CSV's non-empty cells (price,
    /// stock, brand, category, other columns) in place; what the CSV does
    /// not give stays, and so do their vectors: the daily price-and-stock
    /// refresh. New ids are imported. Without it present products are
    /// skipped (an interrupted import resumes), but for those still of a
    /// previous model, which are embedded again.
    #[arg(long, conflicts_with_all = ["reembed", "refresh"])]
    pub update: bool,
    /// Products of SOURCE already stored are run through the model again
    /// from their image (the photo changed), keeping their stored
    /// attributes (a CSV's cells are not applied to them: run `--update`
    /// for that).
    #[arg(long)]
    pub refresh: bool,
    /// Only products already stored: an id that is not is reported as a
    /// failure, never imported (a refresh of import-moved.csv must not bring
    /// back a product deleted since).
    #[arg(long)]
    pub present_only: bool,
    /// Print the summary as one JSON object on stdout (`items`, `imported`,
    /// `reembedded`, `skipped`, `failed`, `bad_rows`, `updated`,
    /// `unchanged`, `not_listed`, `report`, `seconds`, `notes`, and
    /// `stopped` or `error` when the run stopped or failed after storing
    /// products), also when it stops; the exit status is the same.
    #[arg(long)]
    pub json: bool,
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
    /// Width / height of one stored pixel, 0.01 to 100 (1.0 for ordinary images). For
    /// `import`, the default is the database's own, which its first import
    /// stores.
    #[arg(long, value_name = "RATIO", value_parser = pixel_aspect_arg)]
    pub pixel_aspect: Option<f64>,
}

/// Parses `--pixel-aspect`: the range [`vitrine::PrepConfig::pixel_aspect`] takes.
pub fn pixel_aspect_arg(s: &str) -> Result<f64, String> {
    let aspect: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.01..=100.0).contains(&aspect) {
        Ok(aspect)
    } else {
        Err(format!("must be within 0.01..=100, got {s}"))
    }
}

/// Parses a batch size: the range [`vitrine::ImportOptions::batch_size`]
/// takes (1..=64), refused outside it rather than quietly moved into it.
pub fn batch_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(b) if (1..=64).contains(&b) => Ok(b),
        _ => Err(format!("must be a whole number within 1..=64, got {s}")),
    }
}

impl PrepArgs {
    /// The preparation these flags ask for, `None` when none was given.
    pub fn given(&self) -> anyhow::Result<Option<vitrine::PrepConfig>> {
        if self.fpi || self.pixel_aspect.is_some() {
            self.config().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The preparation these flags ask for (catalog settings otherwise).
    pub fn config(&self) -> anyhow::Result<vitrine::PrepConfig> {
        let aspect = if self.fpi {
            vitrine::PrepConfig::FPI_PIXEL_ASPECT
        } else {
            self.pixel_aspect.unwrap_or(1.0)
        };
        Ok(vitrine::PrepConfig::catalog().pixel_aspect(aspect))
    }
}

/// Reads a CSV file: the header and the rows (blank lines skipped).
pub fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let (header, rows) = read_csv_lines(path)?;
    Ok((header, rows.into_iter().map(|(_, r)| r).collect()))
}

/// A CSV row with its line number in the file.
type NumberedRow = (usize, Vec<String>);

/// [`read_csv`], each row with its line number in the file.
pub fn read_csv_lines(path: &Path) -> anyhow::Result<(Vec<String>, Vec<NumberedRow>)> {
    let text = read_csv_text(path)?;
    let (header, rows) = csv_header(path, &text)?;
    let rows = rows
        .map(|r| r.map(|r| (r.line, r.fields)))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((header, rows))
}

/// The text of a CSV file, or why it is not UTF-8 text.
fn read_csv_text(path: &Path) -> anyhow::Result<String> {
    let bytes =
        vitrine::read_csv_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!(
                "{}:{line}: not UTF-8 text (save the CSV as UTF-8)",
                path.display()
            )
        }
    }
}

/// The header of a CSV text (trimmed) and its other records, still to read.
fn csv_header<'a>(
    path: &Path,
    text: &'a str,
) -> anyhow::Result<(Vec<String>, vitrine::CsvRecords<'a>)> {
    let mut records = vitrine::csv_records(text);
    match records.next() {
        Some(Ok(h)) => Ok((
            h.fields.iter().map(|s| s.trim().to_string()).collect(),
            records,
        )),
        Some(Err(e)) => bail!("{}: {e}", path.display()),
        None => bail!("{} is empty", path.display()),
    }
}

/// One attribute cell of a product CSV (empty cells give none).
enum Cell {
    Category(String),
    Brand(String),
    Price(f64),
    InStock(bool),
    Extra(String, String),
}

/// One row of a product CSV: id, image path, and its non-empty attribute cells.
pub struct CsvRow {
    pub id: String,
    /// The image (`None`: the cell was empty, which only `--update` allows,
    /// for products already stored).
    pub path: Option<PathBuf>,
    /// Line in the file, for the failure report.
    pub line: usize,
    cells: Vec<Cell>,
}

impl CsvRow {
    /// Sets the row's cells on `attrs`; attributes it has no cell for stay.
    pub fn apply(&self, attrs: &mut Attributes) {
        for cell in &self.cells {
            match cell {
                Cell::Category(v) => {
                    // The catalog's category: a later --refresh or
                    // --reembed keeps it, even when it is the model's label.
                    attrs.category = Some(v.clone());
                    attrs
                        .extra
                        .insert(vitrine::ATTR_CATEGORY_GIVEN.into(), "1".into());
                }
                Cell::Brand(v) => attrs.brand = Some(v.clone()),
                Cell::Price(v) => attrs.price = Some(*v),
                Cell::InStock(v) => attrs.in_stock = *v,
                Cell::Extra(k, v) => {
                    attrs.extra.insert(k.clone(), v.clone());
                }
            }
        }
    }

    /// The import item, or the failure-report line of a row without an image.
    fn into_item(self) -> Result<ImportItem, String> {
        let mut attributes = Attributes::new();
        self.apply(&mut attributes);
        match self.path {
            Some(path) => Ok(ImportItem {
                id: self.id,
                path,
                attributes,
            }),
            None => Err(format!(
                "{}\t\tline {}: a new product needs an image path",
                tsv_field(&self.id),
                self.line
            )),
        }
    }
}

/// A product CSV, read: the good rows, and a failure-report line
/// (`id<TAB>path<TAB>reason`) for each bad one.
pub struct CsvRead {
    pub rows: Vec<CsvRow>,
    pub bad: Vec<String>,
    /// The ids of the bad rows (when they have one).
    pub bad_ids: Vec<String>,
}

/// Attribute keys the engine writes (model outputs, colour, source file).
pub const ENGINE_PREFIX: &str = "vitrine.";

/// The attribute columns read into [`vitrine::Attributes`]' own fields
/// (named in any case).
const BUILT_IN_COLUMNS: [&str; 4] = ["category", "brand", "price", "in_stock"];

/// The built-in column a header spells otherwise (`In Stock`, `in-stock`,
/// `InStock`): it stays a free attribute (a file may hold both, and its
/// values `Y`/`N` may not be the built-in's), but an export that renamed
/// `in_stock` so would leave stock as it was, unseen; the import says so.
pub(crate) fn near_built_in(key: &str) -> Option<&'static str> {
    let squashed: String = key
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    BUILT_IN_COLUMNS
        .into_iter()
        .find(|b| b.replace('_', "") == squashed && !b.eq_ignore_ascii_case(key))
}

/// The rows of a CSV file `id,path[,attrs…]` (see [`ImportArgs`]), every
/// cell checked. A bad header fails the whole file; a bad row is reported
/// and the rest read on. An empty path is allowed with `update` (it is
/// needed only for products not stored yet).
pub fn csv_rows(path: &Path, update: bool) -> anyhow::Result<CsvRead> {
    // Row by row: a catalog of a million rows of mostly empty cells, all
    // parsed before the first was checked, took gigabytes.
    let text = read_csv_text(path)?;
    let (header, rows) = csv_header(path, &text)?;
    if header.len() < 2 {
        let hint = if header.first().is_some_and(|h| h.contains(';')) {
            " (the file looks separated by ';'; Vitrine reads comma-separated CSV)"
        } else {
            ""
        };
        bail!(
            "{}: the header needs at least two columns (id, path){hint}",
            path.display()
        );
    }
    // A file that lost its header line: its first product would name the
    // columns (`19.90`, `yes`) and be imported as none.
    let second = header[1].to_ascii_lowercase();
    let base = path.parent().unwrap_or(Path::new("."));
    // (Images are read by their content: one may have no extension. A
    // file that is no image, a stray `image` beside the CSV, names none.)
    let names_an_image = |cell: &str| {
        let file = base.join(cell);
        !cell.is_empty()
            && file.is_file()
            && image::ImageReader::open(&file)
                .and_then(|r| r.with_guessed_format())
                .is_ok_and(|r| r.format().is_some())
    };
    let looks_like_a_path = second
        .rsplit_once('.')
        .is_some_and(|(_, ext)| vitrine::IMAGE_EXTENSIONS.contains(&ext))
        || names_an_image(header[1].trim());
    // With an empty path (an --update of prices and stock) the row gives
    // itself away by a nameless path column among no built-in column name
    // (`sku,,price,in_stock` is a header). (Not by numbers as names: sizes,
    // `36,38,40`, are column names of stock exports.)
    let names_a_built_in = header
        .iter()
        .skip(2)
        .any(|k| BUILT_IN_COLUMNS.contains(&k.trim().to_ascii_lowercase().as_str()));
    if header[1].trim().is_empty() && !names_a_built_in {
        bail!(
            "{}: the first line looks like a product row (its image path column has no \
             name): the CSV needs a header line, id,path[,attributes…]",
            path.display(),
        );
    }
    if looks_like_a_path {
        bail!(
            "{}: the first line looks like a product row ('{}' names an image file): \
             the CSV needs a header line, id,path[,attributes…] (rename the column if it is one)",
            path.display(),
            header[1]
        );
    }
    if BUILT_IN_COLUMNS.contains(&second.as_str()) {
        bail!(
            "{}: the second column is the image path, not '{}' (id,path[,attributes…])",
            path.display(),
            header[1]
        );
    }
    if let Some(key) = header
        .iter()
        .skip(2)
        .find(|k| k.to_ascii_lowercase().starts_with(ENGINE_PREFIX))
    {
        bail!(
            "{}: column '{key}' cannot be imported (keys starting with '{ENGINE_PREFIX}' are the engine's)",
            path.display()
        );
    }
    // `product set KEY=VALUE` splits at the first '=': a key holding one
    // could never be changed or removed there.
    if let Some(key) = header
        .iter()
        .skip(2)
        .find(|k| k.contains('=') || vitrine::has_hidden_character(k))
    {
        // (An invisible one would make `\u{feff}in_stock` a free
        // attribute that looks like the built-in.)
        let what = if key.contains('=') {
            "'='"
        } else {
            "a character that does not show (a control character, a zero-width space, a \
             byte-order mark)"
        };
        bail!(
            "{}: column '{}' holds {what}, which attribute names cannot",
            path.display(),
            key.escape_debug()
        );
    }
    for key in header.iter().skip(2) {
        if let Some(b) = near_built_in(key) {
            esay!(
                "note: column '{}' of {} is a free attribute, not the built-in {b} \
                 (name it {b} to set that)",
                key.trim(),
                path.display()
            );
        }
    }
    // A column named twice would overwrite its twin, cell by cell.
    let mut named = std::collections::HashSet::new();
    for key in header.iter().skip(2).filter(|k| !k.trim().is_empty()) {
        let lower = key.to_ascii_lowercase();
        let name = if BUILT_IN_COLUMNS.contains(&lower.as_str()) {
            lower
        } else {
            key.clone()
        };
        if !named.insert(name) {
            bail!("{}: column '{key}' appears twice", path.display());
        }
    }
    let mut out = CsvRead {
        rows: Vec::new(),
        bad: Vec::new(),
        bad_ids: Vec::new(),
    };
    // Ids of bad rows: a later row of one is its second, as for good rows
    // (it used to be imported, and the bad row blamed).
    let mut bad_ids = std::collections::HashSet::new();
    // A file that stops without a line end may have been cut (a copy or a
    // download that did not finish).
    let cut = !text.ends_with(['\n', '\r']);
    let mut rows = rows.peekable();
    while let Some(record) = rows.next() {
        let vitrine::CsvRecord { line, fields: row } =
            record.map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let cell = |i: usize| row.get(i).map_or("", |c| c.trim());
        let shown = |i: usize| tsv_field(cell(i));
        // A spreadsheet writes cleared rows as `,,,`: no row at all.
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        // Its last row then short of cells reads as cut too: its last
        // cell may be part of a value (a price of 6 for 64.18).
        let cells = if cut && rows.peek().is_none() && row.len() < header.len() {
            Err(format!(
                "the file ends inside this row ({} of {} cells, no line end): a cut file?",
                row.len(),
                header.len()
            ))
        } else {
            csv_cells(&header, &row)
        };
        if cells.is_err() || cell(0).is_empty() || (!update && cell(1).is_empty()) {
            if bad_ids.insert(cell(0).to_string()) && !cell(0).is_empty() {
                out.bad_ids.push(cell(0).to_string());
            }
        } else if bad_ids.contains(cell(0)) {
            out.bad.push(format!(
                "{}\t{}\tline {}: id {} appears twice in the file (an earlier row of it is bad)",
                shown(0),
                shown(1),
                line,
                shown(0)
            ));
            continue;
        }
        match cells {
            Ok(cells) if !cell(0).is_empty() && (update || !cell(1).is_empty()) => {
                out.rows.push(CsvRow {
                    id: cell(0).to_string(),
                    path: (!cell(1).is_empty()).then(|| base.join(cell(1))),
                    line,
                    cells,
                })
            }
            Ok(_) => out.bad.push(format!(
                "{}\t{}\tline {}: id and path are required",
                shown(0),
                shown(1),
                line
            )),
            Err(reason) => out.bad.push(format!(
                "{}\t{}\tline {}: {}",
                shown(0),
                shown(1),
                line,
                tsv_field(&reason)
            )),
        }
    }
    Ok(out)
}

/// A field of the tab-separated failure report: no tabs or line breaks.
pub fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// A price cell: a finite number >= 0, refused as the row's own fault
/// before its image is decoded (`-0` is 0).
pub fn parse_price(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p + 0.0),
        _ => {
            // The spellings of a European export, said as such.
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let hint = match value.split_once(',') {
                Some((units, cents)) if digits(units) && digits(cents) && cents.len() <= 2 => {
                    format!("; a decimal comma? write {units}.{cents}")
                }
                _ if value
                    .chars()
                    .any(|c| c.is_alphabetic() || matches!(c, '€' | '$' | '£' | '¥'))
                    && value
                        .trim_matches(|c: char| !c.is_ascii_digit())
                        .parse::<f64>()
                        .is_ok() =>
                {
                    "; without the currency".to_string()
                }
                _ => String::new(),
            };
            Err(format!("bad price '{value}' (a finite number >= 0{hint})"))
        }
    }
}

/// A stock cell: 1/0, true/false, yes/no.
pub fn parse_in_stock(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(format!("bad in_stock '{value}' (1/0, true/false, yes/no)")),
    }
}

/// The attribute cells of one row, or why one is bad.
fn csv_cells(header: &[String], row: &[String]) -> Result<Vec<Cell>, String> {
    // Cells past the header would be dropped unseen. Empty ones too: an
    // unquoted `1,299.00` before an empty last cell shifts the row by one
    // and still ends in an empty cell (price 1, the next column 299.00).
    if row.len() > header.len() {
        return Err(format!(
            "{} cells, but the header has {} columns (an unquoted comma in a value, \
             as in 1,299.00, splits it: quote the value)",
            row.len(),
            header.len()
        ));
    }
    let mut cells = Vec::new();
    for (key, value) in header.iter().zip(row).skip(2) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if key.trim().is_empty() {
            return Err(format!("'{value}' is under a column without a name"));
        }
        // The four built-in columns in any case (`Price`); other keys as written.
        cells.push(match key.to_ascii_lowercase().as_str() {
            "category" => Cell::Category(value.to_string()),
            "brand" => Cell::Brand(value.to_string()),
            "price" => Cell::Price(parse_price(value)?),
            "in_stock" => Cell::InStock(parse_in_stock(value)?),
            _ => Cell::Extra(key.clone(), value.to_string()),
        });
    }
    Ok(cells)
}

/// The import items of a CSV file `id,path[,attrs…]` (see [`ImportArgs`]);
/// a bad row fails the whole file.
pub fn csv_items(path: &Path) -> anyhow::Result<Vec<ImportItem>> {
    let read = csv_rows(path, false)?;
    if let Some(bad) = read.bad.first() {
        bail!("{}: {}", path.display(), bad.replace('\t', " "));
    }
    read.rows
        .into_iter()
        .map(|r| r.into_item().map_err(anyhow::Error::msg))
        .collect()
}

/// Imports `source` into `db` with a progress bar on stderr (hidden when
/// stderr is not a terminal).
pub fn import_with_progress(
    db: &Db,
    model: &std::sync::Arc<Model>,
    prep: vitrine::PrepConfig,
    source: ImportSource,
) -> anyhow::Result<ImportReport> {
    let report = import_with_options(db, model, Some(prep), source, ImportOptions::new())?;
    if report.stopped {
        anyhow::bail!(stop_message(&report));
    }
    Ok(report)
}

/// What stopped an import: `Ctrl-C`, or `SIGTERM`.
fn stopped_by() -> &'static str {
    #[cfg(unix)]
    if STOP_SIGNAL.load(std::sync::atomic::Ordering::Relaxed) == libc::SIGTERM {
        return "SIGTERM";
    }
    "Ctrl-C"
}

/// What an import stopped by Ctrl-C (or SIGTERM) says.
fn stop_message(report: &ImportReport) -> String {
    let p = &report.progress;
    format!(
        "stopped by {}: {} of {} items stored, {} skipped, {} failed before it; run the \
         same command again to go on",
        stopped_by(),
        p.stored,
        p.total,
        p.skipped,
        p.failed
    )
}

/// With `prep` `None`, the database's preparation.
fn import_with_options(
    db: &Db,
    model: &std::sync::Arc<Model>,
    prep: Option<vitrine::PrepConfig>,
    source: ImportSource,
    options: ImportOptions<'_>,
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
    let mut options = options
        .model(model.clone())
        .progress(progress)
        .stop_when(&INTERRUPTED);
    if let Some(prep) = prep {
        options = options.prep(prep);
    }
    let report = {
        let _ctrl_c = StopOnCtrlC::install();
        db.import(source, options)
    };
    bar.finish_and_clear();
    Ok(report?)
}

/// Set by Ctrl-C during an import, which then stops between two products.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The signal that set [`INTERRUPTED`].
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// While it lives, a first Ctrl-C or SIGTERM (what `timeout`, systemd and
/// container runtimes send) stops the import cleanly (its products stored,
/// its report written, the indexes saved); a second one ends the process at
/// once, as usual. A process started with the signal ignored (in the
/// background of a script) keeps ignoring it.
struct StopOnCtrlC {
    #[cfg(unix)]
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

#[cfg(unix)]
extern "C" fn on_ctrl_c(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::Relaxed);
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

impl StopOnCtrlC {
    fn install() -> StopOnCtrlC {
        #[cfg(unix)]
        // SAFETY: the handler only stores an atomic and resets itself, both
        // async-signal-safe; an ignored signal is put back at once.
        unsafe {
            let previous = [libc::SIGINT, libc::SIGTERM].map(|sig| {
                let previous = libc::signal(sig, on_ctrl_c as *const () as libc::sighandler_t);
                if previous == libc::SIG_IGN {
                    libc::signal(sig, libc::SIG_IGN);
                }
                (sig, previous)
            });
            StopOnCtrlC { previous }
        }
        #[cfg(not(unix))]
        StopOnCtrlC {}
    }
}

impl Drop for StopOnCtrlC {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: puts back what was there (the default, or an ignore).
        unsafe {
            for (sig, previous) in self.previous {
                libc::signal(sig, previous);
            }
        }
    }
}

/// Fails when `dir` holds no file with an image name (what
/// [`vitrine::IngestError::NoImages`] would report after the open).
fn check_has_images(dir: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut ignored = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        // Hidden files are not imported (the importer skips them too).
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if named_as_image(Path::new(&name)) {
            return Ok(());
        }
        ignored += 1;
    }
    Err(vitrine::IngestError::NoImages {
        dir: dir.to_path_buf(),
        ignored,
    }
    .into())
}

/// Whether a folder import reads `path` as an image: by its extension
/// ([`vitrine::IMAGE_EXTENSIONS`], in any case).
pub(crate) fn named_as_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| vitrine::IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// A note naming the entries of folder `dir` an import does not read (not
/// named as images, or folders; hidden ones are not counted), or `None`.
fn ignored_entries(dir: &Path) -> Option<String> {
    let mut ignored: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        // (A folder named as an image is an item, which fails as one.)
        .filter(|(name, path)| !name.starts_with('.') && !named_as_image(path))
        .map(|(name, _)| name)
        .collect();
    if ignored.is_empty() {
        return None;
    }
    ignored.sort();
    let first: Vec<String> = ignored.iter().take(3).map(|n| crate::field(n)).collect();
    Some(format!(
        "{} entries of {} were not read: not named .{} (or folders, which are not read): {}{}",
        ignored.len(),
        dir.display(),
        vitrine::IMAGE_EXTENSIONS.join("/"),
        first.join(", "),
        if ignored.len() > 3 { ", …" } else { "" }
    ))
}

/// One line of the failure report: `id<TAB>path<TAB>reason`.
pub fn failure_line(f: &vitrine::ImportFailure) -> String {
    format!(
        "{}\t{}\t{}",
        tsv_field(&f.id),
        tsv_field(&f.path.display().to_string()),
        tsv_field(&f.error.to_string())
    )
}

/// Where a failure report goes.
enum ReportTarget {
    Stdout,
    Stderr,
    /// A device, pipe or socket: written in place, appended to.
    Stream(PathBuf),
    /// A regular file (or none yet): replaced whole. Through a symlink
    /// (`latest.tsv` naming a dated report), the file it names.
    File(PathBuf),
}

fn report_target(path: &Path) -> ReportTarget {
    // `/dev/stdout` under systemd is a socket that cannot be opened, and
    // under `>> log` a regular file a rename must not replace.
    if path == Path::new("/dev/stdout") {
        return ReportTarget::Stdout;
    }
    if path == Path::new("/dev/stderr") {
        return ReportTarget::Stderr;
    }
    // Another descriptor of this process (`/dev/fd/3`): resolved, it would
    // name the file behind it, which a rename must not replace either.
    let fd = path.starts_with("/dev/fd")
        || (path.starts_with("/proc") && path.components().any(|c| c.as_os_str() == "fd"));
    if fd {
        return ReportTarget::Stream(path.to_path_buf());
    }
    // A link to a file not made yet is written as that file, not over
    // the link (nor removed with it).
    let file = std::fs::canonicalize(path)
        .or_else(|_| crate::sheet::last_link_target(path))
        .unwrap_or_else(|_| path.to_path_buf());
    match std::fs::metadata(&file) {
        Ok(m) if !m.is_file() => ReportTarget::Stream(file),
        _ => ReportTarget::File(file),
    }
}

/// Removes a report that could not be written, so that an old one is not
/// read as this run's; a stream is left alone.
fn remove_report(path: &Path) {
    if let ReportTarget::File(file) = report_target(path) {
        let _ = std::fs::remove_file(file);
    }
}

/// Where `import --update` lists the present products whose row names
/// another image than the one they were embedded from (`id,path`).
const MOVED_CSV: &str = "import-moved.csv";

/// Writes the failure report whole or not at all (a temporary file, then a
/// rename), so a full disk cannot leave an empty report that reads as "no
/// failures".
fn write_report(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let write_all = |out: &mut dyn std::io::Write| -> std::io::Result<()> {
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.flush()
    };
    match report_target(path) {
        ReportTarget::Stdout => Ok(write_all(&mut std::io::stdout().lock())?),
        ReportTarget::Stderr => Ok(write_all(&mut std::io::stderr().lock())?),
        ReportTarget::Stream(p) => {
            let mut out = std::fs::OpenOptions::new().append(true).open(p)?;
            Ok(write_all(&mut out)?)
        }
        ReportTarget::File(p) => {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            Ok(crate::info::write_whole(&p, text.as_bytes())?)
        }
    }
}

/// Prints the summary of an import (of a re-embedding: its skipped items
/// are those already of the model). `updated` counts the present products
/// an update changed or left as they were, `failed_before` the items that
/// failed before the import ran (bad CSV rows, updates refused): the
/// summary counts every item and failure, as `--json` does.
pub fn print_summary(report: &ImportReport, reembed: bool, updated: usize, failed_before: usize) {
    let p = &report.progress;
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        p.stored as f64 / secs
    } else {
        0.0
    };
    let replaced = match p.replaced {
        0 => String::new(),
        n => format!(" ({n} of them re-embedded or refreshed)"),
    };
    let why = if reembed {
        "already of this model"
    } else {
        "already present"
    };
    println!(
        "{} items: {} imported{replaced}, {} skipped ({why}), {} failed, in {secs:.1} s ({rate:.1} images/s)",
        p.total + updated + failed_before,
        p.stored,
        p.skipped,
        p.failed + failed_before
    );
}

/// The summary `vitrine import --json` prints.
#[derive(serde::Serialize, Default)]
struct JsonSummary<'a> {
    items: usize,
    imported: usize,
    reembedded: usize,
    skipped: usize,
    failed: usize,
    bad_rows: usize,
    updated: usize,
    unchanged: usize,
    not_listed: usize,
    /// The failure report, when there are failures.
    report: Option<String>,
    seconds: f64,
    notes: &'a [String],
    /// Why the run stopped before its end (the counts are what it did).
    stopped: Option<String>,
    /// What failed after the products were stored (saving the indexes).
    error: Option<String>,
}

impl<'a> JsonSummary<'a> {
    /// The counts of an import `p` and of `rows`, the present products'
    /// rows an update applied, and `failed_before`, the rows that failed
    /// before the import (bad rows, updates refused).
    fn counts(
        p: &vitrine::ImportProgress,
        (updated, unchanged): (usize, usize),
        failed_before: usize,
        notes: &'a [String],
    ) -> Self {
        JsonSummary {
            items: p.total + updated + unchanged + failed_before,
            imported: p.stored,
            reembedded: p.replaced,
            skipped: p.skipped,
            failed: p.failed + failed_before,
            updated,
            unchanged,
            notes,
            ..Default::default()
        }
    }

    /// A run stopped before it imported: `bad_rows` of its source failed.
    fn stopped(
        why: &anyhow::Error,
        report: Option<&Path>,
        bad_rows: usize,
        seconds: f64,
    ) -> String {
        crate::json_text(&JsonSummary {
            items: bad_rows,
            failed: bad_rows,
            bad_rows,
            report: report.map(|r| r.display().to_string()),
            seconds,
            stopped: Some(format!("{why:#}")),
            ..Default::default()
        })
    }
}

/// The failure report can be written where it goes: `--report`'s path
/// (see [`check_report_path`]), or the default one in a database made
/// before, checked now, not after the whole import (a folder of that name,
/// a database folder the job may not write), which then failed with every
/// product stored and no summary.
fn check_report(args: &ImportArgs) -> anyhow::Result<()> {
    if let Some(report) = &args.report {
        return check_report_path(report, &args.source, &args.db);
    }
    if !args.db.is_dir() {
        return Ok(());
    }
    let report = args.db.join("import-failures.tsv");
    if report.is_dir() {
        bail!(
            "{} is a folder, where the failure report goes; remove it, or name another file \
             with --report",
            report.display()
        );
    }
    let (probe, _) = vitrine_index::create_temp_beside(&report).with_context(|| {
        format!(
            "cannot write the failure report {} (name another file with --report)",
            report.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Whether `path` is this process's stdout: `/dev/stdout`, or a path to
/// the same file (`/dev/fd/1`, `/proc/self/fd/1`, the file stdout was sent
/// to).
fn is_stdout(path: &Path) -> bool {
    if matches!(report_target(path), ReportTarget::Stdout) {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let out = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata());
        if let (Ok(out), Ok(file)) = (out, std::fs::metadata(path)) {
            return (out.dev(), out.ino()) == (file.dev(), file.ino());
        }
    }
    false
}

/// Refuses a `--report` that would replace the CSV being imported or one of
/// the database's own files (a mistyped flag must not destroy either), or
/// that cannot be written.
/// Paths are compared as they resolve (links followed, as far as they
/// exist) and as written (made absolute, `.` and `..` folded), so a
/// database the import is about to create is covered too.
fn check_report_path(report: &Path, source: &Path, db: &Path) -> anyhow::Result<()> {
    let resolved = |p: &Path| -> Option<PathBuf> {
        let (parent, name) = (p.parent()?, p.file_name()?);
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        parent.canonicalize().ok().map(|d| d.join(name))
    };
    // The file a link names too: the report is written through it.
    let reports: Vec<PathBuf> = [
        resolved(report),
        lexical(report),
        report.canonicalize().ok(),
        // (A link to a file not made yet: the file it will be.)
        crate::sheet::last_link_target(report)
            .ok()
            .and_then(|t| lexical(&t)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Ok(source) = source.canonicalize() {
        if reports.contains(&source) {
            bail!(
                "--report {} is the file being imported; name another file",
                report.display()
            );
        }
    }
    let dbs: Vec<PathBuf> = [db.canonicalize().ok(), lexical(db)]
        .into_iter()
        .flatten()
        .collect();
    for own in ["sled", "arena", "index"] {
        if reports
            .iter()
            .any(|r| dbs.iter().any(|d| r.starts_with(d.join(own))))
        {
            bail!(
                "--report {} is inside the database's own {own}/ folder; name another file",
                report.display()
            );
        }
    }
    // Now, not after the whole import: a folder, a missing folder or one
    // the job may not write failed a finished import at its last step.
    match report_target(report) {
        ReportTarget::Stream(p) if p.is_dir() => {
            bail!("--report {} is a folder; name a file", report.display())
        }
        // Right in the database's folder, which the import is about to
        // create: written once it is there (a folder below it is not made).
        ReportTarget::File(p)
            if !p.parent().is_some_and(Path::is_dir)
                && lexical(&p)
                    .as_deref()
                    .and_then(Path::parent)
                    .is_some_and(|folder| dbs.iter().any(|d| folder == d.as_path())) => {}
        ReportTarget::File(p) => {
            let (probe, _) = vitrine_index::create_temp_beside(&p)
                .with_context(|| format!("cannot write the failure report {}", report.display()))?;
            let _ = std::fs::remove_file(probe);
        }
        _ => {}
    }
    Ok(())
}

/// `p` made absolute with `.` and `..` folded, without the file system (it
/// may not exist yet).
fn lexical(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in std::path::absolute(p).ok()?.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The ids an import of the folder `dir` gives its images: the stems of its
/// image files, as `Db::import` names them (hidden files and names that are
/// not UTF-8 left out).
fn folder_ids(dir: &Path) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let image = named_as_image(&path);
        let name = path.file_name().and_then(|n| n.to_str());
        if let (true, Some(name), Some(stem)) = (image, name, path.file_stem()) {
            if !name.starts_with('.') {
                // Both: older builds stored a spaced stem as it is.
                let stem = stem.to_string_lossy();
                ids.insert(stem.trim().to_string());
                ids.insert(stem.into_owned());
            }
        }
    }
    Ok(ids)
}

/// Whether `a` and `b` name one file: the same path once `.` and `..` are
/// folded, or, both existing, the same file once links are followed.
fn same_file(a: &Path, b: &Path) -> bool {
    if lexical(a).is_some_and(|x| Some(x) == lexical(b)) {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A source's CSV rows (none for a folder), its bad rows' report lines and
/// their ids.
type SourceRows = (Option<Vec<CsvRow>>, Vec<String>, Vec<String>);

/// Runs `vitrine import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Seconds since the run started, for the JSON summary.
    let seconds = || (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    if args.json && args.report.as_deref().is_some_and(is_stdout) {
        crate::usage_error(
            "import",
            "--report to stdout with --json: stdout holds the summary; name a file".into(),
        );
    }
    if args.update && args.source.is_dir() {
        crate::usage_error(
            "import",
            format!(
                "--update takes attributes from a CSV file; {} is a folder",
                args.source.display()
            ),
        );
    }
    let prep = args.prep.given()?;
    // A run refused before it began still prints its object with --json.
    let refused = |e: anyhow::Error| -> anyhow::Error {
        if args.json {
            println!("{}", JsonSummary::stopped(&e, None, 0, seconds()));
        }
        e
    };
    check_report(&args).map_err(refused)?;
    // A CSV's bad rows go to the failure report, like bad images.
    // Refused as a whole: why, with the report lines of its bad rows.
    let read_source = || -> Result<SourceRows, (anyhow::Error, Vec<String>)> {
        let none = |e: anyhow::Error| (e, Vec::new());
        if args.update && !args.source.is_file() {
            return Err(none(anyhow!(
                "--update takes attributes from a CSV file; {} is not one",
                args.source.display()
            )));
        }
        if args.source.is_dir() {
            // Checked before the database is created: a wrong folder must not
            // leave an empty database behind.
            check_has_images(&args.source).map_err(none)?;
            return Ok((None, Vec::new(), Vec::new()));
        }
        if !args.source.is_file() {
            return Err(none(anyhow!(
                "{} is neither a folder nor a file",
                args.source.display()
            )));
        }
        let read = csv_rows(&args.source, args.update).map_err(none)?;
        if read.rows.is_empty() && read.bad.is_empty() {
            return Err(none(anyhow!(
                "{} has no product rows, only a header",
                args.source.display()
            )));
        }
        // Every row bad and no database yet: none is made for nothing.
        if read.rows.is_empty() && !args.db.exists() {
            for line in &read.bad {
                esay!("bad row: {line}");
            }
            let e = anyhow!(
                "every one of the {} rows of {} is bad; no database was made",
                read.bad.len(),
                args.source.display()
            );
            return Err((e, read.bad));
        }
        Ok((Some(read.rows), read.bad, read.bad_ids))
    };
    // A run stopped as a whole (tonight's file refused: no header, not
    // UTF-8, a bad column; or the database not opened: held by another
    // process, of another model): last night's report must not stand for
    // this run. (No report is made in a folder that has none.)
    let stopped_whole = |e: anyhow::Error, mut lines: Vec<String>| -> anyhow::Error {
        let report = match &args.report {
            Some(r) => Some(r.clone()),
            None => Some(args.db.join("import-failures.tsv")).filter(|r| r.is_file()),
        };
        if args.json {
            // (`lines`: the source's bad rows, when it was refused for them.)
            let summary = JsonSummary::stopped(&e, report.as_deref(), lines.len(), seconds());
            println!("{summary}");
        }
        if let Some(report) = report {
            lines.push(format!(
                "\t\tthe import stopped: {}",
                tsv_field(&format!("{e:#}"))
            ));
            if write_report(&report, &lines).is_err() {
                remove_report(&report);
            }
        }
        e
    };
    let (rows, bad_rows, bad_ids) = match read_source() {
        Ok(read) => read,
        Err((e, lines)) => return Err(stopped_whole(e, lines)),
    };
    // A run that stores nothing in a database it made removes it again,
    // with the folders made for it.
    let db_is_new = !args.db.exists();
    let made: Vec<PathBuf> = args
        .db
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    // Whether the database holds another model's vectors (an --update then
    // refreshes attributes, and refuses new products until a --reembed).
    let opened = (|| -> anyhow::Result<_> {
        crate::no_repair_leftovers(&args.db)?;
        let model = Model::bundled().context("cannot load the bundled model")?;
        let db = match Db::builder().open_with_model(&args.db, &model) {
            Ok(db) => (db, false),
            // Built with another model: re-embedding opens it as it is, and
            // the import switches it; an update of attributes runs no model.
            Err(
                vitrine::IngestError::ModelMismatch { .. }
                | vitrine::IngestError::VectorsOfNoModel { .. },
            ) if args.reembed || args.update => (
                Db::open(&args.db)
                    .with_context(|| format!("cannot open the database {}", args.db.display()))?,
                !args.reembed,
            ),
            Err(e @ vitrine::IngestError::ModelMismatch { .. }) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "cannot open the database {}; `vitrine import SOURCE --db {} --reembed`, with a \
                     SOURCE that lists the whole catalog, switches it to the bundled model \
                     (products SOURCE does not list keep the old model's vectors, and are left \
                     out of searches until re-imported)",
                    args.db.display(),
                    args.db.display()
                )))
            }
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("cannot open the database {}", args.db.display())))
            }
        };
        Ok((model, db))
    })();
    let (model, (db, other_model)) = match opened {
        Ok(opened) => opened,
        Err(e) => return Err(stopped_whole(e, bad_rows)),
    };
    // --update: present products take the row's cells in place; new ids
    // go on to the import.
    // Said after the failure report is written: with stdout closed early
    // (`| head -1`), a print ends the process, which must not leave last
    // night's report standing.
    let mut notes: Vec<String> = Vec::new();
    if !bad_rows.is_empty() {
        notes.push(format!(
            "{} bad rows in {} (not imported)",
            bad_rows.len(),
            args.source.display()
        ));
    }
    // A folder's entries the import does not read were only logged: a
    // catalog could lose products to an unusual extension, exit 0.
    if rows.is_none() {
        if let Some(note) = ignored_entries(&args.source) {
            notes.push(note);
        }
    }
    let bad_row_count = bad_rows.len();
    let (mut updated, mut unchanged, mut update_failures) = (0usize, 0usize, bad_rows);
    // The ids the CSV lists, to name the stored products it no longer does
    // (bad rows name their products too); of a folder, only for a
    // re-embedding (a folder of new photos lists few of the catalog).
    let listed: Option<std::collections::HashSet<String>> = match rows.as_ref() {
        Some(rows) => Some(
            rows.iter()
                .map(|r| r.id.clone())
                .chain(bad_ids.iter().cloned())
                .collect(),
        ),
        None if args.reembed => Some(folder_ids(&args.source)?),
        None => None,
    };
    // Set when Ctrl-C stops the updates of present products.
    let mut updates_stopped = None;
    let source = match rows {
        Some(rows) if args.update => {
            // One durable write per row: minutes for a large nightly file,
            // stopped between two rows as the import stops between two
            // products.
            let _ctrl_c = StopOnCtrlC::install();
            let bad_before = update_failures.len();
            let mut new_items = Vec::new();
            let mut no_image = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut twice = 0usize;
            // Present products whose row names another image than the one
            // their vectors come from (which an update does not re-embed).
            // (id, embedded from, named now, whether that is UTF-8 text)
            let mut moved: Vec<(String, String, String, bool)> = Vec::new();
            let total = rows.len();
            for (done, row) in rows.into_iter().enumerate() {
                if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                    updates_stopped = Some(format!(
                        "stopped by {} after {done} of {total} rows (the updates of those \
                         rows are applied, no new product is imported); run the same command \
                         again to finish",
                        stopped_by()
                    ));
                    break;
                }
                // As a plain import does: a second row of an id fails.
                if !seen.insert(row.id.clone()) {
                    twice += 1;
                    update_failures.push(format!(
                        "{}\t\tline {}: id {} appears twice in the file",
                        tsv_field(&row.id),
                        row.line,
                        tsv_field(&row.id)
                    ));
                    continue;
                }
                match db.update_attributes(&row.id, |a| {
                    if let (Some(named), Some(source)) = (&row.path, a.extra.get(ATTR_SOURCE)) {
                        // The source is stored as text: a path that is
                        // not UTF-8 is stored lossily, and is its own.
                        let stored_as = std::path::absolute(named)
                            .is_ok_and(|p| p.to_string_lossy() == source.as_str());
                        if !stored_as && !same_file(named, Path::new(source)) {
                            // Absolute: the list is read from the
                            // database's folder, not from here.
                            let now = std::path::absolute(named).unwrap_or_else(|_| named.clone());
                            moved.push((
                                row.id.clone(),
                                source.clone(),
                                now.display().to_string(),
                                now.to_str().is_some(),
                            ));
                        }
                    }
                    row.apply(a)
                }) {
                    Err(vitrine::Error::NotFound { .. }) => match row.into_item() {
                        Ok(item) => new_items.push(item),
                        Err(line) => no_image.push(line),
                    },
                    Ok(true) => updated += 1,
                    Ok(false) => unchanged += 1,
                    // Storage takes no more writes (a full disk): every
                    // later row would fail the same way, as a row of its own.
                    Err(e) if e.needs_restart() || e.io_error().is_some() => {
                        updates_stopped = Some(format!(
                            "{} (after {done} of {total} rows: the updates of those rows \
                             are applied, no new product is imported; free space, then run \
                             the same command again)",
                            crate::error_message(&e.into())
                        ));
                        break;
                    }
                    Err(e) => update_failures.push(format!(
                        "{}\t{}\tline {}: {}",
                        tsv_field(&row.id),
                        tsv_field(
                            &row.path
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                        row.line,
                        tsv_field(&crate::error_message(&e.into()))
                    )),
                }
            }
            let failed = update_failures.len() - bad_before - twice;
            notes.push(format!(
                "{} present: {updated} updated, {unchanged} unchanged, {failed} failed",
                updated + unchanged + failed,
            ));
            if twice > 0 {
                notes.push(format!(
                    "{twice} rows repeat an id of an earlier row (not applied)"
                ));
            }
            // Every moved product, as a CSV that --refresh takes as it is
            // (the note names a screenful); an older run's list goes.
            let moved_csv = args.db.join(MOVED_CSV);
            // A path that is not UTF-8 text cannot be written as it is:
            // its row is left out (and said); a list of none is no list.
            let unwritable = moved.iter().filter(|m| !m.3).count();
            if unwritable > 0 {
                notes.push(format!(
                    "{unwritable} of the products whose image changed name a path that is \
                     not UTF-8 text: they are not in {MOVED_CSV}"
                ));
            }
            if moved.len() == unwritable {
                let _ = std::fs::remove_file(&moved_csv);
            } else {
                let mut text = String::from("id,path\n");
                for (id, _, now, _) in moved.iter().filter(|m| m.3) {
                    text += &format!(
                        "{},{}\n",
                        crate::outfit_eval::csv_field(id),
                        crate::outfit_eval::csv_field(now)
                    );
                }
                // The source's pixel aspect, as this run was given it: the
                // database's default may be another source's.
                let aspect = match (args.prep.fpi, args.prep.pixel_aspect) {
                    (true, _) => " --fpi".to_string(),
                    (false, Some(a)) => format!(" --pixel-aspect {a}"),
                    (false, None) => String::new(),
                };
                match crate::info::write_whole(&moved_csv, text.as_bytes()) {
                    Ok(()) => notes.push(format!(
                        "the rows of the products whose image changed are in {}: \
                         `vitrine import {} --db {} --refresh --present-only{aspect}` re-embeds \
                         them from their new images",
                        moved_csv.display(),
                        crate::shell_word(&moved_csv.display().to_string()),
                        crate::shell_word(&args.db.display().to_string()),
                    )),
                    Err(e) => notes.push(format!("cannot write {}: {e}", moved_csv.display())),
                }
            }
            if let Some((id, was, now, _)) = moved.first() {
                // Named (up to a screenful), so that a CSV of their rows
                // can be made for --refresh.
                const NAMED: usize = 20;
                let mut ids: Vec<String> = moved
                    .iter()
                    .take(NAMED)
                    .map(|(id, _, _, _)| crate::field(id).to_string())
                    .collect();
                if moved.len() > NAMED {
                    ids.push(format!("and {} more", moved.len() - NAMED));
                }
                notes.push(format!(
                    "{} present products name another image than the one they were embedded \
                     from (first: {}, {} -> {}); their vectors are of the old one: \
                     `vitrine import CSV --db DB --refresh --present-only` re-embeds every \
                     product a CSV lists, so give it a CSV of these rows when the photos \
                     changed: {}",
                    moved.len(),
                    crate::field(id),
                    crate::field(was),
                    crate::field(now),
                    ids.join(", ")
                ));
            }
            if !no_image.is_empty() {
                notes.push(format!(
                    "{} new products without an image path",
                    no_image.len()
                ));
            }
            update_failures.extend(no_image);
            if other_model && !new_items.is_empty() {
                // Their vectors would not compare with the stored ones.
                notes.push(format!(
                    "{} new products not imported: the database was embedded by another model \
                     (`vitrine import SOURCE --db DB --reembed` moves it to the bundled one)",
                    new_items.len()
                ));
                update_failures.extend(new_items.drain(..).map(|item| {
                    format!(
                        "{}\t{}\tthe database was embedded by another model; re-embed it first",
                        tsv_field(&item.id),
                        tsv_field(&item.path.display().to_string())
                    )
                }));
            }
            ImportSource::Items(new_items)
        }
        // Without --update every row has a path (checked by csv_rows).
        Some(rows) => ImportSource::Items(
            rows.into_iter()
                .filter_map(|r| r.into_item().ok())
                .collect(),
        ),
        None => ImportSource::Dir(args.source.clone()),
    };
    let options = ImportOptions::new()
        .reembed(args.reembed)
        .refresh(args.refresh)
        .present_only(args.present_only);
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| args.db.join("import-failures.tsv"));
    // A run that stops as a whole must not leave last night's report to
    // stand for it: the report gets this run's failures and why it stopped.
    // `done`: the import's progress when it stopped (none before it ran).
    let stopped = |mut lines: Vec<String>,
                   e: anyhow::Error,
                   done: Option<&vitrine::ImportProgress>|
     -> anyhow::Error {
        if args.json {
            // What was done before it stopped, for a monitor: the counts,
            // and why.
            let zero = vitrine::ImportProgress::default();
            let p = done.unwrap_or(&zero);
            // (`lines`: the import's failures and the rows failed before it.)
            let before = lines.len().saturating_sub(p.failed);
            println!(
                "{}",
                crate::json_text(&JsonSummary {
                    bad_rows: bad_row_count,
                    report: Some(report_path.display().to_string()),
                    seconds: seconds(),
                    stopped: Some(format!("{e:#}")),
                    ..JsonSummary::counts(p, (updated, unchanged), before, &notes)
                })
            );
        }
        // What was done before it stopped (updates applied, advice), on
        // stderr with the error.
        for note in &notes {
            esay!("{note}");
        }
        lines.push(format!(
            "\t\tthe import stopped: {}",
            tsv_field(&format!("{e:#}"))
        ));
        if write_report(&report_path, &lines).is_err() {
            // A full disk, say: the lines reach the user, and no old
            // report is left to be read as this run's.
            for line in &lines {
                esay!("failed: {line}");
            }
            remove_report(&report_path);
        }
        e
    };
    if let Some(why) = updates_stopped {
        return Err(stopped(update_failures, anyhow!(why), None));
    }
    // The flags set the pixel aspect; the rest is the database's own
    // preparation (an older database's, without the area shrink, stays so).
    let prep = match prep.map(|p| {
        db.prep_config()
            .map(|c| c.pixel_aspect(p.get_pixel_aspect()))
    }) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return Err(stopped(update_failures, e.into(), None)),
    };
    let report = if other_model {
        // Only attributes changed: nothing for the model to do.
        ImportReport::default()
    } else {
        match import_with_options(&db, &model, prep, source, options) {
            // Its failures so far are reported too, then why it stopped.
            Ok(report) if report.stopped => {
                let lines = report.failures.iter().map(failure_line);
                let e = anyhow!(stop_message(&report));
                return Err(stopped(
                    lines.chain(update_failures).collect(),
                    e,
                    Some(&report.progress),
                ));
            }
            Ok(report) => report,
            Err(e) => return Err(stopped(update_failures, e, None)),
        }
    };
    if let Err(e) = db.flush() {
        let lines = report.failures.iter().map(failure_line);
        return Err(stopped(
            lines.chain(update_failures).collect(),
            e.into(),
            Some(&report.progress),
        ));
    }
    let (mut unlisted_note, mut not_listed) = (None, 0usize);
    // Products the CSV no longer lists are kept; after a re-embedding,
    // those still of another model are failures (their vectors do not
    // compare with the others').
    if let Some(listed) = &listed {
        let fingerprint = db.model_fingerprint();
        let (mut unlisted, mut old_model) = (0usize, Vec::new());
        for id in db.ids().into_iter().filter(|id| !listed.contains(id)) {
            unlisted += 1;
            let model_of = || db.attributes(&id)?.get(ATTR_MODEL).map(str::to_owned);
            if args.reembed && model_of().is_some_and(|m| Some(&m) != fingerprint.as_ref()) {
                old_model.push(id);
            }
        }
        not_listed = unlisted;
        if unlisted > 0 {
            // Counted as failures by the exit status: said here, not only
            // in the report.
            let of_old_model = match old_model.len() {
                0 => String::new(),
                n => format!(
                    "; {n} of them are still of the previous model, so failed (not re-embedded)"
                ),
            };
            unlisted_note = Some(format!(
                "{unlisted} stored products are not in {} (kept as they were, stock \
                 included{of_old_model}; `vitrine product --db DB list` lists the stored ids, \
                 `vitrine product --db DB delete ID` removes one)",
                args.source.display()
            ));
        }
        update_failures.extend(old_model.iter().map(|id| {
            format!(
                "{}\t\tnot in {}, so not re-embedded: its vectors are of the previous \
                 model (list it with its image, or delete it)",
                tsv_field(id),
                tsv_field(&args.source.display().to_string())
            )
        }));
    }
    let lines: Vec<String> = report
        .failures
        .iter()
        .map(failure_line)
        .chain(update_failures.iter().cloned())
        .collect();
    // Every item failed, and the database is this run's: none is left
    // behind, holding nothing but the report of why (a mistyped folder, a
    // CSV of the wrong images). The failures go to stderr, or to --report.
    let p = report.progress;
    let failed = p.failed + update_failures.len();
    // The summary a --json run prints, whatever its end.
    let summary = |report: Option<&Path>, notes: &[String], error: Option<String>| {
        crate::json_text(&JsonSummary {
            bad_rows: bad_row_count,
            not_listed,
            report: report.map(|r| r.display().to_string()),
            seconds: seconds(),
            error,
            ..JsonSummary::counts(&p, (updated, unchanged), update_failures.len(), notes)
        })
    };
    // Every item failed, and the database is this run's: none is left
    // behind, holding nothing but the report of why (a mistyped folder, a
    // CSV of the wrong images), nor the folders made for it. The failures
    // go to stderr, or to --report.
    if db_is_new && db.is_empty() && !lines.is_empty() {
        drop(db);
        std::fs::remove_dir_all(&args.db)
            .with_context(|| format!("cannot remove {}", args.db.display()))?;
        for folder in made.iter().skip(1) {
            let _ = std::fs::remove_dir(folder);
        }
        let written = args.report.is_some() && write_report(&report_path, &lines).is_ok();
        if !written {
            for line in &lines {
                esay!("failed: {line}");
            }
        }
        if args.json {
            println!("{}", summary(written.then_some(&report_path), &notes, None));
        } else {
            for note in &notes {
                esay!("{note}");
            }
        }
        let whereabouts = if written {
            format!(" (see {})", report_path.display())
        } else {
            String::new()
        };
        bail!(
            "every one of the {} items failed{whereabouts}; no database was made",
            lines.len()
        );
    }
    if let Err(e) = write_report(&report_path, &lines) {
        // The old report stays whole; the failures still reach the user,
        // with what was done.
        for note in &notes {
            esay!("{note}");
        }
        for line in &lines {
            esay!("failed: {line}");
        }
        return Err(e.context(format!(
            "cannot write the failure report {}",
            report_path.display()
        )));
    }
    // The indexes are saved here, not when the database is dropped: a
    // full disk then shows in the exit status, not in a log line only;
    // and before the summary, which says so.
    let closed = db.close().context(
        "the products are stored, but saving the indexes failed (the next open rebuilds them \
         from storage)",
    );
    let report_named = (failed > 0).then_some(report_path.as_path());
    if args.json {
        // Notes on stderr would be a second channel to parse: they are in
        // the object.
        notes.extend(unlisted_note);
        let error = closed.as_ref().err().map(|e| format!("{e:#}"));
        println!("{}", summary(report_named, &notes, error));
    } else {
        for note in &notes {
            println!("{note}");
        }
        print_summary(
            &report,
            args.reembed,
            updated + unchanged,
            update_failures.len(),
        );
        if let Some(note) = &unlisted_note {
            println!("{note}");
        }
        if failed > 0 {
            println!("failures written to {}", report_path.display());
        }
    }
    closed?;
    // All failed: the input itself is wrong (exit 1). Some failed: a
    // large catalog often has a few bad images, but a nightly job must see
    // it (exit 3).
    if failed > 0 && p.stored + p.skipped + updated + unchanged == 0 {
        bail!(
            "every one of the {failed} items failed (see {})",
            report_path.display()
        );
    }
    if failed > 0 {
        let rows = if bad_row_count > 0 {
            format!(", {bad_row_count} of them bad CSV rows")
        } else {
            String::new()
        };
        return Err(crate::Partial(format!(
            "{failed} failed{rows} (see {})",
            report_path.display()
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that ends inside a row (no line end, cells missing) was cut:
    /// its last row is refused, not read with a part of a price. A whole
    /// last row without a line end, or a short row before the end, is
    /// read.
    #[test]
    fn a_last_row_cut_short_is_a_bad_row() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("prices.csv");
        let read = |text: &str| {
            std::fs::write(&csv, text).unwrap();
            csv_rows(&csv, true).unwrap()
        };
        let r = read("id,path,price,brand\nsku-1,,19.90,X\nsku-2,,6");
        assert_eq!(r.rows.len(), 1);
        assert!(r.bad[0].contains("a cut file?"), "{:?}", r.bad);
        assert_eq!(r.bad_ids, ["sku-2"]);
        for whole in [
            "id,path,price,brand\nsku-1,,19.90,X\nsku-2,,64.18,Y",
            "id,path,price,brand\nsku-1,,19.90\nsku-2,,64.18\n",
        ] {
            let r = read(whole);
            assert_eq!(
                (r.rows.len(), r.bad.len()),
                (2, 0),
                "{whole:?}: {:?}",
                r.bad
            );
        }
    }

    /// A European price is refused with how to write it.
    #[test]
    fn a_price_with_a_decimal_comma_or_a_currency_says_how_to_write_it() {
        assert!(parse_price("19,90").unwrap_err().contains("write 19.90"));
        assert!(parse_price("€19.90")
            .unwrap_err()
            .contains("without the currency"));
        assert!(parse_price("19.90 EUR")
            .unwrap_err()
            .contains("without the currency"));
        for plain in ["-5", "abc", "1,299.00", "inf"] {
            let e = parse_price(plain).unwrap_err();
            assert!(!e.contains("; "), "{plain}: {e}");
        }
        assert_eq!(parse_price("19.90"), Ok(19.9));
    }

    /// A header whose path column has no name is still a header when it
    /// names a built-in column (an --update of prices and stock); a data
    /// row with an empty path is not one.
    #[test]
    fn a_nameless_path_column_is_a_header_only_beside_built_in_names() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("prices.csv");
        std::fs::write(&csv, "sku,,price,in_stock\nsku-1,,19.90,yes\n").unwrap();
        let read = csv_rows(&csv, true).unwrap();
        assert_eq!(read.rows.len(), 1);
        std::fs::write(&csv, "sku-1,,19.90,yes\nsku-2,,29.90,no\n").unwrap();
        let e = csv_rows(&csv, true).err().unwrap();
        assert!(e.to_string().contains("looks like a product row"), "{e}");
    }

    /// A first row naming an image file without an extension (images are
    /// read by their content) is a product row, not the header: its
    /// product would be lost and its values name the columns.
    #[test]
    fn a_first_row_naming_a_file_is_not_a_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        image::RgbImage::new(2, 2)
            .save_with_format(dir.path().join("img/sku-1"), image::ImageFormat::Png)
            .unwrap();
        let csv = dir.path().join("catalog.csv");
        std::fs::write(
            &csv,
            "sku-1,img/sku-1,19.90,yes\nsku-2,img/sku-2,29.90,no\n",
        )
        .unwrap();
        let e = csv_rows(&csv, false).err().unwrap();
        assert!(e.to_string().contains("looks like a product row"), "{e}");
        // A header naming a file that is no image (a stray `image` beside
        // the CSV), or naming none, is one.
        std::fs::write(dir.path().join("image"), b"not a photo").unwrap();
        std::fs::write(&csv, "sku,image,price\nsku-1,img/sku-1,19.90\n").unwrap();
        assert_eq!(csv_rows(&csv, false).unwrap().rows.len(), 1);
        std::fs::write(&csv, "sku,photo,price\nsku-1,img/sku-1,19.90\n").unwrap();
        assert_eq!(csv_rows(&csv, false).unwrap().rows.len(), 1);
    }

    /// A built-in column spelt otherwise is noted, and stays a free
    /// attribute (the file may hold the built-in too).
    #[test]
    fn built_in_columns_spelt_otherwise() {
        for (key, want) in [
            ("in_stock", None),
            ("IN_STOCK", None),
            ("In Stock", Some("in_stock")),
            ("in-stock", Some("in_stock")),
            ("InStock", Some("in_stock")),
            ("Price", None),
            ("stock", None),
            ("price_eur", None),
        ] {
            assert_eq!(near_built_in(key), want, "{key}");
        }
        let header: Vec<String> = ["id", "path", "Price", "In Stock", "in_stock"]
            .map(String::from)
            .to_vec();
        let row: Vec<String> = ["sku-1", "", "19.90", "Y", "no"].map(String::from).to_vec();
        let cells = csv_cells(&header, &row).unwrap();
        assert!(matches!(cells[0], Cell::Price(p) if p == 19.9));
        assert!(matches!(&cells[1], Cell::Extra(k, v) if k == "In Stock" && v == "Y"));
        assert!(matches!(cells[2], Cell::InStock(false)));
    }

    /// A price with a thousands separator, unquoted, before an empty last
    /// cell: the row has one cell too many, all past the header empty.
    #[test]
    fn a_row_longer_than_the_header_is_refused_even_when_it_ends_empty() {
        let header: Vec<String> = ["id", "path", "price", "brand"].map(String::from).to_vec();
        let row: Vec<String> = ["sku-1", "a.jpg", "1", "299.00", ""]
            .map(String::from)
            .to_vec();
        let e = csv_cells(&header, &row).err().unwrap();
        assert!(
            e.starts_with("5 cells, but the header has 4 columns"),
            "{e}"
        );
        let row: Vec<String> = ["sku-1", "a.jpg", "1299.00", ""].map(String::from).to_vec();
        assert!(matches!(csv_cells(&header, &row).unwrap()[..], [Cell::Price(p)] if p == 1299.0));
    }
}
