//! Shared test support: a store in a temporary directory, driven through
//! the `snapstore` binary, and loop-mounted filesystems for the backends
//! that need one.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EXIT_USAGE: i32 = 64;
pub const EXIT_NOT_FOUND: i32 = 66;
pub const EXIT_EXISTS: i32 = 73;
pub const EXIT_BUSY: i32 = 75;

/// The `snapstore` binary under test.
pub fn snapstore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapstore"))
}

/// Where cargo put the plugins: beside the binary.
pub fn plugin_dir() -> PathBuf {
    snapstore_bin().parent().unwrap().to_path_buf()
}

/// Whether plugin `name` was built (`cargo build --workspace`).
pub fn plugin_built(name: &str) -> bool {
    plugin_dir().join(format!("libsnapstore_{}.so", name.replace('-', "_"))).is_file()
}

pub fn require_plugin(name: &str) {
    assert!(
        plugin_built(name),
        "libsnapstore_{name}.so is not built in {}: run `cargo build --workspace` before the tests",
        plugin_dir().display()
    );
}

/// A store described by a config file in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub root: PathBuf,
    /// Kill any command that runs longer (for filesystems that can hang).
    pub timeout_secs: Option<u32>,
}

impl Fixture {
    /// An rsync store in a fresh temporary directory.
    pub fn rsync() -> Fixture {
        require_plugin("rsync");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Self::with_config(dir, &root, "[store]\nbackend = \"rsync\"\nroot = \"store\"\n")
    }

    /// A store with the given config text (written to `DIR/snapstore.toml`).
    pub fn with_config(dir: tempfile::TempDir, root: &Path, text: &str) -> Fixture {
        let config = dir.path().join("snapstore.toml");
        fs::write(&config, text).unwrap();
        Fixture { dir, config, root: root.to_path_buf(), timeout_secs: None }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.timeout_secs {
            Some(secs) => {
                let mut cmd = Command::new("timeout");
                cmd.args(["-s", "KILL", &secs.to_string()]).arg(snapstore_bin());
                cmd
            }
            None => Command::new(snapstore_bin()),
        };
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("SNAPSTORE_PLUGIN_PATH").env_remove("SNAPSTORE_CONFIG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapstore {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim_end().to_string()
    }

    /// Runs a command that must fail with `code` and a one-line `error:`.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "snapstore {args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("error: "), "snapstore {args:?} stderr: {stderr}");
        last.to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The path of result `id`, if any.
    pub fn result(&self, id: &str) -> Option<PathBuf> {
        self.json(&["result", id])["path"].as_str().map(PathBuf::from)
    }

    pub fn read_result(&self, id: &str, file: &str) -> String {
        let path = self.result(id).unwrap_or_else(|| panic!("no result {id}"));
        fs::read_to_string(path.join(file)).unwrap()
    }
}

/// True when running in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Skips a test that needs something missing here, loudly; in CI, fails.
pub fn skip(why: &str) {
    assert!(!in_ci(), "CI=true and this test cannot run: {why}");
    eprintln!("\n*** SKIPPED: {why} ***\n");
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A loop-mounted filesystem image, unmounted and detached on drop.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    pub mount: PathBuf,
}

impl LoopFs {
    /// Makes a `size` image formatted by `mkfs` (e.g. `["mkfs.btrfs", "-q"]`)
    /// and mounts it. `None` (after a loud skip) if that is not possible here.
    pub fn new(mkfs: &[&str], size: &str) -> Option<LoopFs> {
        if !is_root() {
            skip("loop filesystems need root");
            return None;
        }
        if Command::new(mkfs[0]).arg("-V").output().is_err()
            && Command::new("which").arg(mkfs[0]).output().map(|o| !o.status.success()).unwrap_or(true)
        {
            skip(&format!("{} is not installed", mkfs[0]));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        assert!(Command::new("truncate").args(["-s", size]).arg(&image).status().unwrap().success());
        let made = Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image).output().unwrap();
        assert!(made.status.success(), "{mkfs:?}: {}", String::from_utf8_lossy(&made.stderr));
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount).output().unwrap();
        if !mounted.status.success() {
            skip(&format!("cannot loop-mount: {}", String::from_utf8_lossy(&mounted.stderr).trim()));
            return None;
        }
        Some(LoopFs { _dir: dir, mount })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // `umount` of a loop mount made with `-o loop` also detaches the device.
        for _ in 0..50 {
            let out = Command::new("umount").arg(&self.mount).output();
            if matches!(out, Ok(ref o) if o.status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
pub mod contract;

/// A store of `backend` on a fresh loop filesystem made by `mkfs`, or
/// `None` (after a loud skip) where that is impossible here.
pub fn loop_store(mkfs: &[&str], size: &str, backend: &str, options: &str) -> Option<(LoopFs, Fixture)> {
    require_plugin(backend);
    let fs = LoopFs::new(mkfs, size)?;
    let root = fs.mount.join("store");
    let text =
        format!("[store]\nbackend = \"{backend}\"\nroot = \"{}\"\n[backend]\n{options}\n", root.display());
    let fixture = Fixture::with_config(tempfile::tempdir().unwrap(), &root, &text);
    Some((fs, fixture))
}

/// A ZFS pool on a file (zfs-fuse), destroyed on drop.
pub struct ZfsPool {
    _dir: tempfile::TempDir,
    pub name: String,
    pub mount: PathBuf,
}

impl ZfsPool {
    /// Starts the zfs-fuse daemon if needed and makes a pool; `None`
    /// (after a loud skip) where that is impossible here.
    pub fn new() -> Option<ZfsPool> {
        if !is_root() {
            skip("ZFS pools need root");
            return None;
        }
        if Command::new("zpool").arg("list").output().is_err() {
            skip("zfs-fuse is not installed (apt-get install zfs-fuse)");
            return None;
        }
        let running = Command::new("pgrep").arg("-x").arg("zfs-fuse").output().map(|o| o.status.success());
        if !running.unwrap_or(false) {
            let started = Command::new("zfs-fuse").status().map(|s| s.success()).unwrap_or(false);
            assert!(started, "cannot start the zfs-fuse daemon");
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("pool.img");
        let mount = dir.path().join("mnt");
        assert!(Command::new("truncate").args(["-s", "512M"]).arg(&image).status().unwrap().success());
        let name = format!("snapstoretest{}", std::process::id() as u64 * 1000 + rand_suffix());
        // The daemon may take a moment to accept commands after starting.
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("zpool")
                .args(["create", "-m"])
                .arg(&mount)
                .arg(&name)
                .arg(&image)
                .output()
                .unwrap();
            if out.status.success() {
                return Some(ZfsPool { _dir: dir, name, mount });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("zpool create failed: {last}");
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 % 1000
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        for _ in 0..20 {
            let out = Command::new("zpool").args(["destroy", "-f", &self.name]).output();
            if matches!(out, Ok(ref o) if o.status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        eprintln!("warning: could not destroy zfs pool {}", self.name);
    }
}
