//! `vitrine repl --db PATH` and `vitrine query --db PATH "<query>"`: the
//! interactive shell over a database, and its one-shot form.
//!
//! Every command is one line; [`Session::execute`] runs it and writes a
//! table (or, with `json on` / `--json`, one JSON object per line).

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};
use vitrine::{
    annotate_with, ConceptError, Db, Feedback, Filter, Model, Profile, SimilarTo, TagMethod,
    ANNOTATE_TOP_K, ATTR_SOURCE,
};

use crate::sheet::{self, Tile};

/// Arguments of `vitrine repl`.
#[derive(Args)]
pub struct ReplArgs {
    /// The database folder.
    #[arg(long)]
    pub db: PathBuf,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vitrine query`.
#[derive(Args)]
pub struct QueryArgs {
    /// The database folder (also taken after the query).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Print one JSON object per result.
    #[arg(long)]
    pub json: bool,
    /// The query, e.g. `find +category.shirts -colour.red where in_stock limit 10`
    /// (any REPL command works too).
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub query: Vec<String>,
}

const COMMANDS: &[(&str, &str)] = &[
    ("find", "find <concept query>       e.g. find +pattern.striped colour.blue^2 where category.shirts and not colour.red and in_stock and price < 60 limit 20 diverse 0.3 (-colour.red would rank red down; where not colour.red excludes what the model tagged red)"),
    ("similar", "similar <id> [user] [k] [where <filter>]   more like this (filter as in queries), weighted by the user's profile when given; a number is k unless a profile has that name (user=NAME, k=N say which)"),
    ("annotate", "annotate <image file>      category top-5 and tags, with the group behind each"),
    ("feedback", "feedback <user> <id> like|skip|buy   record it and re-learn the user's profile"),
    ("profile", "profile show <user> | profile list | profile set <user> <group>=<w>|<group.concept>=<a>... | profile reset <user> | profile delete <user>   (set edits what was set by hand, equal weights if nothing was: a new profile weighs only the groups set, or every group equally when only concepts are, and feedback learns from there; reset forgets the feedback and what was set, and gives equal weights; delete forgets the user)"),
    ("tag", "tag define <name> <id>... [not <id>...] [logistic] (@FILE stands for the ids a file lists, one per line; an id spelt like one of these words, or starting with @, goes in quotes: \"not\"; from a shell, as one argument: vitrine query 'tag define t a \"not\"') | tag list | tag weight <name> <w> | tag delete <name>"),
    ("concepts", "concepts [group]           the concept names queries may use"),
    ("outfit", "outfit import|list|show|delete|substitute|expand|cover|complete|rules|settings ...   (outfit help)"),
    ("product", "product get <id>... | product set <id> key=value... | product delete <id>... | product list   (product help)"),
    ("show", "show [file.png]            contact sheet of the last results"),
    ("info", "info                       what the database holds and whether it opened cleanly"),
    ("json", "json on|off                JSON lines instead of tables"),
    ("help", "help                       this list; the query grammar is in the docs of vitrine::ConceptQuery"),
    ("quit", "quit                       (or Ctrl-D; Ctrl-C clears the line, and lets a running command finish)"),
];

const QUERY_WORDS: &[&str] = &[
    "where",
    "and",
    "in_stock",
    "not",
    "price",
    "brand",
    "category",
    "in",
    "like",
    "image",
    "limit",
    "offset",
    "min_score",
    "diverse",
    "profile",
];

/// One REPL session over an open database.
pub struct Session {
    db: Db,
    model: Option<Arc<Model>>,
    /// Whether `model` embedded this database (else `like image` is refused).
    model_fits: bool,
    /// Why the bundled model could not be loaded, for the commands that
    /// need it.
    model_error: Option<String>,
    json: bool,
    /// The last results, for `show`: (id, score, label line).
    last: Vec<(String, f32, String)>,
    last_title: String,
    /// The product the last results are like (`similar`), shown first.
    last_anchor: Option<String>,
    /// Results skipped before the last ones (a query's `offset`): their
    /// ranks start after it.
    last_offset: usize,
    shows: usize,
}

impl Session {
    /// Opens the database (with the bundled model when it is there, for
    /// `annotate` and `like image`).
    pub fn open(path: &Path, json: bool) -> anyhow::Result<Session> {
        crate::existing_db(path)?;
        let (model, model_error) = match Model::bundled() {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        };
        // With the model: checks it and stores its concept layout. Without
        // (or with another model's database): plain open; concept commands
        // then say what is missing.
        let (db, model_fits) = crate::open_for_model(path, model.as_deref())?;
        Ok(Session {
            db,
            model,
            model_error,
            model_fits,
            json,
            last: Vec::new(),
            last_title: String::new(),
            last_anchor: None,
            last_offset: 0,
            shows: 0,
        })
    }

    /// Concept names and commands, for completion.
    fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = COMMANDS.iter().map(|(c, _)| c.to_string()).collect();
        if let Ok(v) = self.db.vocabulary() {
            w.extend(v.names());
        }
        w.extend(QUERY_WORDS.iter().map(|s| s.to_string()));
        w
    }

    /// Runs one command line. Errors are the user's to read; the session goes on.
    pub fn execute(&mut self, line: &str, out: &mut dyn Write) -> anyhow::Result<bool> {
        let line = line.trim();
        let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let owned = split_words(rest).map(|w| {
            let quoted: Vec<bool> = w.iter().map(|w| w.quoted).collect();
            (
                w.into_iter().map(|w| w.text).collect::<Vec<String>>(),
                quoted,
            )
        });
        // find, query, similar and annotate read the line as they need.
        let raw = ["find", "query", "similar", "annotate"]
            .iter()
            .any(|c| cmd.eq_ignore_ascii_case(c));
        let verb: String;
        let (mut args, quoted): (Vec<&str>, &[bool]) = match &owned {
            Ok((owned, quoted)) => (owned.iter().map(String::as_str).collect(), quoted),
            Err(e) if !raw => bail!("{e}"),
            Err(_) => (Vec::new(), &[]),
        };
        // A verb in any case, as the command word (`profile SHOW anna`);
        // not a name in its place.
        const VERBS: [&str; 9] = [
            "on", "off", "show", "list", "reset", "set", "define", "weight", "delete",
        ];
        if ["json", "profile", "tag"]
            .iter()
            .any(|c| cmd.eq_ignore_ascii_case(c))
            && quoted.first() == Some(&false)
        {
            verb = args[0].to_ascii_lowercase();
            if VERBS.contains(&verb.as_str()) {
                args[0] = &verb;
            }
        }
        match cmd.to_ascii_lowercase().as_str() {
            "" => {}
            "quit" | "exit" => {
                at_most(&args, 0, "quit")?;
                return Ok(false);
            }
            "help" | "?" => {
                at_most(&args, 0, "help")?;
                if self.json {
                    let lines: Vec<&str> = COMMANDS.iter().map(|(_, h)| *h).collect();
                    writeln!(
                        out,
                        "{}",
                        crate::json_text(&serde_json::json!({ "help": lines }))
                    )?;
                } else {
                    for (_, h) in COMMANDS {
                        writeln!(out, "  {h}")?;
                    }
                }
            }
            "json" => match args[..] {
                ["on"] => self.json = true,
                ["off"] => self.json = false,
                _ => bail!("usage: json on|off"),
            },
            "find" | "query" => self.find(line, rest, cmd.eq_ignore_ascii_case("find"), out)?,
            "similar" => self.similar(rest, out)?,
            "annotate" => self.annotate(rest, out)?,
            "feedback" => {
                let [user, id, what] = args[..] else {
                    bail!("usage: feedback <user> <id> like|skip|buy");
                };
                let what: Feedback = what.parse().map_err(anyhow::Error::msg)?;
                let p = self.db.feedback(user, id, what)?;
                self.print_profile(user, &p, out)?;
            }
            "profile" => self.profile(&args, out)?,
            "tag" => self.tag(&args, quoted, out)?,
            "concepts" => {
                at_most(&args, 1, "concepts [group]")?;
                let v = self.db.vocabulary()?;
                let names = v.names();
                let shown: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        args.first()
                            .is_none_or(|g| n.starts_with(&format!("{}.", g.to_ascii_lowercase())))
                    })
                    .collect();
                if let (Some(g), true) = (args.first(), shown.is_empty()) {
                    let groups: std::collections::BTreeSet<&str> =
                        names.iter().filter_map(|n| n.split('.').next()).collect();
                    bail!(
                        "no concept group '{g}' (groups: {})",
                        groups.into_iter().collect::<Vec<_>>().join(", ")
                    );
                }
                if self.json {
                    writeln!(
                        out,
                        "{}",
                        crate::json_text(&serde_json::json!({ "concepts": shown }))
                    )?;
                } else {
                    for chunk in shown.chunks(4) {
                        let row: Vec<String> = chunk.iter().map(|n| format!("{n:<28}")).collect();
                        writeln!(out, "  {}", row.join("").trim_end())?;
                    }
                }
            }
            "show" => {
                at_most(&args, 1, "show [file.png]")?;
                self.show(args.first().copied(), out)?
            }
            "info" => {
                at_most(&args, 0, "info")?;
                let info = crate::info::report(&self.db)?;
                if self.json {
                    writeln!(out, "{}", crate::json_text(&info))?;
                } else {
                    crate::info::write_text(out, &info)?;
                }
            }
            // The same commands as `vitrine outfit|product`, parsed by the
            // same clap definitions.
            "outfit" => {
                let (json, args) = self.json_flag(&args);
                if let Some(c) = parse_line("outfit", &args, json, out)? {
                    out.flush()?;
                    crate::outfit::execute(&self.db, c, json)?;
                }
            }
            "product" => {
                let (json, args) = self.json_flag(&args);
                if let Some(c) = parse_line("product", &args, json, out)? {
                    out.flush()?;
                    crate::product::execute(&self.db, c, json)?;
                }
            }
            other => {
                // The nearest command a letter or two away, else one of the
                // same first two letters.
                let prefix: String = other.chars().take(2).collect();
                let lower = other.to_lowercase();
                let near = COMMANDS
                    .iter()
                    .map(|(c, _)| (edit_distance(&lower, c), *c))
                    .filter(|(d, _)| *d <= 2)
                    .min();
                match near.map(|(_, c)| c).or_else(|| {
                    COMMANDS
                        .iter()
                        .map(|(c, _)| *c)
                        .find(|c| c.starts_with(&prefix))
                }) {
                    Some(s) => {
                        bail!("unknown command '{other}' — did you mean {s}? (help lists them)")
                    }
                    None => bail!("unknown command '{other}' (help lists them)"),
                }
            }
        }
        Ok(true)
    }

    fn find(
        &mut self,
        line: &str,
        rest: &str,
        with_find: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let text = if with_find {
            line.to_string()
        } else {
            rest.to_string()
        };
        // `like image` embeds the picture: only with the model that
        // embedded the database (another one's vectors do not compare).
        let model = self.model.as_deref().filter(|_| self.model_fits);
        let res = self.db.vocabulary().and_then(|vocab| {
            let q = vitrine::ConceptQuery::parse(&text, &vocab)?;
            // A page's ranks follow its offset.
            Ok((self.db.run_query(&q, model)?, q.get_offset()))
        });
        let (res, first) = match res {
            Ok(r) => r,
            Err(ConceptError::Query(e)) => return Err(Positioned::new(e, &text).into()),
            Err(ConceptError::Db(vitrine::Error::InvalidConfig(_))) if self.model.is_none() => {
                bail!(
                    "`like image` needs the bundled model, which could not be loaded: {}",
                    self.model_error.as_deref().unwrap_or("unknown reason")
                )
            }
            Err(ConceptError::Db(vitrine::Error::InvalidConfig(_)))
                if self.model.is_some() && !self.model_fits =>
            {
                bail!(
                    "`like image` needs the model that embedded this database, and the bundled \
                     one is another: re-embed first (`vitrine import SOURCE --db DB --reembed`)"
                )
            }
            Err(e) => return Err(e.into()),
        };
        self.last_title = text.clone();
        self.last_anchor = None;
        self.last_offset = first;
        self.last.clear();
        for (rank, h) in res.hits.iter().enumerate() {
            let cat = h.attributes.category.clone().unwrap_or_default();
            self.last.push((h.id.clone(), h.score, cat.clone()));
            if self.json {
                writeln!(
                    out,
                    "{}",
                    crate::json_text(&serde_json::json!({
                        "rank": first + rank + 1, "id": h.id, "score": h.score,
                        "category": h.attributes.category,
                        "brand": h.attributes.brand, "price": h.attributes.price,
                        "in_stock": h.attributes.in_stock, "contributions": h.contributions,
                    }))
                )?;
            }
        }
        if self.json && res.hits.is_empty() {
            // The lines of JSON are the hits: why there are none is told
            // on stderr, as in text.
            eprintln!("(no results){}", self.why_empty(&text));
        }
        if !self.json {
            let w = id_width(res.hits.iter().map(|h| h.id.as_str()));
            writeln!(
                out,
                "{:>3}  {:<w$} {:>7}  {:<22} why",
                "#", "id", "score", "category"
            )?;
            for (rank, h) in res.hits.iter().enumerate() {
                let mut parts = h.contributions.clone();
                parts.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
                let why: Vec<String> = parts
                    .iter()
                    .take(3)
                    .map(|c| format!("{} {:+.2}", c.term, c.value))
                    .collect();
                writeln!(
                    out,
                    "{:>3}  {:<w$} {:>7.3}  {:<22} {}",
                    first + rank + 1,
                    clip(&h.id, w),
                    h.score,
                    clip(h.attributes.category.as_deref().unwrap_or("-"), 22),
                    why.join(", ")
                )?;
            }
            if res.hits.is_empty() {
                writeln!(out, "  (no results){}", self.why_empty(&text))?;
            }
            let unrelated = res.hits.iter().filter(|h| h.score <= 0.0).count();
            // Only beside hits that do match (a query of `-` terms alone
            // scores everything 0 or less).
            if unrelated > 0 && res.hits.iter().any(|h| h.score > 0.0) {
                writeln!(
                    out,
                    "  ({unrelated} result(s) score 0 or less: they pass the conditions but do not \
                     match the concepts; `min_score 0.1` leaves them out)"
                )?;
            }
        }
        Ok(())
    }

    /// Why a query found nothing, when its `where` conditions are the reason.
    fn why_empty(&self, text: &str) -> String {
        let Ok(vocab) = self.db.vocabulary() else {
            return String::new();
        };
        let Ok(q) = vitrine::ConceptQuery::parse(text, &vocab) else {
            return String::new();
        };
        if let Some(min) = q.get_min_score() {
            let best = self
                .db
                .run_query(
                    &q.clone().min_score(f32::MIN).limit(1).offset(0),
                    self.model.as_deref(),
                )
                .ok()
                .and_then(|r| r.hits.first().map(|h| h.score));
            match best {
                Some(best) if best < min => {
                    return format!(": no hit scores at least {min} (the best scores {best:.3})")
                }
                // Hits pass min_score: the page starts past the last.
                Some(_) if q.get_offset() > 0 => {
                    return format!(
                        ": offset {} is past the last of the hits scoring at least {min}",
                        q.get_offset()
                    )
                }
                _ => {}
            }
        }
        let filter = q.get_filter();
        if filter.is_empty() {
            return String::new();
        }
        // (The query's filter was checked when it was parsed.)
        let Ok(passing) = self.db.count_matching(filter) else {
            return String::new();
        };
        let all = self.db.len();
        if passing == 0 {
            match self.db.unmatched_conditions(filter) {
                // (Names and values as stored: control characters shown as `?`.)
                Ok(why) if !why.is_empty() => format!(
                    ": none of the {all} products passes the where conditions: {}",
                    crate::terminal_safe(&why.join("; "))
                ),
                _ => format!(
                    ": none of the {all} products passes the where conditions together \
                     (attribute names and values are compared exactly, case included; \
                     a concept condition reads the tags the model gave at import)"
                ),
            }
        } else {
            format!(": {passing} of {all} products pass the where conditions")
        }
    }

    /// `--json` anywhere in a command line, as on the command line; the
    /// line without it.
    fn json_flag<'a>(&self, args: &[&'a str]) -> (bool, Vec<&'a str>) {
        let json = self.json || args.contains(&"--json");
        (
            json,
            args.iter().copied().filter(|a| *a != "--json").collect(),
        )
    }

    fn similar(&mut self, line: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        let (head, clause) = match where_at(line) {
            Some(at) => (&line[..at], Some(&line[at..])),
            None => (line, None),
        };
        let split = split_words(head).map_err(anyhow::Error::msg)?;
        let args: Vec<&str> = split.iter().map(|w| w.text.as_str()).collect();
        // (`similar where …`: the id is missing, not the word `where`; a
        // product `where` is written `similar "where"`.)
        let Some(id) = args
            .first()
            .filter(|a| split[0].quoted || !a.eq_ignore_ascii_case("where"))
        else {
            bail!("usage: similar <id> [user] [k] [where <filter>]");
        };
        // `where …` is the query language's filter, and only that.
        let filter = match clause {
            Some(clause) => {
                // The prefix's limit makes one in the clause a duplicate,
                // whatever its value (one equal to the default would
                // otherwise parse as no limit at all).
                const PREFIX: &str = "find like \"_\" limit 1 ";
                const ONLY_CONDITIONS: &str = "similar takes only conditions after `where` \
                     (give k before it: similar <id> [user] [k] where …)";
                let query = format!("{PREFIX}{clause}");
                // A database of the library's own vectors has no concepts:
                // its conditions are on attributes only.
                let vocab = match self.db.vocabulary() {
                    Err(ConceptError::NoConceptSpace) => {
                        std::sync::Arc::new(vitrine::Vocabulary::new(
                            vitrine::ConceptLayout {
                                dim: 0,
                                groups: Vec::new(),
                            },
                            [],
                        ))
                    }
                    vocab => vocab?,
                };
                let parsed = match vitrine::ConceptQuery::parse(&query, &vocab) {
                    Ok(parsed) => parsed,
                    // The prefix gives `like` and `limit`: a second one is
                    // the clause's (a second `where` is the clause's own).
                    Err(e)
                        if e.kind == vitrine::QueryErrorKind::Duplicate
                            && !e.message.starts_with("'where'") =>
                    {
                        bail!("{ONLY_CONDITIONS}")
                    }
                    Err(mut e) => {
                        // The caret goes under the line as typed.
                        let typed = format!("similar {line}");
                        let clause_col = typed.chars().count() - clause.chars().count();
                        // (An error of the whole text, such as its length, is
                        // at column 0: the clause's start.)
                        e.column = (e.column + clause_col)
                            .saturating_sub(PREFIX.chars().count())
                            .max(clause_col);
                        return Err(Positioned::new(e, &typed).into());
                    }
                };
                let filter = parsed.get_filter().clone();
                let only_filter = vitrine::ConceptQuery::new()
                    .like(vitrine::LikeTarget::Id("_".into()), 1.0)
                    .limit(1)
                    .filter(filter.clone());
                if parsed != only_filter {
                    bail!("{ONLY_CONDITIONS}");
                }
                filter
            }
            None => Filter::new(),
        };
        let mut k = None;
        let mut user = None;
        for a in &args[1..] {
            // `user=` and `k=` say which; a bare number is k unless a stored
            // profile has that name (retailers' customer ids are numbers).
            if let Some(u) = a.strip_prefix("user=") {
                if user.is_some() || u.is_empty() {
                    bail!("usage: similar <id> [user] [k] [where …] (one user=NAME)");
                }
                user = Some(u);
                continue;
            }
            let (a, explicit_k) = match a.strip_prefix("k=") {
                Some(n) => (n, true),
                None => (*a, false),
            };
            let digits = !a.is_empty() && a.chars().all(|c| c.is_ascii_digit());
            if digits && !explicit_k && user.is_none() && self.db.profile(a)?.is_some() {
                user = Some(a);
                continue;
            }
            match a.parse::<i64>().map_err(|_| digits || explicit_k) {
                Err(true) => bail!("k must be from 1 to 1000"),
                Ok(_) if k.is_some() => {
                    bail!(
                        "usage: similar <id> [user] [k] [where …] (k given twice: a number is k \
                         unless a profile has that name; user=<name> names a user)"
                    )
                }
                Ok(n) if (1..=1000).contains(&n) => k = Some(n as usize),
                Ok(_) => bail!("k must be from 1 to 1000"),
                Err(_) if a.starts_with("--") => {
                    bail!("similar takes no option '{a}' (`json on` switches to JSON lines)")
                }
                Err(_) if user.is_some() => {
                    bail!("usage: similar <id> [user] [k] [where …] ('{a}' after the user; k is a number, `limit` is not used here)")
                }
                Err(_) => user = Some(a),
            }
        }
        let k = k.unwrap_or(10);
        let hits = match (user, self.db.concept_layout()) {
            // The library's own vectors, without concepts: "more like this"
            // in the default space, as `Db::similar` answers it.
            (None, Err(ConceptError::NoConceptSpace)) => {
                self.db.similar(SimilarTo::Id(id), k, &filter)?
            }
            (user, layout) => {
                let profile = match user {
                    Some(u) => self.db.profile(u)?.ok_or_else(|| unknown_profile(u))?,
                    None => Profile::uniform(&layout?),
                };
                (self.db).similar_with_profile(SimilarTo::Id(id), k, &filter, &profile)?
            }
        };
        self.last_title = format!("similar {line}");
        self.last_anchor = Some(id.to_string());
        self.last_offset = 0;
        if hits.is_empty() && !self.json {
            let why = if filter.is_empty() {
                String::new()
            } else {
                match self.db.unmatched_conditions(&filter) {
                    Ok(why) if !why.is_empty() => {
                        format!(": {}", crate::terminal_safe(&why.join("; ")))
                    }
                    _ => ": no other product passes the filter".to_string(),
                }
            };
            writeln!(out, "(no results{why})")?;
        }
        self.last = hits
            .iter()
            .map(|h| {
                (
                    h.id.clone(),
                    h.score,
                    h.attributes.category.clone().unwrap_or_default(),
                )
            })
            .collect();
        let w = id_width(hits.iter().map(|h| h.id.as_str()));
        for (rank, h) in hits.iter().enumerate() {
            if self.json {
                writeln!(
                    out,
                    "{}",
                    // The rows of `find`, but for contributions (a
                    // similarity has no terms).
                    crate::json_text(&serde_json::json!({
                        "rank": rank + 1, "id": h.id, "score": h.score,
                        "category": h.attributes.category,
                        "brand": h.attributes.brand, "price": h.attributes.price,
                        "in_stock": h.attributes.in_stock,
                    }))
                )?;
            } else {
                writeln!(
                    out,
                    "{:>3}  {:<w$} {:>7.3}  {}",
                    rank + 1,
                    clip(&h.id, w),
                    h.score,
                    clip(h.attributes.category.as_deref().unwrap_or("-"), 40)
                )?;
            }
        }
        Ok(())
    }

    fn annotate(&mut self, file: &str, out: &mut dyn Write) -> anyhow::Result<()> {
        let file = file.trim_matches('"');
        if file.is_empty() {
            bail!("usage: annotate <image file>");
        }
        let Some(model) = self.model.as_ref() else {
            bail!(
                "the bundled model is not available: {}",
                self.model_error.as_deref().unwrap_or("unknown reason")
            );
        };
        // Prepared as the database's own images are (the fpi set's squashed
        // pixels, say).
        let prep = self.db.prep_config()?;
        let bytes = prep
            .get_limits()
            .read_file(file.as_ref())
            .with_context(|| format!("cannot read {file}"))?;
        let ann = annotate_with(model, &prep, &bytes, ANNOTATE_TOP_K)
            .with_context(|| format!("cannot annotate {file}"))?;
        if self.json {
            writeln!(
                out,
                "{}",
                crate::json_text(&crate::annotate::json_line(file, &ann))
            )?;
        } else {
            crate::annotate::write_text(out, file, &ann)?;
            if !self.model_fits {
                // (`Db::annotate` refuses: its stored tags are another
                // model's.)
                writeln!(
                    out,
                    "  (the bundled model's reading: this database's products are of another \
                     model, so their tags may differ)"
                )?;
            }
        }
        Ok(())
    }

    fn print_profile(&self, user: &str, p: &Profile, out: &mut dyn Write) -> anyhow::Result<()> {
        if self.json {
            writeln!(
                out,
                "{}",
                crate::json_text(&serde_json::json!({"user": user, "weights": p.weights,
                    "affinities": p.affinities, "events": p.events.len()}))
            )?;
            return Ok(());
        }
        writeln!(
            out,
            "profile {} ({} events)",
            crate::field(user),
            p.events.len()
        )?;
        let mut w: Vec<(&String, &f32)> = p.weights.iter().collect();
        w.sort_by(|a, b| b.1.total_cmp(a.1));
        // Bars of at most 40: weights are usually shares of 1.
        let scale = w.first().map_or(1.0, |(_, &x)| x.max(1.0));
        for (g, x) in w {
            let bar = "#".repeat((x / scale * 40.0).clamp(0.0, 40.0).round() as usize);
            writeln!(out, "  {g:<10} {x:.3} {bar}")?;
        }
        if !p.affinities.is_empty() {
            let a: Vec<String> = p
                .affinities
                .iter()
                .map(|(c, v)| format!("{c} {v:.2}"))
                .collect();
            writeln!(out, "  affinities: {}", a.join(", "))?;
        }
        Ok(())
    }

    fn profile(&mut self, args: &[&str], out: &mut dyn Write) -> anyhow::Result<()> {
        match args {
            ["show", user] => {
                let p = self
                    .db
                    .profile(user)?
                    .ok_or_else(|| unknown_profile(user))?;
                self.print_profile(user, &p, out)
            }
            ["list"] => {
                for u in self.db.profile_users()? {
                    if self.json {
                        writeln!(out, "{}", crate::json_text(&serde_json::json!({ "user": u })))?;
                    } else {
                        writeln!(out, "  {}", clip(&u, 200))?;
                    }
                }
                Ok(())
            }
            ["reset", user] => {
                // Resetting is for a profile that exists; `set` creates one.
                // It forgets the feedback too.
                // The layout first: a failure leaves the user as she was.
                let uniform = Profile::uniform(&self.db.concept_layout()?);
                if !self.db.delete_profile(user)? {
                    return Err(unknown_profile(user).into());
                }
                let p = self.db.set_profile(user, &uniform)?;
                self.print_profile(user, &p, out)
            }
            ["delete", user] => {
                // "Forget this customer": her feedback, weights and name.
                if !self.db.delete_profile(user)? {
                    return Err(unknown_profile(user).into());
                }
                if self.json {
                    writeln!(out, "{}", crate::json_text(&serde_json::json!({ "deleted": user })))?;
                } else {
                    writeln!(out, "deleted profile {user}")?;
                }
                Ok(())
            }
            ["set", user, pairs @ ..] if !pairs.is_empty() => {
                // Edits what was set by hand: equal weights when nothing was
                // (a new profile weighs only the groups named, or every group
                // equally when only concepts are: a preference for red does
                // not stop "more like this" looking like this); the feedback
                // is then learned again from it.
                let names_a_group = pairs.iter().any(|p| {
                    p.split_once('=')
                        .is_some_and(|(g, _)| !g.contains('.'))
                });
                let mut p = match self.db.profile_prior(user)? {
                    Some(p) => p,
                    None if !names_a_group || self.db.profile(user)?.is_some() => {
                        Profile::uniform(&self.db.concept_layout()?)
                    }
                    None => Profile {
                        weights: Default::default(),
                        affinities: Default::default(),
                        events: Vec::new(),
                    },
                };
                // As a query refuses a term given twice: one of the two
                // would be dropped unseen.
                let mut given = std::collections::HashSet::new();
                for pair in pairs {
                    let (g, w) = pair
                        .split_once('=')
                        .with_context(|| format!("'{pair}': use <group>=<weight>"))?;
                    let w: f32 = w.parse().with_context(|| format!("'{w}' is not a number"))?;
                    let key = if g.contains('.') {
                        vitrine::concept_key(g)
                    } else {
                        g.to_lowercase()
                    };
                    if !given.insert(key.clone()) {
                        bail!("'{g}' is given twice");
                    }
                    if g.contains('.') {
                        p.affinities.insert(key, w);
                    } else {
                        p.weights.insert(key, w);
                    }
                }
                let p = self.db.set_profile(user, &p)?;
                self.print_profile(user, &p, out)
            }
            _ => bail!("usage: profile show <user> | profile list | profile set <user> <group>=<w>... | profile reset <user> | profile delete <user>"),
        }
    }

    /// `quoted[i]`: whether `args[i]` was quoted.
    fn tag(&mut self, args: &[&str], quoted: &[bool], out: &mut dyn Write) -> anyhow::Result<()> {
        // A tag's name, also as `tag list` shows it and Tab completes it;
        // an existing tag in any case, as queries name it (`define` keeps
        // the name as typed: a name must be its own slug).
        let mut args = args.to_vec();
        let slug;
        if let [verb, name, ..] = args.as_mut_slice() {
            let prefixed = name
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("user."));
            if prefixed && name.len() > 5 {
                *name = &name[5..];
            }
            if *verb != "define" {
                slug = vitrine::concept_slug(name);
                if !slug.is_empty() {
                    *name = slug.as_str();
                }
            }
        }
        match args.as_slice() {
            ["define", name, rest @ ..] => {
                let mut pos: Vec<String> = Vec::new();
                let mut neg: Vec<String> = Vec::new();
                let mut method = TagMethod::Centroid;
                let mut negative = false;
                for (i, a) in rest.iter().enumerate() {
                    // (A quoted word is an id: `"not"` is the product `not`.)
                    let keyword = !quoted.get(i + 2).copied().unwrap_or(false);
                    let into = if negative { &mut neg } else { &mut pos };
                    match *a {
                        "not" if keyword => negative = true,
                        "logistic" | "centroid" if keyword => {
                            method = a.parse().map_err(anyhow::Error::msg)?
                        }
                        // `@FILE`: ids one per line (a list of thousands
                        // exported from a spreadsheet, past a line's cap).
                        file if keyword && file.len() > 1 && file.starts_with('@') => {
                            into.extend(ids_in_file(Path::new(&file[1..]))?)
                        }
                        id => into.push(id.to_string()),
                    }
                }
                let pos: Vec<&str> = pos.iter().map(String::as_str).collect();
                let neg: Vec<&str> = neg.iter().map(String::as_str).collect();
                // A definition replaces the tag's examples and weight: say
                // what it had.
                let before = self
                    .db
                    .user_tags()
                    .ok()
                    .and_then(|tags| tags.into_iter().find(|t| t.name == *name));
                let t = self.db.define_tag(name, &pos, &neg, method)?;
                if self.json {
                    writeln!(out, "{}", crate::json_text(&tag_json(&t)))?;
                } else {
                    writeln!(
                        out,
                        "defined user.{} from {} example(s) and {} counter-example(s) ({:?}, weight {})",
                        t.name,
                        t.positives.len(),
                        t.negatives.len(),
                        t.method,
                        t.weight
                    )?;
                    if let Some(b) = before {
                        writeln!(
                            out,
                            "  (it replaces the earlier definition: {} example(s), {} counter-example(s), weight {}; `tag weight {} W` sets the weight again)",
                            b.positives.len(),
                            b.negatives.len(),
                            b.weight,
                            t.name
                        )?;
                    }
                }
                Ok(())
            }
            ["list"] => {
                let stale = self.db.stale_tags()?;
                for t in self.db.user_tags()? {
                    let is_stale = stale.contains(&t.name);
                    if self.json {
                        let mut j = tag_json(&t);
                        j["stale"] = serde_json::json!(is_stale);
                        writeln!(out, "{}", crate::json_text(&j))?;
                    } else {
                        writeln!(
                            out,
                            "  user.{:<20} weight {:.2}  {:?}, {} examples{}",
                            t.name,
                            t.weight,
                            t.method,
                            t.positives.len(),
                            if is_stale {
                                "  STALE: learned with another model; define it again"
                            } else {
                                ""
                            }
                        )?;
                    }
                }
                Ok(())
            }
            ["weight", name, w] => {
                let w: f32 = w.parse().with_context(|| format!("'{w}' is not a number"))?;
                let t = self.db.set_tag_weight(name, w)?;
                if self.json {
                    writeln!(out, "{}", crate::json_text(&tag_json(&t)))?;
                } else {
                    writeln!(out, "user.{name} weight {w}")?;
                }
                Ok(())
            }
            ["delete", name] => {
                if !self.db.delete_tag(name)? {
                    bail!("no tag '{name}'");
                }
                if self.json {
                    writeln!(out, "{}", crate::json_text(&serde_json::json!({ "deleted": format!("user.{name}") })))?;
                } else {
                    writeln!(out, "deleted user.{name}")?;
                }
                Ok(())
            }
            _ => bail!("usage: tag define <name> <id>... [not <id>...] [logistic] | tag list | tag weight <name> <w> | tag delete <name>"),
        }
    }

    fn show(&mut self, file: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
        if self.last.is_empty() {
            bail!("nothing to show: run find or similar first");
        }
        // The default name is a new file (sheets of an earlier session
        // stay); a name given is the caller's to replace.
        let path = match file {
            Some(f) => PathBuf::from(f),
            None => loop {
                self.shows += 1;
                let p = PathBuf::from(format!("vitrine-show-{}.png", self.shows));
                // Nothing there, not even a link (a dangling one would be
                // written through, to wherever it points).
                if std::fs::symlink_metadata(&p).is_err() {
                    break p;
                }
            },
        };
        let mut tiles = Vec::new();
        let mut missing = 0;
        // The imported file, else an `image` attribute (a product stored by
        // the library), as outfit sheets find it.
        let source = |id: &str| -> anyhow::Result<Option<PathBuf>> {
            Ok(self
                .db
                .get(id)?
                .and_then(|p| {
                    let extra = &p.attributes.extra;
                    extra
                        .get(ATTR_SOURCE)
                        .or_else(|| extra.get("image"))
                        .cloned()
                })
                .map(PathBuf::from)
                .filter(|p| p.is_file()))
        };
        // After `similar`: the query first (blue), then green for results
        // of its category and orange for others. After `find`: all green.
        let mut anchor_category = None;
        if let Some(anchor) = &self.last_anchor {
            let category = self.db.get(anchor)?.and_then(|p| p.attributes.category);
            if let Some(path) = source(anchor)? {
                tiles.push(Tile {
                    path,
                    colour: sheet::BLUE,
                    fill: 1.0,
                    labels: vec![
                        "query".into(),
                        category.clone().unwrap_or_default(),
                        anchor.clone(),
                    ],
                });
            }
            anchor_category = Some(category);
        }
        let top = self.last.first().map_or(1.0, |l| l.1.abs().max(1e-6));
        for (rank, (id, score, cat)) in self.last.iter().enumerate() {
            let colour = match &anchor_category {
                Some(Some(c)) if c != cat => sheet::ORANGE,
                _ => sheet::GREEN,
            };
            match source(id)? {
                Some(path) => tiles.push(Tile {
                    path,
                    colour,
                    fill: score / top,
                    labels: vec![
                        format!("#{} {score:.3}", self.last_offset + rank + 1),
                        cat.clone(),
                        id.clone(),
                    ],
                }),
                None => missing += 1,
            }
        }
        if tiles.is_empty() {
            bail!("none of the results has its source image on this machine");
        }
        sheet::save(&sheet::render(&self.last_title, &tiles)?, &path)?;
        // The sheet draws the first MAX_TILES.
        let drawn = tiles.len().min(sheet::MAX_TILES);
        let left_out = tiles.len() - drawn;
        if self.json {
            writeln!(
                out,
                "{}",
                crate::json_text(
                    &serde_json::json!({"sheet": path, "tiles": drawn, "not_drawn": left_out, "missing": missing})
                )
            )?;
        } else {
            writeln!(
                out,
                "wrote {} ({drawn} tiles{}{})",
                path.display(),
                if left_out > 0 {
                    format!(", {left_out} more not drawn")
                } else {
                    String::new()
                },
                if missing > 0 {
                    format!(", {missing} without an image")
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

/// Parses the arguments of command `name` as its subcommands `C`; `None`
/// when they asked for help (printed; as `{"help": text}` in JSON mode).
fn parse_line<C: clap::Subcommand>(
    name: &'static str,
    args: &[&str],
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Option<C>> {
    let cmd = C::augment_subcommands(
        clap::Command::new(name)
            .no_binary_name(true)
            .subcommand_required(true)
            .arg_required_else_help(true),
    );
    match cmd
        .try_get_matches_from(args)
        .and_then(|m| C::from_arg_matches(&m))
    {
        Ok(c) => Ok(Some(c)),
        // `outfit` alone shows its help, as `outfit --help` does.
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            if json {
                writeln!(
                    out,
                    "{}",
                    crate::json_text(&serde_json::json!({ "help": e.render().to_string() }))
                )?;
            } else {
                write!(out, "{e}")?;
            }
            Ok(None)
        }
        Err(e) => {
            let shown = e.render().to_string();
            bail!("{}", shown.trim_end().trim_start_matches("error: "))
        }
    }
}

/// Refuses arguments a command would otherwise ignore.
fn at_most(args: &[&str], n: usize, usage: &str) -> anyhow::Result<()> {
    if args.len() > n {
        bail!("unexpected argument '{}' (usage: {usage})", args[n]);
    }
    Ok(())
}

/// The byte offset of a `where` keyword (any case) that stands as a word
/// outside quotes, after at least one argument.
fn where_at(line: &str) -> Option<usize> {
    let mut quoted = false;
    let mut prev_space = false;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        // As split_args reads them: `\"` and `\\` are characters of a value.
        if c == '\\' && matches!(chars.peek(), Some((_, '"' | '\\'))) {
            chars.next();
            prev_space = false;
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && prev_space && i > 0 {
            let rest = &line[i..];
            let word = rest
                .get(..5)
                .is_some_and(|w| w.eq_ignore_ascii_case("where"));
            if word && rest[5..].chars().next().is_none_or(char::is_whitespace) {
                return Some(i);
            }
        }
        prev_space = c.is_whitespace();
    }
    None
}

