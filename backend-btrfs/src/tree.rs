//! Walks inside the trees of the store through directory descriptors,
//! never by path: each step opens one entry with `O_NOFOLLOW` and refuses
//! a mount root, so nothing here follows a symlink or enters a mount that a
//! build's sandbox left behind (a bind-mounted cache copy or host
//! directory). Callers detach the mounts under a tree first
//! (`store_api::util::mounts::detach_mounts_under`); one met anyway is
//! refused with an error naming it, and left as it is.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rustix::fs::{openat, unlinkat, AtFlags, Mode, OFlags};
use store_api::util::mounts::is_mount_root;
use store_api::{ErrorKind, IoContext, StoreError};

use crate::sys;

/// A directory open by descriptor, with its path (for messages only).
pub struct Dir {
    pub file: File,
    pub path: PathBuf,
}

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Dir {
    /// Opens `path`, a directory of the store itself, not inside a tree.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = openat(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty())?;
        Ok(Dir { file: File::from(fd), path: path.to_path_buf() })
    }

    /// Opens the directory `name` of this one. Refuses a symlink and a
    /// mount root (checked on what was opened, so there is no race).
    pub fn child(&self, name: &OsStr) -> Result<Dir, StoreError> {
        let path = self.path.join(name);
        let fd = openat(&self.file, name, DIR_FLAGS, Mode::empty())
            .map_err(io::Error::from)
            .context(format_args!("cannot open {}", path.display()))?;
        let file = File::from(fd);
        if is_mount_root(&file, c".").context(format_args!("cannot stat {}", path.display()))? {
            return Err(mount_met(&path));
        }
        Ok(Dir { file, path })
    }

    fn try_clone(&self) -> Result<Dir, StoreError> {
        let file = self.file.try_clone().context(format_args!("cannot reopen {}", self.path.display()))?;
        Ok(Dir { file, path: self.path.clone() })
    }

    /// The names in this directory, without `.` and `..`.
    fn entries(&self) -> Result<Vec<OsString>, StoreError> {
        let what = || format!("cannot list {}", self.path.display());
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.file).map_err(io::Error::from).context(what())? {
            let entry = entry.map_err(io::Error::from).context(what())?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(names)
    }

    /// Whether entry `name` is a mount root; `None` if it does not exist.
    fn is_mount(&self, name: &OsStr) -> Result<Option<bool>, StoreError> {
        let c_name = CString::new(name.as_bytes())
            .map_err(|_| StoreError::invalid(format!("bad file name {name:?}")))?;
        match is_mount_root(&self.file, &c_name) {
            Ok(mount) => Ok(Some(mount)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::io(format!("cannot stat {}", self.path.join(name).display()), &err)),
        }
    }
}

/// The error for a mount met inside a tree.
fn mount_met(path: &Path) -> StoreError {
    StoreError::new(
        ErrorKind::BUSY,
        format!(
            "{} is a mount point inside the tree: unmount it and retry (it was left as it is)",
            path.display()
        ),
    )
}

/// A subvolume inside another one: the directory holding it, and its name.
pub struct Nested {
    pub holder: Dir,
    pub name: OsString,
}

impl Nested {
    pub fn open(&self) -> Result<Dir, StoreError> {
        self.holder.child(&self.name)
    }
}

/// The subvolumes directly inside the subvolume `sub`, found in the
/// filesystem's own records and reached by descriptor.
pub fn nested_subvolumes(sub: &Dir) -> Result<Vec<Nested>, StoreError> {
    let what = || format!("cannot list the subvolumes in {}", sub.path.display());
    let mut found = Vec::new();
    for (treeid, dirid) in sys::child_subvolumes(&sub.file).context(what())? {
        let (holder_path, name) = sys::child_location(&sub.file, treeid, dirid).context(what())?;
        let mut holder = sub.try_clone()?;
        for part in holder_path.split(|&b| b == b'/').filter(|part| !part.is_empty()) {
            holder = holder.child(OsStr::from_bytes(part))?;
        }
        found.push(Nested { holder, name });
    }
    Ok(found)
}

