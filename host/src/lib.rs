//! snapstore: a snapshot store for build systems.
//!
//! [`Store`] is the async API for build tools (after obuilder's `STORE`);
//! [`BlockingStore`] is the same store with blocking calls. Both load the
//! backend plugin named in a [`Config`], or take a backend linked into the
//! program (see the examples on each).
//!
//! Errors are [`StoreError`]s, the same type the backends return across the
//! plugin boundary, with an [`ErrorKind`] that the command maps to its exit
//! status: a host-side error enum would only be converted back into it, so
//! there is none.

mod api;
mod cgroup;
mod config;
pub mod conformance;
mod fault;
mod leftovers;
mod loader;
mod lock;
mod names;
/// Results as OCI images (export, import, transports).
pub mod oci;
mod plugin_file;
mod plugin_verdict;
mod progress;
mod prune;
mod records;
/// Sharing results through a registry: push, pull, the remote's housekeeping.
pub mod remote;
mod root;
mod sizes;
mod spawn;
mod store;
mod stress;
mod supervise;
mod uses;

pub use api::{CacheCopy, Store};
pub use config::{Config, PullPolicy, PushPolicy, RemoteConfig};
pub use loader::PluginInfo;
pub use oci::{Compression, ExportOptions, ExportReport, ImageRef, ImportReport};
pub use prune::{PruneOptions, PruneReport};
pub use store::{
    BlockingStore, Build, CacheInfo, Destroyed, Lease, LeaseInfo, LeaseKind, LeaseRecord, Listing, Recovered,
    ReleaseMode, Released, ResultInfo,
};
pub use store_api::{ErrorKind, Owner, StoreError};

/// What the `snapstore` command, the benchmarks and the tests use beyond
/// the embedders' API. Not a stable interface.
#[doc(hidden)]
pub mod internal {
    pub use crate::fault::POINTS as FAULT_POINTS;
    pub use crate::loader::{find_plugins, search_path, Found, Plugin};
    pub use crate::names::{check_id, escape_cache_name, is_hashed, parse_owner, unescape_cache_name};
    pub use crate::progress::{enable as enable_progress, Activity};
    pub use crate::stress::{interrupting_signal, run as stress, stop_on_signals, StressReport};

    /// Checks on a store root before anything is made in it.
    pub mod root {
        pub use crate::root::validate;
        pub use crate::store::explain_unwritable;
    }

    /// Running a command in a tree until every process it started is gone.
    pub mod supervise {
        pub use crate::supervise::run;
    }
}
