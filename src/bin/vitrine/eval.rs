//! `vitrine eval classify`: the model card's figures, from the real Rust
//! pipeline (decode → prepare → tract), over a set in the `styles.csv` format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use vitrine::{prepare_image, Model, ModelOutput, PrepConfig};

use crate::import::read_csv;

/// Evaluations.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Category, colour and neighbour quality over a `styles.csv` set.
    Classify(ClassifyArgs),
    /// Concept-query precision and weighted-search recall over a `styles.csv` set.
    Concepts(crate::eval_concepts::ConceptsArgs),
    /// Fill-in-the-blank accuracy of outfit completion: imports the
    /// products, learns from the outfits, answers the questions.
    Fitb(crate::outfit_eval::FitbArgs),
    /// Writes a deterministic FITB split: learning outfits and questions
    /// whose answers appear in no learning outfit.
    FitbSplit(crate::outfit_eval::FitbSplitArgs),
    /// Substitute, expand and cover figures over a catalog with outfits.
    Outfits(crate::outfit_eval::OutfitsEvalArgs),
}

/// Arguments of `vitrine eval classify`.
#[derive(Args)]
pub struct ClassifyArgs {
    /// The `styles.csv` file (columns `id`, `articleType`, `baseColour`, …).
    #[arg(long)]
    pub styles: PathBuf,
    /// The folder holding `<id>.jpg`.
    #[arg(long)]
    pub images: PathBuf,
    /// Print one JSON object with `weighted_f1, top1, top5, colour_top1,
    /// precision_at_10, n, split` (`split` is `all` without `--split`). A
    /// figure nothing measured (no image with a mapped colour; precision@10
    /// of a single image) is null, not 0.
    #[arg(long)]
    pub json: bool,
    /// Evaluate only the first N usable rows (in file order, after `--split`).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Restrict to a split of the training run, recomputed from the rule the
    /// manifest records (`val` = the validation ids, `train` = the others).
    #[arg(long, value_parser = ["val", "train"])]
    pub split: Option<String>,
    /// Width / height of one stored pixel, 0.01 to 100. The default 0.75 is right for the
    /// Fashion Product Images set, whose images are stored squashed; use 1.0
    /// for ordinary images.
    #[arg(long, default_value_t = PrepConfig::FPI_PIXEL_ASPECT, value_name = "RATIO", value_parser = crate::import::pixel_aspect_arg)]
    pub pixel_aspect: f64,
    /// Images per inference batch, 1 to 64.
    #[arg(long, default_value_t = 32, value_parser = crate::import::batch_arg)]
    pub batch: usize,
}

/// Runs `vitrine eval …`.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Classify(args) => classify(args),
        EvalCommand::Concepts(args) => crate::eval_concepts::run(args),
        EvalCommand::Fitb(args) => crate::outfit_eval::fitb(args),
        EvalCommand::FitbSplit(args) => crate::outfit_eval::fitb_split(args),
        EvalCommand::Outfits(args) => crate::outfit_eval::outfits_eval(args),
    }
}

/// The validation split of the manifest: the list `split.validation_ids`
/// when the manifest has one (models split by sibling group, v3 on), else
/// the per-id rule of older manifests,
/// `validation iff sha256('<seed>:' + id) as u64 / 2^64 < <frac>`, with the
/// u64 read big-endian from the first 8 bytes of the digest.
enum SplitRule {
    /// Validation id → its sibling group (`split.validation_groups`).
    Ids(std::collections::HashMap<String, String>),
    Hash {
        seed: String,
        frac: f64,
    },
}