/// Marks the subvolume `sub` and every subvolume nested in it read-only,
/// innermost first.
pub fn make_readonly(sub: &Dir) -> Result<(), StoreError> {
    for nested in nested_subvolumes(sub)? {
        make_readonly(&nested.open()?)?;
    }
    sys::set_readonly(&sub.file, true).context(format_args!("cannot make {} read-only", sub.path.display()))
}

/// Puts a writable snapshot of each subvolume nested in `src` in place in
/// `dst`, a fresh snapshot of `src` (where they show as empty directories:
/// snapshots do not descend into subvolumes), recursively.
pub fn snapshot_nested(src: &Dir, dst: &Dir) -> Result<(), StoreError> {
    for nested in nested_subvolumes(src)? {
        let source = nested.open()?;
        // The same place in `dst`, reached the same way.
        let rel = nested.holder.path.strip_prefix(&src.path).unwrap_or(Path::new(""));
        let mut holder = dst.try_clone()?;
        for part in rel.iter() {
            holder = holder.child(part)?;
        }
        let target = holder.path.join(&nested.name);
        unlinkat(&holder.file, &nested.name, AtFlags::REMOVEDIR)
            .map_err(io::Error::from)
            .context(format_args!("cannot remove the placeholder {}", target.display()))?;
        sys::snapshot(&source.file, &holder.file, &nested.name, false).context(format_args!(
            "cannot snapshot {} to {}",
            source.path.display(),
            target.display()
        ))?;
        snapshot_nested(&source, &holder.child(&nested.name)?)?;
    }
    Ok(())
}

/// Clears the immutable and append-only flags a build may set on its tree
/// `name` of `dir`, which keep it from being deleted. Its read-only flag
/// keeps them, so it is cleared first, and set again if there was nothing
/// to clear. Whether anything changed.
pub fn unlock(dir: &Dir, name: &OsStr) -> bool {
    let path = dir.path.join(name);
    let Ok(sub) = dir.child(name) else { return store_api::util::remove::unlock_top(&path) };
    let readonly = sys::is_readonly(&sub.file).unwrap_or(false);
    if readonly {
        let _ = sys::set_readonly(&sub.file, false);
    }
    let unlocked = store_api::util::remove::unlock_top(&path);
    if readonly && !unlocked {
        let _ = sys::set_readonly(&sub.file, true);
    }
    unlocked
}

