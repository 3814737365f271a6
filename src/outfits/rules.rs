//! Learning how concepts go together across the slots of stored outfits.
//!
//! Every ordered pair of distinct slots of every stored outfit is one
//! co-worn pair `(a, b)`. From these pairs the engine learns:
//!
//! 1. **Pair lifts** (pointwise mutual information) of
//!    - colour families (the model's exclusive colour group), globally and
//!      per pair of catalog categories ("navy jacket with white trousers"),
//!    - patterns (the model's pattern group: how often a print goes with a
//!      solid rather than another print),
//!    - catalog categories and the model's finer categories.
//!
//!    `lift(x, y) = (n(x,y) + m·prior) / (e(x,y) + m)` with
//!    `e(x,y) = n(x)·n(y)/N` the count expected under independence and
//!    `m = 5` pseudo-pairs. The prior is 1 for global tables and the global
//!    lift for the per-category-pair colour tables, so a rare category pair
//!    backs off to the global colour rule. Scores use `ln(lift)`; summing
//!    log-lifts over the given items is a naive-Bayes estimate of how much
//!    more often a candidate appears with them than by chance.
//!
//! 2. **A learned compatibility between embeddings**: a bilinear form
//!    `s(a, b) = (a − μ)ᵀ W (b − μ_cat(b))` on concept vectors (visual
//!    embedding plus the category, colour, usage, season, gender and pattern
//!    blocks), with `W` the cross-covariance of co-worn pairs,
//!    `W = Σ (a − μ)(b − μ_cat(b))ᵀ / P`. Centring `b` on its category mean
//!    makes `W` describe how an item's partner deviates from an average item
//!    of its category, which is what ranking candidates of one category
//!    needs. Why this method: it is the first-order solution of the
//!    contrastive objective "a co-worn item scores higher than a random item
//!    of the same category" (the gradient of that softmax loss at `W = 0` is
//!    exactly this cross-covariance), it has no hyper-parameters or epochs,
//!    and it is exact and fast to rebuild (sums of outer products, centred
//!    on means over all outfits, so it is rebuilt whole rather than updated:
//!    5,490 Mango outfits take about 0.2 s). The alternative measured against it on the FITB split
//!    (`docs/outfits/README.md`) is plain visual similarity.
//!
//! Nothing here is trained offline: the rules are statistics of the
//! user's own stored outfits, recomputed by [`crate::Db::learn_outfit_rules`].

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use vitrine_storage::Record;

use super::features::{Catalog, NO_CATEGORY};
use super::Outfit;

/// Pseudo-pairs of the lift prior.
const PRIOR_PAIRS: f32 = 5.0;

/// A square table of pair counts over a vocabulary and the log-lifts
/// derived from them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct PairTable {
    n: usize,
    counts: Vec<u32>,
    log_lift: Vec<f32>,
}

impl PairTable {
    fn new(n: usize) -> PairTable {
        PairTable {
            n,
            counts: vec![0; n * n],
            log_lift: vec![0.0; n * n],
        }
    }

    fn add(&mut self, x: usize, y: usize) {
        if x < self.n && y < self.n {
            self.counts[x * self.n + y] += 1;
        }
    }

    fn total(&self) -> f32 {
        self.counts.iter().map(|&c| c as f32).sum()
    }

    /// Computes the log-lifts, shrunk towards `prior` (a log-lift table of
    /// the same shape) or towards 0.
    #[allow(clippy::needless_range_loop)] // x, y index three tables at once
    fn finish(&mut self, prior: Option<&PairTable>) {
        let n = self.n;
        let total = self.total();
        if total == 0.0 {
            if let Some(p) = prior {
                self.log_lift.clone_from(&p.log_lift);
            }
            return;
        }
        let rows: Vec<f32> = (0..n)
            .map(|x| (0..n).map(|y| self.counts[x * n + y] as f32).sum())
            .collect();
        let cols: Vec<f32> = (0..n)
            .map(|y| (0..n).map(|x| self.counts[x * n + y] as f32).sum())
            .collect();
        for x in 0..n {
            for y in 0..n {
                let e = rows[x] * cols[y] / total;
                let prior_lift = prior.map_or(1.0, |p| p.log_lift[x * n + y].exp());
                let lift =
                    (self.counts[x * n + y] as f32 + PRIOR_PAIRS * prior_lift) / (e + PRIOR_PAIRS);
                self.log_lift[x * n + y] = lift.ln();
            }
        }
    }

    fn get(&self, x: usize, y: usize) -> f32 {
        if x < self.n && y < self.n {
            self.log_lift[x * self.n + y]
        } else {
            0.0
        }
    }

    fn count(&self, x: usize, y: usize) -> u32 {
        self.counts[x * self.n + y]
    }
}

