//! Errors, in two layers: mistakes in what the caller asked for, and problems
//! with the data or the machine underneath.

use std::path::PathBuf;

/// The result type of every fallible Vitrine call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Vitrine.
///
/// Variants up to [`Error::Image`] are the caller's to fix (see
/// [`Error::is_user_error`]); nothing stored changes when one is returned.
/// The rest come from the files or the machine; a corruption error names the
/// file, tree or key that is damaged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A product id was empty.
    #[error("product id must not be empty")]
    EmptyId,
    /// A product id was longer than [`crate::MAX_ID_LEN`] bytes.
    #[error("product id is {len} bytes long; the limit is {max}")]
    IdTooLong {
        /// Length of the rejected id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A product id stored anew holds a character that does not show
    /// ([`has_hidden_character`](crate::has_hidden_character): a line break,
    /// a tab, a zero-width space, a byte-order mark): no command line, CSV
    /// row or report line could name it, and it would read as another id.
    #[error(
        "product id '{id}' holds a character that does not show (a line break, a tab, a \
         zero-width space or a byte-order mark, say)"
    )]
    IdWithHiddenCharacter {
        /// The id, escaped (and cut at 80 characters).
        id: String,
    },
    /// `insert` was called for an id that is already stored.
    #[error("product '{id}' already exists (use upsert to replace it)")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// The product does not exist.
    #[error("product '{id}' not found")]
    NotFound {
        /// The id.
        id: String,
    },
    /// A space the database does not have: named by a vector given, a
    /// search ([`crate::Search::space`]) or a precompute
    /// ([`crate::PrecomputeOptions::space`]).
    #[error("unknown vector space '{name}' (known: {known})")]
    UnknownVector {
        /// The name given.
        name: String,
        /// The spaces the database has, comma separated.
        known: String,
    },
    /// A vector had the wrong number of dimensions.
    #[error("vector space '{space}' has {expected} dimensions, got {found}")]
    DimensionMismatch {
        /// The space.
        space: String,
        /// Its dimension.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A vector had NaN or infinite components, or was zero under cosine
    /// (or, as a query, under the inner product).
    #[error("invalid vector for space '{space}': {reason}")]
    InvalidVector {
        /// The space.
        space: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The product has no vector in the space a search asked for.
    #[error("product '{id}' has no '{space}' vector")]
    MissingVector {
        /// The product.
        id: String,
        /// The space.
        space: String,
    },
    /// An attribute value that cannot be stored (a NaN, infinite or
    /// negative price).
    #[error("invalid attribute '{key}': {reason}")]
    InvalidAttribute {
        /// The attribute.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The schema given to the builder disagrees with the stored one.
    #[error("schema mismatch: {0}")]
    SchemaMismatch(String),
    /// [`DbBuilder::create`](crate::DbBuilder::create) was off and the
    /// folder holds no database, or one whose first import stopped before
    /// it wrote the schema.
    #[error("{}: {reason}", path.display())]
    NoDatabase {
        /// The folder.
        path: PathBuf,
        /// Why it holds none.
        reason: String,
    },
    /// A builder setting or argument is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A path the caller named cannot be used: a backup's destination (or
    /// its folder) that cannot be made, or a database folder that is a
    /// file. The caller's to change.
    #[error("cannot use {}: {source}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A filter that can never mean what it says: a concept the database's
    /// model does not know, a user tag (those rank; they tag nothing), two
    /// concepts of an exclusive group both wanted, or
    /// [`crate::Filter::attr_eq`] on `price` or `in_stock` (they have their
    /// own conditions).
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// An image could not be decoded or prepared (corrupt, too large, too small…).
    #[error(transparent)]
    Image(#[from] crate::ImageError),

    /// A stored record or file is damaged. Names what is damaged.
    #[error("data corruption in {location}: {reason}")]
    Corruption {
        /// What is damaged: a file or folder (sled's own files: the
        /// database's `sled` folder alone), or a record, as
        /// `tree/key in <database>/sled`.
        location: String,
        /// What was wrong.
        reason: String,
    },
    /// An error from the storage layer ([`StorageError`](crate::StorageError)).
    #[error(transparent)]
    Storage(vitrine_storage::Error),
    /// An error from the index layer ([`IndexError`](crate::IndexError);
    /// an out-of-range setting or search argument is
    /// [`Error::InvalidConfig`] instead).
    #[error(transparent)]
    Index(vitrine_index::Error),
    /// An I/O error on a named file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A "more like this" from a product whose vectors in a model space are
    /// still the database's previous model's: a re-embedding has not
    /// reached it, so its vector cannot be compared with the others. Not
    /// the caller's error: re-embedding the product fixes it.
    #[error(
        "product '{id}' still has the previous model's '{space}' vector (a re-embedding \
         has not reached it): re-import its image with the database's model"
    )]
    VectorOfAnotherModel {
        /// The product.
        id: String,
        /// The space.
        space: String,
    },
}

impl Error {
    /// True when the database is open elsewhere (sled locks its files per
    /// open): in another process, or through another `Db` of this process
    /// that is still alive. A service starting while the old one still
    /// runs can retry.
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Storage(vitrine_storage::Error::Locked { .. }))
    }

    /// True when the database's files are damaged (or writes it
    /// acknowledged are missing): `DbBuilder::accept_data_loss` (`vitrine
    /// repair`) opens what is left, or a backup is restored.
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// True when a write failed with an I/O error in this process (a full
    /// disk), this one or an earlier one: writes, and opening the database
    /// again, are refused until the process restarts. Every write
    /// acknowledged before is kept under `Durability::Immediate`; under
    /// `Periodic`, those flushed.
    pub fn needs_restart(&self) -> bool {
        matches!(
            self,
            Error::Storage(
                vitrine_storage::Error::WriteFailed { .. }
                    | vitrine_storage::Error::FailedEarlier { .. }
                    | vitrine_storage::Error::HeldAfterIoError { .. }
            )
        )
    }

    /// The I/O error underneath, whichever layer met it (a product write,
    /// a checkpoint, an index save, a backup): match its
    /// [`kind`](std::io::Error::kind) for `StorageFull` and the like.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Error::Io { source, .. }
            | Error::BadPath { source, .. }
            | Error::Storage(
                vitrine_storage::Error::Io { source, .. }
                | vitrine_storage::Error::WriteFailed { source, .. },
            )
            | Error::Index(vitrine_index::Error::Io { source, .. }) => Some(source),
            _ => None,
        }
    }

    /// True when the caller can fix the error by changing the request.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::EmptyId
                | Error::IdTooLong { .. }
                | Error::IdWithHiddenCharacter { .. }
                | Error::AlreadyExists { .. }
                | Error::NotFound { .. }
                | Error::UnknownVector { .. }
                | Error::DimensionMismatch { .. }
                | Error::InvalidVector { .. }
                | Error::MissingVector { .. }
                | Error::InvalidAttribute { .. }
                | Error::SchemaMismatch(_)
                | Error::NoDatabase { .. }
                | Error::InvalidConfig(_)
                | Error::BadPath { .. }
                | Error::InvalidFilter(_)
                | Error::Image(_)
        )
    }
}

