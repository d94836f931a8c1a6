//! The backend on a real, loop-mounted btrfs. Needs root and a free loop
//! device; otherwise each test is skipped loudly (or fails when CI=true).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{is_ro, run, LoopBtrfs};
use snapstore_btrfs::{open, Btrfs};
use store_api::{ErrorKind, Key, Namespace, Owner, SnapshotBackend};

fn key(s: &str) -> Key {
    Key::parse(s).expect("valid key")
}

fn store(fs: &LoopBtrfs) -> Btrfs {
    open(&fs.root(), "").expect("open store")
}

/// Every file under `dir` (relative path -> contents; directories as "<dir>").
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(base).expect("prefix").to_string_lossy().into_owned();
            if path.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(base, &path, out);
            } else {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Builds result `id` (optionally on `base`), writing `files` into it.
fn build(s: &Btrfs, id: &str, base: Option<&str>, files: &[(&str, &str)]) -> std::path::PathBuf {
    let tmp = key(&format!("result-tmp/{id}"));
    let dir = match base {
        Some(base) => s.clone_tree(&key(&format!("result/{base}")), &tmp).expect("clone"),
        None => s.create(&tmp, None).expect("create"),
    };
    for (name, text) in files {
        fs::write(dir.join(name), text).expect("write");
    }
    s.commit(&tmp, &key(&format!("result/{id}")), None).expect("commit")
}

/// The subvolumes of the whole scratch filesystem (and those deleted but
/// not cleaned yet, with `-d`).
fn subvolumes(fs: &LoopBtrfs, deleted: bool) -> Vec<String> {
    let args: &[&str] = if deleted { &["subvolume", "list", "-d"] } else { &["subvolume", "list"] };
    let mut args = args.to_vec();
    args.push(fs.mnt_str());
    run("btrfs", &args).expect("btrfs subvolume list").lines().map(str::to_string).collect()
}

#[test]
fn results_are_read_only_and_clones_equal_their_base() {
    let Some(fs) = LoopBtrfs::new("readonly") else {
        return;
    };
    let s = store(&fs);

    let tmp = key("result-tmp/base");
    let dir = s.create(&tmp, Some(Owner { uid: 1234, gid: 5678 })).expect("create");
    let meta = fs::metadata(&dir).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    fs::create_dir(dir.join("sub")).expect("mkdir");
    for i in 0..200 {
        fs::write(dir.join(format!("sub/f{i}")), format!("file {i}")).expect("write");
    }
    assert_eq!(s.list(Namespace::ResultTmp).expect("list"), vec!["base"]);

    let base = s.commit(&tmp, &key("result/base"), None).expect("commit");
    assert!(is_ro(&base), "result is not read-only");
    assert!(fs::write(base.join("new"), "x").is_err(), "a result accepted a write");
    assert_eq!(s.path(&tmp).expect("path"), None);
    assert_eq!(s.path(&key("result/base")).expect("path"), Some(base.clone()));
    assert!(s.list(Namespace::ResultTmp).expect("list").is_empty());
    assert_eq!(s.list(Namespace::Result).expect("list"), vec!["base"]);

    let child = s.clone_tree(&key("result/base"), &key("result-tmp/child")).expect("clone");
    assert!(!is_ro(&child), "a clone must be writable");
    assert_eq!(contents(&child), contents(&base));
    fs::write(child.join("extra"), "more").expect("write in clone");
    assert!(!base.join("extra").exists(), "writing a clone changed its base");

    // Commit never replaces a result, and leaves the tree to the caller.
    let err = s.commit(&key("result-tmp/child"), &key("result/base"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS, "{err:?}");
    assert!(child.join("extra").exists());
    let result =
        s.commit(&key("result-tmp/child"), &key("result/child"), Some(&key("result/base"))).expect("commit");
    assert!(is_ro(&result));
    assert_eq!(fs::read_to_string(result.join("extra")).expect("read"), "more");

    let err = s.clone_tree(&key("result/missing"), &key("result-tmp/x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND, "{err:?}");
    let err = s.create(&key("result-tmp/dup"), None).and_then(|_| s.create(&key("result-tmp/dup"), None));
    assert_eq!(err.unwrap_err().kind(), ErrorKind::ALREADY_EXISTS);

    let lines = s.check().expect("check");
    assert!(lines.iter().any(|l| l.contains("btrfs")), "{lines:?}");
}

#[test]
fn results_built_on_a_removed_base_stay_intact() {
    let Some(fs) = LoopBtrfs::new("removed-base") else {
        return;
    };
    let s = store(&fs);
    build(&s, "a", None, &[("a", "1")]);
    let b = build(&s, "b", Some("a"), &[("b", "2")]);
    let c = build(&s, "c", Some("b"), &[("c", "3")]);
    let before = contents(&c);

    s.remove(&key("result/a")).expect("remove a");
    s.remove(&key("result/b")).expect("remove b");
    s.remove(&key("result/b")).expect("removing an absent key is fine");
    s.complete_deletes().expect("complete_deletes");
    assert_eq!(s.path(&key("result/a")).expect("path"), None);
    assert!(!b.exists());
    assert_eq!(contents(&c), before);
    assert_eq!(fs::read_to_string(c.join("a")).expect("read"), "1");
    assert_eq!(s.list(Namespace::Result).expect("list"), vec!["c"]);
}

#[test]
fn nested_subvolumes_are_kept_and_deleted() {
    let Some(fs) = LoopBtrfs::new("nested") else {
        return;
    };
    let s = store(&fs);
    let tmp = key("result-tmp/nested");
    let dir = s.create(&tmp, None).expect("create");
    // What a build that runs `btrfs subvolume create` leaves behind.
    fs::create_dir_all(dir.join("deep/er")).expect("mkdir");
    for sub in ["inner", "deep/er/inner2", "inner/innermost"] {
        run("btrfs", &["subvolume", "create", dir.join(sub).to_str().expect("utf8")])
            .expect("subvolume create");
        fs::write(dir.join(sub).join("data"), sub).expect("write");
    }
    let result = s.commit(&tmp, &key("result/nested"), None).expect("commit");
    for sub in ["", "inner", "deep/er/inner2", "inner/innermost"] {
        assert!(is_ro(&result.join(sub)), "{sub} is not read-only");
    }
    assert_eq!(fs::read_to_string(result.join("inner/innermost/data")).expect("read"), "inner/innermost");

    // A writable tree with nested subvolumes goes too (a failed build's).
    let tmp2 = key("result-tmp/failed");
    let dir2 = s.create(&tmp2, None).expect("create");
    run("btrfs", &["subvolume", "create", dir2.join("x").to_str().expect("utf8")]).expect("subvolume create");

    s.remove(&key("result/nested")).expect("remove nested result");
    s.remove(&tmp2).expect("remove nested tmp");
    assert_eq!(s.path(&key("result/nested")).expect("path"), None);
    assert!(s.list(Namespace::Result).expect("list").is_empty());
    s.complete_deletes().expect("complete_deletes");
    assert_eq!(subvolumes(&fs, false), Vec::<String>::new());
    assert_eq!(subvolumes(&fs, true), Vec::<String>::new());
}

/// A build that makes its own tree immutable or append-only: the commit
/// goes through (the read-only result carries the flag along) and the
/// result, then everything, is deleted.
#[test]
fn an_immutable_tree_commits_and_is_deleted() {
    let Some(fs) = LoopBtrfs::new("immutable") else {
        return;
    };
    let s = store(&fs);
    build(&s, "base", None, &[("f", "1")]);
    for (id, flag) in [("i", "+i"), ("a", "+a")] {
        let tmp = key(&format!("result-tmp/{id}"));
        let dir = s.clone_tree(&key("result/base"), &tmp).expect("clone");
        fs::write(dir.join("g"), "2").expect("write");
        run("chattr", &[flag, dir.to_str().expect("utf8")]).expect("chattr");
        let result = s.commit(&tmp, &key(&format!("result/{id}")), None).expect("commit");
        assert_eq!(fs::read_to_string(result.join("g")).expect("read"), "2");
        s.remove(&key(&format!("result/{id}"))).expect("remove");
    }
    s.remove(&key("result/base")).expect("remove");
    s.complete_deletes().expect("complete_deletes");
    assert_eq!(subvolumes(&fs, false), Vec::<String>::new());
    for ns in Namespace::ALL {
        let left: Vec<_> = fs::read_dir(fs.root().join(ns.as_str())).expect("read_dir").collect();
        assert!(left.is_empty(), "{ns}: {left:?}");
    }
}

#[test]
fn nothing_is_left_after_deleting_everything() {
    let Some(fs) = LoopBtrfs::new("everything") else {
        return;
    };
    let s = store(&fs);
    build(&s, "r1", None, &[("f", "1")]);
    build(&s, "r2", Some("r1"), &[("g", "2")]);
    let cache = s.create(&key("cache-tmp/1-c"), Some(Owner { uid: 1, gid: 1 })).expect("create cache");
    fs::write(cache.join("pkg"), "data").expect("write");
    s.commit(&key("cache-tmp/1-c"), &key("cache/c.1"), None).expect("commit cache");
    s.clone_tree(&key("cache/c.1"), &key("cache-tmp/2-c")).expect("clone cache");
    s.create(&key("result-tmp/in-progress"), None).expect("create");
    // Leftovers of a process killed mid-commit and mid-remove (their
    // transit names are free of locks), and a stray plain directory.
    let dead = fs.root().join("result/.commit-1-2-3");
    run("btrfs", &["subvolume", "create", dead.to_str().expect("utf8")]).expect("subvolume create");
    run("btrfs", &["property", "set", "-ts", dead.to_str().expect("utf8"), "ro", "true"]).expect("set ro");
    fs::create_dir_all(fs.root().join("cache/.remove-1-2-3/plain")).expect("mkdir");
    assert!(!s.list(Namespace::Result).expect("list").iter().any(|n| n.starts_with('.')));

    for ns in Namespace::ALL {
        for name in s.list(ns).expect("list") {
            s.remove(&Key::new(ns, &name).expect("key")).expect("remove");
        }
    }
    s.complete_deletes().expect("complete_deletes");
    assert_eq!(subvolumes(&fs, false), Vec::<String>::new());
    assert_eq!(subvolumes(&fs, true), Vec::<String>::new());
    for ns in Namespace::ALL {
        let left: Vec<_> = fs::read_dir(fs.root().join(ns.as_str())).expect("read_dir").collect();
        assert!(left.is_empty(), "{ns}: {left:?}");
    }
}

#[test]
fn free_percent_follows_the_filesystem() {
    let Some(fs) = LoopBtrfs::new("df") else {
        return;
    };
    let s = store(&fs);
    // Against the estimate of `btrfs filesystem usage`, on a filesystem
    // that is mostly unallocated.
    let usage = run("btrfs", &["filesystem", "usage", "-b", fs.mnt_str()]).expect("usage");
    let field = |name: &str| -> f64 {
        let line = usage.lines().find(|l| l.trim_start().starts_with(name)).expect("usage field");
        line.split_whitespace().find_map(|w| w.parse().ok()).expect("number")
    };
    let expected = field("Free (estimated):") / field("Device size:") * 100.0;
    let free = s.free_percent().expect("df");
    assert!((free - expected).abs() < 2.0, "free_percent {free} vs btrfs usage {expected}");
    assert!(free > 50.0 && free <= 100.0, "{free}");

    let tmp = key("result-tmp/big");
    let dir = s.create(&tmp, None).expect("create");
    fs::write(dir.join("big"), vec![0x5a_u8; 300 << 20]).expect("write");
    fs::File::open(dir.join("big")).and_then(|f| f.sync_all()).expect("sync");
    let full = s.free_percent().expect("df");
    assert!(full < free - 20.0, "300 MiB written but free went {free} -> {full}");

    s.remove(&tmp).expect("remove");
    s.complete_deletes().expect("complete_deletes");
    let after = s.free_percent().expect("df");
    assert!(after > free - 3.0, "free did not come back after complete_deletes: {free} -> {full} -> {after}");
}

#[test]
fn concurrent_builds_and_deletes() {
    let Some(fs) = LoopBtrfs::new("concurrent") else {
        return;
    };
    let s = store(&fs);
    build(&s, "base", None, &[("base", "0")]);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..10 {
                    let id = format!("t{t}-{i}");
                    let path = build(s, &id, Some("base"), &[("mine", &id)]);
                    assert_eq!(fs::read_to_string(path.join("mine")).expect("read"), id);
                    s.remove(&key(&format!("result/{id}"))).expect("remove");
                    if i % 3 == 0 {
                        s.complete_deletes().expect("complete_deletes");
                    }
                }
            });
        }
    });
    assert_eq!(s.list(Namespace::Result).expect("list"), vec!["base"]);
}

#[test]
fn refuses_a_root_that_is_not_on_btrfs() {
    let dir = std::env::temp_dir().join(format!("snapstore-btrfs-notbtrfs-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir");
    let on_btrfs =
        run("stat", &["-f", "-c", "%T", dir.to_str().expect("utf8")]).is_ok_and(|t| t.trim() == "btrfs");
    if on_btrfs {
        eprintln!("\n!!!!!!!! SKIPPED: {} is on btrfs itself\n", dir.display());
    } else {
        let err = open(&dir.join("store"), "").err().expect("a non-btrfs root was accepted");
        assert_eq!(err.kind(), ErrorKind::UNSUPPORTED, "{err:?}");
        assert!(err.message().contains("would not be on btrfs"), "{err}");
        assert!(!err.message().contains('\n'));
        assert!(!dir.join("store").exists(), "open created the root on the wrong filesystem");
    }
    let err = open(&dir, "dataset = \"x\"").err().expect("an unknown option was accepted");
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{err:?}");
    assert!(err.message().contains("dataset"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
