//! The database handle: products in sled, one index per vector space.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{debug, info, warn};
use vitrine_index::{
    AllowSet, FlatIndex, HnswParams, IndexConfig, LoadError, Metric, Plan, PlanHint, PlannerConfig,
    ScorerChoice, SearchOptions, SpaceIndex, VectorIndex,
};
use vitrine_storage::{
    write_arena, Arena, Attributes, Durability, Keyspace, Meta, ProductRecord, SpaceSpec, Store,
    StoreOptions, StoredMetric,
};

use crate::{Error, Filter, PrecomputeError, PrecomputeOptions, Result, SimilarTable};

/// Name of the vector space a new database gets when the builder declares none,
/// and the space searches use when they name none (a database without a
/// space of this name searches its first declared space instead).
pub const DEFAULT_SPACE: &str = "embedding";
/// Dimension of [`DEFAULT_SPACE`] (the bundled model's embedding size).
pub const DEFAULT_DIM: usize = 128;
/// Longest product id accepted, in bytes.
pub const MAX_ID_LEN: usize = 1024;

const META_KEY: &[u8] = b"meta";

/// A named vector space: every product may carry one vector of `dim` floats in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorSpace {
    /// Name used in `insert` and `Search::space`.
    pub name: String,
    /// Number of dimensions.
    pub dim: usize,
    /// How vectors compare.
    pub metric: Metric,
}

/// The state of one vector space's index ([`Db::space_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceStats {
    /// The space.
    pub name: String,
    /// Products with a vector in it.
    pub vectors: usize,
    /// Nodes of the HNSW graph, tombstones included.
    pub graph_points: usize,
    /// Graph nodes of deleted or replaced vectors, dropped at the next
    /// compaction (see [`DbBuilder::compaction_ratio`] and [`Db::compact`]).
    pub tombstones: usize,
}

/// Opens or creates a [`Db`] with explicit settings.
///
/// Defaults (the example checks those the builder reports):
/// - durability: [`Durability::Immediate`] (a write returns once it is on disk);
/// - vector spaces: a new database gets one space, [`DEFAULT_SPACE`], of
///   [`DEFAULT_DIM`] dimensions under cosine; an existing database keeps the
///   spaces it was created with, and declaring different ones is an error;
/// - HNSW: 16 connections, `ef_construction` 200, `ef_search` 64 (an
///   existing database keeps the connections and `ef_construction` its
///   graph was built with unless [`DbBuilder::hnsw`] sets others);
/// - compaction when more than a quarter of a space's graph is deleted points;
/// - index build threads: the number of CPUs;
/// - a checkpoint (index dump) is written when the handle is dropped;
/// - exact batch scoring: [`ScorerChoice::Auto`];
/// - storage that has lost products the last checkpoint holds is refused
///   ([`DbBuilder::accept_data_loss`]).
///
/// ```
/// use vitrine::{Db, Durability, Metric};
/// let dir = tempfile::tempdir()?;
/// let db = Db::builder()
///     .durability(Durability::Periodic { interval: std::time::Duration::from_millis(200) })
///     .vector_space("embedding", 4, Metric::Cosine)
///     .open(dir.path())?;
/// assert_eq!(db.spaces()[0].dim, 4);
///
/// let defaults = vitrine::DbBuilder::default();
/// assert_eq!(defaults.durability_setting(), Durability::Immediate);
/// assert_eq!(defaults.hnsw_params().max_connections, 16);
/// assert_eq!(defaults.hnsw_params().ef_construction, 200);
/// assert_eq!(defaults.hnsw_params().ef_search, 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct DbBuilder {
    durability: Durability,
    spaces: Vec<VectorSpace>,
    index: IndexConfig,
    /// Whether [`DbBuilder::hnsw`] was called.
    hnsw_given: bool,
    threads: usize,
    checkpoint_on_drop: bool,
    scorer: ScorerChoice,
    accept_data_loss: bool,
    concept_exact_max: usize,
    /// An existing database may hold spaces besides the declared ones
    /// (`open_with_model`: a model database with spaces of the caller's).
    extra_stored_spaces_ok: bool,
    create: bool,
}

impl Default for DbBuilder {
    fn default() -> Self {
        DbBuilder {
            durability: Durability::Immediate,
            spaces: Vec::new(),
            index: IndexConfig::default(),
            hnsw_given: false,
            threads: cpus(),
            checkpoint_on_drop: true,
            scorer: ScorerChoice::Auto,
            accept_data_loss: false,
            concept_exact_max: crate::PROFILE_EXACT_MAX,
            extra_stored_spaces_ok: false,
            create: true,
        }
    }
}

impl DbBuilder {
    /// When writes become durable. See [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Declares a vector space. Call once per space. The name (1 to 64 of
    /// `A-Z a-z 0-9 _ -`) also names its files; others fail on open, as do
    /// a dimension of 0 or above 65,536 and two names that differ only in
    /// case ([`Error::InvalidConfig`]).
    pub fn vector_space(mut self, name: impl Into<String>, dim: usize, metric: Metric) -> Self {
        self.spaces.push(VectorSpace {
            name: name.into(),
            dim,
            metric,
        });
        self
    }

    /// HNSW graph parameters (validated on open). A database remembers
    /// the `max_connections` and `ef_construction` its graphs were built
    /// with (in sled, so a lost index dump is rebuilt with them): without
    /// this call an existing one keeps them, compactions included. Given others, the open rebuilds the
    /// graphs with them (listed in [`OpenReport::rebuilt`]). `ef_search`,
    /// a search setting, is not remembered: it is this call's, or 64.
    pub fn hnsw(mut self, params: HnswParams) -> Self {
        self.index.hnsw = params;
        self.hnsw_given = true;
        self
    }

    /// When filtered searches switch to an exact scan of the allowed set.
    pub fn planner(mut self, planner: PlannerConfig) -> Self {
        self.index.planner = planner;
        self
    }

    /// Tombstone fraction past which a graph is rebuilt (default 0.25; in
    /// `(0, 1]`, where 1 turns automatic compaction off: [`Db::compact`]
    /// then reclaims tombstones). A replaced or
    /// deleted vector leaves a tombstone in the graph; an upsert that keeps a
    /// product's vectors and only changes its attributes does not. The
    /// rebuild runs inside the write that crosses the ratio, on
    /// [`build_threads`](Self::build_threads) threads: other writes wait
    /// for it, searches go on with the old graph until the new one is
    /// swapped in.
    pub fn compaction_ratio(mut self, ratio: f64) -> Self {
        self.index.compaction_ratio = ratio;
        self
    }

    /// Threads used to build or rebuild indexes (default: the number of
    /// CPUs). With more than one, hnsw_rs inserts in parallel, and two
    /// builds of the same products differ: a graph search after a rebuild
    /// or compaction can rank a few hits differently (exact plans do not
    /// change). `1` takes thread timing out of it, more slowly; `0` is the
    /// number of CPUs, as in the crate's other thread counts.
    pub fn build_threads(mut self, threads: usize) -> Self {
        self.threads = match threads {
            0 => cpus(),
            n => n,
        };
        self
    }

    /// Whether the handle writes checkpoints by itself (default true): on
    /// drop, and after an open that had to rebuild an index. With `false`,
    /// only [`Db::checkpoint`], [`Db::close`] and [`Db::backup`] (when a
    /// vector was written since the last one) write them.
    pub fn checkpoint_on_drop(mut self, yes: bool) -> Self {
        self.checkpoint_on_drop = yes;
        self
    }

    /// Back end for exact batch scoring (`precompute_similar`). `Auto` (the
    /// default) uses the GPU only when built with the `cuda` feature, a device
    /// is present and the batch is large enough; every fallback is logged.
    pub fn scorer(mut self, choice: ScorerChoice) -> Self {
        self.scorer = choice;
        self
    }

    /// Catalog size up to which profile and concept queries scan exactly
    /// (default [`PROFILE_EXACT_MAX`](crate::PROFILE_EXACT_MAX)); past it
    /// the index's planner chooses ([`planner`](Self::planner): the graph
    /// once more products pass the filter than its exact limits), except
    /// for profile and concept queries that give the look little weight
    /// ([`SKEWED_VISUAL_SHARE`](crate::SKEWED_VISUAL_SHARE)), which the
    /// graph ranks poorly and which always scan.
    pub fn concept_exact_max(mut self, products: usize) -> Self {
        self.concept_exact_max = products;
        self
    }

    /// Whether spaces besides `these` were declared
    /// ([`DbBuilder::vector_space`]).
    pub(crate) fn declares_spaces_besides(&self, these: &[VectorSpace]) -> bool {
        self.spaces.iter().any(|s| !these.contains(s))
    }

    /// Whether `space` is declared, with its size and metric.
    pub(crate) fn declares(&self, space: &VectorSpace) -> bool {
        self.spaces.contains(space)
    }

    /// Lets an existing database hold spaces besides the declared ones.
    pub(crate) fn extra_stored_spaces_ok(mut self) -> Self {
        self.extra_stored_spaces_ok = true;
        self
    }

    /// Whether to open storage that has lost products (default false).
    ///
    /// A checkpoint's vector arenas record which products existed when it
    /// was written, and no write can remove one without first moving the
    /// database past that checkpoint. So storage that lacks products a
    /// current arena holds (or is older than its newest arena) has lost
    /// acknowledged writes: its log is damaged. By default such an open
    /// fails with [`Error::Corruption`] naming the sled folder, before the
    /// checkpoint files are rewritten, so the loss is seen and the folder can
    /// be restored from a backup.
    /// `true` opens what storage still holds and rebuilds the indexes from
    /// it, which makes the loss permanent (`vitrine repair`) at the first
    /// checkpoint or vector write: an open that writes nothing (with
    /// [`checkpoint_on_drop`](Self::checkpoint_on_drop) off) leaves the
    /// evidence, and plain opens still refuse the folder.
    pub fn accept_data_loss(mut self, yes: bool) -> Self {
        self.accept_data_loss = yes;
        self
    }

    /// Whether [`open`](Self::open) may make a new database (default
    /// `true`). With `false` a folder that holds none is
    /// [`Error::NoDatabase`], and no schema is written to it: also one
    /// whose first import stopped before it wrote the schema (a read
    /// command there wrote the default schema, which the import then
    /// refused). (sled may still make its own files in a `sled` folder.)
    ///
    /// ```
    /// use vitrine::{Db, Error};
    /// let dir = tempfile::tempdir()?;
    /// let missing = Db::builder().create(false).open(dir.path().join("db"));
    /// assert!(matches!(missing, Err(Error::NoDatabase { .. })));
    /// Db::open(dir.path().join("db"))?;
    /// Db::builder().create(false).open(dir.path().join("db"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    /// The durability that will be used.
    pub fn durability_setting(&self) -> Durability {
        self.durability
    }

    /// The HNSW parameters set on this builder (the defaults unless
    /// [`DbBuilder::hnsw`] was called; an existing database opened without
    /// that call keeps the graph parameters it was built with).
    pub fn hnsw_params(&self) -> &HnswParams {
        &self.index.hnsw
    }

    /// Opens the database in `dir`, creating it if needed.
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(dir.as_ref(), self)
    }
}

/// A stored product.
#[derive(Clone, Debug, PartialEq)]
pub struct Product {
    /// The caller's id.
    pub id: String,
    /// Business attributes.
    pub attributes: Attributes,
    /// Named vectors.
    pub vectors: BTreeMap<String, Vec<f32>>,
}

/// What a similarity search is relative to.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum SimilarTo<'a> {
    /// "More like this": the stored vector of a product, which is itself left out.
    Id(&'a str),
    /// A query vector.
    Vector(&'a [f32]),
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Hit {
    /// Product id.
    pub id: String,
    /// Similarity (cosine or inner product): higher is closer.
    pub score: f32,
    /// The product's attributes.
    pub attributes: Attributes,
}

/// A similarity search with every knob; [`Db::similar`] covers the common case.
///
/// ```
/// use vitrine::{Filter, PlanHint, Search, SimilarTo};
/// let f = Filter::new().in_stock();
/// let s = Search::new(SimilarTo::Id("sku-1"), 10).filter(&f).ef(128).plan(PlanHint::Auto);
/// assert_eq!(s.k(), 10);
/// ```
#[derive(Clone, Debug)]
pub struct Search<'a> {
    to: SimilarTo<'a>,
    k: usize,
    space: Option<&'a str>,
    filter: Option<&'a Filter>,
    ef: Option<usize>,
    plan: PlanHint,
    offset: usize,
    /// Copy each hit's vector, read with it ([`SearchResults::vectors`]).
    with_vectors: bool,
}

impl<'a> Search<'a> {
    /// The `k` nearest products to `to`, in the default space, unfiltered.
    pub fn new(to: SimilarTo<'a>, k: usize) -> Self {
        Search {
            to,
            k,
            space: None,
            filter: None,
            ef: None,
            plan: PlanHint::Auto,
            offset: 0,
            with_vectors: false,
        }
    }
    /// Each hit's vector too, as the search scored it (what is read after
    /// the search could be a newer one).
    pub(crate) fn with_vectors(mut self) -> Self {
        self.with_vectors = true;
        self
    }
    /// Search this vector space instead of the default one
    /// ([`DEFAULT_SPACE`], or the first declared space when there is none
    /// of that name).
    pub fn space(mut self, space: &'a str) -> Self {
        self.space = Some(space);
        self
    }
    /// Only products passing `filter`.
    pub fn filter(mut self, filter: &'a Filter) -> Self {
        self.filter = Some(filter);
        self
    }
    /// HNSW beam width for this search (default: the index's `ef_search`).
    pub fn ef(mut self, ef: usize) -> Self {
        self.ef = Some(ef);
        self
    }
    /// Force a plan; [`PlanHint::Auto`] lets the planner choose.
    pub fn plan(mut self, plan: PlanHint) -> Self {
        self.plan = plan;
        self
    }
    /// Skips the `offset` best: a page (`k` 20, offset 20 is the second
    /// page of 20). The search asks for `offset + k` and drops the first
    /// `offset`; with the graph, a larger request can rank its first
    /// results differently, so pages follow on exactly with the exact plan
    /// ([`PlanHint::Exact`]) or a filter the planner scans.
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }
    /// The number of results asked for.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Hits plus how they were found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SearchResults {
    /// Best first.
    pub hits: Vec<Hit>,
    /// The plan the index used.
    pub plan: Plan,
    /// Per hit, its vector, for a search made [`Search::with_vectors`].
    pub(crate) vectors: Vec<Vec<f32>>,
}

/// What happened while opening: indexes rebuilt and records found damaged.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct OpenReport {
    /// `(space, reason)` for every index rebuilt from storage instead of loaded.
    pub rebuilt: Vec<(String, String)>,
    /// One message per damaged product record, naming its key.
    pub damaged: Vec<String>,
    /// `(space, reason)` for every damaged vector arena (or one written
    /// after storage's last write, whose loss
    /// [`accept_data_loss`](DbBuilder::accept_data_loss) accepted): its
    /// vectors were read from storage instead, and the next checkpoint
    /// rewrites it.
    pub damaged_arenas: Vec<(String, String)>,
    /// Why the indexes and arenas rebuilt at open could not be saved (a
    /// full disk, a file that is a folder): the database is whole, and the
    /// next open rebuilds them again.
    pub unsaved: Option<String>,
}

struct Space {
    spec: VectorSpace,
    index: RwLock<SpaceIndex>,
}

#[derive(Default)]
struct Catalog {
    /// Ordered, so a filter's allowed set comes out sorted.
    by_doc: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    /// Changed only with `by_doc` (through `put`, `remove`, `set_attrs`).
    postings: Postings,
}

/// Posting lists of the business fields most filters name and of the
/// model's tags, so that a filter on stock, category, brand or a tag the
/// model must have given reads its products instead of
/// walking the whole catalog (at 100k products the walk cost 6-9 ms, more
/// than the search it fed).
#[derive(Default)]
struct Postings {
    /// Docs sold out (`[0]`) and in stock (`[1]`).
    stock: [BTreeSet<u64>; 2],
    /// `stock` as the allow sets a search takes, made by the first search
    /// of a filter of stock alone (the one sent most) after a change of the
    /// stock or model sets (a product added, removed, or moved between
    /// them; not a price update): not copied from the list on every search
    /// (most of the catalog).
    stock_sets: [std::sync::OnceLock<Arc<AllowSet>>; 2],
    category: HashMap<String, BTreeSet<u64>>,
    brand: HashMap<String, BTreeSet<u64>>,
    /// By concept key (`colour.red`, `category.shirts`): what the model
    /// tagged, so that `where colour.red` need not parse every product's
    /// tags.
    concept: HashMap<String, BTreeSet<u64>>,
    /// By the model that wrote a product's vectors ([`crate::ATTR_MODEL`]):
    /// during a re-embedding, the products it has not reached yet, which
    /// searches of the model's spaces leave out.
    model: HashMap<String, BTreeSet<u64>>,
    /// The docs of the model given (all, or sold out / in stock), as the
    /// allow sets a search of a model space takes while many products are
    /// of another: made by the first such search after a change.
    of_model_sets: Mutex<OfModelSets>,
}

