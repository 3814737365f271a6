//! The concept query language: grammar and semantics on [`ConceptQuery`].

use std::ops::Bound;

use serde::Serialize;

use super::{concept_key, profile_query, ConceptError, Profile, Vocabulary, QUERY_KEYWORDS};
use crate::{infer_image, Attributes, Db, Error, Filter, Model};

/// Results per query by default.
pub const DEFAULT_LIMIT: usize = 20;
/// Most results a query may ask for.
pub const MAX_LIMIT: usize = 10_000;
/// The longest query text [`ConceptQuery::parse`] reads, in bytes (a query
/// of every concept of a large vocabulary, spelled out, is far shorter).
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most concept terms one query may weigh: every hit carries one
/// contribution per term, so terms × hits bounds a query's memory (a
/// catalog's every concept and user tag, spelled out, can be thousands).
pub const MAX_TERMS: usize = 256;
/// The largest `limit` with `diverse`: MMR costs picks × pool similarities,
/// quadratic in the limit (10,000 would take seconds).
pub const MAX_DIVERSE_LIMIT: usize = 1_000;

/// A parse error: where, what, and a hint.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message} (at column {}){}", .column + 1, .hint.as_ref().map(|h| format!(" — {h}")).unwrap_or_default())]
#[non_exhaustive]
pub struct QueryError {
    /// What went wrong.
    pub kind: QueryErrorKind,
    /// Column (0-based, in characters) where it went wrong.
    pub column: usize,
    /// One-line description.
    pub message: String,
    /// How to fix it, when there is an obvious way ("did you mean colour.red?").
    pub hint: Option<String>,
}

/// User text as it may appear in a message: control characters escaped
/// (a query must not drive the terminal), at most 1,000 characters (the
/// vocabulary lists of hints fit; a pasted megabyte does not).
fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 1000 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl QueryError {
    fn new(kind: QueryErrorKind, column: usize, message: impl Into<String>) -> Self {
        QueryError {
            kind,
            column,
            message: printable(&message.into()),
            hint: None,
        }
    }
    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(printable(&hint.into()));
        self
    }

    /// The message, then the query with a caret under the error: for
    /// terminals. The message comes first so that a prefix such as
    /// `error: ` does not shift the query away from its caret.
    /// A long query is shown as the 80 characters around the error, and
    /// control characters as `?`; the caret is placed by the width a
    /// terminal gives what precedes it (wide CJK characters take two
    /// cells, combining marks none), so that it stays under its column.
    pub fn render(&self, query: &str) -> String {
        const AROUND: usize = 40;
        let chars: Vec<char> = query
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let start = self.column.saturating_sub(AROUND);
        let end = self.column.saturating_add(AROUND).min(chars.len());
        let mut shown: String = chars[start.min(end)..end].iter().collect();
        let mut caret = self.column - start;
        if start > 0 {
            shown.insert(0, '…');
            caret += 1;
        }
        if end < chars.len() {
            shown.push('…');
        }
        let cells: usize = shown
            .chars()
            .take(caret)
            .map(|c| unicode_width::UnicodeWidthChar::width(c).unwrap_or(0))
            .sum();
        format!("{self}\n  {shown}\n  {}^", " ".repeat(cells))
    }
}

/// Kinds of [`QueryError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum QueryErrorKind {
    /// A character that starts no token.
    BadCharacter,
    /// A string without its closing quote.
    UnterminatedString,
    /// A token that cannot come here.
    Unexpected,
    /// The query ended where more was needed.
    UnexpectedEnd,
    /// A concept name that is not in the vocabulary.
    UnknownConcept,
    /// A group name that is not in the vocabulary.
    UnknownGroup,
    /// A malformed or out-of-range number.
    BadNumber,
    /// A clause given twice.
    Duplicate,
    /// Neither a concept nor a `like`.
    Empty,
    /// A query text longer than [`MAX_QUERY_BYTES`], or of more than
    /// [`MAX_TERMS`] terms.
    TooLong,
}

/// What a `like` clause refers to.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LikeTarget {
    /// A stored product.
    Id(String),
    /// An image file, embedded with the model at query time.
    Image(String),
}

/// A parsed concept query ([`ConceptQuery::parse`], [`Db::query`]); also built
/// directly by library users.
///
/// The text form:
///
/// ```text
/// query     := ["find"] clause*
/// clause    := term | like | where | limit | offset | min_score | diverse | profile
/// term      := ["+" | "-"] concept ["^" number]      (no sign: +; signed
///                                                     right after a where)
/// concept   := group "." name                         (name: word or "quoted")
/// like      := "like" (id | "image" "path") ["^" number]
/// where     := "where" cond ("and" cond)*
/// cond      := "in_stock" ["=" ("true" | "false")] | "not" "in_stock"
///            | ["not"] concept                        (the model's tags: see below)
///            | "price" ("<" | "<=" | "=" | ">" | ">=") number
///            | field "=" value
///            | ("category" | "brand") "in" "(" value ("," value)* ")"
/// limit     := "limit" integer                        (default 20, at most 10000)
/// offset    := "offset" integer                       (skip that many: a page; offset + limit at most 10000; not with diverse)
/// min_score := "min_score" number                     (only hits scoring at least this)
/// diverse   := "diverse" number                       (MMR, 0..=1; limit at most 1,000)
/// profile   := "profile" user                         (a stored profile: see below)
/// ```
///
/// `field` is `category`, `brand` or any attribute key (attribute keys are
/// case-sensitive, as stored: `articleType`; one with a dot is quoted,
/// `"size.eu" = 42`, or it reads as a concept); values are words,
/// numbers (`60`, `-0.5`, `1.5e2`) or `"quoted strings"`; so are the ids
/// of `like` and `profile` (one with a dot, a space or a quote is quoted:
/// `profile "anna@example.com"`). Keywords and concept names are
/// case-insensitive; attribute values are compared exactly, as stored
/// (`category = "Tshirts"`, not `"tshirts"`). There is no `!=`: `not`
/// excludes a concept or stock, and `in (…)` keeps the values wanted. A
/// value with an apostrophe is double-quoted (`brand = "Levi's"`). Example:
///
/// `find +pattern.striped -colour.red colour.blue^2 where category.shirts and in_stock and price < 60 and brand in ("A","B") limit 20`
///
/// A `-` term ranks a concept down; it does not exclude it. To exclude,
/// use a concept condition: `where not colour.red` drops every product the
/// model tagged red at import (its tags above their calibrated thresholds,
/// as `annotate` lists them; for `category.x`, the model's category), and
/// `where pattern.striped` keeps only those tagged striped. Products stored
/// without model outputs carry no tags. So "striped shirts, but not red
/// ones" is `+pattern.striped where category.shirts and not colour.red`:
/// shirts only, none tagged red, the most striped first. "Most striped"
/// is the share of the product's pattern block that is striped (each
/// group's block is L2-normalised), not the model's confidence: a product
/// the model reads weakly in every pattern can still rank high. `and
/// pattern.striped` keeps only those tagged striped. Two concepts of an
/// exclusive group (colour, category) cannot both be wanted in `where`: a
/// product has at most one. Nor can a condition and its negation.
///
/// Inside quotes, `\` keeps the next character as it is (`"a \"b\""`,
/// `"C:\\img"`).
///
/// A term adds `± weight ×` the concept's direction to the query vector; a
/// `like` adds the liked product's concept vector, weighted per group by the
/// profile (equal weights without one). A `profile` adds its affinities to
/// the query and weighs the `like`; it does not reweigh the terms, so with
/// neither affinities nor a `like` it changes nothing. Beside a `like` its
/// affinities are bounded as in [`Db::similar_with_profile`]
/// ([`crate::AFFINITY_SHARE`]); alone (`find profile anna`) it ranks the
/// catalog by her affinities. The score of a product is the inner
/// product with its concept vector, so each term's contribution is reported
/// with each hit.
///
/// `like image "path"` reads that file with the permissions of the process
/// (through [`Db::query_with_model`], or [`Db::run_query`] given a model;
/// without one it is refused). A service that passes query text
/// from its users should refuse it, or check the path, before the query runs.
///
/// Built in code:
///
/// ```
/// use vitrine::{ConceptQuery, Filter};
/// let q = ConceptQuery::new()
///     .term("category.shirts", 1.0)
///     .term("colour.red", -1.0)
///     .filter(Filter::new().in_stock())
///     .limit(10);
/// assert_eq!(q.terms().len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConceptQuery {
    terms: Vec<(String, f32)>,
    like: Option<(LikeTarget, f32)>,
    filter: Filter,
    limit: usize,
    offset: usize,
    min_score: Option<f32>,
    diverse: Option<f32>,
    profile: Option<String>,
}

