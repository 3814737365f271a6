//! Business filters on product attributes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Bound, RangeBounds};

use unicode_normalization::UnicodeNormalization;

use crate::db::{escape_hidden, shows};
use crate::Attributes;

/// Restricts a search to products whose attributes match every condition set.
///
/// An empty filter (the [`Default`]) allows everything. Conditions combine
/// with AND; set conditions (`category_in`, `brand_in`) are ORs within the set.
/// Setting a condition again narrows it: two category sets keep their
/// intersection, two price ranges their overlap, and `stock(true)` with
/// `stock(false)` allows nothing.
///
/// ```
/// use vitrine::Filter;
/// let f = Filter::new()
///     .in_stock()
///     .category_in(["shirts", "tops"])
///     .brand_in(["A", "B"])
///     .price_range(..60.0)
///     .exclude("sku-1")
///     .attr_eq("colour", "blue");
/// assert!(!f.is_empty());
/// assert!(Filter::default().is_empty());
///
/// let shirts_and_jeans = Filter::new().category_in(["shirts"]).category_in(["jeans"]);
/// let p = vitrine::Attributes::new().category("jeans");
/// assert!(!shirts_and_jeans.matches("sku-2", &p));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    in_stock: Option<bool>,
    categories: Option<BTreeSet<String>>,
    brands: Option<BTreeSet<String>>,
    price: Option<(Bound<f64>, Bound<f64>)>,
    exclude: BTreeSet<String>,
    /// Sets, not lists: a condition given twice is checked once (a query
    /// text repeating one 10,000 times would check each product 10,000
    /// times under the catalog's lock).
    equals: BTreeSet<(String, String)>,
    /// Concepts (`colour.red`) the model must have tagged (`true`) or not.
    concepts: BTreeMap<String, bool>,
    /// Two conditions disagree (stock, or a concept both wanted and not):
    /// nothing matches.
    contradiction: bool,
}

impl Filter {
    /// A filter that allows everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only products that are in stock.
    pub fn in_stock(self) -> Self {
        self.stock(true)
    }

    /// Only products whose in-stock flag equals `value`.
    pub fn stock(mut self, value: bool) -> Self {
        self.contradiction |= self.in_stock.is_some_and(|v| v != value);
        self.in_stock = Some(value);
        self
    }

