//! Outfit evaluations: `vitrine eval fitb`, `eval fitb-split` and
//! `eval outfits` (substitute / expand / cover acceptance figures).
//!
//! Ground truth (Mango's colour groups and product families) is read here,
//! from the products CSV, only to build questions and to measure; the
//! engine never sees it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vitrine::{
    Attributes, CompleteMethod, CoverOptions, Db, ExpandOptions, ImportItem, ImportSource, Model,
};

use crate::import::{read_csv, read_csv_lines};

/// Arguments of `vitrine eval fitb`.
#[derive(Args)]
pub struct FitbArgs {
    /// Products CSV in the format of Mango's `products.csv`
    /// (`cod_modelo_color`, `des_filename` relative to the CSV's folder,
    /// `des_product_family` = the category, other columns = attributes).
    #[arg(long)]
    pub products: PathBuf,
    /// Learning outfits, CSV `cod_outfit,cod_modelo_color`.
    #[arg(long)]
    pub outfits: PathBuf,
    /// Questions, JSON Lines `{"given": [ids], "candidates": [ids], "answer": id}`.
    #[arg(long)]
    pub questions: PathBuf,
    /// Print `{"accuracy": …, "n": …}` on one line (with `--all-methods`, one
    /// line holding an array of `{"method": …, "label": …, "accuracy": …,
    /// "n": …}`, `method` being the `--method` value that gives the row).
    #[arg(long)]
    pub json: bool,
    /// A scratch database to reuse (products already there are not
    /// re-embedded; its outfits and rules are replaced). Default: a fresh
    /// temporary database.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Signals: full, learned, rules, compat, kernel, visual, or random
    /// (the 1-in-4 baseline, seeded).
    #[arg(long, default_value = "full")]
    pub method: String,
    /// Print the accuracy of every method (random, visual, rules, compat,
    /// kernel, learned, full); not with --method.
    #[arg(long, conflicts_with = "method")]
    pub all_methods: bool,
    /// Use this product attribute as the retailer's colour group
    /// (`OutfitSettings::colour_attribute`, e.g. `des_agrup_color_eng`).
    /// Default: colours measured on the pixels.
    #[arg(long)]
    pub colour_attribute: Option<String>,
}

/// Arguments of `vitrine eval fitb-split`.
#[derive(Args)]
pub struct FitbSplitArgs {
    /// Products CSV (Mango format; `des_product_family` is read).
    #[arg(long)]
    pub products: PathBuf,
    /// All outfits, CSV `cod_outfit,cod_modelo_color`.
    #[arg(long)]
    pub outfits: PathBuf,
    /// Folder for `learn-outfits.csv`, `test-outfits.csv` and `questions.jsonl`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Fraction of outfits held out.
    #[arg(long, default_value_t = 0.3)]
    pub holdout: f64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Arguments of `vitrine eval outfits`.
#[derive(Args)]
pub struct OutfitsEvalArgs {
    /// Products CSV (Mango format).
    #[arg(long)]
    pub products: PathBuf,
    /// Outfits CSV `cod_outfit,cod_modelo_color`.
    #[arg(long)]
    pub outfits: PathBuf,
    /// A scratch database (created and filled if needed; its outfits and
    /// rules are replaced).
    #[arg(long)]
    pub db: PathBuf,
    /// Write contact sheets here: 5 templates, each next to up to 4 of its expansions.
    #[arg(long)]
    pub sheets: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print every figure as JSON (without it, a summary).
    #[arg(long)]
    pub json: bool,
    /// Use this product attribute as the retailer's colour group
    /// (`OutfitSettings::colour_attribute`, e.g. `des_agrup_color_eng`).
    /// Default: colours measured on the pixels.
    #[arg(long)]
    pub colour_attribute: Option<String>,
    /// Cover budgets to measure: the most outfits planned per template
    /// (comma-separated; each is one plan, reported with its baseline),
    /// each 1 to 10,000.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize], value_parser = per_template)]
    pub cover_per_template: Vec<usize>,
    /// Palette weight of the expand figures' expansions
    /// (`ExpandOptions::palette`), a finite number >= 0; cover plans use
    /// `CoverOptions`' own (0).
    #[arg(long, default_value_t = 2.0, value_parser = crate::outfit::non_negative)]
    pub palette: f32,
}

/// A cover budget, checked before the evaluation's minutes of work.
fn per_template(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=vitrine::MAX_EXPANSIONS).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}': a count from 1 to {}",
            vitrine::MAX_EXPANSIONS
        )),
    }
}

/// One product row of a Mango-format CSV.
pub struct ProductRow {
    pub id: String,
    pub path: PathBuf,
    pub fields: BTreeMap<String, String>,
}

impl ProductRow {
    fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", String::as_str)
    }
}

/// Reads a products CSV in Mango's format.
pub fn read_products(path: &Path) -> anyhow::Result<Vec<ProductRow>> {
    let (header, rows) = read_csv_lines(path)?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (id, file) = (col("cod_modelo_color")?, col("des_filename")?);
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::with_capacity(rows.len());
    for (line, r) in rows {
        if r.len() <= id.max(file) {
            bail!("{}:{line}: too few columns", path.display());
        }
        out.push(ProductRow {
            id: r[id].trim().to_string(),
            path: base.join(r[file].trim()),
            fields: header
                .iter()
                .cloned()
                .zip(r.iter().map(|s| s.trim().to_string()))
                .collect(),
        });
    }
    Ok(out)
}

