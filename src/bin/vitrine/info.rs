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
    /// Do not copy the folder to `<db>.before-repair` first (for a
    /// database too large to copy). sled's old files are then kept in
    /// `<db>/sled.before-salvage` (or `-2`, `-3`…), but a repair that keeps nothing still
    /// changes sled's log: its failed opens clear it after the damage.
    #[arg(long)]
    pub no_copy: bool,
    /// Also rewrite a database that reads cleanly: sled's files are made
    /// again from the live records, which gives back the space sled keeps
    /// (old versions of records, blob files it no longer uses). The indexes
    /// are rebuilt at the end. Run it while no process has the database open.
    #[arg(long)]
    pub rewrite: bool,
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
    let db = crate::open_existing(&args.db)
        .with_context(|| format!("cannot open the database {}", args.db.display()))?;
    let started = std::time::Instant::now();
    db.backup(&args.out)
        .with_context(|| format!("cannot back up to {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let products = db.len();
    drop(db);
    let copy = Db::open(&args.out)
        .with_context(|| format!("the backup at {} does not open", args.out.display()))?;
    if copy.len() != products {
        anyhow::bail!(
            "the backup at {} holds {} products (the database {products})",
            args.out.display(),
            copy.len()
        );
    }
    // Copied without current index dumps when the database's disk could
    // not take a checkpoint: rebuilt from sled (and saved) as it was
    // checked, so the copy is whole.
    let rebuilt = !copy.open_report().rebuilt.is_empty();
    if rebuilt {
        esay!(
            "note: the copy's indexes were rebuilt when it was checked: the database's own \
             could not be written before the copy (is its disk full?)"
        );
    }
    let damaged = copy.open_report().damaged.len();
    if damaged > 0 {
        // Copied as they are: the source has them too.
        println!(
            "backed up {products} products to {} in {secs:.1} s; it opens, but {damaged} damaged \
             records came with it (`vitrine info` lists them)",
            args.out.display()
        );
    } else {
        println!(
            "backed up {products} products to {} in {secs:.1} s (checked: it opens{})",
            args.out.display(),
            if rebuilt {
                "; its indexes were rebuilt from its storage"
            } else {
                " clean"
            }
        );
    }
    Ok(())
}

/// Opens a database whose storage lost products (which a plain open
/// refuses), keeps what is left, rebuilds the indexes from it and writes a
/// new checkpoint. The folder is copied first (unless `--no-copy`), before
/// anything opens it: sled's recovery clears its log after a damaged entry.
pub fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let _only_repair = match args.db.is_dir() {
        true => Some(lock_for_repair(&args.db)?),
        false => None,
    };
    undo_interrupted_swap(&args.db)?;
    crate::existing_db(&args.db)?;
    let db_dir = std::fs::canonicalize(&args.db)
        .with_context(|| format!("cannot resolve {}", args.db.display()))?;
    remove_half_removed(&db_dir);
    let copy = if args.no_copy {
        None
    } else {
        // Copied under another name and renamed when whole: a copy cut
        // short (a kill) is never taken for a complete one, and goes at
        // the next repair.
        remove_incomplete_copies(&db_dir);
        let copy = free_name(&db_dir, "before-repair")?;
        let partial = free_name(&copy, "incomplete")?;
        // Not a mount point's `lost+found`, which only root may read.
        let made = copy_tree(&db_dir, &partial, |name| name == "lost+found").and_then(|()| {
            std::fs::rename(&partial, &copy)
                .and_then(|()| sync_dir(copy.parent().unwrap_or(std::path::Path::new("."))))
                .with_context(|| format!("cannot write {}", copy.display()))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e.context(format!(
                "cannot copy the database to {} (nothing was changed)",
                copy.display()
            )));
        }
        Some(copy)
    };
    let at_checkpoint = checkpoint_products(&db_dir);
    // A --rewrite of a database that reads cleanly (damage found is
    // repaired, and said, as without the flag).
    let mut clean_rewrite = false;
    // Whether the probe opened: its checkpoint files then hold nothing an
    // open needs (no evidence of lost writes), and a failed salvage's may go.
    let mut probe_opened = false;
    // A probe: no checkpoint of its own (an open that rebuilds would
    // overwrite the one that tells what was lost).
    // (Never a new database: a folder a first import left before its
    // schema is refused, as by every read command.)
    match Db::builder()
        .checkpoint_on_drop(false)
        .create(false)
        .open(&args.db)
    {
        Ok(db) => {
            probe_opened = true;
            // It opens; every record must read too (a page or a blob file
            // can be lost where the open does not look).
            let products = db.len();
            let undecodable = db.open_report().damaged.clone();
            drop(db);
            let unreadable =
                vitrine_storage::Store::open(&db_dir, vitrine_storage::StoreOptions::default())
                    .and_then(|store| store.unreadable_keyspaces());
            let unreadable = match unreadable {
                Ok(u) => u,
                Err(e) => {
                    let e = vitrine::Error::from(e);
                    drop_or_restore_copy(&db_dir, copy.as_deref(), &e);
                    return Err(anyhow::Error::from(e)
                        .context(format!("cannot read {}", args.db.display())));
                }
            };
            if unreadable.is_empty() && !undecodable.is_empty() && !args.rewrite {
                // sled reads every page; some records do not decode. Those
                // are the caller's to delete or write again (a salvage
                // would copy them as they are).
                println!(
                    "{}: opens, {products} products; {} record(s) do not decode and were \
                     skipped (delete them, or upsert them again):",
                    args.db.display(),
                    undecodable.len()
                );
                for d in undecodable.iter().take(20) {
                    println!("  {d}");
                }
                if let Some(copy) = &copy {
                    let _ = std::fs::remove_dir_all(copy);
                }
                // Not repaired: a script (`repair && ...`) must not read it
                // as done.
                return Err(crate::Partial(format!(
                    "{} record(s) left as they are",
                    undecodable.len()
                ))
                .into());
            }
            if unreadable.is_empty() && args.rewrite {
                clean_rewrite = true;
                println!(
                    "{}: opens, {products} products{}; rewriting its storage ({} in sled's \
                     files)",
                    args.db.display(),
                    match undecodable.len() {
                        0 => String::new(),
                        n => format!(" ({n} records that do not decode are copied as they are)"),
                    },
                    megabytes(tree_bytes(&db_dir.join("sled")))
                );
            } else if unreadable.is_empty() {
                println!(
                    "{}: opens cleanly, every page reads and every product record decodes, \
                     {products} products; nothing to repair (`vitrine info` checks the other \
                     records)",
                    args.db.display()
                );
                if let Some(copy) = &copy {
                    let _ = std::fs::remove_dir_all(copy);
                }
                // Left by an earlier repair (kept with --no-copy, or a kill
                // before it removed them): say where they are.
                let mut old: Vec<String> = std::fs::read_dir(&db_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("sled.before-salvage"))
                    .collect();
                old.sort();
                for n in old {
                    println!(
                        "sled's old files from an earlier repair: {} (remove when no longer needed)",
                        db_dir.join(n).display()
                    );
                }
                return Ok(());
            } else {
                println!("damaged: unreadable records in {}", unreadable.join(", "));
            }
        }
        Err(vitrine::Error::Corruption { location, reason }) => {
            println!("damaged: {location}: {reason}");
            // Storage lost everything (no schema) while checkpoint files
            // remain: opening it would write a new, empty schema, and the
            // salvage would remove the checkpoint files, the only evidence.
            if storage_has_no_schema(&db_dir) {
                let e = vitrine::Error::Corruption { location, reason };
                drop_or_restore_copy(&db_dir, copy.as_deref(), &e);
                anyhow::bail!(
                    "cannot repair {}: its storage holds nothing (its log is lost) and a repair \
                     keeps only what storage holds; restore the database from a backup",
                    args.db.display()
                );
            }
        }
        Err(e) => {
            drop_or_restore_copy(&db_dir, copy.as_deref(), &e);
            return Err(e).with_context(|| format!("cannot open {}", args.db.display()));
        }
    }
    if let Some(copy) = &copy {
        let what = if clean_rewrite { "" } else { "damaged " };
        println!("copied the {what}database first, to {}", copy.display());
    }
    // No checkpoint on drop: the files are rewritten below, and the
    // checkpoint files are then made again from them.
    let open = || {
        Db::builder()
            .accept_data_loss(true)
            .checkpoint_on_drop(false)
            .open(&args.db)
    };
    let sled = args.db.join("sled");
    // Files set aside so that sled could open: (where it was, where it is).
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let db = match open() {
        Ok(db) => db,
        Err(e) => {
            // Damage to sled's own files names its folder alone; a damaged
            // record names `tree/key in <folder>`.
            let sled_damaged = matches!(&e, vitrine::Error::Corruption { location, .. }
                if *location == sled.display().to_string());
            if !sled_damaged {
                // sled may have recovered (and cut its log) before this
                // open failed: the copy is the folder as it was.
                if let Some(copy) = &copy {
                    restore_from_copy(&db_dir, copy);
                }
                return Err(e).with_context(|| {
                    format!("cannot open {} even accepting data loss", args.db.display())
                });
            }
            // sled rebuilds its snapshot (an index of its log) and its
            // config file when they are missing: set them aside in turn
            // (out of sled's folder, which sled reads), never delete them.
            // The config first: the store sets no persisted option, so the
            // one sled writes again is the same.
            let mut stages = Vec::new();
            if sled.join("conf").is_file() {
                stages.push(vec![sled.join("conf")]);
            }
            stages.push(sled_snapshots(&sled));
            let mut repaired = None;
            for stage in stages.into_iter().filter(|s| !s.is_empty()) {
                for file in stage {
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
                    let set_aside = free_name(&db_dir.join(format!("sled-{name}")), "damaged")
                        .and_then(|aside| {
                            std::fs::rename(&file, &aside)
                                .with_context(|| format!("cannot move {} aside", file.display()))
                                .map(|()| aside)
                        });
                    let aside = match set_aside {
                        Ok(aside) => aside,
                        Err(e) => {
                            put_back(&moved, &db_dir, copy.as_deref());
                            return Err(e);
                        }
                    };
                    println!("moved {} aside: {}", file.display(), aside.display());
                    moved.push((file, aside));
                }
                match open() {
                    Ok(db) => {
                        // A file sled wrote again byte for byte was not
                        // the damage: no need to keep it aside.
                        for (file, aside) in &moved {
                            if std::fs::read(file).ok() == std::fs::read(aside).ok() {
                                let _ = std::fs::remove_file(aside);
                                println!("(sled wrote {} again, the same)", file.display());
                            }
                        }
                        repaired = Some(db);
                        break;
                    }
                    Err(retry) => tracing::debug!(error = %retry, "open failed again"),
                }
            }
            match repaired {
                Some(db) => db,
                None => {
                    // The damage is in sled's log itself.
                    put_back(&moved, &db_dir, copy.as_deref());
                    anyhow::bail!(
                        "cannot repair {}: sled's log itself is damaged; restore the database \
                         from a backup (`vitrine backup` makes one)",
                        args.db.display()
                    );
                }
            }
        }
    };
    // Rewrite sled's files from what it can read: the damaged pages stay
    // behind, so later opens are clean.
    let probed = db.len();
    drop(db);
    // Any step that fails from here puts the folder back from the copy,
    // or without one, sled's old files back in place.
    let mut old_sled = None;
    // The salvage moves storage past every checkpoint file: files the
    // failed steps write are then ahead of sled's old files.
    let checkpointed = checkpoint_generation(&db_dir);
    let mut skipped_in = Vec::new();
    let rebuilt = (|| -> anyhow::Result<Db> {
        let (salvaged, old) = salvage(&db_dir, copy.is_some())?;
        old_sled = old;
        skipped_in.clone_from(&salvaged.damaged_keyspaces);
        if !salvaged.damaged_keyspaces.is_empty() {
            println!(
                "unreadable pages skipped in: {}",
                salvaged.damaged_keyspaces.join(", ")
            );
        }
        let db = open().context("cannot open it after the salvage")?;
        // (A healthy database that holds no product rewrites as one.)
        if db.is_empty() && (!clean_rewrite || probed > 0) {
            // Nothing readable was left (sled's log was emptied or lost): a
            // fresh, empty database in its place would only hide that.
            anyhow::bail!(
                "no product is readable in sled's storage; restore the database from a \
                 backup, or move the folder away and import the catalog again"
            );
        }
        db.checkpoint()?;
        Ok(db)
    })();
    let db = match rebuilt {
        Ok(db) => db,
        Err(e) => {
            if let Some(copy) = &copy {
                restore_from_copy(&db_dir, copy);
            } else if let Some(old) = &old_sled {
                // First, while the salvaged storage they match is in place
                // (a kill from here on leaves files and storage that agree).
                if probe_opened {
                    remove_checkpoints_after(&db_dir, checkpointed);
                }
                let salvaged = free_name(&db_dir.join("sled"), "salvaged")?;
                // The marker names the old files again while no `sled/` is
                // there: a kill between the renames leaves them found (the
                // next command moves them back), not only on disk.
                let marker = db_dir.join(crate::SWAP_MARKER);
                write_synced(
                    &marker,
                    old.file_name().unwrap_or_default().as_encoded_bytes(),
                )
                .and_then(|()| sync_dir(&db_dir))
                .and_then(|()| std::fs::rename(db_dir.join("sled"), &salvaged))
                .and_then(|()| std::fs::rename(old, db_dir.join("sled")))
                .and_then(|()| sync_dir(&db_dir))
                .with_context(|| {
                    format!(
                        "cannot put sled's old files {} back in place",
                        old.display()
                    )
                })?;
                let _ = std::fs::remove_file(&marker);
                println!(
                    "put sled's old files back in place (the rewritten ones are in {})",
                    salvaged.display()
                );
            }
            return Err(e.context(format!("cannot repair {}", args.db.display())));
        }
    };
    if copy.is_some() {
        // The copy has the files set aside.
        for (_, aside) in &moved {
            let _ = std::fs::remove_file(aside);
        }
    }
    let report = db.open_report();
    // Best effort: the repair is done, whatever these reads meet.
    let count = |n: Option<usize>| n.map_or("?".to_owned(), |n| n.to_string());
    println!(
        "{}: {} products kept, {} outfits, {} profiles, {} user tags; \
         {} damaged records skipped, {} index(es) rebuilt",
        if clean_rewrite {
            "rewritten"
        } else {
            "repaired"
        },
        db.len(),
        count(db.outfit_count().ok()),
        count(db.profile_users().ok().map(|p| p.len())),
        count(db.user_tags().ok().map(|t| t.len())),
        report.damaged.len(),
        report.rebuilt.len()
    );
    if let Some(n) = at_checkpoint {
        println!("the last checkpoint held {n} products");
    }
    if clean_rewrite {
        println!(
            "sled's files now take {}",
            megabytes(tree_bytes(&db_dir.join("sled")))
        );
        if let Some(old) = &old_sled {
            println!(
                "remove {} to give its {} back",
                old.display(),
                megabytes(tree_bytes(old))
            );
        }
    } else {
        println!(
            "sled keeps its last readable state: writes after a damaged entry (settings and \
             newer versions of records too) are gone"
        );
    }
    if let Some(copy) = &copy {
        println!(
            "compare with the copy in {} before deleting it",
            copy.display()
        );
    }
    // Fewer products than the checkpoint held: most likely lost with the
    // log after the damage (or deleted since that checkpoint); or records
    // on unreadable pages left behind (outfits, rules, profiles, tags). A
    // script (`repair && ...`) must not read either as a whole repair.
    let mut lost = Vec::new();
    if let Some(n) = at_checkpoint.filter(|&n| !clean_rewrite && db.len() < n) {
        lost.push(format!(
            "{} of the {n} products the last checkpoint held were not kept (lost with the \
             damaged log, or deleted since that checkpoint)",
            n - db.len()
        ));
    }
    if !skipped_in.is_empty() {
        lost.push(format!(
            "records on unreadable pages of {} were left behind",
            skipped_in.join(", ")
        ));
    }
    match lost.is_empty() {
        true => Ok(()),
        false => Err(crate::Partial(lost.join("; ")).into()),
    }
}

