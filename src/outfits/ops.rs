//! Substitute, expand, cover and complete, over one snapshot of the catalog
//! and the learned rules ([`OutfitEngine`]).
//!
//! Scores mix terms on different scales (log-lifts, bilinear scores,
//! cosines). Each term is standardised over the candidates of one decision
//! (z-score), so a weight means "how many standard deviations of this term
//! one standard deviation of that one is worth", independent of the units.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::features::{Catalog, NO_CATEGORY, NO_COLOUR};
use super::memory::Memory;
use super::rules::{Given, OutfitRules, RuleMaps};
use super::{Outfit, OutfitError, OutfitResult, MAX_EXPANSIONS, MAX_OUTFIT_SLOTS};

/// [`OutfitError::InvalidArgument`] for more outfits than
/// [`MAX_EXPANSIONS`].
fn check_expansions(n: usize, what: &str) -> OutfitResult<()> {
    if n > MAX_EXPANSIONS {
        return Err(OutfitError::InvalidArgument(format!(
            "{what}: {n} outfits asked for; at most {MAX_EXPANSIONS} at once"
        )));
    }
    Ok(())
}
use crate::Db;

/// A relation between two slots of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum RelationKind {
    /// The two items share a colour family, or are shades at most ΔE 20
    /// apart (the same catalog group, with
    /// [`OutfitSettings::colour_attribute`](crate::OutfitSettings::colour_attribute)).
    SameColour,
    /// Neither.
    ColourContrast,
}

/// A template relation and whether an outfit kept it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Relation {
    /// First slot (index into the template's slots).
    pub a: usize,
    /// Second slot.
    pub b: usize,
    /// The template's relation.
    pub kind: RelationKind,
    /// Colour families of the template's two items.
    pub template_colours: (String, String),
    /// Colour families of the outfit's two items.
    pub colours: (String, String),
    /// Whether the outfit has the same relation.
    pub kept: bool,
}

/// Weight of colour similarity in a substitute's score (see
/// [`OutfitEngine::substitute`]).
const SUBSTITUTE_COLOUR_WEIGHT: f32 = 10.0;

/// A new outfit created from a template by [`OutfitEngine::expand`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Expansion {
    /// The template's id.
    pub template: String,
    /// One product per template slot, in slot order.
    pub products: Vec<String>,
    /// The slot whose product was chosen first (the anchor).
    pub anchor_slot: usize,
    /// Every colour relation of the template, and whether it was kept.
    pub relations: Vec<Relation>,
    /// Human-readable explanation of the relations kept.
    pub explanation: Vec<String>,
}

impl Expansion {
    /// Fraction of the template's relations that were kept (1 when none).
    pub fn kept_fraction(&self) -> f64 {
        if self.relations.is_empty() {
            return 1.0;
        }
        self.relations.iter().filter(|r| r.kept).count() as f64 / self.relations.len() as f64
    }
}

/// The largest [`ExpandOptions::palette`] weight: past it the template's
/// colours already decide alone.
pub const MAX_PALETTE: f32 = 1000.0;

/// Options of [`OutfitEngine::expand`].
#[derive(Clone, Debug)]
pub struct ExpandOptions {
    anchor_slot: Option<usize>,
    diversity: f32,
    reuse_template: bool,
    palette: f32,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        ExpandOptions {
            anchor_slot: None,
            diversity: 0.3,
            reuse_template: false,
            palette: 2.0,
        }
    }
}

impl ExpandOptions {
    /// Defaults: the anchor is the template's first slot, MMR diversity
    /// 0.3, template products are not reused, palette weight 2.
    ///
    /// ```
    /// use vitrine::ExpandOptions;
    /// let o = ExpandOptions::new().diversity(0.5).palette(0.0);
    /// assert_eq!(o.palette_weight(), 0.0);
    /// assert_eq!(ExpandOptions::new().palette_weight(), 2.0);
    /// assert_eq!(ExpandOptions::new().palette(3e38).palette_weight(), vitrine::MAX_PALETTE);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Which template slot gets a new anchor (default: the first).
    pub fn anchor_slot(mut self, slot: usize) -> Self {
        self.anchor_slot = Some(slot);
        self
    }
    /// MMR trade-off in `[0, 1]`: 0 = most relevant only, 1 = most
    /// diverse. Another value (or NaN) makes `expand` and `cover` fail with
    /// [`OutfitError::InvalidArgument`], as a query's `diverse` does.
    pub fn diversity(mut self, d: f32) -> Self {
        self.diversity = d;
        self
    }
    /// Whether the template's own products may fill non-anchor slots
    /// (default false; they are used anyway when nothing else fits).
    pub fn reuse_template(mut self, yes: bool) -> Self {
        self.reuse_template = yes;
        self
    }
    /// How closely a new outfit follows the template's own colours, on
    /// top of its colour relations (default 2; 0 keeps only the
    /// relations). A relation ("these two share a colour", "these two
    /// contrast") is judged in the engine's colour families, which are
    /// finer than most catalogs' groups: black and charcoal contrast to the
    /// engine and are one group to many stylists. Preferring, per slot,
    /// products near the template product's colour (and an anchor near the
    /// template anchor's) keeps such pairs together whatever the
    /// taxonomy (with catalog colour groups configured, the group counts
    /// first, see [`crate::OutfitSettings::colour_attribute`]). Negative or
    /// non-finite values are 0, and values above [`MAX_PALETTE`] are
    /// [`MAX_PALETTE`] (a weight of 3e38 overflowed the scores, and the
    /// outfits came out in product-id order).
    pub fn palette(mut self, weight: f32) -> Self {
        self.palette = if weight.is_finite() {
            weight.clamp(0.0, MAX_PALETTE)
        } else {
            0.0
        };
        self
    }
    /// The palette weight (see [`ExpandOptions::palette`]).
    pub fn palette_weight(&self) -> f32 {
        self.palette
    }
}

/// Options of [`OutfitEngine::cover`].
#[derive(Clone, Debug)]
pub struct CoverOptions {
    outfits_per_template: usize,
    expand: ExpandOptions,
}

impl Default for CoverOptions {
    fn default() -> Self {
        CoverOptions {
            outfits_per_template: 10,
            expand: ExpandOptions::default().palette(0.0),
        }
    }
}

impl CoverOptions {
    /// Defaults: at most 10 outfits per template; expansions with the
    /// defaults of [`ExpandOptions`] except a palette weight of 0 (a plan
    /// spends its freedom on covering new products). A plan weighs a new
    /// product against keeping a colour relation, and keeps most of them:
    /// 96 % of the templates' relations, as the engine sees them, at 10
    /// outfits per template on the Mango catalog, 99 % for expansions.
    pub fn new() -> Self {
        Self::default()
    }
    /// The most outfits planned per template.
    pub fn outfits_per_template(mut self, n: usize) -> Self {
        self.outfits_per_template = n;
        self
    }
    /// Options of the expansions the plan is made of.
    pub fn expand(mut self, o: ExpandOptions) -> Self {
        self.expand = o;
        self
    }
}

/// The result of [`OutfitEngine::cover`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct CoverPlan {
    /// The planned outfits.
    pub outfits: Vec<Expansion>,
    /// In-stock products appearing in at least one planned outfit.
    pub covered: usize,
    /// In-stock products in the catalog.
    pub in_stock: usize,
    /// `covered / in_stock`.
    pub fraction: f64,
    /// The same figure for naive nearest-neighbour substitution with the
    /// same templates and the same number of outfits per template (outfit
    /// `r` of a template replaces each slot by its `r`-th most similar
    /// in-stock product of the same category).
    pub baseline_covered: usize,
    /// `baseline_covered / in_stock`.
    pub baseline_fraction: f64,
    /// Milliseconds the planning took (without the baseline).
    pub elapsed_ms: u64,
    /// Templates left out: a product they name is no longer in the
    /// catalog (deleted since), has no model outputs (stored since without
    /// an image) or has the previous model's (a re-embedding has not
    /// reached it), their anchor has no category, or nothing in stock can
    /// fill one of their slots.
    pub skipped: Vec<SkippedTemplate>,
}

