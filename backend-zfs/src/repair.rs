//! Listing keys from the mounts, and bringing the mounts back in line
//! with the datasets when they drifted (a crash between two steps, a
//! restarted ZFS daemon, a store made by an older version).

use std::fs;
use std::os::unix::fs::MetadataExt;

use store_api::{ErrorKind, IoContext, Key, Namespace, StoreError};

use crate::cmd::{zfs, zfs_rows};
use crate::mounts::{self, Seen};
use crate::names::{name_property, Dataset, HASH_PREFIX};
use crate::{ZfsBackend, REMOVED_PROPERTY};

impl ZfsBackend {
    /// The keys of `namespace`: the key names under its directory that are
    /// mounted datasets. `None` if something there needs `repair` first: a
    /// directory that is no mount, or a dataset of an older layout.
    pub(crate) fn list_mounted(&self, namespace: Namespace) -> Result<Option<Vec<String>>, StoreError> {
        let dir = self.namespace_path(namespace);
        let what = || format!("cannot list {}", dir.display());
        let dev = fs::symlink_metadata(&dir).context(what())?.dev();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).context(what())? {
            let entry = entry.context(what())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                // Removed meanwhile.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(StoreError::io(what(), &err)),
            };
            let mounted = meta.is_dir() && meta.dev() != dev;
            if store_api::key::check_name(&name).is_ok() {
                if !mounted {
                    return Ok(None);
                }
                names.push(name);
            } else if name.starts_with(HASH_PREFIX) {
                // A hashed name mounted under its hash: an older layout.
                return Ok(None);
            }
        }
        Ok(Some(names))
    }

    /// Makes every live dataset of the store mounted at its key's path
    /// (committed ones read-only), and nothing else: unmounts removed
    /// datasets, gives hashed names their mountpoint, removes directories
    /// that are no mounts. One `zfs list`, and a command per fix.
    pub(crate) fn repair(&self) -> Result<(), StoreError> {
        let columns: Vec<String> = ["name", "mountpoint", "mounted", REMOVED_PROPERTY]
            .into_iter()
            .map(String::from)
            .chain(Namespace::ALL.into_iter().map(name_property))
            .collect();
        let columns = columns.join(",");
        let args = ["list", "-H", "-o", &columns, "-t", "filesystem", "-r", "-d", "2", self.dataset.as_str()];
        let rows: Vec<[String; 8]> = zfs_rows(&args)?;
        for [name, mountpoint, mounted, removed, names @ ..] in &rows {
            let dataset = Dataset::listed(name);
            let Some(relative) = dataset.below(&self.dataset) else { continue };
            let (ns, component) = match relative.split_once('/') {
                Some((ns, component)) => (ns, Some(component)),
                None => (relative, None),
            };
            let Some(index) = Namespace::ALL.iter().position(|n| n.as_str() == ns) else { continue };
            let namespace = Namespace::ALL[index];
            let Some(component) = component else {
                // A namespace's own dataset.
                if mounted != "yes" {
                    self.mount(&dataset)?;
                }
                continue;
            };
            let key_name = if component.starts_with(HASH_PREFIX) { &names[index] } else { component };
            let Ok(key) = Key::new(namespace, key_name) else { continue };
            let path = self.key_path(&key);
            if removed == "yes" {
                if mounted == "yes" {
                    self.unmount(&dataset)?;
                }
                continue;
            }
            if *mountpoint != path.to_string_lossy() {
                // Unmounted by us first: `zfs` would unmount it without
                // waiting for its FUSE requests (see `fuse`).
                if mounted == "yes" {
                    self.unmount(&dataset)?;
                }
                if self.is_hashed(&key) {
                    zfs(&["set", &format!("mountpoint={}", path.display()), dataset.as_str()])?;
                } else {
                    zfs(&["inherit", "mountpoint", dataset.as_str()])?;
                }
            }
            // Mounts it if needed (committed ones read-only).
            self.mountpoint(&dataset)?;
            if namespace.is_committed() {
                // Best effort: a file open for writing keeps it writable.
                let _ = mounts::seal(&path);
            }
        }
        for namespace in Namespace::ALL {
            let dir = self.namespace_path(namespace);
            for entry in fs::read_dir(&dir).context(format!("cannot list {}", dir.display()))?.flatten() {
                if mounts::seen(&dir, &entry.path())? == Seen::Stray {
                    mounts::remove_stray(&dir, &entry.path());
                }
            }
        }
        Ok(())
    }

    /// `zfs mount`, fine if another process mounted it meanwhile.
    fn mount(&self, dataset: &Dataset) -> Result<(), StoreError> {
        match zfs(&["mount", dataset.as_str()]) {
            Err(err) if !err.message().contains("already mounted") && err.kind() != ErrorKind::BUSY => {
                Err(err)
            }
            _ => Ok(()),
        }
    }
}
