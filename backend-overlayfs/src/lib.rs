//! snapstore backend `overlayfs`: a committed tree is one overlayfs layer
//! (what its step wrote) plus a link to its base's layer, so a clone of any
//! base, whatever its size, is one mount.
//!
//! * A build with no base is a plain directory, the layer itself.
//! * A build on a base runs in a writable overlay whose lower layers are
//!   the base's chain (top first) and whose upper directory is the new
//!   layer; `commit` unmounts it, then links the key to the layer (one
//!   rename).
//! * `path` of a committed tree with a base is the whole tree: a read-only
//!   overlay of its chain, mounted when first asked for and kept until the
//!   key is removed.
//! * Removing a key removes its link only; a layer stays, hidden, while a
//!   chain needs it, and goes to the trash when none does (see
//!   [`layers`]).
//! * A chain deeper than `max_depth` (`cache_max_depth` for caches) is
//!   flattened at commit: the whole tree is copied into a fresh layer (on
//!   an empty one), and the old chain goes once nothing else needs it.
//!
//! Layout: `ROOT/{result,result-tmp,cache,cache-tmp}/NAME` are links
//! `../layers/LAYER`; `ROOT/layers/` holds the layers, `ROOT/trash/` the
//! layers being deleted. The host owns `ROOT/.snapstore/` and
//! `ROOT/state/`.

pub mod changes;
mod checks;
pub mod layers;
mod meta;
pub mod mount;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use layers::{Layers, LAYERS, TRASH};
use rustix::fs::{fsync, syncfs, Mode, OFlags};
use serde::Deserialize;
use store_api::util::mounts::detach_mounts_under;
use store_api::util::{create_owned_dir, remove_tree, trash, DirLayout, FileLock, LockMode};
use store_api::{Change, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

store_api::export_backend!(name: "overlayfs", version: env!("CARGO_PKG_VERSION"), open: open);

/// The kernel stacks at most 500 lower layers.
const KERNEL_MAX_LOWERS: usize = 500;

/// The `[backend]` options.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Layers a result's chain may hold before its commit flattens it
    /// (default 128; at most 500, the kernel's limit of lower layers).
    pub max_depth: Option<usize>,
    /// The same for caches (default 8): every take of a cache mounts its
    /// whole chain, so it is kept short.
    pub cache_max_depth: Option<usize>,
    /// Flush the filesystem before a commit, so that a committed tree
    /// survives a crash with its data (default: true).
    pub sync_on_commit: Option<bool>,
}

pub struct Overlay {
    root: PathBuf,
    layers: Layers,
    max_depth: usize,
    cache_max_depth: usize,
    sync_on_commit: bool,
}

/// Opens (creating if needed) a store at `root`; refuses a root where
/// overlayfs cannot work.
pub fn open(root: &Path, options: &str) -> Result<Overlay, StoreError> {
    let options: Options = store_api::parse_options(options)?;
    // A step on a chain of the deepest depth allowed is one layer more,
    // and flattening it mounts them all as lowers: one below the kernel's.
    let deepest = KERNEL_MAX_LOWERS - 1;
    let depth = |value: Option<usize>, default: usize, name: &str| match value {
        None => Ok(default),
        Some(n) if (2..=deepest).contains(&n) => Ok(n),
        Some(n) => Err(StoreError::invalid(format!(
            "[backend]: {name} = {n} is out of range; set it between 2 and {deepest}"
        ))),
    };
    // 128: far below the kernel's 500, so that a lookup that misses (it
    // visits every layer) stays cheap, while a flattening copy is paid
    // once every 128 steps.
    let max_depth = depth(options.max_depth, 128, "max_depth")?;
    let cache_max_depth = depth(options.cache_max_depth, 8, "cache_max_depth")?;
    // The probes (a real overlay mount) run when the store is laid out,
    // not on every command; `check` runs them every time.
    if !root.join(LAYERS).is_dir() {
        let created = !root.exists();
        fs::create_dir_all(root).context(format!("cannot create {}", root.display()))?;
        if let Err(e) = checks::probe(root) {
            if created {
                let _ = fs::remove_dir(root);
            }
            return Err(e);
        }
        DirLayout::new(root).create_dirs(&[TRASH, LAYERS])?;
    }
    Ok(Overlay {
        root: root.to_path_buf(),
        layers: Layers::new(root),
        max_depth,
        cache_max_depth,
        sync_on_commit: options.sync_on_commit.unwrap_or(true),
    })
}

