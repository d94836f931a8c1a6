//! The zfs backend on a real, file-backed ZFS pool (zfs-fuse here); the
//! fixtures are in `support`.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snapstore_zfs::open;
use store_api::{ErrorKind, Key, Namespace, Owner, SnapshotBackend};

use support::*;

#[test]
fn create_clone_commit() {
    let Some((pool, b)) = Pool::with_store() else { return };

    let tmp = b.create(&key("result-tmp/a"), Some(Owner { uid: 1234, gid: 5678 })).unwrap();
    assert_eq!(tmp, pool.root.join("result-tmp/a"));
    let meta = fs::metadata(&tmp).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777), (1234, 5678, 0o755));
    fs::write(tmp.join("file"), "base").unwrap();
    fs::create_dir(tmp.join("dir")).unwrap();
    fs::write(tmp.join("dir/inner"), "inner").unwrap();
    assert_eq!(b.list(Namespace::ResultTmp).unwrap(), ["a"]);
    assert_eq!(b.list(Namespace::Result).unwrap(), Vec::<String>::new());
    assert_eq!(b.path(&key("result/a")).unwrap(), None);

    let path = b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    assert_eq!(path, pool.root.join("result/a"));
    assert_eq!(b.path(&key("result/a")).unwrap(), Some(path.clone()));
    assert_eq!(b.path(&key("result-tmp/a")).unwrap(), None);
    assert_eq!(b.list(Namespace::Result).unwrap(), ["a"]);
    assert!(b.list(Namespace::ResultTmp).unwrap().is_empty());
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "base");

    // Results are read-only.
    assert!(fs::write(path.join("new"), "x").is_err());

    // A clone has the base's content and is writable.
    let clone = b.clone_tree(&key("result/a"), &key("result-tmp/b")).unwrap();
    assert_eq!(fs::read_to_string(clone.join("file")).unwrap(), "base");
    assert_eq!(fs::read_to_string(clone.join("dir/inner")).unwrap(), "inner");
    assert_eq!(fs::metadata(&clone).unwrap().uid(), 1234);
    fs::write(clone.join("file"), "changed").unwrap();
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "base");

    // Commit never replaces an existing key; the tmp tree stays for removal.
    let err = b.commit(&key("result-tmp/b"), &key("result/a"), Some(&key("result/a"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS, "{err:?}");
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "base");
    let b_path = b.commit(&key("result-tmp/b"), &key("result/b"), Some(&key("result/a"))).unwrap();
    assert_eq!(fs::read_to_string(b_path.join("file")).unwrap(), "changed");
    assert_eq!(sorted(b.list(Namespace::Result).unwrap()), ["a", "b"]);

    // A missing base, a duplicate tmp key.
    let err = b.clone_tree(&key("result/nope"), &key("result-tmp/c")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND, "{err:?}");
    b.create(&key("result-tmp/c"), None).unwrap();
    let err = b.create(&key("result-tmp/c"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS, "{err:?}");

    // Removing an absent key is fine.
    b.remove(&key("result/nope")).unwrap();
    b.remove(&key("cache-tmp/nope")).unwrap();

    let free = b.free_percent().unwrap();
    assert!(free > 50.0 && free <= 100.0, "{free}");
    assert_eq!(b.check().unwrap().len(), 4);
}

#[test]
fn deferred_deletes_leave_nothing_behind() {
    let Some((pool, b)) = Pool::with_store() else { return };

    // a <- b <- (live clone c); remove the bases while their clones live.
    let a = b.create(&key("result-tmp/a"), None).unwrap();
    fs::write(a.join("f"), vec![7u8; 4 << 20]).unwrap();
    b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    b.clone_tree(&key("result/a"), &key("result-tmp/b")).unwrap();
    b.commit(&key("result-tmp/b"), &key("result/b"), Some(&key("result/a"))).unwrap();
    let c = b.clone_tree(&key("result/b"), &key("result-tmp/c")).unwrap();

    b.remove(&key("result/a")).unwrap();
    assert_eq!(b.path(&key("result/a")).unwrap(), None);
    assert_eq!(b.list(Namespace::Result).unwrap(), ["b"]);
    b.remove(&key("result/b")).unwrap();
    assert!(b.list(Namespace::Result).unwrap().is_empty());
    b.remove(&key("result/b")).unwrap();
    b.complete_deletes().unwrap();

    // The clone is intact, writable, and can itself become a base.
    assert_eq!(fs::read(c.join("f")).unwrap(), vec![7u8; 4 << 20]);
    fs::write(c.join("g"), "g").unwrap();
    b.commit(&key("result-tmp/c"), &key("result/c"), None).unwrap();
    let d = b.clone_tree(&key("result/c"), &key("result-tmp/d")).unwrap();
    assert_eq!(fs::read_to_string(d.join("g")).unwrap(), "g");

    // Caches: each generation is a clone of the previous one.
    let c1 = b.create(&key("cache-tmp/1-x"), Some(Owner { uid: 1, gid: 2 })).unwrap();
    fs::write(c1.join("f"), "1").unwrap();
    b.commit(&key("cache-tmp/1-x"), &key("cache/x.1"), None).unwrap();
    let c2 = b.clone_tree(&key("cache/x.1"), &key("cache-tmp/2-x")).unwrap();
    fs::write(c2.join("f"), "2").unwrap();
    b.commit(&key("cache-tmp/2-x"), &key("cache/x.2"), Some(&key("cache/x.1"))).unwrap();
    b.remove(&key("cache/x.1")).unwrap();
    assert_eq!(b.list(Namespace::Cache).unwrap(), ["x.2"]);
    let c3 = b.clone_tree(&key("cache/x.2"), &key("cache-tmp/3-x")).unwrap();
    assert_eq!(fs::read_to_string(c3.join("f")).unwrap(), "2");

    // Removing a base whose clones are mounted, then committing one clone
    // while its sibling (now cloned from it) is still mounted.
    let e = b.create(&key("result-tmp/e"), None).unwrap();
    fs::write(e.join("f"), "e").unwrap();
    b.commit(&key("result-tmp/e"), &key("result/e"), None).unwrap();
    let e1 = b.clone_tree(&key("result/e"), &key("result-tmp/e1")).unwrap();
    let e2 = b.clone_tree(&key("result/e"), &key("result-tmp/e2")).unwrap();
    b.remove(&key("result/e")).unwrap();
    assert_eq!(b.path(&key("result/e")).unwrap(), None);
    fs::write(e1.join("f1"), "1").unwrap();
    b.commit(&key("result-tmp/e1"), &key("result/e1"), None).unwrap();
    assert_eq!(fs::read_to_string(e2.join("f")).unwrap(), "e");
    b.commit(&key("result-tmp/e2"), &key("result/e2"), None).unwrap();
    let e3 = b.clone_tree(&key("result/e1"), &key("result-tmp/e3")).unwrap();
    assert_eq!(fs::read_to_string(e3.join("f1")).unwrap(), "1");
    b.remove(&key("result/e1")).unwrap();
    let e4 = b.clone_tree(&key("result/e2"), &key("result-tmp/e4")).unwrap();
    assert_eq!(fs::read_to_string(e4.join("f")).unwrap(), "e");

    // Names too long for ZFS are hashed, and listed by their real names.
    let long = "l".repeat(255);
    let long_tmp = b.create(&key(&format!("cache-tmp/{long}")), None).unwrap();
    fs::write(long_tmp.join("f"), "long").unwrap();
    assert_eq!(b.list(Namespace::CacheTmp).unwrap().iter().filter(|n| **n == long).count(), 1);
    b.commit(&key(&format!("cache-tmp/{long}")), &key(&format!("cache/{long}")), None).unwrap();
    assert!(b.list(Namespace::Cache).unwrap().contains(&long));
    assert!(!b.list(Namespace::CacheTmp).unwrap().contains(&long));
    let long_clone =
        b.clone_tree(&key(&format!("cache/{long}")), &key(&format!("result-tmp/{long}"))).unwrap();
    assert_eq!(fs::read_to_string(long_clone.join("f")).unwrap(), "long");
    assert!(b.list(Namespace::ResultTmp).unwrap().contains(&long));

    // Delete everything, in an awkward order (bases before their clones).
    for ns in Namespace::ALL {
        for name in b.list(ns).unwrap() {
            b.remove(&Key::new(ns, &name).unwrap()).unwrap();
        }
    }
    for ns in Namespace::ALL {
        assert!(b.list(ns).unwrap().is_empty(), "{ns}");
    }
    b.complete_deletes().unwrap();
    let d = &pool.dataset;
    let expected: Vec<String> = ["", "/cache", "/cache-tmp", "/result", "/result-tmp", "/trash"]
        .iter()
        .map(|s| format!("{d}{s}"))
        .collect();
    assert_eq!(sorted(pool.all()), expected, "no dataset or snapshot may be left");
    assert!(b.free_percent().unwrap() > 90.0);
}

#[test]
fn crash_leftovers_are_never_results_and_are_cleaned() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let d = &pool.dataset;

    // A build that died before its snapshot, and one that died after the
    // snapshot but before the rename (the commit point).
    zfs(&["create", &format!("{d}/result-tmp/dead1")]);
    b.create(&key("result-tmp/dead2"), None).unwrap();
    zfs(&["set", "readonly=on", &format!("{d}/result-tmp/dead2")]);
    zfs(&["snapshot", &format!("{d}/result-tmp/dead2@snap")]);
    assert!(b.list(Namespace::Result).unwrap().is_empty());
    assert_eq!(b.path(&key("result/dead1")).unwrap(), None);
    assert_eq!(sorted(b.list(Namespace::ResultTmp).unwrap()), ["dead1", "dead2"]);

    // A commit retried after such a crash still works.
    b.commit(&key("result-tmp/dead2"), &key("result/dead2"), None).unwrap();
    assert_eq!(b.list(Namespace::Result).unwrap(), ["dead2"]);

    // A removal that died between the rename into the trash and the destroy.
    zfs(&["create", &format!("{d}/trash/leftover")]);
    zfs(&["snapshot", &format!("{d}/trash/leftover@snap")]);

    // A process died after marking a clone removed, before destroying it:
    // its base cannot be destroyed yet, but its key can be built again.
    let x = b.create(&key("result-tmp/x"), None).unwrap();
    fs::write(x.join("f"), "old").unwrap();
    b.commit(&key("result-tmp/x"), &key("result/x"), None).unwrap();
    b.clone_tree(&key("result/x"), &key("result-tmp/y")).unwrap();
    retry(|| run("zfs", &["umount", &format!("{d}/result-tmp/y")]));
    zfs(&["set", "snapstore:removed=yes", &format!("{d}/result-tmp/y")]);
    assert!(b.list(Namespace::ResultTmp).unwrap().iter().all(|n| n != "y"));
    b.remove(&key("result/x")).unwrap();
    assert_eq!(b.path(&key("result/x")).unwrap(), None);
    let x = b.create(&key("result-tmp/x"), None).unwrap();
    fs::write(x.join("f"), "new").unwrap();
    let x = b.commit(&key("result-tmp/x"), &key("result/x"), None).unwrap();
    assert_eq!(fs::read_to_string(x.join("f")).unwrap(), "new");

    b.remove(&key("result-tmp/dead1")).unwrap();
    b.remove(&key("result/dead2")).unwrap();
    b.remove(&key("result/x")).unwrap();
    b.complete_deletes().unwrap();
    let left: Vec<String> =
        pool.all().into_iter().filter(|n| n.matches('/').count() > 2 || n.contains('@')).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn check_and_open_refuse_bad_setups() {
    if !usable() {
        return;
    }
    let pool = Pool::new();

    // A missing dataset, a missing pool, a wrong root, unknown options.
    let err = open(&pool.root, &format!("dataset = \"{}/nope\"", pool.name)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND, "{err:?}");
    assert!(err.message().contains("zfs create"), "{err}");
    let err = open(&pool.root, "dataset = \"nosuchpool4711/x\"").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND, "{err:?}");
    assert!(err.message().contains("zpool create"), "{err}");
    let err = open(Path::new("/elsewhere"), &pool.options()).err().unwrap();
    assert!(err.message().contains("zfs set mountpoint=/elsewhere"), "{err}");
    let err = open(&pool.root, &format!("{}\nsnapdir = 1", pool.options())).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{err:?}");
    assert!(open(&pool.root, "dataset = \"-x\"").is_err());

    // The root may be spelt with a trailing slash.
    let b = open(&PathBuf::from(format!("{}/", pool.root.display())), &pool.options()).unwrap();
    let lines = b.check().unwrap();
    assert!(lines.iter().any(|l| l.contains("free")), "{lines:?}");

    // The dataset disappears after open.
    // (Unmounted first, deepest first: zfs-fuse's rename alone stays busy.)
    let tree = zfs(&["list", "-H", "-o", "name", "-r", &pool.dataset]);
    for dataset in tree.lines().rev() {
        let _ = run("zfs", &["umount", dataset]);
    }
    retry(|| run("zfs", &["rename", &pool.dataset, &format!("{}/moved", pool.name)]));
    let err = b.check().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND, "{err:?}");
    assert!(err.message().contains(&format!("zfs create -p -o mountpoint={}", pool.root.display())), "{err}");
    assert!(!err.message().contains('\n'));
}