/// `s` in at most `n` characters, control characters shown as `?` (values
/// are the user's: a line break or an escape would break the table or
/// drive the terminal).
/// The id column's width for these ids: whole up to 64 characters (SKUs
/// that differ only at their ends must be told apart and copied), at
/// least 14.
fn id_width<'a>(ids: impl Iterator<Item = &'a str>) -> usize {
    ids.map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(14, 64)
}

fn clip(s: &str, n: usize) -> String {
    let shown = s.chars().map(|c| if c.is_control() { '?' } else { c });
    if s.chars().count() <= n {
        shown.collect()
    } else {
        let mut c: String = shown.take(n - 1).collect();
        c.push('…');
        c
    }
}

/// Tab completion: commands first, then concept names and query words.
struct ReplHelper {
    words: Vec<String>,
}

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        // Past the separator, whatever its width in bytes (a no-break
        // space is two).
        let start = before
            .char_indices()
            .rfind(|&(_, c)| c.is_whitespace() || c == '+' || c == '-' || c == '(')
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let first = !before[..start].chars().any(|c| !c.is_whitespace());
        // Each word once (`profile` is a command and a query word), in
        // the order the list gives them.
        let mut seen = std::collections::HashSet::new();
        let out: Vec<Pair> = self
            .words
            .iter()
            .filter(|w| w.starts_with(word))
            .filter(|w| !first || COMMANDS.iter().any(|(c, _)| c == w))
            .filter(|w| seen.insert(w.as_str()))
            .map(|w| Pair {
                display: w.clone(),
                replacement: w.clone(),
            })
            .collect();
        Ok((start, out))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

