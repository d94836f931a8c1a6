//! The store contract, implemented once on top of any backend's primitives:
//! names, locks, cache generations, leases and recovery.
//!
//! Bookkeeping lives in `ROOT/.snapstore/`:
//!
//! * `store.toml` — which backend created the store (see `layout`);
//! * `locks/<kind>/<name>` — the locks of [`LockKind`];
//! * `leases/<lease>.json` — one record per cache copy handed out;
//! * `generation` — the last cache generation number given out;
//! * `results.sqlite` — when each result was created and last used (see `records`).
//!
//! The operations are split by concern: `builds` (results), `caches`
//! (generations), `leases` (cache copies handed out), `recovery` and
//! `listing`.

mod builds;
mod caches;
mod destroy;
mod layout;
mod leases;
mod listing;
mod recovery;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use store_api::{ErrorKind, Key, Namespace, SnapshotBackend, StoreError};
use tracing::warn;

use crate::config::Config;
use crate::loader::{Plugin, PluginInfo};
use crate::plugin_verdict::{self, Verdict};
use crate::records::Records;

pub use builds::Build;
pub(crate) use caches::CacheSnapshot;
pub use destroy::Destroyed;
pub(crate) use layout::LockKind;
pub use layout::{explain_unwritable, STATE_DIR};
pub(crate) use layout::{write_atomic, META_DIR, STAGED_MARK};
pub use leases::{Lease, LeaseKind, LeaseRecord, ReleaseMode, Released};
pub use listing::{CacheInfo, LeaseInfo, Listing, ResultInfo};
pub use recovery::Recovered;

/// The store, with blocking methods. Cheap to clone; safe to share between
/// threads and with other processes using the same root.
///
/// Opened from a [`Config`] with [`open`](Self::open), which loads the
/// backend plugin the config names, or on a backend linked into the
/// program with [`with_backend`](Self::with_backend):
///
/// ```
/// use snapstore::BlockingStore;
///
/// let dir = tempfile::tempdir()?;
/// let root = dir.path().join("store");
/// let backend = snapstore_rsync::open(&root, "")?;
/// let store = BlockingStore::with_backend(&root, "rsync", Box::new(backend))?;
///
/// // A build: the closure fills a fresh tree, which becomes result `base`.
/// let path = store.build(None, "base", |dir| std::fs::write(dir.join("hello"), "hi"))??;
/// assert_eq!(store.result("base")?, Some(path.clone()));
/// assert_eq!(std::fs::read_to_string(path.join("hello"))?, "hi");
///
/// // A build on `base` starts from a copy of it.
/// store.build(Some("base"), "next", |dir| std::fs::write(dir.join("more"), "!"))??;
/// store.delete("base")?;
/// assert!(store.result("next")?.unwrap().join("hello").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct BlockingStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    meta: PathBuf,
    backend_name: String,
    /// The plugin the backend came from, when it came from one.
    plugin: Option<PluginInfo>,
    backend: Box<dyn SnapshotBackend>,
    /// Opened on first use: most commands never need it.
    records: OnceLock<Records>,
}

/// Opens the plugin's backend at the config's root; an options error names
/// the config file.
fn open_backend(plugin: &Plugin, config: &Config) -> Result<store_api::plugin::RemoteBackend, StoreError> {
    plugin.open(&config.root, &config.backend_options).map_err(|e| {
        if e.kind() == ErrorKind::INVALID_INPUT {
            config.backend_error(e)
        } else {
            e
        }
    })
}

