//! Concepts: the named directions of the concept space, and what is built on
//! them — concept queries (see [`ConceptQuery`]), customer profiles learned
//! from feedback, and user-defined tags.
//!
//! A product's concept-space vector is `[visual | category | colour | usage |
//! season | gender | pattern]` (the bundled model's groups), each block
//! L2-normalised. A *concept* is one dimension of a tag or category block
//! (`colour.red`, `category.tshirts`): its affinity with a product is the
//! cosine between the product's block and that concept's one-hot direction.
//! A user tag (`user.<name>`) is a learned direction over the whole vector.
//!
//! Everything here is a linear function of the stored concept vector, so a
//! concept query, a profile and a user tag all become one query vector over
//! the `concept` space: one index (or one exact scan) serves them all.

mod learn;
mod query;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::{Db, Error, Filter, Model, Result, SimilarTo, CONCEPT_SPACE};

pub(crate) use learn::forget_catalog_mean_locked;
pub use learn::{TagMethod, HAND_SET_PRIOR_LIKES};
pub use query::{
    ConceptQuery, Contribution, LikeTarget, QueryError, QueryErrorKind, QueryHit, QueryResults,
    MAX_QUERY_BYTES, MAX_TERMS,
};

/// Default weight of a user-defined tag in queries and profiles: lower than a
/// model concept's 1.0, because a tag learned from a few examples is noisier.
pub const USER_TAG_WEIGHT: f32 = 0.5;

/// Prefix of user-defined tag concepts.
pub const USER_GROUP: &str = "user";
/// Words the query language reads as keywords: a tag group of a model's
/// manifest may not be named one (`like.x` would read as a `like` clause).
/// (Only the clause words and `and`: inside a `where`, a word followed by
/// a dot is read as a concept first, so `brand.nike` stays reachable.)
pub(crate) const QUERY_KEYWORDS: &[&str] = &[
    "find",
    "like",
    "where",
    "and",
    "limit",
    "offset",
    "min_score",
    "diverse",
    "profile",
];
/// The largest weight a query term, profile group, concept affinity (in
/// absolute value) or user tag may have.
pub const MAX_WEIGHT: f32 = 1000.0;

/// One block of the concept-space vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptGroup {
    /// `visual`, `category`, or a tag group (`colour`, `pattern`…).
    pub name: String,
    /// First dimension of the block.
    pub start: usize,
    /// Dimensions in the block.
    pub len: usize,
    /// At most one concept of the group applies (annotation keeps one).
    pub exclusive: bool,
    /// Concept names within the group (`red`, `tshirts`…), one per dimension;
    /// empty for the visual block, whose dimensions are not named.
    pub concepts: Vec<String>,
    /// The model's own labels for those concepts (`Tshirts`, `red`).
    pub labels: Vec<String>,
}

/// The layout of the concept space of a database's model: which dimension is
/// which concept. Stored in the database when it adopts a model, so that
/// concept queries, feedback and user tags work without loading the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptLayout {
    /// Dimension of the concept space.
    pub dim: usize,
    /// Blocks, in order.
    pub groups: Vec<ConceptGroup>,
}

impl vitrine_storage::Record for ConceptLayout {
    const VERSION: u8 = 1;
}

impl ConceptLayout {
    /// The blocks tile `0..dim` in order, and each names its dimensions.
    fn check(&self) -> std::result::Result<(), String> {
        let mut end = 0;
        for g in &self.groups {
            if g.start != end {
                return Err(format!(
                    "group '{}' does not follow the one before it",
                    g.name
                ));
            }
            if g.len == 0 {
                return Err(format!("group '{}' is empty", g.name));
            }
            if !(g.concepts.is_empty() || g.concepts.len() == g.len)
                || g.labels.len() != g.concepts.len()
            {
                return Err(format!(
                    "group '{}' names the wrong number of concepts",
                    g.name
                ));
            }
            end = g.start.saturating_add(g.len);
        }
        if end != self.dim {
            return Err(format!("the groups cover {end} of {} dimensions", self.dim));
        }
        Ok(())
    }
}

/// The form profiles store a `group.concept` name in: the group in lower
/// case, the concept as [`concept_slug`] writes it (`Colour.Light Blue` →
/// `colour.light_blue`), so that two spellings of one concept are one key.
///
/// ```
/// assert_eq!(vitrine::concept_key("Colour.Light Blue"), "colour.light_blue");
/// assert_eq!(vitrine::concept_key("user.90s"), "user.90s");
/// ```
pub fn concept_key(name: &str) -> String {
    match name.split_once('.') {
        Some((group, concept)) => format!("{}.{}", group.to_lowercase(), concept_slug(concept)),
        None => name.to_lowercase(),
    }
}

/// A concept name as written in queries: lower case, runs of anything but
/// letters and digits become one `_` (`Sports Shoes` → `sports_shoes`,
/// `Accessories (other)` → `accessories_other`). A slug is its own slug:
/// what a capital lowers to beyond letters and digits (the dot of `İ`) is
/// left out.
///
/// ```
/// use vitrine::concept_slug;
/// assert_eq!(concept_slug("Sports Shoes"), "sports_shoes");
/// assert_eq!(concept_slug("İstanbul Blue"), "istanbul_blue");
/// // Accents typed apart from their letter are the same name.
/// assert_eq!(concept_slug("E\u{301}te\u{301}"), "été");
/// for label in ["Sports Shoes", "İstanbul Blue", "  Ünïcödé -- Ørange!", "q\u{307}\u{323}"] {
///     assert_eq!(concept_slug(&concept_slug(label)), concept_slug(label));
/// }
/// ```
pub fn concept_slug(label: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    let mut s = String::with_capacity(label.len());
    // Composed first: `é` typed as `e` and an accent (macOS keyboards,
    // decomposed file names) is the same name.
    for c in label.nfc() {
        if c.is_alphanumeric() {
            s.extend(c.to_lowercase().filter(|l| l.is_alphanumeric()));
        } else if is_combining_mark(c) && s.chars().last().is_some_and(char::is_alphanumeric) {
            // One that composes with nothing still marks its letter.
            s.push(c);
        } else if !s.ends_with('_') && !s.is_empty() {
            s.push('_');
        }
    }
    while s.ends_with('_') {
        s.pop();
    }
    s
}

impl ConceptLayout {
    /// The layout of `model`'s concept space.
    pub fn from_model(model: &Model) -> ConceptLayout {
        let manifest = model.manifest();
        let groups = model
            .concept_blocks()
            .iter()
            .map(|b| {
                let (exclusive, labels): (bool, Vec<String>) = match b.name.as_str() {
                    "visual" => (false, Vec::new()),
                    "category" => (true, manifest.categories().to_vec()),
                    name => manifest
                        .groups()
                        .iter()
                        .find(|g| g.name == name)
                        .map(|g| (g.exclusive, g.tags.clone()))
                        .unwrap_or_default(),
                };
                ConceptGroup {
                    name: b.name.clone(),
                    start: b.range.start,
                    len: b.range.len(),
                    exclusive,
                    concepts: labels.iter().map(|l| concept_slug(l)).collect(),
                    labels,
                }
            })
            .collect();
        ConceptLayout {
            dim: model.concept_space_dim(),
            groups,
        }
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&ConceptGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The dimension of concept `group.concept`.
    pub fn concept_dim(&self, group: &str, concept: &str) -> Option<usize> {
        let g = self.group(group)?;
        g.concepts
            .iter()
            .position(|c| c == concept)
            .and_then(|i| g.start.checked_add(i))
    }

    /// Every model concept as `group.concept`, in layout order.
    pub fn concept_names(&self) -> Vec<String> {
        self.groups
            .iter()
            .flat_map(|g| g.concepts.iter().map(move |c| format!("{}.{c}", g.name)))
            .collect()
    }

    /// The concept at dimension `dim`, as `group.concept`.
    pub fn name_of(&self, dim: usize) -> Option<String> {
        let g = self
            .groups
            .iter()
            .find(|g| (g.start..g.start.saturating_add(g.len)).contains(&dim))?;
        g.concepts
            .get(dim - g.start)
            .map(|c| format!("{}.{c}", g.name))
    }
}

/// What a customer did with a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Feedback {
    /// Liked it.
    Like,
    /// Looked and moved on.
    Skip,
    /// Bought it (counts as two likes).
    ///
    /// A product counts once, as the strongest of its events: liking it
    /// again adds nothing, buying it after a like counts the buy, and a
    /// skip of a product liked or bought is ignored. To withdraw a like,
    /// [`Db::set_profile`] the starting point with the events to keep
    /// (stored, not learned from), then once more without events: that learns the
    /// profile again from them. When no event is kept,
    /// [`Db::delete_profile`], then set the starting point.
    Buy,
}

impl std::str::FromStr for Feedback {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "like" => Ok(Feedback::Like),
            "skip" => Ok(Feedback::Skip),
            "buy" => Ok(Feedback::Buy),
            other => Err(format!("unknown feedback '{other}' (like, skip or buy)")),
        }
    }
}

/// A customer's preferences: how much each concept group counts when
/// comparing products, and concepts she keeps choosing.
///
/// `similar` with a profile scores `Σ_g w_g · cos_g(query, x) + s · Σ_c a_c ·
/// affinity_c(x)` ([`Db::similar_with_profile`]), where `s` scales the
/// affinities down together when they could move a score by more than
/// [`AFFINITY_SHARE`] of the weights' sum: they re-rank lookalikes rather
/// than replace them. A profile without weights ranks by its affinities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Weight per group (`visual`, `category`, `colour`…); groups not listed
    /// weigh 0. Stored weights sum to 1 (less when the profile was set by
    /// hand with concept preferences only: those weights start at 0; a
    /// profile an older build stored as set by hand keeps its scale until
    /// its next event).
    pub weights: BTreeMap<String, f32>,
    /// Concept affinities (`colour.red` → 0.6, `user.superfunky` → 0.3).
    pub affinities: BTreeMap<String, f32>,
    /// Feedback events the profile was learned from, oldest first (at most
    /// [`MAX_EVENTS`]).
    pub events: Vec<(String, Feedback)>,
}

impl vitrine_storage::Record for Profile {
    const VERSION: u8 = 1;
}

impl Profile {
    /// The profile without its events, and with its affinities named as
    /// [`concept_key`] writes them,
    /// one key per concept, as learning and tag deletion name it (of two
    /// spellings of one concept, the later in key order wins).
    fn keyed(&self) -> Profile {
        Profile {
            weights: self.weights.clone(),
            affinities: self
                .affinities
                .iter()
                .map(|(c, w)| (concept_key(c), *w))
                .collect(),
            events: Vec::new(),
        }
    }
}

/// A tag's examples, each once, in the order given.
fn each_once<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| seen.insert(*id))
        .map(str::to_string)
        .collect()
}

/// Feedback events kept per profile. Past it the oldest go, skips first
/// while they fill more than half the window: an impression feed of skips
/// must not push a customer's likes out (skips only contrast with them).
pub const MAX_EVENTS: usize = 500;

/// `events` (oldest first) cut to the [`MAX_EVENTS`] window, in order.
fn keep_window(events: Vec<(String, Feedback)>) -> Vec<(String, Feedback)> {
    let over = events.len().saturating_sub(MAX_EVENTS);
    if over == 0 {
        return events;
    }
    let skips = events.iter().filter(|(_, f)| *f == Feedback::Skip).count();
    let likes = events.len() - skips;
    let skips_out = over
        .min(skips.saturating_sub(MAX_EVENTS / 2))
        .max(over.saturating_sub(likes));
    let (mut skips_out, mut likes_out) = (skips_out, over - skips_out);
    events
        .into_iter()
        .filter(|(_, f)| {
            let left = if *f == Feedback::Skip {
                &mut skips_out
            } else {
                &mut likes_out
            };
            let drop = *left > 0;
            *left = left.saturating_sub(1);
            !drop
        })
        .collect()
}

/// What a profile was set to by hand: the starting point of learning from
/// feedback (equal weights when there is none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProfilePrior {
    pub(crate) weights: BTreeMap<String, f32>,
    pub(crate) affinities: BTreeMap<String, f32>,
}

impl vitrine_storage::Record for ProfilePrior {
    const VERSION: u8 = 1;
}

