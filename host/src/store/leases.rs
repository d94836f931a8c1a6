//! Cache copies handed out: one record per lease in `leases/<lease>.json`,
//! and for a bound lease a lock held by the process it belongs to.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use store_api::{IoContext, StoreError};

use super::layout::write_atomic;
use super::{BlockingStore, LockKind};
use crate::lock::FileLock;

/// Whose a cache copy is, and so when it is discarded unreleased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// Belongs to this process: discarded by a later operation once the
    /// process is gone (what a build tool wants).
    BoundToProcess,
    /// Lives until released, by any process (`snapstore cache acquire`).
    UntilReleased,
}

/// What releasing a cache copy should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseMode {
    /// Publish the copy, unless the cache changed since it was taken.
    PublishIfCurrent,
    /// Drop the copy without publishing it (e.g. an abandoned lease).
    Discard,
}

/// What releasing a cache copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Released {
    /// The copy became the cache's latest snapshot.
    Published,
    /// The cache changed (or was deleted) since the copy was taken.
    Discarded,
}

/// A cache copy handed out, as recorded in `leases/<lease>.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LeaseRecord {
    pub lease: String,
    pub cache: String,
    /// The snapshot generation the copy was taken from.
    pub generation: u64,
    /// Unix time the copy was taken.
    pub created: u64,
    /// Bound leases belong to a process and are discarded when it dies;
    /// unbound ones (`snapstore cache acquire`) live until released.
    pub bound: bool,
}

/// A cache copy in use.
#[derive(Debug)]
pub struct Lease {
    pub id: String,
    pub path: PathBuf,
    /// For bound leases: held while the lease is ours.
    pub(super) _holder: Option<FileLock>,
}

/// Checks the form of a lease id given by a user.
pub(super) fn check_lease_id(lease: &str) -> Result<(), StoreError> {
    if lease.len() != 16 || !lease.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::invalid(format!(
            "invalid lease `{}`: a lease is the 16 hex digits printed by `cache acquire`",
            lease.escape_debug()
        )));
    }
    Ok(())
}

impl BlockingStore {
    fn lease_path(&self, lease: &str) -> PathBuf {
        self.inner.meta.join("leases").join(format!("{lease}.json"))
    }

    /// Whether lease `lease` has a record.
    pub(super) fn lease_exists(&self, lease: &str) -> bool {
        self.lease_path(lease).exists()
    }

    pub(super) fn write_lease(&self, record: &LeaseRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::other(e.to_string()))?;
        write_atomic(&self.lease_path(&record.lease), &json)
    }

    pub(super) fn read_lease(&self, lease: &str) -> Result<LeaseRecord, StoreError> {
        let path = self.lease_path(lease);
        let text = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::not_found(format!(
                "no lease `{lease}`: it was released already, or never existed (see `snapstore list`)"
            )),
            _ => StoreError::io(format_args!("cannot read {}", path.display()), &e),
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| StoreError::other(format!("corrupt lease record {}: {e}", path.display())))
    }

    /// Removes what marks lease `lease` as handed out: its record and, for a
    /// bound lease, its lock file, which the caller holds.
    ///
    /// The record goes first: once the lock file is gone, anyone may create
    /// it afresh and lock it, and must then find no record, or it would take
    /// the lease for one whose process died (see `recover_leases`).
    pub(super) fn forget_lease(&self, lease: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.lease_path(lease)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("cannot remove lease record", &e));
            }
            _ => {}
        }
        let _ = fs::remove_file(self.lock_path(LockKind::Lease, lease));
        Ok(())
    }

    /// The ids of every recorded lease, sorted.
    pub(super) fn lease_ids(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.inner.meta.join("leases");
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .context(format_args!("cannot read {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_sixteen_hex_digits() {
        assert!(check_lease_id("0123456789abcdef").is_ok());
        for bad in ["", "0123456789abcde", "0123456789abcdefa", "0123456789abcdeg", "../../../etc/pw"] {
            let err = check_lease_id(bad).unwrap_err();
            assert_eq!(err.kind(), store_api::ErrorKind::INVALID_INPUT, "{bad:?}");
        }
    }
}
