//! Index configuration.

use crate::error::{Error, Result};

/// Largest `ef` (construction or search) accepted; bounds per-query work.
pub(crate) const MAX_EF: usize = 4096;

/// Parameters of the HNSW graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node and layer (`M`); layer 0 keeps twice as many. Valid:
    /// `4..=255` (hnsw_rs saves `M` in one byte: a graph of 256 reloads
    /// with 0, and links nothing inserted after).
    pub max_connections: usize,
    /// Candidate list size while inserting. Valid: `max_connections..=4096`.
    pub ef_construction: usize,
    /// Default candidate list size while searching. Valid: `1..=4096`.
    pub ef_search: usize,
    /// Maximum number of layers. Valid: `16` only (hnsw_rs 0.3 refuses to
    /// save a graph of fewer, and a reloaded one draws levels up to 16).
    pub max_layers: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
            max_layers: 16,
        }
    }
}

impl HnswParams {
    /// Checks every field against its valid range.
    ///
    /// hnsw_rs exits the process on some invalid values, so nothing reaches it
    /// without passing this check.
    pub fn validate(&self) -> Result<()> {
        if !(4..=255).contains(&self.max_connections) {
            return Err(Error::invalid(
                "max_connections",
                format!("{} not in 4..=255", self.max_connections),
            ));
        }
        if !(self.max_connections..=MAX_EF).contains(&self.ef_construction) {
            return Err(Error::invalid(
                "ef_construction",
                format!(
                    "{} not in {}..={MAX_EF} (max_connections..={MAX_EF})",
                    self.ef_construction, self.max_connections
                ),
            ));
        }
        if !(1..=MAX_EF).contains(&self.ef_search) {
            return Err(Error::invalid(
                "ef_search",
                format!("{} not in 1..={MAX_EF}", self.ef_search),
            ));
        }
        if self.max_layers != 16 {
            return Err(Error::invalid(
                "max_layers",
                format!(
                    "{} is not 16 (hnsw_rs 0.3 saves and reloads only 16-layer graphs)",
                    self.max_layers
                ),
            ));
        }
        Ok(())
    }
}

/// When [`PlanHint::Auto`](crate::PlanHint::Auto) picks the exact plan.
///
/// The exact plan is used when the number of allowed documents is at most
/// `max(exact_max_count, exact_max_fraction * live)`, where `live` is the
/// number of indexed documents (with no filter, allowed = live, so small
/// indexes are always scanned exactly).
///
/// Defaults come from `benches/planner.rs` (20k clustered 128-d vectors,
/// k = 10, ef = 64, 2 cores): the exact plan costs about 70 ns per allowed row
/// (0.41 ms at 25 %, 0.72 ms at 50 %), while hnsw_rs' filtered graph search is
/// slow on selective filters (47 ms at 0.5 %, 5 ms at 10 %) and only breaks
/// even near 50 % (0.78 ms). The exact plan is therefore kept up to 8192
/// allowed rows, and up to a fifth of the index on larger indexes where the
/// graph's filtered search degrades further.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// Absolute number of allowed documents up to which the scan is exact. Default 8192.
    pub exact_max_count: usize,
    /// Fraction of live documents up to which the scan is exact. Default 0.2. Valid: `0.0..=1.0`.
    pub exact_max_fraction: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            exact_max_count: 8192,
            exact_max_fraction: 0.2,
        }
    }
}

impl PlannerConfig {
    /// Checks that the fraction is a number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.exact_max_fraction) {
            return Err(Error::invalid(
                "exact_max_fraction",
                format!("{} not in 0.0..=1.0", self.exact_max_fraction),
            ));
        }
        Ok(())
    }

    /// Largest allowed count that still gets the exact plan.
    pub(crate) fn exact_threshold(&self, live: usize) -> usize {
        let frac = (self.exact_max_fraction * live as f64).floor() as usize;
        self.exact_max_count.max(frac)
    }
}

/// Full configuration of a [`SpaceIndex`](crate::SpaceIndex).
#[derive(Clone, Debug, PartialEq)]
pub struct IndexConfig {
    /// Graph parameters.
    pub hnsw: HnswParams,
    /// Exact-versus-graph planner thresholds.
    pub planner: PlannerConfig,
    /// Rebuild the graph when `tombstones / graph points` exceeds this.
    /// Default 0.25. Must be `> 0`; values `>= 1.0` disable automatic compaction.
    pub compaction_ratio: f64,
    /// Threads that rebuild the graph when it is compacted (`0`, the
    /// default, = all cores).
    pub compaction_threads: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            hnsw: HnswParams::default(),
            planner: PlannerConfig::default(),
            compaction_ratio: 0.25,
            compaction_threads: 0,
        }
    }
}

impl IndexConfig {
    /// Validates all parts of the configuration.
    pub fn validate(&self) -> Result<()> {
        self.hnsw.validate()?;
        self.planner.validate()?;
        if self.compaction_ratio.is_nan() || self.compaction_ratio <= 0.0 {
            return Err(Error::invalid(
                "compaction_ratio",
                format!("{} must be > 0", self.compaction_ratio),
            ));
        }
        Ok(())
    }
}