    /// Only products whose category is one of `categories`.
    pub fn category_in<I, S>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.categories = Some(narrow(self.categories.take(), categories));
        self
    }

    /// Only products whose brand is one of `brands`.
    pub fn brand_in<I, S>(mut self, brands: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.brands = Some(narrow(self.brands.take(), brands));
        self
    }

    /// Only products with a price in `range` (products without a price never
    /// match, and a NaN bound matches nothing).
    pub fn price_range(mut self, range: impl RangeBounds<f64>) -> Self {
        let (lo, hi) = (range.start_bound().cloned(), range.end_bound().cloned());
        let nan =
            |b: &Bound<f64>| matches!(b, Bound::Included(x) | Bound::Excluded(x) if x.is_nan());
        // (Combined with another range a NaN bound would be dropped.)
        self.contradiction |= nan(&lo) || nan(&hi);
        self.price = Some(match self.price {
            Some((l, h)) => (tighter(l, lo, true), tighter(h, hi, false)),
            None => (lo, hi),
        });
        self
    }

    /// Never return this product id.
    pub fn exclude(mut self, id: impl Into<String>) -> Self {
        self.exclude.insert(id.into());
        self
    }

    /// Only products whose attribute `key` equals `value`. `key` may be one of
    /// `brand`, `category` (in any case) or a free key-value; `price` and
    /// `in_stock` have their own conditions ([`Filter::price_range`],
    /// [`Filter::stock`]), and a search given them here (in any case) is
    /// [`Error::InvalidFilter`](crate::Error::InvalidFilter).
    pub fn attr_eq(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.equals.insert((key.into(), value.into()));
        self
    }

    /// Only products the model tagged with `concept` at import: a tag
    /// (`colour.red`, `pattern.striped`) above its calibrated threshold, as
    /// [`crate::Db::annotate`] lists them, or the model's category
    /// (`category.tshirts`). Products stored without model outputs carry
    /// none. Names are compared as [`crate::concept_key`] writes them.
    ///
    /// A search of a database made for a model checks the names against
    /// its concepts: an unknown one, a user tag (those only rank), or two
    /// concepts of an exclusive group both wanted is
    /// [`Error::InvalidFilter`](crate::Error::InvalidFilter), not a filter
    /// that quietly matches nothing (or, negated, everything).
    ///
    /// ```
    /// use vitrine::{Attributes, Filter};
    /// let p = Attributes::new().set("vitrine.tags", "colour.red,pattern.striped");
    /// assert!(Filter::new().tagged("pattern.striped").matches("x", &p));
    /// assert!(!Filter::new().not_tagged("Colour.Red").matches("x", &p));
    /// ```
    pub fn tagged(self, concept: impl AsRef<str>) -> Self {
        self.concept(concept.as_ref(), true)
    }

    /// Never products the model tagged with `concept` (see
    /// [`Filter::tagged`]): `not_tagged("colour.red")` is "not red ones".
    pub fn not_tagged(self, concept: impl AsRef<str>) -> Self {
        self.concept(concept.as_ref(), false)
    }

    fn concept(mut self, concept: &str, wanted: bool) -> Self {
        let old = self.concepts.insert(crate::concept_key(concept), wanted);
        self.contradiction |= old.is_some_and(|o| o != wanted);
        self
    }

    /// True when the filter allows every product.
    pub fn is_empty(&self) -> bool {
        !self.contradiction
            && self.in_stock.is_none()
            && self.categories.is_none()
            && self.brands.is_none()
            && self.price.is_none()
            && self.exclude.is_empty()
            && self.equals.is_empty()
            && self.concepts.is_empty()
    }

    /// [`Error::InvalidFilter`](crate::Error::InvalidFilter) for an
    /// [`Filter::attr_eq`] on a field that has its own condition (`price`,
    /// `in_stock`, in any case): no product holds those keys among its free
    /// attributes, so it would match nothing.
    pub(crate) fn check_fields(&self) -> crate::Result<()> {
        // (In any case: another case of their names cannot be stored among
        // the free attributes either. `Brand` reads the built-in brand.)
        let own = |key: &str| match key.to_ascii_lowercase().as_str() {
            "price" => Some("Filter::price_range"),
            "in_stock" => Some("Filter::stock"),
            _ => None,
        };
        match self.equals.iter().find_map(|(k, _)| Some((k, own(k)?))) {
            Some((key, instead)) => Err(crate::Error::InvalidFilter(format!(
                "'{key}' is not a free attribute and would match nothing: use {instead}"
            ))),
            None => Ok(()),
        }
    }

    /// The concept conditions, as keys: `true` for [`Filter::tagged`].
    pub(crate) fn concepts(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.concepts.iter().map(|(c, w)| (c.as_str(), *w))
    }

    /// The ids [`Filter::exclude`] leaves out.
    pub(crate) fn excluded(&self) -> &BTreeSet<String> {
        &self.exclude
    }

    /// This filter without its excluded ids (a search leaves those out by
    /// their documents, not by a walk of the catalog).
    pub(crate) fn without_excluded(&self) -> Filter {
        Filter {
            exclude: BTreeSet::new(),
            ..self.clone()
        }
    }

    /// The conditions the catalog keeps posting lists for, and whether
    /// they are the whole filter.
    pub(crate) fn indexed(&self) -> Indexed<'_> {
        Indexed {
            in_stock: self.in_stock,
            categories: self.categories.as_ref(),
            brands: self.brands.as_ref(),
            tagged: self
                .concepts
                .iter()
                .filter(|(_, wanted)| **wanted)
                .map(|(c, _)| c.as_str())
                .collect(),
            whole: !self.contradiction
                && self.price.is_none()
                && self.exclude.is_empty()
                && self.equals.is_empty()
                && self.concepts.is_empty(),
        }
    }

    /// Does the product pass?
    pub fn matches(&self, id: &str, attrs: &Attributes) -> bool {
        if self.contradiction {
            return false;
        }
        if let Some(want) = self.in_stock {
            if attrs.in_stock != want {
                return false;
            }
        }
        if let Some(set) = &self.categories {
            match &attrs.category {
                Some(c) if set.contains(c) => {}
                _ => return false,
            }
        }
        if let Some(set) = &self.brands {
            match &attrs.brand {
                Some(b) if set.contains(b) => {}
                _ => return false,
            }
        }
        if let Some(range) = &self.price {
            match attrs.price {
                Some(p) if range.contains(&p) => {}
                _ => return false,
            }
        }
        if self.exclude.contains(id) {
            return false;
        }
        self.equals
            .iter()
            .all(|(k, v)| attrs.get(k) == Some(v.as_str()))
            && self
                .concepts
                .iter()
                .all(|(c, wanted)| tagged(attrs, c) == *wanted)
    }
}