/// Keeps what this command found out about the plugin file for the next
/// ones (see [`crate::plugin_verdict`]), unless it was known already.
fn keep_verdict(plugin: &Plugin, backend: &dyn SnapshotBackend, meta_dir: &Path) {
    let result_dir = backend.key_dir(Namespace::Result).ok().flatten();
    let verdict = Verdict { name: plugin.info.name.clone(), interface: plugin.interface(), result_dir };
    if plugin.known.as_ref() != Some(&verdict) {
        plugin_verdict::write(meta_dir, &plugin.file_meta, &verdict);
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The result record, in the meta directory.
const RECORDS_FILE: &str = "results.sqlite";

fn key(namespace: Namespace, name: &str) -> Result<Key, StoreError> {
    Key::new(namespace, name)
}

impl BlockingStore {
    /// Loads the plugin the config names and opens the store at its root,
    /// creating the store on first use.
    pub fn open(config: &Config) -> Result<BlockingStore, StoreError> {
        let plugin = Plugin::for_config(config)?;
        crate::root::validate(&config.root)?;
        // The marker is checked before the plugin touches the root, and
        // written only once the plugin has accepted it.
        layout::check_marker(&config.root, &plugin.info.name)?;
        let backend = open_backend(&plugin, config)?;
        layout::prepare_root(&config.root, &plugin.info.name)?;
        keep_verdict(&plugin, &backend, &config.root.join(META_DIR));
        Ok(Self::assemble(&config.root, &plugin.info.name.clone(), Some(plugin.info), Box::new(backend)))
    }

    /// Opens the store only if it exists, creating nothing: the plugin's
    /// identity, and the store (`None` if there is no store at the root yet).
    pub fn open_existing(config: &Config) -> Result<(PluginInfo, Option<BlockingStore>), StoreError> {
        let plugin = Plugin::for_config(config)?;
        crate::root::validate(&config.root)?;
        let info = plugin.info.clone();
        if !layout::check_marker(&config.root, &plugin.info.name)? {
            return Ok((info, None));
        }
        let backend = open_backend(&plugin, config)?;
        let store = Self::assemble(&config.root, &info.name, Some(plugin.info), Box::new(backend));
        Ok((info, Some(store)))
    }

    /// Opens a store on a backend object, e.g. one linked into the program.
    pub fn with_backend(
        root: &Path,
        backend_name: &str,
        backend: Box<dyn SnapshotBackend>,
    ) -> Result<BlockingStore, StoreError> {
        crate::root::validate(root)?;
        layout::prepare_root(root, backend_name)?;
        Ok(Self::assemble(root, backend_name, None, backend))
    }

    fn assemble(
        root: &Path,
        backend_name: &str,
        plugin: Option<PluginInfo>,
        backend: Box<dyn SnapshotBackend>,
    ) -> Self {
        let inner = Inner {
            root: root.to_path_buf(),
            meta: root.join(META_DIR),
            backend_name: backend_name.to_string(),
            plugin,
            backend,
            records: OnceLock::new(),
        };
        BlockingStore { inner: Arc::new(inner) }
    }

    /// The plugin the backend was loaded from (`None` for a linked-in backend).
    pub fn plugin(&self) -> Option<&PluginInfo> {
        self.inner.plugin.as_ref()
    }

    pub(crate) fn records(&self) -> Result<&Records, StoreError> {
        if let Some(records) = self.inner.records.get() {
            return Ok(records);
        }
        let opened = Records::open(&self.inner.meta.join(RECORDS_FILE))?;
        Ok(self.inner.records.get_or_init(|| opened))
    }

    /// Notes a use of result `id`; the record is an aid, so a failure to
    /// write it never fails the operation (reconcile repairs it).
    fn note_use(&self, id: &str) {
        if let Err(e) = crate::uses::note(&self.inner.meta.join(RECORDS_FILE), id, crate::records::now_ns()) {
            warn!(id, "cannot record the use of a result: {e}");
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// A directory for the users' own state (e.g. a database).
    pub fn state_dir(&self) -> PathBuf {
        self.inner.root.join(STATE_DIR)
    }

    /// The name of the backend, as in the config.
    pub fn backend_name(&self) -> &str {
        &self.inner.backend_name
    }

    /// The backend's primitives, which take none of the host's locks: for
    /// the host only.
    pub(crate) fn backend(&self) -> &dyn SnapshotBackend {
        self.inner.backend.as_ref()
    }

    /// Checks the backend's prerequisites; returns what it found.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        self.backend().check()
    }

    pub(crate) fn lock_dir(&self, kind: LockKind) -> PathBuf {
        layout::locks_dir(&self.inner.meta).join(kind.dir())
    }

    pub(crate) fn lock_path(&self, kind: LockKind, name: &str) -> PathBuf {
        layout::lock_path(&self.inner.meta, kind, name)
    }

    /// Waits until space freed by deletes so far is really free.
    pub fn complete_deletes(&self) -> Result<(), StoreError> {
        self.recover()?;
        self.backend().complete_deletes()
    }

    /// Free space of the store's filesystem or pool, in percent.
    pub fn df(&self) -> Result<f64, StoreError> {
        self.backend().free_percent()
    }
}
