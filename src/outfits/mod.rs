//! Outfits: hand-picked looks stored with the catalog, and what the engine
//! does with them.

mod features;
mod memory;
mod ops;
mod rules;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_storage::Record;

use crate::{Db, Error};

pub use features::MAX_CATALOG_COLOURS;
pub use ops::{
    CompleteMethod, CoverOptions, CoverPlan, ExpandOptions, Expansion, OutfitEngine, Relation,
    RelationKind, ScoredCandidate, SkippedTemplate, Substitute, Substitution, MAX_PALETTE,
};
pub use rules::{OutfitRules, PairRule, RuleKind};

const OUTFITS: &str = "outfits";
const RULES: &str = "outfit_rules";
const RULES_KEY: &[u8] = b"rules";
const SETTINGS: &str = "outfit_settings";
const SETTINGS_KEY: &[u8] = b"settings";
/// The side keyspaces of this module (see [`crate::db::SIDE_KEYSPACES`]).
pub(crate) const KEYSPACES: [&str; 3] = [OUTFITS, RULES, SETTINGS];

/// Longest outfit id accepted, in bytes.
pub const MAX_OUTFIT_ID_LEN: usize = 1024;

/// Most products in one outfit. Stylists' looks have a handful (Mango's
/// largest has 13); pair relations grow with the square of the size.
pub const MAX_OUTFIT_SLOTS: usize = 64;

/// Most outfits one expansion ([`OutfitEngine::expand`]) or one plan per
/// template ([`CoverOptions::outfits_per_template`]) makes. Each new
/// outfit is compared with every product of its slots' categories and
/// with the outfits made before it: "all the stock can make" of a large
/// category would run for hours.
pub const MAX_EXPANSIONS: usize = 10_000;

/// What [`Db::import_outfits_csv_known`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutfitImport {
    /// Outfits stored.
    pub imported: usize,
    /// Outfits left out, each with the first product it names that the
    /// database does not hold, in outfit id order.
    pub left_out: Vec<(String, String)>,
    /// Those of the outfits left out that were stored before: their
    /// earlier version stays as it was (the file's is not written), in
    /// outfit id order. Delete them ([`Db::delete_outfit`]) where the
    /// file's version was meant to replace them.
    pub kept_earlier: Vec<String>,
}

