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

/// The stored outfits, indexed over one catalog snapshot: per item, the
/// outfits it is in (an item's partners are their other items), in space
/// linear in the outfits' slots (a list of partners per item took the
/// square of each outfit's size: gigabytes for 200,000 outfits of 64).
pub(crate) struct Memory {
    /// Catalog indexes of the products of the stored outfits.
    items: Vec<usize>,
    /// Per item (parallel to `items`): the outfits it is in, in order, once
    /// per time it is listed.
    outfits_of: Vec<Vec<u32>>,
    /// The outfits of two products or more, as catalog indexes.
    outfits: Vec<Vec<usize>>,
    /// Visual vectors of `items`, row-major.
    vis: Vec<f32>,
}

impl Memory {
    pub fn build<S: AsRef<str>>(cat: &Catalog, outfits: &[Vec<S>]) -> Memory {
        let mut pos = vec![usize::MAX; cat.len()];
        let mut items = Vec::new();
        let mut outfits_of: Vec<Vec<u32>> = Vec::new();
        let mut kept: Vec<Vec<usize>> = Vec::new();
        for o in outfits {
            let idx: Vec<usize> = o.iter().filter_map(|p| cat.lookup(p.as_ref())).collect();
            if idx.len() < 2 {
                continue;
            }
            let at = kept.len() as u32;
            for &i in &idx {
                if pos[i] == usize::MAX {
                    pos[i] = items.len();
                    items.push(i);
                    outfits_of.push(Vec::new());
                }
                outfits_of[pos[i]].push(at);
            }
            kept.push(idx);
        }
        let mut vis = Vec::with_capacity(items.len() * cat.layout.vis.len());
        for &i in &items {
            vis.extend_from_slice(cat.vis(i));
        }
        Memory {
            items,
            outfits_of,
            outfits: kept,
            vis,
        }
    }

    /// The co-worn partners of stored item `m` (an index into `items`): the
    /// other items of its outfits, in outfit order.
    fn partners(&self, m: usize) -> impl Iterator<Item = usize> + '_ {
        let item = self.items[m];
        self.outfits_of[m]
            .iter()
            .flat_map(move |&o| self.outfits[o as usize].iter().copied())
            .filter(move |&j| j != item)
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
        // Ties are kept by product id, not by where the item was first
        // stored (which an unrelated outfit would change).
        let id = |k: usize| cat.ids[self.items[k]].as_str();
        sims.select_nth_unstable_by(k - 1, |a, b| {
            b.0.total_cmp(&a.0).then_with(|| id(a.1).cmp(id(b.1)))
        });
        sims.truncate(k);
        // In a fixed order too: the sums below, added in the order the
        // outfits were stored, could differ in their last bits.
        sims.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| id(a.1).cmp(id(b.1))));
        // Relative to the nearest: the weights' ratios are those of
        // exp(β(s − 1)), and the largest is 1, so their sum cannot
        // underflow for an item far from every stored one.
        let top = sims.iter().map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
        sims.into_iter()
            .map(|(s, k)| (k, (BETA_GIVEN * (s - top)).exp()))
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
            let wsum: f32 = nb.iter().map(|(_, w)| w).sum();
            for (k, &c) in cands.iter().enumerate() {
                let cc = cat.category[c];
                let mut acc = 0f32;
                for &(m, w) in &nb {
                    for b in self.partners(m) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outfits::features::random_catalog;

    /// Each stored item's partners are, in order, the other items of each
    /// outfit it is listed in: what a list of partners per item held.
    #[test]
    fn partners_are_the_other_items_of_each_outfit() {
        let cat = random_catalog(5, 200, 6, 0.0, 0.0);
        let mut state = 3u64;
        let mut pick = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as usize % cat.len()
        };
        let mut outfits: Vec<Vec<String>> = (0..60)
            .map(|o| (0..1 + o % 6).map(|_| cat.ids[pick()].clone()).collect())
            .collect();
        outfits.push(vec!["not in the catalog".into(), cat.ids[0].clone()]);
        let memory = Memory::build(&cat, &outfits);
        let mut expected: Vec<(usize, Vec<usize>)> = Vec::new();
        for o in &outfits {
            let idx: Vec<usize> = o.iter().filter_map(|p| cat.lookup(p)).collect();
            if idx.len() < 2 {
                continue;
            }
            for &i in &idx {
                let at = match expected.iter().position(|(item, _)| *item == i) {
                    Some(at) => at,
                    None => {
                        expected.push((i, Vec::new()));
                        expected.len() - 1
                    }
                };
                expected[at]
                    .1
                    .extend(idx.iter().copied().filter(|&j| j != i));
            }
        }
        assert_eq!(memory.items.len(), expected.len());
        for (m, (item, partners)) in expected.iter().enumerate() {
            assert_eq!(memory.items[m], *item);
            assert_eq!(memory.partners(m).collect::<Vec<_>>(), *partners, "{m}");
        }
    }

    /// A given item far from every stored one counts as much as a near one
    /// (its weights' sum underflowed, and its scores shrank ten-thousandfold),
    /// and neighbours tied at the last place are kept by product id, not
    /// by the order the outfits came in.
    #[test]
    fn far_given_items_and_tied_neighbours_score_alike() {
        let mut cat = random_catalog(4, 40, 6, 0.0, 0.0);
        cat.layout.vis = 0..2;
        cat.vis = (0..40)
            .flat_map(|i| [if i == 39 { -1.0 } else { 1.0 }, 0.0])
            .collect();
        // 36 stored items (more than the neighbours kept), all alike.
        let outfits: Vec<Vec<String>> = (0..18)
            .map(|o| vec![cat.ids[2 * o].clone(), cat.ids[2 * o + 1].clone()])
            .collect();
        let cands: Vec<usize> = (0..40).collect();
        let memory = Memory::build(&cat, &outfits);
        let near = memory.scores(&cat, &[38], &cands);
        let far = memory.scores(&cat, &[39], &cands);
        assert!(near.iter().any(|&x| x > 0.1), "{near:?}");
        for (n, f) in near.iter().zip(&far) {
            assert!((n - f).abs() <= 1e-6 * n.max(1.0), "{near:?}\n{far:?}");
        }
        let reversed: Vec<Vec<String>> = outfits.iter().rev().cloned().collect();
        let memory = Memory::build(&cat, &reversed);
        assert_eq!(memory.scores(&cat, &[38], &cands), near);
    }
}
