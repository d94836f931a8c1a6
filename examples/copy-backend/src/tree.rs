//! Copying a whole tree with all its metadata. (Deleting one is
//! `store_api::util::remove_tree`.)
//!
//! Plain `std::fs` where it suffices; `nix` for what std lacks (device
//! nodes, nanosecond times on symlinks).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{lchown, symlink, DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// An I/O error and the file it happened on.
#[derive(Debug)]
pub struct TreeError {
    pub path: PathBuf,
    /// Kept as is (not wrapped), so that e.g. ENOSPC is still recognised.
    pub error: io::Error,
}

trait At<T> {
    fn at(self, path: &Path) -> Result<T, TreeError>;
}

impl<T, E: Into<io::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, TreeError> {
        self.map_err(|e| TreeError { path: path.to_path_buf(), error: e.into() })
    }
}

/// Copies the tree `src` to `dst`, which must not exist, keeping file
/// types, owners, modes, access and modification times, and hard links
/// between files of the tree. Run as root to keep every owner.
pub fn copy(src: &Path, dst: &Path) -> Result<(), TreeError> {
    // (device, inode) of every multiply-linked file copied so far -> its copy.
    let mut copied: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_entry(src, dst, &mut copied)
}

fn copy_entry(src: &Path, dst: &Path, copied: &mut HashMap<(u64, u64), PathBuf>) -> Result<(), TreeError> {
    let meta = fs::symlink_metadata(src).at(src)?;
    let kind = meta.file_type();
    if !kind.is_dir() && meta.nlink() > 1 {
        // Another name of a file already copied: link to that copy, which
        // already has the metadata (links share their inode).
        if let Some(first) = copied.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, dst).at(dst);
        }
        copied.insert((meta.dev(), meta.ino()), dst.to_path_buf());
    }
    if kind.is_dir() {
        // Private and writable while it fills up; its real mode comes last,
        // as a read-only directory could not be filled.
        fs::DirBuilder::new().mode(0o700).create(dst).at(dst)?;
        for entry in fs::read_dir(src).at(src)? {
            let entry = entry.at(src)?;
            copy_entry(&entry.path(), &dst.join(entry.file_name()), copied)?;
        }
    } else if kind.is_file() {
        // std's copy uses copy_file_range, which shares blocks where the
        // filesystem can (reflinks on btrfs and xfs, server-side on NFS).
        fs::copy(src, dst).at(dst)?;
    } else if kind.is_symlink() {
        symlink(fs::read_link(src).at(src)?, dst).at(dst)?;
    } else {
        // FIFOs, sockets and device nodes are recreated, not read.
        let node = if kind.is_fifo() {
            SFlag::S_IFIFO
        } else if kind.is_socket() {
            SFlag::S_IFSOCK
        } else if kind.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(dst, node, Mode::empty(), meta.rdev()).at(dst)?;
    }
    copy_metadata(dst, &meta)
}

/// Gives `path` the owner, mode and times in `meta`.
fn copy_metadata(path: &Path, meta: &fs::Metadata) -> Result<(), TreeError> {
    // The owner first: chown clears the setuid and setgid bits.
    lchown(path, Some(meta.uid()), Some(meta.gid())).at(path)?;
    // Symlinks have no mode of their own on Linux (and chmod would follow them).
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777)).at(path)?;
    }
    // Times last, since the steps above may change them.
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink).at(path)
}
