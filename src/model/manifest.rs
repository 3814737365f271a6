//! `models/manifest.json`: the model's taxonomy, tag groups, thresholds and
//! concept table (written by `training/export.py`).
//!
//! Only the fields the engine uses are parsed; everything else (training
//! history, correlated tags, …) stays available as raw JSON through
//! [`Manifest::raw`].

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;

/// One group of tags (`colour`, `usage`, `pattern`, …): a contiguous range of
/// the model's `tag_logits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagGroup {
    /// Group name, e.g. `"colour"`.
    pub name: String,
    /// The group's indexes into the tag vector.
    pub range: Range<usize>,
    /// Whether the tags are mutually exclusive (annotation keeps at most one).
    pub exclusive: bool,
    /// Tag names without the group prefix, e.g. `"red"`; the full tag name is
    /// `"{group}.{tag}"`.
    pub tags: Vec<String>,
}

/// The parsed manifest of a model.
#[derive(Clone, Debug)]
pub struct Manifest {
    name: String,
    onnx: String,
    input_name: String,
    input_shape: [usize; 3],
    categories: Vec<String>,
    groups: Vec<TagGroup>,
    tag_names: Vec<String>,
    thresholds: Vec<f32>,
    concept_names: Vec<String>,
    concept_dim: usize,
    concept_vectors: Vec<Vec<f32>>,
    onnx_sha256: Option<String>,
    raw: serde_json::Value,
}

#[derive(Deserialize)]
struct RawManifest {
    name: String,
    onnx: String,
    input: RawInput,
    taxonomy: RawTaxonomy,
    tag_names: Vec<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    tag_thresholds: BTreeMap<String, RawThreshold>,
    concept_table: RawConcepts,
    /// SHA-256 of the ONNX file, hex (checked on load when present).
    #[serde(default)]
    onnx_sha256: Option<String>,
}

/// A JSON object as a map, refusing a key given twice (serde keeps the
/// last one silently, so a hand edit could hide behind an earlier entry).
fn unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, V>()? {
                if map.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("'{k}' is given twice")));
                }
                map.insert(k, v);
            }
            Ok(map)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

