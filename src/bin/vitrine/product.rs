//! `vitrine product …`: look at, change and delete single products.
//!
//! [`execute`] runs one command against an open database (the REPL reuses
//! it); [`run`] opens `--db` first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vitrine::{Attributes, Db};

use crate::import::{parse_in_stock, parse_price};

/// Arguments of `vitrine product`.
#[derive(Args)]
pub struct ProductArgs {
    /// The database folder (before or after the subcommand; required).
    #[arg(long, global = true, value_name = "DB")]
    pub db: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: ProductCommand,
}

/// The product commands.
#[derive(Subcommand, Clone, Debug)]
pub enum ProductCommand {
    /// Shows products: attributes, what the model said, vector sizes.
    Get {
        /// Product ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Changes attributes in place (vectors kept): `price=19.9`,
    /// `in_stock=false`, `category=Shirts`, `brand=Acme`, any other
    /// `key=value`; `key=` with nothing after it removes the attribute
    /// (`in_stock` always has a value).
    Set {
        /// Product id.
        id: String,
        /// `key=value` pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Lists the stored product ids, one per line, sorted (to compare with
    /// an export: which stored products did tonight's CSV leave out).
    List,
    /// Deletes products. Unknown ids are said; exit 3 when some ids were
    /// deleted and some unknown, 1 when none was known.
    Delete {
        /// Product ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Runs `vitrine product …`.
pub fn run(path: &Path, args: ProductArgs) -> anyhow::Result<()> {
    crate::existing_db(path)?;
    let db = crate::open_existing(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    // Dropping the database saves its indexes; a failure to (a full disk)
    // is logged, and the change made is stored either way.
    execute(&db, args.what, args.json)
}

/// Attributes written by the engine; `set` leaves them alone.
use crate::import::ENGINE_PREFIX;

/// Engine attributes too long to show in text (JSON arrays of scores).
const LONG: [&str; 4] = [
    vitrine::ATTR_CATEGORY_PROBS,
    vitrine::ATTR_TAG_SCORES,
    vitrine::ATTR_CONCEPT,
    vitrine::ATTR_COLOUR_LAB,
];

/// Runs one product command on an open database, printing to stdout.
pub fn execute(db: &Db, cmd: ProductCommand, json: bool) -> anyhow::Result<()> {
    // An id given twice is one product.
    let unique = |ids: Vec<String>| {
        let mut seen = std::collections::HashSet::new();
        ids.into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect::<Vec<_>>()
    };
    match cmd {
        ProductCommand::List => {
            use std::io::Write;
            // Buffered: a million lines, not a million writes.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for id in db.ids() {
                if json {
                    writeln!(out, "{}", crate::json_result(&serde_json::Value::from(id)))?;
                } else {
                    writeln!(out, "{}", crate::field(&id))?;
                }
            }
            out.flush()?;
        }
        ProductCommand::Get { ids } => {
            let ids = unique(ids);
            let mut missing = Vec::new();
            for id in &ids {
                let found = match db.get(id) {
                    Err(vitrine::Error::EmptyId | vitrine::Error::IdTooLong { .. }) => None,
                    r => r?,
                };
                let Some(p) = found else {
                    missing.push(id.as_str());
                    continue;
                };
                let vectors: serde_json::Map<String, serde_json::Value> = p
                    .vectors
                    .iter()
                    .map(|(name, v)| (name.clone(), v.len().into()))
                    .collect();
                if json {
                    println!(
                        "{}",
                        crate::json_result(&serde_json::json!({
                            "id": p.id, "category": p.attributes.category,
                            "brand": p.attributes.brand, "price": p.attributes.price,
                            "in_stock": p.attributes.in_stock, "attributes": p.attributes.extra,
                            "vector_dims": vectors,
                        }))
                    );
                    continue;
                }
                let a = &p.attributes;
                // Values are the user's: no control characters to the terminal.
                let shown = |v: &str| {
                    v.chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect::<String>()
                };
                println!("{}", shown(&p.id));
                println!(
                    "  category   {}",
                    shown(a.category.as_deref().unwrap_or("-"))
                );
                println!("  brand      {}", shown(a.brand.as_deref().unwrap_or("-")));
                println!(
                    "  price      {}",
                    a.price.map_or("-".to_string(), |x| x.to_string())
                );
                println!("  in stock   {}", if a.in_stock { "yes" } else { "no" });
                for (k, v) in &a.extra {
                    if !LONG.contains(&k.as_str()) {
                        println!("  {:<10} {}", shown(k), shown(v));
                    }
                }
                let dims: Vec<String> = vectors
                    .iter()
                    .map(|(name, n)| format!("{name} {n}-d"))
                    .collect();
                println!("  vectors    {}", dims.join(", "));
            }
            // Some shown, some unknown: exit 3, as a batch that left some
            // items is; none shown: 1.
            if !missing.is_empty() {
                if missing.len() < ids.len() {
                    return Err(
                        crate::Partial(format!("no product {}", shown_ids(&missing))).into(),
                    );
                }
                bail!("no product {}", shown_ids(&missing));
            }
        }
        ProductCommand::Set { id, pairs } => {
            let edits: Vec<(String, String)> = pairs
                .iter()
                .map(|pair| {
                    let (k, v) = pair
                        .split_once('=')
                        .with_context(|| format!("'{pair}': use key=value"))?;
                    let k = k.trim();
                    if k.is_empty() {
                        bail!("'{pair}': the key is empty");
                    }
                    // As an imported CSV's column names: one could not be
                    // shown, nor named by a CSV again.
                    if vitrine::has_hidden_character(k) {
                        bail!(
                            "'{}': the key holds a character that does not show (a control \
                             character, a zero-width space, a byte-order mark), which attribute \
                             names cannot",
                            k.escape_debug()
                        );
                    }
                    if k.to_ascii_lowercase().starts_with(ENGINE_PREFIX) {
                        bail!("'{k}' cannot be set (keys starting with '{ENGINE_PREFIX}' are the engine's)");
                    }
                    Ok((k.to_string(), v.trim().to_string()))
                })
                .collect::<anyhow::Result<_>>()?;
            // Parsed before the edit, so a bad value changes nothing.
            let mut probe = Attributes::new();
            for (k, v) in &edits {
                apply(&mut probe, k, v)?;
            }
            // As the import says of such a column: `In Stock=no` left the
            // stock as it was.
            for (k, _) in &edits {
                if let Some(b) = crate::import::near_built_in(k) {
                    esay!("note: '{k}' is a free attribute, not the built-in {b} (name it {b} to set that)");
                }
            }
            let changed = db.update_attributes(&id, |a| {
                for (k, v) in &edits {
                    apply(a, k, v).expect("checked above");
                }
            })?;
            if json {
                println!(
                    "{}",
                    crate::json_result(&serde_json::json!({ "id": id, "changed": changed }))
                );
            } else {
                println!("{id}: {}", if changed { "updated" } else { "unchanged" });
            }
        }
        ProductCommand::Delete { ids } => {
            let ids = unique(ids);
            let mut missing = Vec::new();
            let mut deleted = 0usize;
            for id in &ids {
                // An id no product can have (empty, too long) is unknown:
                // the others are still deleted.
                match db.delete(id) {
                    Ok(true) => deleted += 1,
                    Ok(false) | Err(vitrine::Error::EmptyId | vitrine::Error::IdTooLong { .. }) => {
                        missing.push(id.as_str())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if json {
                println!(
                    "{}",
                    crate::json_result(
                        &serde_json::json!({ "deleted": deleted, "unknown": missing })
                    )
                );
            } else {
                println!("deleted {deleted}");
            }
            // Outfits keep naming what was deleted: say which.
            let gone: std::collections::HashSet<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| !missing.contains(id))
                .collect();
            for o in db.outfits()? {
                let named: Vec<&str> = o
                    .products()
                    .into_iter()
                    .filter(|p| gone.contains(p))
                    .collect();
                if !named.is_empty() {
                    esay!(
                        "warning: outfit {} names deleted product(s) {}; substitute \
                         suggests replacements, cover skips it and expand refuses it until \
                         they are re-imported or the outfit is deleted",
                        o.id,
                        named.join(", ")
                    );
                }
            }
            if !missing.is_empty() {
                if deleted > 0 {
                    return Err(
                        crate::Partial(format!("no product {}", shown_ids(&missing))).into(),
                    );
                }
                bail!("no product {}", shown_ids(&missing));
            }
        }
    }
    Ok(())
}

/// Sets one attribute, with the product CSV's rules for values; an empty
/// value removes it (where a CSV's empty cell leaves it as it is).
fn apply(a: &mut Attributes, key: &str, value: &str) -> anyhow::Result<()> {
    // Single quotes are characters of a value here (the query language
    // reads them as quotes): `category='Shirts'` stored the quotes, and
    // no `where category = 'Shirts'` found it again.
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        anyhow::bail!(
            "{key}={value}: single quotes would be stored as part of the value; \
             write {key}={} (or in double quotes)",
            &value[1..value.len() - 1]
        );
    }
    let some = (!value.is_empty()).then(|| value.to_string());
    // The built-in fields in any case, as in a product CSV's header.
    match key.to_ascii_lowercase().as_str() {
        "category" => {
            // Given by hand: a later --refresh or --reembed keeps it; an
            // emptied category is the model's to fill again.
            match &some {
                Some(_) => a
                    .extra
                    .insert(vitrine::ATTR_CATEGORY_GIVEN.into(), "1".into()),
                None => a.extra.remove(vitrine::ATTR_CATEGORY_GIVEN),
            };
            a.category = some;
        }
        "brand" => a.brand = some,
        "price" => {
            a.price = match some {
                None => None,
                Some(v) => Some(parse_price(&v).map_err(anyhow::Error::msg)?),
            }
        }
        "in_stock" => a.in_stock = parse_in_stock(value).map_err(anyhow::Error::msg)?,
        _ => match some {
            Some(v) => {
                a.extra.insert(key.to_string(), v);
            }
            None => {
                a.extra.remove(key);
            }
        },
    }
    Ok(())
}

/// Ids for a message: an empty one or a very long one said as such, not
/// echoed (a 5,000-byte id on one line).
fn shown_ids(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| match id.len() {
            0 => "'' (an empty id)".to_string(),
            n if n > vitrine::MAX_ID_LEN => {
                format!(
                    "{}… (an id of {n} bytes; the limit is {})",
                    crate::field(&id.chars().take(40).collect::<String>()),
                    vitrine::MAX_ID_LEN
                )
            }
            _ => id.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
