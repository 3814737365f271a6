//! The precomputed "similar items" file: for every product id, its top-k
//! `(target, score)` list, served straight from a memory map.
//!
//! Layout, all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `VTRNSIM\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | flags (bit 0: little-endian, always set) |
//! | 16 | 8 | `count`: number of products |
//! | 24 | 4 | `k`: slots per product |
//! | 28 | 4 | reserved, 0 |
//! | 32 | 8 | `ids_len`: bytes of the id blob |
//! | 40 | 8 | `lists_off`: offset of the lists |
//! | 48 | 8 | total file length |
//! | 56 | 4 | CRC-32 of every byte after the header |
//! | 60 | 4 | CRC-32 of bytes 0..60 |
//! | 64 | 8 × (count + 1) | id offsets into the blob (0, ..., `ids_len`) |
//! | | `ids_len` | id blob: the UTF-8 ids, strictly increasing, concatenated |
//! | | 0–3 | zero padding to a multiple of 4 |
//! | `lists_off` | 8 × k × count | per product, `k` slots of `(u32 target index, f32 score)`, best first; unused slots have target `u32::MAX` and come last |
//!
//! Ids are sorted so that a lookup is a binary search over the mapping. The
//! whole file is validated when opened (lengths, both checksums, id order,
//! UTF-8, target range), so lookups never fail afterwards.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// First 8 bytes of the file.
pub const SIMILAR_MAGIC: [u8; 8] = *b"VTRNSIM\0";
/// Format version written and read by this build.
pub const SIMILAR_FORMAT_VERSION: u32 = 1;

const HEADER_LEN: usize = 64;
const SLOT: usize = 8;
const EMPTY: u32 = u32::MAX;
const FLAG_LE: u32 = 1;

/// Errors of the precomputed-similar file. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimilarFileError {
    /// Reading or writing failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is truncated, damaged or not such a file.
    #[error("{} is not a valid precomputed-similar file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data given to the writer is inconsistent.
    #[error("cannot write {}: {reason}", path.display())]
    InvalidInput {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Whether [`write_similar_file`] may write `path`: it names a file in an
/// existing folder the caller can write to, and nothing is there but an
/// earlier precomputed-similar file (or an empty file). A nightly job checks it before its hour of
/// scoring, not after.
pub fn check_similar_destination(path: &Path) -> Result<(), SimilarFileError> {
    let invalid = |reason: &str| SimilarFileError::InvalidInput {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if path.file_name().is_none() {
        return Err(invalid("not a file path"));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid("its folder does not exist"));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let ours = meta.is_file()
            && (meta.len() == 0 || {
                let mut magic = [0u8; 8];
                File::open(path)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .is_ok_and(|_| magic == SIMILAR_MAGIC)
            });
        if meta.file_type().is_symlink() {
            return Err(invalid(
                "it is a symbolic link; refusing to replace it (name the file it points to)",
            ));
        }
        if !ours {
            return Err(invalid(
                "it exists and is not a precomputed-similar file; refusing to replace it",
            ));
        }
    }
    // The write goes through a temporary file in the same folder: one that
    // cannot be made (a folder the job may not write, a name too long for
    // the temporary one) fails now, not after the scoring.
    let file_name = path.file_name().unwrap_or_default();
    match create_temp(dir, file_name) {
        Ok((tmp, file)) => {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
        }
        Err((tmp, source)) => return Err(SimilarFileError::Io { path: tmp, source }),
    }
    Ok(())
}

/// How old a temporary file of a write must be to count as a killed
/// writer's: no write takes a day.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether `rest` is `PID-N`, the end of a temporary file's name.
fn pid_and_count(rest: &[u8]) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    rest.iter()
        .position(|&b| b == b'-')
        .is_some_and(|at| digits(&rest[..at]) && digits(&rest[at + 1..]))
}