/// A template that [`OutfitEngine::cover`] left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SkippedTemplate {
    /// The template's outfit id.
    pub outfit: String,
    /// The product that stopped it.
    pub product: String,
    /// Why: the error that expanding the template alone returns.
    pub reason: String,
}

/// One candidate of a substitution.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Substitute {
    /// The in-stock product.
    pub product: String,
    /// The ranking score (higher is better).
    pub score: f32,
    /// Visual cosine with the original.
    pub lookalike: f32,
    /// Whether its colour is the original's, as [`RelationKind::SameColour`]
    /// reads it (the same family, or a close shade).
    pub same_colour: bool,
    /// Colour relations with the other slots that it keeps, counted
    /// against the outfit's stored items (also those sold out and being
    /// replaced themselves).
    pub relations_kept: usize,
    /// Colour relations of the original with the other slots.
    pub relations_total: usize,
    /// Why it ranks where it does.
    pub explanation: String,
}

/// Substitutes for one out-of-stock item of an outfit.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Substitution {
    /// The slot (index into the outfit's slots).
    pub slot: usize,
    /// The out-of-stock product (or one deleted from the catalog since).
    pub original: String,
    /// Whether `original` is gone from the catalog, not only sold out.
    pub deleted: bool,
    /// The category the candidates share: the product's current one, or
    /// the one the slot stored when the product has been deleted since.
    pub category: Option<String>,
    /// In-stock products of the same category, best first.
    pub candidates: Vec<Substitute>,
    /// In-stock products of the category left out of `candidates` because
    /// an earlier slot ranks them first (an outfit holds a product once):
    /// why a list can be short, or empty, with products in stock.
    pub taken: Vec<String>,
}

/// A candidate ranked by [`OutfitEngine::complete`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ScoredCandidate {
    /// The product.
    pub product: String,
    /// The combined score (higher is better).
    pub score: f32,
    /// Mean log-lift of the symbolic rules with the given items; `None`
    /// when the method did not compute it (it learns nothing).
    pub rules: Option<f32>,
    /// Mean learned (bilinear) embedding compatibility with the given
    /// items; `None` when the method did not compute it.
    pub compat: Option<f32>,
    /// Kernel compatibility with the given items (stored outfits pairing
    /// look-alikes of the given items with look-alikes of the candidate);
    /// `None` when the method did not compute it.
    pub kernel: Option<f32>,
    /// Mean visual cosine with the given items.
    pub lookalike: f32,
}

/// Which signals [`OutfitEngine::complete_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompleteMethod {
    /// Visual similarity to the given items only (no learning).
    Visual,
    /// The symbolic pair rules only (colour, pattern, category lifts).
    Rules,
    /// The learned embedding compatibility only.
    Compat,
    /// Everything learned: rules, and the bilinear and kernel
    /// compatibilities.
    Learned,
    /// Everything learned, plus visual similarity at half weight (the
    /// default).
    Full,
    /// The kernel compatibility only.
    Kernel,
}

impl CompleteMethod {
    /// The weights of the signals' z-scores in the combined score:
    /// `[rules, compatibility, kernel, look-alike]`.
    pub fn weights(self) -> [f32; 4] {
        match self {
            CompleteMethod::Visual => [0.0, 0.0, 0.0, 1.0],
            CompleteMethod::Rules => [1.0, 0.0, 0.0, 0.0],
            CompleteMethod::Compat => [0.0, 1.0, 0.0, 0.0],
            CompleteMethod::Kernel => [0.0, 0.0, 1.0, 0.0],
            CompleteMethod::Learned => [1.0, 1.0, 1.0, 0.0],
            CompleteMethod::Full => [1.0, 1.0, 1.0, 0.5],
        }
    }
}

/// The `k` first of `items` in the order `cmp` (a total order), sorted:
/// a selection, then a sort of those `k` only.
fn top_first<T>(mut items: Vec<T>, k: usize, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<T> {
    if k < items.len() {
        if k == 0 {
            return Vec::new();
        }
        items.select_nth_unstable_by(k - 1, &cmp);
        items.truncate(k);
    }
    items.sort_unstable_by(&cmp);
    items
}

/// Standardises `v` in place (mean 0, standard deviation 1; all zeros when
/// constant).
fn zscore(v: &mut [f32]) {
    if v.is_empty() {
        return;
    }
    // In f64: large finite signals (vectors stored by hand at absurd
    // scales) would overflow an f32 sum into NaN scores. A signal that is
    // not finite is none.
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    let usable = mean.is_finite() && sd.is_finite() && sd > 1e-9;
    for x in v.iter_mut() {
        let z = (f64::from(*x) - mean) / sd;
        *x = if usable && z.is_finite() {
            z as f32
        } else {
            0.0
        };
    }
}

/// A snapshot of the catalog and the learned rules, for many outfit
/// operations in a row (loading it reads every product once, a chunk at
/// a time, so a write made while it loads may or may not be seen). Later
/// writes to products are not seen (a product stored since is
/// [`OutfitError::NotInSnapshot`]); take a new engine to see them. Stored
/// outfits are read when an operation names them.
///
/// # Outfits in Vitrine
///
/// | operation | entry point |
/// |---|---|
/// | store, list, show, delete, CSV import | [`Db::store_outfit`], [`Db::outfits`], [`Db::outfit`], [`Db::delete_outfit`], [`Db::import_outfits_csv`] |
/// | learn the rules of the stored outfits | [`Db::learn_outfit_rules`], [`Db::outfit_rules`] |
/// | use the catalog's colour groups | [`Db::set_outfit_settings`], [`crate::OutfitSettings`] |
/// | replace sold-out items | [`Db::substitute`] |
/// | new outfits that keep a template's relations | [`Db::expand`] |
/// | plan outfits covering the in-stock inventory | [`Db::cover`] |
/// | fill in the blank | [`Db::complete`] |
///
/// Storage. An outfit is one record in the side keyspace `vitrine.outfits`
/// (key = outfit id): its slots in order, each with the product id and the
/// product's catalog category at the time it was stored. Every product is
/// checked before anything is written, and one outfit is one keyspace put, so
/// an outfit that names an unknown product is [`OutfitError::UnknownProduct`]
/// and nothing is written; a CSV import checks every row first and writes all
/// its outfits in one atomic batch.
///
/// What the engine knows about a product. Only what it stores: the catalog
/// category (a retailer's own attribute), the colour measured on the
/// product's pixels at import, and the bundled model's outputs — the
/// concept-space vector (visual embedding + category, colour, usage,
/// season, gender and pattern blocks), from which the pattern (best tag of
/// the pattern group) and, for products without a measured colour, the
/// colour family are read. By default no other catalog attribute is read.
/// A retailer whose catalog has colour groups can make them the colour
/// families of every outfit operation ([`crate::OutfitSettings::colour_attribute`]):
/// "same colour" then means what their merchandisers mean by it.
///
/// Learned rules ([`OutfitRules`]) are statistics of the user's own stored
/// outfits, rebuilt from them in about a second and persisted in
/// `vitrine.outfit_rules`; see `rules.rs` for the method.
pub struct OutfitEngine<'a> {
    db: &'a Db,
    cat: Catalog,
    rules: Option<OutfitRules>,
    /// Rules were stored but learned under another model (ignored).
    stale_rules: bool,
    maps: RuleMaps,
    /// The kernel's index of the stored outfits, built by the first
    /// `complete` that weighs the kernel (other operations never read it).
    memory: std::sync::OnceLock<Memory>,
}

