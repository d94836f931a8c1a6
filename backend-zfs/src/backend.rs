//! The primitives: `SnapshotBackend` on datasets, snapshots and clones.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use store_api::{ErrorKind, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

use crate::cmd::{zfs, zfs_list, zfs_once, zfs_rows};
use crate::destroy::State;
use crate::mounts::{self, Seen};
use crate::names::{name_property, Dataset};
use crate::{ZfsBackend, LEGACY_SNAP_PROPERTY, REMOVED_PROPERTY};

impl ZfsBackend {
    /// The mountpoint of `dataset`, mounting it if needed (e.g. after the
    /// ZFS daemon restarted), or `None` if it does not exist or is removed.
    pub(crate) fn mountpoint(&self, dataset: &Dataset) -> Result<Option<PathBuf>, StoreError> {
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
            let read_only = readonly == "on" || self.is_committed(dataset);
            let args: &[&str] = if read_only { &["mount", "-o", "ro"] } else { &["mount"] };
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

    /// The snapshot clones of the committed `dataset` start from, taken
    /// now if it has none yet, or `None` if it does not exist or is
    /// removed. It is named after the dataset's guid, which never changes:
    /// `dataset@<guid>`, or its origin once a removal promoted a clone of
    /// it (the clone took the snapshot along). A committed tree never
    /// changes (unmounted before its rename, mounted read-only), so a
    /// snapshot taken at its first clone holds the committed files; and
    /// commits need no snapshot. Datasets committed by older versions name
    /// theirs in `snapstore:snap`. One `zfs list`, and a `zfs snapshot` for
    /// the first clone.
    fn snapshot_of(&self, dataset: &Dataset) -> Result<Option<String>, StoreError> {
        // `zfs list` of zfs-fuse prints the guid rounded: `zfs get -p`.
        let properties = format!("guid,origin,{REMOVED_PROPERTY},{LEGACY_SNAP_PROPERTY}");
        let args =
            ["get", "-Hp", "-r", "-d", "1", "-o", "name,property,value", &properties, dataset.as_str()];
        let rows: Vec<[String; 3]> = match zfs_rows(&args) {
            Ok(rows) => rows,
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(None),
            Err(err) => return Err(err),
        };
        let property = |wanted: &str| {
            rows.iter()
                .find(|[name, property, _]| name == dataset.as_str() && property == wanted)
                .map(|[_, _, value]| value.clone())
        };
        let Some(guid) = property("guid") else { return Ok(None) };
        let (origin, removed) = (property("origin").unwrap_or_default(), property(REMOVED_PROPERTY));
        let legacy = property(LEGACY_SNAP_PROPERTY).unwrap_or_default();
        if removed.as_deref() == Some("yes") {
            return Ok(None);
        }
        let guid = guid
            .trim()
            .parse::<u64>()
            .map_err(|_| StoreError::other(format!("dataset `{dataset}` has guid `{guid}`")))?;
        let mut names = vec![format!("{guid:016x}")];
        if !legacy.is_empty() && legacy != "-" {
            names.push(legacy.clone());
        }
        for name in &names {
            let own = dataset.snapshot(name);
            if rows.iter().any(|[name, _, _]| *name == own) {
                return Ok(Some(own));
            }
            if origin.ends_with(&format!("@{name}")) {
                return Ok(Some(origin.clone()));
            }
        }
        let snapshot = dataset.snapshot(&names[0]);
        match zfs(&["snapshot", &snapshot]) {
            // Another process took it meanwhile.
            Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS => {}
            other => {
                other?;
            }
        }
        Ok(Some(snapshot))
    }

    /// Whether `dataset` holds committed trees (results, caches).
    fn is_committed(&self, dataset: &Dataset) -> bool {
        Namespace::ALL
            .into_iter()
            .filter(|ns| ns.is_committed())
            .any(|ns| dataset.below(&self.namespace_dataset(ns.as_str())).is_some())
    }

    /// What is at `key`'s path.
    fn seen(&self, key: &Key) -> Result<Seen, StoreError> {
        mounts::seen(&self.namespace_path(key.namespace()), &self.key_path(key))
    }

    /// The path of `key`, just made (created, cloned or committed): `zfs`
    /// mounted it there, or we do.
    fn path_of_new(&self, key: &Key) -> Result<PathBuf, StoreError> {
        let path = self.key_path(key);
        if self.seen(key)? != Seen::Mounted {
            // One `zfs mount`, as what the layout says it is.
            let dataset = self.dataset_of(key);
            let args: &[&str] =
                if key.namespace().is_committed() { &["mount", "-o", "ro"] } else { &["mount"] };
            let _ = zfs(&[args, &[dataset.as_str()]].concat());
            if self.seen(key)? == Seen::Mounted {
                return Ok(path);
            }
            let mounted = self.mountpoint_of_new(&dataset)?;
            if !crate::checks::same_path(&mounted, &path) {
                return Err(StoreError::other(format!(
                    "dataset `{}` is mounted at {}, not at {}: run `snapstore check`",
                    self.dataset_of(key),
                    mounted.display(),
                    path.display()
                )));
            }
        }
        Ok(path)
    }

    /// After `key`'s dataset was renamed from `from`'s: a hashed name has
    /// its key's path as an explicit mountpoint, a plain one inherits it.
    fn fix_mountpoint(&self, from: &Key, key: &Key) -> Result<(), StoreError> {
        let dataset = self.dataset_of(key);
        if self.is_hashed(key) {
            let property = format!("mountpoint={}", self.key_path(key).display());
            zfs(&["set", &property, dataset.as_str()]).map(drop)?;
        } else if self.is_hashed(from) {
            zfs(&["inherit", "mountpoint", dataset.as_str()]).map(drop)?;
        }
        Ok(())
    }

    /// The careful commit, after the quick rename failed with `err`: makes
    /// room at `dst` if a removed dataset holds it, moves the clones of
    /// snapshots `tmp` got by promotion on (the rename would unmount
    /// them), unmounts, renames.
    fn commit_slowly(&self, tmp_ds: &Dataset, dst_ds: &Dataset, err: StoreError) -> Result<(), StoreError> {
        match self.state(dst_ds)? {
            State::Live => return Err(StoreError::already_exists(format!("`{dst_ds}` already exists"))),
            State::Removed => self.clear_removed(dst_ds)?,
            State::Absent => {}
        }
        if self.state(tmp_ds)? != State::Live {
            return Err(err);
        }
        self.promote_live_clones(tmp_ds)?;
        self.rename(tmp_ds, dst_ds)
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
        let path = self.path_of_new(key)?;
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
                Ok(()) => return self.path_of_new(dst),
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
        if self.seen(dst)? == Seen::Mounted {
            return Err(StoreError::already_exists(format!("{what}: `{dst}` already exists")));
        }
        let tmp_path = self.key_path(tmp);
        if self.seen(tmp)? != Seen::Mounted && self.mountpoint(&tmp_ds)?.is_none() {
            return Err(StoreError::not_found(format!("{what}: `{tmp}` does not exist")));
        }
        // A result never holds the mounts a build left in its tree.
        self.detach_left_mounts_at(&tmp_path).context(&what)?;
        if self.is_hashed(dst) {
            // Recorded before the rename, so the committed dataset is never
            // without its name. Harmless on the tmp dataset until then.
            let property = format!("{}={}", name_property(dst.namespace()), dst.name());
            zfs(&["set", &property, tmp_ds.as_str()]).context(&what)?;
        }
        // Read-only as a property, not only as a mount option: a result
        // stays unchangeable when anyone mounts it again (an admin, a
        // restarted daemon). Set before the unmount, so that nothing
        // written after it is in the result. One `zfs` command more than the
        // mount option alone: what a result promises matters more.
        zfs(&["set", "readonly=on", tmp_ds.as_str()]).context(&what)?;
        // Unmounted, nothing can change the tree any more (no snapshot is
        // needed now: see `snapshot_of`), and zfs-fuse can rename it.
        mounts::unmount(&tmp_path).context(&what)?;
        mounts::remove_stray(&self.namespace_path(tmp.namespace()), &tmp_path);
        // `zfs` would not mount over a directory left there.
        mounts::remove_stray(&self.namespace_path(dst.namespace()), &self.key_path(dst));
        if let Err(err) = zfs_once(&["rename", tmp_ds.as_str(), dst_ds.as_str()]) {
            self.commit_slowly(&tmp_ds, &dst_ds, err).context(&what)?;
        }
        self.fix_mountpoint(tmp, dst).context(&what)?;
        // The commit point: the complete tree appears, read-only, under its key.
        let path = self.path_of_new(dst).context(&what)?;
        mounts::seal(&path).context(&what)?;
        Ok(path)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let (dataset, path) = (self.dataset_of(key), self.key_path(key));
        let what = format!("cannot remove `{key}`");
        if self.seen(key)? == Seen::Mounted {
            self.detach_left_mounts_at(&path).context(&what)?;
            // The atomic step: unmounted, the key is absent for every reader.
            mounts::unmount(&path).context(&what)?;
        } else {
            // Mounted elsewhere (a crash, an admin): unmounted by us, not by
            // `zfs destroy` (see `fuse`).
            self.unmount(&dataset).context(&what)?;
        }
        mounts::remove_stray(&self.namespace_path(key.namespace()), &path);
        // A dataset no clone depends on goes in one command.
        match zfs_once(&["destroy", "-r", dataset.as_str()]) {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
            Err(_) => {}
        }
        // Marked, so that nothing mounts it again, then destroyed if it can be.
        match zfs(&["set", &format!("{REMOVED_PROPERTY}=yes"), dataset.as_str()]) {
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
            other => other.map(drop).context(&what)?,
        }
        // If destroying fails now (clones, busy), the dataset stays removed
        // and `complete_deletes` (or a later use of the key) finishes the job.
        let _ = self.destroy_removed(&dataset);
        Ok(())
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        match self.seen(key)? {
            Seen::Mounted => Ok(Some(self.key_path(key))),
            Seen::Absent => Ok(None),
            // Left by an unmount, or a dataset that lost its mount: ask zfs.
            Seen::Stray => {
                self.repair()?;
                Ok((self.seen(key)? == Seen::Mounted).then(|| self.key_path(key)))
            }
        }
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        match self.list_mounted(namespace)? {
            Some(names) => Ok(names),
            None => {
                self.repair()?;
                Ok(self.list_mounted(namespace)?.unwrap_or_default())
            }
        }
    }

    fn key_dir(&self, namespace: Namespace) -> Result<Option<PathBuf>, StoreError> {
        // Committed trees are only ever mounted at their key's path, and
        // their mountpoint directories go with the mount.
        Ok(namespace.is_committed().then(|| self.namespace_path(namespace)))
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.repair()
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