#[test]
fn parallel_builds_on_different_keys() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let base = b.create(&key("result-tmp/base"), None).unwrap();
    fs::write(base.join("f"), "base").unwrap();
    b.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();
    std::thread::scope(|s| {
        for i in 0..4 {
            let b = &b;
            s.spawn(move || {
                for j in 0..3 {
                    let (tmp, dst) = (key(&format!("result-tmp/t{i}-{j}")), key(&format!("result/r{i}-{j}")));
                    let path = b.clone_tree(&key("result/base"), &tmp).unwrap();
                    fs::write(path.join("g"), format!("{i}-{j}")).unwrap();
                    b.commit(&tmp, &dst, Some(&key("result/base"))).unwrap();
                }
            });
        }
    });
    assert_eq!(b.list(Namespace::Result).unwrap().len(), 13);
    b.remove(&key("result/base")).unwrap();
    std::thread::scope(|s| {
        for i in 0..4 {
            let b = &b;
            s.spawn(move || {
                for j in 0..3 {
                    let dst = key(&format!("result/r{i}-{j}"));
                    let path = b.path(&dst).unwrap().unwrap();
                    assert_eq!(fs::read_to_string(path.join("g")).unwrap(), format!("{i}-{j}"));
                    b.remove(&dst).unwrap();
                }
            });
        }
    });
    b.complete_deletes().unwrap();
    assert_eq!(pool.all().len(), 6, "{:?}", pool.all());
}

