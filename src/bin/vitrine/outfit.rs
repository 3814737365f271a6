//! `vitrine outfit …`: store, inspect and use outfits (templates).
//!
//! [`execute`] runs one command against an open database and prints to
//! stdout, so the REPL can reuse it; [`run`] is the CLI wrapper that opens
//! `--db` first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use image::RgbImage;
use vitrine::{CompleteMethod, CoverOptions, Db, ExpandOptions, Expansion, Model, Outfit};

use crate::sheet::{self, Tile};

/// Arguments of `vitrine outfit`.
#[derive(Args)]
pub struct OutfitArgs {
    /// The database folder (before or after the subcommand; required).
    #[arg(long, global = true, value_name = "DB")]
    pub db: Option<PathBuf>,
    /// Print JSON instead of text: the library's own structures, whose
    /// slot indexes count from 0 (the text counts from 1, as
    /// `--anchor-slot` does).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: OutfitCommand,
}

/// The outfit commands.
#[derive(Subcommand, Clone, Debug)]
pub enum OutfitCommand {
    /// Imports outfits from a CSV `outfit_id,product_id` (with a header).
    /// An unknown product fails the whole import, unless --skip-unknown.
    Import {
        /// The CSV file.
        csv: PathBuf,
        /// Learn the rules afterwards.
        #[arg(long)]
        learn: bool,
        /// Leave out the outfits that name a product the database does not
        /// hold, and import the others (by default one such outfit fails
        /// the import, and nothing is stored).
        #[arg(long)]
        skip_unknown: bool,
    },
    /// Lists the stored outfits.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Shows one outfit: its products, categories and colour families;
    /// `--sheet` writes a contact sheet.
    Show {
        /// The outfit id.
        id: String,
        #[command(flatten)]
        sheet: SheetArgs,
    },
    /// Deletes an outfit.
    Delete {
        /// The outfit id.
        id: String,
    },
    /// The best in-stock substitutes for each out-of-stock item of an outfit.
    Substitute {
        /// The outfit id.
        id: String,
        /// Candidates per item (at least 1).
        #[arg(short, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        k: u32,
        /// Treat these products as sold out for this query (comma
        /// separated, or the flag repeated; nothing is written). Read as a
        /// CSV line: `'"12,3",x'` names the id `12,3` (in the REPL:
        /// `\"12,3\",x`).
        #[arg(long, value_parser = id_list)]
        sold_out: Vec<IdList>,
    },
    /// Creates new outfits that keep the template's colour relations.
    Expand {
        /// The template outfit id.
        id: String,
        /// How many outfits.
        #[arg(short, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        n: usize,
        /// The slot (1-based) that gets a new anchor.
        #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        anchor_slot: usize,
        /// MMR diversity in [0, 1].
        #[arg(long, default_value_t = 0.3, value_parser = unit_interval)]
        diversity: f32,
        /// How closely new outfits follow the template's own colours, on
        /// top of its colour relations (0 = relations only; above 1000
        /// counts as 1000).
        #[arg(long, default_value_t = 2.0, value_parser = non_negative)]
        palette: f32,
        #[command(flatten)]
        sheet: SheetArgs,
    },
    /// Plans outfits from templates covering as much of the in-stock
    /// inventory as possible.
    Cover {
        /// Template ids (comma separated, as --sold-out); default: all
        /// stored outfits.
        #[arg(long, value_parser = id_list)]
        templates: Vec<IdList>,
        /// At most this many outfits per template (at least 1).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        per_template: u32,
        /// List every planned outfit.
        #[arg(long)]
        verbose: bool,
    },
    /// Ranks candidates for the open slot of a partial outfit.
    Complete {
        /// The items of the partial outfit (comma separated, as
        /// `substitute --sold-out`).
        #[arg(long, value_parser = id_list, required = true)]
        given: Vec<IdList>,
        /// The candidates (comma separated, as `substitute --sold-out`).
        #[arg(
            long,
            value_parser = id_list,
            required_unless_present = "category",
            conflicts_with = "category"
        )]
        candidates: Vec<IdList>,
        /// Instead of --candidates: every in-stock product of this category.
        #[arg(long)]
        category: Option<String>,
        /// How many ranked candidates to print.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Signals used: full, learned, rules, compat, kernel, visual.
        #[arg(long, default_value = "full")]
        method: String,
    },
    /// Shows (and with --learn, first relearns) the rules learned from the
    /// stored outfits.
    Rules {
        /// Relearn from the stored outfits first.
        #[arg(long)]
        learn: bool,
        /// How many rules to show.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Minimum co-worn pairs behind a rule.
        #[arg(long, default_value_t = 30)]
        min_support: u32,
    },
    /// Shows or changes the outfit settings. `--colour-attribute NAME` makes
    /// that product attribute (the retailer's colour group) the colour
    /// family of every outfit operation; `--measured-colour` goes back to
    /// colours measured on the pixels. Relearn the rules afterwards.
    Settings {
        /// The product attribute holding the colour group.
        #[arg(long, conflicts_with = "measured_colour")]
        colour_attribute: Option<String>,
        /// Colour families from the pixels (the default).
        #[arg(long)]
        measured_colour: bool,
    },
}

