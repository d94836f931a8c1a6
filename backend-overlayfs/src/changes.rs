//! What a result changed against its base, read from its own layer: an
//! overlay upper directory already is a diff, so exporting a result does
//! not walk its base.
//!
//! In a layer (its raw `diff/`):
//! * a character device 0/0 is a whiteout: the entry was deleted;
//! * a directory with `trusted.overlay.opaque=y` hides everything below it
//!   in the lower layers: it replaced what was there (deleted and added),
//!   and all its entries are added;
//! * anything else was created or copied up. Whether it is added or
//!   modified is decided by looking the path up in the base's tree; a
//!   copied-up entry identical to the base's (metadata and content: a file
//!   opened for writing but not changed) is not a change.
//!
//! Entries are compared as their trees show them (the result's view and
//! the base's view), so a tree's own escaped `trusted.overlay.*` xattrs
//! compare as they were set.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use store_api::{Change, ChangeKind, IoContext, StoreError};

/// The trees a change list is read from.
pub struct Trees<'a> {
    /// The result's own layer (raw).
    pub layer: &'a Path,
    /// The result's whole tree.
    pub tree: &'a Path,
    /// The base's whole tree.
    pub base: &'a Path,
}

/// The changes of the layer against the base, in walk order.
pub fn changes(trees: &Trees<'_>) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    walk(trees, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk(trees: &Trees<'_>, rel: &Path, out: &mut Vec<Change>) -> Result<(), StoreError> {
    for name in names(&trees.layer.join(rel))? {
        let path = rel.join(&name);
        let raw = lstat(&trees.layer.join(&path))?;
        let base = lstat_maybe(&trees.base.join(&path))?;
        let change = |kind| Change { kind, path: path.clone() };
        if is_whiteout(&raw) {
            if base.is_some() {
                out.push(change(ChangeKind::Deleted));
            }
            continue;
        }
        let replaced_dir = raw.is_dir() && is_opaque(&trees.layer.join(&path));
        match base {
            None => {
                out.push(change(ChangeKind::Added));
                if raw.is_dir() {
                    all_added(trees, &path, out)?;
                }
            }
            Some(base) if replaced_dir || raw.is_dir() != base.is_dir() => {
                out.push(change(ChangeKind::Deleted));
                out.push(change(ChangeKind::Added));
                if raw.is_dir() {
                    all_added(trees, &path, out)?;
                }
            }
            Some(_) => {
                if !same_entry(&trees.tree.join(&path), &trees.base.join(&path))? {
                    out.push(change(ChangeKind::Modified));
                }
                if raw.is_dir() {
                    walk(trees, &path, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Every entry below the directory `rel` of the layer, as added.
fn all_added(trees: &Trees<'_>, rel: &Path, out: &mut Vec<Change>) -> Result<(), StoreError> {
    for name in names(&trees.layer.join(rel))? {
        let path = rel.join(&name);
        let raw = lstat(&trees.layer.join(&path))?;
        if is_whiteout(&raw) {
            continue; // hides nothing: the directory is new
        }
        out.push(Change { kind: ChangeKind::Added, path: path.clone() });
        if raw.is_dir() {
            all_added(trees, &path, out)?;
        }
    }
    Ok(())
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether overlayfs reads the directory as opaque (its own xattr, not a
/// tree's escaped `trusted.overlay.overlay.opaque`).
fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value[..]), Ok(1) if value[0] == b'y')
}

/// Whether two entries are identical: type, owner, mode, size, device,
/// mtime, xattrs, symlink target and file content (atimes and directory
/// sizes and link counts left out).
fn same_entry(a: &Path, b: &Path) -> Result<bool, StoreError> {
    let (ma, mb) = (lstat(a)?, lstat(b)?);
    let key = |m: &fs::Metadata| {
        let size = if m.is_dir() { 0 } else { m.size() };
        (m.mode(), m.uid(), m.gid(), size, m.rdev(), m.mtime(), m.mtime_nsec())
    };
    if key(&ma) != key(&mb) || xattrs(a)? != xattrs(b)? {
        return Ok(false);
    }
    if ma.file_type().is_symlink() {
        let target = |p: &Path| fs::read_link(p).context(format!("cannot read the link {}", p.display()));
        return Ok(target(a)? == target(b)?);
    }
    if ma.is_file() {
        return same_content(a, b);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool, StoreError> {
    let open = |p: &Path| fs::File::open(p).context(format!("cannot read {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba).context(format!("cannot read {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).context(format!("cannot read {}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Extended attributes as (name, value), sorted.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn xattrs(path: &Path) -> Result<Xattrs, StoreError> {
    let context = || format!("cannot read the xattrs of {}", path.display());
    let mut names = vec![0u8; 65536];
    let len = rustix::fs::llistxattr(path, &mut names[..]).context(context())?;
    let mut all = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let n = rustix::fs::lgetxattr(path, name, &mut value[..]).context(context())?;
        value.truncate(n);
        all.push((name.to_vec(), value));
    }
    all.sort();
    Ok(all)
}

fn names(dir: &Path) -> Result<Vec<OsString>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).context(format!("cannot list {}", dir.display()))? {
        names.push(entry.context(format!("cannot list {}", dir.display()))?.file_name());
    }
    names.sort();
    Ok(names)
}

fn lstat(path: &Path) -> Result<fs::Metadata, StoreError> {
    fs::symlink_metadata(path).context(format!("cannot stat {}", path.display()))
}

fn lstat_maybe(path: &Path) -> Result<Option<fs::Metadata>, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // A path under what is a file in the base.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => Ok(None),
        Err(e) => Err(StoreError::io(format!("cannot stat {}", path.display()), &e)),
    }
}

/// Bytes of storage the layer `dir` takes: its blocks, each inode once.
pub fn layer_size(dir: &Path) -> Result<u64, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = lstat(&path)?;
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for name in names(&path)? {
                stack.push(path.join(name));
            }
        }
    }
    Ok(total)
}