/// What a [`PairRule`] relates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RuleKind {
    /// Colour family with colour family (optionally within a category pair).
    Colour,
    /// Pattern with pattern (e.g. printed with solid).
    Pattern,
    /// Catalog category with catalog category.
    Category,
    /// The model's category with the model's category.
    ModelCategory,
}

/// One learned pair rule, for inspection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairRule {
    /// What the rule relates.
    pub kind: RuleKind,
    /// The first concept (e.g. `navy`).
    pub left: String,
    /// The second concept (e.g. `white`).
    pub right: String,
    /// For colour rules learned within a category pair: `"Jackets + Trousers"`.
    pub context: Option<String>,
    /// How many times more often the pair is co-worn than by chance.
    pub lift: f32,
    /// Co-worn pairs observed.
    pub support: u32,
}

/// Rules learned from the stored outfits ([`crate::Db::learn_outfit_rules`]).
/// Persisted as one versioned record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutfitRules {
    /// Outfits learned from.
    pub outfits: usize,
    /// Ordered co-worn pairs counted.
    pub pairs: usize,
    /// Milliseconds the learning took.
    pub learn_ms: u64,
    /// Colour families: the model's colour tags, then the catalog's colour
    /// groups when [`crate::OutfitSettings::colour_attribute`] is set.
    pub colours: Vec<String>,
    /// Patterns (the model's pattern tags).
    pub patterns: Vec<String>,
    /// The model's categories.
    pub model_categories: Vec<String>,
    /// Catalog categories seen in the outfits, in name order.
    pub categories: Vec<String>,
    colour: PairTable,
    /// Per catalog-category pair `(a, b)`: colour table, sparse.
    colour_by_category: Vec<(u32, u32, PairTable)>,
    pattern: PairTable,
    category: PairTable,
    model_category: PairTable,
    /// Concept-vector dimension of the compatibility map.
    dim: usize,
    mean: Vec<f32>,
    category_means: Vec<Vec<f32>>,
    /// `dim × dim`, row-major.
    compat: Vec<f32>,
    /// The product ids of the outfits learned from (the memory of the
    /// kernel compatibility, `memory.rs`).
    pub(crate) memory: Vec<Vec<String>>,
    /// [`basis`] of the memory when the rules were learned.
    basis: u32,
    /// Fingerprint of the model whose outputs the rules were learned from
    /// (the database's, [`crate::Db::model_fingerprint`]): after a
    /// re-embedding with another model they no longer apply.
    pub model: Option<String>,
    /// The catalog attribute the colour families came from
    /// ([`crate::OutfitSettings::colour_attribute`]), or none (measured).
    pub colour_attribute: Option<String>,
    #[serde(skip)]
    by_category_index: OnceLock<HashMap<(u32, u32), usize>>,
}

impl Record for OutfitRules {
    /// 2: `model`; 3: `colour_attribute`; 4: `basis`. Rules are derived
    /// data: a record of an older version is learned again, not migrated
    /// ([`crate::Db::outfit_rules`]).
    const VERSION: u8 = 4;
    /// The tables grow with the catalog's categories and colours, and the
    /// kernel's memory with the outfits (about 1 MB for Mango's 39
    /// families and 5,490 outfits, but 120 categories with 40 colour
    /// groups pass the default 16 MiB).
    const MAX_BYTES: usize = vitrine_storage::LARGE_RECORD_BYTES;
}

impl OutfitRules {
    /// The concept dimension the rules were learned in.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// The tables have the shapes their names and dimension give; scoring
    /// indexes them without further checks.
    pub(crate) fn check(&self) -> Result<(), String> {
        let table = |name: &str, t: &PairTable, n: usize| {
            let nn = n.checked_mul(n);
            if t.n != n || Some(t.counts.len()) != nn || Some(t.log_lift.len()) != nn {
                Err(format!("the {name} table does not have {n} × {n} entries"))
            } else {
                Ok(())
            }
        };
        table("colour", &self.colour, self.colours.len())?;
        table("pattern", &self.pattern, self.patterns.len())?;
        table("category", &self.category, self.categories.len())?;
        table(
            "model category",
            &self.model_category,
            self.model_categories.len(),
        )?;
        for (a, b, t) in &self.colour_by_category {
            if *a as usize >= self.categories.len() || *b as usize >= self.categories.len() {
                return Err(format!("a colour table names category {a} or {b}"));
            }
            table("colour by category", t, self.colours.len())?;
        }
        let d = self.dim;
        if self.mean.len() != d
            || Some(self.compat.len()) != d.checked_mul(d)
            || self.category_means.len() != self.categories.len()
            || self.category_means.iter().any(|m| m.len() != d)
        {
            return Err(format!("the compatibility map is not {d}-dimensional"));
        }
        Ok(())
    }
}