impl Default for ConceptQuery {
    fn default() -> Self {
        ConceptQuery {
            terms: Vec::new(),
            like: None,
            filter: Filter::new(),
            limit: DEFAULT_LIMIT,
            offset: 0,
            min_score: None,
            diverse: None,
            profile: None,
        }
    }
}

impl ConceptQuery {
    /// An empty query (add terms or a `like`).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a concept (`group.concept` or `user.<tag>`) with a signed
    /// weight; a concept given again replaces its earlier weight.
    pub fn term(mut self, concept: impl Into<String>, weight: f32) -> Self {
        let concept = concept.into();
        self.terms
            .retain(|(c, _)| concept_key(c) != concept_key(&concept));
        self.terms.push((concept, weight));
        self
    }
    /// Ranks relative to a product or an image too.
    pub fn like(mut self, target: LikeTarget, weight: f32) -> Self {
        self.like = Some((target, weight));
        self
    }
    /// Only products passing `filter`. A second call replaces the first
    /// filter: set every condition on one [`Filter`] (its conditions
    /// combine with AND).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    /// Number of results (default 20; a limit outside `1..=10000` is
    /// brought into that range when the query runs; with
    /// [`ConceptQuery::diverse`], one above 1,000 is refused).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
    /// Skips the first `offset` results: a page (`offset 20 limit 20` is
    /// the second page of 20). The ranking is that of the first
    /// `offset + limit`, at most 10,000 (more is refused when the query
    /// runs). Pages of one query follow on when its search is exact, as
    /// concept queries are up to [`crate::DbBuilder::concept_exact_max`]
    /// products; past that, a query led by a `like` searches the graph,
    /// whose deeper request can rank differently: an item at a page's edge
    /// may then be shown twice or not at all. Not with
    /// [`ConceptQuery::diverse`] (its pool depends on how many are asked
    /// for): ask for one larger page and split it.
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }
    /// Only hits whose score is at least `score` (fewer than the limit when
    /// few are relevant). A single-concept score is the product's cosine
    /// with the concept: its share of the group's normalised block, not the
    /// model's confidence (a product with p(shirts) = 0.1 and the rest
    /// spread thin scores about 0.6 on `+category.shirts`). To keep the
    /// confident ones, filter: `where category.shirts`.
    pub fn min_score(mut self, score: f32) -> Self {
        self.min_score = Some(score);
        self
    }
    /// MMR re-rank with trade-off `lambda` (0: relevance only, 1: diversity
    /// only), over a pool of the `5 × limit` best (at least 50, at most
    /// 2,000). A larger limit draws from a larger pool, so its first
    /// results can differ from a smaller limit's: page with one limit.
    pub fn diverse(mut self, lambda: f32) -> Self {
        self.diverse = Some(lambda);
        self
    }
    /// Weighs the `like` by a stored profile and adds its affinities.
    pub fn profile(mut self, user: impl Into<String>) -> Self {
        self.profile = Some(user.into());
        self
    }
    /// The terms, as given.
    pub fn terms(&self) -> &[(String, f32)] {
        &self.terms
    }

    /// The business filter of the `where` clause.
    pub fn get_filter(&self) -> &Filter {
        &self.filter
    }

    /// The `min_score`, if any.
    pub fn get_min_score(&self) -> Option<f32> {
        self.min_score
    }

    /// The results skipped ([`ConceptQuery::offset`]).
    pub fn get_offset(&self) -> usize {
        self.offset
    }

    /// The user whose profile the query uses (`profile <user>`), if any: a
    /// service running its users' text checks that it is the caller's own.
    pub fn get_profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    /// The `like` clause and its weight, if any.
    pub fn get_like(&self) -> Option<(&LikeTarget, f32)> {
        self.like.as_ref().map(|(t, w)| (t, *w))
    }

    /// Parses `text` against `vocab` (concept names are checked here, with
    /// positions and suggestions).
    pub fn parse(text: &str, vocab: &Vocabulary) -> Result<ConceptQuery, QueryError> {
        Parser::new(text, vocab)?.query()
    }
}

/// One term's share of a hit's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contribution {
    /// `+colour.red`, `-pattern.striped^2`, `like 123`, `like 123^2`,
    /// `profile affinities`.
    pub term: String,
    /// Its addend in the score.
    pub value: f32,
}

/// A query result.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueryHit {
    /// Product id.
    pub id: String,
    /// Score (the sum of the contributions).
    pub score: f32,
    /// Why it matched: each term's addend.
    pub contributions: Vec<Contribution>,
    /// The product's attributes.
    #[serde(skip)]
    pub attributes: Attributes,
}

/// Results of a concept query.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueryResults {
    /// Best first (in MMR order with `diverse`).
    pub hits: Vec<QueryHit>,
}

// ------------------------------------------------------------------ lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
    End,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    col: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(c, '_' | '-' | '/' | ':' | '#' | '@')
        // Combining marks: `e` + U+0301 is the `é` macOS keyboards type;
        // Thai and Devanagari words hold them in any form.
        || unicode_normalization::char::is_combining_mark(c)
}

fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let sym = match two.as_str() {
            "<=" => Some("<="),
            ">=" => Some(">="),
            "!=" => Some("!="),
            _ => None,
        };
        if let Some(s) = sym {
            out.push(Token {
                tok: Tok::Sym(s),
                col,
            });
            i += 2;
            continue;
        }
        let one = match c {
            '+' => Some("+"),
            '^' => Some("^"),
            // A dot right after a word separates group and concept
            // (`user.90s`); elsewhere, before a digit, it starts a number.
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit)
                || i > 0 && is_word_char(chars[i - 1]) =>
            {
                Some(".")
            }
            '(' => Some("("),
            ')' => Some(")"),
            ',' => Some(","),
            '<' => Some("<"),
            '>' => Some(">"),
            '=' => Some("="),
            // A minus starts a negative term unless it continues a number.
            '-' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => Some("-"),
            _ => None,
        };
        if let Some(s) = one {
            out.push(Token {
                tok: Tok::Sym(s),
                col,
            });
            i += 1;
            continue;
        }
        // `Levi's`: a quote ending a word would start a string that
        // swallows what follows.
        if c == '\'' && i > 0 && is_word_char(chars[i - 1]) {
            return Err(QueryError::new(
                QueryErrorKind::Unexpected,
                col,
                "an apostrophe inside a word",
            )
            .hint("quote a value that holds one with double quotes: brand = \"Levi's\""));
        }
        if c == '"' || c == '\'' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(QueryError::new(
                            QueryErrorKind::UnterminatedString,
                            col,
                            "string has no closing quote",
                        )
                        .hint(format!("close it with {quote}")))
                    }
                    Some('\\') if chars.get(i + 1).is_some() => {
                        s.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&q) if q == quote => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                col,
            });
            continue;
        }
        let numeric_start = c.is_ascii_digit() || ((c == '-' || c == '.') && i + 1 < chars.len());
        if numeric_start {
            // A number, unless word characters follow (then an id like 41085800-02).
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            // An exponent: 1e3, 2.5E-2.
            if matches!(chars.get(j), Some('e' | 'E')) {
                let k = j + 1 + usize::from(matches!(chars.get(j + 1), Some('+' | '-')));
                if chars.get(k).is_some_and(char::is_ascii_digit) {
                    j = k;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                }
            }
            if j >= chars.len() || !is_word_char(chars[j]) {
                out.push(Token {
                    tok: Tok::Num(chars[i..j].iter().collect()),
                    col,
                });
                i = j;
                continue;
            }
        }
        if is_word_char(c) {
            let mut j = i;
            while j < chars.len() && is_word_char(chars[j]) {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            out.push(Token {
                tok: if w.chars().all(|c| c.is_ascii_digit()) {
                    Tok::Num(w)
                } else {
                    Tok::Word(w)
                },
                col,
            });
            i = j;
            continue;
        }
        let e = QueryError::new(
            QueryErrorKind::BadCharacter,
            col,
            format!(
                "unexpected character '{}'",
                crate::db::escape_hidden(&c.to_string())
            ),
        );
        return Err(match c {
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{2018}' | '\u{2019}' | '\u{201a}'
            | '\u{ab}' | '\u{bb}' | '\u{2039}' | '\u{203a}' => {
                e.hint("quote with ' or \" (a keyboard may have curled them)")
            }
            c if !crate::db::shows(c) => e.hint("it does not show: pasted text?"),
            _ => e,
        });
    }
    out.push(Token {
        tok: Tok::End,
        col: chars.len(),
    });
    Ok(out)
}

// ----------------------------------------------------------------- parser

const CLAUSES: &str =
    "a concept (+group.concept), like, where, limit, offset, min_score, diverse or profile";

struct Parser<'a> {
    toks: Vec<Token>,
    at: usize,
    vocab: &'a Vocabulary,
    /// The concepts `where` wants, of exclusive groups.
    exclusive_wanted: Vec<String>,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Num(n) => format!("'{n}'"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::End => "the end of the query".into(),
    }
}

impl<'a> Parser<'a> {
    fn new(text: &str, vocab: &'a Vocabulary) -> Result<Self, QueryError> {
        // Checked before the lexer, which holds several copies of the text.
        if text.len() > MAX_QUERY_BYTES {
            return Err(QueryError::new(
                QueryErrorKind::TooLong,
                0,
                format!(
                    "the query is {} bytes long; at most {MAX_QUERY_BYTES} are read",
                    text.len()
                ),
            ));
        }
        Ok(Parser {
            toks: lex(text)?,
            at: 0,
            vocab,
            exclusive_wanted: Vec::new(),
        })
    }

