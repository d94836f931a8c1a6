//! Caches: each a series of committed snapshots `<escaped>.<generation>`,
//! of which the latest is the cache. A copy is taken of the latest and,
//! on release, published as a new generation if the cache did not change
//! meanwhile.

use std::fmt;
use std::fs;

use store_api::{Key, Namespace, Owner, StoreError};
use tracing::{debug, info};

use super::layout::{generation_lock_path, write_atomic};
use super::leases::check_lease_id;
use super::{key, now, BlockingStore, Lease, LeaseKind, LeaseRecord, LockKind, ReleaseMode, Released};
use crate::fault;
use crate::lock::{FileLock, Mode};
use crate::names::{check_cache_name, escape_cache_name, is_hashed, unescape_cache_name};
use store_api::util::random_token;

/// One committed snapshot of a cache: the key `<name>.<generation>` in
/// [`Namespace::Cache`], where `name` is the escaped cache name (which
/// never contains a `.`, see [`escape_cache_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheSnapshot {
    pub name: String,
    pub generation: u64,
}

impl CacheSnapshot {
    pub fn new(escaped: &str, generation: u64) -> CacheSnapshot {
        CacheSnapshot { name: escaped.to_string(), generation }
    }

    /// Reads a key name written by [`fmt::Display`]; `None` for anything
    /// else (a backend's foreign entries are not the host's snapshots).
    pub fn parse(key_name: &str) -> Option<CacheSnapshot> {
        let (name, generation) = key_name.split_once('.')?;
        let canonical = !generation.is_empty()
            && generation.bytes().all(|b| b.is_ascii_digit())
            && (generation == "0" || !generation.starts_with('0'));
        if name.is_empty() || !canonical {
            return None;
        }
        Some(CacheSnapshot { name: name.to_string(), generation: generation.parse().ok()? })
    }

    pub fn key(&self) -> Result<Key, StoreError> {
        key(Namespace::Cache, &self.to_string())
    }
}

impl fmt::Display for CacheSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.generation)
    }
}

impl BlockingStore {
    /// Takes a writable copy of cache `name`, creating the cache as an empty
    /// directory owned by `owner` if it does not exist. `kind` says when an
    /// unreleased copy is discarded.
    pub fn acquire_cache(
        &self,
        name: &str,
        owner: Option<Owner>,
        kind: LeaseKind,
    ) -> Result<Lease, StoreError> {
        check_cache_name(name)?;
        self.recover_temporary(Namespace::CacheTmp)?;
        self.recover_leases()?;
        let escaped = escape_cache_name(name);
        let _cache_lock = FileLock::acquire(&self.lock_path(LockKind::Cache, &escaped), Mode::Exclusive)?;
        self.check_hashed_name(name, &escaped)?;
        let generation = match self.latest_generation(&escaped)? {
            Some(generation) => generation,
            None => self.create_cache(&escaped, owner)?,
        };
        fault::point("acquire:created");
        let lease = random_token();
        let bound = kind == LeaseKind::BoundToProcess;
        let holder = if bound {
            Some(FileLock::acquire(&self.lock_path(LockKind::Lease, &lease), Mode::Exclusive)?)
        } else {
            None
        };
        let record =
            LeaseRecord { lease: lease.clone(), cache: name.to_string(), generation, created: now(), bound };
        // The record comes first: a tree in cache-tmp without one is stale.
        let copied = self.write_lease(&record).and_then(|()| {
            fault::point("acquire:recorded");
            let snapshot = CacheSnapshot::new(&escaped, generation).key()?;
            self.backend().clone_tree(&snapshot, &key(Namespace::CacheTmp, &lease)?)
        });
        match copied {
            Ok(path) => {
                fault::point("acquire:cloned");
                debug!(name, lease, generation, "cache acquired");
                Ok(Lease { id: lease, path, _holder: holder })
            }
            Err(err) => {
                let _ = self.backend().remove(&key(Namespace::CacheTmp, &lease)?);
                let _ = self.forget_lease(&lease);
                Err(err)
            }
        }
    }

