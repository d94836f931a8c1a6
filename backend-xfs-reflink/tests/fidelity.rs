//! A clone is identical to its base, entry by entry.

mod common;

use std::path::Path;

use snapstore_xfs_reflink::XfsReflink;
use store_api::{Key, SnapshotBackend};

use common::LoopFs;
use test_support::fidelity::{assert_same, build_fidelity_tree, manifest, set_times};

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn fidelity(test: &str, fs: &str, mount_opts: &str, symlink_atimes: bool) {
    let Some(lfs) = LoopFs::new(test, fs, 1 << 30, mount_opts) else {
        return;
    };
    let store: XfsReflink = lfs.open("");
    let tmp = store.create(&key("result-tmp/base"), None).unwrap();
    build_fidelity_tree(&tmp);
    let base = store.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();
    set_times(&base, &mut 0);
    common::sync(&lfs.mnt);

    let want = manifest(&base, symlink_atimes);
    assert!(want.len() > 330, "tree has only {} entries", want.len());
    // The tree really holds what the comparison is meant to cover.
    let entry = |path: &str| want.iter().find(|e| e.path == Path::new(path)).unwrap();
    let has = |path: &str, attr: &str| entry(path).xattrs.contains_key(attr.as_bytes());
    assert!(has("file", "system.posix_acl_access") && has("file", "security.test"));
    assert!(has("cap", "security.capability") && has("dir", "system.posix_acl_default"));
    assert!(has("dangling", "trusted.sym"));
    assert_eq!(entry("file").mode & 0o7777, 0o4755);
    assert!(entry("sparse").blocks.unwrap() < 100, "sparse file is not sparse");
    assert_eq!(entry("dir/sub/hard3").same_as.as_deref(), Some(Path::new("dir/hard2")));

    let clone = store.clone_tree(&key("result/base"), &key("result-tmp/c1")).unwrap();
    common::sync(&lfs.mnt);
    // Cloning left the base exactly as it was (nothing read its atimes).
    assert_same(&want, &manifest(&base, symlink_atimes), "base after clone");
    assert_same(&want, &manifest(&clone, symlink_atimes), "clone");

    let committed =
        store.commit(&key("result-tmp/c1"), &key("result/c1"), Some(&key("result/base"))).unwrap();
    assert_same(&want, &manifest(&committed, symlink_atimes), "committed clone");

    // A clone of a clone, with several threads and with one.
    let store1 = lfs.open("threads = 1");
    let again = store1.clone_tree(&key("result/c1"), &key("result-tmp/c2")).unwrap();
    common::sync(&lfs.mnt);
    assert_same(&want, &manifest(&again, symlink_atimes), "clone of the clone");
}

#[test]
fn fidelity_xfs() {
    fidelity("fidelity_xfs", "xfs", "noatime", true);
}

#[test]
fn fidelity_btrfs() {
    fidelity("fidelity_btrfs", "btrfs", "noatime", true);
}

/// With the default `relatime`, cloning must not change the source's
/// atimes either. Reading a symlink's target always bumps its atime (there
/// is no O_NOATIME for readlink), so symlink atimes are left out here.
#[test]
fn fidelity_xfs_relatime() {
    fidelity("fidelity_xfs_relatime", "xfs", "relatime", false);
}
