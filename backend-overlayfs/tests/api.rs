//! The backend's own behaviour, in process, on loop ext4 and XFS: whole
//! trees, hidden bases, deep chains, caches, leaks.

mod common;

use std::fs;

use common::*;
use store_api::{ErrorKind, Namespace, SnapshotBackend};

fn build(store: &impl SnapshotBackend, id: &str, base: Option<&str>, step: impl FnOnce(&std::path::Path)) {
    let tmp = key(&format!("result-tmp/t-{id}"));
    let tree = match base {
        Some(base) => store.clone_tree(&key(&format!("result/{base}")), &tmp).unwrap(),
        None => store.create(&tmp, None).unwrap(),
    };
    step(&tree);
    let parent = base.map(|b| key(&format!("result/{b}")));
    store.commit(&tmp, &key(&format!("result/{id}")), parent.as_ref()).unwrap();
}

fn read(store: &impl SnapshotBackend, id: &str, file: &str) -> String {
    let path = store.path(&key(&format!("result/{id}"))).unwrap().unwrap();
    fs::read_to_string(path.join(file)).unwrap()
}

fn results_are_whole_trees(mkfs: &[&str]) {
    let Some((fs, store)) = store(mkfs, "") else { return };
    let root = fs.root();
    build(&store, "base", None, |t| {
        fs::write(t.join("a"), "a").unwrap();
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/x"), "x").unwrap();
    });
    build(&store, "child", Some("base"), |t| {
        fs::write(t.join("b"), "b").unwrap();
        fs::remove_file(t.join("a")).unwrap();
        fs::remove_dir_all(t.join("d")).unwrap();
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/y"), "y").unwrap();
    });
    let child = store.path(&key("result/child")).unwrap().unwrap();
    assert_eq!(read(&store, "child", "b"), "b");
    assert!(!child.join("a").exists(), "a deleted file is back");
    assert!(!child.join("d/x").exists(), "a replaced directory kept its old entries");
    assert_eq!(read(&store, "child", "d/y"), "y");
    assert_eq!(read(&store, "base", "a"), "a", "the base changed");
    // Read-only, the whole tree.
    let err = fs::write(child.join("new"), "").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");

    // A base deleted under 5 children: they stay intact, its layer hidden.
    for i in 0..5 {
        build(&store, &format!("c{i}"), Some("child"), |t| fs::write(t.join("i"), i.to_string()).unwrap());
    }
    store.remove(&key("result/child")).unwrap();
    store.remove(&key("result/base")).unwrap();
    store.complete_deletes().unwrap();
    assert_eq!(store.path(&key("result/child")).unwrap(), None);
    for i in 0..5 {
        let id = format!("c{i}");
        assert_eq!(read(&store, &id, "i"), i.to_string());
        assert_eq!(read(&store, &id, "b"), "b");
        assert_eq!(read(&store, &id, "d/y"), "y");
        assert!(!store.path(&key(&format!("result/{id}"))).unwrap().unwrap().join("a").exists());
    }
    // A grandchild of the deleted base builds too.
    build(&store, "g", Some("c3"), |t| fs::write(t.join("g"), "g").unwrap());
    assert_eq!(read(&store, "g", "i"), "3");

    // A missing base, an existing key.
    let err = store.clone_tree(&key("result/child"), &key("result-tmp/x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND);
    let err = store.create(&key("result/c1"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS);

    // Everything deleted: nothing left, no mount.
    for ns in Namespace::ALL {
        for name in store.list(ns).unwrap() {
            store.remove(&key(&format!("{ns}/{name}"))).unwrap();
        }
    }
    store.complete_deletes().unwrap();
    assert_eq!(leftovers(&root), Vec::<std::path::PathBuf>::new());
    assert_eq!(mounts_under(&root), Vec::<std::path::PathBuf>::new());
}

fn libc_erofs() -> i32 {
    30
}

#[test]
fn results_are_whole_trees_on_ext4() {
    results_are_whole_trees(EXT4);
}

#[test]
fn results_are_whole_trees_on_xfs() {
    results_are_whole_trees(XFS);
}

/// The depth of `id`'s chain, read from the layer links on disk.
fn depth(root: &std::path::Path, ns: &str, id: &str) -> usize {
    let link = fs::read_link(root.join(ns).join(id)).unwrap();
    let mut layer = root.join(ns).join(link);
    let mut n = 1;
    while let Ok(lower) = fs::read_to_string(layer.join("lower")) {
        layer = root.join("layers").join(lower);
        n += 1;
    }
    n
}

/// A probe in the trash (a `check` running in another process) is left by
/// `complete_deletes` until it is an hour old, when it is a killed check's.
#[test]
fn a_running_checks_probe_is_left_alone() {
    let Some((fs, store)) = store(EXT4, "") else { return };
    let probe = fs.root().join("trash/probe-0123456789abcdef");
    fs::create_dir_all(probe.join("upper")).unwrap();
    store.complete_deletes().unwrap();
    assert!(probe.join("upper").is_dir(), "a running check's probe was deleted");
    let touched = std::process::Command::new("touch").args(["-d", "2 hours ago"]).arg(&probe).status();
    assert!(touched.unwrap().success());
    store.complete_deletes().unwrap();
    assert!(!probe.exists(), "a killed check's probe was left");
}

/// A depth whose next step the kernel could not flatten is refused, before
/// anything is made.
#[test]
fn depths_the_kernel_cannot_flatten_are_refused() {
    let root = std::path::Path::new("/nonexistent/overlay-store");
    for option in ["max_depth = 500", "cache_max_depth = 500", "max_depth = 1"] {
        match snapstore_overlayfs::open(root, option) {
            Ok(_) => panic!("{option} was accepted"),
            Err(err) => assert!(err.message().contains("set it between 2 and 499"), "{}", err.message()),
        }
    }
    assert!(!root.exists());
}

/// A chain that cannot be read (its `lower` file damaged) keeps every
/// layer: nothing is deleted on a guess, and the repaired chain is whole.
#[test]
fn an_unreadable_chain_keeps_its_layers() {
    let Some((fs, store)) = store(EXT4, "") else { return };
    let root = fs.root();
    build(&store, "a", None, |t| fs::write(t.join("a"), "a").unwrap());
    build(&store, "b", Some("a"), |t| fs::write(t.join("b"), "b").unwrap());
    let b_layer = root.join("result").join(fs::read_link(root.join("result/b")).unwrap());
    let lower = b_layer.join("lower");
    let a_layer = fs::read_to_string(&lower).unwrap();
    fs::write(&lower, "damaged").unwrap();
    store.remove(&key("result/a")).unwrap();
    let err = store.complete_deletes().unwrap_err();
    assert!(err.message().contains("does not name a layer"), "{}", err.message());
    assert!(root.join("layers").join(&a_layer).is_dir(), "the layer b is built on was deleted");
    fs::write(&lower, &a_layer).unwrap();
    store.complete_deletes().unwrap();
    assert_eq!(read(&store, "b", "a"), "a");
    assert_eq!(read(&store, "b", "b"), "b");
}

#[test]
fn a_chain_of_1000_steps_builds() {
    // Tiny steps, no flush: this is about depth, not durability.
    let Some((fs, store)) = store(EXT4, "sync_on_commit = false") else { return };
    let root = fs.root();
    build(&store, "s0", None, |t| fs::write(t.join("0"), "0").unwrap());
    for i in 1..1000 {
        let base = format!("s{}", i - 1);
        build(&store, &format!("s{i}"), Some(&base), |t| fs::write(t.join(i.to_string()), "").unwrap());
        // Only the last step's view is kept: a real build farm asks for few.
        store.remove(&key(&format!("result/{base}"))).unwrap();
        assert!(depth(&root, "result", &format!("s{i}")) <= 128);
    }
    let last = store.path(&key("result/s999")).unwrap().unwrap();
    assert_eq!(fs::read_dir(&last).unwrap().count(), 1000, "every step's file is in the last tree");
    store.remove(&key("result/s999")).unwrap();
    store.complete_deletes().unwrap();
    assert_eq!(leftovers(&root), Vec::<std::path::PathBuf>::new());
    assert_eq!(mounts_under(&root), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_cache_released_many_times_keeps_a_short_chain() {
    let Some((fs, store)) = store(EXT4, "") else { return };
    let root = fs.root();
    let copy = store.create(&key("cache-tmp/first"), None).unwrap();
    fs::write(copy.join("count"), "0").unwrap();
    store.commit(&key("cache-tmp/first"), &key("cache/c.0"), None).unwrap();
    for i in 1..=100 {
        let (gen, next) = (key(&format!("cache/c.{}", i - 1)), key(&format!("cache/c.{i}")));
        let copy = store.clone_tree(&gen, &key(&format!("cache-tmp/t{i}"))).unwrap();
        let count: u32 = fs::read_to_string(copy.join("count")).unwrap().parse().unwrap();
        fs::write(copy.join("count"), (count + 1).to_string()).unwrap();
        fs::write(copy.join(format!("pkg{}", i % 10)), i.to_string()).unwrap();
        store.commit(&key(&format!("cache-tmp/t{i}")), &next, None).unwrap();
        store.remove(&gen).unwrap();
        assert!(depth(&root, "cache", &format!("c.{i}")) <= 8, "release {i}");
    }
    let tree = store.path(&key("cache/c.100")).unwrap().unwrap();
    assert_eq!(fs::read_to_string(tree.join("count")).unwrap(), "100");
    assert_eq!(fs::read_dir(&tree).unwrap().count(), 11);
    // Layers: at most one chain's worth (plus none leaked).
    store.complete_deletes().unwrap();
    assert!(fs::read_dir(root.join("layers")).unwrap().count() <= 8 + 1);
}

/// A tree's own `trusted.overlay.*` xattrs (set in a build on a base) are
/// kept, and never read as overlayfs' own: not after a flattening either.
#[test]
fn a_trees_own_overlay_xattrs_are_kept_and_inert() {
    let Some((_fs, store)) = store(EXT4, "max_depth = 2") else { return };
    build(&store, "base", None, |t| {
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/x"), "x").unwrap();
    });
    build(&store, "child", Some("base"), |t| {
        xattr::set(t.join("d"), "trusted.overlay.opaque", b"y").unwrap();
    });
    // base, child, grandchild: deeper than 2, so flattened.
    build(&store, "grandchild", Some("child"), |t| fs::write(t.join("g"), "").unwrap());
    for id in ["child", "grandchild"] {
        let tree = store.path(&key(&format!("result/{id}"))).unwrap().unwrap();
        assert_eq!(fs::read_to_string(tree.join("d/x")).unwrap(), "x", "{id}: d became opaque");
        assert_eq!(xattr::get(tree.join("d"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
    }
    build(&store, "great", Some("grandchild"), |_| {});
    let tree = store.path(&key("result/great")).unwrap().unwrap();
    assert_eq!(fs::read_to_string(tree.join("d/x")).unwrap(), "x", "d became opaque once flattened");
    assert_eq!(xattr::get(tree.join("d"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
}
