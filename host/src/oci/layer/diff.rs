//! The changes of a tree against its base, by walking both in parallel.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use store_api::{IoContext, StoreError};

use super::meta::{self, join, lstat, type_bits};
use super::{Change, ChangeKind};

/// Computes the changes of `tree` against `base` by walking both (for
/// backends that cannot tell them; semantics of store-api's `Change`):
/// Added, Modified (content, type-preserving metadata: mode, owner, size,
/// nanosecond mtime, xattrs, symlink target, device number, link count) or
/// Deleted; a path whose type changed is Deleted and Added, and everything
/// below an added directory is Added. Only the topmost entry of a deleted
/// subtree is listed. An entry that is the same inode on the same device
/// with the same ctime in both (shared by a snapshot or a hard-linked copy)
/// is unchanged without reading it; a regular file whose metadata is all
/// equal is compared byte by byte (a `touch -r` may have put size and mtime
/// back after a change).
pub fn diff_trees(tree: &Path, base: &Path) -> Result<Vec<Change>, StoreError> {
    diff(tree, base, None)
}

/// [`diff_trees`] of a tree that was a clone of `base` by `cloned` (Unix
/// nanoseconds) and was only changed after: an entry whose status (ctime)
/// last changed before then, by more than the timestamps' coarseness, is
/// the clone's copy of the base's, so its content and xattrs are not
/// read (a directory's entries still are). Every change to an inode sets
/// its ctime, and nothing can set one back: only a clock stepped back
/// during the build could hide a change from this shortcut.
pub fn diff_trees_after_clone(tree: &Path, base: &Path, cloned: i64) -> Result<Vec<Change>, StoreError> {
    diff(tree, base, Some(cloned))
}

/// How much earlier than the change it records a ctime can be: the kernel's
/// coarse clock, which stamps it, lags by a tick (1–10 ms)...
const TICK_SLACK_NS: i64 = 100_000_000;
/// ...and file systems that keep whole seconds (zfs-fuse, ext4 with small
/// inodes; their ctimes have no nanoseconds) cut up to a second off.
const SECONDS_SLACK_NS: i64 = 3_000_000_000;

fn diff(tree: &Path, base: &Path, cloned: Option<i64>) -> Result<Vec<Change>, StoreError> {
    for dir in [tree, base] {
        let m = fs::symlink_metadata(dir).context(format_args!("cannot diff {}", dir.display()))?;
        if !m.is_dir() {
            return Err(StoreError::invalid(format!("cannot diff {}: not a directory", dir.display())));
        }
    }
    let walk = Walk { tree, base, cloned };
    let mut out = walk.entry(Path::new(""))?;
    out.sort();
    Ok(out)
}

/// Sorted names in a directory.
pub(super) fn names(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).context(format_args!("cannot list {}", dir.display()))? {
        names.push(PathBuf::from(entry.context(format_args!("cannot list {}", dir.display()))?.file_name()));
    }
    names.sort();
    Ok(names)
}

/// One diff: the two trees, and when the tree, a clone of the base, was
/// handed over (see [`diff_trees_after_clone`]).
struct Walk<'a> {
    tree: &'a Path,
    base: &'a Path,
    cloned: Option<i64>,
}

