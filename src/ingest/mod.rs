//! Images in: [`Db::insert_image`], [`Db::annotate`] and the bulk
//! [`Db::import`] pipeline.

mod import;

use std::path::PathBuf;

pub use import::{
    ImportFailure, ImportItem, ImportOptions, ImportProgress, ImportReport, ImportSource,
    IMAGE_EXTENSIONS,
};

use crate::model::{Annotation, Model, ModelError, ModelOutput, CONCEPT_SPACE, EMBEDDING_SPACE};
use crate::{
    prepare_image, Attributes, Db, DbBuilder, Error, Filter, Hit, Illumination, ImageError,
    PrepConfig, Search, SimilarTo, WhiteBalance,
};
use serde::{Deserialize, Serialize};

/// Attribute: fingerprint of the model that produced the product's vectors.
pub const ATTR_MODEL: &str = "vitrine.model";
/// Attribute: the model's top-1 category.
pub const ATTR_CATEGORY: &str = "vitrine.category";
/// Attribute: present when the caller gave the product's category (at
/// import, or later: set it with the category, as `import --update` does);
/// a re-run of the model then keeps the category, even when it equals the
/// model's label.
pub const ATTR_CATEGORY_GIVEN: &str = "vitrine.category_given";
/// Attribute: the kept tags (see [`Model::annotation`]), comma separated.
pub const ATTR_TAGS: &str = "vitrine.tags";
/// Attribute: category probabilities, a JSON array in the manifest's order.
pub const ATTR_CATEGORY_PROBS: &str = "vitrine.category_probs";
/// Attribute: tag scores, a JSON array in the manifest's order.
pub const ATTR_TAG_SCORES: &str = "vitrine.tag_scores";
/// Attribute: the concept projection, a JSON array.
pub const ATTR_CONCEPT: &str = "vitrine.concept";
/// Attribute holding the product's dominant colour measured on its pixels,
/// CIELAB (D65) as a JSON array `[L, a, b]` (see
/// [`PreparedImage::dominant_colour`](crate::PreparedImage::dominant_colour));
/// absent when too few product pixels were found.
pub const ATTR_COLOUR_LAB: &str = "vitrine.colour_lab";
/// Attribute holding the absolute path of the image a product was imported
/// from (set by [`Db::import`]).
pub const ATTR_SOURCE: &str = "vitrine.source";

/// Categories reported by [`Db::annotate`].
pub const ANNOTATE_TOP_K: usize = 5;

/// Why an image could not be inserted, annotated or imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The image file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image could not be decoded or prepared.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image file could not be decoded or prepared (where the error
    /// would not otherwise say which file: a query's `like image`).
    #[error("{}: {source}", path.display())]
    ImageFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The database refused the product.
    #[error(transparent)]
    Db(#[from] Error),
    /// The model's outputs have other sizes (another taxonomy or embedding
    /// size) than the vectors this database holds: a database holds one
    /// set of sizes, so such a model needs a new database.
    #[error(
        "model '{model}' gives vectors of other sizes than this database holds ({reason}); \
         a model with another taxonomy or embedding size needs a new database: import the \
         catalog into one (profiles, user tags, feedback and outfits stay with this one)"
    )]
    ModelShape {
        /// Fingerprint of the model offered.
        model: String,
        /// Which space differs, and how.
        reason: String,
    },
    /// The database records no model, was not made with its spaces, and
    /// holds products none of which is of this model ([`Db::insert`]ed
    /// vectors into a plain [`Db::open`] database): the model's vectors
    /// would not compare with theirs. [`Db::adopt_model`] makes it the
    /// database's model when the vectors are its.
    #[error(
        "the database holds {products} products whose vectors no model recorded, and this \
         is model '{model}'; if they are its vectors, Db::adopt_model makes it the \
         database's model, else keep images in a database of their own"
    )]
    VectorsOfNoModel {
        /// How many products it holds.
        products: usize,
        /// Fingerprint of the model offered.
        model: String,
    },
    /// The database holds vectors of another model.
    #[error(
        "the database was built with model '{stored}' but this is model '{model}'; \
         re-embed (ImportOptions::reembed, Db::adopt_model) to switch"
    )]
    ModelMismatch {
        /// Fingerprint stored in the database.
        stored: String,
        /// Fingerprint of the model offered.
        model: String,
    },
    /// The same id appears twice in an import source.
    #[error("id '{id}' appears more than once in the import source")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// An import of stored products only
    /// ([`ImportOptions::present_only`](crate::ImportOptions::present_only))
    /// met an id that is not stored.
    #[error(
        "product '{id}' is not stored (deleted since?); this import only changes stored products"
    )]
    NotStored {
        /// The id.
        id: String,
    },
    /// An import that replaces stored products found another product
    /// under the id than the one it listed: deleted and stored again by
    /// another writer while it ran. That one is left as it is.
    #[error(
        "product '{id}' was deleted and stored again by another writer during the import; \
         not overwritten"
    )]
    StoredMeanwhile {
        /// The id.
        id: String,
    },
    /// A folder import met a file whose name is not UTF-8, so it cannot be
    /// a product id.
    #[error(
        "{}: the file name is not UTF-8 text and cannot be a product id \
         (rename it, or import a CSV that gives its id)",
        path.display()
    )]
    FileName {
        /// The file.
        path: PathBuf,
    },
    /// A folder import found nothing to import: no file has an image
    /// name ([`IMAGE_EXTENSIONS`]); subfolders are not read.
    #[error(
        "no images in {}: no file there is named .{} (subfolders are not read){}",
        dir.display(),
        IMAGE_EXTENSIONS.join("/"),
        ignored_note(*ignored)
    )]
    NoImages {
        /// The folder.
        dir: PathBuf,
        /// Entries that are not named as images.
        ignored: usize,
    },
    /// The system refused to start an import's threads (a process or
    /// thread limit); nothing was imported.
    #[error("cannot start the import's threads: {0}")]
    Threads(std::io::Error),
    /// A bug: preparing or running the model on this item panicked. The
    /// panic was caught, the item counted as failed, and the import went
    /// on; please report it with the image.
    #[error("internal error on this item (a caught panic: {reason}); please report it")]
    Internal {
        /// The panic's message.
        reason: String,
    },
}

