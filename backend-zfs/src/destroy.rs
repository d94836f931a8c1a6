//! Removed datasets: unmounting, promoting their clones, destroying them,
//! and waiting for the pool to give their space back.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use store_api::util::mounts::{detach_mounts_under, mounts_under};
use store_api::{ErrorKind, IoContext, Namespace, StoreError};

use crate::cmd::{has_dependent_clones, zfs, zfs_list, zpool};
use crate::names::Dataset;
use crate::{ZfsBackend, REMOVED_PROPERTY};

/// How many clones one removal promotes at most before giving up.
const MAX_PROMOTES: usize = 1000;
/// How long `complete_deletes` waits for the pool to report freed space.
const FREEING_TIMEOUT: Duration = Duration::from_secs(600);

/// What is at a dataset name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Absent,
    /// Marked removed, not destroyed yet: invisible as a key.
    Removed,
    Live,
}

impl ZfsBackend {
    /// The state of `dataset`.
    pub(crate) fn state(&self, dataset: &Dataset) -> Result<State, StoreError> {
        match zfs_list([REMOVED_PROPERTY], &[dataset.as_str()]) {
            Ok(rows) if rows.iter().any(|[removed]| removed == "yes") => Ok(State::Removed),
            Ok(_) => Ok(State::Live),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => Ok(State::Absent),
            Err(err) => Err(err),
        }
    }

    /// Detaches the mounts a build or a sandbox left in the tree mounted
    /// at `tree`, and only those (not the tree's own mount), so that
    /// unmounting, renaming or destroying its dataset neither fails busy nor
    /// reaches through them. The data they show is left as it was.
    pub(crate) fn detach_left_mounts_at(&self, tree: &Path) -> Result<(), StoreError> {
        let what = || format!("cannot detach the mounts left in {}", tree.display());
        let tree = match fs::canonicalize(tree) {
            Ok(tree) => tree,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(StoreError::io(what(), &err)),
        };
        let root = fs::canonicalize(&self.root).context(what())?;
        if tree == root || !tree.starts_with(&root) {
            // Never reached for a dataset of the store; a guard against
            // detaching anything outside it.
            return Err(StoreError::other(format!("{}: {} is not in the store", what(), tree.display())));
        }
        for point in mounts_under(&tree).context(what())? {
            if point != tree {
                detach_mounts_under(&point).context(what())?;
            }
        }
        Ok(())
    }

    /// Unmounts `dataset` wherever it is mounted, after detaching the
    /// mounts left in it. `zfs rename` and `zfs destroy` unmount by
    /// themselves, but on failure they mount again, and zfs-fuse keeps a
    /// just-unmounted dataset busy for a moment: letting them unmount makes
    /// every retry fail. Unmounted first, a retry succeeds. Unmounted with
    /// the syscall (as `zfs umount` does), after its FUSE requests were
    /// handed over (see `fuse`).
    pub(crate) fn unmount(&self, dataset: &Dataset) -> Result<(), StoreError> {
        // Mounted outside the store (by an admin): left to `zfs`.
        let points = crate::mounts::mount_points_of(dataset.as_str())?;
        let root = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for point in points.iter().filter(|point| point.starts_with(&root)) {
            self.unmount_key(point)?;
        }
        Ok(())
    }

    /// Takes the tree mounted at `path` (a key's, or where a dataset of the
    /// store is mounted) from view: the mounts left in it detached, the
    /// dataset unmounted (retried a little while busy), its directory
    /// removed.
    pub(crate) fn unmount_key(&self, path: &Path) -> Result<(), StoreError> {
        self.detach_left_mounts_at(path)?;
        crate::mounts::unmount(path)?;
        if let Some(parent) = path.parent() {
            crate::mounts::remove_stray(parent, path);
        }
        Ok(())
    }

    /// `zfs rename`, unmounted first (see `unmount`). The dataset stays
    /// unmounted at its new name; `mountpoint` mounts it when needed.
    pub(crate) fn rename(&self, from: &Dataset, to: &Dataset) -> Result<(), StoreError> {
        self.unmount(from)?;
        zfs(&["rename", from.as_str(), to.as_str()]).map(drop)
    }

    /// Promotes the live clones of `dataset`'s snapshots until it has none
    /// (each promotion moves the snapshots up to the clone's origin into the
    /// clone). Returns the removed clones that still depend on it.
    pub(crate) fn promote_live_clones(&self, dataset: &Dataset) -> Result<Vec<Dataset>, StoreError> {
        let prefix = dataset.snapshot("");
        let committed: Vec<Dataset> = Namespace::ALL
            .into_iter()
            .filter(|ns| ns.is_committed())
            .map(|ns| self.namespace_dataset(ns.as_str()))
            .collect();
        let is_committed = |clone: &Dataset| committed.iter().any(|ns| clone.below(ns).is_some());
        for _ in 0..MAX_PROMOTES {
            let (mut live, mut removed) = (Vec::new(), Vec::new());
            let all = zfs_list(
                ["name", "origin", REMOVED_PROPERTY],
                &["-t", "filesystem", "-r", self.dataset.as_str()],
            )?;
            for [name, origin, gone] in all {
                if !origin.starts_with(&prefix) {
                    continue;
                }
                let clone = Dataset::listed(&name);
                if gone == "yes" || self.is_trashed(&clone) {
                    removed.push(clone);
                } else {
                    live.push(clone);
                }
            }
            // Committed trees first: they are never renamed again, so the
            // promoted snapshot will not be in the way of a commit.
            live.sort_by_key(|clone| !is_committed(clone));
            let Some(clone) = live.first() else { return Ok(removed) };
            match zfs(&["promote", clone.as_str()]) {
                // Renamed or removed meanwhile: look again.
                Err(err) if err.kind() == ErrorKind::NOT_FOUND => {}
                other => {
                    other?;
                }
            }
        }
        Err(StoreError::busy(format!("`{dataset}` keeps getting new clones")))
    }

