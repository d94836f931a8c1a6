//! Results: building one (on a clone of a base or on an empty tree),
//! looking it up and deleting it.

use std::fs;
use std::path::{Path, PathBuf};

use store_api::util::random_token;
use store_api::{Change, ErrorKind, Key, Namespace, StoreError};
use tracing::{debug, info, warn};

use super::{key, BlockingStore, LockKind, META_DIR, RECORDS_FILE};
use crate::config::Config;
use crate::fault;
use crate::loader::Plugin;
use crate::lock::{FileLock, Mode};
use crate::names::check_id;
use crate::plugin_verdict;
use crate::records::{now_ns, Reconciled, ResultRecord};
use crate::sizes::tree_size;

impl BlockingStore {
    /// The path of result `id` if it is committed.
    pub fn result(&self, id: &str) -> Result<Option<PathBuf>, StoreError> {
        check_id(id)?;
        let path = self.backend().path(&key(Namespace::Result, id)?)?;
        if path.is_some() {
            self.note_use(id);
        }
        Ok(path)
    }

    /// Whether result `id` is committed; not a use of it. A stat where the
    /// backend keeps results in one directory (no mount of a view).
    pub(crate) fn result_exists(&self, id: &str) -> Result<bool, StoreError> {
        match self.backend().key_dir(Namespace::Result)? {
            Some(dir) => Ok(fs::symlink_metadata(dir.join(id)).is_ok_and(|m| m.is_dir())),
            None => Ok(self.backend().path(&key(Namespace::Result, id)?)?.is_some()),
        }
    }

    /// The path of result `id` if it is committed, answered without
    /// loading the plugin when an earlier command found that its backend
    /// keeps results in one directory (see [`crate::plugin_verdict`]): a
    /// stat instead of a library load. `None` when that cannot tell (no
    /// verdict, or no such result): then ask [`Self::result`].
    pub fn result_without_plugin(config: &Config, id: &str) -> Option<PathBuf> {
        check_id(id).ok()?;
        let (file, _) = Plugin::file_for_config(config).ok()?;
        let meta_dir = config.root.join(META_DIR);
        let verdict = plugin_verdict::read(&meta_dir, &fs::metadata(file).ok()?)?;
        let result_dir = verdict.result_dir?;
        // The checks every open makes: a root that is still a store's,
        // made by this backend.
        crate::root::validate(&config.root).ok()?;
        if !matches!(super::layout::check_marker(&config.root, &verdict.name), Ok(true)) {
            return None;
        }
        let path = result_dir.join(id);
        if !fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
        if let Err(e) = crate::uses::note(&meta_dir.join(RECORDS_FILE), id, now_ns()) {
            warn!(id, "cannot record the use of a result: {e}");
        }
        Some(path)
    }

    /// What result `id` changed against result `base`, when the backend can
    /// tell without walking both trees (see
    /// [`store_api::SnapshotBackend::changes`]); `None` when it cannot.
    pub fn result_changes(&self, id: &str, base: &str) -> Result<Option<Vec<Change>>, StoreError> {
        check_id(id)?;
        check_id(base).map_err(|e| e.context("base"))?;
        self.backend().changes(&key(Namespace::Result, id)?, &key(Namespace::Result, base)?)
    }

    /// The storage result `id` takes, from the backend when it can tell,
    /// else by adding up the blocks of its tree (each hard link once).
    pub fn result_size(&self, id: &str, path: &Path) -> Result<u64, StoreError> {
        check_id(id)?;
        match self.backend().size(&key(Namespace::Result, id)?)? {
            Some(bytes) => Ok(bytes),
            None => Ok(tree_size(path)),
        }
    }

