//! The index the database uses: exact store + graph + planner.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{HnswParams, IndexConfig};
use crate::error::{Error, LoadError, Result};
use crate::flat::FlatIndex;
use crate::format::{self, FileSum, IndexHeader};
use crate::graph::HnswIndex;
use crate::metric::Metric;
use crate::search::{AllowSet, Plan, PlanHint, SearchOptions, SearchOutput, VectorIndex};

/// A vector space: a [`FlatIndex`] holding the exact vectors, an
/// [`HnswIndex`] over them, and a planner choosing between exact scans and
/// graph search per query.
///
/// Graph results are re-scored from the flat store, so scores are identical
/// across plans. Removed or replaced vectors become graph tombstones; the
/// graph is rebuilt from the flat store when they exceed
/// [`IndexConfig::compaction_ratio`].
#[derive(Debug)]
pub struct SpaceIndex {
    flat: FlatIndex,
    graph: HnswIndex,
    cfg: IndexConfig,
    /// Counts changes to the vectors, so that a graph built of them
    /// ([`SpaceIndex::build_compacted`]) is swapped in only if none came
    /// since, and only into this index (`id`, unique in the process).
    edits: u64,
    id: u64,
}

/// Tells indexes apart for [`SpaceIndex::replace_graph`].
fn next_index_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The graph [`SpaceIndex::replace_graph`] swapped out: dropping it frees
/// it.
#[derive(Debug)]
pub struct RetiredGraph {
    _graph: HnswIndex,
}

/// A graph [`SpaceIndex::build_compacted`] built, for
/// [`SpaceIndex::replace_graph`].
#[derive(Debug)]
pub struct CompactedGraph {
    graph: HnswIndex,
    /// The index's edit count when the graph was built.
    edits: u64,
    /// The index it was built of.
    index: u64,
}

impl SpaceIndex {
    /// The parts, with no edit yet and an id of its own.
    fn of(flat: FlatIndex, graph: HnswIndex, cfg: IndexConfig) -> SpaceIndex {
        SpaceIndex {
            flat,
            graph,
            cfg,
            edits: 0,
            id: next_index_id(),
        }
    }

    /// Creates an empty index.
    pub fn new(dim: usize, metric: Metric, cfg: IndexConfig) -> Result<Self> {
        cfg.validate()?;
        let graph = HnswIndex::new(dim, metric, cfg.hnsw.clone())?;
        Ok(SpaceIndex::of(FlatIndex::new(dim, metric)?, graph, cfg))
    }

    /// Builds the graph over all vectors of `flat` using `threads` insertion
    /// threads (`0` = all cores).
    pub fn build(flat: FlatIndex, cfg: IndexConfig, threads: usize) -> Result<Self> {
        cfg.validate()?;
        let graph = HnswIndex::build(&flat, cfg.hnsw.clone(), threads)?;
        Ok(SpaceIndex::of(flat, graph, cfg))
    }

    /// The exact vector store.
    pub fn flat(&self) -> &FlatIndex {
        &self.flat
    }

    /// The graph.
    pub fn graph(&self) -> &HnswIndex {
        &self.graph
    }

    /// The configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// Makes compactions rebuild the graph with the parameters it was built
    /// with (a loaded graph's, which may not be the configuration's); the
    /// configuration's `ef_search` stays.
    pub fn keep_graph_params(&mut self) {
        let built = self.graph.params();
        self.cfg.hnsw = HnswParams {
            ef_search: self.cfg.hnsw.ef_search,
            ..built.clone()
        };
    }

    /// The stored (for Cosine: normalised) vector of `doc`.
    pub fn get(&self, doc: u64) -> Option<&[f32]> {
        self.flat.get(doc)
    }

    /// Whether `doc` is stored with `v`, as [`SpaceIndex::upsert_deferred`]
    /// would store it (bit for bit, once prepared for the metric): an upsert
    /// of it would change nothing. False for a vector the index refuses.
    pub fn holds(&self, doc: u64, v: &[f32]) -> bool {
        self.flat
            .metric()
            .prepare(self.flat.dim(), v)
            .is_ok_and(|v| self.holds_prepared(doc, &v))
    }

    fn holds_prepared(&self, doc: u64, v: &[f32]) -> bool {
        self.flat.get(doc).is_some_and(|old| {
            old.iter()
                .map(|x| x.to_bits())
                .eq(v.iter().map(|x| x.to_bits()))
        })
    }

