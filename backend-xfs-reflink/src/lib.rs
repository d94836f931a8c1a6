//! snapstore backend `xfs-reflink`: results and caches are plain directory
//! trees under `ROOT/NAMESPACE/NAME`; a tree is cloned by walking it and
//! sharing every regular file's extents with the `FICLONE` ioctl, so a
//! clone costs metadata, not data. Works on XFS made with `reflink=1`,
//! btrfs and bcachefs; anywhere else `open` and `check` refuse (there is no
//! silent fallback to copying).
//!
//! Layout: `ROOT/{result,result-tmp,cache,cache-tmp}/NAME` are the trees;
//! `ROOT/trash/` holds trees being deleted. The host owns `ROOT/.snapstore/`
//! and `ROOT/state/`.

mod clone;
mod sys;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use nix::unistd::{access, AccessFlags, Uid};
use rayon::prelude::*;
use serde::Deserialize;
use store_api::util::copy::WorkerPool;
use store_api::util::remove::rename_tree;
use store_api::util::{trash, unique_name, DirLayout};
use store_api::{IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

store_api::export_backend!(name: "xfs-reflink", version: env!("CARGO_PKG_VERSION"), open: open);

/// The `[backend]` options.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Threads for cloning and deleting trees (default: two per core).
    pub threads: Option<usize>,
    /// Flush the filesystem before a commit, so that a committed tree
    /// survives a crash with its data (default: true).
    pub sync_on_commit: Option<bool>,
}

pub struct XfsReflink {
    root: PathBuf,
    layout: DirLayout,
    /// Started on first use: most commands never clone or delete a tree.
    pool: WorkerPool,
    sync_on_commit: bool,
}

const TRASH: &str = "trash";

/// Opens (creating if needed) a store at `root`; refuses a filesystem
/// without reflinks.
pub fn open(root: &Path, options: &str) -> Result<XfsReflink, StoreError> {
    let options: Options = store_api::parse_options(options)?;
    let pool = WorkerPool::new(options.threads, "xfs-reflink")?;
    // The reflink probe (files written, cloned, synced) runs when the store
    // is laid out, not on every command; `check` runs it every time.
    if !root.join(TRASH).is_dir() {
        let created = !root.exists();
        fs::create_dir_all(root).context(format!("cannot create {}", root.display()))?;
        // Refuse before leaving anything behind.
        if let Err(e) = sys::probe_reflink(root) {
            if created {
                let _ = fs::remove_dir(root);
            }
            return Err(e);
        }
        DirLayout::new(root).create_dirs(&[TRASH])?;
    }
    Ok(XfsReflink {
        root: root.to_path_buf(),
        layout: DirLayout::new(root),
        pool,
        sync_on_commit: options.sync_on_commit.unwrap_or(true),
    })
}

impl XfsReflink {
    fn exists(path: &Path) -> Result<bool, StoreError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format!("cannot stat {}", path.display()), &e)),
        }
    }

    /// Deletes the trash entry at `path` on the worker pool; one that
    /// cannot be deleted is set aside, and the error says so.
    fn delete_trash_entry(&self, path: &Path) -> Result<(), StoreError> {
        self.pool.install(|| trash::remove_or_set_aside(path))?
    }
}

