//! A walk over hnsw_rs 0.3's dump files (`graph.hnsw.graph` and
//! `graph.hnsw.data`, full mode), reading every field hnsw_rs's loader will
//! read, before it does. hnsw_rs trusts them: a count sizes an allocation
//! (a wrong one aborts the process), a wrong magic or id is an `assert!`
//! or a `process::exit`, a vector shorter than the dimension is read out
//! of bounds, and a neighbour or entry point past its layer is an index
//! panic (and an entry point below the top layer leaks the layers above
//! it when the graph is dropped). The checksums in our header catch damage; this catches a dump
//! that is well checksummed but not what hnsw_rs can read (a bug, or a
//! forged file). Integers are the host's byte order, as hnsw_rs writes them
//! (the header refuses a dump from a host of the other order).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

const MAGIC_DESCR_3: u32 = 0x002a_6771;
const MAGIC_DESCR_4: u32 = 0x002a_6779;
const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
const MAGIC_DATA: u32 = 0xa67f_0000;
/// hnsw_rs's `NB_LAYER_MAX`: every point has this many neighbour lists.
const MAX_LAYERS: u8 = 16;
/// Bytes of one neighbour in a full-mode dump: id, layer, rank, distance.
const NEIGHBOUR_BYTES: u64 = 8 + 1 + 4 + 4;
/// Bytes of a point's fixed part: magic, id, layer, rank.
const POINT_BYTES: u64 = 4 + 8 + 1 + 4;

/// Reads a file front to back, knowing how much is left.
struct Walk {
    r: BufReader<File>,
    left: u64,
    what: &'static str,
}