    /// Number of tombstoned graph nodes.
    pub fn tombstones(&self) -> usize {
        self.graph.tombstones()
    }

    /// Rebuilds the graph from the flat store, dropping all tombstones, with
    /// `threads` insertion threads (`0` = all cores). Writes call this
    /// themselves past [`IndexConfig::compaction_ratio`]: the write that
    /// crosses it waits for the rebuild, and so does everything else that
    /// holds the index.
    pub fn compact(&mut self, threads: usize) -> Result<()> {
        let graph = HnswIndex::build(&self.flat, self.cfg.hnsw.clone(), threads)?;
        self.replace_graph(CompactedGraph {
            graph,
            edits: self.edits,
            index: self.id,
        })
        .map(drop)
    }

    fn maybe_compact(&mut self) {
        if self.compaction_due() {
            // Cannot fail: the parameters were validated when `self` was made.
            if let Err(e) = self.compact(self.cfg.compaction_threads) {
                tracing::warn!(error = %e, "automatic compaction failed");
            }
        }
    }

    /// Whether the graph's tombstones are past the compaction ratio.
    pub fn compaction_due(&self) -> bool {
        let points = self.graph.points();
        points > 0 && self.graph.tombstones() as f64 / points as f64 > self.cfg.compaction_ratio
    }

    /// A graph of the live vectors, built without changing `self`, so that
    /// searches go on meanwhile; [`SpaceIndex::replace_graph`] swaps it in.
    pub fn build_compacted(&self) -> Result<CompactedGraph> {
        let graph = HnswIndex::build(
            &self.flat,
            self.cfg.hnsw.clone(),
            self.cfg.compaction_threads,
        )?;
        Ok(CompactedGraph {
            graph,
            edits: self.edits,
            index: self.id,
        })
    }

    /// Swaps in a graph [`SpaceIndex::build_compacted`] made of these very
    /// vectors: refused when a vector was changed, added or removed since
    /// (build it again then). Returns the graph it replaced, to be dropped
    /// once the caller's lock on this index is released: freeing a large
    /// graph takes a while.
    pub fn replace_graph(&mut self, compacted: CompactedGraph) -> Result<RetiredGraph> {
        if compacted.index != self.id {
            return Err(Error::invalid("graph", "built of another index"));
        }
        if compacted.edits != self.edits {
            return Err(Error::invalid(
                "graph",
                format!(
                    "built before the last {} change(s) to the vectors",
                    self.edits.abs_diff(compacted.edits)
                ),
            ));
        }
        let graph = compacted.graph;
        if graph.tombstones() != 0 || graph.points() != self.flat.len() {
            return Err(Error::invalid(
                "graph",
                format!(
                    "{} points ({} tombstones) for {} vectors",
                    graph.points(),
                    graph.tombstones(),
                    self.flat.len()
                ),
            ));
        }
        let dropped = self.graph.tombstones();
        let old = std::mem::replace(&mut self.graph, graph);
        tracing::debug!(dropped, live = self.flat.len(), "compacted graph");
        Ok(RetiredGraph { _graph: old })
    }

    /// [`VectorIndex::upsert`] without the automatic compaction: the caller
    /// compacts when [`SpaceIndex::compaction_due`] says so.
    pub fn upsert_deferred(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        let v = self.flat.metric().prepare(self.flat.dim(), v)?;
        // An unchanged vector (an upsert that changed only attributes) keeps
        // its graph node: re-inserting it would leave a tombstone each time.
        if self.holds_prepared(doc, &v) {
            return Ok(());
        }
        self.flat.upsert_prepared(doc, &v);
        self.graph.insert_prepared(doc, &v);
        self.edits += 1;
        Ok(())
    }

    /// [`VectorIndex::remove`] without the automatic compaction.
    pub fn remove_deferred(&mut self, doc: u64) -> bool {
        let removed = self.flat.remove(doc);
        self.graph.remove(doc);
        if removed {
            self.edits += 1;
        }
        removed
    }

    /// The plan [`PlanHint::Auto`] picks for this filter: exact when the
    /// allowed count is at most `max(exact_max_count, exact_max_fraction * len)`.
    pub fn plan_for(&self, allow: Option<&AllowSet>) -> Plan {
        let live = self.flat.len();
        if self.allowed(allow) <= self.cfg.planner.exact_threshold(live) {
            Plan::Exact
        } else {
            Plan::Graph
        }
    }

