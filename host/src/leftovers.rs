//! What killed processes leave in the bookkeeping directory, and what a
//! finished operation may leave to recovery.

use std::fs;
use std::path::Path;

use store_api::{IoContext, StoreError};
use tracing::{debug, warn};

use crate::fault;
use crate::lock::{FileLock, Mode};

/// Lock directories whose files are made on demand: a file nobody holds
/// can go (a process waiting on it notices and retries on a new one).
const ON_DEMAND_LOCKS: [&str; 3] = ["build", "use", "cache"];

/// Removes the lock files nobody holds, and the generation counter's
/// temporary files left by processes killed while writing it.
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
    // The counter is written under its lock: with the lock held, every
    // temporary file beside it is a dead writer's.
    let _counter = FileLock::acquire(&meta.join("locks").join("generation"), Mode::Exclusive)?;
    for entry in fs::read_dir(meta).context(format_args!("cannot read {}", meta.display()))?.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with("generation.tmp-")) {
            let _ = fs::remove_file(entry.path());
            removed += 1;
        }
    }
    if removed > 0 {
        debug!(removed, "removed lock files of finished processes");
    }
    Ok(())
}

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