#[test]
fn mounts_left_in_trees_are_detached_not_crossed() {
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let _unbind = Unbind(pool.root.clone());
    let b = pool.open();
    let outside = Outside::new();
    let before = outside.checksum();

    // A build leaves a bind mount in its tree: the commit detaches it and
    // keeps only the tree's own files.
    let tmp = b.create(&key("result-tmp/a"), None).unwrap();
    fs::write(tmp.join("own"), "own").unwrap();
    fs::create_dir(tmp.join("mnt")).unwrap();
    bind(&outside.0, &tmp.join("mnt"));
    let result = b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    assert_eq!(binds_under(&pool.root), Vec::<PathBuf>::new());
    assert_eq!(fs::read_to_string(result.join("own")).unwrap(), "own");
    assert_eq!(fs::read_dir(result.join("mnt")).unwrap().count(), 0, "the mount's files were committed");

    // A build on it leaves one in its tree, a sandbox one in the result;
    // both are removed (the result while its clone lives, and then the
    // clone), and their space given back.
    let clone = b.clone_tree(&key("result/a"), &key("result-tmp/b")).unwrap();
    bind(&outside.0, &clone.join("mnt"));
    bind(&outside.0, &result.join("mnt"));
    assert_eq!(binds_under(&pool.root).len(), 2);
    b.remove(&key("result/a")).unwrap();
    b.remove(&key("result-tmp/b")).unwrap();
    b.complete_deletes().unwrap();

    assert_eq!(binds_under(&pool.root), Vec::<PathBuf>::new());
    assert_eq!(outside.checksum(), before, "data outside the store changed");
    assert_eq!(pool.all().len(), 6, "left behind: {:?}", pool.all());
}

