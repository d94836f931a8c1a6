//! snapstore backend `copy`: plain directories, copied in pure Rust.
//!
//! It works on any local filesystem and needs no external tool: a good
//! default where `rsync` is missing, and the template for third-party
//! backends (see `docs/backend-guide.md` in the snapstore repository).
//!
//! How the primitives map onto the filesystem (a key `NS/NAME` is the
//! directory `ROOT/NS/NAME`):
//!
//! * `create`: `mkdir`, then mode 0755 and the requested owner.
//! * `clone_tree`: a recursive copy that keeps file types, modes (setuid
//!   etc. included), owners, access and modification times (to the
//!   nanosecond) and the hard links inside the tree ([`tree::copy`]).
//! * `commit`: one `rename(2)` with `RENAME_NOREPLACE`, so the result appears
//!   whole or not at all, and never replaces an existing one. With
//!   `sync = true` (the default) the filesystem is synced first, so that a
//!   crash never leaves a committed result with missing contents.
//! * `remove`: one `rename(2)` into `ROOT/trash/` (the key disappears at
//!   once), then the tree is deleted there with
//!   `store_api::util::remove_tree`, which never deletes through a mount or
//!   a symlink a build left in it.
//!
//! The plumbing (key to path, locks, unique names, safe removal) comes from
//! `store_api::util`, shared by every directory backend.
//!
//! The host does the rest: names, locks, cache generations, leases and
//! recovery of temporary trees left by dead processes. All this backend
//! has to get right is that each primitive is atomic and that `remove`
//! copes with a tree in any state.
//!
//! Not kept by copies: extended attributes (ACLs, file capabilities), and
//! holes in sparse files. Every result is a full copy: `commit` ignores
//! its `parent` hint (a backend that deduplicates would use it).
//!
//! Options (the config's `[backend]` table):
//!
//! ```toml
//! [backend]
//! sync = true   # sync the filesystem before each commit (default true)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags};
use serde::Deserialize;
use store_api::util::{trash, unique_name, DirLayout, FileLock, LockMode};
use store_api::{IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

pub mod tree;

// The entry point the host loads. `name` is what `backend = "copy"` in a
// config means, and must match the library's file name, libsnapstore_copy.so.
#[cfg(feature = "plugin")]
store_api::export_backend!(name: "copy", version: env!("CARGO_PKG_VERSION"), open: open);

/// The `[backend]` options. `deny_unknown_fields` makes a misspelt option
/// an error that names it, instead of being silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_sync")]
    sync: bool,
}

fn default_sync() -> bool {
    true
}

/// The backend: a store root, and its options.
pub struct CopyBackend {
    layout: DirLayout,
    sync: bool,
}

/// Where removed trees are deleted. Not a namespace of keys, so the host
/// never sees it.
const TRASH: &str = "trash";

/// Opens the backend on `root` (the host passes its config's root, and the
/// `[backend]` table as TOML text). Called once per process; keep it cheap.
pub fn open(root: &Path, options: &str) -> Result<CopyBackend, StoreError> {
    let Options { sync } = store_api::parse_options(options)?;
    let layout = DirLayout::new(root);
    layout.create_dirs(&[TRASH])?;
    Ok(CopyBackend { layout, sync })
}

impl CopyBackend {
    fn trash(&self) -> PathBuf {
        self.layout.dir(TRASH)
    }

    /// Moves `path` into the trash and deletes it there.
    ///
    /// Every tree in the trash has a lock file beside it, `NAME.lock`, held
    /// by the process deleting it. The lock is taken *before* the rename, so
    /// a trash entry whose lock is free belongs to nobody: its deleter
    /// finished or died, and [`Self::empty_trash`] may finish the job.
    fn discard(&self, path: &Path) -> Result<(), StoreError> {
        let name = unique_name("del");
        let lock = FileLock::acquire(&self.trash().join(format!("{name}.lock")), LockMode::Exclusive)?;
        let doomed = self.trash().join(&name);
        let result = match fs::rename(path, &doomed) {
            // A tree that cannot be deleted is set aside (and retried by
            // complete_deletes); the error says so, once.
            Ok(()) => trash::remove_or_set_aside(&doomed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format_args!("cannot remove {}", path.display()), &e)),
        };
        // The lock file goes while still locked, so nobody waits on a stale one.
        lock.remove();
        result
    }

    /// Deletes the trees in the trash that nobody is deleting. With `wait`,
    /// waits for the trees other processes are deleting, so that on return
    /// everything removed so far is gone.
    fn empty_trash(&self, wait: bool) -> Result<(), StoreError> {
        let trash = self.trash();
        trash::retry_stuck(&trash);
        for entry in fs::read_dir(&trash).context("cannot read the trash")?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only trees that `discard` put there: never guess about anything else.
            if !name.starts_with("del-") || name.ends_with(".lock") {
                continue;
            }
            let lock_path = trash.join(format!("{name}.lock"));
            let lock = if wait {
                FileLock::acquire(&lock_path, LockMode::Exclusive)?
            } else {
                match FileLock::try_acquire(&lock_path, LockMode::Exclusive)? {
                    Some(lock) => lock,
                    None => continue,
                }
            };
            // Another process may have finished it meanwhile; deleting what
            // is already gone is not an error. One tree that cannot be
            // deleted is reported once and set aside: it must not keep the
            // others (or later calls) from completing.
            if let Err(e) = trash::remove_or_set_aside(&entry.path()) {
                eprintln!("warning: {e}");
            }
            lock.remove();
        }
        Ok(())
    }

    /// Syncs the filesystem holding the store: one call, however many files
    /// the tree has (an fsync per file would cost far more on big trees).
    fn sync_filesystem(&self) -> Result<(), StoreError> {
        let root = fs::File::open(&self.layout.root()).context("cannot open the store root")?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root))
            .context("cannot sync the store's filesystem")
    }
}