fn import_items(rows: &[ProductRow]) -> Vec<ImportItem> {
    rows.iter()
        .map(|r| {
            let mut a = Attributes::new();
            let family = r.get("des_product_family");
            if !family.is_empty() {
                a.category = Some(family.to_string());
            }
            for (k, v) in &r.fields {
                if k != "cod_modelo_color" && k != "des_filename" && !v.is_empty() {
                    a.extra.insert(k.clone(), v.clone());
                }
            }
            a.extra.insert("image".into(), r.path.display().to_string());
            ImportItem {
                id: r.id.clone(),
                path: r.path.clone(),
                attributes: a,
            }
        })
        .collect()
}

/// Reads an outfits CSV `outfit,product` into outfit → products (file order).
fn read_outfits(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let (_, rows) = read_csv(path)?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        // A spreadsheet's cleared row (`,`) is no row; half of one is
        // refused here, not by the import after every image is embedded.
        if r.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if r.iter().skip(2).any(|f| !f.trim().is_empty()) {
            anyhow::bail!(
                "{}: a row with more than two fields (outfit_id,product_id)",
                path.display()
            );
        }
        {
            let (o, p) = (r[0].trim(), r.get(1).map_or("", |p| p.trim()));
            if o.is_empty() || p.is_empty() {
                anyhow::bail!(
                    "{}: a row with an empty outfit or product id",
                    path.display()
                );
            }
            out.entry(o.to_string()).or_default().push(p.to_string());
        }
    }
    Ok(out)
}

/// Opens (or creates) an image database and imports the products of `products`.
fn open_and_import(db_dir: &Path, products: &[ProductRow]) -> anyhow::Result<Db> {
    let model = Model::bundled().context("cannot load the bundled model")?;
    let db = Db::builder()
        .open_with_model(db_dir, &model)
        .with_context(|| format!("cannot open {}", db_dir.display()))?;
    let report = crate::import::import_with_progress(
        &db,
        &model,
        vitrine::PrepConfig::catalog(),
        ImportSource::Items(import_items(products)),
    )?;
    if !report.failures.is_empty() {
        eprintln!(
            "warning: {} products could not be imported (first: {})",
            report.failures.len(),
            crate::import::failure_line(&report.failures[0])
        );
    }
    db.flush()?;
    Ok(db)
}

/// Replaces the database's outfits by those of `csv`, sets the colour
/// attribute (or clears it) and learns the rules.
fn load_outfits(
    db: &Db,
    csv: &Path,
    colour_attribute: Option<&str>,
) -> anyhow::Result<vitrine::OutfitRules> {
    let mut settings = vitrine::OutfitSettings::new();
    if let Some(a) = colour_attribute {
        settings = settings.colour_attribute(a);
    }
    db.set_outfit_settings(&settings)?;
    // An outfit naming a product that is not stored (its image did not
    // import) is left out, as the questions naming one are skipped: one
    // bad image must not stop the run after the whole import.
    let done = db.import_outfits_csv_known(csv)?;
    if let Some((o, p)) = done.left_out.first() {
        eprintln!(
            "warning: left out {} outfits naming products not in the database (first: outfit {o} names {p})",
            done.left_out.len()
        );
    }
    let left_out: HashSet<String> = done.left_out.into_iter().map(|(o, _)| o).collect();
    // Then the old outfits the file does not replace go.
    let new: HashSet<String> = read_outfits(csv)?
        .into_keys()
        .filter(|o| !left_out.contains(o))
        .collect();
    for o in db.outfits()? {
        if !new.contains(&o.id) {
            db.delete_outfit(&o.id)?;
        }
    }
    Ok(db.learn_outfit_rules()?)
}

/// Writes each `(path, text)` beside its path, synced, then renames them
/// all into place: a failure leaves every old file (one that fails among
/// the renames puts back those done; a kill there may leave an old file
/// aside, as `.NAME.replaced-PID`).
fn write_all_or_none(files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    write_all_or_none_with(files, |from, to| std::fs::rename(from, to))
}