impl IngestError {
    /// Whether the caller can fix it (a missing or bad image, a duplicate
    /// id, an empty folder, a database error that is the caller's, model
    /// files that are missing or damaged, as [`ModelError::is_user_error`]
    /// says); false when the model fails on an image, for another model's
    /// database, damaged data and the machine.
    pub fn is_user_error(&self) -> bool {
        match self {
            IngestError::Db(e) => e.is_user_error(),
            IngestError::Io { source, .. } => crate::error::callers_file(source),
            // The engine shapes the tensors: a wrong one is not the caller's.
            IngestError::Model(ModelError::InputShape { .. }) => false,
            IngestError::Model(e) => e.is_user_error(),
            IngestError::ModelMismatch { .. }
            | IngestError::VectorsOfNoModel { .. }
            | IngestError::ModelShape { .. }
            | IngestError::Internal { .. }
            | IngestError::Threads(_) => false,
            _ => true,
        }
    }
}

fn ignored_note(ignored: usize) -> String {
    match ignored {
        0 => String::new(),
        1 => "; 1 other entry was ignored".into(),
        n => format!("; {n} other entries were ignored"),
    }
}

/// The model outputs stored with a product, read back from its attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredOutputs {
    /// Category probabilities (4 decimals).
    pub category_probs: Vec<f32>,
    /// Tag scores (4 decimals).
    pub tag_scores: Vec<f32>,
    /// Concept projection (4 decimals).
    pub concept: Vec<f32>,
    /// Fingerprint of the model.
    pub model: String,
}

impl StoredOutputs {
    /// Parses the attributes written by the insert path; `None` when the
    /// product was not inserted from an image (or the values are damaged).
    pub fn from_attributes(attrs: &Attributes) -> Option<StoredOutputs> {
        let parse = |k: &str| serde_json::from_str::<Vec<f32>>(attrs.extra.get(k)?).ok();
        Some(StoredOutputs {
            category_probs: parse(ATTR_CATEGORY_PROBS)?,
            tag_scores: parse(ATTR_TAG_SCORES)?,
            concept: parse(ATTR_CONCEPT)?,
            model: attrs.extra.get(ATTR_MODEL)?.clone(),
        })
    }
}

fn json_array_1(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
    format!("[{}]", parts.join(","))
}

fn json_array(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 7 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let x = if x.is_finite() { *x } else { 0.0 };
        let t = format!("{x:.4}");
        // "-0.0000" and "0.0000" both read back as 0.
        s.push_str(if t == "-0.0000" { "0.0000" } else { &t });
    }
    s.push(']');
    s
}