impl SnapshotBackend for CopyBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        self.layout.create_key_dir(key, owner)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.layout.path_of(src), self.layout.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{src} does not exist")));
        }
        if to.symlink_metadata().is_ok() {
            return Err(StoreError::already_exists(format!("{dst} already exists")));
        }
        if let Err(e) = tree::copy(&from, &to) {
            // Leave nothing half-made behind (the host also removes the
            // temporary key after a failed clone; removing twice is fine).
            let _ = self.discard(&to);
            let context = format!("cannot copy {} to {}: {}", from.display(), to.display(), e.path.display());
            return Err(StoreError::io(context, &e.error));
        }
        Ok(to)
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.layout.path_of(tmp), self.layout.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{tmp} does not exist")));
        }
        if self.sync {
            self.sync_filesystem()?;
        }
        // The commit itself: atomic, and fails with EEXIST (ALREADY_EXISTS)
        // rather than replacing a committed tree.
        renameat2(None, &from, None, &to, RenameFlags::RENAME_NOREPLACE).context(format_args!(
            "cannot rename {} to {}",
            from.display(),
            to.display()
        ))?;
        if self.sync {
            // Make the rename itself durable.
            let parent = to.parent().unwrap_or(self.layout.root());
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .context("cannot sync the namespace directory")?;
        }
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        // Absent keys are fine: `discard` treats a missing path as done.
        self.discard(&self.layout.path_of(key))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        self.layout.existing(key)
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        // Only valid key names: anything else in there is not a key.
        self.layout.list(namespace)
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(&self.layout.root())
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Deletes are synchronous; what is left is the trash of processes
        // that died while deleting, and trees other processes are deleting.
        self.empty_trash(true)?;
        // Let the filesystem account for the freed blocks before `df`.
        self.sync_filesystem()
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut found = vec![format!(
            "store root {} on {}",
            self.layout.root().display(),
            filesystem_name(&self.layout.root())?
        )];
        // Probe write access and RENAME_NOREPLACE (missing on some network
        // and FUSE filesystems), in the trash where nothing else looks.
        let (a, b) = (self.trash().join(unique_name("probe")), self.trash().join(unique_name("probe")));
        fs::write(&a, b"").context(format_args!(
            "cannot write in {}; run snapstore as a user who owns the store root",
            self.trash().display()
        ))?;
        let renamed = renameat2(None, &a, None, &b, RenameFlags::RENAME_NOREPLACE);
        let _ = fs::remove_file(&a);
        let _ = fs::remove_file(&b);
        if let Err(errno) = renamed {
            return Err(StoreError::unsupported(format!(
                "the filesystem of {} does not support rename with RENAME_NOREPLACE ({errno}); \
                 put the store root on a local filesystem such as ext4, xfs or btrfs",
                self.layout.root().display()
            )));
        }
        found.push("rename without replace: supported".into());
        if !nix::unistd::geteuid().is_root() {
            found.push("not running as root: copies of files owned by other users will fail".into());
        }
        found.push(format!("sync before commit: {}", if self.sync { "on" } else { "off" }));
        Ok(found)
    }

    /// (store-api 1.1.) Quick cleanup of this backend's own leftovers: lock
    /// files of deleters killed after their tree was gone. Trees left in the
    /// trash are deleted by `complete_deletes`, which may take long.
    fn recover(&self) -> Result<(), StoreError> {
        let trash = self.trash();
        for entry in fs::read_dir(&trash).context("cannot read the trash")?.flatten() {
            let lock_path = entry.path();
            // Only the locks of trees that `discard` names `del-*`.
            let Some(tree) = lock_path.to_str().and_then(|p| p.strip_suffix(".lock")).filter(|p| {
                Path::new(p).file_name().is_some_and(|n| n.to_string_lossy().starts_with("del-"))
            }) else {
                continue;
            };
            if Path::new(tree).symlink_metadata().is_ok() {
                continue;
            }
            // Held means a live `discard` about to rename its tree in.
            if let Some(lock) = FileLock::try_acquire(&lock_path, LockMode::Exclusive)? {
                lock.remove();
            }
        }
        Ok(())
    }
}

/// The filesystem type of `path`, for `check`.
fn filesystem_name(path: &Path) -> Result<String, StoreError> {
    use nix::sys::statfs::*;
    let kind = statfs(path).context(format_args!("cannot statfs {}", path.display()))?.filesystem_type();
    let known = [
        (EXT4_SUPER_MAGIC, "ext4"),
        (XFS_SUPER_MAGIC, "xfs"),
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (TMPFS_MAGIC, "tmpfs"),
        (OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (NFS_SUPER_MAGIC, "nfs"),
        (FUSE_SUPER_MAGIC, "fuse"),
    ];
    Ok(known
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| format!("a filesystem of type {:#x}", kind.0)))
}