/// [`write_all_or_none`] with its renames made by `rename`.
fn write_all_or_none_with(
    files: &[(PathBuf, String)],
    rename: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    // (A folder in a file's place would fail its rename after the others'.)
    if let Some((path, _)) = files.iter().find(|(p, _)| p.is_dir()) {
        bail!("{} is a folder", path.display());
    }
    let mut temps = Vec::new();
    for (path, text) in files {
        match crate::info::synced_temp_beside(path, text.as_bytes()) {
            // Each file stays open until the renames are done.
            Ok((tmp, live)) => temps.push((tmp, live)),
            Err(e) => {
                for (tmp, _) in &temps {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e).with_context(|| format!("cannot write beside {}", path.display()));
            }
        }
    }
    // Each old file aside, then the new one in; on a failure, undone.
    let mut done: Vec<(&PathBuf, Option<PathBuf>)> = Vec::new();
    let mut renamed = 0;
    let mut replace = || -> anyhow::Result<()> {
        for ((path, _), (tmp, _)) in files.iter().zip(&temps) {
            let aside = if path.exists() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let aside = path.with_file_name(format!(".{name}.replaced-{}", std::process::id()));
                rename(path, &aside).with_context(|| {
                    format!("cannot move {} aside to replace it", path.display())
                })?;
                Some(aside)
            } else {
                None
            };
            done.push((path, aside));
            rename(tmp, path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            renamed += 1;
        }
        Ok(())
    };
    let replaced = replace();
    for (tmp, _) in &temps[renamed..] {
        let _ = std::fs::remove_file(tmp);
    }
    match replaced {
        Ok(()) => {
            for (_, aside) in &done {
                if let Some(aside) = aside {
                    let _ = std::fs::remove_file(aside);
                }
            }
        }
        Err(e) => {
            // The new files in place go; the old ones come back.
            for (i, (path, aside)) in done.iter().enumerate().rev() {
                let back = match aside {
                    Some(aside) => std::fs::rename(aside, path),
                    None if i < renamed => std::fs::remove_file(path),
                    None => Ok(()),
                };
                if let Err(b) = back {
                    tracing::warn!(path = %path.display(), error = %b, "cannot put the old file back");
                }
            }
            return Err(e);
        }
    }
    if let Some((path, _)) = files.first() {
        crate::info::sync_parent(path)?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Question {
    given: Vec<String>,
    candidates: Vec<String>,
    answer: String,
}

/// Runs `vitrine eval fitb`.
pub fn fitb(args: FitbArgs) -> anyhow::Result<()> {
    // Arguments and questions first: a mistake fails before the import.
    // (--method value, label, method)
    let methods: Vec<(&str, &str, Option<CompleteMethod>)> = if args.all_methods {
        vec![
            ("random", "random", None),
            (
                "visual",
                "visual similarity only",
                Some(CompleteMethod::Visual),
            ),
            ("rules", "rule lifts only", Some(CompleteMethod::Rules)),
            (
                "compat",
                "bilinear compatibility only",
                Some(CompleteMethod::Compat),
            ),
            (
                "kernel",
                "kernel compatibility only",
                Some(CompleteMethod::Kernel),
            ),
            (
                "learned",
                "learned rules (lifts + compatibility)",
                Some(CompleteMethod::Learned),
            ),
            ("full", "full", Some(CompleteMethod::Full)),
        ]
    } else if args.method == "random" {
        vec![("random", "random", None)]
    } else {
        vec![(
            args.method.as_str(),
            args.method.as_str(),
            Some(crate::outfit::method_of(&args.method)?),
        )]
    };
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| format!("cannot read {}", args.questions.display()))?;
    let mut questions = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", args.questions.display(), n + 1))?;
        if !q.candidates.contains(&q.answer) {
            bail!(
                "{}:{}: the answer '{}' is not among the candidates",
                args.questions.display(),
                n + 1,
                q.answer
            );
        }
        questions.push(q);
    }
    if questions.is_empty() {
        bail!("{}: no questions", args.questions.display());
    }
    let products = read_products(&args.products)?;
    // Checked before every image is embedded.
    read_outfits(&args.outfits)?;
    let tmp;
    let db_dir = match &args.db {
        Some(d) => d.clone(),
        None => {
            tmp = crate::scratch::scratch()?;
            tmp.path().join("db")
        }
    };
    let db = open_and_import(&db_dir, &products)?;
    let rules = load_outfits(&db, &args.outfits, args.colour_attribute.as_deref())?;
    eprintln!(
        "learned rules from {} outfits ({} pairs) in {} ms",
        rules.outfits, rules.pairs, rules.learn_ms
    );
    // A question is fill-in-the-blank only for an answer the rules never
    // saw worn (a questions file meant for another split, or the full
    // outfits file given as the learning one, would score the memory).
    let learned: HashSet<String> = db
        .outfits()?
        .into_iter()
        .flat_map(|o| o.slots.into_iter().map(|s| s.product))
        .collect();
    let seen = questions
        .iter()
        .filter(|q| learned.contains(&q.answer))
        .count();
    if seen > 0 {
        eprintln!(
            "warning: {seen} of {} answers are in the learning outfits of {}: those questions \
             test memory, not fill-in-the-blank (fitb-split writes a learning file without them)",
            questions.len(),
            args.outfits.display()
        );
    }
    let eng = db.outfit_engine()?;
    let mut results = Vec::new();
    for (key, name, method) in methods {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut right, mut n, mut skipped) = (0f64, 0usize, 0usize);
        for q in &questions {
            if q.candidates.is_empty() || q.given.is_empty() {
                skipped += 1;
                continue;
            }
            // A method that cannot answer a question (an unknown product)
            // skips it; random skips the same ones, so that every row
            // counts the same questions.
            let method = method.unwrap_or(CompleteMethod::Visual);
            let ranked = match eng.complete_with(&q.given, &q.candidates, method) {
                Ok(r) if !r.is_empty() => r,
                // Every candidate is among the given items.
                Ok(_) => {
                    skipped += 1;
                    continue;
                }
                Err(e) => {
                    if skipped == 0 {
                        eprintln!("warning: skipping a question: {e}");
                    }
                    skipped += 1;
                    continue;
                }
            };
            n += 1;
            right += if name == "random" {
                // Among the candidates the methods rank: given items and
                // repeats left out, as complete_with leaves them.
                let mut pool: Vec<&String> = Vec::new();
                for c in &q.candidates {
                    if !q.given.contains(c) && !pool.contains(&c) {
                        pool.push(c);
                    }
                }
                let pick = pool[rng.gen_range(0..pool.len())];
                f64::from(u8::from(*pick == q.answer))
            } else {
                // A tie at the top is shared: the answer among t tied
                // candidates counts 1/t (input order must not decide it).
                let top = ranked[0].score;
                let tied = ranked.iter().filter(|c| c.score == top).count();
                let answer_tied = ranked
                    .iter()
                    .any(|c| c.score == top && c.product == q.answer);
                if answer_tied {
                    1.0 / tied as f64
                } else {
                    0.0
                }
            };
        }
        if skipped > 0 {
            eprintln!("{name}: skipped {skipped} questions");
        }
        // No question answered is no figure (a 0 % would read as measured).
        anyhow::ensure!(
            n > 0,
            "{name}: none of the {skipped} questions could be answered (their products are \
             not in the products file, or every candidate is among the given items)"
        );
        let acc = right / n as f64;
        results.push((key, name, acc, n));
    }
    if args.json && !args.all_methods {
        let (_, _, acc, n) = &results[0];
        println!(
            "{}",
            crate::json_text(&serde_json::json!({ "accuracy": acc, "n": n }))
        );
    } else if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|(m, label, a, n)| {
                serde_json::json!({"method": m, "label": label, "accuracy": a, "n": n})
            })
            .collect();
        println!("{}", crate::json_text(&v));
    } else {
        for (_, label, a, n) in &results {
            println!("{label:<40} accuracy {:.1} % (n = {n})", a * 100.0);
        }
    }
    Ok(())
}

