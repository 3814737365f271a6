//! Vector indexes for Vitrine.
//!
//! - [`FlatIndex`]: exact store and brute-force scan with a SIMD dot product.
//! - [`HnswIndex`]: an HNSW graph (hnsw_rs) with tombstones for deletes.
//! - [`SpaceIndex`]: what the database uses: both of the above plus a planner
//!   that answers selective filters exactly and the rest through the graph,
//!   always re-scoring exactly, with crash-safe persistence of the graph.
//!
//! ```
//! use vitrine_index::{AllowSet, IndexConfig, Metric, Plan, SearchOptions, SpaceIndex, VectorIndex};
//!
//! let mut index = SpaceIndex::new(3, Metric::Cosine, IndexConfig::default())?;
//! index.upsert(1, &[1.0, 0.0, 0.0])?;
//! index.upsert(2, &[0.0, 1.0, 0.0])?;
//! index.upsert(3, &[1.0, 1.0, 0.0])?;
//!
//! let out = index.search(&[1.0, 0.1, 0.0], &SearchOptions::new(2), None)?;
//! assert_eq!(out.hits.iter().map(|h| h.doc).collect::<Vec<_>>(), vec![1, 3]);
//!
//! // Only documents 2 and 3 are allowed; a filter this small is scanned exactly.
//! let allow = AllowSet::from_unsorted(vec![3, 2]);
//! let out = index.search(&[1.0, 0.1, 0.0], &SearchOptions::new(1), Some(&allow))?;
//! assert_eq!(out.hits[0].doc, 3);
//! assert_eq!(out.plan, Plan::Exact);
//! # Ok::<(), vitrine_index::Error>(())
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod flat;
mod format;
mod graph;
mod hnsw_dump;
mod kernels;
mod metric;
mod scorer;
mod search;
mod space;

pub use config::{HnswParams, IndexConfig, PlannerConfig};
pub use error::{Error, LoadError, Result};
pub use flat::FlatIndex;
pub use format::{
    encode_index_header, parse_index_header, FileSum, HeaderError, IndexHeader, FORMAT_VERSION,
};
pub use graph::HnswIndex;
pub use kernels::dot_product;
pub use metric::Metric;
pub use scorer::*;
pub use search::{AllowSet, Hit, Plan, PlanHint, SearchOptions, SearchOutput, VectorIndex};
pub use space::{CompactedGraph, RetiredGraph, SpaceIndex};
