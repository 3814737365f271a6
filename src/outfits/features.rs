//! What the outfit engine reads about every product, in one in-memory
//! snapshot: catalog category, stock, colour (the retailer's colour group
//! when [`OutfitSettings`](super::OutfitSettings) names that attribute,
//! else the colour measured on the pixels), and the model outputs held in
//! the concept-space vector (visual block, category block, colour and
//! pattern blocks). The blocks are found from the concept layout the
//! database stored.

use std::collections::HashMap;
use std::sync::Arc;

use super::{OutfitError, OutfitResult};
use crate::model::CONCEPT_SPACE;
use crate::Db;
use crate::{delta_e, srgb_to_lab, ConceptLayout, ATTR_COLOUR_LAB};

/// Block layout of the concept vector, from the manifest.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub vis: std::ops::Range<usize>,
    pub mcat: std::ops::Range<usize>,
    pub colour: std::ops::Range<usize>,
    pub pattern: std::ops::Range<usize>,
    pub model_categories: Vec<String>,
    pub colours: Vec<String>,
    pub patterns: Vec<String>,
    pub dim: usize,
}

impl Layout {
    /// The blocks the outfit engine reads, from the concept layout the
    /// database stored when it adopted its model.
    pub fn of(layout: &ConceptLayout) -> OutfitResult<Layout> {
        let block = |name: &str| {
            layout
                .group(name)
                .map(|g| (g.start..g.start + g.len, g.labels.clone()))
        };
        let missing = |name: &str| {
            OutfitError::NoConceptSpace(format!("the concept space has no '{name}' block"))
        };
        let (vis, _) = block("visual").ok_or_else(|| missing("visual"))?;
        let (mcat, model_categories) = block("category").ok_or_else(|| missing("category"))?;
        let (colour, colours) = block("colour").unwrap_or((0..0, Vec::new()));
        let (pattern, patterns) = block("pattern").unwrap_or((0..0, Vec::new()));
        // The catalog keeps these indices small (u8 patterns, u16 model
        // categories and colour families): a larger block would wrap.
        let too_many = |name: &str, n: usize, max: usize| {
            (n > max).then(|| {
                OutfitError::NoConceptSpace(format!(
                    "the '{name}' block has {n} labels; outfits handle at most {max}"
                ))
            })
        };
        if let Some(e) = too_many("pattern", patterns.len(), usize::from(u8::MAX) + 1)
            .or_else(|| too_many("category", model_categories.len(), usize::from(u16::MAX)))
            .or_else(|| too_many("colour", colours.len(), usize::from(u16::MAX) - 64))
        {
            return Err(e);
        }
        Ok(Layout {
            vis,
            mcat,
            colour,
            pattern,
            model_categories,
            colours,
            patterns,
            dim: layout.dim,
        })
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Every product of the database with what the outfit engine uses.
pub(crate) struct Catalog {
    /// The database's model when the catalog was read.
    pub model: Option<String>,
    pub layout: Layout,
    pub ids: Vec<String>,
    pub index: HashMap<String, usize>,
    pub in_stock: Vec<bool>,
    /// Index into `categories`, or `u32::MAX` when the product has none.
    pub category: Vec<u32>,
    pub categories: Vec<String>,
    pub by_category: Vec<Vec<usize>>,
    pub mcat: Vec<u16>,
    /// Index into `colour_names`.
    pub colour: Vec<u16>,
    /// The model's colour families, then the catalog's colour groups.
    pub colour_names: Vec<String>,
    /// Per entry of `colour_names`, the model's family it names (itself
    /// for the model's families; for a catalog group, the family its name
    /// spells in another case, `WHITE` for `white`), else [`NO_COLOUR`].
    pub model_family_of: Vec<u16>,
    /// The catalog attribute colour groups come from, when one is set.
    pub colour_attribute: Option<String>,
    /// Whether the colour is the catalog's (else measured or predicted).
    pub catalog_colour: Vec<bool>,
    /// The measured pixel colour (CIELAB), when the import stored one.
    pub lab: Vec<Option<[f32; 3]>>,
    pub pattern: Vec<u8>,
    /// Concept vectors, row-major.
    pub concept: Vec<f32>,
    /// Visual blocks, L2-normalised, row-major.
    pub vis: Vec<f32>,
}

pub(crate) const NO_CATEGORY: u32 = u32::MAX;

/// The colour of a product with no family (no catalog group, and a model
/// without a colour block).
pub(crate) const NO_COLOUR: u16 = u16::MAX;

/// A catalog of `n` products in `cats` categories with random stock and
/// colours: catalog groups, measured shades (close ones match across
/// families), or neither (matched by the colour head).
#[cfg(test)]
pub(crate) fn random_catalog(
    seed: u64,
    n: usize,
    cats: usize,
    catalog_share: f32,
    lab_share: f32,
) -> Catalog {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut rand = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32) / (1u64 << 31) as f32
    };
    let families = 4;
    let layout = Layout {
        vis: 0..0,
        mcat: 0..0,
        colour: 0..families,
        pattern: 0..0,
        model_categories: Vec::new(),
        colours: (0..families).map(|f| format!("c{f}")).collect(),
        patterns: Vec::new(),
        dim: families,
    };
    let mut cat = Catalog {
        model: None,
        layout,
        ids: Vec::new(),
        index: HashMap::new(),
        in_stock: Vec::new(),
        category: Vec::new(),
        categories: (0..cats).map(|c| format!("k{c}")).collect(),
        by_category: vec![Vec::new(); cats],
        mcat: Vec::new(),
        colour: Vec::new(),
        colour_names: (0..families + 2).map(|f| format!("c{f}")).collect(),
        model_family_of: (0..families as u16).chain([NO_COLOUR; 2]).collect(),
        colour_attribute: None,
        catalog_colour: Vec::new(),
        lab: Vec::new(),
        pattern: Vec::new(),
        concept: Vec::new(),
        vis: Vec::new(),
    };
    for i in 0..n {
        let k = (rand() * cats as f32) as usize % cats;
        let catalog = rand() < catalog_share;
        let lab = (rand() < lab_share).then(|| [rand() * 60.0, rand() * 40.0, rand() * 40.0]);
        let colour = if catalog {
            families as u16 + (rand() * 2.0) as u16 % 2
        } else if rand() < 0.1 {
            NO_COLOUR
        } else {
            (rand() * families as f32) as u16 % families as u16
        };
        let mut head = vec![0.0; families];
        head[(rand() * families as f32) as usize % families] = 1.0;
        cat.ids.push(format!("p{i}"));
        cat.index.insert(format!("p{i}"), i);
        cat.mcat.push(0);
        cat.pattern.push(0);
        cat.in_stock.push(rand() < 0.7);
        cat.category.push(k as u32);
        cat.by_category[k].push(i);
        cat.colour.push(colour);
        cat.catalog_colour.push(catalog);
        cat.lab.push(lab);
        cat.concept.extend(head);
    }
    cat
}