/// A new file beside `path`, for writing `path` whole through a rename
/// (the convention of the precomputed-similar files and of the command
/// line's reports, sheets and CSVs; checkpoints have their own): named
/// `.NAME.tmp-PID-N`, unique to this call and created exclusively (never
/// a link someone left under a fixed name, nor another writer's file).
/// Leftovers of killed writes of `path` over a day old are removed first
/// (never a live writer's: the file is locked while it is open; keep it
/// open until the rename. On a file system without locks none is removed).
/// The new file takes the permissions of the file at `path`, if any, and
/// its group where the writer may set it.
pub fn create_temp_beside(path: &Path) -> std::io::Result<(std::path::PathBuf, File)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or(std::ffi::OsStr::new("file"));
    create_temp(dir, name).map_err(|(_, e)| e)
}

/// Gives the new file `tmp` the owner, group and permissions of the file
/// `target` it is to replace, as far as the writer may: an operator's
/// `chmod 640` and `chgrp` of a nightly file must survive the next night's
/// rename. The permissions are copied only when the owner is the same
/// (root may give the file back to its owner): `0600` on a file now owned
/// by another user would lock the old owner, a service, out of its file.
fn keep_mode_and_group(tmp: &File, target: &Path) {
    let Ok(old) = fs::metadata(target) else {
        return;
    };
    if !old.is_file() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{fchown, MetadataExt};
        if fchown(tmp, Some(old.uid()), Some(old.gid())).is_err() {
            // A group the writer is in, at least.
            let _ = fchown(tmp, None, Some(old.gid()));
        }
        if !tmp.metadata().is_ok_and(|m| m.uid() == old.uid()) {
            return;
        }
    }
    // After the owner: a change of owner clears set-user-id.
    let _ = tmp.set_permissions(old.permissions());
}

/// Creates the temporary file a write of `dir/file_name` goes through,
/// exclusively under a name unique to this call: two writers of one path
/// never share a temporary file, and a leftover of a killed writer (the
/// same pid, in another container) is stepped over. Leftovers over a day
/// old are removed (each killed run left a whole table behind).
fn create_temp(
    dir: &Path,
    file_name: &std::ffi::OsStr,
) -> Result<(std::path::PathBuf, File), (std::path::PathBuf, std::io::Error)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".tmp-");
    let prefix = prefix.as_encoded_bytes();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let stale = name
            .as_encoded_bytes()
            .strip_prefix(prefix)
            .is_some_and(pid_and_count)
            && entry.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TEMP)
            });
        // A writer holds its file locked until it renames it: a live write
        // is never removed, whatever its age says (a clock stepped forward
        // a day, a VM restored).
        if stale && unlocked(&entry.path()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => {
                // Held while the file is open: see the sweep above.
                let _ = fs2::FileExt::try_lock_exclusive(&file);
                keep_mode_and_group(&file, &dir.join(file_name));
                return Ok((tmp, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err((tmp, e)),
        }
    }
}

/// Whether no writer holds the temporary file `path`: this process could
/// lock it. Any doubt keeps the file (a file it cannot open, a file system
/// without locks or one, like NFS, that locks only files open for writing):
/// leftovers are then kept, never a live write removed.
fn unlocked(path: &Path) -> bool {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| File::open(path));
    file.is_ok_and(|f| fs2::FileExt::try_lock_exclusive(&f).is_ok())
}

