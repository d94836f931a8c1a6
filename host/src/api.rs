//! The async Rust API for build tools that embed snapstore, after
//! obuilder's `STORE` interface. Plugin calls run on tokio's blocking
//! threads; the build function runs on the caller's runtime.

use std::future::Future;
use std::path::{Path, PathBuf};

use store_api::{Owner, StoreError};

use crate::config::Config;
use crate::prune::{PruneOptions, PruneReport};
use crate::store::{BlockingStore, Lease, LeaseKind, Listing, Released};

/// A snapshot store. Cheap to clone.
///
/// ```
/// use snapstore::{BlockingStore, Owner, Released, Store, StoreError};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let root = dir.path().join("store");
/// // `Store::open(config)` loads the plugin a config names; here the
/// // rsync backend is linked into the program instead.
/// let backend = snapstore_rsync::open(&root, "")?;
/// let store = Store::from_blocking(BlockingStore::with_backend(&root, "rsync", Box::new(backend))?);
///
/// let path = store
///     .build(None, "step1", |dir| async move {
///         tokio::fs::write(dir.join("out"), "built").await.map_err(|e| StoreError::io("cannot write out", &e))
///     })
///     .await?;
/// assert_eq!(store.result("step1").await?, Some(path));
///
/// let owner = Owner { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() };
/// let (copy_path, copy) = store.acquire_cache("downloads", owner).await?;
/// std::fs::write(copy_path.join("file"), "kept")?;
/// assert_eq!(copy.release().await?, Released::Published);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: BlockingStore,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::other(format!("store task failed: {e}"))))
}

impl Store {
    /// Opens the store the config describes (see [`Config::discover`]).
    pub async fn open(config: Config) -> Result<Store, StoreError> {
        let inner = blocking(move || BlockingStore::open(&config)).await?;
        Ok(Store { inner })
    }

    /// Wraps a store opened with the blocking API.
    pub fn from_blocking(inner: BlockingStore) -> Store {
        Store { inner }
    }

    /// The blocking API of the same store.
    pub fn blocking(&self) -> &BlockingStore {
        &self.inner
    }

    /// Builds result `id`: a fresh writable tree (empty, or a clone of
    /// `base`) is passed to `f`; if `f` succeeds the tree becomes result
    /// `id`, if it fails (or the future is dropped) nothing is recorded.
    /// Store failures reach the caller through `E: From<StoreError>`.
    /// Returns the path of the new result.
    pub async fn build<E, F, Fut>(&self, base: Option<&str>, id: &str, f: F) -> Result<PathBuf, E>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: From<StoreError>,
    {
        let (store, base, id) = (self.inner.clone(), base.map(str::to_string), id.to_string());
        let build = blocking(move || store.begin_build(base.as_deref(), &id)).await?;
        match f(build.path().to_path_buf()).await {
            Ok(()) => Ok(blocking(move || build.commit()).await?),
            Err(err) => {
                blocking(move || build.abort()).await?;
                Err(err)
            }
        }
    }

    /// The path of result `id`, if it exists.
    pub async fn result(&self, id: &str) -> Result<Option<PathBuf>, StoreError> {
        let (store, id) = (self.inner.clone(), id.to_string());
        blocking(move || store.result(&id)).await
    }

    /// Deletes result `id` if present.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let (store, id) = (self.inner.clone(), id.to_string());
        blocking(move || store.delete(&id)).await
    }

    /// A writable copy of cache `name` (created empty, owned by `owner`, if
    /// new) and the handle that releases it. A copy dropped without
    /// [`CacheCopy::release`] is discarded by a later operation (it is
    /// bound to this process, see [`LeaseKind::BoundToProcess`]).
    pub async fn acquire_cache(&self, name: &str, owner: Owner) -> Result<(PathBuf, CacheCopy), StoreError> {
        let (store, name) = (self.inner.clone(), name.to_string());
        let lease =
            blocking(move || store.acquire_cache(&name, Some(owner), LeaseKind::BoundToProcess)).await?;
        Ok((lease.path.clone(), CacheCopy { store: self.inner.clone(), lease }))
    }

    /// Deletes cache `name`; copies in use are discarded when released.
    /// Errors of kind `BUSY` come from backends that cannot delete in use.
    pub async fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        let (store, name) = (self.inner.clone(), name.to_string());
        blocking(move || store.delete_cache(&name)).await
    }

    /// Returns once the space of everything deleted so far is free.
    pub async fn complete_deletes(&self) -> Result<(), StoreError> {
        let store = self.inner.clone();
        blocking(move || store.complete_deletes()).await
    }

    /// Free space, in percent.
    pub async fn df(&self) -> Result<f64, StoreError> {
        let store = self.inner.clone();
        blocking(move || store.df()).await
    }

    /// Results, caches and leases.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let store = self.inner.clone();
        blocking(move || store.list()).await
    }

    /// Deletes least-recently-used results nothing is built on, never a
    /// base in use, until `options` say stop.
    pub async fn prune(&self, options: PruneOptions) -> Result<PruneReport, StoreError> {
        let store = self.inner.clone();
        blocking(move || store.prune(&options, |_| ())).await
    }

    /// Exports result `id` as an OCI image (see [`BlockingStore::export`]).
    pub async fn export(
        &self,
        id: &str,
        image: &str,
        options: crate::ExportOptions,
    ) -> Result<crate::ExportReport, StoreError> {
        let (inner, id, image) = (self.inner.clone(), id.to_string(), image.to_string());
        blocking(move || inner.export(&id, &image, options)).await
    }

    /// Imports an OCI image as result `id` (see [`BlockingStore::import`]).
    pub async fn import(&self, id: &str, image: &str) -> Result<crate::ImportReport, StoreError> {
        let (inner, id, image) = (self.inner.clone(), id.to_string(), image.to_string());
        blocking(move || inner.import(&id, &image)).await
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// A directory for the users' own state (e.g. a database).
    pub fn state_dir(&self) -> PathBuf {
        self.inner.state_dir()
    }
}

/// A cache copy in use; see [`Store::acquire_cache`].
pub struct CacheCopy {
    store: BlockingStore,
    lease: Lease,
}

impl CacheCopy {
    /// The writable copy.
    pub fn path(&self) -> &Path {
        &self.lease.path
    }

    /// Publishes the copy as the cache's latest snapshot, or discards it if
    /// the cache changed since the copy was taken.
    pub async fn release(self) -> Result<Released, StoreError> {
        let CacheCopy { store, lease } = self;
        blocking(move || store.release(lease)).await
    }
}
