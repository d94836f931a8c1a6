//! `snapstore destroy` on every backend: confirmation, refusal while the
//! store is in use, and nothing left of the store afterwards, nothing
//! touched outside it.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use test_support::sandbox::Outside;

/// Fills the store with results (one holding a symlink to `outside`),
/// caches, a held lease and a deleted result.
fn fill(f: &Fixture, outside: &std::path::Path) {
    let link = format!("echo b > f; ln -s {} out", outside.display());
    f.ok(&["build", "base", "--", "sh", "-c", &link]);
    f.ok(&["build", "child", "--base", "base", "--", "sh", "-c", "echo c >> f"]);
    f.ok(&["build", "gone", "--", "true"]);
    f.ok(&["delete", "gone"]);
    f.ok(&["cache", "run", "downloads", "--", "sh", "-c", "echo d > d"]);
    f.ok(&["cache", "acquire", "held"]);
}

/// Waits until the build `id` holds its lock (its command runs).
fn wait_for_build(f: &Fixture, marker: &std::path::Path) {
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the build never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = f;
}

fn destroy_scenario(f: &Fixture) {
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = Outside::new(&outside_dir.path().join("data"));
    fill(f, &outside.path);

    // Without --yes and without a terminal: refused, nothing removed.
    let err = f.fails(&["destroy"], EXIT_USAGE);
    assert!(err.contains("--yes"), "{err}");
    assert!(f.result("child").is_some(), "a refused destroy removed a result");

    // While a build runs: busy, nothing removed.
    let marker = outside_dir.path().join("running");
    let script = format!("touch {}; sleep 3", marker.display());
    let build = f
        .command(&["build", "slow", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_build(f, &marker);
    let err = f.fails(&["destroy", "--yes"], EXIT_BUSY);
    assert!(err.contains("in use"), "{err}");
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert!(f.result("child").is_some(), "a busy destroy removed a result");

    let out = f.json(&["destroy", "--yes"]);
    let destroyed = &out["destroyed"];
    assert_eq!(destroyed["results"], 3, "{out}");
    assert_eq!(destroyed["caches"], 2, "{out}");
    assert_eq!(destroyed["leases"], 1, "{out}");
    outside.assert_intact("destroy");
    if destroyed["root_removed"] == true {
        assert!(!f.root.exists());
    } else {
        // A mount point (zfs) stays, empty of the store's files.
        let left: Vec<String> = fs::read_dir(&f.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lost+found")
            .collect();
        assert!(!left.contains(&".snapstore".to_string()), "records left: {left:?}");
    }
    // Once gone, destroy has nothing to do, and the store can be made again.
    assert!(f.ok(&["destroy"]).starts_with("no store"));
    f.ok(&["build", "again", "--", "true"]);
    assert_eq!(f.json(&["list"])["results"].as_array().unwrap().len(), 1);
    f.ok(&["destroy", "--yes"]);
}

#[test]
fn destroy_on_rsync() {
    let f = Fixture::rsync();
    destroy_scenario(&f);
    assert!(!f.root.exists(), "the root stayed");
}

#[test]
fn destroy_on_btrfs() {
    let Some((fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else {
        return;
    };
    destroy_scenario(&f);
    assert!(!f.root.exists(), "the root stayed");
    let out = Command::new("btrfs").args(["subvolume", "list", "-a"]).arg(&fs.mount).output().unwrap();
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(left.trim().is_empty(), "subvolumes left: {left}");
}

#[test]
fn destroy_on_xfs_reflink() {
    let Some((_fs, f)) = loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "1G", "xfs-reflink", "") else {
        return;
    };
    destroy_scenario(&f);
    assert!(!f.root.exists(), "the root stayed");
}

#[test]
fn destroy_on_zfs() {
    require_plugin("zfs");
    let Some(pool) = ZfsPool::new("512M") else { return };
    let dataset = format!("{}/store", pool.name);
    let root = pool.mount.join("store");
    let made = Command::new("zfs").args(["create", &dataset]).status().unwrap();
    assert!(made.success(), "zfs create {dataset}");
    let text = format!(
        "[store]\nbackend = \"zfs\"\nroot = \"{}\"\n[backend]\ndataset = \"{dataset}\"\n",
        root.display()
    );
    let mut f = Fixture::with_config(tempfile::tempdir().unwrap(), &root, &text);
    f.timeout_secs = Some(300);
    destroy_scenario(&f);
    let out =
        Command::new("zfs").args(["list", "-H", "-o", "name", "-t", "all", "-r", &dataset]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<&str> = listed.lines().filter(|l| l.matches('/').count() > 2 || l.contains('@')).collect();
    assert!(keys.is_empty(), "results, caches or snapshots left: {keys:?}");
}

/// On a terminal, destroy asks; anything but `yes` keeps the store.
#[test]
fn destroy_asks_on_a_terminal() {
    if !test_support::installed("script") {
        skip("destroy_asks_on_a_terminal needs `script` (util-linux) for a terminal");
        return;
    }
    let f = Fixture::rsync();
    f.ok(&["build", "kept", "--", "true"]);
    let on_terminal = |answer: &str| {
        let line = format!("{} --config {} destroy", snapstore_bin().display(), f.config.display());
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, text) = on_terminal("no\n");
    assert_eq!(code, Some(EXIT_USAGE), "{text}");
    assert!(text.contains("1 results") && text.contains("not confirmed"), "{text}");
    assert!(f.result("kept").is_some(), "an unconfirmed destroy removed a result");
    let (code, text) = on_terminal("yes\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(!f.root.exists(), "a confirmed destroy left the root: {text}");
}

#[test]
fn destroy_on_overlayfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.ext4", "-q"], "1G", "overlayfs", "") else {
        return;
    };
    destroy_scenario(&f);
    assert!(!f.root.exists(), "the root stayed");
    assert!(
        store_api::util::mounts::mounts_under(f.root.parent().unwrap()).unwrap().len() == 1,
        "only the loop mount itself"
    );
}
