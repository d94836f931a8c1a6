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
//!   once), then the tree is deleted there.
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

use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags};
use serde::Deserialize;
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
    root: PathBuf,
    sync: bool,
}

/// Where removed trees are deleted. Not a namespace of keys, so the host
/// never sees it.
const TRASH: &str = "trash";

/// Opens the backend on `root` (the host passes its config's root, and the
/// `[backend]` table as TOML text). Called once per process; keep it cheap.
pub fn open(root: &Path, options: &str) -> Result<CopyBackend, StoreError> {
    let Options { sync } = store_api::parse_options(options)?;
    for dir in Namespace::ALL.iter().map(|ns| ns.as_str()).chain([TRASH]) {
        let path = root.join(dir);
        fs::create_dir_all(&path).context(format_args!("cannot create {}", path.display()))?;
    }
    Ok(CopyBackend { root: root.to_path_buf(), sync })
}

impl CopyBackend {
    /// The directory of `key`. Keys are validated by the host and again by
    /// the adapter in store-api (no `/`, no leading `.`), so joining is safe.
    fn path_of(&self, key: &Key) -> PathBuf {
        self.root.join(key.to_string())
    }

    fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }

    /// Moves `path` into the trash and deletes it there.
    ///
    /// Every tree in the trash has a lock file beside it, `NAME.lock`, held
    /// by the process deleting it. The lock is taken *before* the rename, so
    /// a trash entry whose lock is free belongs to nobody: its deleter
    /// finished or died, and [`Self::empty_trash`] may finish the job.
    fn discard(&self, path: &Path) -> Result<(), StoreError> {
        let name = unique_name("del");
        let lock_path = self.trash().join(format!("{name}.lock"));
        let lock = lock(&lock_path, true)?.expect("a blocking lock is always taken");
        let doomed = self.trash().join(&name);
        let result = match fs::rename(path, &doomed) {
            Ok(()) => tree::delete(&doomed).map_err(delete_error),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format_args!("cannot remove {}", path.display()), &e)),
        };
        // On failure the tree stays in the trash; complete_deletes retries.
        // The lock file goes while still locked, so nobody waits on a stale one.
        let _ = fs::remove_file(&lock_path);
        drop(lock);
        result
    }

    /// Deletes the trees in the trash that nobody is deleting. With `wait`,
    /// waits for the trees other processes are deleting, so that on return
    /// everything removed so far is gone.
    fn empty_trash(&self, wait: bool) -> Result<(), StoreError> {
        let trash = self.trash();
        let mut result = Ok(());
        for entry in fs::read_dir(&trash).context("cannot read the trash")?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only trees that `discard` put there: never guess about anything else.
            if !name.starts_with("del-") || name.ends_with(".lock") {
                continue;
            }
            let lock_path = trash.join(format!("{name}.lock"));
            let Some(lock) = lock(&lock_path, wait)? else {
                continue;
            };
            // Another process may have finished it meanwhile; deleting
            // what is already gone is not an error. One tree that cannot be
            // deleted must not keep the others (or its lock file) around.
            let deleted = tree::delete(&entry.path()).map_err(delete_error);
            let _ = fs::remove_file(&lock_path);
            drop(lock);
            if deleted.is_err() {
                result = deleted;
            }
        }
        result
    }

    /// Syncs the filesystem holding the store: one call, however many files
    /// the tree has (an fsync per file would cost far more on big trees).
    fn sync_filesystem(&self) -> Result<(), StoreError> {
        let root = fs::File::open(&self.root).context("cannot open the store root")?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root))
            .map_err(|e| StoreError::io("syncfs", &e.into()))
    }
}

impl SnapshotBackend for CopyBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let path = self.path_of(key);
        store_api::util::create_owned_dir(&path, owner)?;
        Ok(path)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.path_of(src), self.path_of(dst));
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
        let (from, to) = (self.path_of(tmp), self.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{tmp} does not exist")));
        }
        if self.sync {
            self.sync_filesystem()?;
        }
        // The commit itself: atomic, and fails with EEXIST (ALREADY_EXISTS)
        // rather than replacing a committed tree.
        renameat2(None, &from, None, &to, RenameFlags::RENAME_NOREPLACE).map_err(|errno| {
            StoreError::io(
                format_args!("cannot rename {} to {}", from.display(), to.display()),
                &errno.into(),
            )
        })?;
        if self.sync {
            // Make the rename itself durable.
            let parent = to.parent().unwrap_or(&self.root);
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .context("cannot sync the namespace directory")?;
        }
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        // Absent keys are fine: `discard` treats a missing path as done.
        self.discard(&self.path_of(key))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.path_of(key);
        Ok(path.is_dir().then_some(path))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        // Only valid key names: anything else in there is not a key.
        store_api::util::list_key_names(&self.root.join(namespace.as_str()))
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(&self.root)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Deletes are synchronous; what is left is the trash of processes
        // that died while deleting, and trees other processes are deleting.
        self.empty_trash(true)?;
        // Let the filesystem account for the freed blocks before `df`.
        self.sync_filesystem()
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut found =
            vec![format!("store root {} on {}", self.root.display(), filesystem_name(&self.root)?)];
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
                self.root.display()
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
            if let Some(lock) = lock(&lock_path, false)? {
                let _ = fs::remove_file(&lock_path);
                drop(lock);
            }
        }
        Ok(())
    }
}

fn delete_error(e: tree::TreeError) -> StoreError {
    StoreError::io(format_args!("cannot delete {}", e.path.display()), &e.error)
}

/// Opens (creating it if need be) and locks `path` exclusively. Without
/// `wait`, returns `None` if another process holds the lock.
fn lock(path: &Path, wait: bool) -> Result<Option<Flock<fs::File>>, StoreError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .context(format_args!("cannot open lock {}", path.display()))?;
    let how = if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock };
    match Flock::lock(file, how) {
        Ok(locked) => Ok(Some(locked)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, errno)) => Err(StoreError::io(format_args!("cannot lock {}", path.display()), &errno.into())),
    }
}

/// `PREFIX-` and 16 random hex digits: unique across processes.
fn unique_name(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    let random = fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        // Never expected on Linux; the clock and pid are unique enough.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (nanos.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The filesystem type of `path`, for `check`.
fn filesystem_name(path: &Path) -> Result<String, StoreError> {
    use nix::sys::statfs::*;
    let kind = statfs(path).map_err(|e| StoreError::io("statfs", &e.into()))?.filesystem_type();
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
