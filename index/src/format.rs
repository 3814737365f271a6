//! On-disk format of a saved [`SpaceIndex`](crate::SpaceIndex).
//!
//! A saved index is a directory holding hnsw_rs' dump (`graph.hnsw.graph`,
//! `graph.hnsw.data`, native-endian) and our header `index.vtx`. The header
//! is little-endian:
//!
//! | field | type |
//! |---|---|
//! | magic `b"VTRNHNSW"` | 8 bytes |
//! | format version (= 1) | u32 |
//! | payload endianness (1 little, 2 big) | u8 |
//! | payload `usize` width in bytes | u8 |
//! | metric (1 cosine, 2 inner product) | u8 |
//! | reserved (0) | u8 |
//! | dim | u32 |
//! | max_connections, ef_construction, ef_search, max_layers | 4 × u32 |
//! | generation | u64 |
//! | live count | u64 |
//! | point count | u64 |
//! | per point: tag (0 tombstone, 1 live) then, if live, doc | u8 [+ u64] |
//! | graph file length, crc32 | u64, u32 |
//! | data file length, crc32 | u64, u32 |
//! | crc32 of all preceding bytes | u32 |
//!
//! The dump files' lengths and checksums are verified before hnsw_rs reads
//! them, because hnsw_rs panics or exits on damaged input.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use crate::config::HnswParams;
use crate::flat::MAX_DIM;
use crate::metric::Metric;

pub(crate) const HEADER_FILE: &str = "index.vtx";
pub(crate) const GRAPH_BASENAME: &str = "graph";
pub(crate) const GRAPH_FILE: &str = "graph.hnsw.graph";
pub(crate) const DATA_FILE: &str = "graph.hnsw.data";

const MAGIC: &[u8; 8] = b"VTRNHNSW";
/// Current header format version.
pub const FORMAT_VERSION: u32 = 1;

const ENDIAN_LITTLE: u8 = 1;
const ENDIAN_BIG: u8 = 2;

fn host_endianness() -> u8 {
    if cfg!(target_endian = "little") {
        ENDIAN_LITTLE
    } else {
        ENDIAN_BIG
    }
}

/// Length and CRC-32 of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileSum {
    /// Length in bytes.
    pub len: u64,
    /// CRC-32 (IEEE) of the contents.
    pub crc: u32,
}

