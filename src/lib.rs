//! Vitrine: an embedded search database for fashion catalogs.
//!
//! Products (attributes plus named vectors) are stored durably in sled; each
//! vector space has an HNSW index for nearest-neighbour search, with an exact
//! scan for selective filters. Everything lives in one folder and one process.
//!
//! ```
//! use vitrine::{Attributes, Db, Filter, SimilarTo};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Db::builder().vector_space("embedding", 3, vitrine::Metric::Cosine).open(dir.path())?;
//! db.insert("red-shirt", Attributes::new().category("shirts").price(25.0), [("embedding", vec![1.0, 0.1, 0.0])])?;
//! db.insert("pink-shirt", Attributes::new().category("shirts").price(45.0), [("embedding", vec![0.9, 0.3, 0.0])])?;
//! db.insert("blue-jeans", Attributes::new().category("jeans").price(60.0), [("embedding", vec![0.0, 0.2, 1.0])])?;
//!
//! // More like this, among shirts under 50.
//! let shirts = Filter::new().category_in(["shirts"]).price_range(..50.0);
//! let hits = db.similar(SimilarTo::Id("red-shirt"), 10, &shirts)?;
//! assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["pink-shirt"]);
//!
//! // Sold out: filtered from in-stock searches.
//! db.set_in_stock("pink-shirt", false)?;
//! let hits = db.similar(SimilarTo::Vector(&[1.0, 0.0, 0.0]), 10, &Filter::new().in_stock())?;
//! assert_eq!(hits[0].id, "red-shirt");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With images and the bundled model ([`Model::bundled`]), a database built
//! by [`DbBuilder::open_with_model`] and [`Db::import`] also answers:
//! annotation ([`annotate_with`]), concept queries ([`Db::query`], grammar in
//! [`ConceptQuery`]), preference-weighted similarity learned from feedback
//! ([`Db::feedback`], [`Db::similar_with_profile`]), user-defined tags
//! ([`Db::define_tag`]) and outfits ([`Db::store_outfit`],
//! [`Db::substitute`], [`Db::expand`], [`Db::cover`], [`Db::complete`]).
//! `examples/tour.rs` walks through each of them on the sample catalog:
//! `cargo run --release --example tour`.
//!
//! Durability is chosen per database with [`Durability`]: under
//! `Immediate` (the default) a write that returned `Ok` survives a crash or a
//! power loss; under `Periodic` it survives a crash of the process once the
//! next periodic write ran, and a power loss once [`Db::flush`] ran.
#![warn(missing_docs)]

mod concepts;
mod csv;
mod db;
mod error;
mod filter;
mod ingest;
mod model;
mod outfits;
mod precompute;
mod vision;

pub use concepts::{
    concept_key, concept_slug, ConceptError, ConceptGroup, ConceptLayout, ConceptQuery, ConceptRef,
    Contribution, Feedback, LikeTarget, Profile, QueryError, QueryErrorKind, QueryHit,
    QueryResults, TagMethod, UserTag, Vocabulary, AFFINITY_SHARE, HAND_SET_PRIOR_LIKES,
    LOOK_TIE_BREAK, MAX_EVENTS, MAX_QUERY_BYTES, MAX_TERMS, MAX_WEIGHT, PROFILE_EXACT_MAX,
    SKEWED_VISUAL_SHARE, USER_TAG_WEIGHT,
};
pub use csv::{
    csv_records, parse_csv, read_csv_file, CsvError, CsvRecord, CsvRecords, MAX_CSV_FIELDS,
};
pub use db::{
    has_hidden_character, Db, DbBuilder, Hit, OpenReport, Product, Search, SearchResults,
    SimilarTo, SpaceStats, VectorSpace, DEFAULT_DIM, DEFAULT_SPACE, MAX_ID_LEN,
};
pub use error::{Error, Result};
pub use filter::Filter;
pub use ingest::{
    annotate_with, infer_image, ImportFailure, ImportItem, ImportOptions, ImportProgress,
    ImportReport, ImportSource, IngestError, StoredOutputs, ANNOTATE_TOP_K, ATTR_CATEGORY,
    ATTR_CATEGORY_GIVEN, ATTR_CATEGORY_PROBS, ATTR_COLOUR_LAB, ATTR_CONCEPT, ATTR_MODEL,
    ATTR_SOURCE, ATTR_TAGS, ATTR_TAG_SCORES, IMAGE_EXTENSIONS,
};
pub use model::{
    Annotation, CategoryScore, ConceptBlock, Manifest, Model, ModelError, ModelOutput, TagGroup,
    TagScore, BUNDLED_ONNX, CONCEPT_SPACE, EMBEDDING_SPACE, MANIFEST_FILE, MODEL_DIR_ENV,
};
pub use outfits::{
    CompleteMethod, CoverOptions, CoverPlan, ExpandOptions, Expansion, Outfit, OutfitEngine,
    OutfitError, OutfitImport, OutfitResult, OutfitRules, OutfitSettings, OutfitSlot, PairRule,
    Relation, RelationKind, RuleKind, ScoredCandidate, SkippedTemplate, Substitute, Substitution,
    MAX_CATALOG_COLOURS, MAX_EXPANSIONS, MAX_OUTFIT_ID_LEN, MAX_OUTFIT_SLOTS, MAX_PALETTE,
};
pub use precompute::{
    Backend, PrecomputeError, PrecomputeOptions, PrecomputedSimilar, ScorerChoice, ScorerError,
    SimilarFileError, SimilarTable, MAX_SIMILAR_K, MAX_VARIANTS,
};
pub use vision::{
    decode_image, delta_e, prepare_image, prepare_rgb, srgb_to_lab, DecodeLimits, DecodedImage,
    Illumination, ImageError, PrepConfig, PreparedImage, WhiteBalance, AREA_SHRINK_MIN,
};
pub use vitrine_index::{
    Error as IndexError, HnswParams, LoadError as IndexLoadError, Metric, Plan, PlanHint,
    PlannerConfig, AUTO_GPU_MIN_WORK, GPU_MAX_K,
};
pub use vitrine_storage::{Attributes, Durability, Error as StorageError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
