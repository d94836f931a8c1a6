//! The primitives: `SnapshotBackend` on datasets, snapshots and clones.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use store_api::{ErrorKind, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

use crate::cmd::{zfs, zfs_list};
use crate::destroy::State;
use crate::names::{name_property, Dataset, HASH_PREFIX};
use crate::{ZfsBackend, REMOVED_PROPERTY, SNAP_PROPERTY};

impl ZfsBackend {
    /// The mountpoint of `dataset`, mounting it if needed (e.g. after the
    /// ZFS daemon restarted), or `None` if it does not exist or is removed.
    fn mountpoint(&self, dataset: &Dataset) -> Result<Option<PathBuf>, StoreError> {
        let columns = ["mountpoint", "mounted", "readonly", REMOVED_PROPERTY];
        let row = match zfs_list(columns, &[dataset.as_str()]) {
            Ok(rows) => rows.into_iter().next(),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some([mountpoint, mounted, readonly, removed]) = row else {
            return Err(StoreError::other(format!("`zfs list {dataset}` printed nothing")));
        };
        if removed == "yes" {
            return Ok(None);
        }
        if !mountpoint.starts_with('/') {
            return Err(StoreError::other(format!(
                "dataset `{dataset}` has mountpoint `{mountpoint}`; \
                 let it inherit its mountpoint: `zfs inherit mountpoint {dataset}`"
            )));
        }
        if mounted != "yes" {
            // zfs-fuse mounts read-write (and shows `readonly=off`) unless told.
            let args: &[&str] = if readonly == "on" { &["mount", "-o", "ro"] } else { &["mount"] };
            match zfs(&[args, &[dataset.as_str()]].concat()) {
                // Another process may have mounted it meanwhile.
                Err(err) if !err.message().contains("already mounted") => return Err(err),
                _ => {}
            }
        }
        Ok(Some(PathBuf::from(mountpoint)))
    }

    /// Like `mountpoint`, for a dataset that was just made.
    fn mountpoint_of_new(&self, dataset: &Dataset) -> Result<PathBuf, StoreError> {
        self.mountpoint(dataset)?
            .ok_or_else(|| StoreError::other(format!("dataset `{dataset}` vanished after creation")))
    }

    /// The snapshot of the committed `dataset`, or `None` if it does not
    /// exist: `dataset@<snapstore:snap>`, or, once a removal promoted a
    /// clone of it, the same snapshot as `dataset`'s origin.
    fn snapshot_of(&self, dataset: &Dataset) -> Result<Option<String>, StoreError> {
        let row = match zfs_list([SNAP_PROPERTY, "origin", REMOVED_PROPERTY], &[dataset.as_str()]) {
            Ok(rows) => rows.into_iter().next(),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(None),
            Err(err) => return Err(err),
        };
        let [snap, origin, removed] = row.unwrap_or_default();
        if removed == "yes" {
            return Ok(None);
        }
        if snap.is_empty() || snap == "-" {
            return Err(StoreError::other(format!("dataset `{dataset}` has no `{SNAP_PROPERTY}` property")));
        }
        if origin.ends_with(&format!("@{snap}")) {
            Ok(Some(origin))
        } else {
            Ok(Some(dataset.snapshot(&snap)))
        }
    }

    /// Runs `zfs create`/`zfs clone` (`args`) for the temporary `dataset`,
    /// first clearing a removed dataset left at that name.
    fn make(&self, args: &[String], dataset: &Dataset) -> Result<(), StoreError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match zfs(&args) {
            Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS && self.state(dataset)? == State::Removed => {
                self.clear_removed(dataset)?;
                zfs(&args).map(drop)
            }
            other => other.map(drop),
        }
    }
}

