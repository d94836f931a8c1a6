//! Which directories may be a store's root: `/` and system directories,
//! directories holding anything but a store, and roots inside or around
//! another store are refused, with one line saying what to do; nothing is
//! created or removed there.

mod support;

use std::fs;
use std::path::Path;

use support::*;

fn store_at(dir: tempfile::TempDir, root: &Path) -> Fixture {
    let text = format!("[store]\nbackend = \"rsync\"\nroot = \"{}\"\n", root.display());
    Fixture::with_config(dir, root, &text)
}

/// A store config for `root`, in a directory of its own.
fn config_for(root: &Path) -> Fixture {
    require_plugin("rsync");
    store_at(tempfile::tempdir().unwrap(), root)
}

fn refused(root: &Path, expected: &str) {
    let f = config_for(root);
    let err = f.fails(&["build", "x", "--", "true"], EXIT_USAGE);
    assert!(err.contains(expected) && err.contains("set root"), "{}: {err}", root.display());
}

/// Checked through the library: a snapstore without the check would
/// write into `/` through the CLI.
#[test]
fn system_directories_are_refused() {
    let refused = |dir: &Path| {
        let err = snapstore::internal::root::validate(dir).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("system directory") && msg.contains("set root"), "{}: {msg}", dir.display());
        assert!(!msg.contains('\n'));
    };
    for dir in ["/", "/usr", "/etc", "/tmp", "/var/lib", "/home", "/dev", "/proc", "/root"] {
        refused(Path::new(dir));
    }
    // Through a symlink too.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("/usr", &link).unwrap();
    refused(&link);
}

#[test]
fn a_directory_holding_other_things_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("full");
    fs::create_dir_all(root.join("trash")).unwrap();
    fs::write(root.join("trash/x"), "mine").unwrap();
    refused(&root, "not empty and is not a snapstore store");
    assert_eq!(fs::read_to_string(root.join("trash/x")).unwrap(), "mine");
    assert_eq!(fs::read_dir(&root).unwrap().count(), 1, "something was created in the refused root");
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    refused(&file, "not a directory");
}

#[test]
fn a_root_inside_or_around_another_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outer = config_for(&dir.path().join("outer"));
    outer.ok(&["build", "a", "--", "true"]);
    for inner in ["result-tmp/inner", "state/inner", "result/a/inner", ".snapstore/x", "new/deeper"] {
        refused(&outer.root.join(inner), "is inside the store");
    }
    refused(dir.path(), "contains the store");
    outer.ok(&["build", "b", "--", "true"]);
    assert!(!outer.root.join("new").exists());
}

#[test]
fn new_empty_and_existing_stores_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // A new directory, an empty one, and a store reopened.
    let fresh = config_for(&dir.path().join("a/b/fresh"));
    fresh.ok(&["build", "x", "--", "true"]);
    fresh.ok(&["build", "y", "--", "true"]);
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    config_for(&empty).ok(&["build", "x", "--", "true"]);
    // One left half laid out (killed before the marker was written).
    let half = dir.path().join("half");
    for sub in ["result", "result-tmp", "cache", "cache-tmp", "trash", "state", ".snapstore/locks/build"] {
        fs::create_dir_all(half.join(sub)).unwrap();
    }
    config_for(&half).ok(&["build", "x", "--", "true"]);
    // A fresh filesystem's mount point (with its empty lost+found).
    let mount = dir.path().join("mount");
    fs::create_dir_all(mount.join("lost+found")).unwrap();
    config_for(&mount).ok(&["root"]);
}
