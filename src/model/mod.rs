//! The model runtime: an ONNX model plus its manifest, run with tract.
//!
//! The model contract (written by `training/export.py`, described in
//! `models/README.md`): input `input`, float32 NCHW `(batch, 3, 128, 96)` with
//! a dynamic batch axis, which the runtime fixes at 1 (one [`PreparedImage`]
//! per call is the fastest way tract runs it); outputs
//! `embedding` (L2-normalised), `category_logits` (softmax over the manifest's
//! categories), `tag_logits` (one sigmoid per tag, grouped in the manifest)
//! and `concept` (the L2-normalised concept projection).
//!
//! A [`Model`] is loaded from a directory ([`Model::from_dir`]), from two
//! files ([`Model::load`]), from bytes ([`Model::from_bytes`]) or, for the
//! model that ships with Vitrine, with [`Model::bundled`], which looks in
//! `$VITRINE_MODEL_DIR` when set and otherwise in the `models/` folder of the
//! source tree this crate was built from (`env!("CARGO_MANIFEST_DIR")/models`).
//! (The ONNX file is loaded at run time, not `include_bytes!`-ed: a build
//! does not need it, and a program that never touches images never pays for it.)
//!
//! Every model has a [`fingerprint`](Model::fingerprint) that the database
//! stores in its meta, so that vectors from two different models are never
//! mixed silently.

mod manifest;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tract_onnx::prelude::*;

pub use manifest::{Manifest, TagGroup};

use crate::{Metric, PreparedImage, VectorSpace};

/// File name of the bundled model.
pub const BUNDLED_ONNX: &str = "vitrine-fashion-v2.onnx";
/// File name of a model's manifest, next to the ONNX file.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Environment variable that overrides where [`Model::bundled`] looks.
pub const MODEL_DIR_ENV: &str = "VITRINE_MODEL_DIR";
/// Name of the visual-embedding vector space of an image database.
pub const EMBEDDING_SPACE: &str = "embedding";
/// Name of the concept-space vector space of an image database.
pub const CONCEPT_SPACE: &str = "concept";

/// A top category below this probability is reported as uncertain in its
/// annotation (often an image unlike the training photos).
const UNCERTAIN_BELOW: f32 = 0.5;

/// The model's output names, in the order the runtime asks tract for them.
const OUTPUTS: [&str; 4] = ["embedding", "category_logits", "tag_logits", "concept"];

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A model file does not exist.
    #[error(
        "model file {} not found (a model folder holds manifest.json and the .onnx file \
         it names; the bundled model's folder is $VITRINE_MODEL_DIR when set)",
        path.display()
    )]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A model file could not be read.
    #[error("cannot read model file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The ONNX file is not a model tract can load and optimise.
    #[error("corrupt or unsupported ONNX model {}: {reason}", path.display())]
    Corrupt {
        /// The file (`<bytes>` when loaded from memory).
        path: PathBuf,
        /// What tract reported.
        reason: String,
    },
    /// The manifest is not valid JSON or misses required fields.
    #[error("invalid model manifest {}: {reason}", path.display())]
    Manifest {
        /// The file (`<bytes>` when loaded from memory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest and the ONNX graph disagree (output missing, sizes differ).
    #[error("model and manifest disagree: {0}")]
    ManifestMismatch(String),
    /// A tensor given to inference is not of the input shape the model
    /// expects.
    #[error("wrong model input shape: expected {expected:?}, got {found:?}")]
    InputShape {
        /// Expected shape (per image, or NCHW).
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// tract failed while running the model.
    #[error("model inference failed: {0}")]
    Inference(String),
}

impl ModelError {
    /// Whether the caller can fix it: model files it named that are
    /// missing, unreadable for its reason, damaged or not a Vitrine model,
    /// or a tensor of the wrong shape; false when inference itself fails
    /// and for the machine's I/O errors.
    pub fn is_user_error(&self) -> bool {
        match self {
            ModelError::Io { source, .. } => crate::error::callers_file(source),
            ModelError::Inference(_) => false,
            _ => true,
        }
    }
}

/// What the model says about one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOutput {
    /// Visual embedding, L2-normalised.
    pub embedding: Vec<f32>,
    /// Raw category logits.
    pub category_logits: Vec<f32>,
    /// Category probabilities (softmax of the logits), in the manifest's order.
    pub category_probs: Vec<f32>,
    /// Raw tag logits.
    pub tag_logits: Vec<f32>,
    /// Tag scores (sigmoid of the logits), in the manifest's order.
    pub tag_scores: Vec<f32>,
    /// Concept projection, L2-normalised.
    pub concept: Vec<f32>,
}

