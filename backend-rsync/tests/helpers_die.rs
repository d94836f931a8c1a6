//! The rsync processes a backend call starts die with the process that
//! made the call: a killed snapstore leaves no rsync writing into a tree
//! that recovery is about to remove (with `copy = "rsync"`; the native copy
//! runs in the calling process itself).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use store_api::{Key, SnapshotBackend};

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// The pids of the `rsync` processes whose parent is `parent`, and whether
/// each is still running (not a zombie).
fn rsync_children(parent: u32) -> Vec<(u32, bool)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces, so split after ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        if head.ends_with("(rsync") && fields.get(1) == Some(&parent.to_string().as_str()) {
            found.push((pid, fields[0] != "Z"));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, t)| !t.trim_start().starts_with('Z')))
}

#[test]
fn rsync_dies_with_the_process_that_started_it() {
    if Command::new("rsync").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "this test needs rsync");
        eprintln!("\n*** SKIPPED rsync_dies_with_the_process_that_started_it: needs rsync ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let backend = snapstore_rsync::open(&root, "copy = \"rsync\"").unwrap();
    let tree = backend.create(&key("result-tmp/base"), None).unwrap();
    // Sparse, but rsync (without -S) reads and writes all of it: seconds.
    fs::File::create(tree.join("big")).unwrap().set_len(4 << 30).unwrap();
    backend.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "clone_in_a_child_process", "--include-ignored", "--nocapture"])
        .env("SNAPSTORE_TEST_STORE", &root)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let rsync = loop {
        if let Some(&(pid, true)) = rsync_children(child.id()).first() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "rsync never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    while alive(rsync) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survived = alive(rsync);
    if survived {
        let _ = Command::new("kill").arg("-9").arg(rsync.to_string()).status();
    }
    assert!(!survived, "rsync {rsync} kept running after the process that started it was killed");
}

/// The child side of the test above, run by it in a child process (hence
/// ignored in a plain run, where it would have nothing to check).
#[test]
#[ignore = "run by the test above, in a child process"]
fn clone_in_a_child_process() {
    let root = std::env::var_os("SNAPSTORE_TEST_STORE").expect("run by the test above");
    let backend = snapstore_rsync::open(Path::new(&root), "copy = \"rsync\"").unwrap();
    let _ = backend.clone_tree(&key("result/base"), &key("result-tmp/clone"));
}
