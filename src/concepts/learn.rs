//! Learning from examples: user tags from example products, profiles from
//! feedback events.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ConceptError, ConceptLayout, Feedback, Profile, ProfilePrior, Vocabulary, USER_GROUP};
use crate::{Db, CONCEPT_SPACE};

/// How a user tag is learned from its examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TagMethod {
    /// The difference of the centroids of the examples and the contrast
    /// set, normalised. No parameters, robust with very few examples.
    #[default]
    Centroid,
    /// L2-regularised logistic regression (class-balanced, full-batch
    /// gradient descent, fixed 300 steps), its weight vector normalised.
    Logistic,
}

impl std::str::FromStr for TagMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "centroid" => Ok(TagMethod::Centroid),
            "logistic" => Ok(TagMethod::Logistic),
            o => Err(format!("unknown tag method '{o}' (centroid or logistic)")),
        }
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The mean row, summed in f64: a mean of copies of one row is that row.
fn mean(rows: &[Vec<f32>], dim: usize) -> Vec<f64> {
    let mut m = vec![0.0f64; dim];
    for r in rows {
        for (a, b) in m.iter_mut().zip(r) {
            *a += f64::from(*b);
        }
    }
    let n = rows.len().max(1) as f64;
    m.iter_mut().for_each(|x| *x /= n);
    m
}

/// The means of two sets closer than this, relative to the larger mean's
/// norm, do not tell the sets apart: a direction normalised out of their
/// difference would be rounding noise.
const INDISTINCT: f64 = 1e-4;

/// A unit direction separating `pos` from `contrast`; `None` when their
/// means are the same (identical examples on both sides, say). A linear
/// separator has nothing to start from then either: the logistic gradient
/// at zero is the difference of the means.
pub(crate) fn learn_tag(
    pos: &[Vec<f32>],
    contrast: &[Vec<f32>],
    method: TagMethod,
    dim: usize,
) -> Option<Vec<f32>> {
    let mp = mean(pos, dim);
    let mc = mean(contrast, dim);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff: Vec<f64> = mp.iter().zip(&mc).map(|(a, b)| a - b).collect();
    if norm(&diff) <= INDISTINCT * norm(&mp).max(norm(&mc)) {
        return None;
    }
    let mut t: Vec<f32> = if method == TagMethod::Logistic && !contrast.is_empty() {
        logistic(pos, contrast, dim)
    } else {
        diff.iter().map(|&x| x as f32).collect()
    };
    normalise(&mut t);
    // A direction that overflowed (examples stored by hand at absurd
    // scales) is no direction: NaN passes `!= 0`.
    (t.iter().all(|x| x.is_finite()) && t.iter().any(|x| *x != 0.0)).then_some(t)
}

fn logistic(pos: &[Vec<f32>], neg: &[Vec<f32>], dim: usize) -> Vec<f32> {
    const STEPS: usize = 300;
    const LR: f32 = 0.5;
    const L2: f32 = 1e-2;
    let mut w = vec![0.0f32; dim];
    let mut b = 0.0f32;
    // Class-balanced: each class carries half of the loss.
    let wp = 0.5 / pos.len() as f32;
    let wn = 0.5 / neg.len() as f32;
    let mut grad = vec![0.0f32; dim];
    for _ in 0..STEPS {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut gb = 0.0f32;
        for (rows, y, cw) in [(pos, 1.0f32, wp), (neg, 0.0, wn)] {
            for x in rows {
                let z: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + b;
                let p = 1.0 / (1.0 + (-z).exp());
                let e = cw * (p - y);
                for (g, xi) in grad.iter_mut().zip(x) {
                    *g += e * xi;
                }
                gb += e;
            }
        }
        for (wi, g) in w.iter_mut().zip(&grad) {
            *wi -= LR * (g + L2 * *wi);
        }
        b -= LR * gb;
    }
    w
}