/// Runs `f` with `zfs` and `zpool` out of reach (an empty `PATH`): any
/// command it runs fails.
fn without_zfs<T>(f: impl FnOnce() -> T) -> T {
    let saved = std::env::var_os("PATH");
    std::env::set_var("PATH", "/nonexistent");
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match saved {
        Some(path) => std::env::set_var("PATH", path),
        None => std::env::remove_var("PATH"),
    }
    out.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `f` with a `zfs` in `PATH` that logs its arguments; returns them.
fn zfs_commands_of(f: impl FnOnce()) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let wrapper = dir.path().join("zfs");
    let real = run("sh", &["-c", "command -v zfs"]).unwrap();
    fs::write(
        &wrapper,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n", log.display(), real.trim()),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let saved = std::env::var_os("PATH").unwrap_or_default();
    let mut path = std::ffi::OsString::from(dir.path());
    path.push(":");
    path.push(&saved);
    std::env::set_var("PATH", path);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::env::set_var("PATH", saved);
    out.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    fs::read_to_string(&log).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn lookups_and_later_opens_run_no_zfs_command() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let a = b.create(&key("result-tmp/a"), None).unwrap();
    fs::write(a.join("f"), "a").unwrap();
    b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    b.create(&key("result-tmp/t"), None).unwrap();

    without_zfs(|| {
        let b = pool.open();
        assert_eq!(b.path(&key("result/a")).unwrap(), Some(pool.root.join("result/a")));
        assert_eq!(b.path(&key("result/nope")).unwrap(), None);
        assert_eq!(b.path(&key("result-tmp/a")).unwrap(), None);
        assert_eq!(b.list(Namespace::Result).unwrap(), ["a"]);
        assert_eq!(b.list(Namespace::ResultTmp).unwrap(), ["t"]);
        assert_eq!(b.key_dir(Namespace::Result).unwrap(), Some(pool.root.join("result")));
        assert_eq!(b.key_dir(Namespace::ResultTmp).unwrap(), None);
        // zfs really is out of reach here.
        assert_eq!(b.check().unwrap_err().kind(), ErrorKind::UNSUPPORTED);
    });
}

#[test]
fn commits_run_three_zfs_commands_and_lone_removals_one() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let base = b.create(&key("result-tmp/base"), None).unwrap();
    fs::write(base.join("f"), "base").unwrap();
    b.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();

    // The first clone of a result takes its snapshot; later ones do not.
    let first = zfs_commands_of(|| {
        b.clone_tree(&key("result/base"), &key("result-tmp/first")).unwrap();
    });
    assert_eq!(first.len(), 3, "{first:?}");
    let cloned = zfs_commands_of(|| {
        b.clone_tree(&key("result/base"), &key("result-tmp/x")).unwrap();
    });
    assert_eq!(cloned.len(), 2, "{cloned:?}");
    let committed = zfs_commands_of(|| {
        b.commit(&key("result-tmp/x"), &key("result/x"), Some(&key("result/base"))).unwrap();
    });
    // `set readonly=on`, `rename`, `mount`.
    assert_eq!(committed.len(), 3, "{committed:?}");
    assert!(committed[0].starts_with("set readonly=on "), "{committed:?}");
    let removed = zfs_commands_of(|| b.remove(&key("result/x")).unwrap());
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(b.path(&key("result/x")).unwrap(), None);
    assert!(!pool.root.join("result/x").exists());
}

