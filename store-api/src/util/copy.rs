//! Copying a directory tree, in parallel, entry by entry: the one tree
//! walker the directory backends share (xfs-reflink clones with it, the
//! rsync backend's `copy = "native"` copies with it).
//!
//! What is kept: every kind of entry (directories, regular files, symlinks,
//! fifos, sockets, character and block devices), hard links within the
//! tree, owners, modes (with setuid/setgid/sticky), every xattr (ACLs,
//! `security.capability`, `trusted.*`), atimes and mtimes to the
//! nanosecond, and holes in sparse files. A tree that cannot be reproduced
//! faithfully (an xattr the target refuses, an owner it cannot set) fails
//! with a one-line error naming the entry: nothing is dropped silently.
//!
//! What is never done: following a symlink (every open and metadata call
//! is `NOFOLLOW` or works on an fd), entering a mount point inside the
//! source (another filesystem or a bind mount: the copy fails naming it),
//! writing outside the new directory (entries are created relative to the
//! fds of directories this walk created, with `O_EXCL`), or changing the
//! source's atimes (`O_NOATIME` where allowed).
//!
//! Each directory's entries are handled in parallel on the caller's rayon
//! pool (run it inside [`rayon::ThreadPool::install`]; see
//! [`WorkerPool`]). A directory gets its owner, xattrs, mode and times
//! only once all its entries are done, so its times are not disturbed by
//! the entries created in it and its default ACL is not inherited by them.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rayon::prelude::*;
use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, IFlags, Mode, OFlags, SeekFrom, Statx, StatxAttributes, StatxFlags,
    Timespec, Timestamps, Uid, CWD,
};
use rustix::io::Errno;
use xattr::FileExt;

use crate::{IoContext, StoreError};

/// How the data of regular files is reproduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Share the source's extents with `FICLONE` (XFS `reflink=1`, btrfs,
    /// bcachefs). A filesystem that cannot is an error, never a copy.
    Clone,
    /// `copy_file_range` over each data range (`SEEK_DATA`/`SEEK_HOLE`),
    /// which the kernel may turn into a reflink or a server-side copy;
    /// holes stay holes. Falls back to read/write where the kernel refuses.
    Copy,
}

