//! A clone is its base, entry by entry (test-support's fidelity tree: every
//! kind of entry, owners, modes, ns times, xattrs, ACLs, hard links, holes),
//! with `copy = "native"` on ext4 (kernel copies) and XFS (reflinks), and
//! with `copy = "rsync"` on ext4. Needs root and a loop device.

use std::path::Path;

use snapstore_rsync::Rsync;
use store_api::{Key, SnapshotBackend};
use test_support::fidelity::{assert_same, build_fidelity_tree, manifest, set_times, without_atimes, Entry};
use test_support::LoopFs;

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

/// rsync (`-aHAX`) keeps neither atimes nor holes: the rsync mode is held
/// to everything else.
fn as_rsync_keeps(entries: Vec<Entry>) -> Vec<Entry> {
    without_atimes(entries).into_iter().map(|e| Entry { blocks: None, ..e }).collect()
}

fn fidelity(mkfs: &[&str], copy: &str) {
    let Some(lfs) = LoopFs::new(mkfs, "1G", "noatime") else {
        return;
    };
    let open = |options: &str| -> Rsync { snapstore_rsync::open(&lfs.root(), options).expect("open") };
    let store = open(&format!("copy = \"{copy}\""));
    let tmp = store.create(&key("result-tmp/base"), None).unwrap();
    build_fidelity_tree(&tmp);
    let base = store.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();
    set_times(&base, &mut 0);
    test_support::sync(&lfs.mount);
    let keeps = |entries: Vec<Entry>| if copy == "rsync" { as_rsync_keeps(entries) } else { entries };

    let want = manifest(&base, true);
    assert!(want.len() > 330, "tree has only {} entries", want.len());
    let entry = |path: &str| want.iter().find(|e| e.path == Path::new(path)).unwrap();
    assert!(entry("file").xattrs.contains_key(b"system.posix_acl_access".as_slice()));
    assert!(entry("sparse").blocks.unwrap() < 100, "sparse file is not sparse");

    let clone = store.clone_tree(&key("result/base"), &key("result-tmp/c1")).unwrap();
    test_support::sync(&lfs.mount);
    assert_same(&want, &manifest(&base, true), &format!("{copy}: base after clone"));
    assert_same(&keeps(want), &keeps(manifest(&clone, true)), &format!("{copy}: clone"));

    // A clone of the clone, committed, with one worker thread.
    let want = manifest(&clone, true);
    store.commit(&key("result-tmp/c1"), &key("result/c1"), None).unwrap();
    let one = open(&format!("copy = \"{copy}\"\nthreads = 1"));
    let again = one.clone_tree(&key("result/c1"), &key("result-tmp/c2")).unwrap();
    // Block counts settle once delayed allocation is done.
    test_support::sync(&lfs.mount);
    assert_same(&keeps(want), &keeps(manifest(&again, true)), &format!("{copy}: clone of the clone"));
}

#[test]
fn fidelity_native_ext4() {
    fidelity(&["mkfs.ext4", "-q"], "native");
}

#[test]
fn fidelity_native_xfs() {
    fidelity(&["mkfs.xfs", "-q", "-m", "reflink=1"], "native");
}

#[test]
fn fidelity_rsync_ext4() {
    fidelity(&["mkfs.ext4", "-q"], "rsync");
}