#[test]
fn the_result_directory_holds_committed_results_only() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let d = &pool.dataset;
    let dir = b.key_dir(Namespace::Result).unwrap().unwrap();
    let is_result = |name: &str| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_dir());

    // Committed: there, read-only, with its files.
    let a = b.create(&key("result-tmp/a"), None).unwrap();
    fs::write(a.join("f"), "a").unwrap();
    let path = b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    assert_eq!(path, dir.join("a"));
    assert_eq!(fs::read_to_string(dir.join("a/f")).unwrap(), "a");
    assert!(fs::write(dir.join("a/g"), "g").is_err(), "a result is writable");

    // A commit that died after sealing its tree (`readonly=on`, its first
    // step), before the rename: not a result, and the removal recovery
    // makes of the tree takes it away.
    let half = b.create(&key("result-tmp/half"), None).unwrap();
    fs::write(half.join("f"), "half").unwrap();
    zfs(&["set", "readonly=on", &format!("{d}/result-tmp/half")]);
    assert!(!is_result("half"));
    assert!(!b.list(Namespace::Result).unwrap().contains(&"half".to_string()));
    assert!(b.list(Namespace::ResultTmp).unwrap().contains(&"half".to_string()));
    b.remove(&key("result-tmp/half")).unwrap();
    assert_eq!(b.path(&key("result-tmp/half")).unwrap(), None);
    assert!(!b.list(Namespace::ResultTmp).unwrap().contains(&"half".to_string()));

    // Removed while a clone lives (so not destroyed at once), and removed
    // with its clone removed too (so it waits).
    b.clone_tree(&key("result/a"), &key("result-tmp/c")).unwrap();
    b.remove(&key("result/a")).unwrap();
    assert!(!is_result("a"));
    let e = b.create(&key("result-tmp/e"), None).unwrap();
    fs::write(e.join("f"), "e").unwrap();
    b.commit(&key("result-tmp/e"), &key("result/e"), None).unwrap();
    b.clone_tree(&key("result/e"), &key("result-tmp/e1")).unwrap();
    b.remove(&key("result-tmp/e1")).unwrap();
    b.remove(&key("result/e")).unwrap();
    assert!(!is_result("e"));

    // A name too long for ZFS is still at its key's path.
    let long = "l".repeat(255);
    let t = b.create(&key(&format!("result-tmp/{long}")), None).unwrap();
    fs::write(t.join("f"), "long").unwrap();
    b.commit(&key(&format!("result-tmp/{long}")), &key(&format!("result/{long}")), None).unwrap();
    assert_eq!(fs::read_to_string(dir.join(&long).join("f")).unwrap(), "long");
    assert_eq!(b.list(Namespace::Result).unwrap(), std::slice::from_ref(&long));

    // A directory nobody mounted is no result, and goes.
    fs::create_dir(dir.join("stray")).unwrap();
    assert_eq!(b.path(&key("result/stray")).unwrap(), None);
    assert_eq!(b.list(Namespace::Result).unwrap(), std::slice::from_ref(&long));
    assert!(!dir.join("stray").exists());

    // A result unmounted behind the store's back (a restarted ZFS daemon)
    // is mounted again by the next full open.
    let b2 = b.create(&key("result-tmp/b"), None).unwrap();
    fs::write(b2.join("f"), "b").unwrap();
    b.commit(&key("result-tmp/b"), &key("result/b"), None).unwrap();
    retry(|| run("zfs", &["umount", &format!("{d}/result/b")]));
    fs::remove_file(pool.root.join(".snapstore/zfs-layout")).unwrap();
    let b = pool.open();
    assert_eq!(fs::read_to_string(dir.join("b/f")).unwrap(), "b");
    assert!(fs::write(dir.join("b/g"), "g").is_err(), "a result is writable");
    assert_eq!(b.path(&key("result/b")).unwrap(), Some(dir.join("b")));

    for name in b.list(Namespace::Result).unwrap() {
        b.remove(&Key::new(Namespace::Result, &name).unwrap()).unwrap();
    }
    for name in b.list(Namespace::ResultTmp).unwrap() {
        b.remove(&Key::new(Namespace::ResultTmp, &name).unwrap()).unwrap();
    }
    b.complete_deletes().unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn results_stay_read_only_when_an_admin_mounts_them_again() {
    let Some((pool, b)) = Pool::with_store() else { return };
    let a = b.create(&key("result-tmp/a"), None).unwrap();
    fs::write(a.join("f"), "a").unwrap();
    let path = b.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    let dataset = format!("{}/result/a", pool.dataset);
    assert_eq!(zfs(&["get", "-H", "-o", "value", "readonly", &dataset]).trim(), "on");

    // Mounted again the plain way, without `-o ro`.
    retry(|| run("zfs", &["umount", &dataset]));
    retry(|| run("zfs", &["mount", &dataset]));
    assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "a");
    assert!(fs::write(path.join("f"), "changed").is_err(), "a result is writable");
    assert!(fs::write(path.join("g"), "new").is_err(), "a result is writable");
    assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "a");
    // Its clones are writable.
    let clone = b.clone_tree(&key("result/a"), &key("result-tmp/c")).unwrap();
    fs::write(clone.join("g"), "new").unwrap();
}