    /// Creates cache `escaped` as an empty, committed snapshot.
    fn create_cache(&self, escaped: &str, owner: Option<Owner>) -> Result<u64, StoreError> {
        let token = random_token();
        let tmp_lock = FileLock::acquire(&self.lock_path(LockKind::Tmp, &token), Mode::Exclusive)?;
        let tmp = key(Namespace::CacheTmp, &token)?;
        let generation = self.next_generation()?;
        let snapshot = CacheSnapshot::new(escaped, generation).key()?;
        let made = self.backend().create(&tmp, owner).and_then(|_| self.commit_tree(&tmp, &snapshot, None));
        if made.is_err() {
            let _ = self.backend().remove(&tmp);
        }
        tmp_lock.release_and_remove();
        made.map(|_| generation)
    }

    /// Releases a copy: publishes it if the cache is still at the generation
    /// it was taken from, else discards it.
    pub fn release(&self, lease: Lease) -> Result<Released, StoreError> {
        let released = self.release_id(&lease.id, ReleaseMode::PublishIfCurrent)?;
        drop(lease);
        Ok(released)
    }

    /// Releases the copy of lease `lease`, e.g. one taken by another
    /// process with [`LeaseKind::UntilReleased`].
    pub fn release_id(&self, lease: &str, mode: ReleaseMode) -> Result<Released, StoreError> {
        check_lease_id(lease)?;
        let record = self.read_lease(lease)?;
        let escaped = escape_cache_name(&record.cache);
        let _cache_lock = FileLock::acquire(&self.lock_path(LockKind::Cache, &escaped), Mode::Exclusive)?;
        let copy = key(Namespace::CacheTmp, lease)?;
        let copy_path = self.backend().path(&copy)?;
        if let Some(path) = &copy_path {
            crate::supervise::detach_mounts(path)?;
        }
        let latest = self.latest_generation(&escaped)?;
        let publish =
            mode == ReleaseMode::PublishIfCurrent && latest == Some(record.generation) && copy_path.is_some();
        let released = if publish {
            let snapshot = CacheSnapshot::new(&escaped, self.next_generation()?).key()?;
            let checked = copy_path.as_deref().map_or(Ok(()), crate::supervise::check_still_a_tree);
            if let Err(err) = checked.and_then(|()| self.commit_tree(&copy, &snapshot, None)) {
                // The copy could not be published (e.g. disk full): it is
                // discarded, and the cache keeps its previous snapshot.
                let _ = self.backend().remove(&copy);
                let _ = self.forget_lease(lease);
                return Err(err.context(format_args!("cache `{}` keeps its previous state", record.cache)));
            }
            fault::point("release:published");
            // The snapshot the copy was taken from is now the only older one;
            // if it cannot go now, the next acquire or recovery removes it.
            let older = CacheSnapshot::new(&escaped, record.generation);
            crate::leftovers::remove_old_generation(|| self.remove_snapshot(&older));
            Released::Published
        } else {
            self.backend().remove(&copy)?;
            Released::Discarded
        };
        fault::point("release:cleaned");
        self.forget_lease(lease)?;
        debug!(lease, cache = record.cache, ?released, "cache released");
        Ok(released)
    }