/// Why an outfit operation failed. Nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutfitError {
    /// An outfit names a product the database does not hold.
    #[error(
        "outfit '{outfit}' refers to unknown product '{product}' (not in the catalog: \
         never imported, or deleted since)"
    )]
    UnknownProduct {
        /// The outfit.
        outfit: String,
        /// The product id.
        product: String,
    },
    /// No outfit has this id.
    #[error("outfit '{0}' not found")]
    UnknownOutfit(String),
    /// An outfit without slots.
    #[error("outfit '{0}' has no products")]
    EmptyOutfit(String),
    /// An outfit id that is empty, too long, or holds a character that does
    /// not show ([`has_hidden_character`](crate::has_hidden_character)).
    #[error(
        "invalid outfit id '{}' (must be 1 to 1024 bytes, without characters that do not show)",
        crate::db::escape_hidden(.0)
    )]
    InvalidId(String),
    /// An outfit with more than [`MAX_OUTFIT_SLOTS`] products.
    #[error("outfit '{outfit}' has {slots} products; at most {MAX_OUTFIT_SLOTS} are accepted")]
    TooManySlots {
        /// The outfit.
        outfit: String,
        /// Its number of products.
        slots: usize,
    },
    /// The same product twice in one outfit.
    #[error("outfit '{outfit}' lists product '{product}' twice")]
    DuplicateProduct {
        /// The outfit.
        outfit: String,
        /// The product id.
        product: String,
    },
    /// A product has no model outputs (it was not inserted from an image).
    #[error("product '{0}' has no model outputs; outfits need image products")]
    NotAnImageProduct(String),
    /// A product was stored (with model outputs) after this
    /// [`crate::OutfitEngine`] read the catalog: take a new engine.
    #[error(
        "product '{0}' was stored after this outfit engine read the catalog; take a new engine"
    )]
    NotInSnapshot(String),
    /// A product still holds the vectors of the database's previous model
    /// (a re-embedding has not reached it, or failed on its image): they
    /// are in another space, so outfit operations leave it out until it
    /// is embedded again.
    #[error(
        "product '{0}' is still embedded by the previous model; re-embed it \
         (`vitrine import … --reembed`)"
    )]
    OfAnotherModel(String),
    /// The stored rules were learned under another model (the database was
    /// re-embedded since): learn them again ([`Db::learn_outfit_rules`]).
    #[error(
        "the outfit rules were learned under another model; learn them again \
         (learn_outfit_rules / `vitrine outfit rules --learn`)"
    )]
    StaleRules,
    /// The rules were never learned (call [`Db::learn_outfit_rules`]).
    #[error(
        "no outfit rules learned yet (run learn_outfit_rules / `vitrine outfit rules --learn`)"
    )]
    NoRules,
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A slot of a template that nothing can fill, so that no outfit can
    /// be made from it ([`crate::OutfitEngine::expand`],
    /// [`crate::OutfitEngine::cover`]): its category has fewer products in
    /// stock than the template has slots of it (none, often), or it is the
    /// anchor and no in-stock product of its category is outside the
    /// template, or has no category.
    #[error(
        "nothing can fill the place of product '{product}' in outfit '{outfit}': {}",
        unfillable_why(.category.as_deref(), *.anchor, *.in_stock, *.slots)
    )]
    UnfillableSlot {
        /// The template.
        outfit: String,
        /// The slot, from 0.
        slot: usize,
        /// The template's product in that slot.
        product: String,
        /// That product's category.
        category: Option<String>,
        /// Whether it is the anchor slot.
        anchor: bool,
        /// In-stock products that can fill the slot (of its category; or
        /// the product itself, without one).
        in_stock: usize,
        /// The template's slots that share those products.
        slots: usize,
    },
    /// A CSV file is malformed.
    #[error("{path}:{line}: {reason}")]
    Csv {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The database has no usable concept space (it was not built from
    /// images with a model, or the model lacks a block the engine reads).
    #[error("no usable concept space: {0}")]
    NoConceptSpace(String),
    /// The caller's file (an outfit CSV) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An error from the database.
    #[error(transparent)]
    Db(#[from] Error),
}

fn unfillable_why(category: Option<&str>, anchor: bool, in_stock: usize, slots: usize) -> String {
    match (category, anchor) {
        (None, true) => "as the anchor it is replaced by another product of its category, and it \
                         has no category, nor had when the outfit was stored (set its category, \
                         or choose another anchor slot)"
            .into(),
        (Some(c), true) => format!(
            "as the anchor it is replaced by an in-stock product of category '{c}' not in the \
             outfit, and there is none"
        ),
        (None, false) => {
            "it has no category (nor had when the outfit was stored), so only it can fill \
             its place, and it is out of stock (set its category)"
                .into()
        }
        (Some(c), false) if in_stock == 0 => {
            format!("no product of category '{c}' is in stock")
        }
        (Some(c), false) => format!(
            "the outfit has {slots} products of category '{c}', and only {in_stock} of that \
             category are in stock"
        ),
    }
}

impl OutfitError {
    /// Whether the caller can fix it by changing the request (unknown ids,
    /// bad arguments or files, a database without images); false for
    /// damaged data, the machine, and what the service or its operator
    /// must do first: a re-embedding not finished (a product still of the
    /// previous model), rules to learn (none yet, or stale after a
    /// re-embedding), an engine to take again (a product stored after it
    /// was taken), as [`crate::Error::is_user_error`] says.
    pub fn is_user_error(&self) -> bool {
        match self {
            OutfitError::Db(e) => e.is_user_error(),
            OutfitError::Io { source, .. } => crate::error::callers_file(source),
            OutfitError::OfAnotherModel(_)
            | OutfitError::StaleRules
            | OutfitError::NoRules
            | OutfitError::NotInSnapshot(_) => false,
            _ => true,
        }
    }
}

impl From<vitrine_storage::Error> for OutfitError {
    fn from(e: vitrine_storage::Error) -> Self {
        OutfitError::Db(e.into())
    }
}

/// Result of the outfit operations.
pub type OutfitResult<T> = std::result::Result<T, OutfitError>;

/// One slot of an outfit: a product and its category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutfitSlot {
    /// The product id.
    pub product: String,
    /// The product's catalog category when the outfit was stored.
    pub category: Option<String>,
}

/// A stored outfit (a template): products worn together, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outfit {
    /// The outfit id.
    pub id: String,
    /// The slots, in the order given.
    pub slots: Vec<OutfitSlot>,
}