/// The newest generation any readable checkpoint file (arena or index
/// dump) of `db_dir` carries; 0 when there is none.
fn checkpoint_generation(db_dir: &std::path::Path) -> u64 {
    let files = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let arenas = files(db_dir.join("arena"))
        .into_iter()
        .filter_map(|p| vitrine_storage::Arena::open(&p).ok())
        .map(|a| a.generation());
    let dumps = files(db_dir.join("index"))
        .into_iter()
        .filter_map(|d| vitrine_index::SpaceIndex::saved_generation(&d));
    arenas.chain(dumps).max().unwrap_or(0)
}

/// Removes the checkpoint files (arenas, index dumps) of a generation past
/// `generation`, before storage of an older one is put back: they would be
/// ahead of it, and every open would refuse the database as one whose
/// storage lost acknowledged writes. Only for a database that opened
/// before: its checkpoint was a cache of storage, which the next open
/// rebuilds (a failed checkpoint may have replaced the old files, so
/// for one that did not open they stay, and it stays refused). Best effort.
fn remove_checkpoints_after(db_dir: &std::path::Path, generation: u64) {
    let entries = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for arena in entries(db_dir.join("arena")) {
        if vitrine_storage::Arena::open(&arena).is_ok_and(|a| a.generation() > generation) {
            let _ = std::fs::remove_file(&arena);
        }
    }
    for dump in entries(db_dir.join("index")) {
        let ahead = std::fs::read(dump.join("index.vtx"))
            .ok()
            .and_then(|b| vitrine_index::parse_index_header(&b).ok())
            .is_some_and(|h| h.generation > generation);
        if ahead {
            let _ = std::fs::remove_dir_all(&dump);
        }
    }
    for sub in ["arena", "index"] {
        let _ = sync_dir(&db_dir.join(sub));
    }
}