/// One block of the concept-space vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConceptBlock {
    /// `"visual"`, `"category"`, or a tag group's name.
    pub name: String,
    /// Where the block sits in the concept-space vector.
    pub range: Range<usize>,
}

/// A category with its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryScore {
    /// Category label (the model's own).
    pub label: String,
    /// Probability.
    pub p: f32,
    /// Why: the head that produced it and its margin over the next label.
    pub why: String,
}

/// A tag with its score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TagScore {
    /// Full tag name, `"group.tag"`.
    pub tag: String,
    /// Sigmoid score.
    pub score: f32,
    /// Why: the concept group, the calibrated threshold it passed and, in an
    /// exclusive group, the runner-up it beat.
    pub why: String,
}

/// Category and tags of an image.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Annotation {
    /// The most likely categories, best first.
    pub category: Vec<CategoryScore>,
    /// Tags whose score reaches their calibrated threshold, best first; an
    /// exclusive group contributes at most its best tag.
    pub tags: Vec<TagScore>,
}

type Plan = TypedSimplePlan<TypedModel>;

/// A loaded model: the optimised tract plan plus its manifest. `Send + Sync`;
/// [`Model::infer`] takes `&self`, so one model serves many threads.
pub struct Model {
    plan: Plan,
    manifest: Manifest,
    fingerprint: String,
    embedding_dim: usize,
    blocks: Vec<ConceptBlock>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name())
            .field("fingerprint", &self.fingerprint)
            .field("embedding_dim", &self.embedding_dim)
            .field("categories", &self.manifest.categories().len())
            .field("tags", &self.manifest.tag_names().len())
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    // A device or a pipe named as a model file (`/dev/zero`) would be read
    // without end.
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() && !m.is_dir() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
    }
    std::fs::read(path).map_err(|source| {
        // A folder named where a file is (VITRINE_MODEL_DIR set to the
        // .onnx file) is a file not found, with the same hint.
        if matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ) {
            ModelError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

static BUNDLED: Mutex<Option<(PathBuf, Arc<Model>)>> = Mutex::new(None);

impl Model {
    /// Where [`Model::bundled`] looks: `$VITRINE_MODEL_DIR` when set and
    /// non-empty, else `<source tree of this crate>/models`, a path compiled
    /// in. A binary run on another machine (a container image, a `cargo
    /// install`) needs the variable, or the model embedded with
    /// [`Model::from_bytes`] and `include_bytes!`.
    pub fn bundled_dir() -> PathBuf {
        match std::env::var_os(MODEL_DIR_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")),
        }
    }

    /// The bundled model (see [`Model::bundled_dir`]), loaded once per process
    /// and shared.
    pub fn bundled() -> Result<Arc<Model>, ModelError> {
        let dir = Model::bundled_dir();
        let mut cache = BUNDLED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((d, m)) = cache.as_ref() {
            if *d == dir {
                return Ok(m.clone());
            }
        }
        let model = Arc::new(Model::from_dir(&dir)?);
        *cache = Some((dir, model.clone()));
        Ok(model)
    }

    /// Loads `dir/manifest.json` and the ONNX file it names (normally
    /// [`BUNDLED_ONNX`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Model, ModelError> {
        let dir = dir.as_ref();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = read_file(&manifest_path)?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(|reason| ModelError::Manifest {
            path: manifest_path.clone(),
            reason,
        })?;
        let onnx_path = dir.join(manifest.onnx_file());
        let onnx = read_file(&onnx_path)?;
        Model::build(&onnx, &onnx_path, manifest)
    }

    /// Loads an ONNX file and its manifest from two paths.
    pub fn load(
        onnx_path: impl AsRef<Path>,
        manifest_path: impl AsRef<Path>,
    ) -> Result<Model, ModelError> {
        let manifest_path = manifest_path.as_ref();
        let manifest =
            Manifest::parse(&read_file(manifest_path)?).map_err(|reason| ModelError::Manifest {
                path: manifest_path.to_path_buf(),
                reason,
            })?;
        let onnx = read_file(onnx_path.as_ref())?;
        Model::build(&onnx, onnx_path.as_ref(), manifest)
    }

    /// Loads a model from the bytes of its ONNX file and of its manifest.
    pub fn from_bytes(onnx: &[u8], manifest: &[u8]) -> Result<Model, ModelError> {
        let manifest = Manifest::parse(manifest).map_err(|reason| ModelError::Manifest {
            path: PathBuf::from("<bytes>"),
            reason,
        })?;
        Model::build(onnx, Path::new("<bytes>"), manifest)
    }

    fn build(onnx: &[u8], path: &Path, manifest: Manifest) -> Result<Model, ModelError> {
        // A disagreement names the ONNX file (the manifest is beside it,
        // or named by the caller).
        Model::build_unnamed(onnx, path, manifest).map_err(|e| match e {
            ModelError::ManifestMismatch(reason) => {
                ModelError::ManifestMismatch(format!("{}: {reason}", path.display()))
            }
            e => e,
        })
    }

    fn build_unnamed(onnx: &[u8], path: &Path, manifest: Manifest) -> Result<Model, ModelError> {
        let expected = [
            PreparedImage::CHANNELS,
            PreparedImage::HEIGHT,
            PreparedImage::WIDTH,
        ];
        // The model file's fault, named as such (build() adds its path): not
        // a wrong input passed to inference.
        if manifest.input_shape() != expected {
            return Err(ModelError::ManifestMismatch(format!(
                "the manifest's input shape is {:?}; this build prepares images as {expected:?}",
                manifest.input_shape()
            )));
        }
        let corrupt = |e: TractError| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        // A damaged file is refused before tract reads it: tract can panic
        // on some damage, and a flipped weight would load as another model.
        if let Some(want) = manifest.onnx_sha256() {
            use sha2::{Digest, Sha256};
            let got = format!("{:x}", Sha256::digest(onnx));
            if !got.eq_ignore_ascii_case(want) {
                return Err(ModelError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("its SHA-256 is {got}; the manifest says {want}"),
                });
            }
        }
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tract_onnx::onnx().model_for_read(&mut &onnx[..])
        }))
        .map_err(|_| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: "the ONNX reader panicked on it (a damaged file)".into(),
        })?;
        let mut model = read.map_err(|e| {
            // tract names this only in its message; the file is fine, its
            // weights are elsewhere.
            if format!("{e:#}").contains("external data") {
                ModelError::ManifestMismatch(format!(
                    "the ONNX graph {} keeps its weights in a separate file (external \
                     data); export it with the weights inline (torch.onnx.export(..., \
                     external_data=False)), so that one file holds the whole model",
                    path.display()
                ))
            } else {
                corrupt(e)
            }
        })?;
        model.set_output_names(OUTPUTS).map_err(|e| {
            ModelError::ManifestMismatch(format!(
                "the ONNX graph lacks one of the outputs {OUTPUTS:?}: {e:#}"
            ))
        })?;
        // The engine feeds one tensor of its own shape: a graph that takes
        // another number of inputs, or declares other image dimensions
        // (exported at another size), is the wrong graph for this manifest.
        if model.inputs.len() != 1 {
            return Err(ModelError::ManifestMismatch(format!(
                "the ONNX graph {} has {} inputs; the engine feeds it one image tensor",
                path.display(),
                model.inputs.len()
            )));
        }
        let fact = model.input_fact(0).map_err(corrupt)?;
        // The engine feeds float32: a graph that takes bytes (its
        // normalisation baked in) would run on normalised floats, silently.
        if let Some(dt) = tract_onnx::tract_hir::infer::Factoid::concretize(&fact.datum_type) {
            if dt != f32::datum_type() {
                return Err(ModelError::ManifestMismatch(format!(
                    "the ONNX graph {} takes {dt:?} input; the engine feeds it float32 \
                     images, prepared and normalised as the manifest states",
                    path.display()
                )));
            }
        }
        if !fact.shape.is_open() && fact.shape.dims().count() != 4 {
            return Err(ModelError::ManifestMismatch(format!(
                "the ONNX graph {} takes a tensor of rank {}; the engine feeds it \
                 (batch, channels, height, width)",
                path.display(),
                fact.shape.dims().count()
            )));
        }
        let declared: Vec<Option<i64>> = fact
            .shape
            .dims()
            .map(|d| {
                tract_onnx::tract_hir::infer::Factoid::concretize(d).and_then(|d| d.to_i64().ok())
            })
            .collect();
        let wanted = expected.iter().map(|&d| Some(d as i64));
        if declared.len() == 4
            && declared[1..]
                .iter()
                .zip(wanted)
                .any(|(got, want)| got.is_some() && *got != want)
        {
            return Err(ModelError::ManifestMismatch(format!(
                "the ONNX graph {} takes images of {:?} (channels, height, width); the \
                 manifest's input.shape and the engine's preparation are {expected:?}",
                path.display(),
                &declared[1..]
            )));
        }
        // The engine runs one image per call (and batches by calls): a graph
        // exported with a fixed batch of another size runs as batch 1 when
        // nothing in it holds that size; when something does, typing fails,
        // and the message says why.
        let fixed_batch = declared
            .first()
            .copied()
            .flatten()
            .filter(|&n| declared.len() == 4 && n != 1);
        let corrupt = |e: TractError| match fixed_batch {
            Some(n) => ModelError::ManifestMismatch(format!(
                "the ONNX graph {} was exported with a fixed batch of {n}, and does not run \
                 as one image per call ({e:#}); export it with a dynamic batch axis",
                path.display()
            )),
            None => corrupt(e),
        };
        let batch = model.symbols.sym("batch");
        let shape: TVec<TDim> = tvec![
            batch.to_dim(),
            expected[0].to_dim(),
            expected[1].to_dim(),
            expected[2].to_dim()
        ];
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .map_err(corrupt)?;
        // tract runs this graph fastest with every shape concrete, one image
        // per call: 11.5 ms per image on one core, against 16.6 ms (batch 1)
        // and 16.4 ms (batch 8) with a symbolic batch axis and 13.8 ms with a
        // concrete batch of 8 (`vitrine bench ingest`).
        let typed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model
                .into_typed()
                .and_then(|m| m.concretize_dims(&SymbolValues::default().with(&batch, 1)))
                .and_then(|m| m.into_optimized())
        }))
        .map_err(|_| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: "tract panicked while typing the graph (a damaged file)".into(),
        })?
        .map_err(corrupt)?;
        let mut dims = [0usize; 4];
        for (i, d) in dims.iter_mut().enumerate() {
            let fact = typed.output_fact(i).map_err(corrupt)?;
            if fact.datum_type != f32::datum_type() {
                return Err(ModelError::ManifestMismatch(format!(
                    "output '{}' is {:?}, expected f32",
                    OUTPUTS[i], fact.datum_type
                )));
            }
            if fact.rank() != 2 {
                return Err(ModelError::ManifestMismatch(format!(
                    "output '{}' has rank {}, expected 2 (batch, values)",
                    OUTPUTS[i],
                    fact.rank()
                )));
            }
            *d = fact.shape[1]
                .as_i64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    ModelError::ManifestMismatch(format!(
                        "output '{}' has a symbolic size {}",
                        OUTPUTS[i], fact.shape[1]
                    ))
                })?;
        }
        let [emb, ncat, ntag, ncon] = dims;
        let check = |what: &str, graph: usize, manifest: usize| {
            if graph == manifest {
                Ok(())
            } else {
                Err(ModelError::ManifestMismatch(format!(
                    "{what}: the ONNX graph has {graph}, the manifest {manifest}"
                )))
            }
        };
        check("categories", ncat, manifest.categories().len())?;
        check("tags", ntag, manifest.tag_names().len())?;
        check("concept dimension", ncon, manifest.concept_dim())?;
        if emb == 0 {
            return Err(ModelError::ManifestMismatch("empty embedding".into()));
        }
        let plan = typed.into_runnable().map_err(corrupt)?;

        let mut blocks = vec![
            ConceptBlock {
                name: "visual".into(),
                range: 0..emb,
            },
            ConceptBlock {
                name: "category".into(),
                range: emb..emb + ncat,
            },
        ];
        for g in manifest.groups() {
            let start = emb + ncat + g.range.start;
            blocks.push(ConceptBlock {
                name: g.name.clone(),
                range: start..start + g.range.len(),
            });
        }

        // The fingerprint covers the weights and everything of the manifest
        // that shapes stored vectors (category and tag order), not the
        // thresholds or the model card text.
        let mut h = crc32fast::Hasher::new();
        for c in manifest.categories() {
            h.update(c.as_bytes());
            h.update(b"\n");
        }
        h.update(b"\x00");
        for t in manifest.tag_names() {
            h.update(t.as_bytes());
            h.update(b"\n");
        }
        let fingerprint = format!(
            "{}:{}:{:08x}:{:08x}",
            manifest.name(),
            onnx.len(),
            crc32fast::hash(onnx),
            h.finalize()
        );
        Ok(Model {
            plan,
            manifest,
            fingerprint,
            embedding_dim: emb,
            blocks,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Identifies the model: name, ONNX size and checksum, and a checksum of
    /// the category and tag order. Stored in the database meta.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Dimension of the visual embedding.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// The blocks of the concept-space vector: `visual`, `category`, then one
    /// per tag group, each L2-normalised on its own.
    pub fn concept_blocks(&self) -> &[ConceptBlock] {
        &self.blocks
    }

    /// Dimension of the concept-space vector (the sum of the blocks).
    pub fn concept_space_dim(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.range.end)
    }

    /// The vector spaces an image database needs: [`EMBEDDING_SPACE`]
    /// (cosine) and [`CONCEPT_SPACE`] (inner product, so a query scaled per
    /// block gives a preference-weighted sum of per-group cosines).
    pub fn vector_spaces(&self) -> [VectorSpace; 2] {
        [
            VectorSpace {
                name: EMBEDDING_SPACE.into(),
                dim: self.embedding_dim,
                metric: Metric::Cosine,
            },
            VectorSpace {
                name: CONCEPT_SPACE.into(),
                dim: self.concept_space_dim(),
                metric: Metric::InnerProduct,
            },
        ]
    }

    /// Runs the model on prepared images. Returns one output per image, in
    /// order.
    pub fn infer(&self, images: &[PreparedImage]) -> Result<Vec<ModelOutput>, ModelError> {
        images.iter().map(|im| self.infer_one(im)).collect()
    }

    /// Runs the model on one prepared image.
    pub(crate) fn infer_one(&self, image: &PreparedImage) -> Result<ModelOutput, ModelError> {
        self.run_one(image.tensor())
    }

    /// Runs the model on an NCHW tensor of `n` images (`n × 3 × 128 × 96`
    /// values).
    pub fn infer_tensor(&self, nchw: &[f32], n: usize) -> Result<Vec<ModelOutput>, ModelError> {
        let per = PreparedImage::CHANNELS * PreparedImage::HEIGHT * PreparedImage::WIDTH;
        if n.checked_mul(per) != Some(nchw.len()) {
            return Err(ModelError::InputShape {
                expected: vec![
                    n,
                    PreparedImage::CHANNELS,
                    PreparedImage::HEIGHT,
                    PreparedImage::WIDTH,
                ],
                found: vec![nchw.len()],
            });
        }
        nchw.chunks(per).map(|x| self.run_one(x)).collect()
    }

    fn run_one(&self, data: &[f32]) -> Result<ModelOutput, ModelError> {
        let shape = [
            1,
            PreparedImage::CHANNELS,
            PreparedImage::HEIGHT,
            PreparedImage::WIDTH,
        ];
        if data.len() != shape.iter().product::<usize>() {
            return Err(ModelError::InputShape {
                expected: shape[1..].to_vec(),
                found: vec![data.len()],
            });
        }
        let inference = |e: TractError| ModelError::Inference(format!("{e:#}"));
        let input = Tensor::from_shape(&shape, data).map_err(inference)?;
        // tract is third-party code a file's values reach: a panic in it is
        // this image's failure, not the caller's (an import of 100k photos
        // would otherwise end, unreported, at the end).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.plan.run(tvec!(input.into()))
        }))
        .map_err(|_| ModelError::Inference("tract panicked on this input".into()))?
        .map_err(inference)?;
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(OUTPUTS.len());
        for (name, r) in OUTPUTS.iter().zip(result.iter()) {
            if r.shape().first() != Some(&1) {
                return Err(ModelError::Inference(format!(
                    "output '{name}' has shape {:?} for one image",
                    r.shape()
                )));
            }
            let values = r.as_slice::<f32>().map_err(inference)?;
            // A NaN would rank as the top category and be stored as 0.
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                return Err(ModelError::Inference(format!(
                    "output '{name}' value {i} is {} (the image may be degenerate, or the model damaged)",
                    values[i]
                )));
            }
            rows.push(values.to_vec());
        }
        let [embedding, category_logits, tag_logits, concept]: [Vec<f32>; 4] =
            rows.try_into().map_err(|_| {
                ModelError::Inference(format!(
                    "expected {} outputs, got {}",
                    OUTPUTS.len(),
                    result.len()
                ))
            })?;
        Ok(ModelOutput {
            embedding,
            category_probs: softmax(&category_logits),
            tag_scores: tag_logits.iter().map(|&x| sigmoid(x)).collect(),
            category_logits,
            tag_logits,
            concept,
        })
    }

    /// The concept-space vector of an output: `[visual | category | one block
    /// per tag group]`, each block L2-normalised (see
    /// [`Model::concept_blocks`]). The inner product of two such vectors is
    /// the sum of the per-block cosines.
    pub fn concept_vector(&self, out: &ModelOutput) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.concept_space_dim());
        v.extend_from_slice(&out.embedding);
        v.extend_from_slice(&out.category_probs);
        v.extend_from_slice(&out.tag_scores);
        for b in &self.blocks {
            if let Some(block) = v.get_mut(b.range.clone()) {
                normalise(block);
            }
        }
        v
    }

    /// Category top-`k` and tags of an output. A tag is kept when its score
    /// reaches its calibrated threshold; an exclusive group keeps at most its
    /// best tag.
    pub fn annotation(&self, out: &ModelOutput, k: usize) -> Annotation {
        let cats = self.manifest.categories();
        let mut order: Vec<usize> = (0..out.category_probs.len().min(cats.len())).collect();
        order.sort_by(|&a, &b| out.category_probs[b].total_cmp(&out.category_probs[a]));
        let category = order
            .iter()
            .take(k)
            .enumerate()
            .map(|(rank, &i)| {
                let next = order
                    .get(rank + 1)
                    .map(|&j| (&cats[j], out.category_probs[j]));
                let mut why = match next {
                    Some((label, p)) => format!(
                        "category head: {:.2} ahead of {label}",
                        out.category_probs[i] - p
                    ),
                    None => "category head".to_string(),
                };
                if rank == 0 && out.category_probs[i] < UNCERTAIN_BELOW {
                    why.push_str(
                        "; uncertain (under 0.5): the image may be unlike the model's training photos",
                    );
                }
                CategoryScore {
                    label: cats[i].clone(),
                    p: out.category_probs[i],
                    why,
                }
            })
            .collect();
        let names = self.manifest.tag_names();
        let thresholds = self.manifest.tag_thresholds();
        let mut tags = Vec::new();
        for g in self.manifest.groups() {
            let keep = |i: usize| out.tag_scores.get(i).is_some_and(|&s| s >= thresholds[i]);
            let mut ranked: Vec<usize> = g
                .range
                .clone()
                .filter(|&i| i < out.tag_scores.len())
                .collect();
            ranked.sort_by(|&a, &b| out.tag_scores[b].total_cmp(&out.tag_scores[a]));
            let kept: Vec<usize> = if g.exclusive {
                ranked
                    .first()
                    .copied()
                    .filter(|&i| keep(i))
                    .into_iter()
                    .collect()
            } else {
                ranked.iter().copied().filter(|&i| keep(i)).collect()
            };
            for i in kept {
                let mut why = format!(
                    "{} group{}: {:.2} >= threshold {:.2}",
                    g.name,
                    if g.exclusive { " (exclusive)" } else { "" },
                    out.tag_scores[i],
                    thresholds[i]
                );
                if g.exclusive {
                    if let Some(&j) = ranked.get(1) {
                        let short = names[j].rsplit('.').next().unwrap_or(&names[j]);
                        why.push_str(&format!(", ahead of {short} {:.2}", out.tag_scores[j]));
                    }
                }
                tags.push(TagScore {
                    tag: names[i].clone(),
                    score: out.tag_scores[i],
                    why,
                });
            }
        }
        tags.sort_by(|a, b| b.score.total_cmp(&a.score));
        Annotation { category, tags }
    }
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 1e-12 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Model>();
    }

    #[test]
    fn softmax_and_sigmoid() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(100.0) <= 1.0);
    }
}
