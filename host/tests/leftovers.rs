//! Small things that must hold: owners and ids that a command line or
//! chown would misread are refused, a huge config value gives a short
//! error, a release that published reports success even if the old
//! snapshot cannot go yet, recovery never warns about live trees, and lock
//! files of killed processes are removed.

mod support;

use std::fs;
use std::time::Duration;

use support::*;

#[test]
fn an_owner_of_minus_one_is_refused() {
    let f = Fixture::rsync();
    for owner in ["4294967295:4294967295", "0:4294967295", "4294967295:0"] {
        let err = f.fails(&["cache", "acquire", "c", "--user", owner], EXIT_USAGE);
        assert!(err.contains("4294967295 is not an id"), "{err}");
    }
    assert!(f.json(&["list"])["caches"].as_array().unwrap().is_empty());
}

#[test]
fn ids_starting_with_a_dash_are_refused_and_base_goes_anywhere() {
    let f = Fixture::rsync();
    let err = f.fails(&["delete", "--", "-x"], EXIT_USAGE);
    assert!(err.contains("starts with `-`"), "{err}");
    let err = f.fails(&["result", "--", "--base"], EXIT_USAGE);
    assert!(err.contains("starts with `-`"), "{err}");
    f.ok(&["build", "base", "--", "sh", "-c", "echo b > f"]);
    f.ok(&["build", "--base", "base", "before", "--", "true"]);
    f.ok(&["build", "after", "--base", "base", "--", "true"]);
    assert_eq!(f.read_result("before", "f"), "b\n");
    assert_eq!(f.read_result("after", "f"), "b\n");
    // Cache names may start with `-` (any string is a cache name).
    f.ok(&["cache", "run", "-c", "--", "sh", "-c", "echo hi > f"]);
    assert_eq!(f.ok(&["cache", "run", "--user", "0:0", "-c", "--", "cat", "f"]), "hi");
    let lease = f.json(&["cache", "acquire", "--", "-c"])["lease"].as_str().unwrap().to_string();
    f.ok(&["cache", "release", "--discard", &lease]);
    f.ok(&["cache", "delete", "--", "-c"]);
    assert!(f.json(&["list"])["caches"].as_array().unwrap().is_empty());
}

#[test]
fn a_huge_config_value_gives_a_short_one_line_error() {
    let f = Fixture::rsync();
    // 5 MB: the cut does not depend on the size, and a debug build parses
    // 50 MB for a minute.
    let huge = "A".repeat(5_000_000);
    // A plugin of that name is missing: unavailable (69).
    for (text, code) in [
        (format!("[store]\nroot = \"store\"\n[backend]\nmode = \"{huge}\"\n"), EXIT_USAGE),
        (format!("[store]\nroot = \"store\"\nbackend = \"{huge}\"\n"), 69),
        (format!("[store]\nroot = \"store\"\n{huge} = 1\n"), EXIT_USAGE),
    ] {
        fs::write(&f.config, text).unwrap();
        let out = f.run(&["root"]);
        assert_eq!(out.status.code(), Some(code));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.len() < 1100 && err.lines().count() == 1, "{} bytes: {}", err.len(), &err[..200]);
        assert!(err.contains("bytes)"), "{err}");
    }
}

#[test]
fn a_published_release_succeeds_when_the_old_snapshot_cannot_go() {
    let f = Fixture::rsync();
    f.ok(&["cache", "run", "c", "--", "sh", "-c", "echo 1 > v"]);
    let out = f
        .command(&["--json", "cache", "run", "c", "--", "sh", "-c", "echo 2 > v"])
        .env("SNAPSTORE_FAIL_AT", "release:remove-old")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["published"], true);
    assert_eq!(fs::read_dir(f.root.join("cache")).unwrap().count(), 2, "the old snapshot is left");
    // The next acquire removes it.
    assert_eq!(f.ok(&["cache", "run", "c", "--", "cat", "v"]), "2");
    assert_eq!(fs::read_dir(f.root.join("cache")).unwrap().count(), 1);
}

/// Builds committing while others recover: no tree is ever called a dead
/// process's (the list-then-lock race on trees just committed).
#[test]
fn recovery_never_warns_about_trees_just_committed() {
    let f = Fixture::rsync();
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let f = &f;
            scope.spawn(move || {
                for n in 0..25 {
                    let out = f.run(&["build", &format!("w{worker}-{n}"), "--", "true"]);
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(out.status.success(), "{err}");
                    assert!(!err.contains("dead process"), "a live tree was taken for a dead one: {err}");
                }
            });
        }
    });
}

#[test]
fn lock_files_of_killed_processes_are_removed() {
    let f = Fixture::rsync();
    f.ok(&["build", "base", "--", "true"]);
    for point in ["build:cloned", "build:before-commit"] {
        let out = f
            .command(&["build", "x", "--base", "base", "--", "true"])
            .env("SNAPSTORE_KILL_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let meta = f.root.join(".snapstore");
    // Staged files of atomic writes (`.NAME.tmp-XXXXXX`): a killed writer's
    // (hours old) goes; one being written (fresh) stays.
    let staged = |path: std::path::PathBuf, hours_old: u64| {
        fs::write(&path, "7\n").unwrap();
        let then = std::time::SystemTime::now() - Duration::from_secs(hours_old * 3600);
        fs::File::options().write(true).open(&path).unwrap().set_modified(then).unwrap();
    };
    staged(meta.join(".generation.tmp-a1B2c3"), 2);
    staged(meta.join("leases/.0123.json.tmp-a1B2c3"), 2);
    staged(meta.join(".generation.tmp-d4E5f6"), 0);
    assert!(meta.join("locks/build/x").exists() && meta.join("locks/use/base").exists());
    // A held lock stays: a build is running while recovery runs.
    let go = f.dir.path().join("go");
    let script = format!("touch started; while [ ! -e {} ]; do sleep 0.02; done", go.display());
    let mut running = f.command(&["build", "slow", "--", "sh", "-c", &script]).spawn().unwrap();
    let started = || {
        fs::read_dir(f.root.join("result-tmp")).unwrap().any(|e| e.unwrap().path().join("started").exists())
    };
    while !started() {
        std::thread::sleep(Duration::from_millis(20));
    }
    f.ok(&["complete-deletes"]);
    let left = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(meta.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(left("locks/build"), ["slow"]);
    assert!(left("locks/use").is_empty() && left("locks/tmp").len() == 1, "{:?}", left("locks/tmp"));
    let staged_left: Vec<String> = left(".").into_iter().filter(|n| n.contains(".tmp-")).collect();
    assert_eq!(staged_left, [".generation.tmp-d4E5f6"]);
    assert!(!left("leases").iter().any(|n| n.contains(".tmp-")), "{:?}", left("leases"));
    fs::write(&go, "").unwrap();
    assert!(running.wait().unwrap().success());
    assert!(f.result("slow").is_some() && f.result("base").is_some());
}
