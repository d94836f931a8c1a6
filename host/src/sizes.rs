//! The size of a result, for `list --sizes`, when its backend cannot tell
//! it: a walk of its tree, so only on request.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The disk space the tree at `path` takes (allocated blocks), each hard
/// link counted once, without following symlinks or crossing into other
/// filesystems. Space shared with other results (snapshots, reflinks,
/// hard links to a base) is counted in each. Unreadable parts count as 0.
pub fn tree_size(path: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = top.blocks() * 512;
    // A symlink (a tree a command swapped for one) is not walked through.
    if !top.is_dir() {
        return total;
    }
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != top.dev() {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_that_is_a_symlink_is_not_walked_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("big"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
        assert!(tree_size(&target) >= 1 << 20);
        assert!(tree_size(&dir.path().join("link")) < 1 << 20);
    }
}