/// By (model, stock wanted): see [`Postings::of_model_sets`].
type OfModelSets = HashMap<(String, Option<bool>), Arc<AllowSet>>;

impl Postings {
    /// Drops the shared allow sets, unless `old` and `new` (the doc's
    /// attributes before and after; `None`: not stored) keep the doc in
    /// the same ones: a price update must not make the next search
    /// rebuild a catalog-wide set.
    fn drop_sets_unless_same(&mut self, old: Option<&Attributes>, new: Option<&Attributes>) {
        let same = match (old, new) {
            (Some(o), Some(n)) => {
                o.in_stock == n.in_stock && o.get(crate::ATTR_MODEL) == n.get(crate::ATTR_MODEL)
            }
            _ => false,
        };
        if !same {
            self.stock_sets = Default::default();
            self.of_model_sets = Default::default();
        }
    }

    fn add(&mut self, doc: u64, a: &Attributes) {
        for key in crate::filter::concept_postings(a) {
            self.concept.entry(key).or_default().insert(doc);
        }
        self.stock[usize::from(a.in_stock)].insert(doc);
        if let Some(c) = &a.category {
            self.category.entry(c.clone()).or_default().insert(doc);
        }
        if let Some(b) = &a.brand {
            self.brand.entry(b.clone()).or_default().insert(doc);
        }
        if let Some(m) = a.get(crate::ATTR_MODEL) {
            self.model.entry(m.to_string()).or_default().insert(doc);
        }
    }

    fn remove(&mut self, doc: u64, a: &Attributes) {
        for key in crate::filter::concept_postings(a) {
            if let Some(list) = self.concept.get_mut(&key) {
                list.remove(&doc);
                if list.is_empty() {
                    self.concept.remove(&key);
                }
            }
        }
        self.stock[usize::from(a.in_stock)].remove(&doc);
        let model = a.get(crate::ATTR_MODEL).map(str::to_string);
        for (lists, value) in [
            (&mut self.category, &a.category),
            (&mut self.brand, &a.brand),
            (&mut self.model, &model),
        ] {
            if let Some(v) = value {
                if let Some(list) = lists.get_mut(v) {
                    list.remove(&doc);
                    if list.is_empty() {
                        lists.remove(v);
                    }
                }
            }
        }
    }
}

impl Postings {
    /// How many docs have vectors of another model than `model`.
    fn other_model_count(&self, model: &str) -> usize {
        self.model
            .iter()
            .filter(|(m, _)| m.as_str() != model)
            .map(|(_, d)| d.len())
            .sum()
    }

    /// The docs whose vectors are of another model than `model`, sorted.
    fn other_model_docs(&self, model: &str) -> Vec<u64> {
        let mut docs: Vec<u64> = self
            .model
            .iter()
            .filter(|(m, _)| m.as_str() != model)
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        docs.sort_unstable();
        docs
    }
}

impl Catalog {
    fn put(&mut self, doc: u64, entry: Entry) {
        let old = self.by_doc.get(&doc).map(|e| Arc::clone(&e.attrs));
        self.postings
            .drop_sets_unless_same(old.as_deref(), Some(&entry.attrs));
        if let Some(old) = old {
            self.postings.remove(doc, &old);
        }
        self.postings.add(doc, &entry.attrs);
        self.by_doc.insert(doc, entry);
    }

    fn remove(&mut self, doc: u64) -> Option<Entry> {
        let e = self.by_doc.remove(&doc)?;
        self.postings.drop_sets_unless_same(Some(&e.attrs), None);
        self.postings.remove(doc, &e.attrs);
        Some(e)
    }

    fn set_attrs(&mut self, doc: u64, attrs: Attributes) {
        if let Some(e) = self.by_doc.get_mut(&doc) {
            self.postings
                .drop_sets_unless_same(Some(&e.attrs), Some(&attrs));
            self.postings.remove(doc, &e.attrs);
            self.postings.add(doc, &attrs);
            e.attrs = Arc::new(attrs);
        }
    }

    /// [`Catalog::allowed`] as an allow set; shared, for a filter of stock
    /// alone.
    fn allow_set(&self, f: &Filter) -> Arc<AllowSet> {
        let ix = f.indexed();
        match ix.in_stock {
            Some(s) if ix.whole && ix.categories.is_none() && ix.brands.is_none() => {
                let i = usize::from(s);
                Arc::clone(self.postings.stock_sets[i].get_or_init(|| {
                    let docs = self.postings.stock[i].iter().copied().collect();
                    Arc::new(AllowSet::from_unsorted(docs))
                }))
            }
            _ => Arc::new(AllowSet::from_unsorted(self.allowed(f, &[]))),
        }
    }

    /// The docs whose vectors are not of another model than `model`, all
    /// or those with the stock given, as a shared allow set.
    fn of_model_set(&self, model: &str, in_stock: Option<bool>) -> Arc<AllowSet> {
        let mut sets = lock(&self.postings.of_model_sets);
        let key = (model.to_string(), in_stock);
        Arc::clone(sets.entry(key).or_insert_with(|| {
            // Both sorted: one merge.
            let others = self.postings.other_model_docs(model);
            let mut next = others.iter().copied().peekable();
            let mut kept = |doc: &u64| {
                while next.next_if(|o| o < doc).is_some() {}
                next.peek() != Some(doc)
            };
            let docs = match in_stock {
                None => self.by_doc.keys().copied().filter(|d| kept(d)).collect(),
                Some(s) => self.postings.stock[usize::from(s)]
                    .iter()
                    .copied()
                    .filter(|d| kept(d))
                    .collect(),
            };
            Arc::new(AllowSet::from_unsorted(docs))
        }))
    }

    /// The docs passing `f`, but those of `except` (sorted), sorted. The narrowest of the
    /// filter's stock, category, brand and wanted-tag conditions gives the candidates:
    /// taken as they are when that condition is the whole filter, else
    /// checked against the filter one by one. A walk of the whole catalog
    /// does it when the filter names none of them, or when the candidates
    /// are many (a lookup each would cost more than the walk).
    fn allowed(&self, f: &Filter, except: &[u64]) -> Vec<u64> {
        let kept = |doc: u64| except.binary_search(&doc).is_err();
        let ix = f.indexed();
        let mut conditions: Vec<Vec<&BTreeSet<u64>>> = Vec::new();
        if let Some(s) = ix.in_stock {
            conditions.push(vec![&self.postings.stock[usize::from(s)]]);
        }
        for (wanted, lists) in [
            (ix.categories, &self.postings.category),
            (ix.brands, &self.postings.brand),
        ] {
            if let Some(values) = wanted {
                conditions.push(values.iter().filter_map(|v| lists.get(v)).collect());
            }
        }
        for c in &ix.tagged {
            conditions.push(self.postings.concept.get(*c).into_iter().collect());
        }
        let size = |c: &Vec<&BTreeSet<u64>>| c.iter().map(|s| s.len()).sum::<usize>();
        let narrowest = conditions.iter().min_by_key(|c| size(c));
        let alone = ix.whole && conditions.len() == 1;
        let Some(lists) = narrowest.filter(|c| alone || size(c) * 4 <= self.by_doc.len()) else {
            return self
                .by_doc
                .iter()
                .filter(|(doc, e)| kept(**doc) && f.matches(&e.id, &e.attrs))
                .map(|(doc, _)| *doc)
                .collect();
        };
        let mut docs: Vec<u64> = lists
            .iter()
            .flat_map(|s| s.iter().copied())
            .filter(|d| kept(*d))
            .filter(|d| {
                alone
                    || self
                        .by_doc
                        .get(d)
                        .is_some_and(|e| f.matches(&e.id, &e.attrs))
            })
            .collect();
        // Several categories (or brands) give several sorted lists.
        if lists.len() > 1 {
            docs.sort_unstable();
        }
        docs
    }
}

struct Entry {
    id: String,
    /// Shared with snapshots: copying one under the catalog's read lock
    /// costs a reference count per product, not its attribute map.
    attrs: Arc<Attributes>,
}

struct WriterState {
    meta: Meta,
    /// Set by the first write after a checkpoint that changes a vector (or
    /// deletes a product), once the bumped generation is durable.
    dirty: bool,
    /// The checkpoint files on disk do not match the indexes in memory (an
    /// open rebuilt them and did not save them): the next checkpoint
    /// writes, though nothing was written to storage. Unlike `dirty`, it
    /// does not stand for a generation bump.
    stale_dumps: bool,
    /// The least generation the next bump may give: past checkpoint files
    /// written after storage's last write (lost writes, whose loss an open
    /// accepted), so that none of them can read as current after it.
    /// Nothing is written before then: a failed repair leaves them as the
    /// evidence that still refuses plain opens.
    next_generation_floor: u64,
}

/// An open Vitrine database. `Send + Sync`: share it behind an `Arc`.
///
/// Reads run concurrently; writes are serialised by an internal lock. Sled is
/// the source of truth; the vector arena and index dumps are snapshots written
/// by [`Db::checkpoint`] (and on drop), tagged with a generation that must
/// match the one in sled's meta tree, and rebuilt from sled when it does not
/// (or when its vectors differ from sled's).
///
/// Every method blocks the calling thread: an open may rebuild an index,
/// writes wait for their fsync, and the outfit operations read the whole
/// catalog. From async code, call them through `spawn_blocking`.
pub struct Db {
    dir: PathBuf,
    store: Store,
    products: Keyspace<ProductRecord>,
    meta_ks: Keyspace<Meta>,
    spaces: Vec<Space>,
    catalog: RwLock<Catalog>,
    writer: Mutex<WriterState>,
    checkpoint_on_drop: bool,
    scorer: ScorerChoice,
    /// [`DbBuilder::concept_exact_max`].
    pub(crate) concept_exact_max: usize,
    report: OpenReport,
    /// Serialises read-modify-write of side records (profiles, tags).
    side_writes: Mutex<()>,
    /// Serialises outfit rule learning: two runs read the outfits and
    /// write the rules, and the one that read older outfits must not
    /// write last. (Apart from `side_writes`: learning takes seconds.)
    rule_learning: Mutex<()>,
    /// `meta.model_fingerprint`, readable without the writer lock (which a
    /// backup or a compaction holds for long); changed under it, after the
    /// durable meta write.
    model_fingerprint: RwLock<Option<String>>,
    /// Held by a model switch while it waits for `model_fingerprint`, and
    /// taken briefly by every write of model outputs before it reads it:
    /// new writes queue behind a waiting switch, so that the writes holding
    /// the fingerprint drain and a steady stream of them cannot starve it.
    model_switch: Mutex<()>,
    /// Warnings about a lasting state (rules of another model) given once
    /// per state, not at every call that meets it.
    warned: Mutex<std::collections::HashSet<String>>,
    /// [`Db::vocabulary`] as last read, for queries: reading it decodes
    /// every user tag's example lists.
    vocabulary_cache: Mutex<crate::concepts::VocabularyCache>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.dir)
            .field("products", &self.len())
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
fn lock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_stored(m: Metric) -> StoredMetric {
    match m {
        Metric::Cosine => StoredMetric::Cosine,
        Metric::InnerProduct => StoredMetric::InnerProduct,
    }
}
fn from_stored(m: StoredMetric) -> Metric {
    match m {
        StoredMetric::Cosine => Metric::Cosine,
        StoredMetric::InnerProduct => Metric::InnerProduct,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`io_err`] on a path the caller named: a wrong path, one it may not
/// write, or one that exists is [`Error::BadPath`], the caller's.
fn callers_path_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        if crate::error::callers_file(&source) || source.kind() == std::io::ErrorKind::AlreadyExists
        {
            Error::BadPath {
                path: path.to_path_buf(),
                source,
            }
        } else {
            io_err(path)(source)
        }
    }
}