/// Strength of the prior (equal weights, no affinities), in likes.
const PRIOR_LIKES: f32 = 2.0;
/// Strength of weights set by hand ([`Db::set_profile`]), in likes: a
/// merchandiser's "she only cares about colour" outweighs the first few
/// clicks.
pub const HAND_SET_PRIOR_LIKES: f32 = 8.0;
/// A concept's liked-minus-contrast mean must reach this to become an affinity.
const MIN_LIFT: f32 = 0.25;
/// Affinities kept per profile.
const MAX_AFFINITIES: usize = 8;
/// The least room `1 − B` a group's excess is measured in. A group on
/// which nearly the whole catalog agrees (gender, in a catalog of one)
/// has little room, and a few likes that all missed its rare outliers
/// fill it by chance: divided by the room itself, that chance read as
/// the strongest preference there is.
const MIN_ROOM: f32 = 0.25;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The concept vectors of a user's liked products as last seen in the
/// catalog, so that a like keeps counting after its product is deleted (a
/// season's turnover would otherwise reset her to the starting point at
/// her next event). Only for products in her events, and only while the
/// database's model is the one that made them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LikedVectors {
    model: Option<String>,
    vectors: BTreeMap<String, Vec<f32>>,
}

impl vitrine_storage::Record for LikedVectors {
    const VERSION: u8 = 1;
}

impl LikedVectors {
    /// Whether these vectors were made by `model` (others are never read).
    pub(crate) fn of_model(&self, model: Option<&str>) -> bool {
        self.model.as_deref() == model
    }
}

pub(crate) const LIKED_KS: &str = "profile_liked";

/// The vector of the product a feedback event names, read before the
/// side-write lock: a product deleted while the event waited for the lock
/// counts as it was, as one deleted after it does.
pub(crate) struct ReadBefore {
    pub id: String,
    pub z: Vec<f32>,
    /// The database's model when `z` was read (of it).
    pub model: Option<String>,
}

/// Where learning starts (see [`learn_profile`]).
pub(crate) struct Start {
    /// Per group, summing to 1 (or all 0: concept preferences only).
    pub weights: BTreeMap<String, f32>,
    /// What the starting weights count for, in likes.
    pub strength: f32,
    /// The hand-set affinities, scaled as the hand-set weights are.
    pub affinities: BTreeMap<String, f32>,
}

/// The starting point of learning: the weights set by hand, normalised to
/// sum to 1, and their affinities scaled alike; equal weights when none
/// were set.
pub(crate) fn starting_point(layout: &ConceptLayout, hand_set: Option<&ProfilePrior>) -> Start {
    let groups = layout.groups.len() as f32;
    let hand_total: f32 = hand_set.map_or(0.0, |p| {
        layout
            .groups
            .iter()
            .filter_map(|g| p.weights.get(&g.name))
            .sum()
    });
    // The prior's weight per group, summing to 1, and its strength in likes.
    let (prior, strength): (BTreeMap<String, f32>, f32) = match hand_set {
        Some(p) if hand_total > 0.0 => (
            layout
                .groups
                .iter()
                .map(|g| {
                    let w = p.weights.get(&g.name).copied().unwrap_or(0.0);
                    (g.name.clone(), w / hand_total)
                })
                .collect(),
            HAND_SET_PRIOR_LIKES,
        ),
        // Set by hand with concept preferences only: no group weighs
        // anything until likes say so (a skip changes nothing). (A prior
        // left with nothing at all, its tags deleted, is no prior.)
        Some(p) if !p.affinities.is_empty() => (
            layout
                .groups
                .iter()
                .map(|g| (g.name.clone(), 0.0))
                .collect(),
            HAND_SET_PRIOR_LIKES,
        ),
        _ => (
            layout
                .groups
                .iter()
                .map(|g| (g.name.clone(), 1.0 / groups.max(1.0)))
                .collect(),
            PRIOR_LIKES,
        ),
    };
    // Hand-set affinities keep their ratio to the hand-set weights, which
    // the prior scales to sum to 1, and to each other: one scale for all,
    // small enough that none passes the largest weight (a clamp of each
    // would make red at 200 and striped at 150 both 1000).
    let largest = hand_set.map_or(0.0, |p| {
        p.affinities.values().fold(0.0f32, |m, a| m.max(a.abs()))
    });
    // Finite even for a total of subnormal weights (0 × ∞ is NaN).
    let mut hand_scale = if hand_total > 0.0 {
        (1.0 / hand_total).min(f32::MAX)
    } else {
        1.0
    };
    if largest * hand_scale > super::MAX_WEIGHT {
        hand_scale = super::MAX_WEIGHT / largest;
    }
    let hand_affinities: BTreeMap<String, f32> = hand_set
        .map(|p| {
            p.affinities
                .iter()
                .map(|(c, a)| {
                    let a = a * hand_scale;
                    (c.clone(), a.clamp(-super::MAX_WEIGHT, super::MAX_WEIGHT))
                })
                .collect()
        })
        .unwrap_or_default();
    Start {
        weights: prior,
        strength,
        affinities: hand_affinities,
    }
}