/// Contact-sheet flags.
#[derive(Args, Clone, Debug, Default)]
pub struct SheetArgs {
    /// Write a contact sheet (PNG) here.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Where product images are: a CSV whose first column is the product id
    /// and with a `des_filename`, `path` or `image` column, else the image
    /// path in the second column (paths relative to the CSV's folder).
    /// Without it, the file each product was imported from (its
    /// `vitrine.source` attribute), else its `image` attribute. Only with
    /// `--sheet`.
    #[arg(long, requires = "sheet")]
    pub images: Option<PathBuf>,
}

/// Runs `vitrine outfit …`.
pub fn run(path: &Path, args: OutfitArgs) -> anyhow::Result<()> {
    crate::existing_db(path)?;
    // Outfits read the stored vectors only, which agree with each other
    // whichever model made them (as in the REPL): without the bundled
    // model, or with another one, the database opens as it is.
    // Another model's, or none's (made by the library with vectors of its
    // own): list, show, import and delete still work.
    let model = Model::bundled().ok();
    let (db, _) = crate::open_for_model(path, model.as_deref())?;
    execute(&db, args.what, args.json)
}

/// The ids of one argument.
#[derive(Clone, Debug)]
pub struct IdList(Vec<String>);

/// The ids of every occurrence of a flag, in order.
fn ids(lists: Vec<IdList>) -> Vec<String> {
    lists.into_iter().flat_map(|l| l.0).collect()
}

/// Ids separated by commas, read as one CSV line (the dialect of the
/// files the ids came from): a quoted cell may hold a comma. Cells are
/// trimmed, as the CSV import trims ids.
fn id_list(s: &str) -> Result<IdList, String> {
    let records = vitrine::parse_csv(s).map_err(|e| e.to_string())?;
    let [record] = records.as_slice() else {
        return Err("a list of ids on one line (id,id,…)".into());
    };
    let ids: Vec<String> = record.fields.iter().map(|f| f.trim().to_string()).collect();
    if ids.iter().any(String::is_empty) {
        return Err(format!("an empty id in '{s}'"));
    }
    Ok(IdList(ids))
}

fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("'{s}' is not a number in [0, 1]")),
    }
}

pub(crate) fn non_negative(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("'{s}' is not a finite number >= 0")),
    }
}