    fn peek(&self) -> &Token {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.toks.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn unexpected(&self, t: &Token, expected: &str) -> QueryError {
        let kind = if t.tok == Tok::End {
            QueryErrorKind::UnexpectedEnd
        } else {
            QueryErrorKind::Unexpected
        };
        QueryError::new(
            kind,
            t.col,
            format!("expected {expected}, found {}", describe(&t.tok)),
        )
    }

    fn expect_sym(&mut self, s: &'static str) -> Result<(), QueryError> {
        let t = self.next();
        if t.tok == Tok::Sym(s) {
            Ok(())
        } else {
            Err(self.unexpected(&t, &format!("'{s}'")))
        }
    }

    fn number(&mut self, what: &str) -> Result<(f64, usize), QueryError> {
        let t = self.next();
        // `12,50`: a decimal comma, as a European keyboard writes it.
        if let (Tok::Num(n), Tok::Sym(","), Some(Tok::Num(d))) = (
            &t.tok,
            &self.peek().tok,
            self.toks.get(self.at + 1).map(|t| &t.tok),
        ) {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                t.col,
                format!("bad number '{n},{d}'"),
            )
            .hint(format!("decimals take a point: {n}.{d}")));
        }
        match &t.tok {
            Tok::Num(n) => n
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(|x| (x, t.col))
                .ok_or_else(|| {
                    QueryError::new(
                        QueryErrorKind::BadNumber,
                        t.col,
                        format!("bad number '{n}'"),
                    )
                }),
            _ => Err(self.unexpected(&t, what)),
        }
    }

    /// A whole number from `lo` to `hi`, both included; `clause` names it in the error.
    fn whole_number(
        &mut self,
        what: &str,
        clause: &str,
        lo: usize,
        hi: usize,
    ) -> Result<(usize, usize), QueryError> {
        let (n, col) = self.number(what)?;
        if n.fract() != 0.0 || !(lo as f64..=hi as f64).contains(&n) {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                col,
                format!("{clause} must be a whole number from {lo} to {hi}"),
            ));
        }
        Ok((n as usize, col))
    }

    fn weight(&mut self) -> Result<f32, QueryError> {
        if self.peek().tok != Tok::Sym("^") {
            return Ok(1.0);
        }
        self.next();
        // Said as typed: 1e-50 printed as a number is fifty digits long.
        let typed = match &self.peek().tok {
            Tok::Num(n) => n.clone(),
            _ => String::new(),
        };
        let (w, col) = self.number("a weight after '^'")?;
        // (Checked as the f32 it becomes: 1e-50 is positive, its f32 is 0.)
        if !((w as f32) > 0.0 && w <= f64::from(super::MAX_WEIGHT)) {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                col,
                format!("weight {typed} is out of range"),
            )
            .hint("weights are > 0 and <= 1000; use '-' to push a concept away"));
        }
        Ok(w as f32)
    }

    fn value(&mut self) -> Result<String, QueryError> {
        let t = self.next();
        match t.tok {
            Tok::Word(w) => Ok(w),
            Tok::Str(s) => Ok(s),
            Tok::Num(n) => Ok(n),
            _ => Err(self.unexpected(&t, "a value (word, number or \"string\")")),
        }
    }

    /// A product or user id. Unquoted, one with a dot (`anna@example.com`)
    /// lexes as words and dots: refused whole, with its quoted form, not
    /// cut at the dot.
    fn id(&mut self) -> Result<String, QueryError> {
        self.whole("an id")
    }

    /// A value (an id, a path, an attribute's value) that may be quoted:
    /// unquoted, one with a dot (`shirt.jpg`, `42.5cm`) is refused whole,
    /// with its quoted form.
    fn whole(&mut self, what: &str) -> Result<String, QueryError> {
        let col = self.peek().col;
        let quoted = matches!(self.peek().tok, Tok::Str(_));
        let v = self.value()?;
        if quoted {
            return Ok(v);
        }
        let (mut joined, mut end) = (v.clone(), col + v.chars().count());
        for t in &self.toks[self.at..] {
            if t.col != end {
                break;
            }
            let part = match &t.tok {
                Tok::Sym(".") => ".",
                Tok::Word(w) | Tok::Num(w) => w.as_str(),
                _ => break,
            };
            end += part.chars().count();
            joined.push_str(part);
        }
        if joined == v {
            return Ok(v);
        }
        Err(QueryError::new(
            QueryErrorKind::Unexpected,
            col,
            format!("'{joined}' would be read as '{v}': {what} with a dot is quoted"),
        )
        .hint(format!("\"{joined}\"")))
    }

    fn query(mut self) -> Result<ConceptQuery, QueryError> {
        let mut q = ConceptQuery::new();
        if self.keyword("find") {
            self.next();
        }
        let (mut limit_col, mut seen_where, mut seen_diverse) = (None, false, false);
        let mut offset_col = None;
        // Terms by key: a repeat is found without a scan of those before.
        let mut keys = std::collections::HashSet::new();
        let mut add_term = |q: &mut ConceptQuery, name: String, w: f32, col: usize| {
            if !keys.insert(concept_key(&name)) {
                return Err(QueryError::new(
                    QueryErrorKind::Duplicate,
                    col,
                    format!("'{name}' is given twice"),
                ));
            }
            if q.terms.len() == MAX_TERMS {
                return Err(too_many_terms(col));
            }
            q.terms.push((name, w));
            Ok(())
        };
        loop {
            let t = self.peek().clone();
            let dup = |what: &str| {
                QueryError::new(
                    QueryErrorKind::Duplicate,
                    t.col,
                    format!("'{what}' is given twice"),
                )
            };
            match &t.tok {
                Tok::End => break,
                Tok::Sym("+") | Tok::Sym("-") => {
                    self.next();
                    let sign = if t.tok == Tok::Sym("-") { -1.0 } else { 1.0 };
                    let (name, w) = self.term()?;
                    add_term(&mut q, name, sign * w, t.col)?;
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("like") => {
                    self.next();
                    if q.like.is_some() {
                        return Err(dup("like"));
                    }
                    let target = if self.keyword("image") {
                        self.next();
                        let p = self.peek().clone();
                        match p.tok {
                            Tok::Str(_) | Tok::Word(_) => LikeTarget::Image(self.whole("a path")?),
                            _ => {
                                self.next();
                                return Err(self.unexpected(&p, "an image path in quotes"));
                            }
                        }
                    } else {
                        let v = self.peek().clone();
                        match v.tok {
                            Tok::Word(_) | Tok::Str(_) | Tok::Num(_) => LikeTarget::Id(self.id()?),
                            _ => {
                                return Err(self
                                    .unexpected(&v, "a product id or image \"path\"")
                                    .hint("like 12345, or like image \"shirt.jpg\""))
                            }
                        }
                    };
                    let w = self.weight()?;
                    q.like = Some((target, w));
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("where") => {
                    self.next();
                    if seen_where {
                        return Err(dup("where").hint("join conditions with 'and'"));
                    }
                    seen_where = true;
                    loop {
                        q.filter = self.condition(q.filter)?;
                        // `in_stock != false`, `colour.red = true`: the
                        // condition was whole before the operator.
                        if let Tok::Sym(op @ ("=" | "!=")) = self.peek().tok {
                            return Err(QueryError::new(
                                QueryErrorKind::Unexpected,
                                self.peek().col,
                                format!("'{op}' after a whole condition"),
                            )
                            .hint(
                                "a concept condition takes no value: write `colour.red` or \
                                 `not colour.red`; stock is `in_stock`, `not in_stock` or \
                                 `in_stock = false`",
                            ));
                        }
                        if self.keyword("and") {
                            self.next();
                        } else {
                            break;
                        }
                    }
                    // `where in_stock pattern.striped` reads as a second
                    // condition with its `and` forgotten, not as a term.
                    if self.at_concept() {
                        // Named as a term would be (an unknown one is
                        // that error, with its suggestion).
                        let col = self.peek().col;
                        let name = self.concept(true)?;
                        // User tags only rank.
                        let ranks_only = name
                            .split_once('.')
                            .is_some_and(|(g, _)| g == super::USER_GROUP);
                        let hint = if ranks_only {
                            format!("sign a term to rank by it (+{name})")
                        } else {
                            format!(
                                "join conditions with 'and' (where … and {name}), or sign a term to rank by it (+{name})"
                            )
                        };
                        return Err(QueryError::new(
                            QueryErrorKind::Unexpected,
                            col,
                            format!("expected 'and' or a clause, found '{name}'"),
                        )
                        .hint(hint));
                    }
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("limit") => {
                    self.next();
                    if limit_col.is_some() {
                        return Err(dup("limit"));
                    }
                    let (n, col) =
                        self.whole_number("a number of results", "limit", 1, MAX_LIMIT)?;
                    limit_col = Some(col);
                    q.limit = n;
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("offset") => {
                    self.next();
                    if offset_col.is_some() {
                        return Err(dup("offset"));
                    }
                    let (n, col) = self.whole_number(
                        "a number of results to skip",
                        "offset",
                        0,
                        MAX_LIMIT - 1,
                    )?;
                    offset_col = Some(col);
                    q.offset = n;
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("min_score") => {
                    self.next();
                    if q.min_score.is_some() {
                        return Err(dup("min_score"));
                    }
                    let (x, col) = self.number("a score")?;
                    let max = f64::from(super::MAX_WEIGHT) * 100.0;
                    if !(-max..=max).contains(&x) {
                        return Err(QueryError::new(
                            QueryErrorKind::BadNumber,
                            col,
                            format!("min_score {x} is out of range"),
                        ));
                    }
                    q.min_score = Some(x as f32);
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("diverse") => {
                    self.next();
                    if seen_diverse {
                        return Err(dup("diverse"));
                    }
                    seen_diverse = true;
                    let (x, col) = self.number("a diversity between 0 and 1")?;
                    if !(0.0..=1.0).contains(&x) {
                        return Err(QueryError::new(
                            QueryErrorKind::BadNumber,
                            col,
                            format!("diverse {x} is out of range"),
                        )
                        .hint("0 keeps the ranking, 1 is diversity only; 0.3 is a good start"));
                    }
                    q.diverse = Some(x as f32);
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("profile") => {
                    self.next();
                    if q.profile.is_some() {
                        return Err(dup("profile"));
                    }
                    q.profile = Some(self.id()?);
                }
                Tok::Word(_) | Tok::Str(_) => {
                    let (name, w) = self.term()?;
                    add_term(&mut q, name, w, t.col)?;
                }
                _ => return Err(self.unexpected(&t, CLAUSES)),
            }
        }
        if let Some(col) = offset_col.filter(|_| q.offset + q.limit > MAX_LIMIT) {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                col,
                format!("offset + limit is at most {MAX_LIMIT}"),
            ));
        }
        if let Some(col) = limit_col.filter(|_| q.diverse.is_some() && q.limit > MAX_DIVERSE_LIMIT)
        {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                col,
                format!("with diverse, limit is at most {MAX_DIVERSE_LIMIT}"),
            )
            .hint("diversity re-ranks every result against the others"));
        }
        if let Some(col) = offset_col.filter(|_| q.diverse.is_some() && q.offset > 0) {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                col,
                "offset with diverse: pages of a diverse query would not follow on",
            )
            .hint("ask for one page of offset + limit, and split it"));
        }
        // (A profile alone ranks by its affinities.)
        if q.terms.is_empty() && q.like.is_none() && q.profile.is_none() {
            let col = self.peek().col;
            return Err(QueryError::new(
                QueryErrorKind::Empty,
                col,
                "the query names no concept and no like",
            )
            .hint("for example: find +colour.red limit 10"));
        }
        Ok(q)
    }

    /// `group.concept [^w]`, checked against the vocabulary.
    fn term(&mut self) -> Result<(String, f32), QueryError> {
        let name = self.concept(false)?;
        let w = self.weight()?;
        Ok((name, w))
    }

    /// `group.concept`, checked against the vocabulary; `condition` when
    /// it stands where `field = value` could (a `where` condition without
    /// `not`).
    fn concept(&mut self, condition: bool) -> Result<String, QueryError> {
        let g = self.next();
        let (group, raw) = match &g.tok {
            Tok::Word(w) => (w.to_ascii_lowercase(), w.clone()),
            _ => return Err(self.unexpected(&g, "a concept (group.concept)")),
        };
        let dot = self.next();
        if dot.tok != Tok::Sym(".") {
            let groups: Vec<String> = self
                .vocab
                .layout()
                .groups
                .iter()
                .map(|g| g.name.clone())
                .chain([super::USER_GROUP.to_string()])
                .collect();
            let err = self.unexpected(&dot, &format!("'.' after '{group}' (group.concept)"));
            let example = self
                .vocab
                .layout()
                .group(&group)
                .and_then(|g| g.concepts.first())
                .map(|c| format!("{group}.{c}"));
            return Err(if let Some(example) = example {
                err.hint(format!("for example {example}"))
            } else if group == "find" {
                err.hint("'find' comes first")
            } else if group == "or" || group == "and" || group == "not" {
                QueryError::new(
                    QueryErrorKind::Unexpected,
                    g.col,
                    format!("'{group}' does not join concepts"),
                )
                .hint(
                    "every term counts at once (+ pulls, - pushes away); for 'either', run one \
                     query per concept; 'and' and 'not' join `where` conditions, and \
                     `where category in (\"A\", \"B\")` keeps either value of a field",
                )
            } else if let Some(s) = super::suggest(&group, groups.iter().map(String::as_str)) {
                QueryError::new(
                    QueryErrorKind::UnknownGroup,
                    g.col,
                    format!("'{group}' is not a concept or clause"),
                )
                .hint(format!("did you mean {s}.<concept>, or one of: {CLAUSES}?"))
            } else {
                err.hint(format!("a query is made of {CLAUSES}"))
            });
        }
        let c = self.next();
        let concept = match c.tok {
            Tok::Word(w) | Tok::Str(w) | Tok::Num(w) => w,
            _ => return Err(self.unexpected(&c, &format!("a concept name after '{group}.'"))),
        };
        let name = format!("{group}.{}", super::concept_slug(&concept));
        if self.vocab.resolve(&group, &concept).is_none() {
            let known_group =
                group == super::USER_GROUP || self.vocab.layout().group(&group).is_some();
            let (kind, message) = if known_group {
                (
                    QueryErrorKind::UnknownConcept,
                    format!("unknown concept '{name}'"),
                )
            } else {
                (
                    QueryErrorKind::UnknownGroup,
                    format!("unknown concept group '{group}'"),
                )
            };
            let mut e = QueryError::new(kind, g.col, message);
            if condition && self.peek().tok == Tok::Sym("=") {
                // `where size.eu = 42`: a catalog key with a dot, read as a
                // concept (keys are case-sensitive: as typed).
                let key = format!("{raw}.{concept}");
                e = e.hint(format!(
                    "an attribute key with a dot is quoted: \"{key}\" = …"
                ));
            } else if let Some(s) = self.vocab.suggest(&name) {
                e = e.hint(format!("did you mean {s}?"));
            } else if !known_group {
                let groups: Vec<&str> = self
                    .vocab
                    .layout()
                    .groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect();
                e = e.hint(if groups.is_empty() {
                    "the database has no concepts (no model's outputs): its conditions are on \
                     attributes"
                        .to_string()
                } else {
                    format!("groups: {}, user", groups.join(", "))
                });
            }
            return Err(e);
        }
        Ok(name)
    }

    /// Whether the next tokens are `word .`: a concept, where a `where`
    /// condition names one.
    fn at_concept(&self) -> bool {
        matches!(self.peek().tok, Tok::Word(_))
            && self
                .toks
                .get(self.at + 1)
                .is_some_and(|t| t.tok == Tok::Sym("."))
    }

    /// `group.concept` as a `where` condition: the model's tags and
    /// category, not a direction (user tags only rank).
    fn concept_condition(&mut self, f: Filter, wanted: bool) -> Result<Filter, QueryError> {
        let col = self.peek().col;
        let name = self.concept(wanted)?;
        let group = name.split_once('.').map_or("", |(g, _)| g);
        if group == super::USER_GROUP || group == "visual" {
            return Err(QueryError::new(
                QueryErrorKind::Unexpected,
                col,
                format!("'{name}' cannot filter: the model tags no product with it"),
            )
            .hint(format!("rank by it instead: +{name} or -{name}")));
        }
        // A product is tagged with at most one concept of an exclusive
        // group: wanting two finds nothing, whatever the catalog holds.
        if wanted
            && self
                .vocab
                .layout()
                .group(group)
                .is_some_and(|g| g.exclusive)
        {
            let prefix = format!("{group}.");
            if let Some(other) = self
                .exclusive_wanted
                .iter()
                .find(|c| c.starts_with(&prefix) && **c != name)
            {
                return Err(QueryError::new(
                    QueryErrorKind::Unexpected,
                    col,
                    format!(
                        "'{name}' and '{other}' cannot both hold: a product has at most one \
                         {group}"
                    ),
                )
                .hint("for 'either', run one query per concept"));
            }
            self.exclusive_wanted.push(name.clone());
        }
        let key = crate::concept_key(&name);
        if f.concepts().any(|(c, w)| c == key && w != wanted) {
            return Err(QueryError::new(
                QueryErrorKind::Unexpected,
                col,
                format!("'{name}' is both wanted and excluded: no product passes"),
            )
            .hint("leave one of the two out"));
        }
        Ok(if wanted {
            f.tagged(name)
        } else {
            f.not_tagged(name)
        })
    }

    /// One `where` condition, narrowing `f` (price bounds combine too).
    fn condition(&mut self, f: Filter) -> Result<Filter, QueryError> {
        let col = self.peek().col;
        if self.at_concept() {
            return self.concept_condition(f, true);
        }
        // Quoted, as "price" is the price: attributes never hold stock.
        if self.keyword("in_stock") || matches!(&self.peek().tok, Tok::Str(s) if s == "in_stock") {
            self.next();
            if self.peek().tok != Tok::Sym("=") {
                return stock(f, true, col);
            }
            self.next();
            let t = self.next();
            return match &t.tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("true") => stock(f, true, col),
                Tok::Word(w) if w.eq_ignore_ascii_case("false") => stock(f, false, col),
                _ => Err(self.unexpected(&t, "true or false after 'in_stock ='")),
            };
        }
        if self.keyword("not") {
            self.next();
            if self.at_concept() {
                return self.concept_condition(f, false);
            }
            let t = self.next();
            return match &t.tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("in_stock") => stock(f, false, col),
                Tok::Str(s) if s == "in_stock" => stock(f, false, col),
                _ => Err(self.unexpected(&t, "'in_stock' or a concept (colour.red) after 'not'")),
            };
        }
        let t = self.next();
        if let Tok::Word(w) = &t.tok {
            // `where limit 3`, `in_stock and limit 3`: a clause where a
            // condition belongs. (An attribute named `limit` or `profile`
            // is followed by its operator: `profile = slim`.)
            let operator = match &self.peek().tok {
                Tok::Sym(s) => ["=", "!=", "<", "<=", ">", ">="].contains(s),
                Tok::Word(w) => w.eq_ignore_ascii_case("in"),
                _ => false,
            };
            if !operator && QUERY_KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) {
                return Err(self
                    .unexpected(&t, "a condition (in_stock, price < 60, brand = \"A\"…)")
                    .hint(format!("an attribute named {w} is quoted: \"{w}\" = value")));
            }
        }
        let field = match &t.tok {
            // Keywords are case-insensitive; other attribute names are
            // compared as stored (`articleType`).
            Tok::Word(w)
                if ["price", "category", "brand"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                w.to_ascii_lowercase()
            }
            Tok::Word(w) => w.clone(),
            Tok::Str(s) => s.clone(),
            _ => {
                return Err(
                    self.unexpected(&t, "a condition (in_stock, price < 60, brand = \"A\"…)")
                )
            }
        };
        let op = self.next();
        match op.tok {
            Tok::Sym(s @ ("<" | "<=" | ">" | ">=")) => {
                if field != "price" {
                    return Err(QueryError::new(
                        QueryErrorKind::Unexpected,
                        op.col,
                        format!("'{field}' cannot be compared with '{s}'"),
                    )
                    .hint("only price is numeric; use = or in for other attributes"));
                }
                let (x, _) = self.number("a price")?;
                Ok(f.price_range(match s {
                    "<" => (Bound::Unbounded, Bound::Excluded(x)),
                    "<=" => (Bound::Unbounded, Bound::Included(x)),
                    ">" => (Bound::Excluded(x), Bound::Unbounded),
                    _ => (Bound::Included(x), Bound::Unbounded),
                }))
            }
            // `stock = true` would ask for an attribute few catalogs have,
            // and find nothing; one named so is quoted (`"stock" = true`),
            // or compared with another value (`stock = 3`).
            Tok::Sym("=")
                if matches!(&t.tok, Tok::Word(_))
                    && stock_typo(&field)
                    && matches!(&self.peek().tok, Tok::Word(v)
                        if ["true", "false", "yes", "no"].iter().any(|b| v.eq_ignore_ascii_case(b))) =>
            {
                Err(QueryError::new(
                    QueryErrorKind::Unexpected,
                    t.col,
                    format!("'{field}' is not the stock condition"),
                )
                .hint(format!(
                    "did you mean in_stock? (`in_stock`, `not in_stock`; an attribute named \
                     {field} is quoted: \"{field}\" = value)"
                )))
            }
            Tok::Sym("=") => {
                let value_col = self.peek().col;
                let v = self.whole("a value")?;
                Ok(match field.as_str() {
                    "category" => f.category_in([v]),
                    "brand" => f.brand_in([v]),
                    "price" => {
                        let x = v.parse::<f64>().ok().filter(|x| x.is_finite());
                        let x = x.ok_or_else(|| {
                            QueryError::new(
                                QueryErrorKind::BadNumber,
                                value_col,
                                format!("bad price '{v}'"),
                            )
                        })?;
                        f.price_range(x..=x)
                    }
                    _ => f.attr_eq(field, v),
                })
            }
            Tok::Word(ref w) if w.eq_ignore_ascii_case("in") => {
                self.expect_sym("(")?;
                let mut vals = vec![self.whole("a value")?];
                loop {
                    let t = self.next();
                    match t.tok {
                        Tok::Sym(",") => vals.push(self.whole("a value")?),
                        Tok::Sym(")") => break,
                        _ => return Err(self.unexpected(&t, "',' or ')'")),
                    }
                }
                match field.as_str() {
                    "category" => Ok(f.category_in(vals)),
                    "brand" => Ok(f.brand_in(vals)),
                    _ => Err(QueryError::new(
                        QueryErrorKind::Unexpected,
                        op.col,
                        format!("'in' works on category and brand, not '{field}'"),
                    )
                    .hint(format!("use {field} = value"))),
                }
            }
            Tok::Sym("!=") => Err(QueryError::new(
                QueryErrorKind::Unexpected,
                op.col,
                format!("'!=' on '{field}': a condition keeps values, it cannot exclude one"),
            )
            .hint(if stock_typo(&field) {
                "did you mean in_stock? (`not in_stock`, `in_stock = false`)".to_string()
            } else if field == "category" || field == "brand" {
                format!("list the values to keep: {field} in (\"A\", \"B\")")
            } else if field.contains(['.', ' ', '"']) {
                format!("keep a value: {field:?} = value")
            } else {
                format!("keep a value: {field} = value")
            })),
            _ => Err(self
                .unexpected(&op, "an operator (=, <, <=, >, >=, in)")
                .hint(if stock_typo(&field) {
                    "did you mean in_stock?".to_string()
                } else {
                    "for example: price < 60, brand = \"A\", category in (\"Shirts\", \"Tops\")"
                        .to_string()
                })),
        }
    }
}

