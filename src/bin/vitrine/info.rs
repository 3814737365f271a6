//! `vitrine info`: what a database holds, and whether it opened cleanly;
//! `vitrine repair`: keep what damaged storage still holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use vitrine::{Db, Model, ATTR_MODEL};

/// Arguments of `vitrine info`.
#[derive(Args)]
pub struct InfoArgs {
    /// The database folder.
    #[arg(long)]
    pub db: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vitrine repair`.
#[derive(Args)]
pub struct RepairArgs {
    /// The database folder.
    #[arg(long)]
    pub db: PathBuf,
    /// Do not copy the damaged folder to `<db>.before-repair` first (for a
    /// database too large to copy; what the repair drops is then lost).
    #[arg(long)]
    pub no_copy: bool,
}

/// Arguments of `vitrine backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// The database folder.
    #[arg(long)]
    pub db: PathBuf,
    /// Where the copy goes (a folder that must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
}

/// Copies a database (see `Db::backup`), then opens the copy to check it.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    crate::existing_db(&args.db)?;
    let db = Db::open(&args.db)
        .with_context(|| format!("cannot open the database {}", args.db.display()))?;
    let started = std::time::Instant::now();
    db.backup(&args.out)
        .with_context(|| format!("cannot back up to {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let products = db.len();
    drop(db);
    let copy = Db::open(&args.out)
        .with_context(|| format!("the backup at {} does not open", args.out.display()))?;
    if copy.len() != products || !copy.open_report().rebuilt.is_empty() {
        anyhow::bail!(
            "the backup at {} holds {} products (the database {products}) or needed a rebuild",
            args.out.display(),
            copy.len()
        );
    }
    println!(
        "backed up {products} products to {} in {secs:.1} s (checked: it opens clean)",
        args.out.display()
    );
    Ok(())
}

/// Opens a database whose storage lost products (which a plain open
/// refuses), keeps what is left, rebuilds the indexes from it and writes a
/// new checkpoint. The damaged folder is copied first (unless `--no-copy`),
/// so nothing the repair drops is gone for good.
pub fn repair(args: RepairArgs) -> anyhow::Result<()> {
    crate::existing_db(&args.db)?;
    match Db::open(&args.db) {
        Ok(db) => {
            println!(
                "{}: opens cleanly, {} products; nothing to repair",
                args.db.display(),
                db.len()
            );
            return Ok(());
        }
        Err(vitrine::Error::Corruption { location, reason }) => {
            println!("damaged: {location}: {reason}");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", args.db.display())),
    }
    let copy = if args.no_copy {
        None
    } else {
        let copy = free_name(&args.db, "before-repair");
        copy_tree(&args.db, &copy)
            .with_context(|| format!("cannot copy the damaged database to {}", copy.display()))?;
        println!("copied the damaged database to {}", copy.display());
        Some(copy)
    };
    let open = || Db::builder().accept_data_loss(true).open(&args.db);
    let sled = args.db.join("sled");
    let db = match open() {
        Ok(db) => db,
        Err(e) => {
            let sled_damaged = matches!(&e, vitrine::Error::Corruption { location, .. }
                if std::path::Path::new(location).ends_with("sled"));
            if !sled_damaged {
                return Err(e).with_context(|| {
                    format!("cannot open {} even accepting data loss", args.db.display())
                });
            }
            // sled rebuilds its snapshot (an index of its log) and its
            // config file when they are missing: set them aside in turn
            // (out of sled's folder, which sled reads), never delete them.
            // The config first: the store sets no persisted option, so the
            // one sled writes again is the same.
            let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
            let mut stages = Vec::new();
            if sled.join("conf").is_file() {
                stages.push(vec![sled.join("conf")]);
            }
            stages.push(sled_snapshots(&sled));
            let mut repaired = None;
            for stage in stages.into_iter().filter(|s| !s.is_empty()) {
                for file in stage {
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
                    let aside = args.db.join(format!("sled-{name}.damaged"));
                    std::fs::rename(&file, &aside)
                        .with_context(|| format!("cannot move {} aside", file.display()))?;
                    println!("moved {} aside: {}", file.display(), aside.display());
                    moved.push((file, aside));
                }
                match open() {
                    Ok(db) => {
                        repaired = Some(db);
                        break;
                    }
                    Err(retry) => tracing::debug!(error = %retry, "open failed again"),
                }
            }
            match repaired {
                Some(db) => db,
                None => {
                    // The damage is in sled's log itself: put everything
                    // back, so the folder is as it was.
                    // (Over what sled wrote in their place.)
                    for (file, aside) in moved.iter().rev() {
                        if std::fs::rename(aside, file).is_ok() {
                            println!("put {} back", file.display());
                        }
                    }
                    anyhow::bail!(
                        "cannot repair {}: sled's log itself is damaged; restore the database \
                         from a backup (`vitrine backup` makes one)",
                        args.db.display()
                    );
                }
            }
        }
    };
    db.checkpoint()?;
    let report = db.open_report();
    println!(
        "repaired: {} products kept, {} outfits, {} profiles, {} user tags; \
         {} damaged records skipped, {} index(es) rebuilt",
        db.len(),
        db.outfit_count()?,
        db.profile_users()?.len(),
        db.user_tags()?.len(),
        report.damaged.len(),
        report.rebuilt.len()
    );
    if db.is_empty() {
        println!(
            "nothing was kept: the storage's data is lost. Restore a backup, or move the \
             folder away and import the catalog again"
        );
    }
    if let Some(copy) = copy {
        println!(
            "sled drops what follows damage in its log without counting it: compare with \
             the copy in {} before deleting it",
            copy.display()
        );
    }
    Ok(())
}

/// `<path>.<what>`, or `<path>.<what>-2`, -3… : a name that is free.
fn free_name(path: &std::path::Path, what: &str) -> PathBuf {
    let base = path
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches('/')
        .to_owned();
    (1..)
        .map(|i| match i {
            1 => PathBuf::from(format!("{base}.{what}")),
            i => PathBuf::from(format!("{base}.{what}-{i}")),
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some name is free")
}

/// Copies a folder tree (files and folders; links are refused).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a file or a folder", entry.path().display()),
            ));
        }
    }
    Ok(())
}

