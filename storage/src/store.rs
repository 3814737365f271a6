//! The sled-backed store and its typed keyspaces.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{self, Record};
use crate::error::{display_key, Error, Result};
use crate::failpoint::failpoint;

/// Newest store format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the raw `u32` little-endian format version, in sled's default tree
/// (not the `"meta"` keyspace, so iterating keyspaces never meets it).
const FORMAT_VERSION_KEY: &[u8] = b"vitrine.format_version";
const DEFAULT_TREE: &str = "__sled__default";

/// When an acknowledged write becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Each write is flushed and fsynced before it returns: acknowledged ==
    /// durable, through a power loss.
    #[default]
    Immediate,
    /// Writes are buffered; sled writes them to its log every `interval`
    /// (in whole milliseconds, rounded down, at least 1 ms, plus the time its
    /// flusher spends syncing; a flusher stopped by an error, which sled
    /// logs, leaves them until its buffer fills), which a crash of the
    /// process does not undo, and [`Store::flush`] fsyncs them, which a
    /// power loss does not undo either: acknowledged == visible.
    Periodic {
        /// Time between background flushes.
        interval: Duration,
    },
}

/// Options for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// When writes become durable. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// Size of sled's page cache in bytes. Default: 64 MiB.
    pub cache_capacity_bytes: u64,
    /// Open a log with a segment whose header fails its checksum, which
    /// sled skips, losing what it holds: for a repair, which keeps what is
    /// left. Default: `false` (refused as [`Error::StoreDamaged`]).
    pub accept_damaged_segments: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Immediate,
            cache_capacity_bytes: 64 << 20,
            accept_damaged_segments: false,
        }
    }
}

/// An open store: one sled database under `dir/sled`.
///
/// Cheap to clone (sled handles are reference counted); `Send + Sync`.
/// Only one process may have a store open at a time.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    dir: Arc<PathBuf>,
    durability: Durability,
    io: Arc<IoState>,
}

/// sled's folder, and whether a write or flush of this store failed with
/// an I/O error (disk full, read-only file system); shared by the store and
/// its keyspaces.
struct IoState {
    sled_dir: PathBuf,
    /// sled's log file, for fsync (see [`IoState::flush_durably`]).
    log: std::fs::File,
    /// Blob files already fsynced (names in `sled/blobs`).
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
    failed: AtomicBool,
    leaked: AtomicBool,
    /// Every write holds it shared; [`Store::pause_writes`] holds it
    /// exclusively, so that sled's files can be copied whole.
    writes: std::sync::RwLock<()>,
}

impl IoState {
    /// Admits a write or flush: refused once one has failed with an I/O
    /// error, because sled is then in an unknown state (a later flush can
    /// hang) and only a new process recovers its files.
    fn write_guard(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::FailedEarlier {
                path: self.sled_dir.clone(),
            });
        }
        Ok(self
            .writes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// While it lives, no write or flush reaches the store: they wait (see
/// [`Store::pause_writes`]).
#[must_use = "writes resume as soon as the guard is dropped"]
pub struct WritesPaused<'a> {
    _guard: std::sync::RwLockWriteGuard<'a, ()>,
}

impl IoState {
    /// sled's result of a read as ours. A failed read (a lost blob file, a
    /// damaged sector) leaves no write unfinished, so it does not mark the
    /// store as [`IoState::check`] does.
    fn read<T>(&self, r: sled::Result<T>) -> Result<T> {
        r.map_err(|e| sled_error(&self.sled_dir, e))
    }

    /// sled's flush, made durable. sled 0.34 writes its log with
    /// `sync_file_range` on Linux, which saves neither the file's new
    /// length nor the disk's write cache, and never syncs the files it
    /// writes large records to (`blobs/`): a power loss could drop writes
    /// it had acknowledged. An fsync error marks the store like a failed
    /// write (the kernel may have dropped the unwritten pages).
    fn flush_durably(&self, flush: impl FnOnce() -> sled::Result<usize>) -> Result<()> {
        let fail = |path: &Path, source| {
            self.failed.store(true, Ordering::SeqCst);
            Error::WriteFailed {
                path: path.to_path_buf(),
                source,
            }
        };
        // Listed before the flush: a blob there then belongs to a write the
        // flush waits for, so it is whole when synced below (one listed
        // after could be another thread's, half written).
        let blobs = self.sled_dir.join("blobs");
        let list = || -> Result<std::collections::HashSet<std::ffi::OsString>> {
            match std::fs::read_dir(&blobs) {
                Ok(entries) => entries
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<_>>(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
                Err(e) => Err(e),
            }
            .map_err(|e| fail(&blobs, e))
        };
        let before = list()?;
        self.check(flush())?;
        // Blobs that appeared meanwhile (another thread's) may hold a page
        // this flush's log points to: synced too, but not marked, since
        // one may have been half written when synced.
        let after = list()?;
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget blobs sled has removed, so the set stays small.
        synced.retain(|name| after.contains(name));
        let mut new = false;
        for name in before.iter().chain(after.difference(&before)) {
            if synced.contains(name) {
                continue;
            }
            let path = blobs.join(name);
            match std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // sled removed it meanwhile (its record was replaced).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(&path, e)),
            }
            if before.contains(name) {
                synced.insert(name.clone());
            }
            new = true;
        }
        if new {
            sync_dir(&blobs).map_err(|e| fail(&blobs, e))?;
        }
        self.log
            .sync_data()
            .map_err(|e| fail(&self.sled_dir.join("db"), e))
    }

