//! snapstore backend on btrfs: every tree is a subvolume, handled through
//! the kernel's btrfs ioctls (see `sys`), never by running `btrfs`.
//!
//! Layout: key `ns/name` is the subvolume `ROOT/ns/name`; the namespace
//! directories are plain directories. Entries of a namespace directory whose
//! name starts with `.` (never a valid key name) are trees in transit: being
//! committed or removed. Their owner holds an `flock` on them; one whose
//! lock is free was left by a dead process and is deleted by the next
//! `complete_deletes`.
//!
//! No operation follows a mount a build's sandbox left in a tree: the
//! mounts under a tree are detached before it is removed or committed, and
//! every walk inside a tree goes by descriptor and refuses mount roots
//! (see `tree`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use serde::Deserialize;
use store_api::util::mounts;
use store_api::{ErrorKind, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};
use tree::Dir;

mod checks;
mod cleaner;
mod sys;
mod tree;

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
    checks::check_environment(root)?;
    for ns in Namespace::ALL {
        let dir = root.join(ns.as_str());
        fs::create_dir_all(&dir).context(format!("cannot create {}", dir.display()))?;
    }
    Ok(Btrfs { root: root.to_path_buf() })
}

store_api::export_backend!(name: "btrfs", version: env!("CARGO_PKG_VERSION"), open: open);

/// A name for a tree in transit, unique among all processes; the leading
/// `.` keeps it out of key listings.
fn transit_name(what: &str) -> String {
    format!(".{}", store_api::util::unique_name(what))
}

/// Renames within or across directories, never replacing anything.
fn rename_noreplace(from_dir: &File, from: &str, to_dir: &File, to: &str) -> io::Result<()> {
    renameat2(Some(from_dir.as_raw_fd()), from, Some(to_dir.as_raw_fd()), to, RenameFlags::RENAME_NOREPLACE)
        .map_err(io::Error::from)
}

fn is_errno(err: &io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno as i32)
}

/// Detaches the mounts a build's sandbox left under `path` (and only
/// those), so that the tree can be removed or committed without anything
/// outside the store being reached through them. Nothing to do for an
/// absent entry or one that is not a directory (never follow a symlink).
fn detach_mounts(path: &Path) -> Result<(), StoreError> {
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => mounts::detach_mounts_under(path).map(drop),
        _ => Ok(()),
    }
}

/// How long removing a temporary tree waits for the cleaner to free it.
const CLEANER_WAIT: Duration = Duration::from_secs(30);

impl Btrfs {
    fn ns_dir(&self, ns: Namespace) -> PathBuf {
        self.root.join(ns.as_str())
    }

    fn key_path(&self, key: &Key) -> PathBuf {
        self.ns_dir(key.namespace()).join(key.name())
    }

    fn open_ns(&self, ns: Namespace) -> Result<Dir, StoreError> {
        let dir = self.ns_dir(ns);
        Dir::open(&dir).context(format!("cannot open {}", dir.display()))
    }

