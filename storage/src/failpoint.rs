//! Crash-injection points for recovery tests (cargo feature `failpoints`).
//!
//! `failpoint!("name")` runs the action the test installed with
//! [`set_failpoint_action`] when the environment variable
//! `VITRINE_FAILPOINT` equals `name`; the library itself never ends the
//! process (a crash test's child installs `std::process::abort`). Without
//! the feature the macro expands to nothing, so release builds carry no
//! trace of it.

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

#[cfg(feature = "failpoints")]
static ACTION: std::sync::OnceLock<fn(&'static str)> = std::sync::OnceLock::new();

/// Installs what a hit failpoint does (first call wins), e.g.
/// `set_failpoint_action(|_| std::process::abort())` in a crash test's child.
#[cfg(feature = "failpoints")]
pub fn set_failpoint_action(action: fn(&'static str)) {
    let _ = ACTION.set(action);
}

/// Runs the installed action if `name` is the configured failpoint. The
/// variable is read once.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &'static str) {
    use std::sync::OnceLock;
    static ACTIVE: OnceLock<Option<String>> = OnceLock::new();
    let active = ACTIVE.get_or_init(|| std::env::var("VITRINE_FAILPOINT").ok());
    if active.as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint hit");
        match ACTION.get() {
            Some(action) => action(name),
            None => tracing::warn!(failpoint = name, "no failpoint action installed"),
        }
    }
}