/// Whether the query lexer reads `name` as a number (`12`, `1e5`), so that
/// `name.tag` could not name a group.
fn reads_as_number(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match name.split_once('e') {
        Some((mantissa, exponent)) => digits(mantissa) && digits(exponent),
        None => digits(name),
    }
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawTaxonomy {
    categories: Vec<String>,
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    start: usize,
    end: usize,
    exclusive: bool,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct RawThreshold {
    threshold: f32,
}

#[derive(Deserialize)]
struct RawConcepts {
    names: Vec<String>,
    dim: usize,
    vectors: Vec<Vec<f32>>,
}

impl Manifest {
    /// Parses and checks a manifest. The error is a human-readable reason.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        // Editors on Windows save JSON with a byte-order mark; serde does
        // not skip it.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let raw: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        // From the bytes, not the value: an error keeps its line and column.
        let m: RawManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        check_preparation(&raw)?;
        if m.input.shape.len() != 4 {
            return Err(format!(
                "input.shape has {} axes; expected 4 (NCHW)",
                m.input.shape.len()
            ));
        }
        let mut chw = [0usize; 3];
        for (i, v) in m.input.shape[1..].iter().enumerate() {
            chw[i] = v
                .as_u64()
                .ok_or_else(|| format!("input.shape[{}] is {v}, not a number", i + 1))?
                as usize;
        }
        let mut next = 0;
        let mut groups = Vec::with_capacity(m.taxonomy.groups.len());
        for g in m.taxonomy.groups {
            if g.start != next || g.end < g.start || g.end - g.start != g.tags.len() {
                return Err(format!(
                    "tag group '{}' has range {}..{} with {} tags; groups must be contiguous from 0",
                    g.name,
                    g.start,
                    g.end,
                    g.tags.len()
                ));
            }
            next = g.end;
            groups.push(TagGroup {
                name: g.name,
                range: g.start..g.end,
                exclusive: g.exclusive,
                tags: g.tags,
            });
        }
        if next != m.tag_names.len() {
            return Err(format!(
                "tag groups cover {next} tags but tag_names lists {}",
                m.tag_names.len()
            ));
        }
        // Queries name concepts `group.slug`: a name two labels share, or a
        // group named like the built-in blocks, would be unreachable or
        // mislabelled.
        let mut seen_groups = std::collections::HashSet::new();
        for g in &groups {
            if crate::concept_slug(&g.name) != g.name
                || ["visual", "category", crate::concepts::USER_GROUP].contains(&g.name.as_str())
                || crate::concepts::QUERY_KEYWORDS.contains(&g.name.as_str())
                || reads_as_number(&g.name)
            {
                return Err(format!(
                    "tag group name '{}' is reserved, a query keyword, a number, or not a \
                     lower-case word (a-z, 0-9, _)",
                    g.name
                ));
            }
            if g.tags.is_empty() {
                return Err(format!("tag group '{}' has no tags", g.name));
            }
            if !seen_groups.insert(g.name.as_str()) {
                return Err(format!("tag group '{}' is listed twice", g.name));
            }
            unique_slugs(&g.tags, &format!("tag group '{}'", g.name))?;
            // Stored tags are joined by commas, and named group.tag.
            if let Some(t) = g.tags.iter().find(|t| t.contains([',', '.'])) {
                return Err(format!(
                    "tag '{t}' of group '{}' contains ',' or '.'",
                    g.name
                ));
            }
        }
        if let Some(t) = m.tag_thresholds.keys().find(|t| !m.tag_names.contains(t)) {
            return Err(format!("tag_thresholds names '{t}', which is no tag"));
        }
        unique_slugs(&m.taxonomy.categories, "taxonomy.categories")?;
        if let Some((t, th)) = m
            .tag_thresholds
            .iter()
            .find(|(_, t)| !(0.0..=1.0).contains(&t.threshold))
        {
            return Err(format!(
                "tag_thresholds['{t}'] is {}; a threshold is a probability, 0 to 1",
                th.threshold
            ));
        }
        for g in &groups {
            for (i, t) in g.range.clone().zip(&g.tags) {
                let full = format!("{}.{}", g.name, t);
                if m.tag_names[i] != full {
                    return Err(format!(
                        "tag_names[{i}] is '{}' but group '{}' says '{full}'",
                        m.tag_names[i], g.name
                    ));
                }
            }
        }
        let thresholds = m
            .tag_names
            .iter()
            .map(|t| m.tag_thresholds.get(t).map(|t| t.threshold).unwrap_or(0.5))
            .collect();
        if m.concept_table.names.len() != m.concept_table.vectors.len() {
            return Err(format!(
                "concept_table has {} names but {} vectors",
                m.concept_table.names.len(),
                m.concept_table.vectors.len()
            ));
        }
        if let Some(v) = m
            .concept_table
            .vectors
            .iter()
            .find(|v| v.len() != m.concept_table.dim)
        {
            return Err(format!(
                "a concept_table vector has {} values; dim is {}",
                v.len(),
                m.concept_table.dim
            ));
        }
        if m.taxonomy.categories.is_empty() {
            return Err("taxonomy.categories is empty".into());
        }
        // A file beside the manifest (or below it): not one named anywhere
        // on the machine by whoever wrote the manifest.
        let onnx = std::path::Path::new(&m.onnx);
        use std::path::Component::{CurDir, Normal};
        if !onnx.components().any(|c| matches!(c, Normal(_)))
            || !onnx.components().all(|c| matches!(c, Normal(_) | CurDir))
        {
            return Err(format!(
                "onnx '{}' must name a file in the manifest's folder (no absolute path, no '..')",
                m.onnx.escape_debug()
            ));
        }
        if let Some(h) = &m.onnx_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "onnx_sha256 '{}' is not a SHA-256 (64 hexadecimal digits)",
                    h.escape_debug()
                ));
            }
        }
        Ok(Manifest {
            name: m.name,
            onnx: m.onnx,
            input_name: m.input.name,
            input_shape: chw,
            categories: m.taxonomy.categories,
            groups,
            tag_names: m.tag_names,
            thresholds,
            concept_names: m.concept_table.names,
            concept_dim: m.concept_table.dim,
            concept_vectors: m.concept_table.vectors,
            onnx_sha256: m.onnx_sha256,
            raw,
        })
    }

    /// The SHA-256 (hex) the ONNX file must have, when the manifest gives one.
    pub fn onnx_sha256(&self) -> Option<&str> {
        self.onnx_sha256.as_deref()
    }

    /// The model's name, e.g. `"vitrine-fashion-v2"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// File name of the ONNX model, relative to the manifest's folder (and
    /// inside it).
    pub fn onnx_file(&self) -> &str {
        &self.onnx
    }

    /// Name of the model's input.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Input shape without the batch axis: `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// Category labels, in the order of `category_logits`.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// Tag groups, in the order of `tag_logits`.
    pub fn groups(&self) -> &[TagGroup] {
        &self.groups
    }

    /// Full tag names (`"colour.red"`), in the order of `tag_logits`.
    pub fn tag_names(&self) -> &[String] {
        &self.tag_names
    }

    /// Per-tag probability thresholds (0.5 where the manifest has none).
    pub fn tag_thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    /// Names of the concept-table rows (`"category.X"`, then every tag).
    pub fn concept_names(&self) -> &[String] {
        &self.concept_names
    }

    /// Dimension of the concept projection and of the concept-table rows.
    pub fn concept_dim(&self) -> usize {
        self.concept_dim
    }

    /// Concept-table rows, L2-normalised, in the order of
    /// [`concept_names`](Self::concept_names).
    pub fn concept_vectors(&self) -> &[Vec<f32>] {
        &self.concept_vectors
    }

    /// The whole manifest as JSON.
    pub fn raw(&self) -> &serde_json::Value {
        &self.raw
    }
}

