//! snapstore backend on btrfs: every tree is a subvolume, handled through
//! the kernel's btrfs ioctls (see `sys`), never by running `btrfs`.
//!
//! Layout: key `ns/name` is the subvolume `ROOT/ns/name`; the namespace
//! directories are plain directories. Entries of a namespace directory whose
//! name starts with `.` (never a valid key name) are trees in transit: being
//! committed or removed. Their owner holds an `flock` on them; one whose
//! lock is free was left by a dead process and is deleted by the next
//! `complete_deletes`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use serde::Deserialize;
use store_api::{IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

mod checks;
mod sys;

pub use checks::check_environment;

/// The backend takes no options; unknown ones are refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Options {}

/// A store root on btrfs.
pub struct Btrfs {
    root: PathBuf,
}

/// Opens (and prepares) the store at `root`: the entry point of the plugin.
pub fn open(root: &Path, options: &str) -> Result<Btrfs, StoreError> {
    let _: Options = store_api::parse_options(options)?;
    // Check on the nearest existing ancestor, so that nothing is created on
    // the wrong filesystem.
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    checks::check_environment(existing)?;
    for ns in Namespace::ALL {
        let dir = root.join(ns.as_str());
        fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
    }
    Ok(Btrfs { root: root.to_path_buf() })
}

store_api::export_backend!(name: "btrfs", version: env!("CARGO_PKG_VERSION"), open: open);

fn open_dir(path: &Path) -> io::Result<File> {
    // O_NOFOLLOW: a symlink planted in a tree must not redirect our ioctls.
    fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW).open(path)
}

/// Takes an exclusive flock without waiting; `false` if someone holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // The lock goes away when `file` is closed: no unlock call to fail.
    match Errno::result(unsafe {
        nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB)
    }) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// A name for a tree in transit, unique among all processes and never reused.
fn transit_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{what}-{}-{nanos}-{n}", std::process::id())
}

/// Renames within or across directories, never replacing anything.
fn rename_noreplace(from_dir: &File, from: &str, to_dir: &File, to: &str) -> io::Result<()> {
    renameat2(Some(from_dir.as_raw_fd()), from, Some(to_dir.as_raw_fd()), to, RenameFlags::RENAME_NOREPLACE)
        .map_err(io::Error::from)
}

fn is_errno(err: &io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno as i32)
}

/// Deletes entry `name` of directory `dir`, whatever it is: a subvolume
/// (read-only or not, with nested subvolumes or not), a plain directory
/// tree that may hold subvolumes, or a file. Absent is fine (a concurrent
/// sweeper may have got there first).
fn delete_entry(dir: &Path, name: &OsStr) -> io::Result<()> {
    let path = dir.join(name);
    let parent = match open_dir(dir) {
        Ok(parent) => parent,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let err = match sys::snap_destroy(&parent, name) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    let result = match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
        Errno::ENOENT => Ok(()),
        // Not a directory: a file or symlink.
        Errno::ENOTDIR => fs::remove_file(&path),
        // A plain directory: empty it (it may hold subvolumes), then rmdir.
        Errno::EINVAL => {
            for entry in fs::read_dir(&path)? {
                delete_entry(&path, &entry?.file_name())?;
            }
            fs::remove_dir(&path)
        }
        // A subvolume holding subvolumes: delete those first. Unlinking them
        // needs their parent writable, so clear its read-only flag (it is
        // out of view already, being deleted).
        Errno::ENOTEMPTY => {
            let sub = open_dir(&path)?;
            sys::set_readonly(&sub, false)?;
            for (holder, child) in nested_subvolumes(&sub, &path)? {
                delete_entry(&holder, &child)?;
            }
            // Our descriptor would keep the deleted subvolume's space alive.
            drop(sub);
            sys::snap_destroy(&parent, name)
        }
        _ => Err(err),
    };
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The subvolumes directly inside the subvolume `sub` (at `path`), as
/// (directory holding it, its name).
fn nested_subvolumes(sub: &File, path: &Path) -> io::Result<Vec<(PathBuf, OsString)>> {
    let mut dirids: Vec<u64> = sys::child_subvolumes(sub)?.into_iter().map(|(_, dirid)| dirid).collect();
    dirids.sort_unstable();
    dirids.dedup();
    let mut found = Vec::new();
    for dirid in dirids {
        // The kernel tells which directories hold subvolumes; in those, a
        // subvolume is a directory entry whose inode is a subvolume root.
        let holder = path.join(sys::dir_path_in_subvol(sub, dirid)?);
        for entry in fs::read_dir(&holder)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() && meta.ino() == sys::SUBVOL_ROOT_INO {
                found.push((holder.clone(), entry.file_name()));
            }
        }
    }
    Ok(found)
}

impl Btrfs {
    fn ns_dir(&self, ns: Namespace) -> PathBuf {
        self.root.join(ns.as_str())
    }

    fn key_path(&self, key: &Key) -> PathBuf {
        self.ns_dir(key.namespace()).join(key.name())
    }

    fn open_ns(&self, ns: Namespace) -> Result<File, StoreError> {
        let dir = self.ns_dir(ns);
        open_dir(&dir).context(format!("opening {}", dir.display()))
    }

