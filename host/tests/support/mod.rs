//! Shared test support: a store in a temporary directory, driven through
//! the `snapstore` binary, on a loop-mounted filesystem (from the
//! `test-support` crate) for the backends that need one.
#![allow(dead_code)]

pub mod blobs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EXIT_USAGE: i32 = 64;
pub const EXIT_NOT_FOUND: i32 = 66;
pub const EXIT_EXISTS: i32 = 73;
pub const EXIT_BUSY: i32 = 75;

/// The `snapstore` binary under test.
pub fn snapstore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapstore"))
}

/// Where cargo put the plugins: beside the binary.
pub fn plugin_dir() -> PathBuf {
    snapstore_bin().parent().unwrap().to_path_buf()
}

/// Whether plugin `name` was built (`cargo build --workspace`).
pub fn plugin_built(name: &str) -> bool {
    plugin_dir().join(format!("libsnapstore_{}.so", name.replace('-', "_"))).is_file()
}

pub fn require_plugin(name: &str) {
    assert!(
        plugin_built(name),
        "libsnapstore_{name}.so is not built in {}: run `cargo build --workspace` before the tests",
        plugin_dir().display()
    );
}

/// A store described by a config file in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub root: PathBuf,
    /// Kill any command that runs longer (for filesystems that can hang).
    pub timeout_secs: Option<u32>,
}

impl Fixture {
    /// An rsync store in a fresh temporary directory.
    pub fn rsync() -> Fixture {
        require_plugin("rsync");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Self::with_config(dir, &root, "[store]\nbackend = \"rsync\"\nroot = \"store\"\n")
    }

    /// A store with the given config text (written to `DIR/snapstore.toml`).
    pub fn with_config(dir: tempfile::TempDir, root: &Path, text: &str) -> Fixture {
        let config = dir.path().join("snapstore.toml");
        fs::write(&config, text).unwrap();
        Fixture { dir, config, root: root.to_path_buf(), timeout_secs: None }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.timeout_secs {
            Some(secs) => {
                let mut cmd = Command::new("timeout");
                cmd.args(["-s", "KILL", &secs.to_string()]).arg(snapstore_bin());
                cmd
            }
            None => Command::new(snapstore_bin()),
        };
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("SNAPSTORE_PLUGIN_PATH").env_remove("SNAPSTORE_CONFIG");
        // The default log level: tests that check for (no) warnings see them.
        cmd.env_remove("SNAPSTORE_LOG").env_remove("RUST_LOG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapstore {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim_end().to_string()
    }

    /// Runs a command that must fail with `code` and a one-line `error:`.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "snapstore {args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "snapstore {args:?} stderr: {stderr}");
        last.to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The path of result `id`, if any.
    pub fn result(&self, id: &str) -> Option<PathBuf> {
        self.json(&["result", id])["path"].as_str().map(PathBuf::from)
    }

    pub fn read_result(&self, id: &str, file: &str) -> String {
        let path = self.result(id).unwrap_or_else(|| panic!("no result {id}"));
        fs::read_to_string(path.join(file)).unwrap()
    }

    /// After a `kill -9` of snapstore: waits (at most 10 s) until no
    /// process holds one of the store's locks. A command snapstore was
    /// forking when it died holds copies of its descriptors until it dies
    /// too (its parent-death signal, or its own check, a moment later);
    /// until then recovery rightly takes the tree for a live one.
    pub fn wait_until_unlocked(&self) {
        let locks = self.root.join(".snapstore/locks");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(held) = held_lock(&locks) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} stays locked 10 s after the kill",
                held.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// A lock file under `dir` that some process holds, if any.
fn held_lock(dir: &Path) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(held) = held_lock(&path) {
                return Some(held);
            }
            continue;
        }
        let Ok(file) = fs::File::open(&path) else { continue };
        let free = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok();
        if !free {
            return Some(path);
        }
    }
    None
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use test_support::{in_ci, is_root, skip, LoopFs, ZfsPool};

pub mod contract;

/// A store of `backend` on a fresh loop filesystem made by `mkfs`, or
/// `None` (after a loud skip) where that is impossible here.
pub fn loop_store(mkfs: &[&str], size: &str, backend: &str, options: &str) -> Option<(LoopFs, Fixture)> {
    require_plugin(backend);
    let fs = LoopFs::new(mkfs, size, "")?;
    let root = fs.root();
    let text =
        format!("[store]\nbackend = \"{backend}\"\nroot = \"{}\"\n[backend]\n{options}\n", root.display());
    let fixture = Fixture::with_config(tempfile::tempdir().unwrap(), &root, &text);
    Some((fs, fixture))
}
