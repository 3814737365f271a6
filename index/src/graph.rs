//! HNSW graph over dense point ids, with tombstones.

use std::collections::HashMap;
use std::path::Path;

use hnsw_rs::prelude::{AnnT, DataId, Distance, FilterT, Hnsw, HnswIo};

use crate::config::HnswParams;
use crate::error::{Error, Result};
use crate::flat::{check_dim, FlatIndex};
use crate::kernels;
use crate::metric::Metric;
use crate::search::AllowSet;

/// Graph distance: squared Euclidean on prepared vectors.
///
/// On normalised vectors it orders like cosine; on raw vectors it orders like
/// the dot product when norms are equal. It never returns NaN or a negative
/// value, since hnsw_rs asserts `dist >= 0`. hnsw_rs stores the type's name
/// in dumps and checks it on reload, so do not rename it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VitrineL2;

impl Distance<f32> for VitrineL2 {
    #[inline]
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = kernels::l2_sq(a, b);
        if d.is_nan() {
            f32::MAX
        } else {
            d.max(0.0)
        }
    }
}

/// Below this fraction of passing points, filter inside hnsw_rs instead.
const POSTFILTER_MIN_SELECTIVITY: f64 = 0.2;
/// Cap on the oversampled candidate list.
const POSTFILTER_MAX_EF: usize = 2048;

type Graph<'a> = Hnsw<'a, f32, VitrineL2>;

/// A graph reloaded from disk borrows its `HnswIo` loader.
#[ouroboros::self_referencing]
struct LoadedGraph {
    io: HnswIo,
    #[borrows(mut io)]
    #[not_covariant]
    hnsw: Graph<'this>,
}

enum GraphKind {
    Built(Box<Graph<'static>>),
    Loaded(LoadedGraph),
}

/// A graph, freed in a thread pool of its own: hnsw_rs's drop clears its
/// layers with rayon, and would start rayon's global pool, never used
/// here (its threads stay for the process's life; started at the thread
/// limit, it panics, here inside a drop, and stays broken).
struct GraphStore(std::mem::ManuallyDrop<GraphKind>);

impl GraphStore {
    fn built(graph: Graph<'static>) -> Self {
        GraphStore(std::mem::ManuallyDrop::new(GraphKind::Built(Box::new(
            graph,
        ))))
    }

    fn loaded(graph: LoadedGraph) -> Self {
        GraphStore(std::mem::ManuallyDrop::new(GraphKind::Loaded(graph)))
    }

    fn with<R>(&self, f: impl FnOnce(&Graph<'_>) -> R) -> R {
        match &*self.0 {
            GraphKind::Built(h) => f(h),
            GraphKind::Loaded(l) => l.with_hnsw(f),
        }
    }
}

impl Drop for GraphStore {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never read after.
        let graph = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for want in [threads, 1] {
            match rayon::ThreadPoolBuilder::new()
                .num_threads(want)
                .thread_name(|i| format!("vitrine-graph-free-{i}"))
                .build()
            {
                Ok(pool) => return pool.install(move || drop(graph)),
                Err(e) => {
                    tracing::warn!(error = %e, threads = want, "no thread pool to free a graph in")
                }
            }
        }
        // Not one thread to start: kept, rather than a panic in a drop.
        tracing::warn!("an index graph is left allocated: no thread could be started to free it");
        std::mem::forget(graph);
    }
}

/// HNSW graph (hnsw_rs) whose nodes are dense point ids mapped to documents.
///
/// hnsw_rs cannot delete, so removing or replacing a document turns its point
/// into a tombstone that searches filter out; [`SpaceIndex`](crate::SpaceIndex)
/// rebuilds the graph when tombstones pile up. The graph returns candidate
/// documents only: exact scores come from a [`FlatIndex`].
pub struct HnswIndex {
    dim: usize,
    metric: Metric,
    params: HnswParams,
    graph: GraphStore,
    /// Point id -> document; `None` is a tombstone.
    points: Vec<Option<u64>>,
    doc_point: HashMap<u64, usize>,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .field("params", &self.params)
            .field("points", &self.points.len())
            .field("live", &self.doc_point.len())
            .finish_non_exhaustive()
    }
}

fn new_graph(params: &HnswParams, capacity: usize) -> Graph<'static> {
    // `params` is validated by every caller: hnsw_rs exits on max_connections > 256.
    Hnsw::new(
        params.max_connections,
        capacity.max(1024),
        params.max_layers,
        params.ef_construction,
        VitrineL2,
    )
}

/// Where hnsw_rs keeps the level scale in its graph file: after the
/// description's magic (u32), dump mode (u8) and max connections (u8).
pub(crate) const LEVEL_SCALE_AT: u64 = 6;

/// Writes 1.0 as the dump's level scale. hnsw_rs 0.3 saves a graph's level
/// scale (1 / ln M) there but reads the field back as a factor on it, so a
/// loaded graph drew its new points' levels with (1 / ln M)², and each
/// save and load shrank it again: points inserted after a few reopens
/// reached no layer but the lowest. Our graphs never change the scale.
fn set_level_scale_factor(dir: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join(format!("{}.hnsw.graph", crate::format::GRAPH_BASENAME));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.seek(SeekFrom::Start(LEVEL_SCALE_AT))?;
        f.write_all(&1.0f64.to_ne_bytes())
    };
    write().map_err(|e| Error::io(&path, e))
}

