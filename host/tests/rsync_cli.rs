//! The store contract and the CLI's error handling, on the rsync backend.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::contract::{run_contract, tree_listing};
use support::*;

fn rsync_fixture(mode: &str) -> Fixture {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = format!("[store]\nbackend = \"rsync\"\nroot = \"store\"\n[backend]\nmode = \"{mode}\"\n");
    Fixture::with_config(dir, &root, &text)
}

#[test]
fn contract_copy_mode() {
    run_contract(&rsync_fixture("copy"));
}

/// `copy = "rsync"`: clones by the rsync command (the default `copy` mode
/// is the native copy, which the other contract runs use).
#[test]
fn contract_copy_mode_with_the_rsync_command() {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[backend]\ncopy = \"rsync\"\n";
    run_contract(&Fixture::with_config(dir, &root, text));
}

#[test]
fn contract_hardlink_mode() {
    run_contract(&rsync_fixture("hardlink"));
}

#[test]
fn contract_hardlink_unsafe_mode() {
    run_contract(&rsync_fixture("hardlink_unsafe"));
}

#[test]
fn hardlink_mode_shares_unchanged_files_with_the_base() {
    use std::os::unix::fs::MetadataExt;
    let f = rsync_fixture("hardlink");
    f.ok(&["build", "base", "--", "sh", "-c", "echo same > same; echo old > changed"]);
    f.ok(&["build", "child", "--base", "base", "--", "sh", "-c", "echo new > changed"]);
    let (base, child) = (f.result("base").unwrap(), f.result("child").unwrap());
    let ino = |p: std::path::PathBuf| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(base.join("same")), ino(child.join("same")), "unchanged file not shared");
    assert_ne!(ino(base.join("changed")), ino(child.join("changed")));
    assert_eq!(fs::read_to_string(base.join("changed")).unwrap(), "old\n");
}

#[test]
fn copies_keep_metadata() {
    let f = Fixture::rsync();
    let script = "mkdir d && echo x > d/f && ln d/f hard && ln -s nowhere link && chmod 4750 d/f \
                  && touch -d '2001-02-03 04:05:06.123456789' d/f";
    f.ok(&["build", "base", "--", "sh", "-c", script]);
    f.ok(&["build", "child", "--base", "base", "--", "true"]);
    let (base, child) = (f.result("base").unwrap(), f.result("child").unwrap());
    use std::os::unix::fs::MetadataExt;
    let (a, b) =
        (fs::symlink_metadata(base.join("d/f")).unwrap(), fs::symlink_metadata(child.join("d/f")).unwrap());
    assert_eq!(
        (a.mode(), a.mtime(), a.mtime_nsec(), a.uid()),
        (b.mode(), b.mtime(), b.mtime_nsec(), b.uid())
    );
    assert_eq!(fs::metadata(child.join("hard")).unwrap().ino(), b.ino(), "hard link lost");
    assert_eq!(fs::read_link(child.join("link")).unwrap().to_str(), Some("nowhere"));
}