impl SplitRule {
    fn from_manifest(raw: &serde_json::Value) -> anyhow::Result<SplitRule> {
        if raw["split"].get("validation_ids").is_some() {
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::String(s) => Ok(s.clone()),
                other => anyhow::bail!("the manifest's split lists {other} as an id"),
            };
            let list = |key: &str| -> anyhow::Result<Vec<String>> {
                raw["split"][key]
                    .as_array()
                    .with_context(|| format!("the manifest's split.{key} is not a list"))?
                    .iter()
                    .map(text)
                    .collect()
            };
            let ids = list("validation_ids")?;
            let groups = list("validation_groups")?;
            anyhow::ensure!(
                ids.len() == groups.len(),
                "the manifest's split lists {} validation ids but {} groups",
                ids.len(),
                groups.len()
            );
            return Ok(SplitRule::Ids(ids.into_iter().zip(groups).collect()));
        }
        if raw["split"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("group"))
        {
            anyhow::bail!("the manifest's split goes by group but lists no validation ids");
        }
        let rule = raw["split"]["rule"]
            .as_str()
            .context("the manifest records no split rule; --split cannot be reproduced")?;
        let parse = || -> Option<SplitRule> {
            let after = rule.split_once("sha256('")?.1;
            let seed = after.split_once(":'")?.0.to_string();
            if !rule.contains("as u64 / 2^64 <") {
                return None;
            }
            let frac = rule.rsplit_once('<')?.1.trim().parse().ok()?;
            Some(SplitRule::Hash { seed, frac })
        };
        parse().with_context(|| format!("cannot reproduce the manifest's split rule '{rule}'"))
    }

    /// The sibling group of a validation id, when the manifest names it.
    fn group(&self, id: &str) -> Option<String> {
        match self {
            SplitRule::Ids(ids) => ids.get(id).cloned(),
            SplitRule::Hash { .. } => None,
        }
    }

    fn is_val(&self, id: &str) -> bool {
        match self {
            SplitRule::Ids(ids) => ids.contains_key(id),
            SplitRule::Hash { seed, frac } => {
                let digest = Sha256::digest(format!("{seed}:{id}").as_bytes());
                let mut b = [0u8; 8];
                b.copy_from_slice(&digest[..8]);
                (u64::from_be_bytes(b) as f64) / 2f64.powi(64) < *frac
            }
        }
    }
}

/// A labelled image of a `styles.csv` set.
pub(crate) struct Item {
    pub id: String,
    pub path: PathBuf,
    /// Index into the model's categories.
    pub category: usize,
    /// The raw articleType (rare ones share a merged category).
    pub article_type: String,
    /// Index into the model's colour tags.
    pub colour: Option<usize>,
    /// Its sibling group (the same style in other colours), when the
    /// manifest's split names it: same-type precision@10 leaves the
    /// query's own group out, as near-duplicates.
    pub group: Option<String>,
}

/// The figures of `eval classify`.
#[derive(Debug, serde::Serialize)]
struct Figures {
    weighted_f1: f64,
    top1: f64,
    top5: f64,
    colour_top1: f64,
    precision_at_10: f64,
    n: usize,
}

fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    let model = Model::bundled().context("cannot load the bundled model")?;
    let items = labelled_items(
        &model,
        &args.styles,
        &args.images,
        args.split.as_deref(),
        args.limit,
    )?;
    let categories = model.manifest().categories();
    let colour_group = model
        .manifest()
        .groups()
        .iter()
        .find(|g| g.name == "colour")
        .context("the model has no colour tag group")?;

    let prep = PrepConfig::catalog().pixel_aspect(args.pixel_aspect);
    let outputs = infer_all(&model, &prep, &items, args.batch)?;
    let figures = score(
        &items,
        &outputs,
        categories.len(),
        colour_group.range.clone(),
    );
    // Without --split the training images count too, and the figures read
    // far better than the model card's.
    let split = args.split.as_deref().unwrap_or("all");
    // A split by id (v2's manifest) names no sibling groups: a query's
    // other colourways, in both halves, count as neighbours (0.827 against
    // 0.753 with them left out, for v2).
    let siblings_excluded = items.iter().any(|i| i.group.is_some());
    if args.json {
        let mut json = serde_json::to_value(&figures)?;
        json["split"] = split.into();
        json["siblings_excluded"] = siblings_excluded.into();
        // Neighbours are searched among the images evaluated only.
        json["neighbours_searched_among"] = figures.n.into();
        println!("{}", crate::json_text(&json));
    } else {
        match split {
            "all" => println!(
                "images                        {} (all rows, training images included: \
                 --split val for the model card's figures)",
                figures.n
            ),
            s => println!("images                        {} (split {s})", figures.n),
        }
        println!("category weighted F1          {:.4}", figures.weighted_f1);
        println!("category top-1                {:.4}", figures.top1);
        println!("category top-5                {:.4}", figures.top5);
        println!("colour-family top-1           {:.4}", figures.colour_top1);
        println!(
            "same-type precision@10        {:.4}{}",
            figures.precision_at_10,
            if siblings_excluded {
                " (sibling colourways left out)"
            } else {
                " (sibling colourways count: the split names no groups)"
            }
        );
        if args.limit.is_some() {
            println!(
                "  (neighbours searched among these {} images only: with --limit, fewer \
                 same-type neighbours exist, and the figure reads lower than on the whole split)",
                figures.n
            );
        }
    }
    Ok(())
}

