//! Waiting for the btrfs cleaner: a deleted subvolume's space comes back
//! only once the cleaner thread has dropped its tree, some time after the
//! delete (up to a transaction period, 30 s by default, if nobody asks).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use crate::sys;

/// Waits until the cleaner has freed the deleted subvolumes `ids`, or
/// until `limit` has passed. Returns whether they were all freed.
pub fn wait_for(fs: &File, ids: &[u64], limit: Option<Duration>) -> io::Result<bool> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        // Commits the transaction and wakes the cleaner thread.
        sys::sync(fs)?;
        let left = sys::deleted_subvolumes(fs)?;
        if !ids.iter().any(|id| left.contains(id)) {
            break;
        }
        if limit.is_some_and(|limit| start.elapsed() >= limit) {
            return Ok(false);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
    // Space freed by the cleaner becomes usable at the next commit.
    sys::sync(fs)?;
    Ok(true)
}
