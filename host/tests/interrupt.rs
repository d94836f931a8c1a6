//! An interrupted `stress` or `conformance` (SIGINT, SIGTERM) removes what
//! it made before exiting.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Runs `args`, sends `signal` after `after`, and checks the store holds
/// nothing of the run afterwards.
fn interrupt(f: &Fixture, args: &[&str], signal: Signal, after: Duration) {
    let child = f.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(after);
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(128 + signal as i32), "{args:?}: {stdout}\n{stderr}");
    assert!(stdout.contains("interrupted"), "{args:?}: {stdout}");
    let listing = f.json(&["list"]);
    for what in ["results", "caches", "leases"] {
        assert_eq!(listing[what], serde_json::json!([]), "{args:?} left {what}: {listing}");
    }
    let locks = f.root.join(".snapstore/locks/lease");
    assert_eq!(std::fs::read_dir(locks).unwrap().count(), 0, "{args:?} left lease locks");
    for tmp in ["result-tmp", "cache-tmp"] {
        let left = std::fs::read_dir(f.root.join(tmp)).unwrap().count();
        assert_eq!(left, 0, "{args:?} left {tmp} trees");
    }
}

#[test]
fn an_interrupted_stress_cleans_up() {
    let f = Fixture::rsync();
    f.ok(&["init"]);
    interrupt(
        &f,
        &["stress", "--jobs", "100000", "--parallel", "8"],
        Signal::SIGINT,
        Duration::from_millis(1500),
    );
    interrupt(
        &f,
        &["stress", "--jobs", "100000", "--parallel", "8"],
        Signal::SIGTERM,
        Duration::from_millis(800),
    );
}

#[test]
fn an_interrupted_conformance_cleans_up() {
    // With the rsync command a run lasts long enough to be interrupted
    // (the native copy finishes all cases in under 300 ms).
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[backend]\ncopy = \"rsync\"\n";
    let f = Fixture::with_config(dir, &root, text);
    f.ok(&["init"]);
    interrupt(&f, &["conformance"], Signal::SIGINT, Duration::from_millis(300));
}
