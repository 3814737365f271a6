//! Error types.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by index operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vector or query has the wrong number of components.
    #[error("dimension mismatch: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Dimension of the index.
        expected: usize,
        /// Length of the vector that was passed.
        found: usize,
    },
    /// A vector contains NaN or infinite values, or (under
    /// [`Metric::InnerProduct`](crate::Metric::InnerProduct), where vectors
    /// are kept as given) its squared norm overflows `f32`.
    #[error("vector contains non-finite values or its squared norm overflows f32")]
    NonFinite,
    /// A zero vector was given under [`Metric::Cosine`](crate::Metric::Cosine), which cannot be normalised.
    #[error("zero vector cannot be normalised for cosine similarity")]
    ZeroVector,
    /// A configuration value or search argument is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Name of the offending field or argument.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// hnsw_rs reported an error (e.g. while dumping the graph).
    #[error("graph error: {0}")]
    Graph(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Errors returned by [`SpaceIndex::load`](crate::SpaceIndex::load).
///
/// `Missing` and `Stale` are expected after a crash or an unsaved change: the
/// caller should rebuild from its own vectors. The other variants mean the
/// files are damaged or do not belong to the given vectors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The index directory or its header file does not exist.
    #[error("index not found at {path}")]
    Missing {
        /// Path that was looked for.
        path: PathBuf,
    },
    /// The saved index belongs to another generation.
    #[error("stale index at {path}: generation {found}, expected {expected}")]
    Stale {
        /// Header file.
        path: PathBuf,
        /// Generation recorded in the header.
        found: u64,
        /// Generation the caller asked for.
        expected: u64,
    },
    /// A file is truncated, fails its checksum or is otherwise malformed.
    #[error("corrupt index file {path}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The saved index does not match the given [`FlatIndex`](crate::FlatIndex)
    /// (dimension, metric or document set).
    #[error("index at {path} does not match the vectors: {reason}")]
    Mismatch {
        /// Header file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// An I/O error other than "not found".
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The [`IndexConfig`](crate::IndexConfig) passed to `load` is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[source] Error),
}
