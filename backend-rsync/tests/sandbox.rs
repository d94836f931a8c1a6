//! What build sandboxes leave in trees (bind mounts, `chattr` flags,
//! files of other users) never makes the backend delete or copy data
//! outside the store, nor leaves the trash stuck. Needs root (mounts,
//! chattr); skipped loudly without it, and a failure on CI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use snapstore_rsync::Rsync;
use store_api::{Key, SnapshotBackend};
use test_support::sandbox::{bind, mounts_below, run_test_as_nobody, Outside, Unmount, NOBODY};

/// The commit modes, and both ways of copying a tree.
const MODES: [&str; 4] = ["copy", "hardlink", "hardlink_unsafe", "copy = \"rsync\""];

/// A store with `mode = MODE`, or with the options given (`key = value`).
fn open(root: &Path, mode: &str) -> Rsync {
    let options = if mode.contains('=') { mode.to_string() } else { format!("mode = \"{mode}\"") };
    snapstore_rsync::open(root, &options).unwrap()
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// Whether the test can run; skips loudly, or fails on CI.
fn can_run(test: &str) -> bool {
    let missing = if !nix::unistd::Uid::effective().is_root() {
        "needs root (mount, chattr)"
    } else if Command::new("rsync").arg("--version").output().is_err() {
        "needs rsync"
    } else {
        return true;
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} cannot run on CI: {missing}");
    eprintln!("\n*** SKIPPED {test}: {missing} ***\n");
    false
}

/// A store in `mode` and an outside directory beside it, in a temporary
/// directory; what a failed test left mounted there is detached first.
struct Scene {
    _unmount: Unmount,
    outside: Outside,
    root: PathBuf,
    backend: Rsync,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn new(mode: &str) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Scene {
            _unmount: Unmount(dir.path().to_path_buf()),
            outside: Outside::new(&dir.path().join("outside")),
            backend: open(&root, mode),
            root,
            _dir: dir,
        }
    }
}

#[test]
fn removing_a_tree_never_deletes_through_a_bind_mount() {
    if !can_run("removing_a_tree_never_deletes_through_a_bind_mount") {
        return;
    }
    for mode in MODES {
        let scene = Scene::new(mode);
        let (outside, root, backend) = (&scene.outside, &scene.root, &scene.backend);
        // A build's tree, a result and a cache generation, each holding a
        // bind mount of the outside directory.
        for (tmp, committed) in
            [("result-tmp/t", None), ("result-tmp/r", Some("result/r")), ("cache-tmp/c", Some("cache/c.1"))]
        {
            let tree = backend.create(&key(tmp), None).unwrap();
            fs::write(tree.join("own"), b"x").unwrap();
            bind(&outside.path, &tree.join("deep/mnt"));
            let doomed = match committed {
                Some(dst) => {
                    backend.commit(&key(tmp), &key(dst), None).unwrap();
                    key(dst)
                }
                None => key(tmp),
            };
            backend.remove(&doomed).unwrap();
            assert_eq!(backend.path(&doomed).unwrap(), None, "{mode}: {doomed} is gone");
            outside.assert_intact(&format!("{mode}: removing {doomed} kept the outside data"));
            assert!(mounts_below(root).is_empty(), "{mode}: the mount under {doomed} is gone");
        }
        backend.complete_deletes().unwrap();
        assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0, "{mode}: the trash is empty");
    }
}

#[test]
fn hardlink_commit_never_copies_or_deletes_through_a_bind_mount() {
    if !can_run("hardlink_commit_never_copies_or_deletes_through_a_bind_mount") {
        return;
    }
    for mode in ["hardlink", "hardlink_unsafe"] {
        let scene = Scene::new(mode);
        let (outside, root, backend) = (&scene.outside, &scene.root, &scene.backend);
        let base = backend.create(&key("result-tmp/base"), None).unwrap();
        fs::write(base.join("shared"), b"same").unwrap();
        backend.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();
        let tree = backend.clone_tree(&key("result/base"), &key("result-tmp/t")).unwrap();
        bind(&outside.path, &tree.join("mnt"));
        let result =
            backend.commit(&key("result-tmp/t"), &key("result/t"), Some(&key("result/base"))).unwrap();
        outside.assert_intact(&format!("{mode}: the commit kept the outside data"));
        assert!(mounts_below(root).is_empty(), "{mode}: no mount is left in the store");
        assert_eq!(
            fs::read_dir(result.join("mnt")).unwrap().count(),
            0,
            "{mode}: nothing copied from the mount"
        );
        assert_eq!(fs::read(result.join("shared")).unwrap(), b"same");
        assert_eq!(backend.path(&key("result-tmp/t")).unwrap(), None, "{mode}: the tmp tree is gone");
    }
}

