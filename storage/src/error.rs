//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout `vitrine-storage`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage layer.
///
/// Corruption variants always name where the damage is (a file, or a tree and
/// key) so an operator can find it without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The embedded sled database reported an error.
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),

    /// A stored record could not be decoded.
    #[error("corrupt record in tree {tree:?} at key {key} of {}: {reason}", store.display())]
    Corruption {
        /// The store's sled folder, or `"<bytes>"` for
        /// [`decode_record`](crate::decode_record).
        store: PathBuf,
        /// The sled tree (keyspace) holding the record, or `"<bytes>"`.
        tree: String,
        /// The key, as UTF-8 when printable, otherwise as hex; or `"<bytes>"`.
        key: String,
        /// What was wrong with the bytes.
        reason: String,
    },

    /// A stored record carries a version byte this build does not understand.
    #[error(
        "record in tree {tree:?} at key {key} of {} has version {found}, this build supports \
         {supported}",
        store.display()
    )]
    UnknownRecordVersion {
        /// The store's sled folder, or `"<bytes>"` for
        /// [`decode_record`](crate::decode_record).
        store: PathBuf,
        /// The sled tree (keyspace) holding the record, or `"<bytes>"`.
        tree: String,
        /// The key, as UTF-8 when printable, otherwise as hex; or `"<bytes>"`.
        key: String,
        /// The version byte found.
        found: u8,
        /// The version this build reads and writes.
        supported: u8,
    },

    /// The store is open elsewhere: another process, or another handle in
    /// this one that is still alive (sled locks its files per open).
    #[error(
        "{} is open elsewhere (another process, or a handle of this process still alive); \
         close it there first",
        path.display()
    )]
    Locked {
        /// The sled folder.
        path: PathBuf,
    },

    /// This process kept the store's files open after a write failed with
    /// an I/O error (closing sled then can hang); it is locked until the
    /// process exits.
    #[error(
        "{} is still held by this process after an earlier I/O error (disk full?); \
         restart the process to open it again",
        path.display()
    )]
    HeldAfterIoError {
        /// The sled folder.
        path: PathBuf,
    },

    /// A write or flush failed with an I/O error (disk full, read-only file
    /// system): it may or may not be stored, and from now on writes are
    /// refused ([`Error::FailedEarlier`]) until the process restarts.
    #[error(
        "a write to {} failed: {source}; writes are refused until the process restarts \
         (every write acknowledged before under Durability::Immediate is kept; under \
         Periodic, those flushed)",
        path.display()
    )]
    WriteFailed {
        /// The sled folder, or the file whose sync failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A write or flush failed with an I/O error earlier in this process
    /// (disk full, read-only file system): later ones are refused until the
    /// process restarts, because sled's state is then unknown.
    #[error(
        "a write to {} failed with an I/O error earlier (disk full?); restart the process \
         to write again (every write acknowledged under Durability::Immediate is kept; \
         under Periodic, those flushed)",
        path.display()
    )]
    FailedEarlier {
        /// The sled folder.
        path: PathBuf,
    },

    /// sled cannot open or read its files: they are damaged, or not
    /// sled's (a page that cannot be read names its record in `reason`).
    #[error("the sled store in {} is damaged or unreadable: {reason}", path.display())]
    StoreDamaged {
        /// The sled folder.
        path: PathBuf,
        /// What sled reported.
        reason: String,
    },

    /// A vector arena file is damaged or not an arena at all.
    #[error("corrupt vector arena {}: {reason}", path.display())]
    ArenaCorrupt {
        /// The arena file, or `"<bytes>"` when validating an in-memory buffer.
        path: PathBuf,
        /// What failed validation.
        reason: String,
    },

    /// The store was written by a newer version of Vitrine.
    #[error(
        "the store in {} has format version {found}, newer than the supported version {supported}",
        path.display()
    )]
    UnsupportedFormat {
        /// The sled folder.
        path: PathBuf,
        /// The format version found on disk.
        found: u32,
        /// The newest format version this build understands.
        supported: u32,
    },

    /// A value could not be encoded.
    #[error("encode error: {0}")]
    Encode(String),

    /// A record is larger than a record may be (the caller's to shorten:
    /// nothing was written).
    #[error("the record encodes to {bytes} bytes, more than the {max}-byte limit")]
    RecordTooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },

    /// The caller passed an argument the storage layer cannot accept
    /// (e.g. a vector whose length differs from the arena dimension).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The operation is not supported on this platform (e.g. memory-mapping
    /// little-endian arenas on a big-endian host).
    #[error("unsupported platform: {0}")]
    UnsupportedPlatform(&'static str),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arena(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::ArenaCorrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Renders a sled key for error messages: UTF-8 if printable, hex otherwise.
pub(crate) fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => {
            let mut out = String::with_capacity(2 + key.len() * 2);
            out.push_str("0x");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}