impl Profile {
    /// Equal weights over every group of `layout`, no affinities: plain
    /// concept-space similarity.
    pub fn uniform(layout: &ConceptLayout) -> Profile {
        let w = 1.0 / layout.groups.len().max(1) as f32;
        Profile {
            weights: layout.groups.iter().map(|g| (g.name.clone(), w)).collect(),
            affinities: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// All the weight on one group.
    pub fn only(group: &str) -> Profile {
        Profile {
            weights: [(group.to_string(), 1.0)].into_iter().collect(),
            affinities: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Sets a group's weight.
    pub fn weight(mut self, group: &str, w: f32) -> Profile {
        self.weights.insert(group.to_string(), w);
        self
    }

    /// The query vector over the concept space that scores products by this
    /// profile relative to concept vector `z` (what
    /// [`Db::similar_with_profile`] searches with): `[w_g · z_g]` plus the
    /// affinities' directions (within [`AFFINITY_SHARE`] of the weights'
    /// sum), and the look at [`LOOK_TIE_BREAK`] when the
    /// profile gives it no weight but ranks by something else.
    pub fn query_vector(&self, vocab: &Vocabulary, z: &[f32]) -> Result<Vec<f32>, ConceptError> {
        profile_query(vocab, self, z)
    }

    /// The group with the largest weight.
    pub fn top_group(&self) -> Option<(&str, f32)> {
        self.weights
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(g, w)| (g.as_str(), *w))
    }
}

/// A concept defined by the user from example products.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserTag {
    /// Name (used as `user.<name>`).
    pub name: String,
    /// Direction over the concept space (unit length).
    pub vector: Vec<f32>,
    /// How it was learned.
    pub method: TagMethod,
    /// Weight in queries and profiles ([`USER_TAG_WEIGHT`] by default).
    pub weight: f32,
    /// The example products.
    pub positives: Vec<String>,
    /// The counter-examples (may be empty).
    pub negatives: Vec<String>,
}

impl vitrine_storage::Record for UserTag {
    const VERSION: u8 = 1;
}

/// Errors of the concept APIs (queries have their own [`QueryError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConceptError {
    /// The database has no concept layout: it was not made for a model.
    /// Vector spaces are fixed when a database is created, so the remedy is
    /// a new database made for the model, with the products imported again.
    #[error("this database has no concept space: its vector spaces were fixed when it was created without a model; make a new database for the model (DbBuilder::open_with_model, or `vitrine import` into a new folder) and import the images there")]
    NoConceptSpace,
    /// A concept name that is not in the vocabulary.
    #[error("unknown concept '{name}'{}", .suggestion.as_ref().map(|s| format!(" — did you mean {s}?")).unwrap_or_default())]
    UnknownConcept {
        /// The name given.
        name: String,
        /// The closest known name.
        suggestion: Option<String>,
    },
    /// A tag example, or the product of a `like` or a profile search,
    /// still embedded by another model than the database's (a re-embedding
    /// has not reached it).
    #[error("product '{id}' is still embedded by the previous model: re-embed it (vitrine import --reembed) before using it as an example or a `like` target")]
    ExampleOfAnotherModel {
        /// The product.
        id: String,
    },
    /// A query named a user tag learned with another model
    /// ([`Db::stale_tags`]).
    #[error("user tag '{name}' was learned with another model than the database's: finish re-embedding its examples (an import --reembed learns the tags again at its end; or call Db::relearn_tags), or define it again from products of this model")]
    StaleTag {
        /// The tag.
        name: String,
    },
    /// A query named a user with no stored profile.
    #[error("no profile for user '{user}' (feedback creates one){}", .suggestion.as_ref().map(|s| format!(" — did you mean {s}?")).unwrap_or_default())]
    UnknownProfile {
        /// The user given.
        user: String,
        /// Always `None` since the database stopped suggesting user ids (a
        /// query's text may come from another customer); kept so that code
        /// matching it still builds.
        suggestion: Option<String>,
    },
    /// A product given both as an example and as a counter-example of a tag.
    #[error("product '{id}' is both a positive and a negative example of tag '{name}'")]
    ConflictingExamples {
        /// The tag.
        name: String,
        /// The product.
        id: String,
    },
    /// A tag whose examples have the same concept vectors as what they are
    /// contrasted with (duplicate images, say): nothing tells them apart.
    #[error(
        "the examples of tag '{name}' look exactly like its counter-examples (or the catalog): \
         give examples that differ"
    )]
    IndistinctExamples {
        /// The tag.
        name: String,
    },
    /// A tag without counter-examples whose examples are every product the
    /// catalog is sampled from: nothing is left to tell them from.
    #[error(
        "the examples of tag '{name}' are the whole catalog it is learned against (every \
         product of the database's model), and it has no counter-examples: give \
         counter-examples, or define it once the catalog holds other products"
    )]
    NothingToContrast {
        /// The tag.
        name: String,
    },
    /// A group name that is not in the layout.
    #[error("unknown concept group '{name}' (groups: {known})")]
    UnknownGroup {
        /// The name given.
        name: String,
        /// The groups, comma separated.
        known: String,
    },
    /// A user tag name that is empty, too long or not a plain word.
    #[error("invalid tag name '{0}': use lowercase letters, digits and '_' (at most 64 bytes)")]
    InvalidTagName(String),
    /// A tag's examples make a record too large to store.
    #[error("tag '{name}' has too many examples to store ({reason}); give fewer")]
    TagTooLarge {
        /// The tag.
        name: String,
        /// What the store said.
        reason: String,
    },
    /// A tag needs examples.
    #[error("tag '{name}' needs at least {min} positive example(s), got {got}")]
    NotEnoughExamples {
        /// The tag.
        name: String,
        /// At least this many.
        min: usize,
        /// Given.
        got: usize,
    },
    /// A weight out of range: group and tag weights are from 0 to
    /// [`MAX_WEIGHT`], concept affinities and query terms from
    /// -[`MAX_WEIGHT`] to [`MAX_WEIGHT`], `diverse` from 0 to 1, a `like`
    /// weight above 0 and at most [`MAX_WEIGHT`]; `allowed` says which.
    #[error("invalid weight {value} for '{what}': {allowed}")]
    InvalidWeight {
        /// What it was for.
        what: String,
        /// The value.
        value: f32,
        /// The range it must be in, in words.
        allowed: String,
    },
    /// An empty user id.
    #[error("user id must not be empty")]
    EmptyUser,
    /// A user id longer than [`crate::MAX_ID_LEN`] bytes (it is a storage
    /// key, as a product id is).
    #[error("user id is {len} bytes long; the limit is {max}")]
    UserTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A user id given a profile anew holds a character that does not show
    /// ([`crate::has_hidden_character`]): it would be a second customer that
    /// looks like the first.
    #[error(
        "user id '{user}' holds a character that does not show (a line break, a zero-width \
         space or a byte-order mark, say)"
    )]
    UserWithHiddenCharacter {
        /// The id, escaped (and cut at 80 characters).
        user: String,
    },
    /// A profile whose weights and affinities are all 0: it would rank every
    /// product the same.
    #[error("the profile weighs nothing: give a group a weight above 0 (or an affinity)")]
    EmptyProfile,
    /// A query whose terms add up to nothing to rank by (no term and no
    /// like, or user tags of weight 0, or a profile that cancels them):
    /// found when it runs, so it names no column of the text.
    #[error("{0}")]
    NothingToRank(String),
    /// A malformed query.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Embedding an image for `like image` failed.
    #[error(transparent)]
    Ingest(#[from] Box<crate::IngestError>),
    /// A database error (a missing product is [`Error::NotFound`]).
    #[error(transparent)]
    Db(#[from] Error),
}

impl ConceptError {
    /// Whether the caller can fix it (bad names, ids, weights, queries, or
    /// the image a `like image` query names); false for damaged data, the
    /// machine, the model, and a re-embedding not finished (a product still
    /// of the previous model, or a user tag not learned again since).
    pub fn is_user_error(&self) -> bool {
        match self {
            ConceptError::Db(e) => e.is_user_error(),
            ConceptError::Ingest(e) => e.is_user_error(),
            ConceptError::ExampleOfAnotherModel { .. } | ConceptError::StaleTag { .. } => false,
            _ => true,
        }
    }
}

impl From<vitrine_storage::Error> for ConceptError {
    fn from(e: vitrine_storage::Error) -> Self {
        ConceptError::Db(e.into())
    }
}

const LAYOUT_KS: &str = "concept_layout";
const LAYOUT_KEY: &[u8] = b"layout";
const PROFILES_KS: &str = "profiles";
/// Hand-set weights and affinities ([`Db::set_profile`]), kept apart from the
/// profile that feedback re-learns, so that learning starts from them.
const PRIORS_KS: &str = "profile_priors";
const TAGS_KS: &str = "user_tags";
/// Products a tag without counter-examples is told apart from, sampled
/// evenly from the catalog.
const CONTRAST_SAMPLE: usize = 2000;
/// The model each user tag was learned with ([`TagModel`]).
const TAG_MODELS_KS: &str = "tag_models";
/// The side keyspaces of this module (see [`crate::db::SIDE_KEYSPACES`]).
pub(crate) const KEYSPACES: [&str; 7] = [
    LAYOUT_KS,
    PROFILES_KS,
    PRIORS_KS,
    TAGS_KS,
    TAG_MODELS_KS,
    learn::CATALOG_STATS,
    learn::LIKED_KS,
];

/// The fingerprint of the model whose vectors a user tag was learned from:
/// after a switch, a tag none of whose examples is of the new model keeps
/// a direction in the old model's space, which must not rank products.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TagModel {
    model: String,
}

impl vitrine_storage::Record for TagModel {
    const VERSION: u8 = 1;
}

/// Edit distance, for "did you mean".
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// What [`rewrite_each`] does with one record.
enum Rewrite<T> {
    Keep,
    Put(T),
    Remove,
}

/// Records per batch of [`rewrite_each`].
const REWRITE_BATCH: usize = 256;

/// Rewrites every record of `ks` as `f` says, in batches: a walk over
/// every profile holds one batch of them in memory, and syncs once per
/// batch rather than once per record. Each batch is atomic, not the walk:
/// its callers' rewrites are ones a crash leaves to be done again.
/// Returns how many records changed.
fn rewrite_each<T: vitrine_storage::Record>(
    ks: &vitrine_storage::Keyspace<T>,
    mut f: impl FnMut(&[u8], T) -> std::result::Result<Rewrite<T>, ConceptError>,
) -> std::result::Result<usize, ConceptError> {
    let (mut batch, mut pending, mut changed) = (ks.batch(), 0, 0);
    for entry in ks.iter() {
        // A record that does not decode is left as it is: one damaged
        // profile must not stop the walk over the others.
        let (key, record) = match entry {
            Ok(entry) => entry,
            Err(e) if undecodable(&e) => {
                tracing::warn!(error = %e, "record left as it is");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match f(&key, record)? {
            Rewrite::Keep => continue,
            Rewrite::Put(record) => batch.put(&key, &record)?,
            Rewrite::Remove => batch.remove(&key),
        }
        changed += 1;
        pending += 1;
        if pending == REWRITE_BATCH {
            ks.apply(std::mem::replace(&mut batch, ks.batch()))?;
            pending = 0;
        }
    }
    ks.apply(batch)?;
    Ok(changed)
}

/// A record that does not decode (damaged, or a newer build's) read as
/// missing, with a warning: the callers write theirs again from what they
/// know (or learn without it), and one must not stop every feedback, nor a
/// walk over every profile ([`rewrite_each`]).
fn unless_damaged<T>(
    read: vitrine_storage::Result<Option<T>>,
) -> std::result::Result<Option<T>, vitrine_storage::Error> {
    match read {
        Err(e) if undecodable(&e) => {
            tracing::warn!(error = %e, "damaged record read as missing");
            Ok(None)
        }
        other => other,
    }
}

/// A record's own damage (or a newer build's record), not the store's.
pub(crate) fn undecodable(e: &vitrine_storage::Error) -> bool {
    matches!(
        e,
        vitrine_storage::Error::Corruption { .. }
            | vitrine_storage::Error::UnknownRecordVersion { .. }
    )
}

/// The stored layout, for a writer about to replace it. One that does not
/// decode is as none: the layout is the model's, and writing it again
/// repairs it (a newer build's is still refused).
fn stored_layout(
    ks: &vitrine_storage::Keyspace<ConceptLayout>,
) -> std::result::Result<Option<ConceptLayout>, vitrine_storage::Error> {
    match ks.get(LAYOUT_KEY) {
        Err(e @ vitrine_storage::Error::Corruption { .. }) => {
            tracing::warn!(error = %e, "damaged concept layout written again from the model");
            Ok(None)
        }
        r => r,
    }
}

/// The closest of `known` to `name`, when it is close enough to be a typo.
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    // No typo of a known name is this long; the distance is quadratic.
    if name.len() > 256 {
        return None;
    }
    let (best, d) = known
        .into_iter()
        .map(|k| (k, levenshtein(name, k)))
        .min_by_key(|(_, d)| *d)?;
    (d <= (name.chars().count() / 3).max(2)).then(|| best.to_string())
}

/// [`Db::vocabulary`] as last read, and the count of changes made to what
/// it reads (so that a read overlapping a change is not kept).
#[derive(Default)]
pub(crate) struct VocabularyCache {
    generation: u64,
    /// Under the model fingerprint it was read with.
    cached: Option<(Option<String>, Arc<Vocabulary>)>,
}

/// See [`Db::vocabulary_changes`].
pub(crate) struct VocabularyChanges<'a>(&'a Db);