/// Writes the file atomically (temporary file, fsync, rename, directory fsync).
/// It replaces only an earlier precomputed-similar file (or an empty
/// file): any other file,
/// folder, link or device at `path` is refused, so a mistyped path cannot
/// destroy it.
///
/// `ids` must be strictly increasing; `lists[i]` holds at most `k` pairs of
/// (index into `ids`, score), best first, scores not NaN.
pub fn write_similar_file<S: AsRef<str>>(
    path: &Path,
    k: usize,
    ids: &[S],
    lists: &[Vec<(u32, f32)>],
) -> Result<(), SimilarFileError> {
    let invalid = |reason: String| SimilarFileError::InvalidInput {
        path: path.to_path_buf(),
        reason,
    };
    if ids.len() != lists.len() {
        return Err(invalid(format!(
            "{} ids but {} lists",
            ids.len(),
            lists.len()
        )));
    }
    if k == 0 || k > u32::MAX as usize || ids.len() >= EMPTY as usize {
        return Err(invalid(
            "k must be at least 1, and k and the product count fit in u32".into(),
        ));
    }
    if k > ids.len().max(1) {
        return Err(invalid(format!(
            "k = {k} but there are {} products",
            ids.len()
        )));
    }
    if let Some(w) = ids.windows(2).find(|w| w[0].as_ref() >= w[1].as_ref()) {
        return Err(invalid(format!(
            "ids not strictly increasing at '{}' then '{}'",
            w[0].as_ref(),
            w[1].as_ref()
        )));
    }
    for (i, l) in lists.iter().enumerate() {
        if l.len() > k {
            return Err(invalid(format!(
                "list {i} has {} entries, k is {k}",
                l.len()
            )));
        }
        if let Some((t, s)) = l
            .iter()
            .find(|(t, s)| *t as usize >= ids.len() || s.is_nan())
        {
            return Err(invalid(format!("list {i} holds ({t}, {s})")));
        }
    }

    check_similar_destination(path)?;

    let count = ids.len();
    let ids_len: usize = ids.iter().map(|s| s.as_ref().len()).sum();
    let body_ids = 8 * (count + 1) + ids_len;
    let pad = (4 - (HEADER_LEN + body_ids) % 4) % 4;
    let lists_off = HEADER_LEN + body_ids + pad;
    let file_len = lists_off + SLOT * k * count;

    let file_name = path
        .file_name()
        .ok_or_else(|| invalid("not a file path".into()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SimilarFileError::Io { path: p, source }
    };
    let (tmp, file) = create_temp(dir, file_name).map_err(|(tmp, e)| io(&tmp)(e))?;

    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut crc = crc32fast::Hasher::new();
        let mut put = |w: &mut BufWriter<File>, b: &[u8]| {
            crc.update(b);
            w.write_all(b)
        };
        let mut body = || -> std::io::Result<()> {
            w.write_all(&[0u8; HEADER_LEN])?;
            let mut off = 0u64;
            put(&mut w, &off.to_le_bytes())?;
            for id in ids {
                off += id.as_ref().len() as u64;
                put(&mut w, &off.to_le_bytes())?;
            }
            for id in ids {
                put(&mut w, id.as_ref().as_bytes())?;
            }
            put(&mut w, &[0u8; 3][..pad])?;
            let mut slots = vec![0u8; SLOT * k];
            for l in lists {
                for j in 0..k {
                    let (t, s) = l.get(j).copied().unwrap_or((EMPTY, 0.0));
                    slots[j * SLOT..j * SLOT + 4].copy_from_slice(&t.to_le_bytes());
                    slots[j * SLOT + 4..j * SLOT + 8].copy_from_slice(&s.to_le_bytes());
                }
                put(&mut w, &slots)?;
            }
            Ok(())
        };
        body().map_err(io(&tmp))?;
        let header = encode_header(&Header {
            count: count as u64,
            k: k as u32,
            ids_len: ids_len as u64,
            lists_off: lists_off as u64,
            file_len: file_len as u64,
            payload_crc: crc.finalize(),
        });
        let mut file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
        file.write_all(&header).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        #[cfg(unix)]
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[derive(Clone, Copy, Debug)]
struct Header {
    count: u64,
    k: u32,
    ids_len: u64,
    lists_off: u64,
    file_len: u64,
    payload_crc: u32,
}

fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&SIMILAR_MAGIC);
    b[8..12].copy_from_slice(&SIMILAR_FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&FLAG_LE.to_le_bytes());
    b[16..24].copy_from_slice(&h.count.to_le_bytes());
    b[24..28].copy_from_slice(&h.k.to_le_bytes());
    b[32..40].copy_from_slice(&h.ids_len.to_le_bytes());
    b[40..48].copy_from_slice(&h.lists_off.to_le_bytes());
    b[48..56].copy_from_slice(&h.file_len.to_le_bytes());
    b[56..60].copy_from_slice(&h.payload_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Checks everything; returns the header.
fn validate(b: &[u8]) -> Result<Header, String> {
    if b.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            b.len()
        ));
    }
    if b[0..8] != SIMILAR_MAGIC {
        return Err("bad magic".into());
    }
    // The version before the checksum: another version may lay out (and
    // checksum) its header differently.
    let version = u32_at(b, 8);
    if version != SIMILAR_FORMAT_VERSION {
        // A newer build's header may checksum differently: when this
        // layout's checksum fails too, the field is as likely damaged.
        let damaged = version > SIMILAR_FORMAT_VERSION
            && u32_at(b, 60) != crc32fast::hash(&b[..60])
            && !cfg!(fuzzing);
        return Err(format!(
            "format version {version}, this build reads {SIMILAR_FORMAT_VERSION}{}",
            if damaged {
                " (the header's checksum fails too: damaged, or written by a newer build)"
            } else {
                ""
            }
        ));
    }
    // Fuzzing builds skip the checksums, so that inputs reach the layout
    // checks behind them.
    if u32_at(b, 60) != crc32fast::hash(&b[..60]) && !cfg!(fuzzing) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(b, 12) != FLAG_LE {
        return Err(format!("unknown flags {:#x}", u32_at(b, 12)));
    }
    if u32_at(b, 28) != 0 {
        return Err("reserved header bytes 28..32 are not zero".into());
    }
    if u32_at(b, 24) == 0 {
        return Err("k is 0".into());
    }
    let h = Header {
        count: u64_at(b, 16),
        k: u32_at(b, 24),
        ids_len: u64_at(b, 32),
        lists_off: u64_at(b, 40),
        file_len: u64_at(b, 48),
        payload_crc: u32_at(b, 56),
    };
    // As the writer refuses: k past the product count (a list size that
    // overflows usize on 32 bits, with no lists to check it against).
    if u64::from(h.k) > h.count.max(1) {
        return Err(format!("k = {} but there are {} products", h.k, h.count));
    }
    if h.file_len != b.len() as u64 {
        return Err(format!(
            "{} bytes but the header says {} (truncated or extended)",
            b.len(),
            h.file_len
        ));
    }
    let size = (|| {
        let offsets = h.count.checked_add(1)?.checked_mul(8)?;
        let ids_end = (HEADER_LEN as u64)
            .checked_add(offsets)?
            .checked_add(h.ids_len)?;
        let lists_off = ids_end.checked_add((4 - ids_end % 4) % 4)?;
        let lists = h.count.checked_mul(h.k as u64)?.checked_mul(SLOT as u64)?;
        Some((lists_off, lists_off.checked_add(lists)?))
    })();
    match size {
        Some((off, end)) if off == h.lists_off && end == h.file_len => {}
        _ => return Err("section sizes disagree with the header".into()),
    }
    if crc32fast::hash(&b[HEADER_LEN..]) != h.payload_crc && !cfg!(fuzzing) {
        return Err("payload checksum mismatch".into());
    }
    // Ids: offsets monotone, within the blob, UTF-8, strictly increasing.
    let count = h.count as usize;
    let blob = HEADER_LEN + 8 * (count + 1);
    let mut prev: Option<&str> = None;
    let mut last = 0u64;
    if u64_at(b, HEADER_LEN) != 0 || u64_at(b, HEADER_LEN + 8 * count) != h.ids_len {
        return Err("id offsets do not span the id blob".into());
    }
    for i in 0..count {
        let end = u64_at(b, HEADER_LEN + 8 * (i + 1));
        if end < last || end > h.ids_len {
            return Err(format!("id offset {i} out of order"));
        }
        let s = std::str::from_utf8(&b[blob + last as usize..blob + end as usize])
            .map_err(|_| format!("id {i} is not UTF-8"))?;
        if prev.is_some_and(|p| p >= s) {
            return Err(format!("ids not strictly increasing at {i}"));
        }
        prev = Some(s);
        last = end;
    }
    let lists = &b[h.lists_off as usize..];
    for (i, slots) in lists.chunks_exact(SLOT * h.k as usize).enumerate() {
        let mut ended = false;
        for slot in slots.chunks_exact(SLOT) {
            let t = u32_at(slot, 0);
            if t == EMPTY {
                ended = true;
            } else if ended || t as u64 >= h.count {
                return Err(format!("list {i} has a bad target {t}"));
            }
        }
    }
    Ok(h)
}

