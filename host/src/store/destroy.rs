//! Removing a whole store: every result, cache, lease and record, through
//! the backend (so read-only subvolumes and datasets go too), then the
//! host's own files and the root directory if nothing else is left in it.

use std::fs;

use serde::Serialize;
use store_api::util::remove_tree;
use store_api::{IoContext, Namespace, StoreError};
use tracing::info;

use super::{key, BlockingStore, LockKind, META_DIR, STATE_DIR};
use crate::lock::{FileLock, Mode};

/// Directories of the store's layout (the host's and the backends') that
/// are removed once empty; nothing else in the root is touched.
/// (`layers`: the overlayfs backend's.)
const LAYOUT_DIRS: [&str; 6] = ["result", "result-tmp", "cache", "cache-tmp", "trash", "layers"];

/// What a destroy removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Destroyed {
    pub results: usize,
    pub caches: usize,
    pub leases: usize,
    /// Whether the root directory itself went (it stays when it is a
    /// mount point or holds what the store did not make).
    pub root_removed: bool,
    /// What is left in the root, if it stayed.
    pub left: Vec<String>,
}

impl BlockingStore {
    /// Removes the whole store. Refused (busy) while another process holds
    /// one of its locks: a build, a cache operation or a bound lease.
    pub fn destroy(self) -> Result<Destroyed, StoreError> {
        let _held = self.lock_everything()?;
        let mut destroyed = Destroyed {
            results: self.backend().list(Namespace::Result)?.len(),
            caches: self.cache_count()?,
            leases: self.lease_ids()?.len(),
            ..Default::default()
        };
        for namespace in Namespace::ALL {
            for name in self.backend().list(namespace)? {
                self.backend()
                    .remove(&key(namespace, &name)?)
                    .map_err(|e| e.context(format_args!("cannot remove {namespace}/{name}")))?;
            }
        }
        self.backend().complete_deletes()?;
        let root = self.root().to_path_buf();
        for own in [STATE_DIR, META_DIR] {
            remove_tree(&root.join(own))?;
        }
        for dir in LAYOUT_DIRS {
            // Only if empty: a backend's leftovers are never deleted blindly.
            let _ = fs::remove_dir(root.join(dir));
        }
        destroyed.root_removed = fs::remove_dir(&root).is_ok();
        if !destroyed.root_removed {
            let entries = fs::read_dir(&root).context(format_args!("cannot read {}", root.display()))?;
            destroyed.left = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
            destroyed.left.sort();
        }
        info!(root = %root.display(), ?destroyed, "store destroyed");
        Ok(destroyed)
    }

    fn cache_count(&self) -> Result<usize, StoreError> {
        let mut names: Vec<String> = self.snapshots()?.into_iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        Ok(names.len())
    }

    /// Takes every lock file of the store, or says which one another
    /// process holds.
    fn lock_everything(&self) -> Result<Vec<FileLock>, StoreError> {
        let mut held = Vec::new();
        for kind in LockKind::ALL {
            let dir = self.lock_dir(kind);
            let entries = fs::read_dir(&dir).context(format_args!("cannot read {}", dir.display()))?;
            for entry in entries.flatten() {
                let Some(lock) = FileLock::try_acquire(&entry.path(), Mode::Exclusive)? else {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    return Err(StoreError::busy(format!(
                        "the store is in use ({} lock `{name}` is held by a running process); \
                         stop what uses the store and try again",
                        kind.dir()
                    )));
                };
                held.push(lock);
            }
        }
        Ok(held)
    }
}