fn history_file() -> Option<PathBuf> {
    // (An empty HOME is none: the file would land in the current folder.)
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".vitrine_history"))
}

/// The ids a `tag define … @FILE` names: one per line, white space at
/// either end trimmed, blank lines skipped.
fn ids_in_file(path: &Path) -> anyhow::Result<Vec<String>> {
    // The API takes 16 MiB of ids: a file much larger is a mistake.
    const MAX_BYTES: u64 = 64 << 20;
    let len = std::fs::metadata(path)
        .with_context(|| {
            format!(
                "cannot read {} (an id starting with @ goes in quotes)",
                path.display()
            )
        })?
        .len();
    if len > MAX_BYTES {
        bail!(
            "{} is {len} bytes; a list of ids may be 64 MiB at most",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ids: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        bail!("{} lists no ids", path.display());
    }
    Ok(ids)
}

/// As a piped REPL says a command's error: a script reading JSON gets a
/// failed open or command as JSON too (and the exit status, and stderr, say
/// it failed).
fn error_as_json(json: bool, e: &anyhow::Error) {
    if json {
        println!("{}", json_error(e));
    }
}

/// A query's error as the REPL prints it (the line, a caret under the
/// column), keeping the error for `--json`.
#[derive(Debug)]
struct Positioned {
    rendered: String,
    error: vitrine::QueryError,
}

impl Positioned {
    fn new(error: vitrine::QueryError, line: &str) -> Positioned {
        Positioned {
            rendered: error.render(line),
            error,
        }
    }
}

impl std::fmt::Display for Positioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl std::error::Error for Positioned {}

/// An error as a JSON line: `{"error": text}`, and for a query's error its
/// `kind`, `column` (0-based, in characters), `message` and `hint`, so a
/// client can point at the mistake without reading the text.
fn json_error(e: &anyhow::Error) -> String {
    let mut v = serde_json::json!({"error": crate::error_message(e)});
    let query = e
        .chain()
        .find_map(|c| match c.downcast_ref::<ConceptError>() {
            Some(ConceptError::Query(q)) => Some(q),
            _ => c.downcast_ref::<Positioned>().map(|p| &p.error),
        });
    if let Some(q) = query {
        v["kind"] = serde_json::json!(q.kind);
        v["column"] = serde_json::json!(q.column);
        v["message"] = serde_json::json!(q.message);
        v["hint"] = serde_json::json!(q.hint);
    } else if let Some(kind) = error_kind(e) {
        v["kind"] = serde_json::json!(kind);
    }
    crate::json_text(&v)
}

/// A user without a profile, typed as a query's `profile` clause reports
/// one (JSON `kind` `UnknownProfile`).
fn unknown_profile(user: &str) -> ConceptError {
    ConceptError::UnknownProfile {
        user: user.to_string(),
        suggestion: None,
    }
}

/// The library's name for an error that is not a query's (`UnknownProfile`,
/// `NotFound`, `Locked`…), for a client to branch on: the variant of the
/// innermost typed error, through the wrappers that carry one (`Db`…).
fn error_kind(e: &anyhow::Error) -> Option<String> {
    let debug = e.chain().find_map(|c| {
        None.or_else(|| c.downcast_ref::<ConceptError>().map(|x| format!("{x:?}")))
            .or_else(|| c.downcast_ref::<vitrine::Error>().map(|x| format!("{x:?}")))
            .or_else(|| {
                c.downcast_ref::<vitrine::OutfitError>()
                    .map(|x| format!("{x:?}"))
            })
            .or_else(|| {
                c.downcast_ref::<vitrine::IngestError>()
                    .map(|x| format!("{x:?}"))
            })
    })?;
    let mut rest = debug.as_str();
    loop {
        let name: &str = &rest[..rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len())];
        let inner = rest[name.len()..].strip_prefix('(');
        match inner {
            Some(inner)
                if ["Db", "Ingest", "Storage", "Index", "Image", "Model"].contains(&name) =>
            {
                rest = inner
            }
            _ => return (!name.is_empty()).then(|| name.to_string()),
        }
    }
}

