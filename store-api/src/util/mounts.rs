//! Mount points inside the trees a backend hands out.
//!
//! Build sandboxes bind-mount host directories, caches, `/dev` and `/proc`
//! into build trees. A removal that walked through such a mount would
//! delete data outside the store, so every removal first detaches the
//! mounts under the tree ([`detach_mounts_under`]) and then walks it
//! without ever entering a mount root ([`is_mount_root`]), refusing any
//! mount it still meets.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{open, openat2, statx, AtFlags, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{unmount, UnmountFlags};

use crate::{IoContext, StoreError};

/// The mount points at or below `tree`, as this process's mount namespace
/// sees them, deepest first (the order to detach them in). A `tree` that is
/// a symlink (a command swapped its tree for one) has none: what it points
/// at is not the store's.
pub fn mounts_under(tree: &Path) -> Result<Vec<PathBuf>, StoreError> {
    match open_tree(tree)? {
        Some((_, real)) => points_under(&real),
        None => Ok(Vec::new()),
    }
}

/// Detaches (`umount2(MNT_DETACH)`) every mount at or below `tree`,
/// deepest first, and returns what was detached. Only mounts under `tree`
/// are touched; the data they showed is left as it was. Each mount is
/// reached from `tree` by descriptor, through no symlink: a process that
/// swaps a directory for a link meanwhile cannot lead it outside.
pub fn detach_mounts_under(tree: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut detached = Vec::new();
    // A point may hold stacked mounts: go round until none is left. The
    // tree is opened again each round: once its own mount is detached, a
    // descriptor of it no longer reaches what is mounted there now.
    for _ in 0..64 {
        let Some((dir, real)) = open_tree(tree)? else { return Ok(detached) };
        let mounts = points_under(&real)?;
        if mounts.is_empty() {
            return Ok(detached);
        }
        for point in mounts {
            if detach(&dir, &real, &point)? {
                detached.push(point);
            }
        }
    }
    Err(StoreError::other(format!(
        "cannot detach the mounts under {}: they keep coming back",
        tree.display()
    )))
}

/// `tree` opened as a directory (not through a final symlink), with the
/// path the kernel resolved it to; `None` if it is a symlink or no
/// directory. Later swaps of any of its components change neither.
fn open_tree(tree: &Path) -> Result<Option<(OwnedFd, PathBuf)>, StoreError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match open(tree, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(StoreError::io(format_args!("cannot open {}", tree.display()), &e.into())),
    };
    let real = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .context(format_args!("cannot resolve {}", tree.display()))?;
    Ok(Some((dir, real)))
}