/// A validated, memory-mapped precomputed-similar file.
///
/// The mapping is of the file as it was opened: a newer file written by the
/// nightly job (which replaces it by rename) is seen by opening again. Do not
/// truncate or rewrite the file in place while it is open: a mapped file
/// that shrinks under the process ends it with SIGBUS.
pub struct PrecomputedSimilar {
    map: Mmap,
    header: Header,
    path: PathBuf,
}

impl std::fmt::Debug for PrecomputedSimilar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrecomputedSimilar")
            .field("path", &self.path)
            .field("len", &self.header.count)
            .field("k", &self.header.k)
            .finish()
    }
}

impl PrecomputedSimilar {
    /// Maps and validates the file. A damaged, truncated or foreign file is
    /// [`SimilarFileError::Corrupt`], naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SimilarFileError> {
        let path = path.as_ref();
        let io = |source| SimilarFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Before the open, which waits for ever on a named pipe.
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let corrupt = |reason: String| SimilarFileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if len < HEADER_LEN as u64 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the {HEADER_LEN}-byte header"
            )));
        }
        // SAFETY: read-only mapping of a file that writers only ever replace
        // by rename (the type's docs: never rewrite a served file in place;
        // a file truncated under the map faults, which no bounds check
        // prevents); lookups are bounds-checked against the mapped length.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = validate(&map).map_err(corrupt)?;
        Ok(PrecomputedSimilar {
            map,
            header,
            path: path.to_path_buf(),
        })
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    /// Whether it holds no product.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Slots per product.
    pub fn k(&self) -> usize {
        self.header.k as usize
    }

    /// Id of product `i` (ids are sorted).
    pub fn id(&self, i: usize) -> Option<&str> {
        if i >= self.len() {
            return None;
        }
        let off = |j: usize| self.map.get(HEADER_LEN + 8 * j..HEADER_LEN + 8 * j + 8);
        let start = u64::from_le_bytes(off(i)?.try_into().ok()?) as usize;
        let end = u64::from_le_bytes(off(i + 1)?.try_into().ok()?) as usize;
        let blob = HEADER_LEN + 8 * (self.len() + 1);
        std::str::from_utf8(
            self.map
                .get(blob.checked_add(start)?..blob.checked_add(end)?)?,
        )
        .ok()
    }

    /// Position of `id`, by binary search.
    pub fn position(&self, id: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id(mid)?.cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The list of product `i` as (target position, score), best first.
    pub fn list_at(&self, i: usize) -> Vec<(usize, f32)> {
        let k = self.k();
        let range = i
            .checked_mul(k * SLOT)
            .and_then(|off| off.checked_add(self.header.lists_off as usize))
            .and_then(|start| Some(start..start.checked_add(k * SLOT)?));
        let Some(slots) = range.and_then(|r| self.map.get(r)) else {
            return Vec::new();
        };
        slots
            .chunks_exact(SLOT)
            .map(|s| (u32_at(s, 0), f32::from_bits(u32_at(s, 4))))
            .take_while(|(t, _)| *t != EMPTY)
            .map(|(t, s)| (t as usize, s))
            .collect()
    }

    /// The similar products of `id` with their scores, best first; `None`
    /// when `id` is not in the file.
    pub fn get(&self, id: &str) -> Option<Vec<(String, f32)>> {
        let i = self.position(id)?;
        Some(
            self.list_at(i)
                .into_iter()
                .filter_map(|(t, s)| Some((self.id(t)?.to_string(), s)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sim");
        let ids = ["a", "b", "cé"];
        let lists = vec![vec![(1, 0.9), (2, 0.5)], vec![], vec![(0, -1.0)]];
        write_similar_file(&path, 2, &ids, &lists).unwrap();
        let f = PrecomputedSimilar::open(&path).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(
            f.get("a").unwrap(),
            [("b".to_string(), 0.9), ("cé".to_string(), 0.5)]
        );
        assert_eq!(f.get("b").unwrap(), []);
        assert_eq!(f.get("cé").unwrap(), [("a".to_string(), -1.0)]);
        assert!(f.get("zz").is_none());

        let bytes = fs::read(&path).unwrap();
        for at in [0, 20, 70, bytes.len() - 3] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let e = PrecomputedSimilar::open(&path).unwrap_err();
            assert!(matches!(e, SimilarFileError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("s.sim"), "{e}");
        }
        // A newer version is named as such (its header may be laid out and
        // checksummed differently); reserved bytes must be zero.
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        fs::write(&path, &newer).unwrap();
        let e = PrecomputedSimilar::open(&path).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
        let mut reserved = bytes.clone();
        reserved[28] = 1;
        let crc = crc32fast::hash(&reserved[..60]);
        reserved[60..64].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &reserved).unwrap();
        let e = PrecomputedSimilar::open(&path).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            PrecomputedSimilar::open(&path),
            Err(SimilarFileError::Corrupt { .. })
        ));
        assert!(write_similar_file(&path, 1, &["b", "a"], &[vec![], vec![]]).is_err());
        // An empty table of a huge k: nothing to size-check k against, and
        // a list of 8k bytes overflows usize on 32-bit hosts.
        write_similar_file(&path, 1, &[] as &[&str], &[]).unwrap();
        assert_eq!(PrecomputedSimilar::open(&path).unwrap().len(), 0);
        let mut huge = fs::read(&path).unwrap();
        huge[24..28].copy_from_slice(&0x2000_0000u32.to_le_bytes());
        let crc = crc32fast::hash(&huge[..60]);
        huge[60..64].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &huge).unwrap();
        let e = PrecomputedSimilar::open(&path).unwrap_err();
        assert!(e.to_string().contains("k = 536870912"), "{e}");
    }

    /// Temporary files of other writers (a killed one, or one with the same
    /// pid in another container) are neither reused nor removed, unless a
    /// day old.
    #[test]
    fn leftover_temporary_files_are_stepped_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sim");
        let pid = std::process::id();
        let leftovers: Vec<_> = (0..64)
            .map(|n| dir.path().join(format!(".s.sim.tmp-{pid}-{n}")))
            .collect();
        for l in &leftovers {
            fs::write(l, b"someone else's").unwrap();
        }
        // A killed writer's, two days old.
        let killed = dir.path().join(".s.sim.tmp-1-0");
        fs::write(&killed, b"a killed writer's").unwrap();
        fs::File::options()
            .write(true)
            .open(&killed)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 2 * STALE_TEMP)
            .unwrap();
        write_similar_file(&path, 1, &["a", "b"], &[vec![(1, 0.5)], vec![]]).unwrap();
        assert_eq!(PrecomputedSimilar::open(&path).unwrap().len(), 2);
        for l in &leftovers {
            assert_eq!(fs::read(l).unwrap(), b"someone else's");
        }
        assert!(!killed.exists());
    }

    /// A file written again keeps the permissions and the group an
    /// operator gave it (a service reading it in that group lost access
    /// after the next nightly rewrite). As root, the owner too: a service's
    /// `0600` file rewritten by `sudo vitrine` stays the service's.
    #[cfg(unix)]
    #[test]
    fn a_rewritten_file_keeps_its_mode_and_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nightly.vsim");
        let write = || {
            write_similar_file(&path, 1, &["a", "b"], &[vec![(1, 0.5)], vec![]]).unwrap();
        };
        write();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        // Another owner and group, where the test may set them (as root,
        // as CI runs it); otherwise only the mode above is checked.
        let (uid, gid) = {
            let m = fs::metadata(&path).unwrap();
            (m.uid(), m.gid())
        };
        if std::os::unix::fs::chown(&path, Some(uid + 4242), Some(gid + 4242)).is_ok() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            write();
            let m = fs::metadata(&path).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid + 4242, gid + 4242));
            assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        } else {
            eprintln!("owner and group not checked: chown needs root");
        }
        // A path with no file yet gets the writer's defaults.
        let (tmp, file) = create_temp_beside(&dir.path().join("new.csv")).unwrap();
        assert_eq!(file.metadata().unwrap().gid(), gid);
        fs::remove_file(tmp).unwrap();
    }

    /// A live writer's temporary file is never swept, however old its
    /// modification time says it is (a clock stepped forward a day): the
    /// writer holds it locked until it lets go.
    #[test]
    fn a_live_writers_temporary_file_is_kept_whatever_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let (live, file) = create_temp_beside(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - 2 * STALE_TEMP)
            .unwrap();
        let (other, _) = create_temp_beside(&path).unwrap();
        assert!(live.exists(), "a live write was swept");
        drop(file);
        fs::remove_file(&other).unwrap();
        let (_, _) = create_temp_beside(&path).unwrap();
        assert!(!live.exists(), "a dead write was kept");
    }
}