impl SnapshotBackend for ZfsBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let dataset = self.dataset_of(key);
        let args = [vec!["create".to_string()], self.name_options(key), vec![dataset.to_string()]].concat();
        self.make(&args, &dataset).context(format!("cannot create `{key}`"))?;
        let path = self.mountpoint_of_new(&dataset)?;
        let prepare = || -> Result<(), StoreError> {
            if let Some(Owner { uid, gid }) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .context(format!("cannot chown {} to {uid}:{gid}", path.display()))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .context(format!("cannot chmod 755 {}", path.display()))
        };
        if let Err(err) = prepare() {
            // Do not leave a tree with the wrong owner behind.
            let _ = self.remove(key);
            return Err(err);
        }
        Ok(path)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (src_ds, dataset) = (self.dataset_of(src), self.dataset_of(dst));
        let what = format!("cannot clone `{src}` to `{dst}`");
        let missing = || StoreError::not_found(format!("cannot clone `{src}`: it does not exist"));
        // Twice: a concurrent removal of `src` may move its snapshot.
        for attempt in 0..2 {
            let origin = self.snapshot_of(&src_ds)?.ok_or_else(missing)?;
            let args = [vec!["clone".to_string()], self.name_options(dst), vec![origin, dataset.to_string()]]
                .concat();
            match self.make(&args, &dataset) {
                Ok(()) => return self.mountpoint_of_new(&dataset),
                Err(err) if err.kind() == ErrorKind::NOT_FOUND && attempt == 0 => {}
                Err(err) => return Err(err.context(&what)),
            }
        }
        Err(missing())
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        // Clones already share storage with their origin: `parent` is not needed.
        let (tmp_ds, dst_ds) = (self.dataset_of(tmp), self.dataset_of(dst));
        let what = format!("cannot commit `{tmp}` as `{dst}`");
        match self.state(&dst_ds)? {
            State::Live => return Err(StoreError::already_exists(format!("{what}: `{dst}` already exists"))),
            State::Removed => self.clear_removed(&dst_ds).context(&what)?,
            State::Absent => {}
        }
        if self.state(&tmp_ds)? != State::Live {
            return Err(StoreError::not_found(format!("{what}: `{tmp}` does not exist")));
        }
        if self.component(dst).starts_with(HASH_PREFIX) {
            // Recorded before the rename, so the committed dataset is never
            // without its name. Harmless on the tmp dataset until then.
            let property = format!("{}={}", name_property(dst.namespace()), dst.name());
            zfs(&["set", &property, tmp_ds.as_str()]).context(&what)?;
        }
        // Read-only before the snapshot, so that the tree and its snapshot
        // (what clones start from) hold the same files.
        zfs(&["set", "readonly=on", tmp_ds.as_str()]).context(&what)?;
        // A snapshot the tmp dataset got from a promotion may have clones;
        // renaming would unmount them: move it on to a clone first.
        let snapshots =
            zfs_list(["name"], &["-t", "snapshot", "-r", "-d", "1", tmp_ds.as_str()]).context(&what)?;
        if !snapshots.is_empty() {
            self.promote_live_clones(&tmp_ds).context(&what)?;
        }
        // A fresh snapshot even if an earlier attempt left one: it may
        // predate the last writes.
        let snap = self.unique_name();
        zfs(&["snapshot", &tmp_ds.snapshot(&snap)]).context(&what)?;
        zfs(&["set", &format!("{SNAP_PROPERTY}={snap}"), tmp_ds.as_str()]).context(&what)?;
        // The commit point: the complete, read-only tree appears under its
        // key. The rename unmounts the tree first, detaching any mount a
        // build left in it, so the result never holds one.
        self.rename(&tmp_ds, &dst_ds).context(&what)?;
        self.mountpoint_of_new(&dst_ds)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let dataset = self.dataset_of(key);
        // The atomic step: from now on the key is absent for every reader.
        match zfs(&["set", &format!("{REMOVED_PROPERTY}=yes"), dataset.as_str()]) {
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
            other => other.map(drop).context(format!("cannot remove `{key}`"))?,
        }
        // If destroying fails now (busy, say), the dataset stays removed and
        // `complete_deletes` (or a later use of the key) finishes the job.
        let _ = self.destroy_removed(&dataset);
        Ok(())
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        self.mountpoint(&self.dataset_of(key))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        let parent = self.namespace_dataset(namespace.as_str());
        let name_column = name_property(namespace);
        let columns = ["name", name_column.as_str(), REMOVED_PROPERTY];
        let rows = zfs_list(columns, &["-t", "filesystem", "-r", "-d", "1", parent.as_str()])?;
        let mut names = Vec::new();
        for [dataset, recorded, removed] in rows {
            let Some(component) = Dataset::listed(&dataset).below(&parent).map(str::to_string) else {
                continue;
            };
            if removed == "yes" {
                continue;
            }
            let name = if component.starts_with(HASH_PREFIX) { recorded } else { component };
            // Skips anything not made by us (a dataset created by hand with a
            // name that is not a valid key).
            if store_api::key::check_name(&name).is_ok() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        self.free_space_percent()
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        let destroyed = self.destroy_all_removed();
        self.wait_for_freed_space()?;
        destroyed.context("cannot complete the deletes")
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        self.check_store()
    }
}