    /// Opens the subvolume of `key`, with a NOT_FOUND error naming the key.
    fn open_key(&self, key: &Key) -> Result<File, StoreError> {
        let path = self.key_path(key);
        open_dir(&path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => StoreError::not_found(format!("`{key}` does not exist")),
            _ => StoreError::io(format!("opening {}", path.display()), &err),
        })
    }

    /// Marks the subvolume `sub` (at `path`) and every subvolume nested in
    /// it read-only, innermost first.
    fn make_readonly(sub: &File, path: &Path) -> Result<(), StoreError> {
        let nested =
            nested_subvolumes(sub, path).context(format!("listing subvolumes in {}", path.display()))?;
        for (holder, name) in nested {
            let child = holder.join(name);
            let file = open_dir(&child).context(format!("opening {}", child.display()))?;
            Self::make_readonly(&file, &child)?;
        }
        sys::set_readonly(sub, true).context(format!("making {} read-only", path.display()))
    }

    /// Commits a tree that holds nested subvolumes: move it next to `dst`
    /// under a transit name, make it (and the nested ones) read-only, rename
    /// it to `dst`. A read-only subvolume cannot be moved to another
    /// directory (EROFS) but can be renamed within one, so `dst` only ever
    /// appears complete and read-only.
    fn commit_by_rename(&self, tmp: &Key, tree: File, dst: &Key) -> Result<PathBuf, StoreError> {
        let (tmp_path, dst_path) = (self.key_path(tmp), self.key_path(dst));
        // Held until we return, so that no sweeper takes the tree for a dead
        // process's leftover while it has its transit name.
        if !try_lock(&tree).context(format!("locking {}", tmp_path.display()))? {
            return Err(StoreError::busy(format!(
                "`{tmp}` is being committed or removed by another process"
            )));
        }
        // Write the build's data out before the result can become visible,
        // so that a power loss cannot leave a committed result with empty
        // files (setflags commits metadata only).
        sys::sync(&tree).context(format!("syncing {}", tmp_path.display()))?;

        let tmp_dir = self.open_ns(tmp.namespace())?;
        let dst_dir = self.open_ns(dst.namespace())?;
        let transit = transit_name("commit");
        let transit_path = self.ns_dir(dst.namespace()).join(&transit);
        rename_noreplace(&tmp_dir, tmp.name(), &dst_dir, &transit).context(format!(
            "moving {} to {}",
            tmp_path.display(),
            transit_path.display()
        ))?;
        let published = Self::make_readonly(&tree, &transit_path).and_then(|()| {
            rename_noreplace(&dst_dir, &transit, &dst_dir, dst.name()).map_err(|err| {
                if is_errno(&err, Errno::EEXIST) {
                    StoreError::already_exists(format!("`{dst}` already exists"))
                } else {
                    StoreError::io(
                        format!("renaming {} to {}", transit_path.display(), dst_path.display()),
                        &err,
                    )
                }
            })
        });
        if let Err(err) = published {
            // Nobody will use the tree again (the host discards a build whose
            // commit failed): delete it now, while our lock still marks it ours.
            let _ = delete_entry(&self.ns_dir(dst.namespace()), transit.as_ref());
            return Err(err);
        }
        // setflags committed the flag; commit the rename too, so that a
        // committed result survives a power loss.
        sys::commit_transaction(&dst_dir).context(format!("committing {}", dst_path.display()))?;
        Ok(dst_path)
    }

    /// Deletes leftovers of dead processes: trees in transit whose lock is free.
    fn sweep(&self) -> Result<(), StoreError> {
        for ns in Namespace::ALL {
            let dir = self.ns_dir(ns);
            for entry in fs::read_dir(&dir).context(format!("reading {}", dir.display()))? {
                let entry = entry.context(format!("reading {}", dir.display()))?;
                let name = entry.file_name();
                if !name.as_bytes().starts_with(b".") {
                    continue;
                }
                let path = entry.path();
                let deleting = format!("deleting {}", path.display());
                // Only directories are held; anything else is junk.
                if let Ok(held) = open_dir(&path) {
                    if !try_lock(&held).context(format!("locking {}", path.display()))? {
                        continue; // a live process is working on it
                    }
                    // Transit names are never reused, and their owner renames
                    // them away or deletes them before releasing the lock: if
                    // the name is still there, its owner died.
                    if path.symlink_metadata().is_err() {
                        continue;
                    }
                    delete_entry(&dir, &name).context(deleting)?;
                } else {
                    delete_entry(&dir, &name).context(deleting)?;
                }
            }
        }
        Ok(())
    }
}