/// Colour similarity from which two products count as one colour family
/// (with measured colours: ΔE76 below 20).
pub(crate) const SAME_COLOUR: f32 = 0.8;

/// ΔE76 at which measured colours have nothing in common.
pub(crate) const COLOUR_SCALE: f32 = 100.0;

/// Most distinct values of a catalog colour attribute used as colour
/// groups (the rules keep a table per pair of groups); products with rarer
/// values fall back to their measured colour.
pub const MAX_CATALOG_COLOURS: usize = 32;

/// Typical garment colours of common family names (sRGB), for naming a
/// measured colour after the nearest of the model's families. Families not
/// listed (`metallic`, `multi`) are never chosen from pixels.
const FAMILY_PROTOTYPES: &[(&str, [f32; 3])] = &[
    ("black", [25.0, 25.0, 28.0]),
    ("white", [240.0, 240.0, 235.0]),
    ("grey", [130.0, 130.0, 130.0]),
    ("blue", [50.0, 90.0, 170.0]),
    ("navy", [30.0, 40.0, 70.0]),
    ("red", [180.0, 30.0, 40.0]),
    ("pink", [230.0, 150.0, 170.0]),
    ("green", [60.0, 120.0, 60.0]),
    ("yellow", [230.0, 200.0, 60.0]),
    ("orange", [230.0, 120.0, 40.0]),
    ("brown", [110.0, 70.0, 45.0]),
    ("beige", [210.0, 190.0, 155.0]),
    ("purple", [110.0, 60.0, 130.0]),
];

