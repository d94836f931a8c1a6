//! snapstore backend: plain directories, copied with `rsync` or natively.
//!
//! Works on any filesystem. A key `ns/name` is the directory `ROOT/ns/name`.
//! Clones are full copies: with `copy = "native"` by the shared parallel
//! tree copy ([`store_api::util::copy`], `copy_file_range` per data range,
//! so holes stay holes and the kernel may share extents), with
//! `copy = "rsync"` by `rsync -aHAX --numeric-ids`. Commits are a `rename`
//! (no-replace), so a committed key is always complete. In the `hardlink`
//! modes a commit first re-copies the tree with rsync's `--link-dest`
//! against its parent, so that unchanged files share storage with it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{renameat2, RenameFlags};
use serde::Deserialize;
use store_api::util::copy::{copy_tree, FileData, WorkerPool};
use store_api::util::remove::rename_tree;
use store_api::util::{mounts, remove_tree, trash, unique_name, DirLayout, FileLock, LockMode};
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

/// What makes the copy of a tree (a clone).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CopyWith {
    /// The shared parallel tree copy, in this process.
    #[default]
    Native,
    /// `rsync -aHAX --numeric-ids`, as one process per clone.
    Rsync,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    copy: CopyWith,
    /// Worker threads of the native copy (default: two per core).
    threads: Option<usize>,
}

pub struct Rsync {
    layout: DirLayout,
    mode: Mode,
    copy: CopyWith,
    pool: WorkerPool,
}

/// Where removed trees wait to be deleted, and where hard-link commits stage.
const TRASH: &str = "trash";

