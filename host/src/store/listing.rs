//! What the store holds: results, caches and leases, as `snapstore list`
//! shows them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use store_api::{Namespace, StoreError};

use super::{key, now, BlockingStore, CacheSnapshot, LeaseRecord};
use crate::records::ResultRecord;

/// A cache as listed.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    pub name: String,
    pub generation: u64,
    pub path: Option<PathBuf>,
}

/// A lease as listed.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseInfo {
    #[serde(flatten)]
    pub record: LeaseRecord,
    pub age_seconds: u64,
    pub path: Option<PathBuf>,
}

/// A result as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ResultInfo {
    pub id: String,
    pub path: PathBuf,
    pub base: Option<String>,
    /// Unix seconds.
    pub created: f64,
    /// Unix seconds of the last lookup or use as a base.
    pub last_used: f64,
    /// How many results are built on this one.
    pub children: u64,
}

/// Everything in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub results: Vec<ResultInfo>,
    pub caches: Vec<CacheInfo>,
    pub leases: Vec<LeaseInfo>,
}

impl BlockingStore {
    /// Results, caches and leases.
    pub fn list(&self) -> Result<Listing, StoreError> {
        Ok(Listing {
            results: self.list_results()?,
            caches: self.list_caches()?,
            leases: self.list_leases()?,
        })
    }

    fn list_results(&self) -> Result<Vec<ResultInfo>, StoreError> {
        // The records match the backend's listing, just read: where the
        // backend keeps results in one directory, their paths follow.
        let dir = self.backend().key_dir(Namespace::Result)?;
        let mut results = Vec::new();
        for ResultRecord { id, base, created, last_used, children, .. } in self.reconcile_records()? {
            let path = match &dir {
                Some(dir) => Some(dir.join(&id)),
                // Skips a result deleted since the reconciliation.
                None => self.backend().path(&key(Namespace::Result, &id)?)?,
            };
            if let Some(path) = path {
                let seconds = |ns: i64| ns as f64 / 1e9;
                let (created, last_used) = (seconds(created), seconds(last_used));
                results.push(ResultInfo { id, path, base, created, last_used, children });
            }
        }
        Ok(results)
    }

    /// Each cache at its latest generation, by escaped name.
    fn list_caches(&self) -> Result<Vec<CacheInfo>, StoreError> {
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for CacheSnapshot { name, generation } in self.snapshots()? {
            let entry = latest.entry(name).or_insert(generation);
            *entry = (*entry).max(generation);
        }
        latest
            .into_iter()
            .map(|(escaped, generation)| {
                let path = self.backend().path(&CacheSnapshot::new(&escaped, generation).key()?)?;
                Ok(CacheInfo { name: self.cache_display_name(&escaped), generation, path })
            })
            .collect()
    }

    fn list_leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let mut leases = Vec::new();
        for lease in self.lease_ids()? {
            let Ok(record) = self.read_lease(&lease) else {
                continue;
            };
            let path = self.backend().path(&key(Namespace::CacheTmp, &lease)?)?;
            let age_seconds = now().saturating_sub(record.created);
            leases.push(LeaseInfo { record, age_seconds, path });
        }
        Ok(leases)
    }
}