/// Runs `vitrine repl`.
pub fn run(args: ReplArgs) -> anyhow::Result<()> {
    let mut session =
        Session::open(&args.db, args.json).inspect_err(|e| error_as_json(args.json, e))?;
    use std::io::IsTerminal;
    // A piped script is read line by line, not through the line editor
    // (which, under TERM=dumb, would echo its prompt onto stdout, and would
    // apply control characters as edits).
    let piped = !std::io::stdin().is_terminal();
    let config = Config::builder()
        // Edited on the terminal itself: with stdout redirected to a file,
        // the prompt and the echo stay out of it (not under TERM=dumb,
        // where the line editor writes its prompt to stdout).
        .behavior(if piped {
            rustyline::Behavior::Stdio
        } else {
            rustyline::Behavior::PreferTerm
        })
        .history_ignore_space(true)
        .auto_add_history(true)
        .completion_type(CompletionType::List)
        .build();
    let mut rl: Editor<ReplHelper, rustyline::history::DefaultHistory> =
        Editor::with_config(config)?;
    rl.set_helper(Some(ReplHelper {
        words: session.words(),
    }));
    let history = history_file();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    // The banner is for a person: a piped script's output stays what its
    // commands print (JSON lines with --json).
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        println!(
            "vitrine {} — {} products in {}. Tab completes commands and concepts; help lists commands.",
            env!("CARGO_PKG_VERSION"),
            session.db.len(),
            args.db.display()
        );
    }
    let mut stdout = std::io::stdout();
    let mut failed = 0usize;
    let mut bad_lines = 0usize;
    if !piped {
        interrupts::install();
    }
    // Only when piped: the line editor takes stdin's lock itself (under
    // TERM=dumb), and a lock held here would deadlock it.
    let mut script = piped.then(|| std::io::BufRead::split(std::io::stdin().lock(), b'\n'));
    let report = |failed: &mut usize, e: &anyhow::Error, json: bool| {
        *failed += 1;
        if json {
            println!("{}", json_error(e));
        } else {
            println!("error: {}", crate::terminal_safe(&crate::error_message(e)));
        }
    };
    loop {
        let line = if let Some(script) = script.as_mut() {
            match script.next() {
                None => break,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(bytes)) => match String::from_utf8(bytes) {
                    Ok(mut line) => {
                        if line.ends_with('\r') {
                            line.pop();
                        }
                        // A script saved as "UTF-8 with BOM".
                        if let Some(rest) = line.strip_prefix('\u{feff}') {
                            line = rest.to_string();
                        }
                        line
                    }
                    // One line that is not UTF-8 fails; the script goes on.
                    Err(_) => {
                        bad_lines += 1;
                        if bad_lines > 1000 {
                            bail!("the input is not UTF-8 text");
                        }
                        let e = anyhow::anyhow!("a line is not UTF-8 text; skipped");
                        report(&mut failed, &e, session.json);
                        continue;
                    }
                },
            }
        } else {
            match rl.readline("vitrine> ") {
                Ok(line) => {
                    // Saved as it is typed: a Ctrl-C during a slow command
                    // (outside the line editor) ends the process.
                    if let Some(h) = &history {
                        let _ = rl.append_history(h);
                    }
                    line
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                // A byte that is not UTF-8 (a Latin-1 terminal): that
                // line fails, the session goes on.
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let e = anyhow::anyhow!("the line is not UTF-8 text; skipped");
                    report(&mut failed, &e, session.json);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        bad_lines = 0;
        // A paste of several lines arrives as one: each is a command, as
        // in a script (not words of the first).
        let mut quit = false;
        let lines: Vec<&str> = line.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_end_matches('\r');
            // A carriage return inside a line (a script of old Mac line
            // ends) would run the lines after it as words of the first
            // (`product delete A\rproduct get B` deleted B); a line of
            // megabytes is split into words before any command reads it.
            let done = if line.contains('\r') {
                Err(anyhow::anyhow!(
                    "the line holds a carriage return inside it: lines end with LF or CRLF; skipped"
                ))
            } else if line.len() > MAX_LINE_BYTES {
                Err(anyhow::anyhow!(
                    "the line is {} bytes long, more than {MAX_LINE_BYTES}; skipped",
                    line.len()
                ))
            } else {
                interrupts::running(true);
                let done = session.execute(line, &mut stdout);
                interrupts::running(false);
                done
            };
            match done {
                Ok(true) => {}
                Ok(false) => {
                    quit = true;
                    break;
                }
                Err(e) => report(&mut failed, &e, session.json),
            }
            // A Ctrl-C stops a pasted block after the command it came in.
            let left = lines.len() - i - 1;
            if interrupts::seen() && left > 0 {
                let e =
                    anyhow::anyhow!("interrupted: the other {left} pasted line(s) were not run");
                report(&mut failed, &e, session.json);
                break;
            }
        }
        if quit {
            break;
        }
        // Tags defined in the session become completable.
        if let Some(h) = rl.helper_mut() {
            h.words = session.words();
        }
    }
    // A script piped in fails as a whole when a command failed; a person
    // at the terminal saw each error already.
    if failed > 0 && !std::io::stdin().is_terminal() {
        bail!("{failed} command(s) failed");
    }
    Ok(())
}

