//! Subvolumes a build creates inside its tree (`btrfs subvolume create
//! inner; echo important > inner/f`) are kept through commit, clone and
//! cache publish, and removed with their tree. Real btrfs on a loop device;
//! needs root (skipped loudly otherwise, a failure with CI=true).

mod common;
mod support;

use std::fs;
use std::path::Path;

use common::{is_ro, run, LoopBtrfs};
use store_api::{Namespace, SnapshotBackend};
use support::{contents, fill, key, store, subvolume_create};

const NESTED: [&str; 3] = ["inner", "inner/innermost", "deep/er/inner2"];

/// Puts the nested subvolumes of `NESTED` in `tree`, each with a file.
fn nest(tree: &Path) {
    fs::create_dir_all(tree.join("deep/er")).expect("mkdir");
    for sub in NESTED {
        subvolume_create(&tree.join(sub));
        fs::write(tree.join(sub).join("f"), format!("important {sub}")).expect("write");
        fill(&tree.join(sub), sub);
    }
}

fn assert_nested(tree: &Path, writable: bool, what: &str) {
    for sub in NESTED {
        let path = tree.join(sub);
        assert_eq!(
            fs::read_to_string(path.join("f")).unwrap_or_else(|e| panic!("{what}: {sub}/f: {e}")),
            format!("important {sub}"),
            "{what}: {sub}"
        );
        assert_eq!(is_ro(&path), !writable, "{what}: {sub} read-only flag");
        // A subvolume root, not an empty directory standing in for one.
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("stat")),
            256,
            "{what}: {sub}"
        );
    }
}

#[test]
fn nested_subvolumes_survive_clone_commit_and_cache_publish() {
    let Some(fs) = LoopBtrfs::new("nested-clone") else {
        return;
    };
    let s = store(&fs.root());

    // A result, cloned, changed and committed again.
    let tree = s.create(&key("result-tmp/a"), None).expect("create");
    nest(&tree);
    let a = s.commit(&key("result-tmp/a"), &key("result/a"), None).expect("commit");
    assert_nested(&a, false, "result a");
    let clone = s.clone_tree(&key("result/a"), &key("result-tmp/b")).expect("clone");
    assert_nested(&clone, true, "clone of a");
    assert_eq!(contents(&clone), contents(&a), "the clone differs from its base");
    fs::write(clone.join("inner/innermost/g"), "more").expect("write in a nested clone");
    assert!(!a.join("inner/innermost/g").exists(), "writing the clone changed its base");
    let b = s.commit(&key("result-tmp/b"), &key("result/b"), Some(&key("result/a"))).expect("commit");
    assert_nested(&b, false, "result b");
    assert_eq!(fs::read_to_string(b.join("inner/innermost/g")).expect("read"), "more");

    // A cache published, acquired (cloned) and published again.
    let copy = s.create(&key("cache-tmp/1-c"), None).expect("create");
    nest(&copy);
    s.commit(&key("cache-tmp/1-c"), &key("cache/c.1"), None).expect("publish");
    let copy = s.clone_tree(&key("cache/c.1"), &key("cache-tmp/2-c")).expect("acquire");
    assert_nested(&copy, true, "cache copy");
    fs::write(copy.join("deep/er/inner2/new"), "gen 2").expect("write");
    let c2 = s.commit(&key("cache-tmp/2-c"), &key("cache/c.2"), None).expect("publish again");
    assert_nested(&c2, false, "cache c.2");
    assert_eq!(fs::read_to_string(c2.join("deep/er/inner2/new")).expect("read"), "gen 2");

    // Removing everything removes every nested subvolume, deepest first.
    for ns in Namespace::ALL {
        for name in s.list(ns).expect("list") {
            s.remove(&store_api::Key::new(ns, &name).expect("key")).expect("remove");
        }
    }
    s.complete_deletes().expect("complete_deletes");
    let left = run("btrfs", &["subvolume", "list", fs.mnt_str()]).expect("subvolume list");
    assert_eq!(left.trim(), "", "subvolumes left behind");
    let deleted = run("btrfs", &["subvolume", "list", "-d", fs.mnt_str()]).expect("subvolume list -d");
    assert_eq!(deleted.trim(), "", "subvolumes not cleaned");
}