impl Outfit {
    /// The product ids, in slot order.
    pub fn products(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.product.as_str()).collect()
    }
}

/// How the outfit engine reads products; persisted with the database
/// ([`Db::set_outfit_settings`]).
///
/// ```
/// use vitrine::OutfitSettings;
/// // The default: colour families come from the pixels.
/// assert_eq!(OutfitSettings::default().colour_attribute, None);
/// let s = OutfitSettings::new().colour_attribute("colour_group");
/// assert_eq!(s.colour_attribute.as_deref(), Some("colour_group"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutfitSettings {
    /// The product attribute that holds the retailer's colour group (e.g.
    /// `colour_group`). When set, two products that both have it share a
    /// colour family exactly when their values are equal, and the values
    /// name the families in rules and explanations (at most
    /// [`MAX_CATALOG_COLOURS`] distinct values, the most frequent; products
    /// without the attribute keep their measured colour). Default `None`:
    /// colour families come from the colour measured on the pixels.
    pub colour_attribute: Option<String>,
}

impl OutfitSettings {
    /// The defaults (no catalog colour attribute).
    pub fn new() -> Self {
        Self::default()
    }
    /// Use the product attribute `name` as the colour group.
    pub fn colour_attribute(mut self, name: impl Into<String>) -> Self {
        self.colour_attribute = Some(name.into());
        self
    }
}

impl Record for OutfitSettings {
    const VERSION: u8 = 1;
}

#[derive(Serialize, Deserialize)]
struct OutfitRecord {
    slots: Vec<OutfitSlot>,
}

impl Record for OutfitRecord {
    const VERSION: u8 = 1;
}

fn check_outfit_id(id: &str) -> OutfitResult<()> {
    if id.is_empty() || id.len() > MAX_OUTFIT_ID_LEN {
        return Err(OutfitError::InvalidId(id.chars().take(64).collect()));
    }
    Ok(())
}

impl Db {
    fn outfit_keyspace(&self) -> OutfitResult<vitrine_storage::Keyspace<OutfitRecord>> {
        Ok(self.side_keyspace::<OutfitRecord>(OUTFITS)?)
    }

    /// Checks an outfit against the catalog and builds its slots.
    fn validate_outfit<S: AsRef<str>>(&self, id: &str, products: &[S]) -> OutfitResult<Outfit> {
        check_outfit_id(id)?;
        // A line break or an escape in an id would print as another id, or
        // drive the terminal, and could not be typed back; a zero-width
        // space would make a second outfit that looks like the first. (Ids
        // stored by an older build stay readable and deletable.)
        if crate::has_hidden_character(id) {
            return Err(OutfitError::InvalidId(id.chars().take(64).collect()));
        }
        if products.is_empty() {
            return Err(OutfitError::EmptyOutfit(id.to_string()));
        }
        if products.len() > MAX_OUTFIT_SLOTS {
            return Err(OutfitError::TooManySlots {
                outfit: id.to_string(),
                slots: products.len(),
            });
        }
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(products.len());
        // A product whose category was cleared since keeps the one its
        // slot stored (what substitute and expand fall back to): storing
        // the outfit again, as a routine re-import does, must not lose it.
        let earlier: Vec<OutfitSlot> = match self.outfit(id) {
            Ok(Some(o)) => o.slots,
            _ => Vec::new(),
        };
        for p in products {
            let p = p.as_ref();
            if !seen.insert(p) {
                return Err(OutfitError::DuplicateProduct {
                    outfit: id.to_string(),
                    product: p.to_string(),
                });
            }
            let Some(attrs) = self.attributes(p) else {
                return Err(OutfitError::UnknownProduct {
                    outfit: id.to_string(),
                    product: p.to_string(),
                });
            };
            // The outfit operations read the model's outputs: a product
            // inserted with vectors only would pass for a deleted one. (A
            // database without a model stores outfits as plain lists.)
            if let Ok(None) = self.vector(crate::CONCEPT_SPACE, p) {
                // Deleted since the read above: unknown, as before it.
                if self.attributes(p).is_none() {
                    return Err(OutfitError::UnknownProduct {
                        outfit: id.to_string(),
                        product: p.to_string(),
                    });
                }
                return Err(OutfitError::NotAnImageProduct(p.to_string()));
            }
            let category = attrs.category.clone().or_else(|| {
                earlier
                    .iter()
                    .find(|s| s.product == p)
                    .and_then(|s| s.category.clone())
            });
            slots.push(OutfitSlot {
                product: p.to_string(),
                category,
            });
        }
        Ok(Outfit {
            id: id.to_string(),
            slots,
        })
    }