impl Walk {
    fn open(path: &Path, what: &'static str) -> Result<Walk, String> {
        let f = File::open(path).map_err(|e| format!("{what}: cannot open: {e}"))?;
        let left = f
            .metadata()
            .map_err(|e| format!("{what}: cannot stat: {e}"))?
            .len();
        Ok(Walk {
            r: BufReader::new(f),
            left,
            what,
        })
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.left < N as u64 {
            return Err(format!("{}: ends early", self.what));
        }
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{}: {e}", self.what))?;
        self.left -= N as u64;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_ne_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_ne_bytes(self.bytes()?))
    }

    /// A count of items of `each` bytes, checked against what is left.
    fn count(&mut self, each: u64, field: &str) -> Result<u64, String> {
        let n = self.u64()?;
        if n.checked_mul(each).is_none_or(|b| b > self.left) {
            return Err(format!(
                "{}: {field} {n} does not fit in the {} bytes left",
                self.what, self.left
            ));
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.left {
            return Err(format!("{}: ends early", self.what));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| format!("{}: {e}", self.what))?;
        if copied != n {
            return Err(format!("{}: ends early", self.what));
        }
        self.left -= n;
        Ok(())
    }

    fn text(&mut self, field: &str) -> Result<String, String> {
        let n = self.u64()?;
        if n > 256 || n > self.left {
            return Err(format!("{}: {field} is {n} bytes long", self.what));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{}: {e}", self.what))?;
        self.left -= n;
        String::from_utf8(b).map_err(|_| format!("{}: {field} is not UTF-8", self.what))
    }
}

/// Checks the dump `basename` in `dir` as hnsw_rs will read it, for `dim`
/// f32 components per point and the parameters and point count our header
/// holds.
pub(crate) fn check(
    dir: &Path,
    basename: &str,
    dim: usize,
    params: &crate::HnswParams,
    points: usize,
) -> Result<(), String> {
    let max_connections = params.max_connections;
    let mut g = Walk::open(&dir.join(format!("{basename}.hnsw.graph")), "graph file")?;
    let mut d = Walk::open(&dir.join(format!("{basename}.hnsw.data")), "data file")?;

    // The description.
    let version = match g.u32()? {
        MAGIC_DESCR_3 => 3,
        MAGIC_DESCR_4 => 4,
        m => return Err(format!("graph file: unknown description magic {m:#x}")),
    };
    if g.u8()? != 1 {
        return Err("graph file: not a full-mode dump".into());
    }
    let m = g.u8()?;
    if usize::from(m) != max_connections {
        return Err(format!(
            "graph file: {m} connections per node, the header says {max_connections}"
        ));
    }
    if version == 4 {
        // A factor on the level scale (see graph.rs): 1.0 from this build,
        // 1 / ln M or less from older ones (their graphs heal at the next
        // save). A forged NaN or 0 would put every new point in layer 0.
        let factor = f64::from_ne_bytes(g.bytes::<8>()?);
        if !(factor.is_finite() && factor > 0.0 && factor <= 1.0) {
            return Err(format!("graph file: level scale factor {factor}"));
        }
    }
    // hnsw_rs writes (and draws levels for) all 16; a graph of fewer would
    // load, then panic on an insert drawn past them.
    let layers = g.u8()?;
    if layers != MAX_LAYERS {
        return Err(format!("graph file: {layers} layers, not {MAX_LAYERS}"));
    }
    // hnsw_rs takes this as the loaded graph's ef_construction and sizes
    // each insert's heaps by it: 2^56 aborts the process.
    let ef = g.u64()?;
    if ef != params.ef_construction as u64 {
        return Err(format!(
            "graph file: ef_construction {ef}, the header says {}",
            params.ef_construction
        ));
    }
    let nb_point = g.u64()?;
    // hnsw_rs counts down from it as an i64, asserting it stays >= 0.
    if nb_point > i64::MAX as u64 {
        return Err(format!("graph file: {nb_point} points described"));
    }
    let stored_dim = g.u64()?;
    if stored_dim != dim as u64 {
        return Err(format!(
            "graph file: dimension {stored_dim}, expected {dim}"
        ));
    }
    // hnsw_rs compares both with the loader's types: the distance by its
    // last path segment (indexing an empty name's), the element type
    // whole, with a panic.
    let last = |name: &str| name.rsplit_terminator("::").next().map(str::to_owned);
    let distance = g.text("distance name")?;
    if last(&distance).is_none()
        || last(&distance) != last(std::any::type_name::<crate::graph::VitrineL2>())
    {
        return Err(format!("graph file: distance '{distance}'"));
    }
    let element = g.text("type name")?;
    if element != std::any::type_name::<f32>() {
        return Err(format!("graph file: element type '{element}'"));
    }

    // The data file's head.
    if d.u32()? != MAGIC_DATA {
        return Err("data file: bad magic".into());
    }
    if d.u64()? != dim as u64 {
        return Err("data file: dimension differs from the graph's".into());
    }
    let vector_bytes = dim as u64 * 4;

    // Points, layer by layer, each with its data record.
    let indexed_layers = g.u8()?;
    if indexed_layers != MAX_LAYERS {
        return Err(format!(
            "graph file: {indexed_layers} indexed layers, not {MAX_LAYERS}"
        ));
    }
    let mut per_layer: Vec<u64> = Vec::with_capacity(indexed_layers as usize);
    // Neighbour references, checked once every layer's size is known.
    let mut refs: Vec<(u8, i32)> = Vec::new();
    let mut total = 0u64;
    // Point ids index the header's point table: each once, none past it.
    let mut seen = vec![false; points];
    for l in 0..indexed_layers {
        if g.u32()? != MAGIC_LAYER {
            return Err(format!("graph file: bad magic at layer {l}"));
        }
        let n = g.count(POINT_BYTES, "point count")?;
        for r in 0..n {
            if g.u32()? != MAGIC_POINT {
                return Err(format!("graph file: bad magic at point {r} of layer {l}"));
            }
            let origin = g.u64()?;
            match usize::try_from(origin).ok().and_then(|o| seen.get_mut(o)) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(format!(
                        "graph file: point id {origin} is past the header's {points} points or repeated"
                    ))
                }
            }
            let (layer, rank) = (g.u8()?, i32::from_ne_bytes(g.bytes()?));
            if layer != l || u64::try_from(rank).ok() != Some(r) {
                return Err(format!(
                    "graph file: point {r} of layer {l} says it is ({layer}, {rank})"
                ));
            }
            for _ in 0..layers {
                let k = g.count(NEIGHBOUR_BYTES, "neighbour count")?;
                for _ in 0..k {
                    g.u64()?;
                    refs.push((g.u8()?, i32::from_ne_bytes(g.bytes()?)));
                    // Searches recompute distances, but an insert sorts a
                    // neighbour list by them, and hnsw_rs panics on a NaN.
                    let dist = f32::from_ne_bytes(g.bytes()?);
                    if dist.is_nan() || dist < 0.0 {
                        return Err(format!(
                            "graph file: point {r} of layer {l} has a neighbour at distance {dist}"
                        ));
                    }
                }
            }
            if d.u32()? != MAGIC_DATA || d.u64()? != origin {
                return Err(format!(
                    "data file: record of point {origin} is not where the graph puts it"
                ));
            }
            if d.u64()? != vector_bytes {
                return Err(format!(
                    "data file: vector of point {origin} is not {dim} floats"
                ));
            }
            d.skip(vector_bytes)?;
            total += 1;
            if total > nb_point {
                return Err(format!(
                    "graph file: more points than the {nb_point} described"
                ));
            }
        }
        per_layer.push(n);
    }
    let exists = |(layer, rank): (u8, i32)| {
        per_layer
            .get(layer as usize)
            .is_some_and(|&n| u64::try_from(rank).is_ok_and(|r| r < n))
    };
    if let Some(r) = refs.into_iter().find(|&r| !exists(r)) {
        return Err(format!("graph file: a neighbour refers to no point {r:?}"));
    }
    // The entry point.
    g.u64()?;
    let entry = (g.u8()?, i32::from_ne_bytes(g.bytes()?));
    if !exists(entry) {
        return Err(format!("graph file: entry point {entry:?} is not a point"));
    }
    // hnsw_rs's drop unlinks the layers up to the entry point's: points
    // above it, linked to each other, would never be freed.
    let top = per_layer.iter().rposition(|&n| n > 0);
    if top != Some(usize::from(entry.0)) {
        return Err(format!(
            "graph file: entry point {entry:?} is not on the top layer ({top:?})"
        ));
    }
    Ok(())
}
