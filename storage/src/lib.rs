//! Vitrine's storage engine.
//!
//! - [`Store`]: a sled database holding named, typed [`Keyspace`]s of
//!   versioned [`Record`]s, with a configurable [`Durability`].
//! - The product data model ([`ProductRecord`], [`Attributes`]) and database
//!   [`Meta`].
//! - The vector arena ([`write_arena`], [`Arena`]): a checksummed,
//!   memory-mapped snapshot of one vector space, read once at open: the
//!   witness that storage lost no acknowledged write, and a cross-check of
//!   its vectors (searches use the index's memory). Sled stays the source
//!   of truth.
//!
//! Damaged bytes never panic: they surface as [`Error::Corruption`],
//! [`Error::UnknownRecordVersion`], [`Error::ArenaCorrupt`] or (sled's own
//! files) [`Error::StoreDamaged`], naming the tree and key, the file or
//! the folder.
//!
//! ```
//! use vitrine_storage::{write_arena, Arena, Attributes, ProductRecord, Store, StoreOptions};
//!
//! # fn main() -> vitrine_storage::Result<()> {
//! let dir = std::env::temp_dir().join(format!("vitrine-doctest-{}", std::process::id()));
//! let store = Store::open(&dir, StoreOptions::default())?;
//! let products = store.keyspace::<ProductRecord>("products")?;
//!
//! let shirt = ProductRecord {
//!     doc: store.generate_id()?,
//!     attrs: Attributes::new().brand("Acme").price(19.99).set("color", "blue"),
//!     vectors: vec![("image".into(), vec![0.6, 0.8])],
//! };
//! products.put(b"sku-1", &shirt)?;
//! assert_eq!(products.get(b"sku-1")?, Some(shirt.clone()));
//!
//! // Snapshot the "image" space into an arena and read it back.
//! let path = dir.join("image.arena");
//! write_arena(&path, 2, 1, [(shirt.doc, shirt.vector("image").unwrap())])?;
//! let arena = Arena::open(&path)?;
//! assert_eq!(arena.iter().collect::<Vec<_>>(), [(shirt.doc, &[0.6f32, 0.8][..])]);
//! # drop((products, store));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! `failpoints`: with `VITRINE_FAILPOINT=<name>`, the named point
//! (`storage::before_apply`, `storage::before_flush`, `arena::mid_write`)
//! runs the action installed with `set_failpoint_action` (a crash test's
//! child installs an abort), for crash-recovery tests.

#![deny(missing_docs)]

mod arena;
mod codec;
mod error;
mod failpoint;
#[cfg(feature = "failpoints")]
pub use failpoint::set_failpoint_action;
mod model;
mod store;

pub use arena::{open_arena_bytes, write_arena, Arena, ArenaView};
pub use codec::{decode_record, Record, LARGE_RECORD_BYTES, MAX_RECORD_BYTES};
pub use error::{Error, Result};
pub use model::{Attributes, Meta, ProductRecord, SpaceSpec, StoredMetric};
pub use store::{
    interrupted_swap, Batch, Durability, Encoded, Keyspace, Salvaged, Store, StoreOptions,
    WritesPaused, FORMAT_VERSION, SWAP_MARKER,
};