/// A user tag as one JSON object (`tag list`, `define`, `weight`).
fn tag_json(t: &vitrine::UserTag) -> serde_json::Value {
    serde_json::json!({"tag": format!("user.{}", t.name), "weight": t.weight,
        "method": format!("{:?}", t.method), "positives": t.positives, "negatives": t.negatives})
}

/// Runs `vitrine query`: one command, then exit (1 on error).
pub fn query(mut args: QueryArgs) -> anyhow::Result<()> {
    // The query swallows what follows it; `--json` and `--db DB` after it
    // still mean themselves.
    loop {
        match args.query.as_slice() {
            [_, .., last] if last == "--json" => {
                args.json = true;
                args.query.pop();
            }
            [_, .., flag, db] if flag == "--db" && args.db.is_none() => {
                args.db = Some(PathBuf::from(db));
                args.query.truncate(args.query.len() - 2);
            }
            [_, .., last] if last.starts_with("--db=") && args.db.is_none() => {
                args.db = Some(PathBuf::from(&last["--db=".len()..]));
                args.query.pop();
            }
            _ => break,
        }
    }
    // Before the command word, an empty argument is nothing (after it, an
    // argument: `product get "" x`).
    while args.query.first().is_some_and(|a| a.is_empty()) {
        args.query.remove(0);
    }
    let json = args.json;
    let db = crate::required_db(args.db.take(), "query");
    let mut session = Session::open(&db, json).inspect_err(|e| error_as_json(json, e))?;
    let line = args.query.join(" ");
    let mut words = line.split_whitespace();
    let (first, second) = (words.next(), words.next());
    let is = |w: Option<&str>, names: &[&str]| {
        w.is_some_and(|w| names.iter().any(|n| w.eq_ignore_ascii_case(n)))
    };
    let commands: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    // A query may open with its profile clause (`profile anna +colour.red`).
    let profile_query = is(first, &["profile"])
        && second.is_some()
        && !is(second, &["show", "list", "set", "reset", "delete"]);
    let known = is(first, &commands) && !profile_query && !is(first, &["find"]);
    let command_word = args
        .query
        .first()
        .is_some_and(|a| !a.contains(char::is_whitespace));
    let line = if known && args.query.len() > 1 && command_word {
        // A command's arguments the shell kept whole (`product get "look
        // 1"`) stay whole. (A query is text of its own, quoted as written,
        // and so is a command passed as one argument.)
        // Commands of ids and names take plain arguments: a quote in one
        // is a character of its value (`size=32"`, a product id `12"`);
        // so do similar's, up to its where clause (query text, where `"`
        // delimits strings).
        let plain = is(first, &["product", "outfit", "feedback", "tag", "profile"]);
        let similar = is(first, &["similar"]);
        let mut in_clause = false;
        let mut words = Vec::with_capacity(args.query.len());
        for a in &args.query {
            // (Not a piece of the line: `similar 10029 "5 where in_stock"`.)
            let piece = where_at(&format!("x {a}")).is_some();
            in_clause |= similar && (piece || a.eq_ignore_ascii_case("where"));
            words.push(if plain || (similar && !in_clause) {
                let a = a.replace('\\', "\\\\").replace('"', "\\\"");
                // (An empty argument is one too: `product delete "" x`.)
                if a.is_empty() || a.chars().any(char::is_whitespace) {
                    format!("\"{a}\"")
                } else {
                    a
                }
            } else if (a.is_empty() || a.chars().any(char::is_whitespace))
                && !a.contains('"')
                && !piece
            {
                format!("\"{a}\"")
            } else {
                a.clone()
            });
        }
        words.join(" ")
    } else {
        let find = if known || is(first, &["find"]) {
            ""
        } else {
            "find "
        };
        let plain = format!("{find}{line}");
        // A query given as several words, among them a value the shell
        // took the quotes off (`where category = "Casual Shoes"`), is
        // quoted again; only where the words as given do not parse and the
        // quoted ones do, so that a line that parses keeps its meaning.
        let parses = |text: &str| {
            session
                .db
                .vocabulary()
                .is_ok_and(|v| vitrine::ConceptQuery::parse(text, &v).is_ok())
        };
        let quoted = format!("{find}{}", requote_values(&args.query));
        // A first word that is no command, clause nor concept (`simlar`)
        // is most likely a command mistyped: said as the REPL says it.
        // (Only a word of 5 letters or more, a letter or two from a
        // command as long: `shoes` or `top` is a product word, not `show`
        // or `tag` mistyped.)
        let mistyped = first.is_some_and(|w| {
            w.chars().all(|c| c.is_alphanumeric() || c == '_')
                && w.chars().count() >= 5
                && !QUERY_CLAUSES.iter().any(|k| w.eq_ignore_ascii_case(k))
                && commands
                    .iter()
                    .any(|c| c.len() >= 5 && edit_distance(&w.to_lowercase(), c) <= 2)
        });
        if !known && args.query.len() > 1 && quoted != plain && !parses(&plain) && parses(&quoted) {
            quoted
        } else if !find.is_empty() && mistyped && !parses(&plain) {
            line
        } else {
            plain
        }
    };
    session
        .execute(&line, &mut std::io::stdout())
        .inspect_err(|e| error_as_json(json, e))
        .map(drop)
}

