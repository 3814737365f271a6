//! The nightly "similar items" job: for every product, its top-k products
//! passing a filter (typically in stock), excluding itself and, when a
//! variant key is set, the products sharing its value of that attribute;
//! computed exactly in batches through the [`Scorer`](vitrine_index::Scorer)
//! and written to a compact file served by [`PrecomputedSimilar`].
//!
//! ```
//! use vitrine::{Attributes, Db, Filter, PrecomputeOptions, PrecomputedSimilar};
//! let dir = tempfile::tempdir()?;
//! let db = Db::builder().vector_space("embedding", 2, vitrine::Metric::Cosine).open(dir.path().join("db"))?;
//! db.insert("a", Attributes::new().set("model_id", "m1"), [("embedding", vec![1.0, 0.0])])?;
//! db.insert("a-red", Attributes::new().set("model_id", "m1"), [("embedding", vec![1.0, 0.01])])?;
//! db.insert("b", Attributes::new(), [("embedding", vec![1.0, 0.2])])?;
//! db.insert("c", Attributes::new().in_stock(false), [("embedding", vec![1.0, 0.1])])?;
//!
//! let options = PrecomputeOptions { variant_key: Some("model_id".into()), ..Default::default() };
//! let table = db.precompute_similar(2, &Filter::new().in_stock(), &options)?;
//! let out = dir.path().join("similar.vsim");
//! table.write(&out)?;
//! let served = PrecomputedSimilar::open(&out)?;
//! let ids: Vec<String> = served.get("a").unwrap().into_iter().map(|(id, _)| id).collect();
//! assert_eq!(ids, ["b"]); // not itself, not its variant, not the sold-out "c"
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use vitrine_index::{AllPairsOptions, Metric, RowMask, Rows, Scorer, ScorerOptions};
pub use vitrine_index::{Backend, PrecomputedSimilar, ScorerChoice, ScorerError, SimilarFileError};

use crate::{Db, Filter, DEFAULT_SPACE};

/// Settings of [`Db::precompute_similar`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrecomputeOptions {
    /// Vector space; `None` is the database's default space.
    pub space: Option<String>,
    /// Products sharing this attribute's value (e.g. `"model_id"`) are
    /// variants of each other and never listed for one another. Products
    /// without the attribute have no variants. A value shared by more than
    /// [`MAX_VARIANTS`] products is refused: the key then names a group
    /// (a brand, a category), not one product's variants.
    pub variant_key: Option<String>,
    /// Back end; `None` (the default) takes the database's
    /// [`crate::DbBuilder::scorer`] choice (itself `Auto` by default: the GPU
    /// when built with `cuda`, present and worth it; every fallback is logged).
    pub scorer: Option<ScorerChoice>,
    /// CPU threads (`0`: one per CPU; at most 256, fewer when the process
    /// cannot start as many).
    pub threads: usize,
    /// Products per scorer batch (`0`: chosen for the back end; at most
    /// 8,192, as memory grows with the batch times `k`).
    pub batch: usize,
}

