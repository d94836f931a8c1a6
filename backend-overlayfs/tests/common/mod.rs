//! A store of this backend on a loop filesystem, and what the tests check
//! after it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use snapstore_overlayfs::Overlay;
use store_api::Key;
use test_support::LoopFs;

pub const EXT4: &[&str] = &["mkfs.ext4", "-q"];
pub const XFS: &[&str] = &["mkfs.xfs", "-q"];

pub fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// A loop filesystem made by `mkfs` and a store on it; `None` after a loud
/// skip where this machine cannot make one.
pub fn store(mkfs: &[&str], options: &str) -> Option<(LoopFs, Overlay)> {
    let fs = LoopFs::new(mkfs, "1G", "noatime")?;
    let store = snapstore_overlayfs::open(&fs.root(), options).unwrap();
    Some((fs, store))
}

/// The mounts under `root`, from this process's mount table.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    store_api::util::mounts::mounts_under(root).unwrap()
}

/// What the store holds besides its empty layout: nothing, after every key
/// was removed and complete_deletes ran.
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in ["result", "result-tmp", "cache", "cache-tmp", "layers", "trash"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let entry = entry.unwrap();
            left.push(entry.path());
        }
    }
    left
}
