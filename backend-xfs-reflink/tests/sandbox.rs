//! What build sandboxes leave in trees (bind mounts, `chattr` flags) never
//! makes the backend delete or clone data outside the store, nor leaves
//! the trash stuck. On a loop XFS (reflink=1); needs root, skipped loudly
//! without it, and a failure on CI.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::LoopFs;
use store_api::{ErrorKind, Key, SnapshotBackend};
use test_support::sandbox::{bind, mounts_below, run_test_as_nobody, Outside, Unmount, NOBODY};

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

#[test]
fn removing_a_tree_never_deletes_through_a_bind_mount() {
    let Some(lfs) = LoopFs::new("removing_a_tree_never_deletes_through_a_bind_mount", "xfs", 512 << 20, "")
    else {
        return;
    };
    let _unmount = Unmount(lfs.mnt.clone());
    let other_fs = tempfile_dir();
    // One outside directory on the same filesystem (same st_dev), one on another.
    let (same_fs, other) = (lfs.mnt.join("outside"), other_fs.join("outside"));
    let (same_fs, other) = (Outside::new(&same_fs), Outside::new(&other));
    let backend = lfs.open("");
    // A build's tree, a result and a cache generation, each holding bind mounts.
    for (tmp, committed) in
        [("result-tmp/t", None), ("result-tmp/r", Some("result/r")), ("cache-tmp/c", Some("cache/c.1"))]
    {
        let tree = backend.create(&key(tmp), None).unwrap();
        fs::write(tree.join("own"), b"x").unwrap();
        bind(&same_fs.path, &tree.join("deep/same"));
        bind(&other.path, &tree.join("other"));
        bind(&same_fs.path.join("precious"), &tree.join("file"));
        let doomed = match committed {
            Some(dst) => {
                backend.commit(&key(tmp), &key(dst), None).unwrap();
                key(dst)
            }
            None => key(tmp),
        };
        backend.remove(&doomed).unwrap();
        assert_eq!(backend.path(&doomed).unwrap(), None, "{doomed} is gone");
        same_fs.assert_intact(&format!("removing {doomed}"));
        other.assert_intact(&format!("removing {doomed}"));
        assert!(mounts_below(&lfs.root()).is_empty(), "the mounts under {doomed} are gone");
    }
    backend.complete_deletes().unwrap();
    assert_eq!(fs::read_dir(lfs.root().join("trash")).unwrap().count(), 0, "the trash is empty");
    fs::remove_dir_all(&other_fs).unwrap();
}

#[test]
fn a_clone_never_crosses_a_bind_mount() {
    let Some(lfs) = LoopFs::new("a_clone_never_crosses_a_bind_mount", "xfs", 512 << 20, "") else {
        return;
    };
    let _unmount = Unmount(lfs.mnt.clone());
    let outside = Outside::new(&lfs.mnt.join("outside"));
    let backend = lfs.open("");
    for (point, from) in [("dir", outside.path.clone()), ("file", outside.path.join("precious"))] {
        let tree = backend.create(&key("result-tmp/t"), None).unwrap();
        bind(&from, &tree.join(point));
        backend.commit(&key("result-tmp/t"), &key("result/r"), None).unwrap();
        let err = backend.clone_tree(&key("result/r"), &key("result-tmp/c")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UNSUPPORTED, "{point}: {err}");
        assert!(err.message().contains("mount point") && !err.message().contains('\n'), "{err}");
        assert_eq!(backend.path(&key("result-tmp/c")).unwrap(), None, "{point}: no half clone is left");
        backend.remove(&key("result/r")).unwrap();
        outside.assert_intact(point);
    }
}

#[test]
fn immutable_and_append_only_files_in_a_result_are_removed() {
    let test = "immutable_and_append_only_files_in_a_result_are_removed";
    let Some(lfs) = LoopFs::new(test, "xfs", 512 << 20, "") else {
        return;
    };
    let backend = lfs.open("");
    let tree = backend.create(&key("result-tmp/x"), None).unwrap();
    fs::create_dir(tree.join("d")).unwrap();
    fs::write(tree.join("d/immutable"), b"i").unwrap();
    fs::write(tree.join("append-only"), b"a").unwrap();
    // The build made its own top directory immutable: it still commits.
    let status = Command::new("chattr").arg("+i").arg(&tree).status();
    if !status.is_ok_and(|s| s.success()) {
        return common::skip(test, "chattr is missing or failed");
    }
    let result = backend.commit(&key("result-tmp/x"), &key("result/x"), None).unwrap();
    for (flag, path) in [("+i", "d/immutable"), ("+a", "append-only"), ("+i", "d"), ("+i", "")] {
        let status = Command::new("chattr").arg(flag).arg(result.join(path)).status();
        if !status.is_ok_and(|s| s.success()) {
            return common::skip(test, "chattr is missing or failed");
        }
    }
    backend.remove(&key("result/x")).unwrap();
    assert_eq!(backend.path(&key("result/x")).unwrap(), None);
    backend.complete_deletes().unwrap();
    assert_eq!(fs::read_dir(lfs.root().join("trash")).unwrap().count(), 0, "nothing stuck in the trash");
}

/// A store run by a user who is not root cannot delete the files of
/// another user that a build left: that trash entry is stuck. It is
/// reported once and never blocks the other entries or complete_deletes.
#[test]
fn a_stuck_trash_entry_is_reported_once_and_blocks_nothing() {
    let Some(lfs) =
        LoopFs::new("a_stuck_trash_entry_is_reported_once_and_blocks_nothing", "xfs", 512 << 20, "")
    else {
        return;
    };
    let root = lfs.root();
    drop(lfs.open(""));
    let trash = root.join("trash");
    // Left by a process that died while deleting: one tree holding a
    // directory of root's, one of the store user's own.
    fs::create_dir_all(trash.join("del-stuck/roots")).unwrap();
    fs::write(trash.join("del-stuck/roots/file"), b"root's").unwrap();
    fs::create_dir_all(trash.join("del-fine/sub")).unwrap();
    fs::write(trash.join("del-fine/sub/file"), b"x").unwrap();
    let nobody = NOBODY;
    fs::set_permissions(&lfs.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let own = |p: &str| std::os::unix::fs::chown(root.join(p), Some(nobody), Some(nobody)).unwrap();
    for path in
        ["", "trash", "trash/del-stuck", "trash/del-fine", "trash/del-fine/sub", "trash/del-fine/sub/file"]
    {
        own(path);
    }
    let run = || run_test_as_nobody("complete_deletes_as_another_user", &root);
    let first = run();
    assert!(!trash.join("del-fine").exists(), "the other entry was deleted");
    assert_eq!(first.len(), 1, "reported once: {first:?}");
    assert!(first[0].contains("roots/file"), "the report names what is stuck: {}", first[0]);
    assert_eq!(run(), Vec::<String>::new(), "not reported again");
    lfs.open("").complete_deletes().unwrap();
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 0, "root deletes it later");
}

/// The child side of the test above, run by it in a child process (hence
/// ignored in a plain run, where it would have nothing to check).
#[test]
#[ignore = "run by the test above, in a child process"]
fn complete_deletes_as_another_user() {
    let root = std::env::var_os("SNAPSTORE_TEST_STORE").expect("run by the test above");
    snapstore_xfs_reflink::open(Path::new(&root), "").unwrap().complete_deletes().unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snapstore-xfs-sandbox-{}", store_api::util::random_token()));
    fs::create_dir(&dir).unwrap();
    dir
}
