//! The store contract through the CLI on a real ZFS pool (zfs-fuse).

mod support;

use std::process::Command;

use support::contract::run_contract;
use support::*;

fn zfs(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().unwrap();
    assert!(out.status.success(), "zfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn contract_on_zfs() {
    require_plugin("zfs");
    let Some(pool) = ZfsPool::new("512M") else { return };
    let dataset = format!("{}/store", pool.name);
    let root = pool.mount.join("store");
    zfs(&["create", &dataset]);
    let text = format!(
        "[store]\nbackend = \"zfs\"\nroot = \"{}\"\n[backend]\ndataset = \"{dataset}\"\n",
        root.display()
    );
    let mut f = Fixture::with_config(tempfile::tempdir().unwrap(), &root, &text);
    // zfs-fuse can wedge under load; a hung command must fail the test, not CI.
    f.timeout_secs = Some(300);

    f.ok(&["check"]);
    run_contract(&f);

    // Results are read-only.
    let path = f.ok(&["build", "ro", "--", "sh", "-c", "echo x > f"]);
    assert!(std::fs::write(format!("{path}/f"), "changed").is_err(), "a result is writable");
    // A base with live clones can be deleted; its child stays usable.
    f.ok(&["build", "child", "--base", "ro", "--", "sh", "-c", "echo y >> f"]);
    f.ok(&["delete", "ro"]);
    assert_eq!(f.read_result("child", "f"), "x\ny\n");
    f.ok(&["build", "grandchild", "--base", "child", "--", "true"]);
    f.ok(&["delete", "child"]);
    f.ok(&["delete", "grandchild"]);

    f.ok(&["conformance"]);
    // One job at a time: zfs-fuse has hung here with parallel mounts and
    // unmounts; a kernel ZFS has no such limit.
    let stress = f.ok(&["stress", "--jobs", "12", "--parallel", "1"]);
    assert!(stress.contains("failures 0"), "{stress}");

    // Nothing leaks: no result, cache, temporary dataset or snapshot.
    f.ok(&["complete-deletes"]);
    let left = zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", &dataset]);
    let leaked: Vec<&str> = left
        .lines()
        .filter(|l| l.contains('@') || l.matches('/').count() > dataset.matches('/').count() + 1)
        .collect();
    assert!(leaked.is_empty(), "left behind: {leaked:?}");

    // A missing dataset is refused by `init`, with the fix.
    let text = format!(
        "[store]\nbackend = \"zfs\"\nroot = \"{}\"\n[backend]\ndataset = \"{}/nosuch\"\n",
        pool.mount.join("nosuch").display(),
        pool.name
    );
    let wrong = Fixture::with_config(tempfile::tempdir().unwrap(), &pool.mount.join("nosuch"), &text);
    // A missing prerequisite: unavailable (69), as on every backend.
    let err = wrong.fails(&["init"], 69);
    assert!(err.contains("nosuch") && err.contains("zfs create"), "{err}");
}