impl Drop for VocabularyChanges<'_> {
    fn drop(&mut self) {
        let mut cache = self.0.vocabulary_cache();
        cache.generation += 1;
        cache.cached = None;
    }
}

/// Everything a query can name: the model's concepts and the user tags.
#[derive(Clone, Debug)]
pub struct Vocabulary {
    layout: Arc<ConceptLayout>,
    tags: BTreeMap<String, UserTag>,
    /// Tags learned with another model ([`Db::stale_tags`]): they add
    /// nothing to a query, and a query naming one is refused.
    stale: BTreeSet<String>,
}

impl Vocabulary {
    /// The model's concepts plus `tags`.
    pub fn new(layout: ConceptLayout, tags: impl IntoIterator<Item = UserTag>) -> Vocabulary {
        Vocabulary {
            layout: Arc::new(layout),
            tags: tags.into_iter().map(|t| (t.name.clone(), t)).collect(),
            stale: BTreeSet::new(),
        }
    }

    /// Whether user tag `name` was learned with another model than the
    /// database's ([`Db::stale_tags`]).
    pub fn is_stale(&self, name: &str) -> bool {
        self.stale.contains(name)
    }

    /// The concept-space layout.
    pub fn layout(&self) -> &ConceptLayout {
        &self.layout
    }

    /// The layout's group names, in order.
    pub(crate) fn group_names(&self) -> Vec<&str> {
        self.layout.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// User tags by name.
    pub fn tags(&self) -> &BTreeMap<String, UserTag> {
        &self.tags
    }

    /// Every name a query may use: `group.concept` and `user.<tag>`.
    pub fn names(&self) -> Vec<String> {
        let mut n = self.layout.concept_names();
        n.extend(self.tags.keys().map(|t| format!("{USER_GROUP}.{t}")));
        n
    }

    /// Resolves `group.concept` (or `user.<tag>`), in any case, as
    /// [`concept_key`] does.
    pub fn resolve(&self, group: &str, concept: &str) -> Option<ConceptRef> {
        let concept = concept_slug(concept);
        let group = group.to_lowercase();
        let group = group.as_str();
        if group == USER_GROUP {
            return self
                .tags
                .contains_key(&concept)
                .then_some(ConceptRef::Tag(concept));
        }
        self.layout
            .concept_dim(group, &concept)
            .map(ConceptRef::Dim)
    }

    /// A "did you mean" for an unknown `name`.
    pub fn suggest(&self, name: &str) -> Option<String> {
        let names = self.names();
        suggest(name, names.iter().map(String::as_str))
    }

    /// Adds `w ×` the concept's direction to `q`.
    pub(crate) fn add_to(&self, c: &ConceptRef, w: f32, q: &mut [f32]) {
        match c {
            ConceptRef::Dim(d) => {
                if let Some(x) = q.get_mut(*d) {
                    *x += w;
                }
            }
            ConceptRef::Tag(t) if self.stale.contains(t) => {}
            ConceptRef::Tag(t) => {
                if let Some(tag) = self.tags.get(t) {
                    for (x, v) in q.iter_mut().zip(&tag.vector) {
                        *x += w * tag.weight * v;
                    }
                }
            }
        }
    }
}

/// A resolved concept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConceptRef {
    /// A model concept: one dimension of the concept space.
    Dim(usize),
    /// A user tag, by name.
    Tag(String),
}

fn check_user(user: &str) -> Result<(), ConceptError> {
    if user.is_empty() {
        Err(ConceptError::EmptyUser)
    } else if user.len() > crate::MAX_ID_LEN {
        Err(ConceptError::UserTooLong {
            len: user.len(),
            max: crate::MAX_ID_LEN,
        })
    } else {
        Ok(())
    }
}

/// Refuses a user id with a character that does not show, for a user
/// with no profile yet (one an older build stored stays usable).
fn check_new_user(user: &str, known: bool) -> Result<(), ConceptError> {
    if known || !crate::has_hidden_character(user) {
        return Ok(());
    }
    Err(ConceptError::UserWithHiddenCharacter {
        user: crate::db::escape_hidden(user),
    })
}

/// Under [`LAYOUT_KS`]: a switch to this model whose profiles are not
/// pruned yet ([`Db::adopt_model`] killed in between): the next open
/// prunes them.
const PRUNE_PENDING: &[u8] = b"prune_pending";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PrunePending {
    model: String,
    /// The layout the switch replaced: put back when the switch did not
    /// happen (the old model's vectors are read through it).
    previous: Option<ConceptLayout>,
}

impl vitrine_storage::Record for PrunePending {
    const VERSION: u8 = 1;
}

impl Db {
    /// The first steps of a switch to `model` (under the side-write lock,
    /// before the fingerprint changes): the new layout, and the note that
    /// profiles are to be pruned for it. The note keeps the layout it
    /// replaces: after a kill before the fingerprint changes, the next
    /// open puts it back (the database's vectors are still the old
    /// model's) and drops the note.
    pub(crate) fn prepare_switch_locked(&self, model: &Model) -> Result<()> {
        let _changes = self.vocabulary_changes();
        let ks = self.side_keyspace::<ConceptLayout>(LAYOUT_KS)?;
        // Strict: the note must keep the layout a killed switch puts back.
        let previous = ks.get(LAYOUT_KEY)?;
        let notes = self.side_keyspace::<PrunePending>(LAYOUT_KS)?;
        // A note of an earlier switch that did not happen keeps the layout
        // of the model the database still has.
        let previous = match self.switch_note()? {
            Some(n) if Some(n.model.as_str()) != self.model_fingerprint().as_deref() => n.previous,
            _ => previous,
        };
        notes.put(
            PRUNE_PENDING,
            &PrunePending {
                model: model.fingerprint().into(),
                previous,
            },
        )?;
        let layout = ConceptLayout::from_model(model);
        if stored_layout(&ks)?.as_ref() != Some(&layout) {
            ks.put(LAYOUT_KEY, &layout)?;
        }
        Ok(())
    }

    /// The layout of the model whose vectors the database holds. A switch
    /// writes the new model's layout (and a note keeping the old one)
    /// before it changes the model; until it does (or when changing it
    /// failed), the note's is the one. Read as the model, the layout, the
    /// note and the model again, again when the model changed meanwhile
    /// (a switch writes the note, the layout, the model, then drops the
    /// note: with the model the same at both ends, the layout read is its
    /// own unless a note names another model).
    fn layout_of_stored_model(&self) -> Result<Option<ConceptLayout>> {
        let layouts = self.side_keyspace::<ConceptLayout>(LAYOUT_KS)?;
        let mut tries = 0;
        loop {
            let model = self.model_fingerprint();
            let stored = layouts.get(LAYOUT_KEY)?;
            let note = self.switch_note()?;
            tries += 1;
            // (Switches back to back could keep changing it: after a few
            // tries the last reading stands.)
            if tries < 4 && self.model_fingerprint() != model {
                continue;
            }
            return Ok(match note {
                Some(n) if Some(n.model.as_str()) != model.as_deref() => n.previous,
                _ => stored,
            });
        }
    }

