//! Kernel compatibility: how densely the stored outfits pair items that
//! look like `a` with items that look like `b`.
//!
//! `k(a, b) = Σ over co-worn pairs (a', b') of K(a, a') · K(b, b') / Σ_a'
//! K(a, a')`, with `K(x, y) = exp(β (cos(x, y) − 1))` on the visual
//! embedding, `b'` restricted to `b`'s catalog category and never `a`
//! itself; over several given items, the mean of their `k`. Normalised by
//! the neighbours' weight, each given item counts alike however far the
//! stored items are from it. It is a kernel density estimate
//! of the distribution of co-worn pairs; with a linear kernel it reduces to
//! the bilinear cross-covariance form of `rules.rs`, which is too smooth
//! to tell apart four items of one family (see the FITB table in
//! `docs/outfits/README.md`). For speed the sum over `a'` keeps the
//! `NEIGHBOURS` most similar stored items to `a` (an item of the stored
//! outfits is its own nearest neighbour, so its own partners count most).
//!
//! Nothing is fitted: "learning" is indexing the outfits, which is cheap to
//! do again. The engine's memory holds the outfits the rules were learned
//! from: one stored since counts once the rules are learned again.

use super::features::{dot, Catalog, NO_CATEGORY};

/// Stored items kept per given item.
const NEIGHBOURS: usize = 30;
/// Sharpness of the kernel on the given side.
const BETA_GIVEN: f32 = 20.0;
/// Sharpness of the kernel on the candidate side.
const BETA_CAND: f32 = 20.0;

/// The stored outfits, indexed over one catalog snapshot.
pub(crate) struct Memory {
    /// Catalog indexes of the products of the stored outfits.
    items: Vec<usize>,
    /// Per item (parallel to `items`): catalog indexes of its co-worn partners.
    partners: Vec<Vec<usize>>,
    /// Visual vectors of `items`, row-major.
    vis: Vec<f32>,
}

impl Memory {
    pub fn build<S: AsRef<str>>(cat: &Catalog, outfits: &[Vec<S>]) -> Memory {
        let mut pos = vec![usize::MAX; cat.len()];
        let mut items = Vec::new();
        let mut partners: Vec<Vec<usize>> = Vec::new();
        for o in outfits {
            let idx: Vec<usize> = o.iter().filter_map(|p| cat.lookup(p.as_ref())).collect();
            if idx.len() < 2 {
                continue;
            }
            for &i in &idx {
                if pos[i] == usize::MAX {
                    pos[i] = items.len();
                    items.push(i);
                    partners.push(Vec::new());
                }
                let list = &mut partners[pos[i]];
                list.extend(idx.iter().copied().filter(|&j| j != i));
            }
        }
        let mut vis = Vec::with_capacity(items.len() * cat.layout.vis.len());
        for &i in &items {
            vis.extend_from_slice(cat.vis(i));
        }
        Memory {
            items,
            partners,
            vis,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The stored items most like `g`, with their kernel weights.
    fn neighbours(&self, cat: &Catalog, g: usize) -> Vec<(usize, f32)> {
        let d = cat.layout.vis.len();
        let q = cat.vis(g);
        let mut sims: Vec<(f32, usize)> = self
            .vis
            .chunks_exact(d)
            .enumerate()
            .map(|(k, v)| (dot(q, v), k))
            .collect();
        let k = NEIGHBOURS.min(sims.len());
        if k == 0 {
            return Vec::new();
        }
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        sims.truncate(k);
        sims.into_iter()
            .map(|(s, k)| (k, (BETA_GIVEN * (s - 1.0)).exp()))
            .collect()
    }

    /// Kernel compatibility of every candidate with the given items (mean
    /// over the given items). Candidates may be of any categories.
    pub fn scores(&self, cat: &Catalog, given: &[usize], cands: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; cands.len()];
        if self.is_empty() || given.is_empty() {
            return out;
        }
        for &g in given {
            let nb = self.neighbours(cat, g);
            let wsum: f32 = nb.iter().map(|(_, w)| w).sum::<f32>().max(1e-12);
            for (k, &c) in cands.iter().enumerate() {
                let cc = cat.category[c];
                let mut acc = 0f32;
                for &(m, w) in &nb {
                    for &b in &self.partners[m] {
                        if b == g {
                            continue;
                        }
                        if cc != NO_CATEGORY && cat.category[b] != cc {
                            continue;
                        }
                        acc += w * (BETA_CAND * (cat.lookalike(c, b) - 1.0)).exp();
                    }
                }
                out[k] += acc / wsum;
            }
        }
        let n = given.len() as f32;
        out.iter_mut().for_each(|x| *x /= n);
        out
    }
}
