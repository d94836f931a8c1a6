//! The store contract through the CLI on a real loop-mounted btrfs.

mod support;

use std::process::Command;

use support::contract::run_contract;
use support::*;

fn btrfs(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().expect("btrfs-progs installed");
    assert!(out.status.success(), "btrfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn contract_on_btrfs() {
    let Some((fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else {
        return;
    };

    f.ok(&["check"]);
    run_contract(&f);

    // Results are read-only subvolumes.
    let path = f.ok(&["build", "ro", "--", "sh", "-c", "echo x > f"]);
    assert_eq!(btrfs(&["property", "get", "-ts", &path, "ro"]).trim(), "ro=true");
    assert!(std::fs::write(format!("{path}/f"), "changed").is_err(), "a result is writable");

    // A result holding nested subvolumes is deleted cleanly.
    f.ok(&["build", "nested", "--", "sh", "-c", "btrfs -q subvolume create inner && echo y > inner/g"]);
    f.ok(&["delete", "nested"]);
    f.ok(&["delete", "ro"]);

    f.ok(&["conformance"]);
    let stress = f.ok(&["stress", "--jobs", "30", "--parallel", "4"]);
    assert!(stress.contains("failures 0"), "{stress}");

    // Nothing is left: no subvolume under the store.
    f.ok(&["complete-deletes"]);
    let left = btrfs(&["subvolume", "list", "-o", fs.mount.to_str().unwrap()]);
    let store_subvolumes: Vec<&str> = left.lines().filter(|l| l.contains("store/")).collect();
    assert!(store_subvolumes.is_empty(), "subvolumes left: {store_subvolumes:?}");
    let deleted = btrfs(&["subvolume", "list", "-d", fs.mount.to_str().unwrap()]);
    assert!(deleted.trim().is_empty(), "uncleaned deleted subvolumes: {deleted}");

    // A root outside btrfs is refused by `init`, with the fix.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("store");
    let text = format!("[store]\nbackend = \"btrfs\"\nroot = \"{}\"\n", elsewhere.display());
    let wrong = Fixture::with_config(dir, &elsewhere, &text);
    let err = wrong.fails(&["init"], 69);
    assert!(err.contains("btrfs"), "{err}");
    assert!(!elsewhere.exists(), "a refused root was written to");
}
