//! Least-recently-used eviction of results, after obuilder's prune: only
//! results nothing is built on, one at a time, never a base in use.

use std::time::{Duration, Instant};

use serde::Serialize;
use store_api::StoreError;
use tracing::info;

use crate::lock::{FileLock, Mode};
use crate::records::now_ns;
use crate::store::{BlockingStore, LockKind};

/// When to stop pruning; with none set, everything prunable goes.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Delete at most this many results.
    pub limit: Option<usize>,
    /// Delete only results not used for this long.
    pub older_than: Option<Duration>,
    /// Stop once this percentage of the store's space is free.
    pub until_free: Option<f64>,
}

/// What a prune did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub deleted: Vec<String>,
    /// Why it stopped.
    pub stopped: String,
}

impl BlockingStore {
    /// Deletes least-recently-used results nothing is built on, never a
    /// base in use, until `options` say stop; `progress` is told of each
    /// deletion.
    pub fn prune(
        &self,
        options: &PruneOptions,
        progress: impl FnMut(&str),
    ) -> Result<PruneReport, StoreError> {
        prune(self, options, progress)
    }
}

fn prune(
    store: &BlockingStore,
    options: &PruneOptions,
    mut progress: impl FnMut(&str),
) -> Result<PruneReport, StoreError> {
    store.reconcile_records()?;
    let cutoff = options.older_than.map(|age| now_ns() - age.as_nanos().min(i64::MAX as u128) as i64);
    let mut deleted = Vec::new();
    let stopped = loop {
        if let Some(goal) = options.until_free {
            let free = store.df()?;
            if free >= goal {
                break format!("{free:.1}% free, the goal was {goal}%");
            }
        }
        if options.limit.is_some_and(|limit| deleted.len() >= limit) {
            break format!("limit of {} reached", deleted.len());
        }
        // The order is read afresh each time: builds and lookups go on.
        let Some(id) = take_one(store, cutoff)? else {
            break match options.older_than {
                Some(age) => format!("no unused result older than {}", humantime::format_duration(age)),
                None => "nothing left to prune".to_string(),
            };
        };
        progress(&id);
        deleted.push(id);
        if options.until_free.is_some() {
            // df is only right once the space is really free.
            store.complete_deletes()?;
        }
    };
    store.complete_deletes()?;
    info!(count = deleted.len(), stopped, "prune done");
    Ok(PruneReport { deleted, stopped })
}

/// Deletes the least recently used leaf that no build is using; returns it.
fn take_one(store: &BlockingStore, cutoff: Option<i64>) -> Result<Option<String>, StoreError> {
    let started = Instant::now();
    for id in store.records()?.leaves_by_age(cutoff)? {
        // A base of a running build holds a shared `use` lock; skip it.
        let Some(using) = FileLock::try_acquire(&store.lock_path(LockKind::Use, &id), Mode::Exclusive)?
        else {
            continue;
        };
        let Some(lock) = FileLock::try_acquire(&store.lock_path(LockKind::Build, &id), Mode::Exclusive)?
        else {
            continue;
        };
        // Built on since we listed it? Then it is no longer a leaf.
        let record = store.records()?.get(&id)?;
        if record.as_ref().is_some_and(|r| r.children > 0) {
            continue;
        }
        store.remove_result(&id, lock)?;
        using.release_and_remove();
        tracing::debug!(id, elapsed = ?started.elapsed(), "pruned");
        return Ok(Some(id));
    }
    Ok(None)
}
