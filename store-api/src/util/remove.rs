//! Removing a tree the store owns, whatever a build left in it.
//!
//! The choice, for every directory backend: **a tree that holds mounts has
//! those mounts (and only those under the tree) detached first**
//! (`umount2(MNT_DETACH)`, see [`super::mounts::detach_mounts_under`]); the
//! data they showed is left untouched. Then the tree is walked and deleted
//! relative to open directory descriptors (`openat` with `O_NOFOLLOW |
//! O_DIRECTORY`, `unlinkat`): a symlink is deleted, never followed, and a
//! directory whose descriptor is on another mount than its parent's (a
//! mount made while the walk ran) is never entered: the removal fails with
//! a one-line error naming it, and leaves it as it is.
//!
//! What a build may have left is dealt with, inside the tree only:
//! * directories without write or search permission get `u+rwx`;
//! * immutable and append-only files and directories (`chattr +i`/`+a`)
//!   lose those two flags (`FS_IOC_SETFLAGS`; this needs root, as setting
//!   them does);
//! * another process deleting the same tree at the same time: entries
//!   that vanish are progress, not errors.
//!
//! Subdirectories are deleted in parallel on the current rayon pool (a
//! pool of this module's when called outside one).

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use rustix::fs::{
    fchmod, fstat, ioctl_getflags, ioctl_setflags, openat, statat, statx, unlinkat, AtFlags, Dir, FileType,
    IFlags, Mode, OFlags, StatxFlags, CWD,
};
use rustix::io::Errno;

use crate::{IoContext, StoreError};

use super::MAX_DEPTH;

/// Removes the tree (or file) at `path` the way the module documentation
/// says: mounts under it detached first, then deleted without following a
/// symlink or entering a mount. A path that does not exist is not an error.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    // `/`, `..`: never a tree of the store, and detaching below them would
    // reach far outside it.
    if split(path).is_none() {
        return Err(StoreError::invalid(format!(
            "cannot remove {}: not a tree of the store",
            path.display()
        )));
    }
    let is_dir = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.context(format_args!("cannot remove {}", path.display()))?.is_dir(),
    };
    // Only a real directory can hold mounts; a symlink is never resolved.
    if is_dir {
        if let Err(e) = super::mounts::detach_mounts_under(path) {
            if std::fs::symlink_metadata(path).is_err() {
                return Ok(()); // removed meanwhile by another process
            }
            return Err(e.context(format_args!("cannot remove {}", path.display())));
        }
    }
    remove_without_detaching(path)
}

/// The walk of [`remove_tree`] alone: mounts met are refused, not detached.
fn remove_without_detaching(path: &Path) -> Result<(), StoreError> {
    let context = || format!("cannot remove {}", path.display());
    let (parent_path, name) =
        split(path).ok_or_else(|| StoreError::invalid(context() + ": not a tree of the store"))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent = match openat(CWD, parent_path, flags, Mode::empty()) {
        Err(Errno::NOENT) => return Ok(()),
        other => other.context(format_args!("cannot open {}", parent_path.display()))?,
    };
    let top = Parent { fd: parent.as_fd(), path: parent_path, in_tree: false, mount: mount_id(&parent)? };
    let walk = || top.remove(&name, None, 0);
    if rayon::current_thread_index().is_some() {
        walk()
    } else {
        pool()?.install(walk)
    }
}

fn split(path: &Path) -> Option<(&Path, CString)> {
    let name = path.file_name()?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some((parent, CString::new(name.as_bytes()).ok()?))
}

/// The workers for removals started outside a rayon pool: big stacks, as
/// the walk recurses once per directory level.
fn pool() -> Result<&'static rayon::ThreadPool, StoreError> {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(|i| format!("snapstore-remove-{i}"))
        .stack_size(16 << 20)
        .build()
        .map_err(|e| StoreError::other(format!("cannot start the removal threads: {e}")))?;
    Ok(POOL.get_or_init(|| pool))
}

/// The mount a descriptor is on, as its mount id (its device where the
/// kernel is too old to say, before 5.8).
fn mount_id(fd: impl AsFd) -> Result<u64, StoreError> {
    let st = statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).context("cannot statx")?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        Ok(st.stx_mnt_id)
    } else {
        Ok((u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor))
    }
}

