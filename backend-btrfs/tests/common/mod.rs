//! A loop-mounted scratch btrfs for the tests, from the workspace's
//! `test-support` crate (always unmounted and detached again, also when a
//! test panics).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command, returning its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    test_support::run(Command::new(cmd).args(args))
}

/// A fresh 1 GiB btrfs.
pub struct LoopBtrfs {
    fs: test_support::LoopFs,
    pub mnt: PathBuf,
}

impl LoopBtrfs {
    /// `None` (after a loud message) when this machine cannot make one.
    /// With CI=true that is a failure instead.
    pub fn new(test: &str) -> Option<LoopBtrfs> {
        eprintln!("{test}: on a loop-mounted btrfs");
        let fs = test_support::LoopFs::new(&["mkfs.btrfs", "-q"], "1G", "")?;
        Some(LoopBtrfs { mnt: fs.mount.clone(), fs })
    }

    /// The store root inside the filesystem.
    pub fn root(&self) -> PathBuf {
        self.fs.root()
    }

    pub fn mnt_str(&self) -> &str {
        self.mnt.to_str().unwrap_or("")
    }
}

/// `btrfs property get -ts PATH ro` says `ro=true`.
pub fn is_ro(path: &Path) -> bool {
    run("btrfs", &["property", "get", "-ts", path.to_str().unwrap_or(""), "ro"])
        .map(|out| out.trim() == "ro=true")
        .unwrap_or(false)
}