/// Decoded contents of `index.vtx`.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexHeader {
    /// Format version.
    pub version: u32,
    /// Metric.
    pub metric: Metric,
    /// Vector dimension.
    pub dim: usize,
    /// Parameters the graph was built with.
    pub params: HnswParams,
    /// Caller-supplied generation.
    pub generation: u64,
    /// Number of live points.
    pub live: u64,
    /// Point id -> document; `None` marks a tombstone.
    pub points: Vec<Option<u64>>,
    /// Checksum of `graph.hnsw.graph`.
    pub graph: FileSum,
    /// Checksum of `graph.hnsw.data`.
    pub data: FileSum,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than the fields require.
    #[error("truncated header")]
    Truncated,
    /// The file does not start with the magic bytes.
    #[error("bad magic")]
    BadMagic,
    /// Written by another format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    Checksum,
    /// The dump was written by a host with another byte order or word size.
    #[error("dump written on a platform with another byte order or word size")]
    ForeignPlatform,
    /// A field holds an impossible value.
    #[error("invalid header: {0}")]
    Invalid(String),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderError> {
        if self.buf.len() < n {
            return Err(HeaderError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HeaderError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, HeaderError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, HeaderError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn usize32(&mut self) -> Result<usize, HeaderError> {
        usize::try_from(self.u32()?).map_err(|_| HeaderError::Invalid("value exceeds usize".into()))
    }
}

/// Parses and validates `index.vtx` contents. Pure: reads no files, never
/// panics, and allocates at most in proportion to `bytes.len()`.
pub fn parse_index_header(bytes: &[u8]) -> Result<IndexHeader, HeaderError> {
    let mut r = Reader { buf: bytes };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    if bytes.len() < 4 + 16 {
        return Err(HeaderError::Truncated);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err(HeaderError::Checksum);
    }
    // From here on only `body` is read, so the trailing crc is never a field.
    let mut r = Reader {
        buf: &body[MAGIC.len() + 4..],
    };
    let endian = r.u8()?;
    let width = r.u8()?;
    if endian != host_endianness() || usize::from(width) != std::mem::size_of::<usize>() {
        return Err(HeaderError::ForeignPlatform);
    }
    let metric =
        Metric::from_u8(r.u8()?).ok_or_else(|| HeaderError::Invalid("unknown metric".into()))?;
    if r.u8()? != 0 {
        return Err(HeaderError::Invalid("reserved byte is not zero".into()));
    }
    let dim = r.usize32()?;
    if dim == 0 || dim > MAX_DIM {
        return Err(HeaderError::Invalid(format!(
            "dimension {dim} out of range"
        )));
    }
    let params = HnswParams {
        max_connections: r.usize32()?,
        ef_construction: r.usize32()?,
        ef_search: r.usize32()?,
        max_layers: r.usize32()?,
    };
    params
        .validate()
        .map_err(|e| HeaderError::Invalid(e.to_string()))?;
    let generation = r.u64()?;
    let live = r.u64()?;
    let count = r.u64()?;
    // Each point takes at least one byte: bound the allocation by the input.
    if count > r.buf.len() as u64 {
        return Err(HeaderError::Truncated);
    }
    let count = count as usize;
    let mut points = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        match r.u8()? {
            0 => points.push(None),
            1 => {
                let doc = r.u64()?;
                if !seen.insert(doc) {
                    return Err(HeaderError::Invalid(format!("document {doc} listed twice")));
                }
                points.push(Some(doc));
            }
            t => return Err(HeaderError::Invalid(format!("bad point tag {t}"))),
        }
    }
    if seen.len() as u64 != live {
        return Err(HeaderError::Invalid(format!(
            "live count {live} but {} live points",
            seen.len()
        )));
    }
    let graph = FileSum {
        len: r.u64()?,
        crc: r.u32()?,
    };
    let data = FileSum {
        len: r.u64()?,
        crc: r.u32()?,
    };
    if !r.buf.is_empty() {
        return Err(HeaderError::Invalid("trailing bytes".into()));
    }
    if points.is_empty() && (graph != FileSum::default() || data != FileSum::default()) {
        return Err(HeaderError::Invalid("empty graph with dump files".into()));
    }
    // The data dump holds every point's f32 vector. A header that promises
    // less (an empty dump has CRC 0) must not send hnsw_rs, which panics or
    // exits on a short file, to read it.
    let vector_bytes = (points.len() as u64).saturating_mul(dim as u64 * 4);
    if !points.is_empty() && (graph.len == 0 || data.len < vector_bytes) {
        return Err(HeaderError::Invalid(format!(
            "dump files of {} and {} bytes cannot hold {} points of dimension {dim}",
            graph.len,
            data.len,
            points.len()
        )));
    }
    Ok(IndexHeader {
        version,
        metric,
        dim,
        params,
        generation,
        live,
        points,
        graph,
        data,
    })
}

/// Serialises a header (the inverse of [`parse_index_header`]).
pub fn encode_index_header(h: &IndexHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + h.points.len() * 9);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(host_endianness());
    out.push(std::mem::size_of::<usize>() as u8);
    out.push(h.metric.to_u8());
    out.push(0);
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    for v in [
        h.dim,
        h.params.max_connections,
        h.params.ef_construction,
        h.params.ef_search,
        h.params.max_layers,
    ] {
        out.extend_from_slice(&u32_of(v).to_le_bytes());
    }
    out.extend_from_slice(&h.generation.to_le_bytes());
    out.extend_from_slice(&h.live.to_le_bytes());
    out.extend_from_slice(&(h.points.len() as u64).to_le_bytes());
    for p in &h.points {
        match p {
            None => out.push(0),
            Some(doc) => {
                out.push(1);
                out.extend_from_slice(&doc.to_le_bytes());
            }
        }
    }
    for s in [h.graph, h.data] {
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Length of the fields before the per-point list.
const FIXED_LEN: usize = 60;
/// Length of the fields after it: two file sums and the checksum.
const TRAILER_LEN: u64 = 2 * 12 + 4;

/// Opens `path` when it is a regular file, with its length. A named pipe
/// would block the open, and a device would never end.
fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok((File::open(path)?, meta.len()))
}

/// Reads `index.vtx`, refusing before it reads the rest a file that is not
/// a regular file, does not start with our magic, or is longer than the
/// header its point count describes. Those refusals are `InvalidData`.
pub(crate) fn read_index_header(path: &Path) -> io::Result<Vec<u8>> {
    let (mut f, len) = open_regular(path)?;
    let mut fixed = Vec::with_capacity(FIXED_LEN);
    (&mut f).take(FIXED_LEN as u64).read_to_end(&mut fixed)?;
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    if !fixed.starts_with(MAGIC) && fixed.len() >= MAGIC.len() {
        return Err(invalid(HeaderError::BadMagic.to_string()));
    }
    if fixed.len() == FIXED_LEN {
        let count = u64::from_le_bytes(fixed[FIXED_LEN - 8..].try_into().expect("8 bytes"));
        let longest = (FIXED_LEN as u64)
            .saturating_add(count.saturating_mul(9))
            .saturating_add(TRAILER_LEN);
        if len > longest {
            return Err(invalid(format!(
                "{len} bytes, longer than a header of {count} points"
            )));
        }
    }
    // Anything short is left to the parser, which names what is missing.
    let mut bytes = fixed;
    bytes.reserve(usize::try_from(len).unwrap_or(0).saturating_sub(FIXED_LEN));
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Streams a file through CRC-32. A file that is not regular, or whose
/// length is not `expected_len` when one is given, is refused
/// (`InvalidData`) before it is read.
pub(crate) fn checksum_file(path: &Path, expected_len: Option<u64>) -> io::Result<FileSum> {
    let (mut f, len) = open_regular(path)?;
    if let Some(expected_len) = expected_len.filter(|&e| e != len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("length {len} bytes, expected {expected_len}"),
        ));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileSum {
        len,
        crc: hasher.finalize(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IndexHeader {
        IndexHeader {
            version: FORMAT_VERSION,
            metric: Metric::Cosine,
            dim: 8,
            params: HnswParams::default(),
            generation: 7,
            live: 2,
            points: vec![Some(10), None, Some(3)],
            graph: FileSum { len: 100, crc: 1 },
            data: FileSum { len: 200, crc: 2 },
        }
    }

    #[test]
    fn header_roundtrip() {
        let h = sample();
        assert_eq!(parse_index_header(&encode_index_header(&h)).unwrap(), h);
    }

    #[test]
    fn header_rejects_damage() {
        let bytes = encode_index_header(&sample());
        for cut in 0..bytes.len() {
            assert!(parse_index_header(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(parse_index_header(&b).is_err(), "flip at {i}:{bit}");
            }
        }
        // Dump lengths too small for the points (an empty file has CRC 0).
        for (graph, data) in [(0, 200), (100, 0), (100, 3 * 8 * 4 - 1)] {
            let mut h = sample();
            h.graph = FileSum { len: graph, crc: 0 };
            h.data = FileSum { len: data, crc: 0 };
            assert!(
                matches!(
                    parse_index_header(&encode_index_header(&h)),
                    Err(HeaderError::Invalid(_))
                ),
                "{graph} {data}"
            );
        }
        let mut b = bytes.clone();
        b[8] = 2;
        assert_eq!(
            parse_index_header(&b),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }
}