/// `f` with a stock condition; one that contradicts an earlier one
/// (`in_stock and not in_stock`) is refused, as two colours wanted are.
fn stock(f: Filter, want: bool, col: usize) -> Result<Filter, QueryError> {
    if f.indexed().in_stock == Some(!want) {
        return Err(QueryError::new(
            QueryErrorKind::Unexpected,
            col,
            "in stock and not in stock cannot both hold: no product passes",
        )
        .hint("leave one of the two out"));
    }
    Ok(f.stock(want))
}

/// A field that means `in_stock`, which is a condition of its own.
fn stock_typo(field: &str) -> bool {
    field.eq_ignore_ascii_case("stock") || field.eq_ignore_ascii_case("instock")
}

// --------------------------------------------------------------- execution

impl Db {
    /// Parses and runs a concept query (see the grammar in
    /// [`ConceptQuery`]'s module docs). `like image "…"` needs the model:
    /// use [`Db::query_with_model`].
    ///
    /// The text may name any user's profile (`profile <user>`): a service
    /// that runs its users' text parses it with [`ConceptQuery::parse`],
    /// refuses a [`ConceptQuery::get_profile`] that is not the caller's,
    /// and runs it with [`Db::run_query`].
    pub fn query(&self, text: &str) -> Result<QueryResults, ConceptError> {
        let vocab = self.vocabulary()?;
        let q = ConceptQuery::parse(text, &vocab)?;
        self.run_query_with(&vocab, &q, None)
    }