    /// Destroys the removed `dataset` unless removed clones still depend on
    /// it, then its origin if that is a removed dataset too.
    pub(crate) fn destroy_removed(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let mut next = Some(dataset.clone());
        'datasets: while let Some(ds) = next.take() {
            let origin = match zfs_list(["origin"], &[ds.as_str()]) {
                Ok(rows) => rows.into_iter().next().and_then(|[origin]| Dataset::of_snapshot(&origin)),
                // Destroyed meanwhile by another process.
                Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
                Err(err) => return Err(err),
            };
            self.unmount(&ds)?;
            for _ in 0..3 {
                if !self.promote_live_clones(&ds)?.is_empty() {
                    // Destroyed with the last of its removed clones.
                    return Ok(());
                }
                match zfs(&["destroy", "-r", ds.as_str()]) {
                    Ok(_) => {
                        next = match origin {
                            Some(o) if self.is_trashed(&o) || self.state(&o)? == State::Removed => Some(o),
                            _ => None,
                        };
                        continue 'datasets;
                    }
                    Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
                    // A clone appeared since we looked: promote it too.
                    Err(err) if has_dependent_clones(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            return Err(StoreError::busy(format!("`{ds}` keeps getting new clones")));
        }
        Ok(())
    }

    /// Makes room for a new dataset at the key of the removed `dataset`:
    /// destroys it, or else moves it into the trash.
    pub(crate) fn clear_removed(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let _ = self.destroy_removed(dataset);
        if self.state(dataset)? == State::Absent {
            return Ok(());
        }
        // Renaming would unmount and mount again its (removed) clones.
        for clone in self.promote_live_clones(dataset)? {
            self.unmount(&clone)?;
        }
        let trashed = self.namespace_dataset(crate::names::TRASH).child(&self.unique_name());
        self.rename(dataset, &trashed)
    }

    /// Destroys the removed datasets left by failed destroys or crashed
    /// processes, and anything in the trash. Repeated while it makes
    /// progress: each pass may free the origins of the next. Returns the
    /// last pass's first error, if anything is left.
    pub(crate) fn destroy_all_removed(&self) -> Result<(), StoreError> {
        let mut left = usize::MAX;
        let mut last_error = None;
        loop {
            let all =
                zfs_list(["name", REMOVED_PROPERTY], &["-t", "filesystem", "-r", self.dataset.as_str()])?;
            let removed: Vec<Dataset> = all
                .into_iter()
                .map(|[name, gone]| (Dataset::listed(&name), gone))
                .filter(|(dataset, gone)| gone == "yes" || self.is_trashed(dataset))
                .map(|(dataset, _)| dataset)
                .collect();
            if removed.is_empty() {
                // All gone, whatever failed on the way.
                return Ok(());
            }
            if removed.len() >= left {
                return last_error.map_or(Ok(()), Err);
            }
            left = removed.len();
            // Only the failures of the last pass count.
            last_error = None;
            for dataset in removed {
                if let Err(err) = self.destroy_removed(&dataset) {
                    last_error = Some(err);
                }
            }
        }
    }

    /// Waits until the pool has accounted the space of destroyed datasets.
    pub(crate) fn wait_for_freed_space(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        let pool = self.dataset.pool();
        // Pools with async_destroy free space in the background and say how
        // much is left in `freeing`.
        let freeing_now = || zpool(&["get", "-Hp", "-o", "value", "freeing", pool]);
        if let Ok(mut freeing) = freeing_now() {
            loop {
                if freeing.trim() == "0" {
                    return Ok(());
                }
                if start.elapsed() > FREEING_TIMEOUT {
                    return Err(StoreError::busy(format!(
                        "pool `{pool}` is still freeing {} bytes after {} s",
                        freeing.trim(),
                        FREEING_TIMEOUT.as_secs()
                    )));
                }
                sleep(Duration::from_millis(200));
                freeing = freeing_now()?;
            }
        }
        // Older pools (zfs-fuse's version 23) have no `freeing`: a destroy
        // frees synchronously, so wait only until `used` settles.
        let used = || zfs(&["get", "-Hp", "-o", "value", "used", pool]);
        let mut last = used()?;
        while start.elapsed() < Duration::from_secs(10) {
            sleep(Duration::from_millis(100));
            let now = used()?;
            if now == last {
                return Ok(());
            }
            last = now;
        }
        Ok(())
    }
}