impl Filter {
    /// Each condition no product of `products` passes on its own, as a
    /// sentence naming the nearest name or value they hold ([`crate::Db::unmatched_conditions`]).
    pub(crate) fn unmatched(&self, products: &[&Attributes]) -> Vec<String> {
        let mut out = Vec::new();
        if self.contradiction {
            out.push(
                "the conditions contradict each other (in stock and not, or a concept both \
                 wanted and not)"
                    .to_string(),
            );
        }
        if let Some(want) = self.in_stock {
            if !products.iter().any(|a| a.in_stock == want) {
                out.push(format!(
                    "no product is {}",
                    if want { "in stock" } else { "out of stock" }
                ));
            }
        }
        for (field, wanted, held) in [
            (
                "category",
                &self.categories,
                products
                    .iter()
                    .filter_map(|a| a.category.as_deref())
                    .collect::<BTreeSet<_>>(),
            ),
            (
                "brand",
                &self.brands,
                products.iter().filter_map(|a| a.brand.as_deref()).collect(),
            ),
        ] {
            let Some(wanted) = wanted else { continue };
            if wanted.iter().any(|v| held.contains(v.as_str())) {
                continue;
            }
            out.push(match wanted.iter().next() {
                None => format!("no {field} is allowed: the {field} conditions share no value"),
                Some(_) if held.is_empty() => format!("no product has a {field}"),
                Some(v) => format!(
                    "no product has {field} = '{}'{}",
                    wanted
                        .iter()
                        .map(|v| escape_hidden(v))
                        .collect::<Vec<_>>()
                        .join("' or '"),
                    nearest_value(v, &held)
                ),
            });
        }
        if let Some(range) = &self.price {
            let prices: Vec<f64> = products.iter().filter_map(|a| a.price).collect();
            if !prices.iter().any(|p| range.contains(p)) {
                let (lo, hi) = prices
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                        (lo.min(*p), hi.max(*p))
                    });
                out.push(if prices.is_empty() {
                    "no product has a price".to_string()
                } else {
                    format!(
                        "no product's price is in the range asked (prices run from {lo} to {hi})"
                    )
                });
            }
        }
        // Each key's values and the keys held are read once: a query may
        // repeat one key in thousands of conditions.
        let held_keys: BTreeSet<&str> = if self.equals.is_empty() {
            BTreeSet::new()
        } else {
            products
                .iter()
                .flat_map(|a| a.extra.keys().map(String::as_str))
                .collect()
        };
        let mut values_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for (key, value) in &self.equals {
            let built_in =
                key.eq_ignore_ascii_case("brand") || key.eq_ignore_ascii_case("category");
            let values = values_of.entry(key.as_str()).or_insert_with(|| {
                if built_in || held_keys.contains(key.as_str()) {
                    products.iter().filter_map(|a| a.get(key)).collect()
                } else {
                    BTreeSet::new()
                }
            });
            if values.contains(value.as_str()) {
                continue;
            }
            // Past a few sentences, only counted: a hint costs a look
            // through the values held.
            if out.len() >= MAX_NAMED {
                out.push(String::new());
                continue;
            }
            if !values.is_empty() {
                out.push(format!(
                    "no product has {} = '{}'{}",
                    escape_hidden(key),
                    escape_hidden(value),
                    nearest_value(value, values)
                ));
                continue;
            }
            let keys: BTreeSet<&str> = held_keys
                .iter()
                .copied()
                .filter(|k| !k.starts_with("vitrine.") || key.starts_with("vitrine."))
                .collect();
            out.push(format!(
                "no product has an attribute '{}'{}",
                escape_hidden(key),
                nearest_key(key, &keys)
            ));
        }
        for (concept, wanted) in &self.concepts {
            let some = products.iter().any(|a| tagged(a, concept) == *wanted);
            if !some {
                out.push(if *wanted {
                    format!("the model tagged no product {concept}")
                } else {
                    format!("the model tagged every product {concept}")
                });
            }
        }
        if out.len() > MAX_NAMED {
            let more = out.len() - MAX_NAMED;
            out.truncate(MAX_NAMED);
            out.push(format!(
                "and {more} more condition(s) that no product passes"
            ));
        }
        out
    }
}