impl Db {
    /// Opens the database in `dir` with default settings, creating it if needed.
    ///
    /// ```
    /// use vitrine::{Attributes, Db, Filter, SimilarTo};
    /// let dir = tempfile::tempdir()?;
    /// let db = Db::open(dir.path())?;
    /// let v = |x: f32| { let mut v = vec![0.0f32; 128]; v[0] = 1.0; v[1] = x; v };
    /// db.insert("shirt-1", Attributes::new().brand("A").price(30.0), [("embedding", v(0.1))])?;
    /// db.insert("shirt-2", Attributes::new().brand("B").price(80.0), [("embedding", v(0.2))])?;
    /// db.insert("shirt-3", Attributes::new().brand("A").in_stock(false), [("embedding", v(0.3))])?;
    ///
    /// let hits = db.similar(SimilarTo::Id("shirt-1"), 5, &Filter::new().in_stock())?;
    /// assert_eq!(hits.len(), 1);
    /// assert_eq!(hits[0].id, "shirt-2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        DbBuilder::default().open(dir)
    }

    /// A builder with documented defaults.
    pub fn builder() -> DbBuilder {
        DbBuilder::default()
    }

    /// The vector spaces a database stores (`None` before it stores a
    /// schema), read from its storage alone: no product is read and no
    /// index loaded. For saying why an open was refused.
    pub(crate) fn stored_spaces(dir: &Path) -> Result<Option<Vec<VectorSpace>>> {
        let store = Store::open(dir, StoreOptions::default())?;
        let meta = store.keyspace::<Meta>("meta")?.get(META_KEY)?;
        Ok(meta.map(|m| m.spaces.iter().map(space_of).collect()))
    }

    fn open_with(dir: &Path, mut b: DbBuilder) -> Result<Db> {
        // Everything the builder says is checked before a file is made.
        b.index.validate()?;
        let ratio = b.index.compaction_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(Error::InvalidConfig(format!(
                "compaction ratio {ratio} is not in (0, 1]"
            )));
        }
        b.index.compaction_threads = b.threads;
        for s in &b.spaces {
            if !path_safe(&s.name) || s.dim == 0 || s.dim > 65_536 {
                return Err(Error::InvalidConfig(format!(
                    "vector space '{}' with {} dimensions (names are 1 to 64 of A-Z a-z 0-9 _ -; 1..=65536 dimensions)",
                    s.name, s.dim
                )));
            }
        }
        // `create_dir_all("")` succeeds: the database would be made in the
        // working folder, in pieces beside whatever is there.
        if dir.as_os_str().is_empty() {
            return Err(Error::BadPath {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an empty path names no database folder",
                ),
            });
        }
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::BadPath {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "a file, not a database folder",
                ),
            });
        }
        // A new database's spaces, before any file is made (and again below
        // for a folder whose store holds no schema yet).
        if !dir.join("sled").exists() {
            if !b.create {
                return Err(Error::NoDatabase {
                    path: dir.to_path_buf(),
                    reason: "no database there".into(),
                });
            }
            check_new_spaces(&b.spaces)?;
        }
        // Made here, so that a path the caller cannot use (under a file, in
        // a folder it may not write) is its error, as for a backup's.
        let created = missing_folders(dir);
        std::fs::create_dir_all(dir).map_err(callers_path_err(dir))?;
        let store = Store::open(
            dir,
            StoreOptions {
                durability: b.durability,
                accept_damaged_segments: b.accept_data_loss,
                ..StoreOptions::default()
            },
        )?;
        // The store syncs its own folder; the entries of the folders made
        // above, or a power loss can take the new database whole.
        sync_entries(&created)?;
        // sled's lock is ours: temporary files of a checkpoint that was
        // killed are debris (a later backup would copy them).
        remove_checkpoint_debris(dir);
        let meta_ks = store.keyspace::<Meta>("meta")?;
        let products = store.keyspace::<ProductRecord>("products")?;
        for name in SIDE_KEYSPACES.iter().flat_map(|names| names.iter()) {
            // Opening only: the tree holds other records.
            store.keyspace::<Meta>(&format!("vitrine.{name}"))?;
        }

        let meta = match meta_ks.get(META_KEY)? {
            Some(meta) => {
                // Stored data, not the caller's request: damage.
                let damaged = |reason: String| Error::Corruption {
                    location: format!("meta/meta in {}", dir.join("sled").display()),
                    reason,
                };
                if let Some(s) = meta.spaces.iter().find(|s| !path_safe(&s.name)) {
                    return Err(damaged(format!(
                        "a vector space is named '{}', which cannot name its files",
                        s.name
                    )));
                }
                if let Some(s) = meta.spaces.iter().find(|s| s.dim == 0 || s.dim > 65_536) {
                    return Err(damaged(format!(
                        "the vector space '{}' has {} dimensions (1..=65536)",
                        s.name, s.dim
                    )));
                }
                // Two spaces of one name would share their files.
                let mut names: Vec<&str> = meta.spaces.iter().map(|s| s.name.as_str()).collect();
                names.sort_unstable();
                if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(damaged(format!(
                        "the vector space '{}' is listed twice",
                        w[0]
                    )));
                }
                if !b.spaces.is_empty() {
                    // The same spaces in any order (open_with_model declares
                    // the model's after the caller's own); the stored order
                    // stays.
                    let by_name = |s: &[VectorSpace]| {
                        let mut s = s.to_vec();
                        s.sort_by(|a, b| a.name.cmp(&b.name));
                        s
                    };
                    let stored: Vec<VectorSpace> = meta.spaces.iter().map(space_of).collect();
                    let fits = if b.extra_stored_spaces_ok {
                        b.spaces.iter().all(|s| stored.contains(s))
                    } else {
                        by_name(&stored) == by_name(&b.spaces)
                    };
                    if !fits {
                        return Err(Error::SchemaMismatch(format!(
                            "the database has spaces {} but {} were declared",
                            describe(&stored),
                            describe(&b.spaces)
                        )));
                    }
                }
                meta
            }
            None => {
                // No schema, but checkpoint files: storage lost everything
                // (an emptied log), not a new database. Refused before a
                // new schema is written over the evidence.
                if !b.accept_data_loss {
                    let evidence = ["arena", "index"].iter().find_map(|sub| {
                        std::fs::read_dir(dir.join(sub))
                            .ok()?
                            .flatten()
                            .map(|e| e.path())
                            .find(|p| {
                                !p.file_name()
                                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                            })
                    });
                    if let Some(evidence) = evidence {
                        return Err(storage_lost(dir, &evidence));
                    }
                }
                if !b.create {
                    return Err(Error::NoDatabase {
                        path: dir.to_path_buf(),
                        reason: "its storage holds no schema: a first import stopped before \
                                 writing one (run the import again, or remove the folder)"
                            .into(),
                    });
                }
                let spaces = if b.spaces.is_empty() {
                    vec![VectorSpace {
                        name: DEFAULT_SPACE.into(),
                        dim: DEFAULT_DIM,
                        metric: Metric::Cosine,
                    }]
                } else {
                    b.spaces.clone()
                };
                check_new_spaces(&spaces)?;
                let meta = Meta {
                    spaces: spaces
                        .iter()
                        .map(|s| SpaceSpec {
                            name: s.name.clone(),
                            dim: s.dim as u32,
                            metric: to_stored(s.metric),
                        })
                        .collect(),
                    model_fingerprint: None,
                    index_generation: 0,
                };
                meta_ks.put(META_KEY, &meta)?;
                store.flush()?;
                meta
            }
        };
        let generation = meta.index_generation;
        let specs: Vec<VectorSpace> = meta.spaces.iter().map(space_of).collect();

        // Scan sled: the catalog and the exact vector stores come from here.
        let mut report = OpenReport::default();
        let mut catalog = Catalog::default();
        let mut ahead = None;
        let arenas: Vec<Option<Arena>> = specs
            .iter()
            .map(|s| match open_arena(&arena_path(dir, &s.name), s, generation) {
                ArenaState::Current(a) => Ok(Some(a)),
                ArenaState::Unusable => Ok(None),
                ArenaState::Damaged(reason) => {
                    report.damaged_arenas.push((s.name.clone(), reason));
                    Ok(None)
                }
                ArenaState::Ahead { path, found } if !b.accept_data_loss => {
                    Err(lost_writes(dir, &path, format!(
                        "storage is at index generation {generation} but this checkpoint is at {found}"
                    )))
                }
                ArenaState::Ahead { found, .. } => {
                    ahead = ahead.max(Some(found));
                    report.damaged_arenas.push((
                        s.name.clone(),
                        format!("at generation {found}, past storage's {generation}: writes lost, accepted"),
                    ));
                    Ok(None)
                }
            })
            .collect::<Result<_>>()?;
        // An index dump ahead of storage proves the same loss where its
        // arena is gone or damaged (removed after a disk error, say):
        // checked before anything is built or written. A checkpoint killed
        // while it swapped a dump in is put back first.
        let mut dumps_ahead = HashMap::new();
        for s in &specs {
            let idx_dir = index_dir(dir, &s.name);
            if let Err(e) = SpaceIndex::recover_interrupted_save(&idx_dir) {
                warn!(space = %s.name, error = %e, "cannot put back the index save a killed checkpoint moved aside");
            }
            let found = SpaceIndex::saved_generation(&idx_dir).filter(|&found| found > generation);
            match found {
                Some(found) if !b.accept_data_loss => {
                    return Err(lost_writes(dir, &idx_dir, format!(
                        "storage is at index generation {generation} but this index dump is at {found}"
                    )));
                }
                Some(found) => {
                    ahead = ahead.max(Some(found));
                    dumps_ahead.insert(s.name.clone(), found);
                }
                None => {}
            }
        }
        // The loss accepted, the next generation bump moves past those
        // files: else it could reach theirs, and after a kill before a
        // checkpoint they would read as current (their products, lost,
        // then refuse the open).
        let next_generation_floor = ahead.map_or(0, |found| found.saturating_add(1));
        // Only a capacity hint, from the arenas (counting sled's records
        // would read every product twice); without one, the stores grow.
        let stored = arenas.iter().flatten().map(Arena::len).max().unwrap_or(0);
        // Capped per space: a wide space that few products use must not
        // reserve room for all of them (growth covers the rest).
        const RESERVE_FLOATS: usize = 64 << 20;
        let mut flats: Vec<FlatIndex> = specs
            .iter()
            .map(|s| {
                let hint = stored.min(RESERVE_FLOATS / s.dim.max(1));
                // Room the machine cannot give now is not the caller's
                // error: the index grows as the scan fills it.
                FlatIndex::with_capacity(s.dim, s.metric, hint)
                    .or_else(|_| FlatIndex::new(s.dim, s.metric))
            })
            .collect::<std::result::Result<_, _>>()?;
        // A current arena is trusted for speed, but checked against sled,
        // which is the truth: per arena position, whether a record has that
        // very vector; records whose vector the arena lacks or holds
        // otherwise (a salvage keeps the generation of a checkpoint written
        // from fewer products) are taken from sled, and the index rebuilt.
        let arena_pos: Vec<Option<HashMap<u64, usize>>> = arenas
            .iter()
            .map(|a| {
                a.as_ref()
                    .map(|a| (0..a.len()).map(|p| (a.doc(p), p)).collect())
            })
            .collect();
        let mut in_sled: Vec<Vec<bool>> = arenas
            .iter()
            .map(|a| vec![false; a.as_ref().map_or(0, Arena::len)])
            .collect();
        let mut from_sled: Vec<Vec<(u64, Vec<f32>)>> = vec![Vec::new(); arenas.len()];
        // A record that does not decode is skipped and reported; the
        // checkpoint comparison below tells lost products. An error from
        // sled itself (a damaged page) ends the scan: the products after it
        // are unseen, and only accept_data_loss opens what was read (the
        // checkpoint then written would make the loss look whole).
        for item in products.iter() {
            let (key, rec) = match item {
                Ok(kv) => kv,
                Err(
                    e @ (vitrine_storage::Error::Corruption { .. }
                    | vitrine_storage::Error::UnknownRecordVersion { .. }),
                ) => {
                    warn!(error = %e, "damaged product record skipped");
                    report.damaged.push(e.to_string());
                    continue;
                }
                // Not damage: a file the process may not read, or a limit
                // it ran into (too many open files). Reported as such, with
                // or without accept_data_loss: nothing is lost.
                Err(e) if not_damage(&e) => return Err(e.into()),
                Err(e) if !b.accept_data_loss => {
                    return Err(Error::Corruption {
                        location: dir.join("sled").display().to_string(),
                        reason: format!(
                            "storage cannot read every product ({e}); restore the folder \
                             from a backup, or open it with DbBuilder::accept_data_loss \
                             (`vitrine repair`) to keep what can be read"
                        ),
                    });
                }
                Err(e) => {
                    warn!(error = %e, "storage scan ended at a damaged page");
                    report.damaged.push(e.to_string());
                    continue;
                }
            };
            let id = String::from_utf8_lossy(&key).into_owned();
            for (name, v) in &rec.vectors {
                match specs.iter().position(|s| &s.name == name) {
                    Some(i) => match (&arenas[i], &arena_pos[i]) {
                        (Some(arena), Some(pos)) => {
                            // The arena holds vectors as the index stores them.
                            let prepared = match specs[i].metric.prepare(specs[i].dim, v) {
                                Ok(p) => p,
                                Err(e) => {
                                    // Never in the index, so never in the arena.
                                    warn!(id = %id, space = %name, error = %e, "stored vector rejected by index");
                                    continue;
                                }
                            };
                            let same = pos.get(&rec.doc).filter(|&&p| {
                                let a = arena.vector(p);
                                a.len() == prepared.len()
                                    && a.iter()
                                        .zip(prepared.iter())
                                        .all(|(x, y)| x.to_bits() == y.to_bits())
                            });
                            match same {
                                Some(&p) => in_sled[i][p] = true,
                                None => from_sled[i].push((rec.doc, v.clone())),
                            }
                        }
                        _ => {
                            if let Err(e) = flats[i].upsert(rec.doc, v) {
                                warn!(id = %id, space = %name, error = %e, "stored vector rejected by index");
                            }
                        }
                    },
                    None => {
                        warn!(id = %id, space = %name, "vector for an undeclared space ignored")
                    }
                }
            }
            catalog.by_id.insert(id.clone(), rec.doc);
            catalog.put(
                rec.doc,
                Entry {
                    id,
                    attrs: Arc::new(rec.attrs),
                },
            );
        }
        // Spaces whose checkpoint holds products that storage no longer has
        // (damaged or lost): their index dumps hold them too, so the index
        // is built again from what is left.
        let mut lost = vec![false; arenas.len()];
        for (i, arena) in arenas.iter().enumerate() {
            if let Some(arena) = arena {
                // Damaged records are skipped and reported; anything beyond
                // them that the checkpoint holds and storage lacks was lost.
                let missing = arena
                    .iter()
                    .filter(|(doc, _)| !catalog.by_doc.contains_key(doc))
                    .count();
                lost[i] = missing > 0;
                if missing > report.damaged.len() && !b.accept_data_loss {
                    return Err(lost_writes(
                        dir,
                        &arena_path(dir, &specs[i].name),
                        format!(
                            "{missing} of the {} products with a '{}' vector at the last checkpoint are missing from storage",
                            arena.len(),
                            specs[i].name
                        ),
                    ));
                }
                if missing > report.damaged.len() {
                    warn!(
                        space = %specs[i].name,
                        missing,
                        damaged = report.damaged.len(),
                        at_checkpoint = arena.len(),
                        "products of the last checkpoint are missing from storage: accepted as lost"
                    );
                }
                for (p, (doc, v)) in arena.iter().enumerate() {
                    if in_sled[i][p] {
                        // As stored: preparing it again could change its bits.
                        flats[i].upsert_stored(doc, v)?;
                    }
                }
                let differs = !from_sled[i].is_empty()
                    || in_sled[i].iter().filter(|&&x| x).count() + missing < arena.len();
                if differs {
                    debug!(
                        first_docs = ?from_sled[i].iter().map(|(d, _)| *d).take(10).collect::<Vec<_>>(),
                        "vectors taken from storage"
                    );
                    warn!(
                        space = %specs[i].name,
                        from_storage = from_sled[i].len(),
                        "the checkpoint's vectors differ from storage; using storage's"
                    );
                    lost[i] = true;
                }
                for (doc, v) in from_sled[i].drain(..) {
                    if let Err(e) = flats[i].upsert(doc, &v) {
                        warn!(doc, space = %specs[i].name, error = %e, "stored vector rejected by index");
                    }
                }
            }
        }
        // Unmapped before an open's checkpoint may replace the files (a
        // mapped file cannot be replaced on some systems).
        drop(arena_pos);
        drop(arenas);

        let graph_params = store.keyspace::<GraphParams>(&format!("vitrine.{GRAPH_PARAMS_KS}"))?;
        let mut spaces = Vec::with_capacity(specs.len());
        for ((spec, flat), lost) in specs.into_iter().zip(flats).zip(lost) {
            // (A dump a killed checkpoint moved aside was put back above:
            // its header keeps the graph parameters.)
            let idx_dir = index_dir(dir, &spec.name);
            // The vectors are handed over, not copied (0.8 GB for 1M products
            // of 207 dimensions), and come back for a rebuild.
            let loaded = SpaceIndex::load_or_give_back(&idx_dir, generation, flat, b.index.clone())
                .map_err(|e| *e);
            // The graph parameters: the caller's, or those the database's
            // graph was built with (kept in sled; a database of an older
            // build has them only in the dump's header, even a stale one);
            // `ef_search` is always the caller's.
            let ef_search = b.index.hnsw.ef_search;
            let kept = match graph_params.get(spec.name.as_bytes()) {
                Ok(kept) => kept,
                Err(e) => {
                    warn!(space = %spec.name, error = %e, "cannot read the graph parameters");
                    None
                }
            };
            let rebuilding = lost || loaded.is_err();
            let saved = (rebuilding && !b.hnsw_given)
                .then(|| {
                    kept.as_ref()
                        .and_then(|k| k.with_ef_search(ef_search))
                        .or_else(|| SpaceIndex::saved_params(&idx_dir))
                })
                .flatten();
            let cfg = match saved {
                Some(params) => IndexConfig {
                    hnsw: HnswParams {
                        ef_search,
                        ..params
                    },
                    ..b.index.clone()
                },
                None => b.index.clone(),
            };
            let index = match loaded {
                Ok(mut index) if !lost && !b.hnsw_given => {
                    debug!(space = %spec.name, "index dump loaded");
                    index.keep_graph_params();
                    index
                }
                Ok(index) if !lost && same_graph_params(index.graph().params(), &cfg.hnsw) => {
                    debug!(space = %spec.name, "index dump loaded");
                    index
                }
                Err((LoadError::Missing { .. }, flat)) if flat.is_empty() => {
                    // A new (or empty) database: nothing to rebuild.
                    SpaceIndex::build(flat, cfg, b.threads)?
                }
                other => {
                    let (reason, flat) = match other {
                        Err((e, flat)) => (e.to_string(), flat),
                        Ok(index) if lost => (
                            "the checkpoint differs from storage".to_owned(),
                            index.into_flat(),
                        ),
                        Ok(index) => {
                            let (was, now) = (index.graph().params(), &cfg.hnsw);
                            let reason = format!(
                                "HNSW parameters changed: max_connections {} -> {}, \
                                 ef_construction {} -> {}",
                                was.max_connections,
                                now.max_connections,
                                was.ef_construction,
                                now.ef_construction
                            );
                            (reason, index.into_flat())
                        }
                    };
                    // Said as the arenas say it: the open accepted lost writes.
                    let reason = match dumps_ahead.get(&spec.name) {
                        Some(found) => format!(
                            "the index dump is at generation {found}, past storage's \
                             {generation}: writes lost, accepted"
                        ),
                        None => reason,
                    };
                    warn!(space = %spec.name, %reason, "rebuilding index from storage");
                    report.rebuilt.push((spec.name.clone(), reason));
                    SpaceIndex::build(flat, cfg, b.threads)?
                }
            };
            // What its compactions build with (a loaded graph keeps its own).
            let now = GraphParams::of(&index.config().hnsw);
            if kept.as_ref() != Some(&now) {
                if let Err(e) = graph_params.put(spec.name.as_bytes(), &now) {
                    warn!(space = %spec.name, error = %e, "cannot record the graph parameters");
                }
            }
            spaces.push(Space {
                spec,
                index: RwLock::new(index),
            });
        }
        info!(
            dir = %dir.display(),
            products = catalog.by_id.len(),
            rebuilt = report.rebuilt.len(),
            damaged = report.damaged.len(),
            "database open"
        );

        let mut db = Db {
            dir: dir.to_path_buf(),
            store,
            products,
            meta_ks,
            spaces,
            catalog: RwLock::new(catalog),
            model_fingerprint: RwLock::new(meta.model_fingerprint.clone()),
            model_switch: Mutex::new(()),
            writer: Mutex::new(WriterState {
                meta,
                dirty: false,
                stale_dumps: false,
                next_generation_floor,
            }),
            checkpoint_on_drop: b.checkpoint_on_drop,
            scorer: b.scorer,
            concept_exact_max: b.concept_exact_max,
            report,
            side_writes: Mutex::new(()),
            rule_learning: Mutex::new(()),
            warned: Mutex::new(Default::default()),
            vocabulary_cache: Mutex::new(Default::default()),
        };
        if !db.report.rebuilt.is_empty() || !db.report.damaged_arenas.is_empty() {
            // Save the rebuilt indexes and arenas so the next open is fast
            // (unless the caller writes checkpoints itself: `repair` keeps
            // the old ones as evidence). Not saving them (a full disk) costs
            // only that: the database is whole, and the next open rebuilds
            // again.
            lock(&db.writer).stale_dumps = true;
            if db.checkpoint_on_drop {
                if let Err(e) = db.checkpoint() {
                    warn!(error = %e, "cannot save the rebuilt indexes; the next open rebuilds them again");
                    db.report.unsaved = Some(e.to_string());
                }
            }
        }
        // A model switch killed before it pruned the profiles for the new
        // model (see Db::adopt_model).
        if let Err(e) = db.finish_switch() {
            warn!(error = %e, "cannot prune the profiles for the model adopted before a crash");
        }
        Ok(db)
    }

    /// The folder the database lives in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The vector spaces, in declaration order.
    pub fn spaces(&self) -> Vec<VectorSpace> {
        self.spaces.iter().map(|s| s.spec.clone()).collect()
    }

    /// Vectors, graph nodes and tombstones per space, in declaration order.
    pub fn space_stats(&self) -> Vec<SpaceStats> {
        self.spaces
            .iter()
            .map(|s| {
                let index = read(&s.index);
                SpaceStats {
                    name: s.spec.name.clone(),
                    vectors: index.flat().len(),
                    graph_points: index.graph().points(),
                    tombstones: index.tombstones(),
                }
            })
            .collect()
    }

    /// The exact-scoring back end chosen at open (see [`DbBuilder::scorer`]).
    pub fn scorer_choice(&self) -> ScorerChoice {
        self.scorer
    }

    /// What happened while opening.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        read(&self.catalog).by_id.len()
    }

    /// True when no product is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores a new product. Fails with [`Error::AlreadyExists`] if the id is taken.
    ///
    /// Vectors are `(space name, values)` pairs; a product may leave a space out.
    pub fn insert<I, N>(&self, id: &str, attributes: Attributes, vectors: I) -> Result<()>
    where
        I: IntoIterator<Item = (N, Vec<f32>)>,
        N: Into<String>,
    {
        self.put(id, attributes, vectors, false)
    }

    /// Stores a product, replacing any product with the same id.
    ///
    /// Replacing the vectors of many products in place (new photos under
    /// the same ids) changes neither the catalog's size nor its newest
    /// product, by which feedback's cached catalog mean notices a new
    /// season, and user tags keep the directions the old photos gave them:
    /// call [`Db::relearn_tags`] after such a batch (it does both), as
    /// `import --refresh` does.
    pub fn upsert<I, N>(&self, id: &str, attributes: Attributes, vectors: I) -> Result<()>
    where
        I: IntoIterator<Item = (N, Vec<f32>)>,
        N: Into<String>,
    {
        self.put(id, attributes, vectors, true)
    }

    fn put<I, N>(&self, id: &str, attrs: Attributes, vectors: I, replace: bool) -> Result<()>
    where
        I: IntoIterator<Item = (N, Vec<f32>)>,
        N: Into<String>,
    {
        check_id(id)?;
        check_attributes(&attrs, None)?;
        let vectors = self.check_vectors(vectors)?;
        let mut w = lock(&self.writer);
        let mut damaged = false;
        let existing = match self.products.get(id.as_bytes()) {
            Ok(r) => r.map(|r| r.doc),
            // A damaged record is replaced by an upsert, under the doc the
            // catalog knows it by (a new one would leave the old in memory).
            Err(e) if replace => {
                warn!(id, error = %e, "overwriting a damaged record");
                damaged = true;
                let known = read(&self.catalog).by_id.get(id).copied();
                // Under a new doc, the damaged one's leaves storage: a
                // current arena that holds it would read as lost writes.
                if known.is_none() {
                    self.mark_dirty(&mut w)?;
                }
                known
            }
            // Insert refuses the id, and says why.
            Err(e) => return Err(e.into()),
        };
        if existing.is_some() && !replace {
            // After a failed write sled may hold a product it may lose: a
            // retry of its insert is refused, not told it is there.
            self.store.check_writable()?;
            return Err(Error::AlreadyExists { id: id.into() });
        }
        // Only where ids are made: one an older build stored can still be
        // read, replaced (damaged too), changed in place and deleted.
        if existing.is_none() && !damaged && has_hidden_character(id) {
            return Err(Error::IdWithHiddenCharacter {
                id: escape_hidden(id),
            });
        }
        let doc = match existing {
            Some(doc) => doc,
            None => self.store.generate_id()?,
        };
        self.write_product(&mut w, id, doc, attrs, vectors)
    }

    /// Replaces a stored product with what `rebuild` makes of its current
    /// attributes, read under the writer lock, so that an edit made since
    /// the caller last read the product is kept. The vectors `rebuild`
    /// returns replace those of their spaces; the product's vectors in
    /// other spaces are kept. [`Rewrite::Gone`] when the product is gone
    /// (deleted since), [`Rewrite::Another`] when another one than the
    /// document `doc` the caller saw stands under the id (deleted and
    /// stored again); [`Rewrite::Unwanted`] when
    /// `wanted` says its current attributes need no rewrite.
    pub(crate) fn rewrite<N: Into<String>>(
        &self,
        id: &str,
        doc: Option<u64>,
        wanted: impl FnOnce(&Attributes) -> bool,
        rebuild: impl FnOnce(Attributes) -> (Attributes, Vec<(N, Vec<f32>)>),
    ) -> Result<Rewrite> {
        check_id(id)?;
        let mut w = lock(&self.writer);
        // After a failed write, what sled shows may be lost at the restart:
        // not "nothing to do" (as insert and delete refuse it too).
        self.store.check_writable()?;
        let Some(record) = self.products.get(id.as_bytes())? else {
            return Ok(Rewrite::Gone);
        };
        // (Whichever product it is: one that needs nothing needs nothing.)
        if !wanted(&record.attrs) {
            return Ok(Rewrite::Unwanted);
        }
        if doc.is_some_and(|d| d != record.doc) {
            return Ok(Rewrite::Another);
        }
        let old = record.attrs.clone();
        let (attrs, vectors) = rebuild(record.attrs);
        check_attributes(&attrs, Some(&old))?;
        let mut vectors = self.check_vectors(vectors)?;
        // A kept vector the index refuses (stored by an older build: the
        // open left it out of the index) is dropped, as the index already
        // has it: kept, it would stop the write between sled and the
        // indexes.
        let kept: Vec<(String, Vec<f32>)> = record
            .vectors
            .into_iter()
            .filter(|(space, _)| !vectors.iter().any(|(s, _)| s == space))
            .filter(|(space, v)| match self.space(space) {
                Ok(s) => match check_vector(&s.spec, v) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(id, space = %space, error = %e, "stored vector the index refuses dropped");
                        false
                    }
                },
                Err(_) => true,
            })
            .collect();
        vectors.extend(kept);
        // A record's vectors are sorted by name (ProductRecord::vector
        // searches them).
        vectors.sort_by(|a, b| a.0.cmp(&b.0));
        self.write_product(&mut w, id, record.doc, attrs, vectors)?;
        Ok(Rewrite::Done)
    }

    /// Writes a checked product under `doc`, then the catalog and indexes.
    /// The caller holds the writer lock (`w`).
    fn write_product(
        &self,
        w: &mut WriterState,
        id: &str,
        doc: u64,
        attrs: Attributes,
        vectors: Vec<(String, Vec<f32>)>,
    ) -> Result<()> {
        let record = ProductRecord {
            doc,
            attrs: attrs.clone(),
            vectors,
        };
        // Encoded first: a record too large to store changes nothing, not
        // even the checkpoint's generation (which would make the next open
        // after a kill rebuild every index).
        let encoded = self.products.encode(&record).map_err(product_too_large)?;
        // The checkpoint's files hold vectors only: a write that leaves them
        // as they are (a stock or price change through an upsert) keeps
        // them current, and the next checkpoint need not rewrite them all.
        if !self.holds_vectors(doc, &record.vectors) {
            self.mark_dirty(w)?;
        }
        let put = self.products.put_encoded(id.as_bytes(), &encoded);
        // The record can reach sled and its flush then fail: memory follows
        // sled (as in delete), or reads of the record and searches disagree,
        // and a retry finds the product there already.
        if put.is_err() && !self.products.holds_encoded(id.as_bytes(), &encoded) {
            return put.map_err(Into::into);
        }

        // The indexes change under the catalog's lock (readers take the
        // catalog, then an index): no reader sees the product in one and
        // not in the other.
        let mut cat = write(&self.catalog);
        cat.by_id.insert(id.to_string(), doc);
        cat.put(
            doc,
            Entry {
                id: id.to_string(),
                attrs: Arc::new(attrs),
            },
        );
        for space in &self.spaces {
            let mut index = write(&space.index);
            match record.vectors.iter().find(|(n, _)| *n == space.spec.name) {
                Some((_, v)) => index.upsert_deferred(doc, v)?,
                None => {
                    index.remove_deferred(doc);
                }
            }
        }
        drop(cat);
        // A graph compacted here is saved by the next checkpoint, though the
        // write itself left the files current.
        if self.compact_due_spaces() {
            w.stale_dumps = true;
        }
        put.map_err(Into::into)
    }

    /// Rebuilds the graphs whose tombstones passed the compaction ratio. The
    /// caller holds the writer lock (so the vectors cannot change) and not
    /// the catalog's: the new graph is built under a read lock, so every
    /// search goes on, and swapped in under a short write lock.
    /// Returns whether a graph was swapped.
    fn compact_due_spaces(&self) -> bool {
        let mut any = false;
        for space in &self.spaces {
            if !read(&space.index).compaction_due() {
                continue;
            }
            let built = read(&space.index).build_compacted();
            // The old graph is freed here, after the write lock.
            let swapped = built.and_then(|g| write(&space.index).replace_graph(g));
            match swapped {
                Ok(_) => any = true,
                Err(e) => {
                    warn!(space = %space.spec.name, error = %e, "automatic compaction failed")
                }
            }
        }
        any
    }

    /// Rebuilds every graph that holds tombstones (left by deletes and
    /// replaced vectors) without them, whatever the
    /// [`compaction_ratio`](DbBuilder::compaction_ratio): with a ratio of 1,
    /// the only way to reclaim them. Writes wait meanwhile; searches go on
    /// with the old graph. The next checkpoint saves the new graphs.
    /// Returns how many tombstones were dropped.
    pub fn compact(&self) -> Result<usize> {
        let mut w = lock(&self.writer);
        let mut dropped = 0;
        for space in &self.spaces {
            let tombstones = read(&space.index).tombstones();
            if tombstones == 0 {
                continue;
            }
            let built = read(&space.index).build_compacted()?;
            // Freed after the write lock, not under it.
            let old = write(&space.index).replace_graph(built)?;
            drop(old);
            // The saved dump still holds the old graph: loadable, but the
            // next checkpoint replaces it.
            w.stale_dumps = true;
            dropped += tombstones;
        }
        Ok(dropped)
    }

    /// Deletes a product. Returns whether it existed.
    pub fn delete(&self, id: &str) -> Result<bool> {
        check_id(id)?;
        let mut w = lock(&self.writer);
        let doc = match read(&self.catalog).by_id.get(id) {
            Some(doc) => *doc,
            None => {
                // Possibly a damaged record the catalog never held: remove it too.
                if self.products.contains(id.as_bytes())? {
                    self.mark_dirty(&mut w)?;
                    return self.products.remove(id.as_bytes()).map_err(Into::into);
                }
                // A delete whose sync failed may be lost at the restart: its
                // retry is refused, not told there was nothing to delete.
                self.store.check_writable()?;
                return Ok(false);
            }
        };
        self.mark_dirty(&mut w)?;
        let removed = self.products.remove(id.as_bytes());
        // The removal can reach sled and its sync then fail: memory follows
        // sled, or the next checkpoint would hold a product sled lacks.
        if removed.is_err() && self.products.contains(id.as_bytes()).unwrap_or(true) {
            return removed.map_err(Into::into);
        }
        // As in write_product: catalog and indexes change together.
        let mut cat = write(&self.catalog);
        for space in &self.spaces {
            write(&space.index).remove_deferred(doc);
        }
        cat.by_id.remove(id);
        cat.remove(doc);
        drop(cat);
        self.compact_due_spaces();
        removed.map(|_| true).map_err(Into::into)
    }

    /// Marks a product in or out of stock; [`Error::NotFound`] for an
    /// unknown id.
    pub fn set_in_stock(&self, id: &str, in_stock: bool) -> Result<()> {
        self.update_attributes(id, |a| a.in_stock = in_stock)
            .map(|_| ())
    }

    /// Changes a product's attributes in place, keeping its vectors: `edit`
    /// gets the stored attributes, and what it leaves is validated and
    /// written in one atomic write. Returns whether anything changed;
    /// [`Error::NotFound`] for an unknown id (unlike [`Db::delete`], which
    /// returns `false`: an edit of nothing is a caller's mistake).
    ///
    /// `edit` runs while other writes wait for it: it must not call this
    /// `Db` at all. A write would wait for ever, and so can a read, when a
    /// model switch ([`Db::adopt_model`]) waits for the same writes.
    ///
    /// ```
    /// # use vitrine::{Attributes, Db};
    /// # let dir = tempfile::tempdir()?;
    /// # let db = Db::open(dir.path())?;
    /// # db.insert("a", Attributes::new().price(30.0), [("embedding", vec![1.0; 128])])?;
    /// assert!(db.update_attributes("a", |a| a.price = Some(25.0))?);
    /// assert_eq!(db.get("a")?.unwrap().attributes.price, Some(25.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_attributes(&self, id: &str, edit: impl FnOnce(&mut Attributes)) -> Result<bool> {
        check_id(id)?;
        let _writer = lock(&self.writer);
        let mut record = self
            .products
            .get(id.as_bytes())?
            .ok_or_else(|| Error::NotFound { id: id.into() })?;
        let mut attrs = record.attrs.clone();
        edit(&mut attrs);
        if same_attributes(&attrs, &record.attrs) {
            // After a failed write sled may hold a change it may lose: a
            // retry of it is refused, not reported done.
            self.store.check_writable()?;
            return Ok(false);
        }
        // Only what the edit changed: a price stored before prices were
        // checked must not block a stock update.
        check_attributes(&attrs, Some(&record.attrs))?;
        record.attrs = attrs;
        // The vectors stay: the checkpoint's files stay current (see
        // write_product).
        let encoded = self.products.encode(&record).map_err(product_too_large)?;
        // As in write_product: memory follows sled.
        match self.products.put_encoded(id.as_bytes(), &encoded) {
            Err(e) if !self.products.holds_encoded(id.as_bytes(), &encoded) => Err(e.into()),
            put => {
                write(&self.catalog).set_attrs(record.doc, record.attrs);
                put.map(|()| true).map_err(Into::into)
            }
        }
    }

    /// The attributes of `id` (`None` for an unknown id), from the catalog
    /// held in memory: no storage read, no vectors, so cheap enough to call
    /// for every product.
    ///
    /// ```
    /// # use vitrine::{Attributes, Db};
    /// # let dir = tempfile::tempdir()?;
    /// # let db = Db::open(dir.path())?;
    /// db.insert("a", Attributes::new().brand("Acme"), [("embedding", vec![1.0; 128])])?;
    /// assert_eq!(db.attributes("a").unwrap().brand.as_deref(), Some("Acme"));
    /// assert!(db.attributes("b").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attributes(&self, id: &str) -> Option<Attributes> {
        let cat = read(&self.catalog);
        let doc = cat.by_id.get(id)?;
        cat.by_doc.get(doc).map(|e| Attributes::clone(&e.attrs))
    }

    /// Reads a product from storage.
    pub fn get(&self, id: &str) -> Result<Option<Product>> {
        Ok(self.get_with_doc(id)?.map(|(p, _)| p))
    }

    /// [`Db::get`], with the product's document from the same read.
    pub(crate) fn get_with_doc(&self, id: &str) -> Result<Option<(Product, u64)>> {
        check_id(id)?;
        Ok(self.products.get(id.as_bytes())?.map(|r| {
            let product = Product {
                id: id.to_string(),
                attributes: r.attrs,
                vectors: r.vectors.into_iter().collect(),
            };
            (product, r.doc)
        }))
    }

    /// How many products pass `filter`, from memory. Its concept
    /// conditions are checked against the model as a search checks them
    /// ([`Error::InvalidFilter`]), the only storage read.
    pub fn count_matching(&self, filter: &Filter) -> Result<usize> {
        self.check_filter_concepts(filter)?;
        Ok(read(&self.catalog).allowed(filter, &[]).len())
    }

    /// Why `filter` may match nothing: each of its conditions that no
    /// product passes on its own, as a sentence naming the nearest
    /// attribute or value the catalog holds (another case, a typo, a
    /// built-in field written as a free attribute). Empty when every
    /// condition alone matches some product. Checked as by
    /// [`Db::count_matching`]; walks the catalog in memory.
    ///
    /// ```
    /// use vitrine::{Attributes, Db, Filter, Metric};
    /// let dir = tempfile::tempdir()?;
    /// let db = Db::builder().vector_space("image", 2, Metric::Cosine).open(dir.path())?;
    /// db.insert("sku-1", Attributes::new().set("colour", "Red"), [("image", vec![1.0, 0.0])])?;
    /// let why = db.unmatched_conditions(&Filter::new().attr_eq("colour", "red"))?;
    /// assert_eq!(why, ["no product has colour = 'red': did you mean 'Red'?"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmatched_conditions(&self, filter: &Filter) -> Result<Vec<String>> {
        self.check_filter_concepts(filter)?;
        let mut attrs: Vec<Arc<Attributes>> = Vec::with_capacity(self.len());
        self.for_each_entry(|e| {
            attrs.push(Arc::clone(&e.attrs));
            std::ops::ControlFlow::Continue(())
        });
        let products: Vec<&Attributes> = attrs.iter().map(|a| a.as_ref()).collect();
        Ok(filter.unmatched(&products))
    }

    /// Ids of the products that pass `filter`, sorted, from memory (checked
    /// as by [`Db::count_matching`]). A product deleted while they are
    /// copied may be left out.
    pub fn ids_matching(&self, filter: &Filter) -> Result<Vec<String>> {
        self.check_filter_concepts(filter)?;
        let docs = read(&self.catalog).allowed(filter, &[]);
        Ok(self.sorted_ids_of(&docs))
    }

    /// Ids of all products, sorted. A product deleted while they are
    /// copied may be left out.
    pub fn ids(&self) -> Vec<String> {
        let docs: Vec<u64> = read(&self.catalog).by_doc.keys().copied().collect();
        self.sorted_ids_of(&docs)
    }

    /// The ids of `docs` still stored, sorted. Copied [`COPY_CHUNK`] at a
    /// time under the catalog's lock: a write waiting for it would hold
    /// every search back for the whole copy of a large catalog.
    fn sorted_ids_of(&self, docs: &[u64]) -> Vec<String> {
        let mut ids = Vec::with_capacity(docs.len());
        for chunk in docs.chunks(COPY_CHUNK) {
            let cat = read(&self.catalog);
            ids.extend(
                chunk
                    .iter()
                    .filter_map(|d| cat.by_doc.get(d).map(|e| e.id.clone())),
            );
        }
        ids.sort_unstable();
        ids
    }

    /// The `k` products most similar to `to` in [`DEFAULT_SPACE`] (or the
    /// first declared space when there is none of that name) that pass
    /// `filter`.
    pub fn similar(&self, to: SimilarTo<'_>, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        Ok(self.search(&Search::new(to, k).filter(filter))?.hits)
    }

    /// Runs a [`Search`].
    ///
    /// A query vector of zeros is refused ([`Error::InvalidVector`]) in every
    /// space: under cosine it has no direction, and under the inner product
    /// it scores every product 0. So is "more like" a product whose vector
    /// is zero.
    pub fn search(&self, s: &Search<'_>) -> Result<SearchResults> {
        let space = self.space(s.space.unwrap_or_else(|| self.default_space()))?;
        if let Some(f) = s.filter {
            self.check_filter_concepts(f)?;
        }
        // The model's spaces hold another model's vectors for the products a
        // re-embedding has not reached: not comparable, so left out.
        let model = [crate::EMBEDDING_SPACE, crate::CONCEPT_SPACE]
            .contains(&space.spec.name.as_str())
            .then(|| self.stored_model_fingerprint())
            .flatten();
        let cat = read(&self.catalog);
        let index = read(&space.index);
        let (query, self_doc): (Vec<f32>, Option<u64>) = match s.to {
            SimilarTo::Vector(v) => {
                check_vector(&space.spec, v)?;
                (v.to_vec(), None)
            }
            SimilarTo::Id(id) => {
                check_id(id)?;
                let doc = *cat
                    .by_id
                    .get(id)
                    .ok_or_else(|| Error::NotFound { id: id.into() })?;
                let v = index.get(doc).ok_or_else(|| Error::MissingVector {
                    id: id.into(),
                    space: space.spec.name.clone(),
                })?;
                if let Some(model) = &model {
                    if !of_model(cat.by_doc.get(&doc).map(|e| &*e.attrs), Some(model)) {
                        return Err(Error::VectorOfAnotherModel {
                            id: id.into(),
                            space: space.spec.name.clone(),
                        });
                    }
                }
                (v.to_vec(), Some(doc))
            }
        };
        // Under the inner product a zero query scores every product 0: the
        // hits would be arbitrary (cosine refuses zero vectors outright).
        if space.spec.metric == Metric::InnerProduct && query.iter().all(|x| *x == 0.0) {
            let whose = match s.to {
                SimilarTo::Id(id) => format!("product '{id}' has a zero vector"),
                SimilarTo::Vector(_) => "the query vector is zero".into(),
            };
            return Err(Error::InvalidVector {
                space: space.spec.name.clone(),
                reason: format!(
                    "{whose}, which scores every product 0 under the inner product: nothing to rank by"
                ),
            });
        }
        // The query product and the excluded ids are left out by their
        // documents: a filter of nothing else needs no walk of the catalog
        // ("more like this" excludes the product it starts from).
        let mut except: Vec<u64> = self_doc.into_iter().collect();
        // Few of another model are dropped like excluded ids; many are left
        // out of the allow set instead.
        let other_model = model
            .as_deref()
            .map_or(0, |m| cat.postings.other_model_count(m));
        if let Some(m) = model
            .as_deref()
            .filter(|_| other_model <= max_dropped_after(cat.by_doc.len()))
        {
            except.extend(cat.postings.other_model_docs(m));
        }
        let stripped;
        let filter = match s.filter.filter(|f| !f.is_empty()) {
            Some(f) if !f.excluded().is_empty() => {
                except.extend(
                    f.excluded()
                        .iter()
                        .filter_map(|id| cat.by_id.get(id.as_str()).copied()),
                );
                stripped = f.without_excluded();
                Some(&stripped).filter(|f| !f.is_empty())
            }
            other => other,
        };
        except.sort_unstable();
        except.dedup();
        // With few left out, the search asks for that many more and drops
        // them.
        let mut drop_after = except.len() <= max_dropped_after(cat.by_doc.len());
        let allow = match (filter, model.as_deref()) {
            (f, Some(m)) if other_model > max_dropped_after(cat.by_doc.len()) => {
                let ix = f.map(Filter::indexed);
                match ix {
                    // No filter, or stock alone: a set kept until a product
                    // is added, removed, or changes stock or model (a
                    // re-embedding that failed on some products leaves them
                    // of the old model for good).
                    None if drop_after => Some(cat.of_model_set(m, None)),
                    Some(ix)
                        if drop_after
                            && ix.whole
                            && ix.in_stock.is_some()
                            && ix.categories.is_none()
                            && ix.brands.is_none() =>
                    {
                        Some(cat.of_model_set(m, ix.in_stock))
                    }
                    _ => {
                        let mut left_out = std::mem::take(&mut except);
                        left_out.extend(cat.postings.other_model_docs(m));
                        left_out.sort_unstable();
                        left_out.dedup();
                        except = left_out;
                        drop_after = false;
                        Some(Arc::new(AllowSet::from_unsorted(
                            cat.allowed(f.unwrap_or(&Filter::new()), &except),
                        )))
                    }
                }
            }
            (Some(f), _) if drop_after => Some(cat.allow_set(f)),
            (None, _) if drop_after => None,
            (f, _) => Some(Arc::new(AllowSet::from_unsorted(
                cat.allowed(f.unwrap_or(&Filter::new()), &except),
            ))),
        };
        let extra = if drop_after { except.len() } else { 0 };
        let opts = SearchOptions {
            k: s.k.saturating_add(s.offset).saturating_add(extra),
            ef: s.ef,
            plan: s.plan,
        };
        let out = index.search(&query, &opts, allow.as_deref())?;
        let (hits, vectors) = out
            .hits
            .into_iter()
            .filter(|h| except.binary_search(&h.doc).is_err())
            .filter_map(|h| {
                let e = cat.by_doc.get(&h.doc)?;
                let hit = Hit {
                    id: e.id.clone(),
                    score: h.score,
                    attributes: Attributes::clone(&e.attrs),
                };
                let v = match s.with_vectors {
                    true => index.get(h.doc).map(<[f32]>::to_vec).unwrap_or_default(),
                    false => Vec::new(),
                };
                Some((hit, v))
            })
            .skip(s.offset)
            .take(s.k)
            .unzip::<_, _, Vec<Hit>, Vec<Vec<f32>>>();
        Ok(SearchResults {
            hits,
            plan: out.plan,
            vectors: if s.with_vectors { vectors } else { Vec::new() },
        })
    }

    /// The nightly batch job: for every product, its `k` most similar products
    /// passing `filter` (usually `Filter::new().in_stock()`), never itself nor
    /// its variants. Runs on the exact [`ScorerChoice`] back end; the result
    /// can be written with [`SimilarTable::write`] and served with
    /// [`crate::PrecomputedSimilar`].
    ///
    /// Every product is listed, in id order; one without a vector in the
    /// space gets an empty list, as does one whose vectors in the model's
    /// spaces are of another model than the database's (a re-embedding has
    /// not reached it), and neither is in another's list
    /// ([`SimilarTable::unscored`] counts them). A `k` above the number of other products is
    /// lowered to it (the table's `k` field says which was used), and `k = 0`,
    /// or one still above [`MAX_SIMILAR_K`](crate::MAX_SIMILAR_K), is refused. Scores are those of the space's metric; exact ties are
    /// broken by id ascending. Variants are products sharing the value of
    /// [`PrecomputeOptions::variant_key`] (an attribute some product has,
    /// not the engine's own `vitrine.*`, or [`Error::InvalidConfig`]).
    ///
    /// A table whose every list is empty (a filter no product passes:
    /// everything sold out after a feed glitch) is still returned: check
    /// `table.lists` before it replaces a served file, as `vitrine
    /// precompute similar` does. `PrecomputeOptions::space` defaults to the
    /// default space here; the CLI defaults to `concept` when the database
    /// has one.
    pub fn precompute_similar(
        &self,
        k: usize,
        filter: &Filter,
        options: &PrecomputeOptions,
    ) -> std::result::Result<SimilarTable, PrecomputeError> {
        crate::precompute::precompute_similar(self, k, filter, options)
    }

    /// Makes every acknowledged write durable (a no-op cost under
    /// [`Durability::Immediate`], where each write already is).
    pub fn flush(&self) -> Result<()> {
        self.store.flush()?;
        Ok(())
    }

    /// Flushes, then writes the vector arenas and index dumps, so that the next
    /// open loads them instead of rebuilding. Writes wait while it runs
    /// (seconds at a million products: every vector is written); reads go
    /// on. When no vector changed since the files on disk were written (a
    /// write of attributes only leaves them current), it only flushes: a
    /// service may call it on a timer.
    pub fn checkpoint(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        if !w.dirty && !w.stale_dumps {
            self.store.flush()?;
            return Ok(());
        }
        self.checkpoint_locked(&mut w)
    }

    fn checkpoint_locked(&self, w: &mut WriterState) -> Result<()> {
        let written = self.write_dumps(w.meta.index_generation);
        if written.is_err() {
            // Some files may now carry this generation. The next vector write must
            // move past it (else a later crash would find an arena that looks
            // current but misses that write), and drop tries again.
            w.dirty = false;
            w.stale_dumps = true;
        }
        written?;
        w.dirty = false;
        w.stale_dumps = false;
        debug!(generation = w.meta.index_generation, "checkpoint written");
        Ok(())
    }

    /// Writes every space's arena and index dump at `generation`.
    fn write_dumps(&self, generation: u64) -> Result<()> {
        self.store.flush()?;
        for space in &self.spaces {
            let index = read(&space.index);
            let arena = arena_path(&self.dir, &space.spec.name);
            if let Some(parent) = arena.parent().filter(|p| !p.exists()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                sync_dir(&self.dir)?;
            }
            write_arena(
                &arena,
                space.spec.dim as u32,
                generation,
                index.flat().iter(),
            )?;
            let idx_dir = index_dir(&self.dir, &space.spec.name);
            if let Some(parent) = idx_dir.parent().filter(|p| !p.exists()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                sync_dir(&self.dir)?;
            }
            index.save(&idx_dir, generation)?;
        }
        Ok(())
    }

    /// Copies the whole database to `dest`, a folder that must not exist
    /// yet (nor be inside the database's), while it stays open: writes from
    /// this process wait until the copy is done (reads go on), and the copy
    /// is checkpointed, so it opens without rebuilding (when the checkpoint
    /// cannot be written, a full disk under the database, the copy is made
    /// without it and rebuilds its indexes at its first open). Open the copy like
    /// any database; restoring is using it in place of the original. The
    /// copy is made and synced in a hidden folder next to `dest`, then
    /// renamed, so `dest` never holds half a backup. A backup whose process
    /// is killed leaves that folder (`.{name}.partial-{pid}-{nanos}`) for
    /// the operator to remove: another process's backup may be writing one
    /// of that name, which this one cannot tell from a dead one (another
    /// PID namespace, `/proc` hidden). Needs the default
    /// [`Durability::Immediate`].
    ///
    /// [`Error::InvalidConfig`] when `dest` exists (also when another
    /// backup made it meanwhile), is inside the database folder, or the
    /// database is not [`Durability::Immediate`]; [`Error::BadPath`] when
    /// `dest` or its folder cannot be made.
    ///
    /// ```
    /// use vitrine::{Attributes, Db, DEFAULT_DIM, DEFAULT_SPACE};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Db::open(dir.path().join("live"))?;
    /// db.insert("sku-1", Attributes::new(), [(DEFAULT_SPACE, vec![0.5; DEFAULT_DIM])])?;
    /// db.backup(dir.path().join("copy"))?;
    /// let copy = Db::open(dir.path().join("copy"))?;
    /// assert!(copy.get("sku-1")?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref();
        let absolute = std::path::absolute(dest).map_err(callers_path_err(dest))?;
        // Where the copy will land: `..` after a folder that exists is the
        // system's (through a link, its target's parent), after one the
        // backup makes it is in words (`new/../kept` names `kept`).
        let mut landing = PathBuf::new();
        for c in absolute.components() {
            match c {
                std::path::Component::ParentDir => {
                    if let Ok(real) = landing.canonicalize() {
                        landing = real;
                    }
                    landing.pop();
                }
                std::path::Component::CurDir => {}
                c => landing.push(c),
            }
        }
        // A dangling symlink exists too.
        let exists = || {
            if dest.symlink_metadata().is_ok() || landing.symlink_metadata().is_ok() {
                return Err(Error::InvalidConfig(format!(
                    "backup destination {} already exists",
                    dest.display()
                )));
            }
            Ok(())
        };
        exists()?;
        // Nearest existing ancestor of `dest`, resolved: a copy inside the
        // database folder would copy itself without end.
        let mut ancestor = landing.parent().unwrap_or(Path::new("."));
        while !ancestor.as_os_str().is_empty() && !ancestor.exists() {
            ancestor = ancestor.parent().unwrap_or(Path::new("."));
        }
        let ancestor = if ancestor.as_os_str().is_empty() {
            Path::new(".")
        } else {
            ancestor
        };
        let resolved = ancestor
            .canonicalize()
            .map_err(callers_path_err(ancestor))?;
        let own = self.dir.canonicalize().map_err(io_err(&self.dir))?;
        if resolved.starts_with(&own) {
            return Err(Error::InvalidConfig(format!(
                "backup destination {} is inside the database folder {}",
                dest.display(),
                self.dir.display()
            )));
        }
        if self.store.durability() != Durability::Immediate {
            // sled's background flusher would change its files mid-copy.
            return Err(Error::InvalidConfig(
                "Db::backup needs Durability::Immediate; with Periodic, close the \
                 database and copy its folder"
                    .into(),
            ));
        }
        // The writer first, then the store's write gate: the order every
        // write takes them in.
        // After an I/O error, the flush below is refused (FailedEarlier).
        let mut w = lock(&self.writer);
        // Again: a backup to the same place may have finished while this
        // one waited (it would copy everything, then fail to rename).
        exists()?;
        // The dumps on disk are current unless something was written since
        // the last checkpoint; the source is then only read.
        if w.dirty || w.stale_dumps {
            // The dumps are a cache of sled: when they cannot be written
            // (the database's disk is full, the backup's may not be), the
            // copy is made without them and rebuilds them at its first
            // open. Not when sled itself failed: its files are then in
            // doubt, and the flush below refuses.
            if let Err(e) = self.checkpoint_locked(&mut w) {
                if e.io_error().is_none() || self.store.io_failed() {
                    return Err(e);
                }
                warn!(error = %e, "backup: the index dumps could not be written; the copy rebuilds them when it is opened");
                self.store.flush()?;
            }
        } else {
            self.store.flush()?;
        }
        // Writes finished by now were flushed (Immediate); later ones and
        // every flush wait: sled's files stay as they are.
        let _paused = self.store.pause_writes();
        // A folder of our own next to `dest` (never one that was there),
        // synced, then renamed: `dest` holds a whole backup or nothing.
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        // The folders made here: each one's entry in its parent is synced
        // with the backup, or a power loss can take the whole copy.
        let created = missing_folders(parent);
        std::fs::create_dir_all(parent).map_err(callers_path_err(parent))?;
        // Checked again now that it exists: a path through a folder that
        // did not (`new/../db/copy`) resolves only now.
        let resolved = parent.canonicalize().map_err(callers_path_err(parent))?;
        if resolved.starts_with(&own) {
            return Err(Error::InvalidConfig(format!(
                "backup destination {} is inside the database folder {}",
                dest.display(),
                self.dir.display()
            )));
        }
        let name = dest
            .file_name()
            .map_or("backup".into(), |n| n.to_string_lossy().into_owned());
        let partial = parent.join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir(&partial).map_err(callers_path_err(&partial))?;
        // Not the old files a `repair --no-copy` kept: they are no part of
        // the database (and as large as its sled files).
        let mut renamed = false;
        let done = copy_dir(&self.dir, &partial, not_the_databases)
            .and_then(|()| sync_dir(&partial))
            .and_then(|()| std::fs::rename(&partial, dest).map_err(io_err(dest)))
            .and_then(|()| {
                renamed = true;
                sync_dir(parent)
            })
            .and_then(|()| sync_entries(&created));
        if let Err(e) = done {
            // Half a copy is no backup (a full disk, say): remove it. So is
            // one whose name may not outlive a crash: an error leaves no
            // backup at `dest`, and a retry can make it.
            let _ = std::fs::remove_dir_all(if renamed { dest } else { &partial });
            return Err(e);
        }
        debug!(to = %dest.display(), "backup written");
        Ok(())
    }

    /// Checkpoints and closes, reporting any error that drop would only log.
    pub fn close(mut self) -> Result<()> {
        // Once, not again in drop: its error is returned here.
        self.checkpoint_on_drop = false;
        self.checkpoint()
    }

    /// Bytes of the files in the database's folder: sled, arenas, index
    /// dumps and import reports, not the old files a `vitrine repair
    /// --no-copy` kept beside them nor a mount point's `lost+found`, which a
    /// backup does not copy either.
    pub fn size_on_disk(&self) -> Result<u64> {
        dir_size(&self.dir, not_the_databases)
    }

    fn default_space(&self) -> &str {
        self.spaces
            .iter()
            .find(|s| s.spec.name == DEFAULT_SPACE)
            .or(self.spaces.first())
            .map(|s| s.spec.name.as_str())
            .unwrap_or(DEFAULT_SPACE)
    }

    fn space(&self, name: &str) -> Result<&Space> {
        self.spaces
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| self.unknown_space(name))
    }

    fn unknown_space(&self, name: &str) -> Error {
        Error::UnknownVector {
            name: name.into(),
            known: self
                .spaces
                .iter()
                .map(|s| s.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn check_vectors<I, N>(&self, vectors: I) -> Result<Vec<(String, Vec<f32>)>>
    where
        I: IntoIterator<Item = (N, Vec<f32>)>,
        N: Into<String>,
    {
        let mut out: Vec<(String, Vec<f32>)> = Vec::new();
        for (name, v) in vectors {
            let name = name.into();
            let space = self.space(&name)?;
            check_vector(&space.spec, &v)?;
            if out.iter().any(|(n, _)| *n == name) {
                return Err(Error::InvalidVector {
                    space: name,
                    reason: "given twice".into(),
                });
            }
            out.push((name, v));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether every space holds `vectors` for `doc` as they are, and no
    /// other vector of it: writing them changes nothing in the indexes.
    fn holds_vectors(&self, doc: u64, vectors: &[(String, Vec<f32>)]) -> bool {
        self.spaces.iter().all(|space| {
            let index = read(&space.index);
            match vectors.iter().find(|(n, _)| *n == space.spec.name) {
                Some((_, v)) => index.holds(doc, v),
                None => index.get(doc).is_none(),
            }
        })
    }

    /// The first write after a checkpoint that changes a vector (or deletes
    /// a product) makes the dumps stale: record that
    /// durably before the write itself, so a crash can never pair new data
    /// with an old dump.
    fn mark_dirty(&self, w: &mut WriterState) -> Result<()> {
        if w.dirty {
            return Ok(());
        }
        let mut meta = w.meta.clone();
        meta.index_generation = meta
            .index_generation
            .saturating_add(1)
            .max(w.next_generation_floor);
        self.meta_ks.put(META_KEY, &meta)?;
        self.store.flush()?;
        w.meta = meta;
        w.dirty = true;
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let dirty = {
            let w = lock(&self.writer);
            w.dirty || w.stale_dumps
        };
        // After an I/O error (disk full), a checkpoint would only fail, or
        // hang in sled's flush; the next open rebuilds instead.
        if self.checkpoint_on_drop && dirty && !self.store.io_failed() {
            if let Err(e) = self.checkpoint() {
                warn!(error = %e, "checkpoint on drop failed; the next open rebuilds the index");
            }
        }
    }
}

fn space_of(s: &SpaceSpec) -> VectorSpace {
    VectorSpace {
        name: s.name.clone(),
        dim: s.dim as usize,
        metric: from_stored(s.metric),
    }
}

fn describe(spaces: &[VectorSpace]) -> String {
    spaces
        .iter()
        .map(|s| format!("{}({}, {:?})", s.name, s.dim, s.metric))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new space's name becomes a file and folder name (arena/<name>.arena,
/// index/<name>/): plain words only, and two that differ only in case would
/// share files on a case-insensitive file system.
fn check_new_spaces(spaces: &[VectorSpace]) -> Result<()> {
    let plain = |name: &str| {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    if let Some(s) = spaces.iter().find(|s| !plain(&s.name)) {
        return Err(Error::InvalidConfig(format!(
            "vector space '{}': names are 1 to 64 of A-Z a-z 0-9 _ -",
            s.name
        )));
    }
    let mut names: Vec<String> = spaces.iter().map(|s| s.name.to_lowercase()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidConfig(format!(
            "vector space '{}' declared twice (names are compared without case)",
            w[0]
        )));
    }
    Ok(())
}

/// A name that cannot leave its folder when joined to a path (databases
/// made before names were restricted to plain words keep opening).
fn path_safe(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !std::path::Path::new(name).is_absolute()
}

/// Whether `text` holds a character that does not show where it is
/// printed and is no part of writing:
/// - control characters (line breaks, tabs, escapes), the line and
///   paragraph separators, and Unicode's default-ignorable code points that
///   stand alone (zero-width spaces, direction marks and isolates, a
///   byte-order mark, a soft hyphen, fillers);
/// - the joiners, variation selectors and tag characters that Persian,
///   Sinhala, Mongolian and emoji are written with (`❤️`, `👩‍💻`, a
///   flag), where they join or select nothing: after an ASCII letter, at
///   an end, outside a flag.
///
/// New product, outfit and user ids, and CSV column names, refuse them:
/// `A\u{200b}` or `A\u{fe0f}` would be a second product that looks like
/// `A`.
///
/// ```
/// use vitrine::has_hidden_character;
/// assert!(has_hidden_character("sku-1\u{feff}"));
/// assert!(has_hidden_character("sku-1\n"));
/// assert!(has_hidden_character("sku-1\u{fe0f}"));
/// assert!(!has_hidden_character("\u{2764}\u{fe0f}"));
/// assert!(!has_hidden_character("\u{1f469}\u{200d}\u{1f4bb}"));
/// assert!(!has_hidden_character("Zoé"));
/// ```
pub fn has_hidden_character(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    // What a joiner joins or a selector selects: a character of a script
    // or an emoji, not ASCII, not white space, not itself hidden.
    let base = |c: Option<&char>| {
        c.is_some_and(|&c| !c.is_ascii() && !c.is_whitespace() && !always_hidden(c))
    };
    let is_tag = |c: &char| ('\u{e0020}'..='\u{e007f}').contains(c);
    chars.iter().enumerate().any(|(i, &c)| {
        let (before, after) = (
            i.checked_sub(1).and_then(|j| chars.get(j)),
            chars.get(i + 1),
        );
        match c {
            c if always_hidden(c) => true,
            '\u{200c}' | '\u{200d}' => !(base(before) && base(after)),
            '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}' => {
                !(base(before) || after == Some(&'\u{20e3}'))
            }
            '\u{180b}'..='\u{180d}' | '\u{180f}' => {
                !before.is_some_and(|b| ('\u{1820}'..='\u{18af}').contains(b))
            }
            // A flag: U+1F3F4, tag characters, the cancel tag U+E007F.
            c if is_tag(&c) => {
                let start = chars[..i].iter().rposition(|c| !is_tag(c));
                let end = chars[i..]
                    .iter()
                    .position(|c| !is_tag(c))
                    .map_or(chars.len(), |n| i + n);
                !(start.is_some_and(|s| chars[s] == '\u{1f3f4}') && chars[end - 1] == '\u{e007f}')
            }
            _ => false,
        }
    })
}

/// Whether `c` shows, wherever it stands: neither always hidden nor a
/// joiner or selector.
pub(crate) fn shows(c: char) -> bool {
    !always_hidden(c) && !joins_or_selects(c)
}

/// The joiners, variation selectors and tag characters: hidden unless
/// they join or select (see [`has_hidden_character`]).
fn joins_or_selects(c: char) -> bool {
    matches!(
        c,
        '\u{200c}'..='\u{200d}'
            | '\u{180b}'..='\u{180d}'
            | '\u{180f}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{e0020}'..='\u{e007f}'
            | '\u{e0100}'..='\u{e01ef}'
    )
}

/// Characters that never show and are no part of writing, wherever they
/// are (see [`has_hidden_character`]).
fn always_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180e}'
                | '\u{200b}'
                | '\u{200e}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e001f}'
                | '\u{e0080}'..='\u{e00ff}'
                | '\u{e01f0}'..='\u{e0fff}'
        )
}

/// The number of CPUs this process may use (1 when unknown).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An id for an error message: cut at 80 characters, those that do not
/// show escaped (`\n`, `\u{200b}`).
pub(crate) fn escape_hidden(id: &str) -> String {
    id.chars()
        .take(80)
        .map(|c| match c {
            c if c.is_control() => c.escape_debug().to_string(),
            c if always_hidden(c) || joins_or_selects(c) => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::EmptyId);
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::IdTooLong {
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    Ok(())
}

/// A product record too large to store is the caller's to shorten (its
/// attribute values); other records too large are not.
fn product_too_large(e: vitrine_storage::Error) -> Error {
    match e {
        e @ vitrine_storage::Error::RecordTooLarge { .. } => Error::InvalidAttribute {
            key: "(all of them)".into(),
            reason: e.to_string(),
        },
        other => other.into(),
    }
}

/// Prices compared as stored: a NaN kept from before prices were checked
/// is the same price as itself (`==` says it is not).
fn same_price(a: Option<f64>, b: Option<f64>) -> bool {
    a.map(f64::to_bits) == b.map(f64::to_bits)
}

/// `a == b`, with prices compared by [`same_price`].
fn same_attributes(a: &Attributes, b: &Attributes) -> bool {
    // Every field named: a new one is compared or the build fails.
    let Attributes {
        brand,
        price,
        in_stock,
        category,
        extra,
    } = a;
    *brand == b.brand
        && same_price(*price, b.price)
        && *in_stock == b.in_stock
        && *category == b.category
        && *extra == b.extra
}

/// Whether a product's vectors are in the space of `model` (the database's
/// fingerprint): one a re-embedding has not reached names another model.
/// One stored with plain vectors names none (the caller's), and without a
/// database model, or a product, every one is.
pub(crate) fn of_model(attrs: Option<&Attributes>, model: Option<&str>) -> bool {
    let of = attrs.and_then(|a| a.get(crate::ATTR_MODEL));
    model.is_none() || of.is_none() || of == model
}

/// Checks what a write changes against `old` (all of it for a new
/// product): what an older build stored must not block other edits.
fn check_attributes(attrs: &Attributes, old: Option<&Attributes>) -> Result<()> {
    // `get`, queries and every filter read these from their fields: a
    // value under the same key in `extra` (filled from JSON, or by
    // `set("price", ..)`) could never be read.
    // Nor in another case (`Price`): the CLI's files and queries read the
    // built-ins' names in any case, so it would be a field no query reaches.
    // (A key stored so by an older build may stay as it is.)
    const BUILT_IN: [&str; 4] = ["brand", "category", "price", "in_stock"];
    if let Some((key, field)) = attrs.extra.keys().find_map(|k| {
        let field = BUILT_IN.into_iter().find(|b| k.eq_ignore_ascii_case(b))?;
        let changed = old.is_none_or(|o| o.extra.get(k) != attrs.extra.get(k));
        changed.then_some((k, field))
    }) {
        let reason = if key == field {
            format!("given in `extra`; it has its own field, Attributes::{field}")
        } else {
            format!(
                "another case of the built-in `{field}`, which queries and files read in any \
                 case; set Attributes::{field}"
            )
        };
        return Err(Error::InvalidAttribute {
            key: key.clone(),
            reason,
        });
    }
    match attrs.price {
        Some(_) if old.is_some_and(|o| same_price(o.price, attrs.price)) => Ok(()),
        // A NaN price would match no bounded price filter (only an open one).
        Some(p) if !(p.is_finite() && p >= 0.0) => Err(Error::InvalidAttribute {
            key: "price".into(),
            reason: format!("{p} (a price is a finite number >= 0)"),
        }),
        _ => Ok(()),
    }
}

fn check_vector(space: &VectorSpace, v: &[f32]) -> Result<()> {
    if v.len() != space.dim {
        return Err(Error::DimensionMismatch {
            space: space.name.clone(),
            expected: space.dim,
            found: v.len(),
        });
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidVector {
            space: space.name.clone(),
            reason: format!("component {i} is {}", v[i]),
        });
    }
    // Under every metric (the index normalises a large cosine vector, but
    // the stored vector as given also feeds outfits and profiles, whose
    // dot products must not overflow), before anything is written.
    let norm_sq: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if !(norm_sq as f32).is_finite() {
        return Err(Error::InvalidVector {
            space: space.name.clone(),
            reason: format!("its squared norm {norm_sq:e} overflows f32"),
        });
    }
    if space.metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
        return Err(Error::InvalidVector {
            space: space.name.clone(),
            reason: "a zero vector has no direction under cosine".into(),
        });
    }
    Ok(())
}

fn arena_path(dir: &Path, space: &str) -> PathBuf {
    dir.join("arena").join(format!("{space}.arena"))
}

fn index_dir(dir: &Path, space: &str) -> PathBuf {
    dir.join("index").join(space)
}

/// A usable arena: valid, of this space's dimension, and of the current generation.
enum ArenaState {
    /// Written at storage's generation: its rows are the stored vectors.
    Current(Arena),
    /// Missing, stale or of another shape: vectors come from storage.
    Unusable,
    /// Unreadable (the reason): vectors come from storage.
    Damaged(String),
    /// Written at a generation storage has not reached: storage lost writes.
    Ahead { path: PathBuf, found: u64 },
}

fn open_arena(path: &Path, space: &VectorSpace, generation: u64) -> ArenaState {
    if !path.exists() {
        return ArenaState::Unusable;
    }
    match Arena::open(path) {
        Ok(a) if a.dim() as usize == space.dim && a.generation() == generation => {
            ArenaState::Current(a)
        }
        Ok(a) if a.dim() as usize == space.dim && a.generation() > generation => {
            ArenaState::Ahead {
                path: path.to_path_buf(),
                found: a.generation(),
            }
        }
        Ok(a) => {
            debug!(path = %path.display(), found = a.generation(), generation, "stale arena ignored");
            ArenaState::Unusable
        }
        // The machine's refusal (permissions, file handles, memory, a
        // big-endian host, which cannot map arenas) is no damage: the arena
        // is not called damaged, nor rewritten as such.
        Err(e) if not_damage(&e) || matches!(e, vitrine_storage::Error::UnsupportedPlatform(_)) => {
            warn!(error = %e, "arena unreadable; vectors come from storage");
            ArenaState::Unusable
        }
        Err(e) => {
            warn!(error = %e, "damaged arena ignored; vectors come from storage");
            ArenaState::Damaged(e.to_string())
        }
    }
}

/// Whether a storage error is the process's own (a file it may not read,
/// too many open files, no memory) rather than damage to the files.
fn not_damage(e: &vitrine_storage::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, OutOfMemory, PermissionDenied};
    let vitrine_storage::Error::Io { source, .. } = e else {
        return false;
    };
    matches!(source.kind(), PermissionDenied | Interrupted | OutOfMemory)
        // ENFILE, EMFILE (on Windows, 23 is a CRC error: damage)
        || (cfg!(unix) && matches!(source.raw_os_error(), Some(23 | 24)))
}

/// Storage has lost writes that a checkpoint (at `evidence`) proves were made.
fn lost_writes(dir: &Path, evidence: &Path, detail: String) -> Error {
    Error::Corruption {
        location: dir.join("sled").display().to_string(),
        reason: format!(
            "{detail} ({}): the storage log is damaged and has lost acknowledged writes. \
             The checkpoint files were left as they are; restore the folder from a backup, \
             or open it with DbBuilder::accept_data_loss (`vitrine repair`) to keep what is left",
            evidence.display()
        ),
    }
}

/// Storage that holds nothing, beside checkpoint files (at `evidence`):
/// nothing is left to keep, so no repair.
fn storage_lost(dir: &Path, evidence: &Path) -> Error {
    Error::Corruption {
        location: dir.join("sled").display().to_string(),
        reason: format!(
            "storage holds no schema but checkpoint files exist ({}): the storage log is \
             lost. Nothing is left to repair; restore the folder from a backup, or move it \
             away and import the catalog again",
            evidence.display()
        ),
    }
}

/// Removes what a killed checkpoint leaves: `index/.vitrine-index-*`
/// folders and `arena/.<space>.arena.tmp-<pid>-<n>` files. Best effort.
fn remove_checkpoint_debris(dir: &Path) {
    for (sub, is_debris) in [
        (
            "index",
            (|n: &str| n.starts_with(".vitrine-index-")) as fn(&str) -> bool,
        ),
        ("arena", |n: &str| {
            n.starts_with('.') && n.contains(".arena.tmp-")
        }),
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_str().is_some_and(is_debris) {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    debug!(path = %path.display(), "removed a killed checkpoint's temporary file")
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot remove a killed checkpoint's temporary file")
                }
            }
        }
    }
}

