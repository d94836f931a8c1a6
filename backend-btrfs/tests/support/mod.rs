//! Helpers for the tests that mount things into trees and nest subvolumes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::run;
use snapstore_btrfs::{open, Btrfs};
use store_api::Key;

pub fn key(s: &str) -> Key {
    Key::parse(s).expect("valid key")
}

pub fn store(root: &Path) -> Btrfs {
    open(root, "").expect("open store")
}

/// Every entry under `dir`, with its mode and contents (directories as
/// "<dir>", symlinks as their target), not crossing into mounts.
pub fn contents(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(base).expect("prefix").to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (mode, b"<dir>".to_vec()));
                walk(base, &path, out);
            } else if meta.is_symlink() {
                out.insert(
                    rel,
                    (mode, fs::read_link(&path).expect("readlink").into_os_string().into_encoded_bytes()),
                );
            } else {
                out.insert(rel, (mode, fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Fills `dir` with a few files, a subdirectory and a symlink.
pub fn fill(dir: &Path, tag: &str) {
    fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
    for (i, name) in ["a", "sub/b", "sub/deeper/c"].iter().enumerate() {
        fs::write(dir.join(name), format!("{tag} {i}").repeat(100)).expect("write");
    }
    std::os::unix::fs::symlink("sub/b", dir.join("link")).expect("symlink");
}

pub fn subvolume_create(path: &Path) {
    run("btrfs", &["subvolume", "create", path.to_str().expect("utf8")]).expect("btrfs subvolume create");
}

/// A bind mount, made with mount(8) and detached lazily on drop if still
/// there (so that a failing test does not leave it behind).
pub struct Bind {
    pub target: PathBuf,
}

impl Bind {
    pub fn new(source: &Path, target: &Path) -> Bind {
        fs::create_dir_all(target).expect("mkdir mount point");
        run("mount", &["--bind", source.to_str().expect("utf8"), target.to_str().expect("utf8")])
            .expect("mount --bind");
        Bind { target: target.to_path_buf() }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let target = self.target.to_string_lossy().into_owned();
        if is_mounted(&self.target) {
            let _ = run("umount", &["-l", &target]);
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(path) = fs::canonicalize(path) else {
        return false;
    };
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table.lines().any(|line| line.split(' ').nth(4) == path.to_str())
}

/// The mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).expect("canonicalize");
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(str::to_string)
        .collect()
}
