//! Fixtures of the zfs backend tests: a file-backed ZFS pool (zfs-fuse
//! here), skipping where the machine cannot run them, and data outside the
//! store to check.
//!
//! Needs root and zfs-fuse (or a ZFS kernel module): without them each test
//! is skipped with a loud message, unless `CI=true`, where that is a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use snapstore_zfs::{open, ZfsBackend};
use store_api::util::mounts::mounts_under;
use store_api::Key;

pub fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn zfs(args: &[&str]) -> String {
    run("zfs", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the tests can run here; if not, says why (or fails under CI).
pub fn usable() -> bool {
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
pub fn ensure_daemon() {
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
pub struct Pool {
    pub name: String,
    pub dir: PathBuf,
    pub dataset: String,
    pub root: PathBuf,
    /// One pool at a time: zfs-fuse wedged (all its mounts hung) when tests
    /// created and destroyed pools in parallel. Released after the drop.
    _serial: MutexGuard<'static, ()>,
}

impl Pool {
    pub fn new() -> Pool {
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

    pub fn options(&self) -> String {
        format!("dataset = \"{}\"", self.dataset)
    }

    pub fn open(&self) -> ZfsBackend {
        open(&self.root, &self.options()).expect("open")
    }

    /// Every dataset and snapshot under the store's dataset.
    pub fn all(&self) -> Vec<String> {
        zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", &self.dataset])
            .lines()
            .map(String::from)
            .collect()
    }
}

pub fn zfs_pool(args: &[&str]) -> String {
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
pub fn retry(f: impl Fn() -> Result<String, String>) -> String {
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

pub fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A directory outside the store, with content to checksum.
pub struct Outside(pub PathBuf);

impl Outside {
    pub fn new() -> Outside {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("sstest-outside-{}x{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("precious"), "keep me").unwrap();
        fs::write(dir.join("sub/data"), vec![42u8; 1 << 16]).unwrap();
        Outside(dir)
    }

    /// The names and contents of every file, hashed.
    pub fn checksum(&self) -> String {
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
pub struct Unbind(pub PathBuf);

impl Drop for Unbind {
    fn drop(&mut self) {
        if let Ok(mounts) = mounts_under(&self.0) {
            for point in mounts.iter().filter(|p| p.ends_with("mnt")) {
                let _ = run("umount", &["-l", point.to_str().unwrap()]);
            }
        }
    }
}

pub fn bind(source: &Path, target: &Path) {
    run("mount", &["--bind", source.to_str().unwrap(), target.to_str().unwrap()]).unwrap();
}

/// The bind mounts a build or a sandbox left under the store root.
pub fn binds_under(root: &Path) -> Vec<PathBuf> {
    mounts_under(root).unwrap().into_iter().filter(|p| p.ends_with("mnt")).collect()
}
