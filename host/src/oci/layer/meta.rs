//! What the diff compares and the tar keeps of one entry, beyond `lstat`.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The entry's extended attributes, sorted by name.
pub(super) fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        // A filesystem without xattrs (zfs-fuse): the entry has none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        listed => listed?,
    };
    // XFS also lists its ACLs in their on-disk form (trusted.SGI_ACL_*):
    // they travel as `system.posix_acl_*`, which every filesystem reads.
    let names = names.filter(|name| !name.as_bytes().starts_with(b"trusted.SGI_ACL_"));
    for name in names {
        // Gone between list and get: the attribute no longer exists.
        if let Some(value) = xattr::get(path, &name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// `tree` joined with the raw relative path `rel` (the root when empty).
pub(super) fn join(tree: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        tree.to_path_buf()
    } else {
        tree.join(rel)
    }
}

pub(super) fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file type bits of the mode (S_IFMT).
pub(super) fn type_bits(m: &Metadata) -> u32 {
    m.mode() & libc::S_IFMT
}

pub(super) fn is_socket(m: &Metadata) -> bool {
    m.file_type().is_socket()
}
