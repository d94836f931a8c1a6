//! What the mounts say, read with `stat` instead of `zfs` commands: a key
//! exists exactly when its dataset is mounted at its path (see the crate
//! doc), and a store whose layout was checked once carries a marker.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::sys::statvfs::{statvfs, FsFlags};
use store_api::{IoContext, Namespace, StoreError};

/// The marker of a store whose datasets were checked (and repaired) by a
/// full open: it lives in the store's dataset, so it is only seen when
/// that dataset is mounted at the root. It is in the host's bookkeeping
/// directory, which `snapstore destroy` removes: a marker of its own in
/// the root would make the emptied root look like someone else's files.
pub const LAYOUT_MARKER: &str = ".snapstore/zfs-layout";

/// What the marker holds: the layout's version and the dataset's name.
pub fn marker_text(dataset: &str) -> String {
    format!("snapstore zfs layout 2\ndataset {dataset}\n")
}

/// What `path` is, as far as keys go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing there.
    Absent,
    /// A directory with a file system of its own: a mounted dataset.
    Mounted,
    /// Something else: a directory left behind by an unmount, or a file.
    Stray,
}

/// What is at `path`, a directory entry of `parent`.
pub fn seen(parent: &Path, path: &Path) -> Result<Seen, StoreError> {
    let what = || format!("cannot look up {}", path.display());
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Seen::Absent),
        Err(err) => return Err(StoreError::io(what(), &err)),
    };
    let parent = fs::symlink_metadata(parent).context(what())?;
    Ok(if meta.is_dir() && meta.dev() != parent.dev() { Seen::Mounted } else { Seen::Stray })
}

/// Whether the store at `root` was fully checked for `dataset` (its marker
/// is there) and the namespace datasets are mounted.
pub fn layout_is_trusted(root: &Path, dataset: &str) -> bool {
    let marked = fs::read_to_string(root.join(LAYOUT_MARKER)).is_ok_and(|text| text == marker_text(dataset));
    marked
        && Namespace::ALL
            .into_iter()
            .all(|ns| matches!(seen(root, &root.join(ns.as_str())), Ok(Seen::Mounted)))
}

/// Writes the marker (through a rename, so that it is whole or absent).
pub fn write_marker(root: &Path, dataset: &str) -> Result<(), StoreError> {
    let tmp = root.join(format!("{LAYOUT_MARKER}.{}", store_api::util::random_token()));
    let what = || format!("cannot write {}", root.join(LAYOUT_MARKER).display());
    if let Some(dir) = tmp.parent() {
        fs::create_dir_all(dir).context(what())?;
    }
    fs::write(&tmp, marker_text(dataset)).context(what())?;
    fs::rename(&tmp, root.join(LAYOUT_MARKER)).map_err(|err| {
        let _ = fs::remove_file(&tmp);
        StoreError::io(what(), &err)
    })
}

/// Makes the file system mounted at `path` read-only for every mount of
/// it: from then on nothing can change the tree. Fails (`EBUSY`) while a
/// file in it is open for writing.
pub fn seal(path: &Path) -> Result<(), StoreError> {
    if is_read_only(path)? {
        return Ok(());
    }
    let what =
        || format!("cannot make {} read-only (a file in it may still be open for writing)", path.display());
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::invalid(format!("{} has a NUL byte", path.display())))?;
    let flags = nix::libc::MS_REMOUNT | nix::libc::MS_RDONLY;
    // SAFETY: `target` is a valid C string; the other pointers may be null
    // for a remount.
    let done = unsafe {
        nix::libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null())
    };
    if done == 0 {
        Ok(())
    } else {
        Err(StoreError::io(what(), &io::Error::last_os_error()))
    }
}

/// Unmounts the file system mounted at `path` (a syscall: zfs-fuse sees
/// it, and removes the directory). Nothing can change the tree any more,
/// and nobody sees it. Fails `BUSY` while a file in it is open or a
/// process works in it. Retried a little: a FUSE file system just used
/// stays busy for a moment.
pub fn unmount(path: &Path) -> Result<(), StoreError> {
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::invalid(format!("{} has a NUL byte", path.display())))?;
    let mut pause = std::time::Duration::from_millis(10);
    for attempt in 0..8 {
        // zfs-fuse unmounts in its daemon: queued with the `zfs` commands,
        // and only once the kernel handed it every request (see `fuse`).
        let queued = crate::cmd::one_at_a_time();
        crate::fuse::wait_until_quiet(path)?;
        // SAFETY: `target` is a valid C string.
        let done = unsafe { nix::libc::umount2(target.as_ptr(), 0) } == 0;
        let err = io::Error::last_os_error();
        drop(queued);
        if done {
            return Ok(());
        }
        match err.raw_os_error() {
            // Not a mount point (any more): nothing to do.
            Some(nix::libc::EINVAL) | Some(nix::libc::ENOENT) => return Ok(()),
            Some(nix::libc::EBUSY) if attempt < 7 => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            Some(nix::libc::EBUSY) => {
                return Err(StoreError::busy(format!(
                    "{} is in use (a process works in it or holds a file open): stop it and try again",
                    path.display()
                )))
            }
            _ => return Err(StoreError::io(format!("cannot unmount {}", path.display()), &err)),
        }
    }
    unreachable!("the last attempt returns")
}

/// Whether the file system at `path` is mounted read-only.
pub fn is_read_only(path: &Path) -> Result<bool, StoreError> {
    let stat = statvfs(path).map_err(|errno| {
        StoreError::io(format!("cannot stat {}", path.display()), &io::Error::from(errno))
    })?;
    Ok(stat.flags().contains(FsFlags::ST_RDONLY))
}

/// Removes the directory a dataset was mounted on, if it is empty and no
/// longer a mount point, so that it is not taken for a key. Best effort.
pub fn remove_stray(parent: &Path, path: &Path) {
    if matches!(seen(parent, path), Ok(Seen::Stray)) {
        let _ = fs::remove_dir(path);
    }
}

/// Where the file system `source` (a dataset's name, as `zfs` mounts it)
/// is mounted, as `/proc/self/mountinfo` says.
pub fn mount_points_of(source: &str) -> Result<Vec<PathBuf>, StoreError> {
    let table = fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut points = Vec::new();
    for line in table.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        // `ID PARENT DEV ROOT POINT OPTIONS [TAGS…] - TYPE SOURCE OPTIONS`
        let Some(dash) = fields.iter().position(|f| *f == b"-") else { continue };
        if fields.len() > dash + 2 && unescape(fields[dash + 2]) == source.as_bytes() && fields.len() > 4 {
            points.push(PathBuf::from(std::ffi::OsString::from_vec(unescape(fields[4]))));
        }
    }
    Ok(points)
}

/// A mountinfo field with its `\ooo` escapes (space, tab, newline,
/// backslash) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}
