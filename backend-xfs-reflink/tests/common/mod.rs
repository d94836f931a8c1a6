//! Loop-mounted filesystems for the tests, always unmounted and detached.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use snapstore_xfs_reflink::XfsReflink;

/// Few loop devices exist and other people use some: one at a time per
/// test binary (cargo runs test binaries one after another).
static LOOP_LOCK: Mutex<()> = Mutex::new(());

/// Skips a test loudly, or fails it when `CI=true`.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run on CI: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A filesystem in an image file on a loop device, mounted at `mnt`.
/// Dropping it (also while a test panics) unmounts and detaches it.
pub struct LoopFs {
    pub mnt: PathBuf,
    work: PathBuf,
    dev: Option<String>,
    mounted: bool,
    _lock: MutexGuard<'static, ()>,
}

impl LoopFs {
    /// `fs` is "xfs", "xfs-noreflink" or "btrfs"; `mount_opts` e.g. "noatime".
    /// None (after a loud message) when the test cannot run here.
    pub fn new(test: &str, fs: &str, size: u64, mount_opts: &str) -> Option<LoopFs> {
        if !nix::unistd::Uid::effective().is_root() {
            skip(test, "needs root for loop devices and mount");
            return None;
        }
        match Self::try_new(fs, size, mount_opts) {
            Ok(lfs) => Some(lfs),
            Err(e) => {
                skip(test, &format!("cannot set up a loop {fs}: {e}"));
                None
            }
        }
    }

    fn try_new(fs: &str, size: u64, mount_opts: &str) -> Result<LoopFs, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let lock = LOOP_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let work = std::env::temp_dir().join(format!(
            "snapstore-xfs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mnt = work.join("mnt");
        // From here on, Drop cleans up whatever was made.
        let mut lfs = LoopFs { mnt: mnt.clone(), work: work.clone(), dev: None, mounted: false, _lock: lock };
        fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let img = work.join("img");
        let file = fs::File::create(&img).map_err(|e| format!("create {}: {e}", img.display()))?;
        file.set_len(size).map_err(|e| format!("truncate {}: {e}", img.display()))?;
        drop(file);
        match fs {
            "xfs" => run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&img))?,
            "xfs-noreflink" => run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=0"]).arg(&img))?,
            "btrfs" => run(Command::new("mkfs.btrfs").arg("-q").arg(&img))?,
            other => return Err(format!("unknown filesystem {other}")),
        };
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))?;
        lfs.dev = Some(dev.clone());
        let mut mount = Command::new("mount");
        if !mount_opts.is_empty() {
            mount.args(["-o", mount_opts]);
        }
        run(mount.arg(&dev).arg(&mnt))?;
        lfs.mounted = true;
        Ok(lfs)
    }

    /// The store root: a subdirectory, as a real deployment would use.
    pub fn root(&self) -> PathBuf {
        self.mnt.join("store")
    }

    pub fn open(&self, options: &str) -> XfsReflink {
        snapstore_xfs_reflink::open(&self.root(), options).expect("open store")
    }

    /// Bytes in use, after flushing so that the count is current.
    pub fn used_bytes(&self) -> u64 {
        sync(&self.mnt);
        let st = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }
}

pub fn sync(path: &Path) {
    let dir = fs::File::open(path).expect("open for sync");
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)).expect("syncfs");
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A process may still hold a file open for a moment; retry, and
            // as a last resort detach lazily so the device is still freed.
            let mut ok = false;
            for _ in 0..10 {
                if run(Command::new("umount").arg(&self.mnt)).is_ok() {
                    ok = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if !ok {
                let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Some(dev) = &self.dev {
            if let Err(e) = run(Command::new("losetup").arg("-d").arg(dev)) {
                eprintln!("warning: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}
