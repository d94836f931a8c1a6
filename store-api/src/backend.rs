//! The interface a backend author implements, in plain Rust types.

use std::path::PathBuf;

use crate::{Key, Namespace, Owner, StoreError};

/// Snapshot primitives over keys (see [`crate::key`]).
///
/// The host holds all policy: it validates names, takes the locks (no two
/// calls on one key ever run at once), decides when a cache copy is
/// published, and recovers temporary trees left by dead processes. A
/// backend only has to make each primitive atomic:
///
/// * a committed key (`result/…`, `cache/…`) is either absent or a complete
///   tree, whatever the moment a process is killed;
/// * after a crash, a half-made temporary tree may remain; the host removes
///   it later with [`remove`](Self::remove), which must cope with any state.
///
/// Calls come from several threads and several processes at once.
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Creates an empty writable directory at the temporary key `key`,
    /// owned by `owner` (else by the calling process), mode 0755.
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError>;

    /// Makes a writable copy of the committed tree `src` at the temporary
    /// key `dst`. Errors with `NOT_FOUND` if `src` does not exist.
    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError>;

    /// Turns the writable tree `tmp` into the committed, read-only tree
    /// `dst`, atomically. `parent` is the committed tree `tmp` was cloned
    /// from, if any and if it still exists (a hint for sharing storage).
    /// Errors with `ALREADY_EXISTS` if `dst` exists. On success `tmp` is gone.
    fn commit(&self, tmp: &Key, dst: &Key, parent: Option<&Key>) -> Result<PathBuf, StoreError>;

    /// Removes `key` from view at once (atomically) and frees its space now
    /// or later. Absent keys are not an error. Trees cloned from it must
    /// stay intact.
    fn remove(&self, key: &Key) -> Result<(), StoreError>;

    /// The path of `key` if it exists.
    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError>;

    /// The names of the keys present in `namespace`, in any order.
    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError>;

    /// Free space of the filesystem or pool, in percent (0–100).
    fn free_percent(&self) -> Result<f64, StoreError>;

    /// Returns once the space of everything removed so far is really free.
    fn complete_deletes(&self) -> Result<(), StoreError>;

    /// Checks prerequisites (tools, filesystem, permissions). Returns lines
    /// describing what was found; errors say what is wrong and how to fix it.
    fn check(&self) -> Result<Vec<String>, StoreError>;

    /// Removes the backend's own leftovers of dead processes (e.g. trees
    /// half-way through a commit or remove), quickly and without waiting
    /// for deletes to complete. Called by the host's recovery pass. (1.1)
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