/// Copies a file and syncs the copy. An error names the side that failed:
/// a failing sector of the database, or a full backup disk.
fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let mut from = std::fs::File::open(src).map_err(io_err(src))?;
    let mut to = std::fs::File::create(dst).map_err(io_err(dst))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(src)(e)),
        };
        to.write_all(&buf[..n]).map_err(io_err(dst))?;
    }
    to.sync_all().map_err(io_err(dst))
}

/// Copies a folder tree of regular files and folders, each file synced
/// (anything else in it is an error: a database folder holds nothing else).
fn copy_dir(from: &Path, to: &Path, skip: fn(&std::ffi::OsStr) -> bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        if skip(&entry.file_name()) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io_err(&src))?;
        if kind.is_dir() {
            copy_dir(&src, &dst, |_| false)?;
            sync_dir(&dst)?;
        } else if kind.is_file() {
            copy_file(&src, &dst)?;
        } else {
            // Not the caller's request: the database folder holds a link
            // (a folder moved to another disk, say) or a special file.
            return Err(Error::Io {
                path: src,
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "neither a file nor a folder (a link?); a backup copies only those: \
                     close the database and copy its folder",
                ),
            });
        }
    }
    Ok(())
}

/// The folders `create_dir_all(dir)` would make, `dir` first.
fn missing_folders(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Syncs each made folder's entry in its parent.
fn sync_entries(made: &[PathBuf]) -> Result<()> {
    made.iter().try_for_each(|made| {
        let above = made.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(above.unwrap_or(Path::new(".")))
    })
}

/// Makes a folder's entries durable (a no-op where folders cannot be
/// opened for that).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// What lies in the database's folder but is no part of it. Backups do not
/// copy it, nor does the size count it:
/// - what `vitrine repair` leaves beside `sled/`, as large as its sled
///   files: sled's old files (`sled.before-salvage`, kept by `--no-copy`), a
///   salvage's staging folder or its result when the reopen failed
///   (`sled.salvage*`), files set aside (`sled-<name>.damaged*`), and old
///   files a killed repair left half-removed (`.sled.before-salvage…`);
/// - `lost+found`, the file system's own when the folder is a mount point
///   (only root may read it).
fn not_the_databases(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("sled.")
        || name.starts_with("sled-")
        || name.starts_with(".sled.")
        || name == "lost+found"
}

/// Bytes of the files under `path`, but for the entries `skip` names in
/// `path` itself.
fn dir_size(path: &Path, skip: fn(&std::ffi::OsStr) -> bool) -> Result<u64> {
    // A file or folder that goes away meanwhile (a checkpoint's rename,
    // sled replacing a snapshot) counts as 0, not as an error.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.map_err(io_err(path))?;
        if skip(&entry.file_name()) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io_err(&entry.path())(e)),
        };
        total += if meta.is_dir() {
            dir_size(&entry.path(), |_| false)?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

// ==== Appended for the image insert path (src/ingest, src/model): ====
// ==== accessors to the model fingerprint stored in the database meta. ====
impl Db {
    /// Whether a write failed with an I/O error (a full disk): every later
    /// write is refused until the process restarts.
    pub(crate) fn writes_failed(&self) -> bool {
        self.store.io_failed()
    }

    /// The fingerprint of the model whose outputs the database holds, if any.
    pub(crate) fn stored_model_fingerprint(&self) -> Option<String> {
        read(&self.model_fingerprint).clone()
    }

    /// How many products hold a vector in `space` when none of the
    /// catalog is of `fingerprint` (vectors stored with [`Db::insert`],
    /// from elsewhere); 0 when a product is of it (an older database whose
    /// model went unrecorded), or when none holds such a vector.
    pub(crate) fn vectors_of_no_model(&self, space: &str, fingerprint: &str) -> usize {
        let Ok(space) = self.space(space) else {
            return 0;
        };
        let cat = read(&self.catalog);
        if cat.postings.model.contains_key(fingerprint) {
            0
        } else {
            read(&space.index).len()
        }
    }

    /// Whether `what` is warned about for the first time by this `Db`
    /// (later meetings log at debug: a service would log it per request).
    pub(crate) fn first_warning(&self, what: String) -> bool {
        lock(&self.warned).insert(what)
    }

    /// Records `fingerprint` as the database's model (durably, before returning).
    pub(crate) fn set_stored_model_fingerprint(&self, fingerprint: &str) -> Result<()> {
        self.store_model_fingerprint(fingerprint, false).map(|_| ())
    }

    /// Records `fingerprint` as the database's model unless another one is
    /// recorded, which is returned instead; checked and set under the
    /// writer lock, so that two threads with two models cannot both win.
    pub(crate) fn claim_model_fingerprint(&self, fingerprint: &str) -> Result<Option<String>> {
        self.store_model_fingerprint(fingerprint, true)
    }

    fn store_model_fingerprint(&self, fingerprint: &str, claim: bool) -> Result<Option<String>> {
        // Already this model (every image insert asks), or a claim by
        // another: answered under the read lock. Waiting for the writer
        // (which a backup or a compaction holds for long) with the write
        // lock held would stall every image read behind this one.
        match read(&self.model_fingerprint).as_deref() {
            Some(fp) if fp == fingerprint => return Ok(None),
            Some(fp) if claim => return Ok(Some(fp.to_string())),
            _ => {}
        }
        // The fingerprint, then the writer: the order writes of model
        // outputs take them in (write_model_output). Never by queueing on
        // the fingerprint, though: a write-locker waiting there holds up
        // every reader (every concept query), and an image write holding
        // it for reading may itself wait for the writer, which a backup or
        // a compaction holds for long. So the writer is taken first, and
        // the fingerprint only tried; when readers hold it, both are let go
        // and taken again; new writes wait at `model_switch` meanwhile.
        let _switch = lock(&self.model_switch);
        let (mut current, mut w) = loop {
            let w = lock(&self.writer);
            match self.model_fingerprint.try_write() {
                Ok(current) => break (current, w),
                Err(std::sync::TryLockError::Poisoned(p)) => break (p.into_inner(), w),
                Err(std::sync::TryLockError::WouldBlock) => {
                    drop(w);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        match w.meta.model_fingerprint.as_deref() {
            Some(fp) if fp == fingerprint => return Ok(None),
            Some(fp) if claim => return Ok(Some(fp.to_string())),
            _ => {}
        }
        let mut meta = w.meta.clone();
        meta.model_fingerprint = Some(fingerprint.to_string());
        self.meta_ks.put(META_KEY, &meta)?;
        self.store.flush()?;
        current.clone_from(&meta.model_fingerprint);
        w.meta = meta;
        Ok(None)
    }

    /// Runs `write`, a write of outputs of the model `fingerprint`, only
    /// while that is the database's model: a switch to another model
    /// (`adopt_model`) waits for it, and one made since the caller checked
    /// is `Err(stored)`. `write` must not read the fingerprint again.
    pub(crate) fn write_model_output<T>(
        &self,
        fingerprint: &str,
        write: impl FnOnce() -> T,
    ) -> std::result::Result<T, Option<String>> {
        let current = {
            let _switch = lock(&self.model_switch);
            read(&self.model_fingerprint)
        };
        if current.as_deref() != Some(fingerprint) {
            return Err(current.clone());
        }
        Ok(write())
    }
}

/// Every product with its attributes and its vector in one space, each as
/// it was at one moment during the copy, once (rows in the order first
/// seen, which is doc order unless a product was stored again meanwhile).
#[derive(Clone, Debug, Default)]
pub(crate) struct SpaceSnapshot {
    pub ids: Vec<String>,
    pub attrs: Vec<Arc<Attributes>>,
    pub dim: usize,
    /// Row-major, `ids.len() × dim`.
    pub data: Vec<f32>,
}

impl SpaceSnapshot {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The most products (the query's own, excluded ids) a search of a
/// catalog of `n` leaves out by asking for that many more hits, rather
/// than from an allow set made by a walk of the catalog. A walk costs about
/// 0.04 µs a product, a hit more of the graph about 5 µs (`cargo bench
/// --bench engine -- exclude` at 10k: 100 left out, 1.39 ms by the walk,
/// 1.54 ms by more hits; 1,000: 1.59 / 6.6 ms), so more hits cost less
/// up to about n / 128 left out; capped at 1,024, where both cost about
/// 5 ms (at 130k products).
fn max_dropped_after(n: usize) -> usize {
    (n / 128).clamp(64, 1024)
}

/// Every side keyspace, created when a database opens: opening a tree
/// that does not exist is a write, so reading one that was never written
/// (the user tags every concept query reads) would otherwise wait out a
/// backup, and fail once a write had failed.
pub(crate) const SIDE_KEYSPACES: [&[&str]; 4] = [
    &[GRAPH_PARAMS_KS],
    &crate::concepts::KEYSPACES,
    &crate::ingest::KEYSPACES,
    &crate::outfits::KEYSPACES,
];

/// The graph parameters each space's index is built with, by space name.
/// The index files are a cache of sled: a damaged or removed one must not
/// take the database's settings with it (rebuilt with the defaults).
const GRAPH_PARAMS_KS: &str = "graph_params";

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct GraphParams {
    max_connections: u64,
    ef_construction: u64,
    max_layers: u64,
}

impl vitrine_storage::Record for GraphParams {
    const VERSION: u8 = 1;
}

impl GraphParams {
    fn of(p: &HnswParams) -> GraphParams {
        GraphParams {
            max_connections: p.max_connections as u64,
            ef_construction: p.ef_construction as u64,
            max_layers: p.max_layers as u64,
        }
    }

    /// As parameters with `ef_search`; `None` when not valid ones.
    fn with_ef_search(&self, ef_search: usize) -> Option<HnswParams> {
        let p = HnswParams {
            max_connections: usize::try_from(self.max_connections).ok()?,
            ef_construction: usize::try_from(self.ef_construction).ok()?,
            max_layers: usize::try_from(self.max_layers).ok()?,
            ef_search,
        };
        p.validate().is_ok().then_some(p)
    }
}

/// Whether a graph built with `a` is one built with `b` (`ef_search` is a
/// search setting, not the graph's).
fn same_graph_params(a: &HnswParams, b: &HnswParams) -> bool {
    a.max_connections == b.max_connections
        && a.ef_construction == b.ef_construction
        && a.max_layers == b.max_layers
}

// ==== Crate-internal access for concepts, profiles and outfits. ====
impl Db {
    /// A keyspace of side records (profiles, user tags, outfits…), stored in
    /// the same sled database under `vitrine.<name>`, with the database's
    /// durability.
    pub(crate) fn side_keyspace<T: vitrine_storage::Record>(
        &self,
        name: &str,
    ) -> Result<Keyspace<T>> {
        Ok(self.store.keyspace(&format!("vitrine.{name}"))?)
    }

    /// Returns once no write, checkpoint, compaction or backup holds the
    /// writer (taking nothing: one may start right after).
    pub(crate) fn wait_for_writer(&self) {
        drop(lock(&self.writer));
    }

    /// Held while a side record is read, changed and written back, so that
    /// concurrent updates (two feedback events for one user) are not lost.
    pub(crate) fn side_write_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.side_writes)
    }

    /// The cache of [`Db::vocabulary`].
    pub(crate) fn vocabulary_cache(&self) -> MutexGuard<'_, crate::concepts::VocabularyCache> {
        lock(&self.vocabulary_cache)
    }

    /// Held by [`Db::learn_outfit_rules`] from reading the outfits to
    /// writing the rules.
    pub(crate) fn rule_learning_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.rule_learning)
    }

    /// The vector of `id` in `space`, from the in-memory index.
    pub(crate) fn vector(&self, space: &str, id: &str) -> Result<Option<Vec<f32>>> {
        let space = self.space(space)?;
        let cat = read(&self.catalog);
        let Some(doc) = cat.by_id.get(id) else {
            return Ok(None);
        };
        Ok(read(&space.index).get(*doc).map(<[f32]>::to_vec))
    }

    /// Whether any product carries the attribute `key` (in memory: no
    /// storage read).
    pub(crate) fn any_product_has(&self, key: &str) -> bool {
        let mut found = false;
        self.for_each_entry(|e| {
            found = e.attrs.get(key).is_some();
            if found {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        });
        found
    }

    /// Calls `f` with every product in doc order until it breaks: a chunk
    /// at a time under the catalog's lock, as [`Db::for_each_vector`]
    /// walks (a write waiting for the lock would hold every search back).
    fn for_each_entry(&self, mut f: impl FnMut(&Entry) -> std::ops::ControlFlow<()>) {
        let mut from = 0u64;
        loop {
            let cat = read(&self.catalog);
            let mut seen = 0;
            let mut last = None;
            for (doc, e) in cat.by_doc.range(from..).take(COPY_CHUNK) {
                if f(e).is_break() {
                    return;
                }
                seen += 1;
                last = Some(*doc);
            }
            match last.and_then(|d| d.checked_add(1)) {
                Some(next) if seen == COPY_CHUNK => from = next,
                _ => return,
            }
        }
    }

    /// How many products have a doc id above `doc`: those stored since it
    /// (doc ids only grow).
    pub(crate) fn docs_after(&self, doc: u64) -> usize {
        read(&self.catalog)
            .by_doc
            .range(doc.saturating_add(1)..)
            .count()
    }

    /// How many products are of another model than the database's (a
    /// re-embedding not done yet).
    pub(crate) fn other_model_count(&self) -> usize {
        let model = self.model_fingerprint();
        let cat = read(&self.catalog);
        model.map_or(0, |m| cat.postings.other_model_count(&m))
    }

    /// The largest doc id (0 for an empty catalog).
    pub(crate) fn last_doc(&self) -> u64 {
        let cat = read(&self.catalog);
        cat.by_doc.keys().next_back().copied().unwrap_or(0)
    }

    /// About `n` rows of `space` with their ids, evenly spaced in doc
    /// order, none of those `left_out` names: a sample without copying the
    /// catalog.
    pub(crate) fn sample_rows(
        &self,
        space: &str,
        n: usize,
        left_out: &std::collections::HashSet<&str>,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let space = self.space(space)?;
        // Not rows a re-embedding has not reached: another model's space.
        // (Read before the catalog lock: a model write takes them in the
        // other order.)
        let model = self.model_fingerprint();
        let len = read(&space.index).len().saturating_sub(left_out.len());
        let step = len.div_ceil(n.max(1)).max(1);
        // A chunk at a time under the locks (a walk of a million products
        // under them held searches back behind a waiting write).
        let (mut out, mut seen) = (Vec::new(), 0usize);
        self.for_each_vector(space, |e, v| {
            if of_model(Some(&e.attrs), model.as_deref()) && !left_out.contains(e.id.as_str()) {
                if seen % step == 0 {
                    out.push((e.id.clone(), v.to_vec()));
                }
                seen += 1;
            }
        });
        Ok(out)
    }

    /// Calls `f` with every product that has a vector in `space`, in doc
    /// order, [`COPY_CHUNK`] products at a time under the read locks,
    /// released in between: a write waits for one chunk, not for the whole
    /// pass, and searches (which a write waiting for the catalog lock
    /// would hold back) never wait for more. A product written meanwhile
    /// is seen as it was or as it is; one deleted and stored again (under
    /// a new doc) may be seen twice.
    fn for_each_vector(&self, space: &Space, mut f: impl FnMut(&Entry, &[f32])) {
        let mut from = 0u64;
        loop {
            let cat = read(&self.catalog);
            let index = read(&space.index);
            let mut seen = 0;
            let mut last = None;
            for (doc, e) in cat.by_doc.range(from..).take(COPY_CHUNK) {
                seen += 1;
                last = Some(*doc);
                if let Some(v) = index.get(*doc) {
                    f(e, v);
                }
            }
            match last.and_then(|d| d.checked_add(1)) {
                Some(next) if seen == COPY_CHUNK => from = next,
                _ => break,
            }
        }
    }

    /// The mean of the vectors in `space` of the database's model
    /// ([`of_model`]: not those a re-embedding has not reached), zeros when
    /// there are none; summed in f64, with no copy of the catalog (a
    /// snapshot of 1M products is gigabytes). A product deleted and stored
    /// again during the walk may count twice: negligible in a mean.
    pub(crate) fn space_mean(&self, space: &str) -> Result<Vec<f32>> {
        let space = self.space(space)?;
        // (Read before the catalog lock: a model write takes them in the
        // other order.)
        let model = self.model_fingerprint();
        let mut sum = vec![0f64; space.spec.dim];
        let mut n = 0usize;
        self.for_each_vector(space, |e, v| {
            if of_model(Some(&e.attrs), model.as_deref()) {
                for (a, b) in sum.iter_mut().zip(v) {
                    *a += f64::from(*b);
                }
                n += 1;
            }
        });
        let n = n.max(1) as f64;
        Ok(sum.into_iter().map(|x| (x / n) as f32).collect())
    }

    /// Every product that has a vector in `space` and whose vectors are of
    /// the database's model ([`of_model`]): one a re-embedding has not
    /// reached is in another model's space. Copied a chunk at a time
    /// ([`Db::for_each_vector`]): each product as it was at one moment,
    /// once.
    pub(crate) fn snapshot(&self, space: &str) -> Result<SpaceSnapshot> {
        let space = self.space(space)?;
        let model = self.model_fingerprint();
        let dim = space.spec.dim;
        let mut s = SpaceSnapshot {
            dim,
            ..SpaceSnapshot::default()
        };
        // Reserved first: growing gigabytes under the read locks would hold
        // a write back longer than a chunk.
        let n = read(&self.catalog).by_doc.len();
        s.ids.reserve(n);
        s.attrs.reserve(n);
        s.data.reserve(n * dim);
        let mut rows: HashMap<String, usize> = HashMap::with_capacity(n);
        self.for_each_vector(space, |e, v| {
            if !of_model(Some(&e.attrs), model.as_deref()) {
                return;
            }
            match rows.get(&e.id) {
                // Stored again during the copy: the newer one.
                Some(&r) => {
                    s.attrs[r] = e.attrs.clone();
                    s.data[r * dim..(r + 1) * dim].copy_from_slice(v);
                }
                None => {
                    rows.insert(e.id.clone(), s.ids.len());
                    s.ids.push(e.id.clone());
                    s.attrs.push(e.attrs.clone());
                    s.data.extend_from_slice(v);
                }
            }
        });
        Ok(s)
    }
}

/// What [`Db::rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    Done,
    /// The product needed no rewrite.
    Unwanted,
    /// The product is gone.
    Gone,
    /// Another product stands under its id (deleted and stored again).
    Another,
}

/// Products a catalog walk reads under one hold of the read locks.
#[cfg(not(test))]
const COPY_CHUNK: usize = 16_384;
#[cfg(test)]
const COPY_CHUNK: usize = 7;

#[cfg(test)]
mod tests {
    use super::*;

    /// `build_threads(0)` is every CPU, as the crate's other thread counts'
    /// 0 is, not one thread.
    #[test]
    fn zero_build_threads_is_every_cpu() {
        assert_eq!(Db::builder().build_threads(0).threads, cpus());
        assert_eq!(Db::builder().build_threads(3).threads, 3);
    }

    /// A write that leaves every doc in the same stock and model sets (a
    /// price update) keeps the shared allow sets; one that moves a doc
    /// drops them, and the next search sees the change.
    #[test]
    fn allow_sets_outlive_writes_that_keep_them() {
        let mut cat = Catalog::default();
        let entry = |id: &str, a: Attributes| Entry {
            id: id.into(),
            attrs: Arc::new(a),
        };
        for doc in 0..4 {
            cat.put(doc, entry(&format!("p{doc}"), Attributes::new()));
        }
        let in_stock = Filter::new().in_stock();
        let set = cat.allow_set(&in_stock);
        let model_set = cat.of_model_set("m", Some(true));
        cat.set_attrs(1, Attributes::new().price(9.0));
        cat.put(2, entry("p2", Attributes::new().brand("B")));
        assert!(Arc::ptr_eq(&set, &cat.allow_set(&in_stock)));
        assert!(Arc::ptr_eq(&model_set, &cat.of_model_set("m", Some(true))));
        cat.set_attrs(1, Attributes::new().in_stock(false));
        let now = cat.allow_set(&in_stock);
        assert!(!Arc::ptr_eq(&set, &now));
        assert_eq!(now.len(), 3);
        assert_eq!(cat.of_model_set("m", Some(true)).len(), 3);
        cat.remove(0);
        assert_eq!(cat.allow_set(&in_stock).len(), 2);
        cat.put(7, entry("p7", Attributes::new()));
        assert_eq!(cat.allow_set(&in_stock).len(), 3);
        let other = Attributes::new().set(crate::ATTR_MODEL, "old");
        cat.put(7, entry("p7", other));
        assert_eq!(cat.of_model_set("m", Some(true)).len(), 2);
    }

    /// A model switch waiting for the writer (held for long by a backup or
    /// a compaction) does not hold the fingerprint meanwhile: every concept
    /// read asks for it.
    #[test]
    fn a_model_switch_waiting_for_the_writer_blocks_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let db = &db;
        let held = lock(&db.writer);
        std::thread::scope(|s| {
            let switch = s.spawn(move || db.set_stored_model_fingerprint("m2"));
            // Give the switch time to reach the writer.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (tx, rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = tx.send(db.stored_model_fingerprint());
            });
            let read = rx.recv_timeout(std::time::Duration::from_secs(60));
            drop(held);
            assert_eq!(read, Ok(None), "the read waited for the switch");
            switch.join().unwrap().unwrap();
        });
        assert_eq!(db.stored_model_fingerprint().as_deref(), Some("m2"));
    }

    /// A model switch completes under a steady stream of overlapping
    /// writes of the old model's outputs: it does not wait for a moment
    /// when none holds the fingerprint, which never comes.
    #[test]
    fn a_model_switch_is_not_starved_by_writes_of_model_outputs() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.set_stored_model_fingerprint("m1").unwrap();
        let (db, stop) = (&db, &AtomicBool::new(false));
        let writes = std::sync::atomic::AtomicUsize::new(0);
        let writes = &writes;
        let switched = std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        // Each holds the fingerprint while it waits for
                        // and holds the writer, as an image write does.
                        let _ = db.write_model_output("m1", || {
                            let _w = lock(&db.writer);
                            writes.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(3));
                        });
                    }
                });
            }
            while writes.load(Ordering::Relaxed) < 10 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let start = Instant::now();
            db.set_stored_model_fingerprint("m2").unwrap();
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            took
        });
        assert!(
            switched < Duration::from_secs(10),
            "the switch took {switched:?}"
        );
        assert_eq!(db.stored_model_fingerprint().as_deref(), Some("m2"));
        // Writes of the old model's outputs are refused from then on.
        assert_eq!(
            db.write_model_output("m1", || ()),
            Err(Some("m2".to_string()))
        );
    }

    /// While a re-embedding has not reached some products, searches of the
    /// model's spaces leave them out (their vectors are the old model's),
    /// whether they are few (dropped after the search) or many (left out of
    /// the allow set, kept until the catalog changes), and a "more like
    /// this" from one is refused. Checked against brute force over the
    /// products of the current model.
    #[test]
    fn searches_of_model_spaces_leave_out_products_of_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space(crate::EMBEDDING_SPACE, 3, Metric::Cosine)
            .vector_space("mine", 3, Metric::Cosine)
            .open(dir.path())
            .unwrap();
        db.set_stored_model_fingerprint("m2").unwrap();
        let v = |i: usize| {
            let t = i as f32 * 0.37;
            vec![t.cos(), t.sin(), 0.2 + (i % 7) as f32 * 0.1]
        };
        let put = |i: usize, model: &str| {
            let a = Attributes::new()
                .in_stock(!i.is_multiple_of(3))
                .category(["a", "b"][i % 2])
                .set(crate::ATTR_MODEL, model);
            let id = format!("p{i:03}");
            db.upsert(&id, a, [(crate::EMBEDDING_SPACE, v(i)), ("mine", v(i))])
                .unwrap();
        };
        let check = |old: &dyn Fn(usize) -> bool, n: usize| {
            let filters = [
                Filter::new(),
                Filter::new().in_stock(),
                Filter::new().category_in(["a"]),
                Filter::new().in_stock().exclude("p004"),
            ];
            for f in &filters {
                let q = v(1000);
                let ids = |k: usize, offset: usize, plan: crate::PlanHint| -> Vec<String> {
                    let s = Search::new(SimilarTo::Vector(&q), k)
                        .offset(offset)
                        .space(crate::EMBEDDING_SPACE)
                        .filter(f)
                        .plan(plan);
                    db.search(&s)
                        .unwrap()
                        .hits
                        .into_iter()
                        .map(|h| h.id)
                        .collect()
                };
                let mut want: Vec<(f32, String)> = (0..n)
                    .filter(|i| !old(*i))
                    .map(|i| (format!("p{i:03}"), i))
                    .filter(|(id, _)| f.matches(id, &db.get(id).unwrap().unwrap().attributes))
                    .map(|(id, i)| {
                        let (a, b) = (v(i), &q);
                        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
                        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                        (-dot / (na * nb), id)
                    })
                    .collect();
                want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let want: Vec<String> = want.into_iter().take(10).map(|w| w.1).collect();
                assert_eq!(ids(10, 0, crate::PlanHint::Exact), want, "{f:?}");
                // A page further on, and the graph's plan.
                let page = ids(5, 3, crate::PlanHint::Exact);
                assert_eq!(page, want[3..8.min(want.len())], "{f:?}");
                let graph = ids(10, 0, crate::PlanHint::Graph);
                assert!(!graph.is_empty());
                assert!(
                    graph.iter().all(|id| !old(id[1..].parse().unwrap())),
                    "{f:?}"
                );
                // A space of the caller's own keeps every product.
                let all = db
                    .search(
                        &Search::new(SimilarTo::Vector(&q), n)
                            .space("mine")
                            .filter(f),
                    )
                    .unwrap();
                assert!(
                    all.hits.iter().any(|h| old(h.id[1..].parse().unwrap()))
                        || (0..n).all(|i| !old(i))
                );
            }
        };
        // Few of the old model, then many.
        for i in 0..40 {
            put(i, if i % 4 == 0 { "m1" } else { "m2" });
        }
        check(&|i| i % 4 == 0, 40);
        for i in 40..200 {
            put(i, if i % 4 == 0 { "m2" } else { "m1" });
        }
        let old = |i: usize| {
            if i < 40 {
                i.is_multiple_of(4)
            } else {
                !i.is_multiple_of(4)
            }
        };
        check(&old, 200);
        assert!(matches!(
            db.similar(SimilarTo::Id("p041"), 3, &Filter::new()),
            Err(Error::VectorOfAnotherModel { .. })
        ));
        // Re-embedded products come back (the kept set is rebuilt).
        for i in 40..120 {
            put(i, "m2");
        }
        let old = |i: usize| {
            if i < 40 {
                i.is_multiple_of(4)
            } else {
                i >= 120 && !i.is_multiple_of(4)
            }
        };
        check(&old, 200);
        assert_eq!(
            db.similar(SimilarTo::Id("p041"), 3, &Filter::new())
                .unwrap()
                .len(),
            3
        );
    }

    /// A catalog walked a chunk at a time holds every product once, in
    /// doc order, with its vector (chunks of 7 under test).
    #[test]
    fn a_catalog_copy_in_chunks_holds_every_product_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space(DEFAULT_SPACE, 2, Metric::Cosine)
            .open(dir.path())
            .unwrap();
        for i in 0..50 {
            // Some without a vector, which the walk skips.
            let vectors = (i % 10 != 3).then(|| (DEFAULT_SPACE, vec![1.0, i as f32]));
            db.insert(&format!("p{i:02}"), Attributes::new(), vectors)
                .unwrap();
        }
        let s = db.snapshot(DEFAULT_SPACE).unwrap();
        let want: Vec<String> = (0..50)
            .filter(|i| i % 10 != 3)
            .map(|i| format!("p{i:02}"))
            .collect();
        assert_eq!(s.ids, want);
        for (r, id) in s.ids.iter().enumerate() {
            let i: f32 = id[1..].parse().unwrap();
            let v = &s.data[r * 2..r * 2 + 2];
            // Stored normalised (cosine).
            assert!((v[1] / v[0] - i).abs() < 1e-3, "{id}: {v:?}");
        }
        let mean = db.space_mean(DEFAULT_SPACE).unwrap();
        let n = want.len() as f32;
        let want_mean: f32 = s.data.chunks(2).map(|v| v[0]).sum::<f32>() / n;
        assert!((mean[0] - want_mean).abs() < 1e-5, "{mean:?}");
        // An attribute found past the first chunks, or on no product.
        assert!(!db.any_product_has("colour_group"));
        db.update_attributes("p47", |a| {
            a.extra.insert("colour_group".into(), "RED".into());
        })
        .unwrap();
        assert!(db.any_product_has("colour_group"));
        // A sample takes evenly spaced products of every chunk.
        let sample = db
            .sample_rows(DEFAULT_SPACE, 9, &Default::default())
            .unwrap();
        let ids: Vec<&str> = sample.iter().map(|(id, _)| id.as_str()).collect();
        let every: Vec<&str> = want.iter().map(String::as_str).step_by(5).collect();
        assert_eq!(ids, every);
        // Ids, all or filtered, copied in chunks: each once, sorted.
        let all: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
        assert_eq!(db.ids(), all);
        db.delete("p20").unwrap();
        let odd = |i: &usize| i % 2 == 1;
        for i in (0..50).filter(odd) {
            db.set_in_stock(&format!("p{i:02}"), false).unwrap();
        }
        let in_stock: Vec<String> = (0..50)
            .filter(|i| !odd(i) && *i != 20)
            .map(|i| format!("p{i:02}"))
            .collect();
        assert_eq!(
            db.ids_matching(&Filter::new().in_stock()).unwrap(),
            in_stock
        );
        assert_eq!(db.ids().len(), 49);
    }

    /// Side records that were never written read as empty while writes are
    /// paused (a backup copying sled's files): their keyspaces exist from
    /// the open, so reading one is no write that waits for the copy.
    #[test]
    fn reading_unwritten_side_records_does_not_wait_for_paused_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let paused = db.store.pause_writes();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send((db.outfit_settings().is_ok(), db.outfits().is_ok()));
            });
            let read = rx.recv_timeout(std::time::Duration::from_secs(60));
            drop(paused);
            assert_eq!(read, Ok((true, true)), "the read waited for the pause");
        });
    }

    /// A rewrite (a re-embedding) of a product whose record keeps a vector
    /// the index refuses (a zero cosine vector an older build stored)
    /// drops that vector, and writes sled and every index: it stopped
    /// between them, with the catalog and the indexes disagreeing.
    #[test]
    fn a_rewrite_drops_a_kept_vector_the_index_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space("a", 3, Metric::Cosine)
            .vector_space("b", 3, Metric::Cosine)
            .open(dir.path())
            .unwrap();
        db.insert(
            "p",
            Attributes::new(),
            [("a", vec![1.0, 0.0, 0.0]), ("b", vec![0.0, 1.0, 0.0])],
        )
        .unwrap();
        let mut record = db.products.get(b"p").unwrap().unwrap();
        record.vectors[1].1 = vec![0.0; 3];
        db.products.put(b"p", &record).unwrap();
        let done = db
            .rewrite(
                "p",
                None,
                |_| true,
                |a| (a.brand("new"), vec![("a", vec![0.0, 0.0, 1.0])]),
            )
            .unwrap();
        assert!(matches!(done, Rewrite::Done));
        let p = db.get("p").unwrap().unwrap();
        assert_eq!(p.attributes.brand.as_deref(), Some("new"));
        assert_eq!(p.vectors.keys().collect::<Vec<_>>(), ["a"]);
        let hits = db
            .search(&Search::new(SimilarTo::Vector(&[0.0, 0.0, 1.0]), 1).space("a"))
            .unwrap()
            .hits;
        assert_eq!((hits[0].id.as_str(), hits[0].score > 0.99), ("p", true));
        assert!(read(&db.spaces[1].index).get(record.doc).is_none());
    }
}