/// Query words joined with spaces, those a value was unquoted from quoted
/// again: a word with a space (and no quote) that follows a word ending in
/// `=`, `<`, `>`, `(` or `,`, or that opens with `(` or closes with `,` or
/// `)` (a list's value, `("Casual Shoes",`), the brackets and commas left
/// outside the quotes.
fn requote_values(words: &[String]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let core = w
            .trim_start_matches('(')
            .trim_end_matches([',', ')'])
            .trim();
        let after_operator = i > 0 && words[i - 1].trim_end().ends_with(['=', '<', '>', '(', ',']);
        let in_list = core.len() != w.trim().len();
        if core.contains(char::is_whitespace)
            && !w.contains('"')
            && (after_operator || in_list)
            && !holds_query_text(core)
        {
            let start = w.find(core).unwrap_or(0);
            let end = start + core.len();
            out.push(format!("{}\"{core}\"{}", &w[..start], &w[end..]));
        } else {
            out.push(w.clone());
        }
    }
    out.join(" ")
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The longest command line the REPL reads (a query is at most 64 KiB).
const MAX_LINE_BYTES: usize = 1 << 20;

/// The words that open a query's clauses.
const QUERY_CLAUSES: &[&str] = &[
    "find",
    "like",
    "where",
    "limit",
    "offset",
    "min_score",
    "diverse",
    "profile",
];