impl std::fmt::Debug for OutfitEngine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutfitEngine")
            .field("products", &self.cat.len())
            .field("rules", &self.rules.is_some())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// An [`OutfitEngine`] over the current catalog and persisted rules.
    ///
    /// Building one copies what outfits need of every product (category,
    /// stock, colour, concept vector), in time and memory linear in the
    /// catalog. `Db::substitute`, `expand`, `cover` and
    /// `complete` build one per call; a service answering many requests
    /// builds one, answers from it, and builds a new one when the catalog
    /// or its stock has changed enough to matter
    /// ([`OutfitEngine::assume_sold_out`] updates stock in place).
    pub fn outfit_engine(&self) -> OutfitResult<OutfitEngine<'_>> {
        let cat = Catalog::load(self)?;
        // The model the catalog's vectors are of (not the database's now).
        let model = cat.model.clone();
        let stored = self.outfit_rules()?;
        let had_rules = stored.is_some();
        let rules = stored.filter(|r| {
            // Learned under another model (the database was re-embedded).
            let fits = r.dim() == cat.layout.dim && r.model == model;
            if !fits {
                let (rules_model, now) = (
                    r.model.as_deref().unwrap_or("-"),
                    model.as_deref().unwrap_or("-"),
                );
                let msg =
                    "outfit rules were learned under another model; ignored until learned again";
                if self.first_warning(format!("outfit rules {rules_model} -> {now}")) {
                    tracing::warn!(
                        rules = r.dim(),
                        catalog = cat.layout.dim,
                        rules_model,
                        model = now,
                        "{msg}"
                    );
                } else {
                    tracing::debug!(rules_model, model = now, "{msg}");
                }
            }
            fits
        });
        let maps = rules.as_ref().map(|r| r.maps(&cat)).unwrap_or_default();
        Ok(OutfitEngine {
            db: self,
            cat,
            stale_rules: had_rules && rules.is_none(),
            rules,
            maps,
            memory: std::sync::OnceLock::new(),
        })
    }

    /// Whether the stored rules were learned from the outfits and colour
    /// families stored now; `None` without rules. Importing, replacing or
    /// deleting an outfit, changing [`crate::OutfitSettings::colour_attribute`]
    /// or the database's model ([`Db::adopt_model`], a re-embedding), makes
    /// them stale until [`Db::learn_outfit_rules`] runs again; so
    /// does a change in the catalog's own colour groups (with a colour
    /// attribute set, a new value among the most frequent), which the
    /// rules then lack, and a change to a product of a stored outfit: its
    /// deletion, another category or colour, or another image.
    pub fn outfit_rules_current(&self) -> OutfitResult<Option<bool>> {
        let Some(rules) = self.outfit_rules()? else {
            return Ok(None);
        };
        let cat = Catalog::load(self)?;
        let outfits: Vec<Vec<String>> = self
            .outfits()?
            .iter()
            .map(|o| o.slots.iter().map(|s| s.product.clone()).collect())
            .collect();
        Ok(Some(
            rules.memory == outfits
                && rules.colours == cat.colour_names
                && rules.colour_attribute == cat.colour_attribute
                && rules.dim() == cat.layout.dim
                && rules.model == cat.model
                && rules.same_basis(&cat),
        ))
    }

    /// `call` on a fresh engine, and on another if a product was stored
    /// after the first read the catalog (deleted and stored again while
    /// it was read): that error is for an engine a caller keeps.
    fn on_fresh_engine<T>(
        &self,
        call: impl Fn(&OutfitEngine<'_>) -> OutfitResult<T>,
    ) -> OutfitResult<T> {
        match call(&self.outfit_engine()?) {
            Err(OutfitError::NotInSnapshot(_)) => call(&self.outfit_engine()?),
            r => r,
        }
    }

    /// [`OutfitEngine::substitute`] on a fresh engine (see
    /// [`Db::outfit_engine`] for many calls).
    pub fn substitute(&self, outfit: &str, k: usize) -> OutfitResult<Vec<Substitution>> {
        self.on_fresh_engine(|e| e.substitute(outfit, k))
    }

    /// [`OutfitEngine::expand`] on a fresh engine (see
    /// [`Db::outfit_engine`] for many calls).
    pub fn expand(
        &self,
        outfit: &str,
        n: usize,
        options: &ExpandOptions,
    ) -> OutfitResult<Vec<Expansion>> {
        self.on_fresh_engine(|e| e.expand(outfit, n, options))
    }

    /// [`OutfitEngine::cover`] on a fresh engine (see
    /// [`Db::outfit_engine`] for many calls).
    pub fn cover<S: AsRef<str>>(
        &self,
        templates: &[S],
        options: &CoverOptions,
    ) -> OutfitResult<CoverPlan> {
        self.on_fresh_engine(|e| e.cover(templates, options))
    }

    /// [`OutfitEngine::complete`] on a fresh engine (see
    /// [`Db::outfit_engine`] for many calls).
    pub fn complete<S: AsRef<str>, T: AsRef<str>>(
        &self,
        given: &[S],
        candidates: &[T],
    ) -> OutfitResult<Vec<ScoredCandidate>> {
        self.on_fresh_engine(|e| e.complete(given, candidates))
    }
}

