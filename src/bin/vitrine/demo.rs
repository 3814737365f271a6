//! `vitrine demo`: builds a small image database from the sample catalog in
//! `examples/catalog/`, runs a few example queries, and writes a contact
//! sheet per query.
//!
//! Each contact sheet has the query as its title, then the query image and
//! the results in rank order. Under each tile: a coloured bar (blue: the
//! query; green: a result of the query's category; orange: another
//! category) filled in proportion to the similarity score, then the rank and
//! score, the catalog category and the id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use vitrine::{
    annotate_with, Attributes, Db, Filter, Hit, ImportItem, ImportSource, Model, PrepConfig,
    Search, SimilarTo, ANNOTATE_TOP_K, ATTR_CATEGORY, EMBEDDING_SPACE,
};

use crate::import::{csv_items, import_with_progress, print_summary};
use crate::sheet::{self, Tile};
use vitrine::Feedback;

/// Arguments of `vitrine demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Output folder: the database (`<out>/db`) and the contact sheets.
    #[arg(long, default_value = "vitrine-demo")]
    pub out: PathBuf,
    /// The sample catalog (a folder with `catalog.csv`).
    #[arg(long, default_value = DEFAULT_CATALOG)]
    pub catalog: PathBuf,
}

const RESULTS: usize = 6;

/// Every `SOLD_OUT_EVERY`-th product (in id order) is marked sold out, to
/// show the in-stock filter.
const SOLD_OUT_EVERY: usize = 10;