/// Past this many distinct values, [`nearest`] looks for another case only.
const MAX_TYPO_CANDIDATES: usize = 5_000;

/// Past this many bytes, a name gets no typo hint: the edit distance costs
/// its length times the values held.
const MAX_TYPO_LEN: usize = 256;

/// The sentences of [`Filter::unmatched`] past which the rest are counted.
const MAX_NAMED: usize = 10;

/// ": did you mean 'Red'?" for the held value nearest `value` (another
/// case, or a typo), or the values when they are few.
fn nearest_value(value: &str, held: &BTreeSet<&str>) -> String {
    if let Some(near) = nearest(value, held) {
        return did_you_mean(value, near);
    }
    if held.len() <= 8 {
        let list: Vec<String> = held
            .iter()
            .map(|v| format!("'{}'", escape_hidden(v)))
            .collect();
        return format!(" (the catalog holds {})", list.join(", "));
    }
    String::new()
}

/// The hint for an attribute key no product holds: a built-in field or a
/// query clause written as a condition, or the nearest key held.
fn nearest_key(key: &str, held: &BTreeSet<&str>) -> String {
    let folded: String = key
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    match folded.as_str() {
        "stock" | "instock" | "available" | "availability" => {
            return ": did you mean the built-in in_stock (`where in_stock`, `where not in_stock`)?"
                .to_string()
        }
        "limit" | "offset" | "minscore" | "diverse" | "profile" => {
            let clause = key.to_lowercase();
            let example = match folded.as_str() {
                "minscore" => "0.5",
                "diverse" => "0.3",
                "profile" => "anna",
                _ => "5",
            };
            return format!(
                ": `{clause}` is a clause of the query, written after the conditions without \
                 '=' (`{clause} {example}`)"
            );
        }
        _ => {}
    }
    match nearest(key, held) {
        Some(near) => did_you_mean(key, near),
        None => String::new(),
    }
}

/// ": did you mean 'Zara'?", saying why when the two read alike: a
/// hint that looks like what was typed would be no help.
fn did_you_mean(asked: &str, near: &str) -> String {
    let shown = escape_hidden(near);
    let why = if near.nfc().eq(asked.nfc()) {
        " (the same text in another Unicode form: accents written apart from their letters, \
         or not)"
    } else if shown != near {
        " (it holds characters that do not show, escaped here)"
    } else {
        ""
    };
    format!(": did you mean '{shown}'?{why}")
}