    /// Starts building `id`, on a clone of `base` or on an empty tree. The
    /// returned [`Build`] is committed with [`Build::commit`]; dropping it
    /// discards the tree.
    pub fn begin_build(&self, base: Option<&str>, id: &str) -> Result<Build, StoreError> {
        check_id(id)?;
        if let Some(base) = base {
            check_id(base).map_err(|e| e.context("base"))?;
        }
        self.recover_temporary(Namespace::ResultTmp)?;
        let id_lock = FileLock::acquire(&self.lock_path(LockKind::Build, id), Mode::Exclusive)?;
        let result_key = key(Namespace::Result, id)?;
        if self.backend().path(&result_key)?.is_some() {
            return Err(StoreError::already_exists(format!(
                "result `{id}` already exists; delete it first to build it again"
            )));
        }
        if let Some(base) = base {
            // Fails fast, before any lock file is made for a missing base.
            if self.backend().path(&key(Namespace::Result, base)?)?.is_none() {
                id_lock.release_and_remove();
                return Err(StoreError::not_found(format!("base `{base}` does not exist")));
            }
        }
        // Held until commit or abort: prune leaves a base in use alone.
        let using = match base {
            Some(base) => Some(FileLock::acquire(&self.lock_path(LockKind::Use, base), Mode::Shared)?),
            None => None,
        };
        let token = random_token();
        let tmp_lock = FileLock::acquire(&self.lock_path(LockKind::Tmp, &token), Mode::Exclusive)?;
        let tmp = key(Namespace::ResultTmp, &token)?;
        let made = match base {
            None => self.backend().create(&tmp, None),
            Some(base) => self.clone_base(base, &tmp),
        };
        let path = match made {
            Ok(path) => path,
            Err(err) => {
                let _ = self.backend().remove(&tmp);
                tmp_lock.release_and_remove();
                id_lock.release_and_remove();
                return Err(err);
            }
        };
        fault::point("build:cloned");
        debug!(id, ?base, tmp = %tmp, "build started");
        Ok(Build {
            store: self.clone(),
            id: id.to_string(),
            base: base.map(str::to_string),
            // From here on, whatever changes a file changes its ctime.
            cloned: base.map(|_| now_ns()),
            tmp,
            path,
            locks: Some((id_lock, tmp_lock)),
            _using: using,
        })
    }

    fn clone_base(&self, base: &str, tmp: &Key) -> Result<PathBuf, StoreError> {
        let _using = self.use_base(base)?;
        // A base deleted since the caller's check: the backend says NOT_FOUND.
        self.backend().clone_tree(&key(Namespace::Result, base)?, tmp).map_err(|e| match e.kind() {
            ErrorKind::NOT_FOUND => StoreError::not_found(format!("base `{base}` does not exist")),
            _ => e,
        })
    }