/// The index in `families` of the prototype nearest to `lab`.
fn nearest_family(families: &[String], lab: [f32; 3]) -> Option<usize> {
    families
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            FAMILY_PROTOTYPES
                .iter()
                .find(|(name, _)| name == f)
                .map(|(_, rgb)| (i, delta_e(lab, srgb_to_lab(*rgb))))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

fn same_colour_threshold() -> f32 {
    SAME_COLOUR
}

impl Catalog {
    /// What outfits need of every product, and the model they are of. A
    /// model switch while the catalog is read would pair one model's
    /// layout with the other's vectors: read again (three tries; switches
    /// are rare).
    pub fn load(db: &Db) -> OutfitResult<Catalog> {
        let mut tries = 0;
        loop {
            let model = db.model_fingerprint();
            let mut cat = Self::load_once(db)?;
            tries += 1;
            if tries == 3 || db.model_fingerprint() == model {
                cat.model = model;
                return Ok(cat);
            }
        }
    }

    fn load_once(db: &Db) -> OutfitResult<Catalog> {
        // No layout is no concept space; a damaged one is damage.
        let concepts = db.concept_layout().map_err(|e| match e {
            crate::ConceptError::Db(e) => OutfitError::Db(e),
            e => OutfitError::NoConceptSpace(e.to_string()),
        })?;
        let mut snap = db.snapshot(CONCEPT_SPACE)?;
        let layout = Layout::of(&concepts)?;
        let settings = db.outfit_settings()?;
        if snap.dim != layout.dim {
            return Err(OutfitError::NoConceptSpace(format!(
                "the concept vectors have {} dimensions, the stored layout {}",
                snap.dim, layout.dim
            )));
        }
        let n = snap.len();
        let mut cat = Catalog {
            model: None,
            ids: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            in_stock: Vec::with_capacity(n),
            category: Vec::with_capacity(n),
            categories: Vec::new(),
            by_category: Vec::new(),
            mcat: Vec::with_capacity(n),
            colour: Vec::with_capacity(n),
            colour_names: layout.colours.clone(),
            model_family_of: (0..layout.colours.len() as u16).collect(),
            colour_attribute: settings.colour_attribute.clone(),
            catalog_colour: Vec::with_capacity(n),
            lab: Vec::with_capacity(n),
            pattern: Vec::with_capacity(n),
            // Every row, as the snapshot holds them (moved at the end, not
            // copied: at 1M products, 0.8 GB).
            concept: Vec::new(),
            vis: Vec::with_capacity(n * layout.vis.len()),
            layout,
        };
        let groups = catalog_colour_groups(&snap.attrs, settings.colour_attribute.as_deref());
        let mut colour_index: HashMap<String, u16> = HashMap::new();
        for g in groups {
            // A group named like one of the model's families is that family;
            // one spelled so in another case (`WHITE`) keeps its name, and
            // is that family against products of a measured colour.
            let k = match cat.colour_names.iter().position(|c| *c == g) {
                Some(k) => k,
                None => {
                    let family = cat
                        .layout
                        .colours
                        .iter()
                        .position(|c| c.eq_ignore_ascii_case(&g));
                    cat.colour_names.push(g.clone());
                    cat.model_family_of
                        .push(family.map_or(NO_COLOUR, |f| f as u16));
                    cat.colour_names.len() - 1
                }
            };
            colour_index.insert(g, k as u16);
        }
        // Categories in name order, not the order products were stored in:
        // ties the rules break by category (which categories a cap keeps,
        // the order of equal rules) come out the same for any import order.
        cat.categories = snap
            .attrs
            .iter()
            .filter_map(|a| a.category.clone())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        cat.by_category = vec![Vec::new(); cat.categories.len()];
        let cat_index: HashMap<&str, u32> = cat
            .categories
            .iter()
            .enumerate()
            .map(|(k, c)| (c.as_str(), k as u32))
            .collect();
        for i in 0..n {
            let row = snap.row(i);
            let attrs = &snap.attrs[i];
            let c = match &attrs.category {
                Some(c) => {
                    let k = cat_index[c.as_str()];
                    cat.by_category[k as usize].push(i);
                    k
                }
                None => NO_CATEGORY,
            };
            cat.index.insert(snap.ids[i].clone(), i);
            cat.ids.push(snap.ids[i].clone());
            cat.in_stock.push(attrs.in_stock);
            cat.category.push(c);
            let l = &cat.layout;
            cat.mcat.push(argmax(&row[l.mcat.clone()]) as u16);
            let lab = attrs
                .extra
                .get(ATTR_COLOUR_LAB)
                .and_then(|s| serde_json::from_str::<[f32; 3]>(s).ok());
            // The family: the catalog's colour group when configured and
            // present, else from the measured colour (the nearest prototype
            // among the model's families), else the model's colour head.
            let catalog = settings
                .colour_attribute
                .as_deref()
                .and_then(|a| attrs.get(a))
                .and_then(|v| colour_index.get(v.trim()).copied());
            // (A model without a colour block names no family: the product
            // then matches others by measured shade only.)
            let family = catalog.unwrap_or_else(|| {
                lab.and_then(|lab| nearest_family(&cat.layout.colours, lab))
                    .or_else(|| (!l.colour.is_empty()).then(|| argmax(&row[l.colour.clone()])))
                    .map_or(NO_COLOUR, |f| f as u16)
            });
            cat.colour.push(family);
            cat.catalog_colour.push(catalog.is_some());
            cat.lab.push(lab);
            cat.pattern.push(argmax(&row[l.pattern.clone()]) as u8);
            let v = &row[l.vis.clone()];
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            cat.vis.extend(v.iter().map(|x| x / norm));
        }
        cat.concept = std::mem::take(&mut snap.data);
        // The snapshot reserved a row for every product, also those it
        // left out (no vector, or of another model).
        if cat.concept.capacity() > cat.concept.len() + cat.concept.len() / 4 {
            cat.concept.shrink_to_fit();
        }
        Ok(cat)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn dim(&self) -> usize {
        self.layout.dim
    }

    pub fn concept(&self, i: usize) -> &[f32] {
        let d = self.layout.dim;
        &self.concept[i * d..(i + 1) * d]
    }

    pub fn vis(&self, i: usize) -> &[f32] {
        let d = self.layout.vis.len();
        &self.vis[i * d..(i + 1) * d]
    }

    /// Cosine of the visual blocks ("look-alike").
    pub fn lookalike(&self, a: usize, b: usize) -> f32 {
        dot(self.vis(a), self.vis(b))
    }

    /// Colour similarity in 0..=1: from the measured colours when both have
    /// one (`1 − ΔE/`[`COLOUR_SCALE`], floored at 0), else the cosine of the
    /// model's colour blocks (1 for the same colour distribution). When both
    /// colours are the catalog's, the group decides the upper or lower half
    /// and the shade places it inside.
    pub fn colour_sim(&self, a: usize, b: usize) -> f32 {
        if self.catalog_colour[a] && self.catalog_colour[b] {
            let group = if self.colour[a] == self.colour[b] {
                0.5
            } else {
                0.0
            };
            return group + 0.5 * self.shade_sim(a, b);
        }
        self.shade_sim(a, b)
    }

    fn shade_sim(&self, a: usize, b: usize) -> f32 {
        if let Some(d) = self.delta_e(a, b) {
            return (1.0 - d / COLOUR_SCALE).max(0.0);
        }
        // The colour head's agreement (0 without one: nothing is known),
        // kept in 0..=1 for blocks stored by hand that are not unit length.
        let r = self.layout.colour.clone();
        let sim = dot(&self.concept(a)[r.clone()], &self.concept(b)[r]);
        if sim.is_nan() {
            0.0
        } else {
            sim.clamp(0.0, 1.0)
        }
    }

    /// ΔE76 between the measured colours, when both have one.
    pub fn delta_e(&self, a: usize, b: usize) -> Option<f32> {
        Some(delta_e(self.lab[a]?, self.lab[b]?))
    }

    /// The model's colour family of product `i`: its measured or predicted
    /// family, or the one its catalog group names ([`NO_COLOUR`] if none).
    fn model_family(&self, i: usize) -> u16 {
        self.model_family_of
            .get(usize::from(self.colour[i]))
            .copied()
            .unwrap_or(NO_COLOUR)
    }

    /// Whether two products are of one named family: one catalog group or
    /// model family, or a group and the model's family it names.
    pub fn same_family(&self, a: usize, b: usize) -> bool {
        (self.colour[a] != NO_COLOUR && self.colour[a] == self.colour[b])
            || (self.catalog_colour[a] != self.catalog_colour[b]
                && self.model_family(a) != NO_COLOUR
                && self.model_family(a) == self.model_family(b))
    }

    /// Whether two products share a colour family: the same catalog colour
    /// group when both have one (the retailer's taxonomy decides); the same
    /// family when one has a group that names one of the model's families
    /// (its label decides for it, whatever its pixels measure); else the
    /// same family, or colours at least [`SAME_COLOUR`] alike (one family can
    /// straddle two neighbouring prototypes or tags, e.g. black and
    /// charcoal).
    pub fn same_colour(&self, a: usize, b: usize) -> bool {
        match (self.catalog_colour[a], self.catalog_colour[b]) {
            (true, true) => return self.colour[a] == self.colour[b],
            (true, false) if self.model_family(a) != NO_COLOUR => return self.same_family(a, b),
            (false, true) if self.model_family(b) != NO_COLOUR => return self.same_family(a, b),
            _ => {}
        }
        (self.colour[a] != NO_COLOUR && self.colour[a] == self.colour[b])
            || self.shade_sim(a, b) >= same_colour_threshold()
    }

    pub fn colour_name(&self, i: usize) -> &str {
        self.colour_names
            .get(self.colour[i] as usize)
            .map_or("?", String::as_str)
    }

    /// Products of the same catalog category as `i` (empty when it has none).
    #[cfg(test)]
    pub fn same_category(&self, i: usize) -> &[usize] {
        match self.category[i] {
            NO_CATEGORY => &[],
            c => &self.by_category[c as usize],
        }
    }

    /// The products of the category named `category` (none for `None`, or
    /// a category no product has now).
    pub fn members(&self, category: Option<&str>) -> &[usize] {
        category
            .and_then(|c| self.category_id(c))
            .map_or(&[], |c| &self.by_category[c as usize])
    }

    /// The index of the category named `name`, if a product has it now.
    pub fn category_id(&self, name: &str) -> Option<u32> {
        self.categories
            .binary_search_by(|x| x.as_str().cmp(name))
            .ok()
            .map(|c| c as u32)
    }

    pub fn lookup(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }
}

/// The values of the catalog colour attribute used as colour groups: the
/// [`MAX_CATALOG_COLOURS`] most frequent, in name order (deterministic).
fn catalog_colour_groups(attrs: &[Arc<crate::Attributes>], attribute: Option<&str>) -> Vec<String> {
    let Some(attribute) = attribute else {
        return Vec::new();
    };
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in attrs {
        if let Some(v) = a.get(attribute).map(str::trim) {
            if !v.is_empty() {
                *counts.entry(v).or_default() += 1;
            }
        }
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count.truncate(MAX_CATALOG_COLOURS);
    let mut names: Vec<String> = by_count.into_iter().map(|(v, _)| v.to_string()).collect();
    names.sort();
    names
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product whose catalog group is one of the model's families is of
    /// that family against a product whose family was measured: its own
    /// pixels do not make a `Black` product a close shade of a white one.
    #[test]
    fn a_labelled_product_against_a_measured_one_compares_families() {
        let mut cat = random_catalog(1, 4, 1, 0.0, 0.0);
        let (black, white) = (0u16, 1u16);
        let whitish = Some([95.0, 0.0, 2.0]);
        // 0: labelled black, measured whitish; 1: measured white.
        cat.catalog_colour = vec![true, false, true, false];
        cat.colour = vec![black, white, white, black];
        assert!(cat.same_family(2, 1) && !cat.same_family(0, 1));
        cat.lab = vec![
            whitish,
            whitish,
            Some([20.0, 0.0, 0.0]),
            Some([20.0, 0.0, 0.0]),
        ];
        assert!(!cat.same_colour(0, 1) && !cat.same_colour(1, 0));
        // 2: labelled white, measured dark; 1: measured white.
        assert!(cat.same_colour(2, 1) && cat.same_colour(1, 2));
        assert!(!cat.same_colour(2, 3));
        // A group naming a family in another case (`BLACK`) is that family.
        let upper = cat.colour_names.len() as u16;
        cat.colour_names.push("C0".into());
        cat.model_family_of.push(black);
        cat.colour[0] = upper;
        assert!(!cat.same_colour(0, 1) && cat.same_colour(0, 3) && cat.same_family(3, 0));
        // A group the model has no family for is compared by shade.
        cat.colour[0] = cat.layout.colours.len() as u16;
        assert!(cat.same_colour(0, 1) && !cat.same_family(0, 1));
    }

    /// Colour similarity stays in 0..=1 for colour blocks stored by hand
    /// that are not unit length (one of 16 outweighed every other part of
    /// a substitute's score).
    #[test]
    fn colour_similarity_stays_in_its_range() {
        let mut cat = random_catalog(1, 3, 1, 0.0, 0.0);
        cat.lab = vec![None; 3];
        cat.concept = [
            [4.0, 0.0, 0.0, 0.0],
            [4.0, 0.0, 0.0, 0.0],
            [-4.0, 0.0, 0.0, 0.0],
        ]
        .concat();
        assert_eq!(cat.colour_sim(0, 1), 1.0);
        assert_eq!(cat.colour_sim(0, 2), 0.0);
    }
}