/// `text` as people read it, to compare names: composed, in lower case,
/// without the characters that do not show.
fn read_as(text: &str) -> String {
    text.nfc()
        .filter(|c| shows(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The held name equal to `name` but for case, Unicode form and hidden
/// characters, or else within a small edit distance of it.
fn nearest<'a>(name: &str, held: &BTreeSet<&'a str>) -> Option<&'a str> {
    if name.len() > MAX_TYPO_LEN {
        return None;
    }
    // Values much longer than the name are not read: one of 16 MiB would
    // cost as much as the whole answer.
    let held = || held.iter().copied().filter(|h| h.len() <= 4 * MAX_TYPO_LEN);
    let lower = read_as(name);
    if let Some(same) = held().find(|h| read_as(h) == lower) {
        return Some(same);
    }
    // Typos are looked for among names and short lists of values, not
    // among a million titles or codes (seconds for one empty answer).
    if held().count() > MAX_TYPO_CANDIDATES {
        return None;
    }
    let chars = lower.chars().count();
    let most = (chars / 4).clamp(1, 2);
    held()
        .map(|h| (read_as(h), h))
        .filter(|(r, _)| r.chars().count().abs_diff(chars) <= most)
        .map(|(r, h)| (crate::concepts::levenshtein(&r, &lower), h))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, h)| h)
}

/// A filter's stock, category and brand conditions ([`Filter::indexed`]).
pub(crate) struct Indexed<'a> {
    pub in_stock: Option<bool>,
    pub categories: Option<&'a BTreeSet<String>>,
    pub brands: Option<&'a BTreeSet<String>>,
    /// Concepts the model must have tagged (keys, as [`concept_postings`]
    /// files products under).
    pub tagged: Vec<&'a str>,
    /// Nothing else: the posting lists answer the filter alone.
    pub whole: bool,
}

/// The concept keys a product is filed under, one posting list each: those
/// [`tagged`] is true of (its category's, and its tags').
pub(crate) fn concept_postings(attrs: &Attributes) -> impl Iterator<Item = String> + '_ {
    let category = attrs
        .get(crate::ATTR_CATEGORY)
        .map(|c| format!("category.{}", crate::concept_slug(c)));
    let tags = attrs
        .get(crate::ATTR_TAGS)
        .into_iter()
        .flat_map(|tags| tags.split(','))
        .map(crate::concept_key)
        // (A category concept is the category attribute's, never a tag's.)
        .filter(|k| !k.starts_with("category."));
    category.into_iter().chain(tags)
}

/// Whether the model tagged the product with `concept` (a concept key).
fn tagged(attrs: &Attributes, concept: &str) -> bool {
    let is = |name: &str| {
        // Stored names are usually keys already: no allocation then. (A
        // key's concept part is its own slug: no `__`, no `_` at its ends,
        // no second dot.)
        let canonical = name.split_once('.').is_some_and(|(group, tag)| {
            let plain = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            };
            plain(group)
                && plain(tag)
                && !tag.starts_with('_')
                && !tag.ends_with('_')
                && !tag.contains("__")
        });
        if canonical {
            name == concept
        } else {
            crate::concept_key(name) == concept
        }
    };
    match concept.split_once('.') {
        Some(("category", label)) => attrs
            .get(crate::ATTR_CATEGORY)
            .is_some_and(|c| crate::concept_slug(c) == label),
        _ => attrs
            .get(crate::ATTR_TAGS)
            .is_some_and(|tags| tags.split(',').any(is)),
    }
}

/// A set condition given again: the values both allow.
fn narrow<I, S>(old: Option<BTreeSet<String>>, new: I) -> BTreeSet<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let new: BTreeSet<String> = new.into_iter().map(Into::into).collect();
    match old {
        Some(old) => old.intersection(&new).cloned().collect(),
        None => new,
    }
}

