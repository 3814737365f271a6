//! Similarity metrics and vector validation.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::kernels;

/// How vectors are compared. Scores are similarities: higher is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity. Vectors and queries are L2-normalised on the way in,
    /// so the score is their dot product, in `[-1, 1]` up to f32 rounding
    /// (a vector against itself can score `1.0000001`).
    Cosine,
    /// Raw dot product; vectors are stored as given.
    ///
    /// The graph navigates by Euclidean distance, which orders candidates
    /// exactly like the dot product when stored norms are equal. ANN recall is
    /// therefore best when stored norms are similar, as with Vitrine's concept
    /// vectors made of L2-normalised blocks. Scores are always exact.
    InnerProduct,
}

impl Metric {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Metric::Cosine => 1,
            Metric::InnerProduct => 2,
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Metric::Cosine),
            2 => Some(Metric::InnerProduct),
            _ => None,
        }
    }

    /// Validates `v` against `dim` and applies the metric's input transform
    /// (unit length under cosine): the vector as the index stores it.
    pub fn prepare<'a>(self, dim: usize, v: &'a [f32]) -> Result<Cow<'a, [f32]>> {
        if v.len() != dim {
            return Err(Error::DimensionMismatch {
                expected: dim,
                found: v.len(),
            });
        }
        // Under cosine only the direction is kept: a large but finite
        // vector normalises (in f64) as well as a small one does.
        let norm_sq = match self {
            Metric::InnerProduct => checked_norm_sq(v)?,
            Metric::Cosine => finite_norm_sq(v)?,
        };
        match self {
            Metric::InnerProduct => Ok(Cow::Borrowed(v)),
            Metric::Cosine => {
                if norm_sq == 0.0 {
                    return Err(Error::ZeroVector);
                }
                let inv = 1.0 / norm_sq.sqrt();
                Ok(Cow::Owned(
                    v.iter().map(|&x| (f64::from(x) * inv) as f32).collect(),
                ))
            }
        }
    }

    /// Similarity of two prepared vectors.
    #[inline]
    pub(crate) fn score(self, a: &[f32], b: &[f32]) -> f32 {
        sanitize(kernels::dot(a, b))
    }
}

/// Maps NaN to -inf and -0.0 to 0.0 so that ordering is total and stable.
#[inline]
pub(crate) fn sanitize(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s + 0.0
    }
}

/// The squared norm of `v`, refused (`NonFinite`) when a component is not
/// finite or dot products with `v` could overflow to inf or NaN. In f64, so
/// that neither overflow nor underflow of the squares can fool it.
pub(crate) fn checked_norm_sq(v: &[f32]) -> Result<f64> {
    let norm_sq = finite_norm_sq(v)?;
    if !(norm_sq as f32).is_finite() {
        return Err(Error::NonFinite);
    }
    Ok(norm_sq)
}

/// The squared norm in f64 (which no f32 input overflows), refusing NaN and
/// infinite components.
fn finite_norm_sq(v: &[f32]) -> Result<f64> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite);
    }
    Ok(v.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
}
