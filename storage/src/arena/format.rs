//! On-disk layout of a vector arena, and its validation.
//!
//! All integers are little-endian. A 64-byte header:
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! |      0 |    8 | magic `b"VTRNARNA"`                     |
//! |      8 |    4 | format version (`1`)                    |
//! |     12 |    4 | dim                                     |
//! |     16 |    8 | count                                   |
//! |     24 |    8 | generation                              |
//! |     32 |    4 | payload crc32                           |
//! |     36 |    4 | flags (`0`)                             |
//! |     40 |   20 | reserved, zero                          |
//! |     60 |    4 | header crc32 over bytes `0..60`         |
//!
//! then `count` doc ids (`u64`), then `count * dim` `f32`s. The payload crc32
//! covers everything after the header.

use std::ops::Range;

pub(crate) const MAGIC: [u8; 8] = *b"VTRNARNA";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 64;
const HEADER_CRC_AT: usize = 60;

/// The fields of a header, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) dim: u32,
    pub(crate) count: u64,
    pub(crate) generation: u64,
    pub(crate) payload_crc: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.dim.to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.generation.to_le_bytes());
        h[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        // flags (36..40) and reserved (40..60) stay zero.
        let crc = crc32fast::hash(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Where the sections of a validated arena lie.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) header: Header,
    pub(crate) docs: Range<usize>,
    pub(crate) vectors: Range<usize>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn too_short(len: u64) -> String {
    format!("{len} bytes long, shorter than the {HEADER_LEN}-byte header")
}

/// Checks every header field, the exact length and both checksums. Returns
/// the reason on failure; callers attach the path.
pub(crate) fn validate(bytes: &[u8]) -> Result<Layout, String> {
    if bytes.len() < HEADER_LEN {
        return Err(too_short(bytes.len() as u64));
    }
    let h = &bytes[..HEADER_LEN];
    if h[0..8] != MAGIC {
        return Err(format!("bad magic {:02x?}, not a vector arena", &h[0..8]));
    }
    // Version before the header checksum: a future version may lay the
    // header out differently, and should be reported as such.
    let version = u32_at(h, 8);
    if version != VERSION {
        return Err(format!(
            "unsupported arena format version {version} (this build reads {VERSION})"
        ));
    }
    let stored = u32_at(h, HEADER_CRC_AT);
    let computed = crc32fast::hash(&h[..HEADER_CRC_AT]);
    // Fuzzing builds skip the checksums, so that inputs reach the layout
    // checks behind them.
    if stored != computed && !cfg!(fuzzing) {
        return Err(format!(
            "header checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    let flags = u32_at(h, 36);
    if flags != 0 {
        return Err(format!("unknown header flags {flags:#x}"));
    }
    if h[40..HEADER_CRC_AT].iter().any(|&b| b != 0) {
        return Err("reserved header bytes are not zero".to_owned());
    }
    let header = Header {
        dim: u32_at(h, 12),
        count: u64_at(h, 16),
        generation: u64_at(h, 24),
        payload_crc: u32_at(h, 32),
    };
    if header.dim == 0 {
        return Err("dimension is 0".to_owned());
    }
    let sizes = header.count.checked_mul(8).and_then(|docs| {
        let floats = header.count.checked_mul(u64::from(header.dim))?;
        let vecs = floats.checked_mul(4)?;
        Some((
            docs,
            docs.checked_add(vecs)?.checked_add(HEADER_LEN as u64)?,
        ))
    });
    let Some((docs_len, expected)) = sizes else {
        return Err(format!(
            "count {} x dim {} overflows",
            header.count, header.dim
        ));
    };
    if bytes.len() as u64 != expected {
        return Err(format!(
            "{} bytes long, but the header ({} vectors of dim {}) implies {expected}",
            bytes.len(),
            header.count,
            header.dim
        ));
    }
    // Both fit in usize: they are bounded by bytes.len().
    let docs_end = HEADER_LEN + docs_len as usize;
    let computed = crc32fast::hash(&bytes[HEADER_LEN..]);
    if computed != header.payload_crc && !cfg!(fuzzing) {
        return Err(format!(
            "payload checksum mismatch (stored {:08x}, computed {computed:08x})",
            header.payload_crc
        ));
    }
    Ok(Layout {
        header,
        docs: HEADER_LEN..docs_end,
        vectors: docs_end..bytes.len(),
    })
}