    /// [`Db::query`], embedding `like image` files with `model`.
    ///
    /// The file is read from this process's file system, with the
    /// preparation's size limits: a service that passes its users' text
    /// here lets them name any file the process may read (only its use as
    /// an image, or the error saying why not, comes back). Such a service
    /// calls [`Db::query`], or parses with [`ConceptQuery::parse`] and
    /// refuses a [`LikeTarget::Image`] before [`Db::run_query`].
    pub fn query_with_model(
        &self,
        model: &Model,
        text: &str,
    ) -> Result<QueryResults, ConceptError> {
        let vocab = self.vocabulary()?;
        let q = ConceptQuery::parse(text, &vocab)?;
        self.run_query_with(&vocab, &q, Some(model))
    }

    /// Runs a [`ConceptQuery`] built in code.
    pub fn run_query(
        &self,
        q: &ConceptQuery,
        model: Option<&Model>,
    ) -> Result<QueryResults, ConceptError> {
        self.run_query_with(&*self.vocabulary()?, q, model)
    }

    fn run_query_with(
        &self,
        vocab: &Vocabulary,
        q: &ConceptQuery,
        model: Option<&Model>,
    ) -> Result<QueryResults, ConceptError> {
        let dim = vocab.layout().dim;
        // (A query built with `term` is not parsed.)
        if q.terms.len() > MAX_TERMS {
            return Err(too_many_terms(0).into());
        }
        if let Some(l) = q.diverse.filter(|l| !(0.0..=1.0).contains(l)) {
            return Err(ConceptError::InvalidWeight {
                what: "diverse".into(),
                value: l,
                allowed: "diverse is from 0 to 1".into(),
            });
        }
        if q.diverse.is_some() && q.limit > MAX_DIVERSE_LIMIT {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                0,
                format!(
                    "limit {} with diverse: diversity re-ranks at most {MAX_DIVERSE_LIMIT} results",
                    q.limit
                ),
            )
            .into());
        }
        if q.diverse.is_some() && q.offset > 0 {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                0,
                "offset with diverse: its pool depends on how many are asked for, so pages \
                 would not follow on; ask for one page of offset + limit and split it",
            )
            .into());
        }
        // As the text form allows: > 0 (push away with '-' terms instead).
        if let Some((_, w)) = q
            .like
            .as_ref()
            .filter(|(_, w)| !(*w > 0.0 && *w <= super::MAX_WEIGHT))
        {
            return Err(ConceptError::InvalidWeight {
                what: "like".into(),
                value: *w,
                allowed: format!("a like weight is above 0 and at most {}", super::MAX_WEIGHT),
            });
        }
        let unknown = |name: &str| ConceptError::UnknownConcept {
            name: name.to_string(),
            suggestion: vocab.suggest(name),
        };
        // Each part of the score as a vector of its own, for the contributions.
        let mut parts: Vec<(String, Vec<f32>)> = Vec::new();
        for (name, w) in &q.terms {
            if !(w.is_finite() && w.abs() <= super::MAX_WEIGHT) {
                return Err(ConceptError::InvalidWeight {
                    what: name.clone(),
                    value: *w,
                    allowed: format!("term weights are from -{0} to {0}", super::MAX_WEIGHT),
                });
            }
            let (group, concept) = name.split_once('.').ok_or_else(|| unknown(name))?;
            let r = vocab.resolve(group, concept).ok_or_else(|| unknown(name))?;
            if let super::ConceptRef::Tag(t) = &r {
                if vocab.is_stale(t) {
                    return Err(ConceptError::StaleTag { name: t.clone() });
                }
            }
            let mut v = vec![0.0f32; dim];
            vocab.add_to(&r, *w, &mut v);
            let label = match (*w < 0.0, (w.abs() - 1.0).abs() < 1e-6) {
                (false, true) => format!("+{name}"),
                (true, true) => format!("-{name}"),
                (false, false) => format!("+{name}^{}", w.abs()),
                (true, false) => format!("-{name}^{}", w.abs()),
            };
            parts.push((label, v));
        }
        let profile = match &q.profile {
            // No "did you mean": user ids are customers', and a query
            // text may come from another customer.
            Some(user) => {
                Some(
                    self.profile(user)?
                        .ok_or_else(|| ConceptError::UnknownProfile {
                            user: user.clone(),
                            suggestion: None,
                        })?,
                )
            }
            None => None,
        };
        // The profile's affinities, as directions in the concept space: none
        // when they name only stale tags or tags of weight 0.
        let affinities = profile.as_ref().and_then(|p| {
            let mut v = vec![0.0f32; dim];
            for (c, a) in &p.affinities {
                if let Some((g, n)) = c.split_once('.') {
                    if let Some(r) = vocab.resolve(g, n) {
                        vocab.add_to(&r, *a, &mut v);
                    }
                }
            }
            v.iter().any(|x| *x != 0.0).then_some(v)
        });
        let mut filter = q.filter.clone();
        if let Some((target, w)) = &q.like {
            let (z, label) = match target {
                LikeTarget::Id(id) => {
                    filter = filter.exclude(id.clone());
                    let fp = self.model_fingerprint();
                    (
                        self.concept_vector_of_model(id, fp.as_deref())?,
                        format!("like {id}"),
                    )
                }
                LikeTarget::Image(path) => {
                    let model = model.ok_or_else(|| {
                        Error::InvalidConfig(
                            "'like image' needs the model: use Db::query_with_model".into(),
                        )
                    })?;
                    // Its vector must compare with the stored ones (and
                    // still does after the search: checked again there).
                    self.check_model_unchanged(model)
                        .map_err(|e| ConceptError::Ingest(Box::new(e)))?;
                    let prep = self.prep_config()?;
                    let bytes = prep
                        .get_limits()
                        .read_file(path.as_ref())
                        .map_err(|source| {
                            // The caller's file: a user error, as a bad image is.
                            ConceptError::Ingest(Box::new(crate::IngestError::Io {
                                path: path.into(),
                                source,
                            }))
                        })?;
                    let out = infer_image(model, &prep, &bytes).map_err(|e| {
                        // A log of many queries says which file.
                        let e = match e {
                            crate::IngestError::Image(source) => crate::IngestError::ImageFile {
                                path: path.into(),
                                source,
                            },
                            e => e,
                        };
                        ConceptError::Ingest(Box::new(e))
                    })?;
                    (model.concept_vector(&out), format!("like image {path}"))
                }
            };
            // Its weight shown as a term's is.
            let label = if (w - 1.0).abs() < 1e-6 {
                label
            } else {
                format!("{label}^{w}")
            };
            let shape = match &profile {
                Some(p) => {
                    // The profile's weights shape the like; its affinities
                    // are their own part below. A profile of affinities only
                    // still orders by look, at the tie-break scale `similar`
                    // gives it; one whose affinities add nothing (as
                    // `similar` sees it) weighs nothing.
                    let mut weights = p.weights.clone();
                    if weights.values().all(|w| *w == 0.0) {
                        let scale = match affinities {
                            Some(_) => p.affinities.values().fold(0.0f32, |m, a| m.max(a.abs())),
                            None => 0.0,
                        };
                        if scale > 0.0 {
                            weights
                                .insert(super::VISUAL_GROUP.into(), super::LOOK_TIE_BREAK * scale);
                        } else {
                            // A profile that weighs nothing shapes nothing.
                            weights = Profile::uniform(vocab.layout()).weights;
                        }
                    }
                    Profile {
                        weights,
                        affinities: Default::default(),
                        events: Vec::new(),
                    }
                }
                None => Profile::uniform(vocab.layout()),
            };
            let mut v = profile_query(vocab, &shape, &z)?;
            v.iter_mut().for_each(|x| *x *= w);
            parts.push((label, v));
        }
        if let Some(mut v) = affinities {
            // Beside a like, as in `similar`: they re-rank its lookalikes.
            if let (Some((_, w)), Some(p)) = (&q.like, &profile) {
                let damp = super::affinity_damp(vocab, p, *w);
                v.iter_mut().for_each(|x| *x *= damp);
            }
            parts.push(("profile affinities".into(), v));
        }
        let mut qv = vec![0.0f32; dim];
        for (_, v) in &parts {
            for (a, b) in qv.iter_mut().zip(v) {
                *a += b;
            }
        }
        // Nothing to rank by would return arbitrary products, all scoring 0
        // (the text form refuses a query without terms or like as well).
        if qv.iter().all(|x| *x == 0.0) {
            let why = if let (true, None, Some(user)) = (q.terms.is_empty(), &q.like, &q.profile) {
                format!(
                    "profile {user} has no affinities to rank by (feedback teaches them; \
                     `profile set {user} colour.red=1` sets one): add a concept or a like"
                )
            } else if q.terms.is_empty() && q.like.is_none() {
                "the query weighs no concept and no like (for example: find +colour.red limit 10)"
                    .into()
            } else if q.like.is_none() && q.terms.iter().all(|(_, w)| *w == 0.0) {
                "every term of the query has weight 0".into()
            } else {
                // Terms that weigh nothing: user tags of weight 0, or a
                // profile that cancels them.
                "the query's terms weigh nothing together (a user tag of weight 0 counts for \
                 nothing: `tag weight NAME 1` restores it)"
                    .into()
            };
            return Err(ConceptError::NothingToRank(why));
        }
        // A page: the first offset + limit, then the first offset dropped.
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let offset = q.offset;
        if offset.saturating_add(limit) > MAX_LIMIT {
            return Err(QueryError::new(
                QueryErrorKind::BadNumber,
                0,
                format!("offset {offset} + limit {limit}: at most {MAX_LIMIT}"),
            )
            .into());
        }
        let limit = limit + offset;
        // MMR costs picks × pool dot products: the pool stays bounded.
        let pool = match q.diverse {
            Some(_) => (limit * 5).clamp(50, 2_000).max(limit),
            None => limit,
        };
        // Each hit's vector as the search scored it: one read after, of
        // a product stored again meanwhile, would not add up to its score.
        let found = self.concept_search(vocab, &qv, pool, &filter, None)?;
        if let (Some((LikeTarget::Image(_), _)), Some(model)) = (&q.like, model) {
            self.check_model_unchanged(model)
                .map_err(|e| ConceptError::Ingest(Box::new(e)))?;
        }
        let mut out = Vec::with_capacity(found.hits.len());
        let mut visual = Vec::with_capacity(found.hits.len());
        let vis = vocab
            .layout()
            .group("visual")
            .map(|g| g.start..g.start + g.len);
        if let Some(min) = q.min_score.filter(|m| !m.is_finite()) {
            return Err(ConceptError::InvalidWeight {
                what: "min_score".into(),
                value: min,
                allowed: "min_score is a finite number".into(),
            });
        }
        for (h, z) in found.hits.into_iter().zip(found.vectors) {
            // Below min_score: dropped before its contributions are worked
            // out (the hits come best first, so this keeps a prefix).
            if q.min_score.is_some_and(|min| h.score < min) {
                continue;
            }
            let contributions = parts
                .iter()
                .map(|(term, v)| Contribution {
                    term: term.clone(),
                    value: v.iter().zip(&z).map(|(a, b)| a * b).sum(),
                })
                .collect();
            if q.diverse.is_some() {
                visual.push(vis.clone().and_then(|r| z.get(r).map(<[f32]>::to_vec)));
            }
            out.push(QueryHit {
                id: h.id,
                score: h.score,
                contributions,
                attributes: h.attributes,
            });
        }
        if let Some(lambda) = q.diverse {
            out = mmr(out, &visual, lambda, limit);
        }
        out.truncate(limit);
        out.drain(..offset.min(out.len()));
        Ok(QueryResults { hits: out })
    }
}

