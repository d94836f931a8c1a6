//! The zfs backend on a real, file-backed ZFS pool (zfs-fuse here).
//!
//! Needs root and zfs-fuse (or a ZFS kernel module): without them each test
//! is skipped with a loud message, unless `CI=true`, where that is a failure.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use snapstore_zfs::{open, ZfsBackend};
use store_api::util::mounts::mounts_under;
use store_api::{ErrorKind, Key, Namespace, Owner, SnapshotBackend};

fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn zfs(args: &[&str]) -> String {
    run("zfs", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the tests can run here; if not, says why (or fails under CI).
fn usable() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if run("sh", &["-c", "command -v zpool && command -v zfs"]).is_err() {
        Some("the zfs tools are missing (apt-get install -y zfs-fuse)")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("zfs backend tests cannot run: {why}")
        }
        Some(why) => {
            eprintln!("\n!!! SKIPPING zfs backend test: {why} !!!\n");
            false
        }
    }
}

/// Starts the zfs-fuse daemon unless ZFS already answers (a daemon or a
/// kernel module). Left running: other tests and users share it.
fn ensure_daemon() {
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if run("zpool", &["list"]).is_ok() {
        return;
    }
    if run("pgrep", &["-x", "zfs-fuse"]).is_err() {
        run("zfs-fuse", &[]).unwrap_or_else(|e| panic!("cannot start zfs-fuse: {e}"));
    }
    let start = Instant::now();
    while run("zpool", &["list"]).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "zfs-fuse did not come up");
        sleep(Duration::from_millis(100));
    }
}

/// A file-backed pool with a dataset for the store; destroyed on drop, also
/// when the test fails.
struct Pool {
    name: String,
    dir: PathBuf,
    dataset: String,
    root: PathBuf,
    /// One pool at a time: zfs-fuse wedged (all its mounts hung) when tests
    /// created and destroyed pools in parallel. Released after the drop.
    _serial: MutexGuard<'static, ()>,
}

impl Pool {
    fn new() -> Pool {
        static SERIAL: Mutex<()> = Mutex::new(());
        // A failed test poisons the lock; the next one may still run.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        ensure_daemon();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("sstest{}x{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir).unwrap();
        let image = dir.join("pool.img");
        run("truncate", &["-s", "512M", image.to_str().unwrap()]).unwrap();
        let mnt = dir.join("mnt");
        // The guard exists before the pool so that a half-made pool goes too.
        let dataset = format!("{name}/store");
        let root = dir.join("root");
        let pool = Pool { name, dir, dataset, root, _serial: serial };
        zfs_pool(&["create", "-m", mnt.to_str().unwrap(), &pool.name, image.to_str().unwrap()]);
        zfs(&["create", "-o", &format!("mountpoint={}", pool.root.display()), &pool.dataset]);
        pool
    }

    fn options(&self) -> String {
        format!("dataset = \"{}\"", self.dataset)
    }

    fn open(&self) -> ZfsBackend {
        open(&self.root, &self.options()).expect("open")
    }

    /// Every dataset and snapshot under the store's dataset.
    fn all(&self) -> Vec<String> {
        zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", &self.dataset])
            .lines()
            .map(String::from)
            .collect()
    }
}

fn zfs_pool(args: &[&str]) -> String {
    run("zpool", args).unwrap_or_else(|e| panic!("{e}"))
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Unmount deepest first, then destroy; zfs-fuse often reports a
        // dataset or pool busy for a moment after use, so retry (~30 s).
        if let Ok(tree) = run("zfs", &["list", "-H", "-o", "name", "-r", &self.name]) {
            for dataset in tree.lines().rev() {
                let _ = run("zfs", &["umount", dataset]);
            }
        }
        let mut last = String::new();
        for _ in 0..150 {
            match run("zpool", &["destroy", "-f", &self.name]) {
                Ok(_) => {
                    let _ = fs::remove_dir_all(&self.dir);
                    return;
                }
                Err(e) if e.contains("no such pool") => {
                    let _ = fs::remove_dir_all(&self.dir);
                    return;
                }
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(200));
        }
        // Keep the image: the pool still uses it.
        eprintln!(
            "\n!!! could not destroy test pool {} ({last}); zfs-fuse holds it: \
             restart the zfs-fuse daemon, then `zpool destroy {}` and remove {} !!!\n",
            self.name,
            self.name,
            self.dir.display()
        );
    }
}

/// Retries a zfs command that zfs-fuse may report busy for a moment.
fn retry(f: impl Fn() -> Result<String, String>) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match f() {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(100));
    }
    panic!("{last}")
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn create_clone_commit() {
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let b = pool.open();

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
    let readonly = zfs(&["get", "-H", "-o", "value", "readonly", &format!("{}/result/a", pool.dataset)]);
    assert_eq!(readonly.trim(), "on");
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
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let b = pool.open();

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
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let b = pool.open();
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
    if !usable() {
        return;
    }
    let pool = Pool::new();
    let b = pool.open();
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

/// A directory outside the store, with content to checksum.
struct Outside(PathBuf);

impl Outside {
    fn new() -> Outside {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("sstest-outside-{}x{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("precious"), "keep me").unwrap();
        fs::write(dir.join("sub/data"), vec![42u8; 1 << 16]).unwrap();
        Outside(dir)
    }

    /// The names and contents of every file, hashed.
    fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut dirs = vec![self.0.clone()];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            hash.update(file.to_string_lossy().as_bytes());
            hash.update(fs::read(&file).unwrap());
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Detaches every bind mount the test left under the store root, before
/// the pool goes (a mount under a dataset keeps it busy).
struct Unbind(PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        if let Ok(mounts) = mounts_under(&self.0) {
            for point in mounts.iter().filter(|p| p.ends_with("mnt")) {
                let _ = run("umount", &["-l", point.to_str().unwrap()]);
            }
        }
    }
}

fn bind(source: &Path, target: &Path) {
    run("mount", &["--bind", source.to_str().unwrap(), target.to_str().unwrap()]).unwrap();
}

/// The bind mounts a build or a sandbox left under the store root.
fn binds_under(root: &Path) -> Vec<PathBuf> {
    mounts_under(root).unwrap().into_iter().filter(|p| p.ends_with("mnt")).collect()
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
