//! snapstore backend: plain directories, copied with `rsync`.
//!
//! Works on any filesystem. A key `ns/name` is the directory `ROOT/ns/name`.
//! Clones are full copies (`rsync -aHAX --numeric-ids`); commits are a
//! `rename` (no-replace), so a committed key is always complete. In the
//! `hardlink` modes a commit first re-copies the tree with `--link-dest`
//! against its parent, so that unchanged files share storage with it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags};
use serde::Deserialize;
use store_api::{
    export_backend, parse_options, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError,
};

export_backend!(name: "rsync", version: env!("CARGO_PKG_VERSION"), open: open);

/// How a committed tree shares storage with its parent.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every result is a full copy.
    #[default]
    Copy,
    /// Files whose content equals the parent's are hard-linked to it.
    Hardlink,
    /// As `hardlink`, comparing size and modification time only (faster).
    HardlinkUnsafe,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    mode: Mode,
}

pub struct Rsync {
    root: PathBuf,
    mode: Mode,
}

/// Where removed trees wait to be deleted, and where hard-link commits stage.
const TRASH: &str = "trash";

pub fn open(root: &Path, options: &str) -> Result<Rsync, StoreError> {
    let Options { mode } = parse_options(options)?;
    // rsync itself is looked for when first run (and by `check`): spawning
    // it here would cost every command a few milliseconds.
    for dir in Namespace::ALL.iter().map(|ns| ns.as_str()).chain([TRASH]) {
        let path = root.join(dir);
        fs::create_dir_all(&path).context(format_args!("cannot create {}", path.display()))?;
    }
    Ok(Rsync { root: root.to_path_buf(), mode })
}

