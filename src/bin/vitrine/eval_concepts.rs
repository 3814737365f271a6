//! `vitrine eval concepts`: concept-query precision and weighted-search
//! recall over a labelled `styles.csv` set, imported into a fresh database.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rand::{rngs::StdRng, Rng, SeedableRng};
use vitrine::{
    Attributes, ConceptQuery, Db, Filter, ImportItem, ImportOptions, ImportSource, Model, PlanHint,
    PrepConfig, Profile, Search, SimilarTo, TagMethod, CONCEPT_SPACE,
};

use crate::eval::{labelled_items, Item};

/// Arguments of `vitrine eval concepts`.
#[derive(Args)]
pub struct ConceptsArgs {
    /// The `styles.csv` file (columns `id`, `articleType`, `baseColour`, …).
    #[arg(long)]
    pub styles: PathBuf,
    /// The folder holding `<id>.jpg`.
    #[arg(long)]
    pub images: PathBuf,
    /// Restrict to a split of the model's training run (`val`: images the
    /// model did not train on).
    #[arg(long, value_parser = ["val", "train"])]
    pub split: Option<String>,
    /// Use the first N usable rows only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Database folder (default: a fresh temporary one). Images already in it
    /// are not imported again; one holding products this run does not label
    /// (another --split or --limit), or prepared with another
    /// --pixel-aspect, is refused.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Width / height of one stored pixel, 0.01 to 100 (0.75 for Fashion Product Images).
    #[arg(long, default_value_t = PrepConfig::FPI_PIXEL_ASPECT, value_name = "RATIO", value_parser = crate::import::pixel_aspect_arg)]
    pub pixel_aspect: f64,
    /// Random Dirichlet profiles to check (at least 1).
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub profiles: usize,
    /// Reference products per profile (at least 1).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub references: usize,
    /// Print one JSON object: `split, p20_category, p20_colour,
    /// p20_conjunction, profile_recall, n` (and details). A `p20` is the
    /// precision among the first min(20, R) hits for R relevant products
    /// (R-precision where R < 20); `strict_p20` counts only the queries
    /// with R >= 20.
    #[arg(long)]
    pub json: bool,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1: nothing would be measured".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Queries need at least this many relevant products to be scored.
const MIN_RELEVANT: usize = 5;
const K: usize = 20;
/// Examples a user tag is defined from.
const TAG_EXAMPLES: usize = 10;

#[derive(serde::Serialize)]
struct GroupFigures {
    queries: usize,
    /// Mean precision at min(20, relevant).
    p20: f64,
    per_query: BTreeMap<String, f64>,
    /// Mean plain precision@20 over the queries with at least 20 relevant products.
    strict_queries: usize,
    strict_p20: f64,
    strict: BTreeMap<String, f64>,
}

pub fn run(args: ConceptsArgs) -> anyhow::Result<()> {
    let model = Model::bundled().context("cannot load the bundled model")?;
    let items = labelled_items(
        &model,
        &args.styles,
        &args.images,
        args.split.as_deref(),
        args.limit,
    )?;
    let tmp;
    let dir = match &args.db {
        Some(d) => d.clone(),
        None => {
            tmp = crate::scratch::scratch()?;
            tmp.path().to_path_buf()
        }
    };
    let db = Db::builder().open_with_model(&dir, &model)?;
    // Queries rank every stored product, but only this run's are labelled:
    // a database reused from a run of another split or limit would count
    // its other products as misses. Refused before the import, which would
    // add this run's products to it.
    let labelled: std::collections::HashSet<&str> = items.iter().map(|it| it.id.as_str()).collect();
    let others = db
        .ids()
        .into_iter()
        .filter(|id| !labelled.contains(id.as_str()))
        .count();
    anyhow::ensure!(
        others == 0,
        "{} holds {others} products this run does not label: reuse --db only with the same \
         --split and --limit, or give a fresh folder",
        dir.display(),
    );
    let prep = PrepConfig::catalog().pixel_aspect(args.pixel_aspect);
    // Products prepared otherwise (another --pixel-aspect) would be mixed
    // in, their figures taken for this run's.
    if !db.is_empty() {
        let stored = db.prep_config()?.get_pixel_aspect();
        anyhow::ensure!(
            stored == args.pixel_aspect,
            "{} holds products prepared with pixel aspect {stored}, this run asks {}: reuse \
             --db only with the same --pixel-aspect, or give a fresh folder",
            dir.display(),
            args.pixel_aspect
        );
    }
    let t = Instant::now();
    let report = db.import(
        ImportSource::Items(
            items
                .iter()
                .map(|it| ImportItem {
                    id: it.id.clone(),
                    path: it.path.clone(),
                    attributes: Attributes::default(),
                })
                .collect(),
        ),
        ImportOptions::new().model(model.clone()).prep(prep),
    )?;
    if !report.failures.is_empty() {
        anyhow::bail!("{} images failed to import", report.failures.len());
    }
    eprintln!(
        "{} products ({} imported in {:.1} s)",
        db.len(),
        report.progress.stored,
        t.elapsed().as_secs_f64()
    );

    let manifest = model.manifest();
    let categories = manifest.categories();
    let colours = &manifest
        .groups()
        .iter()
        .find(|g| g.name == "colour")
        .context("no colour group")?
        .tags;
    let by_id: BTreeMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();

    let precision =
        |terms: &[String], relevant: &dyn Fn(&Item) -> bool| -> anyhow::Result<(f64, usize)> {
            let r = items.iter().filter(|i| relevant(i)).count();
            let q = terms
                .iter()
                .fold(ConceptQuery::new().limit(K), |q, t| q.term(t.clone(), 1.0));
            let hits = db.run_query(&q, None)?.hits;
            // Precision among the first min(K, r) hits (R-precision below
            // K relevant products; counting all K hits would be recall).
            let good = hits
                .iter()
                .take(K.min(r))
                .filter(|h| by_id.get(h.id.as_str()).is_some_and(|i| relevant(i)))
                .count();
            Ok((good as f64 / K.min(r).max(1) as f64, r))
        };
    let slug = vitrine::concept_slug;
    let count = |f: &dyn Fn(&Item) -> bool| items.iter().filter(|i| f(i)).count();

    let mut category = GroupFigures::new();
    for (c, label) in categories.iter().enumerate() {
        if count(&|i: &Item| i.category == c) >= MIN_RELEVANT {
            let name = format!("category.{}", slug(label));
            let p = precision(std::slice::from_ref(&name), &|i: &Item| i.category == c)?;
            category.add(name, p);
        }
    }
    let mut colour = GroupFigures::new();
    for (f, label) in colours.iter().enumerate() {
        if count(&|i: &Item| i.colour == Some(f)) >= MIN_RELEVANT {
            let name = format!("colour.{}", slug(label));
            let p = precision(std::slice::from_ref(&name), &|i: &Item| i.colour == Some(f))?;
            colour.add(name, p);
        }
    }
    let mut conjunction = GroupFigures::new();
    for (c, cl) in categories.iter().enumerate() {
        for (f, fl) in colours.iter().enumerate() {
            let rel = |i: &Item| i.category == c && i.colour == Some(f);
            if count(&rel) >= MIN_RELEVANT {
                let terms = [
                    format!("category.{}", slug(cl)),
                    format!("colour.{}", slug(fl)),
                ];
                let p = precision(&terms, &rel)?;
                conjunction.add(terms.join(" + "), p);
            }
        }
    }

    // User tags: 10 examples of a category, the rest of it to be found.
    let mut tag_fig: BTreeMap<&str, GroupFigures> = BTreeMap::new();
    for (c, label) in categories.iter().enumerate() {
        let members: Vec<&Item> = items.iter().filter(|i| i.category == c).collect();
        if members.len() < TAG_EXAMPLES + K {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(7 + c as u64);
        let mut picked: Vec<&str> = Vec::new();
        while picked.len() < TAG_EXAMPLES {
            let id = members[rng.gen_range(0..members.len())].id.as_str();
            if !picked.contains(&id) {
                picked.push(id);
            }
        }
        for (method, name) in [
            (TagMethod::Centroid, "centroid"),
            (TagMethod::Logistic, "logistic"),
        ] {
            let tag = format!("eval_{}", slug(label));
            db.define_tag(&tag, &picked, &[], method)?;
            let filter = picked.iter().fold(Filter::new(), |f, id| f.exclude(*id));
            let q = ConceptQuery::new()
                .term(format!("user.{tag}"), 1.0)
                .filter(filter)
                .limit(K);
            let hits = db.run_query(&q, None)?.hits;
            let good = hits
                .iter()
                .filter(|h| by_id.get(h.id.as_str()).is_some_and(|i| i.category == c))
                .count();
            tag_fig.entry(name).or_insert_with(GroupFigures::new).add(
                format!("category.{}", slug(label)),
                (good as f64 / K as f64, K),
            );
            db.delete_tag(&tag)?;
        }
    }
    let tag_p20 = |m: &str| tag_fig.get(m).map_or(f64::NAN, |g| g.p20);

    let recall = profile_recall(&db, args.profiles, args.references)?;
    // Without --split the training images count too, and the figures read
    // far better than the model card's.
    let split = args.split.as_deref().unwrap_or("all");
    let out = serde_json::json!({
        "split": split,
        "p20_category": category.p20,
        "p20_colour": colour.p20,
        "p20_conjunction": conjunction.p20,
        "profile_recall": recall.engine_min,
        "n": db.len(),
        "p20_user_tag_centroid": tag_p20("centroid"),
        "p20_user_tag_logistic": tag_p20("logistic"),
        "user_tag_queries": tag_fig.get("centroid").map_or(0, |g| g.queries),
        "strict_p20": {
            "category": [category.strict_p20, category.strict_queries as f64],
            "colour": [colour.strict_p20, colour.strict_queries as f64],
            "conjunction": [conjunction.strict_p20, conjunction.strict_queries as f64],
        },
        "queries": {
            "category": category.queries,
            "colour": colour.queries,
            "conjunction": conjunction.queries,
        },
        "profile_recall_detail": recall,
        "per_query": {
            "category": category.per_query,
            "colour": colour.per_query,
            "conjunction": conjunction.per_query,
            "user_tag_centroid": tag_fig.get("centroid").map(|g| &g.per_query),
            "user_tag_logistic": tag_fig.get("logistic").map(|g| &g.per_query),
        },
    });
    if args.json {
        println!("{}", crate::json_text(&out));
    } else {
        match split {
            "all" => println!(
                "products                     {} (all rows, training images included: \
                 --split val for the model card's figures)",
                db.len()
            ),
            s => println!("products                     {} (split {s})", db.len()),
        }
        println!(
            "(precision@20*: among the first min(20, R) hits for R relevant products, \
             R-precision where R < 20; strict P@20 counts only queries with R >= 20)"
        );
        println!(
            "precision@20*, category      {:.3}  ({} queries)",
            category.p20, category.queries
        );
        println!(
            "precision@20*, colour        {:.3}  ({} queries)",
            colour.p20, colour.queries
        );
        println!(
            "precision@20*, cat. + colour {:.3}  ({} queries)",
            conjunction.p20, conjunction.queries
        );
        println!(
            "strict P@20 (>= 20 relevant) category {:.3} ({}), colour {:.3} ({}), conjunction {:.3} ({})",
            category.strict_p20,
            category.strict_queries,
            colour.strict_p20,
            colour.strict_queries,
            conjunction.strict_p20,
            conjunction.strict_queries
        );
        println!(
            "precision@20*, user tag      centroid {:.3}, logistic {:.3}  ({} categories, {TAG_EXAMPLES} examples each)",
            tag_p20("centroid"),
            tag_p20("logistic"),
            tag_fig.get("centroid").map_or(0, |g| g.queries)
        );
        println!(
            "profile recall@10 (engine)   one-hot min {:.3}, Dirichlet mean {:.3} min {:.3}",
            recall.one_hot_engine.values().copied().fold(1.0, f64::min),
            recall.dirichlet_engine_mean,
            recall.dirichlet_engine_min
        );
        println!(
            "profile recall@10 (graph)    one-hot {}, Dirichlet mean {:.3}",
            recall
                .one_hot_graph
                .iter()
                .map(|(g, r)| format!("{g} {r:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            recall.dirichlet_graph_mean
        );
        for (name, g) in [
            ("category", &category),
            ("colour", &colour),
            ("conjunction", &conjunction),
        ] {
            println!("\n{name}:");
            for (q, p) in &g.per_query {
                println!("  {p:.2}  {q}");
            }
        }
    }
    Ok(())
}

impl GroupFigures {
    fn new() -> Self {
        GroupFigures {
            queries: 0,
            // Until a query is scored: null in JSON, not a measured 0.
            p20: f64::NAN,
            per_query: BTreeMap::new(),
            strict_queries: 0,
            strict_p20: f64::NAN,
            strict: BTreeMap::new(),
        }
    }
    fn add(&mut self, name: String, (p, relevant): (f64, usize)) {
        if relevant >= K {
            self.strict.insert(name.clone(), p);
            self.strict_queries = self.strict.len();
            self.strict_p20 = self.strict.values().sum::<f64>() / self.strict_queries as f64;
        }
        self.per_query.insert(name, p);
        self.queries = self.per_query.len();
        self.p20 = self.per_query.values().sum::<f64>() / self.queries as f64;
    }
}

#[derive(serde::Serialize)]
struct Recall {
    /// The smallest per-profile mean recall, over every profile checked.
    engine_min: f64,
    one_hot_engine: BTreeMap<String, f64>,
    one_hot_graph: BTreeMap<String, f64>,
    dirichlet_engine_mean: f64,
    dirichlet_engine_min: f64,
    dirichlet_graph_mean: f64,
    profiles: usize,
    references: usize,
}

/// Recall@10 of weighted search against an exact weighted scan, tie-aware
/// (a hit counts when its exact score is within 1e-5 of the 10th best), for
/// one-hot profiles on every group and `n` Dirichlet(1) profiles (seed 42),
/// each over `refs` reference products: the engine's plan and the graph plan.
fn profile_recall(db: &Db, n: usize, refs: usize) -> anyhow::Result<Recall> {
    let vocab = db.vocabulary()?;
    let ids = db.ids();
    let mut zs = Vec::with_capacity(ids.len());
    for id in &ids {
        zs.push(
            db.get(id)?
                .and_then(|p| p.vectors.get(CONCEPT_SPACE).cloned())
                .context("a product without a concept vector")?,
        );
    }
    let mut rng = StdRng::seed_from_u64(42);
    let groups: Vec<String> = vocab
        .layout()
        .groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    let mut profiles: Vec<(String, Profile)> = groups
        .iter()
        .map(|g| (format!("one-hot {g}"), Profile::only(g)))
        .collect();
    for i in 0..n {
        let mut p = Profile::only(&groups[0]);
        let draws: Vec<f32> = groups
            .iter()
            .map(|_| -(rng.gen_range(f32::EPSILON..1.0)).ln())
            .collect();
        let sum: f32 = draws.iter().sum();
        for (g, d) in groups.iter().zip(draws) {
            p.weights.insert(g.clone(), d / sum);
        }
        profiles.push((format!("dirichlet {i}"), p));
    }
    // Distinct products (drawn with replacement, 20 could be 13).
    let references: Vec<usize> =
        rand::seq::index::sample(&mut rng, ids.len(), refs.min(ids.len())).into_vec();

    let mut one_hot_engine = BTreeMap::new();
    let mut one_hot_graph = BTreeMap::new();
    let (mut d_engine, mut d_graph) = (Vec::new(), Vec::new());
    for (name, p) in &profiles {
        let (mut re, mut rg) = (0.0, 0.0);
        for &r in &references {
            let q = p.query_vector(&vocab, &zs[r])?;
            let mut exact: Vec<f32> = zs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != r)
                .map(|(_, z)| z.iter().zip(&q).map(|(a, b)| a * b).sum())
                .collect();
            exact.sort_by(|a, b| b.total_cmp(a));
            let kth = exact.get(9).copied().unwrap_or(f32::NEG_INFINITY);
            // Out of what can be found: a catalog of 8 has 7 other products.
            let answers = exact.len().clamp(1, 10) as f64;
            let score_of = |id: &str| {
                let i = ids.binary_search_by(|x| x.as_str().cmp(id)).ok();
                i.map(|i| zs[i].iter().zip(&q).map(|(a, b)| a * b).sum::<f32>())
            };
            let hits = db.similar_with_profile(SimilarTo::Id(&ids[r]), 10, &Filter::new(), p)?;
            let good = hits
                .iter()
                .filter(|h| score_of(&h.id).is_some_and(|s| s >= kth - 1e-5))
                .count();
            re += good as f64 / answers;
            let f = Filter::new().exclude(ids[r].clone());
            let s = Search::new(SimilarTo::Vector(&q), 10)
                .space(CONCEPT_SPACE)
                .filter(&f)
                .plan(PlanHint::Graph)
                // The beam the engine's own concept search gives k = 10
                // (k x 16, at least 256), not the space's default.
                .ef(256);
            let hits = db.search(&s)?.hits;
            let good = hits
                .iter()
                .filter(|h| score_of(&h.id).is_some_and(|s| s >= kth - 1e-5))
                .count();
            rg += good as f64 / answers;
        }
        let (re, rg) = (re / references.len() as f64, rg / references.len() as f64);
        if let Some(g) = name.strip_prefix("one-hot ") {
            one_hot_engine.insert(g.to_string(), re);
            one_hot_graph.insert(g.to_string(), rg);
        } else {
            d_engine.push(re);
            d_graph.push(rg);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().copied().fold(1.0, f64::min);
    let all_engine: Vec<f64> = one_hot_engine
        .values()
        .copied()
        .chain(d_engine.iter().copied())
        .collect();
    Ok(Recall {
        engine_min: min(&all_engine),
        one_hot_engine,
        one_hot_graph,
        dirichlet_engine_mean: mean(&d_engine),
        dirichlet_engine_min: min(&d_engine),
        dirichlet_graph_mean: mean(&d_graph),
        profiles: profiles.len(),
        references: references.len(),
    })
}