/// Whether a value the shell unquoted holds query text after all (`Casual
/// Shoes limit 4`, a quote closed too late): quoted again, it would be a
/// value that matches nothing, where the error shows the misplaced quote.
fn holds_query_text(value: &str) -> bool {
    value.contains(['=', '<', '>', '(', ')', '^'])
        || value.split_whitespace().any(|t| {
            QUERY_CLAUSES
                .iter()
                .chain(&["in_stock", "not"])
                .any(|k| t.eq_ignore_ascii_case(k))
                || t.starts_with(['+', '-'])
                || t.split_once('.').is_some_and(|(g, c)| {
                    g.chars().any(char::is_alphabetic) && c.chars().any(char::is_alphabetic)
                })
        })
}

/// An argument of a command line, and whether any of it was in quotes: a
/// quoted word is a value, never a keyword (`tag define t a "not"` names
/// the product `not`).
struct Word {
    text: String,
    quoted: bool,
}

/// Splits a command line's arguments at whitespace; double quotes keep an
/// argument with spaces together (`outfit show "look 1"`), `\"` is a
/// quote in a value (`size=32\"`) and `\\` a backslash (any other
/// backslash is kept as it is). An unclosed quote is an error, not a value
/// that runs on over the next arguments.
fn split_words(line: &str) -> Result<Vec<Word>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started, mut any_quote) = (false, false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('"' | '\\')) => {
                cur.extend(chars.next());
                started = true;
            }
            '"' => {
                quoted = !quoted;
                started = true;
                any_quote = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    args.push(Word {
                        text: std::mem::take(&mut cur),
                        quoted: any_quote,
                    });
                    started = false;
                    any_quote = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err(
            "a quote is not closed (write \\\" for a quote inside a value: size=32\\\")".into(),
        );
    }
    if started {
        args.push(Word {
            text: cur,
            quoted: any_quote,
        });
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    fn split_args(line: &str) -> Result<Vec<String>, String> {
        Ok(super::split_words(line)?
            .into_iter()
            .map(|w| w.text)
            .collect())
    }

    #[test]
    fn completion_starts_after_a_wide_separator() {
        use rustyline::completion::Completer;
        let helper = super::ReplHelper {
            words: vec!["colour.red".into(), "find".into()],
        };
        let history = rustyline::history::DefaultHistory::new();
        let ctx = rustyline::Context::new(&history);
        // A no-break space is two bytes.
        let line = "find\u{a0}colour.r";
        let (start, found) = helper.complete(line, line.len(), &ctx).unwrap();
        assert_eq!(&line[start..], "colour.r");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn where_is_found_as_a_word_outside_quotes() {
        assert_eq!(super::where_at("a1 3 where in_stock"), Some(5));
        assert_eq!(super::where_at("a1\tWHERE in_stock"), Some(3));
        assert_eq!(super::where_at("a1 where"), Some(3));
        assert_eq!(super::where_at(r#""x where y" 3"#), None);
        assert_eq!(super::where_at("a1 nowhere"), None);
        assert_eq!(super::where_at("where x"), None);
        // An escaped quote in an id opens nothing.
        assert_eq!(super::where_at(r#"12\" where in_stock"#), Some(5));
        assert_eq!(super::where_at(r#"a\\ "b where" c"#), None);
    }

    #[test]
    fn arguments_split_at_spaces_outside_quotes() {
        assert_eq!(
            split_args(r#"show "look 1"  x """#).unwrap(),
            ["show", "look 1", "x", ""]
        );
        assert_eq!(split_args("  a\tb ").unwrap(), ["a", "b"]);
        // A quote in a value, and one left open.
        assert_eq!(
            split_args(r#"set p size=32\" "a \"b\" c" C:\x "D:\\""#).unwrap(),
            ["set", "p", "size=32\"", "a \"b\" c", "C:\\x", "D:\\"]
        );
        assert!(split_args(r#"set p length=32" colour=blue"#).is_err());
    }
}

/// Ctrl-C while a command runs. The line editor handles it at the prompt;
/// during a command, the default would end the process there, without
/// closing the database (the next open then rebuilds its indexes). The
/// first Ctrl-C says the command runs to its end; a second ends the
/// session at once, as before. At a prompt read in cooked mode (TERM=dumb)
/// the terminal has already dropped the typed line: nothing more is done.
mod interrupts {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    static SEEN: AtomicUsize = AtomicUsize::new(0);
    static RUNNING: AtomicBool = AtomicBool::new(false);

    #[cfg(unix)]
    extern "C" fn on_interrupt(_: libc::c_int) {
        if !RUNNING.load(Ordering::SeqCst) {
            return;
        }
        if SEEN.fetch_add(1, Ordering::SeqCst) == 0 {
            let msg: &[u8] = b"\n(the command runs to its end, so that the database closes cleanly; Ctrl-C again ends the session now)\n";
            // SAFETY: write(2) is async-signal-safe; the buffer is static.
            unsafe { libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len()) };
        } else {
            // SAFETY: signal(2) and raise(3) are async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::raise(libc::SIGINT);
            }
        }
    }

    /// Installs the handler (the line editor puts it back after each line).
    pub fn install() {
        #[cfg(unix)]
        // SAFETY: the handler only touches atomics and async-signal-safe
        // calls.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }

    /// Around each command; a new command's first Ctrl-C only warns.
    pub fn running(yes: bool) {
        if yes {
            SEEN.store(0, Ordering::SeqCst);
        }
        RUNNING.store(yes, Ordering::SeqCst);
    }

    /// Whether a Ctrl-C came during the last command.
    pub fn seen() -> bool {
        SEEN.load(Ordering::SeqCst) > 0
    }
}
