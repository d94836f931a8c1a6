//! The metadata of a tree's top directory, which overlayfs takes from the
//! upper directory: a clone's upper directory gets its base's.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{
    chmod, chown, lgetxattr, lsetxattr, utimensat, AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags,
    CWD,
};
use store_api::{IoContext, StoreError};

/// Gives the directory `to` the owner, mode, extended attributes (ACLs
/// included; overlayfs' own `trusted.overlay.*` excepted, the tree's own
/// escaped ones kept) and times of the directory `from`.
pub fn copy_root(from: &Path, to: &Path) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(from).context(format_args!("cannot stat {}", from.display()))?;
    let context = || format!("cannot copy the metadata of {} to {}", from.display(), to.display());
    chown(to, Some(Uid::from_raw(meta.uid())), Some(Gid::from_raw(meta.gid()))).context(context())?;
    // After chown, which clears the set-id bits.
    chmod(to, Mode::from_raw_mode(meta.mode() & 0o7777)).context(context())?;
    for name in xattr_names(from).context(context())? {
        if is_overlays_own(&name) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = lgetxattr(from, name.as_slice(), &mut value[..]).context(context())?;
        lsetxattr(to, name.as_slice(), &value[..len], XattrFlags::empty()).context(context())?;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() as _ },
        last_modification: Timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() as _ },
    };
    utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW).context(context())?;
    Ok(())
}

/// The names of the extended attributes of `path` (not followed).
fn xattr_names(path: &Path) -> Result<Vec<Vec<u8>>, rustix::io::Errno> {
    let mut buf = vec![0u8; 65536];
    let len = rustix::fs::llistxattr(path, &mut buf[..])?;
    Ok(buf[..len].split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
}

/// An xattr overlayfs reads as its own. A tree's own `trusted.overlay.X`,
/// written through an overlay, is stored escaped as
/// `trusted.overlay.overlay.X` (Linux 6.7+) and shown unescaped.
fn is_overlays_own(name: &[u8]) -> bool {
    name.starts_with(OWN) && !name.starts_with(ESCAPED)
}

const OWN: &[u8] = b"trusted.overlay.";
const ESCAPED: &[u8] = b"trusted.overlay.overlay.";

/// Escapes the tree's own `trusted.overlay.*` xattrs in `dir`, a plain
/// copy of an overlay's tree (which shows them unescaped): in a layer they
/// would otherwise be read as overlayfs' own (an opaque directory, a
/// redirect). Never follows a symlink; `dir` holds no mount (a fresh copy).
pub fn escape_overlay_xattrs(dir: &Path) -> Result<(), StoreError> {
    let context = || format!("cannot escape the trusted.overlay.* xattrs in {}", dir.display());
    escape_one(dir).context(context())?;
    for entry in std::fs::read_dir(dir).context(context())? {
        let entry = entry.context(context())?;
        let path = entry.path();
        if entry.file_type().context(context())?.is_dir() {
            escape_overlay_xattrs(&path)?;
        } else {
            escape_one(&path).context(format!("cannot escape the xattrs of {}", path.display()))?;
        }
    }
    Ok(())
}

fn escape_one(path: &Path) -> Result<(), rustix::io::Errno> {
    for name in xattr_names(path)? {
        if !name.starts_with(OWN) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = lgetxattr(path, name.as_slice(), &mut value[..])?;
        let mut escaped = ESCAPED.to_vec();
        escaped.extend_from_slice(&name[OWN.len()..]);
        lsetxattr(path, escaped.as_slice(), &value[..len], XattrFlags::empty())?;
        rustix::fs::lremovexattr(path, name.as_slice())?;
    }
    Ok(())
}