    /// Takes a shared lock on `base`, so that it is not deleted while it is
    /// cloned or committed against. Never waits on a build of `base` (which
    /// could wait on us in turn): a base being built does not exist yet.
    fn use_base(&self, base: &str) -> Result<FileLock, StoreError> {
        let path = self.lock_path(LockKind::Build, base);
        loop {
            if let Some(lock) = FileLock::try_acquire(&path, Mode::Shared)? {
                return Ok(lock);
            }
            if self.backend().path(&key(Namespace::Result, base)?)?.is_none() {
                return Err(StoreError::not_found(format!("base `{base}` does not exist")));
            }
            // It exists and is being deleted: wait for the delete to finish.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Builds `id` with `f`, which gets the writable tree: committed if `f`
    /// succeeds, discarded if it fails. The outer error is the store's.
    pub fn build<E>(
        &self,
        base: Option<&str>,
        id: &str,
        f: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Result<PathBuf, E>, StoreError> {
        let build = self.begin_build(base, id)?;
        match f(build.path()) {
            Ok(()) => build.commit().map(Ok),
            Err(err) => {
                build.abort()?;
                Ok(Err(err))
            }
        }
    }

    /// Deletes result `id` if present. Results built on it are unaffected.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        check_id(id)?;
        let lock = FileLock::acquire(&self.lock_path(LockKind::Build, id), Mode::Exclusive)?;
        self.remove_result(id, lock)
    }

    /// Removes result `id`, whose build lock the caller holds.
    pub(crate) fn remove_result(&self, id: &str, lock: FileLock) -> Result<(), StoreError> {
        self.backend().remove(&key(Namespace::Result, id)?)?;
        fault::point("delete:removed");
        if let Err(e) = self.records().and_then(|r| r.deleted(id)) {
            warn!(id, "cannot drop the record of a deleted result: {e}");
        }
        if let Some(unused) = FileLock::try_acquire(&self.lock_path(LockKind::Use, id), Mode::Exclusive)? {
            unused.release_and_remove();
        }
        lock.release_and_remove();
        info!(id, "deleted");
        Ok(())
    }

    /// Commits tree `tmp` as `dst`, a key nothing held before. A backend
    /// that fails after its commit point (a sync or a cleanup after the
    /// rename) has published `dst` all the same, against the contract: the
    /// tree is then taken as committed, with a warning, rather than
    /// reported lost while it is there (and its id refused as taken).
    pub(crate) fn commit_tree(
        &self,
        tmp: &Key,
        dst: &Key,
        parent: Option<&Key>,
    ) -> Result<PathBuf, StoreError> {
        match self.backend().commit(tmp, dst, parent) {
            Ok(path) => Ok(path),
            // `dst` was there before: its presence says nothing of ours.
            Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS => Err(err),
            Err(err) => match self.backend().path(dst) {
                Ok(Some(path)) => {
                    warn!(%dst, "the backend reported a failed commit, but the tree is committed: {err}");
                    Ok(path)
                }
                _ => Err(err),
            },
        }
    }

    /// Brings the result record in line with what the backend holds.
    pub(crate) fn reconcile_records(&self) -> Result<Vec<ResultRecord>, StoreError> {
        let present = self.backend().list(Namespace::Result)?;
        let Reconciled { adopted, dropped, records } = self.records()?.reconcile(&present)?;
        if adopted + dropped > 0 {
            info!(adopted, dropped, "result record reconciled");
        }
        Ok(records)
    }
}

/// A build in progress: a writable tree that becomes result `id` on
/// [`commit`](Self::commit). Dropped without committing, it is discarded.
pub struct Build {
    store: BlockingStore,
    id: String,
    base: Option<String>,
    /// When the clone of `base` was handed over (Unix nanoseconds).
    cloned: Option<i64>,
    tmp: Key,
    path: PathBuf,
    locks: Option<(FileLock, FileLock)>,
    _using: Option<FileLock>,
}

impl Build {
    /// The writable tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of the writable tree (what recovery knows it by).
    pub fn tree(&self) -> &Key {
        &self.tmp
    }

    /// Saves the tree as result `id`; returns its path.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let store = self.store.clone();
        fault::point("build:before-commit");
        crate::supervise::detach_mounts(&self.path)?;
        let result = key(Namespace::Result, &self.id)?;
        let committed = crate::supervise::check_still_a_tree(&self.path).and_then(|()| match &self.base {
            Some(base) => {
                // The base may have been deleted meanwhile; then there is
                // nothing to share storage with.
                let using = store.use_base(base).ok();
                let parent = key(Namespace::Result, base)?;
                let parent = using.as_ref().map(|_| &parent);
                store.commit_tree(&self.tmp, &result, parent)
            }
            None => store.commit_tree(&self.tmp, &result, None),
        });
        match committed {
            Ok(path) => {
                fault::point("build:committed");
                if let Err(e) =
                    store.records().and_then(|r| r.committed(&self.id, self.base.as_deref(), self.cloned))
                {
                    warn!(id = self.id, "cannot record the new result: {e}");
                }
                if let Some((_id_lock, tmp_lock)) = self.locks.take() {
                    tmp_lock.release_and_remove();
                }
                info!(id = self.id, "committed");
                Ok(path)
            }
            Err(err) => {
                self.discard();
                Err(err.context(format_args!("cannot commit result `{}`", self.id)))
            }
        }
    }

    /// Discards the tree; nothing is recorded.
    pub fn abort(mut self) -> Result<(), StoreError> {
        self.discard_checked()
    }

    fn discard(&mut self) {
        if let Err(err) = self.discard_checked() {
            warn!(id = self.id, "cannot discard build tree (a later operation will): {err}");
        }
    }

    fn discard_checked(&mut self) -> Result<(), StoreError> {
        let Some((id_lock, tmp_lock)) = self.locks.take() else {
            return Ok(());
        };
        // Never hand the backend a tree that still holds a sandbox's mounts.
        let removed =
            crate::supervise::detach_mounts(&self.path).and_then(|()| self.store.backend().remove(&self.tmp));
        if removed.is_ok() {
            tmp_lock.release_and_remove();
        }
        id_lock.release_and_remove();
        debug!(id = self.id, "build discarded");
        removed
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        self.discard();
    }
}