    /// The allowed documents this index holds (estimated, see
    /// [`AllowSet::estimate_in`]).
    fn allowed(&self, allow: Option<&AllowSet>) -> usize {
        let live = self.flat.len();
        allow.map_or(live, |a| {
            if a.len() <= self.cfg.planner.exact_threshold(live) {
                a.len().min(live)
            } else {
                a.estimate_in(|d| self.flat.contains(d)).min(live)
            }
        })
    }

    fn search_graph(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allow: Option<&AllowSet>,
    ) -> SearchOutput {
        let n = k.max(ef);
        let cands = self.graph.candidates(q, n, ef, allow);
        let got = cands.len();
        let hits = self.flat.rescore(q, k, cands.into_iter());
        if hits.len() < k {
            // The graph can miss allowed points under very selective filters;
            // answer exactly if more were available.
            let available = allow.map_or(self.flat.len(), |a| self.flat.count_allowed(a));
            if available > hits.len() {
                tracing::debug!(
                    got,
                    available,
                    k,
                    "graph returned too few hits; scanning exactly"
                );
                return SearchOutput {
                    hits: self.flat.search_prepared(q, k, allow),
                    plan: Plan::Exact,
                };
            }
        }
        SearchOutput {
            hits,
            plan: Plan::Graph,
        }
    }

