//! Fixtures of the zfs backend tests: a file-backed ZFS pool (zfs-fuse
//! here, from the workspace's `test-support` crate), skipping where the
//! machine cannot run them, and data outside the store to check.
//!
//! Needs root and zfs-fuse (or a ZFS kernel module): without them each test
//! is skipped with a loud message, unless `CI=true`, where that is a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snapstore_zfs::{open, ZfsBackend};
use store_api::util::mounts::mounts_under;
use store_api::Key;

pub fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn zfs(args: &[&str]) -> String {
    run("zfs", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the tests can run here; if not, says why (or fails under CI).
pub fn usable() -> bool {
    if !test_support::is_root() {
        test_support::skip("zfs backend test: not root");
        return false;
    }
    if !test_support::installed("zpool") || !test_support::installed("zfs") {
        test_support::skip("zfs backend test: the zfs tools are missing (apt-get install -y zfs-fuse)");
        return false;
    }
    true
}

/// A file-backed pool (from the workspace's `test-support` crate, one at a
/// time) with a dataset for the store; destroyed on drop, also when the
/// test fails. zfs-fuse, if started for it, is left running: other tests
/// and users share it.
pub struct Pool {
    pub name: String,
    pub dataset: String,
    pub root: PathBuf,
    _pool: test_support::ZfsPool,
}

impl Pool {
    pub fn new() -> Pool {
        let pool = test_support::ZfsPool::create("sstest", "512M").unwrap_or_else(|e| panic!("{e}"));
        let name = pool.name.clone();
        let dataset = format!("{name}/store");
        let root = pool.mount.with_file_name("root");
        zfs(&["create", "-o", &format!("mountpoint={}", root.display()), &dataset]);
        Pool { name, dataset, root, _pool: pool }
    }

    pub fn options(&self) -> String {
        format!("dataset = \"{}\"", self.dataset)
    }

    /// A fresh pool and a store opened on it; None (after a loud skip)
    /// where zfs cannot run.
    pub fn with_store() -> Option<(Pool, ZfsBackend)> {
        if !usable() {
            return None;
        }
        let pool = Pool::new();
        let store = pool.open();
        Some((pool, store))
    }

    pub fn open(&self) -> ZfsBackend {
        open(&self.root, &self.options()).expect("open")
    }

    /// Every dataset and snapshot under the store's dataset.
    pub fn all(&self) -> Vec<String> {
        zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", &self.dataset])
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Retries a zfs command that zfs-fuse may report busy for a moment.
pub fn retry(f: impl Fn() -> Result<String, String>) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match f() {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(100));
    }
    panic!("{last}")
}

pub fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A directory outside the store, with content to checksum.
pub struct Outside(pub PathBuf);

impl Outside {
    pub fn new() -> Outside {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("sstest-outside-{}x{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("precious"), "keep me").unwrap();
        fs::write(dir.join("sub/data"), vec![42u8; 1 << 16]).unwrap();
        Outside(dir)
    }

    /// The names and contents of every file, hashed.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut dirs = vec![self.0.clone()];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            hash.update(file.to_string_lossy().as_bytes());
            hash.update(fs::read(&file).unwrap());
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Detaches every bind mount the test left under the store root, before
/// the pool goes (a mount under a dataset keeps it busy).
pub struct Unbind(pub PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        if let Ok(mounts) = mounts_under(&self.0) {
            for point in mounts.iter().filter(|p| p.ends_with("mnt")) {
                let _ = run("umount", &["-l", point.to_str().unwrap()]);
            }
        }
    }
}

pub fn bind(source: &Path, target: &Path) {
    run("mount", &["--bind", source.to_str().unwrap(), target.to_str().unwrap()]).unwrap();
}

/// The bind mounts a build or a sandbox left under the store root.
pub fn binds_under(root: &Path) -> Vec<PathBuf> {
    mounts_under(root).unwrap().into_iter().filter(|p| p.ends_with("mnt")).collect()
}
