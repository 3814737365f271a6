//! The vector arena: one file per vector space holding every vector
//! contiguously, read once at open to check storage against (lost writes,
//! vectors that differ) and to fill the index's memory.
//!
//! Sled is the source of truth; an arena is a snapshot tagged with the index
//! generation it matches, and can always be rebuilt.

mod format;

use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use format::{Header, Layout, HEADER_LEN};

const BYTES_PATH: &str = "<bytes>";

fn refuse_big_endian() -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(Error::UnsupportedPlatform(
            "vector arenas are little-endian and are only mapped on little-endian hosts",
        ));
    }
    Ok(())
}

/// Writes an arena of `dim`-dimensional vectors atomically.
///
/// The rows go to a temporary file next to `path`, which is fsynced and then
/// renamed over `path`; the directory is fsynced too. A crash leaves either
/// the old arena or the new one, never a mix. Rows are borrowed, not copied:
/// only their `(id, slice)` pairs are collected, since the header count and
/// the id section precede the vectors.
///
/// Fails with [`Error::InvalidInput`] if `dim` is 0 or a vector's length is
/// not `dim`.
pub fn write_arena<'a>(
    path: &Path,
    dim: u32,
    generation: u64,
    rows: impl IntoIterator<Item = (u64, &'a [f32])>,
) -> Result<()> {
    if dim == 0 {
        return Err(Error::InvalidInput("arena dimension must be > 0".into()));
    }
    let rows: Vec<(u64, &[f32])> = rows.into_iter().collect();
    if let Some((doc, v)) = rows.iter().find(|(_, v)| v.len() != dim as usize) {
        return Err(Error::InvalidInput(format!(
            "vector of doc {doc} has {} components, arena dimension is {dim}",
            v.len()
        )));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    // Of this call alone: two threads writing one path each publish a
    // whole file (one wins), not a mix of both written into one.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{call}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = write_tmp(&tmp, dim, generation, &rows).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        crate::store::sync_dir(dir).map_err(|e| Error::io(dir, e))
    });
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    tracing::debug!(path = %path.display(), dim, count = rows.len(), generation, "arena written");
    Ok(())
}

fn write_tmp(tmp: &Path, dim: u32, generation: u64, rows: &[(u64, &[f32])]) -> Result<()> {
    let io = |e| Error::io(tmp, e);
    let file = File::create(tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    w.write_all(&[0u8; HEADER_LEN]).map_err(io)?;
    for (doc, _) in rows {
        let b = doc.to_le_bytes();
        crc.update(&b);
        w.write_all(&b).map_err(io)?;
    }
    w.flush().map_err(io)?;
    failpoint!("arena::mid_write");
    for (_, v) in rows {
        if cfg!(target_endian = "little") {
            let b: &[u8] = bytemuck::cast_slice(v);
            crc.update(b);
            w.write_all(b).map_err(io)?;
        } else {
            for f in v.iter() {
                let b = f.to_le_bytes();
                crc.update(&b);
                w.write_all(&b).map_err(io)?;
            }
        }
    }
    let header = Header {
        dim,
        count: rows.len() as u64,
        generation,
        payload_crc: crc.finalize(),
    };
    let mut file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header.encode()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A validated, read-only view of arena bytes.
///
/// Obtained from [`open_arena_bytes`] or [`Arena::view`].
#[derive(Clone, Copy)]
pub struct ArenaView<'a> {
    header: Header,
    docs: &'a [u8],
    vectors: &'a [f32],
}

impl fmt::Debug for ArenaView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaView")
            .field("dim", &self.header.dim)
            .field("len", &self.header.count)
            .field("generation", &self.header.generation)
            .finish()
    }
}

/// Validates `bytes` as a complete arena file, exactly as [`Arena::open`]
/// does, and returns a view of it.
///
/// Never panics. Failures are [`Error::ArenaCorrupt`] with the path
/// `"<bytes>"`; [`Error::InvalidInput`] if `bytes` is not 4-byte aligned
/// (files are mapped page-aligned, so this only concerns in-memory buffers).
pub fn open_arena_bytes(bytes: &[u8]) -> Result<ArenaView<'_>> {
    refuse_big_endian()?;
    let layout = format::validate(bytes).map_err(|r| Error::arena(BYTES_PATH, r))?;
    ArenaView::new(bytes, &layout)
        .ok_or_else(|| Error::InvalidInput("arena buffer is not 4-byte aligned".into()))
}

