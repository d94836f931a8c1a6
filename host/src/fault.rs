//! Crash injection for tests: a process whose `SNAPSTORE_KILL_AT` names a
//! point kills itself with SIGKILL when it reaches it, as a crash there would.
//! The tests use it to prove that no point leaves a torn result or cache.

use std::sync::OnceLock;

/// Dies here if `SNAPSTORE_KILL_AT` is `name`.
pub fn point(name: &str) {
    static KILL_AT: OnceLock<Option<String>> = OnceLock::new();
    let kill_at = KILL_AT.get_or_init(|| std::env::var("SNAPSTORE_KILL_AT").ok());
    if kill_at.as_deref() == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Every point, for tests to iterate over.
pub const POINTS: &[&str] = &[
    "build:cloned",
    "build:before-commit",
    "build:committed",
    "acquire:created",
    "acquire:recorded",
    "acquire:cloned",
    "release:published",
    "release:cleaned",
    "delete:removed",
];

/// Whether `SNAPSTORE_FAIL_AT` is `name`: the step there fails instead of
/// running, as an I/O error there would.
pub fn fails(name: &str) -> bool {
    static FAIL_AT: OnceLock<Option<String>> = OnceLock::new();
    FAIL_AT.get_or_init(|| std::env::var("SNAPSTORE_FAIL_AT").ok()).as_deref() == Some(name)
}