/// Products in the last checkpoint: the largest arena (one per space).
fn checkpoint_products(db_dir: &std::path::Path) -> Option<usize> {
    std::fs::read_dir(db_dir.join("arena"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "arena"))
        .filter_map(|e| vitrine_storage::Arena::open(&e.path()).ok())
        .map(|a| a.len())
        .max()
}

/// Removes `<db>.before-repair[-n].incomplete[-m]` folders: copies an
/// earlier repair did not finish.
fn remove_incomplete_copies(db_dir: &std::path::Path) {
    let (Some(parent), Some(name)) = (db_dir.parent(), db_dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.before-repair", name.to_string_lossy());
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        let ours = n
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once(".incomplete"))
            .is_some_and(|(copy_no, _)| {
                copy_no.is_empty()
                    || copy_no
                        .strip_prefix('-')
                        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            });
        if ours && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Takes the repair lock of `dir` without waiting: an advisory lock on the
/// folder itself, released when the returned file closes, however the
/// process ends. `Err` with `WouldBlock` when another process holds it; a
/// file system without flock counts as unlocked.
fn try_lock_dir(dir: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    #[cfg(unix)]
    {
        let file = std::fs::File::open(dir)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            tracing::debug!(error = %e, "no repair lock");
        }
        Ok(Some(file))
    }
    // No flock: no lock.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(None)
    }
}

