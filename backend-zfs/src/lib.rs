//! snapstore backend on ZFS, driven through the `zfs` and `zpool` commands.
//!
//! Layout, for `[backend] dataset = "DATASET"` mounted at the store root:
//!
//! * key `ns/name` is the dataset `DATASET/ns/name`, mounted at its key's
//!   path `ROOT/ns/name` (by inheritance), committed ones read-only. A key
//!   exists exactly when its dataset is mounted there: `path`, `list` and
//!   the host's lookups without the plugin (`key_dir`) read the mounts
//!   with `stat`, no `zfs` command. Every step below keeps that true: a
//!   dataset is only mounted at its key's path once it is complete, and a
//!   removal unmounts it (and removes its directory) first;
//! * commit sets `readonly=on` on the tmp dataset (a property, so the
//!   result stays read-only however it is mounted again), unmounts it (a
//!   syscall: nothing can change it any more, and it must be unmounted for
//!   zfs-fuse to rename it), renames the dataset to its committed key and
//!   mounts it there read-only: the commit point. Three `zfs` commands.
//!   Clones start from the snapshot
//!   `DATASET/ns/name@<its guid>`, taken at the first clone (see
//!   `snapshot_of`);
//! * remove destroys the dataset in one `zfs destroy` when no clone
//!   depends on it. Otherwise it unmounts it, sets the user property
//!   `snapstore:removed=yes`, then destroys it. ZFS refuses to destroy a
//!   snapshot that has clones, so live clones are first promoted (`zfs
//!   promote`): the snapshot moves into a clone, and the removed dataset
//!   becomes a clone itself, destroyable at once. A removed dataset whose
//!   only clones are removed ones too waits for them: destroying a dataset
//!   also destroys its removed origin. Snapshot names are unique, so
//!   promoted snapshots never clash; a committed dataset whose snapshot
//!   moved to a promoted clone finds it as its origin.
//! * Removed datasets are never renamed (libzfs unmounts and remounts the
//!   clones of a renamed dataset; zfs-fuse then reports them busy), except
//!   into `DATASET/trash` (never mounted) when a key must be reused before
//!   its old dataset could be destroyed.
//! * The first `open` of a store checks its datasets, repairs the mounts
//!   (see `repair`) and leaves a marker file in the root; later opens only
//!   `stat` the marker and the namespace mounts. A restarted ZFS daemon
//!   unmounts the store, hides the marker and so brings the full check
//!   back. `recover` repairs too.
//!
//! ZFS names are at most 255 characters. A key whose dataset name would be
//! longer is stored under `h:<sha256 of the name>` (`:` never occurs in a
//! key, so such names cannot collide with plain ones); its real name is
//! kept in the user property `snapstore:<namespace>` of the dataset, and
//! its key's path is its explicit mountpoint.
//!
//! Mounts a build or a sandbox left inside a tree (bind mounts of host
//! directories, `/proc`, …) are detached, and only those under the tree,
//! whenever a dataset is unmounted: before every commit (the rename) and
//! every destroy. A result never holds them, and `zfs` never fails busy on
//! them.
//!
//! Modules: `names` (the `Dataset` type and the layout), `backend` (the
//! primitives), `mounts` (reading the mounts, unmounting and sealing a tree, the marker),
//! `fuse` (waiting until zfs-fuse has every request of a mount before it
//! is unmounted: otherwise zfs-fuse hangs),
//! `repair` (listing from the mounts, repairing them), `destroy` (removed
//! datasets: promote, destroy, trash, mounts), `checks` (the store's own
//! datasets, `check`, free space) and `cmd` (running `zfs` one command at
//! a time, reading its tables).

mod backend;
mod checks;
mod cmd;
mod destroy;
mod fuse;
mod mounts;
mod names;
mod repair;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use store_api::StoreError;

use names::Dataset;

/// The user property naming a committed dataset's snapshot, set by
/// versions before the snapshot was named after the dataset's guid.
const LEGACY_SNAP_PROPERTY: &str = "snapstore:snap";
/// The user property that marks a removed dataset (value `yes`).
const REMOVED_PROPERTY: &str = "snapstore:removed";

/// The `[backend]` options.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The dataset that holds the store; its mountpoint is the store root.
    pub dataset: String,
}

/// The zfs backend.
pub struct ZfsBackend {
    /// The store's dataset, mounted at `root`.
    dataset: Dataset,
    root: PathBuf,
}

/// Opens the store at `root`, which must be the mountpoint of the dataset
/// named in `options`, and creates the namespace datasets if needed.
pub fn open(root: &Path, options: &str) -> Result<ZfsBackend, StoreError> {
    let options: Options = store_api::parse_options(options)?;
    let dataset = Dataset::from_config(&options.dataset)?;
    let backend = ZfsBackend { dataset, root: root.to_path_buf() };
    // Every `zfs` command costs milliseconds: a store checked before, whose
    // datasets are still mounted, is trusted without one.
    if mounts::layout_is_trusted(root, backend.dataset.as_str()) {
        return Ok(backend);
    }
    let datasets = backend.store_datasets()?;
    backend.verify_dataset(&datasets)?;
    backend.ensure_parents(&datasets)?;
    backend.repair()?;
    mounts::write_marker(root, backend.dataset.as_str())?;
    Ok(backend)
}

store_api::export_backend!(name: "zfs", version: env!("CARGO_PKG_VERSION"), open: open);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_strict() {
        assert!(store_api::parse_options::<Options>("dataset = \"tank/s\"").is_ok());
        assert!(store_api::parse_options::<Options>("").is_err());
        let err = store_api::parse_options::<Options>("dataset = \"t\"\nmode = \"x\"").unwrap_err();
        assert!(err.message().contains("mode"), "{err}");
    }
}
