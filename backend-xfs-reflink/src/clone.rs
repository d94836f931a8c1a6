//! Cloning a tree: a parallel walk that recreates every entry and shares
//! the data of regular files with FICLONE.
//!
//! Each directory's entries are handled in parallel (rayon work stealing
//! spreads subdirectories and files over the pool). A directory gets its
//! owner, xattrs, mode and times only once all its entries are done, so its
//! times are not disturbed by the entries created in it (deepest first) and
//! its default ACL is not inherited by them.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use rayon::prelude::*;
use store_api::util::mounts::is_mount_root;
use store_api::{IoContext, StoreError};
use xattr::FileExt;

use crate::sys::{self, join};

/// The first copy of a multiply-linked inode: where it went, or why it failed.
type LinkTarget = Arc<OnceLock<Result<PathBuf, StoreError>>>;

/// Clones the directory `src` to the new directory `dst` (which must not
/// exist). On error a partial `dst` may remain; the caller removes it.
pub fn clone_tree(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let src_dir =
        sys::open_source(None, src, OFlag::O_DIRECTORY).context(format!("cannot open {}", src.display()))?;
    let st = fstat(src_dir.as_raw_fd()).context(format!("cannot stat {}", src.display()))?;
    // Private until complete: the final mode is set last.
    mkdirat(None, dst, Mode::S_IRWXU).context(format!("cannot create {}", dst.display()))?;
    let dst_dir = sys::open_dir_at(None, dst).context(format!("cannot open {}", dst.display()))?;
    let cloner = Cloner { dev: st.st_dev, links: Mutex::new(HashMap::new()) };
    cloner.fill_dir(&src_dir, &dst_dir, src, dst)?;
    copy_fd_meta(&src_dir, &dst_dir, &st, dst)
}

struct Cloner {
    /// The source tree's filesystem: extents cannot be shared across two.
    dev: u64,
    /// Inodes with several links, by (dev, ino): the first one seen is
    /// cloned, the others become hard links to that clone.
    links: Mutex<HashMap<(u64, u64), LinkTarget>>,
}

/// One side of a directory being cloned: its fd and its path (for
/// messages and for the few calls that need a path).
#[derive(Clone, Copy)]
struct At<'a> {
    fd: RawFd,
    dir: BorrowedFd<'a>,
    path: &'a Path,
}

impl At<'_> {
    fn join(&self, name: &CStr) -> PathBuf {
        join(self.path, name)
    }
    fn err<'n>(&self, what: &'static str, name: &'n CStr) -> impl FnOnce(Errno) -> StoreError + 'n {
        let path = self.join(name);
        move |e| StoreError::errno(format!("cannot {what} {}", path.display()), e)
    }
}

impl Cloner {
    fn fill_dir(&self, src: &File, dst: &File, src_path: &Path, dst_path: &Path) -> Result<(), StoreError> {
        let names = sys::read_dir(src).context(format!("cannot read directory {}", src_path.display()))?;
        let src = At { fd: src.as_raw_fd(), dir: src.as_fd(), path: src_path };
        let dst = At { fd: dst.as_raw_fd(), dir: dst.as_fd(), path: dst_path };
        names.par_iter().try_for_each(|(name, _)| self.clone_entry(src, dst, name))
    }

    fn clone_entry(&self, src: At, dst: At, name: &CStr) -> Result<(), StoreError> {
        let st = fstatat(Some(src.fd), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(src.err("stat", name))?;
        // A mount inside the tree (another filesystem, or a bind mount of
        // this one, e.g. a file a sandbox bound in) is never cloned from.
        let is_mount = st.st_dev != self.dev
            || is_mount_root(src.dir, name).context(format!("cannot stat {}", src.join(name).display()))?;
        if is_mount {
            return Err(StoreError::unsupported(format!(
                "{} is a mount point inside the tree: unmount it, then retry",
                src.join(name).display()
            )));
        }
        if kind(&st) == SFlag::S_IFDIR {
            self.clone_dir(src, dst, name, &st)
        } else if st.st_nlink > 1 {
            self.clone_linked(src, dst, name, &st)
        } else {
            clone_leaf(src, dst, name, &st)
        }
    }

    fn clone_dir(&self, src: At, dst: At, name: &CStr, st: &FileStat) -> Result<(), StoreError> {
        mkdirat(Some(dst.fd), name, Mode::S_IRWXU).map_err(dst.err("create directory", name))?;
        let src_dir =
            sys::open_source(Some(src.fd), name, OFlag::O_DIRECTORY).map_err(src.err("open", name))?;
        let dst_dir = sys::open_dir_at(Some(dst.fd), name).map_err(dst.err("open", name))?;
        let dst_path = dst.join(name);
        self.fill_dir(&src_dir, &dst_dir, &src.join(name), &dst_path)?;
        copy_fd_meta(&src_dir, &dst_dir, st, &dst_path)
    }

    /// A non-directory with several links: clone it the first time it is
    /// seen, link to that clone every other time. Threads that meet the
    /// inode while the first clone is being made wait for it.
    fn clone_linked(&self, src: At, dst: At, name: &CStr, st: &FileStat) -> Result<(), StoreError> {
        let target = {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            links.entry((st.st_dev, st.st_ino)).or_default().clone()
        };
        let mut first = false;
        let cloned = target.get_or_init(|| {
            first = true;
            clone_leaf(src, dst, name, st).map(|()| dst.join(name))
        });
        match cloned {
            Ok(_) if first => Ok(()),
            Ok(existing) => {
                linkat(None, existing.as_path(), Some(dst.fd), sys::as_path(name), AtFlags::empty())
                    .map_err(dst.err("hard link", name))
            }
            Err(e) => Err(e.clone()),
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn perms(st: &FileStat) -> Mode {
    Mode::from_bits_truncate(st.st_mode & 0o7777)
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec))
}

fn owner(st: &FileStat) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))
}