    /// Saves the graph and header into `dir`, replacing any previous save.
    ///
    /// Everything is written to a fresh temporary directory next to `dir`,
    /// synced, then swapped in: the previous save is moved aside
    /// (`.vitrine-replaced-<name>` beside `dir`) until the new one is in
    /// place. A crash during the swap leaves no index at `dir`;
    /// [`SpaceIndex::recover_interrupted_save`] puts the previous one back
    /// (else [`SpaceIndex::load`] reports [`LoadError::Missing`]).
    pub fn save(&self, dir: &Path, generation: u64) -> Result<()> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".vitrine-index-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        let (graph_sum, data_sum) = if self.graph.points() == 0 {
            // hnsw_rs cannot dump an empty graph.
            (FileSum::default(), FileSum::default())
        } else {
            self.graph.dump(tmp.path())?;
            let sum = |name: &str| -> Result<FileSum> {
                let p = tmp.path().join(name);
                sync_file(&p)?;
                format::checksum_file(&p, None).map_err(|e| Error::io(&p, e))
            };
            (sum(format::GRAPH_FILE)?, sum(format::DATA_FILE)?)
        };
        let header = IndexHeader {
            version: format::FORMAT_VERSION,
            metric: self.flat.metric(),
            dim: self.flat.dim(),
            params: self.graph.params().clone(),
            generation,
            live: self.graph.len() as u64,
            points: self.graph.point_table().to_vec(),
            graph: graph_sum,
            data: data_sum,
        };
        let hpath = tmp.path().join(format::HEADER_FILE);
        fs::write(&hpath, format::encode_index_header(&header))
            .map_err(|e| Error::io(&hpath, e))?;
        sync_file(&hpath)?;
        sync_dir(tmp.path())?;
        let tmp_path = tmp.keep();
        // The old save is moved aside, not removed, until the new one is in
        // place: a kill in between leaves it under a name that
        // [`recover_interrupted_save`] puts back, and with it the graph
        // parameters the database keeps (they live only in the header).
        let old = replaced_dir(dir);
        let swap = || -> Result<()> {
            match fs::remove_dir_all(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&old, e)),
            }
            match fs::rename(dir, &old) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(dir, e)),
            }
            fs::rename(&tmp_path, dir).map_err(|e| Error::io(dir, e))?;
            sync_dir(&parent)?;
            match fs::remove_dir_all(&old) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(&old, e)),
            }
        };
        let res = swap();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp_path);
        }
        tracing::debug!(dir = %dir.display(), generation, points = header.points.len(), "saved index");
        res
    }

    /// Finishes a [`save`](Self::save) into `dir` that was killed while it
    /// swapped the new save in: when `dir` is missing and the save it was
    /// replacing is still aside, that one is put back (its generation tells
    /// whether it is current); when both are there, the one aside is
    /// removed. Call before [`saved_params`](Self::saved_params) or
    /// [`load`](Self::load).
    pub fn recover_interrupted_save(dir: &Path) -> Result<()> {
        let old = replaced_dir(dir);
        if !old.exists() {
            return Ok(());
        }
        if dir.exists() {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
        } else {
            fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
            // `Path::new("idx").parent()` is `""`, not `None`.
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
                _ => sync_dir(Path::new(".")),
            }
        }
    }

    /// The parameters the graph saved in `dir` was built with, read from
    /// its header (whatever its generation); `None` when there is no
    /// readable header, or its parameters are not valid.
    pub fn saved_params(dir: &Path) -> Option<HnswParams> {
        let params = saved_header(dir)?.params;
        params.validate().is_ok().then_some(params)
    }

    /// The generation of the index saved in `dir`, read from its header
    /// (without loading the graph); `None` when there is no readable
    /// header. A database compares it with storage's to find lost writes.
    pub fn saved_generation(dir: &Path) -> Option<u64> {
        Some(saved_header(dir)?.generation)
    }

    /// Loads an index saved by [`SpaceIndex::save`] for the vectors in `flat`.
    ///
    /// Checks, in order: the header's checksum and version, the generation
    /// (else [`LoadError::Stale`]), dimension, metric and live document set
    /// against `flat` (else [`LoadError::Mismatch`]), and the dump files'
    /// lengths and checksums before hnsw_rs reads them (else
    /// [`LoadError::Corrupt`]). `cfg` supplies search and compaction settings;
    /// the loaded graph keeps the parameters it was built with until the next
    /// compaction.
    pub fn load(
        dir: &Path,
        generation: u64,
        flat: FlatIndex,
        cfg: IndexConfig,
    ) -> std::result::Result<Self, LoadError> {
        Self::load_or_give_back(dir, generation, flat, cfg).map_err(|b| b.0)
    }

    /// [`SpaceIndex::load`], giving `flat` back when the load fails, so that
    /// a caller rebuilding the graph from it need not have copied it first.
    pub fn load_or_give_back(
        dir: &Path,
        generation: u64,
        flat: FlatIndex,
        cfg: IndexConfig,
    ) -> std::result::Result<Self, Box<(LoadError, FlatIndex)>> {
        match Self::load_graph(dir, generation, &flat, &cfg) {
            Ok(graph) => Ok(SpaceIndex::of(flat, graph, cfg)),
            Err(e) => Err(Box::new((e, flat))),
        }
    }

    /// The vectors, giving up the graph.
    pub fn into_flat(self) -> FlatIndex {
        self.flat
    }

    fn load_graph(
        dir: &Path,
        generation: u64,
        flat: &FlatIndex,
        cfg: &IndexConfig,
    ) -> std::result::Result<HnswIndex, LoadError> {
        cfg.validate().map_err(LoadError::Config)?;
        let hpath = dir.join(format::HEADER_FILE);
        let bytes = match format::read_index_header(&hpath) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(LoadError::Corrupt {
                    path: hpath,
                    reason: e.to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let path = if dir.exists() {
                    hpath
                } else {
                    dir.to_path_buf()
                };
                return Err(LoadError::Missing { path });
            }
            Err(e) => {
                return Err(LoadError::Io {
                    path: hpath,
                    source: e,
                })
            }
        };
        let header = format::parse_index_header(&bytes).map_err(|e| LoadError::Corrupt {
            path: hpath.clone(),
            reason: e.to_string(),
        })?;
        if header.generation != generation {
            return Err(LoadError::Stale {
                path: hpath,
                found: header.generation,
                expected: generation,
            });
        }
        let mismatch = |reason: String| LoadError::Mismatch {
            path: hpath.clone(),
            reason,
        };
        if header.dim != flat.dim() {
            return Err(mismatch(format!(
                "dimension {} vs {}",
                header.dim,
                flat.dim()
            )));
        }
        if header.metric != flat.metric() {
            return Err(mismatch(format!(
                "metric {:?} vs {:?}",
                header.metric,
                flat.metric()
            )));
        }
        if header.live != flat.len() as u64 {
            return Err(mismatch(format!(
                "{} live documents vs {}",
                header.live,
                flat.len()
            )));
        }
        // Live docs are unique (checked by the parser) and equally many, so
        // inclusion means equality.
        if let Some(doc) = header.points.iter().flatten().find(|d| !flat.contains(**d)) {
            return Err(mismatch(format!("document {doc} is not in the vectors")));
        }
        if !header.points.is_empty() {
            for (name, want) in [
                (format::GRAPH_FILE, header.graph),
                (format::DATA_FILE, header.data),
            ] {
                let p = dir.join(name);
                let got = format::checksum_file(&p, Some(want.len)).map_err(|e| {
                    let reason = if e.kind() == io::ErrorKind::InvalidData {
                        e.to_string()
                    } else {
                        format!("cannot read: {e}")
                    };
                    LoadError::Corrupt {
                        path: p.clone(),
                        reason,
                    }
                })?;
                if got.len != want.len {
                    // Changed while it was read.
                    return Err(LoadError::Corrupt {
                        path: p,
                        reason: format!("length {} bytes, expected {}", got.len, want.len),
                    });
                }
                if got.crc != want.crc {
                    return Err(LoadError::Corrupt {
                        path: p,
                        reason: "checksum mismatch".into(),
                    });
                }
            }
        }
        let graph =
            HnswIndex::load_verified(dir, header.dim, header.metric, header.params, header.points)
                .map_err(|reason| {
                    // The dump walk names the file it stopped in.
                    let file = if reason.starts_with("data file") {
                        format::DATA_FILE
                    } else {
                        format::GRAPH_FILE
                    };
                    LoadError::Corrupt {
                        path: dir.join(file),
                        reason,
                    }
                })?;
        tracing::debug!(dir = %dir.display(), generation, points = graph.points(), "loaded index");
        Ok(graph)
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Where [`SpaceIndex::save`] keeps the save it replaces while it swaps
/// (`index/.vitrine-replaced-<space>`).
fn replaced_dir(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let parent = dir.parent().unwrap_or(Path::new("."));
    parent.join(format!(".vitrine-replaced-{}", name.unwrap_or_default()))
}

fn sync_dir(path: &Path) -> Result<()> {
    // Directories cannot be opened for syncing on Windows.
    #[cfg(unix)]
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl VectorIndex for SpaceIndex {
    fn dim(&self) -> usize {
        self.flat.dim()
    }

    fn metric(&self) -> Metric {
        self.flat.metric()
    }

    fn len(&self) -> usize {
        self.flat.len()
    }

    fn upsert(&mut self, doc: u64, v: &[f32]) -> Result<()> {
        self.upsert_deferred(doc, v)?;
        self.maybe_compact();
        Ok(())
    }

    fn remove(&mut self, doc: u64) -> bool {
        let removed = self.remove_deferred(doc);
        if removed {
            self.maybe_compact();
        }
        removed
    }

    fn search(
        &self,
        q: &[f32],
        opts: &SearchOptions,
        allow: Option<&AllowSet>,
    ) -> Result<SearchOutput> {
        opts.validate()?;
        let q = self.flat.metric().prepare(self.flat.dim(), q)?;
        let k = opts.k;
        // Nothing to find: no graph is walked, whatever the hint.
        if k == 0 {
            return Ok(SearchOutput {
                hits: Vec::new(),
                plan: Plan::Exact,
            });
        }
        let plan = match opts.plan {
            PlanHint::Exact => Plan::Exact,
            // A beam wider than the widest allowed would walk the whole
            // graph one node at a time, with heaps of k entries.
            PlanHint::Graph if k > crate::config::MAX_EF => Plan::Exact,
            // Nothing allowed (or nothing allowed is indexed): a filtered
            // walk would visit every node looking for a point that passes.
            // The estimate is exact for small sets; a large one estimated
            // at 0 is answered exactly, which is right whatever it holds.
            PlanHint::Graph
                if allow.is_some_and(|a| a.estimate_in(|d| self.flat.contains(d)) == 0) =>
            {
                Plan::Exact
            }
            PlanHint::Graph => Plan::Graph,
            PlanHint::Auto => {
                // Asking for (nearly) everything allowed is cheapest exactly;
                // so is asking for more than the graph's widest beam (its
                // walk would visit about k nodes, one at a time).
                if k >= self.allowed(allow) || k > crate::config::MAX_EF {
                    Plan::Exact
                } else {
                    self.plan_for(allow)
                }
            }
        };
        Ok(match plan {
            Plan::Exact => SearchOutput {
                hits: self.flat.search_prepared(&q, k, allow),
                plan: Plan::Exact,
            },
            Plan::Graph => {
                let ef = opts.ef.unwrap_or(self.cfg.hnsw.ef_search);
                self.search_graph(&q, k, ef, allow)
            }
        })
    }
}

/// The header of the index saved in `dir`, when it reads and checks out.
fn saved_header(dir: &Path) -> Option<format::IndexHeader> {
    let bytes = format::read_index_header(&dir.join(format::HEADER_FILE)).ok()?;
    format::parse_index_header(&bytes).ok()
}
