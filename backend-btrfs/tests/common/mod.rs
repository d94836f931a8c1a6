//! A loop-mounted scratch btrfs for tests and the benchmark, always
//! unmounted and detached again (also when a test panics).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// One scratch filesystem at a time: loop devices are few and shared.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct LoopBtrfs {
    pub dir: PathBuf,
    pub mnt: PathBuf,
    device: Option<String>,
    mounted: bool,
    _serial: MutexGuard<'static, ()>,
}

/// Runs a command, returning its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LoopBtrfs {
    /// A fresh 1 GiB btrfs, or `None` (after a loud message) when this
    /// machine cannot make one. With CI=true that is a failure instead.
    pub fn new(test: &str) -> Option<LoopBtrfs> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("snapstore-btrfs-{test}-{}", std::process::id()));
        let mut fs = LoopBtrfs { mnt: dir.join("mnt"), dir, device: None, mounted: false, _serial: serial };
        match fs.setup() {
            Ok(()) => Some(fs),
            Err(why) => {
                let message = format!("cannot make a loop-mounted btrfs for `{test}`: {why}");
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("{message}");
                }
                eprintln!("\n!!!!!!!! SKIPPED: {message} (run as root with loop devices; CI=true makes this fail)\n");
                None
            }
        }
    }

    fn setup(&mut self) -> Result<(), String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(&self.mnt).map_err(|e| e.to_string())?;
        let img = self.dir.join("img");
        let img = img.to_str().ok_or("temp path is not UTF-8")?;
        run("truncate", &["-s", "1G", img])?;
        run("mkfs.btrfs", &["-q", img])?;
        let device = run("losetup", &["--find", "--show", img])?.trim().to_string();
        self.device = Some(device.clone());
        run("mount", &[&device, self.mnt.to_str().ok_or("bad path")?])?;
        self.mounted = true;
        Ok(())
    }

    /// The store root inside the filesystem.
    pub fn root(&self) -> PathBuf {
        self.mnt.join("store")
    }

    pub fn mnt_str(&self) -> &str {
        self.mnt.to_str().unwrap_or("")
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = self.mnt.to_string_lossy().into_owned();
            if run("umount", &[&mnt]).is_err() {
                // Something still has a file open: detach lazily rather than leak.
                let _ = run("umount", &["-l", &mnt]);
            }
        }
        if let Some(device) = &self.device {
            let _ = run("losetup", &["-d", device]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `btrfs property get -ts PATH ro` says `ro=true`.
pub fn is_ro(path: &Path) -> bool {
    run("btrfs", &["property", "get", "-ts", path.to_str().unwrap_or(""), "ro"])
        .map(|out| out.trim() == "ro=true")
        .unwrap_or(false)
}