/// Anything but a directory.
fn clone_leaf(src: At, dst: At, name: &CStr, st: &FileStat) -> Result<(), StoreError> {
    let k = kind(st);
    if k == SFlag::S_IFREG {
        return clone_file(src, dst, name, st);
    }
    if k == SFlag::S_IFLNK {
        let target = nix::fcntl::readlinkat(Some(src.fd), name).map_err(src.err("read link", name))?;
        symlinkat(target.as_os_str(), Some(dst.fd), name).map_err(dst.err("create symlink", name))?;
    } else {
        // Fifos, sockets, character and block devices.
        mknodat(Some(dst.fd), name, k, Mode::S_IRUSR | Mode::S_IWUSR, st.st_rdev)
            .map_err(dst.err("create node", name))?;
    }
    // These cannot be opened for metadata calls: go by name, never
    // following a symlink.
    let (uid, gid) = owner(st);
    fchownat(Some(dst.fd), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(dst.err("chown", name))?;
    copy_path_xattrs(&src.join(name), &dst.join(name))?;
    if k != SFlag::S_IFLNK {
        // After chown, which clears setuid/setgid.
        fchmodat(Some(dst.fd), name, perms(st), FchmodatFlags::FollowSymlink)
            .map_err(dst.err("chmod", name))?;
    }
    let (atime, mtime) = times(st);
    utimensat(Some(dst.fd), name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(dst.err("set times of", name))
}

fn clone_file(src: At, dst: At, name: &CStr, st: &FileStat) -> Result<(), StoreError> {
    let from = sys::open_source(Some(src.fd), name, OFlag::empty()).map_err(src.err("open", name))?;
    let to = sys::open_at(
        Some(dst.fd),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(dst.err("create", name))?;
    // An empty file has no extents to share.
    if st.st_size > 0 {
        let cloned = match sys::ficlone(&to, &from) {
            // btrfs will not clone between NOCOW and COW files.
            Err(Errno::EINVAL) if sys::copy_nocow(&to, &from).unwrap_or(false) => sys::ficlone(&to, &from),
            other => other,
        };
        cloned.map_err(|e| ficlone_error(&src.join(name), e))?;
    }
    copy_fd_meta(&from, &to, st, &dst.join(name))
}

fn ficlone_error(path: &Path, e: Errno) -> StoreError {
    let context = format!("cannot clone {} with FICLONE", path.display());
    match e {
        Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EXDEV | Errno::EINVAL => StoreError::unsupported(format!(
            "{context}: {} (the filesystem must support reflinks)",
            sys::describe(e)
        )),
        _ => StoreError::errno(context, e),
    }
}

/// Owner, xattrs, mode and times of an open file or directory, in that
/// order: chown clears setuid/setgid and security.capability, and every
/// other change would touch the times.
fn copy_fd_meta(src: &File, dst: &File, st: &FileStat, dst_path: &Path) -> Result<(), StoreError> {
    let ctx = |what: &str| format!("cannot {what} {}", dst_path.display());
    let (uid, gid) = owner(st);
    fchown(dst.as_raw_fd(), uid, gid).context(ctx("chown"))?;
    let names = src.list_xattr().context(ctx("list xattrs of the source of"))?;
    for attr in names {
        // A value may vanish between list and get: nothing to copy then.
        let value = src.get_xattr(&attr).context(ctx("read xattr of the source of"))?;
        if let Some(value) = value {
            dst.set_xattr(&attr, &value).context(ctx(&format!("set xattr {attr:?} on")))?;
        }
    }
    fchmod(dst.as_raw_fd(), perms(st)).context(ctx("chmod"))?;
    let (atime, mtime) = times(st);
    futimens(dst.as_raw_fd(), &atime, &mtime).context(ctx("set times of"))
}

/// Xattrs by path, without following symlinks (for symlinks and nodes).
fn copy_path_xattrs(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let names = xattr::list(src).context(format!("cannot list xattrs of {}", src.display()))?;
    for attr in names {
        let value = xattr::get(src, &attr).context(format!("cannot read xattr of {}", src.display()))?;
        if let Some(value) = value {
            xattr::set(dst, &attr, &value)
                .context(format!("cannot set xattr {attr:?} on {}", dst.display()))?;
        }
    }
    Ok(())
}
