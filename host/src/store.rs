//! The store contract, implemented once on top of any backend's primitives:
//! names, locks, cache generations, leases and recovery.
//!
//! Bookkeeping lives in `ROOT/.snapstore/`:
//!
//! * `store.toml` — which backend created the store;
//! * `locks/build/<id>` — held exclusively while `<id>` is built or deleted,
//!   shared while it is cloned or committed against as a base;
//! * `locks/cache/<escaped>` — held while a cache is acquired, released or deleted;
//! * `locks/tmp/<token>` — held by the live owner of a temporary tree;
//! * `locks/use/<id>` — held shared by every build on base `<id>`, from
//!   clone to commit, so that `prune` never takes a base in use;
//! * `locks/lease/<lease>` — held by the process a bound lease belongs to;
//! * `leases/<lease>.json` — one record per cache copy handed out;
//! * `generation` — the last cache generation number given out;
//! * `results.sqlite` — when each result was created and last used (see `records`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store_api::{ErrorKind, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::fault;
use crate::loader::{Plugin, PluginInfo};
use crate::lock::{FileLock, Mode};
use crate::names::{check_cache_name, check_id, escape_cache_name, is_hashed, unescape_cache_name};
use crate::records::{Records, ResultRecord};

/// The host's bookkeeping directory under the root.
pub const META_DIR: &str = ".snapstore";
/// The users' state directory under the root.
pub const STATE_DIR: &str = "state";
const MARKER: &str = "store.toml";
const FORMAT: u32 = 1;

/// The store, with blocking methods. Cheap to clone; safe to share between
/// threads and with other processes using the same root.
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
    records: std::sync::OnceLock<Records>,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    backend: String,
    format: u32,
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
    _holder: Option<FileLock>,
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

/// What a recovery pass removed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Recovered {
    pub temporary_trees: usize,
    pub abandoned_leases: usize,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub use store_api::util::random_token;

fn key(namespace: Namespace, name: &str) -> Result<Key, StoreError> {
    Key::new(namespace, name)
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename).
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", random_token()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(format_args!("cannot write {}", path.display()))
}

impl BlockingStore {
    /// Loads the plugin the config names and opens the store at its root.
    pub fn open(config: &Config) -> Result<BlockingStore, StoreError> {
        let plugin = Plugin::for_config(config)?;
        crate::root::validate(&config.root)?;
        // The marker is checked before the plugin touches the root, and
        // written only once the plugin has accepted it.
        check_marker(&config.root, &plugin.info.name)?;
        let backend = plugin.open(&config.root, &config.backend_options).map_err(|e| {
            let file = config.file.display();
            if e.kind() == ErrorKind::INVALID_INPUT {
                e.context(file)
            } else {
                e
            }
        })?;
        prepare_root(&config.root, &plugin.info.name)?;
        Ok(Self::assemble(&config.root, &plugin.info.name.clone(), Some(plugin.info), Box::new(backend)))
    }

    /// Opens a store on a backend object, e.g. one linked into the program.
    pub fn with_backend(
        root: &Path,
        backend_name: &str,
        backend: Box<dyn SnapshotBackend>,
    ) -> Result<BlockingStore, StoreError> {
        crate::root::validate(root)?;
        prepare_root(root, backend_name)?;
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
            records: std::sync::OnceLock::new(),
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
        let opened = Records::open(&self.inner.meta.join("results.sqlite"))?;
        Ok(self.inner.records.get_or_init(|| opened))
    }