#[test]
fn a_clone_never_reads_through_a_bind_mount() {
    if !can_run("a_clone_never_reads_through_a_bind_mount") {
        return;
    }
    for mode in MODES {
        let scene = Scene::new(mode);
        let (outside, backend) = (&scene.outside, &scene.backend);
        let tree = backend.create(&key("result-tmp/t"), None).unwrap();
        bind(&outside.path, &tree.join("mnt"));
        backend.commit(&key("result-tmp/t"), &key("result/r"), None).unwrap();
        let err = backend.clone_tree(&key("result/r"), &key("result-tmp/c")).unwrap_err();
        assert!(err.message().contains("mount point") && !err.message().contains('\n'), "{mode}: {err}");
        assert_eq!(backend.path(&key("result-tmp/c")).unwrap(), None, "{mode}: nothing copied");
        backend.remove(&key("result/r")).unwrap();
        outside.assert_intact(&format!("{mode}: the outside data is intact"));
    }
}

/// `chattr` on `path`; false (after a loud skip) if the tool or the
/// filesystem cannot.
fn chattr(flag: &str, path: &Path) -> bool {
    match Command::new("chattr").arg(flag).arg(path).output() {
        Ok(out) if out.status.success() => true,
        other => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "chattr {flag} failed: {other:?}");
            eprintln!("\n*** SKIPPED: chattr {flag} {} failed: {other:?} ***\n", path.display());
            false
        }
    }
}

#[test]
fn immutable_and_append_only_files_in_a_result_are_removed() {
    if !can_run("immutable_and_append_only_files_in_a_result_are_removed") {
        return;
    }
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let backend = open(&root, mode);
        let tree = backend.create(&key("result-tmp/x"), None).unwrap();
        fs::create_dir(tree.join("d")).unwrap();
        fs::write(tree.join("d/immutable"), b"i").unwrap();
        fs::write(tree.join("append-only"), b"a").unwrap();
        // The build made its own top directory immutable: it still commits.
        if !chattr("+i", &tree) {
            return;
        }
        let result = backend.commit(&key("result-tmp/x"), &key("result/x"), None).unwrap();
        if !chattr("+i", &result.join("d/immutable")) || !chattr("+a", &result.join("append-only")) {
            return;
        }
        assert!(chattr("+i", &result.join("d")) && chattr("+i", &result));
        backend.remove(&key("result/x")).unwrap();
        assert_eq!(backend.path(&key("result/x")).unwrap(), None, "{mode}");
        backend.complete_deletes().unwrap();
        assert_eq!(
            fs::read_dir(root.join("trash")).unwrap().count(),
            0,
            "{mode}: nothing stuck in the trash"
        );
    }
}

/// A store run by a user who is not root cannot delete the files of
/// another user that a build left: that trash entry is stuck. It is
/// reported once and never blocks the other entries or complete_deletes.
#[test]
fn a_stuck_trash_entry_is_reported_once_and_blocks_nothing() {
    if !can_run("a_stuck_trash_entry_is_reported_once_and_blocks_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("store");
    open(&root, "copy");
    let trash = root.join("trash");
    // Left by a process that died while deleting: one tree holding a
    // directory of root's, one of the store user's own.
    fs::create_dir_all(trash.join("del-stuck/roots")).unwrap();
    fs::write(trash.join("del-stuck/roots/file"), b"root's").unwrap();
    fs::create_dir_all(trash.join("del-fine/sub")).unwrap();
    fs::write(trash.join("del-fine/sub/file"), b"x").unwrap();
    let nobody = NOBODY;
    let own = |p: &Path| std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
    for path in
        [&root, &trash, &trash.join("del-stuck"), &trash.join("del-fine"), &trash.join("del-fine/sub")]
    {
        own(path);
    }
    own(&trash.join("del-fine/sub/file"));
    for path in ["result", "result-tmp", "cache", "cache-tmp"] {
        own(&root.join(path));
    }
    let run = || run_test_as_nobody("complete_deletes_as_another_user", &root);
    let first = run();
    assert!(!trash.join("del-fine").exists(), "the other entry was deleted");
    assert_eq!(first.len(), 1, "reported once: {first:?}");
    assert!(first[0].contains("roots/file"), "the report names what is stuck: {}", first[0]);
    assert_eq!(run(), Vec::<String>::new(), "not reported again");
    assert!(fs::read_dir(&trash).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("stuck-")));
    assert!(open(&root, "copy").complete_deletes().is_ok(), "root can delete it later");
    assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
}

/// The child side of the test above, run by it in a child process (hence
/// ignored in a plain run, where it would have nothing to check).
#[test]
#[ignore = "run by the test above, in a child process"]
fn complete_deletes_as_another_user() {
    let root = std::env::var_os("SNAPSTORE_TEST_STORE").expect("run by the test above");
    open(Path::new(&root), "copy").complete_deletes().unwrap();
}