/// Re-learns a profile from its events (see [`Db::feedback`]); `user` keys
/// the vectors kept of her liked products ([`LikedVectors`]), which this
/// updates.
///
/// For each group `g`: `c_g` is the normalised weighted centroid of the liked
/// products' `g` blocks; agreement `A_g` is their mean cosine to it; the
/// contrast `B_g` is the same for the skipped products, blended with the
/// catalog's mean (as [`PRIOR_LIKES`] pseudo-skips). The excess
/// `E_g = max(0, A_g − B_g) / max(1 − B_g, MIN_ROOM)` says how much more
/// the likes agree in `g` than chance would (see [`MIN_ROOM`]); weights are `E` normalised, shrunk towards
/// the prior: equal weights worth [`PRIOR_LIKES`] likes, or the weights set
/// by hand (normalised) worth [`HAND_SET_PRIOR_LIKES`]. Affinities are
/// concepts whose mean over the likes exceeds the contrast's by
/// [`MIN_LIFT`] (a user tag's excess counted at its weight, as a query
/// weighs it), up to [`MAX_AFFINITIES`]; hand-set affinities are kept
/// besides those, scaled as the hand-set weights are (all scaled down
/// together where one would pass the largest weight).
pub(crate) fn learn_profile(
    db: &Db,
    user: &[u8],
    vocab: &Vocabulary,
    events: Vec<(String, Feedback)>,
    hand_set: Option<&ProfilePrior>,
    read_before: Option<&ReadBefore>,
) -> Result<Profile, ConceptError> {
    let layout = vocab.layout();
    let Start {
        weights: prior,
        strength,
        affinities: hand_affinities,
    } = starting_point(layout, hand_set);
    let groups = layout.groups.len() as f32;
    // A product counts once, as its strongest event: liking one product
    // again and again says nothing about which group matters (every group
    // agrees with itself), and would outweigh the prior. A skip counts only
    // for a product never liked or bought.
    let mut like_w: BTreeMap<&str, f32> = BTreeMap::new();
    let mut skipped: BTreeSet<&str> = BTreeSet::new();
    for (id, f) in &events {
        let w = match f {
            Feedback::Like => 1.0,
            Feedback::Buy => 2.0,
            Feedback::Skip => {
                skipped.insert(id);
                continue;
            }
        };
        let e = like_w.entry(id).or_default();
        *e = e.max(w);
    }
    // Only vectors of the database's model: one left of the previous model
    // (an image a re-embedding could not read) is in another space. (One
    // stored with plain vectors says no model: the caller's.)
    let model = db.model_fingerprint();
    let vector = |id: &str| -> Result<Option<Vec<f32>>, crate::Error> {
        if !crate::db::of_model(db.attributes(id).as_ref(), model.as_deref()) {
            return Ok(None);
        }
        db.vector(CONCEPT_SPACE, id)
    };
    let kept_ks = db.side_keyspace::<LikedVectors>(LIKED_KS)?;
    let old = super::unless_damaged(kept_ks.get(user))?.unwrap_or_default();
    let mut kept = LikedVectors {
        model: model.clone(),
        vectors: BTreeMap::new(),
    };
    let mut likes = Vec::new();
    for (id, w) in &like_w {
        let z = match vector(id)? {
            Some(z) => Some(z),
            // Deleted since: as it was, if the model that made it still is
            // (read before the lock by this event, else kept with the
            // user's likes: the event's copy is the newer).
            None if db.attributes(id).is_none() => read_before
                .filter(|r| r.id == *id && r.model == model)
                .map(|r| r.z.clone())
                .or_else(|| {
                    (old.model == model)
                        .then(|| old.vectors.get(*id).cloned())
                        .flatten()
                }),
            None => None,
        };
        if let Some(z) = z {
            kept.vectors.insert(id.to_string(), z.clone());
            likes.push((z, *w));
        }
    }
    if kept != old {
        if kept.vectors.is_empty() {
            kept_ks.remove(user)?;
        } else {
            kept_ks.put(user, &kept)?;
        }
    }
    let mut skips = Vec::new();
    for id in skipped.iter().filter(|id| !like_w.contains_key(*id)) {
        if let Some(z) = vector(id)? {
            skips.push(z);
        }
    }
    let mut profile = Profile {
        weights: prior.clone(),
        affinities: hand_affinities.clone(),
        events: events.clone(),
    };
    let n: f32 = likes.iter().map(|(_, w)| w).sum();
    if likes.is_empty() {
        return Ok(profile);
    }
    let catalog = catalog_mean(db, layout.dim)?;
    let ns = skips.len() as f32;
    let blend =
        |skip_mean: f32, cat: f32| (ns * skip_mean + PRIOR_LIKES * cat) / (ns + PRIOR_LIKES);

    let mut excess = BTreeMap::new();
    for g in &layout.groups {
        let r = g.start..g.start + g.len;
        let mut c = vec![0.0f32; g.len];
        for (z, w) in &likes {
            for (a, b) in c.iter_mut().zip(&z[r.clone()]) {
                *a += w * b;
            }
        }
        normalise(&mut c);
        let agree = likes
            .iter()
            .map(|(z, w)| w * dot(&z[r.clone()], &c))
            .sum::<f32>()
            / n;
        let skip_mean = if skips.is_empty() {
            0.0
        } else {
            skips.iter().map(|z| dot(&z[r.clone()], &c)).sum::<f32>() / ns
        };
        // A group where (nearly) every product agrees (one tag, or a
        // catalog of one gender) has a contrast near 1 and tells products
        // apart hardly at all: its excess is small, not the most a group
        // can have.
        let contrast = blend(skip_mean, dot(&catalog[r.clone()], &c)).max(-1.0);
        excess.insert(
            g.name.clone(),
            (agree - contrast).max(0.0) / (1.0 - contrast).max(MIN_ROOM),
        );
    }
    let total: f32 = excess.values().sum();
    for (g, e) in &excess {
        let learned = if total > 0.0 { e / total } else { 1.0 / groups };
        let base = prior.get(g).copied().unwrap_or(0.0);
        profile
            .weights
            .insert(g.clone(), (strength * base + n * learned) / (strength + n));
    }

    // Affinities: model concepts and user tags.
    let confidence = n / (n + strength);
    // (concept, lift, how strongly it would move a query): a tag's
    // direction is scaled by its weight when the query is built, so its
    // affinity stores the plain lift and ranks by the scaled one.
    let mut lifts: Vec<(String, f32, f32)> = Vec::new();
    // Every lift is linear in the vectors: the means are taken once, and a
    // tag costs a dot product, not one per event.
    let mut like_mean = vec![0.0f32; layout.dim];
    for (z, w) in &likes {
        for (a, b) in like_mean.iter_mut().zip(z) {
            *a += w * b;
        }
    }
    like_mean.iter_mut().for_each(|x| *x /= n);
    let mut skip_mean = vec![0.0f32; layout.dim];
    if !skips.is_empty() {
        for z in &skips {
            for (a, b) in skip_mean.iter_mut().zip(z) {
                *a += b;
            }
        }
        skip_mean.iter_mut().for_each(|x| *x /= ns);
    }
    for g in layout.groups.iter().filter(|g| !g.concepts.is_empty()) {
        for (i, c) in g.concepts.iter().enumerate() {
            let d = g.start + i;
            let lift = like_mean[d] - blend(skip_mean[d], catalog[d]);
            lifts.push((format!("{}.{c}", g.name), lift, lift));
        }
    }
    // (A stale tag's direction is in another model's space.)
    for (name, tag) in vocab.tags().iter().filter(|(n, _)| !vocab.is_stale(n)) {
        let lift = dot(&tag.vector, &like_mean)
            - blend(dot(&tag.vector, &skip_mean), dot(&tag.vector, &catalog));
        lifts.push((format!("{USER_GROUP}.{name}"), lift, lift * tag.weight));
    }
    // A hand-set affinity is kept as set: its concept does not also take
    // one of the learned places.
    lifts.retain(|(c, _, effect)| *effect >= MIN_LIFT && !hand_affinities.contains_key(c));
    lifts.sort_by(|a, b| b.2.total_cmp(&a.2));
    lifts.truncate(MAX_AFFINITIES);
    profile.affinities = lifts
        .into_iter()
        .map(|(c, l, _)| {
            (
                c,
                (l * confidence).clamp(-super::MAX_WEIGHT, super::MAX_WEIGHT),
            )
        })
        .collect();
    profile.affinities.extend(hand_affinities);
    Ok(profile)
}