fn rsync_version() -> Result<String, StoreError> {
    let out = Command::new("rsync").arg("--version").output().map_err(|_| {
        StoreError::unsupported("`rsync` was not found in PATH; install it (apt-get install rsync)")
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("rsync").trim().to_string())
}

/// Runs rsync from the contents of `src` into `dst`, with extra flags.
fn rsync(src: &Path, dst: &Path, extra: &[&OsStr]) -> Result<(), StoreError> {
    let mut source = src.as_os_str().to_owned();
    source.push("/");
    let out = Command::new("rsync")
        .args(["-aHAX", "--numeric-ids", "--quiet"])
        .args(extra)
        .arg(&source)
        .arg(dst)
        .output()
        .map_err(|e| {
            StoreError::unsupported(format!("cannot run rsync ({e}); install it: apt-get install rsync"))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The cause, when there is one, comes before rsync's follow-up errors.
    let full = |l: &str| l.contains("No space left") || l.contains("Disk quota");
    let last = stderr
        .lines()
        .find(|l| full(l))
        .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    let message = format!("rsync {} {} failed ({}): {last}", src.display(), dst.display(), out.status);
    Err(if full(&stderr) {
        StoreError::new(store_api::ErrorKind::NO_SPACE, message)
    } else {
        StoreError::new(store_api::ErrorKind::IO, message)
    })
}

/// A random name, unique across processes.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", store_api::util::random_token())
}

/// Deletes a tree, coping with a concurrent deleter and with directories
/// that a build left without write permission.
fn delete_tree(path: &Path) -> Result<(), StoreError> {
    let mut made_writable = false;
    // Another process may be deleting the same tree (a `complete_deletes`
    // racing a `remove`): entries vanishing under us are progress, not errors.
    for _ in 0..100 {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(_) if !exists(path) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) if !made_writable => {
                make_writable(path);
                made_writable = true;
            }
            Err(e) => return Err(StoreError::io(format_args!("cannot delete {}", path.display()), &e)),
        }
    }
    Err(StoreError::other(format!("cannot delete {}: it keeps changing", path.display())))
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(meta.permissions().mode() | 0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// Renames without replacing: fails with `ALREADY_EXISTS` if `to` exists.
fn rename_new(from: &Path, to: &Path) -> Result<(), StoreError> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE).map_err(|errno| {
        StoreError::io(
            format_args!("cannot rename {} to {}", from.display(), to.display()),
            &std::io::Error::from(errno),
        )
    })
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

impl Rsync {
    fn path_of(&self, key: &Key) -> PathBuf {
        self.root.join(key.to_string())
    }

    fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }

    /// Commits by copying `tmp` next to its destination with `--link-dest`
    /// against `parent`, then renaming the copy into place. The staging
    /// tree is locked so that a cleaner never takes it for a stale one.
    fn commit_sharing(&self, tmp: &Path, dst: &Path, parent: &Path) -> Result<(), StoreError> {
        let stage = self.trash().join(unique("stage"));
        let lock = stage.with_extension("lock");
        let lock_file = fs::File::create(&lock).context("cannot create staging lock")?;
        let _held = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::io("cannot lock staging tree", &e.into()))?;
        let mut link_dest = OsStr::new("--link-dest=").to_owned();
        link_dest.push(parent.as_os_str());
        let mut flags = vec![link_dest.as_os_str()];
        if self.mode == Mode::Hardlink {
            flags.push(OsStr::new("--checksum"));
        }
        let result = rsync(tmp, &stage, &flags).and_then(|()| rename_new(&stage, dst));
        if result.is_err() {
            let _ = delete_tree(&stage);
        } else {
            // Committed: a tmp tree we fail to delete now is left to the
            // host's recovery, which removes unowned temporary trees.
            let _ = self.discard(tmp);
        }
        let _ = fs::remove_file(&lock);
        result
    }

    /// Moves `path` into the trash (atomic), then deletes it.
    fn discard(&self, path: &Path) -> Result<(), StoreError> {
        let doomed = self.trash().join(unique("del"));
        match fs::rename(path, &doomed) {
            Ok(()) => delete_tree(&doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format_args!("cannot remove {}", path.display()), &e)),
        }
    }

    /// Deletes what crashed processes left in the trash.
    fn empty_trash(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(self.trash()).context("cannot read trash")?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("del-") {
                delete_tree(&entry.path())?;
            } else if name.starts_with("stage-") {
                // A staging tree (or the lock of one that was never made) is
                // stale once no process holds its lock.
                let stage = entry.path().with_extension("");
                let lock = stage.with_extension("lock");
                let stale = match fs::File::open(&lock) {
                    Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
                    Err(_) => true,
                };
                if stale {
                    delete_tree(&stage)?;
                    let _ = fs::remove_file(&lock);
                }
            }
        }
        Ok(())
    }
}

impl SnapshotBackend for Rsync {
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
        if exists(&to) {
            return Err(StoreError::already_exists(format!("{dst} already exists")));
        }
        rsync(&from, &to, &[])?;
        Ok(to)
    }

    fn commit(&self, tmp: &Key, dst: &Key, parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.path_of(tmp), self.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{tmp} does not exist")));
        }
        if exists(&to) {
            return Err(StoreError::already_exists(format!("{dst} already exists")));
        }
        let parent = parent.map(|p| self.path_of(p)).filter(|p| p.is_dir());
        match parent {
            Some(parent) if self.mode != Mode::Copy => self.commit_sharing(&from, &to, &parent)?,
            _ => rename_new(&from, &to)?,
        }
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        self.discard(&self.path_of(key))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.path_of(key);
        Ok(path.is_dir().then_some(path))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        store_api::util::list_key_names(&self.root.join(namespace.as_str()))
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(&self.root)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Deletion is synchronous; only leftovers of killed processes remain.
        self.empty_trash()?;
        nix::unistd::sync();
        Ok(())
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let found = vec![rsync_version()?, format!("mode: {:?}", self.mode).to_lowercase()];
        let probe = self.trash().join(unique("probe"));
        fs::write(&probe, b"").context(format_args!(
            "cannot write in {}; run as a user who owns the store root",
            self.root.display()
        ))?;
        let _ = fs::remove_file(&probe);
        Ok(found)
    }
}