/// Copies the directory `src` to the new directory `dst` (which must not
/// exist; its parent must), on the current rayon pool. On error a partial
/// `dst` may remain, private to its owner (mode 0700): the caller removes
/// it.
pub fn copy_tree(src: &Path, dst: &Path, data: FileData) -> Result<(), StoreError> {
    let src_dir =
        open_source(CWD, src, OFlags::DIRECTORY).context(format_args!("cannot open {}", src.display()))?;
    let st = rfs::statx(&src_dir, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .context(format_args!("cannot stat {}", src.display()))?;
    // Private until complete: the final mode is set last.
    rfs::mkdirat(CWD, dst, Mode::RWXU).context(format_args!("cannot create {}", dst.display()))?;
    let dst_dir = open_dir(CWD, dst).context(format_args!("cannot open {}", dst.display()))?;
    let walker = Walker { data, dev: dev_of(&st), links: Mutex::new(HashMap::new()) };
    walker.fill_dir(&src_dir, &dst_dir, src, dst, 0)?;
    copy_fd_meta(&src_dir, &dst_dir, &st, dst)
}

/// The worker threads of a backend's tree walks (copies, clones,
/// removals), as many as its `threads` option says (two per core by
/// default: these system calls often wait on inode and journal locks, so
/// more threads than cores keep the cores busy). Started on first use:
/// most commands never walk a tree.
pub struct WorkerPool {
    threads: usize,
    name: &'static str,
    pool: OnceLock<rayon::ThreadPool>,
}

impl WorkerPool {
    /// `threads` is the backend's option; 0 is refused.
    pub fn new(threads: Option<usize>, name: &'static str) -> Result<WorkerPool, StoreError> {
        let threads = match threads {
            Some(0) => return Err(StoreError::invalid("[backend]: threads must be at least 1")),
            Some(n) => n,
            None => 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        Ok(WorkerPool { threads, name, pool: OnceLock::new() })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool, starting it if needed.
    pub fn install<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, StoreError> {
        if self.pool.get().is_none() {
            let name = self.name;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .thread_name(move |i| format!("{name}-{i}"))
                // The walk recurses once per directory level.
                .stack_size(16 << 20)
                .build()
                .map_err(|e| {
                    StoreError::other(format!("cannot start {} worker threads: {e}", self.threads))
                })?;
            let _ = self.pool.set(pool);
        }
        Ok(self.pool.get().expect("set above").install(work))
    }
}

/// The first copy of a multiply-linked inode: where it went, or why it failed.
type LinkTarget = Arc<OnceLock<Result<PathBuf, StoreError>>>;

struct Walker {
    data: FileData,
    /// The source tree's filesystem: an entry on another one is a mount.
    dev: u64,
    /// Inodes with several links, by (dev, ino): the first one seen is
    /// copied, the others become hard links to that copy.
    links: Mutex<HashMap<(u64, u64), LinkTarget>>,
}

/// One side of a directory being copied: its fd and its path (for
/// messages and for the few calls that need a path).
#[derive(Clone, Copy)]
struct At<'a> {
    dir: BorrowedFd<'a>,
    path: &'a Path,
}

impl At<'_> {
    fn join(&self, name: &CStr) -> PathBuf {
        self.path.join(OsStr::from_bytes(name.to_bytes()))
    }
    fn err<'n>(&self, what: &'static str, name: &'n CStr) -> impl FnOnce(Errno) -> StoreError + 'n {
        let path = self.join(name);
        move |e| StoreError::io(format_args!("cannot {what} {}", path.display()), &io::Error::from(e))
    }
}

impl Walker {
    fn fill_dir(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        src_path: &Path,
        dst_path: &Path,
        depth: usize,
    ) -> Result<(), StoreError> {
        if depth >= super::MAX_DEPTH {
            return Err(StoreError::unsupported(format!(
                "cannot copy {}: the tree is deeper than {} directories",
                src_path.display(),
                super::MAX_DEPTH
            )));
        }
        let names = read_dir(src).context(format_args!("cannot read directory {}", src_path.display()))?;
        let src = At { dir: src.as_fd(), path: src_path };
        let dst = At { dir: dst.as_fd(), path: dst_path };
        names.par_iter().try_for_each(|name| self.copy_entry(src, dst, name, depth))
    }

    fn copy_entry(&self, src: At, dst: At, name: &CStr, depth: usize) -> Result<(), StoreError> {
        // One statx gives the metadata and whether this is a mount root.
        let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
        let st = rfs::statx(src.dir, name, flags, StatxFlags::BASIC_STATS).map_err(src.err("stat", name))?;
        // A mount inside the tree (another filesystem, or a bind mount of
        // this one, e.g. a file a sandbox bound in) is never copied from.
        let is_mount = if dev_of(&st) != self.dev {
            true
        } else if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        } else {
            super::mounts::is_mount_root(src.dir, name)
                .context(format_args!("cannot stat {}", src.join(name).display()))?
        };
        if is_mount {
            return Err(StoreError::unsupported(format!(
                "{} is a mount point inside the tree: unmount it, then retry",
                src.join(name).display()
            )));
        }
        if kind(&st) == FileType::Directory {
            self.copy_dir(src, dst, name, &st, depth + 1)
        } else if st.stx_nlink > 1 {
            self.copy_linked(src, dst, name, &st)
        } else {
            self.copy_leaf(src, dst, name, &st)
        }
    }

    fn copy_dir(&self, src: At, dst: At, name: &CStr, st: &Statx, depth: usize) -> Result<(), StoreError> {
        rfs::mkdirat(dst.dir, name, Mode::RWXU).map_err(dst.err("create directory", name))?;
        let src_dir = open_source(src.dir, name, OFlags::DIRECTORY).map_err(src.err("open", name))?;
        let dst_dir = open_dir(dst.dir, name).map_err(dst.err("open", name))?;
        let dst_path = dst.join(name);
        self.fill_dir(&src_dir, &dst_dir, &src.join(name), &dst_path, depth)?;
        copy_fd_meta(&src_dir, &dst_dir, st, &dst_path)
    }

    /// A non-directory with several links: copy it the first time it is
    /// seen, link to that copy every other time. Threads that meet the
    /// inode while the first copy is being made wait for it.
    fn copy_linked(&self, src: At, dst: At, name: &CStr, st: &Statx) -> Result<(), StoreError> {
        let target = {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            links.entry((dev_of(st), st.stx_ino)).or_default().clone()
        };
        let mut first = false;
        let copied = target.get_or_init(|| {
            first = true;
            self.copy_leaf(src, dst, name, st).map(|()| dst.join(name))
        });
        match copied {
            Ok(_) if first => Ok(()),
            Ok(existing) => rfs::linkat(CWD, existing.as_path(), dst.dir, name, AtFlags::empty())
                .map_err(dst.err("hard link", name)),
            Err(e) => Err(e.clone()),
        }
    }

    /// Anything but a directory.
    fn copy_leaf(&self, src: At, dst: At, name: &CStr, st: &Statx) -> Result<(), StoreError> {
        let k = kind(st);
        if k == FileType::RegularFile {
            return self.copy_file(src, dst, name, st);
        }
        if k == FileType::Symlink {
            let target = rfs::readlinkat(src.dir, name, Vec::new()).map_err(src.err("read link", name))?;
            rfs::symlinkat(target.as_c_str(), dst.dir, name).map_err(dst.err("create symlink", name))?;
        } else {
            // Fifos, sockets, character and block devices.
            let rdev = rfs::makedev(st.stx_rdev_major, st.stx_rdev_minor);
            rfs::mknodat(dst.dir, name, k, Mode::RUSR | Mode::WUSR, rdev)
                .map_err(dst.err("create node", name))?;
        }
        // These cannot be opened for metadata calls: go by name, never
        // following a symlink.
        let (uid, gid) = owner(st);
        rfs::chownat(dst.dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(dst.err("chown", name))?;
        copy_path_xattrs(&src.join(name), &dst.join(name))?;
        if k != FileType::Symlink {
            // After chown, which clears setuid/setgid.
            rfs::chmodat(dst.dir, name, perms(st), AtFlags::empty()).map_err(dst.err("chmod", name))?;
        }
        rfs::utimensat(dst.dir, name, &times(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(dst.err("set times of", name))
    }

    fn copy_file(&self, src: At, dst: At, name: &CStr, st: &Statx) -> Result<(), StoreError> {
        let from = open_source(src.dir, name, OFlags::empty()).map_err(src.err("open", name))?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let to =
            rfs::openat(dst.dir, name, flags, Mode::RUSR | Mode::WUSR).map_err(dst.err("create", name))?;
        // An empty file has no data to share or copy.
        if st.stx_size > 0 {
            match self.data {
                FileData::Clone => clone_data(&from, &to).map_err(|e| ficlone_error(&src.join(name), e))?,
                FileData::Copy => copy_data(&from, &to, st.stx_size).map_err(|e| {
                    StoreError::io(format_args!("cannot copy {}", src.join(name).display()), &e)
                })?,
            }
        }
        copy_fd_meta(&from, &to, st, &dst.join(name))
    }
}

/// FICLONE, giving the copy the source's NOCOW flag first if btrfs refuses
/// to clone between NOCOW and COW files.
fn clone_data(from: &OwnedFd, to: &OwnedFd) -> Result<(), Errno> {
    match rfs::ioctl_ficlone(to, from) {
        Err(Errno::INVAL) if copy_nocow(from, to).unwrap_or(false) => rfs::ioctl_ficlone(to, from),
        other => other,
    }
}

/// Gives `to` the NOCOW flag if `from` has it; whether anything changed.
fn copy_nocow(from: &OwnedFd, to: &OwnedFd) -> Result<bool, Errno> {
    if !rfs::ioctl_getflags(from)?.contains(IFlags::NOCOW) {
        return Ok(false);
    }
    rfs::ioctl_setflags(to, rfs::ioctl_getflags(to)? | IFlags::NOCOW)?;
    Ok(true)
}

fn ficlone_error(path: &Path, e: Errno) -> StoreError {
    let context = format!("cannot clone {} with FICLONE", path.display());
    match e {
        Errno::OPNOTSUPP | Errno::NOTTY | Errno::XDEV | Errno::INVAL => StoreError::unsupported(format!(
            "{context}: operation not supported (the filesystem must support reflinks)"
        )),
        _ => StoreError::io(context, &io::Error::from(e)),
    }
}

/// Copies each data range of `from` (`size` bytes) to the same offset of
/// the empty file `to`, leaving the holes between them as holes.
fn copy_data(from: &OwnedFd, to: &OwnedFd, size: u64) -> io::Result<()> {
    let mut offset = 0;
    let mut kernel_copy = true;
    while offset < size {
        let start = match rfs::seek(from, SeekFrom::Data(offset)) {
            Ok(start) => start,
            // No data after `offset`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rfs::seek(from, SeekFrom::Hole(start))?.min(size);
        if end <= start {
            break;
        }
        if kernel_copy {
            match copy_range(from, to, start, end) {
                Ok(()) => {}
                // Kernels or filesystems that cannot: plain reads and writes.
                Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                    kernel_copy = false;
                    write_range(from, to, start, end)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            write_range(from, to, start, end)?;
        }
        offset = end;
    }
    // A trailing hole: the size without writing anything.
    rfs::ftruncate(to, size)?;
    Ok(())
}

fn copy_range(from: &OwnedFd, to: &OwnedFd, start: u64, end: u64) -> Result<(), Errno> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let len = usize::try_from(end - off_in).unwrap_or(usize::MAX).min(1 << 30);
        // 0: the source shrank under us, and what is there is copied.
        if rfs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), len)? == 0 {
            break;
        }
    }
    Ok(())
}

fn write_range(from: &OwnedFd, to: &OwnedFd, start: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = start;
    while offset < end {
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(buf.len());
        let n = rustix::io::pread(from, &mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        let mut written = 0;
        while written < n {
            written += rustix::io::pwrite(to, &buf[written..n], offset + written as u64)?;
        }
        offset += n as u64;
    }
    Ok(())
}

/// Owner, xattrs, mode and times of an open file or directory, in that
/// order: chown clears setuid/setgid and `security.capability`, and every
/// other change would touch the times.
fn copy_fd_meta(src: &OwnedFd, dst: &OwnedFd, st: &Statx, dst_path: &Path) -> Result<(), StoreError> {
    let ctx = |what: &str| format!("cannot {what} {}", dst_path.display());
    let (uid, gid) = owner(st);
    rfs::fchown(dst, Some(uid), Some(gid)).context(ctx("chown"))?;
    // The xattr crate works on a `File`; borrow the fds as files without
    // taking them over.
    let (src_file, dst_file) = (as_file(src), as_file(dst));
    let names = src_file.list_xattr().context(ctx("list xattrs of the source of"))?;
    for attr in names {
        // A value may vanish between list and get: nothing to copy then.
        let value = src_file.get_xattr(&attr).context(ctx("read xattr of the source of"))?;
        if let Some(value) = value {
            dst_file.set_xattr(&attr, &value).context(ctx(&format!("set xattr {attr:?} on")))?;
        }
    }
    rfs::fchmod(dst, perms(st)).context(ctx("chmod"))?;
    rfs::futimens(dst, &times(st)).context(ctx("set times of"))
}

/// A `File` view of `fd` that never closes it.
fn as_file(fd: &OwnedFd) -> std::mem::ManuallyDrop<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the fd stays open while `fd` is borrowed, and ManuallyDrop
    // keeps the File from closing it.
    std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) })
}

