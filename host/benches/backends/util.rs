//! Small helpers: commands that panic on failure (Ctrl-C included, so that
//! the guards clean up), syncing, fresh names.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use store_api::{Key, Namespace};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C becomes a panic at the next step, so that the guards clean up.
pub fn catch_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(on_interrupt)) }.expect("signal handler");
    }
}

pub fn check_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted; cleaning up");
    }
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    check_interrupted();
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn cmd(program: &str, args: &[&str]) -> String {
    run(Command::new(program).args(args))
}

/// Runs `true` in `dir`: the build command of every variant that builds.
pub fn build_command(dir: &Path) {
    run(Command::new("true").current_dir(dir));
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Writes data out before a timed step, so that one side's writeback is
/// not charged to the next.
pub fn sync_fs(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = nix::unistd::syncfs(dir.as_raw_fd());
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name never used before in this run.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn key(ns: Namespace, name: &str) -> Key {
    Key::new(ns, name).expect("valid key")
}
