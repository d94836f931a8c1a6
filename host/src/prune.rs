//! Least-recently-used eviction of results, after obuilder's prune: only
//! results nothing is built on, one at a time, never a base in use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use store_api::StoreError;
use tracing::info;

use crate::lock::{FileLock, Mode};
use crate::records::now_ns;
use crate::store::{BlockingStore, LockKind};

/// When to stop pruning. At least one of `limit`, `older_than`,
/// `until_free` or `all` must be set: a prune with none is refused.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Delete at most this many results.
    pub limit: Option<usize>,
    /// Delete only results not used for this long.
    pub older_than: Option<Duration>,
    /// Stop once this percentage of the store's space is free.
    pub until_free: Option<f64>,
    /// Delete every prunable result (the explicit form of "no limit").
    pub all: bool,
    /// Report what would go, in order, and delete nothing.
    pub dry_run: bool,
}

impl PruneOptions {
    /// Refuses options with no stopping condition.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.limit.is_some() || self.older_than.is_some() || self.until_free.is_some() || self.all {
            return Ok(());
        }
        Err(StoreError::invalid(
            "prune needs a stopping condition: --limit N, --older-than DURATION, \
             --until-free PCT, or --all to delete every unused result",
        ))
    }
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// In the order of deletion.
    pub deleted: Vec<String>,
    /// Why it stopped.
    pub stopped: String,
    pub dry_run: bool,
}

impl BlockingStore {
    /// Deletes least-recently-used results nothing is built on, never a
    /// base in use, until `options` say stop; `progress` is told of each
    /// deletion (with `dry_run`, of each result that would go).
    pub fn prune(
        &self,
        options: &PruneOptions,
        progress: impl FnMut(&str),
    ) -> Result<PruneReport, StoreError> {
        options.validate()?;
        if options.all || options.dry_run {
            // Whole-store work: the record is brought in line with the
            // backend first, so that results it lost are candidates too.
            // A bounded prune skips that walk of every result (its cost
            // stays flat in a store of any size): a result the record
            // lacks waits for the next `list`, and a recorded one that is
            // gone is dropped when met (see `take_one`).
            self.reconcile_records()?;
        }
        if options.dry_run {
            dry_run(self, options, progress)
        } else {
            prune(self, options, progress)
        }
    }
}

fn cutoff(options: &PruneOptions) -> Option<i64> {
    options.older_than.map(|age| now_ns() - age.as_nanos().min(i64::MAX as u128) as i64)
}

fn nothing_left(options: &PruneOptions) -> String {
    match options.older_than {
        Some(age) => format!("no unused result older than {}", humantime::format_duration(age)),
        None => "nothing left to prune".to_string(),
    }
}

fn prune(
    store: &BlockingStore,
    options: &PruneOptions,
    mut progress: impl FnMut(&str),
) -> Result<PruneReport, StoreError> {
    let cutoff = cutoff(options);
    if options.until_free.is_some() {
        // Space of earlier deletes counts before anything more goes.
        store.complete_deletes()?;
    }
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
            break nothing_left(options);
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
    Ok(PruneReport { deleted, stopped, dry_run: false })
}

/// The order `prune` would delete in, found by deleting in the record's
/// image only. A free-space goal cannot be foreseen: every candidate is
/// listed unless the goal is met already.
fn dry_run(
    store: &BlockingStore,
    options: &PruneOptions,
    mut progress: impl FnMut(&str),
) -> Result<PruneReport, StoreError> {
    if let Some(goal) = options.until_free {
        let free = store.df()?;
        if free >= goal {
            let stopped = format!("{free:.1}% free, the goal was {goal}%");
            return Ok(PruneReport { deleted: Vec::new(), stopped, dry_run: true });
        }
    }
    let cutoff = cutoff(options).unwrap_or(i64::MAX);
    let records = store.records()?.all()?;
    let mut children: HashMap<&str, u64> = records.iter().map(|r| (r.id.as_str(), r.children)).collect();
    let mut candidates: Vec<_> = records.iter().filter(|r| r.last_used < cutoff).collect();
    candidates.sort_by(|a, b| (a.last_used, &a.id).cmp(&(b.last_used, &b.id)));
    let mut deleted = Vec::new();
    let stopped = loop {
        if options.limit.is_some_and(|limit| deleted.len() >= limit) {
            break format!("limit of {} reached", deleted.len());
        }
        let next = candidates.iter().position(|r| children[r.id.as_str()] == 0 && !in_use(store, &r.id));
        let Some(index) = next else {
            break match options.until_free {
                Some(goal) => {
                    format!("the space each result frees is unknown; a prune stops at {goal}% free")
                }
                None => nothing_left(options),
            };
        };
        let record = candidates.remove(index);
        if let Some(count) = record.base.as_deref().and_then(|base| children.get_mut(base)) {
            *count = count.saturating_sub(1);
        }
        progress(&record.id);
        deleted.push(record.id.clone());
    };
    Ok(PruneReport { deleted, stopped, dry_run: true })
}

/// Whether result `id` is a base of a running build.
fn in_use(store: &BlockingStore, id: &str) -> bool {
    match FileLock::try_acquire(&store.lock_path(LockKind::Use, id), Mode::Exclusive) {
        Ok(Some(free)) => {
            free.release_and_remove();
            false
        }
        _ => true,
    }
}

/// Leaves read from the record at a time: a prune almost always deletes
/// the first, unless builds are using it.
const PAGE: usize = 32;

/// Deletes the least recently used leaf that no build is using; returns it.
fn take_one(store: &BlockingStore, cutoff: Option<i64>) -> Result<Option<String>, StoreError> {
    let started = Instant::now();
    let mut after = None;
    loop {
        let page = store.records()?.leaves_by_age(cutoff, after.as_ref(), PAGE)?;
        for leaf in &page {
            if take(store, &leaf.id)? {
                tracing::debug!(id = leaf.id, elapsed = ?started.elapsed(), "pruned");
                return Ok(Some(leaf.id.clone()));
            }
        }
        if page.len() < PAGE {
            return Ok(None);
        }
        after = page.last().cloned();
    }
}

/// Deletes leaf `id` unless a build uses it or it is no longer a leaf;
/// whether it did. A record whose result is gone is dropped.
fn take(store: &BlockingStore, id: &str) -> Result<bool, StoreError> {
    // A base of a running build holds a shared `use` lock; skip it.
    let Some(using) = FileLock::try_acquire(&store.lock_path(LockKind::Use, id), Mode::Exclusive)? else {
        return Ok(false);
    };
    let Some(lock) = FileLock::try_acquire(&store.lock_path(LockKind::Build, id), Mode::Exclusive)? else {
        return Ok(false);
    };
    // Built on since we listed it? Then it is no longer a leaf.
    let record = store.records()?.get(id)?;
    if record.as_ref().is_some_and(|r| r.children > 0) {
        return Ok(false);
    }
    if !store.result_exists(id)? {
        // Removed behind the record's back (the record was not reconciled).
        store.records()?.deleted(id)?;
        lock.release_and_remove();
        using.release_and_remove();
        return Ok(false);
    }
    store.remove_result(id, lock)?;
    using.release_and_remove();
    Ok(true)
}
