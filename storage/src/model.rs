//! The product and database-meta data model persisted in sled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::Record;

/// Filterable attributes of a product.
///
/// A fresh `Attributes` has no brand, price or category, no extra keys, and
/// is **in stock** (a newly listed product is for sale):
///
/// ```
/// use vitrine_storage::Attributes;
///
/// let a = Attributes::new();
/// assert!(a.in_stock);
/// assert_eq!(a.brand, None);
/// assert_eq!(a.price, None);
/// assert!(a.extra.is_empty());
/// assert_eq!(a, Attributes::default());
///
/// let a = Attributes::new()
///     .brand("Acme")
///     .price(49.5)
///     .category("dress")
///     .in_stock(false)
///     .set("color", "red");
/// assert_eq!(a.get("brand"), Some("Acme"));
/// assert_eq!(a.get("category"), Some("dress"));
/// assert_eq!(a.get("color"), Some("red"));
/// assert_eq!(a.get("size"), None);
/// // The built-ins' names in any case, as files and queries read them.
/// assert_eq!(Attributes::new().set("Brand", "Acme").brand.as_deref(), Some("Acme"));
/// assert_eq!(a.get("CATEGORY"), Some("dress"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Brand name.
    pub brand: Option<String>,
    /// Price in the catalog's currency.
    pub price: Option<f64>,
    /// Whether the product is for sale. Defaults to `true`.
    pub in_stock: bool,
    /// Category, e.g. `"dress"`.
    pub category: Option<String>,
    /// Free-form key-value attributes (color, size, material, ...). Not
    /// `brand`, `category`, `price` or `in_stock`: those have their fields,
    /// and the database refuses a write that puts them here.
    pub extra: BTreeMap<String, String>,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            brand: None,
            price: None,
            in_stock: true,
            category: None,
            extra: BTreeMap::new(),
        }
    }
}

impl Attributes {
    /// Same as [`Attributes::default`]: empty and in stock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the brand.
    pub fn brand(mut self, brand: impl Into<String>) -> Self {
        self.brand = Some(brand.into());
        self
    }

    /// Sets the price.
    pub fn price(mut self, price: f64) -> Self {
        self.price = Some(price);
        self
    }

    /// Sets whether the product is in stock.
    pub fn in_stock(mut self, in_stock: bool) -> Self {
        self.in_stock = in_stock;
        self
    }

    /// Sets the category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// Sets a string attribute. `"brand"` and `"category"`, in any case,
    /// set the dedicated fields (so [`get`](Self::get) stays consistent, and
    /// a CSV's `Brand` column means the same); any other key goes to
    /// [`extra`](Self::extra), where the database refuses `"price"` and
    /// `"in_stock"`, in any case (set those with [`price`](Self::price) and
    /// [`in_stock`](Self::in_stock)).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        if key.eq_ignore_ascii_case("brand") {
            self.brand = Some(value.into());
        } else if key.eq_ignore_ascii_case("category") {
            self.category = Some(value.into());
        } else {
            self.extra.insert(key, value.into());
        }
        self
    }

    /// Looks up a string attribute: `"brand"` and `"category"`, in any
    /// case, answer from their fields, anything else from
    /// [`extra`](Self::extra).
    pub fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case("brand") {
            self.brand.as_deref()
        } else if key.eq_ignore_ascii_case("category") {
            self.category.as_deref()
        } else {
            self.extra.get(key).map(String::as_str)
        }
    }
}

/// A product as stored: its index id, attributes and named vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductRecord {
    /// Internal dense-ish id used by the indexes.
    pub doc: u64,
    /// Filterable attributes.
    pub attrs: Attributes,
    /// Named vectors, sorted by name. Encoded as raw little-endian bytes.
    #[serde(with = "f32_vectors")]
    pub vectors: Vec<(String, Vec<f32>)>,
}

impl ProductRecord {
    /// The vector named `name`, found by binary search (vectors are sorted
    /// by name).
    pub fn vector(&self, name: &str) -> Option<&[f32]> {
        self.vectors
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.vectors[i].1.as_slice())
    }
}

impl Record for ProductRecord {
    const VERSION: u8 = 1;
}

/// Database-wide metadata, stored under key `b"meta"` in keyspace `"meta"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Vector spaces (named vector -> dimension, metric).
    pub spaces: Vec<SpaceSpec>,
    /// Fingerprint of the embedding model that produced the vectors.
    pub model_fingerprint: Option<String>,
    /// Bumped on the first write after a checkpoint that changes a vector
    /// (writes of attributes only leave the files current); index dumps and arenas
    /// carry the generation they match.
    pub index_generation: u64,
}

impl Record for Meta {
    const VERSION: u8 = 1;
}

/// A named vector space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceSpec {
    /// Name of the vector in [`ProductRecord::vectors`].
    pub name: String,
    /// Dimension of every vector in the space.
    pub dim: u32,
    /// Similarity metric.
    pub metric: StoredMetric,
}

/// Similarity metric of a vector space, as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredMetric {
    /// Cosine similarity.
    Cosine,
    /// Inner (dot) product.
    InnerProduct,
}

/// Serde adapter writing each `Vec<f32>` as one byte string of little-endian
/// floats: decoding 100k products then costs a memcpy per vector instead of
/// a visitor call per float.
mod f32_vectors {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use serde::{Deserialize, Serialize};

    type Vectors = Vec<(String, Vec<f32>)>;

    struct AsBytes<'a>(&'a [f32]);

    impl Serialize for AsBytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if cfg!(target_endian = "little") {
                s.serialize_bytes(bytemuck::cast_slice(self.0))
            } else {
                let bytes: Vec<u8> = self.0.iter().flat_map(|f| f.to_le_bytes()).collect();
                s.serialize_bytes(&bytes)
            }
        }
    }

    struct FromBytes(Vec<f32>);

    impl<'de> Deserialize<'de> for FromBytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_byte_buf(BytesVisitor)
        }
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = FromBytes;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string of little-endian f32s")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<FromBytes, E> {
            let chunks = v.chunks_exact(4);
            if !chunks.remainder().is_empty() {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(FromBytes(
                chunks
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<FromBytes, E> {
            self.visit_bytes(&v)
        }

        // Self-describing formats (JSON) render bytes as a sequence of u8.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FromBytes, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            self.visit_bytes(&bytes)
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &Vectors, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(name, vec)| (name, AsBytes(vec))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vectors, D::Error> {
        let raw = Vec::<(String, FromBytes)>::deserialize(d)?;
        Ok(raw.into_iter().map(|(n, FromBytes(v))| (n, v)).collect())
    }
}