/// Fails when two of `labels` are one concept name (`Navy Blue` and
/// `navy-blue` are both `navy_blue`), or one has none.
fn unique_slugs(labels: &[String], what: &str) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for l in labels {
        let slug = crate::concept_slug(l);
        if slug.is_empty() {
            return Err(format!("{what}: '{l}' has no letters or digits"));
        }
        if let Some(other) = seen.insert(slug.clone(), l) {
            return Err(format!(
                "{what}: '{other}' and '{l}' are both the concept '{slug}'"
            ));
        }
    }
    Ok(())
}

/// The manifest's `normalisation` and `prep` constants, where it states
/// them, must be the engine's own: the model would otherwise be fed inputs
/// prepared unlike its training ones, silently.
fn check_preparation(raw: &serde_json::Value) -> Result<(), String> {
    let (mean, std) = crate::vision::NORMALISATION;
    let stated = [
        ("normalisation.mean", &raw["normalisation"]["mean"], mean),
        ("normalisation.std", &raw["normalisation"]["std"], std),
        ("normalization.mean", &raw["normalization"]["mean"], mean),
        ("normalization.std", &raw["normalization"]["std"], std),
        ("input.mean", &raw["input"]["mean"], mean),
        ("input.std", &raw["input"]["std"], std),
        ("prep.mean", &raw["prep"]["mean"], mean),
        ("prep.std", &raw["prep"]["std"], std),
    ];
    for (name, v, want) in stated {
        if v.is_null() {
            continue;
        }
        let got: Option<Vec<f64>> = v
            .as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_f64).collect());
        let same = got.as_ref().is_some_and(|g| {
            g.len() == 3
                && g.iter()
                    .zip(want)
                    .all(|(g, w)| (*g - f64::from(w)).abs() < 1e-6)
        });
        if !same {
            return Err(format!(
                "{name} is {v}; this engine prepares images with {want:?}"
            ));
        }
    }
    // The text facts too: a model trained on BGR, or on another type,
    // would read this engine's tensors wrongly.
    for (name, v, want) in [
        ("input.channel_order", &raw["input"]["channel_order"], "RGB"),
        ("prep.channel_order", &raw["prep"]["channel_order"], "RGB"),
        ("input.dtype", &raw["input"]["dtype"], "float32"),
        ("prep.dtype", &raw["prep"]["dtype"], "float32"),
    ] {
        if !v.is_null() && v.as_str() != Some(want) {
            return Err(format!("{name} is {v}; this engine feeds the model {want}"));
        }
    }
    for (key, want) in crate::vision::prep_constants() {
        let v = &raw["prep"][key];
        if v.is_null() {
            continue;
        }
        if v.as_f64().is_none_or(|g| (g - want).abs() > 1e-9) {
            return Err(format!(
                "prep.{key} is {v}; this engine prepares images with {want}"
            ));
        }
    }
    Ok(())
}