    /// Notes a use of result `id`; the record is an aid, so a failure to
    /// write it never fails the operation (reconcile repairs it).
    fn note_use(&self, id: &str) {
        if let Err(e) = self.records().and_then(|r| r.used(id)) {
            warn!(id, "cannot record the use of a result: {e}");
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn state_dir(&self) -> PathBuf {
        self.inner.root.join(STATE_DIR)
    }

    pub fn backend_name(&self) -> &str {
        &self.inner.backend_name
    }

    pub fn backend(&self) -> &dyn SnapshotBackend {
        self.inner.backend.as_ref()
    }

    pub(crate) fn lock_path(&self, kind: &str, name: &str) -> PathBuf {
        self.inner.meta.join("locks").join(kind).join(name)
    }

    fn lease_path(&self, lease: &str) -> PathBuf {
        self.inner.meta.join("leases").join(format!("{lease}.json"))
    }

    // ----- results -----

    /// The path of result `id` if it is committed.
    pub fn result(&self, id: &str) -> Result<Option<PathBuf>, StoreError> {
        check_id(id)?;
        let path = self.backend().path(&key(Namespace::Result, id)?)?;
        if path.is_some() {
            self.note_use(id);
        }
        Ok(path)
    }

    /// Starts building `id`, on a clone of `base` or on an empty tree. The
    /// returned [`Build`] is committed with [`Build::commit`]; dropping it
    /// discards the tree.
    pub fn begin_build(&self, base: Option<&str>, id: &str) -> Result<Build, StoreError> {
        check_id(id)?;
        if let Some(base) = base {
            check_id(base).map_err(|e| e.context("base"))?;
        }
        self.recover_temporary(Namespace::ResultTmp)?;
        let id_lock = FileLock::acquire(&self.lock_path("build", id), Mode::Exclusive)?;
        let result_key = key(Namespace::Result, id)?;
        if self.backend().path(&result_key)?.is_some() {
            return Err(StoreError::already_exists(format!(
                "result `{id}` already exists; delete it first to build it again"
            )));
        }
        if let Some(base) = base {
            // Fails fast, before any lock file is made for a missing base.
            if self.backend().path(&key(Namespace::Result, base)?)?.is_none() {
                id_lock.release_and_remove();
                return Err(StoreError::not_found(format!("base `{base}` does not exist")));
            }
        }
        // Held until commit or abort: prune leaves a base in use alone.
        let using = match base {
            Some(base) => Some(FileLock::acquire(&self.lock_path("use", base), Mode::Shared)?),
            None => None,
        };
        let token = random_token();
        let tmp_lock = FileLock::acquire(&self.lock_path("tmp", &token), Mode::Exclusive)?;
        let tmp = key(Namespace::ResultTmp, &token)?;
        let made = match base {
            None => self.backend().create(&tmp, None),
            Some(base) => self.clone_base(base, &tmp),
        };
        let path = match made {
            Ok(path) => path,
            Err(err) => {
                let _ = self.backend().remove(&tmp);
                tmp_lock.release_and_remove();
                id_lock.release_and_remove();
                return Err(err);
            }
        };
        fault::point("build:cloned");
        debug!(id, ?base, tmp = %tmp, "build started");
        Ok(Build {
            store: self.clone(),
            id: id.to_string(),
            base: base.map(str::to_string),
            tmp,
            path,
            locks: Some((id_lock, tmp_lock)),
            _using: using,
        })
    }

    fn clone_base(&self, base: &str, tmp: &Key) -> Result<PathBuf, StoreError> {
        let _using = self.use_base(base)?;
        // A base deleted since the caller's check: the backend says NOT_FOUND.
        self.backend().clone_tree(&key(Namespace::Result, base)?, tmp).map_err(|e| match e.kind() {
            ErrorKind::NOT_FOUND => StoreError::not_found(format!("base `{base}` does not exist")),
            _ => e,
        })
    }

    /// Takes a shared lock on `base`, so that it is not deleted while it is
    /// cloned or committed against. Never waits on a build of `base` (which
    /// could wait on us in turn): a base being built does not exist yet.
    fn use_base(&self, base: &str) -> Result<FileLock, StoreError> {
        let path = self.lock_path("build", base);
        loop {
            if let Some(lock) = FileLock::try_acquire(&path, Mode::Shared)? {
                return Ok(lock);
            }
            if self.backend().path(&key(Namespace::Result, base)?)?.is_none() {
                return Err(StoreError::not_found(format!("base `{base}` does not exist")));
            }
            // It exists and is being deleted: wait for the delete to finish.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Builds `id` with `f`, which gets the writable tree: committed if `f`
    /// succeeds, discarded if it fails. The outer error is the store's.
    pub fn build<E>(
        &self,
        base: Option<&str>,
        id: &str,
        f: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Result<PathBuf, E>, StoreError> {
        let build = self.begin_build(base, id)?;
        match f(build.path()) {
            Ok(()) => build.commit().map(Ok),
            Err(err) => {
                build.abort()?;
                Ok(Err(err))
            }
        }
    }

    /// Deletes result `id` if present. Results built on it are unaffected.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        check_id(id)?;
        let lock = FileLock::acquire(&self.lock_path("build", id), Mode::Exclusive)?;
        self.remove_result(id, lock)
    }

    /// Removes result `id`, whose build lock the caller holds.
    pub(crate) fn remove_result(&self, id: &str, lock: FileLock) -> Result<(), StoreError> {
        self.backend().remove(&key(Namespace::Result, id)?)?;
        fault::point("delete:removed");
        if let Err(e) = self.records().and_then(|r| r.deleted(id)) {
            warn!(id, "cannot drop the record of a deleted result: {e}");
        }
        if let Some(unused) = FileLock::try_acquire(&self.lock_path("use", id), Mode::Exclusive)? {
            unused.release_and_remove();
        }
        lock.release_and_remove();
        info!(id, "deleted");
        Ok(())
    }

    /// Brings the result record in line with what the backend holds.
    pub fn reconcile_records(&self) -> Result<(), StoreError> {
        let present = self.backend().list(Namespace::Result)?;
        let (adopted, dropped) = self.records()?.reconcile(&present)?;
        if adopted + dropped > 0 {
            info!(adopted, dropped, "result record reconciled");
        }
        Ok(())
    }

    // ----- caches -----

    /// Takes a writable copy of cache `name`, creating the cache as an empty
    /// directory owned by `owner` if it does not exist. A bound lease is
    /// discarded automatically once this process is gone; an unbound one
    /// lives until [`release`](Self::release)d.
    pub fn acquire(&self, name: &str, owner: Option<Owner>, bound: bool) -> Result<Lease, StoreError> {
        check_cache_name(name)?;
        self.recover_temporary(Namespace::CacheTmp)?;
        self.recover_leases()?;
        let escaped = escape_cache_name(name);
        let _cache_lock = FileLock::acquire(&self.lock_path("cache", &escaped), Mode::Exclusive)?;
        self.check_hashed_name(name, &escaped)?;
        let generation = match self.latest_generation(&escaped)? {
            Some(generation) => generation,
            None => self.create_cache(&escaped, owner)?,
        };
        fault::point("acquire:created");
        let lease = random_token();
        let holder = if bound {
            Some(FileLock::acquire(&self.lock_path("lease", &lease), Mode::Exclusive)?)
        } else {
            None
        };
        let record =
            LeaseRecord { lease: lease.clone(), cache: name.to_string(), generation, created: now(), bound };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::other(e.to_string()))?;
        // The record comes first: a tree in cache-tmp without one is stale.
        let copied = write_atomic(&self.lease_path(&lease), &json).and_then(|()| {
            fault::point("acquire:recorded");
            let snapshot = key(Namespace::Cache, &format!("{escaped}.{generation}"))?;
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

    /// Removes what marks lease `lease` as handed out: its record and, for a
    /// bound lease, its lock file.
    fn forget_lease(&self, lease: &str) -> Result<(), StoreError> {
        let _ = fs::remove_file(self.lock_path("lease", lease));
        match fs::remove_file(self.lease_path(lease)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::io("cannot remove lease record", &e))
            }
            _ => Ok(()),
        }
    }

    /// Creates cache `escaped` as an empty, committed snapshot.
    fn create_cache(&self, escaped: &str, owner: Option<Owner>) -> Result<u64, StoreError> {
        let token = random_token();
        let tmp_lock = FileLock::acquire(&self.lock_path("tmp", &token), Mode::Exclusive)?;
        let tmp = key(Namespace::CacheTmp, &token)?;
        let generation = self.next_generation()?;
        let snapshot = key(Namespace::Cache, &format!("{escaped}.{generation}"))?;
        let made =
            self.backend().create(&tmp, owner).and_then(|_| self.backend().commit(&tmp, &snapshot, None));
        if made.is_err() {
            let _ = self.backend().remove(&tmp);
        }
        tmp_lock.release_and_remove();
        made.map(|_| generation)
    }

    /// Releases a copy: publishes it if the cache is still at the generation
    /// it was taken from, else discards it.
    pub fn release(&self, lease: Lease) -> Result<Released, StoreError> {
        let released = self.release_id(&lease.id, false)?;
        drop(lease);
        Ok(released)
    }

    /// Releases (or, with `discard`, drops) the copy of lease `lease`.
    pub fn release_id(&self, lease: &str, discard: bool) -> Result<Released, StoreError> {
        if lease.len() != 16 || !lease.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::invalid(format!(
                "invalid lease `{}`: a lease is the 16 hex digits printed by `cache acquire`",
                lease.escape_debug()
            )));
        }
        let record = self.read_lease(lease)?;
        let escaped = escape_cache_name(&record.cache);
        let _cache_lock = FileLock::acquire(&self.lock_path("cache", &escaped), Mode::Exclusive)?;
        let copy = key(Namespace::CacheTmp, lease)?;
        if let Some(path) = self.backend().path(&copy)? {
            crate::supervise::detach_mounts(&path)?;
        }
        let latest = self.latest_generation(&escaped)?;
        let publish = !discard && latest == Some(record.generation) && self.backend().path(&copy)?.is_some();
        let released = if publish {
            let generation = self.next_generation()?;
            let snapshot = key(Namespace::Cache, &format!("{escaped}.{generation}"))?;
            if let Err(err) = self.backend().commit(&copy, &snapshot, None) {
                // The copy could not be published (e.g. disk full): it is
                // discarded, and the cache keeps its previous snapshot.
                let _ = self.backend().remove(&copy);
                let _ = self.forget_lease(lease);
                return Err(err.context(format_args!("cache `{}` keeps its previous state", record.cache)));
            }
            fault::point("release:published");
            // The snapshot the copy was taken from is now the only older one;
            // if it cannot go now, the next acquire or release of the cache does.
            crate::leftovers::remove_old_generation(|| self.remove_generation(&escaped, record.generation));
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

    fn read_lease(&self, lease: &str) -> Result<LeaseRecord, StoreError> {
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

    /// Deletes cache `name`. Copies in use are discarded when released.
    pub fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        check_cache_name(name)?;
        let escaped = escape_cache_name(name);
        let cache_lock = FileLock::acquire(&self.lock_path("cache", &escaped), Mode::Exclusive)?;
        self.check_hashed_name(name, &escaped)?;
        for generation in self.generations(&escaped)? {
            self.remove_generation(&escaped, generation)?;
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

    fn cache_display_name(&self, escaped: &str) -> String {
        match unescape_cache_name(escaped) {
            Some(name) => name,
            None => fs::read(self.inner.meta.join("cache-names").join(escaped))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| escaped.to_string()),
        }
    }

    /// The snapshot generations of cache `escaped`, in ascending order.
    fn generations(&self, escaped: &str) -> Result<Vec<u64>, StoreError> {
        let mut generations: Vec<u64> = self
            .backend()
            .list(Namespace::Cache)?
            .iter()
            .filter_map(|n| n.rsplit_once('.'))
            .filter(|(e, _)| *e == escaped)
            .filter_map(|(_, g)| g.parse().ok())
            .collect();
        generations.sort_unstable();
        Ok(generations)
    }

    /// The latest snapshot of a cache; older ones (left by a crash between
    /// publishing and cleaning up) are removed on the way.
    fn latest_generation(&self, escaped: &str) -> Result<Option<u64>, StoreError> {
        let mut generations = self.generations(escaped)?;
        let latest = generations.pop();
        for older in generations {
            self.remove_generation(escaped, older)?;
        }
        Ok(latest)
    }

    fn remove_generation(&self, escaped: &str, generation: u64) -> Result<(), StoreError> {
        self.backend().remove(&key(Namespace::Cache, &format!("{escaped}.{generation}"))?)
    }

    /// A store-wide counter, so that a generation is never reused, even by
    /// a cache deleted and created again.
    fn next_generation(&self) -> Result<u64, StoreError> {
        let _lock = FileLock::acquire(&self.lock_path("", "generation"), Mode::Exclusive)?;
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

    // ----- recovery -----

    /// Removes temporary trees whose owner is gone: build trees whose tmp
    /// lock is free, cache copies of bound leases whose holder died, and
    /// cache trees nobody holds. Live trees are never touched: their lock
    /// is held.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        self.backend().recover()?;
        let mut recovered = Recovered {
            temporary_trees: self.recover_temporary(Namespace::ResultTmp)?,
            ..Default::default()
        };
        recovered.temporary_trees += self.recover_temporary(Namespace::CacheTmp)?;
        recovered.abandoned_leases = self.recover_leases()?;
        // Lock files of tmp trees whose owner died before making the tree.
        let dir = self.inner.meta.join("locks").join("tmp");
        for entry in fs::read_dir(&dir).context("cannot read tmp locks")?.flatten() {
            if let Some(lock) = FileLock::try_acquire(&entry.path(), Mode::Exclusive)? {
                lock.release_and_remove();
            }
        }
        crate::leftovers::remove_stale_lock_files(&self.inner.meta)?;
        Ok(recovered)
    }

    /// Discards the copies of bound leases whose process is gone.
    fn recover_leases(&self) -> Result<usize, StoreError> {
        let mut discarded = 0;
        for lease in self.lease_ids()? {
            let Ok(record) = self.read_lease(&lease) else {
                continue;
            };
            if !record.bound {
                continue;
            }
            let Some(_dead) = FileLock::try_acquire(&self.lock_path("lease", &lease), Mode::Exclusive)?
            else {
                continue;
            };
            warn!(lease, cache = record.cache, "discarding the cache copy of a dead process");
            let copy = key(Namespace::CacheTmp, &lease)?;
            if !crate::supervise::end_leftovers(&copy, self.backend().path(&copy)?.as_deref())? {
                continue;
            }
            match self.release_id(&lease, true) {
                Ok(_) => discarded += 1,
                // Another process recovered it first.
                Err(e) if e.kind() == ErrorKind::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(discarded)
    }

    fn recover_temporary(&self, namespace: Namespace) -> Result<usize, StoreError> {
        let mut removed = 0;
        for name in self.backend().list(namespace)? {
            let tree = key(namespace, &name)?;
            if namespace == Namespace::CacheTmp && self.lease_path(&name).exists() {
                // A leased copy: its lease decides (see `recover`).
                continue;
            }
            if let Some(lock) = FileLock::try_acquire(&self.lock_path("tmp", &name), Mode::Exclusive)? {
                // Committed (or removed) between the listing and the lock.
                let Some(path) = self.backend().path(&tree)? else {
                    lock.release_and_remove();
                    continue;
                };
                warn!(tree = %tree, "removing a temporary tree left by a dead process");
                if !crate::supervise::end_leftovers(&tree, Some(&path))? {
                    continue;
                }
                self.backend().remove(&tree)?;
                lock.release_and_remove();
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lease_ids(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.inner.meta.join("leases");
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .context(format_args!("cannot read {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    // ----- the rest -----

    /// Results, caches and leases.
    pub fn list(&self) -> Result<Listing, StoreError> {
        self.reconcile_records()?;
        let mut results = Vec::new();
        for ResultRecord { id, base, created, last_used, children } in self.records()?.all()? {
            // Skips a result deleted since the reconciliation.
            if let Some(path) = self.backend().path(&key(Namespace::Result, &id)?)? {
                let seconds = |ns: i64| ns as f64 / 1e9;
                let (created, last_used) = (seconds(created), seconds(last_used));
                results.push(ResultInfo { id, path, base, created, last_used, children });
            }
        }
        let mut latest: std::collections::BTreeMap<String, u64> = Default::default();
        for name in self.backend().list(Namespace::Cache)? {
            if let Some((escaped, generation)) = name.rsplit_once('.') {
                if let Ok(generation) = generation.parse::<u64>() {
                    let entry = latest.entry(escaped.to_string()).or_insert(generation);
                    *entry = (*entry).max(generation);
                }
            }
        }
        let caches = latest
            .into_iter()
            .map(|(escaped, generation)| {
                let snapshot = key(Namespace::Cache, &format!("{escaped}.{generation}"))?;
                let path = self.backend().path(&snapshot)?;
                Ok(CacheInfo { name: self.cache_display_name(&escaped), generation, path })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut leases = Vec::new();
        for lease in self.lease_ids()? {
            let Ok(record) = self.read_lease(&lease) else {
                continue;
            };
            let path = self.backend().path(&key(Namespace::CacheTmp, &lease)?)?;
            let age_seconds = now().saturating_sub(record.created);
            leases.push(LeaseInfo { record, age_seconds, path });
        }
        Ok(Listing { results, caches, leases })
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

/// Creates the root and the host's directories, and checks (or writes) the
/// marker that records which backend the store belongs to.
fn prepare_root(root: &Path, backend: &str) -> Result<(), StoreError> {
    let meta = root.join(META_DIR);
    for dir in
        ["locks/build", "locks/use", "locks/cache", "locks/tmp", "locks/lease", "leases", "cache-names"]
    {
        let dir = meta.join(dir);
        fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
    }
    let state = root.join(STATE_DIR);
    fs::create_dir_all(&state).context(format_args!("cannot create {}", state.display()))?;
    let marker = meta.join(MARKER);
    if !check_marker(root, backend)? {
        let text = toml::to_string(&Marker { backend: backend.to_string(), format: FORMAT })
            .map_err(|e| StoreError::other(e.to_string()))?;
        // Written aside and hard-linked into place: of two processes
        // creating the store at once, exactly one marker wins.
        let staged = meta.join(format!("store.toml.{}", random_token()));
        write_atomic(&staged, text.as_bytes())?;
        let linked = fs::hard_link(&staged, &marker);
        let _ = fs::remove_file(&staged);
        match linked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("cannot write store marker", &e)),
        }
        check_marker(root, backend)?;
    }
    Ok(())
}

/// Checks that the store at `root`, if it has a marker, belongs to
/// `backend`. Returns whether there is a marker.
fn check_marker(root: &Path, backend: &str) -> Result<bool, StoreError> {
    let marker = root.join(META_DIR).join(MARKER);
    if !marker.exists() {
        return Ok(false);
    }
    let text = fs::read_to_string(&marker).context(format_args!("cannot read {}", marker.display()))?;
    let found: Marker = toml::from_str(&text).map_err(|e| {
        StoreError::other(format!("corrupt store marker {}: {}", marker.display(), e.message()))
    })?;
    if found.backend != backend {
        return Err(StoreError::invalid(format!(
            "store {} was created by backend `{}`, but the config selects `{backend}`; \
             set backend = \"{}\" or point root at another directory",
            root.display(),
            found.backend,
            found.backend
        )));
    }
    if found.format != FORMAT {
        return Err(StoreError::new(
            ErrorKind::INCOMPATIBLE,
            format!(
                "store {} has format {}; this snapstore reads format {FORMAT}",
                root.display(),
                found.format
            ),
        ));
    }
    Ok(true)
}

/// A build in progress: a writable tree that becomes result `id` on
/// [`commit`](Self::commit). Dropped without committing, it is discarded.
pub struct Build {
    store: BlockingStore,
    id: String,
    base: Option<String>,
    tmp: Key,
    path: PathBuf,
    locks: Option<(FileLock, FileLock)>,
    _using: Option<FileLock>,
}

impl Build {
    /// The writable tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of the writable tree (what recovery knows it by).
    pub fn tree(&self) -> &Key {
        &self.tmp
    }

    /// Saves the tree as result `id`; returns its path.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let store = self.store.clone();
        fault::point("build:before-commit");
        crate::supervise::detach_mounts(&self.path)?;
        let result = key(Namespace::Result, &self.id)?;
        let committed = match &self.base {
            Some(base) => {
                // The base may have been deleted meanwhile; then there is
                // nothing to share storage with.
                let using = store.use_base(base).ok();
                let parent = key(Namespace::Result, base)?;
                let parent = using.as_ref().map(|_| &parent);
                store.backend().commit(&self.tmp, &result, parent)
            }
            None => store.backend().commit(&self.tmp, &result, None),
        };
        match committed {
            Ok(path) => {
                fault::point("build:committed");
                if let Err(e) = store.records().and_then(|r| r.committed(&self.id, self.base.as_deref())) {
                    warn!(id = self.id, "cannot record the new result: {e}");
                }
                if let Some((_id_lock, tmp_lock)) = self.locks.take() {
                    tmp_lock.release_and_remove();
                }
                info!(id = self.id, "committed");
                Ok(path)
            }
            Err(err) => {
                self.discard();
                Err(err.context(format_args!("cannot commit result `{}`", self.id)))
            }
        }
    }

    /// Discards the tree; nothing is recorded.
    pub fn abort(mut self) -> Result<(), StoreError> {
        self.discard_checked()
    }

    fn discard(&mut self) {
        if let Err(err) = self.discard_checked() {
            warn!(id = self.id, "cannot discard build tree (a later operation will): {err}");
        }
    }

    fn discard_checked(&mut self) -> Result<(), StoreError> {
        let Some((id_lock, tmp_lock)) = self.locks.take() else {
            return Ok(());
        };
        let removed = self.store.backend().remove(&self.tmp);
        if removed.is_ok() {
            tmp_lock.release_and_remove();
        }
        id_lock.release_and_remove();
        debug!(id = self.id, "build discarded");
        removed
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        self.discard();
    }
}