impl PartialEq for OutfitRules {
    fn eq(&self, o: &Self) -> bool {
        self.outfits == o.outfits
            && self.pairs == o.pairs
            && self.colours == o.colours
            && self.categories == o.categories
            && self.colour == o.colour
            && self.colour_by_category == o.colour_by_category
            && self.pattern == o.pattern
            && self.category == o.category
            && self.model_category == o.model_category
            && self.compat == o.compat
            && self.mean == o.mean
            && self.memory == o.memory
            && self.basis == o.basis
            && self.model == o.model
            && self.colour_attribute == o.colour_attribute
    }
}

/// The most catalog categories the rules hold pair tables for (the most
/// used in outfits). At 1,024 the category tables take 8 MiB.
pub(crate) const MAX_RULE_CATEGORIES: usize = 1024;

/// The most category pairs that keep a colour table of their own (the
/// most supported; the others use the global colour table). Each is 8·n²
/// bytes for n colours: at 47 (the model's 15 families and 32 catalog
/// groups), 4,096 tables take 72 MiB; without a cap, 400 categories in
/// 50,000 outfits made a record past the storage's size limit.
pub(crate) const MAX_PAIR_TABLES: usize = 4096;

/// A table [`OutfitRules::top`] reads rules from.
struct RuleSource<'a> {
    kind: RuleKind,
    table: &'a PairTable,
    names: &'a [String],
    /// The two categories of a colour table of a category pair.
    pair: Option<(u32, u32)>,
    symmetric: bool,
}

/// A cell of a rule table, ordered from worst to best rule: lift, then
/// support, then the earlier cell (`seq`) first.
struct RankedCell {
    lift: f32,
    support: u32,
    seq: u64,
    source: usize,
    x: usize,
    y: usize,
}

