//! Everything a tree holds survives a build on a base and its commit, and
//! a flattened chain; deleted files and replaced directories are gone.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use store_api::SnapshotBackend;
use test_support::fidelity::{assert_same, build_fidelity_tree, manifest, set_times, Entry};

/// overlayfs reports a link count of 1 for a directory merged from several
/// layers (counting its subdirectories in every layer would cost a walk):
/// directory link counts are left out of the comparison.
fn without_dir_nlink(mut entries: Vec<Entry>) -> Vec<Entry> {
    for e in &mut entries {
        if e.mode & 0o170000 == 0o040000 {
            e.nlink = 0;
        }
    }
    entries
}

fn fidelity(mkfs: &[&str]) {
    // max_depth 2: the second child's commit flattens its chain.
    let Some((lfs, store)) = store(mkfs, "max_depth = 2") else { return };
    let tmp = store.create(&key("result-tmp/base"), None).unwrap();
    build_fidelity_tree(&tmp);
    set_times(&tmp, &mut 0);
    let base = store.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();
    test_support::sync(&lfs.mount);
    let want = without_dir_nlink(manifest(&base, true));
    assert!(want.len() > 330, "tree has only {} entries", want.len());

    let clone = store.clone_tree(&key("result/base"), &key("result-tmp/c1")).unwrap();
    assert_same(&want, &without_dir_nlink(manifest(&clone, true)), "clone");
    let c1 = store.commit(&key("result-tmp/c1"), &key("result/c1"), Some(&key("result/base"))).unwrap();
    assert_same(&want, &without_dir_nlink(manifest(&c1, true)), "committed clone");
    assert_same(&want, &without_dir_nlink(manifest(&base, true)), "base after its clone");

    // A child that deletes a file and replaces a directory, flattened as
    // it is committed, then a grandchild on it.
    let c2 = store.clone_tree(&key("result/c1"), &key("result-tmp/c2")).unwrap();
    fs::remove_file(c2.join("file")).unwrap();
    let victim = first_subdir(&c2);
    fs::remove_dir_all(c2.join(&victim)).unwrap();
    fs::create_dir(c2.join(&victim)).unwrap();
    fs::write(c2.join(&victim).join("fresh"), "new").unwrap();
    let c2 = store.commit(&key("result-tmp/c2"), &key("result/c2"), Some(&key("result/c1"))).unwrap();
    // Its chain (c2, c1, base) is deeper than 2: flattened.
    let link = fs::read_link(lfs.root().join("result/c2")).unwrap();
    let lower = fs::read_to_string(lfs.root().join("result").join(link).join("lower")).unwrap();
    assert!(!lfs.root().join("layers").join(lower).join("lower").exists(), "not flattened");
    let c3 = store.clone_tree(&key("result/c2"), &key("result-tmp/c3")).unwrap();
    set_times(&c3.join(&victim), &mut 1_000_000);
    let c3 = store.commit(&key("result-tmp/c3"), &key("result/c3"), Some(&key("result/c2"))).unwrap();
    let got = without_dir_nlink(manifest(&c3, true));
    let expected: Vec<_> = without_dir_nlink(manifest(&c2, true))
        .into_iter()
        .map(|mut e| {
            if e.path == victim {
                // set_times above touched the replaced directory and its entry.
                e.atime = None;
                e.mtime = (0, 0);
            }
            e
        })
        .collect();
    assert!(!got.iter().any(|e| e.path == Path::new("file")), "a deleted file came back");
    assert!(got.iter().any(|e| e.path == victim.join("fresh")));
    assert_eq!(
        got.iter().filter(|e| e.path.starts_with(&victim)).count(),
        2,
        "a replaced directory kept its old entries"
    );
    let untouched = |entries: &[Entry]| -> Vec<Entry> {
        entries
            .iter()
            .filter(|e| !e.path.starts_with(&victim) && e.path != Path::new(""))
            .map(|e| Entry {
                xattrs: e.xattrs.clone(),
                target: e.target.clone(),
                content: e.content.clone(),
                path: e.path.clone(),
                same_as: e.same_as.clone(),
                ..*e
            })
            .collect()
    };
    assert_same(&untouched(&expected), &untouched(&got), "grandchild of the flattened child");
    // Everything else in the tree is what the base held.
    let base_rest: Vec<Entry> =
        untouched(&want).into_iter().filter(|e| e.path != Path::new("file")).collect();
    assert_same(&base_rest, &untouched(&got), "grandchild of the flattened child against the base");
}

/// A subdirectory of the tree's top, to replace.
fn first_subdir(tree: &Path) -> std::path::PathBuf {
    let mut dirs: Vec<_> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| std::path::PathBuf::from(e.file_name()))
        .collect();
    dirs.sort();
    dirs.into_iter().next().expect("the fidelity tree has directories")
}

#[test]
fn fidelity_ext4() {
    fidelity(EXT4);
}

#[test]
fn fidelity_xfs() {
    fidelity(XFS);
}
