//! `vitrine precompute similar`: the nightly "similar items" file.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use vitrine::{Filter, PrecomputeOptions, ScorerChoice};

#[derive(Subcommand)]
pub enum PrecomputeCommand {
    /// For every product, its top-k similar in-stock products (never itself
    /// nor its variants), written as a file `similar` lookups can serve.
    Similar {
        /// Neighbours per product.
        #[arg(long, default_value_t = 20)]
        k: usize,
        /// The database folder.
        #[arg(long)]
        db: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Attribute whose shared value marks variants (e.g. model_id).
        #[arg(long)]
        variant_key: Option<String>,
        /// Vector space. Default: `concept` when the database has one (the
        /// space of the REPL's `similar`, which weighs look, category and
        /// every tag group alike), else the database's default space.
        #[arg(long)]
        space: Option<String>,
        /// Exact-scoring back end.
        #[arg(long, value_enum, default_value_t = ScorerArg::Auto)]
        scorer: ScorerArg,
    },
    /// Looks products up in a file written by `precompute similar`, as a
    /// service would (memory-mapped; no database needed).
    Show {
        /// The file.
        #[arg(long)]
        file: PathBuf,
        /// Product ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print one JSON object per id.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScorerArg {
    Auto,
    Cpu,
    Gpu,
}

pub fn run(cmd: PrecomputeCommand) -> Result<()> {
    match cmd {
        PrecomputeCommand::Similar {
            k,
            db,
            out,
            variant_key,
            space,
            scorer,
        } => {
            crate::existing_db(&db)?;
            // Before the scoring, which takes an hour at a million products.
            // (Its errors name the file.)
            vitrine::SimilarTable::check_destination(&out)?;
            let db = crate::open_existing(&db)?;
            // The concept space when products have vectors there (a
            // database filled by `insert` may have only embeddings).
            let space = space.or_else(|| {
                let concept = vitrine::CONCEPT_SPACE;
                db.space_stats()
                    .iter()
                    .any(|s| s.name == concept && s.vectors > 0)
                    .then(|| concept.to_owned())
            });
            let space_shown = space.clone().unwrap_or_else(|| "default".to_owned());
            let scorer = match scorer {
                ScorerArg::Auto => ScorerChoice::Auto,
                ScorerArg::Cpu => ScorerChoice::Cpu,
                ScorerArg::Gpu => ScorerChoice::Gpu,
            };
            let options = PrecomputeOptions {
                space,
                variant_key,
                scorer: Some(scorer),
                ..Default::default()
            };
            let table = db.precompute_similar(k, &Filter::new().in_stock(), &options)?;
            // Lists emptied by the stock filter or the variant groups: a feed
            // that marked everything sold out wrote a file of empty lists
            // over last night's, exit 0.
            let empty = table.lists.iter().filter(|l| l.is_empty()).count();
            let scored = table.ids.len() - table.unscored;
            if scored >= 2 && empty == table.ids.len() {
                anyhow::bail!(
                    "every list is empty: no product is in stock, or every one is a variant of \
                     every other (--variant-key); {} was not written",
                    out.display()
                );
            }
            table.write(&out)?;
            eprintln!(
                "{} products, k = {}, space {}, {:?} back end, {:.2} s -> {}",
                table.ids.len(),
                table.k,
                space_shown,
                table.backend,
                table.seconds,
                out.display()
            );
            if table.unscored > 0 {
                eprintln!(
                    "note: {} products have empty lists: no vector in the space, or one of the \
                     previous model (finish `import --reembed`)",
                    table.unscored
                );
            }
            let short = table.lists.iter().filter(|l| l.len() < table.k).count();
            if empty > table.unscored {
                eprintln!(
                    "note: {} more lists are empty: no other product in stock, or only variants",
                    empty - table.unscored
                );
            }
            if short > empty {
                eprintln!(
                    "note: {} lists are shorter than k = {}",
                    short - empty,
                    table.k
                );
            }
            Ok(())
        }
        PrecomputeCommand::Show { file, ids, json } => {
            if file.is_dir() {
                anyhow::bail!(
                    "{} is a folder, not a file written by `precompute similar`",
                    file.display()
                );
            }
            let served = vitrine::PrecomputedSimilar::open(&file)?;
            let mut missing = Vec::new();
            for id in &ids {
                let Some(list) = served.get(id) else {
                    missing.push(id.as_str());
                    if json {
                        println!(
                            "{}",
                            crate::json_text(
                                &serde_json::json!({"id": id, "error": "not in the file"})
                            )
                        );
                    }
                    continue;
                };
                if json {
                    let similar: Vec<_> = list
                        .iter()
                        .map(|(id, score)| serde_json::json!({"id": id, "score": score}))
                        .collect();
                    println!(
                        "{}",
                        crate::json_text(&serde_json::json!({"id": id, "similar": similar}))
                    );
                } else {
                    say!("{}", crate::field(id));
                    for (rank, (other, score)) in list.iter().enumerate() {
                        say!("  {:>3}. {}\t{score:.4}", rank + 1, crate::field(other));
                    }
                }
            }
            // Some shown, some not (a product newer than the file): exit 3,
            // as `product get` does; none shown: 1.
            if !missing.is_empty() {
                let shown: Vec<String> = missing.iter().map(|id| crate::field(id)).collect();
                let message = format!(
                    "not in {} ({} products): {}",
                    file.display(),
                    served.len(),
                    shown.join(", ")
                );
                if missing.len() < ids.len() {
                    return Err(crate::Partial(message).into());
                }
                anyhow::bail!(message);
            }
            Ok(())
        }
    }
}