impl HnswIndex {
    /// Creates an empty graph.
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Result<Self> {
        check_dim(dim)?;
        params.validate()?;
        let graph = GraphStore::built(new_graph(&params, 0));
        Ok(HnswIndex {
            dim,
            metric,
            params,
            graph,
            points: Vec::new(),
            doc_point: HashMap::new(),
        })
    }

    /// Builds a graph over all vectors of `flat`, inserting with `threads`
    /// rayon threads (`0` = all cores, `1` = sequential and deterministic;
    /// at most 4 per core).
    pub fn build(flat: &FlatIndex, params: HnswParams, threads: usize) -> Result<Self> {
        use crate::search::VectorIndex;
        params.validate()?;
        let n = flat.len();
        let hnsw = new_graph(&params, n);
        let items: Vec<(&[f32], usize)> =
            flat.iter().enumerate().map(|(i, (_, v))| (v, i)).collect();
        let points: Vec<Option<u64>> = flat.docs().iter().map(|&d| Some(d)).collect();
        let doc_point = flat
            .docs()
            .iter()
            .enumerate()
            .map(|(i, &d)| (d, i))
            .collect();
        if threads == 1 || n < 256 {
            for &item in &items {
                hnsw.insert_slice(item);
            }
        } else {
            // Past a few per core, threads only contend for the graph's
            // locks; a count of thousands would first start them all.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = threads.min(cores.saturating_mul(4));
            match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
                // The first point alone: hnsw_rs's insert of point 1 returns
                // without claiming the entry when another thread's point 2
                // claimed it first, and a graph whose entry is below its top
                // layer is refused at load (and leaks when freed).
                Ok(pool) => {
                    hnsw.insert_slice(items[0]);
                    let rest = items[1..].to_vec();
                    pool.install(|| hnsw.parallel_insert_slice(&rest))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a thread pool; inserting sequentially");
                    for &item in &items {
                        hnsw.insert_slice(item);
                    }
                }
            }
        }
        tracing::debug!(points = n, threads, "built HNSW graph");
        Ok(HnswIndex {
            dim: flat.dim(),
            metric: flat.metric(),
            params,
            graph: GraphStore::built(hnsw),
            points,
            doc_point,
        })
    }

    /// Number of components per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Metric the vectors were prepared for.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Graph parameters.
    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// Number of live documents.
    pub fn len(&self) -> usize {
        self.doc_point.len()
    }

    /// Whether no document is live.
    pub fn is_empty(&self) -> bool {
        self.doc_point.is_empty()
    }

    /// Number of graph nodes, tombstones included.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// Number of tombstoned nodes.
    pub fn tombstones(&self) -> usize {
        self.points.len() - self.doc_point.len()
    }

    /// Whether `doc` is live in the graph.
    pub fn contains(&self, doc: u64) -> bool {
        self.doc_point.contains_key(&doc)
    }

    /// Live documents, in no particular order.
    pub fn docs(&self) -> impl Iterator<Item = u64> + '_ {
        self.doc_point.keys().copied()
    }

    pub(crate) fn point_table(&self) -> &[Option<u64>] {
        &self.points
    }

    /// Inserts or replaces `doc` (the old node becomes a tombstone).
    pub fn upsert(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        let v = self.metric.prepare(self.dim, v)?;
        self.insert_prepared(doc, &v);
        Ok(())
    }

    pub(crate) fn insert_prepared(&mut self, doc: u64, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.remove(doc);
        let id = self.points.len();
        self.graph.with(|h| h.insert_slice((v, id)));
        self.points.push(Some(doc));
        self.doc_point.insert(doc, id);
    }

    /// Tombstones `doc`; returns whether it was live.
    pub fn remove(&mut self, doc: u64) -> bool {
        match self.doc_point.remove(&doc) {
            Some(p) => {
                self.points[p] = None;
                true
            }
            None => false,
        }
    }

    /// Up to `n` live, allowed documents near `q`, nearest first (graph order,
    /// approximate). `ef` is the candidate list size.
    pub fn nearest(
        &self,
        q: &[f32],
        n: usize,
        ef: usize,
        allow: Option<&AllowSet>,
    ) -> Result<Vec<u64>> {
        let q = self.metric.prepare(self.dim, q)?;
        Ok(self.candidates(&q, n, ef, allow))
    }

    pub(crate) fn candidates(
        &self,
        q: &[f32],
        n: usize,
        ef: usize,
        allow: Option<&AllowSet>,
    ) -> Vec<u64> {
        if n == 0 || self.doc_point.is_empty() {
            return Vec::new();
        }
        // hnsw_rs sizes its heaps by ef: past the number of points a larger
        // ef finds nothing more, so a caller's huge k or ef costs no memory.
        let cap = self.points.len().max(2);
        let n = n.min(cap);
        // hnsw_rs can panic on an empty result heap when ef == 1 and the entry
        // point is filtered out; ef >= 2 avoids that path.
        let ef = ef.max(n).max(2).min(cap);
        let points = &self.points;
        let keep = |id: usize| match points.get(id) {
            Some(Some(doc)) => allow.is_none_or(|a| a.contains(*doc)),
            _ => false,
        };
        // hnsw_rs' filtered search keeps expanding candidates that fail the
        // filter (1.8 ms at 50 % on 20k points versus 0.5 ms unfiltered), so
        // when many points pass, oversample an unfiltered search and filter
        // afterwards (0.78 ms at 50 %); fall back if too few survive.
        let live = self.doc_point.len();
        let passing = allow.map_or(live, |a| {
            a.estimate_in(|d| self.doc_point.contains_key(&d)).min(live)
        });
        let selectivity = passing as f64 / self.points.len() as f64;
        if selectivity >= POSTFILTER_MIN_SELECTIVITY {
            let wide = ((ef as f64 / selectivity) * 1.25).ceil() as usize;
            let wide = wide.clamp(ef, POSTFILTER_MAX_EF.max(ef));
            let found: Vec<u64> = self.graph.with(|h| {
                h.search_filter(q, wide, wide, None)
                    .iter()
                    .filter(|nb| keep(nb.d_id))
                    .filter_map(|nb| points.get(nb.d_id).copied().flatten())
                    .take(n)
                    .collect()
            });
            if found.len() >= n.min(passing) {
                return found;
            }
        }
        let neighbours = self.graph.with(|h| {
            if allow.is_none() && self.tombstones() == 0 {
                h.search_filter(q, n, ef, None)
            } else {
                let filter = |id: &DataId| keep(*id);
                h.search_filter(q, n, ef, Some(&filter as &dyn FilterT))
            }
        });
        neighbours
            .iter()
            .filter_map(|nb| points.get(nb.d_id).copied().flatten())
            .collect()
    }

    /// Dumps the graph into `dir` with basename `graph`; `dir` must be empty.
    pub(crate) fn dump(&self, dir: &Path) -> Result<()> {
        // hnsw_rs panics when it cannot create its files (no file handles
        // or inodes left): an error for the caller, not a panic in a drop.
        let name = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.graph
                .with(|h| h.file_dump(dir, crate::format::GRAPH_BASENAME))
        }))
        .map_err(|_| {
            Error::Graph(format!(
                "hnsw_rs panicked writing its dump in {}",
                dir.display()
            ))
        })?
        .map_err(|e| match e.downcast::<std::io::Error>() {
            // A full disk keeps its kind and names the folder.
            Ok(io) => Error::io(dir, io),
            Err(e) => Error::Graph(format!(
                "hnsw_rs could not write its dump in {}: {e}",
                dir.display()
            )),
        })?;
        if name != crate::format::GRAPH_BASENAME {
            return Err(Error::Graph(format!(
                "hnsw_rs dumped under basename {name:?} instead of {:?}",
                crate::format::GRAPH_BASENAME
            )));
        }
        set_level_scale_factor(dir)
    }

    /// Loads a dump whose files were already verified (length and checksum).
    pub(crate) fn load_verified(
        dir: &Path,
        dim: usize,
        metric: Metric,
        params: HnswParams,
        points: Vec<Option<u64>>,
    ) -> std::result::Result<Self, String> {
        let graph = if points.is_empty() {
            GraphStore::built(new_graph(&params, 0))
        } else {
            // The files passed their lengths and checksums; what hnsw_rs
            // would abort, exit or read out of bounds on is refused first,
            // and a panic on a dump that still fooled both is an error, not
            // a crash of the caller.
            crate::hnsw_dump::check(
                dir,
                crate::format::GRAPH_BASENAME,
                dim,
                &params,
                points.len(),
            )?;
            let io = HnswIo::new(dir, crate::format::GRAPH_BASENAME);
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                LoadedGraphTryBuilder {
                    io,
                    hnsw_builder: |io: &mut HnswIo| {
                        io.load_hnsw::<f32, VitrineL2>().map_err(|e| e.to_string())
                    },
                }
                .try_build()
            }))
            .map_err(|_| "hnsw_rs panicked while reading the dump".to_string())??;
            // Wrapped before the checks: one that refuses it frees it too.
            let loaded = GraphStore::loaded(loaded);
            let (nb, d) = loaded.with(|h| {
                (
                    h.get_nb_point(),
                    h.get_point_indexation().get_data_dimension(),
                )
            });
            if nb != points.len() {
                return Err(format!(
                    "graph has {nb} points, header lists {}",
                    points.len()
                ));
            }
            if d != dim {
                return Err(format!("graph dimension {d}, header says {dim}"));
            }
            loaded
        };
        let doc_point = points
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (d, i)))
            .collect();
        Ok(HnswIndex {
            dim,
            metric,
            params,
            graph,
            points,
            doc_point,
        })
    }
}
