//! `vitrine annotate`: category top-5 and tags of image files.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use vitrine::{annotate_with, Annotation, Model, ANNOTATE_TOP_K};

use crate::import::PrepArgs;

/// Arguments of `vitrine annotate`.
#[derive(Args)]
pub struct AnnotateArgs {
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per line:
    /// `{"file", "category": [{"label","p","why"}...], "tags": [{"tag","score","why"}...]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub prep: PrepArgs,
}

/// The JSON line of one annotated file.
pub fn json_line(file: &str, ann: &Annotation) -> serde_json::Value {
    serde_json::json!({
        "file": file,
        "category": ann.category.iter().map(|c| serde_json::json!({"label": c.label, "p": c.p, "why": c.why})).collect::<Vec<_>>(),
        "tags": ann.tags.iter().map(|t| serde_json::json!({"tag": t.tag, "score": t.score, "why": t.why})).collect::<Vec<_>>(),
    })
}

/// Prints an annotation for people.
pub fn print_text(file: &str, ann: &Annotation) {
    let _ = write_text(&mut std::io::stdout().lock(), file, ann);
}

/// Writes an annotation for people: categories, then one line per tag with
/// the group that produced it.
pub fn write_text(w: &mut dyn std::io::Write, file: &str, ann: &Annotation) -> std::io::Result<()> {
    writeln!(w, "{}", crate::field(file))?;
    let cats: Vec<String> = ann
        .category
        .iter()
        .map(|c| format!("{} {:.3}", c.label, c.p))
        .collect();
    writeln!(w, "  category: {}", cats.join(", "))?;
    if let Some(top) = ann.category.first() {
        writeln!(w, "            ({})", top.why)?;
    }
    if ann.tags.is_empty() {
        writeln!(w, "  tags:     (none)")?;
    }
    for (i, t) in ann.tags.iter().enumerate() {
        let head = if i == 0 { "  tags:    " } else { "           " };
        writeln!(w, "{head} {:<18} {:.2}  ({})", t.tag, t.score, t.why)?;
    }
    Ok(())
}

/// Runs `vitrine annotate`. Every file is tried; the command fails at the
/// end if any file failed (each failure is reported on stderr).
pub fn run(args: AnnotateArgs) -> anyhow::Result<()> {
    let prep = args.prep.config()?;
    let model = Model::bundled().context("cannot load the bundled model")?;
    let mut failed = 0usize;
    for path in &args.files {
        let name = path.display().to_string();
        let result = prep
            .get_limits()
            .read_file(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(annotate_with(&model, &prep, &bytes, ANNOTATE_TOP_K)?));
        // Output that could not be written (a full disk) fails the command,
        // not a file: every later one would fail the same way.
        let mut out = std::io::stdout().lock();
        match result {
            Ok(ann) if args.json => writeln!(out, "{}", crate::json_text(&json_line(&name, &ann)))
                .context("cannot write to standard output")?,
            Ok(ann) => {
                write_text(&mut out, &name, &ann).context("cannot write to standard output")?
            }
            Err(e) => {
                failed += 1;
                esay!(
                    "error: {}: {}",
                    crate::field(&name),
                    crate::error_message(&e)
                );
            }
        }
    }
    // All failed: the input is wrong (exit 1); some: exit 3, as an import.
    if failed == args.files.len() {
        bail!("{failed} of {} files failed", args.files.len());
    }
    if failed > 0 {
        return Err(
            crate::Partial(format!("{failed} of {} files failed", args.files.len())).into(),
        );
    }
    Ok(())
}
