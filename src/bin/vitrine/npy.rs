//! Just enough of the `.npy` format for the benchmark harness: C-order 2-D
//! arrays of little-endian f32 (vectors) or integers (ground truth).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// A row-major matrix.
pub struct Matrix<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T> Matrix<T> {
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

struct Header {
    descr: String,
    rows: usize,
    cols: usize,
    offset: usize,
}

fn header(bytes: &[u8], path: &Path) -> Result<Header> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{}: not a .npy file (bad magic)", path.display());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{}: truncated header", path.display());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("{}: unsupported .npy version {v}", path.display()),
    };
    let end = start
        .checked_add(len)
        .filter(|e| *e <= bytes.len())
        .with_context(|| format!("{}: truncated header", path.display()))?;
    let text = std::str::from_utf8(&bytes[start..end])
        .with_context(|| format!("{}: header is not text", path.display()))?;
    let field = |name: &str| -> Option<&str> {
        let at = text.find(&format!("'{name}'"))? + name.len() + 2;
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .with_context(|| format!("{}: no descr in header", path.display()))?
        .to_string();
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        bail!("{}: Fortran-order arrays are not supported", path.display());
    }
    let shape = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .with_context(|| format!("{}: no shape in header", path.display()))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{}: bad shape '{shape}'", path.display()))?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => bail!(
            "{}: expected a 2-D array, shape is ({shape})",
            path.display()
        ),
    };
    Ok(Header {
        descr,
        rows,
        cols,
        offset: end,
    })
}

fn load<T, const N: usize>(
    path: &Path,
    accept: &[&str],
    conv: impl Fn([u8; N]) -> T,
) -> Result<(Matrix<T>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let h = header(&bytes, path)?;
    if !accept.contains(&h.descr.as_str()) {
        bail!(
            "{}: dtype '{}' not supported here (want one of {accept:?})",
            path.display(),
            h.descr
        );
    }
    let want = h
        .rows
        .checked_mul(h.cols)
        .and_then(|n| n.checked_mul(N))
        .context("array too large")?;
    let body = &bytes[h.offset..];
    if body.len() != want {
        bail!(
            "{}: expected {want} data bytes for shape ({}, {}), found {}",
            path.display(),
            h.rows,
            h.cols,
            body.len()
        );
    }
    let data = body
        .chunks_exact(N)
        .map(|c| conv(c.try_into().expect("chunk size")))
        .collect();
    Ok((
        Matrix {
            rows: h.rows,
            cols: h.cols,
            data,
        },
        h.descr,
    ))
}

pub fn read_f32(path: &Path) -> Result<Matrix<f32>> {
    Ok(load::<f32, 4>(path, &["<f4"], f32::from_le_bytes)?.0)
}

/// Ground-truth indices: int32/int64/uint32/uint64.
pub fn read_indices(path: &Path) -> Result<Matrix<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let descr = header(&bytes, path)?.descr;
    match descr.as_str() {
        "<i8" => Ok(load::<i64, 8>(path, &["<i8"], i64::from_le_bytes)?.0),
        "<u8" => Ok(load::<i64, 8>(path, &["<u8"], |b| u64::from_le_bytes(b) as i64)?.0),
        "<i4" => Ok(load::<i64, 4>(path, &["<i4"], |b| i32::from_le_bytes(b) as i64)?.0),
        "<u4" => Ok(load::<i64, 4>(path, &["<u4"], |b| u32::from_le_bytes(b) as i64)?.0),
        d => bail!(
            "{}: ground truth dtype '{d}' is not an integer type",
            path.display()
        ),
    }
}

/// Writes a 2-D f32 array (used by `bench open` and by tests through the CLI).
#[allow(dead_code)]
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    let mut dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
