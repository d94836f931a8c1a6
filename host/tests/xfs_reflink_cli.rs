//! The store contract through the CLI with the xfs-reflink backend, on a
//! real loop-mounted XFS (reflink=1) and on btrfs.

mod support;

use std::process::Command;

use support::contract::run_contract;
use support::*;

fn used_kib(path: &std::path::Path) -> u64 {
    let out = Command::new("df").args(["--output=used", "-k"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

fn contract_on(mkfs: &[&str]) {
    let Some((fs, f)) = loop_store(mkfs, "1G", "xfs-reflink", "") else {
        return;
    };
    f.ok(&["check"]);
    run_contract(&f);
    f.ok(&["conformance"]);
    let stress = f.ok(&["stress", "--jobs", "30", "--parallel", "4"]);
    assert!(stress.contains("failures 0"), "{stress}");

    // A clone shares the data of its base.
    f.ok(&["build", "big", "--", "sh", "-c", "head -c 200000000 /dev/urandom > blob"]);
    f.ok(&["complete-deletes"]);
    let before = used_kib(&fs.mount);
    f.ok(&["build", "child", "--base", "big", "--", "true"]);
    let grown = used_kib(&fs.mount).saturating_sub(before);
    assert!(grown < 4096, "a clone of a 200 MB base took {grown} KiB");
    f.ok(&["delete", "child"]);
    f.ok(&["delete", "big"]);
    f.ok(&["complete-deletes"]);
    assert_eq!(std::fs::read_dir(f.root.join("trash")).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn contract_on_xfs() {
    contract_on(&["mkfs.xfs", "-q", "-m", "reflink=1"]);
}

#[test]
fn contract_on_btrfs() {
    contract_on(&["mkfs.btrfs", "-q"]);
}

#[test]
fn a_filesystem_without_reflinks_is_refused() {
    require_plugin("xfs-reflink");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = format!("[store]\nbackend = \"xfs-reflink\"\nroot = \"{}\"\n", root.display());
    let f = Fixture::with_config(dir, &root, &text);
    let err = f.fails(&["init"], 69);
    assert!(!root.exists(), "a refused root was created");
    assert!(err.contains("reflink"), "{err}");
}
