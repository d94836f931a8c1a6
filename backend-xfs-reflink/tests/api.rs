//! The primitives' contract on a real XFS: errors, atomic commit, removal of
//! anything (half-clones, big trees, leftovers in the trash), options.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use snapstore_xfs_reflink::XfsReflink;
use store_api::{ErrorKind, Key, Namespace, Owner, SnapshotBackend};

use common::LoopFs;

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn kind<T: std::fmt::Debug>(r: Result<T, store_api::StoreError>) -> ErrorKind {
    r.unwrap_err().kind()
}

fn trash_is_empty(lfs: &LoopFs) -> bool {
    fs::read_dir(lfs.root().join("trash")).unwrap().next().is_none()
}

/// `n` small files in each of `dirs` directories, plus `extra`.
fn fill(dir: &Path, dirs: usize, n: usize) {
    for d in 0..dirs {
        let sub = dir.join(format!("d{d}"));
        fs::create_dir(&sub).unwrap();
        for f in 0..n {
            fs::write(sub.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
}

#[test]
fn primitives() {
    let Some(lfs) = LoopFs::new("primitives", "xfs", 1 << 30, "") else {
        return;
    };
    let store: XfsReflink = lfs.open("");

    // create: mode 0755 whatever the umask, owner as asked.
    let tmp = store.create(&key("cache-tmp/1-x"), Some(Owner { uid: 1000, gid: 2000 })).unwrap();
    let meta = fs::metadata(&tmp).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o755, 1000, 2000));
    assert_eq!(kind(store.create(&key("cache-tmp/1-x"), None)), ErrorKind::ALREADY_EXISTS);
    fs::write(tmp.join("a"), "a").unwrap();
    store.commit(&key("cache-tmp/1-x"), &key("cache/x.1"), None).unwrap();
    assert!(store.path(&key("cache-tmp/1-x")).unwrap().is_none());

    // clone: missing source, existing destination.
    assert_eq!(kind(store.clone_tree(&key("result/nope"), &key("result-tmp/n"))), ErrorKind::NOT_FOUND);
    assert!(store.path(&key("result-tmp/n")).unwrap().is_none());
    store.create(&key("result-tmp/busy"), None).unwrap();
    assert_eq!(kind(store.clone_tree(&key("cache/x.1"), &key("result-tmp/busy"))), ErrorKind::ALREADY_EXISTS);
    assert!(store.path(&key("result-tmp/busy")).unwrap().is_some(), "an existing tree was removed");

    // commit never replaces a committed tree, not even an empty one, and
    // leaves the temporary tree in place when refused.
    let c = store.clone_tree(&key("cache/x.1"), &key("cache-tmp/2-x")).unwrap();
    assert_eq!(fs::read_to_string(c.join("a")).unwrap(), "a");
    store.create(&key("result-tmp/empty"), None).unwrap();
    store.commit(&key("result-tmp/empty"), &key("result/empty"), None).unwrap();
    assert_eq!(
        kind(store.commit(&key("cache-tmp/2-x"), &key("result/empty"), None)),
        ErrorKind::ALREADY_EXISTS
    );
    assert_eq!(kind(store.commit(&key("cache-tmp/2-x"), &key("cache/x.1"), None)), ErrorKind::ALREADY_EXISTS);
    assert!(store.path(&key("cache-tmp/2-x")).unwrap().is_some());
    assert_eq!(kind(store.commit(&key("result-tmp/gone"), &key("result/gone"), None)), ErrorKind::NOT_FOUND);

    // list and path.
    let mut results = store.list(Namespace::Result).unwrap();
    results.sort();
    assert_eq!(results, ["empty"]);
    assert_eq!(store.list(Namespace::Cache).unwrap(), ["x.1"]);
    let mut tmps = store.list(Namespace::ResultTmp).unwrap();
    tmps.sort();
    assert_eq!(tmps, ["busy"]);
    assert_eq!(store.path(&key("cache/x.1")).unwrap(), Some(lfs.root().join("cache/x.1")));

    // remove: absent is fine; the clone survives its base's removal.
    store.remove(&key("result/never")).unwrap();
    store.remove(&key("cache/x.1")).unwrap();
    assert!(store.path(&key("cache/x.1")).unwrap().is_none());
    assert_eq!(fs::read_to_string(c.join("a")).unwrap(), "a");

    let free = store.free_percent().unwrap();
    assert!(free > 50.0 && free <= 100.0, "free {free}");
    let lines = store.check().unwrap();
    eprintln!("check:\n  {}", lines.join("\n  "));
    assert!(lines.iter().any(|l| l.contains("FICLONE works")));
    assert!(trash_is_empty(&lfs));
}

#[test]
fn half_clones_and_leftovers_are_removable() {
    let Some(lfs) = LoopFs::new("half_clones_and_leftovers_are_removable", "xfs", 1 << 30, "") else {
        return;
    };
    let store = lfs.open("");
    // What a killed clone or build may leave: unfinished, read-only and
    // unsearchable directories, odd modes, a fifo, a dangling symlink.
    let tmp = store.create(&key("result-tmp/half"), None).unwrap();
    fill(&tmp, 3, 10);
    fs::create_dir_all(tmp.join("ro/locked/deeper")).unwrap();
    fs::write(tmp.join("ro/locked/deeper/f"), "f").unwrap();
    fs::set_permissions(tmp.join("ro/locked"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(tmp.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    nix::unistd::mkfifo(&tmp.join("fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
    std::os::unix::fs::symlink("/nonexistent", tmp.join("dangling")).unwrap();
    store.remove(&key("result-tmp/half")).unwrap();
    assert!(store.path(&key("result-tmp/half")).unwrap().is_none());
    assert!(trash_is_empty(&lfs));

    // A delete interrupted by a kill: the tree is in the trash, half gone.
    // complete_deletes finishes it.
    let leftover = lfs.root().join("trash/12345-1-0");
    fs::create_dir(&leftover).unwrap();
    fill(&leftover, 5, 20);
    fs::write(lfs.root().join("trash/12345-1-1"), "a file").unwrap();
    store.complete_deletes().unwrap();
    assert!(trash_is_empty(&lfs));
}

#[test]
fn big_tree_remove_and_parallel_clones() {
    let Some(lfs) = LoopFs::new("big_tree_remove_and_parallel_clones", "xfs", 2 << 30, "") else {
        return;
    };
    let store = lfs.open("");
    let tmp = store.create(&key("result-tmp/big"), None).unwrap();
    fill(&tmp, 200, 250);
    store.commit(&key("result-tmp/big"), &key("result/big"), None).unwrap();

    // Several clones of one base at once, from several threads.
    std::thread::scope(|s| {
        for i in 0..4 {
            let store = &store;
            s.spawn(move || {
                let dst = key(&format!("result-tmp/c{i}"));
                let path = store.clone_tree(&key("result/big"), &dst).unwrap();
                assert_eq!(fs::read_to_string(path.join("d199/f249")).unwrap(), "199/249");
                store.commit(&dst, &key(&format!("result/c{i}")), Some(&key("result/big"))).unwrap();
            });
        }
    });
    assert_eq!(store.list(Namespace::Result).unwrap().len(), 5);

    let start = Instant::now();
    store.remove(&key("result/big")).unwrap();
    let took = start.elapsed();
    eprintln!("removed 50 000 files in {took:?}");
    assert!(store.path(&key("result/big")).unwrap().is_none());
    assert!(trash_is_empty(&lfs));
    // The clones are intact.
    let c3 = store.path(&key("result/c3")).unwrap().unwrap();
    assert_eq!(fs::read_to_string(c3.join("d0/f0")).unwrap(), "0/0");
    for i in 0..4 {
        store.remove(&key(&format!("result/c{i}"))).unwrap();
    }
    store.complete_deletes().unwrap();
    assert!(store.list(Namespace::Result).unwrap().is_empty());
}

#[test]
fn options_are_checked() {
    // Needs no loop device: an unknown option is refused before the root is looked at.
    let err = snapstore_xfs_reflink::open(Path::new("/nonexistent/x"), "thread = 3").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT);
    assert!(err.message().contains("thread"), "{err}");
    let err = snapstore_xfs_reflink::open(Path::new("/nonexistent/x"), "threads = 0").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT);
    let Some(lfs) = LoopFs::new("options_are_checked", "xfs", 512 << 20, "") else {
        return;
    };
    let store = lfs.open("threads = 3\nsync_on_commit = false");
    assert!(store.check().unwrap().iter().any(|l| l.contains("3 worker threads; sync on commit: false")));
}

/// Unmounts a mount made inside a test's filesystem, also on panic.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn mount_points_inside_a_tree_are_refused() {
    let Some(lfs) = LoopFs::new("mount_points_inside_a_tree_are_refused", "xfs", 512 << 20, "") else {
        return;
    };
    let store = lfs.open("");
    let tmp = store.create(&key("result-tmp/m"), None).unwrap();
    fs::create_dir(tmp.join("mnt")).unwrap();
    store.commit(&key("result-tmp/m"), &key("result/m"), None).unwrap();
    let inner = lfs.root().join("result/m/mnt");
    let status =
        std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&inner).status().unwrap();
    assert!(status.success());
    let _unmount = Unmount(inner);
    let err = store.clone_tree(&key("result/m"), &key("result-tmp/c")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UNSUPPORTED, "{err:?}");
    assert!(err.message().contains("mount point"), "{err}");
    // The half-made clone is gone.
    assert!(store.path(&key("result-tmp/c")).unwrap().is_none());
}
