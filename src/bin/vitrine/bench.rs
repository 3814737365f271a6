//! `vitrine bench ...`: the harness used to compare Vitrine side by side with
//! FAISS, hnswlib and Qdrant Edge. Keep the semantics of `ann` stable.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use rand::{Rng, SeedableRng};
use vitrine::{Attributes, Db, Metric};
use vitrine_index::{
    AllowSet, FlatIndex, HnswParams, IndexConfig, PlanHint, SearchOptions, SpaceIndex, VectorIndex,
};

use crate::npy;

const K: usize = 10;

/// An `--ef` value: what a search accepts.
fn ef_arg(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(ef) if (1..=4096).contains(&ef) => Ok(ef),
        _ => Err(format!("must be a whole number within 1..=4096, got {s}")),
    }
}
/// Queries whose `--gt` answers are checked against an exact scan.
const GT_CHECKED_QUERIES: usize = 50;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// ANN recall and throughput on .npy vectors (k = 10).
    ///
    /// Builds with `--threads` threads (2; only 1 builds the same graph on
    /// every run), then searches one query per call on one thread
    /// (an unfiltered exact plan over 4M floats or more, rows × dim, splits its
    /// scan over up to 8 threads, as the engine does; a filtered one too when
    /// it keeps more than a quarter of the rows). Recall is tie-aware: a returned id counts when its exact score is
    /// at least the k-th best exact score minus 1e-6 × max(1, |score|).
    Ann {
        /// Base vectors: row-major float32 .npy, shape (n, d).
        #[arg(long)]
        base: PathBuf,
        /// Query vectors: float32 .npy, shape (q, d).
        #[arg(long)]
        queries: PathBuf,
        /// Ground-truth neighbour indices (int .npy, shape (q, >=10)). Without it,
        /// and whenever a filter is set, the k-th best comes from an exact scan.
        #[arg(long)]
        gt: Option<PathBuf>,
        /// ef values to sweep, each 1 to 4096 (one below k = 10 searches
        /// with 10, as `ef_used` says).
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256", value_parser = ef_arg)]
        ef: Vec<usize>,
        /// Only ids with id % M == 0 may be returned.
        #[arg(long)]
        filter_mod: Option<usize>,
        /// Similarity: cosine (vectors normalised) or inner product.
        #[arg(long, value_enum, default_value_t = MetricArg::Cosine)]
        metric: MetricArg,
        /// Force the search plan (auto lets the planner pick the exact scan for selective filters).
        #[arg(long, value_enum, default_value_t = PlanArg::Auto)]
        plan: PlanArg,
        /// HNSW max connections (M).
        #[arg(long, default_value_t = 16)]
        m: usize,
        /// HNSW ef_construction.
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        /// Threads that build the graph; 1 builds the same graph on every
        /// run (recall then repeats exactly).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// One JSON object per line: {"ef","ef_used","qps","recall","filter","plan"}
        /// (and the build figures on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Image ingestion: per-stage cost (decode, prepare, inference, one
    /// thread each; the model runs one image at a time) and end-to-end
    /// import throughput at each batch size (the real pipeline into a
    /// fresh database, all cores).
    Ingest {
        /// Folder of images (default: the bundled sample catalog).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Use at most this many images.
        #[arg(long, default_value_t = 300)]
        n: usize,
        /// Batch sizes, each 1 to 64.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32", value_parser = crate::import::batch_arg)]
        batch: Vec<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Concept and profile query latency, exact plan against the graph plan
    /// (with the graph's recall), on a database's real concept vectors and on
    /// a larger catalog synthesised from them.
    Concepts {
        /// An image database (built by `import` or `eval concepts --db`).
        #[arg(long)]
        db: PathBuf,
        /// Also at this many products, synthesised from the real vectors
        /// (each a real one with Gaussian noise, sd 0.05, blocks renormalised);
        /// at most 2,000,000 (6 GB or more at the bundled model's 207-d: the
        /// vectors are held three times while the graph is built).
        #[arg(long, default_value_t = 100_000,
              value_parser = clap::value_parser!(u32).range(..=2_000_000))]
        synth: u32,
        /// Queries of each kind, 1 to 100,000.
        #[arg(long, default_value_t = 200,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        queries: u32,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Open time of a database of N random products: with a matching index dump,
    /// and with a rebuild; bytes on disk per product; and search latency
    /// (k = 10) under the business filters sent most: none, in stock (two
    /// thirds of the products), one brand (5 %), one category in stock
    /// (1.3 %).
    Open {
        /// Number of products.
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        /// Vector dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Where to build the database: a new or empty folder (default: a
        /// temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MetricArg {
    Cosine,
    Ip,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlanArg {
    Auto,
    Exact,
    Graph,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ann {
            base,
            queries,
            gt,
            ef,
            filter_mod,
            metric,
            plan,
            m,
            ef_construction,
            threads,
            json,
        } => ann(AnnArgs {
            base,
            queries,
            gt,
            ef,
            filter_mod,
            metric: match metric {
                MetricArg::Cosine => Metric::Cosine,
                MetricArg::Ip => Metric::InnerProduct,
            },
            plan: match plan {
                PlanArg::Auto => PlanHint::Auto,
                PlanArg::Exact => PlanHint::Exact,
                PlanArg::Graph => PlanHint::Graph,
            },
            m,
            ef_construction,
            threads: threads.into(),
            json,
        }),
        BenchCommand::Open { n, dim, dir, json } => open(n, dim, dir, json),
        BenchCommand::Concepts {
            db,
            synth,
            queries,
            json,
        } => concepts(&db, synth as usize, queries as usize, json),
        BenchCommand::Ingest {
            images,
            n,
            batch,
            json,
        } => ingest(images, n, &batch, json),
    }
}

struct AnnArgs {
    base: PathBuf,
    queries: PathBuf,
    gt: Option<PathBuf>,
    ef: Vec<usize>,
    filter_mod: Option<usize>,
    metric: Metric,
    plan: PlanHint,
    m: usize,
    ef_construction: usize,
    threads: usize,
    json: bool,
}

fn ann(a: AnnArgs) -> Result<()> {
    let base = npy::read_f32(&a.base)?;
    let queries = npy::read_f32(&a.queries)?;
    if base.cols != queries.cols {
        bail!(
            "base has {} dimensions but queries have {}",
            base.cols,
            queries.cols
        );
    }
    if base.rows == 0 || queries.rows == 0 {
        bail!("base and queries must not be empty");
    }
    if a.filter_mod == Some(0) {
        bail!("--filter-mod must be at least 1");
    }
    let gt = match &a.gt {
        Some(p) => {
            let g = npy::read_indices(p)?;
            if g.rows != queries.rows || g.cols < K {
                bail!(
                    "ground truth has shape ({}, {}); need ({}, >= {K})",
                    g.rows,
                    g.cols,
                    queries.rows
                );
            }
            Some(g)
        }
        None => None,
    };
    let dim = base.cols;

    let mut flat = FlatIndex::with_capacity(dim, a.metric, base.rows)?;
    for i in 0..base.rows {
        flat.upsert(i as u64, base.row(i))
            .with_context(|| format!("base row {i}"))?;
    }
    let cfg = IndexConfig {
        hnsw: HnswParams {
            max_connections: a.m,
            ef_construction: a.ef_construction,
            ..HnswParams::default()
        },
        ..IndexConfig::default()
    };
    let t = Instant::now();
    let index = SpaceIndex::build(flat, cfg, a.threads)?;
    let build_s = t.elapsed().as_secs_f64();

    let allow = a.filter_mod.map(|m| {
        AllowSet::from_unsorted(
            (0..base.rows as u64)
                .filter(|i| i % m as u64 == 0)
                .collect(),
        )
    });

    // The k-th best exact score per query (tie-aware recall threshold), and
    // how many answers there are (fewer than k when a filter allows fewer).
    let exact = index.flat();
    // Scored as the hits are below (the index's own f32 score rounds
    // differently, which would count exact answers as misses at large
    // inner products).
    let scanned = |qi: usize| -> Result<(f32, usize)> {
        let q = queries.row(qi);
        let out = exact.search(q, &SearchOptions::new(K), allow.as_ref())?;
        let kth = out.hits.last().map_or(f32::NEG_INFINITY, |h| {
            exact_score(a.metric, q, base.row(h.doc as usize))
        });
        Ok((kth, out.hits.len()))
    };
    let kth: Vec<(f32, usize)> = (0..queries.rows)
        .map(|qi| -> Result<(f32, usize)> {
            let q = queries.row(qi);
            let (Some(g), None) = (&gt, &allow) else {
                return scanned(qi);
            };
            // The worst of its first K, whatever their order.
            let mut worst = f32::INFINITY;
            for &doc in &g.row(qi)[..K] {
                let v = usize::try_from(doc)
                    .ok()
                    .filter(|d| *d < base.rows)
                    .with_context(|| format!("ground truth index {doc} out of range"))?;
                worst = worst.min(exact_score(a.metric, q, base.row(v)));
            }
            // A file made for another metric (public sets are mostly
            // Euclidean, on vectors not normalised) would set another bar:
            // checked against a scan on the first queries.
            if qi < GT_CHECKED_QUERIES {
                let (kth, _) = scanned(qi)?;
                if (worst - kth).abs() > 1e-4 * kth.abs().max(1.0) {
                    bail!(
                        "the ground truth does not match --metric {:?}: for query {qi} its \
                         {K} answers score down to {worst}, an exact scan's k-th best {kth}",
                        a.metric
                    );
                }
            }
            Ok((worst, K))
        })
        .collect::<Result<_>>()?;

    let filter_label = a.filter_mod;
    if a.json {
        eprintln!(
            "{}",
            serde_json::json!({"build_s": build_s, "n": base.rows, "dim": dim, "threads": a.threads})
        );
    } else {
        println!(
            "built {} x {} in {:.2} s ({} thread(s)); {} queries, k = {K}{}",
            base.rows,
            dim,
            build_s,
            a.threads,
            queries.rows,
            a.filter_mod
                .map(|m| format!(", filter id % {m} == 0"))
                .unwrap_or_default()
        );
        println!("{:>6} {:>10} {:>8} {:>6}", "ef", "qps", "recall", "plan");
    }
    for &ef in &a.ef {
        let opts = SearchOptions {
            k: K,
            ef: Some(ef),
            plan: a.plan,
        };
        let mut results = Vec::with_capacity(queries.rows);
        let t = Instant::now();
        for qi in 0..queries.rows {
            results.push(index.search(queries.row(qi), &opts, allow.as_ref())?);
        }
        let secs = t.elapsed().as_secs_f64();
        let qps = queries.rows as f64 / secs.max(1e-9);
        let mut found = 0usize;
        for (qi, out) in results.iter().enumerate() {
            let q = queries.row(qi);
            found += out
                .hits
                .iter()
                .filter(|h| {
                    let t = kth[qi].0;
                    // A hit the filter excludes is wrong, however close.
                    allow.as_ref().is_none_or(|s| s.contains(h.doc))
                        && exact_score(a.metric, q, base.row(h.doc as usize))
                            >= t - 1e-6 * t.abs().max(1.0)
                })
                .count();
        }
        let answers: usize = kth.iter().map(|k| k.1).sum();
        let recall = if answers == 0 {
            1.0
        } else {
            found as f64 / answers as f64
        };
        // The graph falls back to an exact scan when it finds fewer than
        // k: the row says whether every query ran one plan.
        let exact_queries = results
            .iter()
            .filter(|o| o.plan == vitrine::Plan::Exact)
            .count();
        let plan = match exact_queries {
            0 if results.is_empty() => "-",
            0 => "graph",
            n if n == results.len() => "exact",
            _ => "mixed",
        };
        if a.json {
            println!(
                "{}",
                serde_json::json!({"ef": ef, "ef_used": ef.max(K), "qps": qps, "recall": recall,
                    "filter": filter_label, "plan": plan, "exact_queries": exact_queries})
            );
        } else {
            let used = if ef < K {
                format!("  (ef {K}: at least k)")
            } else {
                String::new()
            };
            println!("{ef:>6} {qps:>10.0} {recall:>8.4} {plan:>6}{used}");
        }
    }
    Ok(())
}

/// Exact similarity as the index defines it (cosine normalises both sides).
fn exact_score(metric: Metric, q: &[f32], x: &[f32]) -> f32 {
    let dot: f64 = q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    match metric {
        Metric::InnerProduct => dot as f32,
        Metric::Cosine => {
            let nq: f64 = q.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            (dot / (nq * nx).max(1e-30)) as f32
        }
    }
}

fn open(n: usize, dim: usize, dir: Option<PathBuf>, json: bool) -> Result<()> {
    anyhow::ensure!(n > 0 && dim > 0, "--n and --dim must be at least 1");
    let tmp;
    let dir = match dir {
        // The bench fills the folder and deletes its index dumps: only a
        // new or empty one.
        Some(d) => {
            let used = std::fs::read_dir(&d).is_ok_and(|mut e| e.next().is_some());
            anyhow::ensure!(
                !used,
                "{} is not empty: bench open builds a database of its own there (give a new folder)",
                d.display()
            );
            d
        }
        None => {
            tmp = crate::scratch::scratch()?;
            tmp.path().to_path_buf()
        }
    };
    let builder = || {
        Db::builder()
            .durability(vitrine::Durability::Periodic {
                interval: std::time::Duration::from_millis(500),
            })
            .vector_space("embedding", dim, Metric::Cosine)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let t = Instant::now();
    {
        let db = builder().open(&dir)?;
        for i in 0..n {
            let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let attrs = Attributes::new()
                .brand(format!("brand-{}", i % 20))
                .category(format!("cat-{}", i % 50))
                .price((i % 200) as f64)
                // Independent of brand and category (whose moduli are even).
                .in_stock(i % 3 != 0);
            db.insert(&format!("sku-{i:08}"), attrs, [("embedding", v)])?;
        }
        db.close()?;
    }
    let load_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let db = builder().open(&dir)?;
    let with_dump_s = t.elapsed().as_secs_f64();
    let rebuilt_with_dump = db.open_report().rebuilt.len();
    let bytes = db.size_on_disk()?;
    let queries: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let filters = [
        ("none", vitrine::Filter::new()),
        ("in_stock", vitrine::Filter::new().in_stock()),
        ("brand", vitrine::Filter::new().brand_in(["brand-3"])),
        (
            "category_in_stock",
            vitrine::Filter::new().category_in(["cat-8"]).in_stock(),
        ),
    ];
    let mut search_ms = serde_json::Map::new();
    for (name, f) in &filters {
        let t = Instant::now();
        for q in &queries {
            db.similar(vitrine::SimilarTo::Vector(q), 10, f)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
        search_ms.insert((*name).to_string(), serde_json::json!(ms));
    }
    drop(db);

    std::fs::remove_dir_all(dir.join("index").join("embedding"))
        .context("removing the index dump")?;
    let t = Instant::now();
    let db = builder().open(&dir)?;
    let rebuild_s = t.elapsed().as_secs_f64();
    let rebuilt = db.open_report().rebuilt.len();
    drop(db);

    if json {
        println!(
            "{}",
            serde_json::json!({
                "n": n, "dim": dim, "load_s": load_s,
                "open_with_dump_s": with_dump_s, "open_with_rebuild_s": rebuild_s,
                "bytes_per_product": bytes as f64 / n.max(1) as f64,
                "rebuilt_on_dump_open": rebuilt_with_dump, "rebuilt_on_rebuild_open": rebuilt,
                "search_ms": search_ms,
            })
        );
    } else {
        println!("{n} products x {dim}: inserted and closed in {load_s:.1} s");
        println!(
            "open with a matching dump: {with_dump_s:.2} s (indexes rebuilt: {rebuilt_with_dump})"
        );
        println!("open with a rebuild:       {rebuild_s:.2} s (indexes rebuilt: {rebuilt})");
        println!(
            "bytes on disk per product: {:.0}",
            bytes as f64 / n.max(1) as f64
        );
        let shown: Vec<String> = search_ms
            .iter()
            .map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!("search, ms per query (k = 10): {}", shown.join(", "));
    }
    Ok(())
}

fn ingest(images: Option<PathBuf>, n: usize, batches: &[usize], json: bool) -> Result<()> {
    use vitrine::{prepare_rgb, ImportOptions, ImportSource, Model, PrepConfig};
    let given = images.is_some();
    let dir = images.unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/catalog/images"
        ))
    });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            let hint = if given {
                ""
            } else {
                " (the source tree's sample; pass --images DIR)"
            };
            format!("cannot read {}{hint}", dir.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            // The import's rule: files named as images.
            p.is_file() && crate::import::named_as_image(p)
        })
        .collect();
    anyhow::ensure!(n > 0, "--n must be at least 1");
    files.sort();
    files.truncate(n);
    if files.is_empty() {
        bail!("no images in {}", dir.display());
    }
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("cannot read {}", f.display())))
        .collect::<Result<_>>()?;
    let model = Model::bundled().context("cannot load the bundled model")?;
    let prep = PrepConfig::catalog();
    let count = bytes.len() as f64;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3 / count;

    let t = Instant::now();
    let decoded: Vec<image::RgbImage> = bytes
        .iter()
        .zip(&files)
        .map(|(b, f)| {
            let img = image::load_from_memory(b).with_context(|| format!("{}", f.display()))?;
            Ok(img.to_rgb8())
        })
        .collect::<Result<_>>()?;
    let decode_ms = ms(t);
    let t = Instant::now();
    let prepared = decoded
        .iter()
        .zip(&files)
        .map(|(img, f)| {
            prepare_rgb(img.width(), img.height(), img.as_raw(), &prep)
                .with_context(|| format!("{}", f.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let prepare_ms = ms(t);

    // Inference alone, one thread, after a first run (tract plans and
    // allocates on it). One figure: the model runs an image at a time, so
    // the batch size changes nothing here.
    model.infer(&prepared[..1])?;
    let t = Instant::now();
    model.infer(&prepared)?;
    let infer_ms = ms(t);

    let mut rows = Vec::new();
    for &b in batches {
        // The whole pipeline into a fresh database.
        let tmp = crate::scratch::scratch()?;
        let db = Db::builder().open_with_model(tmp.path(), &model)?;
        let items: Vec<vitrine::ImportItem> = files
            .iter()
            .enumerate()
            .map(|(i, f)| vitrine::ImportItem {
                id: format!("p{i:05}"),
                path: f.clone(),
                attributes: Attributes::default(),
            })
            .collect();
        let t = Instant::now();
        let report = db.import(
            ImportSource::Items(items),
            ImportOptions::new()
                .model(model.clone())
                .prep(prep.clone())
                .batch_size(b),
        )?;
        db.flush()?;
        let secs = t.elapsed().as_secs_f64();
        if report.progress.stored != files.len() {
            bail!(
                "import stored {} of {} images",
                report.progress.stored,
                files.len()
            );
        }
        rows.push((b, count / secs));
    }
    if json {
        let per_batch: Vec<String> = rows
            .iter()
            .map(|(b, ips)| format!(r#"{{"batch":{b},"import_images_per_s":{ips:.1}}}"#))
            .collect();
        println!(
            r#"{{"images":{},"threads":{},"decode_ms_per_image":{decode_ms:.3},"prepare_ms_per_image":{prepare_ms:.3},"infer_ms_per_image":{infer_ms:.3},"batches":[{}]}}"#,
            files.len(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            per_batch.join(",")
        );
    } else {
        println!(
            "{} images from {} ({} CPU threads)",
            files.len(),
            dir.display(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!("decode   {decode_ms:7.3} ms/image (one thread)");
        println!("prepare  {prepare_ms:7.3} ms/image (one thread)");
        println!("infer    {infer_ms:7.3} ms/image (one thread)");
        println!("batch  import images/s (pipeline, all cores)");
        for (b, ips) in &rows {
            println!("{b:5}  {ips:33.1}");
        }
    }
    Ok(())
}

/// One query's results: (doc, score), best first.
type Ranked = Vec<(u64, f32)>;

fn concepts(db_dir: &std::path::Path, synth: usize, nq: usize, json: bool) -> Result<()> {
    anyhow::ensure!(nq > 0, "--queries must be at least 1");
    use rand::rngs::StdRng;
    use vitrine::{Profile, CONCEPT_SPACE};
    crate::existing_db(db_dir)?;
    let db = crate::open_existing(db_dir)
        .with_context(|| format!("cannot open {}", db_dir.display()))?;
    let vocab = db.vocabulary()?;
    let layout = vocab.layout().clone();
    let dim = layout.dim;
    let mut real = Vec::new();
    for id in db.ids() {
        if let Some(v) = db
            .get(&id)?
            .and_then(|p| p.vectors.get(CONCEPT_SPACE).cloned())
        {
            real.push(v);
        }
    }
    if real.is_empty() {
        bail!("{} has no concept vectors", db_dir.display());
    }
    let mut rng = StdRng::seed_from_u64(42);
    // Query vectors: single concepts and pairs, and profiles (one-hot and
    // Dirichlet) relative to random products.
    let names = layout.concept_names();
    let concept_q = |rng: &mut StdRng, terms: usize| {
        let mut q = vec![0.0f32; dim];
        for _ in 0..terms {
            let n = &names[rng.gen_range(0..names.len())];
            let (g, c) = n.split_once('.').unwrap_or((n, ""));
            if let Some(d) = layout.concept_dim(g, c) {
                q[d] += 1.0;
            }
        }
        q
    };
    let groups: Vec<String> = layout.groups.iter().map(|g| g.name.clone()).collect();
    let mut kinds: Vec<(&str, Vec<Vec<f32>>)> = vec![
        ("concept", (0..nq).map(|_| concept_q(&mut rng, 1)).collect()),
        (
            "concept pair",
            (0..nq).map(|_| concept_q(&mut rng, 2)).collect(),
        ),
    ];
    let mut one_hot = Vec::new();
    let mut dirichlet = Vec::new();
    for i in 0..nq {
        let z = &real[rng.gen_range(0..real.len())];
        let p = Profile::only(&groups[i % groups.len()]);
        one_hot.push(p.query_vector(&vocab, z)?);
        let mut p = Profile::only(&groups[0]);
        for g in &groups {
            p.weights
                .insert(g.clone(), -(rng.gen_range(1e-6f32..1.0)).ln());
        }
        dirichlet.push(p.query_vector(&vocab, z)?);
    }
    kinds.push(("profile one-hot", one_hot));
    kinds.push(("profile dirichlet", dirichlet));

    let mut sizes = vec![("real", real.clone())];
    if synth > 0 && synth <= real.len() {
        eprintln!(
            "note: --synth {synth} is not more than the database's {} products: no synthetic catalog",
            real.len()
        );
    }
    if synth > real.len() {
        let noise = rand_distr_normal(&mut rng, synth * dim);
        let mut rows = Vec::with_capacity(synth);
        for j in 0..synth {
            let mut v: Vec<f32> = real[j % real.len()]
                .iter()
                .zip(&noise[j * dim..(j + 1) * dim])
                .map(|(a, n)| a + 0.05 * n)
                .collect();
            for g in &layout.groups {
                let b = &mut v[g.start..g.start + g.len];
                let n = b.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                b.iter_mut().for_each(|x| *x /= n);
            }
            rows.push(v);
        }
        sizes.push(("synthetic", rows));
    }
    for (label, rows) in &sizes {
        let mut flat = FlatIndex::with_capacity(dim, Metric::InnerProduct, rows.len())?;
        for (i, r) in rows.iter().enumerate() {
            flat.upsert(i as u64, r)?;
        }
        let t = Instant::now();
        let index = SpaceIndex::build(flat, IndexConfig::default(), 2)?;
        let build_s = t.elapsed().as_secs_f64();
        if !json {
            println!(
                "{label}: {} products, {dim}-d, graph built in {build_s:.1} s",
                rows.len()
            );
            println!(
                "  {:<18} {:>12} {:>12} {:>14}",
                "queries", "exact ms", "graph ms", "graph recall"
            );
        }
        for (kind, qs) in &kinds {
            let run = |plan: PlanHint| -> Result<(f64, Vec<Ranked>)> {
                let opts = SearchOptions {
                    k: 20,
                    ef: Some(320),
                    plan,
                };
                // Untimed first: the first plan measured would pay for
                // cold caches.
                for q in qs.iter().take(10) {
                    index.search(q, &opts, None)?;
                }
                let t = Instant::now();
                let mut out = Vec::with_capacity(qs.len());
                for q in qs {
                    let r = index.search(q, &opts, None)?;
                    out.push(r.hits.iter().map(|h| (h.doc, h.score)).collect());
                }
                Ok((t.elapsed().as_secs_f64() * 1e3 / qs.len() as f64, out))
            };
            let (exact_ms, exact) = run(PlanHint::Exact)?;
            let (graph_ms, graph) = run(PlanHint::Graph)?;
            // Tie-aware recall@20 of the graph against the exact scan.
            let mut recall = 0.0;
            for (e, g) in exact.iter().zip(&graph) {
                let kth = e.last().map_or(f32::NEG_INFINITY, |h| h.1);
                let good = g.iter().filter(|h| h.1 >= kth - 1e-5).count();
                recall += good as f64 / e.len().max(1) as f64;
            }
            recall /= qs.len() as f64;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"catalog": label, "n": rows.len(), "queries": kind,
                        "exact_ms": exact_ms, "graph_ms": graph_ms, "graph_recall_at_20": recall,
                        "build_s": build_s})
                );
            } else {
                println!("  {kind:<18} {exact_ms:>12.3} {graph_ms:>12.3} {recall:>14.3}");
            }
        }
    }
    Ok(())
}

/// Standard normal samples (Box–Muller), so the bench needs no extra crate.
fn rand_distr_normal(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen_range(0.0..1.0);
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}