/// Whether a `vitrine repair` holds `db`'s lock now.
pub(crate) fn repair_running(db: &std::path::Path) -> bool {
    matches!(try_lock_dir(db), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Held for the whole repair: a second `vitrine repair` of the same folder
/// fails at once instead of meeting the first one's renames.
fn lock_for_repair(db_dir: &std::path::Path) -> anyhow::Result<Option<std::fs::File>> {
    try_lock_dir(db_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => anyhow::anyhow!(
            "another `vitrine repair` is running on {} (nothing was changed)",
            db_dir.display()
        ),
        _ => anyhow::Error::from(e).context(format!("cannot open {}", db_dir.display())),
    })
}

/// A repair killed between moving sled's old files aside and moving the
/// new ones in leaves no `sled/`: the old files go back (the repair then
/// starts again from them). A staging folder of an interrupted salvage
/// (`sled.salvage*`) holds only a copy, and goes.
fn undo_interrupted_swap(db: &std::path::Path) -> anyhow::Result<()> {
    let sled = db.join("sled");
    if !db.is_dir() {
        return Ok(());
    }
    if std::fs::symlink_metadata(&sled).is_err() {
        if let Some(old) = crate::interrupted_repair(db) {
            std::fs::rename(&old, &sled).with_context(|| {
                format!("cannot move {} back to {}", old.display(), sled.display())
            })?;
            // On disk before the marker goes: a power loss must not keep
            // the marker's removal and lose the move.
            sync_dir(db).with_context(|| format!("cannot sync {}", db.display()))?;
            let _ = std::fs::remove_file(db.join(crate::SWAP_MARKER));
            println!(
                "an earlier repair was interrupted: moved sled's files back from {}",
                old.display()
            );
        }
    }
    if crate::interrupted_repair(db).is_none() {
        // A marker left by a kill after the swap, or naming a folder that
        // is gone: nothing to undo.
        let _ = std::fs::remove_file(db.join(crate::SWAP_MARKER));
    }
    if sled.is_dir() {
        for entry in std::fs::read_dir(db)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only the names `free_name` gives a staging folder.
            let staging = name == "sled.salvage"
                || name
                    .strip_prefix("sled.salvage-")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if staging && entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Whether the database's storage opens but holds no schema record.
fn storage_has_no_schema(db_dir: &std::path::Path) -> bool {
    let Ok(store) = vitrine_storage::Store::open(db_dir, vitrine_storage::StoreOptions::default())
    else {
        return false;
    };
    store
        .keyspace::<vitrine_storage::Meta>("meta")
        .and_then(|meta| meta.get(b"meta"))
        .is_ok_and(|m| m.is_none())
}

/// After a failed first open: a store refused for its lock was not
/// touched, and the copy goes; any other failure may come after sled
/// recovered (and cut its log), so the folder is put back from the copy.
fn drop_or_restore_copy(
    db_dir: &std::path::Path,
    copy: Option<&std::path::Path>,
    e: &vitrine::Error,
) {
    let Some(copy) = copy else { return };
    let untouched = matches!(
        e,
        vitrine::Error::Storage(
            vitrine_storage::Error::Locked { .. } | vitrine_storage::Error::HeldAfterIoError { .. }
        )
    );
    if untouched {
        let _ = std::fs::remove_dir_all(copy);
    } else {
        restore_from_copy(db_dir, copy);
    }
}

/// Rewrites sled's files from what it can read and swaps them in. Returns
/// what was kept, and without a copy, where sled's old files went.
fn salvage(
    db_dir: &std::path::Path,
    have_copy: bool,
) -> anyhow::Result<(vitrine_storage::Salvaged, Option<PathBuf>)> {
    let sled = db_dir.join("sled");
    let staging = free_name(&sled, "salvage")?;
    // A segment sled skips is what the salvage loses; the rest is kept.
    let options = vitrine_storage::StoreOptions {
        accept_damaged_segments: true,
        ..Default::default()
    };
    let salvaged = vitrine_storage::Store::open(db_dir, options)
        .and_then(|store| store.salvage_into(&staging));
    // The old checkpoint files stay until the new sled files are in place
    // (they tell how many products there were); the new files start a
    // new index generation, so that a kill before those go leaves them
    // stale, not trusted.
    let newest_checkpoint = checkpoint_generation(db_dir);
    let salvaged = salvaged.and_then(|s| {
        let store =
            vitrine_storage::Store::open(&staging, vitrine_storage::StoreOptions::default())?;
        let meta_ks = store.keyspace::<vitrine_storage::Meta>("meta")?;
        if let Some(mut meta) = meta_ks.get(b"meta")? {
            // Past every checkpoint file, which may be ahead of what sled
            // kept.
            meta.index_generation = meta
                .index_generation
                .max(newest_checkpoint)
                .saturating_add(1);
            meta_ks.put(b"meta", &meta)?;
        }
        store.flush()?;
        Ok(s)
    });
    let salvaged = match salvaged {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(anyhow::Error::from(e).context(format!(
                "cannot rewrite sled's files into {}",
                staging.display()
            )));
        }
    };
    let marker = db_dir.join(crate::SWAP_MARKER);
    // Until sled's files move, a failure leaves the folder as it was: the
    // rewritten copy (as large as sled: often on a full disk) and the
    // marker go.
    let marker_written = std::cell::Cell::new(false);
    let old = (|| {
        // sled syncs only its log: the new files reach the disk before the
        // old ones move.
        sync_tree(&staging).with_context(|| format!("cannot sync {}", staging.display()))?;
        let old = free_name(&sled, "before-salvage")?;
        // Names the folder the old files go to, until the new ones are in
        // place: a repair killed in between moves exactly that one back.
        marker_written.set(true);
        write_synced(
            &marker,
            old.file_name().unwrap_or_default().as_encoded_bytes(),
        )
        .and_then(|()| sync_dir(db_dir))
        .with_context(|| format!("cannot write {}", marker.display()))?;
        std::fs::rename(&sled, &old)
            .with_context(|| format!("cannot move {} aside", sled.display()))?;
        Ok(old)
    })();
    let old = match old {
        Ok(old) => old,
        Err(e) => {
            if marker_written.get() {
                let _ = std::fs::remove_file(&marker);
            }
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(staging.join("sled"), &sled) {
        let back = std::fs::rename(&old, &sled);
        // The rename back reaches the disk before the marker goes.
        if back.is_ok() && sync_dir(db_dir).is_ok() {
            let _ = std::fs::remove_file(&marker);
            let _ = std::fs::remove_dir_all(&staging);
        }
        return Err(anyhow::Error::from(e).context(match back {
            Ok(()) => format!(
                "cannot move the rewritten files {} into place",
                staging.display()
            ),
            Err(_) => format!(
                "cannot move the rewritten files {} into place, nor the old ones back from {}",
                staging.display(),
                old.display()
            ),
        }));
    }
    // The renames reach the disk before the marker goes.
    sync_dir(db_dir).with_context(|| format!("cannot sync {}", db_dir.display()))?;
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&staging);
    // index/ and arena/ stay: the salvage's generation is past theirs, so
    // the next open rebuilds from it and the checkpoint replaces them. Until
    // then they are the evidence of what the log lost, which a repair that
    // fails and puts sled's old files back must find again.
    if have_copy {
        remove_whole(&old);
        Ok((salvaged, None))
    } else {
        println!("sled's old files: {}", old.display());
        Ok((salvaged, Some(old)))
    }
}

/// Removes folder `dir` by a hidden name first: a repair killed during the
/// removal left a half-deleted `sled.before-salvage`, which the next one
/// listed as sled's old files. Leftovers of that name go at the next
/// repair ([`remove_half_removed`]).
fn remove_whole(dir: &std::path::Path) {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = dir.with_file_name(format!(".{name}.removing-{}", std::process::id()));
    match std::fs::rename(dir, &doomed) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&doomed);
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes what [`remove_whole`] left half-removed in `db_dir`.
fn remove_half_removed(db_dir: &std::path::Path) {
    for e in std::fs::read_dir(db_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".sled.before-salvage") && name.contains(".removing-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Bytes of the files under `dir` (0 for what cannot be read).
fn tree_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Syncs every file and folder under `dir`, and `dir`.
fn sync_tree(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Fsyncs a folder, so that renames and new files in it are durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    // Folders cannot be opened for a sync everywhere; where they cannot,
    // renames are durable by themselves.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Syncs the folder that holds `path` (after a rename into it).
pub(crate) fn sync_parent(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(std::path::Path::new(".")),
    }
}

/// `bytes` in a new file beside `path`, synced: the first half of writing
/// `path` whole through a rename (removed again on a failure). Keep the
/// file open until the rename: it marks the write as live (see
/// `vitrine_index::create_temp_beside`).
pub(crate) fn synced_temp_beside(
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::io::Write;
    let (tmp, mut file) = vitrine_index::create_temp_beside(path)?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, file))
}

/// Writes `path` whole or not at all: a synced file beside it, renamed over
/// it, then its folder synced.
pub(crate) fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, _live) = synced_temp_beside(path, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Writes `bytes` to `path` and fsyncs it.
pub(crate) fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Puts the files a repair set aside back (over what sled wrote in their
/// place), then the whole folder from the copy: sled's failed opens may
/// still have cleared part of its log.
fn put_back(
    moved: &[(PathBuf, PathBuf)],
    db_dir: &std::path::Path,
    copy: Option<&std::path::Path>,
) {
    for (file, aside) in moved.iter().rev() {
        if std::fs::rename(aside, file).is_ok() {
            println!("put {} back", file.display());
        }
    }
    if let Some(copy) = copy {
        restore_from_copy(db_dir, copy);
    }
}

/// Puts the copy taken before the repair back in place of `db_dir` (which
/// failed opens may have changed); the copy's name is then free again. It
/// runs on the way out of a failed repair, whose error the caller reports:
/// when the copy cannot be put back, that is said here, with where it is.
fn restore_from_copy(db_dir: &std::path::Path, copy: &std::path::Path) {
    match put_copy_back(db_dir, copy) {
        Ok(()) => println!("put the folder back as it was, from the copy"),
        Err(e) => esay!(
            "could not put the folder back from the copy: {e:#}; the folder as it was \
             before the repair is in {}",
            copy.display()
        ),
    }
}

fn put_copy_back(db_dir: &std::path::Path, copy: &std::path::Path) -> anyhow::Result<()> {
    let failed = free_name(db_dir, "repair-failed")?;
    // A folder that is a mount point cannot be renamed (EBUSY): left as the
    // failed repair made it, for the operator to replace its contents with
    // the copy's (emptying it here first could leave it half restored).
    std::fs::rename(db_dir, &failed).with_context(|| {
        format!(
            "cannot move {} aside (replace its contents with the copy's by hand)",
            db_dir.display()
        )
    })?;
    std::fs::rename(copy, db_dir).with_context(|| {
        format!(
            "cannot move the copy {} back to {} (the repaired attempt is in {})",
            copy.display(),
            db_dir.display(),
            failed.display()
        )
    })?;
    if let Some(parent) = db_dir.parent() {
        sync_dir(parent).with_context(|| format!("cannot sync {}", parent.display()))?;
    }
    let _ = std::fs::remove_dir_all(&failed);
    Ok(())
}

/// `<path>.<what>`, or `<path>.<what>-2`, -3… : a free name next to `path`
/// (which is canonical, so the name is never inside it).
fn free_name(path: &std::path::Path, what: &str) -> anyhow::Result<PathBuf> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        anyhow::bail!("{} has no parent folder to copy it into", path.display());
    };
    let name = name.to_string_lossy();
    Ok((1..)
        .map(|i| match i {
            1 => parent.join(format!("{name}.{what}")),
            i => parent.join(format!("{name}.{what}-{i}")),
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some name is free"))
}

/// Copies a folder tree, following links (the copy holds their contents),
/// every file and folder synced: the repair changes the original right
/// after, so the copy must survive a power loss first.
///
/// An error names the file, and says which side failed: a database that
/// cannot be read (a failing sector, which is why one repairs) needs
/// `--no-copy`, a full or read-only destination does not.
/// Copies `from` to `to`, but for the entries `skip` names in `from` itself.
fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
    skip: fn(&std::ffi::OsStr) -> bool,
) -> anyhow::Result<()> {
    let unreadable = |path: &std::path::Path| {
        format!(
            "cannot read {} (if the database's disk fails, `repair --no-copy` repairs in place)",
            path.display()
        )
    };
    let unwritable = |path: &std::path::Path| format!("cannot write {}", path.display());
    std::fs::create_dir(to).with_context(|| unwritable(to))?;
    for entry in std::fs::read_dir(from).with_context(|| unreadable(from))? {
        let entry = entry.with_context(|| unreadable(from))?;
        if skip(&entry.file_name()) {
            continue;
        }
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::metadata(&source).with_context(|| unreadable(&source))?;
        if meta.is_dir() {
            copy_tree(&source, &target, |_| false)?;
        } else if meta.is_file() {
            copy_file_synced(&source, &target, unreadable, unwritable)?;
        } else {
            anyhow::bail!("{} is not a file or a folder", source.display());
        }
    }
    sync_dir(to).with_context(|| unwritable(to))
}

fn copy_file_synced(
    source: &std::path::Path,
    target: &std::path::Path,
    unreadable: impl Fn(&std::path::Path) -> String,
    unwritable: impl Fn(&std::path::Path) -> String,
) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut from = std::fs::File::open(source).with_context(|| unreadable(source))?;
    let mut to = std::fs::File::create(target).with_context(|| unwritable(target))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| unreadable(source)),
        };
        to.write_all(&buf[..n])
            .with_context(|| unwritable(target))?;
    }
    // As `fs::copy` did: a `0600` database stays unreadable to others in
    // its copy (which a failed repair puts back in its place).
    let mode = from
        .metadata()
        .with_context(|| unreadable(source))?
        .permissions();
    to.set_permissions(mode)
        .with_context(|| unwritable(target))?;
    to.sync_all().with_context(|| unwritable(target))
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
    let opened = crate::existing_db(&args.db).and_then(|()| {
        crate::open_existing(&args.db).with_context(|| format!("cannot open {}", args.db.display()))
    });
    let db = match opened {
        Ok(db) => db,
        Err(e) => {
            // A monitor reads why in the object, not in stderr's text:
            // damaged (repair, or restore a backup), held by another
            // process (retry), or neither (a wrong path, say).
            if args.json {
                let db_error = e.chain().find_map(|c| c.downcast_ref::<vitrine::Error>());
                // (Refused before an open: storage gone beside its index
                // files, or sled's files left aside by a repair, running or
                // stopped.)
                let dir = &args.db;
                let no_storage = !dir.join("sled").is_dir()
                    && (dir.join("index").is_dir() || dir.join("arena").is_dir());
                let repair_left = crate::interrupted_repair(dir).is_some();
                let repairing = repair_left && repair_running(dir);
                let v = serde_json::json!({
                    "error": crate::error_message(&e),
                    "damaged": db_error.is_some_and(vitrine::Error::is_damage)
                        || no_storage
                        || (repair_left && !repairing),
                    "locked": db_error.is_some_and(vitrine::Error::is_locked) || repairing,
                });
                println!("{}", crate::json_text(&v));
            }
            return Err(e);
        }
    };
    let info = report(&db)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        use std::io::Write;
        writeln!(out, "{}", crate::json_text(&info))?;
    } else {
        write_text(&mut out, &info)?;
    }
    Ok(())
}