impl Overlay {
    fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        match fs::symlink_metadata(self.layers.key_path(key)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format!("cannot stat {}", self.layers.key_path(key).display()), &e)),
        }
    }

    fn refuse_existing(&self, key: &Key) -> Result<(), StoreError> {
        if self.exists(key)? {
            return Err(StoreError::already_exists(format!("`{key}` already exists")));
        }
        Ok(())
    }

    fn depth_limit(&self, namespace: Namespace) -> usize {
        match namespace {
            Namespace::Cache | Namespace::CacheTmp => self.cache_max_depth,
            _ => self.max_depth,
        }
    }

    /// The diff directories of `layer`'s chain, top first.
    fn lower_dirs(&self, layer: &str) -> Result<Vec<PathBuf>, StoreError> {
        Ok(self.layers.chain(layer)?.iter().map(|l| self.layers.diff(l)).collect())
    }

    /// Mounts `layer`'s tree unless it is mounted: writable over its work
    /// directory while it has one (a build or a cache copy), else the
    /// read-only view of its chain. Serialised per layer, so a tree is
    /// never mounted twice. `false` if the layer is being committed (its
    /// work directory gone but no view wanted from it).
    fn ensure_mounted(&self, layer: &str, writable: bool) -> Result<bool, StoreError> {
        let tree = self.layers.tree(layer);
        if mount::is_mounted(&tree)? {
            return Ok(true);
        }
        let _mounting = FileLock::acquire(&self.layers.dir(layer).join(".mount"), LockMode::Exclusive)?;
        if mount::is_mounted(&tree)? {
            return Ok(true);
        }
        let work = self.layers.work(layer);
        if writable {
            if !work.is_dir() {
                return Ok(false);
            }
            let Some(base) = self.layers.lower(layer)? else {
                return Err(StoreError::other(format!("layer {layer} has a work directory but no base")));
            };
            let lowers = self.lower_dirs(&base)?;
            let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
            let upper = self.layers.diff(layer);
            mount::mount_overlay(&tree, &lowers, Some(mount::Upper { upper: &upper, work: &work }))?;
        } else {
            let lowers = self.lower_dirs(layer)?;
            let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
            mount::mount_overlay(&tree, &lowers, None)?;
        }
        Ok(true)
    }

    /// A fresh layer holding the whole tree of `layer` (whose tree is not
    /// mounted), copied through a read-only view of its chain, on an empty
    /// layer of its own: a chain of 2. (Not a lone layer: the kernel needs
    /// two lowers for a read-only overlay, and only an overlay shows the
    /// tree's own escaped `trusted.overlay.*` xattrs as they were set.)
    fn flatten(&self, layer: &str) -> Result<String, StoreError> {
        let view = self.layers.tree(layer);
        let lowers = self.lower_dirs(layer)?;
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        mount::mount_overlay(&view, &lowers, None)?;
        let copied = (|| {
            let empty = self.layers.new_layer(None)?;
            let empty_diff = self.layers.diff(&empty);
            fs::create_dir(&empty_diff).context(format!("cannot create {}", empty_diff.display()))?;
            let flat = self.layers.new_layer(Some(&empty))?;
            copy_tree(&view, &self.layers.diff(&flat))?;
            meta::escape_overlay_xattrs(&self.layers.diff(&flat))?;
            Ok(flat)
        })();
        detach_mounts_under(&view)?;
        copied
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .context(format!("cannot open {}", dir.display()))?;
        fsync(&fd).context(format!("cannot sync {}", dir.display()))
    }

    /// Deletes trash entries, setting aside (and reporting) those that
    /// cannot be.
    fn delete(&self, entries: &[PathBuf]) -> Result<(), StoreError> {
        let mut failed = None;
        for entry in entries {
            if let Err(e) = trash::remove_or_set_aside(entry) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Copies the tree `from` to the new directory `to` with everything a
/// tree holds (owners, modes, times, xattrs and ACLs, hard links, devices,
/// fifos); sharing the data where the filesystem has reflinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    let out = Command::new("cp")
        .args(["--no-dereference", "--recursive", "--no-target-directory", "--reflink=auto"])
        // Named one by one: an xattr that cannot be copied is then an error.
        .arg("--preserve=mode,ownership,timestamps,links,xattr")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run cp (install coreutils)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(StoreError::other(format!(
            "cannot copy {} to {}: {}",
            from.display(),
            to.display(),
            stderr.lines().next().unwrap_or("cp failed")
        )));
    }
    Ok(())
}