    /// [`Error::InvalidFilter`] for a concept condition that cannot mean
    /// what it says (see [`Filter::tagged`]), or an attribute condition on
    /// a field with its own ([`Filter::attr_eq`]). A database without a
    /// model has no concepts to check against: tags its caller stored
    /// match as written.
    pub(crate) fn check_filter_concepts(&self, filter: &Filter) -> Result<()> {
        filter.check_fields()?;
        let mut conditions = filter.concepts().peekable();
        if conditions.peek().is_none() {
            return Ok(());
        }
        let Some(layout) = self.layout_of_stored_model()? else {
            return Ok(());
        };
        let invalid = |m: String| Err(Error::InvalidFilter(m));
        let mut wanted_in: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, wanted) in conditions {
            let Some((group, concept)) = name.split_once('.') else {
                return invalid(format!(
                    "'{name}' is not a concept: write group.concept, as colour.red"
                ));
            };
            if group == USER_GROUP {
                return invalid(format!(
                    "'{name}' is a user tag: the model tags no product with it, so it cannot \
                     filter (rank by it instead, with a concept query)"
                ));
            }
            let Some(g) = layout.group(group).filter(|g| !g.concepts.is_empty()) else {
                let groups: Vec<&str> = layout
                    .groups
                    .iter()
                    .filter(|g| !g.concepts.is_empty())
                    .map(|g| g.name.as_str())
                    .collect();
                return invalid(format!(
                    "'{name}': the model has no concept group '{group}' to filter by (groups: {})",
                    groups.join(", ")
                ));
            };
            if layout.concept_dim(group, concept).is_none() {
                let hint = suggest(name, layout.concept_names().iter().map(String::as_str))
                    .map(|s| format!(": did you mean {s}?"))
                    .unwrap_or_default();
                return invalid(format!("unknown concept '{name}'{hint}"));
            }
            if wanted && g.exclusive {
                if let Some(other) = wanted_in.insert(group, name) {
                    return invalid(format!(
                        "'{other}' and '{name}' cannot both hold: a product has at most one \
                         {group} (for either, search once per concept)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The note of a switch under way, if any. One that does not decode
    /// (damaged, or written by another build) is left out with a warning,
    /// as a damaged profile is: it must not stop every concept query, nor
    /// the next switch; [`Db::finish_switch`] removes it.
    fn switch_note(&self) -> Result<Option<PrunePending>> {
        match self
            .side_keyspace::<PrunePending>(LAYOUT_KS)?
            .get(PRUNE_PENDING)
        {
            Err(e) if undecodable(&e) => {
                if self.first_warning(format!("switch note: {e}")) {
                    tracing::warn!(error = %e, "model switch note left out; the next open removes it");
                }
                Ok(None)
            }
            r => Ok(r?),
        }
    }

    /// Prunes the profiles for the database's model, then forgets that
    /// they were to be ([`Db::adopt_model`] calls it after the switch, and
    /// an open after a switch that was killed before).
    pub(crate) fn finish_switch(&self) -> Result<(), ConceptError> {
        let ks = self.side_keyspace::<PrunePending>(LAYOUT_KS)?;
        // Quick and lock-free when there is nothing to finish (every open).
        if !ks.contains(PRUNE_PENDING)? {
            return Ok(());
        }
        // Read, prune and forget under one lock: a switch to another model
        // meanwhile writes its own note, which is not forgotten here.
        let _guard = self.side_write_lock();
        let _changes = self.vocabulary_changes();
        if !ks.contains(PRUNE_PENDING)? {
            return Ok(());
        }
        // A note that does not decode names no model: the profiles are
        // pruned for the database's (which is always safe), and it goes.
        let pending = self.switch_note()?.unwrap_or_else(|| PrunePending {
            model: self.model_fingerprint().unwrap_or_default(),
            previous: None,
        });
        if self.model_fingerprint().as_deref() == Some(pending.model.as_str()) {
            match self.prune_profiles_locked() {
                // No concept space: no profile to prune.
                Ok(_) | Err(ConceptError::NoConceptSpace) => {}
                Err(e) => return Err(e),
            }
        } else if let Some(previous) = &pending.previous {
            // Killed before the switch: the database's model is the old
            // one, whose vectors its own layout names.
            self.side_keyspace::<ConceptLayout>(LAYOUT_KS)?
                .put(LAYOUT_KEY, previous)?;
        }
        ks.remove(PRUNE_PENDING)?;
        Ok(())
    }

    /// Stores `model`'s concept layout (done by `open_with_model`).
    pub(crate) fn store_concept_layout(&self, model: &Model) -> Result<()> {
        let ks = self.side_keyspace::<ConceptLayout>(LAYOUT_KS)?;
        let layout = ConceptLayout::from_model(model);
        // Stored already (every image search asks): no lock to wait for
        // behind feedback or tag learning.
        if ks.get(LAYOUT_KEY).ok().flatten().as_ref() == Some(&layout) {
            return Ok(());
        }
        let _guard = self.side_write_lock();
        let _changes = self.vocabulary_changes();
        // Under the lock adopt_model switches models under: a model adopted
        // since the caller checked its own keeps its layout.
        if self.stored_model_fingerprint().as_deref() != Some(model.fingerprint()) {
            return Ok(());
        }
        if stored_layout(&ks)?.as_ref() != Some(&layout) {
            ks.put(LAYOUT_KEY, &layout)?;
        }
        Ok(())
    }

    /// The concept layout of the database's model.
    pub fn concept_layout(&self) -> Result<ConceptLayout, ConceptError> {
        let layout = self
            .layout_of_stored_model()?
            .ok_or(ConceptError::NoConceptSpace)?;
        // Queries slice vectors by these ranges: a damaged record must not
        // reach them. The concept space is what the ranges slice.
        let space_dim = self
            .spaces()
            .into_iter()
            .find(|s| s.name == crate::CONCEPT_SPACE)
            .map(|s| s.dim);
        // A layout stored by an image write to a database declared without
        // the concept space (embedding only) names no vectors to read.
        let Some(space_dim) = space_dim else {
            return Err(ConceptError::NoConceptSpace);
        };
        let checked = layout.check().and_then(|()| {
            if space_dim != layout.dim {
                return Err(format!(
                    "the layout covers {} dimensions, the concept space has {space_dim}",
                    layout.dim
                ));
            }
            Ok(())
        });
        checked.map_err(|reason| {
            ConceptError::from(Error::Corruption {
                location: format!(
                    "vitrine.{LAYOUT_KS}/{} in {}",
                    String::from_utf8_lossy(LAYOUT_KEY),
                    self.path().join("sled").display()
                ),
                reason,
            })
        })?;
        Ok(layout)
    }

    /// The model's concepts plus the user tags defined so far. Shared:
    /// kept in memory until a tag, the layout or the model changes, because
    /// reading it decodes every tag's example lists (40 tags of 2,000
    /// examples took 19 ms, for a query of under 1 ms).
    pub fn vocabulary(&self) -> Result<Arc<Vocabulary>, ConceptError> {
        let model = self.model_fingerprint();
        let generation = {
            let cache = self.vocabulary_cache();
            if let Some((m, v)) = &cache.cached {
                if *m == model {
                    return Ok(v.clone());
                }
            }
            cache.generation
        };
        let mut vocab = Vocabulary::new(self.concept_layout()?, self.readable_user_tags()?);
        vocab.stale = self.stale_tags()?.into_iter().collect();
        let vocab = Arc::new(vocab);
        // Kept only if nothing changed while it was read: a change bumps
        // the generation after its write.
        let mut cache = self.vocabulary_cache();
        if cache.generation == generation {
            cache.cached = Some((model, vocab.clone()));
        }
        Ok(vocab)
    }

    /// How many changes the vocabulary has seen in this process (a change
    /// to the layout, a tag, a tag's model or the model).
    pub(crate) fn vocabulary_generation(&self) -> u64 {
        self.vocabulary_cache().generation
    }

    /// Marks the vocabulary changed when dropped: after the writes of the
    /// calling function, whether they succeeded or not. Take it before
    /// the first write to the layout, the user tags or their models.
    pub(crate) fn vocabulary_changes(&self) -> VocabularyChanges<'_> {
        VocabularyChanges(self)
    }

    /// The user tags learned with another model than the database's. Every
    /// tag is, from [`Db::adopt_model`] until [`Db::relearn_tags`] learns it
    /// again (an `import --reembed` does at its end); one relearn_tags
    /// cannot learn again (none of its positive examples is stored and of
    /// the new model) stays so. A stale tag keeps a direction in the old
    /// model's space: it counts for nothing in profiles, and a query naming
    /// it is refused ([`ConceptError::StaleTag`]). Finish the re-embedding,
    /// or define it again from products of the new model.
    pub fn stale_tags(&self) -> Result<Vec<String>, ConceptError> {
        let Some(model) = self.model_fingerprint() else {
            return Ok(Vec::new());
        };
        let ks = self.side_keyspace::<TagModel>(TAG_MODELS_KS)?;
        let tags = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let mut out = Vec::new();
        for name in ks.keys() {
            let name = name?;
            // The model record of a tag deleted by a process killed before
            // it removed that record too: no tag to relearn.
            if !tags.contains(&name)? {
                continue;
            }
            // A record that does not decode (damaged, or a newer build's)
            // names no model: stale, as a tag of an unknown model is, not
            // an error of every concept call (delete_tag removes it).
            let stale = match ks.get(&name) {
                Ok(m) => m.is_some_and(|m| m.model != model),
                Err(e) if undecodable(&e) => {
                    tracing::warn!(error = %e, "tag model record unreadable: the tag counts as stale");
                    true
                }
                Err(e) => return Err(e.into()),
            };
            if stale {
                out.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        Ok(out)
    }

    /// The model tag `name` was last learned with, when its record says.
    fn tag_model(&self, name: &str) -> Option<String> {
        let ks = self.side_keyspace::<TagModel>(TAG_MODELS_KS).ok()?;
        ks.get(name.as_bytes()).ok().flatten().map(|m| m.model)
    }

    /// Records that tag `name` was learned with the database's model
    /// (under the side-write lock).
    fn record_tag_model_locked(&self, name: &str) -> Result<(), ConceptError> {
        let _changes = self.vocabulary_changes();
        if let Some(model) = self.model_fingerprint() {
            self.side_keyspace::<TagModel>(TAG_MODELS_KS)?
                .put(name.as_bytes(), &TagModel { model })?;
        }
        Ok(())
    }

    /// User-defined tags. A tag record that does not decode (damaged, or
    /// written by a newer build) is an error naming it; queries leave such a
    /// tag out (with a warning) and [`Db::delete_tag`] removes it.
    pub fn user_tags(&self) -> Result<Vec<UserTag>, ConceptError> {
        let ks = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let mut out = Vec::new();
        for r in ks.iter() {
            out.push(r?.1);
        }
        Ok(out)
    }

    /// [`Db::user_tags`] without those whose record does not decode: one
    /// damaged tag must not stop every query, nor its own deletion.
    fn readable_user_tags(&self) -> Result<Vec<UserTag>, ConceptError> {
        let ks = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let mut out = Vec::new();
        for r in ks.iter() {
            match r {
                Ok((_, tag)) => out.push(tag),
                Err(e) if undecodable(&e) => {
                    if self.first_warning(format!("user tag: {e}")) {
                        tracing::warn!(error = %e, "user tag left out; delete_tag removes it");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Defines (or redefines) the tag `user.<name>` from example products,
    /// learned with `method` over their concept vectors; stored with weight
    /// [`USER_TAG_WEIGHT`]. Without negatives, the catalog is the contrast
    /// ([`ConceptError::NothingToContrast`] when the examples are all of it).
    /// An example given twice counts once; examples too many to store in
    /// one record (16 MiB of ids) are [`ConceptError::TagTooLarge`].
    pub fn define_tag(
        &self,
        name: &str,
        positives: &[&str],
        negatives: &[&str],
        method: TagMethod,
    ) -> Result<UserTag, ConceptError> {
        let slug = concept_slug(name);
        // A name in decomposed form is its composed slug.
        if slug.is_empty() || slug.len() > 64 || slug.nfc().ne(name.nfc()) {
            // The name is the caller's text: clipped, not echoed whole.
            return Err(ConceptError::InvalidTagName(
                name.chars().take(80).collect(),
            ));
        }
        let name = slug.as_str();
        if positives.is_empty() {
            return Err(ConceptError::NotEnoughExamples {
                name: name.into(),
                min: 1,
                got: 0,
            });
        }
        let (positives, negatives) = (each_once(positives), each_once(negatives));
        let negative: std::collections::HashSet<&str> =
            negatives.iter().map(String::as_str).collect();
        if let Some(id) = positives.iter().find(|p| negative.contains(p.as_str())) {
            return Err(ConceptError::ConflictingExamples {
                name: name.into(),
                id: id.clone(),
            });
        }
        let positives: Vec<&str> = positives.iter().map(String::as_str).collect();
        let negatives: Vec<&str> = negatives.iter().map(String::as_str).collect();
        let (positives, negatives) = (&positives[..], &negatives[..]);
        let mut tag = UserTag {
            name: name.to_string(),
            vector: Vec::new(),
            method,
            weight: USER_TAG_WEIGHT,
            positives: positives.iter().map(|s| s.to_string()).collect(),
            negatives: negatives.iter().map(|s| s.to_string()).collect(),
        };
        let ks = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let too_large = |e| match e {
            e @ vitrine_storage::Error::RecordTooLarge { .. } => ConceptError::TagTooLarge {
                name: name.into(),
                reason: e.to_string(),
            },
            e => e.into(),
        };
        // Too many examples to store is said before the learning (minutes
        // for hundreds of thousands of them), with the direction's size.
        tag.vector = vec![0.0; self.concept_layout()?.dim];
        ks.encode(&tag).map_err(too_large)?;
        // Learned outside the lock that feedback and profiles take (a
        // large tag learns for seconds), then stored under it, unless the
        // vocabulary changed in between: a model switch, or a refresh's
        // relearn_tags (which learned the tags from the new photos, and
        // would not learn this one again), may have come, so the tag is
        // learned again under the lock, from the vectors as they are now.
        // (set_tag_weight and relearn_tags write under the lock too: none
        // writes an older version over this one.)
        let before = self.vocabulary_generation();
        let learned = self.tag_direction(name, positives, negatives, method, &mut None, false);
        let _guard = self.side_write_lock();
        tag.vector = if self.vocabulary_generation() == before {
            learned?
        } else {
            self.tag_direction(name, positives, negatives, method, &mut None, false)?
        };
        let _changes = self.vocabulary_changes();
        ks.put(name.as_bytes(), &tag).map_err(too_large)?;
        self.record_tag_model_locked(name)?;
        Ok(tag)
    }

    /// Before a switch from model `old`: the tags that do not say which
    /// model they were learned with (defined by an older build) were
    /// learned with `old` (under the side-write lock).
    pub(crate) fn attribute_tags_locked(&self, old: &str) -> Result<(), Error> {
        let _changes = self.vocabulary_changes();
        let models = self.side_keyspace::<TagModel>(TAG_MODELS_KS)?;
        for key in self.side_keyspace::<UserTag>(TAGS_KS)?.keys() {
            let key = key?;
            // (One unreadable is rewritten: the tag was learned with `old`
            // or before it.)
            let recorded = match models.get(&key) {
                Ok(m) => m.is_some(),
                Err(e) if undecodable(&e) => false,
                Err(e) => return Err(e.into()),
            };
            if !recorded {
                models.put(&key, &TagModel { model: old.into() })?;
            }
        }
        Ok(())
    }

    /// The unit direction of a tag learned from its examples. Without
    /// negatives the contrast is a sample of the catalog, taken into
    /// `sample` when it is empty: one walk of the catalog serves every tag
    /// that `relearn_tags` learns. Examples that are the whole sample are
    /// [`ConceptError::NothingToContrast`] for a tag being defined; one
    /// being learned again (after a refresh or a model switch, in a
    /// catalog that has shrunk to its examples since) takes their mean
    /// rather than stay in the old photos' (or model's) space for good.
    fn tag_direction(
        &self,
        name: &str,
        positives: &[&str],
        negatives: &[&str],
        method: TagMethod,
        sample: &mut Option<Vec<(String, Vec<f32>)>>,
        relearning: bool,
    ) -> Result<Vec<f32>, ConceptError> {
        let layout = self.concept_layout()?;
        let model = self.model_fingerprint();
        let fetch = |ids: &[&str]| -> Result<Vec<Vec<f32>>, ConceptError> {
            ids.iter()
                // A tag learned from an old-model example would rank by
                // that space, and be recorded as current.
                .map(|id| self.concept_vector_of_model(id, model.as_deref()))
                .collect()
        };
        let pos = fetch(positives)?;
        let neg = fetch(negatives)?;
        let contrast = if neg.is_empty() {
            let sample = match sample {
                Some(rows) => rows,
                None => sample.insert(self.sample_rows(
                    CONCEPT_SPACE,
                    CONTRAST_SAMPLE,
                    &Default::default(),
                )?),
            };
            let skip: std::collections::HashSet<&str> = positives.iter().copied().collect();
            let contrast: Vec<Vec<f32>> = sample
                .iter()
                .filter(|(id, _)| !skip.contains(id.as_str()))
                .map(|(_, v)| v.clone())
                .collect();
            if contrast.is_empty() {
                // The shared sample may have hit only examples (every
                // second product of a large catalog, say): the rest of the
                // catalog is sampled on its own before it is called empty.
                self.sample_rows(CONCEPT_SPACE, CONTRAST_SAMPLE, &skip)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            } else {
                contrast
            }
        } else {
            neg
        };
        // The examples' own mean would do as a direction, but it would say
        // "a product", not what sets them apart.
        if contrast.is_empty() && !relearning {
            return Err(ConceptError::NothingToContrast { name: name.into() });
        }
        learn::learn_tag(&pos, &contrast, method, layout.dim)
            .ok_or_else(|| ConceptError::IndistinctExamples { name: name.into() })
    }

    /// Learns every user tag again from its examples that are still
    /// stored and embedded by the database's model, keeping its weight:
    /// after a re-embedding the old directions point into another model's
    /// space, and after a refresh they come from the old photos.
    /// [`Db::import`] calls it at the end of a re-embedding, and of a
    /// refresh that replaced products (not after an import that failed as
    /// a whole: call it then); a
    /// caller who re-embeds product by product after [`Db::adopt_model`]
    /// calls it when done. It also forgets the catalog's mean concept
    /// vector (feedback's contrast), which may have been taken while old
    /// and new vectors were mixed. A tag none of whose positive examples is
    /// left keeps its direction (logged): after a model switch it is stale
    /// ([`Db::stale_tags`]). One none of whose negative examples is left
    /// keeps it too while it is of the database's model; after a switch it
    /// is learned against the catalog (logged). Returns how many were
    /// learned again.
    pub fn relearn_tags(&self) -> Result<usize, ConceptError> {
        let ks = self.side_keyspace::<UserTag>(TAGS_KS)?;
        // Learned outside the lock that feedback and profiles take (forty
        // large tags learn for seconds), then stored under it. A tag
        // changed or defined meanwhile (perhaps from the photos this
        // relearning replaces), or every tag when the model changed, is
        // learned again under the lock; one deleted meanwhile stays so.
        let model = self.model_fingerprint();
        let mut sample = None;
        let learned: Vec<(UserTag, Option<UserTag>)> = self
            .readable_user_tags()?
            .into_iter()
            .map(|tag| {
                let again = self.relearned(&tag, model.as_deref(), &mut sample);
                (tag, again)
            })
            .collect();
        let _guard = self.side_write_lock();
        let _changes = self.vocabulary_changes();
        learn::forget_catalog_mean_locked(self)?;
        let now = self.model_fingerprint();
        let mut learned: HashMap<String, (UserTag, Option<UserTag>)> = learned
            .into_iter()
            .map(|(read, again)| (read.name.clone(), (read, again)))
            .collect();
        let mut sample = None;
        let mut done = 0;
        for stored in self.readable_user_tags()? {
            let again = match learned.remove(&stored.name) {
                Some((read, again)) if now == model && stored == read => again,
                _ => self.relearned(&stored, now.as_deref(), &mut sample),
            };
            if let Some(tag) = again {
                ks.put(tag.name.as_bytes(), &tag)?;
                self.record_tag_model_locked(&tag.name)?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// `tag` learned again from its examples that are stored and of
    /// `model` (an example deleted since would fail the whole tag; one
    /// still of the previous model would mix two spaces); `None`, logged,
    /// when it cannot be.
    fn relearned(
        &self,
        tag: &UserTag,
        model: Option<&str>,
        sample: &mut Option<Vec<(String, Vec<f32>)>>,
    ) -> Option<UserTag> {
        let present = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .filter(|id| matches!(self.vector(CONCEPT_SPACE, id), Ok(Some(_))))
                .filter(|id| crate::db::of_model(self.attributes(id).as_ref(), model))
                .cloned()
                .collect()
        };
        let mut tag = tag.clone();
        // (An older build kept repeats, which counted.)
        tag.positives = each_once(&tag.positives);
        tag.negatives = each_once(&tag.negatives);
        let (pos, neg) = (present(&tag.positives), present(&tag.negatives));
        if pos.is_empty() {
            tracing::warn!(tag = %tag.name, "no positive example left; tag kept as it was");
            return None;
        }
        // Learned against the catalog instead, it would mean another thing
        // while its record still named its negatives: kept while its
        // direction is of this model; after a switch, the catalog is the
        // contrast left (a stale tag refuses every query naming it).
        if neg.is_empty() && !tag.negatives.is_empty() {
            if self.tag_model(&tag.name).as_deref() == model {
                tracing::warn!(tag = %tag.name, "no negative example left; tag kept as it was");
                return None;
            }
            tracing::warn!(tag = %tag.name, "no negative example left; tag learned against the catalog");
        }
        let pos: Vec<&str> = pos.iter().map(String::as_str).collect();
        let neg: Vec<&str> = neg.iter().map(String::as_str).collect();
        match self.tag_direction(&tag.name, &pos, &neg, tag.method, sample, true) {
            Ok(vector) => {
                tag.vector = vector;
                Some(tag)
            }
            Err(e) => {
                tracing::warn!(tag = %tag.name, error = %e, "tag kept as it was");
                None
            }
        }
    }

    /// Sets a user tag's weight.
    pub fn set_tag_weight(&self, name: &str, weight: f32) -> Result<UserTag, ConceptError> {
        // As `define_tag` stores it: composed.
        let name: &str = &name.nfc().collect::<String>();
        if !(0.0..=MAX_WEIGHT).contains(&weight) {
            return Err(ConceptError::InvalidWeight {
                what: format!("{USER_GROUP}.{name}"),
                value: weight,
                allowed: format!("tag weights are from 0 to {MAX_WEIGHT}"),
            });
        }
        let ks = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let _guard = self.side_write_lock();
        let _changes = self.vocabulary_changes();
        let mut tag = ks
            .get(name.as_bytes())?
            .ok_or_else(|| self.unknown_tag(name))?;
        tag.weight = weight;
        ks.put(name.as_bytes(), &tag)?;
        Ok(tag)
    }

    /// Removes a user tag, and every profile's affinity to it (learned or
    /// set by hand); returns whether the tag existed. A profile that named
    /// the tag is learned again from its events and what is left of its
    /// starting point, as the next feedback would (one whose only
    /// preference was the tag, as a new user's when it has none). It reads every
    /// stored profile under the lock that feedback and profile edits take
    /// (so that none adds an affinity to the tag meanwhile): with a million
    /// profiles, those wait for it, for seconds or more.
    pub fn delete_tag(&self, name: &str) -> Result<bool, ConceptError> {
        let name: &str = &name.nfc().collect::<String>();
        let tags = self.side_keyspace::<UserTag>(TAGS_KS)?;
        let profiles = self.side_keyspace::<Profile>(PROFILES_KS)?;
        let priors = self.side_keyspace::<ProfilePrior>(PRIORS_KS)?;
        let _guard = self.side_write_lock();
        let _changes = self.vocabulary_changes();
        // Read under the lock (a switch meanwhile would rename what the
        // profiles are learned with), before anything is written: without
        // a concept space there are no hand-set weights to clean up.
        let layout = match self.concept_layout() {
            Ok(layout) => Some(layout),
            Err(ConceptError::NoConceptSpace) => None,
            Err(e) => return Err(e),
        };
        let uniform = layout.as_ref().map(|l| Profile::uniform(l).weights);
        // No such tag, nothing to clean: the tag goes last below (its
        // model record after it), so a delete cut short by a crash still
        // finds one of them.
        let tag_models = self.side_keyspace::<TagModel>(TAG_MODELS_KS)?;
        if !tags.contains(name.as_bytes())? && !tag_models.contains(name.as_bytes())? {
            return Ok(false);
        }
        // An affinity to a tag that is gone would name an unknown concept.
        // The tag goes last: a crash before leaves it defined, and the
        // delete to do again.
        let concept = format!("{USER_GROUP}.{name}");
        // A hand-set starting point without the tag: `None` when it is then
        // none (equal or no weights, no affinity: set_profile would not
        // have stored it, and feedback would count it as 8 likes of nothing
        // in particular), else whether it changed.
        let strip = |prior: &mut ProfilePrior| -> Option<bool> {
            let had = prior.affinities.remove(&concept).is_some();
            let no_weights = prior.weights.values().all(|w| *w == 0.0);
            let equal = uniform.as_ref() == Some(&prior.weights);
            (!(prior.affinities.is_empty() && (equal || no_weights))).then_some(had)
        };
        // Everything read first: a failure below changes nothing, or leaves
        // a delete to do again (the tag goes last).
        let vocab = match layout {
            Some(layout) => {
                let left = self
                    .readable_user_tags()?
                    .into_iter()
                    .filter(|t| t.name != name);
                let mut vocab = Vocabulary::new(layout, left);
                vocab.stale = self.stale_tags()?.into_iter().collect();
                Some(vocab)
            }
            None => None,
        };
        // A profile that named the tag is learned again from its events and
        // what is left of its starting point (as the priors' rewrite below
        // leaves it), as the next feedback would, without the tag: one left
        // weighing nothing (the tag its only preference) could shape no
        // query, and the others are scaled as the starting point now is
        // (the next event, even a skip, would rescale them).
        rewrite_each(&profiles, |key, mut p| {
            let had = p.affinities.remove(&concept).is_some();
            Ok(match &vocab {
                Some(vocab) if had => {
                    let prior = unless_damaged(priors.get(key))?
                        .and_then(|mut prior| strip(&mut prior).map(|_| prior));
                    Rewrite::Put(learn::learn_profile(
                        self,
                        key,
                        vocab,
                        p.events,
                        prior.as_ref(),
                        None,
                    )?)
                }
                _ if had => Rewrite::Put(p),
                _ => Rewrite::Keep,
            })
        })?;
        rewrite_each(&priors, |_, mut prior| {
            Ok(match strip(&mut prior) {
                None => Rewrite::Remove,
                Some(true) => Rewrite::Put(prior),
                Some(false) => Rewrite::Keep,
            })
        })?;
        let existed = tags.remove(name.as_bytes())?;
        tag_models.remove(name.as_bytes())?;
        Ok(existed)
    }

    /// Drops from every stored profile and hand-set starting point the
    /// group weights and affinities the vocabulary no longer names (a
    /// switch to a model that renamed or dropped a concept or a group), as
    /// deleting a tag does for its affinities: queries skipped them, but
    /// `similar_with_profile` and `set_profile` refused the profile. An
    /// affinity to a tag whose record does not decode (a newer build's) is
    /// kept. A profile left weighing nothing is learned again from its
    /// events.
    /// Returns how many records changed. The caller holds the side-write
    /// lock.
    pub(crate) fn prune_profiles_locked(&self) -> Result<usize, ConceptError> {
        let profiles = self.side_keyspace::<Profile>(PROFILES_KS)?;
        let priors = self.side_keyspace::<ProfilePrior>(PRIORS_KS)?;
        let vocab = self.vocabulary()?;
        let groups = vocab.group_names();
        // A tag whose record does not decode (damaged, or a newer build's)
        // is left out of the vocabulary, not deleted: affinities to it stay.
        let mut tags = BTreeSet::new();
        for key in self.side_keyspace::<UserTag>(TAGS_KS)?.keys() {
            tags.insert(String::from_utf8_lossy(&key?).into_owned());
        }
        let prune = |weights: &mut BTreeMap<String, f32>,
                     affinities: &mut BTreeMap<String, f32>| {
            let before = weights.len() + affinities.len();
            weights.retain(|g, _| groups.contains(&g.as_str()));
            affinities.retain(|c, _| {
                let (group, concept) = c.split_once('.').unwrap_or((c.as_str(), ""));
                vocab.resolve(group, concept).is_some()
                    || (group == USER_GROUP && tags.contains(concept))
            });
            weights.len() + affinities.len() != before
        };
        // Liked vectors of another model are never read again: removed,
        // not kept for a year of users who give no more feedback.
        let model = self.model_fingerprint();
        let liked = self.side_keyspace::<learn::LikedVectors>(learn::LIKED_KS)?;
        let mut changed = rewrite_each(&liked, |_, l| {
            Ok(if l.of_model(model.as_deref()) {
                Rewrite::Keep
            } else {
                Rewrite::Remove
            })
        })?;
        let uniform = Profile::uniform(vocab.layout()).weights;
        changed += rewrite_each(&priors, |_, mut prior| {
            if !prune(&mut prior.weights, &mut prior.affinities) {
                return Ok(Rewrite::Keep);
            }
            // A starting point left with no preference is none (as
            // delete_tag leaves it).
            let none = prior.affinities.is_empty()
                && (prior.weights.values().all(|w| *w == 0.0) || prior.weights == uniform);
            Ok(if none {
                Rewrite::Remove
            } else {
                Rewrite::Put(prior)
            })
        })?;
        changed += rewrite_each(&profiles, |key, mut p| {
            let total = p.weights.values().sum::<f32>();
            if !prune(&mut p.weights, &mut p.affinities) {
                return Ok(Rewrite::Keep);
            }
            // The groups left share what a dropped one weighed: the weights
            // keep their sum (1, as learned), and their scale against the
            // affinities.
            let left = p.weights.values().sum::<f32>();
            if left > 0.0 && left < total {
                let scale = total / left;
                p.weights.values_mut().for_each(|w| *w *= scale);
            }
            // One left weighing nothing could shape no query: learned again
            // from its events. Not the others: at a switch (a re-embedding's
            // start) their liked products are nearly all of the old
            // model, which learning skips; relearning now would drop what
            // was learned from them.
            let empty =
                p.weights.values().all(|w| *w == 0.0) && p.affinities.values().all(|a| *a == 0.0);
            if empty {
                let prior = unless_damaged(priors.get(key))?;
                p = learn::learn_profile(self, key, &vocab, p.events, prior.as_ref(), None)?;
            }
            Ok(Rewrite::Put(p))
        })?;
        Ok(changed)
    }

    fn unknown_tag(&self, name: &str) -> ConceptError {
        let full = format!("{USER_GROUP}.{name}");
        let suggestion = self.vocabulary().ok().and_then(|v| v.suggest(&full));
        ConceptError::UnknownConcept {
            name: full,
            suggestion,
        }
    }

    /// The stored profile of `user`, if any.
    pub fn profile(&self, user: &str) -> Result<Option<Profile>, ConceptError> {
        check_user(user)?;
        Ok(self
            .side_keyspace::<Profile>(PROFILES_KS)?
            .get(user.as_bytes())?)
    }

    /// Every user with a stored profile, when there are at most `max`.
    pub(crate) fn profile_users_up_to(
        &self,
        max: usize,
    ) -> Result<Option<Vec<String>>, ConceptError> {
        let ks = self.side_keyspace::<Profile>(PROFILES_KS)?;
        let mut out = Vec::new();
        // Keys only: a profile holds up to MAX_EVENTS events to decode.
        for key in ks.keys() {
            if out.len() == max {
                return Ok(None);
            }
            out.push(String::from_utf8_lossy(&key?).into_owned());
        }
        Ok(Some(out))
    }

    /// Every user with a stored profile.
    pub fn profile_users(&self) -> Result<Vec<String>, ConceptError> {
        Ok(self.profile_users_up_to(usize::MAX)?.unwrap_or_default())
    }

    /// Sets `user`'s profile by hand (checked against the layout) and
    /// returns what is stored.
    ///
    /// Its weights and affinities become the user's starting point: feedback
    /// ([`Db::feedback`]) learns from there instead of from equal weights,
    /// the hand-set weights counting as much as [`HAND_SET_PRIOR_LIKES`]
    /// likes, and hand-set affinities keeping their ratio to the hand-set
    /// weights and to each other (all scaled down together where that
    /// ratio would pass [`MAX_WEIGHT`]). Affinity names are stored as [`concept_key`] writes them
    /// (of two spellings of one concept, the later in key order wins). When `profile` has no
    /// events and the user has feedback events, the profile is learned again
    /// from them, starting from the new weights (the events are kept);
    /// otherwise `profile` is stored as that starting point (weights scaled
    /// to sum to 1, every group listed, affinities scaled alike: as learning
    /// from no likes stores it) with its events: those the window keeps
    /// ([`MAX_EVENTS`]), and each must name a valid product
    /// id ([`Error::EmptyId`], [`Error::IdTooLong`]). [`Profile::uniform`] without
    /// affinities removes the starting point; [`Db::delete_profile`] forgets
    /// the user.
    ///
    /// Edit the starting point ([`Db::profile_prior`]), not the learned
    /// profile ([`Db::profile`]): set back, what was learned from the
    /// events would become the starting point and the events would count a
    /// second time on top of it.
    pub fn set_profile(&self, user: &str, profile: &Profile) -> Result<Profile, ConceptError> {
        check_user(user)?;
        let priors = self.side_keyspace::<ProfilePrior>(PRIORS_KS)?;
        let profiles = self.side_keyspace::<Profile>(PROFILES_KS)?;
        for (id, _) in &profile.events {
            crate::db::check_id(id)?;
        }
        let profile = &Profile {
            events: keep_window(profile.events.clone()),
            ..profile.keyed()
        };
        let _guard = self.side_write_lock();
        check_new_user(
            user,
            profiles.contains(user.as_bytes())? || priors.contains(user.as_bytes())?,
        )?;
        // Checked under the lock: a tag deleted meanwhile is not set back.
        let vocab = self.vocabulary()?;
        self.check_profile(&vocab, profile)?;
        let uniform = Profile::uniform(vocab.layout());
        let prior =
            (profile.weights != uniform.weights || !profile.affinities.is_empty()).then(|| {
                ProfilePrior {
                    weights: profile.weights.clone(),
                    affinities: profile.affinities.clone(),
                }
            });
        let events = match profile.events.is_empty() {
            true => profiles
                .get(user.as_bytes())?
                .map(|p| p.events)
                .unwrap_or_default(),
            false => Vec::new(),
        };
        let stored = if events.is_empty() {
            // As learning from no likes would store it: the next event,
            // even a skip, must not change the scale concept queries see.
            let start = learn::starting_point(vocab.layout(), prior.as_ref());
            Profile {
                weights: start.weights,
                affinities: start.affinities,
                events: profile.events.clone(),
            }
        } else {
            learn::learn_profile(self, user.as_bytes(), &vocab, events, prior.as_ref(), None)?
        };
        // The starting point first: a crash before the profile is written
        // leaves what the caller asked for to the next feedback.
        match &prior {
            Some(p) => priors.put(user.as_bytes(), p)?,
            None => {
                priors.remove(user.as_bytes())?;
            }
        }
        profiles.put(user.as_bytes(), &stored)?;
        Ok(stored)
    }

    /// What `user`'s profile was last set to by hand ([`Db::set_profile`]),
    /// without events: the starting point of learning. `None` when it was
    /// never set, or set to equal weights.
    pub fn profile_prior(&self, user: &str) -> Result<Option<Profile>, ConceptError> {
        check_user(user)?;
        Ok(self
            .side_keyspace::<ProfilePrior>(PRIORS_KS)?
            .get(user.as_bytes())?
            .map(|p| Profile {
                weights: p.weights,
                affinities: p.affinities,
                events: Vec::new(),
            }))
    }

    /// Forgets `user`: her profile, its feedback events, the vectors kept of
    /// her liked products and what was set by hand. Returns whether there
    /// was a profile.
    pub fn delete_profile(&self, user: &str) -> Result<bool, ConceptError> {
        check_user(user)?;
        let priors = self.side_keyspace::<ProfilePrior>(PRIORS_KS)?;
        let profiles = self.side_keyspace::<Profile>(PROFILES_KS)?;
        let _guard = self.side_write_lock();
        // The starting point first: a crash in between leaves a profile
        // learned from equal weights, an ordinary state.
        priors.remove(user.as_bytes())?;
        self.side_keyspace::<learn::LikedVectors>(learn::LIKED_KS)?
            .remove(user.as_bytes())?;
        Ok(profiles.remove(user.as_bytes())?)
    }

    fn check_profile(&self, vocab: &Vocabulary, p: &Profile) -> Result<(), ConceptError> {
        let groups = vocab.group_names();
        for (g, w) in &p.weights {
            if !groups.contains(&g.as_str()) {
                return Err(ConceptError::UnknownGroup {
                    name: g.clone(),
                    known: groups.join(", "),
                });
            }
            if !(0.0..=MAX_WEIGHT).contains(w) {
                return Err(ConceptError::InvalidWeight {
                    what: g.clone(),
                    value: *w,
                    allowed: format!("group weights are from 0 to {MAX_WEIGHT}"),
                });
            }
        }
        if p.weights.values().all(|w| *w == 0.0) && p.affinities.values().all(|a| *a == 0.0) {
            return Err(ConceptError::EmptyProfile);
        }
        for (c, w) in &p.affinities {
            let (group, concept) = c.split_once('.').unwrap_or((c.as_str(), ""));
            // A tag whose record does not decode is kept in profiles (a
            // model switch keeps it too) and counts for nothing.
            let unreadable_tag = || -> Result<bool, ConceptError> {
                Ok(group == USER_GROUP
                    && self
                        .side_keyspace::<UserTag>(TAGS_KS)?
                        .contains(concept.as_bytes())?)
            };
            if vocab.resolve(group, concept).is_none() && !unreadable_tag()? {
                return Err(ConceptError::UnknownConcept {
                    name: c.clone(),
                    suggestion: vocab.suggest(c),
                });
            }
            if !(-MAX_WEIGHT..=MAX_WEIGHT).contains(w) {
                return Err(ConceptError::InvalidWeight {
                    what: c.clone(),
                    value: *w,
                    allowed: format!("concept affinities are from -{MAX_WEIGHT} to {MAX_WEIGHT}"),
                });
            }
        }
        Ok(())
    }

    /// Records what `user` did with `product` and re-learns her profile:
    /// groups in which her liked products agree (more than the products she
    /// skipped do, or than the catalog does) gain weight, and concepts her
    /// likes keep sharing gain affinity. Learning starts from equal weights,
    /// or from what [`Db::set_profile`] set by hand. Each product counts
    /// once (see [`Feedback::Buy`]), and only products embedded by the
    /// database's model count: one of the previous model (an image a
    /// re-embedding could not read) is in another space. A liked product
    /// deleted since keeps counting as it was: the profile keeps the concept
    /// vectors of its liked products (4 bytes a dimension, 0.8 KB for the
    /// bundled model: up to 400 KB for a user of 500 likes), until their
    /// events leave the window ([`MAX_EVENTS`]) or the model changes (the
    /// switch removes them). A skip of a product deleted since no longer
    /// counts. Returns the updated profile.
    pub fn feedback(
        &self,
        user: &str,
        product: &str,
        what: Feedback,
    ) -> Result<Profile, ConceptError> {
        check_user(user)?;
        // NoConceptSpace, before the product's vector is asked for.
        self.concept_layout()?;
        let model = self.model_fingerprint();
        let of_model = crate::db::of_model(self.attributes(product).as_ref(), model.as_deref());
        let z = self.concept_vector(product)?;
        let read_before = of_model.then(|| learn::ReadBefore {
            id: product.to_string(),
            z,
            model,
        });
        let ks = self.side_keyspace::<Profile>(PROFILES_KS)?;
        let _guard = self.side_write_lock();
        let stored = ks.get(user.as_bytes())?;
        check_new_user(
            user,
            stored.is_some()
                || self
                    .side_keyspace::<ProfilePrior>(PRIORS_KS)?
                    .contains(user.as_bytes())?,
        )?;
        // Read under the lock: a tag deleted meanwhile is not learned back.
        let vocab = self.vocabulary()?;
        let mut events = stored.map(|p| p.events).unwrap_or_default();
        // One event per product, its strongest, at its latest place: an
        // impression feed repeating one skip must not push the customer's
        // other products out of the window (they count once anyway).
        let strength = |f: Feedback| match f {
            Feedback::Skip => 0,
            Feedback::Like => 1,
            Feedback::Buy => 2,
        };
        events.push((product.to_string(), what));
        // Over the whole list: an older build kept every event.
        let mut strongest: HashMap<&str, (Feedback, usize)> = HashMap::new();
        for (i, (id, f)) in events.iter().enumerate() {
            let e = strongest.entry(id.as_str()).or_insert((*f, i));
            if strength(*f) > strength(e.0) {
                e.0 = *f;
            }
            e.1 = i;
        }
        let mut kept: Vec<(usize, String, Feedback)> = strongest
            .into_iter()
            .map(|(id, (f, last))| (last, id.to_string(), f))
            .collect();
        kept.sort_unstable_by_key(|k| k.0);
        let events = keep_window(kept.into_iter().map(|(_, id, f)| (id, f)).collect());
        // One that does not decode is learned without, and left as it is.
        let prior = unless_damaged(
            self.side_keyspace::<ProfilePrior>(PRIORS_KS)?
                .get(user.as_bytes()),
        )?;
        let profile = learn::learn_profile(
            self,
            user.as_bytes(),
            &vocab,
            events,
            prior.as_ref(),
            read_before.as_ref(),
        )?;
        ks.put(user.as_bytes(), &profile)?;
        Ok(profile)
    }

    /// The `k` products most similar to `to` under `profile`: `Σ_g w_g ·
    /// cos_g + Σ_c a_c · affinity_c` (plus [`LOOK_TIE_BREAK`] `· w_max ·
    /// cos_visual` when the profile gives the look no weight), computed as one reweighted query over
    /// the `concept` space: one index serves every profile. Exact up to
    /// [`PROFILE_EXACT_MAX`] products (the default of
    /// [`DbBuilder::concept_exact_max`](crate::DbBuilder::concept_exact_max)), and at any size for a profile that
    /// gives the look less than [`SKEWED_VISUAL_SHARE`] of the query (colour
    /// only, say, but also equal weights over the bundled model's seven
    /// groups, whose look share is 1/7); else the graph with a wide beam.
    ///
    /// The products the customer liked or bought (the profile's events)
    /// are left out, as `to` is: her affinities were learned from them, so
    /// they would outrank every look-alike she has not seen. (A concept
    /// query under a profile keeps them: a search may well want them.)
    pub fn similar_with_profile(
        &self,
        to: SimilarTo<'_>,
        k: usize,
        filter: &Filter,
        profile: &Profile,
    ) -> Result<Vec<crate::Hit>, ConceptError> {
        let vocab = self.vocabulary()?;
        let seen = profile
            .events
            .iter()
            .filter(|(_, f)| *f != Feedback::Skip)
            .map(|(id, _)| id.clone());
        let mut f = filter.clone();
        for id in seen {
            f = f.exclude(id);
        }
        let profile = &profile.keyed();
        self.check_profile(&vocab, profile)?;
        let (z, exclude) = match to {
            SimilarTo::Id(id) => (
                self.concept_vector_of_model(id, self.model_fingerprint().as_deref())?,
                Some(id),
            ),
            SimilarTo::Vector(v) => (v.to_vec(), None),
        };
        let q = profile_query(&vocab, profile, &z)?;
        // Nothing to rank by would return arbitrary products, all scoring 0
        // (as `Db::query` refuses).
        if q.iter().all(|x| *x == 0.0) {
            return Err(Error::InvalidVector {
                space: CONCEPT_SPACE.into(),
                reason: "the vector is zero wherever the profile weighs it, and its \
                         affinities add nothing (none set, or only tags of weight 0 or stale): \
                         nothing to rank by"
                    .into(),
            }
            .into());
        }
        if let Some(id) = exclude {
            f = f.exclude(id);
        }
        Ok(self.concept_search(&vocab, &q, k, &f, None)?.hits)
    }
}

impl Db {
    /// The concept vector of `id`, refused
    /// ([`ConceptError::ExampleOfAnotherModel`]) while a re-embedding has
    /// not reached it: it is in the old model's space, whose blocks may
    /// mean other concepts.
    pub(crate) fn concept_vector_of_model(
        &self,
        id: &str,
        model: Option<&str>,
    ) -> Result<Vec<f32>, ConceptError> {
        // (Read before the vector: a re-embedding replaces both at once,
        // so a vector read after attributes of this model is of this model
        // too.)
        let attrs = self.attributes(id);
        let z = self.concept_vector(id)?;
        if !crate::db::of_model(attrs.as_ref(), model) {
            return Err(ConceptError::ExampleOfAnotherModel { id: id.into() });
        }
        Ok(z)
    }

    /// The concept vector of `id`: [`Error::NotFound`] for an unknown
    /// product, [`Error::MissingVector`] for one stored without it (by
    /// `insert`, with vectors only); [`Error::EmptyId`] or
    /// [`Error::IdTooLong`] for an id no product can have, as from `get`.
    pub(crate) fn concept_vector(&self, id: &str) -> Result<Vec<f32>, Error> {
        crate::db::check_id(id)?;
        match self.vector(CONCEPT_SPACE, id)? {
            Some(z) => Ok(z),
            None if self.attributes(id).is_some() => Err(Error::MissingVector {
                id: id.into(),
                space: CONCEPT_SPACE.into(),
            }),
            None => Err(Error::NotFound { id: id.into() }),
        }
    }
}

/// The concept group of the visual embedding.
const VISUAL_GROUP: &str = "visual";

/// Weight of the look in [`Db::similar_with_profile`] for a profile that
/// gives it none, relative to the profile's largest weight or affinity `w`:
/// it orders products whose other scores are (nearly) equal, moving none
/// past a difference of more than `2 × 0.01 × w`.
pub const LOOK_TIE_BREAK: f32 = 0.01;

/// The most a profile's affinities move a score in
/// [`Db::similar_with_profile`], as a share of the sum of its group
/// weights: they re-rank the products the weighted look finds (a customer
/// who liked one red T-shirt still gets trousers for "more like this" of
/// trousers, red ones first). Affinities past it are scaled down together,
/// keeping their ratios.
pub const AFFINITY_SHARE: f32 = 0.25;

/// Products up to which profile and concept queries scan exactly, by
/// default ([`DbBuilder::concept_exact_max`](crate::DbBuilder::concept_exact_max)).
pub const PROFILE_EXACT_MAX: usize = 262_144;

/// What `profile`'s affinities are scaled by beside a look of weight
/// `look` (1 in `similar`; a `like`'s weight in a query). Affinities
/// re-rank what the weighted look finds; they do not replace it: together
/// they move a score by at most [`AFFINITY_SHARE`] of `look` times the
/// weights' sum (one like of a red T-shirt put T-shirts first in "more like
/// this" of black trousers). A profile without weights is ranked by its
/// affinities alone: 1.
pub(crate) fn affinity_damp(vocab: &Vocabulary, profile: &Profile, look: f32) -> f32 {
    let weighs: f32 = (vocab.layout().groups.iter())
        .map(|g| {
            profile
                .weights
                .get(&g.name)
                .copied()
                .unwrap_or(0.0)
                .max(0.0)
        })
        .sum::<f32>()
        * look.max(0.0);
    let pull: f32 = (profile.affinities.iter())
        .filter_map(|(c, a)| {
            let (group, concept) = c.split_once('.').unwrap_or((c.as_str(), ""));
            Some(match vocab.resolve(group, concept)? {
                ConceptRef::Dim(_) => a.abs(),
                ConceptRef::Tag(t) => a.abs() * vocab.tags.get(&t).map_or(0.0, |t| t.weight.abs()),
            })
        })
        .sum();
    if weighs > 0.0 && pull > AFFINITY_SHARE * weighs {
        AFFINITY_SHARE * weighs / pull
    } else {
        1.0
    }
}

/// The query vector of `profile` relative to concept vector `z`.
pub(crate) fn profile_query(
    vocab: &Vocabulary,
    profile: &Profile,
    z: &[f32],
) -> Result<Vec<f32>, ConceptError> {
    let layout = vocab.layout();
    if z.len() != layout.dim {
        return Err(Error::DimensionMismatch {
            space: CONCEPT_SPACE.into(),
            expected: layout.dim,
            found: z.len(),
        }
        .into());
    }
    let mut q = vec![0.0f32; layout.dim];
    for g in &layout.groups {
        let w = profile.weights.get(&g.name).copied().unwrap_or(0.0);
        // A layout is data (stored, or built by hand): a group past the
        // space is ignored rather than indexed.
        let end = g.start.saturating_add(g.len).min(q.len()).min(z.len());
        for d in g.start.min(end)..end {
            q[d] = w * z[d];
        }
    }
    let damp = affinity_damp(vocab, profile, 1.0);
    for (c, a) in &profile.affinities {
        let (group, concept) = c.split_once('.').unwrap_or((c.as_str(), ""));
        if let Some(r) = vocab.resolve(group, concept) {
            vocab.add_to(&r, a * damp, &mut q);
        }
    }
    // A profile that gives the look no weight (colour only) scores many
    // products the same: those are ordered by look, at a scale below the
    // profile's own. Not one that ranks by nothing (its affinities name
    // stale or zero-weight tags only): the look would be all its ranking,
    // and the caller's "nothing to rank by" check would never see it.
    let ranks = q.iter().any(|x| *x != 0.0);
    if ranks && profile.weights.get(VISUAL_GROUP).copied().unwrap_or(0.0) == 0.0 {
        // (The affinities as they rank: damped.)
        let scale = (profile.weights.values().copied())
            .chain(profile.affinities.values().map(|a| a * damp))
            .fold(0.0f32, |m, w| m.max(w.abs()));
        if let Some(g) = layout.group(VISUAL_GROUP) {
            let end = g.start.saturating_add(g.len).min(q.len()).min(z.len());
            for d in g.start.min(end)..end {
                q[d] += LOOK_TIE_BREAK * scale * z[d];
            }
        }
    }
    Ok(q)
}

/// Below this share of the query's squared norm in the visual block, a
/// query is "skewed" and searched exactly: the graph, built for whole
/// vectors, misses too many answers of concept-only queries and one-group
/// profiles. This also sends equal-weight profiles over the bundled model
/// (7 groups: a visual share of 1/7) to the exact scan, which the graph
/// would answer well (recall 0.999 measured): a cost, not a wrong answer.
pub const SKEWED_VISUAL_SHARE: f32 = 0.3;

/// The plan of [`Db::concept_search`] for query `q` over `len` products:
/// exact up to `exact_max`, and at any size when the look has less than
/// [`SKEWED_VISUAL_SHARE`] of the query (the graph is built on whole
/// vectors, which the look dominates).
fn concept_plan(
    layout: &ConceptLayout,
    q: &[f32],
    len: usize,
    exact_max: usize,
) -> crate::PlanHint {
    let total: f32 = q.iter().map(|x| x * x).sum();
    let visual: f32 = layout.group(VISUAL_GROUP).map_or(0.0, |g| {
        q.get(g.start..g.start + g.len)
            .map_or(0.0, |b| b.iter().map(|x| x * x).sum())
    });
    let skewed = total <= 0.0 || visual / total < SKEWED_VISUAL_SHARE;
    if len <= exact_max || skewed {
        crate::PlanHint::Exact
    } else {
        crate::PlanHint::Auto
    }
}

impl Db {
    /// The top `k` of `q · z` over the concept space among products passing
    /// `filter`. Exact up to [`DbBuilder::concept_exact_max`](crate::DbBuilder::concept_exact_max) products, and for skewed
    /// queries at any size; otherwise the graph with a beam of
    /// `16k` kept within 256..=4096. Measured (`vitrine bench concepts`, 100k products
    /// synthesised from fpi): the graph's recall@20 is 0.78 for single
    /// concepts and 0.54 for one-hot profiles but 0.999 for balanced ones,
    /// while an exact scan takes 2.7 ms (two threads).
    pub(crate) fn concept_search(
        &self,
        vocab: &Vocabulary,
        q: &[f32],
        k: usize,
        filter: &Filter,
        plan: Option<crate::PlanHint>,
    ) -> Result<crate::SearchResults> {
        use crate::Search;
        let plan = plan
            .unwrap_or_else(|| concept_plan(vocab.layout(), q, self.len(), self.concept_exact_max));
        let s = Search::new(SimilarTo::Vector(q), k)
            .space(CONCEPT_SPACE)
            .filter(filter)
            .plan(plan)
            // 4096 is the index's largest ef; it searches max(k, ef) anyway.
            .ef(k.saturating_mul(16).clamp(256, 4096))
            .with_vectors();
        self.search(&s)
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn events(kinds: &[(Feedback, usize)]) -> Vec<(String, Feedback)> {
        let mut n = 0;
        kinds
            .iter()
            .flat_map(|&(f, count)| std::iter::repeat_n(f, count))
            .map(|f| {
                n += 1;
                (format!("p{n}"), f)
            })
            .collect()
    }

    fn count(e: &[(String, Feedback)], f: Feedback) -> usize {
        e.iter().filter(|(_, g)| *g == f).count()
    }

    #[test]
    fn skips_go_first_while_they_fill_more_than_half() {
        use Feedback::{Buy, Like, Skip};
        let (half, max) = (MAX_EVENTS / 2, MAX_EVENTS);
        // Under the window: as given.
        let e = events(&[(Like, 10), (Skip, max - 10)]);
        assert_eq!(keep_window(e.clone()), e);
        // Ten likes, then many skips: the likes stay, the newest skips too.
        let kept = keep_window(events(&[(Like, 10), (Skip, max + 90)]));
        assert_eq!((kept.len(), count(&kept, Like)), (max, 10));
        assert_eq!(kept[10].0, "p111");
        // Likes and buys past half the window: their oldest go once the
        // skips are down to half.
        let kept = keep_window(events(&[(Skip, half + 50), (Like, 300), (Buy, 100)]));
        assert_eq!(kept.len(), max);
        assert_eq!(count(&kept, Skip), half);
        assert_eq!(kept[0].0, "p51");
        // (Of the 700, 50 skips and the 150 oldest likes went.)
        assert_eq!(kept[half].0, "p451");
        // Only skips, or only likes: the newest.
        for f in [Skip, Like] {
            let kept = keep_window(events(&[(f, max + 7)]));
            assert_eq!((kept.len(), kept[0].0.as_str()), (max, "p8"));
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::PlanHint;

    fn group(name: &str, start: usize, len: usize) -> ConceptGroup {
        ConceptGroup {
            name: name.into(),
            start,
            len,
            exclusive: false,
            concepts: if name == VISUAL_GROUP {
                vec![]
            } else {
                (0..len).map(|i| format!("c{i}")).collect()
            },
            labels: vec![],
        }
    }

    /// Past the exact limit, only queries the look carries at least
    /// [`SKEWED_VISUAL_SHARE`] of go to the graph.
    #[test]
    fn skewed_queries_scan_at_any_size() {
        let layout = ConceptLayout {
            dim: 6,
            groups: vec![group(VISUAL_GROUP, 0, 4), group("colour", 4, 2)],
        };
        let colour_only = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let balanced = [0.5, 0.5, 0.5, 0.5, 0.5, 0.0];
        let little_look = [0.2, 0.0, 0.0, 0.0, 1.0, 0.0];
        for (q, big) in [
            (&colour_only, PlanHint::Exact),
            (&little_look, PlanHint::Exact),
            (&balanced, PlanHint::Auto),
            (&[0.0; 6], PlanHint::Exact),
        ] {
            assert_eq!(concept_plan(&layout, q, 1_000_000, 1000), big, "{q:?}");
            assert_eq!(concept_plan(&layout, q, 1000, 1000), PlanHint::Exact);
        }
    }
}

#[cfg(test)]
mod interleavings {
    use super::*;

    /// Between a switch's layout write and its model change (or when the
    /// change fails), concept queries read the database's vectors through
    /// the layout of the model that wrote them, not the next one's.
    #[test]
    fn a_switch_not_yet_made_keeps_the_old_layout() {
        let Ok(model) = Model::bundled() else {
            eprintln!("SKIP: the bundled model is absent");
            return;
        };
        // The same weights with a category renamed: another layout.
        let dir_m = Model::bundled_dir();
        let onnx = std::fs::read(dir_m.join(crate::BUNDLED_ONNX)).unwrap();
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir_m.join(crate::MANIFEST_FILE)).unwrap())
                .unwrap();
        let c0 = m["taxonomy"]["categories"][0].as_str().unwrap().to_string();
        m["taxonomy"]["categories"][0] = serde_json::Value::String(format!("{c0} (renamed)"));
        let other = Model::from_bytes(&onnx, m.to_string().as_bytes()).unwrap();
        let (old, new) = (
            ConceptLayout::from_model(&model),
            ConceptLayout::from_model(&other),
        );
        assert_ne!(old, new);

        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder().model_spaces(&model).open(dir.path()).unwrap();
        db.check_model(&model).unwrap();
        assert_eq!(db.concept_layout().unwrap(), old);
        {
            let _guard = db.side_write_lock();
            db.prepare_switch_locked(&other).unwrap();
        }
        assert_eq!(
            db.concept_layout().unwrap(),
            old,
            "read before the model changed"
        );
        db.set_stored_model_fingerprint(other.fingerprint())
            .unwrap();
        assert_eq!(db.concept_layout().unwrap(), new);
        db.finish_switch().unwrap();
        assert_eq!(db.concept_layout().unwrap(), new);
        // And a whole switch back.
        db.adopt_model(&model).unwrap();
        assert_eq!(db.concept_layout().unwrap(), old);

        // A note that does not decode stops neither queries nor the next
        // switch, and the next finish removes it.
        let notes = db.side_keyspace::<PrunePending>(LAYOUT_KS).unwrap();
        notes.put_raw(PRUNE_PENDING, b"\x01not a note").unwrap();
        assert_eq!(db.concept_layout().unwrap(), old);
        db.finish_switch().unwrap();
        assert!(!notes.contains(PRUNE_PENDING).unwrap());
        notes.put_raw(PRUNE_PENDING, b"\x01not a note").unwrap();
        db.adopt_model(&other).unwrap();
        assert_eq!(db.concept_layout().unwrap(), new);
        assert!(!notes.contains(PRUNE_PENDING).unwrap());
    }

    /// Stores `id` as a product of `model` with unit vectors in every space
    /// (made from `seed`).
    fn put_product(db: &Db, model: &Model, id: &str, seed: usize) {
        let spaces = db.spaces();
        let vectors = spaces.iter().map(|s| {
            let v: Vec<f32> = (0..s.dim)
                .map(|i| ((i * 7 + seed * 13) % 11) as f32 / 11.0 + 0.05)
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            (
                s.name.as_str(),
                v.into_iter().map(|x| x / n).collect::<Vec<_>>(),
            )
        });
        let a = crate::Attributes::new().set(crate::ATTR_MODEL, model.fingerprint());
        db.upsert(id, a, vectors).unwrap();
    }

    /// A database of the bundled model holding `n` products `p0`, `p1`…
    /// ([`put_product`]); `None` (said) without the model.
    fn db_of_products(n: usize) -> Option<(tempfile::TempDir, Db)> {
        let Ok(model) = Model::bundled() else {
            eprintln!("SKIP: the bundled model is absent");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder().model_spaces(&model).open(dir.path()).unwrap();
        db.check_model(&model).unwrap();
        for i in 0..n {
            put_product(&db, &model, &format!("p{i}"), i);
        }
        Some((dir, db))
    }

    /// A tag named with its accents apart from their letters is the tag
    /// of the composed name, wherever it is named.
    #[test]
    fn tag_names_in_decomposed_form_are_the_composed_tag() {
        let Some((_dir, db)) = db_of_products(3) else {
            return;
        };
        let (composed, decomposed) = ("\u{e9}t\u{e9}", "e\u{301}te\u{301}");
        let tag = db
            .define_tag(decomposed, &["p0"], &[], TagMethod::Centroid)
            .unwrap();
        assert_eq!(tag.name, composed);
        let vocab = db.vocabulary().unwrap();
        assert!(vocab.resolve(USER_GROUP, decomposed).is_some());
        assert_eq!(db.set_tag_weight(decomposed, 0.5).unwrap().weight, 0.5);
        assert!(db.delete_tag(decomposed).unwrap());
        assert!(db.user_tags().unwrap().is_empty());
    }

    /// A tag whose examples are the whole catalog has nothing to be told
    /// apart from: refused, not learned as the examples' mean (which would
    /// rank "any product"). With one product besides them it is learned.
    #[test]
    fn a_tag_whose_examples_are_the_whole_catalog_is_refused() {
        let Some((_dir, db)) = db_of_products(3) else {
            return;
        };
        for method in [TagMethod::Centroid, TagMethod::Logistic] {
            let e = db
                .define_tag("all", &["p0", "p1", "p2"], &[], method)
                .unwrap_err();
            assert!(
                matches!(e, ConceptError::NothingToContrast { ref name } if name == "all"),
                "{e}"
            );
        }
        assert!(db.user_tags().unwrap().is_empty());
        db.define_tag("two", &["p0", "p1"], &[], TagMethod::Centroid)
            .unwrap();
        // In a catalog larger than the sample, examples that are every
        // product the sample takes are not the whole catalog.
        let Some((_big_dir, big)) = db_of_products(CONTRAST_SAMPLE + 10) else {
            return;
        };
        let probe = big
            .sample_rows(CONCEPT_SPACE, CONTRAST_SAMPLE, &Default::default())
            .unwrap();
        assert!(probe.len() < big.len(), "the sample leaves products out");
        let sampled: Vec<&str> = probe.iter().map(|(id, _)| id.as_str()).collect();
        let tag = big
            .define_tag("sampled", &sampled, &[], TagMethod::Centroid)
            .unwrap();
        assert_eq!(tag.name, "sampled");
        db.define_tag("all", &["p0", "p1"], &["p2"], TagMethod::Centroid)
            .unwrap();
        // Once the catalog has shrunk to its examples, a tag is still
        // learned again (from their mean): refused, it would be left in
        // the old photos' space, or stale for good after a model switch.
        // ("all", whose counter-example is gone, is kept as it was.)
        assert!(db.delete("p2").unwrap());
        assert_eq!(db.relearn_tags().unwrap(), 1);
    }

    /// "More like this, for her" leaves out what she liked or bought (her
    /// affinities were learned from them: they ranked first), not what she
    /// skipped.
    #[test]
    fn similar_with_a_profile_leaves_out_the_products_she_liked_or_bought() {
        let Some((_dir, db)) = db_of_products(10) else {
            return;
        };
        db.feedback("ann", "p1", Feedback::Like).unwrap();
        db.feedback("ann", "p2", Feedback::Buy).unwrap();
        let p = db.feedback("ann", "p3", Feedback::Skip).unwrap();
        let hits = db
            .similar_with_profile(SimilarTo::Id("p0"), 10, &Filter::new(), &p)
            .unwrap();
        let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["p3", "p4", "p5", "p6", "p7", "p8", "p9"]);
    }

    /// A new customer whose id holds a character that does not show would
    /// look like another: refused, and nothing stored. One an older build
    /// stored keeps learning.
    #[test]
    fn a_new_user_id_with_a_hidden_character_is_refused() {
        let Some((_dir, db)) = db_of_products(3) else {
            return;
        };
        db.feedback("ann", "p1", Feedback::Like).unwrap();
        for user in ["ann\u{200b}", "\u{feff}ann", "ann\u{202e}"] {
            let e = db.feedback(user, "p1", Feedback::Like).unwrap_err();
            assert!(
                matches!(e, ConceptError::UserWithHiddenCharacter { .. }),
                "{e}"
            );
            assert!(e.is_user_error());
            let e = db
                .set_profile(user, &db.profile("ann").unwrap().unwrap())
                .unwrap_err();
            assert!(
                matches!(e, ConceptError::UserWithHiddenCharacter { .. }),
                "{e}"
            );
            assert!(db.profile(user).unwrap().is_none());
        }
        let old = "old\u{200b}";
        let p = db.feedback("ann", "p2", Feedback::Like).unwrap();
        db.side_keyspace::<Profile>(PROFILES_KS)
            .unwrap()
            .put(old.as_bytes(), &p)
            .unwrap();
        db.feedback(old, "p0", Feedback::Buy).unwrap();
        assert!(db.delete_profile(old).unwrap());
    }

    /// A concept query's contributions are those of the vector its search
    /// scored, not of one stored meanwhile: they add up to each hit's
    /// score while the products are written over in another thread.
    #[test]
    fn contributions_add_up_while_products_are_written_over() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let Ok(model) = Model::bundled() else {
            eprintln!("SKIP: the bundled model is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder()
            .model_spaces(&model)
            .durability(crate::Durability::Periodic {
                interval: std::time::Duration::from_millis(100),
            })
            .open(dir.path())
            .unwrap();
        db.check_model(&model).unwrap();
        let put = |id: &str, seed: usize| put_product(&db, &model, id, seed);
        for i in 0..30 {
            put(&format!("p{i}"), i);
        }
        let stop = AtomicBool::new(false);
        let (mut checked, mut off) = (0, Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    put(&format!("p{}", 1 + n % 29), n * 5 + 1);
                    n += 1;
                }
            });
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(3) {
                let r = db.query("find like p0 limit 29").unwrap();
                for h in &r.hits {
                    let sum: f32 = h.contributions.iter().map(|c| c.value).sum();
                    checked += 1;
                    if (sum - h.score).abs() > 1e-4 {
                        off.push((h.id.clone(), sum, h.score));
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(checked > 1_000, "{checked}");
        assert!(
            off.is_empty(),
            "{} of {checked}: {:?}",
            off.len(),
            &off[..off.len().min(5)]
        );
    }

    /// A like of a product deleted while the feedback waited for the
    /// side-write lock (held for seconds by a tag deletion over many
    /// profiles) counts as it was, as a like of a product deleted later
    /// does; it used to count for nothing, now or later.
    #[test]
    fn a_like_waiting_for_the_lock_counts_a_product_deleted_meanwhile() {
        let Ok(model) = Model::bundled() else {
            eprintln!("SKIP: the bundled model is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::builder().model_spaces(&model).open(dir.path()).unwrap();
        db.check_model(&model).unwrap();
        let put = |id: &str, seed: usize| put_product(&db, &model, id, seed);
        for i in 0..4 {
            put(&format!("other{i}"), i + 10);
        }
        // The same like, with the product there throughout.
        put("liked", 1);
        let expected = db.feedback("reference", "liked", Feedback::Like).unwrap();
        // A thread scheduled late reads no vector (the product is gone):
        // tried again, not counted as a pass.
        for attempt in 0.. {
            assert!(attempt < 5, "the feedback never read the product first");
            let id = format!("gone{attempt}");
            put(&id, 1);
            let held = db.side_write_lock();
            let got = std::thread::scope(|s| {
                let like = s.spawn(|| db.feedback("user", &id, Feedback::Like));
                std::thread::sleep(std::time::Duration::from_millis(300));
                assert!(db.delete(&id).unwrap());
                drop(held);
                like.join().unwrap()
            });
            let Ok(profile) = got else { continue };
            assert_eq!(profile.weights, expected.weights);
            assert_eq!(profile.affinities, expected.affinities);
            // And at the next event, from the kept copy.
            let again = db.feedback("user", "other0", Feedback::Skip).unwrap();
            let reference = db.feedback("reference", "other0", Feedback::Skip).unwrap();
            assert_eq!(again.weights, reference.weights);
            break;
        }
    }
}
