//! The change list read from a result's layer (store-api 1.2 `changes`)
//! against a generic walk of the two whole trees.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use store_api::{ChangeKind, SnapshotBackend};
use test_support::fidelity::{build_fidelity_tree, manifest, Entry};

type Changes = BTreeSet<(PathBuf, ChangeKind)>;

/// Each path's entry, with what a change does not cover left out (atimes,
/// link counts, block counts, which name of an inode comes first).
fn entries(tree: &Path) -> BTreeMap<PathBuf, Entry> {
    manifest(tree, true)
        .into_iter()
        .map(|mut e| {
            (e.atime, e.nlink, e.blocks, e.same_as) = (None, 0, None, None);
            (e.path.clone(), e)
        })
        .collect()
}

fn is_dir(e: &Entry) -> bool {
    e.mode & 0o170000 == 0o040000
}

/// The changes found by walking both trees: containerd's semantics, where
/// a directory in both trees is compared entry by entry.
fn walked(tree: &Path, base: &Path) -> Changes {
    let (new, old) = (entries(tree), entries(base));
    let mut out = Changes::new();
    for (path, e) in &new {
        if path.as_os_str().is_empty() {
            continue; // the root
        }
        match old.get(path) {
            None => {
                out.insert((path.clone(), ChangeKind::Added));
            }
            Some(o) if is_dir(o) != is_dir(e) || (e.mode & 0o170000) != (o.mode & 0o170000) => {
                out.insert((path.clone(), ChangeKind::Deleted));
                out.insert((path.clone(), ChangeKind::Added));
            }
            Some(o) if o != e => {
                out.insert((path.clone(), ChangeKind::Modified));
            }
            Some(_) => {}
        }
    }
    for path in old.keys() {
        // Only the top of a deleted subtree.
        let parent_gone = path.parent().is_some_and(|p| !new.contains_key(p) || !is_dir(&new[p]));
        if !new.contains_key(path) && !parent_gone {
            out.insert((path.clone(), ChangeKind::Deleted));
        }
    }
    out
}

fn changes_on(mkfs: &[&str]) {
    let Some((_fs, store)) = store(mkfs, "") else { return };
    let tmp = store.create(&key("result-tmp/base"), None).unwrap();
    build_fidelity_tree(&tmp);
    fs::create_dir_all(tmp.join("keep/a/b")).unwrap();
    fs::write(tmp.join("keep/a/b/f"), "f").unwrap();
    fs::create_dir_all(tmp.join("replace/old")).unwrap();
    fs::write(tmp.join("replace/old/f"), "old").unwrap();
    fs::write(tmp.join("replace/same"), "same").unwrap();
    fs::create_dir(tmp.join("dir-to-file")).unwrap();
    fs::write(tmp.join("dir-to-file/x"), "x").unwrap();
    fs::write(tmp.join("file-to-dir"), "f").unwrap();
    fs::write(tmp.join("gone"), "g").unwrap();
    fs::create_dir_all(tmp.join("gone-dir/sub")).unwrap();
    fs::write(tmp.join("untouched"), "u").unwrap();
    fs::write(tmp.join("reopened"), "r").unwrap();
    fs::write(tmp.join("content"), "before").unwrap();
    store.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();

    let t = store.clone_tree(&key("result/base"), &key("result-tmp/step")).unwrap();
    fs::write(t.join("new"), "n").unwrap();
    fs::create_dir_all(t.join("newdir/deep")).unwrap();
    fs::write(t.join("newdir/deep/f"), "d").unwrap();
    symlink("target", t.join("newlink")).unwrap();
    fs::write(t.join("content"), "after!").unwrap();
    fs::write(t.join("keep/a/b/g"), "g").unwrap(); // copies up keep, keep/a, keep/a/b
    xattr::set(t.join("keep"), "user.tag", b"v").unwrap();
    fs::remove_dir_all(t.join("replace")).unwrap();
    fs::create_dir(t.join("replace")).unwrap();
    fs::write(t.join("replace/same"), "same").unwrap();
    fs::remove_dir_all(t.join("dir-to-file")).unwrap();
    fs::write(t.join("dir-to-file"), "now a file").unwrap();
    fs::remove_file(t.join("file-to-dir")).unwrap();
    fs::create_dir(t.join("file-to-dir")).unwrap();
    fs::write(t.join("file-to-dir/in"), "i").unwrap();
    fs::remove_file(t.join("gone")).unwrap();
    fs::remove_dir_all(t.join("gone-dir")).unwrap();
    // Copied up without a change: not a change.
    let st =
        Command::new("chown").arg("--reference").arg(t.join("reopened")).arg(t.join("reopened")).status();
    assert!(st.unwrap().success());
    fs::OpenOptions::new().append(true).open(t.join("untouched")).unwrap();
    let tree = store.commit(&key("result-tmp/step"), &key("result/step"), Some(&key("result/base"))).unwrap();
    let base = store.path(&key("result/base")).unwrap().unwrap();

    let listed = store.changes(&key("result/step"), &key("result/base")).unwrap().expect("a layer is a diff");
    let mine: Changes = listed.iter().map(|c| (c.path.clone(), c.kind)).collect();
    assert_eq!(mine.len(), listed.len(), "a change listed twice");
    let walk = walked(&tree, &base);

    // A replaced directory: deleted and added, all its entries added.
    let replaced = Path::new("replace");
    for kind in [ChangeKind::Deleted, ChangeKind::Added] {
        assert!(mine.contains(&(replaced.into(), kind)), "replace: {kind:?} missing: {mine:?}");
    }
    assert!(mine.contains(&(replaced.join("same"), ChangeKind::Added)));
    // Elsewhere, exactly what the walk finds.
    let outside = |set: &Changes| -> Changes {
        set.iter().filter(|(p, _)| !p.starts_with(replaced)).cloned().collect()
    };
    assert_eq!(outside(&mine), outside(&walk));
    for must in [
        ("new", ChangeKind::Added),
        ("newdir/deep/f", ChangeKind::Added),
        ("content", ChangeKind::Modified),
        ("keep", ChangeKind::Modified),
        ("keep/a/b/g", ChangeKind::Added),
        ("gone", ChangeKind::Deleted),
        ("gone-dir", ChangeKind::Deleted),
        ("dir-to-file", ChangeKind::Deleted),
        ("dir-to-file", ChangeKind::Added),
        ("file-to-dir/in", ChangeKind::Added),
    ] {
        assert!(mine.contains(&(must.0.into(), must.1)), "{must:?} missing: {mine:?}");
    }
    for unchanged in ["untouched", "reopened", "keep/a", "gone-dir/sub"] {
        assert!(!mine.iter().any(|(p, _)| p == Path::new(unchanged)), "{unchanged} listed: {mine:?}");
    }

    // Not against another base, nor for a result without one.
    assert_eq!(store.changes(&key("result/base"), &key("result/step")).unwrap(), None);
    assert!(store.size(&key("result/step")).unwrap().unwrap() > 0);
}

#[test]
fn changes_match_a_walk_on_ext4() {
    changes_on(EXT4);
}

#[test]
fn changes_match_a_walk_on_xfs() {
    changes_on(XFS);
}