/// Deletes entry `name` of `dir`, whatever it is: a subvolume (read-only
/// or not, with nested subvolumes or not), a plain directory tree that may
/// hold subvolumes, or a file. Absent is fine (a concurrent sweeper may
/// have got there first). Returns the ids of the subvolumes deleted.
pub fn delete_entry(dir: &Dir, name: &OsStr) -> Result<Vec<u64>, StoreError> {
    let path = dir.path.join(name);
    match dir.is_mount(name)? {
        None => return Ok(Vec::new()),
        Some(true) => return Err(mount_met(&path)),
        Some(false) => {}
    }
    let cannot = |err: io::Error| StoreError::io(format!("cannot delete {}", path.display()), &err);
    // Its id, for waiting on the cleaner; only a subvolume root has one.
    let id = dir.child(name).ok().and_then(|sub| sys::subvolume_id(&sub.file).ok().flatten());
    let err = match sys::snap_destroy(&dir.file, name) {
        Ok(()) => return Ok(id.into_iter().collect()),
        Err(err) => err,
    };
    let mut deleted = Vec::new();
    let result = match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
        Errno::ENOENT => Ok(()),
        // Not a directory: a file or symlink.
        Errno::ENOTDIR => unlinkat(&dir.file, name, AtFlags::empty()).map_err(io::Error::from),
        // A plain directory: empty it (it may hold subvolumes), then rmdir.
        Errno::EINVAL => {
            let sub = dir.child(name)?;
            for entry in sub.entries()? {
                deleted.extend(delete_entry(&sub, &entry)?);
            }
            drop(sub);
            unlinkat(&dir.file, name, AtFlags::REMOVEDIR).map_err(io::Error::from)
        }
        // A subvolume holding subvolumes: delete those first. Unlinking them
        // needs their parent writable, so clear its read-only flag (it is
        // out of view already, being deleted).
        Errno::ENOTEMPTY => {
            let sub = dir.child(name)?;
            sys::set_readonly(&sub.file, false).map_err(cannot)?;
            for nested in nested_subvolumes(&sub)? {
                deleted.extend(delete_entry(&nested.holder, &nested.name)?);
            }
            // Our descriptor would keep the deleted subvolume's space alive.
            drop(sub);
            sys::snap_destroy(&dir.file, name)
        }
        Errno::EPERM if unlock(dir, name) => return delete_entry(dir, name),
        _ => Err(err),
    };
    match result {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(_) if dir.is_mount(name)? == Some(true) => return Err(mount_met(&path)),
        Err(err) => return Err(cannot(err)),
    }
    deleted.extend(id);
    Ok(deleted)
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod tests {
    use super::common::{is_ro, run, LoopBtrfs};
    use super::*;

    /// Bind-mounts `source` on `target` until dropped.
    struct Bind(PathBuf);

    impl Bind {
        fn new(source: &Path, target: &Path) -> Bind {
            std::fs::create_dir_all(target).expect("mkdir");
            run("mount", &["--bind", source.to_str().expect("utf8"), target.to_str().expect("utf8")])
                .expect("mount --bind");
            Bind(target.to_path_buf())
        }
    }

    impl Drop for Bind {
        fn drop(&mut self) {
            let _ = run("umount", &["-l", self.0.to_str().unwrap_or("")]);
        }
    }

    fn assert_refused(result: Result<impl Sized, StoreError>, mount: &Path) {
        let Err(err) = result else { panic!("a walk went on past the mount at {}", mount.display()) };
        assert_eq!(err.kind(), ErrorKind::BUSY, "{err:?}");
        assert!(err.message().contains(&format!("{} is a mount point", mount.display())), "{err}");
        assert!(!err.message().contains('\n'));
    }

    /// Without the mounts detached first, a walk that meets one stops
    /// with an error naming it, and leaves it and what it shows alone.
    #[test]
    fn a_mount_met_during_a_walk_is_refused_and_left_intact() {
        let Some(fs) = LoopBtrfs::new("walk-mounts") else {
            return;
        };
        let outside = fs.mnt.join("outside");
        run("btrfs", &["subvolume", "create", outside.to_str().expect("utf8")]).expect("subvolume create");
        std::fs::write(outside.join("keep"), "data").expect("write");
        let root = fs.mnt.join("store");
        std::fs::create_dir(&root).expect("mkdir");
        let dir = Dir::open(&root).expect("open");

        // A plain directory whose walk meets a mount.
        let junk_mount = root.join("junk/mnt");
        let _junk = Bind::new(&outside, &junk_mount);
        assert_refused(delete_entry(&dir, OsStr::new("junk")), &junk_mount);

        // A subvolume whose nested one sits below a mount: listing it
        // (to delete, make read-only or clone it) stops at the mount.
        sys::subvol_create(&dir.file, OsStr::new("t")).expect("create");
        std::fs::create_dir(root.join("t/deep")).expect("mkdir");
        let t = dir.child(OsStr::new("t")).expect("open t");
        sys::subvol_create(&t.child(OsStr::new("deep")).expect("open deep").file, OsStr::new("inner"))
            .expect("create nested");
        let deep_mount = root.join("t/deep");
        let _deep = Bind::new(&outside, &deep_mount);
        assert_refused(make_readonly(&t), &deep_mount);
        sys::subvol_create(&dir.file, OsStr::new("u")).expect("create");
        assert_refused(snapshot_nested(&t, &dir.child(OsStr::new("u")).expect("open u")), &deep_mount);
        drop(t);
        assert_refused(delete_entry(&dir, OsStr::new("t")), &deep_mount);

        // The mount that was met is the one it was, still there.
        assert_refused(delete_entry(&dir, OsStr::new("t")), &deep_mount);
        assert_refused(dir.child(OsStr::new("junk")).and_then(|j| j.child(OsStr::new("mnt"))), &junk_mount);
        assert_eq!(std::fs::read_to_string(outside.join("keep")).expect("read"), "data");
        assert_eq!(std::fs::read_dir(&outside).expect("read_dir").count(), 1);
        assert!(!is_ro(&outside), "the mounted subvolume was made read-only");
    }
}
