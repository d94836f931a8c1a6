//! Unmounting zfs-fuse safely: waiting until the kernel has handed every
//! request of a mount to the daemon.
//!
//! Unmounting a FUSE file system ends its connection at once, and the
//! kernel drops the requests the daemon has not read yet. Closing a file
//! sends its `RELEASE` in the background, so the last files a build or a
//! test closed may still be queued when the tree is unmounted. zfs-fuse
//! then never learns that they were closed: the dataset stays busy for it,
//! and its unmount handler retries for ever (`do_umount` in a loop) in the
//! thread that reads every request of every dataset, holding their common
//! lock. From then on every access to any zfs-fuse mount hangs, and so do
//! `zfs mount` and everything waiting on them. (Reproduced with nothing but
//! `open`/`write`/`close` and `umount2`, while other files were written on
//! another dataset: the daemon hung within 20 unmounts; waiting as below,
//! 100 unmounts went through.)
//!
//! The kernel counts the requests of each connection that have not been
//! answered in `/sys/fs/fuse/connections/<dev>/waiting` (the `fusectl` file
//! system, mounted by systemd on most machines, mounted here if missing).
//! Every unmount of a zfs-fuse mount, by this backend or by a `zfs` command
//! it runs, first waits for that count to be 0. A kernel ZFS is no FUSE file
//! system: nothing to wait for.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::statfs::{statfs, FsType, FUSE_SUPER_MAGIC};
use store_api::StoreError;

/// Where the kernel shows the FUSE connections (`fusectl`).
const CONNECTIONS: &str = "/sys/fs/fuse/connections";
/// How long a mount may keep requests in flight before the unmount gives
/// up (a process still working in the tree keeps sending them).
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the FUSE file system mounted at `path`, if it is one, has
/// no request the daemon has not answered. Not a FUSE mount, or no longer
/// there: returns at once.
pub fn wait_until_quiet(path: &Path) -> Result<(), StoreError> {
    let fs_type = match statfs(path) {
        Ok(stat) => stat.filesystem_type(),
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(errno) => {
            return Err(StoreError::io(format!("cannot stat {}", path.display()), &io::Error::from(errno)))
        }
    };
    if fs_type != FUSE_SUPER_MAGIC {
        return Ok(());
    }
    let dev = match fs::metadata(path) {
        Ok(meta) => meta.dev(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(StoreError::io(format!("cannot stat {}", path.display()), &err)),
    };
    let waiting = Path::new(CONNECTIONS).join(kernel_dev(dev).to_string()).join("waiting");
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match read_count(&waiting)? {
            Some(0) => return Ok(()),
            Some(_) => {}
            // No such connection, as fusectl shows them: nothing in flight.
            None if fusectl_is_mounted() => return Ok(()),
            None if mount_fusectl() => continue,
            None => {
                return Err(StoreError::unsupported(format!(
                    "cannot see the FUSE connection of {} in {CONNECTIONS}, needed to unmount it \
                     safely: mount it with `mount -t fusectl fusectl {CONNECTIONS}`",
                    path.display()
                )))
            }
        }
        if start.elapsed() > QUIET_TIMEOUT {
            return Err(StoreError::busy(format!(
                "{} still has FUSE requests in flight after {} s (a process works in it): \
                 stop it and try again",
                path.display(),
                QUIET_TIMEOUT.as_secs()
            )));
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The count in a connection's `waiting` file, or `None` if there is none.
fn read_count(file: &Path) -> Result<Option<u64>, StoreError> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StoreError::io(format!("cannot read {}", file.display()), &err)),
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| StoreError::other(format!("{} holds {text:?}, not a count", file.display())))
}

/// Whether `fusectl` is mounted at its usual place.
fn fusectl_is_mounted() -> bool {
    /// `FUSE_CTL_SUPER_MAGIC` of the kernel.
    const FUSECTL_MAGIC: FsType = FsType(0x6573_5543);
    statfs(CONNECTIONS).is_ok_and(|stat| stat.filesystem_type() == FUSECTL_MAGIC)
}

/// Mounts `fusectl` at its usual place (as systemd does at boot); whether
/// that worked.
fn mount_fusectl() -> bool {
    use nix::mount::{mount, MsFlags};
    mount(Some("fusectl"), CONNECTIONS, Some("fusectl"), MsFlags::empty(), None::<&str>).is_ok()
}

/// A device number as the kernel spells it in `fusectl` (`major << 20 |
/// minor`), from the user-space `st_dev`.
fn kernel_dev(dev: u64) -> u64 {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major << 20) | minor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_spelled_as_the_kernel_does() {
        // Anonymous devices (FUSE mounts) have major 0.
        assert_eq!(kernel_dev(nix::sys::stat::makedev(0, 43)), 43);
        assert_eq!(kernel_dev(nix::sys::stat::makedev(0, 300)), 300);
        assert_eq!(kernel_dev(nix::sys::stat::makedev(8, 1)), (8 << 20) | 1);
    }

    #[test]
    fn other_file_systems_need_no_wait() {
        wait_until_quiet(Path::new("/")).unwrap();
        wait_until_quiet(Path::new("/nonexistent/x")).unwrap();
    }
}