/// sled's snapshot files (`snap.<lsn>`).
fn sled_snapshots(sled: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sled) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap."))
        })
        .collect()
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    crate::existing_db(&args.db)?;
    let db = Db::open(&args.db).with_context(|| format!("cannot open {}", args.db.display()))?;
    let info = report(&db)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        use std::io::Write;
        writeln!(out, "{info}")?;
    } else {
        write_text(&mut out, &info)?;
    }
    Ok(())
}

/// Everything `info` reports, as one JSON object.
pub fn report(db: &Db) -> anyhow::Result<Value> {
    let ids = db.ids();
    let (mut in_stock, mut categories, mut models) = (0usize, BTreeSet::new(), BTreeMap::new());
    for id in &ids {
        let Some(p) = db.get(id)? else { continue };
        in_stock += usize::from(p.attributes.in_stock);
        if let Some(c) = &p.attributes.category {
            categories.insert(c.clone());
        }
        let model = p.attributes.get(ATTR_MODEL).unwrap_or("(none)").to_string();
        *models.entry(model).or_insert(0usize) += 1;
    }
    let fingerprint = db.model_fingerprint();
    let bundled = Model::bundled().ok().map(|m| m.fingerprint().to_string());
    let report = db.open_report();
    let rules = db.outfit_rules()?;
    let outfits = db.outfit_count()?;
    let current = db.outfit_rules_current()?;
    let recorded = db.recorded_prep_config()?;
    let prep = recorded.clone().unwrap_or_default();
    Ok(json!({
        "path": db.path().display().to_string(),
        "bytes_on_disk": db.size_on_disk()?,
        "products": ids.len(),
        "in_stock": in_stock,
        "categories": categories.len(),
        "spaces": db.spaces().iter().map(|s| json!({
            "name": s.name, "dim": s.dim, "metric": format!("{:?}", s.metric),
        })).collect::<Vec<_>>(),
        "model": {
            "fingerprint": fingerprint,
            "is_bundled": fingerprint.is_some() && fingerprint == bundled,
            "products_by_model": models,
        },
        "preparation": {
            "recorded": recorded.is_some(),
            "pixel_aspect": prep.get_pixel_aspect(),
            "crop": prep.get_crop(),
            "illumination": format!("{:?}", prep.get_illumination()),
        },
        "opened": {
            "rebuilt_indexes": report.rebuilt.iter().map(|(space, why)| json!({"space": space, "reason": why})).collect::<Vec<_>>(),
            "damaged_records": report.damaged.len(),
            "damaged_examples": report.damaged.iter().take(5).collect::<Vec<_>>(),
            "damaged_arenas": report.damaged_arenas.iter().map(|(space, why)| json!({"space": space, "reason": why})).collect::<Vec<_>>(),
        },
        "outfits": outfits,
        "outfit_rules": rules.as_ref().map(|r| json!({
            "learned_from": r.outfits,
            "pairs": r.pairs,
            "stale": current == Some(false),
        })),
        "colour_attribute": db.outfit_settings()?.colour_attribute,
        "user_tags": db.user_tags().map(|t| t.len()).ok(),
        "profiles": db.profile_users().map(|u| u.len()).ok(),
    }))
}

