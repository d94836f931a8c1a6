//! Tests of the copy backend, linked in directly (no plugin build needed).
//! The first one is the one to copy into your own backend: snapstore's
//! conformance suite, run in-process on a store over your backend.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use snapstore::BlockingStore;
use snapstore_copy::CopyBackend;
use store_api::{ErrorKind, Key, Namespace, SnapshotBackend};

fn open(root: &Path) -> CopyBackend {
    snapstore_copy::open(root, "").unwrap()
}

#[test]
fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = BlockingStore::with_backend(&root, "copy", Box::new(open(&root))).unwrap();
    let report = snapstore::conformance::run(&store, |case| println!("{case}"));
    assert!(report.passed(), "{} conformance cases failed", report.failures());
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

#[test]
fn clones_keep_types_modes_times_and_hard_links() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let tree = backend.create(&key("result-tmp/a"), None).unwrap();
    fs::create_dir(tree.join("d")).unwrap();
    fs::write(tree.join("d/f"), "x").unwrap();
    fs::hard_link(tree.join("d/f"), tree.join("hard")).unwrap();
    std::os::unix::fs::symlink("nowhere", tree.join("link")).unwrap();
    fs::set_permissions(tree.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::create_dir(tree.join("ro")).unwrap();
    fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    backend.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();

    let copy = backend.clone_tree(&key("result/a"), &key("result-tmp/b")).unwrap();
    let original = backend.path(&key("result/a")).unwrap().unwrap();
    for name in ["d", "d/f", "hard", "link", "ro"] {
        let (a, b) = (
            fs::symlink_metadata(original.join(name)).unwrap(),
            fs::symlink_metadata(copy.join(name)).unwrap(),
        );
        let shape = |m: &fs::Metadata| (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec(), m.nlink());
        assert_eq!(shape(&a), shape(&b), "{name}");
    }
    assert_eq!(fs::metadata(copy.join("hard")).unwrap().ino(), fs::metadata(copy.join("d/f")).unwrap().ino());
    assert_eq!(fs::read_link(copy.join("link")).unwrap(), Path::new("nowhere"));

    // A clone is independent of its source.
    fs::write(copy.join("d/f"), "changed").unwrap();
    assert_eq!(fs::read_to_string(original.join("d/f")).unwrap(), "x");
}

#[test]
fn commit_never_replaces_and_remove_copes_with_any_tree() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    backend.create(&key("result-tmp/a"), None).unwrap();
    backend.create(&key("result-tmp/b"), None).unwrap();
    backend.commit(&key("result-tmp/a"), &key("result/x"), None).unwrap();
    let err = backend.commit(&key("result-tmp/b"), &key("result/x"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS);

    // A tree a build left unreadable and unwritable is still removed.
    let tree = backend.path(&key("result-tmp/b")).unwrap().unwrap();
    fs::create_dir_all(tree.join("locked/inner")).unwrap();
    fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    backend.remove(&key("result-tmp/b")).unwrap();
    backend.remove(&key("result-tmp/b")).unwrap(); // absent: fine
    assert!(backend.path(&key("result-tmp/b")).unwrap().is_none());
    assert_eq!(backend.list(Namespace::Result).unwrap(), ["x"]);
}

#[test]
fn complete_deletes_finishes_what_a_dead_process_left_in_the_trash() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    // As if a process died half-way through deleting: a tree and a free lock.
    fs::create_dir_all(dir.path().join("trash/del-0123456789abcdef/half")).unwrap();
    fs::write(dir.path().join("trash/del-0123456789abcdef.lock"), "").unwrap();
    // A lock file whose tree is already gone, and something that is not ours.
    fs::write(dir.path().join("trash/del-fedcba9876543210.lock"), "").unwrap();
    fs::write(dir.path().join("trash/operator-notes"), "keep").unwrap();
    backend.recover().unwrap();
    backend.complete_deletes().unwrap();
    let mut left: Vec<String> = fs::read_dir(dir.path().join("trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["operator-notes"]);
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    assert!(snapstore_copy::open(dir.path(), "sync = false").is_ok());
    let err = snapstore_copy::open(dir.path(), "synk = false").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT);
    assert!(err.message().contains("synk"), "{err}");
}