/// Xattrs by path, without following symlinks (for symlinks and nodes).
fn copy_path_xattrs(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let names = xattr::list(src).context(format_args!("cannot list xattrs of {}", src.display()))?;
    for attr in names {
        let value = xattr::get(src, &attr).context(format_args!("cannot read xattr of {}", src.display()))?;
        if let Some(value) = value {
            xattr::set(dst, &attr, &value)
                .context(format_args!("cannot set xattr {attr:?} on {}", dst.display()))?;
        }
    }
    Ok(())
}

/// Opens a source entry for reading without touching its atime: the
/// source must stay exactly as it was. O_NOATIME needs ownership or
/// CAP_FOWNER, so fall back without it.
fn open_source<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    path: P,
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir.as_fd(), path, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir.as_fd(), path, flags, Mode::empty()),
        other => other,
    }
}

fn open_dir(dir: impl AsFd, path: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rfs::openat(dir, path, flags, Mode::empty())
}

/// The names in an open directory, without `.` and `..`.
fn read_dir(dir: &OwnedFd) -> Result<Vec<CString>, Errno> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn dev_of(st: &Statx) -> u64 {
    rfs::makedev(st.stx_dev_major, st.stx_dev_minor)
}

fn kind(st: &Statx) -> FileType {
    FileType::from_raw_mode(st.stx_mode.into())
}