/// The sample catalog of the source tree the binary was built from.
const DEFAULT_CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog");

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let csv = args.catalog.join("catalog.csv");
    if !csv.is_file() && args.catalog == Path::new(DEFAULT_CATALOG) {
        bail!(
            "{} is absent: the default is the sample catalog of the source tree this binary \
             was built from; pass --catalog DIR, a copy of examples/catalog",
            csv.display()
        );
    }
    let items = csv_items(&csv)?;
    if items.is_empty() {
        bail!("{} lists no products", csv.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let db_dir = args.out.join("db");
    let model = Model::bundled().context("cannot load the bundled model")?;
    let db = Db::builder()
        .open_with_model(&db_dir, &model)
        .with_context(|| format!("cannot open {}", db_dir.display()))?;
    // The sample comes from Fashion Product Images, stored squashed.
    let prep = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);

    say!(
        "== importing {} sample images into {}",
        items.len(),
        db_dir.display()
    );
    let report = import_with_progress(
        &db,
        &model,
        prep.clone(),
        ImportSource::Items(items.clone()),
    )?;
    print_summary(&report, false, 0, 0);
    for f in &report.failures {
        esay!("  failed: {}", crate::import::failure_line(f));
    }

    let ids = db.ids();
    let mut sold_out = 0;
    for (i, id) in ids.iter().enumerate() {
        let out = i % SOLD_OUT_EVERY == SOLD_OUT_EVERY - 1;
        db.set_in_stock(id, !out)?;
        sold_out += usize::from(out);
    }
    db.flush()?;
    say!(
        "{} products in the database; {sold_out} marked sold out (every {SOLD_OUT_EVERY}th id) for the in-stock filter",
        db.len()
    );

    let files: BTreeMap<&str, &Path> = items
        .iter()
        .map(|it| (it.id.as_str(), it.path.as_path()))
        .collect();
    // Of the products stored: one whose image failed to import is no query.
    let stored: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let imported: Vec<ImportItem> = items
        .iter()
        .filter(|it| stored.contains(it.id.as_str()))
        .cloned()
        .collect();
    let queries = pick_queries(&imported, 4);
    if queries.is_empty() {
        bail!("the sample catalog has no category with three products");
    }
    let mut sheets = Vec::new();

    for (n, item) in queries.iter().take(3).enumerate() {
        let s = Search::new(SimilarTo::Id(&item.id), RESULTS).space(EMBEDDING_SPACE);
        let hits = db.search(&s)?.hits;
        let title = format!("more like {} ({})", item.id, describe(&item.attributes));
        let file = args.out.join(format!(
            "query{}-more-like-{}.png",
            n + 1,
            crate::file_safe(&item.id)
        ));
        show(&title, item, &hits, &files, &file)?;
        sheets.push(file);
    }

    if let Some(item) = queries.get(3).or(queries.first()) {
        let category = item.attributes.category.clone().unwrap_or_default();
        let filter = Filter::new().in_stock().category_in([category.as_str()]);
        let s = Search::new(SimilarTo::Id(&item.id), RESULTS)
            .space(EMBEDDING_SPACE)
            .filter(&filter);
        let hits = db.search(&s)?.hits;
        let title = format!(
            "more like {} ({}), in stock and category = {category}",
            item.id,
            describe(&item.attributes)
        );
        let file = args.out.join(format!(
            "query4-in-stock-{}.png",
            crate::file_safe(&item.id)
        ));
        show(&title, item, &hits, &files, &file)?;
        sheets.push(file);
    }

    // A concept query: what the catalog holds in red, except what the
    // model calls T-shirts.
    let text = "find +colour.red where not category.tshirts and in_stock limit 8";
    say!("\n== {text}");
    let r = db.query(text)?;
    let mut tiles = Vec::new();
    for (rank, h) in r.hits.iter().enumerate() {
        let why: Vec<String> = h
            .contributions
            .iter()
            .map(|c| format!("{} {:+.2}", c.term, c.value))
            .collect();
        say!(
            "  {}. {:<6} {:.3}  {}  [{}]",
            rank + 1,
            h.id,
            h.score,
            describe(&h.attributes),
            why.join(", ")
        );
        if let Some(p) = files.get(h.id.as_str()) {
            tiles.push(Tile {
                path: p.to_path_buf(),
                colour: sheet::GREEN,
                fill: h.score,
                labels: vec![
                    format!("#{} {:.3}", rank + 1, h.score),
                    h.attributes.category.clone().unwrap_or_default(),
                    h.id.clone(),
                ],
            });
        }
    }
    let file = args.out.join("query5-concepts.png");
    sheet::save(&sheet::render(text, &tiles)?, &file)?;
    sheets.push(file);

    // A customer who liked four black products: her learned profile, and
    // "more like this" for her.
    let black: Vec<String> = db
        .query("find +colour.black limit 5")?
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    if let (Some(reference), true) = (
        items.iter().find(|i| Some(&i.id) == black.last()),
        black.len() == 5,
    ) {
        // She likes them, and passes over a product of the same category
        // in another colour next to each.
        for id in &black[..4] {
            db.feedback("demo-customer", id, Feedback::Like)?;
            let category = items
                .iter()
                .find(|i| &i.id == id)
                .and_then(|i| i.attributes.category.clone());
            if let Some(other) = items.iter().find(|i| {
                i.attributes.category == category
                    && i.attributes.extra.get("colour").map(String::as_str) != Some("Black")
                    && !black.contains(&i.id)
            }) {
                db.feedback("demo-customer", &other.id, Feedback::Skip)?;
            }
        }
        let profile = db
            .profile("demo-customer")?
            .context("feedback stores a profile")?;
        let mut w: Vec<(&String, &f32)> = profile.weights.iter().collect();
        w.sort_by(|a, b| b.1.total_cmp(a.1));
        let weights: Vec<String> = w
            .iter()
            .take(3)
            .map(|(g, x)| format!("{g} {x:.2}"))
            .collect();
        say!(
            "\n== a customer liked {} (and skipped one product of each of their categories in another colour): her profile weighs {} (affinities {:?})",
            black[..4].join(", "),
            weights.join(", "),
            profile.affinities
        );
        let seen = black[..4]
            .iter()
            .fold(Filter::new(), |f, id| f.exclude(id.clone()));
        let hits =
            db.similar_with_profile(SimilarTo::Id(&reference.id), RESULTS, &seen, &profile)?;
        let title = format!("more like {} for that customer", reference.id);
        let file = args.out.join(format!(
            "query6-profile-{}.png",
            crate::file_safe(&reference.id)
        ));
        show(&title, reference, &hits, &files, &file)?;
        sheets.push(file);
    }

    let first = &queries[0];
    say!("\n== annotate {}", first.path.display());
    let bytes = std::fs::read(&first.path)
        .with_context(|| format!("cannot read {}", first.path.display()))?;
    let ann = annotate_with(&model, &prep, &bytes, ANNOTATE_TOP_K)?;
    crate::annotate::print_text(&first.path.display().to_string(), &ann);
    say!("  (catalog says: {})", describe(&first.attributes));

    say!(
        "\ncontact sheets (bars: blue = query, green = same category, orange = other; bar length = similarity; \
         the concept query's sheet has no query tile, and its green bars are the scores):"
    );
    for s in &sheets {
        say!("  {}", s.display());
    }
    Ok(())
}

