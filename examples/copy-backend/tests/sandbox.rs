//! What build sandboxes leave in trees (bind mounts, `chattr` flags,
//! files of other users) never makes the copy backend delete data
//! outside the store, nor leaves the trash stuck. Needs root (mounts,
//! chattr); skipped loudly without it, and a failure on CI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use snapstore_copy::CopyBackend;
use store_api::{Key, SnapshotBackend};

/// The copy backend has no modes; one run.
const MODES: [&str; 1] = ["copy"];

fn open(root: &Path, _mode: &str) -> CopyBackend {
    snapstore_copy::open(root, "").unwrap()
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// Whether the test can run; skips loudly, or fails on CI.
fn can_run(test: &str) -> bool {
    let missing = if !nix::unistd::Uid::effective().is_root() {
        "needs root (mount, chattr)"
    } else {
        return true;
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} cannot run on CI: {missing}");
    eprintln!("\n*** SKIPPED {test}: {missing} ***\n");
    false
}

/// Every file below `dir` with its content, sorted: compared before and after.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push((path.clone(), Vec::new()));
            out.extend(contents(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// A directory outside the store, with data that must survive.
fn outside(base: &Path) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let dir = base.join("outside");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("precious"), b"do not delete").unwrap();
    fs::write(dir.join("sub/more"), vec![7u8; 10_000]).unwrap();
    let before = contents(&dir);
    (dir, before)
}

fn bind(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let status = Command::new("mount").arg("--bind").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "mount --bind {} {}", from.display(), to.display());
}

/// Mount points at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = fs::canonicalize(dir).unwrap().display().to_string();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Detaches what a failed test left mounted, so the temp dir can go.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        for point in mounts_below(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

#[test]
fn removing_a_tree_never_deletes_through_a_bind_mount() {
    if !can_run("removing_a_tree_never_deletes_through_a_bind_mount") {
        return;
    }
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let _unmount = Unmount(dir.path().to_path_buf());
        let (outside, before) = outside(dir.path());
        let root = dir.path().join("store");
        let backend = open(&root, mode);
        // A build's tree, a result and a cache generation, each holding a
        // bind mount of the outside directory.
        for (tmp, committed) in
            [("result-tmp/t", None), ("result-tmp/r", Some("result/r")), ("cache-tmp/c", Some("cache/c.1"))]
        {
            let tree = backend.create(&key(tmp), None).unwrap();
            fs::write(tree.join("own"), b"x").unwrap();
            bind(&outside, &tree.join("deep/mnt"));
            let doomed = match committed {
                Some(dst) => {
                    backend.commit(&key(tmp), &key(dst), None).unwrap();
                    key(dst)
                }
                None => key(tmp),
            };
            backend.remove(&doomed).unwrap();
            assert_eq!(backend.path(&doomed).unwrap(), None, "{mode}: {doomed} is gone");
            assert_eq!(contents(&outside), before, "{mode}: removing {doomed} kept the outside data");
            assert!(mounts_below(&root).is_empty(), "{mode}: the mount under {doomed} is gone");
        }
        backend.complete_deletes().unwrap();
        assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0, "{mode}: the trash is empty");
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
        let result = backend.commit(&key("result-tmp/x"), &key("result/x"), None).unwrap();
        if !chattr("+i", &result.join("d/immutable")) || !chattr("+a", &result.join("append-only")) {
            return;
        }
        assert!(chattr("+i", &result.join("d")));
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
    let nobody = 65534;
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
    let run = || {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "complete_deletes_as_another_user",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SNAPSTORE_TEST_STORE", &root)
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "complete_deletes failed: {stderr}");
        stderr.lines().filter(|l| l.starts_with("warning:")).map(String::from).collect::<Vec<_>>()
    };
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

use std::os::unix::process::CommandExt;

/// The child side of the test above, run by it in a child process (hence
/// ignored in a plain run, where it would have nothing to check).
#[test]
#[ignore = "run by the test above, in a child process"]
fn complete_deletes_as_another_user() {
    let root = std::env::var_os("SNAPSTORE_TEST_STORE").expect("run by the test above");
    open(Path::new(&root), "copy").complete_deletes().unwrap();
}