    /// Stores (or replaces) the outfit `id` made of `products`, each slot's
    /// category taken from its product. Every product must exist and, in a
    /// database with a model, have its outputs (inserted from an image:
    /// else [`OutfitError::NotAnImageProduct`]); the outfit is written in
    /// one atomic put, after all checks.
    ///
    /// Learned rules are not updated: call [`Db::learn_outfit_rules`] after a
    /// batch of changes (it rebuilds in about a second for thousands of
    /// outfits).
    pub fn store_outfit<S: AsRef<str>>(&self, id: &str, products: &[S]) -> OutfitResult<Outfit> {
        let outfit = self.validate_outfit(id, products)?;
        self.outfit_keyspace()?.put(
            id.as_bytes(),
            &OutfitRecord {
                slots: outfit.slots.clone(),
            },
        )?;
        Ok(outfit)
    }

    /// Imports outfits from a CSV file with a header and two columns,
    /// `outfit_id,product_id` (any header names; rows of one outfit need
    /// not be adjacent). Every row is checked first; then all outfits are
    /// written in one atomic batch, an outfit id already stored being
    /// replaced by the file's. Returns the number of outfits. An outfit
    /// naming a product the database does not hold fails the import
    /// ([`OutfitError::UnknownProduct`]); [`Db::import_outfits_csv_known`]
    /// leaves such outfits out instead.
    pub fn import_outfits_csv(&self, path: impl AsRef<Path>) -> OutfitResult<usize> {
        Ok(self.import_outfits(path.as_ref(), false)?.imported)
    }

    /// As [`Db::import_outfits_csv`], but an outfit naming a product the
    /// database does not hold (a stylist's archive names products since
    /// removed, or never imported) is left out rather than failing the
    /// import; every other error still fails it. The result lists each
    /// outfit left out with the first unknown product it names, and those
    /// of them whose earlier stored version stays.
    pub fn import_outfits_csv_known(&self, path: impl AsRef<Path>) -> OutfitResult<OutfitImport> {
        self.import_outfits(path.as_ref(), true)
    }