/// Categories the queries are taken from, when the catalog has them.
const QUERY_CATEGORIES: [&str; 4] = ["Tshirts", "Handbags", "Sports Shoes", "Watches"];

/// The first product of each of [`QUERY_CATEGORIES`], then of the largest
/// other categories (ties by name), among categories with at least three
/// products, so the queries have neighbours of their own kind.
fn pick_queries(items: &[ImportItem], n: usize) -> Vec<ImportItem> {
    let mut by_cat: BTreeMap<String, Vec<&ImportItem>> = BTreeMap::new();
    for it in items {
        if let Some(c) = &it.attributes.category {
            by_cat.entry(c.clone()).or_default().push(it);
        }
    }
    let mut cats: Vec<(String, Vec<&ImportItem>)> =
        by_cat.into_iter().filter(|(_, v)| v.len() >= 3).collect();
    let preferred = |c: &str| {
        QUERY_CATEGORIES
            .iter()
            .position(|q| *q == c)
            .unwrap_or(usize::MAX)
    };
    cats.sort_by(|a, b| {
        preferred(&a.0)
            .cmp(&preferred(&b.0))
            .then(b.1.len().cmp(&a.1.len()))
            .then(a.0.cmp(&b.0))
    });
    cats.into_iter()
        .take(n)
        .map(|(_, v)| v[0].clone())
        .collect()
}

fn describe(a: &Attributes) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &a.category {
        parts.push(c.clone());
    }
    for key in ["colour", "gender", "usage"] {
        if let Some(v) = a.extra.get(key) {
            parts.push(v.clone());
        }
    }
    if !a.in_stock {
        parts.push("sold out".into());
    }
    parts.join(", ")
}

fn show(
    title: &str,
    query: &ImportItem,
    hits: &[Hit],
    files: &BTreeMap<&str, &Path>,
    out: &Path,
) -> anyhow::Result<()> {
    say!("\n== {title}");
    for (rank, h) in hits.iter().enumerate() {
        let model_cat = h
            .attributes
            .extra
            .get(ATTR_CATEGORY)
            .map(String::as_str)
            .unwrap_or("?");
        say!(
            "  {}. {:<6} {:.3}  {}  [model: {model_cat}]",
            rank + 1,
            h.id,
            h.score,
            describe(&h.attributes)
        );
    }
    let query_cat = query.attributes.category.as_deref();
    let mut tiles = vec![Tile {
        path: query.path.to_path_buf(),
        colour: sheet::BLUE,
        fill: 1.0,
        labels: vec![
            "query".into(),
            query_cat.unwrap_or("?").into(),
            query.id.clone(),
        ],
    }];
    for (rank, h) in hits.iter().enumerate() {
        let colour = if h.attributes.category.as_deref() == query_cat {
            sheet::GREEN
        } else {
            sheet::ORANGE
        };
        if let Some(p) = files.get(h.id.as_str()) {
            tiles.push(Tile {
                path: p.to_path_buf(),
                colour,
                fill: h.score,
                labels: vec![
                    format!("#{} {:.3}", rank + 1, h.score),
                    h.attributes.category.clone().unwrap_or_else(|| "?".into()),
                    h.id.clone(),
                ],
            });
        }
    }
    sheet::save(&sheet::render(title, &tiles)?, out)?;
    say!("  -> {}", out.display());
    Ok(())
}