/// Runs `vitrine eval fitb-split`.
pub fn fitb_split(args: FitbSplitArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.holdout) {
        bail!("--holdout must be in [0, 1)");
    }
    let products = read_products(&args.products)?;
    let family: HashMap<&str, &str> = products
        .iter()
        .map(|p| (p.id.as_str(), p.get("des_product_family")))
        .collect();
    let outfits = read_outfits(&args.outfits)?;
    let mut ids: Vec<&String> = outfits.keys().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    ids.shuffle(&mut rng);
    let n_test = (ids.len() as f64 * args.holdout).round() as usize;
    let (test, learn) = ids.split_at(n_test);
    let mut test: Vec<&String> = test.to_vec();
    test.sort();
    let learn: HashSet<&String> = learn.iter().copied().collect();
    let in_learning: HashSet<&str> = outfits
        .iter()
        .filter(|(id, _)| learn.contains(id))
        .flat_map(|(_, ps)| ps.iter().map(String::as_str))
        .collect();
    // Distractor pools per family: products of no learning outfit first.
    let mut pool_fresh: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut pool_all: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in &products {
        let f = p.get("des_product_family");
        pool_all.entry(f).or_default().push(&p.id);
        if !in_learning.contains(p.id.as_str()) {
            pool_fresh.entry(f).or_default().push(&p.id);
        }
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let outfits_csv = |keep: &dyn Fn(&String) -> bool| -> (String, usize) {
        let mut text = String::from("cod_outfit,cod_modelo_color\n");
        let mut n = 0;
        for (id, ps) in &outfits {
            if keep(id) {
                n += 1;
                for p in ps {
                    text += &format!("{},{}\n", csv_field(id), csv_field(p));
                }
            }
        }
        (text, n)
    };
    let (learn_csv, n_learn) = outfits_csv(&|id| learn.contains(id));
    let (test_csv, _) = outfits_csv(&|id| !learn.contains(id));
    let qpath = args.out_dir.join("questions.jsonl");
    let mut questions = String::new();
    let mut n_q = 0;
    for id in test {
        let ps = &outfits[id];
        let eligible: Vec<&String> = ps
            .iter()
            .filter(|p| !in_learning.contains(p.as_str()) && family.contains_key(p.as_str()))
            .collect();
        if ps.len() < 2 || eligible.is_empty() {
            continue;
        }
        let answer = eligible[rng.gen_range(0..eligible.len())];
        let fam = family[answer.as_str()];
        let pick = |pool: Option<&Vec<&str>>| -> Vec<String> {
            pool.map(|v| {
                v.iter()
                    .filter(|c| !ps.iter().any(|p| p == *c))
                    .map(|c| c.to_string())
                    .collect()
            })
            .unwrap_or_default()
        };
        // Distractors unseen in learning, like the answer, so that "never
        // seen" does not give it away; topped up from seen products of the
        // family only where it has too few.
        let fresh = pick(pool_fresh.get(fam));
        let mut candidates: Vec<String> = fresh.choose_multiple(&mut rng, 3).cloned().collect();
        if candidates.len() < 3 {
            let seen: Vec<String> = pick(pool_all.get(fam))
                .into_iter()
                .filter(|c| !fresh.contains(c))
                .collect();
            let more = 3 - candidates.len();
            candidates.extend(seen.choose_multiple(&mut rng, more).cloned());
            if candidates.len() < 3 {
                continue;
            }
        }
        candidates.push(answer.clone());
        candidates.shuffle(&mut rng);
        let given: Vec<&String> = ps.iter().filter(|p| *p != answer).collect();
        questions += &serde_json::json!({
            "outfit": id,
            "given": given,
            "candidates": candidates,
            "answer": answer,
            "family": fam,
        })
        .to_string();
        questions.push('\n');
        n_q += 1;
    }
    // The three files go together (questions of one split scored against
    // the learning outfits of another would test memory): all of them or,
    // on a failure, none replace what the folder held.
    write_all_or_none(&[
        (args.out_dir.join("learn-outfits.csv"), learn_csv),
        (args.out_dir.join("test-outfits.csv"), test_csv),
        (qpath.clone(), questions),
    ])?;
    println!(
        "{} outfits: {n_learn} for learning, {} held out; {n_q} questions written to {}",
        outfits.len(),
        outfits.len() - n_learn,
        qpath.display()
    );
    Ok(())
}

