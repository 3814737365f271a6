//! On-disk record format: `[VERSION: u8][bincode 2 standard-config serde payload]`.
//!
//! Trailing bytes after the payload are treated as corruption, so a record
//! can never silently decode from a prefix of damaged bytes.

use std::path::Path;

use bincode::config::{Config, Configuration};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{display_key, Error, Result};

/// A type stored in a [`Keyspace`](crate::Keyspace).
///
/// Records are encoded as one version byte followed by the bincode 2
/// (standard configuration) serde encoding of the value. Bump `VERSION`
/// whenever the serde shape of the type changes; records with a different
/// version byte are reported as [`Error::UnknownRecordVersion`].
pub trait Record: Serialize + DeserializeOwned {
    /// The version byte written in front of every encoded record.
    const VERSION: u8;
    /// Largest encoding `put` accepts ([`Error::RecordTooLarge`] above it):
    /// [`MAX_RECORD_BYTES`] unless the type raises it, up to
    /// [`LARGE_RECORD_BYTES`], for derived data that grows with the catalog.
    const MAX_BYTES: usize = MAX_RECORD_BYTES;
}

/// Largest encoded record of a type that keeps the default
/// [`Record::MAX_BYTES`]. Keeps the decode limit meaningful, so that a
/// damaged length prefix cannot request gigabytes.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Largest encoded record of any type (sled stores it as a blob file).
pub const LARGE_RECORD_BYTES: usize = 256 << 20;

/// Upper bound on memory bincode may claim while decoding one record. bincode
/// claims in-memory sizes (up to 16x the encoded size for a `u128` varint), so
/// this is 16x [`MAX_RECORD_BYTES`].
const DECODE_LIMIT: usize = 16 * MAX_RECORD_BYTES;

/// [`DECODE_LIMIT`] for types that raise [`Record::MAX_BYTES`]: 8x
/// [`LARGE_RECORD_BYTES`] (2 GiB, which a 32-bit `usize` still holds).
const LARGE_DECODE_LIMIT: usize = 8 * LARGE_RECORD_BYTES;

fn encode_config() -> impl Config {
    bincode::config::standard()
}

// Without a limit bincode allocates a claimed string/byte length before
// reading it, so a garbage prefix could abort the process on allocation.
fn decode_config() -> Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes `value` with its version byte.
pub(crate) fn encode<T: Record>(value: &T) -> Result<Vec<u8>> {
    let mut buf = vec![T::VERSION];
    bincode::serde::encode_into_std_write(value, &mut buf, encode_config())
        .map_err(|e| Error::Encode(e.to_string()))?;
    let max = T::MAX_BYTES.min(LARGE_RECORD_BYTES);
    if buf.len() > max {
        return Err(Error::RecordTooLarge {
            bytes: buf.len(),
            max,
        });
    }
    Ok(buf)
}

/// Decodes a record stored in `tree` under `key` of the store in `store`;
/// errors name all three.
pub(crate) fn decode<T: Record>(store: &Path, tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    decode_named(store, tree, || display_key(key), bytes)
}

/// Decodes a record from raw bytes, exactly as a keyspace would.
///
/// Errors name the tree and key as `"<bytes>"`. This is the entry point for
/// fuzzing the record codec: it must return an error, never panic, on any
/// input.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T> {
    decode_named(
        Path::new("<bytes>"),
        "<bytes>",
        || "<bytes>".to_owned(),
        bytes,
    )
}

fn decode_named<T: Record>(
    store: &Path,
    tree: &str,
    key: impl Fn() -> String,
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| Error::Corruption {
        store: store.to_path_buf(),
        tree: tree.to_owned(),
        key: key(),
        reason,
    };
    let Some((&version, payload)) = bytes.split_first() else {
        return Err(corrupt("empty record".to_owned()));
    };
    if version != T::VERSION {
        return Err(Error::UnknownRecordVersion {
            store: store.to_path_buf(),
            tree: tree.to_owned(),
            key: key(),
            found: version,
            supported: T::VERSION,
        });
    }
    // The larger limit only for a record that needs it: a damaged length
    // prefix in a small one must not claim gigabytes.
    let decoded = if T::MAX_BYTES > MAX_RECORD_BYTES && payload.len() > MAX_RECORD_BYTES {
        let config = bincode::config::standard().with_limit::<LARGE_DECODE_LIMIT>();
        bincode::serde::decode_from_slice::<T, _>(payload, config)
    } else {
        bincode::serde::decode_from_slice::<T, _>(payload, decode_config())
    };
    let (value, read) = decoded.map_err(|e| corrupt(format!("undecodable payload: {e}")))?;
    if read != payload.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after a {read}-byte payload",
            payload.len() - read
        )));
    }
    Ok(value)
}
