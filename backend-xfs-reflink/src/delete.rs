//! Deleting a tree, in parallel.
//!
//! Another process may be deleting the same tree at the same time (both
//! finishing a trash directory), so an entry that is already gone is fine.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, fchmodat, fstatat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use rayon::prelude::*;
use store_api::StoreError;

use crate::sys::{self, errno, join};

/// Deletes `name` in the directory `dir` (at `dir_path`), whatever it is.
pub fn delete_entry(
    dir: &File,
    dir_path: &Path,
    name: &CStr,
    is_dir: Option<bool>,
) -> Result<(), StoreError> {
    let fd = dir.as_raw_fd();
    let path = || join(dir_path, name);
    let is_dir = match is_dir {
        Some(known) => known,
        None => match fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits(),
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(errno(format!("stat {}", path().display()), e)),
        },
    };
    if !is_dir {
        return with_write_access(dir, || unlinkat(Some(fd), name, UnlinkatFlags::NoRemoveDir))
            .map_err(|e| errno(format!("delete {}", path().display()), e));
    }
    let child = match sys::open_dir_at(Some(fd), name) {
        Ok(child) => child,
        // Not searchable (mode 0 when not root): open it up first.
        Err(Errno::EACCES) => {
            fchmodat(Some(fd), name, Mode::S_IRWXU, FchmodatFlags::FollowSymlink)
                .map_err(|e| errno(format!("chmod {}", path().display()), e))?;
            sys::open_dir_at(Some(fd), name).map_err(|e| errno(format!("open {}", path().display()), e))?
        }
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(errno(format!("open {}", path().display()), e)),
    };
    let child_path = path();
    empty_dir(&child, &child_path)?;
    drop(child);
    with_write_access(dir, || unlinkat(Some(fd), name, UnlinkatFlags::RemoveDir))
        .map_err(|e| errno(format!("delete directory {}", child_path.display()), e))
}

/// Deletes everything in `dir`, subdirectories in parallel.
pub fn empty_dir(dir: &File, path: &Path) -> Result<(), StoreError> {
    let names = match sys::read_dir(dir) {
        Ok(names) => names,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(errno(format!("read directory {}", path.display()), e)),
    };
    names.par_iter().try_for_each(|(name, is_dir)| delete_entry(dir, path, name, *is_dir))
}

/// Runs an unlink; gone already is success, and a directory without
/// write permission (possible when not root) is made writable once.
fn with_write_access(dir: &File, unlink: impl Fn() -> nix::Result<()>) -> nix::Result<()> {
    match unlink() {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EACCES) => {
            fchmod(dir.as_raw_fd(), Mode::S_IRWXU)?;
            match unlink() {
                Err(Errno::ENOENT) => Ok(()),
                other => other,
            }
        }
        Err(e) => Err(e),
    }
}
