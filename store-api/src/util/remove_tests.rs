use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;
use crate::util::{mounts, unique_name};

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("snapstore-{what}")));
    fs::create_dir(&dir).unwrap();
    dir
}

/// Skips loudly without root, and fails on CI (which runs as root).
fn is_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root, and CI runs as root");
    eprintln!("*** SKIPPED {test}: needs root ***");
    false
}

/// Everything below `dir`, as (relative path, content) sorted: what must stay.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(
                snapshot(&path).into_iter().map(|(p, c)| (Path::new(path.file_name().unwrap()).join(p), c)),
            );
        } else {
            out.push((PathBuf::from(path.file_name().unwrap()), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

fn outside_with_data() -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let outside = temp_dir("outside");
    fs::create_dir(outside.join("sub")).unwrap();
    fs::write(outside.join("keep"), b"precious").unwrap();
    fs::write(outside.join("sub/deep"), b"also precious").unwrap();
    let before = snapshot(&outside);
    assert_eq!(before.len(), 2);
    (outside, before)
}

#[test]
fn removes_locked_up_trees_and_never_follows_symlinks() {
    let (outside, before) = outside_with_data();
    let tree = temp_dir("tree");
    fs::create_dir_all(tree.join("a/b/c")).unwrap();
    fs::write(tree.join("a/b/c/f"), b"x").unwrap();
    symlink(&outside, tree.join("a/link-to-outside")).unwrap();
    symlink(outside.join("keep"), tree.join("a/b/link-to-file")).unwrap();
    fs::set_permissions(tree.join("a/b/c"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o555)).unwrap();
    remove_tree(&tree).unwrap();
    assert!(fs::symlink_metadata(&tree).is_err(), "the tree is gone");
    assert_eq!(snapshot(&outside), before, "nothing outside was touched");
    remove_tree(&tree).unwrap(); // absent: fine

    // A symlink as the tree itself: the link goes, its target stays.
    let link = std::env::temp_dir().join(unique_name("snapstore-link"));
    symlink(&outside, &link).unwrap();
    remove_tree(&link).unwrap();
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(snapshot(&outside), before);
    fs::remove_dir_all(&outside).unwrap();
}

/// A locked-up tree (a directory of mode 000 in one of mode 555) is
/// removed by its owner when that is not root, for whom modes count: the
/// removal makes each directory writable before it empties it. (For root,
/// the test above, modes change nothing.) The removal runs in this test
/// binary run again as `nobody`.
#[test]
fn removes_a_locked_up_tree_as_its_owner() {
    if let Ok(tree) = std::env::var("SNAPSTORE_TEST_LOCKED_TREE") {
        remove_tree(Path::new(&tree)).unwrap();
        return;
    }
    if !is_root("removes_a_locked_up_tree_as_its_owner") {
        return;
    }
    const NOBODY: u32 = 65534;
    // In a directory of nobody's own, who must be able to unlink the tree
    // ($TMPDIR may be root's, mode 755).
    let parent = temp_dir("locked");
    let tree = parent.join("tree");
    fs::create_dir_all(tree.join("a/b/c")).unwrap();
    fs::write(tree.join("a/b/c/f"), b"x").unwrap();
    for path in ["..", "", "a", "a/b", "a/b/c", "a/b/c/f"] {
        std::os::unix::fs::lchown(tree.join(path), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    fs::set_permissions(tree.join("a/b/c"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o555)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "util::remove::tests::removes_a_locked_up_tree_as_its_owner", "--nocapture"])
        .env("SNAPSTORE_TEST_LOCKED_TREE", &tree)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the removal as nobody failed: {stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "the run as nobody did not run the test: {stdout}");
    assert!(fs::symlink_metadata(&tree).is_err(), "the locked-up tree is left");
    fs::remove_dir(&parent).unwrap();
}

#[test]
fn bind_mounts_inside_are_detached_and_their_data_kept() {
    if !is_root("bind_mounts_inside_are_detached_and_their_data_kept") {
        return;
    }
    let (outside, before) = outside_with_data();
    let tree = temp_dir("tree");
    for point in ["mnt", "deep/er/mnt", "file-mnt"] {
        let at = tree.join(point);
        if point == "file-mnt" {
            fs::write(&at, b"").unwrap();
            rustix::mount::mount_bind(outside.join("keep"), &at).unwrap();
        } else {
            fs::create_dir_all(&at).unwrap();
            rustix::mount::mount_bind(&outside, &at).unwrap();
        }
    }
    assert_eq!(mounts::mounts_under(&tree).unwrap().len(), 3);
    remove_tree(&tree).unwrap();
    assert!(fs::symlink_metadata(&tree).is_err(), "the tree is gone");
    assert!(mounts::mounts_under(&std::env::temp_dir()).unwrap().iter().all(|m| !m.starts_with(&tree)));
    assert_eq!(snapshot(&outside), before, "the mounted data is intact");
    fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn a_mount_met_during_the_walk_is_refused_and_left_intact() {
    if !is_root("a_mount_met_during_the_walk_is_refused_and_left_intact") {
        return;
    }
    let (outside, before) = outside_with_data();
    let tree = temp_dir("tree");
    let point = tree.join("x/mnt");
    fs::create_dir_all(&point).unwrap();
    fs::write(tree.join("x/other"), b"").unwrap();
    rustix::mount::mount_bind(&outside, &point).unwrap();
    // As if the mount appeared after the detach step.
    let err = remove_without_detaching(&tree).unwrap_err();
    let shown = err.to_string();
    let ok = shown.contains(&point.display().to_string())
        && shown.contains("mount point")
        && !shown.contains('\n');
    let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    assert!(ok, "one line naming the mount: {shown}");
    assert_eq!(snapshot(&outside), before, "nothing was deleted through the mount");
    remove_tree(&tree).unwrap();
    fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn immutable_and_append_only_entries_are_removed() {
    if !is_root("immutable_and_append_only_entries_are_removed") {
        return;
    }
    let tree = temp_dir("tree");
    fs::create_dir_all(tree.join("d/immutable-dir")).unwrap();
    fs::write(tree.join("d/immutable-dir/f"), b"x").unwrap();
    fs::write(tree.join("d/immutable"), b"x").unwrap();
    fs::write(tree.join("d/append-only"), b"x").unwrap();
    fs::create_dir(tree.join("append-dir")).unwrap();
    fs::write(tree.join("append-dir/f"), b"x").unwrap();
    let set = |rel: &str, flag: IFlags| {
        let file = fs::File::open(tree.join(rel)).unwrap();
        let flags = ioctl_getflags(&file).unwrap();
        ioctl_setflags(&file, flags | flag)
    };
    if let Err(e) = set("d/immutable", IFlags::IMMUTABLE) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chattr unsupported: {e}");
        eprintln!(
            "*** SKIPPED immutable_and_append_only_entries_are_removed: no chattr flags here ({e}) ***"
        );
        return;
    }
    set("d/append-only", IFlags::APPEND).unwrap();
    set("d/immutable-dir", IFlags::IMMUTABLE).unwrap();
    set("append-dir", IFlags::APPEND).unwrap();
    assert!(fs::remove_file(tree.join("d/immutable")).is_err(), "the flag holds");
    remove_tree(&tree).unwrap();
    assert!(fs::symlink_metadata(&tree).is_err(), "the tree is gone");
}

#[test]
fn flags_outside_the_tree_are_left_alone() {
    if !is_root("flags_outside_the_tree_are_left_alone") {
        return;
    }
    let parent = temp_dir("parent");
    fs::create_dir(parent.join("tree")).unwrap();
    let dir = fs::File::open(&parent).unwrap();
    let flags = ioctl_getflags(&dir).unwrap();
    ioctl_setflags(&dir, flags | IFlags::IMMUTABLE).unwrap();
    let result = remove_tree(&parent.join("tree"));
    let still = ioctl_getflags(&dir).unwrap();
    ioctl_setflags(&dir, flags).unwrap();
    assert!(still.contains(IFlags::IMMUTABLE), "the parent, outside the tree, keeps its flag");
    assert!(result
        .unwrap_err()
        .message()
        .starts_with(&format!("cannot remove {}", parent.join("tree").display())));
    fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn paths_that_are_not_trees_are_refused() {
    for path in ["/", "/tmp/..", ".."] {
        let err = remove_tree(Path::new(path)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::INVALID_INPUT, "{path}: {err}");
    }
}

#[test]
fn concurrent_removals_of_one_tree_both_succeed() {
    let tree = temp_dir("tree");
    for i in 0..40 {
        let dir = tree.join(format!("d{i}/e"));
        fs::create_dir_all(&dir).unwrap();
        for j in 0..50 {
            fs::write(dir.join(j.to_string()), b"x").unwrap();
        }
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| remove_tree(&tree));
        let b = s.spawn(|| remove_tree(&tree));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.unwrap();
    b.unwrap();
    assert!(fs::symlink_metadata(&tree).is_err());
}

#[test]
fn deep_trees_are_removed_and_too_deep_ones_refused() {
    let tree = temp_dir("tree");
    let deep: PathBuf = ["d"; 1500].iter().collect();
    fs::create_dir_all(tree.join(&deep)).unwrap();
    fs::write(tree.join(&deep).join("f"), b"x").unwrap();
    remove_tree(&tree).unwrap();
    assert!(fs::symlink_metadata(&tree).is_err());

    // Deeper than the walk goes: a one-line error, nothing half-done
    // outside the tree.
    let tree = temp_dir("tree");
    let dir = fs::File::open(&tree).unwrap();
    let mut fd: OwnedFd = dir.into();
    for _ in 0..MAX_DEPTH + 1 {
        rustix::fs::mkdirat(&fd, "d", Mode::RWXU).unwrap();
        fd = openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let err = remove_tree(&tree).unwrap_err();
    assert!(err.message().contains("deeper than"), "{err}");
    // Clean up: the bottom part first, reached through a descriptor.
    while remove_tree(&tree).is_err() {
        let mut at = fs::File::open(&tree).unwrap().into();
        for _ in 0..MAX_DEPTH - 10 {
            at = openat(&at, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        let inner = format!("/proc/self/fd/{}/d", at.as_raw_fd());
        remove_tree(Path::new(&inner)).unwrap();
    }
    assert!(fs::symlink_metadata(&tree).is_err());
}