impl OutfitEngine<'_> {
    fn rules(&self) -> OutfitResult<&OutfitRules> {
        self.rules.as_ref().ok_or(if self.stale_rules {
            OutfitError::StaleRules
        } else {
            OutfitError::NoRules
        })
    }

    fn idx(&self, outfit: &str, id: &str) -> OutfitResult<usize> {
        self.cat.lookup(id).ok_or_else(|| {
            // The snapshot holds only products with model outputs: one
            // stored without them is not a deleted one, nor is one stored
            // with them since the snapshot.
            if let Some(attrs) = self.db.attributes(id) {
                if !crate::db::of_model(Some(&attrs), self.db.model_fingerprint().as_deref()) {
                    return OutfitError::OfAnotherModel(id.to_string());
                }
                match self.db.vector(crate::CONCEPT_SPACE, id) {
                    Ok(Some(_)) => OutfitError::NotInSnapshot(id.to_string()),
                    _ => OutfitError::NotAnImageProduct(id.to_string()),
                }
            } else {
                OutfitError::UnknownProduct {
                    outfit: outfit.to_string(),
                    product: id.to_string(),
                }
            }
        })
    }

    /// Treats `ids` as sold out in this snapshot only (a what-if: nothing
    /// is written). Unknown ids are ignored.
    pub fn assume_sold_out<S: AsRef<str>>(&mut self, ids: &[S]) {
        for id in ids {
            if let Some(i) = self.cat.lookup(id.as_ref()) {
                self.cat.in_stock[i] = false;
            }
        }
    }

    /// Treats `ids` as in stock in this snapshot only (nothing is written).
    pub fn assume_in_stock<S: AsRef<str>>(&mut self, ids: &[S]) {
        for id in ids {
            if let Some(i) = self.cat.lookup(id.as_ref()) {
                self.cat.in_stock[i] = true;
            }
        }
    }

    /// Whether a product is in stock in this snapshot.
    pub fn in_stock(&self, id: &str) -> Option<bool> {
        self.cat.lookup(id).map(|i| self.cat.in_stock[i])
    }

    /// How many products of this snapshot have `category` (in stock or
    /// not): 0 for a category renamed or emptied since an outfit stored it.
    pub fn category_size(&self, category: &str) -> usize {
        let cat = &self.cat;
        cat.categories
            .iter()
            .position(|c| c == category)
            .map_or(0, |c| cat.by_category[c].len())
    }

    /// The colour family the model sees in a product.
    pub fn colour_family(&self, id: &str) -> Option<&str> {
        self.cat.lookup(id).map(|i| self.cat.colour_name(i))
    }

    /// The learned rules this engine uses.
    pub fn outfit_rules(&self) -> Option<&OutfitRules> {
        self.rules.as_ref()
    }

    /// Ranks `candidates` for the open slot of an outfit whose other items
    /// are `given`, with every signal ([`CompleteMethod::Full`]).
    pub fn complete<S: AsRef<str>, T: AsRef<str>>(
        &self,
        given: &[S],
        candidates: &[T],
    ) -> OutfitResult<Vec<ScoredCandidate>> {
        self.complete_with(given, candidates, CompleteMethod::Full)
    }

    /// [`OutfitEngine::complete`] with a chosen set of signals. Candidates
    /// come back best first, each once; a candidate that is already one of
    /// the `given` items is left out. The `given` items are checked as a
    /// stored outfit's are: one named twice is
    /// [`OutfitError::DuplicateProduct`], and with the open slot they may
    /// be at most [`MAX_OUTFIT_SLOTS`] ([`OutfitError::TooManySlots`]). Every method but
    /// [`CompleteMethod::Visual`] needs learned rules
    /// ([`OutfitError::NoRules`]).
    pub fn complete_with<S: AsRef<str>, T: AsRef<str>>(
        &self,
        given: &[S],
        candidates: &[T],
        method: CompleteMethod,
    ) -> OutfitResult<Vec<ScoredCandidate>> {
        if given.is_empty() {
            // Every signal is a mean over the given items: nothing to rank by.
            return Err(OutfitError::InvalidArgument(
                "complete needs at least one given item".into(),
            ));
        }
        // As a stored outfit is checked: a product twice would weigh twice
        // in every mean below.
        const PARTIAL: &str = "<partial outfit>";
        if given.len() >= MAX_OUTFIT_SLOTS {
            return Err(OutfitError::TooManySlots {
                outfit: PARTIAL.into(),
                slots: given.len() + 1,
            });
        }
        let mut seen = std::collections::HashSet::new();
        let mut given_idx = Vec::with_capacity(given.len());
        for g in given {
            let i = self.idx(PARTIAL, g.as_ref())?;
            if !seen.insert(i) {
                return Err(OutfitError::DuplicateProduct {
                    outfit: PARTIAL.into(),
                    product: g.as_ref().to_string(),
                });
            }
            given_idx.push(i);
        }
        let given = given_idx;
        let mut cands = Vec::with_capacity(candidates.len());
        for c in candidates {
            let i = self.idx("<candidates>", c.as_ref())?;
            if seen.insert(i) {
                cands.push(i);
            }
        }
        let w = method.weights();
        // The kernel's memory is the outfits the rules were learned from.
        let rules = if w[..3].iter().any(|&w| w != 0.0) {
            Some(self.rules()?)
        } else {
            None
        };
        let gs: Option<Given> = rules.map(|r| r.given(&self.cat, &given));
        let n = given.len().max(1) as f32;
        let mut parts = [
            vec![0f32; cands.len()],
            vec![0f32; cands.len()],
            vec![0f32; cands.len()],
            vec![0f32; cands.len()],
        ];
        if w[2] != 0.0 {
            let memory = self.memory.get_or_init(|| {
                Memory::build(
                    &self.cat,
                    self.rules.as_ref().map_or(&[][..], |r| r.memory.as_slice()),
                )
            });
            parts[2] = memory.scores(&self.cat, &given, &cands);
        }
        for (k, &c) in cands.iter().enumerate() {
            if let Some(r) = rules {
                parts[0][k] = given
                    .iter()
                    .map(|&g| r.rule_score(&self.cat, &self.maps, g, c))
                    .sum::<f32>()
                    / n;
                if let Some(g) = &gs {
                    parts[1][k] = r.compat(&self.cat, &self.maps, g, c) / n;
                }
            }
            parts[3][k] = given.iter().map(|&g| self.cat.lookalike(g, c)).sum::<f32>() / n;
        }
        // Which of rules, compatibility and kernel this method computed.
        let computed = [rules.is_some(), rules.is_some(), w[2] != 0.0];
        let raw = parts.clone();
        for p in parts.iter_mut() {
            zscore(p);
        }
        let mut out: Vec<ScoredCandidate> = cands
            .iter()
            .enumerate()
            .map(|(k, &c)| ScoredCandidate {
                product: self.cat.ids[c].clone(),
                score: (0..4).map(|t| w[t] * parts[t][k]).sum(),
                rules: computed[0].then_some(raw[0][k]),
                compat: computed[1].then_some(raw[1][k]),
                kernel: computed[2].then_some(raw[2][k]),
                lookalike: raw[3][k],
            })
            .collect();
        // Ties (byte-identical images) by product id: the same answer
        // whatever order the products were stored or given in.
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.product.cmp(&b.product))
        });
        Ok(out)
    }

    /// For each out-of-stock item of the stored outfit `outfit`, the `k`
    /// best in-stock products of the same category, ranked by look-alike
    /// similarity, same colour family, the colour relations they keep with
    /// the other slots, and the learned compatibility with them (when rules
    /// were learned). An item deleted from the catalog since is substituted
    /// too, from the category its slot stored, ranked by the learned
    /// compatibility with the other items only (there is nothing left to
    /// look alike). One whose category was cleared since is substituted
    /// from the category its slot stored. Exact ties (byte-identical
    /// images) are broken by product id.
    ///
    /// A product is the first candidate of one slot at most (slots in
    /// order: a later slot's list leaves out the products ranked first for
    /// earlier ones), so taking every slot's first candidate gives an
    /// outfit without repeats.
    pub fn substitute(&self, outfit: &str, k: usize) -> OutfitResult<Vec<Substitution>> {
        let o = self
            .db
            .outfit(outfit)?
            .ok_or_else(|| OutfitError::UnknownOutfit(outfit.to_string()))?;
        let present: Vec<Option<usize>> = o
            .slots
            .iter()
            .map(|s| self.cat.lookup(&s.product))
            .collect();
        // A product stored since without model outputs is not deleted: say so.
        if let Some(s) = o
            .slots
            .iter()
            .zip(&present)
            .find(|(s, p)| p.is_none() && self.db.attributes(&s.product).is_some())
        {
            return Err(self.idx(outfit, &s.0.product).unwrap_err());
        }
        let idx: Vec<usize> = present.iter().flatten().copied().collect();
        let cat = &self.cat;
        // Room for the first candidates of earlier slots, left out below.
        let wide = k.saturating_add(o.slots.len());
        let mut out = Vec::new();
        for (slot, orig) in present.iter().enumerate() {
            let Some(orig) = *orig else {
                out.push(self.substitute_deleted(&o, slot, &present, wide));
                continue;
            };
            if cat.in_stock[orig] {
                continue;
            }
            let (others, gs) = self.others_of(&present, slot);
            // A product whose category was cleared since is replaced from
            // the category the slot stored, as a deleted one is.
            let category = match cat.category[orig] {
                NO_CATEGORY => o.slots[slot].category.clone(),
                c => cat.categories.get(c as usize).cloned(),
            };
            let cands: Vec<usize> = cat
                .members(category.as_deref())
                .iter()
                .copied()
                .filter(|&c| cat.in_stock[c] && !idx.contains(&c))
                .collect();
            let mut look: Vec<f32> = cands.iter().map(|&c| cat.lookalike(orig, c)).collect();
            let mut compat: Vec<f32> = cands
                .iter()
                .map(|&c| match (&self.rules, &gs) {
                    (Some(r), Some(g)) => {
                        r.compat(cat, &self.maps, g, c) / others.len().max(1) as f32
                    }
                    _ => 0.0,
                })
                .collect();
            let raw_look = look.clone();
            zscore(&mut look);
            zscore(&mut compat);
            let total = others.len();
            let scored: Vec<(f32, usize, usize)> = cands
                .iter()
                .enumerate()
                .map(|(n, &c)| {
                    let same = cat.same_colour(c, orig);
                    let kept = others
                        .iter()
                        .filter(|&&j| cat.same_colour(orig, j) == cat.same_colour(c, j))
                        .count();
                    let kept_frac = if total == 0 {
                        1.0
                    } else {
                        kept as f32 / total as f32
                    };
                    // Colour weighs 10 per unit of similarity: a 20 ΔE
                    // shift (black to charcoal) costs as much as one
                    // standard deviation of look-alike. In an outfit the
                    // colour is what the other items were picked to match.
                    let score = 2.0 * look[n]
                        + 0.5 * compat[n]
                        + SUBSTITUTE_COLOUR_WEIGHT * cat.colour_sim(orig, c)
                        + if same { 0.5 } else { 0.0 }
                        + 1.5 * kept_frac;
                    (score, n, kept)
                })
                .collect();
            // The best `wide`, best first, ties by product id; only they
            // are described (a category can hold tens of thousands).
            let best = top_first(scored, wide, |a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| cat.ids[cands[a.1]].cmp(&cat.ids[cands[b.1]]))
            });
            let subs: Vec<Substitute> = best
                .into_iter()
                .map(|(score, n, kept)| {
                    let c = cands[n];
                    let same = cat.same_colour(c, orig);
                    let explanation = format!(
                        "look-alike {:.2}; colour {} ({}); keeps {kept}/{total} colour relations{}",
                        raw_look[n],
                        cat.colour_name(c),
                        if cat.same_family(c, orig) {
                            "same family as the original".to_owned()
                        } else if same {
                            format!("a close shade of the original's {}", cat.colour_name(orig))
                        } else {
                            format!("the original is {}", cat.colour_name(orig))
                        },
                        if self.rules.is_some() {
                            format!("; compatibility z {:+.1}", compat[n])
                        } else {
                            String::new()
                        }
                    );
                    Substitute {
                        product: cat.ids[c].clone(),
                        score,
                        lookalike: raw_look[n],
                        same_colour: same,
                        relations_kept: kept,
                        relations_total: total,
                        explanation,
                    }
                })
                .collect();
            out.push(Substitution {
                slot,
                original: o.slots[slot].product.clone(),
                deleted: false,
                // The candidates' category, which may have changed since
                // the outfit was stored.
                category,
                candidates: subs,
                taken: Vec::new(),
            });
        }
        let mut firsts: Vec<String> = Vec::new();
        for s in &mut out {
            s.taken = (s.candidates.iter())
                .filter(|c| firsts.contains(&c.product))
                .map(|c| c.product.clone())
                .collect();
            s.candidates.retain(|c| !firsts.contains(&c.product));
            s.candidates.truncate(k);
            firsts.extend(s.candidates.first().map(|c| c.product.clone()));
        }
        Ok(out)
    }

    /// The outfit's items other than `slot` that are in the catalog, and
    /// what the rules need of them (none without rules).
    fn others_of(&self, present: &[Option<usize>], slot: usize) -> (Vec<usize>, Option<Given>) {
        let others: Vec<usize> = present
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != slot)
            .filter_map(|(_, p)| *p)
            .collect();
        let gs = self.rules.as_ref().map(|r| r.given(&self.cat, &others));
        (others, gs)
    }

    /// Substitutes for a slot whose product is gone from the catalog: the
    /// in-stock products of the category the slot stored, by their learned
    /// compatibility with the outfit's other items.
    fn substitute_deleted(
        &self,
        o: &Outfit,
        slot: usize,
        present: &[Option<usize>],
        k: usize,
    ) -> Substitution {
        let cat = &self.cat;
        let category = o.slots[slot].category.clone();
        let members = cat.members(category.as_deref());
        let (others, gs) = self.others_of(present, slot);
        let mut subs: Vec<Substitute> = members
            .iter()
            .copied()
            .filter(|&c| cat.in_stock[c] && !others.contains(&c))
            .map(|c| {
                let compat = match (&self.rules, &gs) {
                    (Some(r), Some(g)) if !others.is_empty() => {
                        r.compat(cat, &self.maps, g, c) / others.len() as f32
                    }
                    _ => 0.0,
                };
                Substitute {
                    product: cat.ids[c].clone(),
                    score: compat,
                    lookalike: 0.0,
                    same_colour: false,
                    relations_kept: 0,
                    relations_total: 0,
                    explanation: if self.rules.is_none() {
                        "the original is no longer in the catalog and no rules are learned: \
                         unranked"
                            .to_string()
                    } else if others.is_empty() {
                        "the original is no longer in the catalog, nor any other item of the \
                         outfit: unranked"
                            .to_string()
                    } else {
                        format!(
                            "the original is no longer in the catalog; compatibility with the \
                             outfit {compat:+.3}; colour {}",
                            cat.colour_name(c)
                        )
                    },
                }
            })
            .collect();
        subs.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.product.cmp(&b.product))
        });
        subs.truncate(k);
        Substitution {
            slot,
            original: o.slots[slot].product.clone(),
            deleted: true,
            category,
            candidates: subs,
            taken: Vec::new(),
        }
    }

    /// Creates up to `n` new outfits from the stored template `outfit`:
    /// each has a new in-stock anchor of the anchor slot's category (chosen
    /// by MMR over the visual embedding: like the template's anchor, unlike
    /// the anchors already chosen), and every other slot is filled with an
    /// in-stock product of the slot's category that keeps the template's
    /// colour relations with the slots already filled (shared colour family
    /// stays shared, a contrast stays a contrast), is compatible with them
    /// (learned rules, when present) and looks like the template's item,
    /// penalised by its similarity to the items already used in that slot
    /// (MMR across the `n` outfits). Among the products that keep the most
    /// relations, those nearer the template item's colour rank higher
    /// ([`ExpandOptions::palette`]). No product repeats within an outfit.
    /// Fewer than `n` come back when the stock runs out; none, with
    /// [`OutfitError::UnfillableSlot`] naming the slot, when nothing can
    /// fill one of the template's slots at all. An `n` above
    /// [`MAX_EXPANSIONS`] is [`OutfitError::InvalidArgument`]. Exact ties
    /// (byte-identical images) are broken by product id.
    pub fn expand(
        &self,
        outfit: &str,
        n: usize,
        options: &ExpandOptions,
    ) -> OutfitResult<Vec<Expansion>> {
        check_expansions(n, "expand")?;
        let mut ex = self.expander(outfit, options)?;
        ex.check_fillable(&self.cat)?;
        // No capacity from `n`: the stock, not the caller, bounds the result.
        Ok((0..n).map_while(|_| ex.next(self, None)).collect())
    }

    fn expander(&self, outfit: &str, options: &ExpandOptions) -> OutfitResult<Expander> {
        let o = self
            .db
            .outfit(outfit)?
            .ok_or_else(|| OutfitError::UnknownOutfit(outfit.to_string()))?;
        // The caller's mistake first: a template that `cover` would skip
        // (a product gone) must not hide it.
        if !(0.0..=1.0).contains(&options.diversity) {
            return Err(OutfitError::InvalidArgument(format!(
                "diversity {} is outside 0..=1",
                options.diversity
            )));
        }
        let anchor = options.anchor_slot.unwrap_or(0);
        if anchor >= o.slots.len() {
            return Err(OutfitError::InvalidArgument(format!(
                "anchor slot index {anchor} (from 0) but outfit '{outfit}' has {} slots",
                o.slots.len()
            )));
        }
        let idx = o
            .slots
            .iter()
            .map(|s| self.idx(outfit, &s.product))
            .collect::<OutfitResult<Vec<_>>>()?;
        Ok(Expander {
            id: o.id,
            template: idx.clone(),
            anchor,
            history: idx
                .iter()
                .zip(&o.slots)
                .map(|(&t, slot)| SlotHistory::new(&self.cat, t, slot.category.as_deref()))
                .collect(),
            diversity: options.diversity,
            reuse_template: options.reuse_template,
            palette: options.palette,
            feasible: Vec::new(),
            slot_colours: Vec::new(),
            made: HashSet::new(),
        })
    }

    /// Plans outfits from the stored `templates` that include as much of
    /// the in-stock inventory as possible: rounds over the templates, each
    /// round expanding every template once with a strong preference for
    /// products not yet covered (on top of the expansion's own criteria),
    /// until `outfits_per_template` rounds or a round covers nothing new.
    /// Reports the covered fraction, and the naive nearest-neighbour
    /// baseline's with the same number of outfits.
    ///
    /// A template that names a product no longer in the catalog (or one
    /// without model outputs or with the previous model's), or one with a
    /// slot nothing can fill ([`OutfitError::UnfillableSlot`]), is skipped
    /// and listed in [`CoverPlan::skipped`]; an anchor slot
    /// ([`ExpandOptions::anchor_slot`]) past a template's last slot is the
    /// caller's error, [`OutfitError::InvalidArgument`] naming the template,
    /// before anything is planned, as is an
    /// [`outfits_per_template`](CoverOptions::outfits_per_template) above
    /// [`MAX_EXPANSIONS`].
    ///
    /// Memory: for the whole call, each template keeps 8 bytes per product
    /// of each of its slots' categories, and 8 more per product of its
    /// anchor's (what makes the rounds linear in the outfits planned).
    /// Mango's 5,490 outfits as templates take about 110 MB; a catalog
    /// with 100,000 outfits over categories of 10,000 products would take
    /// tens of GB, so pass the templates a plan needs, not every outfit.
    pub fn cover<S: AsRef<str>>(
        &self,
        templates: &[S],
        options: &CoverOptions,
    ) -> OutfitResult<CoverPlan> {
        check_expansions(options.outfits_per_template, "cover: outfits per template")?;
        let started = Instant::now();
        let cat = &self.cat;
        // A template named twice is planned once.
        let mut seen = std::collections::HashSet::new();
        let mut exps = Vec::new();
        // A template naming a deleted product cannot be planned; the others
        // still are.
        let mut skipped = Vec::new();
        for t in templates
            .iter()
            .map(AsRef::as_ref)
            .filter(|t| seen.insert(*t))
        {
            let e = match self
                .expander(t, &options.expand)
                .and_then(|ex| ex.check_fillable(cat).map(|()| ex))
            {
                Ok(ex) => {
                    exps.push(ex);
                    continue;
                }
                Err(e) => e,
            };
            // Reported in the plan (`skipped`), for the caller to show; the
            // other templates are still planned.
            let product = match &e {
                // Deleted since.
                OutfitError::UnknownProduct { product, .. }
                // Stored since without model outputs: nothing to match.
                | OutfitError::NotAnImageProduct(product)
                // Until a re-embedding reaches it (or for good, when its
                // image failed).
                | OutfitError::OfAnotherModel(product)
                | OutfitError::UnfillableSlot { product, .. } => product.clone(),
                _ => return Err(e),
            };
            let reason = e.to_string();
            tracing::info!(outfit = t, %product, %reason, "template skipped");
            skipped.push(SkippedTemplate {
                outfit: t.to_string(),
                product,
                reason,
            });
        }
        let mut covered = vec![false; cat.len()];
        let mut outfits = Vec::new();
        let mut per_template = vec![0usize; exps.len()];
        // Two templates can make one outfit: planned once.
        let mut planned: HashSet<Vec<String>> = HashSet::new();
        for _round in 0..options.outfits_per_template {
            let mut new_items = 0;
            for (t, ex) in exps.iter_mut().enumerate() {
                if let Some(e) = ex.next(self, Some(&covered)) {
                    let mut set = e.products.clone();
                    set.sort_unstable();
                    if !planned.insert(set) {
                        continue;
                    }
                    for p in &e.products {
                        if let Some(i) = cat.lookup(p) {
                            if cat.in_stock[i] && !covered[i] {
                                covered[i] = true;
                                new_items += 1;
                            }
                        }
                    }
                    per_template[t] += 1;
                    outfits.push(e);
                }
            }
            if new_items == 0 {
                break;
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let in_stock = cat.in_stock.iter().filter(|&&s| s).count();
        let n_covered = covered.iter().filter(|&&c| c).count();
        // Baseline: outfit r of a template = every slot's r-th nearest
        // in-stock product of its category.
        let mut base = vec![false; cat.len()];
        for (ex, &count) in exps.iter().zip(&per_template) {
            for (&p, h) in ex.template.iter().zip(&ex.history) {
                let near: Vec<(f32, usize)> = h
                    .pool(cat)
                    .iter()
                    .filter(|&&c| c != p && cat.in_stock[c])
                    .map(|&c| (cat.lookalike(p, c), c))
                    .collect();
                // Ties by product id.
                let near = top_first(near, count, |a, b| {
                    b.0.total_cmp(&a.0)
                        .then_with(|| cat.ids[a.1].cmp(&cat.ids[b.1]))
                });
                for &(_, c) in &near {
                    base[c] = true;
                }
            }
        }
        let baseline_covered = base.iter().filter(|&&c| c).count();
        let frac = |c: usize| {
            if in_stock == 0 {
                0.0
            } else {
                c as f64 / in_stock as f64
            }
        };
        Ok(CoverPlan {
            outfits,
            covered: n_covered,
            in_stock,
            fraction: frac(n_covered),
            baseline_covered,
            baseline_fraction: frac(baseline_covered),
            elapsed_ms,
            skipped,
        })
    }
}

/// The state of a series of expansions of one template.
struct Expander {
    id: String,
    template: Vec<usize>,
    anchor: usize,
    /// Per slot, what earlier expansions chose there.
    history: Vec<SlotHistory>,
    diversity: f32,
    reuse_template: bool,
    palette: f32,
    /// Per anchor-pool position, its feasibility once computed: it scans
    /// other slots' categories, and stock does not change under an engine.
    feasible: Vec<Option<f32>>,
    /// Per template slot, its category's in-stock colours (built when the
    /// anchor's feasibility first asks about the slot).
    slot_colours: Vec<Option<SlotColours>>,
    /// The product sets made so far, sorted: two slots of one category
    /// could otherwise swap the same products in a later expansion.
    made: HashSet<Vec<usize>>,
}

/// The in-stock products of one slot's category counted by colour, so that
/// an anchor candidate's feasibility is mostly a lookup: with a scan per
/// candidate, a category of 80k products took seconds per call.
struct SlotColours {
    /// Products that may fill the slot (not the template's own, unless
    /// reused), per colour.
    fresh: HashMap<u16, u32>,
    /// The template's own products, per colour: taken only when nothing
    /// fresh is in stock.
    reused: HashMap<u16, u32>,
    fresh_total: u32,
    /// Every product's colour is the catalog's: colours then match by
    /// group alone, never by shade.
    all_catalog: bool,
}

impl SlotColours {
    fn new(cat: &Catalog, members: &[usize], tpl: &[usize], reuse_template: bool) -> Self {
        let mut sc = SlotColours {
            fresh: HashMap::new(),
            reused: HashMap::new(),
            fresh_total: 0,
            all_catalog: true,
        };
        for &x in members.iter().filter(|&&x| cat.in_stock[x]) {
            sc.all_catalog &= cat.catalog_colour[x];
            let fresh = reuse_template || !tpl.contains(&x);
            let by_colour = if fresh {
                sc.fresh_total += 1;
                &mut sc.fresh
            } else {
                &mut sc.reused
            };
            *by_colour.entry(cat.colour[x]).or_default() += 1;
        }
        sc
    }
}

/// Whether a slot of category `members` can take a product of the same
/// colour as anchor candidate `c` (never `c` itself): a fresh in-stock one,
/// or one of the template's own when only those are in stock. As
/// [`slot_takes_colour_scan`], mostly from the counts: the same colour index
/// is always the same colour, and when every colour is the catalog's no
/// other one is.
fn slot_takes_colour(
    cat: &Catalog,
    members: &[usize],
    sc: &SlotColours,
    tpl: &[usize],
    c: usize,
    reuse_template: bool,
) -> bool {
    let c_counted = cat.in_stock[c]
        && cat.category[c] != NO_CATEGORY
        && members
            .first()
            .is_some_and(|&x| cat.category[x] == cat.category[c]);
    let c_fresh = reuse_template || !tpl.contains(&c);
    let own_fresh = u32::from(c_counted && c_fresh);
    let own_reused = u32::from(c_counted && !c_fresh);
    let col = cat.colour[c];
    let count = |m: &HashMap<u16, u32>| m.get(&col).copied().unwrap_or(0);
    if col != NO_COLOUR && count(&sc.fresh) > own_fresh {
        return true;
    }
    if sc.all_catalog && cat.catalog_colour[c] {
        return sc.fresh_total == own_fresh && count(&sc.reused) > own_reused;
    }
    slot_takes_colour_scan(cat, members, tpl, c, reuse_template)
}

/// [`slot_takes_colour`] by a scan of the category.
fn slot_takes_colour_scan(
    cat: &Catalog,
    members: &[usize],
    tpl: &[usize],
    c: usize,
    reuse_template: bool,
) -> bool {
    let (mut any_fresh, mut same_reused) = (false, false);
    for &x in members {
        if x == c || !cat.in_stock[x] {
            continue;
        }
        let fresh = reuse_template || !tpl.contains(&x);
        any_fresh |= fresh;
        if cat.same_colour(x, c) {
            if fresh {
                return true;
            }
            same_reused = true;
        }
    }
    // Only the template's own are in stock: the slot takes from them.
    !any_fresh && same_reused
}

/// What a slot's earlier expansions chose, per product that can fill it:
/// kept as running maxima and counts, so that a series of n expansions
/// costs O(n × pool) rather than O(n² × pool).
struct SlotHistory {
    /// The template product's category, or the one its slot stored when
    /// it has none now ([`NO_CATEGORY`] when neither: the product alone
    /// can fill the slot).
    category: u32,
    template_product: usize,
    /// For a product whose category was cleared since: the stored
    /// category's products and itself (it can still fill its own slot).
    own_pool: Option<Vec<usize>>,
    /// The category the outfit stored for the slot.
    stored: Option<String>,
    /// The highest look-alike similarity to any earlier choice (0 before any).
    div: Vec<f32>,
    /// How often each product was chosen.
    uses: Vec<u32>,
}

impl SlotHistory {
    fn new(cat: &Catalog, template_product: usize, stored: Option<&str>) -> Self {
        let (category, own_pool) = match cat.category[template_product] {
            NO_CATEGORY => match stored.and_then(|c| cat.category_id(c)) {
                Some(c) => {
                    let mut pool = cat.by_category[c as usize].clone();
                    pool.push(template_product);
                    (c, Some(pool))
                }
                None => (NO_CATEGORY, None),
            },
            c => (c, None),
        };
        let mut h = SlotHistory {
            category,
            template_product,
            own_pool,
            stored: stored.map(str::to_owned),
            div: Vec::new(),
            uses: Vec::new(),
        };
        let n = h.pool(cat).len();
        h.div = vec![0.0; n];
        h.uses = vec![0; n];
        h
    }

    /// The products that can fill the slot: those of its category, or the
    /// template product alone without one.
    fn pool<'a>(&'a self, cat: &'a Catalog) -> &'a [usize] {
        slot_pool(cat, self.category, &self.template_product, &self.own_pool)
    }

    /// Records `chosen`, at `pos` in the pool.
    fn record(&mut self, cat: &Catalog, pos: usize, chosen: usize) {
        self.uses[pos] += 1;
        let pool = slot_pool(cat, self.category, &self.template_product, &self.own_pool);
        for (d, &c) in self.div.iter_mut().zip(pool) {
            *d = d.max(cat.lookalike(c, chosen));
        }
    }
}

fn slot_pool<'a>(
    cat: &'a Catalog,
    category: u32,
    template_product: &'a usize,
    own_pool: &'a Option<Vec<usize>>,
) -> &'a [usize] {
    if let Some(pool) = own_pool {
        return pool;
    }
    match category {
        NO_CATEGORY => std::slice::from_ref(template_product),
        c => &cat.by_category[c as usize],
    }
}