pub fn open(root: &Path, options: &str) -> Result<Rsync, StoreError> {
    let Options { mode, copy, threads } = parse_options(options)?;
    let pool = WorkerPool::new(threads, "rsync-copy")?;
    // rsync itself is looked for when first run (and by `check`): spawning
    // it here would cost every command a few milliseconds.
    let layout = DirLayout::new(root);
    layout.create_dirs(&[TRASH])?;
    Ok(Rsync { layout, mode, copy, pool })
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
    let mut command = Command::new("rsync");
    command.args(["-aHAX", "--numeric-ids", "--quiet"]).args(extra).arg(&source).arg(dst);
    // rsync dies with the operation that started it: its own process group
    // (a signal to the host's group does not half-kill it), and SIGKILL
    // when the thread that spawned it ends, which waits for it here.
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let out = command.output().map_err(|e| {
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

/// Renames without replacing: fails with `ALREADY_EXISTS` if `to` exists.
fn rename_new(from: &Path, to: &Path) -> Result<(), StoreError> {
    let rename = || renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE);
    rename_tree(from, rename).context(format_args!("cannot rename {} to {}", from.display(), to.display()))
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

impl Rsync {
    fn trash(&self) -> PathBuf {
        self.layout.dir(TRASH)
    }

    /// The native copy; a partial copy is removed before the error returns.
    fn copy_natively(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        let result = self.pool.install(|| copy_tree(from, to, FileData::Copy)).and_then(|copied| copied);
        if result.is_err() {
            // If this fails too, the host's recovery removes the tree later.
            let _ = self.discard(to);
        }
        result
    }

    /// Commits by copying `tmp` next to its destination with `--link-dest`
    /// against `parent`, then renaming the copy into place. The staging
    /// tree is locked so that a cleaner never takes it for a stale one.
    ///
    /// The copy never reads through a mount a build left in `tmp`: those
    /// are detached first, and rsync stays on one filesystem as well.
    fn commit_sharing(&self, tmp: &Path, dst: &Path, parent: &Path) -> Result<(), StoreError> {
        mounts::detach_mounts_under(tmp).context(format_args!("cannot commit {}", tmp.display()))?;
        let stage = self.trash().join(unique_name("stage"));
        let held = FileLock::acquire(&stage.with_extension("lock"), LockMode::Exclusive)?;
        let mut link_dest = OsStr::new("--link-dest=").to_owned();
        link_dest.push(parent.as_os_str());
        let mut flags = vec![link_dest.as_os_str(), OsStr::new("--one-file-system")];
        if self.mode == Mode::Hardlink {
            flags.push(OsStr::new("--checksum"));
        }
        let result = rsync(tmp, &stage, &flags).and_then(|()| rename_new(&stage, dst));
        if result.is_err() {
            let _ = remove_tree(&stage);
        } else {
            // Committed: a tmp tree we fail to delete now is left to the
            // host's recovery, which removes unowned temporary trees.
            let _ = self.discard(tmp);
        }
        held.remove();
        result
    }

    /// Moves `path` into the trash (atomic), then deletes it.
    fn discard(&self, path: &Path) -> Result<(), StoreError> {
        let doomed = self.trash().join(unique_name("del"));
        let rename = || renameat2(None, path, None, &doomed, RenameFlags::RENAME_NOREPLACE);
        match rename_tree(path, rename).map_err(std::io::Error::from) {
            Ok(()) => trash::remove_or_set_aside(&doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format_args!("cannot remove {}", path.display()), &e)),
        }
    }

    /// Deletes what crashed processes left in the trash. An entry that
    /// cannot be deleted is reported once (on stderr) and set aside: it
    /// never blocks the others (see [`trash`]).
    fn empty_trash(&self) -> Result<(), StoreError> {
        let report = |result: Result<(), StoreError>| {
            if let Err(e) = result {
                eprintln!("warning: {e}");
            }
        };
        trash::retry_stuck(&self.trash());
        for entry in fs::read_dir(self.trash()).context("cannot read the trash")?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("del-") {
                report(trash::remove_or_set_aside(&entry.path()));
            } else if name.starts_with("stage-") {
                // A staging tree (or the lock of one that was never made) is
                // stale once no process holds its lock.
                let stage = entry.path().with_extension("");
                if let Some(stale) =
                    FileLock::try_acquire(&stage.with_extension("lock"), LockMode::Exclusive)?
                {
                    report(trash::remove_or_set_aside(&stage));
                    stale.remove();
                }
            }
        }
        Ok(())
    }
}

impl SnapshotBackend for Rsync {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        self.layout.create_key_dir(key, owner)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.layout.path_of(src), self.layout.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{src} does not exist")));
        }
        if exists(&to) {
            return Err(StoreError::already_exists(format!("{dst} already exists")));
        }
        // A clone never reads through a mount left in a committed tree.
        if let Some(point) = mounts::mounts_under(&from)?.first() {
            return Err(StoreError::unsupported(format!(
                "{} is a mount point inside {src}: unmount it, then retry",
                point.display()
            )));
        }
        match self.copy {
            CopyWith::Native => self.copy_natively(&from, &to)?,
            CopyWith::Rsync => rsync(&from, &to, &[OsStr::new("--one-file-system")])?,
        }
        Ok(to)
    }

    fn commit(&self, tmp: &Key, dst: &Key, parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.layout.path_of(tmp), self.layout.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("{tmp} does not exist")));
        }
        if exists(&to) {
            return Err(StoreError::already_exists(format!("{dst} already exists")));
        }
        let parent = parent.map(|p| self.layout.path_of(p)).filter(|p| p.is_dir());
        match parent {
            Some(parent) if self.mode != Mode::Copy => self.commit_sharing(&from, &to, &parent)?,
            _ => rename_new(&from, &to)?,
        }
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        self.discard(&self.layout.path_of(key))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        self.layout.existing(key)
    }

    fn key_dir(&self, namespace: Namespace) -> Result<Option<PathBuf>, StoreError> {
        Ok(Some(self.layout.namespace_dir(namespace)))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        self.layout.list(namespace)
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(self.layout.root())
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Deletion is synchronous; only leftovers of killed processes remain.
        self.empty_trash()?;
        nix::unistd::sync();
        Ok(())
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let copy = match self.copy {
            CopyWith::Native => format!("copy: native ({} threads)", self.pool.threads()),
            CopyWith::Rsync => "copy: rsync".to_string(),
        };
        let mut found = Vec::new();
        // rsync is needed only where it copies.
        if self.copy == CopyWith::Rsync || self.mode != Mode::Copy {
            found.push(rsync_version()?);
        }
        found.extend([format!("mode: {:?}", self.mode).to_lowercase(), copy]);
        let probe = self.trash().join(unique_name("probe"));
        fs::write(&probe, b"").context(format_args!(
            "cannot write in {}; run as a user who owns the store root",
            self.layout.root().display()
        ))?;
        let _ = fs::remove_file(&probe);
        Ok(found)
    }
}