/// Errors of [`Db::precompute_similar`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrecomputeError {
    /// Reading the database failed, or the space is unknown.
    #[error(transparent)]
    Db(#[from] crate::Error),
    /// Scoring failed (including `ScorerChoice::Gpu` without a usable GPU).
    #[error(transparent)]
    Scorer(#[from] ScorerError),
    /// Writing or reading the file failed.
    #[error(transparent)]
    File(#[from] SimilarFileError),
    /// The variant key groups too many products under one value.
    #[error("variant key '{key}' = '{value}' is shared by {count} products (at most {MAX_VARIANTS}); it should name one product's variants, e.g. a model id")]
    TooManyVariants {
        /// The key.
        key: String,
        /// Its most shared value.
        value: String,
        /// How many products share it.
        count: usize,
    },
}

impl PrecomputeError {
    /// Whether the caller can fix it by changing the request: an unknown
    /// space, a bad `k` or variant key, the GPU asked for where there is
    /// none, an output path that is refused or cannot be written for the
    /// caller's reason (see [`crate::Error::is_user_error`]); false for
    /// damaged data, a GPU failing mid-run and the machine.
    pub fn is_user_error(&self) -> bool {
        match self {
            PrecomputeError::Db(e) => e.is_user_error(),
            PrecomputeError::Scorer(e) => matches!(
                e,
                ScorerError::InvalidArgument { .. } | ScorerError::GpuUnavailable { .. }
            ),
            PrecomputeError::File(SimilarFileError::Io { source, .. }) => {
                crate::error::callers_file(source)
            }
            PrecomputeError::File(e) => matches!(e, SimilarFileError::InvalidInput { .. }),
            PrecomputeError::TooManyVariants { .. } => true,
        }
    }
}

/// The most products one [`PrecomputeOptions::variant_key`] value may group.
pub const MAX_VARIANTS: usize = 1000;

/// The computed lists, in memory; [`write`](Self::write) saves them.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SimilarTable {
    /// Slots per product.
    pub k: usize,
    /// Every product id, sorted.
    pub ids: Vec<String>,
    /// Per product (same order as `ids`): (index into `ids`, score), best first.
    pub lists: Vec<Vec<(u32, f32)>>,
    /// Back end that answered: [`Backend::Gpu`] only when the GPU answered
    /// every batch. One it could not take falls back to the CPU, with a log
    /// line; under `Auto`, a last batch below the GPU's threshold
    /// ([`AUTO_GPU_MIN_WORK`](crate::AUTO_GPU_MIN_WORK) row-queries) goes to the CPU
    /// too, logged only at debug level (`similar_all batch`), and makes
    /// this `Cpu`.
    pub backend: Backend,
    /// Wall time of the scoring, in seconds.
    pub seconds: f64,
    /// Products listed with an empty list and in no other list: no usable
    /// vector in the space, or (in the model's spaces) one of another model
    /// than the database's, which a re-embedding has not reached.
    pub unscored: usize,
}

impl SimilarTable {
    /// The similar products of `id`, best first; `None` for an unknown id.
    pub fn get(&self, id: &str) -> Option<Vec<(String, f32)>> {
        // The fields are public: a table edited by hand may not line up.
        let i = self.ids.binary_search_by(|x| x.as_str().cmp(id)).ok()?;
        Some(
            self.lists
                .get(i)?
                .iter()
                .filter_map(|&(t, s)| Some((self.ids.get(t as usize)?.clone(), s)))
                .collect(),
        )
    }

    /// Whether [`SimilarTable::write`] may write `path` (a file in an
    /// existing folder, replacing nothing but an earlier table): check it
    /// before computing a table that takes an hour.
    pub fn check_destination(path: &Path) -> Result<(), SimilarFileError> {
        vitrine_index::check_similar_destination(path)
    }

    /// Writes the file atomically (see [`PrecomputedSimilar`] for the format).
    pub fn write(&self, path: &Path) -> Result<(), SimilarFileError> {
        vitrine_index::write_similar_file(path, self.k, &self.ids, &self.lists)
    }
}

/// Normalises like the index does for cosine (f64 norm), so scores equal
/// the ones `Db::search` reports. (A vector whose squared norm overflows
/// f32 is never stored: `Db` refuses it under every metric.)
fn prepare(metric: Metric, v: &[f32]) -> Option<Vec<f32>> {
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    match metric {
        Metric::InnerProduct => Some(v.to_vec()),
        Metric::Cosine => {
            let norm_sq: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            if norm_sq == 0.0 || !(norm_sq as f32).is_finite() {
                return None;
            }
            let inv = 1.0 / norm_sq.sqrt();
            Some(v.iter().map(|&x| (f64::from(x) * inv) as f32).collect())
        }
    }
}

/// The longest list [`Db::precompute_similar`](crate::Db::precompute_similar) makes, once `k` is lowered to
/// the other products: every list is held in memory until the table is
/// complete.
pub const MAX_SIMILAR_K: usize = 1_000;

/// For every product of `db`, its `k` most similar products that pass
/// `filter` (pass `Filter::new().in_stock()` for the usual job), never
/// itself nor its variants (see [`PrecomputeOptions::variant_key`]).
///
/// Every product is listed, in id order; one without a vector in the space
/// gets an empty list, as does one whose vectors in the model's spaces are
/// of another model than the database's (a re-embedding has not reached
/// it), and neither is in another's list ([`SimilarTable::unscored`]
/// counts them). A product whose vector is zero under the inner product,
/// which [`Db::similar`](crate::Db::similar) refuses as a query (every
/// score would tie at 0), gets an empty list too, but is in the others'
/// lists (score 0), as in a search. A `k` above the number of other products is lowered
/// to it (the table's `k` field says which was used); one still above
/// [`MAX_SIMILAR_K`] is refused. Scores are those of the space's metric; exact ties
/// are broken by id ascending.
pub(crate) fn precompute_similar(
    db: &Db,
    k: usize,
    filter: &Filter,
    options: &PrecomputeOptions,
) -> Result<SimilarTable, PrecomputeError> {
    let spaces = db.spaces();
    let space = match &options.space {
        Some(name) => spaces.iter().find(|s| &s.name == name),
        None => spaces
            .iter()
            .find(|s| s.name == DEFAULT_SPACE)
            .or(spaces.first()),
    }
    .ok_or_else(|| crate::Error::UnknownVector {
        name: options
            .space
            .clone()
            .unwrap_or_else(|| DEFAULT_SPACE.into()),
        known: spaces
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?
    .clone();

    // A product a re-embedding has not reached has its model vectors in
    // the old model's space: scored against the others, it would list
    // products of an unrelated space, and be listed by them.
    let model = [crate::EMBEDDING_SPACE, crate::CONCEPT_SPACE]
        .contains(&space.name.as_str())
        .then(|| db.model_fingerprint())
        .flatten();
    // A typo in a concept condition would list nothing (or, negated,
    // everything), as in a search.
    db.check_filter_concepts(filter)?;
    if let Some(key) = options.variant_key.as_deref() {
        // Those are read from their own fields: as a key they group nothing;
        // the engine's own attributes are no variant groups (the model's
        // name, shared by every product, emptied every list).
        let why = if ["price", "in_stock"].contains(&key) {
            Some("is not a free attribute")
        } else if key.starts_with("vitrine.") {
            Some("is the engine's own attribute")
        } else if !db.any_product_has(key) {
            // A typo (`modelid`) would group nothing, silently.
            Some("is an attribute no product has")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(crate::Error::InvalidConfig(format!(
                "variant_key '{key}' {why}: variants share a key such as model_id"
            ))
            .into());
        }
    }
    // Before the catalog is read: what refuses the call refuses it at once.
    if k == 0 {
        return Err(crate::Error::InvalidConfig("k must be at least 1".into()).into());
    }
    if k > MAX_SIMILAR_K && db.len().saturating_sub(1) > MAX_SIMILAR_K {
        return Err(crate::Error::InvalidConfig(format!(
            "k must be at most {MAX_SIMILAR_K} (asked {k}; {} products)",
            db.len()
        ))
        .into());
    }
    let scorer = Scorer::new(
        options.scorer.unwrap_or(db.scorer_choice()),
        ScorerOptions {
            threads: options.threads,
            ..ScorerOptions::default()
        },
    )?;
    let mut other_model = 0usize;
    // Snapshot: ids sorted; row docs are positions in `ids`, so ties break by id.
    let mut ids = Vec::new();
    let mut data = Vec::new();
    let mut docs = Vec::new();
    let mut allowed = Vec::new();
    let mut variant: Vec<Option<String>> = Vec::new();
    // Rows that rank nothing (a zero vector under the inner product, which
    // `similar` refuses as a query): candidates, with no list of their own.
    let mut no_query = Vec::new();
    for id in db.ids() {
        let Some(p) = db.get(&id)? else { continue };
        let pos = ids.len() as u64;
        if !crate::db::of_model(Some(&p.attributes), model.as_deref()) {
            other_model += 1;
            ids.push(id);
            continue;
        }
        if let Some(v) = p.vectors.get(&space.name) {
            match prepare(space.metric, v) {
                Some(v) if v.len() == space.dim => {
                    no_query.push(v.iter().all(|&x| x == 0.0));
                    data.extend_from_slice(&v);
                    docs.push(pos);
                    allowed.push(filter.matches(&id, &p.attributes));
                    variant.push(
                        options
                            .variant_key
                            .as_deref()
                            .and_then(|key| p.attributes.get(key).map(str::to_string)),
                    );
                }
                _ => tracing::warn!(id, space = space.name, "unusable vector skipped"),
            }
        }
        ids.push(id);
    }

    if other_model > 0 {
        tracing::warn!(
            products = other_model,
            "products still of the previous model (a re-embedding has not reached them) get empty lists"
        );
    }
    let unscored = ids.len() - docs.len();
    // No list can be longer; the file reserves k slots per product.
    let asked = k;
    let k = k.min(docs.len().saturating_sub(1)).max(1);
    // Every list is held until the end: 1M products × 20,000 would be 320 GB.
    if k > MAX_SIMILAR_K {
        return Err(crate::Error::InvalidConfig(format!(
            "k must be at most {MAX_SIMILAR_K} (asked {asked}; {} other products)",
            docs.len().saturating_sub(1)
        ))
        .into());
    }

    let mut groups: HashMap<&str, Vec<u64>> = HashMap::new();
    for (row, v) in variant.iter().enumerate() {
        if let Some(v) = v {
            groups.entry(v.as_str()).or_default().push(docs[row]);
        }
    }
    // Ties by value, so the error names the same group on every run.
    if let Some((value, docs)) = groups
        .iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
    {
        if docs.len() > MAX_VARIANTS {
            return Err(PrecomputeError::TooManyVariants {
                key: options.variant_key.clone().unwrap_or_default(),
                value: value.to_string(),
                count: docs.len(),
            });
        }
    }
    let exclude = |row: usize| -> Vec<u64> {
        variant[row]
            .as_deref()
            .and_then(|v| groups.get(v).cloned())
            .unwrap_or_default()
    };

    let rows = Rows::new(space.dim, &data)?.with_docs(&docs)?;
    let loaded = scorer.load(rows);
    let mask = RowMask::from_fn(allowed.len(), |i| allowed[i]);
    let t = Instant::now();
    let (hits, backend) = loaded.similar_all_with_backend(&AllPairsOptions {
        k,
        batch: options.batch,
        allow: Some(&mask),
        exclude: Some(&exclude),
    })?;
    let seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        products = ids.len(),
        rows = rows.len(),
        k,
        ?backend,
        seconds,
        "similar items precomputed"
    );

    let mut lists = vec![Vec::new(); ids.len()];
    for (row, hits) in hits.into_iter().enumerate() {
        if !no_query[row] {
            lists[docs[row] as usize] = hits.iter().map(|h| (h.doc as u32, h.score)).collect();
        }
    }
    let zero = no_query.iter().filter(|&&z| z).count();
    if zero > 0 {
        tracing::warn!(
            products = zero,
            space = space.name,
            "products whose vector is zero rank nothing: they get empty lists"
        );
    }
    Ok(SimilarTable {
        k,
        ids,
        lists,
        backend,
        seconds,
        unscored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, Metric};

    /// During a re-embedding, products still of the previous model are in
    /// another space: they get no list and are in no list.
    #[test]
    fn products_of_the_previous_model_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space(crate::EMBEDDING_SPACE, 2, Metric::Cosine)
            .open(dir.path())
            .unwrap();
        let put = |id: &str, model: &str, v: [f32; 2]| {
            let mut a = Attributes::new();
            a.extra.insert(crate::ATTR_MODEL.into(), model.into());
            db.insert(id, a, [(crate::EMBEDDING_SPACE, v.to_vec())])
                .unwrap();
        };
        put("a-new", "m2", [1.0, 0.0]);
        put("b-old", "m1", [1.0, 0.01]);
        put("c-new", "m2", [0.0, 1.0]);
        db.set_stored_model_fingerprint("m2").unwrap();
        let t = precompute_similar(&db, 1, &Filter::new(), &PrecomputeOptions::default()).unwrap();
        assert_eq!(t.unscored, 1);
        assert_eq!(t.get("b-old").unwrap(), []);
        assert_eq!(t.get("a-new").unwrap()[0].0, "c-new");
        assert_eq!(t.get("c-new").unwrap()[0].0, "a-new");
    }
}