/// Maximal marginal relevance: repeatedly picks the hit with the best
/// `(1 − λ) · relevance − λ · max similarity to those picked`, relevance
/// being the score rescaled to 0..1 over the pool and similarity the cosine
/// of the visual embeddings.
pub(crate) fn mmr(
    hits: Vec<QueryHit>,
    visual: &[Option<Vec<f32>>],
    lambda: f32,
    k: usize,
) -> Vec<QueryHit> {
    if hits.is_empty() {
        return hits;
    }
    let (lo, hi) = hits
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| {
            (l.min(x.score), h.max(x.score))
        });
    let rel: Vec<f32> = hits
        .iter()
        .map(|h| {
            if hi > lo {
                (h.score - lo) / (hi - lo)
            } else {
                1.0
            }
        })
        .collect();
    // Cosine: the model's visual blocks are unit vectors, but one stored
    // by hand need not be.
    // (In f64: components stored by hand at absurd scales would overflow.)
    let norms: Vec<f64> = visual
        .iter()
        .map(|v| {
            v.as_ref().map_or(0.0, |x| {
                x.iter().map(|&p| f64::from(p).powi(2)).sum::<f64>().sqrt()
            })
        })
        .collect();
    let sim = |a: usize, b: usize| match (&visual[a], &visual[b]) {
        (Some(x), Some(y)) if norms[a] > 0.0 && norms[b] > 0.0 => {
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum();
            let c = dot / (norms[a] * norms[b]);
            if c.is_finite() {
                c as f32
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    let mut picked: Vec<usize> = Vec::new();
    let mut left: Vec<usize> = (0..hits.len()).collect();
    let mut max_sim = vec![f32::NEG_INFINITY; hits.len()];
    while picked.len() < k && !left.is_empty() {
        let score = |i: usize| {
            let m = if picked.is_empty() { 0.0 } else { max_sim[i] };
            (1.0 - lambda) * rel[i] - lambda * m
        };
        let Some((pos, &best)) = left
            .iter()
            .enumerate()
            .max_by(|(_, &a), (_, &b)| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
        else {
            break;
        };
        left.swap_remove(pos);
        picked.push(best);
        for &i in &left {
            max_sim[i] = max_sim[i].max(sim(i, best));
        }
    }
    let mut slots: Vec<Option<QueryHit>> = hits.into_iter().map(Some).collect();
    picked.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Whether `q` already has a term for `concept` (names compared as
/// [`concept_key`] writes them). One term per concept: a repeated one would
/// only add work (each term is a vector and a contribution per hit), and
/// with opposite signs it contradicts itself.
fn too_many_terms(col: usize) -> QueryError {
    QueryError::new(
        QueryErrorKind::TooLong,
        col,
        format!("more than {MAX_TERMS} concept terms"),
    )
    .hint("weigh fewer concepts, or keep weights in a profile")
}