/// Everything `info` reports, as one JSON object.
pub fn report(db: &Db) -> anyhow::Result<Value> {
    let ids = db.ids();
    let (mut in_stock, mut categories, mut models) = (0usize, BTreeSet::new(), BTreeMap::new());
    // From memory: storage was read whole by the open.
    for id in &ids {
        let Some(attributes) = db.attributes(id) else {
            continue;
        };
        in_stock += usize::from(attributes.in_stock);
        if let Some(c) = &attributes.category {
            categories.insert(c.clone());
        }
        let model = attributes.get(ATTR_MODEL).unwrap_or("(none)").to_string();
        *models.entry(model).or_insert(0usize) += 1;
    }
    let fingerprint = db.model_fingerprint();
    // Without the bundled model (a binary copied away from its models/
    // folder), there is nothing to compare with: unknown, not "another".
    let (bundled, bundled_error) = match Model::bundled() {
        Ok(m) => (Some(m.fingerprint().to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let report = db.open_report();
    // Side records the open does not read: one that cannot be read is
    // reported, not a reason to show nothing.
    let mut unreadable: Vec<String> = Vec::new();
    let mut readable = |what: &str, e: &dyn std::fmt::Display| {
        unreadable.push(format!("{what}: {e}"));
    };
    let rules = db.outfit_rules().unwrap_or_else(|e| {
        readable("outfit rules", &e);
        None
    });
    // Decoded (a count of keys would not meet a record it cannot read).
    let outfits = db
        .outfits()
        .map(|o| o.len())
        .map_err(|e| readable("outfits", &e))
        .ok();
    // (A record that does not decode is left out of the list.)
    if let (Some(read), Ok(stored)) = (outfits, db.outfit_count()) {
        if stored > read {
            readable(
                "outfits",
                &format!("{} of the {stored} stored cannot be read", stored - read),
            );
        }
    }
    // `None` (unknown) when it cannot be told, not "current".
    let current = match rules {
        Some(_) => db
            .outfit_rules_current()
            .map_err(|e| readable("outfit rules' sources", &e))
            .ok()
            .flatten(),
        None => None,
    };
    let colour_attribute = db
        .outfit_settings()
        .map_err(|e| readable("outfit settings", &e))
        .ok()
        .and_then(|s| s.colour_attribute);
    let user_tags = db.user_tags().map_err(|e| readable("user tags", &e)).ok();
    let stale_tags = db
        .stale_tags()
        .map_err(|e| readable("user tag models", &e))
        .ok();
    let profiles = db
        .profile_users()
        .map_err(|e| readable("profiles", &e))
        .ok();
    let recorded = db
        .recorded_prep_config()
        .map_err(|e| readable("image preparation", &e))
        .ok();
    let bytes_on_disk = db
        .size_on_disk()
        .map_err(|e| readable("size on disk", &e))
        .ok();
    // What image operations use: without a record, that depends on whether
    // an older build stored image products (area shrink off then).
    let prep = match &recorded {
        // Unreadable: named once, above.
        None => None,
        Some(_) => db.prep_config().ok(),
    };
    Ok(json!({
        "path": db.path().display().to_string(),
        // Null when a file in the folder cannot be read (named in
        // `unreadable`).
        "bytes_on_disk": bytes_on_disk,
        "products": ids.len(),
        "in_stock": in_stock,
        "categories": categories.len(),
        "spaces": db.spaces().iter().zip(db.space_stats()).map(|(s, st)| json!({
            "name": s.name, "dim": s.dim, "metric": format!("{:?}", s.metric),
            "vectors": st.vectors, "graph_tombstones": st.tombstones,
        })).collect::<Vec<_>>(),
        "model": {
            "fingerprint": fingerprint,
            "is_bundled": bundled.as_ref().map(|b| fingerprint.as_ref() == Some(b)),
            "bundled_error": bundled_error,
            "products_by_model": models,
        },
        // Null when the record cannot be read (named in `unreadable`).
        "preparation": prep.map(|prep| json!({
            "recorded": recorded.flatten().is_some(),
            "pixel_aspect": prep.get_pixel_aspect(),
            "crop": prep.get_crop(),
            "illumination": format!("{:?}", prep.get_illumination()),
            "area_shrink": prep.get_area_shrink(),
        })),
        "opened": {
            "rebuilt_indexes": report.rebuilt.iter().map(|(space, why)| json!({"space": space, "reason": why})).collect::<Vec<_>>(),
            "damaged_records": report.damaged.len(),
            "damaged_examples": report.damaged.iter().take(5).collect::<Vec<_>>(),
            "damaged_arenas": report.damaged_arenas.iter().map(|(space, why)| json!({"space": space, "reason": why})).collect::<Vec<_>>(),
            "unsaved": report.unsaved,
            "unreadable": unreadable,
        },
        "outfits": outfits,
        "outfit_rules": rules.as_ref().map(|r| json!({
            "learned_from": r.outfits,
            "pairs": r.pairs,
            "stale": current.map(|c| !c),
        })),
        "colour_attribute": colour_attribute,
        "user_tags": user_tags.map(|t| t.len()),
        "stale_user_tags": stale_tags,
        "profiles": profiles.map(|u| u.len()),
    }))
}

/// The report for people.
pub fn write_text(w: &mut dyn std::io::Write, info: &Value) -> std::io::Result<()> {
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
    writeln!(w, "database   {}", info["path"].as_str().unwrap_or(""))?;
    match info["bytes_on_disk"].as_f64() {
        Some(bytes) => writeln!(w, "on disk    {:.1} MB", bytes / 1e6)?,
        None => writeln!(w, "on disk    unknown (see below)")?,
    }
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
            "space      {} ({}-d, {}): {} vectors, {} graph tombstones",
            s["name"].as_str().unwrap_or(""),
            n(&s["dim"]),
            s["metric"].as_str().unwrap_or(""),
            n(&s["vectors"]),
            n(&s["graph_tombstones"])
        )?;
    }
    let m = &info["model"];
    match m["fingerprint"].as_str() {
        Some(fp) => {
            let which = match m["is_bundled"].as_bool() {
                Some(true) => "the bundled model".to_string(),
                Some(false) => "not the bundled model".to_string(),
                None => format!(
                    "the bundled model could not be loaded to compare: {}",
                    m["bundled_error"].as_str().unwrap_or("unknown reason")
                ),
            };
            writeln!(w, "model      {fp} ({which})")?;
        }
        None => writeln!(w, "model      (none: vectors inserted directly)")?,
    }
    if let Some(by) = m["products_by_model"].as_object() {
        // Also when every product is of a model the database no longer
        // has (a re-embedding stopped before its first product).
        let other = by
            .keys()
            .any(|k| k != "(none)" && Some(k.as_str()) != m["fingerprint"].as_str());
        if by.len() > 1 || other {
            for (model, count) in by {
                writeln!(w, "           {} products from {model}", n(count))?;
            }
        }
    }
    let prep = &info["preparation"];
    if prep.is_null() {
        writeln!(
            w,
            "images     preparation unknown (its record cannot be read)"
        )?;
    } else {
        writeln!(
            w,
            "images     prepared with pixel aspect {}, crop {}, illumination {}, area shrink {}{}",
            prep["pixel_aspect"],
            if prep["crop"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            },
            prep["illumination"].as_str().unwrap_or("?"),
            if prep["area_shrink"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            },
            if prep["recorded"].as_bool() == Some(true) {
                ""
            } else {
                " (none recorded)"
            }
        )?;
    }
    let opened = &info["opened"];
    // What the open repaired, one line each: (field, what, what was done).
    let unsaved = opened["unsaved"].as_str();
    let repairs = [
        ("rebuilt_indexes", "index of", "rebuilt from storage"),
        (
            "damaged_arenas",
            "vector arena of",
            match unsaved {
                None => "damaged, read from storage and rewritten",
                Some(_) => "damaged, read from storage",
            },
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
    if let Some(why) = unsaved {
        writeln!(
            w,
            "open       what was rebuilt could not be saved, so the next open rebuilds it \
             again: {why}"
        )?;
    }
    for u in opened["unreadable"].as_array().into_iter().flatten() {
        clean = false;
        writeln!(w, "open       cannot read the {}", u.as_str().unwrap_or(""))?;
    }
    if clean {
        writeln!(
            w,
            "open       clean (indexes loaded from their dumps, every product record readable)"
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
    )?;
    if let Some(stale) = info["stale_user_tags"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = stale.iter().filter_map(|s| s.as_str()).collect();
        writeln!(
            w,
            "           stale (learned with another model, define again): {}",
            names.join(", ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_whole;

    const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    /// A write removes its killed predecessors' temporary files (a day
    /// old), not another writer's of now, nor another file's.
    #[test]
    fn writes_sweep_stale_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, age: std::time::Duration| {
            let p = dir.path().join(name);
            std::fs::write(&p, name).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - age)
                .unwrap();
            p
        };
        let killed = at(".r.tsv.tmp-1-0", 2 * STALE_TEMP);
        let running = at(".r.tsv.tmp-2-0", std::time::Duration::ZERO);
        let other = at(".other.tsv.tmp-1-0", 2 * STALE_TEMP);
        let named = at(".r.tsv.tmp-notes", 2 * STALE_TEMP);
        write_whole(&dir.path().join("r.tsv"), b"x").unwrap();
        assert_eq!(std::fs::read(dir.path().join("r.tsv")).unwrap(), b"x");
        assert!(!killed.exists());
        assert!(running.exists() && other.exists() && named.exists());
    }
}
