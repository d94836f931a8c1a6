//! Overlay mounts through the kernel's new mount API (`fsopen`, `fsconfig`,
//! `fsmount`, `move_mount`): each lower layer is passed on its own with
//! `lowerdir+`, so neither the page-sized option string of `mount(2)` nor
//! the escaping of `:` and `,` in paths limits the chain.

use std::path::Path;

use rustix::fs::CWD;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags,
};
use store_api::{IoContext, StoreError};

/// What the overlay writes to, for a writable mount.
pub struct Upper<'a> {
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// Mounts an overlay of `lowers` (top first) at `target`: writable into
/// `upper` if given, else read-only.
///
/// The options chosen keep every layer a plain diff that other mounts can
/// stack again: no index (a layer is a lower of many mounts), no metacopy
/// (a copied-up file holds its data), and redirects neither made nor
/// followed (a renamed directory is copied, so a layer never points by name
/// into another; a planted `trusted.overlay.redirect` is ignored).
pub fn mount_overlay(target: &Path, lowers: &[&Path], upper: Option<Upper<'_>>) -> Result<(), StoreError> {
    let context = || format!("cannot mount an overlay at {}", target.display());
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        if e == rustix::io::Errno::NODEV {
            StoreError::unsupported(format!(
                "{}: the kernel has no overlay filesystem (fix: `modprobe overlay`)",
                context()
            ))
        } else {
            StoreError::io(context(), &e.into())
        }
    })?;
    let set = |key: &str, value: &Path| {
        fsconfig_set_string(&fs, key, value).context(format_args!("{}: {key}={}", context(), value.display()))
    };
    for lower in lowers {
        match fsconfig_set_string(&fs, "lowerdir+", *lower) {
            Err(rustix::io::Errno::INVAL) if !lower.as_os_str().is_empty() => {
                return Err(StoreError::unsupported(format!(
                    "{}: the kernel does not take `lowerdir+` (Linux 6.8 or later needed) or refuses {}",
                    context(),
                    lower.display()
                )))
            }
            other => other.context(format_args!("{}: lowerdir+={}", context(), lower.display()))?,
        }
    }
    if let Some(Upper { upper, work }) = &upper {
        set("upperdir", upper)?;
        set("workdir", work)?;
    }
    for (key, value) in [("index", "off"), ("metacopy", "off"), ("redirect_dir", "nofollow")] {
        fsconfig_set_string(&fs, key, value).context(format_args!("{}: {key}={value}", context()))?;
    }
    fsconfig_create(&fs).context(format_args!("{} (lowers: {})", context(), lowers.len()))?;
    let attrs = if upper.is_some() { MountAttrFlags::empty() } else { MountAttrFlags::MOUNT_ATTR_RDONLY };
    let mount = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).context(context())?;
    move_mount(&mount, c"", CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).context(context())?;
    Ok(())
}

/// Whether `path` is the root of a mount.
pub fn is_mounted(path: &Path) -> Result<bool, StoreError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(false);
    };
    let dir = match std::fs::File::open(parent) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io(format_args!("cannot open {}", parent.display()), &e)),
    };
    let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
        .map_err(|_| StoreError::invalid(format!("{} holds a NUL byte", path.display())))?;
    match store_api::util::mounts::is_mount_root(&dir, &name) {
        Ok(mounted) => Ok(mounted),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(format_args!("cannot stat {}", path.display()), &e)),
    }
}
