//! The bulk import pipeline: N prepare workers → batched inference → one
//! writer, on bounded crossbeam channels.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use tracing::{debug, info};

use super::StoredPrep;
use super::{IngestError, ATTR_MODEL};
use crate::model::{Model, ModelOutput};
use crate::{prepare_image, Attributes, Db, PrepConfig, PreparedImage};

/// The file name extensions a folder import reads as images (compared
/// without case).
/// (`jfif`, `jpe` and `jif` are JPEG's other names: browsers save
/// downloads as `.jfif`.)
pub const IMAGE_EXTENSIONS: [&str; 11] = [
    "jpg", "jpeg", "jfif", "jpe", "jif", "png", "webp", "gif", "bmp", "tif", "tiff",
];

/// One image to import.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportItem {
    /// Product id.
    pub id: String,
    /// Image file.
    pub path: PathBuf,
    /// Attributes to store (the model's annotations are added).
    pub attributes: Attributes,
}

/// What to import.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ImportSource {
    /// Every `.jpg`, `.jpeg`, `.png`, `.webp`, `.gif`, `.bmp`, `.tif` and
    /// `.tiff` file directly in the folder (not in subfolders, not hidden),
    /// in name order; the id is the file stem without white space at either end
    /// (as a CSV's cells are read; a product an older build stored under
    /// the spaced stem keeps that id), the attributes are empty.
    /// An entry with such a name that is not a regular file, or whose name
    /// is not UTF-8, fails as an item, with its reason.
    Dir(PathBuf),
    /// An explicit list.
    Items(Vec<ImportItem>),
}

impl ImportSource {
    /// The items, listed now. A directory that cannot be read is an error.
    pub fn items(&self) -> Result<Vec<ImportItem>, IngestError> {
        match self {
            ImportSource::Items(items) => Ok(items.clone()),
            ImportSource::Dir(dir) => Ok(list_dir(dir)?.0),
        }
    }

    /// The items, and the folder's files that cannot be items (their
    /// names are not UTF-8).
    fn into_items(self) -> Result<(Vec<ImportItem>, Vec<PathBuf>), IngestError> {
        match self {
            ImportSource::Items(items) => Ok((items, Vec::new())),
            ImportSource::Dir(dir) => list_dir(&dir),
        }
    }
}

fn list_dir(dir: &Path) -> Result<(Vec<ImportItem>, Vec<PathBuf>), IngestError> {
    let io = |source| IngestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut items = Vec::new();
    let mut ignored = Vec::new();
    let mut not_utf8 = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        // An image name that is not a regular file (a folder, a FIFO, a
        // dangling link) stays an item: it fails with its reason in the
        // report instead of vanishing.
        if !ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            ignored.push(name.into_owned());
            continue;
        }
        if entry.file_name().to_str().is_none() {
            // A lossy id would not name the file, and two names could
            // collapse into one id.
            not_utf8.push(path);
            continue;
        }
        // Without white space at either end, as a CSV's cells are read: an id
        // no CSV could name would be out of reach of every later update.
        let Some(stem) = path
            .file_stem()
            .map(|s| s.to_string_lossy().trim().to_string())
        else {
            continue;
        };
        items.push(ImportItem {
            id: stem,
            path,
            attributes: Attributes::new(),
        });
    }
    if items.is_empty() && not_utf8.is_empty() {
        return Err(IngestError::NoImages {
            dir: dir.to_path_buf(),
            ignored: ignored.len(),
        });
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    not_utf8.sort();
    if !ignored.is_empty() {
        ignored.sort();
        tracing::warn!(
            dir = %dir.display(),
            count = ignored.len(),
            first = ?&ignored[..ignored.len().min(3)],
            "entries ignored: not named .{} (subfolders are not read)",
            IMAGE_EXTENSIONS.join("/")
        );
    }
    Ok((items, not_utf8))
}

/// Where an import stands; passed to the progress callback after every item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportProgress {
    /// Items in the source.
    pub total: usize,
    /// Items stored so far, counting `replaced`.
    pub stored: usize,
    /// Of the stored items, those that replaced a stored product's image
    /// and vectors (re-embedded or refreshed).
    pub replaced: usize,
    /// Items skipped because they were already present (resume).
    pub skipped: usize,
    /// Items that failed so far.
    pub failed: usize,
}