impl Expander {
    fn same(cat: &Catalog, a: usize, b: usize) -> bool {
        cat.same_colour(a, b)
    }

    /// [`OutfitError::UnfillableSlot`] for the first slot that nothing can
    /// fill, as [`Expander::build`] fills them: the anchor first, with an
    /// in-stock product of its category that is not in the template, then
    /// every other slot with an in-stock product of its pool that no slot
    /// before it took (the template's own when nothing else is left). Slots
    /// of one category share its products: two trousers need two.
    fn check_fillable(&self, cat: &Catalog) -> OutfitResult<()> {
        // A slot without a category has its product alone for a pool.
        let key = |h: &SlotHistory| {
            (
                h.category,
                (h.category == NO_CATEGORY || h.own_pool.is_some()).then_some(h.template_product),
            )
        };
        let mut taken: HashMap<(u32, Option<usize>), usize> = HashMap::new();
        let order = std::iter::once(self.anchor)
            .chain((0..self.template.len()).filter(|&j| j != self.anchor));
        for slot in order {
            let h = &self.history[slot];
            let anchor = slot == self.anchor;
            let pool = h.pool(cat);
            let in_stock = pool.iter().filter(|&&c| cat.in_stock[c]).count();
            let used = taken.entry(key(h)).or_default();
            let fillable = if anchor {
                pool.iter()
                    .any(|&c| cat.in_stock[c] && !self.template.contains(&c))
            } else {
                *used < in_stock
            };
            if !fillable {
                let product = self.template[slot];
                return Err(OutfitError::UnfillableSlot {
                    outfit: self.id.clone(),
                    slot,
                    product: cat.ids[product].clone(),
                    // (The stored one, when no product has it now.)
                    category: cat
                        .categories
                        .get(h.category as usize)
                        .cloned()
                        .or_else(|| h.stored.clone()),
                    anchor,
                    in_stock,
                    slots: self.history.iter().filter(|x| key(x) == key(h)).count(),
                });
            }
            *used += 1;
        }
        Ok(())
    }