    fn import_outfits(&self, path: &Path, skip_unknown: bool) -> OutfitResult<OutfitImport> {
        let csv_err = |line: usize, reason: String| OutfitError::Csv {
            path: path.display().to_string(),
            line,
            reason,
        };
        let bytes = crate::csv::read_csv_file(path).map_err(|source| OutfitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            csv_err(line, "not UTF-8 text".into())
        })?;
        let records = crate::parse_csv(&text).map_err(|e| csv_err(e.line(), e.to_string()))?;
        // Lines end at '\n' only: a file of bare-CR line ends (an old Mac
        // export) is one record, which would import nothing and say so
        // only by a count of 0.
        if let Some(r) = records
            .iter()
            .find(|r| r.fields.iter().any(|f| f.contains('\r')))
        {
            return Err(csv_err(
                r.line,
                "a field holds a carriage return: lines must end with LF or CRLF".into(),
            ));
        }
        // A file without its header would silently lose its first row: a
        // header never names a stored product, nor an outfit of a later row.
        if let Some(first) = records.first() {
            if let Some(p) = first.fields.get(1).map(|p| p.trim()) {
                if !p.is_empty() && matches!(self.get(p), Ok(Some(_))) {
                    return Err(csv_err(
                        first.line,
                        format!("'{p}' is a product id: the first line must be a header (outfit_id,product_id)"),
                    ));
                }
            }
            if let Some(o) = first.fields.first().map(|o| o.trim()) {
                let again = records
                    .iter()
                    .skip(1)
                    .any(|r| r.fields.first().is_some_and(|x| x.trim() == o));
                if !o.is_empty() && again {
                    return Err(csv_err(
                        first.line,
                        format!("'{o}' is an outfit id of a later row: the first line must be a header (outfit_id,product_id)"),
                    ));
                }
            }
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in records.iter().skip(1) {
            // A spreadsheet writes a cleared row as `,`: no row.
            if record.fields.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let [o, p, rest @ ..] = &record.fields[..] else {
                return Err(csv_err(record.line, "expected outfit_id,product_id".into()));
            };
            // A third value would be dropped unseen (an empty one, from a
            // trailing comma, is harmless).
            if rest.iter().any(|f| !f.trim().is_empty()) {
                return Err(csv_err(
                    record.line,
                    format!(
                        "{} fields; expected outfit_id,product_id",
                        record.fields.len()
                    ),
                ));
            }
            let (o, p) = (o.trim(), p.trim());
            if o.is_empty() || p.is_empty() {
                return Err(csv_err(record.line, "empty outfit or product id".into()));
            }
            groups.entry(o.to_string()).or_default().push(p.to_string());
        }
        // As the product import refuses one: a cut or empty export would
        // read as "imported 0 outfits", exit 0 (and `--learn` relearn
        // the rules for nothing).
        if groups.is_empty() {
            let what = if records.is_empty() {
                "the file is empty"
            } else {
                "the file has no outfit rows, only a header"
            };
            return Err(csv_err(records.first().map_or(1, |r| r.line), what.into()));
        }
        let ks = self.outfit_keyspace()?;
        let mut outfits = Vec::with_capacity(groups.len());
        let mut left_out = Vec::new();
        let mut kept_earlier = Vec::new();
        for (id, products) in &groups {
            match self.validate_outfit(id, products) {
                Ok(o) => outfits.push(o),
                Err(OutfitError::UnknownProduct { outfit, product }) if skip_unknown => {
                    if ks.contains(outfit.as_bytes())? {
                        kept_earlier.push(outfit.clone());
                    }
                    left_out.push((outfit, product));
                }
                Err(e) => return Err(e),
            }
        }
        let mut batch = ks.batch();
        for o in &outfits {
            batch.put(
                o.id.as_bytes(),
                &OutfitRecord {
                    slots: o.slots.clone(),
                },
            )?;
        }
        ks.apply(batch)?;
        tracing::info!(
            outfits = outfits.len(),
            left_out = left_out.len(),
            "imported outfits"
        );
        Ok(OutfitImport {
            imported: outfits.len(),
            left_out,
            kept_earlier,
        })
    }