impl ImportProgress {
    /// Items dealt with (stored, skipped or failed).
    pub fn done(&self) -> usize {
        self.stored + self.skipped + self.failed
    }
}

/// An item that could not be imported, and why.
#[derive(Debug)]
pub struct ImportFailure {
    /// Product id.
    pub id: String,
    /// Image file.
    pub path: PathBuf,
    /// The reason.
    pub error: IngestError,
}

/// The outcome of [`Db::import`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ImportReport {
    /// Counts at the end.
    pub progress: ImportProgress,
    /// Every failed item, with its reason, in the order they failed.
    pub failures: Vec<ImportFailure>,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Stopped early by [`ImportOptions::stop_when`]: the items stored
    /// stay, the rest were not read (run it again to resume).
    pub stopped: bool,
}

type ProgressFn<'a> = Box<dyn FnMut(&ImportProgress) + 'a>;

/// Adds the files whose names are not UTF-8 to `report` as failures.
fn report_unreadable_names(report: &mut ImportReport, not_utf8: Vec<PathBuf>) {
    report.progress.total += not_utf8.len();
    report.progress.failed += not_utf8.len();
    for path in not_utf8 {
        report.failures.push(ImportFailure {
            id: path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            error: IngestError::FileName { path: path.clone() },
            path,
        });
    }
}

/// The most prepare workers or inference threads an import starts.
const MAX_THREADS: usize = 256;

/// Settings of [`Db::import`].
///
/// Defaults: the bundled model, the database's preparation
/// ([`Db::prep_config`]), one prepare worker per
/// two CPUs, one inference thread per CPU, batches of 8, no re-embedding,
/// no refresh, new products imported, no progress callback.
pub struct ImportOptions<'a> {
    model: Option<Arc<Model>>,
    prep: Option<PrepConfig>,
    workers: usize,
    inference: usize,
    batch: usize,
    reembed: bool,
    refresh: bool,
    present_only: bool,
    progress: Option<ProgressFn<'a>>,
    stop: Option<&'a AtomicBool>,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ImportOptions {
            model: None,
            prep: None,
            workers: (cpus / 2).clamp(1, MAX_THREADS),
            inference: cpus.min(MAX_THREADS),
            batch: 8,
            reembed: false,
            refresh: false,
            present_only: false,
            progress: None,
            stop: None,
        }
    }
}

impl std::fmt::Debug for ImportOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("model", &self.model.as_ref().map(|m| m.fingerprint()))
            .field("prep", &self.prep)
            .field("workers", &self.workers)
            .field("inference", &self.inference)
            .field("batch", &self.batch)
            .field("reembed", &self.reembed)
            .field("refresh", &self.refresh)
            .field("present_only", &self.present_only)
            .field("progress", &self.progress.is_some())
            .field("stop", &self.stop.is_some())
            .finish()
    }
}

impl<'a> ImportOptions<'a> {
    /// Defaults (see the type).
    pub fn new() -> Self {
        Self::default()
    }

    /// The model to use instead of the bundled one.
    pub fn model(mut self, model: Arc<Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// Image preparation. Default: the database's ([`Db::prep_config`]).
    /// A database that is empty, or has none stored, records this one for
    /// its later images; one that holds products and another preparation
    /// keeps its record, these images are prepared with this one, and the
    /// import logs a warning (their vectors will not compare well).
    pub fn prep(mut self, prep: PrepConfig) -> Self {
        self.prep = Some(prep);
        self
    }

    /// Number of decode-and-prepare workers (1..=256).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.clamp(1, MAX_THREADS);
        self
    }

    /// Number of inference threads (1..=256), each running its own
    /// batches on the shared model. Inference is the costly stage (about
    /// 40× decode and preparation), so the default is one per CPU.
    pub fn inference_threads(mut self, threads: usize) -> Self {
        self.inference = threads.clamp(1, MAX_THREADS);
        self
    }