impl Ord for RankedCell {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.lift
            .total_cmp(&o.lift)
            .then(self.support.cmp(&o.support))
            .then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for RankedCell {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for RankedCell {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for RankedCell {}

/// The keys of at most `max` tables, those with the most pairs counted
/// (`support`: a key's pairs, counted as its table counts them); a pair's
/// two directions (transposes, counted alike) stay or go together, so
/// that a rule scores a jacket with trousers as it scores trousers with a
/// jacket. Chosen from counts, before any table is made: with a thousand
/// categories, a table for every pair that occurs took gigabytes.
fn most_supported(support: HashMap<(u32, u32), u64>, max: usize) -> Vec<(u32, u32)> {
    let mut keys: Vec<((u32, u32), u64)> = support.into_iter().collect();
    if keys.len() > max {
        let unordered = |(a, b): (u32, u32)| (a.min(b), a.max(b), a);
        keys.sort_by(|x, y| y.1.cmp(&x.1).then(unordered(x.0).cmp(&unordered(y.0))));
        let same_pair = |x: (u32, u32), y: (u32, u32)| x == (y.1, y.0);
        let cut = if max > 0 && same_pair(keys[max - 1].0, keys[max].0) {
            max - 1
        } else {
            max
        };
        keys.truncate(cut);
    }
    keys.into_iter().map(|(k, _)| k).collect()
}

/// Which catalog categories (by their uses in outfits) get category rules:
/// the used ones, at most `max`, the most used first (ties: catalog order,
/// which is name order).
fn rule_categories(uses: &[usize], max: usize) -> Vec<bool> {
    let mut used: Vec<usize> = (0..uses.len()).filter(|&c| uses[c] > 0).collect();
    if used.len() > max {
        tracing::warn!(
            used_categories = used.len(),
            kept = max,
            "outfits use more categories than the rules keep; the least used get no category rules"
        );
        used.sort_by_key(|&c| (std::cmp::Reverse(uses[c]), c));
        used.truncate(max);
    }
    let mut keep = vec![false; uses.len()];
    for c in used {
        keep[c] = true;
    }
    keep
}

/// A checksum of what learning reads of the outfits' products: which are
/// in the catalog, and each one's category, model category, colour family,
/// pattern and concept vector. Deleting, recategorising or re-embedding one
/// changes it (as does learning while a re-embedding was half done).
pub(crate) fn basis<'a, O, I>(cat: &Catalog, outfits: O) -> u32
where
    O: IntoIterator<Item = I>,
    I: IntoIterator<Item = &'a str>,
{
    let mut h = crc32fast::Hasher::new();
    for outfit in outfits {
        h.update(b"outfit");
        for id in outfit {
            let Some(i) = cat.lookup(id) else {
                h.update(&[0]);
                continue;
            };
            h.update(&[1]);
            let category = cat.categories.get(cat.category[i] as usize);
            let category = category.map_or("", String::as_str);
            h.update(&(category.len() as u64).to_le_bytes());
            h.update(category.as_bytes());
            h.update(&cat.mcat[i].to_le_bytes());
            h.update(&cat.colour[i].to_le_bytes());
            h.update(&[cat.pattern[i]]);
            for x in cat.concept(i) {
                h.update(&x.to_le_bytes());
            }
        }
    }
    h.finalize()
}

impl OutfitRules {
    /// Whether the outfits' products are as learning saw them ([`basis`]).
    pub(crate) fn same_basis(&self, cat: &Catalog) -> bool {
        self.basis
            == basis(
                cat,
                self.memory.iter().map(|o| o.iter().map(String::as_str)),
            )
    }
}

/// Learns the rules of `outfits` over the products of `cat`. Slots whose
/// product is gone from the catalog are skipped.
pub(crate) fn learn(cat: &Catalog, outfits: &[Outfit], model: Option<String>) -> OutfitRules {
    let started = std::time::Instant::now();
    let l = &cat.layout;
    let nc = cat.colour_names.len();
    let mut colour = PairTable::new(nc);
    let mut pattern = PairTable::new(l.patterns.len());
    let mut model_category = PairTable::new(l.model_categories.len());
    let d = cat.dim();
    let members: Vec<Vec<usize>> = outfits
        .iter()
        .map(|o| {
            o.slots
                .iter()
                .filter_map(|s| cat.lookup(&s.product))
                .collect()
        })
        .collect();

    // Catalog categories of the rules: those the outfits use, in name
    // order. Tables are n² in them, and a catalog may hold thousands that
    // no outfit uses; the rules map categories by name when applied. Past
    // MAX_RULE_CATEGORIES, the least used get no category rules, so that a
    // category attribute with a value per product cannot build tables of
    // gigabytes.
    let mut uses = vec![0usize; cat.categories.len()];
    for &i in members.iter().flatten() {
        if let Some(u) = uses.get_mut(cat.category[i] as usize) {
            *u += 1;
        }
    }
    let in_outfits = rule_categories(&uses, MAX_RULE_CATEGORIES);
    let mut rule_category = vec![NO_CATEGORY; cat.categories.len()];
    let mut categories = Vec::new();
    for (c, name) in cat.categories.iter().enumerate() {
        if in_outfits[c] {
            rule_category[c] = categories.len() as u32;
            categories.push(name.clone());
        }
    }
    let category_of = |i: usize| -> u32 {
        rule_category
            .get(cat.category[i] as usize)
            .copied()
            .unwrap_or(NO_CATEGORY)
    };
    let ncat = categories.len();
    let mut category = PairTable::new(ncat);
    // Pairs counted per category pair, as its colour table would count
    // them (both colours known).
    let mut support: HashMap<(u32, u32), u64> = HashMap::new();

    // Means: global and per category, over the products used in outfits.
    let mut mean = vec![0f64; d];
    let mut cmeans = vec![vec![0f64; d]; ncat];
    let mut ccount = vec![0usize; ncat];
    let mut used = 0usize;
    for m in &members {
        for &i in m {
            used += 1;
            for (acc, x) in mean.iter_mut().zip(cat.concept(i)) {
                *acc += f64::from(*x);
            }
            if category_of(i) != NO_CATEGORY {
                let c = category_of(i) as usize;
                ccount[c] += 1;
                for (acc, x) in cmeans[c].iter_mut().zip(cat.concept(i)) {
                    *acc += f64::from(*x);
                }
            }
        }
    }
    let mean: Vec<f32> = mean
        .iter()
        .map(|x| (x / used.max(1) as f64) as f32)
        .collect();
    let category_means: Vec<Vec<f32>> = cmeans
        .iter()
        .zip(&ccount)
        .map(|(m, &n)| {
            if n == 0 {
                mean.clone()
            } else {
                m.iter().map(|x| (x / n as f64) as f32).collect()
            }
        })
        .collect();

    let mut w = vec![0f32; d * d];
    let mut pairs = 0usize;
    let mut su = vec![0f32; d];
    let mut sv = vec![0f32; d];
    let mut u = vec![0f32; d];
    let mut v = vec![0f32; d];
    for m in &members {
        if m.len() < 2 {
            continue;
        }
        for (a_pos, &a) in m.iter().enumerate() {
            for (b_pos, &b) in m.iter().enumerate() {
                if a_pos == b_pos {
                    continue;
                }
                pairs += 1;
                colour.add(cat.colour[a] as usize, cat.colour[b] as usize);
                pattern.add(cat.pattern[a] as usize, cat.pattern[b] as usize);
                model_category.add(cat.mcat[a] as usize, cat.mcat[b] as usize);
                let (ca, cb) = (category_of(a), category_of(b));
                if ca != NO_CATEGORY && cb != NO_CATEGORY {
                    category.add(ca as usize, cb as usize);
                    let known = (cat.colour[a] as usize) < nc && (cat.colour[b] as usize) < nc;
                    *support.entry((ca, cb)).or_insert(0) += u64::from(known);
                }
            }
        }
        // Σ_{i≠j} u_i v_jᵀ = (Σ u)(Σ v)ᵀ − Σ u_i v_iᵀ: two rank-one updates
        // per item instead of one per pair.
        su.iter_mut().for_each(|x| *x = 0.0);
        sv.iter_mut().for_each(|x| *x = 0.0);
        for &i in m {
            centre(cat.concept(i), &mean, &mut u);
            let cm = category_means.get(category_of(i) as usize).unwrap_or(&mean);
            centre(cat.concept(i), cm, &mut v);
            for k in 0..d {
                su[k] += u[k];
                sv[k] += v[k];
            }
            rank_one(&mut w, -1.0, &u, &v);
        }
        rank_one(&mut w, 1.0, &su, &sv);
    }
    if pairs > 0 {
        let s = 1.0 / pairs as f32;
        w.iter_mut().for_each(|x| *x *= s);
    }
    colour.finish(None);
    pattern.finish(None);
    category.finish(None);
    model_category.finish(None);
    // The colour tables of the kept category pairs: a second walk of the
    // pairs.
    let mut by_cat: HashMap<(u32, u32), PairTable> = most_supported(support, MAX_PAIR_TABLES)
        .into_iter()
        .map(|k| (k, PairTable::new(nc)))
        .collect();
    for m in &members {
        for (a_pos, &a) in m.iter().enumerate() {
            for (b_pos, &b) in m.iter().enumerate() {
                if a_pos != b_pos {
                    if let Some(t) = by_cat.get_mut(&(category_of(a), category_of(b))) {
                        t.add(cat.colour[a] as usize, cat.colour[b] as usize);
                    }
                }
            }
        }
    }
    let mut colour_by_category: Vec<(u32, u32, PairTable)> = by_cat
        .into_iter()
        .map(|((a, b), mut t)| {
            t.finish(Some(&colour));
            (a, b, t)
        })
        .collect();
    colour_by_category.sort_by_key(|(a, b, _)| (*a, *b));
    OutfitRules {
        outfits: members.iter().filter(|m| m.len() >= 2).count(),
        pairs,
        learn_ms: started.elapsed().as_millis() as u64,
        colours: cat.colour_names.clone(),
        patterns: l.patterns.clone(),
        model_categories: l.model_categories.clone(),
        categories,
        colour,
        colour_by_category,
        pattern,
        category,
        model_category,
        dim: d,
        mean,
        category_means,
        compat: w,
        basis: basis(
            cat,
            outfits
                .iter()
                .map(|o| o.slots.iter().map(|s| s.product.as_str())),
        ),
        memory: outfits
            .iter()
            .map(|o| o.slots.iter().map(|s| s.product.clone()).collect())
            .collect(),
        model,
        colour_attribute: cat.colour_attribute.clone(),
        by_category_index: OnceLock::new(),
    }
}

fn centre(x: &[f32], m: &[f32], out: &mut [f32]) {
    for ((o, a), b) in out.iter_mut().zip(x).zip(m) {
        *o = a - b;
    }
}

fn rank_one(w: &mut [f32], s: f32, u: &[f32], v: &[f32]) {
    let d = v.len();
    for (row, &ui) in w.chunks_exact_mut(d).zip(u) {
        let f = s * ui;
        if f != 0.0 {
            for (x, &vj) in row.iter_mut().zip(v) {
                *x += f * vj;
            }
        }
    }
}

/// Catalog index → rules index, for categories and colours
/// ([`OutfitRules::maps`]); `NO_CATEGORY` where the rules lack the name.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleMaps {
    pub category: Vec<u32>,
    pub colour: Vec<u32>,
}

impl RuleMaps {
    fn category(&self, c: u32) -> u32 {
        self.category
            .get(c as usize)
            .copied()
            .unwrap_or(NO_CATEGORY)
    }

    /// Unknown colours map past the tables' end, where lifts are 0.
    fn colour(&self, c: u16) -> usize {
        self.colour.get(c as usize).copied().unwrap_or(NO_CATEGORY) as usize
    }
}

fn by_name(rules: &[String], catalog: &[String]) -> Vec<u32> {
    let index: HashMap<&str, u32> = rules
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    catalog
        .iter()
        .map(|c| index.get(c.as_str()).copied().unwrap_or(NO_CATEGORY))
        .collect()
}

/// Given items prepared for scoring candidates against them: the
/// compatibility is linear in `Wᵀ (a − μ)`, so the sum over the items is
/// one dot product per candidate, whatever their number.
pub(crate) struct Given {
    /// `Σ Wᵀ (a − μ)` over the items added.
    proj: Vec<f32>,
}

impl OutfitRules {
    fn cat_pair_table(&self, a: u32, b: u32) -> Option<&PairTable> {
        let index = self.by_category_index.get_or_init(|| {
            self.colour_by_category
                .iter()
                .enumerate()
                .map(|(k, (a, b, _))| ((*a, *b), k))
                .collect()
        });
        index.get(&(a, b)).map(|&k| &self.colour_by_category[k].2)
    }

    /// Maps the catalog's category and colour indexes to the rules' (by
    /// name): the catalog may have changed since the rules were learned.
    pub(crate) fn maps(&self, cat: &Catalog) -> RuleMaps {
        RuleMaps {
            category: by_name(&self.categories, &cat.categories),
            colour: by_name(&self.colours, &cat.colour_names),
        }
    }

    /// The given items `items`, summed (none: every score is 0).
    pub(crate) fn given(&self, cat: &Catalog, items: &[usize]) -> Given {
        let mut g = Given {
            proj: vec![0f32; self.dim],
        };
        for &a in items {
            self.add_given(cat, &mut g, a);
        }
        g
    }

    /// Adds item `a` to `g`.
    pub(crate) fn add_given(&self, cat: &Catalog, g: &mut Given, a: usize) {
        let d = self.dim;
        if cat.dim() != d {
            return;
        }
        for (k, (xa, m)) in cat.concept(a).iter().zip(&self.mean).enumerate() {
            let u = xa - m;
            if u != 0.0 {
                for (p, wk) in g.proj.iter_mut().zip(&self.compat[k * d..(k + 1) * d]) {
                    *p += u * wk;
                }
            }
        }
    }

    /// Learned embedding compatibility of candidate `b` with the items of
    /// `g`, summed.
    pub(crate) fn compat(&self, cat: &Catalog, maps: &RuleMaps, g: &Given, b: usize) -> f32 {
        if cat.dim() != self.dim {
            return 0.0;
        }
        let rc = maps.category(cat.category[b]);
        let m = self.category_means.get(rc as usize).unwrap_or(&self.mean);
        let c: f32 = cat
            .concept(b)
            .iter()
            .zip(m)
            .zip(&g.proj)
            .map(|((x, m), p)| (x - m) * p)
            .sum();
        // Concept vectors stored by hand at absurd scales overflow this
        // fourth-power score: no signal, not a NaN to rank by.
        if c.is_finite() {
            c
        } else {
            0.0
        }
    }

    /// Sum of the log-lifts of the symbolic rules between `a` and `b`.
    pub(crate) fn rule_score(&self, cat: &Catalog, maps: &RuleMaps, a: usize, b: usize) -> f32 {
        let (ca, cb) = (maps.colour(cat.colour[a]), maps.colour(cat.colour[b]));
        let ka = maps.category(cat.category[a]);
        let kb = maps.category(cat.category[b]);
        let colour = match self.cat_pair_table(ka, kb) {
            Some(t) => t.get(ca, cb),
            None => self.colour.get(ca, cb),
        };
        let category = if ka != NO_CATEGORY && kb != NO_CATEGORY {
            self.category.get(ka as usize, kb as usize)
        } else {
            0.0
        };
        colour
            + category
            + self
                .pattern
                .get(cat.pattern[a] as usize, cat.pattern[b] as usize)
            + self
                .model_category
                .get(cat.mcat[a] as usize, cat.mcat[b] as usize)
    }

    /// The `n` strongest rules with at least `min_support` pairs, strongest
    /// (highest lift) first, across all kinds.
    pub fn top(&self, n: usize, min_support: u32) -> Vec<PairRule> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // A symmetric table reports each unordered pair once; the colour
        // table of two categories (x on the first, y on the second) is not
        // symmetric. Tables count ordered pairs, so in a symmetric one a
        // pair of one concept (black + black) is counted twice.
        let source = |kind, table, names, pair, symmetric| RuleSource {
            kind,
            table,
            names,
            pair,
            symmetric,
        };
        let mut sources = vec![
            source(RuleKind::Colour, &self.colour, &self.colours, None, true),
            source(RuleKind::Pattern, &self.pattern, &self.patterns, None, true),
            source(
                RuleKind::Category,
                &self.category,
                &self.categories,
                None,
                true,
            ),
            source(
                RuleKind::ModelCategory,
                &self.model_category,
                &self.model_categories,
                None,
                true,
            ),
        ];
        for (a, b, t) in &self.colour_by_category {
            if a <= b {
                sources.push(source(
                    RuleKind::Colour,
                    t,
                    &self.colours,
                    Some((*a, *b)),
                    a == b,
                ));
            }
        }
        // The best n cells, by lift, then support, then the order above;
        // names are made for those only (the tables hold millions of cells).
        let mut best: BinaryHeap<Reverse<RankedCell>> = BinaryHeap::new();
        let mut seq = 0u64;
        for (source, s) in sources.iter().enumerate() {
            let t = s.table;
            for x in 0..t.n {
                for y in 0..t.n {
                    if s.symmetric && y < x {
                        continue;
                    }
                    let support = if s.symmetric && x == y {
                        t.count(x, y) / 2
                    } else {
                        t.count(x, y)
                    };
                    if support < min_support {
                        continue;
                    }
                    seq += 1;
                    best.push(Reverse(RankedCell {
                        lift: t.get(x, y).exp(),
                        support,
                        seq,
                        source,
                        x,
                        y,
                    }));
                    if best.len() > n {
                        best.pop();
                    }
                }
            }
        }
        let name = |k: u32| self.categories.get(k as usize).cloned().unwrap_or_default();
        let mut cells: Vec<RankedCell> = best.into_iter().map(|Reverse(c)| c).collect();
        cells.sort_by(|a, b| b.cmp(a));
        cells
            .into_iter()
            .map(|c| {
                let s = &sources[c.source];
                PairRule {
                    kind: s.kind,
                    left: s.names.get(c.x).cloned().unwrap_or_default(),
                    right: s.names.get(c.y).cloned().unwrap_or_default(),
                    context: s.pair.map(|(a, b)| format!("{} + {}", name(a), name(b))),
                    lift: c.lift,
                    support: c.support,
                }
            })
            .collect()
    }

    /// Lift of two colour families (global table), by name.
    pub fn colour_lift(&self, a: &str, b: &str) -> Option<f32> {
        let x = self.colours.iter().position(|c| c == a)?;
        let y = self.colours.iter().position(|c| c == b)?;
        Some(self.colour.get(x, y).exp())
    }

    /// How often an item is worn with a solid rather than with a pattern,
    /// relative to chance, for a patterned item (`None` without a `solid`
    /// pattern tag).
    pub fn patterned_with_solid_lift(&self) -> Option<f32> {
        let s = self.patterns.iter().position(|p| p == "solid")?;
        let mut with_solid = 0.0;
        let mut with_any = 0.0;
        let mut solid_total = 0.0;
        let n = self.pattern.n;
        let total = self.pattern.total();
        for x in 0..n {
            for y in 0..n {
                let c = self.pattern.count(x, y) as f32;
                if y == s {
                    solid_total += c;
                }
                if x != s {
                    with_any += c;
                    if y == s {
                        with_solid += c;
                    }
                }
            }
        }
        if with_any == 0.0 || solid_total == 0.0 {
            return None;
        }
        Some((with_solid / with_any) / (solid_total / total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap, the pair tables with the most pairs stay (ties by
    /// key); under it, all do.
    #[test]
    fn pair_tables_keep_the_most_supported_up_to_the_cap() {
        let support: HashMap<(u32, u32), u64> =
            [((0, 1), 5), ((1, 0), 9), ((2, 2), 5), ((3, 1), 1)]
                .into_iter()
                .collect();
        let mut all = most_supported(support.clone(), 4);
        all.sort();
        assert_eq!(all, [(0, 1), (1, 0), (2, 2), (3, 1)]);
        assert_eq!(most_supported(support.clone(), 2), [(1, 0), (0, 1)]);
        // A pair's two directions are not split by the cap.
        let mut both = support;
        both.insert((2, 0), 5);
        both.insert((0, 2), 5);
        assert_eq!(most_supported(both, 3), [(1, 0), (0, 1)]);
    }

    /// `count` outfits of 10 random products of a random catalog of
    /// 3,000 products in `cats` categories.
    fn random_outfits(cats: usize, count: usize) -> (Catalog, Vec<Outfit>) {
        use crate::outfits::features::random_catalog;
        use crate::outfits::OutfitSlot;
        let cat = random_catalog(3, 3_000, cats, 0.3, 0.0);
        let mut state = 11u64;
        let mut pick = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as usize % cat.len()
        };
        let outfits: Vec<Outfit> = (0..count)
            .map(|o| Outfit {
                id: format!("o{o}"),
                slots: (0..10)
                    .map(|_| OutfitSlot {
                        product: cat.ids[pick()].clone(),
                        category: None,
                    })
                    .collect(),
            })
            .collect();
        (cat, outfits)
    }

    /// The top rules are the head of all rules in order, by lift then
    /// support (ties in table order), each once, none under the support.
    #[test]
    fn top_rules_are_the_head_of_all_rules_in_order() {
        let (cat, outfits) = random_outfits(12, 300);
        let rules = learn(&cat, &outfits, None);
        for min_support in [0, 1, 3] {
            let all = rules.top(usize::MAX, min_support);
            assert!(all.len() > 100, "{}", all.len());
            assert!(all.iter().all(|r| r.support >= min_support));
            assert!(all.windows(2).all(|w| w[0].lift > w[1].lift
                || (w[0].lift == w[1].lift && w[0].support >= w[1].support)));
            let keys: std::collections::HashSet<_> = all
                .iter()
                .map(|r| (format!("{:?}", r.kind), &r.left, &r.right, &r.context))
                .collect();
            assert_eq!(keys.len(), all.len());
            for n in [0, 1, 7, 50, all.len() + 3] {
                assert_eq!(rules.top(n, min_support), all[..n.min(all.len())], "{n}");
            }
        }
    }

    /// Learning keeps the colour tables of the most supported category
    /// pairs, counted as one table per pair that occurs would count them
    /// (the way it was learned before the tables were chosen from counts).
    #[test]
    fn learned_pair_tables_are_those_of_a_table_per_pair() {
        // 100 categories: about 9,900 ordered pairs occur, past the cap.
        let (cat, outfits) = random_outfits(100, 600);
        let rules = learn(&cat, &outfits, None);
        let nc = cat.colour_names.len();
        let mut tables: HashMap<(String, String), Vec<u32>> = HashMap::new();
        for o in &outfits {
            let m: Vec<usize> = o
                .slots
                .iter()
                .filter_map(|s| cat.lookup(&s.product))
                .collect();
            for (x, &a) in m.iter().enumerate() {
                for (y, &b) in m.iter().enumerate() {
                    if x == y {
                        continue;
                    }
                    let name = |i: usize| cat.categories[cat.category[i] as usize].clone();
                    let t = tables
                        .entry((name(a), name(b)))
                        .or_insert_with(|| vec![0; nc * nc]);
                    let (ca, cb) = (cat.colour[a] as usize, cat.colour[b] as usize);
                    if ca < nc && cb < nc {
                        t[ca * nc + cb] += 1;
                    }
                }
            }
        }
        let mut order: Vec<((String, String), u64)> = tables
            .iter()
            .map(|(k, t)| (k.clone(), t.iter().map(|&c| u64::from(c)).sum()))
            .collect();
        assert!(order.len() > MAX_PAIR_TABLES, "{}", order.len());
        let index = |n: &str| rules.categories.iter().position(|c| c == n).unwrap() as u32;
        let key = |(a, b): &(String, String)| (index(a), index(b));
        order.sort_by(|x, y| {
            let u = |k: (u32, u32)| (k.0.min(k.1), k.0.max(k.1), k.0);
            y.1.cmp(&x.1).then(u(key(&x.0)).cmp(&u(key(&y.0))))
        });
        let mut cut = MAX_PAIR_TABLES;
        if key(&order[cut - 1].0) == (key(&order[cut].0).1, key(&order[cut].0).0) {
            cut -= 1;
        }
        let mut want: Vec<(u32, u32)> = order[..cut].iter().map(|(k, _)| key(k)).collect();
        want.sort();
        let got: Vec<(u32, u32)> = rules
            .colour_by_category
            .iter()
            .map(|(a, b, _)| (*a, *b))
            .collect();
        assert_eq!(got, want);
        for (a, b, t) in &rules.colour_by_category {
            let names = (
                rules.categories[*a as usize].clone(),
                rules.categories[*b as usize].clone(),
            );
            assert_eq!(t.counts, tables[&names], "{names:?}");
        }
    }

    #[test]
    fn rule_categories_keep_the_most_used_up_to_the_cap() {
        assert_eq!(
            rule_categories(&[0, 3, 1, 2], 10),
            [false, true, true, true]
        );
        // Over the cap: the least used go; a tie keeps catalog order.
        assert_eq!(
            rule_categories(&[0, 3, 1, 2, 1], 3),
            [false, true, true, true, false]
        );
        let many: Vec<usize> = (0..MAX_RULE_CATEGORIES + 5).map(|c| c % 7 + 1).collect();
        let keep = rule_categories(&many, MAX_RULE_CATEGORIES);
        assert_eq!(keep.iter().filter(|&&k| k).count(), MAX_RULE_CATEGORIES);
        let dropped_max = (0..many.len()).filter(|&c| !keep[c]).map(|c| many[c]).max();
        let kept_min = (0..many.len()).filter(|&c| keep[c]).map(|c| many[c]).min();
        assert!(dropped_max <= kept_min);
    }
}
