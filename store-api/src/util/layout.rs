//! The directory layout shared by directory backends: a key `NS/NAME` is
//! the directory `ROOT/NS/NAME`, and a backend may keep directories of its
//! own beside the namespaces (e.g. `ROOT/trash`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::{IoContext, Key, Namespace, Owner, StoreError};

/// Keys as directories under a store root.
#[derive(Clone, Debug)]
pub struct DirLayout {
    root: PathBuf,
}

impl DirLayout {
    /// The layout under `root`; nothing is created or checked.
    pub fn new(root: &Path) -> DirLayout {
        DirLayout { root: root.to_path_buf() }
    }

    /// Creates (if missing) the root, one directory per namespace, and the
    /// backend's own directories `extra` (e.g. `["trash"]`).
    pub fn create_dirs(&self, extra: &[&str]) -> Result<(), StoreError> {
        for dir in Namespace::ALL.iter().map(|ns| ns.as_str()).chain(extra.iter().copied()) {
            let path = self.root.join(dir);
            fs::create_dir_all(&path).context(format_args!("cannot create {}", path.display()))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/NAME`: a directory of the backend's own, e.g. its trash.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The directory of `key`, `ROOT/NS/NAME`, whether it exists or not.
    /// Keys are validated (no `/`, no leading `.`), so joining is safe.
    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.namespace_dir(key.namespace()).join(key.name())
    }

    /// The directory holding the keys of `namespace`.
    pub fn namespace_dir(&self, namespace: Namespace) -> PathBuf {
        self.root.join(namespace.as_str())
    }

    /// The directory of `key` if it exists (as a directory, not through a
    /// symlink).
    pub fn existing(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.path_of(key);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(Some(path)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format_args!("cannot stat {}", path.display()), &e)),
        }
    }

    /// Creates the empty directory of `key`, mode 0755, owned by `owner`
    /// (see [`super::create_owned_dir`]), and returns its path.
    pub fn create_key_dir(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let path = self.path_of(key);
        super::create_owned_dir(&path, owner)?;
        Ok(path)
    }

    /// The key names in `namespace` (see [`super::list_key_names`]).
    pub fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        super::list_key_names(&self.root.join(namespace.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_directories_under_their_namespace() {
        let root = std::env::temp_dir().join(crate::util::unique_name("snapstore-layout"));
        let layout = DirLayout::new(&root);
        layout.create_dirs(&["trash"]).unwrap();
        assert!(layout.dir("trash").is_dir() && root.join("result-tmp").is_dir());
        let key = Key::parse("result-tmp/a").unwrap();
        assert_eq!(layout.path_of(&key), root.join("result-tmp/a"));
        assert_eq!(layout.existing(&key).unwrap(), None);
        let made = layout.create_key_dir(&key, None).unwrap();
        assert_eq!(layout.existing(&key).unwrap(), Some(made));
        fs::create_dir(root.join("result-tmp/.hidden")).unwrap();
        assert_eq!(layout.list(Namespace::ResultTmp).unwrap(), ["a"]);
        assert_eq!(layout.create_key_dir(&key, None).unwrap_err().kind(), crate::ErrorKind::ALREADY_EXISTS);
        fs::remove_dir_all(&root).unwrap();
    }
}