/// Removes an overlay's work directory: usually its empty `work/`
/// subdirectory and itself (quick), else whatever a crash left in it.
fn remove_work(work: &Path) -> Result<(), StoreError> {
    let _ = fs::remove_dir(work.join("work"));
    match fs::remove_dir(work) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => remove_tree(work),
    }
}

impl SnapshotBackend for Overlay {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let _held = self.layers.hold()?;
        self.refuse_existing(key)?;
        let layer = self.layers.new_layer(None)?;
        let diff = self.layers.diff(&layer);
        create_owned_dir(&diff, owner)?;
        // On failure the layer is unlinked: the next collection takes it.
        self.layers.link(key, &layer)?;
        Ok(diff)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let _held = self.layers.hold()?;
        let Some(base) = self.layers.of_key(src)? else {
            return Err(StoreError::not_found(format!("`{src}` does not exist")));
        };
        self.refuse_existing(dst)?;
        let layer = self.layers.new_layer(Some(&base))?;
        let (diff, work) = (self.layers.diff(&layer), self.layers.work(&layer));
        fs::create_dir(&diff).context(format!("cannot create {}", diff.display()))?;
        // The overlay's root is the upper directory: it must look like the base's.
        meta::copy_root(&self.layers.diff(&base), &diff)?;
        fs::create_dir(&work).context(format!("cannot create {}", work.display()))?;
        self.ensure_mounted(&layer, true)?;
        if let Err(e) = self.layers.link(dst, &layer) {
            let _ = detach_mounts_under(&self.layers.tree(&layer));
            return Err(e);
        }
        Ok(self.layers.tree(&layer))
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        // `parent` is not needed: the layer links to its base already.
        let _held = self.layers.hold()?;
        let Some(layer) = self.layers.of_key(tmp)? else {
            return Err(StoreError::not_found(format!("`{tmp}` does not exist")));
        };
        self.refuse_existing(dst)?;
        let has_base = self.layers.lower(&layer)?.is_some();
        {
            // No path() remounts the build while it is taken apart.
            let _mounting = FileLock::acquire(&self.layers.dir(&layer).join(".mount"), LockMode::Exclusive)?;
            // The overlay itself and whatever a sandbox left in it, or the
            // sandbox's mounts in a plain build directory.
            let tree = if has_base { self.layers.tree(&layer) } else { self.layers.diff(&layer) };
            detach_mounts_under(&tree)?;
            remove_work(&self.layers.work(&layer))?;
        }
        let mut target = layer.clone();
        if has_base && self.layers.chain(&layer)?.len() > self.depth_limit(dst.namespace()) {
            target = self.flatten(&layer)?;
        }
        if self.sync_on_commit {
            // The link must not become durable before the layer it names.
            let diff = self.layers.diff(&target);
            let fd =
                rustix::fs::open(&diff, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .context(format!("cannot open {}", diff.display()))?;
            syncfs(&fd).context(format!("cannot sync {}", diff.display()))?;
        }
        self.layers.link(dst, &target)?;
        if self.sync_on_commit {
            self.sync_dir(&self.root.join(dst.namespace().as_str()))?;
        }
        self.layers.unlink(tmp)?;
        drop(_held);
        self.path(dst)?.ok_or_else(|| StoreError::other(format!("`{dst}` vanished as it was committed")))
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        if !self.layers.unlink(key)? {
            return Ok(());
        }
        // The layer goes if no chain needs it; its mounts are detached
        // with it (in the trash, before anything is deleted).
        // The key is gone: a collection that fails (a chain it cannot
        // read) is left to `complete_deletes`, which reports it.
        let trashed = self.layers.collect(false).unwrap_or_default();
        self.delete(&trashed)
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let _held = self.layers.hold()?;
        let Some(layer) = self.layers.of_key(key)? else {
            return Ok(None);
        };
        // (The lock held keeps a linked layer from being collected.)
        if self.layers.lower(&layer)?.is_none() {
            return Ok(Some(self.layers.diff(&layer)));
        }
        let writable = matches!(key.namespace(), Namespace::ResultTmp | Namespace::CacheTmp);
        if !self.ensure_mounted(&layer, writable)? {
            return Ok(None); // a build being committed: gone in a moment
        }
        Ok(Some(self.layers.tree(&layer)))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        store_api::util::list_key_names(&self.root.join(namespace.as_str()))
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        store_api::util::free_percent(&self.root)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        self.layers.collect(true)?;
        // Everything in the trash: what was just collected and what killed
        // processes left (others may be deleting the same entries).
        let trash_dir = self.layers.trash();
        trash::retry_stuck(&trash_dir);
        let entries = fs::read_dir(&trash_dir).context(format!("cannot read {}", trash_dir.display()))?;
        let doomed: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| !trash::is_stuck(&entry.file_name().to_string_lossy()))
            .filter(|entry| !checks::is_running_probe(entry))
            .map(|entry| entry.path())
            .collect();
        self.delete(&doomed)
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        checks::check(&self.root, self.max_depth, self.cache_max_depth, self.sync_on_commit)
    }

    fn changes(&self, key: &Key, base: &Key) -> Result<Option<Vec<Change>>, StoreError> {
        let _held = self.layers.hold()?;
        let missing = |k: &Key| StoreError::not_found(format!("`{k}` does not exist"));
        let layer = self.layers.of_key(key)?.ok_or_else(|| missing(key))?;
        let base_layer = self.layers.of_key(base)?.ok_or_else(|| missing(base))?;
        // Only a layer built right on `base` is its diff (a flattened one
        // holds the whole tree: the host walks it).
        if self.layers.lower(&layer)?.as_deref() != Some(base_layer.as_str()) {
            return Ok(None);
        }
        let tree = self.path(key)?.ok_or_else(|| missing(key))?;
        let base_tree = self.path(base)?.ok_or_else(|| missing(base))?;
        let diff = self.layers.diff(&layer);
        changes::changes(&changes::Trees { layer: &diff, tree: &tree, base: &base_tree }).map(Some)
    }

    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let _held = self.layers.hold()?;
        let layer = self
            .layers
            .of_key(key)?
            .ok_or_else(|| StoreError::not_found(format!("`{key}` does not exist")))?;
        changes::layer_size(&self.layers.diff(&layer)).map(Some)
    }

    fn recover(&self) -> Result<(), StoreError> {
        // Unneeded layers go to the trash, and the mounts dead processes
        // left there are detached now; deleting them is complete_deletes'.
        // Left to `complete_deletes` if it fails (see `remove`).
        let _ = self.layers.collect(false);
        let trash_dir = self.layers.trash();
        for entry in
            fs::read_dir(&trash_dir).context(format!("cannot read {}", trash_dir.display()))?.flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("del-") {
                detach_mounts_under(&entry.path())?;
            }
        }
        Ok(())
    }
}