impl SnapshotBackend for XfsReflink {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        self.layout.create_key_dir(key, owner)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.layout.path_of(src), self.layout.path_of(dst));
        if !Self::exists(&from)? {
            return Err(StoreError::not_found(format!("`{src}` does not exist")));
        }
        if Self::exists(&to)? {
            return Err(StoreError::already_exists(format!("`{dst}` already exists")));
        }
        if let Err(e) = self.pool.install(|| clone::clone_tree(&from, &to)).and_then(|cloned| cloned) {
            // Don't leave a half-clone behind; if this fails too, the
            // host's recovery removes it later.
            let _ = self.remove(dst);
            return Err(e.context(format!("cannot clone `{src}` to `{dst}`")));
        }
        Ok(to)
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        // `parent` is not needed: the clone already shares every extent.
        let (from, to) = (self.layout.path_of(tmp), self.layout.path_of(dst));
        if self.sync_on_commit {
            // The rename below must not become durable before the data and
            // metadata of the tree it publishes.
            let dir = sys::open_dir_at(None, &from).context(format!("cannot open {}", from.display()))?;
            nix::unistd::syncfs(dir.as_raw_fd()).context(format!("cannot sync {}", from.display()))?;
        }
        // Atomic, and never replaces an existing tree (not even an empty one).
        let rename = || renameat2(None, &from, None, &to, RenameFlags::RENAME_NOREPLACE);
        match rename_tree(&from, rename) {
            Ok(()) => {}
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                return Err(StoreError::already_exists(format!("`{dst}` already exists")))
            }
            Err(Errno::ENOENT) => return Err(StoreError::not_found(format!("`{tmp}` does not exist"))),
            Err(e) => {
                return Err(StoreError::errno(
                    format!("cannot rename {} to {}", from.display(), to.display()),
                    e,
                ))
            }
        }
        if self.sync_on_commit {
            let ns = self.root.join(dst.namespace().as_str());
            let dir = sys::open_dir_at(None, &ns).context(format!("cannot open {}", ns.display()))?;
            nix::unistd::fsync(dir.as_raw_fd()).context(format!("cannot sync {}", ns.display()))?;
        }
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.layout.path_of(key);
        let trashed = self.root.join(TRASH).join(unique_name("del"));
        // Out of view at once; the slow part happens in the trash.
        let rename = || renameat2(None, &path, None, &trashed, RenameFlags::RENAME_NOREPLACE);
        match rename_tree(&path, rename) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(StoreError::errno(
                    format!("cannot move {} to {}", path.display(), trashed.display()),
                    e,
                ))
            }
        }
        // The key is gone whatever happens next. A tree that cannot be
        // deleted is reported here, once, and set aside; if the process
        // dies, complete_deletes finishes the job.
        self.delete_trash_entry(&trashed)
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
        store_api::util::free_percent(&self.root)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Deletes are done by remove itself; what is left in the trash was
        // left by a killed process (other processes may be finishing the
        // same entries: what is already gone is fine). An entry that cannot
        // be deleted is reported once and set aside: it blocks nothing.
        let trash = self.root.join(TRASH);
        let entries = fs::read_dir(&trash).context(format!("cannot read {}", trash.display()))?;
        let doomed: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| !trash::is_stuck(&entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
            .collect();
        self.pool.install(|| {
            trash::retry_stuck(&trash);
            doomed.par_iter().for_each(|path| {
                if let Err(e) = trash::remove_or_set_aside(path) {
                    eprintln!("warning: {e}");
                }
            })
        })?;
        Ok(())
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        let root = self.root.display();
        let mut lines = vec![format!("root {root} is on {}", sys::fs_name(&self.root))];
        sys::probe_reflink(&self.root)?;
        lines.push(format!("reflinks: FICLONE works in {root}"));
        let root_dev = fs::metadata(&self.root).context(format!("cannot stat {root}"))?.dev();
        for dir in Namespace::ALL.iter().map(|ns| ns.as_str()).chain([TRASH]) {
            let path = self.root.join(dir);
            let meta = fs::metadata(&path).context(format!("cannot stat {}", path.display()))?;
            if meta.dev() != root_dev {
                return Err(StoreError::unsupported(format!(
                    "{} is on another filesystem than {root}; trees can only be cloned and renamed within one",
                    path.display()
                )));
            }
            access(&path, AccessFlags::W_OK | AccessFlags::X_OK).context(format!(
                "{} is not writable (fix its owner or mode, or run as its owner)",
                path.display()
            ))?;
        }
        lines.push(format!(
            "{root}/{{result,result-tmp,cache,cache-tmp,trash}} are writable and on one filesystem"
        ));
        if Uid::effective().is_root() {
            lines.push("running as root: owners, device nodes and trusted.* xattrs are kept".into());
        } else {
            lines.push(format!(
                "warning: not running as root (uid {}): trees holding other users' files, device nodes or trusted.* xattrs cannot be cloned",
                Uid::effective()
            ));
        }
        lines.push(format!(
            "{} worker threads; sync on commit: {}",
            self.pool.threads(),
            self.sync_on_commit
        ));
        Ok(lines)
    }
}
