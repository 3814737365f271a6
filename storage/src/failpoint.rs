//! Crash-injection points for recovery tests (cargo feature `failpoints`).
//!
//! `failpoint!("name")` aborts the process when the environment variable
//! `VITRINE_FAILPOINT` equals `name`. Without the feature the macro expands
//! to nothing, so release builds carry no trace of it.

#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint::hit($name)
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
}

pub(crate) use failpoint;

/// Aborts if `name` is the configured failpoint. The variable is read once.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    use std::sync::OnceLock;
    static ACTIVE: OnceLock<Option<String>> = OnceLock::new();
    let active = ACTIVE.get_or_init(|| std::env::var("VITRINE_FAILPOINT").ok());
    if active.as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint hit, aborting");
        std::process::abort();
    }
}
