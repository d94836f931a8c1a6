// A minimal directory backend for the examples in the documentation of
// `SnapshotBackend`: its doctests include this file. It is not part of the
// library and not a model to copy (see `examples/copy-backend` for that):
// it copies with `cp -a` and keeps removed trees in `ROOT/trash` only for
// the length of one call.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use store_api::util::{self, mounts};
use store_api::{IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

/// Each key `NS/NAME` is the directory `ROOT/NS/NAME`.
pub struct ExampleBackend {
    root: PathBuf,
}

impl ExampleBackend {
    /// A backend on a fresh root in the temporary directory, removed on drop.
    pub fn scratch() -> Self {
        let root = std::env::temp_dir().join(format!("snapstore-doc-{}", util::random_token()));
        for dir in Namespace::ALL.iter().map(|ns| ns.as_str()).chain(["trash"]) {
            fs::create_dir_all(root.join(dir)).expect("cannot create the example store");
        }
        Self { root }
    }

    fn path_of(&self, key: &Key) -> PathBuf {
        self.root.join(key.to_string())
    }
}

impl Drop for ExampleBackend {
    fn drop(&mut self) {
        let _ = mounts::detach_mounts_under(&self.root);
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `rename(2)` that never replaces `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(io::Error::from)
}

impl SnapshotBackend for ExampleBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let path = self.path_of(key);
        util::create_owned_dir(&path, owner)?;
        Ok(path)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.path_of(src), self.path_of(dst));
        if !from.is_dir() {
            return Err(StoreError::not_found(format!("cannot clone `{src}`: it does not exist")));
        }
        if to.exists() {
            return Err(StoreError::already_exists(format!("cannot clone to `{dst}`: it exists")));
        }
        let status = Command::new("cp")
            .args(["-a", "--one-file-system", "--no-target-directory"])
            .arg(&from)
            .arg(&to)
            .status()
            .context(format_args!("cannot run cp for `{src}`"))?;
        if !status.success() {
            return Err(StoreError::other(format!("cannot clone `{src}`: cp exited with {status}")));
        }
        Ok(to)
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let (from, to) = (self.path_of(tmp), self.path_of(dst));
        mounts::detach_mounts_under(&from).context(format_args!("cannot commit `{tmp}`"))?;
        rename_no_replace(&from, &to).context(format_args!("cannot commit `{tmp}` as `{dst}`"))?;
        Ok(to)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.path_of(key);
        if !path.exists() {
            return Ok(());
        }
        mounts::detach_mounts_under(&path)?;
        let trashed = self.root.join("trash").join(util::random_token());
        match rename_no_replace(&path, &trashed) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other.context(format_args!("cannot remove `{key}`"))?,
        }
        fs::remove_dir_all(&trashed).context(format_args!("cannot delete {}", trashed.display()))
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let path = self.path_of(key);
        Ok(path.is_dir().then_some(path))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        util::list_key_names(&self.root.join(namespace.as_str()))
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        util::free_percent(&self.root)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        Ok(vec![format!("store root {} is a directory", self.root.display())])
    }
}