/// The report for people.
pub fn write_text(w: &mut dyn std::io::Write, info: &Value) -> std::io::Result<()> {
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
    writeln!(w, "database   {}", info["path"].as_str().unwrap_or(""))?;
    let mb = info["bytes_on_disk"].as_f64().unwrap_or(0.0) / 1e6;
    writeln!(w, "on disk    {mb:.1} MB")?;
    writeln!(
        w,
        "products   {} ({} in stock, {} categories)",
        n(&info["products"]),
        n(&info["in_stock"]),
        n(&info["categories"])
    )?;
    for s in info["spaces"].as_array().into_iter().flatten() {
        writeln!(
            w,
            "space      {} ({}-d, {})",
            s["name"].as_str().unwrap_or(""),
            n(&s["dim"]),
            s["metric"].as_str().unwrap_or("")
        )?;
    }
    let m = &info["model"];
    match m["fingerprint"].as_str() {
        Some(fp) => {
            let which = if m["is_bundled"].as_bool() == Some(true) {
                "the bundled model"
            } else {
                "not the bundled model"
            };
            writeln!(w, "model      {fp} ({which})")?;
        }
        None => writeln!(w, "model      (none: vectors inserted directly)")?,
    }
    if let Some(by) = m["products_by_model"].as_object() {
        if by.len() > 1 {
            for (model, count) in by {
                writeln!(w, "           {} products from {model}", n(count))?;
            }
        }
    }
    let prep = &info["preparation"];
    writeln!(
        w,
        "images     prepared with pixel aspect {}, crop {}, illumination {}{}",
        prep["pixel_aspect"],
        if prep["crop"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        prep["illumination"].as_str().unwrap_or("?"),
        if prep["recorded"].as_bool() == Some(true) {
            ""
        } else {
            " (the default; none recorded)"
        }
    )?;
    let opened = &info["opened"];
    // What the open repaired, one line each: (field, what, what was done).
    let repairs = [
        ("rebuilt_indexes", "index of", "rebuilt from storage"),
        (
            "damaged_arenas",
            "vector arena of",
            "damaged, read from storage and rewritten",
        ),
    ];
    let damaged = opened["damaged_records"].as_u64().unwrap_or(0);
    let mut clean = damaged == 0;
    for (field, what, done) in repairs {
        for r in opened[field].as_array().into_iter().flatten() {
            clean = false;
            writeln!(
                w,
                "open       {what} {} {done}: {}",
                r["space"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            )?;
        }
    }
    if clean {
        writeln!(
            w,
            "open       clean (indexes loaded from their dumps, every record readable)"
        )?;
    }
    if damaged > 0 {
        writeln!(w, "open       {damaged} damaged record(s), skipped:")?;
        for d in opened["damaged_examples"].as_array().into_iter().flatten() {
            writeln!(w, "             {}", d.as_str().unwrap_or(""))?;
        }
    }
    write!(w, "outfits    {}", n(&info["outfits"]))?;
    match info["outfit_rules"].as_object() {
        Some(r) => {
            write!(w, "; rules learned from {}", n(&r["learned_from"]))?;
            if r["stale"].as_bool() == Some(true) {
                write!(w, " (stale: run `outfit rules --learn`)")?;
            }
            writeln!(w)?;
        }
        None => writeln!(w, "; no rules learned")?,
    }
    if let Some(a) = info["colour_attribute"].as_str() {
        writeln!(w, "colours    from the catalog attribute `{a}`")?;
    }
    writeln!(
        w,
        "concepts   {} user tag(s), {} profile(s)",
        n(&info["user_tags"]),
        n(&info["profiles"])
    )
}