pub(super) const CATALOG_STATS: &str = "concept_stats";
/// Under a key of its own since version 2: an older build reads (and
/// recomputes) its own record instead of failing on this one.
const CATALOG_MEAN: &[u8] = b"catalog_mean.2";
/// Version 1's key, removed when the mean is forgotten.
const CATALOG_MEAN_V1: &[u8] = b"catalog_mean";

/// Forgets the cached catalog mean: it describes the vectors of the model
/// that made them ([`Db::adopt_model`] and [`Db::relearn_tags`] call this,
/// holding the side-write lock under which feedback computes and stores the
/// mean, so that a mean of a catalog half re-embedded is not stored after).
pub(crate) fn forget_catalog_mean_locked(db: &Db) -> Result<(), crate::Error> {
    let ks = db.side_keyspace::<CatalogMean>(CATALOG_STATS)?;
    ks.remove(CATALOG_MEAN)?;
    ks.remove(CATALOG_MEAN_V1)?;
    Ok(())
}

/// Cached mean concept vector of the catalog, recomputed when the catalog
/// (its products of the database's model) has changed size by more than
/// 5 %, when more than 5 % of it is new since (a season's turnover keeps
/// the size), or when its model changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CatalogMean {
    count: u64,
    /// The newest product's doc id then (ids only grow).
    last_doc: u64,
    mean: Vec<f32>,
}

