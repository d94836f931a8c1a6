//! Trees holding bind mounts, as build sandboxes leave them: removing,
//! recovering or committing such a tree never reaches anything through a
//! mount. Real btrfs on a loop device, real bind mounts; needs root
//! (skipped loudly otherwise, a failure with CI=true).

mod common;
mod support;

use std::fs;
use std::path::{Path, PathBuf};

use common::{is_ro, LoopBtrfs};
use snapstore_btrfs::Btrfs;
use store_api::SnapshotBackend;
use support::{contents, fill, key, mounts_under, store, subvolume_create, Bind};

/// What a sandbox mounts into trees: a host directory (a subvolume outside
/// the store, so that it could be made read-only) and a held cache copy.
struct Outside {
    dirs: Vec<PathBuf>,
    before: Vec<std::collections::BTreeMap<String, (u32, Vec<u8>)>>,
}

impl Outside {
    fn new(fs: &LoopBtrfs, s: &Btrfs) -> Outside {
        let host_dir = fs.mnt.join("outside");
        subvolume_create(&host_dir);
        fill(&host_dir, "outside");
        let cache_copy = s.create(&key("cache-tmp/1-held"), None).expect("create cache copy");
        fill(&cache_copy, "cache");
        let dirs = vec![host_dir, cache_copy];
        let before = dirs.iter().map(|d| contents(d)).collect();
        Outside { dirs, before }
    }

    /// Bind-mounts both into `tree`, one at the top and one inside a nested
    /// subvolume (which makes the backend walk the tree).
    fn mount_into(&self, tree: &Path) -> Vec<Bind> {
        vec![
            Bind::new(&self.dirs[0], &tree.join("host")),
            Bind::new(&self.dirs[1], &tree.join("inner/cache")),
        ]
    }

    fn assert_intact(&self, what: &str) {
        for (dir, before) in self.dirs.iter().zip(&self.before) {
            assert_eq!(&contents(dir), before, "{what}: {} changed", dir.display());
            assert!(!is_ro(dir), "{what}: {} was made read-only", dir.display());
            fs::write(dir.join("still-writable"), "x").expect("write outside");
            fs::remove_file(dir.join("still-writable")).expect("rm outside");
        }
    }
}

/// A writable tree at `path` holding a nested subvolume `inner`.
fn tree_with_nested(path: &Path) {
    subvolume_create(&path.join("inner"));
    fs::write(path.join("inner/f"), "important").expect("write");
    fill(path, "tree");
}

#[test]
fn removing_trees_never_deletes_through_bind_mounts() {
    let Some(fs) = LoopBtrfs::new("mounts-remove") else {
        return;
    };
    let s = store(&fs.root());
    let outside = Outside::new(&fs, &s);

    // A build's tree, a cache copy, and a committed result (mount points
    // made before the commit).
    for (tmp, committed) in
        [("result-tmp/t", None), ("cache-tmp/2-c", None), ("result-tmp/r", Some("result/r"))]
    {
        let tree = s.create(&key(tmp), None).expect("create");
        tree_with_nested(&tree);
        fs::create_dir_all(tree.join("host")).expect("mkdir");
        fs::create_dir_all(tree.join("inner/cache")).expect("mkdir");
        let (target, tree) = match committed {
            Some(dst) => (dst, s.commit(&key(tmp), &key(dst), None).expect("commit")),
            None => (tmp, tree),
        };
        let _binds = outside.mount_into(&tree);
        let removed = s.remove(&key(target));
        outside.assert_intact(target);
        removed.expect("remove a tree holding bind mounts");
        assert_eq!(s.path(&key(target)).expect("path"), None, "{target}");
        assert_eq!(mounts_under(&fs.root()), Vec::<String>::new(), "{target}: mounts left");
    }
    s.complete_deletes().expect("complete_deletes");
    outside.assert_intact("after complete_deletes");
}

#[test]
fn recovery_of_killed_builds_leaves_bind_mounted_directories_intact() {
    let Some(fs) = LoopBtrfs::new("mounts-recover") else {
        return;
    };
    let s = store(&fs.root());
    let outside = Outside::new(&fs, &s);

    // A build killed while running: the host's recovery removes its tree.
    let running = s.create(&key("result-tmp/killed"), None).expect("create");
    tree_with_nested(&running);
    let _binds1 = outside.mount_into(&running);
    // A process killed half-way through removing a tree: its transit name
    // is left, with no lock held, for the backend's own recovery.
    let removing = s.create(&key("result-tmp/removing"), None).expect("create");
    tree_with_nested(&removing);
    let transit = fs.root().join("result-tmp/.remove-1-2-3");
    fs::rename(&removing, &transit).expect("rename");
    let _binds2 = outside.mount_into(&transit);

    let recovered = s.recover();
    let removed = s.remove(&key("result-tmp/killed"));
    outside.assert_intact("recovery");
    recovered.expect("recover");
    removed.expect("remove the killed build's tree");
    assert!(!transit.exists(), "recover left the dead transit tree");
    assert_eq!(mounts_under(&fs.root()), Vec::<String>::new());
    s.complete_deletes().expect("complete_deletes");
    outside.assert_intact("after complete_deletes");
}

#[test]
fn committing_trees_with_bind_mounts_changes_nothing_outside() {
    let Some(fs) = LoopBtrfs::new("mounts-commit") else {
        return;
    };
    let s = store(&fs.root());
    let outside = Outside::new(&fs, &s);

    // A result and a cache copy being published, each with a nested
    // subvolume (so that commit marks subvolumes read-only one by one).
    for (tmp, dst) in [("result-tmp/c", "result/c"), ("cache-tmp/3-c", "cache/c.1")] {
        let tree = s.create(&key(tmp), None).expect("create");
        tree_with_nested(&tree);
        let binds = outside.mount_into(&tree);
        let committed = s.commit(&key(tmp), &key(dst), None).expect("commit a tree holding bind mounts");
        outside.assert_intact(dst);
        for bind in &binds {
            assert!(!support::is_mounted(&bind.target), "{} is still mounted", bind.target.display());
        }
        assert!(is_ro(&committed) && is_ro(&committed.join("inner")), "{dst} is not read-only");
        assert_eq!(fs::read_to_string(committed.join("inner/f")).expect("read"), "important");
        for point in ["host", "inner/cache"] {
            assert!(fs::read_dir(committed.join(point)).expect("read_dir").next().is_none(), "{dst}/{point}");
        }
        assert_eq!(mounts_under(&fs.root()), Vec::<String>::new());
    }
}
