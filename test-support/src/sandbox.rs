//! What build sandboxes leave in the trees a store hands out, for the tests
//! that try to make the store delete or copy through it: a directory
//! outside the store whose content must survive, bind mounts into trees,
//! and a guard that detaches what a failed test left mounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every entry below `dir` with its content (empty for directories),
/// sorted: compared before and after.
pub fn tree_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push((path.clone(), Vec::new()));
            out.extend(tree_contents(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// A directory outside the store, with data that must survive whatever
/// the store does to the trees it is mounted into.
pub struct Outside {
    pub path: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

impl Outside {
    /// Fills the directory `path` (created if missing) with files.
    pub fn new(path: &Path) -> Outside {
        fs::create_dir_all(path.join("sub")).unwrap();
        fs::write(path.join("precious"), b"do not delete").unwrap();
        fs::write(path.join("sub/more"), vec![7u8; 100_000]).unwrap();
        Outside { path: path.to_path_buf(), before: tree_contents(path) }
    }

    /// Fails `what` unless every file is still there, unchanged.
    pub fn assert_intact(&self, what: &str) {
        assert_eq!(tree_contents(&self.path), self.before, "{what}: the outside data must be intact");
    }
}

/// `mount --bind FROM TO`, making the mount point (a directory, or an
/// empty file for a file) first.
pub fn bind(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).unwrap();
    } else {
        fs::write(to, b"").unwrap();
    }
    let status = Command::new("mount").arg("--bind").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "mount --bind {} {}", from.display(), to.display());
}

/// Mount points strictly below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = fs::canonicalize(dir).unwrap().display().to_string() + "/";
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Detaches what a failed test left mounted below its path (declare it
/// after a `LoopFs`, so that it runs first).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for point in mounts_below(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

/// The uid and gid of `nobody`, for running part of a test as a user who
/// is not root.
pub const NOBODY: u32 = 65534;

/// Runs the test `test` of the current test binary as `nobody`, with
/// `SNAPSTORE_TEST_STORE` set to `store`, and returns the `warning:` lines
/// it printed. The test must succeed; it is `#[ignore]`d in plain runs,
/// where it has nothing to check.
pub fn run_test_as_nobody(test: &str, store: &Path) -> Vec<String> {
    use std::os::unix::process::CommandExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("SNAPSTORE_TEST_STORE", store)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{test} as nobody failed: {stderr}");
    stderr.lines().filter(|l| l.starts_with("warning:")).map(String::from).collect()
}