/// A directory being emptied: what the entries in it are removed relative to.
struct Parent<'a> {
    fd: BorrowedFd<'a>,
    path: &'a Path,
    /// Whether this directory is part of the tree being removed (and its
    /// mode and flags ours to change).
    in_tree: bool,
    mount: u64,
}

impl Parent<'_> {
    fn join(&self, name: &CStr) -> PathBuf {
        self.path.join(OsStr::from_bytes(name.to_bytes()))
    }

    fn fail(&self, what: &str, name: &CStr, e: Errno) -> StoreError {
        StoreError::io(format_args!("cannot {what} {}", self.join(name).display()), &e.into())
    }

    /// Removes `name`, whatever it is. `kind` is the directory entry's type
    /// if known.
    fn remove(&self, name: &CStr, kind: Option<FileType>, depth: usize) -> Result<(), StoreError> {
        if kind != Some(FileType::Directory) {
            match self.unlink(name, AtFlags::empty()) {
                Err(Errno::ISDIR) => {}
                Err(Errno::BUSY) => return Err(self.mount_error(name)),
                other => return other.map_err(|e| self.fail("remove", name, e)),
            }
        }
        if depth >= MAX_DEPTH {
            return Err(StoreError::other(format!(
                "cannot remove {}: the tree is deeper than {MAX_DEPTH} directories",
                self.join(name).display()
            )));
        }
        let dir = match self.open_dir(name) {
            Ok(dir) => dir,
            Err(Errno::NOENT) => return Ok(()),
            // Replaced by a non-directory meanwhile.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return self.unlink(name, AtFlags::empty()).map_err(|e| self.fail("remove", name, e))
            }
            Err(e) => return Err(self.fail("open", name, e)),
        };
        let mount = mount_id(&dir)?;
        if mount != self.mount {
            return Err(self.mount_error(name));
        }
        let path = self.join(name);
        let inner = Parent { fd: dir.as_fd(), path: &path, in_tree: true, mount };
        // A writer that is still adding entries gets a few more rounds.
        for _ in 0..8 {
            inner.empty(depth)?;
            match self.unlink(name, AtFlags::REMOVEDIR) {
                Err(Errno::NOTEMPTY) => continue,
                Err(Errno::BUSY) => return Err(self.mount_error(name)),
                other => return other.map_err(|e| self.fail("remove", name, e)),
            }
        }
        Err(StoreError::other(format!("cannot remove {}: something keeps writing in it", path.display())))
    }

    /// Removes every entry of this directory, subdirectories in parallel.
    /// All are tried; the first error is returned.
    fn empty(&self, depth: usize) -> Result<(), StoreError> {
        let read = |e: Errno| StoreError::io(format_args!("cannot read {}", self.path.display()), &e.into());
        let mut entries = Vec::new();
        let mut dir = Dir::new(rustix::io::dup(self.fd).map_err(read)?).map_err(read)?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(read)?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                entries.push((name.to_owned(), entry.file_type()));
            }
        }
        let kind = |t: FileType| (t != FileType::Unknown).then_some(t);
        let results: Vec<_> =
            entries.par_iter().map(|(name, t)| self.remove(name, kind(*t), depth + 1)).collect();
        results.into_iter().collect()
    }

    /// `unlinkat`, after fixing what stops it inside the tree: gone already
    /// is done, a parent without write permission gets it, and immutable
    /// or append-only flags are cleared.
    fn unlink(&self, name: &CStr, flags: AtFlags) -> Result<(), Errno> {
        let mut fixed = false;
        loop {
            match unlinkat(self.fd, name, flags) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(Errno::ACCESS) if !fixed && self.in_tree => self.make_writable()?,
                Err(Errno::PERM) if !fixed => {
                    if !self.clear_flags(name) {
                        return Err(Errno::PERM);
                    }
                }
                Err(e) => return Err(e),
            }
            fixed = true;
        }
    }

    /// Opens the directory `name`, giving it `u+rwx` if the build took them
    /// away (through an `O_PATH` descriptor, so never through a symlink).
    fn open_dir(&self, name: &CStr) -> Result<OwnedFd, Errno> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match openat(self.fd, name, flags, Mode::empty()) {
            Err(Errno::ACCESS) => {
                if !self.grant_rwxu(name)? {
                    return Err(Errno::ACCESS);
                }
                openat(self.fd, name, flags, Mode::empty())
            }
            other => other,
        }
    }

    /// Gives the directory `name` `u+rwx` if it lacks any of them, through
    /// an `O_PATH` descriptor (so never through a symlink), and only on
    /// this mount. Whether its mode changed.
    fn grant_rwxu(&self, name: &CStr) -> Result<bool, Errno> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let handle = openat(self.fd, name, flags, Mode::empty())?;
        let mode = Mode::from_raw_mode(fstat(&handle)?.st_mode);
        if mount_id(&handle).ok() != Some(self.mount) || mode.contains(Mode::RWXU) {
            return Ok(false);
        }
        let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        rustix::fs::chmod(proc_path.as_str(), mode | Mode::RWXU)?;
        Ok(true)
    }

    fn make_writable(&self) -> Result<(), Errno> {
        let mode = Mode::from_raw_mode(fstat(self.fd)?.st_mode) | Mode::RWXU;
        fchmod(self.fd, mode)
    }

    /// Clears the immutable and append-only flags that keep `name` from
    /// being unlinked: its own (a regular file or directory on this mount)
    /// and this directory's (if part of the tree). Whether any was cleared.
    fn clear_flags(&self, name: &CStr) -> bool {
        let mut cleared = false;
        if self.in_tree {
            cleared |= clear_flags_of(self.fd);
        }
        // Device nodes are not opened: their ioctls belong to the device.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let Ok(st) = statat(self.fd, name, AtFlags::SYMLINK_NOFOLLOW) else { return cleared };
        let kind = FileType::from_raw_mode(st.st_mode);
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return cleared;
        }
        let Ok(file) = openat(self.fd, name, flags, Mode::empty()) else { return cleared };
        let same = fstat(&file).is_ok_and(|now| now.st_ino == st.st_ino && now.st_dev == st.st_dev);
        if same && mount_id(&file).ok() == Some(self.mount) {
            cleared |= clear_flags_of(file.as_fd());
        }
        cleared
    }

    fn mount_error(&self, name: &CStr) -> StoreError {
        let path = self.join(name);
        StoreError::busy(format!(
            "cannot remove {0}: {0} is a mount point (made after the mounts under the tree were detached); \
             unmount it (umount -l {0}) and retry",
            path.display()
        ))
    }
}