    /// sled's result as ours: an I/O error names sled's folder and marks
    /// the store (see [`Store::io_failed`]).
    fn check<T>(&self, r: sled::Result<T>) -> Result<T> {
        r.map_err(|e| match e {
            sled::Error::Io(source) => {
                self.failed.store(true, Ordering::SeqCst);
                Error::WriteFailed {
                    path: self.sled_dir.clone(),
                    source: readable(source),
                }
            }
            e => sled_error(&self.sled_dir, e),
        })
    }
}

/// Seek keys a salvage tries between the readable ends of a damaged tree.
const GAP_PROBES: u64 = 256;

/// `n - 1` keys spread evenly between `lo` and `hi` (the end of the key
/// space when `None`), reading keys as big-endian numbers over the eight
/// bytes after their common prefix.
fn probes(lo: &[u8], hi: Option<&[u8]>, n: u64) -> Vec<Vec<u8>> {
    let hi = hi.unwrap_or(&[]);
    let common = if hi.is_empty() {
        0
    } else {
        lo.iter().zip(hi).take_while(|(a, b)| a == b).count()
    };
    let number = |k: &[u8]| -> u64 {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(k.iter().skip(common)) {
            *d = *s;
        }
        u64::from_be_bytes(b)
    };
    let a = number(lo);
    let b = if hi.is_empty() { u64::MAX } else { number(hi) };
    if b <= a {
        return Vec::new();
    }
    (1..n)
        .map(|i| {
            let x = a + ((u128::from(b - a) * u128::from(i)) / u128::from(n)) as u64;
            let mut key = lo[..common].to_vec();
            key.extend_from_slice(&x.to_be_bytes());
            key
        })
        .collect()
}

/// Seek keys just past `lo` at every scale: `lo[..j] + [b]` for each
/// position `j` and each byte `b > lo[j]` (for keys of few distinct bytes,
/// such as digits, evenly spread probes mostly miss them).
fn successor_probes(lo: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for j in (0..lo.len()).rev() {
        for b in lo[j]..u8::MAX {
            let mut key = lo[..j].to_vec();
            key.push(b + 1);
            out.push(key);
        }
    }
    out
}

/// Seek keys just below `hi` at every scale: `hi[..j] + [b]` for each
/// position `j` and each byte `b < hi[j]`.
fn predecessor_probes(hi: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for j in 0..hi.len() {
        for b in 0..hi[j] {
            let mut key = hi[..j].to_vec();
            key.push(b);
            out.push(key);
        }
    }
    out
}

/// What [`Store::salvage_into`] copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Salvaged {
    /// Records copied, in all keyspaces.
    pub records: usize,
    /// Keyspaces (sled trees) in which a page could not be read.
    pub damaged_keyspaces: Vec<String>,
}

/// sled folders whose handles this process keeps after an I/O error.
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Drop for Store {
    fn drop(&mut self) {
        // After a failed write, sled's last handle, when dropped, waits
        // forever for its log buffers to become stable (seen on a full
        // disk). What was made durable stays so (with the default
        // `Immediate` durability, everything acknowledged), so keep sled's
        // handles alive instead: the process can end, and the next process
        // recovers from the log.
        if self.io.failed.load(Ordering::SeqCst) && !self.io.leaked.swap(true, Ordering::SeqCst) {
            tracing::warn!(dir = %self.dir.display(), "a write failed with an I/O error; sled is not closed cleanly (the next process recovers)");
            HELD.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.io.sled_dir.clone());
            std::mem::forget(self.db.clone());
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Attaches the path to sled I/O errors so they name the file.
fn sled_error(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(source) => Error::io(path, readable(source)),
        // A page that fails sled's checks while the store is open.
        e @ sled::Error::Corruption { .. } => Error::StoreDamaged {
            path: path.to_path_buf(),
            reason: damage_reason(&e),
        },
        other => Error::Sled(other),
    }
}

/// sled hands out copies of a stored error by formatting the original
/// with `{:?}` (`Os { code: 28, kind: StorageFull, … }`); this turns such a
/// copy back into the OS error it describes.
fn readable(e: std::io::Error) -> std::io::Error {
    let code = e
        .to_string()
        .strip_prefix("Os { code: ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|c| c.trim().parse::<i32>().ok());
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => e,
    }
}

/// On open, everything but I/O means sled's own files are unreadable
/// (a damaged `conf` reads as "created by a sled older than 0.29").
/// sled 0.34 writes its snapshot to `snap.<lsn>.generating`, then renames
/// it; but on open it reads the newest `snap.*` file, unfinished ones
/// included. An open that failed on a full disk leaves an empty one behind,
/// and every later open then fails as "corrupted". Such a file (one that
/// fails sled's own length and CRC check) holds nothing: it is moved out of
/// sled's folder, to `<dir>/sled-snap.<lsn>.generating.unfinished`.
fn set_aside_unfinished_snapshots(dir: &Path, sled_dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(sled_dir) else {
        return Ok(0);
    };
    let mut moved = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        let path = entry.path();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let valid = bytes.len() > 12 && {
            let (body, tail) = bytes.split_at(bytes.len() - 12);
            let crc = u32::from_le_bytes([tail[8], tail[9], tail[10], tail[11]]);
            crc32fast::hash(body) == crc
        };
        if valid {
            continue;
        }
        let aside = dir.join(format!("sled-{name}.unfinished"));
        std::fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
        tracing::warn!(file = %path.display(), moved_to = %aside.display(), "set aside an unfinished sled snapshot");
        moved += 1;
    }
    Ok(moved)
}

/// Whether this process keeps the sled folder's handles after an I/O error.
fn held(sled_dir: &Path) -> bool {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|p| p == sled_dir)
}

/// sled's description of damage, without its backtrace placeholder or its
/// request to report a bug (a damaged file is not one).
/// What sled reported, and what to do about it.
fn damage_reason(e: &sled::Error) -> String {
    format!(
        "{} (`vitrine repair` copies the folder, then keeps what sled's log holds)",
        damage_what(e)
    )
}