impl<'a> ArenaView<'a> {
    /// `None` if the vector section is misaligned for `f32`.
    fn new(bytes: &'a [u8], layout: &Layout) -> Option<Self> {
        let vectors = bytemuck::try_cast_slice(&bytes[layout.vectors.clone()]).ok()?;
        Some(ArenaView {
            header: layout.header,
            docs: &bytes[layout.docs.clone()],
            vectors,
        })
    }

    /// Dimension of every vector.
    pub fn dim(&self) -> u32 {
        self.header.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.docs.len() / 8
    }

    /// Whether the arena holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The index generation this arena was written for.
    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    /// Doc id of row `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn doc(&self, i: usize) -> u64 {
        // Checked first: in a release build `i * 8` could wrap into range.
        assert!(i < self.len(), "row {i} of an arena of {}", self.len());
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.docs[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    }

    /// Vector of row `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn vector(&self, i: usize) -> &'a [f32] {
        assert!(i < self.len(), "row {i} of an arena of {}", self.len());
        let dim = self.header.dim as usize;
        &self.vectors[i * dim..(i + 1) * dim]
    }

    /// All `(doc, vector)` rows in file order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &'a [f32])> + 'a {
        let docs = self.docs.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        docs.zip(self.vectors.chunks_exact(self.header.dim as usize))
    }
}

/// A memory-mapped, fully validated arena file.
///
/// The mapping assumes the file is never modified in place: arenas are only
/// ever replaced by rename (see [`write_arena`]).
pub struct Arena {
    mmap: Mmap,
    layout: Layout,
    path: PathBuf,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("path", &self.path)
            .field("dim", &self.layout.header.dim)
            .field("len", &self.layout.header.count)
            .field("generation", &self.layout.header.generation)
            .finish()
    }
}

impl Arena {
    /// Maps and validates the arena at `path` (magic, version, header and
    /// payload checksums, exact length) before exposing any data.
    ///
    /// The file is mapped, not read: it must not be changed in place while
    /// the `Arena` lives (this crate only ever replaces arenas by renaming a
    /// new file over the old). Truncating a mapped file makes the next read
    /// of the lost part kill the process (SIGBUS), which no check can turn
    /// into an error; so does a read error of the disk under it (EIO from
    /// a bad sector), where a `read` would have returned one. Removing the
    /// `arena/` folder of a database whose open dies that way makes it
    /// rebuild from sled.
    pub fn open(path: &Path) -> Result<Arena> {
        refuse_big_endian()?;
        let io = |e| Error::io(path, e);
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            // Not mapped: mapping an empty file fails on some platforms.
            return Err(Error::arena(path, format::too_short(len)));
        }
        // SAFETY: the mapping is read-only and arenas are never modified in
        // place (writers rename a new file over the old one), so the bytes
        // cannot change under us unless someone else truncates the file,
        // which the doc above warns of.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let layout = format::validate(&mmap).map_err(|r| Error::arena(path, r))?;
        let arena = Arena {
            mmap,
            layout,
            path: path.to_path_buf(),
        };
        if ArenaView::new(&arena.mmap, &arena.layout).is_none() {
            return Err(Error::arena(path, "vector section is misaligned"));
        }
        Ok(arena)
    }

    /// A view of the arena's rows.
    pub fn view(&self) -> ArenaView<'_> {
        // Alignment was checked in `open`; the mapping never moves.
        ArenaView::new(&self.mmap, &self.layout).unwrap_or(ArenaView {
            header: self.layout.header,
            docs: &[],
            vectors: &[],
        })
    }

    /// Dimension of every vector.
    pub fn dim(&self) -> u32 {
        self.layout.header.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.layout.docs.len() / 8
    }

    /// Whether the arena holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.layout.docs.is_empty()
    }

    /// The index generation this arena was written for.
    pub fn generation(&self) -> u64 {
        self.layout.header.generation
    }

    /// Doc id of row `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn doc(&self, i: usize) -> u64 {
        self.view().doc(i)
    }

    /// Vector of row `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn vector(&self, i: usize) -> &[f32] {
        self.view().vector(i)
    }

    /// All `(doc, vector)` rows in file order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> + '_ {
        self.view().iter()
    }
}
