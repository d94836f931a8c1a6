//! No false alarms: cache copies released by a live process are never taken
//! for those of a dead one, however releases and recovery interleave, and
//! the conformance suite's own trees are not reported as leftovers.

mod support;

use std::fs;

use support::*;

fn lease_locks_left(f: &Fixture) -> Vec<String> {
    let dir = f.root.join(".snapstore/locks/lease");
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

/// 50 stress jobs, 8 at a time: 200 cache runs in one healthy process.
#[test]
fn releasing_leases_is_never_taken_for_a_dead_process() {
    let f = Fixture::rsync();
    for round in 0..3 {
        let out = f.run(&["stress", "--jobs", "50", "--parallel", "8"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}: {stderr}");
        assert!(!stderr.contains("dead process"), "round {round}: a false alarm: {stderr}");
        assert_eq!(lease_locks_left(&f), Vec::<String>::new(), "round {round}: lease lock files left");
    }
}

/// 200 `cache run`s in processes of their own, 8 at a time.
#[test]
fn concurrent_cache_runs_raise_no_false_alarm() {
    let f = Fixture::rsync();
    for batch in 0..25 {
        let children: Vec<_> = (0..8)
            .map(|_| {
                f.command(&["cache", "run", "shared", "--", "sh", "-c", "echo x >> log"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "batch {batch}: {stderr}");
            assert!(!stderr.contains("dead process"), "batch {batch}: a false alarm: {stderr}");
        }
    }
    assert_eq!(lease_locks_left(&f), Vec::<String>::new(), "lease lock files left");
}

/// The suite's own temporary trees are not reported as a dead process's.
#[test]
fn conformance_warns_of_nothing_on_a_healthy_store() {
    let f = Fixture::rsync();
    let out = f.run(&["conformance"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("WARN"), "a false alarm: {stderr}");
}
