//! The store's own datasets: checking them at `open` and `check`, creating
//! the missing ones, and the pool's free space.

use std::path::Path;

use store_api::{ErrorKind, IoContext, Namespace, StoreError};

use crate::cmd::{zfs, zfs_list, zfs_rows, zpool};
use crate::names::{Dataset, TRASH};
use crate::ZfsBackend;

/// One line of `zfs list -o name,mountpoint,mounted`.
pub struct DatasetRow {
    pub name: Dataset,
    pub mountpoint: String,
    pub mounted: bool,
}

/// The namespace datasets and the trash, below the store's dataset.
fn parents() -> impl Iterator<Item = &'static str> {
    Namespace::ALL.into_iter().map(Namespace::as_str).chain([TRASH])
}

/// Whether two paths name the same directory (the config may spell the
/// root differently from ZFS, e.g. through a symlink or a trailing `/`).
pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

impl ZfsBackend {
    /// The store's dataset and its direct children.
    pub(crate) fn store_datasets(&self) -> Result<Vec<DatasetRow>, StoreError> {
        let args = ["-t", "filesystem", "-r", "-d", "1", self.dataset.as_str()];
        let rows =
            zfs_list(["name", "mountpoint", "mounted"], &args).map_err(|err| self.explain_missing(err))?;
        Ok(rows
            .into_iter()
            .map(|[name, mountpoint, mounted]| DatasetRow {
                name: Dataset::listed(&name),
                mountpoint,
                mounted: mounted == "yes",
            })
            .collect())
    }

    /// Checks that the store's dataset (in `datasets`, from
    /// [`Self::store_datasets`]) is mounted at the store root. Returns a
    /// line describing it.
    pub(crate) fn verify_dataset(&self, datasets: &[DatasetRow]) -> Result<String, StoreError> {
        let ds = &self.dataset;
        let Some(row) = datasets.iter().find(|row| row.name == *ds) else {
            return Err(StoreError::not_found(format!("dataset `{ds}` is missing")));
        };
        let (root, mountpoint) = (self.root.display(), &row.mountpoint);
        if !same_path(Path::new(mountpoint), &self.root) {
            return Err(StoreError::invalid(format!(
                "dataset `{ds}` is mounted at `{mountpoint}`, not at the store root `{root}`: \
                 run `zfs set mountpoint={root} {ds}`, or set the store's root to `{mountpoint}`"
            )));
        }
        if !row.mounted {
            zfs(&["mount", ds.as_str()]).map_err(|err| {
                err.context(format!("dataset `{ds}` is not mounted; mount it with `zfs mount {ds}`"))
            })?;
        }
        Ok(format!("dataset {ds} is mounted at the store root {root}"))
    }

    /// Turns a failed `zfs list DATASET` into an error that says how to fix it.
    fn explain_missing(&self, err: StoreError) -> StoreError {
        let (ds, pool, root) = (&self.dataset, self.dataset.pool(), self.root.display());
        match err.kind() {
            ErrorKind::NOT_FOUND => match zpool(&["list", "-H", "-o", "name", pool]) {
                Err(pool_err) if pool_err.kind() == ErrorKind::NOT_FOUND => {
                    StoreError::not_found(format!(
                        "ZFS pool `{pool}` (of dataset `{ds}`) does not exist: create it with \
                         `zpool create {pool} DEVICE` or import it with `zpool import {pool}`"
                    ))
                }
                Err(pool_err) => pool_err,
                Ok(_) => StoreError::not_found(format!(
                    "ZFS dataset `{ds}` does not exist: create it with \
                     `zfs create -p -o mountpoint={root} {ds}`"
                )),
            },
            ErrorKind::UNSUPPORTED => err.context(
                "cannot reach ZFS: start the ZFS daemon (`zfs-fuse`) or load the kernel module (`modprobe zfs`)",
            ),
            ErrorKind::PERMISSION => err.context("not allowed to use ZFS: run snapstore as root"),
            _ => err,
        }
    }

    /// Creates `DATASET/<namespace>` and `DATASET/trash` if missing.
    pub(crate) fn ensure_parents(&self, datasets: &[DatasetRow]) -> Result<(), StoreError> {
        for name in parents() {
            let dataset = self.namespace_dataset(name);
            if datasets.iter().any(|row| row.name == dataset) {
                continue;
            }
            // The trash is never mounted: nobody needs to see removed trees.
            let args: &[&str] = if name == TRASH { &["-o", "mountpoint=none"] } else { &[] };
            let command = [&["create"], args, &[dataset.as_str()]].concat();
            match zfs(&command) {
                // Another process opening the store at the same time.
                Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS => {}
                other => {
                    other.context("cannot create the store's datasets")?;
                }
            }
        }
        Ok(())
    }

    /// What `check` reports: the dataset, the pool's health, the namespace
    /// datasets and the free space.
    pub(crate) fn check_store(&self) -> Result<Vec<String>, StoreError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(StoreError::new(
                ErrorKind::PERMISSION,
                "the zfs backend needs root (it creates, mounts and destroys datasets): run snapstore as root",
            ));
        }
        let datasets = self.store_datasets()?;
        let mut lines = vec![self.verify_dataset(&datasets)?];
        let pool = self.dataset.pool();
        let health = zpool(&["list", "-H", "-o", "health", pool])?;
        let health = health.trim();
        if health != "ONLINE" {
            return Err(StoreError::other(format!("pool `{pool}` is {health}: see `zpool status {pool}`")));
        }
        lines.push(format!("pool {pool} is ONLINE"));
        for name in parents() {
            let dataset = self.namespace_dataset(name);
            if !datasets.iter().any(|row| row.name == dataset) {
                return Err(StoreError::not_found(format!(
                    "dataset `{dataset}` is missing: create it with `zfs create {dataset}` \
                     (opening the store again also creates it)"
                )));
            }
        }
        lines.push(format!("datasets {}/{{result,result-tmp,cache,cache-tmp,trash}} exist", self.dataset));
        lines.push(format!("{:.1}% free", self.free_space_percent()?));
        Ok(lines)
    }

    /// The pool's free space in percent, or the store dataset's if a quota
    /// limits it more.
    pub(crate) fn free_space_percent(&self) -> Result<f64, StoreError> {
        let datasets = [self.dataset.pool(), self.dataset.as_str()];
        let args = [&["get", "-Hp", "-o", "name,property,value", "used,available"][..], &datasets].concat();
        let rows = zfs_rows::<3>(&args)?;
        let number = |dataset: &str, property: &str| {
            rows.iter()
                .find(|[name, prop, _]| name == dataset && prop == property)
                .and_then(|[_, _, value]| value.trim().parse::<u64>().ok())
                .ok_or_else(|| StoreError::other(format!("`zfs get {property} {dataset}` gave no number")))
        };
        let mut percent = 100.0_f64;
        for dataset in datasets {
            let (used, available) = (number(dataset, "used")?, number(dataset, "available")?);
            let total = used.saturating_add(available);
            let free = if total == 0 { 0.0 } else { available as f64 * 100.0 / total as f64 };
            percent = percent.min(free);
        }
        Ok(percent)
    }
}