fn perms(st: &Statx) -> Mode {
    Mode::from_raw_mode(u32::from(st.stx_mode) & 0o7777)
}

fn times(st: &Statx) -> Timestamps {
    let ts = |t: rfs::StatxTimestamp| Timespec { tv_sec: t.tv_sec, tv_nsec: t.tv_nsec.into() };
    Timestamps { last_access: ts(st.stx_atime), last_modification: ts(st.stx_mtime) }
}

fn owner(st: &Statx) -> (Uid, Gid) {
    (Uid::from_raw(st.stx_uid), Gid::from_raw(st.stx_gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{random_token, MAX_DEPTH};

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused_not_overflowed() {
        let base = std::env::temp_dir().join(format!("snapstore-copy-{}", random_token()));
        std::fs::create_dir(&base).unwrap();
        // Removed with `rm -rf`: the store's own removal refuses such a tree.
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::process::Command::new("rm").arg("-rf").arg(&self.0).status();
            }
        }
        let _cleanup = Cleanup(base.clone());
        let src = base.join("src");
        std::fs::create_dir(&src).unwrap();
        // Made through descriptors: the path is longer than PATH_MAX.
        let mut dir = open_dir(CWD, &src).unwrap();
        for _ in 0..MAX_DEPTH + 5 {
            rfs::mkdirat(&dir, c"d", Mode::RWXU).unwrap();
            dir = open_dir(&dir, c"d").unwrap();
        }
        let pool = WorkerPool::new(Some(2), "copy-test").unwrap();
        let copied = pool.install(|| copy_tree(&src, &base.join("dst"), FileData::Copy)).unwrap();
        let err = copied.unwrap_err();
        assert!(err.message().contains("deeper than 2000 directories"), "{}", err.message());
    }
}