    /// Deletes cache `name`. Copies in use are discarded when released.
    pub fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        check_cache_name(name)?;
        let escaped = escape_cache_name(name);
        let cache_lock = FileLock::acquire(&self.lock_path(LockKind::Cache, &escaped), Mode::Exclusive)?;
        self.check_hashed_name(name, &escaped)?;
        for snapshot in self.snapshots_of(&escaped)? {
            self.remove_snapshot(&snapshot)?;
        }
        if is_hashed(&escaped) {
            let _ = fs::remove_file(self.inner.meta.join("cache-names").join(&escaped));
        }
        cache_lock.release_and_remove();
        info!(name, "cache deleted");
        Ok(())
    }

    /// A long cache name is stored under its hash; the original is kept
    /// beside it so that it can be listed and a collision refused.
    fn check_hashed_name(&self, name: &str, escaped: &str) -> Result<(), StoreError> {
        if !is_hashed(escaped) {
            return Ok(());
        }
        let path = self.inner.meta.join("cache-names").join(escaped);
        match fs::read(&path) {
            Ok(stored) if stored == name.as_bytes() => Ok(()),
            Ok(_) => Err(StoreError::invalid(format!(
                "cache name hash collision with another name in {}; use a shorter name",
                path.display()
            ))),
            Err(_) => write_atomic(&path, name.as_bytes()),
        }
    }

    /// The name a user gave cache `escaped`.
    pub(super) fn cache_display_name(&self, escaped: &str) -> String {
        match unescape_cache_name(escaped) {
            Some(name) => name,
            None => fs::read(self.inner.meta.join("cache-names").join(escaped))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| escaped.to_string()),
        }
    }

    /// Every cache snapshot the backend holds.
    pub(super) fn snapshots(&self) -> Result<Vec<CacheSnapshot>, StoreError> {
        Ok(self.backend().list(Namespace::Cache)?.iter().filter_map(|n| CacheSnapshot::parse(n)).collect())
    }

    /// The snapshots of cache `escaped`, oldest first.
    fn snapshots_of(&self, escaped: &str) -> Result<Vec<CacheSnapshot>, StoreError> {
        let mut snapshots: Vec<CacheSnapshot> =
            self.snapshots()?.into_iter().filter(|s| s.name == escaped).collect();
        snapshots.sort_unstable_by_key(|s| s.generation);
        Ok(snapshots)
    }

    /// The latest generation of a cache; older snapshots (left by a crash
    /// between publishing and cleaning up) are removed on the way.
    fn latest_generation(&self, escaped: &str) -> Result<Option<u64>, StoreError> {
        let mut snapshots = self.snapshots_of(escaped)?;
        let latest = snapshots.pop();
        for older in snapshots {
            self.remove_snapshot(&older)?;
        }
        Ok(latest.map(|s| s.generation))
    }

    fn remove_snapshot(&self, snapshot: &CacheSnapshot) -> Result<(), StoreError> {
        self.backend().remove(&snapshot.key()?)
    }

    /// A store-wide counter, so that a generation is never reused, even by
    /// a cache deleted and created again.
    fn next_generation(&self) -> Result<u64, StoreError> {
        let _lock = FileLock::acquire(&generation_lock_path(&self.inner.meta), Mode::Exclusive)?;
        let path = self.inner.meta.join("generation");
        let last = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| StoreError::other(format!("corrupt generation counter {}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::io("cannot read generation counter", &e)),
        };
        let next = last + 1;
        write_atomic(&path, format!("{next}\n").as_bytes())?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_round_trip() {
        for name in ["opam", "a_2Fb", "__0123abcd", "x-y"] {
            for generation in [0, 1, 42, u64::MAX] {
                let snapshot = CacheSnapshot::new(name, generation);
                assert_eq!(CacheSnapshot::parse(&snapshot.to_string()), Some(snapshot));
            }
        }
    }

    #[test]
    fn escaped_hostile_names_round_trip() {
        for name in
            ["../x", "a.b", "a.1", ".", "..", "cache/../../etc", "sp ace", "ünï", "x".repeat(255).as_str()]
        {
            let escaped = escape_cache_name(name);
            let snapshot = CacheSnapshot::new(&escaped, 7);
            let parsed = CacheSnapshot::parse(&snapshot.to_string()).unwrap();
            assert_eq!(parsed, snapshot, "{name:?}");
            assert!(Key::new(Namespace::Cache, &snapshot.to_string()).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn foreign_names_are_not_snapshots() {
        for foreign in
            ["", "opam", ".3", "opam.", "opam.x", "opam.+3", "opam.-3", "opam.03", "a.b.3", "opam.3 "]
        {
            assert_eq!(CacheSnapshot::parse(foreign), None, "{foreign:?}");
        }
        let too_big = format!("opam.{}0", u64::MAX);
        assert_eq!(CacheSnapshot::parse(&too_big), None);
    }
}