impl DbBuilder {
    /// Declares the vector spaces an image database needs for `model`
    /// ([`Model::vector_spaces`]): `embedding` (cosine) and `concept`
    /// (inner product). Those already declared as the model needs them are
    /// left as they are; one of the same name and another size or metric
    /// makes the open fail.
    pub fn model_spaces(self, model: &Model) -> Self {
        model.vector_spaces().into_iter().fold(self, |b, s| {
            if b.declares(&s) {
                b
            } else {
                b.vector_space(s.name, s.dim, s.metric)
            }
        })
    }

    /// Opens (or creates) an image database for `model`: declares the
    /// model's spaces, opens, and checks the model ([`Db::check_model`]). A
    /// database whose vectors have other sizes than the model's is
    /// [`IngestError::ModelShape`] (it needs a new database); one built
    /// with another model of the same sizes is [`IngestError::ModelMismatch`];
    /// to switch models, open with [`DbBuilder::model_spaces`] and re-embed
    /// ([`ImportOptions::reembed`]).
    pub fn open_with_model(
        self,
        dir: impl AsRef<std::path::Path>,
        model: &Model,
    ) -> Result<Db, IngestError> {
        // An existing model database may hold spaces of the caller's besides
        // the model's, which then need not be declared; one without the
        // model's spaces (a plain library database) is still a mismatch,
        // found before the products are read.
        let dir = dir.as_ref();
        let b = if self.declares_spaces_besides(&model.vector_spaces()) {
            self
        } else {
            self.extra_stored_spaces_ok()
        };
        let db = match b.model_spaces(model).open(dir) {
            Ok(db) => db,
            Err(e @ Error::SchemaMismatch(_)) => {
                // Said plainly when it is the model's sizes that differ
                // (a retrained model), not as a list of spaces; read from
                // the stored schema alone, not a second open.
                if let Ok(Some(stored)) = Db::stored_spaces(dir) {
                    if let Some(e) = model_shape(model, &stored) {
                        return Err(e);
                    }
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        db.check_model(model)?;
        Ok(db)
    }
}

/// [`IngestError::ModelShape`] when a stored space of the model's has
/// another size than the model gives.
fn model_shape(model: &Model, stored: &[crate::VectorSpace]) -> Option<IngestError> {
    model.vector_spaces().into_iter().find_map(|want| {
        let s = stored
            .iter()
            .find(|s| s.name == want.name && s.dim != want.dim)?;
        Some(IngestError::ModelShape {
            model: model.fingerprint().to_string(),
            reason: format!(
                "vector space '{}' holds {} dimensions, the model gives {}",
                s.name, s.dim, want.dim
            ),
        })
    })
}

/// Everything the writer needs to store one image product.
pub(crate) struct Stored {
    pub(crate) attributes: Attributes,
    pub(crate) vectors: Vec<(&'static str, Vec<f32>)>,
}

impl Db {
    /// Checks that this database can hold `model`'s vectors: the embedding
    /// space exists with the model's dimension (and the concept space, when
    /// declared, too), and the stored model fingerprint is the model's. A
    /// database without a fingerprint adopts the model's: that is a durable
    /// write, even from a search. One without the model's concept space
    /// (a plain [`Db::open`]) that holds products none of which is of the
    /// model ([`Db::insert`]ed vectors) is [`IngestError::VectorsOfNoModel`].
    pub fn check_model(&self, model: &Model) -> Result<(), IngestError> {
        self.check_model_spaces(model)?;
        // (A database made with the model's spaces, concepts included, was
        // made for its outputs: it is claimed as before.)
        let made_for_a_model = self.spaces().iter().any(|s| s.name == CONCEPT_SPACE);
        if self.stored_model_fingerprint().is_none() && !made_for_a_model {
            let products = self.vectors_of_no_model(EMBEDDING_SPACE, model.fingerprint());
            if products > 0 {
                return Err(IngestError::VectorsOfNoModel {
                    products,
                    model: model.fingerprint().to_string(),
                });
            }
        }
        if let Some(stored) = self.claim_model_fingerprint(model.fingerprint())? {
            return Err(IngestError::ModelMismatch {
                stored,
                model: model.fingerprint().to_string(),
            });
        }
        Ok(self.store_concept_layout(model)?)
    }

    /// Makes `model` the database's model, whatever model it had, if its
    /// outputs have the sizes this database holds (else
    /// [`IngestError::ModelShape`]: another taxonomy or embedding size needs
    /// a new database). The caller takes on re-embedding the products (re-import them with
    /// [`ImportOptions::reembed`], which ends by learning the user tags
    /// again; or product by product, then [`Db::relearn_tags`]). Products
    /// still from the old model carry its fingerprint in [`ATTR_MODEL`].
    /// Profiles and hand-set starting points lose the weights and
    /// affinities the new model does not name (a starting point left with
    /// none is removed, a profile left with none is learned again from its
    /// events; a failure there is logged, not returned, and the next open
    /// tries again). User tags are stale ([`Db::stale_tags`]: queries
    /// naming them are refused) until they are learned again. The profiles
    /// are pruned under the lock feedback takes: with a million profiles,
    /// feedback waits for the switch, for seconds or more.
    pub fn adopt_model(&self, model: &Model) -> Result<(), IngestError> {
        self.check_model_spaces(model)?;
        // The switch waits for the writer under the side-write lock (the
        // order feedback takes them in too): waited for here first, so
        // that a long compaction or backup does not hold feedback and tag
        // edits back through that lock.
        self.wait_for_writer();
        {
            // The switch and its layout together: a check_model of the old
            // model running meanwhile does not write its layout after it,
            // nor a feedback its catalog mean.
            let _guard = self.side_write_lock();
            // Dropped after the switch: a tag learned meanwhile outside the
            // lock (define_tag) sees it, and learns again.
            let _changes = self.vocabulary_changes();
            let old = self.stored_model_fingerprint();
            if old.as_deref() != Some(model.fingerprint()) {
                crate::concepts::forget_catalog_mean_locked(self)?;
                if let Some(old) = &old {
                    self.attribute_tags_locked(old)?;
                }
            }
            // The layout, and a note that profiles are to be pruned, before
            // the switch: a kill after it leaves the pruning to the next
            // open (stored profiles naming what the new model dropped are
            // refused by profile searches until then).
            self.prepare_switch_locked(model)?;
            self.set_stored_model_fingerprint(model.fingerprint())?;
        }
        self.store_concept_layout(model)?;
        if let Err(e) = self.finish_switch() {
            tracing::warn!(error = %e, "profiles not pruned for the new model; the next open tries again");
        }
        Ok(())
    }

    /// The fingerprint of the model whose vectors the database holds, if any.
    pub fn model_fingerprint(&self) -> Option<String> {
        self.stored_model_fingerprint()
    }

    /// Runs `write`, a write of `model`'s outputs, while `model` is still
    /// the database's: one switched since [`Db::check_model`] (by
    /// [`Db::adopt_model`] in another thread) is
    /// [`IngestError::ModelMismatch`], and nothing is written.
    pub(crate) fn write_outputs_of<T>(
        &self,
        model: &Model,
        write: impl FnOnce() -> T,
    ) -> Result<T, IngestError> {
        self.write_model_output(model.fingerprint(), write)
            .map_err(|stored| IngestError::ModelMismatch {
                stored: stored.unwrap_or_else(|| "none".into()),
                model: model.fingerprint().to_string(),
            })
    }

    fn check_model_spaces(&self, model: &Model) -> Result<(), IngestError> {
        let spaces = self.spaces();
        if let Some(e) = model_shape(model, &spaces) {
            return Err(e);
        }
        for want in model.vector_spaces() {
            match spaces.iter().find(|s| s.name == want.name) {
                // Concept scores are sums of raw inner products (each
                // block's contribution); cosine would rescale them. The
                // embedding is unit length: either metric ranks it alike.
                Some(s) if s.name == CONCEPT_SPACE && s.metric != want.metric => {
                    return Err(IngestError::Db(Error::SchemaMismatch(format!(
                        "vector space '{}' uses {:?}, the model's concept space {:?} \
                         (create the database with DbBuilder::model_spaces)",
                        s.name, s.metric, want.metric
                    ))))
                }
                None if want.name == EMBEDDING_SPACE => {
                    return Err(IngestError::Db(Error::SchemaMismatch(format!(
                        "the database has no '{EMBEDDING_SPACE}' vector space \
                         (open it with DbBuilder::model_spaces)"
                    ))))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What to store for one model output: attributes merged with the
    /// model's annotations, and the vectors for the spaces this database has.
    pub(crate) fn image_record(
        &self,
        model: &Model,
        out: &ModelOutput,
        mut attrs: Attributes,
        colour: Option<[f32; 3]>,
    ) -> Stored {
        let ann = model.annotation(out, 1);
        if let Some(top) = ann.category.first() {
            if attrs.category.is_none() {
                attrs.category = Some(top.label.clone());
                attrs.extra.remove(ATTR_CATEGORY_GIVEN);
            } else {
                attrs.extra.insert(ATTR_CATEGORY_GIVEN.into(), "1".into());
            }
            attrs.extra.insert(ATTR_CATEGORY.into(), top.label.clone());
        }
        let tags: Vec<&str> = ann.tags.iter().map(|t| t.tag.as_str()).collect();
        attrs.extra.insert(ATTR_TAGS.into(), tags.join(","));
        attrs
            .extra
            .insert(ATTR_CATEGORY_PROBS.into(), json_array(&out.category_probs));
        attrs
            .extra
            .insert(ATTR_TAG_SCORES.into(), json_array(&out.tag_scores));
        attrs
            .extra
            .insert(ATTR_CONCEPT.into(), json_array(&out.concept));
        attrs
            .extra
            .insert(ATTR_MODEL.into(), model.fingerprint().to_string());
        match colour {
            Some(lab) => attrs
                .extra
                .insert(ATTR_COLOUR_LAB.into(), json_array_1(&lab)),
            None => attrs.extra.remove(ATTR_COLOUR_LAB),
        };
        let mut vectors = vec![(EMBEDDING_SPACE, out.embedding.clone())];
        if self.spaces().iter().any(|s| s.name == CONCEPT_SPACE) {
            vectors.push((CONCEPT_SPACE, model.concept_vector(out)));
        }
        Stored {
            attributes: attrs,
            vectors,
        }
    }

    /// Decodes, prepares (as the database's images are, see
    /// [`Db::prep_config`]), runs the bundled model ([`Model::bundled`]) and
    /// stores a new product. Fails with
    /// [`Error::AlreadyExists`] (inside [`IngestError::Db`]) if the id is taken.
    /// Returns the image's annotation.
    ///
    /// # What is stored
    ///
    /// An image becomes a product in four steps: decode and prepare
    /// ([`prepare_image`]), run the model ([`Model::infer`]), build the
    /// concept-space vector ([`Model::concept_vector`]), and store. What is stored:
    ///
    /// | what | where |
    /// |---|---|
    /// | visual embedding | vector space [`EMBEDDING_SPACE`] (cosine) |
    /// | concept-space vector | vector space [`CONCEPT_SPACE`] (inner product), when the database declares it |
    /// | category probabilities | attribute [`ATTR_CATEGORY_PROBS`] (JSON array, manifest order) |
    /// | tag scores | attribute [`ATTR_TAG_SCORES`] (JSON array, manifest order) |
    /// | concept projection | attribute [`ATTR_CONCEPT`] (JSON array) |
    /// | top-1 category, kept tags | attributes [`ATTR_CATEGORY`], [`ATTR_TAGS`]; `category` too when the caller left it unset |
    /// | the model's fingerprint | attribute [`ATTR_MODEL`], and the database meta |
    ///
    /// Why attributes and not more vector spaces: every vector space carries an
    /// HNSW graph that each insert updates, and nobody searches by raw category
    /// probabilities or tag scores (the concept-space vector already holds them,
    /// normalised per group); as compact JSON (4 decimals, about 0.8 kB per
    /// product) they are read back with [`StoredOutputs::from_attributes`].
    ///
    /// An image that shows nothing (an "image coming soon" frame of one
    /// colour) is stored like any other, with what the model reads in it:
    /// preparation cannot tell it from a white product on white (13 of the
    /// Mango set's 7,629 photos, all white or off-white clothes, hold no
    /// pixel that stands out from their background), so refusing or
    /// untagging it would refuse or untag those. Keep placeholders out of
    /// the import, or mark them (`in_stock = false`).
    ///
    /// The database remembers the fingerprint of the model that produced its
    /// vectors. Using a different model is [`IngestError::ModelMismatch`] unless
    /// the caller asks for re-embedding ([`ImportOptions::reembed`] or
    /// [`Db::adopt_model`]).
    ///
    /// Open an image database with the model's spaces:
    ///
    /// ```no_run
    /// use vitrine::{Attributes, Db, Model};
    /// let model = Model::bundled()?;
    /// let db = Db::builder().model_spaces(&model).open("catalog.vitrine")?;
    /// let bytes = std::fs::read("shirt.jpg")?;
    /// db.insert_image("sku-1", &bytes, Attributes::new().price(30.0))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert_image(
        &self,
        id: &str,
        bytes: &[u8],
        attrs: Attributes,
    ) -> Result<Annotation, IngestError> {
        let model = Model::bundled()?;
        let prep = self.prep_config()?;
        self.insert_image_with(&model, &prep, id, bytes, attrs, false)
    }

    /// [`Db::insert_image`] with an explicit model and preparation; `replace`
    /// makes it an upsert.
    pub fn insert_image_with(
        &self,
        model: &Model,
        prep: &PrepConfig,
        id: &str,
        bytes: &[u8],
        attrs: Attributes,
        replace: bool,
    ) -> Result<Annotation, IngestError> {
        self.check_model(model)?;
        let prepared = prepare_image(bytes, prep)?;
        let colour = prepared.dominant_colour();
        let out = model
            .infer(std::slice::from_ref(&prepared))?
            .pop()
            .ok_or_else(|| ModelError::Inference("no output for the image".into()))?;
        // The bytes name no file: a source recorded for an earlier photo
        // (the caller passing the stored attributes back) would be wrong.
        let mut attrs = attrs;
        attrs.extra.remove(ATTR_SOURCE);
        forget_model_category(&mut attrs);
        let stored = self.image_record(model, &out, attrs, colour);
        // The first image insert records its preparation, as a first import
        // does, so that later inserts and queries by image prepare alike:
        // before the product (a kill between them must not leave an image
        // product without its preparation, which an open takes for an older
        // build's), and taken back when the write is refused (a refused
        // image, above, records nothing).
        let mut recorded = false;
        if self.stored_prep()?.is_none() {
            let _guard = self.side_write_lock();
            if self.stored_prep()?.is_none() {
                self.set_prep_config(prep)?;
                recorded = true;
            }
        }
        let written = self.write_outputs_of(model, || {
            if replace {
                self.upsert(id, stored.attributes, stored.vectors)
            } else {
                self.insert(id, stored.attributes, stored.vectors)
            }
        });
        match &written {
            // Another writer's record may have been taken back since this
            // one saw it (its own write refused).
            Ok(Ok(())) if !recorded => self.record_prep_if_none(prep),
            Ok(Ok(())) => {}
            _ if recorded => self.take_back_prep(prep, None),
            _ => {}
        }
        written??;
        Ok(model.annotation(&out, ANNOTATE_TOP_K))
    }

    /// Records `prep` when no preparation is (under the side-write lock),
    /// after a write stored products with it: a failure is logged, not
    /// returned (the products are stored; the next image write tries
    /// again).
    pub(crate) fn record_prep_if_none(&self, prep: &PrepConfig) {
        let record = || -> Result<(), Error> {
            if self.stored_prep()?.is_none() {
                let _guard = self.side_write_lock();
                if self.stored_prep()?.is_none() {
                    self.set_prep_config(prep)?;
                }
            }
            Ok(())
        };
        if let Err(e) = record() {
            tracing::warn!(error = %e, "image preparation not recorded; the next image write tries again");
        }
    }

    /// Puts back `previous` in place of the record of `prep` that a write
    /// which stored nothing made: unless another writer recorded its own
    /// since, or an image product is stored (another writer's, prepared
    /// by it; a writer that stores one after this records it again).
    pub(crate) fn take_back_prep(&self, prep: &PrepConfig, previous: Option<&StoredPrep>) {
        let _guard = self.side_write_lock();
        if self.stored_prep().ok().flatten() == Some(StoredPrep::of(prep))
            && !self.any_product_has(ATTR_MODEL)
        {
            if let Err(e) = self.restore_prep(previous) {
                tracing::warn!(error = %e, "the preparation recorded by a write that stored nothing stays");
            }
        }
    }

    /// The `k` products whose visual embedding is closest to the image's,
    /// among those passing `filter` ("search by photo"). Checks the model
    /// first ([`Db::check_model`], which records it on a database that has
    /// none).
    pub fn search_by_image(
        &self,
        model: &Model,
        prep: &PrepConfig,
        bytes: &[u8],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, IngestError> {
        self.check_model(model)?;
        let out = infer_image(model, prep, bytes)?;
        let s = Search::new(SimilarTo::Vector(&out.embedding), k)
            .space(EMBEDDING_SPACE)
            .filter(filter);
        let hits = self.search(&s)?.hits;
        self.check_model_unchanged(model)?;
        Ok(hits)
    }

    /// [`IngestError::ModelMismatch`] when the database's model is no
    /// longer `model`: checked after a search by a vector `model` made,
    /// which a switch since the check (a re-embedding's first image) would
    /// have ranked among the other model's products, or found none.
    pub(crate) fn check_model_unchanged(&self, model: &Model) -> Result<(), IngestError> {
        match self.stored_model_fingerprint() {
            Some(fp) if fp == model.fingerprint() => Ok(()),
            stored => Err(IngestError::ModelMismatch {
                stored: stored.unwrap_or_else(|| "none".into()),
                model: model.fingerprint().to_string(),
            }),
        }
    }

    /// Category (top 5) and tags of an image, with the bundled model and
    /// the database's preparation ([`Db::prep_config`]). Nothing is stored.
    /// A database of another model is [`IngestError::ModelMismatch`]: its
    /// stored categories and tags are that model's, which the bundled
    /// model's would contradict.
    pub fn annotate(&self, bytes: &[u8]) -> Result<Annotation, IngestError> {
        let model = Model::bundled()?;
        if let Some(stored) = self
            .stored_model_fingerprint()
            .filter(|fp| fp != model.fingerprint())
        {
            return Err(IngestError::ModelMismatch {
                stored,
                model: model.fingerprint().to_string(),
            });
        }
        annotate_with(&model, &self.prep_config()?, bytes, ANNOTATE_TOP_K)
    }

    /// How the database's images are prepared: the recorded preparation
    /// ([`Db::recorded_prep_config`]), otherwise [`PrepConfig::catalog`]
    /// (without its area shrink when image products are stored: an older
    /// build, which recorded nothing, made them so). The first image insert
    /// or import records the preparation it used. [`Db::insert_image`], [`Db::annotate`],
    /// `like image` in queries and imports without an explicit
    /// [`ImportOptions::prep`] use it, so that every image of a catalog (the
    /// fpi set's squashed pixels, say) is seen the same way. The decode
    /// limits are not stored: they are the defaults.
    ///
    /// ```
    /// use vitrine::{Db, PrepConfig};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Db::open(dir.path())?;
    /// assert_eq!(db.prep_config()?, PrepConfig::catalog());
    /// let fpi = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);
    /// db.set_prep_config(&fpi)?;
    /// drop(db);
    /// let db = Db::open(dir.path())?;
    /// assert_eq!(db.prep_config()?.get_pixel_aspect(), 0.75);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prep_config(&self) -> Result<PrepConfig, Error> {
        Ok(match self.recorded_prep_config()? {
            Some(recorded) => recorded,
            // Image products but no record: an older build made them, before
            // the area shrink existed (this build records the preparation
            // of every first image insert or import).
            None if self.any_product_has(ATTR_MODEL) => PrepConfig::catalog().area_shrink(false),
            None => PrepConfig::catalog(),
        })
    }

    /// The recorded preparation: what [`Db::set_prep_config`] stored, or
    /// the one of the first image insert or [`Db::import`] that stored a
    /// product while none was recorded; an import into the empty database
    /// records its own whatever was recorded (an import that stores
    /// nothing leaves the record as it was). `None` when none of these ran
    /// (or the images were stored before preparations were recorded).
    pub fn recorded_prep_config(&self) -> Result<Option<PrepConfig>, Error> {
        Ok(self.stored_prep()?.map(|s| s.config()))
    }

    /// Records how the database's images are prepared (durably), replacing
    /// any earlier record. Products already stored keep the vectors of the
    /// preparation they were imported with; re-import them with
    /// [`ImportOptions::refresh`] to apply this one.
    pub fn set_prep_config(&self, prep: &PrepConfig) -> Result<(), Error> {
        self.side_keyspace::<StoredPrep>(PREP)?
            .put(PREP_KEY, &StoredPrep::of(prep))?;
        self.flush()
    }

    /// Puts the preparation record back as it was (`None`: no record).
    pub(crate) fn restore_prep(&self, previous: Option<&StoredPrep>) -> Result<(), Error> {
        let ks = self.side_keyspace::<StoredPrep>(PREP)?;
        match previous {
            Some(p) => ks.put(PREP_KEY, p)?,
            None => {
                ks.remove(PREP_KEY)?;
            }
        }
        self.flush()
    }

    pub(crate) fn stored_prep(&self) -> Result<Option<StoredPrep>, Error> {
        match self.side_keyspace::<StoredPrep>(PREP)?.get(PREP_KEY) {
            // Recorded before area_shrink existed: prepared without it.
            Err(vitrine_storage::Error::UnknownRecordVersion { found: 1, .. }) => Ok(self
                .side_keyspace::<StoredPrepV1>(PREP)?
                .get(PREP_KEY)?
                .map(|v1| StoredPrep {
                    pixel_aspect: v1.pixel_aspect,
                    crop: v1.crop,
                    illumination: v1.illumination,
                    area_shrink: false,
                })),
            r => Ok(r?),
        }
    }
}

const PREP: &str = "prep";
/// The side keyspaces of this module (see [`crate::db::SIDE_KEYSPACES`]).
pub(crate) const KEYSPACES: [&str; 1] = [PREP];
const PREP_KEY: &[u8] = b"prep";

/// [`PrepConfig`] as stored, without the decode limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredPrep {
    pixel_aspect: f64,
    crop: bool,
    illumination: StoredIllumination,
    area_shrink: bool,
}

/// The record before [`PrepConfig::area_shrink`] (version 1): its
/// databases were prepared without it, and keep that.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct StoredPrepV1 {
    pixel_aspect: f64,
    crop: bool,
    illumination: StoredIllumination,
}

impl vitrine_storage::Record for StoredPrepV1 {
    const VERSION: u8 = 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum StoredIllumination {
    Off,
    Always(StoredBalance),
    WhenNotPlain(StoredBalance),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum StoredBalance {
    GreyWorld,
    WhitePatch,
}

impl vitrine_storage::Record for StoredPrep {
    /// 2: `area_shrink` (a version-1 record reads as `false`).
    const VERSION: u8 = 2;
}

impl StoredPrep {
    pub(crate) fn of(prep: &PrepConfig) -> StoredPrep {
        let balance = |b| match b {
            WhiteBalance::GreyWorld => StoredBalance::GreyWorld,
            WhiteBalance::WhitePatch => StoredBalance::WhitePatch,
        };
        StoredPrep {
            pixel_aspect: prep.get_pixel_aspect(),
            crop: prep.get_crop(),
            illumination: match prep.get_illumination() {
                Illumination::Off => StoredIllumination::Off,
                Illumination::Always(b) => StoredIllumination::Always(balance(b)),
                Illumination::WhenNotPlain(b) => StoredIllumination::WhenNotPlain(balance(b)),
            },
            area_shrink: prep.get_area_shrink(),
        }
    }

    pub(crate) fn config(&self) -> PrepConfig {
        let balance = |b| match b {
            StoredBalance::GreyWorld => WhiteBalance::GreyWorld,
            StoredBalance::WhitePatch => WhiteBalance::WhitePatch,
        };
        let aspect = if self.pixel_aspect.is_finite() {
            self.pixel_aspect.clamp(0.01, 100.0)
        } else {
            1.0
        };
        PrepConfig::catalog()
            .pixel_aspect(aspect)
            .crop(self.crop)
            .illumination(match self.illumination {
                StoredIllumination::Off => Illumination::Off,
                StoredIllumination::Always(b) => Illumination::Always(balance(b)),
                StoredIllumination::WhenNotPlain(b) => Illumination::WhenNotPlain(balance(b)),
            })
            .area_shrink(self.area_shrink)
    }
}

/// Decodes, prepares and runs `model` on one image.
pub fn infer_image(
    model: &Model,
    prep: &PrepConfig,
    bytes: &[u8],
) -> Result<ModelOutput, IngestError> {
    let prepared = prepare_image(bytes, prep)?;
    Ok(model
        .infer(std::slice::from_ref(&prepared))?
        .pop()
        .ok_or_else(|| ModelError::Inference("no output for the image".into()))?)
}

/// Category top-`k` and tags of an image with any model and preparation.
/// Nothing is stored; no database is needed.
pub fn annotate_with(
    model: &Model,
    prep: &PrepConfig,
    bytes: &[u8],
    k: usize,
) -> Result<Annotation, IngestError> {
    let out = infer_image(model, prep, bytes)?;
    Ok(model.annotation(&out, k))
}

/// A category the model filled in (not the caller's, nor one changed since)
/// is dropped, so that a new photo's output fills it again.
pub(crate) fn forget_model_category(attrs: &mut Attributes) {
    if attrs.category.is_some()
        && !attrs.extra.contains_key(ATTR_CATEGORY_GIVEN)
        && attrs.category.as_deref() == attrs.extra.get(ATTR_CATEGORY).map(String::as_str)
    {
        attrs.category = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arrays_round_trip() {
        let s = json_array(&[0.5, -0.000_01, 1.0, f32::NAN]);
        assert_eq!(s, "[0.5000,0.0000,1.0000,0.0000]");
        let back: Vec<f32> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, vec![0.5, 0.0, 1.0, 0.0]);
        assert_eq!(json_array(&[]), "[]");
    }
}