pub fn method_of(s: &str) -> anyhow::Result<CompleteMethod> {
    Ok(match s {
        "full" => CompleteMethod::Full,
        "learned" => CompleteMethod::Learned,
        "rules" => CompleteMethod::Rules,
        "compat" => CompleteMethod::Compat,
        "visual" => CompleteMethod::Visual,
        "kernel" => CompleteMethod::Kernel,
        _ => bail!("unknown method '{s}' (full, learned, rules, compat, kernel, visual)"),
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    // One line: the REPL's and `vitrine query`'s JSON mode is JSON lines.
    println!("{}", crate::json_result(v));
    Ok(())
}

/// Runs one outfit command on an open database, printing to stdout.
pub fn execute(db: &Db, cmd: OutfitCommand, json: bool) -> anyhow::Result<()> {
    let uses_rules = match &cmd {
        OutfitCommand::Substitute { .. }
        | OutfitCommand::Expand { .. }
        | OutfitCommand::Cover { .. }
        | OutfitCommand::Complete { .. } => true,
        OutfitCommand::Rules { learn, .. } => !learn,
        _ => false,
    };
    let ranks_without = matches!(
        cmd,
        OutfitCommand::Substitute { .. }
            | OutfitCommand::Expand { .. }
            | OutfitCommand::Cover { .. }
    );
    // A note, not the command's to fail: one that cannot tell says so.
    let current = match uses_rules.then(|| db.outfit_rules_current()) {
        Some(Ok(current)) => current,
        Some(Err(e)) => {
            esay!(
                "warning: cannot tell whether the outfit rules are current: {}",
                crate::error_message(&e.into())
            );
            Some(true)
        }
        None => None,
    };
    match current {
        Some(false) => esay!(
            "warning: the outfit rules are stale (outfits, their products or colour groups \
             changed since they were learned); `vitrine outfit rules --learn` relearns them"
        ),
        // Complete and rules refuse without rules; these rank without them.
        None if ranks_without && uses_rules => esay!(
            "note: no outfit rules are learned, so candidates are ranked without learned \
             compatibility; `vitrine outfit rules --learn` learns them"
        ),
        _ => {}
    }
    let learns = matches!(
        cmd,
        OutfitCommand::Import { learn: true, .. } | OutfitCommand::Rules { learn: true, .. }
    );
    let result = execute_command(db, cmd, json);
    if learns && !json && result.is_ok() {
        // A hint: what was learned is stored whatever it meets.
        if let Err(e) = colour_attribute_hint(db) {
            tracing::warn!(error = %e, "no colour attribute hint");
        }
    }
    result
}

fn execute_command(db: &Db, cmd: OutfitCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        OutfitCommand::Import {
            csv,
            learn,
            skip_unknown,
        } => {
            // What learning needs, checked before anything is written: the
            // outfits are not stored by a command that then fails.
            if learn {
                db.concept_layout()?;
            }
            let (n, left_out, kept_earlier) = if skip_unknown {
                let done = db.import_outfits_csv_known(&csv)?;
                (done.imported, done.left_out, done.kept_earlier)
            } else {
                match db.import_outfits_csv(&csv) {
                    Ok(n) => (n, Vec::new(), Vec::new()),
                    Err(e @ vitrine::OutfitError::UnknownProduct { .. }) => {
                        return Err(anyhow::Error::new(e).context(
                            "nothing was imported; --skip-unknown imports the outfits whose \
                             products are all stored",
                        ))
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some((outfit, product)) = left_out.first() {
                if !json {
                    eprintln!(
                        "left out {} outfits naming products the database does not hold \
                         (first: outfit {outfit} names {product})",
                        left_out.len()
                    );
                    if let Some(first) = kept_earlier.first() {
                        eprintln!(
                            "{} of them were stored before and keep their earlier version \
                             (first: outfit {first}); `vitrine outfit delete ID` removes one",
                            kept_earlier.len()
                        );
                    }
                }
            }
            let rules = if learn {
                // The outfits stay stored: say so, and how to learn again.
                Some(db.learn_outfit_rules().with_context(|| {
                    format!(
                        "the {n} outfits were imported, but learning the rules failed \
                         (`vitrine outfit --db {} rules --learn` tries again)",
                        crate::shell_word(&db.path().display().to_string())
                    )
                })?)
            } else {
                None
            };
            if json {
                print_json(&serde_json::json!({
                    "imported": n,
                    "left_out": left_out
                        .iter()
                        .map(|(o, p)| serde_json::json!({"outfit": o, "unknown_product": p}))
                        .collect::<Vec<_>>(),
                    "kept_earlier": kept_earlier,
                    "stored": db.outfit_count()?,
                    "learned_from": rules.as_ref().map(|r| r.outfits),
                }))?;
            } else {
                say!("imported {n} outfits ({} stored)", db.outfit_count()?);
                if let Some(r) = rules {
                    say!(
                        "learned rules from {} outfits ({} ordered co-worn pairs) in {} ms",
                        r.outfits,
                        r.pairs,
                        r.learn_ms
                    );
                }
            }
        }
        OutfitCommand::List { limit } => {
            let all = db.outfits()?;
            if json {
                print_json(&all.iter().take(limit).collect::<Vec<_>>())?;
                if all.len() > limit {
                    esay!("(the first {limit} of {}; --limit N shows more)", all.len());
                }
            } else {
                say!("{} outfits", all.len());
                for o in all.iter().take(limit) {
                    say!(
                        "{}\t{}",
                        crate::field(&o.id),
                        crate::field(&o.products().join(" "))
                    );
                }
                if all.len() > limit {
                    say!("(the first {limit}; --limit N shows more)");
                }
            }
        }
        OutfitCommand::Show { id, sheet } => {
            let o = db
                .outfit(&id)?
                .ok_or_else(|| vitrine::OutfitError::UnknownOutfit(id.clone()))?;
            let eng = engine_if_any(db)?;
            // The sheet first: a path that cannot be written fails before
            // anything is printed.
            if let Some(path) = &sheet.sheet {
                let img = outfit_sheet(db, eng.as_ref(), &sheet, &o, &[])?;
                crate::sheet::save(&img, path)?;
            }
            if json {
                // The stored outfit, and per slot what the text shows: the
                // product now (null fields when it left the catalog).
                let mut v = serde_json::to_value(&o)?;
                if let Some(slots) = v["slots"].as_array_mut() {
                    for (slot, s) in slots.iter_mut().zip(&o.slots) {
                        let now = db.attributes(&s.product);
                        slot["in_catalog"] = now.is_some().into();
                        slot["in_stock"] = now.as_ref().map(|a| a.in_stock).into();
                        slot["current_category"] =
                            now.as_ref().and_then(|a| a.category.clone()).into();
                        slot["colour_family"] = eng
                            .as_ref()
                            .and_then(|e| e.colour_family(&s.product))
                            .into();
                    }
                }
                print_json(&v)?;
            } else {
                say!("outfit {}", o.id);
                for (i, s) in o.slots.iter().enumerate() {
                    // Without a concept space (no model made the database),
                    // no colour family; stock from the catalog.
                    // The engine holds only products with model outputs:
                    // one stored without them is still in the catalog.
                    let now = db.attributes(&s.product);
                    let stock = now.as_ref().map(|a| a.in_stock);
                    // The category now, as substitutes use it; the one the
                    // outfit was stored with when it changed or the product
                    // is gone.
                    let category = match (now.as_ref().map(|a| a.category.as_deref()), &s.category)
                    {
                        (Some(now), stored) if now == stored.as_deref() => {
                            now.unwrap_or("-").to_string()
                        }
                        (Some(now), stored) => format!(
                            "{} (stored as {})",
                            now.unwrap_or("-"),
                            stored.as_deref().unwrap_or("-")
                        ),
                        (None, stored) => stored.as_deref().unwrap_or("-").to_string(),
                    };
                    say!(
                        "  {}. {}\t{}\tcolour {}\t{}",
                        i + 1,
                        crate::field(&s.product),
                        crate::field(&category),
                        eng.as_ref()
                            .and_then(|e| e.colour_family(&s.product))
                            .unwrap_or("?"),
                        match stock {
                            Some(true) => "in stock",
                            Some(false) => "SOLD OUT",
                            None => "no longer in the catalog",
                        }
                    );
                }
                if let Some(path) = &sheet.sheet {
                    say!("contact sheet: {}", path.display());
                }
            }
        }
        OutfitCommand::Delete { id } => {
            if !db.delete_outfit(&id)? {
                return Err(vitrine::OutfitError::UnknownOutfit(id).into());
            }
            if json {
                print_json(&serde_json::json!({ "deleted": id }))?;
            } else {
                say!("deleted {id}");
            }
        }
        OutfitCommand::Substitute { id, k, sold_out } => {
            let sold_out = ids(sold_out);
            let mut eng = db.outfit_engine()?;
            if let Some(p) = sold_out.iter().find(|p| eng.in_stock(p).is_none()) {
                // The engine holds only image products of this model.
                if db.get(p)?.is_some() {
                    bail!(
                        "--sold-out: product '{p}' has no model outputs of this database's \
                         model (stored with plain vectors, or not yet re-embedded)"
                    );
                }
                bail!("--sold-out: unknown product '{p}'");
            }
            eng.assume_sold_out(&sold_out);
            let subs = eng.substitute(&id, k as usize)?;
            if json {
                print_json(&subs)?;
            } else if subs.is_empty() {
                say!("every item of {id} is in stock");
            } else {
                for s in subs {
                    say!(
                        "slot {} {} ({}) is {}; substitutes:",
                        s.slot + 1,
                        crate::field(&s.original),
                        crate::field(s.category.as_deref().unwrap_or("-")),
                        if s.deleted {
                            "no longer in the catalog"
                        } else {
                            "sold out"
                        }
                    );
                    for (r, c) in s.candidates.iter().enumerate() {
                        say!(
                            "  {}. {}\tscore {:.2}\t{}",
                            r + 1,
                            crate::field(&c.product),
                            c.score,
                            crate::field(&c.explanation)
                        );
                    }
                    match s.category.as_deref() {
                        _ if !s.candidates.is_empty() => {}
                        _ if !s.taken.is_empty() => say!(
                            "  (none left: {} in stock, ranked first for an earlier slot; an \
                             outfit holds a product once)",
                            s.taken
                                .iter()
                                .map(|p| crate::field(p))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Some(c) if eng.category_size(c) == 0 => say!(
                            "  (none: no product of category {} is left in the catalog; a \
                             deleted product's slot keeps the category it had when the \
                             outfit was stored)",
                            crate::field(c)
                        ),
                        Some(_) => say!("  (none: no other product of this category is in stock)"),
                        None => say!(
                            "  (none: the product has no category, nor had when the outfit was \
                             stored; set its category: `vitrine product --db DB set ID \
                             category=…`)"
                        ),
                    }
                }
            }
        }
        OutfitCommand::Expand {
            id,
            n,
            anchor_slot,
            diversity,
            palette,
            sheet,
        } => {
            if let Some(o) = db.outfit(&id)? {
                if anchor_slot > o.slots.len() {
                    bail!(
                        "--anchor-slot {anchor_slot} but outfit '{id}' has {} slots",
                        o.slots.len()
                    );
                }
            }
            let opts = ExpandOptions::new()
                .anchor_slot(anchor_slot - 1)
                .diversity(diversity)
                .palette(palette);
            let started = std::time::Instant::now();
            let eng = db.outfit_engine()?;
            let out = eng.expand(&id, n, &opts)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if let Some(path) = &sheet.sheet {
                let o = db
                    .outfit(&id)?
                    .ok_or_else(|| vitrine::OutfitError::UnknownOutfit(id.clone()))?;
                let img = outfit_sheet(db, Some(&eng), &sheet, &o, &out)?;
                crate::sheet::save(&img, path)?;
            }
            if json {
                print_json(&out)?;
            } else {
                say!(
                    "{} outfits from template {id} in {ms:.1} ms ({:.1} ms per outfit, engine load included)",
                    out.len(),
                    ms / out.len().max(1) as f64
                );
                for (i, e) in out.iter().enumerate() {
                    say!("{}. {}", i + 1, crate::field(&e.products.join(" ")));
                    for line in &e.explanation {
                        say!("     {}", crate::field(line));
                    }
                }
                if out.len() < n {
                    say!(
                        "(fewer than {n}: each outfit needs a new in-stock anchor of the anchor \
                         slot's category and in-stock products for every other slot)"
                    );
                }
                if let Some(path) = &sheet.sheet {
                    say!("contact sheet: {}", path.display());
                }
            }
        }
        OutfitCommand::Cover {
            templates,
            per_template,
            verbose,
        } => {
            let templates = if templates.is_empty() {
                db.outfits()?.into_iter().map(|o| o.id).collect()
            } else {
                ids(templates)
            };
            let plan = db.cover(
                &templates,
                &CoverOptions::new().outfits_per_template(per_template as usize),
            )?;
            if json {
                print_json(&plan)?;
            } else {
                if verbose {
                    for e in &plan.outfits {
                        say!(
                            "{}\t{}",
                            crate::field(&e.template),
                            crate::field(&e.products.join(" "))
                        );
                    }
                }
                say!(
                    "{} outfits from {} templates cover {} of {} in-stock products ({:.1} %) in {} ms; \
                     naive nearest-neighbour substitution with as many outfits: {} ({:.1} %)",
                    plan.outfits.len(),
                    templates
                        .iter()
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                        - plan.skipped.len(),
                    plan.covered,
                    plan.in_stock,
                    plan.fraction * 100.0,
                    plan.elapsed_ms,
                    plan.baseline_covered,
                    plan.baseline_fraction * 100.0
                );
                for s in &plan.skipped {
                    say!(
                        "skipped template {}: {}",
                        crate::field(&s.outfit),
                        crate::field(&s.reason)
                    );
                }
            }
        }
        OutfitCommand::Complete {
            given,
            candidates,
            category,
            limit,
            method,
        } => {
            let eng = db.outfit_engine()?;
            let by_category = category.is_some();
            let candidates = match category {
                Some(c) => {
                    // Only products with model outputs can be ranked.
                    let found: Vec<String> = db
                        .ids_matching(&vitrine::Filter::new().in_stock().category_in([&c]))?
                        .into_iter()
                        .filter(|id| eng.in_stock(id).is_some())
                        .collect();
                    if found.is_empty() {
                        // Categories are compared exactly, as stored: name
                        // the one meant in another case, else a few.
                        let known: std::collections::BTreeSet<String> = db
                            .ids()
                            .iter()
                            .filter_map(|id| db.attributes(id).and_then(|a| a.category))
                            .collect();
                        let hint = match known.iter().find(|k| k.eq_ignore_ascii_case(&c)) {
                            Some(k) if *k != c => {
                                format!(" (categories are exact: did you mean '{k}'?)")
                            }
                            Some(_) => String::new(),
                            None if known.is_empty() => " (no product has a category)".into(),
                            None => {
                                let some: Vec<&str> =
                                    known.iter().take(12).map(String::as_str).collect();
                                format!(
                                    " (categories: {}{})",
                                    some.join(", "),
                                    if known.len() > some.len() {
                                        ", …"
                                    } else {
                                        ""
                                    }
                                )
                            }
                        };
                        bail!(
                            "no in-stock image product has category '{}'{}",
                            crate::field(&c),
                            crate::field(&hint)
                        );
                    }
                    found
                }
                None => ids(candidates),
            };
            let method = method_of(&method)?;
            let given = ids(given);
            let mut ranked = eng.complete_with(&given, &candidates, method)?;
            // (A candidate that is one of the given items is left out.)
            if ranked.is_empty() {
                bail!(
                    "nothing to rank: every candidate is one of the given items{}",
                    if by_category {
                        " (the category holds no other in-stock product)"
                    } else {
                        ""
                    }
                );
            }
            let ranked_count = ranked.len();
            let hidden = ranked.len().saturating_sub(limit as usize);
            ranked.truncate(limit as usize);
            if json {
                print_json(&ranked)?;
            } else {
                let [wr, wc, wk, wl] = method.weights();
                say!(
                    "score: each signal standardised over the {ranked_count} candidates, weighted \
                     rules {wr}, compatibility {wc}, kernel {wk}, look-alike {wl}; raw values in parentheses"
                );
                // A signal the method did not compute is shown as "-", not 0.
                let signal = |v: Option<f32>, places: usize| match v {
                    Some(v) => format!("{v:+.places$}"),
                    None => "-".to_string(),
                };
                for (r, c) in ranked.iter().enumerate() {
                    // Candidates named by hand may be sold out: marked.
                    let sold = if eng.in_stock(&c.product) == Some(false) {
                        " (sold out)"
                    } else {
                        ""
                    };
                    say!(
                        "{}. {}{sold}\tscore {:+.2}\t(rules {}, compatibility {}, kernel {}, look-alike {:.3})",
                        r + 1,
                        crate::field(&c.product),
                        c.score,
                        signal(c.rules, 3),
                        signal(c.compat, 4),
                        signal(c.kernel, 3),
                        c.lookalike
                    );
                }
                if hidden > 0 {
                    say!("… {hidden} more (--limit)");
                }
            }
        }
        OutfitCommand::Settings {
            colour_attribute,
            measured_colour,
        } => {
            let settings = if measured_colour || colour_attribute.is_some() {
                // Set whole: a record that cannot be read is replaced.
                let mut settings = db.outfit_settings().unwrap_or_default();
                settings.colour_attribute = colour_attribute;
                db.set_outfit_settings(&settings)?;
                settings
            } else {
                db.outfit_settings()?
            };
            if json {
                print_json(&serde_json::to_value(&settings)?)?;
            } else {
                match &settings.colour_attribute {
                    Some(a) => say!("colour families: the catalog attribute '{a}'"),
                    None => say!("colour families: measured on the pixels"),
                }
            }
        }
        OutfitCommand::Rules {
            learn,
            top,
            min_support,
        } => {
            let rules = if learn {
                db.learn_outfit_rules()?
            } else {
                db.outfit_rules()?.ok_or(vitrine::OutfitError::NoRules)?
            };
            let list = rules.top(top, min_support);
            if json {
                // As `info --json` says it (null when it cannot be told).
                let stale = db.outfit_rules_current().ok().flatten().map(|c| !c);
                print_json(&serde_json::json!({
                    "outfits": rules.outfits,
                    "pairs": rules.pairs,
                    "stale": stale,
                    "learn_ms": rules.learn_ms,
                    "patterned_with_solid_lift": rules.patterned_with_solid_lift(),
                    "rules": list,
                }))?;
            } else {
                say!(
                    "rules learned from {} outfits ({} ordered co-worn pairs) in {} ms",
                    rules.outfits,
                    rules.pairs,
                    rules.learn_ms
                );
                if let Some(l) = rules.patterned_with_solid_lift() {
                    say!("a patterned item is worn with a solid {l:.2}x as often as chance");
                }
                for (i, r) in list.iter().enumerate() {
                    say!(
                        "{:>3}. {:<13} {} + {}{}\tlift {:.2}\t({} pairs)",
                        i + 1,
                        format!("{:?}", r.kind),
                        crate::field(&r.left),
                        crate::field(&r.right),
                        r.context
                            .as_ref()
                            .map(|c| format!(" [{}]", crate::field(c)))
                            .unwrap_or_default(),
                        r.lift,
                        r.support
                    );
                }
                if rules.outfits == 0 {
                    say!("(no outfits are stored: `vitrine outfit import FILE --learn` imports them and learns)");
                } else if list.is_empty() && top > 0 {
                    say!("(no rule has {min_support} or more pairs: lower --min-support)");
                }
            }
        }
    }
    Ok(())
}

/// Image paths of products from a CSV (see [`SheetArgs::images`]).
pub fn image_paths(csv: Option<&Path>) -> anyhow::Result<HashMap<String, PathBuf>> {
    let Some(csv) = csv else {
        return Ok(HashMap::new());
    };
    let (header, rows) = crate::import::read_csv(csv)?;
    // A named image column (Mango's `des_filename`), else the second
    // column, as in the CSVs `vitrine import` reads.
    let col = ["des_filename", "path", "image"]
        .iter()
        .find_map(|name| header.iter().position(|h| h == name))
        .or((header.len() >= 2).then_some(1))
        .with_context(|| {
            format!(
                "{}: needs an id column and an image path column",
                csv.display()
            )
        })?;
    let base = csv.parent().unwrap_or(Path::new("."));
    Ok(rows
        .into_iter()
        // (An empty cell, as an --update CSV has, names no image: the
        // stored source is used.)
        .filter(|r| r.len() > col && !r[col].trim().is_empty())
        .map(|r| (r[0].trim().to_string(), base.join(r[col].trim())))
        .collect())
}

/// A contact sheet: the template on the first row, one expansion per row
/// below it. Each tile is labelled with the product id, category and
/// colour family (from `eng`, the caller's: none without a concept space).
pub fn outfit_sheet(
    db: &Db,
    eng: Option<&vitrine::OutfitEngine<'_>>,
    args: &SheetArgs,
    template: &Outfit,
    expansions: &[Expansion],
) -> anyhow::Result<RgbImage> {
    let paths = image_paths(args.images.as_deref())?;
    let path_of = |id: &str| -> anyhow::Result<PathBuf> {
        if let Some(p) = paths.get(id) {
            return Ok(p.clone());
        }
        let stored = db.get(id)?.and_then(|p| {
            let extra = &p.attributes.extra;
            extra
                .get(vitrine::ATTR_SOURCE)
                .or_else(|| extra.get("image"))
                .cloned()
        });
        // No path (a product deleted since, or one stored with vectors
        // only): a grey tile, as for an unreadable image, not no sheet.
        Ok(stored.map_or_else(
            || PathBuf::from(format!("<no image for {id}>")),
            PathBuf::from,
        ))
    };
    let tiles = |products: &[String], colour| -> anyhow::Result<Vec<Tile>> {
        products
            .iter()
            .map(|p| {
                let cat = db
                    .get(p)?
                    .and_then(|x| x.attributes.category)
                    .unwrap_or_default();
                Ok(Tile {
                    path: path_of(p)?,
                    colour,
                    fill: 1.0,
                    labels: vec![
                        p.clone(),
                        cat,
                        eng.and_then(|e| e.colour_family(p))
                            .unwrap_or("?")
                            .to_string(),
                    ],
                })
            })
            .collect()
    };
    let mut rows = vec![(
        format!("template {}", template.id),
        tiles(
            &template
                .slots
                .iter()
                .map(|s| s.product.clone())
                .collect::<Vec<_>>(),
            sheet::BLUE,
        )?,
    )];
    for (i, e) in expansions.iter().enumerate() {
        rows.push((
            format!(
                "expansion {}: kept {} of {} colour relations",
                i + 1,
                e.relations.iter().filter(|r| r.kept).count(),
                e.relations.len()
            ),
            tiles(&e.products, sheet::GREEN)?,
        ));
    }
    sheet::render_rows(&rows)
}

/// Colour relations use the colour measured on the pixels unless told to use
/// a catalog attribute; when the catalog seems to have one, say so.
fn colour_attribute_hint(db: &Db) -> anyhow::Result<()> {
    if db.outfit_settings()?.colour_attribute.is_some() {
        return Ok(());
    }
    // Colour-named attributes, and their values over a sample of the
    // outfits' products (what the rules learn from: in a catalog of two
    // sources, the first ids may all be of the one without outfits).
    let mut keys: std::collections::BTreeMap<String, std::collections::HashSet<String>> =
        Default::default();
    let mut sample: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for o in db.outfits()? {
        for p in o.products() {
            if sample.len() < 200 && seen.insert(p.to_string()) {
                sample.push(p.to_string());
            }
        }
        if sample.len() >= 200 {
            break;
        }
    }
    if sample.is_empty() {
        sample = db.ids().into_iter().take(200).collect();
    }
    for id in &sample {
        if let Some(p) = db.get(id)? {
            for (k, v) in &p.attributes.extra {
                let lower = k.to_ascii_lowercase();
                if !k.starts_with(crate::import::ENGINE_PREFIX)
                    && (lower.contains("colour") || lower.contains("color"))
                {
                    keys.entry(k.clone()).or_default().insert(v.clone());
                }
            }
        }
    }
    // Groups rather than codes or names: the fewest distinct values.
    let best = keys
        .iter()
        .filter(|(_, values)| values.len() >= 2)
        .min_by_key(|(_, values)| values.len())
        .map(|(k, _)| k);
    if let Some(key) = best {
        // Quoted for a POSIX shell where a key or a path needs it (spaces).
        esay!(
            "hint: colour relations use the colour measured on each photo; the products carry \
             '{key}': `vitrine outfit --db {} settings --colour-attribute {}` uses the catalog's colours",
            crate::shell_word(&db.path().display().to_string()),
            crate::shell_word(key)
        );
    }
    Ok(())
}

/// The outfit engine, or `None` for a database without a concept space
/// (made without a model): showing an outfit needs no colour families.
fn engine_if_any(db: &Db) -> anyhow::Result<Option<vitrine::OutfitEngine<'_>>> {
    match db.outfit_engine() {
        Ok(eng) => Ok(Some(eng)),
        Err(vitrine::OutfitError::NoConceptSpace(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists read as CSV lines: a quoted id keeps its comma, cells are
    /// trimmed, and repeated flags add up in order.
    #[test]
    fn id_lists_are_csv_lines() {
        let list = |s: &str| id_list(s).map(|l| l.0);
        assert_eq!(list("a,b").unwrap(), ["a", "b"]);
        assert_eq!(list("\"12,3\",x").unwrap(), ["12,3", "x"]);
        assert_eq!(list(" a , b ").unwrap(), ["a", "b"]);
        assert_eq!(list("12\" sleeve").unwrap(), ["12\" sleeve"]);
        for bad in ["a,,b", "", "a\nb", "\"open"] {
            assert!(list(bad).is_err(), "{bad:?}");
        }
        let lists = vec![id_list("a,b").unwrap(), id_list("\"c,d\"").unwrap()];
        assert_eq!(ids(lists), ["a", "b", "c,d"]);
    }
}
