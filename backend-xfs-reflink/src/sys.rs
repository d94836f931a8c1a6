//! Thin helpers over the system calls the backend uses.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use store_api::{IoContext, StoreError};

// FICLONE = _IOW(0x94, 9, int): share all extents of the source fd.
nix::ioctl_write_int!(ficlone_ioctl, 0x94, 9);

/// `openat` returning an owned `File` (closed on drop, also on error paths).
pub fn open_at(
    dirfd: Option<RawFd>,
    path: &(impl nix::NixPath + ?Sized),
    flags: OFlag,
    mode: Mode,
) -> nix::Result<File> {
    let fd = openat(dirfd, path, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

pub fn open_dir_at(dirfd: Option<RawFd>, path: &(impl nix::NixPath + ?Sized)) -> nix::Result<File> {
    open_at(dirfd, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW, Mode::empty())
}

/// Makes `dst` share all of `src`'s extents.
pub fn ficlone(dst: &File, src: &File) -> nix::Result<()> {
    // SAFETY: both fds are open for the duration of the call; FICLONE
    // takes the source fd as its integer argument.
    unsafe { ficlone_ioctl(dst.as_raw_fd(), src.as_raw_fd() as _) }.map(drop)
}

/// A short description of an errno, plainer than strerror for EOPNOTSUPP
/// ("operation not supported on transport endpoint").
pub fn describe(e: Errno) -> String {
    match e {
        Errno::EOPNOTSUPP => "operation not supported".into(),
        _ => format!("{}", std::io::Error::from(e)),
    }
}

/// A readable name for the filesystem holding `path`, for messages.
pub fn fs_name(path: &Path) -> String {
    let Ok(stat) = nix::sys::statfs::statfs(path) else {
        return "an unknown filesystem".into();
    };
    let magic = stat.filesystem_type().0 as u64;
    let name = match magic {
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0xca45_1a4e => "bcachefs",
        0xef53 => "ext2/3/4",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlayfs",
        0x2fc1_2fc1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => return format!("a filesystem of type {magic:#x}"),
    };
    name.to_string()
}

/// Checks that files in `dir` can be cloned with FICLONE, on two unnamed
/// (O_TMPFILE) files that vanish when closed, so nothing is left behind.
pub fn probe_reflink(dir: &Path) -> Result<(), StoreError> {
    let tmpfile = || {
        open_at(None, dir, OFlag::O_TMPFILE | OFlag::O_RDWR, Mode::from_bits_truncate(0o600))
            .context(format!("cannot create a probe file in {}", dir.display()))
    };
    let mut src = tmpfile()?;
    src.write_all(&[0x5a; 4096]).context(format!("cannot write a probe file in {}", dir.display()))?;
    let dst = tmpfile()?;
    match ficlone(&dst, &src) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EINVAL | Errno::EXDEV | Errno::ENOSYS)) => {
            Err(StoreError::unsupported(format!(
                "{} is on {}, which cannot clone files with reflinks (FICLONE: {}); \
                 use XFS made with `mkfs.xfs -m reflink=1`, btrfs or bcachefs, or another backend (rsync)",
                dir.display(),
                fs_name(dir),
                describe(e)
            )))
        }
        Err(e) => Err(StoreError::errno(format!("cannot probe FICLONE in {}", dir.display()), e)),
    }
}
