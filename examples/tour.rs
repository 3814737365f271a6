//! A tour of Vitrine on the sample catalog: import images with the bundled
//! model, then "more like this", annotation, a concept query, a customer
//! profile learned from feedback, a user-defined tag, and outfits: a sold-out
//! item's substitutes, rules learned from stored outfits, new outfits
//! expanded from a template, a cover plan and fill-in-the-blank.
//!
//! `cargo run --release --example tour [DB_DIR]` (without DB_DIR, a
//! temporary folder, removed at the end)

use vitrine::{
    annotate_with, Attributes, ConceptQuery, CoverOptions, Db, ExpandOptions, Feedback, Filter,
    ImportItem, ImportOptions, ImportSource, Model, PrepConfig, SimilarTo, TagMethod,
    ANNOTATE_TOP_K,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/catalog");
    let scratch = tempfile::tempdir()?;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => scratch.path().join("db"),
    };

    // 1. Images in: the sample catalog's CSV gives ids, files and categories.
    let model = Model::bundled()?;
    let db = Db::builder().open_with_model(&dir, &model)?;
    let csv = std::fs::read_to_string(root.join("catalog.csv"))?;
    let items: Vec<ImportItem> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(ImportItem {
                id: f.first()?.to_string(),
                path: root.join(f.get(1)?),
                attributes: Attributes::new().category(f.get(2)?.to_string()),
            })
        })
        .collect();
    // The sample images are stored squashed from 3:4 originals.
    let prep = PrepConfig::catalog().pixel_aspect(PrepConfig::FPI_PIXEL_ASPECT);
    let report = db.import(
        ImportSource::Items(items.clone()),
        ImportOptions::new().model(model.clone()).prep(prep.clone()),
    )?;
    println!(
        "imported {} products ({} skipped, {} failed) into {}",
        report.progress.stored,
        report.progress.skipped,
        report.failures.len(),
        dir.display()
    );

    // 2. Annotation: category and tags of an image, nothing stored.
    let first = &items[0];
    let ann = annotate_with(&model, &prep, &std::fs::read(&first.path)?, ANNOTATE_TOP_K)?;
    println!("\n{} looks like {:?}", first.id, ann.category[0].label);
    for t in &ann.tags {
        println!("  {} ({})", t.tag, t.why);
    }

    // 3. More like this, in stock and in the same category.
    let filter = Filter::new().in_stock().category_in([first
        .attributes
        .category
        .clone()
        .unwrap_or_default()]);
    let hits = db.similar(SimilarTo::Id(&first.id), 3, &filter)?;
    println!("\nmore like {}: {:?}", first.id, ids(&hits));

    // 4. A concept query, as text and as code.
    let r = db.query("find +colour.red where not category.tshirts and in_stock limit 3")?;
    println!("\nred, not a T-shirt:");
    for h in &r.hits {
        println!("  {} {:.2} {:?}", h.id, h.score, h.contributions);
    }
    let q = ConceptQuery::new()
        .term("pattern.striped", 1.0)
        .filter(Filter::new().not_tagged("colour.red"))
        .limit(3);
    println!(
        "striped, not red: {:?}",
        r_ids(&db.run_query(&q, None)?.hits)
    );

    // 5. A customer who likes black: her profile, then her "more like this".
    let black: Vec<String> = db
        .query("find +colour.black limit 6")?
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    for id in &black[..5] {
        db.feedback("ada", id, Feedback::Like)?;
    }
    let profile = db.profile("ada")?.expect("feedback creates a profile");
    println!(
        "\nada weighs {:?} most; affinities {:?}",
        profile.top_group(),
        profile.affinities
    );
    let hits = db.similar_with_profile(SimilarTo::Id(&black[5]), 3, &Filter::new(), &profile)?;
    println!("more like {} for ada: {:?}", black[5], ids(&hits));

    // 6. A user-defined tag from three examples, usable in queries.
    let watches: Vec<&str> = items
        .iter()
        .filter(|i| i.attributes.category.as_deref() == Some("Watches"))
        .map(|i| i.id.as_str())
        .take(3)
        .collect();
    db.define_tag("timepiece", &watches, &[], TagMethod::Centroid)?;
    let r = db.query("find +user.timepiece limit 5")?;
    println!("\nuser.timepiece: {:?}", r_ids(&r.hits));

    // 7. An outfit whose first item sells out: ranked substitutes.
    let outfit: Vec<&str> = items.iter().take(3).map(|i| i.id.as_str()).collect();
    db.store_outfit("look-1", &outfit)?;
    db.set_in_stock(outfit[0], false)?;
    for s in db.substitute("look-1", 3)? {
        let best: Vec<&str> = s.candidates.iter().map(|c| c.product.as_str()).collect();
        println!("\nsold out {}: {best:?}", s.original);
    }
    db.set_in_stock(outfit[0], true)?;

    // 8. Seven looks (the i-th T-shirt, shorts and sports shoes), rules
    //    learned from them, and new looks expanded from the first.
    let of = |category: &str| -> Vec<&str> {
        items
            .iter()
            .filter(|i| i.attributes.category.as_deref() == Some(category))
            .map(|i| i.id.as_str())
            .collect()
    };
    let (tops, bottoms, shoes) = (of("Tshirts"), of("Shorts"), of("Sports Shoes"));
    let looks: Vec<String> = (0..tops.len().min(bottoms.len()).min(shoes.len()))
        .map(|i| {
            let id = format!("weekend-{i}");
            db.store_outfit(&id, &[tops[i], bottoms[i], shoes[i]])
                .map(|_| id)
        })
        .collect::<Result<_, _>>()?;
    let rules = db.learn_outfit_rules()?;
    println!("\nrules learned from {} outfits", rules.outfits);
    for e in db.expand(&looks[0], 3, &ExpandOptions::new())? {
        println!("expanded {}: {:?}", e.template, e.products);
    }
    let plan = db.cover(&looks, &CoverOptions::new().outfits_per_template(3))?;
    println!(
        "cover: {} outfits include {:.0} % of the stock",
        plan.outfits.len(),
        100.0 * plan.fraction
    );
    let ranked = db.complete(&[tops[0], bottoms[0]], &shoes[1..4])?;
    println!(
        "shoes for {} + {}: {}",
        tops[0], bottoms[0], ranked[0].product
    );
    Ok(())
}

fn ids(hits: &[vitrine::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn r_ids(hits: &[vitrine::QueryHit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}