    /// The next expansion, of products no earlier one holds all of;
    /// `covered` (for planning) favours products not yet covered.
    fn next(&mut self, eng: &OutfitEngine<'_>, covered: Option<&[bool]>) -> Option<Expansion> {
        // Each try takes a new anchor: as many tries as anchors at most.
        loop {
            let (e, mut set) = self.build(eng, covered)?;
            set.sort_unstable();
            if self.made.insert(set) {
                return Some(e);
            }
        }
    }

    /// An expansion around a new anchor, and its products as catalog
    /// positions; recorded in the slots' history.
    fn build(
        &mut self,
        eng: &OutfitEngine<'_>,
        covered: Option<&[bool]>,
    ) -> Option<(Expansion, Vec<usize>)> {
        let cat = &eng.cat;
        let tpl = &self.template;
        let m = tpl.len();
        let lambda = 1.0 - self.diversity;
        let cover_bonus = |c: usize| match covered {
            Some(cv) if !cv[c] => 2.0,
            _ => 0.0,
        };

        // Anchor: in-stock, same category, new, feasible for the template's
        // shared-colour relations, by MMR.
        let a_tpl = tpl[self.anchor];
        let same_with_anchor: Vec<usize> = (0..m)
            .filter(|&j| j != self.anchor && Self::same(cat, a_tpl, tpl[j]))
            .collect();
        // Among the products a slot will pick from: not the template's own
        // (unless reused, or nothing else is in stock), as below.
        let reuse_template = self.reuse_template;
        self.slot_colours.resize_with(m, || None);
        for &j in &same_with_anchor {
            if self.slot_colours[j].is_none() {
                let members = self.history[j].pool(cat);
                self.slot_colours[j] = Some(SlotColours::new(cat, members, tpl, reuse_template));
            }
        }
        let slot_colours = &self.slot_colours;
        let history = &self.history;
        let feasible = |c: usize| -> f32 {
            if same_with_anchor.is_empty() {
                return 1.0;
            }
            let ok = same_with_anchor
                .iter()
                .filter(|&&j| {
                    // (A slot without a category keeps its product.)
                    let members = history[j].pool(cat);
                    match &slot_colours[j] {
                        _ if history[j].category == NO_CATEGORY => true,
                        Some(sc) => slot_takes_colour(cat, members, sc, tpl, c, reuse_template),
                        None => slot_takes_colour_scan(cat, members, tpl, c, reuse_template),
                    }
                })
                .count();
            ok as f32 / same_with_anchor.len() as f32
        };
        let a_hist = &self.history[self.anchor];
        let pool = a_hist.pool(cat);
        self.feasible.resize(pool.len(), None);
        let known = &mut self.feasible;
        let (anchor_pos, anchor) = pool
            .iter()
            .copied()
            .enumerate()
            .filter(|&(k, c)| cat.in_stock[c] && !tpl.contains(&c) && a_hist.uses[k] == 0)
            .map(|(k, c)| {
                let rel = cat.lookalike(c, a_tpl);
                let f = *known[k].get_or_insert_with(|| feasible(c));
                let s = lambda * rel - (1.0 - lambda) * a_hist.div[k]
                    + self.palette * cat.colour_sim(c, a_tpl)
                    + 3.0 * f
                    + cover_bonus(c);
                (s, (k, c))
            })
            .max_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| cat.ids[b.1 .1].cmp(&cat.ids[a.1 .1]))
            })?
            .1;

        let mut chosen = vec![usize::MAX; m];
        let mut chosen_pos = vec![0usize; m];
        chosen[self.anchor] = anchor;
        chosen_pos[self.anchor] = anchor_pos;
        let rules = eng.rules.as_ref();
        let mut givens: Option<Given> = rules.map(|r| r.given(cat, &[anchor]));
        for j in (0..m).filter(|&j| j != self.anchor) {
            let t = tpl[j];
            let in_outfit = |c: usize, chosen: &[usize]| chosen.contains(&c);
            // (position in the slot's pool, product)
            let pick = |allow_template: bool| -> Vec<(usize, usize)> {
                self.history[j]
                    .pool(cat)
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, c)| {
                        cat.in_stock[c]
                            && !in_outfit(c, &chosen)
                            && (allow_template || !tpl.contains(&c))
                    })
                    .collect()
            };
            let mut cands = pick(self.reuse_template);
            if cands.is_empty() {
                cands = pick(true);
            }
            if cands.is_empty() {
                return None;
            }
            let filled: Vec<usize> = (0..m).filter(|&i| chosen[i] != usize::MAX).collect();
            // Relations kept, plus how strongly: colour-block cosine with
            // the slots the template shares a family with, minus it with
            // the slots it contrasts with.
            let relations: Vec<(u32, f32)> = cands
                .iter()
                .map(|&(_, c)| {
                    let (mut k, mut strength) = (0, 0.0);
                    for &i in &filled {
                        let same_t = Self::same(cat, tpl[i], t);
                        k += u32::from(same_t == Self::same(cat, chosen[i], c));
                        let cs = cat.colour_sim(chosen[i], c);
                        strength += if same_t { cs } else { -0.5 * cs };
                    }
                    (k, strength)
                })
                .collect();
            // The palette only ranks candidates that keep the most
            // relations: it never costs one.
            let most_kept = relations.iter().map(|r| r.0).max().unwrap_or(0);
            let n = filled.len().max(1) as f32;
            let kept: Vec<f32> = cands
                .iter()
                .zip(&relations)
                .map(|(&(_, c), &(k, strength))| {
                    let palette = if k == most_kept {
                        self.palette * cat.colour_sim(c, t)
                    } else {
                        0.0
                    };
                    k as f32 / n + 0.5 * strength / n + palette
                })
                .collect();
            let mut compat: Vec<f32> = cands
                .iter()
                .map(|&(_, c)| match (rules, &givens) {
                    (Some(r), Some(g)) => r.compat(cat, &eng.maps, g, c),
                    _ => 0.0,
                })
                .collect();
            let mut look: Vec<f32> = cands.iter().map(|&(_, c)| cat.lookalike(c, t)).collect();
            zscore(&mut compat);
            zscore(&mut look);
            let hist = &self.history[j];
            let (best_pos, best) = cands
                .iter()
                .enumerate()
                .map(|(k, &(pos, c))| {
                    // Reusing a product of an earlier expansion costs more
                    // than its similarity: outfits should differ.
                    let reuse = hist.uses[pos] as f32;
                    let s = 4.0 * kept[k] - 1.5 * reuse
                        + lambda * (0.5 * compat[k] + 0.5 * look[k])
                        - (1.0 - lambda) * 2.0 * hist.div[pos]
                        + cover_bonus(c);
                    (s, (pos, c))
                })
                .max_by(|a, b| {
                    a.0.total_cmp(&b.0)
                        .then_with(|| cat.ids[b.1 .1].cmp(&cat.ids[a.1 .1]))
                })?
                .1;
            chosen[j] = best;
            chosen_pos[j] = best_pos;
            if let (Some(r), Some(g)) = (rules, &mut givens) {
                r.add_given(cat, g, best);
            }
        }

        for (j, &c) in chosen.iter().enumerate() {
            self.history[j].record(cat, chosen_pos[j], c);
        }
        let mut relations = Vec::new();
        let mut explanation = Vec::new();
        for a in 0..m {
            for b in a + 1..m {
                let same_t = Self::same(cat, tpl[a], tpl[b]);
                let same_o = Self::same(cat, chosen[a], chosen[b]);
                let kind = if same_t {
                    RelationKind::SameColour
                } else {
                    RelationKind::ColourContrast
                };
                let kept = same_t == same_o;
                if kept {
                    explanation.push(match kind {
                        RelationKind::SameColour => {
                            // "Same colour" also covers close shades that
                            // straddle two family names (black, charcoal).
                            let pair = |x: usize, y: usize| {
                                let (p, q) = (cat.colour_name(x), cat.colour_name(y));
                                if p == q {
                                    p.to_string()
                                } else {
                                    format!("{p} / {q}, close shades")
                                }
                            };
                            format!(
                                "slots {} and {} share a colour ({}; template {})",
                                a + 1,
                                b + 1,
                                pair(chosen[a], chosen[b]),
                                pair(tpl[a], tpl[b])
                            )
                        }
                        RelationKind::ColourContrast => format!(
                            "slots {} and {} contrast ({} / {}; template {} / {})",
                            a + 1,
                            b + 1,
                            cat.colour_name(chosen[a]),
                            cat.colour_name(chosen[b]),
                            cat.colour_name(tpl[a]),
                            cat.colour_name(tpl[b])
                        ),
                    });
                }
                relations.push(Relation {
                    a,
                    b,
                    kind,
                    template_colours: (
                        cat.colour_name(tpl[a]).to_string(),
                        cat.colour_name(tpl[b]).to_string(),
                    ),
                    colours: (
                        cat.colour_name(chosen[a]).to_string(),
                        cat.colour_name(chosen[b]).to_string(),
                    ),
                    kept,
                });
            }
        }
        let kept = relations.iter().filter(|r| r.kept).count();
        let shifts: Vec<f32> = chosen
            .iter()
            .zip(tpl)
            .filter_map(|(&c, &t)| cat.delta_e(c, t))
            .collect();
        let palette = if shifts.is_empty() {
            String::new()
        } else {
            format!(
                "; colours {:.0} ΔE from the template's items on average",
                shifts.iter().sum::<f32>() / shifts.len() as f32
            )
        };
        explanation.insert(
            0,
            format!(
                "kept {kept} of {} colour relations; new anchor in slot {}{palette}",
                relations.len(),
                self.anchor + 1
            ),
        );
        let expansion = Expansion {
            template: self.id.clone(),
            products: chosen.iter().map(|&c| cat.ids[c].clone()).collect(),
            anchor_slot: self.anchor,
            relations,
            explanation,
        };
        Some((expansion, chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outfits::features::random_catalog as catalog;

    /// The selection gives the first `k` of a stable sort by score, ties
    /// in the order given, as the full sort it replaced did.
    #[test]
    fn top_first_is_the_head_of_a_stable_sort() {
        let mut state = 7u64;
        for round in 0..500 {
            let len = round % 40;
            let items: Vec<(f32, usize)> = (0..len)
                .map(|i| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    // Few distinct scores: many ties.
                    (((state >> 60) % 5) as f32, i)
                })
                .collect();
            let mut full = items.clone();
            full.sort_by(|a, b| b.0.total_cmp(&a.0));
            for k in [0, 1, 3, len / 2, len, len + 5] {
                let top = top_first(items.clone(), k, |a, b| {
                    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                });
                assert_eq!(top, full[..k.min(len)], "len {len}, k {k}");
            }
        }
    }

    /// The counts answer as the scan does, for every candidate and slot,
    /// with and without shades, catalog groups, template reuse, and with
    /// the candidate in the slot's own category.
    #[test]
    fn slot_colour_counts_agree_with_the_scan() {
        let mut answers = [0usize; 2];
        for seed in 0..400 {
            let (catalog_share, lab_share) =
                [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.0, 0.0)][seed as usize % 4];
            // Small categories too: the candidate may be a slot's only
            // fresh product in stock.
            let n = 4 + seed as usize % 60;
            let cat = catalog(seed, n, 3, catalog_share, lab_share);
            let tpl: Vec<usize> = (0..3)
                .filter_map(|k| cat.by_category[k].first().copied())
                .collect();
            for reuse in [false, true] {
                for &t in &tpl {
                    let members = cat.same_category(t);
                    let sc = SlotColours::new(&cat, members, &tpl, reuse);
                    for c in 0..cat.len() {
                        let fast = slot_takes_colour(&cat, members, &sc, &tpl, c, reuse);
                        let scan = slot_takes_colour_scan(&cat, members, &tpl, c, reuse);
                        assert_eq!(fast, scan, "seed {seed}, slot product {t}, candidate {c}");
                        answers[usize::from(scan)] += 1;
                    }
                }
            }
        }
        assert!(answers.iter().all(|&a| a > 100), "{answers:?}");
    }
}
