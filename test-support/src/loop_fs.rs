//! A filesystem in an image file on a loop device.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{installed, is_root, run, skip};

/// Loop devices are few and shared with other users of the machine: one
/// filesystem at a time per test binary (cargo runs test binaries one
/// after another).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A filesystem made by `mkfs` in an image file, on a loop device, mounted
/// at `mount`. Dropping it unmounts it, detaches the device and removes the
/// image.
pub struct LoopFs {
    pub mount: PathBuf,
    device: Option<String>,
    mounted: bool,
    _work: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl LoopFs {
    /// A fresh filesystem of `size` bytes (or with a `truncate -s` suffix:
    /// "1G") made by `mkfs` (e.g. `["mkfs.btrfs", "-q"]`), mounted with
    /// `mount_options` (e.g. "noatime", or ""). `None`, after a loud skip,
    /// where this machine cannot make one; with CI=true that is a failure.
    pub fn new(mkfs: &[&str], size: &str, mount_options: &str) -> Option<LoopFs> {
        if !is_root() {
            skip("loop filesystems need root");
            return None;
        }
        if !installed(mkfs[0]) {
            skip(&format!("{} is not installed", mkfs[0]));
            return None;
        }
        match Self::create(mkfs, size, mount_options) {
            Ok(fs) => Some(fs),
            Err(why) => {
                skip(&format!("cannot make a loop-mounted filesystem with {mkfs:?}: {why}"));
                None
            }
        }
    }

    /// Like [`new`](Self::new), but says why it failed instead of skipping.
    pub fn create(mkfs: &[&str], size: &str, mount_options: &str) -> Result<LoopFs, String> {
        Self::create_in(&std::env::temp_dir(), mkfs, size, mount_options)
    }

    /// Like [`create`](Self::create), with the image in a new directory
    /// under `parent` (e.g. on a disk rather than a tmpfs).
    pub fn create_in(
        parent: &Path,
        mkfs: &[&str],
        size: &str,
        mount_options: &str,
    ) -> Result<LoopFs, String> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let work = tempfile::Builder::new()
            .prefix("snapstore-loop-")
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let mount_point = work.path().join("mnt");
        let image = work.path().join("fs.img");
        // From here on, Drop undoes whatever was made.
        let mut lfs =
            LoopFs { mount: mount_point.clone(), device: None, mounted: false, _work: work, _serial: serial };
        fs::create_dir(&mount_point).map_err(|e| format!("cannot create {}: {e}", mount_point.display()))?;
        // Sparse: only what is written takes space.
        run(Command::new("truncate").args(["-s", size]).arg(&image))?;
        // mkfs on the file, not the device: on a device, mkfs.xfs stats every
        // mount point, and hangs on a FUSE mount whose daemon is stuck.
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image))?;
        let device = run(Command::new("losetup").args(["--find", "--show"]).arg(&image))?;
        lfs.device = Some(device.clone());
        let mut mount = Command::new("mount");
        if !mount_options.is_empty() {
            mount.args(["-o", mount_options]);
        }
        run(mount.arg(&device).arg(&mount_point))?;
        lfs.mounted = true;
        Ok(lfs)
    }

    /// The store root: a subdirectory, as a real deployment would use.
    pub fn root(&self) -> PathBuf {
        self.mount.join("store")
    }

    /// Bytes in use, after flushing so that the count is current.
    pub fn used_bytes(&self) -> u64 {
        sync(&self.mount);
        let st = nix::sys::statvfs::statvfs(&self.mount).expect("statvfs");
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }
}

/// Flushes the filesystem holding `path`.
pub fn sync(path: &Path) {
    let dir = fs::File::open(path).expect("open for sync");
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)).expect("syncfs");
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A process may still hold a file open for a moment; retry, and
            // as a last resort detach lazily so that the device is freed.
            let unmounted = (0..50).any(|_| {
                let done = run(Command::new("umount").arg(&self.mount)).is_ok();
                if !done {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                done
            });
            if !unmounted {
                let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
            }
        }
        if let Some(device) = &self.device {
            if let Err(e) = run(Command::new("losetup").arg("-d").arg(device)) {
                eprintln!("warning: {e}");
            }
        }
    }
}
