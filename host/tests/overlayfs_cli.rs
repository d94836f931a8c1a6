//! The store contract through the CLI with the overlayfs backend, on a
//! real loop-mounted ext4 and XFS; and the roots `check` refuses.

mod support;

use std::process::Command;

use support::contract::run_contract;
use support::*;

/// The mounts under `root` in this mount namespace (the CLI's too).
fn mounts_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    store_api::util::mounts::mounts_under(root).unwrap()
}

fn contract_on(mkfs: &[&str]) {
    let Some((_fs, f)) = loop_store(mkfs, "1G", "overlayfs", "") else {
        return;
    };
    f.ok(&["init"]);
    let check = f.ok(&["check"]);
    assert!(check.contains("overlayfs: a writable overlay mounts"), "{check}");
    run_contract(&f);
    f.ok(&["conformance"]);
    let stress = f.ok(&["stress", "--jobs", "30", "--parallel", "4"]);
    assert!(stress.contains("failures 0"), "{stress}");

    // A result is the whole tree, read-only, and a deleted base keeps 5
    // children intact.
    f.ok(&["build", "base", "--", "sh", "-c", "echo base > b && mkdir d && echo x > d/x"]);
    for i in 0..5 {
        let step = format!("echo {i} > c && rm -r d && mkdir d");
        f.ok(&["build", &format!("c{i}"), "--base", "base", "--", "sh", "-c", &step]);
    }
    f.ok(&["delete", "base"]);
    f.ok(&["complete-deletes"]);
    for i in 0..5 {
        let id = format!("c{i}");
        assert_eq!(f.read_result(&id, "b"), "base\n");
        assert_eq!(f.read_result(&id, "c"), format!("{i}\n"));
        let tree = f.result(&id).unwrap();
        assert!(!tree.join("d/x").exists(), "a replaced directory kept its entries");
        assert!(std::fs::write(tree.join("new"), "").is_err(), "a result is writable");
    }
    // Everything deleted: nothing left in the store, no mount.
    for i in 0..5 {
        f.ok(&["delete", &format!("c{i}")]);
    }
    f.ok(&["complete-deletes"]);
    for dir in ["result", "result-tmp", "cache", "cache-tmp", "trash"] {
        let left: Vec<_> = std::fs::read_dir(f.root.join(dir)).unwrap().collect();
        assert!(left.is_empty(), "{dir} holds {left:?}");
    }
    let layers: Vec<_> = std::fs::read_dir(f.root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(layers.is_empty(), "layers left: {layers:?}");
    assert_eq!(mounts_under(&f.root), Vec::<std::path::PathBuf>::new());
}

#[test]
fn contract_on_ext4() {
    contract_on(&["mkfs.ext4", "-q"]);
}

#[test]
fn contract_on_xfs() {
    contract_on(&["mkfs.xfs", "-q"]);
}

/// A build killed in its commit after the overlay was unmounted and its
/// work directory removed, but before its key went: the backend gives no
/// path for such a tree (it is half-made), and recovery still removes it.
#[test]
fn a_commit_killed_after_the_unmount_is_recovered() {
    let Some((_fs, f)) = loop_store(&["mkfs.ext4", "-q"], "256M", "overlayfs", "") else {
        return;
    };
    f.ok(&["build", "base", "--", "sh", "-c", "echo base > b"]);
    let mut build = f.command(&["build", "step", "--base", "base", "--", "sleep", "600"]).spawn().unwrap();
    let tmp = f.root.join("result-tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let link = loop {
        if let Some(entry) = std::fs::read_dir(&tmp).unwrap().next() {
            break entry.unwrap().path();
        }
        assert!(std::time::Instant::now() < deadline, "the build never made its tree");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Mounted: the command runs in it.
    let layer = std::fs::canonicalize(&link).unwrap();
    while !mounts_under(&f.root).contains(&layer.join("tree")) {
        assert!(std::time::Instant::now() < deadline, "the build's overlay never mounted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    build.kill().unwrap();
    build.wait().unwrap();
    f.wait_until_unlocked();
    // What the commit's first half leaves: no overlay, no work directory.
    store_api::util::mounts::detach_mounts_under(&layer.join("tree")).unwrap();
    std::fs::remove_dir_all(layer.join("work")).unwrap();

    f.ok(&["complete-deletes"]);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "result-tmp holds {left:?}");
    assert!(!layer.exists(), "the killed build's layer {} is left", layer.display());
    assert_eq!(f.read_result("base", "b"), "base\n");
    f.ok(&["build", "step", "--base", "base", "--", "sh", "-c", "cat b > c"]);
    assert_eq!(f.read_result("step", "c"), "base\n");
}

/// A store of this backend at `root`, which `init` must refuse with exit
/// status `code` and a message holding `why`.
fn refused(root: &std::path::Path, code: i32, why: &str) {
    require_plugin("overlayfs");
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[store]\nbackend = \"overlayfs\"\nroot = \"{}\"\n", root.display());
    let f = Fixture::with_config(dir, root, &text);
    let err = f.fails(&["init"], code);
    assert!(err.contains(why), "{err}");
    assert!(!root.exists(), "a refused root was created");
}

#[test]
fn a_root_on_tmpfs_is_refused() {
    if !is_root() {
        return skip("mounting a tmpfs needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(dir.path()).status().unwrap();
    assert!(status.success());
    refused(&dir.path().join("store"), 69, "tmpfs");
    Command::new("umount").arg(dir.path()).status().unwrap();
}

/// A filesystem whose directories do not record file types (`d_type`),
/// which overlayfs needs: ext4 made without `filetype` (like XFS with
/// `ftype=0`, which new kernels no longer mount).
#[test]
fn a_filesystem_without_file_types_is_refused() {
    if !is_root() {
        return skip("loop filesystems need root");
    }
    let fs = match LoopFs::create(&["mkfs.ext4", "-q", "-O", "^filetype"], "256M", "") {
        Ok(fs) => fs,
        Err(why) => return skip(&format!("cannot make an ext4 without file types: {why}")),
    };
    refused(&fs.root().join("store"), 69, "without file types in directories");
}

#[test]
fn a_root_on_an_overlay_is_refused() {
    if !is_root() {
        return skip("mounting an overlay needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let p = |sub: &str| dir.path().join(sub).display().to_string();
    let options = format!("lowerdir={},upperdir={},workdir={}", p("lower"), p("upper"), p("work"));
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options, &p("merged")])
        .status()
        .unwrap();
    assert!(status.success());
    refused(&dir.path().join("merged/store"), 69, "an overlay");
    Command::new("umount").arg(p("merged")).status().unwrap();
}