impl Walk<'_> {
    fn entry(&self, rel: &Path) -> Result<Vec<Change>, StoreError> {
        let (tree, base) = (self.tree, self.base);
        let (tpath, bpath) = (join(tree, rel), join(base, rel));
        let t = lstat(&tpath).context(format_args!("cannot stat {}", tpath.display()))?;
        let b = lstat(&bpath).context(format_args!("cannot stat {}", bpath.display()))?;
        let change = |kind| Change { kind, path: rel.to_path_buf() };
        Ok(match (t, b) {
            (None, None) => Vec::new(),
            (None, Some(_)) => vec![change(ChangeKind::Deleted)],
            (Some(t), None) => added(tree, rel, &t, vec![change(ChangeKind::Added)])?,
            (Some(t), Some(b)) if type_bits(&t) != type_bits(&b) => {
                added(tree, rel, &t, vec![change(ChangeKind::Deleted), change(ChangeKind::Added)])?
            }
            (Some(t), Some(b)) => {
                if same_inode(&t, &b) {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                if !self.same_entry(&tpath, &t, &bpath, &b)? {
                    out.push(change(ChangeKind::Modified));
                }
                if t.is_dir() {
                    let mut all = names(&tpath)?;
                    all.extend(names(&bpath)?);
                    all.sort();
                    all.dedup();
                    let below: Result<Vec<Vec<Change>>, StoreError> =
                        all.par_iter().map(|name| self.entry(&rel.join(name))).collect();
                    out.extend(below?.into_iter().flatten());
                }
                out
            }
        })
    }

    /// Whether the tree's entry `t` last changed well before the clone was
    /// handed over, by more than its ctime can be off.
    fn untouched_since_clone(&self, t: &Metadata) -> bool {
        let Some(cloned) = self.cloned else { return false };
        let slack = if t.ctime_nsec() == 0 { SECONDS_SLACK_NS } else { TICK_SLACK_NS };
        let ctime = t.ctime().saturating_mul(1_000_000_000).saturating_add(t.ctime_nsec());
        ctime < cloned.saturating_sub(slack)
    }

    fn same_entry(&self, tpath: &Path, t: &Metadata, bpath: &Path, b: &Metadata) -> Result<bool, StoreError> {
        let is_dir = t.is_dir();
        let same = t.mode() == b.mode()
            && t.uid() == b.uid()
            && t.gid() == b.gid()
            && t.mtime() == b.mtime()
            && t.mtime_nsec() == b.mtime_nsec()
            && t.rdev() == b.rdev()
            && (is_dir || (t.size() == b.size() && t.nlink() == b.nlink()));
        if !same {
            return Ok(false);
        }
        if self.untouched_since_clone(t) {
            // The clone's copy of the base's entry.
            return Ok(true);
        }
        if t.is_symlink() {
            let tl = fs::read_link(tpath).context(format_args!("cannot read {}", tpath.display()))?;
            let bl = fs::read_link(bpath).context(format_args!("cannot read {}", bpath.display()))?;
            if tl != bl {
                return Ok(false);
            }
        }
        let tx =
            meta::xattrs(tpath).context(format_args!("cannot read the xattrs of {}", tpath.display()))?;
        let bx =
            meta::xattrs(bpath).context(format_args!("cannot read the xattrs of {}", bpath.display()))?;
        if tx != bx {
            return Ok(false);
        }
        if t.is_file() {
            return same_content(tpath, bpath).context(format_args!(
                "cannot compare {} with {}",
                tpath.display(),
                bpath.display()
            ));
        }
        Ok(true)
    }
}

/// The same inode, untouched since: a snapshot's or a hard-linked copy's.
/// `changes` for a path new in the tree, followed, for a directory, by
/// every entry below it (all new too).
fn added(tree: &Path, rel: &Path, t: &Metadata, mut changes: Vec<Change>) -> Result<Vec<Change>, StoreError> {
    if t.is_dir() {
        let below = walk_tree(tree, rel)?.into_iter();
        changes.extend(below.map(|(path, _)| Change { kind: ChangeKind::Added, path }));
    }
    Ok(changes)
}

fn same_inode(t: &Metadata, b: &Metadata) -> bool {
    t.dev() == b.dev() && t.ino() == b.ino() && t.ctime() == b.ctime() && t.ctime_nsec() == b.ctime_nsec()
}

fn open_noatime(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path).or_else(|_| File::open(path))
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (open_noatime(a)?, open_noatime(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 17], vec![0u8; 1 << 17]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every entry below `rel` in `tree` (not `rel` itself), with its
/// metadata, in no particular order; walked in parallel.
pub(super) fn walk_tree(tree: &Path, rel: &Path) -> Result<Vec<(PathBuf, Metadata)>, StoreError> {
    let dir = join(tree, rel);
    let below: Result<Vec<Vec<(PathBuf, Metadata)>>, StoreError> = names(&dir)?
        .par_iter()
        .map(|name| {
            let path = rel.join(name);
            let full = join(tree, &path);
            let m = fs::symlink_metadata(&full).context(format_args!("cannot stat {}", full.display()))?;
            let mut out = Vec::new();
            if m.is_dir() {
                out = walk_tree(tree, &path)?;
            }
            out.push((path, m));
            Ok(out)
        })
        .collect();
    Ok(below?.into_iter().flatten().collect())
}