/// The stricter of two lower (`lower`) or upper bounds.
fn tighter(a: Bound<f64>, b: Bound<f64>, lower: bool) -> Bound<f64> {
    use Bound::{Excluded, Included, Unbounded};
    let value = |x: &Bound<f64>| match x {
        Included(v) | Excluded(v) => Some(*v),
        Unbounded => None,
    };
    match (value(&a), value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x == y => {
            if matches!(a, Excluded(_)) {
                a
            } else {
                b
            }
        }
        (Some(x), Some(y)) => {
            if (x > y) == lower {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each condition no product passes alone is named, with the nearest
    /// name or value held; conditions that pass alone are not.
    #[test]
    fn unmatched_conditions_name_the_nearest_held() {
        let a = Attributes::new()
            .category("Tshirts")
            .brand("Nike")
            .set("colour", "Red")
            .set("vitrine.tags", "colour.red");
        let b = Attributes::new()
            .category("Jeans")
            .price(20.0)
            .set("fabric", "denim");
        let products = [&a, &b];
        let why = |f: Filter| f.unmatched(&products);
        assert!(why(Filter::new()
            .attr_eq("colour", "Red")
            .category_in(["Jeans"]))
        .is_empty());
        assert_eq!(
            why(Filter::new().attr_eq("colour", "red")),
            ["no product has colour = 'red': did you mean 'Red'?"]
        );
        assert_eq!(
            why(Filter::new().attr_eq("color", "Red")),
            ["no product has an attribute 'color': did you mean 'colour'?"]
        );
        assert_eq!(
            why(Filter::new().category_in(["tshirt"])),
            ["no product has category = 'tshirt': did you mean 'Tshirts'?"]
        );
        assert_eq!(
            why(Filter::new().brand_in(["Zara"])),
            ["no product has brand = 'Zara' (the catalog holds 'Nike')"]
        );
        assert_eq!(
            why(Filter::new().price_range(30.0..)),
            ["no product's price is in the range asked (prices run from 20 to 20)"]
        );
        assert_eq!(
            why(Filter::new().stock(false)),
            ["no product is out of stock"]
        );
        assert_eq!(
            why(Filter::new().tagged("colour.blue")),
            ["the model tagged no product colour.blue"]
        );
        assert_eq!(
            why(Filter::new()
                .not_tagged("colour.red")
                .tagged("colour.red")
                .stock(true))
            .len(),
            1,
            "the contradiction alone"
        );
        assert!(why(Filter::new().attr_eq("Stock", "1"))[0].contains("built-in in_stock"));
        assert!(why(Filter::new().attr_eq("min_score", "1"))[0].contains("`min_score 0.5`"));
        // Engine keys are not offered for a user's typo.
        assert_eq!(
            why(Filter::new().attr_eq("vitrine.tag", "x")),
            ["no product has an attribute 'vitrine.tag': did you mean 'vitrine.tags'?"]
        );
        assert_eq!(
            why(Filter::new().attr_eq("tags", "x")),
            ["no product has an attribute 'tags'"]
        );
        assert!(Filter::new().attr_eq("colour", "Red").unmatched(&[]).len() == 1);
    }

    /// Many conditions that no product passes are named up to a bound and
    /// counted past it; long text gets no typo hint (its edit distance to
    /// every value held would cost seconds).
    #[test]
    fn unmatched_conditions_are_bounded() {
        let long = "x".repeat(MAX_TYPO_LEN + 1);
        let a = Attributes::new().set("k", &long[1..]).set("desc", "x");
        let why = |f: Filter| f.unmatched(&[&a]);
        let many = (0..30).fold(Filter::new(), |f, i| f.attr_eq(format!("k{i}"), "1"));
        let said = why(many);
        assert_eq!(said.len(), MAX_NAMED + 1);
        assert_eq!(
            said[MAX_NAMED],
            "and 20 more condition(s) that no product passes"
        );
        assert!(said[..MAX_NAMED]
            .iter()
            .all(|s| s.starts_with("no product has")));
        let [hint] = &why(Filter::new().attr_eq("k", long.as_str()))[..] else {
            panic!()
        };
        assert!(!hint.contains("did you mean"), "{hint}");
        assert!(why(Filter::new().attr_eq("k", &long[2..]))[0].contains("did you mean"));
    }

    /// A value that reads as the one asked for, but for its Unicode form
    /// or a character that does not show, is named, escaped, with why.
    #[test]
    fn unmatched_conditions_say_why_look_alikes_differ() {
        let a = Attributes::new()
            .brand("Zara\u{200b}")
            .set("maker", "E\u{301}mile");
        let why = |f: Filter| f.unmatched(&[&a]);
        assert_eq!(
            why(Filter::new().brand_in(["Zara"])),
            [
                "no product has brand = 'Zara': did you mean 'Zara\\u{200b}'? (it holds \
              characters that do not show, escaped here)"
            ]
        );
        let [hint] = &why(Filter::new().attr_eq("maker", "\u{c9}mile"))[..] else {
            panic!()
        };
        assert!(hint.contains("another Unicode form"), "{hint}");
        // And its hidden characters, when the question holds them.
        assert_eq!(
            why(Filter::new().brand_in(["\u{feff}Nike"])),
            ["no product has brand = '\\u{feff}Nike' (the catalog holds 'Zara\\u{200b}')"]
        );
    }

    /// A condition given twice is one condition; a concept both wanted and
    /// unwanted allows nothing, as two stock values do.
    #[test]
    fn repeated_conditions_are_kept_once() {
        let red = Attributes::new().set("vitrine.tags", "colour.red");
        let once = Filter::new().not_tagged("colour.blue").attr_eq("k", "v");
        let many = (0..1000).fold(Filter::new(), |f, _| {
            f.not_tagged("Colour.Blue").attr_eq("k", "v")
        });
        assert_eq!(many, once);
        let both = Filter::new().tagged("colour.red").not_tagged("colour.red");
        assert!(!both.is_empty());
        assert!(!both.matches("x", &red));
        assert!(Filter::new().tagged("colour.red").matches("x", &red));
    }

    /// A stored tag name that is not its own key (a custom manifest's
    /// `colour.off__white`) matches the concept it is queried as.
    #[test]
    fn stored_tag_names_match_as_keys() {
        for (stored, concept) in [
            ("colour.off__white", "colour.off_white"),
            ("colour.red_", "colour.red"),
            ("colour._red", "colour.red"),
            ("pattern.a.b", "pattern.a_b"),
            ("Colour.Navy Blue", "colour.navy_blue"),
            ("colour.red", "colour.red"),
        ] {
            let p = Attributes::new().set("vitrine.tags", format!("x.y,{stored}"));
            assert!(Filter::new().tagged(concept).matches("p", &p), "{stored}");
            assert!(
                !Filter::new().not_tagged(concept).matches("p", &p),
                "{stored}"
            );
        }
    }

    fn product(category: &str, brand: &str, price: f64, in_stock: bool) -> Attributes {
        Attributes::new()
            .category(category)
            .brand(brand)
            .price(price)
            .in_stock(in_stock)
    }

    #[test]
    fn a_nan_price_bound_matches_nothing_in_any_order() {
        let p = product("jeans", "A", 20.0, true);
        for f in [
            Filter::new().price_range(f64::NAN..).price_range(10.0..),
            Filter::new().price_range(10.0..).price_range(f64::NAN..),
            Filter::new().price_range(..50.0).price_range(..f64::NAN),
            Filter::new().price_range(..f64::NAN).price_range(..50.0),
        ] {
            assert!(!f.matches("x", &p), "{f:?}");
        }
    }

    #[test]
    fn conditions_given_twice_narrow() {
        let p = product("jeans", "A", 30.0, true);
        let f = Filter::new().category_in(["jeans", "shirts"]);
        assert!(f.clone().category_in(["jeans", "tops"]).matches("x", &p));
        assert!(!f.category_in(["shirts"]).matches("x", &p));
        assert!(!Filter::new()
            .brand_in(["A"])
            .brand_in(["B"])
            .matches("x", &p));

        let f = Filter::new()
            .price_range(10.0..50.0)
            .price_range(20.0..=30.0);
        assert!(f.matches("x", &p));
        let f = Filter::new().price_range(..30.0).price_range(10.0..);
        assert!(!f.matches("x", &p), "30 is excluded by the first range");
        let f = Filter::new().price_range(30.0..).price_range(..=30.0);
        assert!(f.matches("x", &p));

        assert!(Filter::new().in_stock().stock(true).matches("x", &p));
        let never = Filter::new().in_stock().stock(false);
        assert!(!never.is_empty());
        assert!(!never.matches("x", &p));
        assert!(!never.matches("y", &product("jeans", "A", 30.0, false)));
    }
}