    /// Every stored outfit, in id order. One whose record does not decode
    /// (damaged, or a newer build's) is left out with a warning
    /// ([`Db::outfit_count`] still counts it; [`Db::outfit`] names it).
    pub fn outfits(&self) -> OutfitResult<Vec<Outfit>> {
        self.outfit_keyspace()?
            .iter()
            .filter_map(|r| match r {
                Ok((k, rec)) => Some(Ok(Outfit {
                    id: String::from_utf8_lossy(&k).into_owned(),
                    slots: rec.slots,
                })),
                Err(e) if crate::concepts::undecodable(&e) => {
                    tracing::warn!(error = %e, "unreadable outfit left out");
                    None
                }
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    /// Number of stored outfits.
    pub fn outfit_count(&self) -> OutfitResult<usize> {
        Ok(self.outfit_keyspace()?.len()?)
    }

    /// The outfit `id`, if stored.
    pub fn outfit(&self, id: &str) -> OutfitResult<Option<Outfit>> {
        check_outfit_id(id)?;
        Ok(self.outfit_keyspace()?.get(id.as_bytes())?.map(|r| Outfit {
            id: id.to_string(),
            slots: r.slots,
        }))
    }

    /// Deletes the outfit `id`; returns whether it existed. The learned
    /// rules (and the outfits they remember) keep it until
    /// [`Db::learn_outfit_rules`] runs again
    /// ([`Db::outfit_rules_current`] says when they are stale).
    pub fn delete_outfit(&self, id: &str) -> OutfitResult<bool> {
        check_outfit_id(id)?;
        Ok(self.outfit_keyspace()?.remove(id.as_bytes())?)
    }

    /// Learns [`OutfitRules`] from every readable stored outfit (see
    /// [`Db::outfits`]), persists them
    /// (replacing earlier rules, atomically) and returns them.
    pub fn learn_outfit_rules(&self) -> OutfitResult<OutfitRules> {
        // One run at a time: the rules of the newest outfits are written last.
        let _learning = self.rule_learning_lock();
        let outfits = self.outfits()?;
        // The model its vectors are of, read with them.
        let cat = features::Catalog::load(self)?;
        let rules = rules::learn(&cat, &outfits, cat.model.clone());
        self.side_keyspace::<OutfitRules>(RULES)?
            .put(RULES_KEY, &rules)?;
        Ok(rules)
    }

    /// Persists `settings` for every later outfit operation. Rules learned
    /// before keep the colour families they were learned with (they are
    /// matched by name); call [`Db::learn_outfit_rules`] to relearn them
    /// with the new ones. A colour attribute that no stored product has is
    /// refused (a misspelt name would silently fall back to measured
    /// colour); an empty database accepts any.
    pub fn set_outfit_settings(&self, settings: &OutfitSettings) -> OutfitResult<()> {
        if let Some(a) = &settings.colour_attribute {
            if a.trim().is_empty() || a.len() > 256 {
                return Err(OutfitError::InvalidArgument(format!(
                    "colour attribute '{}' must be 1 to 256 bytes and not blank",
                    a.chars().take(64).collect::<String>()
                )));
            }
            // The engine's own keys (model category, tags, measured colour)
            // are not a catalog's colour groups.
            if a.to_ascii_lowercase().starts_with("vitrine.") {
                return Err(OutfitError::InvalidArgument(format!(
                    "colour attribute '{a}' is the engine's (keys starting with 'vitrine.'); \
                     name a catalog attribute"
                )));
            }
            // In memory, without copying a product's attributes.
            if !self.is_empty() && !self.any_product_has(a) {
                return Err(OutfitError::InvalidArgument(format!(
                    "no product has the attribute '{a}' (of {} products)",
                    self.len()
                )));
            }
        }
        self.side_keyspace::<OutfitSettings>(SETTINGS)?
            .put(SETTINGS_KEY, settings)?;
        Ok(())
    }

    /// The persisted settings (the defaults when none were set).
    pub fn outfit_settings(&self) -> OutfitResult<OutfitSettings> {
        Ok(self
            .side_keyspace::<OutfitSettings>(SETTINGS)?
            .get(SETTINGS_KEY)?
            .unwrap_or_default())
    }

    /// The persisted rules, if they were ever learned. Rules that cannot
    /// be read (saved by an older or newer build, or damaged) are none,
    /// with a warning: they are derived data, which
    /// [`Db::learn_outfit_rules`] writes again, and must not stop the
    /// outfit operations that rank without them.
    pub fn outfit_rules(&self) -> OutfitResult<Option<OutfitRules>> {
        let unreadable = |why: String| {
            let msg = "outfit rules unreadable; learn them again";
            if self.first_warning(format!("outfit rules: {why}")) {
                tracing::warn!(reason = %why, "{msg}");
            } else {
                tracing::debug!(reason = %why, "{msg}");
            }
        };
        let rules = match self.side_keyspace::<OutfitRules>(RULES)?.get(RULES_KEY) {
            Ok(rules) => rules,
            Err(vitrine_storage::Error::UnknownRecordVersion { found, .. })
                if found < <OutfitRules as Record>::VERSION =>
            {
                unreadable(format!("saved by an older build (record version {found})"));
                None
            }
            Err(e) if crate::concepts::undecodable(&e) => {
                unreadable(e.to_string());
                None
            }
            Err(e) => return Err(e.into()),
        };
        match rules {
            Some(r) => match r.check() {
                Ok(()) => Ok(Some(r)),
                Err(reason) => {
                    unreadable(reason);
                    Ok(None)
                }
            },
            None => Ok(None),
        }
    }
}