fn damage_what(e: &sled::Error) -> String {
    match e {
        sled::Error::Corruption { at, .. } => match at {
            Some(sled::DiskPtr::Inline(offset)) => {
                format!("corrupt data in sled's log at offset {offset}")
            }
            // (A blob's log offset is 0 when sled reads the blob itself.)
            Some(sled::DiskPtr::Blob(_, blob)) => {
                format!("corrupt data in sled's blob file blobs/{blob}")
            }
            None => "corrupt data in sled's files".to_owned(),
        },
        sled::Error::ReportableBug(m) | sled::Error::Unsupported(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Whether sled failed to open because another process holds its lock.
/// sled 0.34 says so only in a message, which holds the lock call's error
/// as `Debug`: any `flock` failure reads "could not acquire lock", and only
/// `WouldBlock` means busy (an NFS mount without a lock manager gives
/// `ENOLCK`, which no waiting or closing cures).
fn lock_busy(e: &std::io::Error) -> bool {
    let m = e.to_string();
    m.contains("could not acquire lock") && (m.contains("WouldBlock") || cfg!(windows))
}

/// sled's default segment size, which its `conf` file records.
const SLED_SEGMENT: u64 = 512 * 1024;
/// The length of a segment header in sled's log: a CRC, then two LSNs.
const SLED_SEGMENT_HEADER: usize = 20;

/// Checks sled's files before sled opens them. sled's recovery writes to
/// its log as it reads it, and trusts what it cannot read to be garbage:
/// - a file it may not read (a blob of another owner) reads as damage,
///   and the log after it is zeroed;
/// - a segment whose header fails its checksum is skipped as free, and
///   later written over: what it holds is lost, and writes acknowledged
///   after the open with it.
///
/// Both are refused here, naming the file. The checks run under the lock
/// sled takes, so that another process's writes are never read half
/// done: `Ok(false)` when another handle holds it (the caller waits, as
/// for sled's own lock).
fn check_sled_files(sled_dir: &Path, accept_damaged_segments: bool) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let log_path = sled_dir.join("db");
    let mut log = match std::fs::File::open(&log_path) {
        Ok(f) => f,
        // A new store; or one sled will refuse in its own words.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(&log_path, e)),
    };
    match log.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        // No file locks here (NFS without a lock manager): sled says so.
        Err(std::fs::TryLockError::Error(_)) => return Ok(true),
    }
    let mut files = vec![sled_dir.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
            for entry in entries {
                files.push(entry.map_err(|e| Error::io(&path, e))?.path());
            }
        } else {
            std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    // (Text, then a CRC of it in its last 4 bytes.)
    let segment = std::fs::read(sled_dir.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .filter(|&n| n >= SLED_SEGMENT_HEADER as u64)
        .unwrap_or(SLED_SEGMENT);
    let len = log.metadata().map_err(|e| Error::io(&log_path, e))?.len();
    let mut header = [0u8; SLED_SEGMENT_HEADER];
    let mut offset = 0u64;
    while offset + SLED_SEGMENT_HEADER as u64 <= len {
        log.seek(SeekFrom::Start(offset))
            .and_then(|_| log.read_exact(&mut header))
            .map_err(|e| Error::io(&log_path, e))?;
        // Zeroed: never written, or a torn segment sled cleared itself.
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if header != [0; SLED_SEGMENT_HEADER]
            && crc32fast::hash(&header[4..]) != stored ^ 0xFFFF_FFFF
            && !accept_damaged_segments
        {
            return Err(Error::StoreDamaged {
                path: log_path,
                reason: format!(
                    "the header of the log segment at offset {offset} fails its checksum: sled \
                     would skip the segment, losing what it holds, and write over it (`vitrine \
                     repair` copies the folder, then keeps what sled's log holds)"
                ),
            });
        }
        offset += segment;
    }
    Ok(true)
}

fn sled_open_error(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(e) if lock_busy(&e) => Error::Locked {
            path: path.to_path_buf(),
        },
        // Any other lock failure, said in words, not sled's `{:?}` of it.
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            let os = os_code_in(&e.to_string()).map(std::io::Error::from_raw_os_error);
            let why = os
                .as_ref()
                .map_or_else(|| e.to_string(), ToString::to_string);
            Error::io(
                path,
                std::io::Error::new(
                    os.map_or(e.kind(), |os| os.kind()),
                    format!(
                        "cannot lock sled's files: {why} (a file system without file locks, \
                         such as NFS without a lock manager, cannot hold a database)"
                    ),
                ),
            )
        }
        sled::Error::Io(source) => Error::io(path, readable(source)),
        // sled names no file when the snapshot it builds from a damaged
        // blob fails: the blob that fails its checksum is named here.
        sled::Error::Corruption { at: None, .. } => match damaged_blob(path) {
            Some(blob) => Error::StoreDamaged {
                path: blob,
                reason: "a blob file of sled's fails its checksum (`vitrine repair` copies the \
                         folder, then keeps what sled's log holds)"
                    .to_owned(),
            },
            None => Error::StoreDamaged {
                path: path.to_path_buf(),
                reason: damage_reason(&e),
            },
        },
        other => Error::StoreDamaged {
            path: path.to_path_buf(),
            reason: damage_reason(&other),
        },
    }
}

/// The first blob file in `sled_dir/blobs` whose checksum fails (sled's
/// format: a CRC32 of the rest, then a kind byte and the data).
fn damaged_blob(sled_dir: &Path) -> Option<PathBuf> {
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(sled_dir.join("blobs"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    blobs.sort();
    blobs.into_iter().find(|blob| {
        std::fs::read(blob).is_ok_and(|bytes| {
            bytes.len() < 5
                || crc32fast::hash(&bytes[4..])
                    != u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        })
    })
}

impl Store {
    /// Opens (creating if missing) the store in `dir`.
    ///
    /// Fails with [`Error::UnsupportedFormat`] if the store was written by a
    /// newer format version. If another handle holds the store's lock, waits
    /// up to 2 s for it before failing with [`Error::Locked`].
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        let sled_dir = dir.join("sled");
        // A repair moved sled's files aside and was stopped before the new
        // ones were in: opening would make an empty store in their place.
        if let Some(old) = interrupted_swap(dir) {
            return Err(Error::StoreDamaged {
                path: sled_dir,
                reason: format!(
                    "an interrupted `vitrine repair` moved sled's files to {}; run \
                     `vitrine repair` again, which moves them back first",
                    old.display()
                ),
            });
        }
        // The folders this open makes: each one's entry in its parent is
        // synced below.
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let flush_every_ms = match opts.durability {
            // Every write flushes itself; a background flusher would be idle.
            Durability::Immediate => None,
            Durability::Periodic { interval } => Some(
                u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        };
        let config = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(flush_every_ms);
        if held(&sled_dir) {
            return Err(Error::HeldAfterIoError { path: sled_dir });
        }
        // Another handle may hold the lock for a moment (a process handing
        // the store over): waited for, as sled's own lock is, so that the
        // files are checked before this handle's open.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while !check_sled_files(&sled_dir, opts.accept_damaged_segments)? {
            if std::time::Instant::now() >= deadline {
                return Err(Error::Locked { path: sled_dir });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let db = match open_with_lock_retry(&config) {
            Ok(db) => db,
            // sled read an unfinished snapshot as corruption: set those
            // aside (only now, when sled's open failed, never under another
            // process's feet) and try once more.
            Err(sled::Error::Corruption { .. })
                if set_aside_unfinished_snapshots(dir, &sled_dir)? > 0 =>
            {
                open_with_lock_retry(&config).map_err(|e| sled_open_error(&sled_dir, e))?
            }
            Err(e) => return Err(sled_open_error(&sled_dir, e)),
        };
        check_format(&db, &sled_dir).map_err(|e| match e {
            Error::Sled(e) => sled_error(&sled_dir, e),
            Error::UnsupportedFormat {
                found, supported, ..
            } => Error::UnsupportedFormat {
                path: sled_dir.clone(),
                found,
                supported,
            },
            other => other,
        })?;
        // A new store's files and folders: sled syncs none of them.
        let log_path = sled_dir.join("db");
        let log = std::fs::File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        for f in [log_path.clone(), sled_dir.join("conf")] {
            if f.exists() {
                std::fs::File::open(&f)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(&f, e))?;
            }
        }
        for d in [&sled_dir, dir] {
            sync_dir(d).map_err(|e| Error::io(d, e))?;
        }
        // A new database's own entry in its parent, too.
        for made in &created {
            let parent = made
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent).map_err(|e| Error::io(parent, e))?;
        }
        tracing::debug!(dir = %dir.display(), ?opts.durability, "store opened");
        Ok(Store {
            db,
            dir: Arc::new(dir.to_path_buf()),
            durability: opts.durability,
            io: Arc::new(IoState {
                log,
                synced_blobs: Default::default(),
                sled_dir: sled_dir.clone(),
                failed: AtomicBool::new(false),
                leaked: AtomicBool::new(false),
                writes: std::sync::RwLock::new(()),
            }),
        })
    }

    /// The directory the store was opened in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durability mode the store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Whether a write or flush failed with an I/O error (disk full,
    /// read-only file system) since the store was opened. sled may then
    /// hang on further flushes, so callers skip optional ones (a checkpoint
    /// on close).
    pub fn io_failed(&self) -> bool {
        self.io.failed.load(Ordering::SeqCst)
    }

    /// [`Error::FailedEarlier`] once a write failed with an I/O error: for
    /// a caller whose write turns out to change nothing, which would
    /// otherwise report success.
    pub fn check_writable(&self) -> Result<()> {
        self.io.write_guard().map(drop)
    }

    /// Opens (creating if missing) the keyspace `name`: a sled tree of `T`
    /// records. Names starting with `__sled__` are reserved.
    pub fn keyspace<T: Record>(&self, name: &str) -> Result<Keyspace<T>> {
        if name.starts_with("__sled__") {
            return Err(Error::InvalidInput(format!(
                "keyspace name {name:?} is reserved by sled"
            )));
        }
        // Opening a tree that exists writes nothing: no need to wait out a
        // paused store (reads of side records go through here).
        let exists = self
            .db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == name.as_bytes());
        let tree = if exists {
            self.io.check(self.db.open_tree(name))?
        } else {
            let _w = self.io.write_guard()?;
            self.io.check(self.db.open_tree(name))?
        };
        Ok(Keyspace {
            tree,
            name: Arc::from(name),
            durability: self.durability,
            io: Arc::clone(&self.io),
            _marker: PhantomData,
        })
    }

    /// A fresh id from sled's monotonic generator. Ids are unique but may
    /// jump forward after a restart.
    pub fn generate_id(&self) -> Result<u64> {
        let _w = self.io.write_guard()?;
        self.io.check(self.db.generate_id())
    }

    /// The keyspaces (sled trees) in which some record cannot be read:
    /// a damaged page, or a missing blob file. Reads every record.
    pub fn unreadable_keyspaces(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.io.check(self.db.open_tree(&name))?;
            if tree.iter().any(|r| r.is_err()) {
                out.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        Ok(out)
    }

    /// Copies every record sled can still read into a new store in
    /// `dest` (a folder that must not exist), for a repair: each keyspace is
    /// read forwards up to a damaged page, then backwards from its end down
    /// to it, so only the records on damaged pages are left behind. The id
    /// generator is carried over, so new ids stay unique.
    pub fn salvage_into(&self, dest: &Path) -> Result<Salvaged> {
        if dest.exists() {
            return Err(Error::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists"),
            ));
        }
        let dest_sled = dest.join("sled");
        let out = sled::Config::new()
            .path(&dest_sled)
            .open()
            .map_err(|e| sled_open_error(&dest_sled, e))?;
        let out_err = |e| sled_error(&dest_sled, e);
        // Every handle on the new files, so that on an error none is
        // dropped: sled can hang in the flush of a dropped tree after an
        // I/O error (a full disk), and the caller removes the files anyway.
        let mut handles: Vec<sled::Tree> = Vec::new();
        let report = match self.copy_readable(&out, &mut handles, &out_err) {
            Ok(report) => report,
            Err(e) => {
                std::mem::forget(handles);
                std::mem::forget(out);
                return Err(e);
            }
        };
        drop(handles);
        drop(out);
        // sled's generator only counts up, and a new store's starts at 0. A
        // reopened store starts at its saved counter plus twice its persist
        // interval: reopened once with an interval of about half the old
        // store's next id, one id saves a counter past it, whatever the old
        // store's history. (Counting up to it one id at a time took seconds
        // per thousand opens of the old store, hours for a long-lived one.)
        // The interval is a multiple of the default one, which later opens
        // use: sled asserts that its saved counter is a multiple of theirs.
        let next = self.generate_id()?;
        let interval = next.div_ceil(2).div_ceil(SLED_IDGEN_INTERVAL).max(1) * SLED_IDGEN_INTERVAL;
        let config = sled::Config::new()
            .path(&dest_sled)
            .idgen_persist_interval(interval);
        let out = open_with_lock_retry(&config).map_err(|e| sled_open_error(&dest_sled, e))?;
        let counted = out.generate_id().and_then(|id| out.flush().map(|_| id));
        match counted {
            Ok(id) if id >= next => Ok(report),
            Ok(id) => Err(Error::StoreDamaged {
                path: dest_sled.clone(),
                reason: format!("the new store's id counter is {id}, behind {next}"),
            }),
            Err(e) => {
                // As after a failed copy: not dropped (see above).
                std::mem::forget(out);
                Err(out_err(e))
            }
        }
    }

    fn copy_readable(
        &self,
        out: &sled::Db,
        handles: &mut Vec<sled::Tree>,
        out_err: &dyn Fn(sled::Error) -> Error,
    ) -> Result<Salvaged> {
        let mut report = Salvaged::default();
        for name in self.db.tree_names() {
            let src = self.io.check(self.db.open_tree(&name))?;
            let dst = out.open_tree(&name).map_err(out_err)?;
            handles.push(dst.clone());
            let mut damaged = false;
            let mut last_ok: Option<sled::IVec> = None;
            for item in src.iter() {
                match item {
                    Ok((k, v)) => {
                        dst.insert(&k, v).map_err(out_err)?;
                        report.records += 1;
                        last_ok = Some(k);
                    }
                    Err(_) => {
                        damaged = true;
                        break;
                    }
                }
            }
            if damaged {
                report
                    .damaged_keyspaces
                    .push(String::from_utf8_lossy(&name).into_owned());
                let mut first_ok: Option<sled::IVec> = None;
                for item in src.iter().rev() {
                    let Ok((k, v)) = item else { break };
                    if dst.contains_key(&k).map_err(out_err)? {
                        break;
                    }
                    dst.insert(&k, v).map_err(out_err)?;
                    report.records += 1;
                    first_ok = Some(k);
                }
                // Readable pages between two damaged ones: seek into the
                // gap at keys spread over it, and at keys just past its
                // readable start and just below its readable end, and
                // read on from each.
                let lo = last_ok.map_or_else(Vec::new, |k| k.to_vec());
                let hi = first_ok.map(|k| k.to_vec());
                let mut seeks = probes(&lo, hi.as_deref(), GAP_PROBES);
                seeks.extend(successor_probes(&lo));
                if let Some(hi) = &hi {
                    seeks.extend(predecessor_probes(hi).into_iter().filter(|p| *p > lo));
                }
                for probe in seeks {
                    for item in src.range(probe..) {
                        let Ok((k, v)) = item else { break };
                        if hi.as_deref().is_some_and(|h| k.as_ref() >= h)
                            || dst.contains_key(&k).map_err(out_err)?
                        {
                            break;
                        }
                        dst.insert(k, v).map_err(out_err)?;
                        report.records += 1;
                    }
                }
            }
        }
        out.flush().map_err(out_err)?;
        Ok(report)
    }

    /// Holds back every write and flush of this store (they wait) until
    /// the returned guard is dropped; a write in progress finishes first.
    /// Under [`Durability::Immediate`] every finished write is flushed, so
    /// sled's files then stop changing and can be copied as a consistent
    /// backup. Under `Periodic`, sled's background flusher still writes.
    pub fn pause_writes(&self) -> WritesPaused<'_> {
        WritesPaused {
            _guard: self
                .io
                .writes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Flushes and fsyncs everything written so far (waits while writes
    /// are paused).
    pub fn flush(&self) -> Result<()> {
        let _w = self.io.write_guard()?;
        self.io.flush_durably(|| self.db.flush())
    }

    /// Bytes used by sled's files.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.io.read(self.db.size_on_disk())
    }
}

/// The file `vitrine repair` writes in a store's folder while sled's files
/// are moved aside: it names the folder they went to. A store whose `sled/`
/// is missing while it exists is refused, not made anew.
pub const SWAP_MARKER: &str = "sled.swap";

/// Where an interrupted repair left sled's files: the folder [`SWAP_MARKER`]
/// names, when `dir/sled` is missing and that folder exists.
pub fn interrupted_swap(dir: &Path) -> Option<PathBuf> {
    if std::fs::symlink_metadata(dir.join("sled")).is_ok() {
        return None;
    }
    let name = std::fs::read_to_string(dir.join(SWAP_MARKER)).ok()?;
    let name = name.trim();
    // A plain folder name of ours, nothing that leads elsewhere.
    if !name.starts_with("sled.before-salvage") || name.contains(['/', '\\']) {
        return None;
    }
    let old = dir.join(name);
    old.is_dir().then_some(old)
}

/// The record an iteration failed to read: the one after the last it read.
fn after(last: Option<&[u8]>) -> String {
    match last {
        Some(k) => format!("(the one after {})", display_key(k)),
        None => "(the first)".to_owned(),
    }
}

/// sled's default id persist interval, which every open but a salvage's
/// uses.
const SLED_IDGEN_INTERVAL: u64 = 1_000_000;

/// How long `Store::open` waits for sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled, retrying while its file lock is busy. The lock can outlive a
/// dropped `Store` briefly: a process forked by another thread (e.g.
/// `std::process::Command`) shares the locked file until it execs.
fn open_with_lock_retry(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match open_catching_panics(config) {
            Err(sled::Error::Io(e)) if lock_busy(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "sled lock busy, retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// sled 0.34 panics on some damaged logs while it recovers from them
/// ("tried to serialize Uninitialized"): that is a damaged store, not a
/// reason to take the process down.
fn open_catching_panics(config: &sled::Config) -> sled::Result<sled::Db> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(open_panic_error(&message))
        },
    )
}

/// The OS error code in a message that holds an `io::Error`'s `{:?}`
/// (`… Os { code: 37, kind: …`).
fn os_code_in(message: &str) -> Option<i32> {
    message
        .split_once("Os { code: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|code| code.parse::<i32>().ok())
}

/// The error of a panic in sled's open. One that unwrapped an OS error
/// (its flusher thread refused: the process is at its thread limit) is
/// that I/O error, not damage: a healthy store is not sent to `repair`.
fn open_panic_error(message: &str) -> sled::Error {
    match os_code_in(message) {
        Some(code) => sled::Error::Io(std::io::Error::from_raw_os_error(code)),
        None => {
            sled::Error::ReportableBug(format!("sled failed while recovering its log: {message}"))
        }
    }
}

fn check_format(db: &sled::Db, sled_dir: &Path) -> Result<()> {
    let Some(raw) = db.get(FORMAT_VERSION_KEY)? else {
        db.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_le_bytes())?;
        db.flush()?;
        return Ok(());
    };
    let corrupt = |reason: String| Error::Corruption {
        store: sled_dir.to_path_buf(),
        tree: DEFAULT_TREE.to_owned(),
        key: display_key(FORMAT_VERSION_KEY),
        reason,
    };
    let bytes: [u8; 4] = raw
        .as_ref()
        .try_into()
        .map_err(|_| corrupt(format!("format version is {} bytes, expected 4", raw.len())))?;
    match u32::from_le_bytes(bytes) {
        0 => Err(corrupt("format version 0 is not valid".to_owned())),
        found if found > FORMAT_VERSION => Err(Error::UnsupportedFormat {
            path: PathBuf::new(),
            found,
            supported: FORMAT_VERSION,
        }),
        _ => Ok(()),
    }
}

/// A named sled tree holding versioned `T` records.
///
/// Cheap to clone; `Send + Sync`. Every write honours the store's
/// [`Durability`].
pub struct Keyspace<T> {
    tree: sled::Tree,
    name: Arc<str>,
    durability: Durability,
    io: Arc<IoState>,
    // fn() -> T: the keyspace stores no T, so it is Send + Sync for any T.
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for Keyspace<T> {
    fn clone(&self) -> Self {
        Keyspace {
            tree: self.tree.clone(),
            name: Arc::clone(&self.name),
            durability: self.durability,
            io: Arc::clone(&self.io),
            _marker: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Keyspace<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Record> Keyspace<T> {
    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the record under `key`.
    ///
    /// A damaged record is [`Error::Corruption`] or
    /// [`Error::UnknownRecordVersion`], naming the store, this keyspace and
    /// the key; a page that cannot be read is [`Error::StoreDamaged`],
    /// naming the record in its reason.
    pub fn get(&self, key: &[u8]) -> Result<Option<T>> {
        let read = self
            .tree
            .get(key)
            .map_err(|e| self.read_error(display_key(key), e));
        match read? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether a record exists under `key` (without decoding it).
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.tree
            .contains_key(key)
            .map_err(|e| self.read_error(display_key(key), e))
    }

    /// Stores `value` under `key`, atomically.
    pub fn put(&self, key: &[u8], value: &T) -> Result<()> {
        self.put_encoded(key, &self.encode(value)?)
    }

    /// Encodes `value` for [`Keyspace::put_encoded`]. Encoding first lets a
    /// caller refuse a record too large to store
    /// ([`Error::RecordTooLarge`]) before it writes anything else.
    pub fn encode(&self, value: &T) -> Result<Encoded<T>> {
        Ok(Encoded {
            bytes: codec::encode(value)?,
            _marker: PhantomData,
        })
    }

    /// Stores a record encoded by [`Keyspace::encode`] under `key`,
    /// atomically.
    ///
    /// An error can come after sled took the record, from the flush: sled
    /// then serves it, though it may not survive the process.
    /// [`Keyspace::holds_encoded`] tells which.
    pub fn put_encoded(&self, key: &[u8], value: &Encoded<T>) -> Result<()> {
        let _w = self.io.write_guard()?;
        failpoint!("storage::before_apply");
        self.write_one(key, self.tree.insert(key, value.bytes.as_slice()))?;
        failpoint!("storage::before_flush");
        self.sync()
    }

    /// Whether sled serves `value` under `key`: after a failed
    /// [`Keyspace::put_encoded`], whether the record reached it anyway.
    pub fn holds_encoded(&self, key: &[u8], value: &Encoded<T>) -> bool {
        matches!(self.tree.get(key), Ok(Some(b)) if *b == *value.bytes)
    }

    /// Removes the record under `key`; returns whether one existed.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        let _w = self.io.write_guard()?;
        failpoint!("storage::before_apply");
        let existed = self.write_one(key, self.tree.remove(key))?.is_some();
        failpoint!("storage::before_flush");
        if existed {
            self.sync()?;
        }
        Ok(existed)
    }

    /// sled's result of a write of the one key `key`. An error of a read
    /// (a lost blob file: not found, or a short or malformed one) while the
    /// page that holds `key` cannot be read either came from reading that
    /// page: it is damaged ([`Error::StoreDamaged`]), and other writes go
    /// on. Any other I/O error (a full disk, EIO, which a write can cause
    /// too) marks the store ([`IoState::check`]).
    fn write_one<R>(&self, key: &[u8], r: sled::Result<R>) -> Result<R> {
        use std::io::ErrorKind;
        match r {
            Err(sled::Error::Io(e))
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::UnexpectedEof | ErrorKind::InvalidData
                ) && self.tree.get(key).is_err() =>
            {
                tracing::warn!(tree = %self.name, key = %display_key(key), error = %e, "write to an unreadable page refused");
                Err(Error::StoreDamaged {
                    path: self.io.sled_dir.clone(),
                    reason: format!(
                        "the record {} in {} cannot be read ({}), so it cannot be \
                         written either; `vitrine repair` keeps every readable record",
                        display_key(key),
                        self.name,
                        readable(e)
                    ),
                })
            }
            r => self.io.check(r),
        }
    }

    /// Starts an empty batch; apply it with [`Keyspace::apply`].
    pub fn batch(&self) -> Batch<T> {
        Batch {
            inner: sled::Batch::default(),
            keys: Vec::new(),
            _marker: PhantomData,
        }
    }

    /// Applies every operation of `batch` atomically.
    ///
    /// A key whose page cannot be read is [`Error::StoreDamaged`], as for
    /// [`Keyspace::put`], and nothing of the batch is applied.
    pub fn apply(&self, batch: Batch<T>) -> Result<()> {
        if batch.keys.is_empty() {
            return Ok(());
        }
        self.commit(batch.inner, &batch.keys)
    }

    /// Iterates over all records in key order.
    ///
    /// A record that does not decode yields an `Err` naming its key, and
    /// iteration continues with the next record. An error from sled itself
    /// (a damaged page, an I/O error) is yielded once and ends the
    /// iteration: sled's iterator would yield it again forever.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, T)>> + '_ {
        let mut failed = false;
        let mut last: Option<Vec<u8>> = None;
        self.tree.iter().map_while(move |item| {
            if failed {
                return None;
            }
            let (key, bytes) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    failed = true;
                    return Some(Err(self.read_error(after(last.as_deref()), e)));
                }
            };
            last = Some(key.to_vec());
            Some(self.decode(&key, &bytes).map(|value| (key.to_vec(), value)))
        })
    }

    /// Every key in order, without decoding the records. An error from sled
    /// is yielded once and ends the iteration, as in [`Keyspace::iter`].
    pub fn keys(&self) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
        let mut failed = false;
        let mut last: Option<Vec<u8>> = None;
        self.tree.iter().keys().map_while(move |item| {
            if failed {
                return None;
            }
            match item {
                Ok(key) => {
                    last = Some(key.to_vec());
                    Some(Ok(key.to_vec()))
                }
                Err(e) => {
                    failed = true;
                    Some(Err(self.read_error(after(last.as_deref()), e)))
                }
            }
        })
    }

    /// Number of records. O(n): sled counts by scanning. Fails on the first
    /// error from sled (`sled::Tree::len` would spin forever on a damaged
    /// page).
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        for key in self.keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether the keyspace holds no records.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Stores raw bytes under `key`, bypassing the codec. For corruption
    /// tests only.
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], bytes: &[u8]) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(key, bytes);
        self.commit(batch, &[])
    }

    /// sled's error reading this keyspace: one of a damaged page (a lost
    /// blob file: not found, or a short or malformed one) is damage to the
    /// store naming the record (`key`), as a write to it says
    /// ([`Keyspace::write_one`]); others stay I/O errors. Not
    /// [`Error::Corruption`], a record that fails to decode, which a scan
    /// may skip and go on: a page that cannot be read ends a scan, and
    /// what lies after it is not read.
    fn read_error(&self, key: String, e: sled::Error) -> Error {
        use std::io::ErrorKind;
        let what = match e {
            sled::Error::Io(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::UnexpectedEof | ErrorKind::InvalidData
                ) =>
            {
                readable(e).to_string()
            }
            // A page or blob that fails sled's checksum.
            e @ sled::Error::Corruption { .. } => damage_what(&e),
            other => return self.io.read::<()>(Err(other)).unwrap_err(),
        };
        Error::StoreDamaged {
            path: self.io.sled_dir.clone(),
            reason: format!(
                "the record {key} in {} cannot be read ({what}); `vitrine repair` keeps every \
                 readable record",
                self.name,
            ),
        }
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<T> {
        codec::decode(&self.io.sled_dir, &self.name, key, bytes).inspect_err(|e| {
            tracing::warn!(tree = %self.name, key = %display_key(key), error = %e, "damaged record");
        })
    }

    /// Applies `batch`, whose keys are `keys`. Each key is read first:
    /// sled applies a batch key by key, and one whose page cannot be read
    /// would fail it with the keys before it applied in memory (where a
    /// later flush makes them durable), and mark the store failed.
    fn commit(&self, batch: sled::Batch, keys: &[Vec<u8>]) -> Result<()> {
        let _w = self.io.write_guard()?;
        for key in keys {
            self.contains(key)?;
        }
        failpoint!("storage::before_apply");
        self.io.check(self.tree.apply_batch(batch))?;
        failpoint!("storage::before_flush");
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        if self.durability == Durability::Immediate {
            self.io.flush_durably(|| self.tree.flush())?;
        }
        Ok(())
    }
}