    /// Opens the subvolume of `key`, with a NOT_FOUND error naming the key.
    fn open_key(&self, key: &Key) -> Result<Dir, StoreError> {
        let path = self.key_path(key);
        Dir::open(&path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => StoreError::not_found(format!("`{key}` does not exist")),
            _ => StoreError::io(format!("cannot open {}", path.display()), &err),
        })
    }

    /// Removes entry `name` of namespace `ns` (a tree, in transit or not):
    /// detaches the mounts under it, then deletes it without crossing
    /// any. Returns the ids of the subvolumes deleted.
    fn delete_tree(&self, ns: Namespace, name: &OsStr) -> Result<Vec<u64>, StoreError> {
        let path = self.ns_dir(ns).join(name);
        detach_mounts(&path)?;
        tree::delete_entry(&self.open_ns(ns)?, name)
    }

    /// Deletes the tree of `key` (its mounts already detached) from `dir`,
    /// its namespace directory. Returns the ids of the subvolumes deleted.
    fn remove_entry(&self, key: &Key, dir: &Dir) -> Result<Vec<u64>, StoreError> {
        let name: &OsStr = key.name().as_ref();
        // Not kept open: an open subvolume keeps its space after deletion.
        let id = match dir.child(name) {
            Ok(sub) => sys::subvolume_id(&sub.file).ok().flatten(),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(Vec::new()),
            Err(err) if err.kind() == ErrorKind::BUSY => return Err(err), // a mount came back
            Err(_) => None,                                               // not a directory
        };
        // The common case, a subvolume without nested ones: one atomic ioctl.
        if let Some(id) = id {
            let destroyed = match sys::snap_destroy(&dir.file, name) {
                Err(err) if is_errno(&err, Errno::EPERM) && tree::unlock(dir, name) => {
                    sys::snap_destroy(&dir.file, name)
                }
                other => other,
            };
            match destroyed {
                Ok(()) => return Ok(vec![id]),
                Err(err) if is_errno(&err, Errno::ENOENT) => return Ok(Vec::new()),
                Err(err) if is_errno(&err, Errno::ENOTEMPTY) => {} // nested subvolumes
                Err(err) => {
                    let path = self.key_path(key);
                    return Err(StoreError::io(format!("cannot delete subvolume {}", path.display()), &err));
                }
            }
        }
        self.remove_in_steps(key, dir)
    }

    /// Removes a tree that takes several steps (nested subvolumes, a plain
    /// directory, a file): first rename it out of view (a same-directory
    /// rename, allowed even when read-only), holding its lock so that no
    /// sweeper takes it for a dead process's leftover.
    fn remove_in_steps(&self, key: &Key, dir: &Dir) -> Result<Vec<u64>, StoreError> {
        let path = self.key_path(key);
        let held = match dir.child(key.name().as_ref()) {
            Ok(sub) => Some(sub),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(Vec::new()),
            Err(err) if err.kind() == ErrorKind::BUSY => return Err(err),
            Err(_) => None,
        };
        if let Some(sub) = &held {
            if !store_api::util::try_lock_open(&sub.file)
                .context(format!("cannot lock {}", path.display()))?
            {
                return Err(StoreError::busy(format!(
                    "`{key}` is being committed or removed by another process"
                )));
            }
        }
        let transit = transit_name("remove");
        match rename_noreplace(&dir.file, key.name(), &dir.file, &transit) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(StoreError::io(format!("cannot move {} out of view", path.display()), &err))
            }
        }
        // Keep the lock until the transit name is gone.
        let result = tree::delete_entry(dir, transit.as_ref());
        drop(held);
        result.context(format!("cannot delete {}", path.display()))
    }

    /// Commits a tree that holds nested subvolumes: move it next to `dst`
    /// under a transit name, make it (and the nested ones) read-only, rename
    /// it to `dst`. A read-only subvolume cannot be moved to another
    /// directory (EROFS) but can be renamed within one, so `dst` only ever
    /// appears complete and read-only.
    fn commit_by_rename(&self, tmp: &Key, tree: Dir, dst: &Key) -> Result<PathBuf, StoreError> {
        let (tmp_path, dst_path) = (self.key_path(tmp), self.key_path(dst));
        // Held until we return, so that no sweeper takes the tree for a dead
        // process's leftover while it has its transit name.
        if !store_api::util::try_lock_open(&tree.file)
            .context(format!("cannot lock {}", tmp_path.display()))?
        {
            return Err(StoreError::busy(format!(
                "`{tmp}` is being committed or removed by another process"
            )));
        }
        // Write the build's data out before the result can become visible,
        // so that a power loss cannot leave a committed result with empty
        // files (setflags commits metadata only).
        sys::sync(&tree.file).context(format!("cannot sync {}", tmp_path.display()))?;

        let tmp_dir = self.open_ns(tmp.namespace())?;
        let dst_dir = self.open_ns(dst.namespace())?;
        let transit = transit_name("commit");
        let transit_path = self.ns_dir(dst.namespace()).join(&transit);
        rename_noreplace(&tmp_dir.file, tmp.name(), &dst_dir.file, &transit).context(format!(
            "cannot move {} to {}",
            tmp_path.display(),
            transit_path.display()
        ))?;
        let tree = Dir { path: transit_path.clone(), ..tree };
        let published = tree::make_readonly(&tree).and_then(|()| {
            rename_noreplace(&dst_dir.file, &transit, &dst_dir.file, dst.name()).map_err(|err| {
                if is_errno(&err, Errno::EEXIST) {
                    StoreError::already_exists(format!("`{dst}` already exists"))
                } else {
                    StoreError::io(
                        format!("cannot rename {} to {}", transit_path.display(), dst_path.display()),
                        &err,
                    )
                }
            })
        });
        if let Err(err) = published {
            // Nobody will use the tree again (the host discards a build whose
            // commit failed): delete it now, while our lock still marks it ours.
            let _ = self.delete_tree(dst.namespace(), transit.as_ref());
            return Err(err);
        }
        // setflags committed the flag; commit the rename too, so that a
        // committed result survives a power loss.
        sys::commit_transaction(&dst_dir.file).context(format!("cannot commit {}", dst_path.display()))?;
        Ok(dst_path)
    }

    /// Deletes leftovers of dead processes: trees in transit whose lock is free.
    fn sweep(&self) -> Result<(), StoreError> {
        for ns in Namespace::ALL {
            let dir = self.ns_dir(ns);
            for entry in fs::read_dir(&dir).context(format!("cannot list {}", dir.display()))? {
                let entry = entry.context(format!("cannot list {}", dir.display()))?;
                let name = entry.file_name();
                if !name.as_bytes().starts_with(b".") {
                    continue;
                }
                let path = entry.path();
                let deleting = format!("cannot delete {}", path.display());
                // Only directories are held; anything else is junk.
                if let Ok(held) = Dir::open(&path) {
                    if !store_api::util::try_lock_open(&held.file)
                        .context(format!("cannot lock {}", path.display()))?
                    {
                        continue; // a live process is working on it
                    }
                    // Transit names are never reused, and their owner renames
                    // them away or deletes them before releasing the lock: if
                    // the name is still there, its owner died.
                    if path.symlink_metadata().is_err() {
                        continue;
                    }
                    self.delete_tree(ns, &name).context(deleting)?;
                } else {
                    self.delete_tree(ns, &name).context(deleting)?;
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
        sys::subvol_create(&dir.file, key.name().as_ref())
            .context(format!("cannot create subvolume {}", path.display()))?;
        // The kernel applies our umask to the new root; set what the contract says.
        let sub = dir.child(key.name().as_ref())?;
        sub.file
            .set_permissions(fs::Permissions::from_mode(0o755))
            .context(format!("cannot chmod {}", path.display()))?;
        if let Some(Owner { uid, gid }) = owner {
            fchown(&sub.file, Some(uid), Some(gid))
                .context(format!("cannot chown {} to {uid}:{gid}", path.display()))?;
        }
        Ok(path)
    }

    /// A writable snapshot of `src`, and of each subvolume nested in it,
    /// put in place (a snapshot alone would show them as empty directories).
    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let source = self.open_key(src)?;
        let dir = self.open_ns(dst.namespace())?;
        let path = self.key_path(dst);
        sys::snapshot(&source.file, &dir.file, dst.name().as_ref(), false).context(format!(
            "cannot snapshot {} to {}",
            source.path.display(),
            path.display()
        ))?;
        // A failure leaves a partial temporary tree, which the host removes.
        tree::snapshot_nested(&source, &dir.child(dst.name().as_ref())?)?;
        Ok(path)
    }

    /// Commits `tmp` as `dst`. Usually with one read-only snapshot: the
    /// kernel writes the tree's data out and commits a transaction in which
    /// `dst` appears complete and read-only, so it is atomic and durable;
    /// then `tmp` is deleted. A snapshot leaves out the subvolumes a build
    /// created inside its tree, so such a tree is moved instead (see
    /// `commit_by_rename`). Mounts left under `tmp` are detached first:
    /// nothing is committed or deleted through them.
    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let dst_path = self.key_path(dst);
        // The host serialises calls on `dst`, so this check is reliable; the
        // kernel refuses to replace anyway.
        if dst_path.symlink_metadata().is_ok() {
            return Err(StoreError::already_exists(format!("`{dst}` already exists")));
        }
        let tmp_path = self.key_path(tmp);
        detach_mounts(&tmp_path)?;
        let tree = self.open_key(tmp)?;
        let nested = sys::child_subvolumes(&tree.file)
            .context(format!("cannot list the subvolumes in {}", tmp_path.display()))?;
        if !nested.is_empty() {
            return self.commit_by_rename(tmp, tree, dst);
        }
        let dst_dir = self.open_ns(dst.namespace())?;
        sys::snapshot(&tree.file, &dst_dir.file, dst.name().as_ref(), true).map_err(|err| {
            if is_errno(&err, Errno::EEXIST) {
                StoreError::already_exists(format!("`{dst}` already exists"))
            } else {
                StoreError::io(
                    format!("cannot snapshot {} to {}", tmp_path.display(), dst_path.display()),
                    &err,
                )
            }
        })?;
        drop(tree);
        // Were we killed here, the host would find `tmp` and remove it.
        self.delete_tree(tmp.namespace(), tmp.name().as_ref())
            .context(format!("cannot delete {} after committing it", tmp_path.display()))?;
        Ok(dst_path)
    }

    /// Removes `key`; for a temporary tree (most often a failed build's),
    /// also waits for the cleaner to give its space back (see README).
    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.key_path(key);
        detach_mounts(&path)?;
        let dir = self.open_ns(key.namespace())?;
        let deleted = self.remove_entry(key, &dir)?;
        if !key.namespace().is_committed() && !deleted.is_empty() {
            let root = Dir::open(&self.root).context(format!("cannot open {}", self.root.display()))?;
            // Past the limit the tree is gone all the same; the space comes
            // back later (complete_deletes waits for it).
            cleaner::wait_for(&root.file, &deleted, Some(CLEANER_WAIT))
                .context(format!("cannot wait for btrfs to free {}", path.display()))?;
        }
        Ok(())
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.key_path(key);
        match path.symlink_metadata() {
            Ok(_) => Ok(Some(path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::io(format!("cannot look up {}", path.display()), &err)),
        }
    }

    fn key_dir(&self, namespace: Namespace) -> Result<Option<PathBuf>, StoreError> {
        Ok(Some(self.ns_dir(namespace)))
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
        let root = Dir::open(&self.root).context(format!("cannot open {}", self.root.display()))?;
        let what = format!("cannot wait for btrfs to clean deleted subvolumes under {}", self.root.display());
        // Wait for the subvolumes deleted so far, not for ones other
        // processes delete meanwhile (that could go on forever).
        let pending = sys::deleted_subvolumes(&root.file).context(&what)?;
        cleaner::wait_for(&root.file, &pending, None).context(&what).map(drop)
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut lines = checks::check_environment(&self.root)?;
        lines.push(format!("free space: {:.1}%", self.free_percent()?));
        Ok(lines)
    }
}
