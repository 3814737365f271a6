//! Business filters on product attributes.

use std::collections::BTreeSet;
use std::ops::{Bound, RangeBounds};

use crate::Attributes;

/// Restricts a search to products whose attributes match every condition set.
///
/// An empty filter (the [`Default`]) allows everything. Conditions combine
/// with AND; set conditions (`category_in`, `brand_in`) are ORs within the set.
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
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    in_stock: Option<bool>,
    categories: Option<BTreeSet<String>>,
    brands: Option<BTreeSet<String>>,
    price: Option<(Bound<f64>, Bound<f64>)>,
    exclude: BTreeSet<String>,
    equals: Vec<(String, String)>,
}

impl Filter {
    /// A filter that allows everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only products that are in stock.
    pub fn in_stock(mut self) -> Self {
        self.in_stock = Some(true);
        self
    }

    /// Only products whose in-stock flag equals `value`.
    pub fn stock(mut self, value: bool) -> Self {
        self.in_stock = Some(value);
        self
    }

    /// Only products whose category is one of `categories`.
    pub fn category_in<I, S>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.categories = Some(categories.into_iter().map(Into::into).collect());
        self
    }

    /// Only products whose brand is one of `brands`.
    pub fn brand_in<I, S>(mut self, brands: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.brands = Some(brands.into_iter().map(Into::into).collect());
        self
    }

    /// Only products with a price in `range` (products without a price never match).
    pub fn price_range(mut self, range: impl RangeBounds<f64>) -> Self {
        self.price = Some((range.start_bound().cloned(), range.end_bound().cloned()));
        self
    }

    /// Never return this product id.
    pub fn exclude(mut self, id: impl Into<String>) -> Self {
        self.exclude.insert(id.into());
        self
    }

    /// Only products whose attribute `key` equals `value`. `key` may be one of
    /// `brand`, `category` or a free key-value.
    pub fn attr_eq(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.equals.push((key.into(), value.into()));
        self
    }

    /// True when the filter allows every product.
    pub fn is_empty(&self) -> bool {
        self.in_stock.is_none()
            && self.categories.is_none()
            && self.brands.is_none()
            && self.price.is_none()
            && self.exclude.is_empty()
            && self.equals.is_empty()
    }

    /// Does the product pass?
    pub fn matches(&self, id: &str, attrs: &Attributes) -> bool {
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
    }
}