/// A record of type `T`, encoded by [`Keyspace::encode`].
pub struct Encoded<T> {
    bytes: Vec<u8>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// A set of writes to one keyspace, applied atomically by
/// [`Keyspace::apply`].
pub struct Batch<T> {
    inner: sled::Batch,
    keys: Vec<Vec<u8>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<T: Record> Batch<T> {
    /// Adds a put of `value` under `key`. Later operations on the same key
    /// win.
    pub fn put(&mut self, key: &[u8], value: &T) -> Result<()> {
        self.inner.insert(key, codec::encode(value)?);
        self.keys.push(key.to_vec());
        Ok(())
    }

    /// Adds a removal of `key`.
    pub fn remove(&mut self, key: &[u8]) {
        self.inner.remove(key);
        self.keys.push(key.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_copies_of_os_errors_read_as_the_os_error() {
        let original = std::io::Error::from_raw_os_error(28);
        let copy = std::io::Error::new(original.kind(), format!("{original:?}"));
        assert_eq!(readable(copy).raw_os_error(), Some(28));
        let other = std::io::Error::other("something else");
        assert_eq!(readable(other).to_string(), "something else");
    }

    /// sled's message for a failed lock, as sled 0.34 builds it: only a
    /// busy lock reads as one another process holds.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_busy_lock_is_another_process() {
        let sled_says = |errno| {
            std::io::Error::other(format!(
                "could not acquire lock on {:?}: {:?}",
                "/db/sled",
                std::io::Error::from_raw_os_error(errno)
            ))
        };
        assert!(lock_busy(&sled_says(11))); // EWOULDBLOCK
        assert!(!lock_busy(&sled_says(37))); // ENOLCK: no lock manager
        assert!(!lock_busy(&std::io::Error::other("WouldBlock")));
        // A lock the file system cannot give is said in words.
        let e = sled_open_error(Path::new("/db/sled"), sled::Error::Io(sled_says(37)));
        let m = e.to_string();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(m.contains("No locks available") && m.contains("NFS"), "{m}");
        assert!(!m.contains("Os {"), "{m}");
    }

    /// A panic in sled's open that unwrapped an OS error (its flusher
    /// thread refused, as std words it) is that I/O error; others are
    /// damage, as before.
    #[test]
    fn an_open_panic_over_an_os_error_is_that_error() {
        let refused = std::io::Error::from_raw_os_error(11);
        let message = format!("called `Result::unwrap()` on an `Err` value: {refused:?}");
        match open_panic_error(&message) {
            sled::Error::Io(e) => assert_eq!(e.raw_os_error(), Some(11)),
            other => panic!("{other:?}"),
        }
        let e = sled_open_error(Path::new("/db/sled"), open_panic_error(&message));
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        let damaged = open_panic_error("tried to serialize Uninitialized");
        assert!(
            matches!(damaged, sled::Error::ReportableBug(_)),
            "{damaged:?}"
        );
    }
}

#[cfg(test)]
mod probe_tests {
    use super::{predecessor_probes, probes, successor_probes};

    /// Digit keys past a damaged end: the even spread misses them, the
    /// successor probes do not.
    #[test]
    fn successor_and_predecessor_probes_reach_nearby_keys() {
        let lo = b"sku-0999".as_slice();
        let next = b"sku-2000".as_slice();
        let between = |p: &[Vec<u8>]| p.iter().any(|k| k.as_slice() > lo && k.as_slice() <= next);
        assert!(!between(&probes(lo, None, 256)));
        assert!(between(&successor_probes(lo)));
        assert!(successor_probes(lo).iter().all(|k| k.as_slice() > lo));
        let hi = b"sku-1000".as_slice();
        let prev = b"sku-0500".as_slice();
        let p = predecessor_probes(hi);
        assert!(p.iter().all(|k| k.as_slice() < hi));
        assert!(p
            .iter()
            .any(|k| k.as_slice() >= b"sku-0".as_slice() && k.as_slice() <= prev));
    }

    #[test]
    fn probes_fall_strictly_between_the_ends_in_order() {
        let lo = b"sku-1000".as_slice();
        let hi = b"sku-1900".as_slice();
        let p = probes(lo, Some(hi), 16);
        assert_eq!(p.len(), 15);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        assert!(
            p.iter().all(|k| k.as_slice() > lo && k.as_slice() < hi),
            "{p:?}"
        );
        // Open-ended and empty starts.
        let p = probes(b"", None, 4);
        assert_eq!(p.len(), 3);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        assert!(probes(b"b", Some(b"a"), 4).is_empty());
    }
}

/// fsyncs a folder, so that the files created or renamed in it stay.
/// (Elsewhere folders cannot be opened for fsync; a rename is still atomic.)
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