    /// Images an inference thread takes from the queue at a time (1..=64).
    /// The model itself runs one image per tract call, its fastest mode, so
    /// this barely changes throughput.
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, 64);
        self
    }

    /// Re-embed: switch the database to this model (even if it holds another
    /// model's vectors; [`Db::adopt_model`], at the first image the model
    /// reads, so that a run whose every image fails changes nothing, or at
    /// once when the source lists products already of this model) and replace
    /// every product of the source whose stored [`ATTR_MODEL`] is not this
    /// model's, keeping its stored attributes. Products already from this
    /// model are skipped, so an interrupted re-embedding resumes too.
    /// Stored products the source does not list stay of the old model, left
    /// out of searches of the model spaces until a later run re-embeds them
    /// (`vitrine import --reembed` reports them).
    pub fn reembed(mut self, yes: bool) -> Self {
        self.reembed = yes;
        self
    }

    /// Refresh: products of the source already stored are run through the
    /// model again from their image (a photo that changed), keeping their
    /// stored attributes; when any was replaced, the user tags are learned
    /// again ([`Db::relearn_tags`]). Unlike a plain import, nothing listed is
    /// skipped, so an interrupted refresh redoes everything when run again.
    pub fn refresh(mut self, yes: bool) -> Self {
        self.refresh = yes;
        self
    }

    /// Only products already stored: an id that is not stored is a failure
    /// ([`IngestError::NotStored`]), never a new product. For a refresh of
    /// a list of products whose photos changed, which must not bring back
    /// one deleted since (in stock, without its catalog attributes).
    pub fn present_only(mut self, yes: bool) -> Self {
        self.present_only = yes;
        self
    }

    /// Called on the importing thread after every item.
    pub fn progress(mut self, f: impl FnMut(&ImportProgress) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Stops the import soon after `flag` is set (from another thread, a
    /// signal handler, a service shutting down): the items stored stay,
    /// those in flight are dropped, no other file is read, and the report
    /// says [`ImportReport::stopped`]. Each product is one atomic write, so
    /// the database is whole, and running the import again resumes it.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use vitrine::ImportOptions;
    ///
    /// static STOP: AtomicBool = AtomicBool::new(false);
    /// let options = ImportOptions::new().stop_when(&STOP);
    /// // ... elsewhere: STOP.store(true, Ordering::Relaxed);
    /// # drop(options);
    /// ```
    pub fn stop_when(mut self, flag: &'a AtomicBool) -> Self {
        self.stop = Some(flag);
        self
    }
}

struct Job {
    /// Its place among the jobs: products are written in source order.
    seq: usize,
    item: ImportItem,
    /// Whether it replaces a stored product's model outputs.
    replace: bool,
    /// The stored product's document when the import listed it: another
    /// product stored under the id since (deleted and stored again) is not
    /// the one to replace.
    doc: Option<u64>,
    /// A re-embedding's replacement (not a refresh): not wanted once the
    /// product is of the model (stored again meanwhile, from a newer photo).
    only_of_another_model: bool,
    /// The product's measured colour (set by the prepare worker).
    colour: Option<[f32; 3]>,
}

/// What `store_output` did.
enum Stored {
    Written {
        replaced: bool,
    },
    /// Stored meanwhile by another writer as the import would leave it.
    Skipped,
}

enum Prepared {
    Ok(Job, PreparedImage),
    Failed(Job, IngestError),
}

enum Inferred {
    Ok(Job, Box<ModelOutput>),
    Failed(Job, IngestError),
}

impl Inferred {
    fn seq(&self) -> usize {
        match self {
            Inferred::Ok(job, _) | Inferred::Failed(job, _) => job.seq,
        }
    }
}

impl Db {
    /// Imports images in bulk: N prepare workers → batched inference (M
    /// threads) → one writer (the calling thread), connected by bounded channels, so memory
    /// stays flat whatever the number of images: each inference thread holds
    /// up to a batch of prepared images (147 KB each at the bundled model's
    /// size, so 8 threads of 32 hold about 40 MB). Products are stored in
    /// source order (the feeder runs at most `4 × (workers + inference
    /// threads × batch)` items, and at least 64, ahead of the writer). Items whose id is already
    /// stored are skipped (so an interrupted import resumes where it stopped),
    /// but for products still of a previous model (a re-embedding stopped
    /// before it reached them): those are re-embedded, keeping their
    /// attributes, as [`ImportOptions::reembed`] would;
    /// a bad item is recorded in [`ImportReport::failures`] with its reason and
    /// the import goes on. Fails as a whole only when the model cannot be
    /// loaded, does not fit the database (see [`Db::check_model`]; also when
    /// another thread switches the database's model during the import), the
    /// source cannot be listed, or storage stops taking writes (a full disk:
    /// every later item would fail). What was stored before such a failure
    /// stays, and a new import resumes after it; the items that failed
    /// before it are not reported.
    pub fn import(
        &self,
        source: ImportSource,
        options: ImportOptions<'_>,
    ) -> Result<ImportReport, IngestError> {
        let started = Instant::now();
        let ImportOptions {
            model,
            prep,
            workers,
            inference,
            batch,
            reembed,
            refresh,
            present_only,
            mut progress,
            stop,
        } = options;
        let model = match model {
            Some(m) => m,
            None => Model::bundled()?,
        };
        // The source is listed first: a wrong path or an empty folder
        // changes nothing (not even the model a re-embed adopts).
        let from_dir = matches!(source, ImportSource::Dir(_));
        let (mut items, not_utf8) = source.into_items()?;
        if from_dir {
            self.keep_spaced_ids(&mut items);
        }
        if items.is_empty() {
            // Nothing to store (a CSV whose every row was bad, say):
            // nothing changes, not even the model a re-embed adopts.
            let mut report = ImportReport::default();
            if !not_utf8.is_empty() {
                report_unreadable_names(&mut report, not_utf8);
                if let Some(f) = progress.as_mut() {
                    f(&report.progress);
                }
            }
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        // A re-embedding switches the database at its first good image, or
        // at once when the source lists products already of the model
        // (import_items).
        if reembed {
            self.check_model_spaces(&model)?;
        } else {
            self.check_model(&model)?;
        }
        // An import into an empty database records its preparation before
        // it starts, so that an interrupted first import resumes with it;
        // later ones default to it.
        let stored = self.stored_prep()?;
        let none_stored = stored.is_none();
        let empty = self.is_empty();
        let prep = match (prep, stored) {
            (None, Some(stored)) => stored.config(),
            (None, None) => self.prep_config()?,
            // Only the pixel aspect: that is how sources whose photos were
            // squashed differently are made comparable, not a mistake.
            (Some(p), Some(stored))
                if !empty
                    && StoredPrep::of(&p) != stored
                    && StoredPrep::of(
                        &p.clone().pixel_aspect(stored.config().get_pixel_aspect()),
                    ) == stored =>
            {
                tracing::info!(
                    "these images are prepared with pixel aspect {}, the database's default is \
                     {}: a later refresh or re-embedding of these products needs the same \
                     pixel aspect",
                    p.get_pixel_aspect(),
                    stored.config().get_pixel_aspect()
                );
                p
            }
            (Some(p), Some(stored)) if !empty && StoredPrep::of(&p) != stored => {
                let stored = stored.config();
                tracing::warn!(
                    "these images are prepared with pixel aspect {}, crop {}, illumination {:?}, \
                     area shrink {}, but the database's are with {}, {}, {:?}, {} \
                     (Db::prep_config): their vectors will not be comparable",
                    p.get_pixel_aspect(),
                    p.get_crop(),
                    p.get_illumination(),
                    p.get_area_shrink(),
                    stored.get_pixel_aspect(),
                    stored.get_crop(),
                    stored.get_illumination(),
                    stored.get_area_shrink()
                );
                p
            }
            (Some(p), _) => p,
        };
        // The record this import replaced, when it made its own.
        let mut replaced_prep = None;
        if (empty || none_stored) && !items.is_empty() {
            let _guard = self.side_write_lock();
            if self.is_empty() || self.stored_prep()?.is_none() {
                replaced_prep = Some(self.stored_prep()?);
                self.set_prep_config(&prep)?;
            }
        }
        let result = self.import_items(
            items,
            &model,
            &prep,
            reembed,
            refresh,
            present_only,
            workers,
            inference,
            batch,
            &mut progress,
            stop,
        );
        // An import that stored nothing (every item failed) leaves the
        // record as it found it: it must not decide how later imports,
        // given no preparation, prepare the catalog.
        let nothing = match &result {
            Ok(r) => r.progress.stored + r.progress.replaced == 0,
            // Some may have been stored before it failed.
            Err(_) => !self.any_product_has(ATTR_MODEL),
        };
        match &replaced_prep {
            Some(previous) if nothing => self.take_back_prep(&prep, previous.as_ref()),
            // Another writer's record may have been taken back since this
            // import saw it.
            None if !nothing => self.record_prep_if_none(&prep),
            _ => {}
        }
        let mut report = result?;
        // (Stopped: learned at the end of the run that finishes, as after a
        // kill.)
        // (A re-embedding that switched nothing, every image failing, has
        // nothing to learn again.)
        let switched = self.model_fingerprint().as_deref() == Some(model.fingerprint());
        // (A plain import replaces products only of another model: it
        // finished a stopped re-embedding's work.)
        if !report.stopped && (reembed && switched || report.progress.replaced > 0) {
            // A mean taken while old and new vectors were mixed is stale,
            // and user tags are directions in the old model's space (or of
            // the old photos): both are learned again from the new vectors,
            // at the end of every re-embedding run (a rerun of one killed
            // before this point has nothing left to store, and still gets
            // here) and of a refresh that replaced products. The products are
            // stored already: a failure here is logged, not the import's.
            if let Err(e) = self.relearn_tags() {
                tracing::warn!(error = %e, "user tags not learned again");
            }
        }
        // Counted last, and shown to the progress callback too, so that
        // its last call is the report's counts.
        if !not_utf8.is_empty() {
            report_unreadable_names(&mut report, not_utf8);
            if let Some(f) = progress.as_mut() {
                f(&report.progress);
            }
        }
        report.elapsed = started.elapsed();
        info!(
            stored = report.progress.stored,
            skipped = report.progress.skipped,
            failed = report.progress.failed,
            secs = report.elapsed.as_secs_f64(),
            "import finished"
        );
        Ok(report)
    }

    /// A folder's file whose stem has spaces at its ends was stored under
    /// that stem by older builds: its product keeps that id (not a second
    /// product under the trimmed one).
    fn keep_spaced_ids(&self, items: &mut [ImportItem]) {
        for item in items {
            let Some(stem) = item.path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            // Whether or not the trimmed id is stored too (an older build
            // stored `shirt.jpg` and `shirt .jpg` as two products).
            if stem != item.id && matches!(self.get(stem), Ok(Some(_))) {
                item.id = stem.to_string();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn import_items(
        &self,
        items: Vec<ImportItem>,
        model: &Arc<Model>,
        prep: &PrepConfig,
        reembed: bool,
        refresh: bool,
        present_only: bool,
        workers: usize,
        inference: usize,
        batch: usize,
        progress: &mut Option<ProgressFn<'_>>,
        stop: Option<&AtomicBool>,
    ) -> Result<ImportReport, IngestError> {
        let stopping = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
        let mut report = ImportReport::default();
        report.progress.total = items.len();

        // Resume and duplicates: decided up front, on ids only.
        let mut seen = HashSet::with_capacity(items.len());
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            if !seen.insert(item.id.clone()) {
                report.failures.push(ImportFailure {
                    error: IngestError::DuplicateId {
                        id: item.id.clone(),
                    },
                    id: item.id,
                    path: item.path,
                });
                continue;
            }
            let existing = match self.get_with_doc(&item.id) {
                Ok(p) => p,
                Err(e) => {
                    report.failures.push(ImportFailure {
                        id: item.id,
                        path: item.path,
                        error: e.into(),
                    });
                    continue;
                }
            };
            match existing {
                None if present_only => report.failures.push(ImportFailure {
                    error: IngestError::NotStored {
                        id: item.id.clone(),
                    },
                    id: item.id,
                    path: item.path,
                }),
                None => jobs.push(Job {
                    seq: jobs.len(),
                    item,
                    replace: false,
                    doc: None,
                    only_of_another_model: false,
                    colour: None,
                }),
                // Of another model: a re-embedding replaces it, and so does
                // any import once the database is of this model (one a
                // stopped re-embedding left behind would stay out of every
                // search, counted as skipped).
                Some((p, doc))
                    if refresh
                        || match p.attributes.extra.get(ATTR_MODEL) {
                            Some(m) => m != model.fingerprint(),
                            None => reembed,
                        } =>
                {
                    jobs.push(Job {
                        seq: jobs.len(),
                        // A refresh replaces whatever stands under the id.
                        doc: (!refresh).then_some(doc),
                        item,
                        replace: true,
                        only_of_another_model: !refresh,
                        colour: None,
                    })
                }
                Some(_) => report.progress.skipped += 1,
            }
        }
        drop(seen);
        report.progress.failed = report.failures.len();
        // A re-embedding adopts the model at its first good image; when
        // the source lists products already of it (a switch back, or a run
        // after one killed mid-switch), now: no image may be inferred, and
        // the database must not stay of a model its products are not of.
        let mut adopted = !reembed;
        if reembed && report.progress.skipped > 0 {
            self.adopt_model(model)?;
            adopted = true;
        }
        info!(
            total = report.progress.total,
            todo = jobs.len(),
            skipped = report.progress.skipped,
            workers,
            inference,
            batch,
            "import started"
        );
        if let Some(f) = progress.as_mut() {
            f(&report.progress);
        }

        let todo = jobs.len();
        let mut handled = 0usize;
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        // Prepared images (147 KB each) wait for inference, the slow stage:
        // a batch's worth, and two per thread, keep every thread fed; more
        // would only hold memory (gigabytes at 256 threads of 64).
        let (prep_tx, prep_rx) = bounded::<Prepared>(batch + 2 * inference);
        let (out_tx, out_rx) = bounded::<Inferred>(batch * 2 * inference);
        // The writer stores in source order: the feeder is at most `window`
        // jobs ahead of it (one credit per job, given back as each is
        // stored), so results waiting behind a slow item stay bounded.
        let window = (4 * (workers + inference * batch)).max(64);
        let (credit_tx, credit_rx) = bounded::<()>(window);
        for _ in 0..window {
            let _ = credit_tx.try_send(());
        }
        // Threads the system refuses: fewer do the work; none of a kind
        // ends the import with an error (returning drops the channels, so
        // the threads already started stop).
        let mut fatal = None;
        let refused = std::thread::scope(|scope| {
            // Owned here: returning early drops it, so a feeder waiting for
            // a credit stops (the scope waits for it).
            let credit_tx = credit_tx;
            let thread = |name: &str| std::thread::Builder::new().name(format!("vitrine-{name}"));
            let feeder = thread("import").spawn_scoped(scope, move || {
                for job in jobs {
                    if stopping() || credit_rx.recv().is_err() || job_tx.send(job).is_err() {
                        break;
                    }
                }
            });
            if let Err(e) = feeder {
                return Some(e);
            }
            for started in 0..workers {
                let rx = job_rx.clone();
                let tx = prep_tx.clone();
                let prep = &prep;
                if let Err(e) = thread("prepare")
                    .spawn_scoped(scope, move || prepare_worker(rx, tx, prep, stopping))
                {
                    if started == 0 {
                        return Some(e);
                    }
                    tracing::warn!(started, error = %e, "fewer prepare threads than asked");
                    break;
                }
            }
            drop(job_rx);
            drop(prep_tx);
            let model = &model;
            for started in 0..inference {
                let rx = prep_rx.clone();
                let tx = out_tx.clone();
                if let Err(e) = thread("inference")
                    .spawn_scoped(scope, move || inference_worker(rx, tx, model, batch))
                {
                    if started == 0 {
                        return Some(e);
                    }
                    tracing::warn!(started, error = %e, "fewer inference threads than asked");
                    break;
                }
            }
            drop(prep_rx);
            drop(out_tx);

            // Written in source order, whatever order the threads finish
            // in: two imports of one folder give the same products the
            // same internal order (graph, ties, outfit snapshots).
            let mut handle = |inferred: Inferred| -> bool {
                handled += 1;
                let (job, result) = match inferred {
                    Inferred::Ok(job, out) => {
                        if !adopted {
                            if let Err(e) = self.adopt_model(model) {
                                fatal = Some(e);
                                return false;
                            }
                            adopted = true;
                        }
                        let r = self.store_output(model, &job, &out, reembed || refresh, refresh);
                        (job, r)
                    }
                    Inferred::Failed(job, e) => (job, Err(e)),
                };
                match result {
                    Ok(Stored::Written { replaced }) => {
                        report.progress.stored += 1;
                        report.progress.replaced += usize::from(replaced);
                    }
                    Ok(Stored::Skipped) => report.progress.skipped += 1,
                    // Every later item would fail the same way: stop
                    // (leaving the loop drops the channel, so the workers
                    // stop too) instead of decoding the rest for nothing.
                    Err(error) if ends_import(&error, self.writes_failed()) => {
                        fatal = Some(error);
                        return false;
                    }
                    Err(error) => {
                        debug!(id = %job.item.id, %error, "import item failed");
                        report.progress.failed += 1;
                        report.failures.push(ImportFailure {
                            id: job.item.id,
                            path: job.item.path,
                            error,
                        });
                    }
                }
                if let Some(f) = progress.as_mut() {
                    f(&report.progress);
                }
                true
            };
            let (mut waiting, mut next) = (BTreeMap::new(), 0);
            for inferred in out_rx {
                waiting.insert(inferred.seq(), inferred);
                while let Some(inferred) = waiting.remove(&next) {
                    next += 1;
                    if !handle(inferred) {
                        return None;
                    }
                    if stopping() {
                        // Leaving drops the channels: every stage stops.
                        return None;
                    }
                    let _ = credit_tx.try_send(());
                }
            }
            // (Every job arrives, a panic in a worker as its failure; the
            // loop above has handled them all, unless the channel closed
            // early: a stop closes it from the prepare threads, and what
            // waits is dropped.)
            if stopping() {
                return None;
            }
            for (_, inferred) in waiting {
                if !handle(inferred) {
                    break;
                }
            }
            None
        });
        if let Some(e) = refused {
            return Err(IngestError::Threads(e));
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        report.stopped = handled < todo && stopping();
        Ok(report)
    }

    fn store_output(
        &self,
        model: &Model,
        job: &Job,
        out: &ModelOutput,
        replacing: bool,
        refresh: bool,
    ) -> Result<Stored, IngestError> {
        // Where the image came from, for contact sheets and re-imports.
        let source = std::path::absolute(&job.item.path).unwrap_or_else(|_| job.item.path.clone());
        let with_source = |mut a: Attributes| {
            a.extra.insert(
                crate::ATTR_SOURCE.into(),
                source.to_string_lossy().into_owned(),
            );
            a
        };
        // The attributes as they are now, not as the import listed them:
        // an edit made during a long import is kept.
        let replace = |doc: Option<u64>, only_of_another_model: bool| {
            let of_another_model = |a: &Attributes| {
                a.extra.get(ATTR_MODEL).map(String::as_str) != Some(model.fingerprint())
            };
            let done = self.write_outputs_of(model, || {
                self.rewrite(
                    &job.item.id,
                    doc,
                    |a| !only_of_another_model || of_another_model(a),
                    |mut attrs| {
                        // A category the old image's model output filled
                        // in follows the new output.
                        super::forget_model_category(&mut attrs);
                        let stored = self.image_record(model, out, with_source(attrs), job.colour);
                        (stored.attributes, stored.vectors)
                    },
                )
            })??;
            match done {
                crate::db::Rewrite::Done => Ok(Stored::Written { replaced: true }),
                crate::db::Rewrite::Unwanted => Ok(Stored::Skipped),
                // Deleted while the import ran: not brought back.
                crate::db::Rewrite::Gone => Err(IngestError::Db(crate::Error::NotFound {
                    id: job.item.id.clone(),
                })),
                crate::db::Rewrite::Another => Err(IngestError::StoredMeanwhile {
                    id: job.item.id.clone(),
                }),
            }
        };
        if job.replace {
            return replace(job.doc, job.only_of_another_model);
        }
        // As an image insert does: a category an earlier model filled in
        // (the caller passing stored attributes back, into a new database)
        // follows this model's output, not frozen as given.
        let mut attrs = job.item.attributes.clone();
        super::forget_model_category(&mut attrs);
        let stored = self.image_record(model, out, with_source(attrs), job.colour);
        let inserted = self.write_outputs_of(model, || {
            self.insert(&job.item.id, stored.attributes, stored.vectors)
        })?;
        match inserted {
            Ok(()) => Ok(Stored::Written { replaced: false }),
            // Stored by another writer since the import listed the id: as
            // if it had been there then (skipped; a refresh replaces it, a
            // re-embedding if it is of another model).
            Err(crate::Error::AlreadyExists { .. }) if replacing => replace(None, !refresh),
            Err(crate::Error::AlreadyExists { .. }) => Ok(Stored::Skipped),
            Err(e) => Err(e.into()),
        }
    }
}

/// `work`, with a panic in it (a bug) as this item's failure: every job
/// must reach the in-order writer, or the jobs after it would wait for it
/// for ever.
fn caught<T>(work: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(IngestError::Internal { reason })
    })
}

fn prepare_worker(
    rx: Receiver<Job>,
    tx: Sender<Prepared>,
    prep: &PrepConfig,
    stopping: impl Fn() -> bool,
) {
    for job in rx {
        // Queued jobs are dropped, not read: a stop reads no other file.
        if stopping() {
            return;
        }
        let prepared = caught(|| {
            let bytes = prep
                .get_limits()
                .read_file(&job.item.path)
                .map_err(|source| IngestError::Io {
                    path: job.item.path.clone(),
                    source,
                })?;
            let p = prepare_image(&bytes, prep)?;
            Ok((p.dominant_colour(), p))
        });
        let msg = match prepared {
            Ok((colour, p)) => Prepared::Ok(Job { colour, ..job }, p),
            Err(e) => Prepared::Failed(job, e),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

fn inference_worker(rx: Receiver<Prepared>, tx: Sender<Inferred>, model: &Model, batch: usize) {
    let mut jobs: Vec<Job> = Vec::with_capacity(batch);
    let mut images: Vec<PreparedImage> = Vec::with_capacity(batch);
    let mut open = true;
    while open {
        // Block for the first image of a batch, then fill it while images
        // keep coming (a short wait, so a slow tail does not stall a batch).
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut pending = Some(first);
        loop {
            if let Some(msg) = pending.take() {
                match msg {
                    Prepared::Ok(job, image) => {
                        jobs.push(job);
                        images.push(image);
                    }
                    Prepared::Failed(job, e) => {
                        if tx.send(Inferred::Failed(job, e)).is_err() {
                            return;
                        }
                    }
                }
            }
            if images.len() >= batch {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => pending = Some(m),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        // Each image its own result: one that fails does not fail the batch.
        for (job, image) in jobs.drain(..).zip(images.drain(..)) {
            let msg = match caught(|| Ok(model.infer_one(&image)?)) {
                Ok(out) => Inferred::Ok(job, Box::new(out)),
                Err(e) => Inferred::Failed(job, e),
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
}

/// Whether every later item would fail as `e` did: the database's model
/// changed, or a write failed while storage takes none (not an item's own
/// failure, a missing image, met after another write failed).
fn ends_import(e: &IngestError, writes_failed: bool) -> bool {
    match e {
        IngestError::ModelMismatch { .. } => true,
        IngestError::Db(crate::Error::Storage(_)) => writes_failed,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a worker's work is that item's failure, not a job lost
    /// (the in-order writer would wait for it for ever).
    #[test]
    fn a_panic_in_a_worker_is_the_items_failure() {
        let r: Result<(), _> = caught(|| panic!("boom {}", 7));
        assert!(
            matches!(r, Err(IngestError::Internal { ref reason }) if reason == "boom 7"),
            "{r:?}"
        );
        let r: Result<(), _> = caught(|| panic!("plain"));
        assert!(
            matches!(r, Err(IngestError::Internal { ref reason }) if reason == "plain"),
            "{r:?}"
        );
        assert_eq!(caught(|| Ok(3)).unwrap(), 3);
    }

    #[test]
    fn a_folder_lists_image_files_by_name_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.JPG",
            "a.png",
            "c.tiff",
            "d.gif",
            "e.bmp",
            "notes.txt",
            ".hidden.jpg",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.jpg")).unwrap();
        // Linux file systems take any bytes; macOS's refuse this name.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::ffi::OsStrExt;
            let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let items = ImportSource::Dir(dir.path().to_path_buf()).items().unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        // `sub.jpg` is listed, to fail at import as "not a regular file".
        assert_eq!(ids, ["a", "b", "c", "d", "e", "sub"]);
    }
}
