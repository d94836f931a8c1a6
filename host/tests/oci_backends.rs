//! The migration path: a chain exported from a store on one backend and
//! imported into a store on another compares equal entry by entry. Every
//! backend is a source once and a target once: rsync -> btrfs -> zfs ->
//! xfs-reflink -> rsync. One pair at a time, and never two loop devices in a
//! pair (test-support's LoopFs allows one at a time in a process).

#[path = "oci_support/mod.rs"]
mod oci_support;
mod support;

use std::process::Command;
use std::sync::Mutex;

use oci_support::*;
use support::*;

static ONE_PAIR_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A store on `backend`, with what keeps its filesystem alive.
struct Store {
    fixture: Fixture,
    _fs: Option<LoopFs>,
    _pool: Option<ZfsPool>,
}

fn store(backend: &str) -> Option<Store> {
    match backend {
        "rsync" => Some(Store { fixture: Fixture::rsync(), _fs: None, _pool: None }),
        "btrfs" => loop_store(&["mkfs.btrfs", "-q"], "600M", "btrfs", "").map(|(fs, fixture)| Store {
            fixture,
            _fs: Some(fs),
            _pool: None,
        }),
        "xfs-reflink" => loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "600M", "xfs-reflink", "")
            .map(|(fs, fixture)| Store { fixture, _fs: Some(fs), _pool: None }),
        "zfs" => {
            require_plugin("zfs");
            let pool = ZfsPool::new("512M")?;
            let dataset = format!("{}/store", pool.name);
            let root = pool.mount.join("store");
            let out = Command::new("zfs").args(["create", &dataset]).output().unwrap();
            assert!(out.status.success(), "zfs create: {}", String::from_utf8_lossy(&out.stderr));
            let text = format!(
                "[store]\nbackend = \"zfs\"\nroot = \"{}\"\n[backend]\ndataset = \"{dataset}\"\n",
                root.display()
            );
            let mut fixture = Fixture::with_config(tempfile::tempdir().unwrap(), &root, &text);
            fixture.timeout_secs = Some(300);
            Some(Store { fixture, _fs: None, _pool: Some(pool) })
        }
        other => panic!("no backend {other}"),
    }
}

fn migrate(from: &str, to: &str) {
    let _one = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        skip("the image round trips need root");
        return;
    }
    let Some(source) = store(from) else { return };
    let Some(target) = store(to) else { return };
    let (a, b) = (&source.fixture, &target.fixture);
    // zfs-fuse keeps no xattrs (nor ACLs), and symlink times in seconds.
    let zfs_fuse = from == "zfs" || to == "zfs";
    build_chain_with(a, !zfs_fuse);
    let images = tempfile::tempdir().unwrap();
    let image = format!("oci:{}", images.path().join("layout").display());
    let out = a.json(&["export", "step", &image]);
    assert_eq!(out["layers_written"].as_u64(), Some(2), "{out}");
    let out = b.json(&["import", "step", &image]);
    assert_eq!(out["layers_applied"].as_u64(), Some(2), "{out}");
    for id in ["base", "step"] {
        let want = a.result(id).unwrap();
        let got = b.result(id).unwrap();
        assert_same_tree_within(&want, &got, &format!("{id}: {from} -> {to}"), zfs_fuse);
    }
    // zfs-fuse cannot tell where a file's holes are (no SEEK_HOLE): a file
    // it holds is exported dense.
    if from != "zfs" {
        assert_sparse(&b.result("base").unwrap());
    }
}

#[test]
fn rsync_to_btrfs() {
    migrate("rsync", "btrfs");
}

#[test]
fn btrfs_to_zfs() {
    migrate("btrfs", "zfs");
}

#[test]
fn zfs_to_xfs_reflink() {
    migrate("zfs", "xfs-reflink");
}

#[test]
fn xfs_reflink_to_rsync() {
    migrate("xfs-reflink", "rsync");
}

#[test]
fn btrfs_to_rsync() {
    migrate("btrfs", "rsync");
}

#[test]
fn rsync_to_xfs_reflink() {
    migrate("rsync", "xfs-reflink");
}
