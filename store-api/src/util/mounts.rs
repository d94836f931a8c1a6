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
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
use rustix::mount::{unmount, UnmountFlags};

use crate::{IoContext, StoreError};

/// The mount points at or below `tree`, as this process's mount namespace
/// sees them, deepest first (the order to detach them in). A `tree` that is
/// a symlink (a command swapped its tree for one) has none: what it points
/// at is not the store's.
pub fn mounts_under(tree: &Path) -> Result<Vec<PathBuf>, StoreError> {
    if fs::symlink_metadata(tree).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Ok(Vec::new());
    }
    let tree = fs::canonicalize(tree).context(format_args!("cannot resolve {}", tree.display()))?;
    let table = fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = table
        .split(|&b| b == b'\n')
        .filter_map(mount_point)
        .filter(|point| point.starts_with(&tree))
        .collect();
    // Deeper mounts first; of stacked mounts on one point, the last made
    // (listed last) first.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches (`umount2(MNT_DETACH | UMOUNT_NOFOLLOW)`) every mount at or
/// below `tree`, deepest first, and returns what was detached. Only mounts
/// under `tree` are touched; the data they showed is left as it was.
pub fn detach_mounts_under(tree: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut detached = Vec::new();
    // A point may hold stacked mounts: go round until none is left.
    for _ in 0..64 {
        let mounts = mounts_under(tree)?;
        if mounts.is_empty() {
            return Ok(detached);
        }
        for point in mounts {
            match unmount(&point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
                // EINVAL: no longer a mount point (a parent's detach took it).
                Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(StoreError::io(
                        format_args!("cannot detach the mount at {}", point.display()),
                        &io::Error::from(e),
                    ))
                }
            }
            detached.push(point);
        }
    }
    Err(StoreError::other(format!(
        "cannot detach the mounts under {}: they keep coming back",
        tree.display()
    )))
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
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "this test needs root, and CI runs as root"
            );
            eprintln!("SKIPPED: detaching mounts needs root");
            return;
        }
        let (tree, outside) = (tempfile_dir(), tempfile_dir());
        // Detaches and removes what the test made, also when it fails.
        struct Cleanup(PathBuf, PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = detach_mounts_under(&self.0);
                let _ = fs::remove_dir_all(&self.0);
                let _ = fs::remove_dir_all(&self.1);
            }
        }
        let _cleanup = Cleanup(tree.clone(), outside.clone());
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

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapstore-mounts-{}", crate::util::random_token()));
        fs::create_dir(&dir).unwrap();
        dir
    }
}