/// The usable rows of a `styles.csv` set: the image exists and the
/// articleType maps to one of the model's categories (merged types compare
/// with their merged label); the colour family is `None` when unmapped.
pub(crate) fn labelled_items(
    model: &Model,
    styles: &Path,
    images: &Path,
    split: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Item>> {
    anyhow::ensure!(limit != Some(0), "--limit must be at least 1");
    let manifest = model.manifest();
    let raw = manifest.raw();
    let categories = manifest.categories();
    let cat_index: HashMap<&str, usize> = categories
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let to_category = raw["taxonomy"]["article_type_to_category"]
        .as_object()
        .context("the manifest has no taxonomy.article_type_to_category")?;
    let colour_map = raw["taxonomy"]["colour_family_map"]
        .as_object()
        .context("the manifest has no taxonomy.colour_family_map")?;
    let colour_group = manifest
        .groups()
        .iter()
        .find(|g| g.name == "colour")
        .context("the model has no colour tag group")?;
    let split = match split {
        Some(s) => Some((s == "val", SplitRule::from_manifest(raw)?)),
        None => None,
    };

    let (header, rows) = read_csv(styles)?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no '{name}' column", styles.display()))
    };
    let (c_id, c_type, c_colour) = (col("id")?, col("articleType")?, col("baseColour")?);
    let mut items = Vec::new();
    let (mut missing_image, mut unmapped) = (0usize, 0usize);
    for row in &rows {
        let field = |i: usize| row.get(i).map(|s| s.trim()).unwrap_or("");
        let id = field(c_id);
        if let Some((want_val, rule)) = &split {
            if rule.is_val(id) != *want_val {
                continue;
            }
        }
        let Some(category) = to_category
            .get(field(c_type))
            .and_then(|v| v.as_str())
            .and_then(|c| cat_index.get(c).copied())
        else {
            unmapped += 1;
            continue;
        };
        let path = images.join(format!("{id}.jpg"));
        if !path.is_file() {
            missing_image += 1;
            continue;
        }
        let colour = colour_map
            .get(field(c_colour))
            .and_then(|v| v.as_str())
            .and_then(|fam| colour_group.tags.iter().position(|t| t == fam));
        items.push(Item {
            id: id.to_string(),
            path,
            category,
            article_type: field(c_type).to_string(),
            colour,
            group: split.as_ref().and_then(|(_, rule)| rule.group(id)),
        });
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    if missing_image + unmapped > 0 {
        eprintln!("note: skipped {missing_image} rows without an image and {unmapped} whose articleType the taxonomy does not know");
    }
    if items.is_empty() {
        bail!("no usable rows");
    }
    Ok(items)
}

/// Decodes, prepares and runs the model on every item, on all CPUs; a bad
/// image stops the evaluation (its figures would be meaningless otherwise).
fn infer_all(
    model: &Model,
    prep: &PrepConfig,
    items: &[Item],
    batch: usize,
) -> anyhow::Result<Vec<ModelOutput>> {
    let bar = ProgressBar::new(items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
        )
        .expect("valid template"),
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().div_ceil(batch).max(1));
    let chunk = items.len().div_ceil(threads);
    let results: Vec<anyhow::Result<Vec<ModelOutput>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let bar = &bar;
                s.spawn(move || -> anyhow::Result<Vec<ModelOutput>> {
                    let mut out = Vec::with_capacity(part.len());
                    for group in part.chunks(batch) {
                        let mut prepared = Vec::with_capacity(group.len());
                        for it in group {
                            let bytes = std::fs::read(&it.path)
                                .with_context(|| format!("cannot read {}", it.path.display()))?;
                            prepared.push(
                                prepare_image(&bytes, prep)
                                    .with_context(|| it.path.display().to_string())?,
                            );
                        }
                        out.extend(model.infer(&prepared)?);
                        bar.inc(group.len() as u64);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("inference thread panicked"))
            .collect()
    });
    bar.finish_and_clear();
    let mut all = Vec::with_capacity(items.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

fn score(
    items: &[Item],
    outputs: &[ModelOutput],
    n_classes: usize,
    colour_range: std::ops::Range<usize>,
) -> Figures {
    let n = items.len();
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut tp = vec![0usize; n_classes];
    let mut predicted = vec![0usize; n_classes];
    let mut support = vec![0usize; n_classes];
    let (mut colour_hits, mut colour_n) = (0usize, 0usize);
    for (it, out) in items.iter().zip(outputs) {
        // Ranked on the logits: probabilities that underflow to 0 (or
        // sigmoids that round to 1) would tie.
        let logits = &out.category_logits;
        let pred = argmax(logits);
        let truth = logits[it.category];
        let rank = logits.iter().filter(|&&p| p > truth).count();
        top1 += usize::from(pred == it.category);
        top5 += usize::from(rank < 5);
        support[it.category] += 1;
        predicted[pred] += 1;
        if pred == it.category {
            tp[pred] += 1;
        }
        if let Some(c) = it.colour {
            colour_n += 1;
            colour_hits += usize::from(argmax(&out.tag_logits[colour_range.clone()]) == c);
        }
    }
    let weighted_f1 = (0..n_classes)
        .filter(|&c| support[c] > 0)
        .map(|c| {
            let denom = predicted[c] + support[c];
            let f1 = if denom == 0 {
                0.0
            } else {
                2.0 * tp[c] as f64 / denom as f64
            };
            f1 * support[c] as f64
        })
        .sum::<f64>()
        / n as f64;

    // Same-articleType precision@10 (the raw type, not the merged
    // category): exact cosine (embeddings are L2-normalised), leaving out
    // the query's own sibling group when the split names it.
    // Under 11 images there are not 10 neighbours: no figure, rather than
    // a precision at fewer labelled @10.
    let k = if n > 10 { 10 } else { 0 };
    let mut precision_sum = 0.0;
    // Queries with a neighbour to score (all of them but where a query's
    // own group is the whole set).
    let mut scored = 0usize;
    if k > 0 {
        let mut scores: Vec<(f32, usize)> = Vec::with_capacity(n);
        for (i, a) in outputs.iter().enumerate() {
            scores.clear();
            let sibling = |j: usize| items[i].group.is_some() && items[j].group == items[i].group;
            for (j, b) in outputs.iter().enumerate() {
                if i != j && !sibling(j) {
                    let dot: f32 = a
                        .embedding
                        .iter()
                        .zip(&b.embedding)
                        .map(|(x, y)| x * y)
                        .sum();
                    scores.push((dot, j));
                }
            }
            let k = k.min(scores.len());
            if k == 0 {
                continue;
            }
            scores.select_nth_unstable_by(k - 1, |x, y| y.0.total_cmp(&x.0));
            let same = scores[..k]
                .iter()
                .filter(|(_, j)| items[*j].article_type == items[i].article_type)
                .count();
            precision_sum += same as f64 / k as f64;
            scored += 1;
        }
    }
    // Nothing to measure is NaN (JSON null, "NaN" in text): a 0 would read
    // as measured.
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let ratio_f = |a: f64, b: usize| if b == 0 { f64::NAN } else { a / b as f64 };
    Figures {
        weighted_f1,
        top1: ratio(top1, n),
        top5: ratio(top5, n),
        colour_top1: ratio(colour_hits, colour_n),
        precision_at_10: ratio_f(precision_sum, scored),
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest split by group lists its validation ids and their
    /// groups; an older one gives the per-id rule; a group rule without
    /// the list is refused rather than read as per-id.
    #[test]
    fn split_rules_of_both_manifest_forms() {
        let listed = serde_json::json!({"split": {
            "rule": "by sibling group (...): validation iff sha256('s:' + smallest id of the group) as u64 / 2^64 < 0.15",
            "validation_ids": [3, 5, 8],
            "validation_groups": [3, 3, 8],
        }});
        let rule = SplitRule::from_manifest(&listed).unwrap();
        assert!(rule.is_val("5") && !rule.is_val("4"));
        assert_eq!(rule.group("5").as_deref(), Some("3"));
        assert_eq!(rule.group("4"), None);

        let per_id = serde_json::json!({"split": {
            "rule": "validation iff sha256('vitrine-fpi-split-v1:' + id) as u64 / 2^64 < 0.15"
        }});
        let rule = SplitRule::from_manifest(&per_id).unwrap();
        let val = (1000..3000).filter(|i| rule.is_val(&i.to_string())).count();
        assert!((200..400).contains(&val), "{val}");
        assert_eq!(rule.group("1000"), None);

        let mut unlisted = listed.clone();
        unlisted["split"]
            .as_object_mut()
            .unwrap()
            .remove("validation_ids");
        assert!(SplitRule::from_manifest(&unlisted).is_err());
        let mut uneven = listed;
        uneven["split"]["validation_groups"] = serde_json::json!([3]);
        assert!(SplitRule::from_manifest(&uneven).is_err());
    }
}