/// Runs `rename`, a move of the directory `tree`, once more if it failed
/// because the tree's top directory was immutable or unwritable (a build
/// may make it so) and [`unlock_top`] could undo that.
pub fn rename_tree<E: Copy + Into<std::io::Error>>(
    tree: &Path,
    rename: impl Fn() -> Result<(), E>,
) -> Result<(), E> {
    match rename() {
        Err(e) => {
            let locked = matches!(
                e.into().raw_os_error().map(Errno::from_raw_os_error),
                Some(Errno::PERM | Errno::ACCESS)
            );
            if locked && unlock_top(tree) {
                rename()
            } else {
                Err(e)
            }
        }
        ok => ok,
    }
}

/// Undoes what keeps the directory `path` from being moved into place or
/// into the trash: its immutable and append-only flags, and a missing
/// write permission (a move to another parent rewrites its `..`). A build
/// may set either on its tree. Never follows a symlink, never touches the
/// root of a mount. Whether anything changed: the caller then retries.
pub fn unlock_top(path: &Path) -> bool {
    let Some((parent_path, name)) = split(path) else { return false };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Ok(parent) = openat(CWD, parent_path, flags, Mode::empty()) else { return false };
    let Ok(mount) = mount_id(&parent) else { return false };
    let outside = Parent { fd: parent.as_fd(), path: parent_path, in_tree: false, mount };
    let flags_cleared = outside.clear_flags(&name);
    outside.grant_rwxu(&name).unwrap_or(false) || flags_cleared
}

/// Clears `FS_IMMUTABLE_FL` and `FS_APPEND_FL`; whether either was set.
fn clear_flags_of(fd: BorrowedFd) -> bool {
    let sticky = IFlags::IMMUTABLE | IFlags::APPEND;
    match ioctl_getflags(fd) {
        Ok(flags) if flags.intersects(sticky) => ioctl_setflags(fd, flags - sticky).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
#[path = "remove_tests.rs"]
mod tests;
