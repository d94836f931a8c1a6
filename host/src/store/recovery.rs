//! Recovery: removing what dead processes left behind. A lock that can be
//! taken tells for sure that its holder is gone; live trees are never
//! touched, since their lock is held.

use std::fs;

use serde::Serialize;
use store_api::{ErrorKind, IoContext, Namespace, StoreError};
use tracing::warn;

use super::{key, BlockingStore, LockKind, ReleaseMode};
use crate::lock::{FileLock, Mode};

/// What a recovery pass removed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Recovered {
    pub temporary_trees: usize,
    pub abandoned_leases: usize,
}

impl BlockingStore {
    /// Removes temporary trees whose owner is gone: build trees whose tmp
    /// lock is free, cache copies of bound leases whose holder died, and
    /// cache trees nobody holds.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        self.backend().recover()?;
        let mut recovered = Recovered {
            temporary_trees: self.recover_temporary(Namespace::ResultTmp)?,
            ..Default::default()
        };
        recovered.temporary_trees += self.recover_temporary(Namespace::CacheTmp)?;
        recovered.abandoned_leases = self.recover_leases()?;
        // Lock files of tmp trees whose owner died before making the tree.
        let dir = self.lock_dir(LockKind::Tmp);
        for entry in fs::read_dir(&dir).context("cannot read tmp locks")?.flatten() {
            if let Some(lock) = FileLock::try_acquire(&entry.path(), Mode::Exclusive)? {
                lock.release_and_remove();
            }
        }
        // Lease lock files whose record is gone: a release killed between
        // removing the record and the lock file.
        let dir = self.lock_dir(LockKind::Lease);
        for entry in fs::read_dir(&dir).context("cannot read lease locks")?.flatten() {
            let lease = entry.file_name().to_string_lossy().into_owned();
            if self.lease_exists(&lease) {
                continue;
            }
            if let Some(lock) = FileLock::try_acquire(&entry.path(), Mode::Exclusive)? {
                lock.release_and_remove();
            }
        }
        crate::leftovers::remove_stale_lock_files(&self.inner.meta)?;
        Ok(recovered)
    }

    /// Discards the copies of bound leases whose process is gone.
    pub(super) fn recover_leases(&self) -> Result<usize, StoreError> {
        let mut discarded = 0;
        for lease in self.lease_ids()? {
            let Ok(record) = self.read_lease(&lease) else {
                continue;
            };
            if !record.bound {
                continue;
            }
            let Some(dead) =
                FileLock::try_acquire(&self.lock_path(LockKind::Lease, &lease), Mode::Exclusive)?
            else {
                continue;
            };
            // Released since it was read: the lock was free because its
            // owner had just removed it, not because the owner died.
            if !self.lease_exists(&lease) {
                dead.release_and_remove();
                continue;
            }
            warn!(lease, cache = record.cache, "discarding the cache copy of a dead process");
            let copy = key(Namespace::CacheTmp, &lease)?;
            if !crate::supervise::end_leftovers(&copy, self.backend().path(&copy)?.as_deref())? {
                continue;
            }
            match self.release_id(&lease, ReleaseMode::Discard) {
                Ok(_) => discarded += 1,
                // Another process recovered it first.
                Err(e) if e.kind() == ErrorKind::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(discarded)
    }

    /// Removes the temporary trees of `namespace` whose owner is gone.
    pub(super) fn recover_temporary(&self, namespace: Namespace) -> Result<usize, StoreError> {
        let mut removed = 0;
        for name in self.backend().list(namespace)? {
            let tree = key(namespace, &name)?;
            if namespace == Namespace::CacheTmp && self.lease_exists(&name) {
                // A leased copy: its lease decides (see `recover`).
                continue;
            }
            if let Some(lock) = FileLock::try_acquire(&self.lock_path(LockKind::Tmp, &name), Mode::Exclusive)?
            {
                let Some(path) = self.backend().path(&tree)? else {
                    // Committed (or removed) between the listing and the
                    // lock; or a commit killed half-way, which the backend
                    // gives no path for but still lists: removed either way
                    // (removing an absent key does nothing).
                    if !crate::supervise::end_leftovers(&tree, None)? {
                        continue;
                    }
                    self.backend().remove(&tree)?;
                    lock.release_and_remove();
                    continue;
                };
                warn!(tree = %tree, "removing a temporary tree left by a dead process");
                if !crate::supervise::end_leftovers(&tree, Some(&path))? {
                    continue;
                }
                self.backend().remove(&tree)?;
                lock.release_and_remove();
                removed += 1;
            }
        }
        Ok(removed)
    }
}
