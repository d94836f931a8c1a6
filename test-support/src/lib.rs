//! Fixtures shared by the tests and benchmarks of every snapstore crate:
//! loop-mounted filesystems ([`LoopFs`]) and file-backed ZFS pools
//! ([`ZfsPool`]), each removed again by its `Drop` (also when a test
//! panics), a real OCI registry ([`Registry`]), what sandboxes leave in
//! trees ([`sandbox`]), and the loud skip
//! that a test needing root or a tool uses.

pub mod fault_proxy;
pub mod fidelity;
mod loop_fs;
pub mod registry;
pub mod sandbox;
pub mod token_service;
mod zfs_pool;

use std::process::Command;

pub use fault_proxy::{Fault, FaultProxy};
pub use loop_fs::{sync, LoopFs};
pub use registry::{Registry, RegistryOptions};
pub use token_service::TokenService;
pub use zfs_pool::ZfsPool;

/// True when running in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Skips a test that needs something missing here, loudly; in CI, fails.
pub fn skip(why: &str) {
    assert!(!in_ci(), "CI=true and this test cannot run: {why}");
    eprintln!("\n*** SKIPPED: {why} ***\n");
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command; returns its stdout, trimmed, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `program` can be found in `PATH`.
pub fn installed(program: &str) -> bool {
    run(Command::new("sh").args(["-c", "command -v \"$1\"", "sh", program])).is_ok()
}