#[test]
fn config_errors_are_one_line_and_name_the_problem() {
    require_plugin("rsync");
    // A missing plugin: the store is unavailable (69), the config is fine.
    let missing: &[(&str, &str, i32)] = &[
        ("[store]\nroot = \"s\"\nbackend = \"nosuch\"\n", "libsnapstore_nosuch.so", 69),
        ("[store]\nroot = \"s\"\nbackend = \"./nosuch.so\"\n", "nosuch.so", 69),
    ];
    let cases: Vec<(&str, &str, i32)> = [
        ("[store\nroot = \"s\"\n", "snapstore.toml"),
        ("[store]\nroot = \"s\"\nbackend = \"rsync\"\ncolour = \"blue\"\n", "colour"),
        ("[store]\nroot = \"s\"\n[storage]\n", "storage"),
        ("[store]\nroot = \"s\"\n[backend]\nmode = \"fast\"\n", "fast"),
        ("[store]\nroot = \"s\"\n[backend]\nmood = \"copy\"\n", "`mood`, expected one of `mode`"),
        ("[store]\nbackend = \"rsync\"\n", "root"),
    ]
    .into_iter()
    .map(|(text, needle)| (text, needle, EXIT_USAGE))
    .chain(missing.iter().copied())
    .collect();
    for (text, needle, code) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let f = Fixture::with_config(dir, &root, text);
        let out = f.run(&["list"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{text:?}: not one line: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{text:?}: {stderr}");
    }
    // No config at all.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(snapstore_bin())
        .arg("list")
        .current_dir(dir.path())
        .env_remove("SNAPSTORE_CONFIG")
        .output()
        .unwrap();
    if !std::path::Path::new("/etc/snapstore/config.toml").exists() {
        assert_eq!(out.status.code(), Some(EXIT_USAGE));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    }
}

#[test]
fn a_store_refuses_another_backend() {
    let f = Fixture::rsync();
    f.ok(&["build", "x", "--", "true"]);
    // Pretend the store was made by another backend.
    let marker = f.root.join(".snapstore/store.toml");
    let text = fs::read_to_string(&marker).unwrap().replace("rsync", "btrfs");
    fs::write(&marker, text).unwrap();
    let err = f.fails(&["result", "x"], EXIT_USAGE);
    assert!(err.contains("btrfs") && err.contains("rsync"), "{err}");
}

#[test]
fn config_is_found_through_the_environment_and_cwd() {
    let f = Fixture::rsync();
    let by_env =
        Command::new(snapstore_bin()).arg("root").env("SNAPSTORE_CONFIG", &f.config).output().unwrap();
    assert!(by_env.status.success());
    let by_cwd = Command::new(snapstore_bin())
        .arg("root")
        .current_dir(f.dir.path())
        .env_remove("SNAPSTORE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(by_env.stdout, by_cwd.stdout);
    assert_eq!(String::from_utf8_lossy(&by_cwd.stdout).trim(), f.root.to_str().unwrap());
}

#[test]
fn json_output_is_one_object() {
    let f = Fixture::rsync();
    for args in
        [&["df"][..], &["root"], &["state-dir"], &["list"], &["result", "none"], &["check"], &["backends"]]
    {
        let v = f.json(args);
        assert!(v.is_object(), "{args:?}: {v}");
    }
    assert_eq!(f.json(&["state-dir"])["state_dir"].as_str().unwrap(), f.root.join("state").to_str().unwrap());
    let backends = f.json(&["backends"]);
    assert!(backends["backends"].as_array().unwrap().iter().any(|b| b["name"] == "rsync"));
}

#[test]
fn concurrent_builds_all_succeed() {
    let f = Fixture::rsync();
    f.ok(&["build", "base", "--", "sh", "-c", "seq 1 200 > numbers"]);
    // Eight children of one base, plus eight racers for a single id.
    let mut children: Vec<_> = (0..8)
        .map(|i| {
            let script = format!("echo {i} >> numbers; sleep 0.2");
            f.command(&["build", &format!("child{i}"), "--base", "base", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            f.command(&["build", "same", "--base", "base", "--", "sleep", "0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.drain(..).enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "child{i}: {}", String::from_utf8_lossy(&out.stderr));
        let numbers = f.read_result(&format!("child{i}"), "numbers");
        assert_eq!(numbers.lines().count(), 201);
        assert_eq!(numbers.lines().last(), Some(i.to_string().as_str()));
    }
    let codes: Vec<i32> =
        racers.into_iter().map(|c| c.wait_with_output().unwrap().status.code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 0 || *c == EXIT_EXISTS), "{codes:?}");
    assert!(fs::read_dir(f.root.join("result-tmp")).unwrap().next().is_none(), "temporary trees left");
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmp_trees(f: &Fixture, ns: &str) -> usize {
    fs::read_dir(f.root.join(ns)).unwrap().count()
}

#[test]
fn a_killed_build_leaves_nothing_and_live_builds_are_untouched() {
    let f = Fixture::rsync();
    f.ok(&["build", "base", "--", "sh", "-c", "echo base > f"]);
    // A build killed while its command runs.
    let mut victim = f
        .command(&["build", "victim", "--base", "base", "--", "sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the victim's tree", || tmp_trees(&f, "result-tmp") == 1);
    // A live build running at the same time must survive recovery.
    let live = f
        .command(&["build", "live", "--base", "base", "--", "sh", "-c", "sleep 1; echo done > g"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the live tree", || tmp_trees(&f, "result-tmp") == 2);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    assert_eq!(f.result("victim"), None);
    // Any later build recovers the dead tree, never the live one.
    f.ok(&["build", "victim", "--base", "base", "--", "true"]);
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success(), "live build: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(f.read_result("live", "g"), "done\n");
    wait_for("the orphaned sleep to be gone", || tmp_trees(&f, "result-tmp") <= 1);
    f.ok(&["complete-deletes"]);
    assert_eq!(tmp_trees(&f, "result-tmp"), 0);
}

#[test]
fn a_killed_cache_run_is_discarded_and_a_held_lease_survives() {
    let f = Fixture::rsync();
    f.ok(&["cache", "run", "c", "--", "sh", "-c", "echo v1 > data"]);
    let held = f.json(&["cache", "acquire", "c"]);
    let mut victim = f
        .command(&["cache", "run", "c", "--", "sh", "-c", "echo torn > data; sleep 30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the victim's copy", || tmp_trees(&f, "cache-tmp") == 2);
    std::thread::sleep(Duration::from_millis(200));
    victim.kill().unwrap();
    victim.wait().unwrap();
    let recovered = f.json(&["list"]);
    assert_eq!(recovered["leases"].as_array().unwrap().len(), 2, "both leases listed before recovery");
    f.ok(&["complete-deletes"]);
    let listing = f.json(&["list"]);
    let leases = listing["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{listing}");
    assert_eq!(leases[0]["lease"], held["lease"], "the held lease must survive its process");
    assert!(leases[0]["age_seconds"].as_u64().is_some());
    let out = f.ok(&["cache", "run", "c", "--", "cat", "data"]);
    assert_eq!(out, "v1");
    // An abandoned lease is dropped with `release --discard`.
    assert_eq!(
        f.json(&["cache", "release", "--discard", held["lease"].as_str().unwrap()])["published"],
        false
    );
    assert_eq!(tmp_trees(&f, "cache-tmp"), 0);
}

#[test]
fn failing_commands_and_unstartable_commands_leave_nothing() {
    let f = Fixture::rsync();
    let out = f.run(&["build", "x", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    let out = f.run(&["build", "x", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert_eq!(f.result("x"), None);
    assert!(!tree_listing(&f.root).iter().any(|p| p.starts_with("result/")));
    assert_eq!(tmp_trees(&f, "result-tmp"), 0);
}