/// Runs `vitrine eval outfits`: the substitute, expand and cover
/// acceptance figures, measured with the catalog's ground-truth colour
/// groups (`des_agrup_color_eng`).
pub fn outfits_eval(args: OutfitsEvalArgs) -> anyhow::Result<()> {
    // The sheets' folder, before minutes of work whose figures a folder
    // that cannot be written would lose.
    if let Some(dir) = &args.sheets {
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                let (tmp, _) = vitrine_index::create_temp_beside(&dir.join("probe.png"))?;
                std::fs::remove_file(tmp)
            })
            .with_context(|| format!("cannot write contact sheets into {}", dir.display()))?;
    }
    let products = read_products(&args.products)?;
    // A blank group is no group: two blanks are not "the same colour".
    let gt: HashMap<String, String> = products
        .iter()
        .map(|p| {
            (
                p.id.clone(),
                p.get("des_agrup_color_eng").trim().to_string(),
            )
        })
        .filter(|(_, g)| !g.is_empty())
        .collect();
    read_outfits(&args.outfits)?;
    let db = open_and_import(&args.db, &products)?;
    let t = Instant::now();
    let rules = load_outfits(&db, &args.outfits, args.colour_attribute.as_deref())?;
    let import_learn_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut eng = db.outfit_engine()?;
    let engine_ms = t.elapsed().as_secs_f64() * 1e3;
    let outfits = db.outfits()?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let cat_of: HashMap<String, Option<String>> = outfits
        .iter()
        .flat_map(|o| o.slots.iter())
        .map(|s| (s.product.clone(), s.category.clone()))
        .collect();
    let category = |id: &str| -> Option<String> {
        cat_of.get(id).cloned().unwrap_or_else(|| {
            db.get(id)
                .ok()
                .flatten()
                .and_then(|p| p.attributes.category)
        })
    };

    // Substitute: each item of 100 outfits sold out in turn.
    let sample: Vec<&vitrine::Outfit> = outfits.choose_multiple(&mut rng, 100).collect();
    let all_ids = db.ids();
    let mut by_cat_colour: HashSet<(Option<String>, String)> = HashSet::new();
    for id in &all_ids {
        if let Some(g) = gt.get(id) {
            by_cat_colour.insert((category(id), g.clone()));
        }
    }
    let (mut cases, mut same_cat, mut colour_cases, mut colour_same, mut none) = (0, 0, 0, 0, 0);
    // The same, in the engine's own colour families (measured on the pixels).
    let (mut family_cases, mut family_same) = (0, 0);
    let mut lookalike_sum = 0.0f64;
    // Only the engine's calls are timed, not the measuring around them.
    let mut sub_time = std::time::Duration::ZERO;
    let mut sub_calls = 0usize;
    for o in &sample {
        for (slot, s) in o.slots.iter().enumerate() {
            let t = Instant::now();
            // Put back as it was: a reused --db may hold sold-out products.
            let was_in_stock = eng.in_stock(&s.product) == Some(true);
            eng.assume_sold_out(&[&s.product]);
            let subs = eng.substitute(&o.id, 1)?;
            if was_in_stock {
                eng.assume_in_stock(&[&s.product]);
            }
            sub_time += t.elapsed();
            sub_calls += 1;
            // This slot's (a product gone from the catalog gets one too).
            let mine = subs.iter().find(|x| x.slot == slot);
            let Some(top) = mine.and_then(|x| x.candidates.first()) else {
                none += 1;
                continue;
            };
            cases += 1;
            lookalike_sum += f64::from(top.lookalike);
            same_cat += usize::from(category(&top.product) == s.category);
            // "Such a product is in stock": another product of the category
            // with the original's ground-truth colour group, in stock (a
            // reused --db may hold sold-out products).
            let g = gt.get(&s.product).cloned();
            let others_same_colour = g.is_some()
                && all_ids.iter().any(|id| {
                    id != &s.product
                        && !o.slots.iter().any(|x| &x.product == id)
                        && eng.in_stock(id) == Some(true)
                        && gt.get(id) == g.as_ref()
                        && category(id) == s.category
                });
            if let Some(g) = g.filter(|g| {
                others_same_colour && by_cat_colour.contains(&(s.category.clone(), g.clone()))
            }) {
                colour_cases += 1;
                colour_same += usize::from(gt.get(&top.product) == Some(&g));
            }
            // "?" is a product without a measured colour: no family.
            let family = eng.colour_family(&s.product).filter(|f| *f != "?");
            let others_same_family = family.is_some()
                && all_ids.iter().any(|id| {
                    id != &s.product
                        && !o.slots.iter().any(|x| &x.product == id)
                        && eng.in_stock(id) == Some(true)
                        && eng.colour_family(id) == family
                        && category(id) == s.category
                });
            if others_same_family {
                family_cases += 1;
                family_same += usize::from(eng.colour_family(&top.product) == family);
            }
        }
    }
    let sub_ms = sub_time.as_secs_f64() * 1e3 / sub_calls.max(1) as f64;
    let mean_lookalike = (cases > 0).then(|| lookalike_sum / cases as f64);

    // Expand: 10 expansions of 20 templates.
    let templates: Vec<&vitrine::Outfit> = outfits.choose_multiple(&mut rng, 20).collect();
    let (mut n_exp, mut in_stock_ok, mut no_repeat_ok) = (0, 0, 0);
    let (mut gt_same_pairs, mut gt_same_kept, mut gt_diff_pairs, mut gt_diff_kept) = (0, 0, 0, 0);
    let (mut model_rel, mut model_kept) = (0, 0);
    let t = Instant::now();
    let mut expansions = Vec::new();
    // A template with a slot nothing can fill (an anchor without a
    // category, a category sold out) cannot be expanded (cover skips it
    // too): one must not end the whole evaluation.
    let mut unexpandable = 0;
    for o in &templates {
        match eng.expand(&o.id, 10, &ExpandOptions::new().palette(args.palette)) {
            Ok(ex) => expansions.push((o, ex)),
            Err(e @ vitrine::OutfitError::UnfillableSlot { .. }) => {
                eprintln!("warning: template {} not expanded: {e}", o.id);
                unexpandable += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let expand_ms = t.elapsed().as_secs_f64() * 1e3;
    for (o, ex) in &expansions {
        for e in ex {
            n_exp += 1;
            in_stock_ok += usize::from(e.products.iter().all(|p| eng.in_stock(p) == Some(true)));
            let uniq: HashSet<&String> = e.products.iter().collect();
            no_repeat_ok += usize::from(uniq.len() == e.products.len());
            for r in &e.relations {
                model_rel += 1;
                model_kept += usize::from(r.kept);
            }
            let m = o.slots.len();
            for a in 0..m {
                for b in a + 1..m {
                    // Pairs with an item of no group say nothing.
                    let (Some(ta), Some(tb), Some(ea), Some(eb)) = (
                        gt.get(&o.slots[a].product),
                        gt.get(&o.slots[b].product),
                        gt.get(&e.products[a]),
                        gt.get(&e.products[b]),
                    ) else {
                        continue;
                    };
                    let (t_same, e_same) = (ta == tb, ea == eb);
                    if t_same {
                        gt_same_pairs += 1;
                        gt_same_kept += usize::from(e_same);
                    } else {
                        gt_diff_pairs += 1;
                        gt_diff_kept += usize::from(!e_same);
                    }
                }
            }
        }
    }

    // Every product of this catalog is in stock: the same expansions again
    // with 30 % of the products in no template sold out (a generator of
    // its own, so the samples below do not move), which they must avoid.
    let in_templates: HashSet<&str> = templates
        .iter()
        .flat_map(|o| o.slots.iter().map(|s| s.product.as_str()))
        .collect();
    let mut stock_rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5701d);
    let sold_out: Vec<&String> = all_ids
        .iter()
        .filter(|id| !in_templates.contains(id.as_str()))
        .filter(|_| stock_rng.gen_bool(0.3))
        // Those already sold out (a reused --db) stay so afterwards.
        .filter(|id| eng.in_stock(id) == Some(true))
        .collect();
    eng.assume_sold_out(&sold_out);
    let sold: HashSet<&str> = sold_out.iter().map(|s| s.as_str()).collect();
    let (mut n_sold_exp, mut sold_ok) = (0, 0);
    for (o, _) in &expansions {
        // A slot the sell-out left empty makes no expansion: none to check.
        let made = match eng.expand(&o.id, 10, &ExpandOptions::new().palette(args.palette)) {
            Err(vitrine::OutfitError::UnfillableSlot { .. }) => Vec::new(),
            made => made?,
        };
        for e in made {
            n_sold_exp += 1;
            sold_ok += usize::from(
                e.products
                    .iter()
                    .all(|p| eng.in_stock(p) == Some(true) && !sold.contains(p.as_str())),
            );
        }
    }
    eng.assume_in_stock(&sold_out);

    // Cover: 50 templates.
    let cover_templates: Vec<String> = outfits
        .choose_multiple(&mut rng, 50)
        .map(|o| o.id.clone())
        .collect();
    let mut per_category: HashMap<Option<String>, usize> = HashMap::new();
    for id in &all_ids {
        if eng.in_stock(id) == Some(true) {
            *per_category.entry(category(id)).or_default() += 1;
        }
    }
    let mut cover = Vec::new();
    for &budget in &args.cover_per_template {
        let plan = eng.cover(
            &cover_templates,
            &CoverOptions::new().outfits_per_template(budget),
        )?;
        // The most any plan of these outfits could cover: per category,
        // its slots or its in-stock products, whichever is fewer.
        let mut slots_per_category: HashMap<Option<String>, usize> = HashMap::new();
        for p in plan.outfits.iter().flat_map(|e| &e.products) {
            *slots_per_category.entry(category(p)).or_default() += 1;
        }
        let ceiling: usize = slots_per_category
            .iter()
            .map(|(c, &n)| n.min(per_category.get(c).copied().unwrap_or(0)))
            .sum();
        // The templates' colour relations, as the engine sees them, kept
        // in the planned outfits.
        let (n_rel, n_kept) = plan
            .outfits
            .iter()
            .flat_map(|e| &e.relations)
            .fold((0usize, 0usize), |(n, k), r| {
                (n + 1, k + usize::from(r.kept))
            });
        // Of nothing measured, null ("n/a"), as the other figures.
        let relations_kept_pct = (n_rel > 0).then(|| 100.0 * n_kept as f64 / n_rel as f64);
        cover.push(serde_json::json!({
            // Those planned: a template naming a product that cannot be
            // (no model outputs, deleted) is skipped, and said below.
            "templates": cover_templates.len() - plan.skipped.len(),
            "skipped_templates": plan.skipped.len(),
            "outfits_per_template": budget,
            "outfits": plan.outfits.len(),
            "covered": plan.covered, "in_stock": plan.in_stock,
            // Products the planned outfits hold, with repeats.
            "slots": plan.outfits.iter().map(|e| e.products.len()).sum::<usize>(),
            "ceiling_covered": ceiling,
            "ceiling_ratio": (plan.baseline_covered > 0).then(|| ceiling as f64 / plan.baseline_covered as f64),
            "fraction": plan.fraction,
            "baseline_covered": plan.baseline_covered,
            "baseline_fraction": plan.baseline_fraction,
            "ratio": (plan.baseline_fraction > 0.0).then(|| plan.fraction / plan.baseline_fraction),
            "ms": plan.elapsed_ms,
            "relations_kept_pct": relations_kept_pct,
        }));
    }

    // Contact sheets of 5 expansions next to their templates.
    let mut sheets = Vec::new();
    if let Some(dir) = &args.sheets {
        std::fs::create_dir_all(dir)?;
        let sheet_args = crate::outfit::SheetArgs {
            sheet: None,
            images: Some(args.products.clone()),
        };
        for (i, (o, ex)) in expansions.iter().take(5).enumerate() {
            let img = crate::outfit::outfit_sheet(
                &db,
                Some(&eng),
                &sheet_args,
                o,
                &ex[..ex.len().min(4)],
            )?;
            let path = dir.join(format!("expand-{}-{}.png", i + 1, crate::file_safe(&o.id)));
            crate::sheet::save(&img, &path)?;
            sheets.push(path.display().to_string());
        }
    }

    // How the model's colour families line up with the ground-truth groups.
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for id in &all_ids {
        if let (Some(g), Some(m)) = (gt.get(id), eng.colour_family(id)) {
            *confusion
                .entry(g.clone())
                .or_default()
                .entry(m.to_string())
                .or_default() += 1;
        }
    }
    // Of no case, no figure (null; "n/a"): a 0 % would read as measured.
    let pct = |a: usize, b: usize| (b > 0).then(|| 100.0 * a as f64 / b as f64);
    let fig = serde_json::json!({
        "outfits": outfits.len(),
        "colour_attribute": args.colour_attribute,
        "rules_learned_from": rules.outfits,
        "rules_learn_ms": rules.learn_ms,
        // The outfits' import and the rules' learning (the products were
        // imported and embedded before).
        "outfit_import_and_learn_s": import_learn_s,
        "engine_load_ms": engine_ms,
        "substitute": {
            "cases": cases, "no_candidate": none,
            "same_category_pct": pct(same_cat, cases),
            "colour_cases": colour_cases,
            "same_colour_group_pct": pct(colour_same, colour_cases),
            "model_family_cases": family_cases,
            "same_model_family_pct": pct(family_same, family_cases),
            // Visual cosine between the original and its first substitute.
            "mean_lookalike": mean_lookalike,
            "ms_per_query": sub_ms,
        },
        "expand": {
            "templates": expansions.len(), "not_expandable": unexpandable, "outfits": n_exp,
            "all_in_stock_pct": pct(in_stock_ok, n_exp),
            // With 30 % of the other products sold out.
            "sold_out_products": sold_out.len(),
            "outfits_with_sold_out": n_sold_exp,
            "all_in_stock_with_sold_out_pct": pct(sold_ok, n_sold_exp),
            "no_repeat_pct": pct(no_repeat_ok, n_exp),
            "gt_same_colour_pairs": gt_same_pairs,
            "gt_same_colour_preserved_pct": pct(gt_same_kept, gt_same_pairs),
            "gt_contrast_pairs": gt_diff_pairs,
            "gt_contrast_preserved_pct": pct(gt_diff_kept, gt_diff_pairs),
            "model_colour_relations_kept_pct": pct(model_kept, model_rel),
            "ms_per_outfit": expand_ms / n_exp.max(1) as f64,
        },
        "cover": cover,
        "sheets": sheets,
        "colour_groups_vs_model_families": confusion,
    });
    if args.json {
        println!("{}", crate::json_pretty(&fig));
    } else {
        let (s, e) = (&fig["substitute"], &fig["expand"]);
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let p = |v: &serde_json::Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.1}"));
        let ratio = |v: &serde_json::Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
        println!(
            "substitute ({} cases, {} with no candidate): same category {} %, same colour \
             group {} % ({} cases), same engine colour family {} %, {:.2} ms per query",
            s["cases"],
            s["no_candidate"],
            p(&s["same_category_pct"]),
            p(&s["same_colour_group_pct"]),
            s["colour_cases"],
            p(&s["same_model_family_pct"]),
            f(&s["ms_per_query"])
        );
        println!(
            "expand ({} outfits of {} templates): in stock {} % (and {} % of {} with {} \
             other products sold out), no repeats {} %, shared colour groups kept {} %, \
             contrasts kept {} %, {:.2} ms per outfit",
            e["outfits"],
            e["templates"],
            p(&e["all_in_stock_pct"]),
            p(&e["all_in_stock_with_sold_out_pct"]),
            e["outfits_with_sold_out"],
            e["sold_out_products"],
            p(&e["no_repeat_pct"]),
            p(&e["gt_same_colour_preserved_pct"]),
            p(&e["gt_contrast_preserved_pct"]),
            f(&e["ms_per_outfit"])
        );
        for c in fig["cover"].as_array().into_iter().flatten() {
            println!(
                "cover ({} templates x {}): {:.1} % of in-stock products, naive NN {:.1} %, \
                 ratio {}x (ceiling {}x), relations kept {} %, {:.0} ms",
                c["templates"],
                c["outfits_per_template"],
                100.0 * f(&c["fraction"]),
                100.0 * f(&c["baseline_fraction"]),
                ratio(&c["ratio"]),
                ratio(&c["ceiling_ratio"]),
                p(&c["relations_kept_pct"]),
                f(&c["ms"])
            );
            if c["skipped_templates"].as_u64().is_some_and(|n| n > 0) {
                println!(
                    "  ({} templates skipped: a product of theirs is gone, has no model outputs or \
                     the previous model's, or nothing can fill one of their slots)",
                    c["skipped_templates"]
                );
            }
        }
        for sheet in fig["sheets"].as_array().into_iter().flatten() {
            println!("contact sheet: {}", sheet.as_str().unwrap_or(""));
        }
        println!("(--json prints every figure)");
    }
    Ok(())
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
pub(crate) fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::{csv_field, write_all_or_none, write_all_or_none_with};

    /// A rename that fails among them puts back every old file and leaves
    /// no temporary file; without a failure, all are replaced.
    #[test]
    fn files_are_replaced_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["learn.csv", "test.csv", "questions.jsonl", "new.txt"];
        let paths: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
        for p in &paths[..3] {
            std::fs::write(p, "old").unwrap();
        }
        let files: Vec<_> = paths
            .iter()
            .map(|p| (p.clone(), "new".to_string()))
            .collect();
        let listing = || {
            let mut l: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            l.sort();
            l
        };
        let before = listing();
        // Seven renames: three old files aside, four new ones in.
        for fail_at in 0..7 {
            let calls = std::cell::Cell::new(0);
            let r = write_all_or_none_with(&files, |from, to| {
                calls.set(calls.get() + 1);
                if calls.get() == fail_at + 1 {
                    return Err(std::io::Error::other("planted"));
                }
                std::fs::rename(from, to)
            });
            assert!(r.is_err(), "{fail_at}");
            assert_eq!(listing(), before, "{fail_at}");
            for p in &paths[..3] {
                assert_eq!(std::fs::read_to_string(p).unwrap(), "old", "{fail_at}");
            }
        }
        write_all_or_none(&files).unwrap();
        for p in &paths {
            assert_eq!(std::fs::read_to_string(p).unwrap(), "new");
        }
        let mut after = before.clone();
        after.push("new.txt".into());
        after.sort();
        assert_eq!(listing(), after);
    }

    #[test]
    fn csv_fields_read_back() {
        for s in ["plain", "look, 1", "12\" sleeve", "a\nb", ""] {
            let line = format!("{},{}\n", csv_field(s), csv_field("p"));
            let records = vitrine::parse_csv(&line).unwrap();
            assert_eq!(records[0].fields, [s, "p"], "{line:?}");
        }
    }

    #[test]
    fn ids_in_file_names_stay_one_plain_name() {
        assert_eq!(crate::file_safe("look-1.a"), "look-1.a");
        assert_eq!(crate::file_safe("summer/../x\u{1b}"), "summer_.._x_");
        assert_eq!(crate::file_safe(&"é".repeat(300)).len(), 64);
    }
}
