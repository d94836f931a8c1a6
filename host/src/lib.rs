//! snapstore: a snapshot store for build systems.
//!
//! [`Store`] is the async API for build tools (after obuilder's `STORE`);
//! [`BlockingStore`] is the same store with blocking calls. Both load the
//! backend plugin named in a [`Config`].

mod api;
mod cgroup;
pub mod config;
pub mod conformance;
pub mod fault;
mod leftovers;
pub mod loader;
pub(crate) mod lock;
pub mod names;
mod plugin_file;
pub mod prune;
pub mod records;
pub mod root;
pub mod store;
pub mod stress;
pub mod supervise;

pub use api::{CacheCopy, Store};
pub use config::Config;
pub use store::{BlockingStore, Build, Listing, Released};
pub use store_api::{ErrorKind, Owner, StoreError};
