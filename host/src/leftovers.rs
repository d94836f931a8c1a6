//! What killed processes leave in the bookkeeping directory, and what a
//! finished operation may leave to recovery.

use std::fs;
use std::path::Path;
use std::time::Duration;

use store_api::{IoContext, StoreError};
use tracing::{debug, warn};

use crate::fault;
use crate::lock::{FileLock, Mode};
use crate::store::STAGED_MARK;

/// Lock directories whose files are made on demand: a file nobody holds
/// can go (a process waiting on it notices and retries on a new one).
const ON_DEMAND_LOCKS: [&str; 3] = ["build", "use", "cache"];

/// Removes the lock files nobody holds, and the staged files of writers
/// killed while writing.
pub(crate) fn remove_stale_lock_files(meta: &Path) -> Result<(), StoreError> {
    let mut removed = 0;
    for kind in ON_DEMAND_LOCKS {
        let dir = meta.join("locks").join(kind);
        let entries = fs::read_dir(&dir).context(format_args!("cannot read {}", dir.display()))?;
        for entry in entries.flatten() {
            if let Some(lock) = FileLock::try_acquire(&entry.path(), Mode::Exclusive)? {
                lock.release_and_remove();
                removed += 1;
            }
        }
    }
    // An atomic write (`layout::write_atomic`) stages its file beside the
    // target, `.NAME.tmp-XXXXXX`, for the milliseconds it takes: one an
    // hour old is a killed writer's.
    for dir in [meta.to_path_buf(), meta.join("leases"), meta.join("cache-names"), meta.join("oci/layers")] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let staged = name.to_str().is_some_and(|n| n.starts_with('.') && n.contains(STAGED_MARK));
            let old = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if staged && old.is_some_and(|age| age > STAGED_FILE_LIFE) {
                let _ = fs::remove_file(entry.path());
                removed += 1;
            }
        }
    }
    if removed > 0 {
        debug!(removed, "removed lock files of finished processes and files of killed writers");
    }
    Ok(())
}

/// How old a staged file must be to be a killed writer's.
const STAGED_FILE_LIFE: Duration = Duration::from_secs(3600);

/// Runs `remove` on a cache's previous snapshot once a new one is
/// published. The release has succeeded whatever happens here: a snapshot
/// that cannot go now is removed by the next acquire of the cache.
pub(crate) fn remove_old_generation(remove: impl FnOnce() -> Result<(), StoreError>) {
    let removed = if fault::fails("release:remove-old") {
        Err(StoreError::other("injected failure"))
    } else {
        remove()
    };
    if let Err(e) = removed {
        warn!("cannot remove the cache's previous snapshot (its next acquire will): {e}");
    }
}