impl SnapshotBackend for Btrfs {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let path = self.key_path(key);
        let dir = self.open_ns(key.namespace())?;
        sys::subvol_create(&dir, key.name().as_ref())
            .context(format!("creating subvolume {}", path.display()))?;
        // The kernel applies our umask to the new root; set what the contract says.
        let sub = open_dir(&path).context(format!("opening {}", path.display()))?;
        sub.set_permissions(fs::Permissions::from_mode(0o755))
            .context(format!("chmod {}", path.display()))?;
        if let Some(Owner { uid, gid }) = owner {
            fchown(&sub, Some(uid), Some(gid)).context(format!("chown {uid}:{gid} {}", path.display()))?;
        }
        Ok(path)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let source = self.open_key(src)?;
        let dir = self.open_ns(dst.namespace())?;
        let path = self.key_path(dst);
        sys::snapshot(&source, &dir, dst.name().as_ref(), false).context(format!(
            "snapshotting {} to {}",
            self.key_path(src).display(),
            path.display()
        ))?;
        Ok(path)
    }

    /// Commits `tmp` as `dst`. Usually with one read-only snapshot: the
    /// kernel writes the tree's data out and commits a transaction in which
    /// `dst` appears complete and read-only, so it is atomic and durable;
    /// then `tmp` is deleted. A snapshot leaves out the subvolumes a build
    /// created inside its tree, so such a tree is moved instead (see
    /// `commit_by_rename`).
    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let dst_path = self.key_path(dst);
        // The host serialises calls on `dst`, so this check is reliable; the
        // kernel refuses to replace anyway.
        if dst_path.symlink_metadata().is_ok() {
            return Err(StoreError::already_exists(format!("`{dst}` already exists")));
        }
        let tmp_path = self.key_path(tmp);
        let tree = self.open_key(tmp)?;
        let nested =
            sys::child_subvolumes(&tree).context(format!("listing subvolumes in {}", tmp_path.display()))?;
        if !nested.is_empty() {
            return self.commit_by_rename(tmp, tree, dst);
        }
        let dst_dir = self.open_ns(dst.namespace())?;
        sys::snapshot(&tree, &dst_dir, dst.name().as_ref(), true).map_err(|err| {
            if is_errno(&err, Errno::EEXIST) {
                StoreError::already_exists(format!("`{dst}` already exists"))
            } else {
                StoreError::io(format!("snapshotting {} to {}", tmp_path.display(), dst_path.display()), &err)
            }
        })?;
        drop(tree);
        // Were we killed here, the host would find `tmp` and remove it.
        delete_entry(&self.ns_dir(tmp.namespace()), tmp.name().as_ref())
            .context(format!("deleting {} after committing it", tmp_path.display()))?;
        Ok(dst_path)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.key_path(key);
        let dir = self.open_ns(key.namespace())?;
        // The common case, a subvolume without nested ones: one atomic ioctl.
        let err = match sys::snap_destroy(&dir, key.name().as_ref()) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let errno = Errno::from_raw(err.raw_os_error().unwrap_or(0));
        match errno {
            Errno::ENOENT => return Ok(()),
            // Nested subvolumes, a plain directory, a file: handled below.
            Errno::ENOTEMPTY | Errno::EINVAL | Errno::ENOTDIR => {}
            _ => return Err(StoreError::io(format!("deleting subvolume {}", path.display()), &err)),
        }
        // These take several steps: first rename the tree out of view (a
        // same-directory rename, allowed even when read-only), holding its
        // lock so that no sweeper takes it for a dead process's leftover.
        let held = match open_dir(&path) {
            Ok(file) => Some(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => None, // not a directory: nothing to hold
        };
        if let Some(file) = &held {
            if !try_lock(file).context(format!("locking {}", path.display()))? {
                return Err(StoreError::busy(format!(
                    "`{key}` is being committed or removed by another process"
                )));
            }
        }
        let transit = transit_name("remove");
        match rename_noreplace(&dir, key.name(), &dir, &transit) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(StoreError::io(format!("moving {} out of view", path.display()), &err)),
        }
        // Keep the lock until the transit name is gone.
        let result = delete_entry(&self.ns_dir(key.namespace()), transit.as_ref());
        drop(held);
        result.context(format!("deleting {}", path.display()))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.key_path(key);
        match path.symlink_metadata() {
            Ok(_) => Ok(Some(path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::io(format!("looking up {}", path.display()), &err)),
        }
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        // Trees in transit have `.` names, which are not key names.
        store_api::util::list_key_names(&self.ns_dir(namespace))
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(&self.root)
    }

    /// Trees of dead processes caught half-way through a commit or remove.
    fn recover(&self) -> Result<(), StoreError> {
        self.sweep()
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        self.sweep()?;
        let root = open_dir(&self.root).context(format!("opening {}", self.root.display()))?;
        let what = format!("waiting for btrfs to clean deleted subvolumes under {}", self.root.display());
        // Wait for the subvolumes deleted so far, not for ones other
        // processes delete meanwhile (that could go on forever).
        let pending = sys::deleted_subvolumes(&root).context(&what)?;
        let mut delay = Duration::from_millis(5);
        loop {
            // Commits the transaction and wakes the cleaner thread.
            sys::sync(&root).context(&what)?;
            let left = sys::deleted_subvolumes(&root).context(&what)?;
            if !pending.iter().any(|id| left.contains(id)) {
                break;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        // Space freed by the cleaner becomes usable at the next commit.
        sys::sync(&root).context(&what)
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut lines = checks::check_environment(&self.root)?;
        lines.push(format!("free space: {:.1}%", self.free_percent()?));
        Ok(lines)
    }
}