impl vitrine_storage::Record for CatalogMean {
    /// 2: `last_doc` (and the key `catalog_mean.2`; version 1's record,
    /// under `catalog_mean`, is not read).
    const VERSION: u8 = 2;
}

fn catalog_mean(db: &Db, dim: usize) -> Result<Vec<f32>, ConceptError> {
    let ks = db.side_keyspace::<CatalogMean>(CATALOG_STATS)?;
    // The products the mean is over: those with a concept vector, of the
    // database's model (during a re-embedding, rewritten in place under
    // their doc ids, only this count moves).
    let vectors = db
        .space_stats()
        .iter()
        .find(|s| s.name == CONCEPT_SPACE)
        .map_or(db.len(), |s| s.vectors);
    let len = vectors.saturating_sub(db.other_model_count()) as u64;
    let cached = super::unless_damaged(ks.get(CATALOG_MEAN))?;
    let last_doc = db.last_doc();
    if let Some(c) = cached {
        let drift = c.count.abs_diff(len) as f64 / c.count.max(1) as f64;
        let new = db.docs_after(c.last_doc);
        let turnover = new as f64 / c.count.max(1) as f64;
        if drift <= 0.05 && turnover <= 0.05 && c.mean.len() == dim {
            return Ok(c.mean);
        }
    }
    let mean = db.space_mean(CONCEPT_SPACE)?;
    ks.put(
        CATALOG_MEAN,
        &CatalogMean {
            count: len,
            last_doc,
            mean: mean.clone(),
        },
    )?;
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, Metric};

    /// A catalog of one gender (3 % of it read as another), and customers
    /// who like 8 products at random: `gender` tells them apart from
    /// nothing, so it must not come out as what they care about. (Its
    /// contrast is near 1: the likes' agreement, 1 where no outlier was
    /// drawn, over `1 − B` ≈ 0.03 made its excess the largest possible.) A
    /// customer who likes one colour still learns colour.
    #[test]
    fn random_likes_in_a_catalog_of_one_gender_do_not_make_gender_matter() {
        use rand::{Rng, SeedableRng};
        let Ok(model) = crate::Model::bundled() else {
            eprintln!("SKIP: the bundled model is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder().model_spaces(&model).open(dir.path()).unwrap();
        db.check_model(&model).unwrap();
        let layout = crate::ConceptLayout::from_model(&model);
        let group = |name: &str| layout.groups.iter().find(|g| g.name == name).unwrap();
        let (gender, colour) = (group("gender"), group("colour"));
        let men = gender.concepts.iter().position(|c| c == "men").unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut colours = Vec::new();
        for i in 0..600 {
            let mut z = vec![0.0f32; layout.dim];
            let mut picked = 0;
            for g in &layout.groups {
                let block = &mut z[g.start..g.start + g.len];
                block.iter_mut().for_each(|x| *x = rng.gen_range(0.0..0.1));
                let k = if g.name == "gender" {
                    if rng.gen_bool(0.03) {
                        (men + 1) % g.len
                    } else {
                        men
                    }
                } else {
                    rng.gen_range(0..g.len)
                };
                if g.name == "colour" {
                    picked = k;
                }
                block[k] += rng.gen_range(0.6..1.0);
                let n = block.iter().map(|x| x * x).sum::<f32>().sqrt();
                block.iter_mut().for_each(|x| *x /= n);
            }
            colours.push(picked);
            let a = crate::Attributes::new().set(crate::ATTR_MODEL, model.fingerprint());
            db.upsert(&format!("p{i}"), a, [(CONCEPT_SPACE, z)])
                .unwrap();
        }
        let uniform = 1.0 / layout.groups.len() as f32;
        let (mut sum, mut top) = (0.0, 0);
        for user in 0..20 {
            let mut p = None;
            for _ in 0..8 {
                let id = format!("p{}", rng.gen_range(0..600));
                p = Some(
                    db.feedback(&format!("u{user}"), &id, Feedback::Like)
                        .unwrap(),
                );
            }
            let p = p.unwrap();
            sum += p.weights["gender"];
            top += usize::from(p.top_group().unwrap().0 == "gender");
        }
        let mean = sum / 20.0;
        eprintln!("gender: mean weight {mean:.3} (uniform {uniform:.3}), top for {top} of 20");
        assert!(
            mean <= uniform && top <= 2,
            "gender: mean weight {mean:.3} (uniform {uniform:.3}), top for {top} of 20"
        );
        let red = colours[0];
        for (i, _) in colours
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == red)
            .take(8)
        {
            db.feedback("red", &format!("p{i}"), Feedback::Like)
                .unwrap();
        }
        let p = db.profile("red").unwrap().unwrap();
        assert_eq!(p.top_group().unwrap().0, colour.name, "{:?}", p.weights);
    }

    /// A season's turnover keeps the catalog's size: the cached mean is
    /// taken again all the same (it was kept while the size held).
    #[test]
    fn the_catalog_mean_follows_a_turnover_of_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space(CONCEPT_SPACE, 4, Metric::InnerProduct)
            .open(dir.path())
            .unwrap();
        let put = |id: String, v: [f32; 4]| {
            db.insert(&id, Attributes::new(), [(CONCEPT_SPACE, v.to_vec())])
                .unwrap();
        };
        for i in 0..100 {
            put(format!("summer-{i}"), [1.0, 0.0, 0.0, 0.0]);
        }
        assert_eq!(catalog_mean(&db, 4).unwrap(), [1.0, 0.0, 0.0, 0.0]);
        // A few new products: the cache stands.
        for i in 0..3 {
            put(format!("early-{i}"), [0.0, 1.0, 0.0, 0.0]);
        }
        assert_eq!(catalog_mean(&db, 4).unwrap(), [1.0, 0.0, 0.0, 0.0]);
        for i in 0..50 {
            assert!(db.delete(&format!("summer-{i}")).unwrap());
            put(format!("winter-{i}"), [0.0, 1.0, 0.0, 0.0]);
        }
        let mean = catalog_mean(&db, 4).unwrap();
        assert!((mean[1] - 53.0 / 103.0).abs() < 1e-6, "{mean:?}");
    }

    /// Products a re-embedding has not reached are in the old model's
    /// space: the contrast of the new model's profiles leaves them out, as
    /// their likes and skips do.
    #[test]
    fn the_catalog_mean_is_over_the_database_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .vector_space(CONCEPT_SPACE, 2, Metric::InnerProduct)
            .open(dir.path())
            .unwrap();
        let put = |id: &str, model: &str, v: [f32; 2]| {
            let mut a = Attributes::new();
            a.extra.insert(crate::ATTR_MODEL.into(), model.into());
            db.insert(id, a, [(CONCEPT_SPACE, v.to_vec())]).unwrap();
        };
        put("old", "m1", [0.0, 1.0]);
        put("new-1", "m2", [1.0, 0.0]);
        put("new-2", "m2", [1.0, 0.0]);
        db.set_stored_model_fingerprint("m2").unwrap();
        assert_eq!(catalog_mean(&db, 2).unwrap(), [1.0, 0.0]);
    }
}