/// The mount points at or below the directory `real` in
/// `/proc/self/mountinfo`, deepest first.
fn points_under(real: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let table = fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = table
        .split(|&b| b == b'\n')
        .filter_map(mount_point)
        .filter(|point| point.starts_with(real))
        .collect();
    // Deeper mounts first; of stacked mounts on one point, the last made
    // (listed last) first.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches the top mount at `point`, a path below `dir` (whose path is
/// `real`), reached beneath `dir` through no symlink. Returns `false` when
/// it is no longer there that way (gone, or behind a symlink now).
fn detach(dir: &OwnedFd, real: &Path, point: &Path) -> Result<bool, StoreError> {
    let relative = point.strip_prefix(real).unwrap_or(point);
    // The tree's own mount is reached through `dir` itself.
    let opened = if relative.as_os_str().is_empty() {
        None
    } else {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match openat2(dir, relative, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS)
        {
            Ok(fd) => Some(fd),
            Err(Errno::NOENT | Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => return Ok(false),
            Err(e) => return Err(StoreError::io(format_args!("cannot open {}", point.display()), &e.into())),
        }
    };
    let target = opened.as_ref().unwrap_or(dir);
    // Through the descriptor: nothing is looked up by name again.
    match unmount(format!("/proc/self/fd/{}", target.as_raw_fd()), UnmountFlags::DETACH) {
        Ok(()) => Ok(true),
        // EINVAL: no longer a mount point (a parent's detach took it).
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(e) => {
            Err(StoreError::io(format_args!("cannot detach the mount at {}", point.display()), &e.into()))
        }
    }
}

/// Whether `name` in the directory `dir` is the root of a mount (another
/// filesystem, or a bind mount of the same one), without following a
/// symlink. A btrfs subvolume is not a mount root, although its `st_dev`
/// differs from its parent's.
pub fn is_mount_root(dir: impl AsFd, name: &CStr) -> io::Result<bool> {
    let dir = dir.as_fd();
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    let child = statx(dir, name, flags, StatxFlags::MNT_ID)?;
    if child.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(child.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    // Kernels before 5.8 lack the attribute: compare mount ids instead.
    let parent = statx(dir, c".", flags, StatxFlags::MNT_ID)?;
    Ok(child.stx_mnt_id != parent.stx_mnt_id)
}

/// The mount point (field 5) of one `/proc/self/mountinfo` line, with the
/// kernel's octal escapes (`\040` for a space, …) decoded.
fn mount_point(line: &[u8]) -> Option<PathBuf> {
    let field = line.split(|&b| b == b' ').nth(4)?;
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let line = b"36 35 98:0 /mnt1 /mnt/a\\040b\\134c rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(mount_point(line), Some(PathBuf::from("/mnt/a b\\c")));
        assert_eq!(mount_point(b"short line"), None);
    }

    #[test]
    fn the_root_of_a_filesystem_is_a_mount_root() {
        let root = fs::File::open("/").unwrap();
        assert!(is_mount_root(&root, c"proc").unwrap(), "/proc is a mount on every Linux machine");
        let tmp = tempfile_dir();
        let dir = fs::File::open(&tmp).unwrap();
        fs::create_dir(tmp.join("plain")).unwrap();
        assert!(!is_mount_root(&dir, c"plain").unwrap());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn bind_mounts_under_a_tree_are_detached_and_the_outside_kept() {
        if !can_mount() {
            return;
        }
        let (tree, outside) = (tempfile_dir(), tempfile_dir());
        let _cleanup = Cleanup(vec![tree.clone(), outside.clone()]);
        fs::write(outside.join("keep"), b"data").unwrap();
        let point = tree.join("a b").join("mnt");
        fs::create_dir_all(&point).unwrap();
        let bind = |target: &Path| {
            rustix::mount::mount_bind(&outside, target).unwrap();
        };
        bind(&point);
        bind(&point); // stacked on the same point
        assert_eq!(
            mounts_under(&tree).unwrap(),
            vec![fs::canonicalize(&point).unwrap()],
            "one point, listed once"
        );
        assert_eq!(detach_mounts_under(&tree).unwrap().len(), 2);
        assert!(mounts_under(&tree).unwrap().is_empty());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"data");
        assert!(
            fs::read_dir(&point).unwrap().next().is_none(),
            "the mount point is an empty directory again"
        );
        fs::remove_dir_all(&tree).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    /// A tree that is itself a mount point (an overlay view, a dataset),
    /// with mounts stacked on it and under it: all go.
    #[test]
    fn mounts_stacked_on_the_tree_itself_are_all_detached() {
        if !can_mount() {
            return;
        }
        let (tree, outside) = (tempfile_dir(), tempfile_dir());
        let _cleanup = Cleanup(vec![tree.clone(), outside.clone()]);
        fs::create_dir(outside.join("sub")).unwrap();
        for _ in 0..2 {
            rustix::mount::mount_bind(&outside, &tree).unwrap();
        }
        rustix::mount::mount_bind(&outside, tree.join("sub")).unwrap();
        assert_eq!(detach_mounts_under(&tree).unwrap().len(), 3);
        assert!(mounts_under(&tree).unwrap().is_empty());
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_a_detach_outside() {
        if !can_mount() {
            return;
        }
        let (tree, outside, victim) = (tempfile_dir(), tempfile_dir(), tempfile_dir());
        let _cleanup = Cleanup(vec![tree.clone(), victim.clone(), outside.clone()]);
        fs::write(outside.join("keep"), b"data").unwrap();
        // A mount in the tree, and one outside the store.
        for point in [tree.join("a/mnt"), victim.join("mnt")] {
            fs::create_dir_all(&point).unwrap();
            rustix::mount::mount_bind(&outside, &point).unwrap();
        }
        let (dir, real) = open_tree(&tree).unwrap().unwrap();
        let listed = points_under(&real).unwrap();
        assert_eq!(listed, vec![fs::canonicalize(tree.join("a/mnt")).unwrap()]);
        // Between the listing and the detach, a process moves `a` away and
        // puts a symlink to the outside directory in its place.
        fs::rename(tree.join("a"), tree.join("moved")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a")).unwrap();
        assert!(!detach(&dir, &real, &listed[0]).unwrap());
        let victim_real = fs::canonicalize(&victim).unwrap();
        assert_eq!(points_under(&victim_real).unwrap().len(), 1, "the mount outside was detached");
        // The moved mount is still under the tree, and goes next time.
        assert_eq!(detach_mounts_under(&tree).unwrap().len(), 1);
        assert!(points_under(&real).unwrap().is_empty());
        assert_eq!(points_under(&victim_real).unwrap().len(), 1, "the mount outside was detached");
        // A tree that is itself a symlink has no mounts of ours.
        let link = tree.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(mounts_under(&link).unwrap().is_empty());
        assert!(detach_mounts_under(&link).unwrap().is_empty());
        assert_eq!(points_under(&victim_real).unwrap().len(), 1, "the mount outside was detached");
    }

    /// Whether this process may mount (root); a loud skip otherwise, and a
    /// failure on CI, which runs as root.
    fn can_mount() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "this test needs root, and CI runs as root");
        eprintln!("SKIPPED: detaching mounts needs root");
        false
    }

    /// Detaches and removes what a test made, also when it fails.
    struct Cleanup(Vec<PathBuf>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = detach_mounts_under(dir);
                let _ = fs::remove_dir_all(dir);
            }
        }
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapstore-mounts-{}", crate::util::random_token()));
        fs::create_dir(&dir).unwrap();
        dir
    }
}