/// Whether reading a file the caller named failed for the caller's reason
/// (a wrong path, a file it may not read, a folder, a bad file), not the
/// machine's (file handles, memory, a failing disk).
pub(crate) fn callers_file(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{
        InvalidData, InvalidInput, IsADirectory, NotADirectory, NotFound, PermissionDenied,
    };
    // ENAMETOOLONG and ELOOP (a name too long, a loop of links): a path
    // the caller wrote. Their ErrorKinds are newer than the crate's MSRV.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if matches!(e.raw_os_error(), Some(36 | 40)) {
        return true;
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    if matches!(e.raw_os_error(), Some(63 | 62)) {
        return true;
    }
    matches!(
        e.kind(),
        NotFound | PermissionDenied | InvalidInput | InvalidData | IsADirectory | NotADirectory
    )
}

impl From<vitrine_index::Error> for Error {
    fn from(e: vitrine_index::Error) -> Self {
        match e {
            // Graph parameters, planner thresholds, `ef`: the caller's to fix.
            vitrine_index::Error::InvalidArgument { field, reason } => {
                Error::InvalidConfig(format!("{field}: {reason}"))
            }
            other => Error::Index(other),
        }
    }
}

impl From<vitrine_storage::Error> for Error {
    fn from(e: vitrine_storage::Error) -> Self {
        match e {
            vitrine_storage::Error::Corruption {
                store,
                tree,
                key,
                reason,
            } => Error::Corruption {
                location: format!("{tree}/{key} in {}", store.display()),
                reason,
            },
            vitrine_storage::Error::UnknownRecordVersion {
                store,
                tree,
                key,
                found,
                supported,
            } => Error::Corruption {
                location: format!("{tree}/{key} in {}", store.display()),
                reason: format!("unknown record version {found} (this build reads {supported})"),
            },
            vitrine_storage::Error::StoreDamaged { path, reason } => Error::Corruption {
                location: path.display().to_string(),
                reason,
            },
            other => Error::Storage(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operational_classifiers() {
        let path = PathBuf::from("/db/sled");
        let e = Error::from(vitrine_storage::Error::FailedEarlier { path: path.clone() });
        assert!(e.needs_restart() && !e.is_locked() && !e.is_user_error());
        let e = Error::from(vitrine_storage::Error::HeldAfterIoError { path: path.clone() });
        assert!(e.needs_restart());
        let full = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        // The write that failed says so itself, not only the next one.
        let e = Error::from(vitrine_storage::Error::WriteFailed {
            path: path.clone(),
            source: full(),
        });
        assert!(e.needs_restart() && !e.is_user_error());
        assert_eq!(
            e.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::StorageFull)
        );
        for e in [
            Error::from(vitrine_storage::Error::Io {
                path: path.clone(),
                source: full(),
            }),
            Error::from(vitrine_index::Error::Io {
                path: path.clone(),
                source: full(),
            }),
            Error::Io {
                path: path.clone(),
                source: full(),
            },
        ] {
            let kind = e.io_error().map(std::io::Error::kind);
            assert_eq!(kind, Some(std::io::ErrorKind::StorageFull), "{e}");
        }
        assert!(Error::NotFound { id: "x".into() }.io_error().is_none());
    }
}