/// zfs-fuse hung for good when a tree was unmounted while the kernel still
/// held requests for it (the `RELEASE` of the files a build just closed)
/// and the daemon was busy serving other trees: its unmount handler then
/// loops for ever, holding the lock of every FUSE request. Here: four
/// threads each remove and commit trees right after writing them, then
/// remove results right after reading them. A hang
/// fails the test after a while instead of blocking it (zfs-fuse must then
/// be restarted).
#[test]
fn unmounts_right_after_writes_do_not_hang_zfs_fuse() {
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let (root, options) = (pool.root.clone(), pool.options());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let b = open(&root, &options).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = &b;
                s.spawn(move || {
                    for n in 0..8 {
                        for (tmp, dst) in [("failed", None), ("t", Some(format!("result/r{t}-{n}")))] {
                            let tmp = key(&format!("result-tmp/{tmp}{t}-{n}"));
                            let path = b.create(&tmp, None).unwrap();
                            for i in 0..20 {
                                fs::write(path.join(format!("f{i}")), "data").unwrap();
                            }
                            match dst {
                                Some(dst) => drop(b.commit(&tmp, &key(&dst), None).unwrap()),
                                // A failed build: its tree goes right after its last write.
                                None => b.remove(&tmp).unwrap(),
                            }
                        }
                    }
                    // Results removed right after they were read.
                    for n in 0..4 {
                        let result = key(&format!("result/r{t}-{n}"));
                        let path = b.path(&result).unwrap().unwrap();
                        assert_eq!(fs::read_to_string(path.join("f19")).unwrap(), "data");
                        b.remove(&result).unwrap();
                    }
                });
            }
        });
        done_tx.send(()).unwrap();
    });
    if done_rx.recv_timeout(std::time::Duration::from_secs(300)).is_err() {
        // Ending the process: the pool's cleanup would hang on the daemon too.
        eprintln!(
            "80 unmounts took over 5 minutes: zfs-fuse hangs (see backend-zfs/src/fuse.rs); restart it"
        );
        std::process::exit(101);
    }
    let b = pool.open();
    assert_eq!(b.list(Namespace::Result).unwrap().len(), 16);
    assert_eq!(b.list(Namespace::ResultTmp).unwrap(), Vec::<String>::new());
    assert_eq!(fs::read_to_string(pool.root.join("result/r3-7/f19")).unwrap(), "data");
}
