//! The host's files under the root: the directories it makes, the marker
//! that ties a root to one backend, lock paths and atomic writes.

use std::fs::{self, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use store_api::{ErrorKind, IoContext, StoreError};

/// The host's bookkeeping directory under the root.
pub const META_DIR: &str = ".snapstore";
/// The users' state directory under the root.
pub const STATE_DIR: &str = "state";
const MARKER: &str = "store.toml";
const FORMAT: u32 = 1;

/// What a lock under `.snapstore/locks/<kind>/<name>` guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// Result `<id>`: exclusive while it is built or deleted, shared while
    /// it is cloned or committed against as a base.
    Build,
    /// Result `<id>` as a base: shared by every build on it, from clone to
    /// commit, so that `prune` never takes a base in use.
    Use,
    /// Cache `<escaped>`: held while it is acquired, released or deleted.
    Cache,
    /// Temporary tree `<token>`: held by its live owner.
    Tmp,
    /// Bound lease `<lease>`: held by the process it belongs to.
    Lease,
}

impl LockKind {
    pub(crate) const ALL: [LockKind; 5] =
        [LockKind::Build, LockKind::Use, LockKind::Cache, LockKind::Tmp, LockKind::Lease];

    /// The directory under `.snapstore/locks/`.
    pub(crate) fn dir(self) -> &'static str {
        match self {
            LockKind::Build => "build",
            LockKind::Use => "use",
            LockKind::Cache => "cache",
            LockKind::Tmp => "tmp",
            LockKind::Lease => "lease",
        }
    }
}

/// The directory of lock files under `meta`.
pub(crate) fn locks_dir(meta: &Path) -> PathBuf {
    meta.join("locks")
}

/// The lock file of `name` of `kind` under `meta`.
pub(crate) fn lock_path(meta: &Path, kind: LockKind, name: &str) -> PathBuf {
    locks_dir(meta).join(kind.dir()).join(name)
}

/// The lock file of the store-wide generation counter.
pub(crate) fn generation_lock_path(meta: &Path) -> PathBuf {
    locks_dir(meta).join("generation")
}

#[derive(Serialize, Deserialize)]
struct Marker {
    backend: String,
    format: u32,
}

/// A file beside `path`, written and synced, ready to be moved into place:
/// `.NAME.tmp-XXXXXX` (see [`crate::leftovers`] for a killed writer's).
/// Created as `File::create` would (0666 less the umask).
fn staged(path: &Path, contents: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}{STAGED_MARK}"))
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    Ok(file)
}

/// What names a staged file: `.NAME.tmp-XXXXXX`.
pub(crate) const STAGED_MARK: &str = ".tmp-";

/// Writes `contents` to `path` atomically: readers see the old file or the
/// new one, never a part.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    staged(path, contents)
        .and_then(|file| file.persist(path).map(drop).map_err(|e| e.error))
        .context(format_args!("cannot write {}", path.display()))
}

/// Creates the root and the host's directories, and checks (or writes) the
/// marker that records which backend the store belongs to.
pub(crate) fn prepare_root(root: &Path, backend: &str) -> Result<(), StoreError> {
    let meta = root.join(META_DIR);
    let dirs = LockKind::ALL.map(|kind| locks_dir(&meta).join(kind.dir()));
    for dir in dirs.iter().cloned().chain(["leases", "cache-names"].map(|d| meta.join(d))) {
        fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
    }
    let state = root.join(STATE_DIR);
    fs::create_dir_all(&state).context(format_args!("cannot create {}", state.display()))?;
    if check_marker(root, backend)? {
        return Ok(());
    }
    let marker = meta.join(MARKER);
    let text = toml::to_string(&Marker { backend: backend.to_string(), format: FORMAT })
        .map_err(|e| StoreError::other(e.to_string()))?;
    // Moved into place only if absent: of two processes creating the store
    // at once, exactly one marker wins, and the other checks it.
    let placed = staged(&marker, text.as_bytes())
        .and_then(|file| file.persist_noclobber(&marker).map(drop).map_err(|e| e.error));
    match placed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_marker(root, backend).map(drop),
        Err(e) => Err(StoreError::io("cannot write store marker", &e)),
    }
}

/// Checks that the store at `root`, if it has a marker, belongs to
/// `backend`. Returns whether there is a marker.
pub(crate) fn check_marker(root: &Path, backend: &str) -> Result<bool, StoreError> {
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

/// Adds the fix to an error met in a store this user cannot write to
/// (e.g. one made by root, used by another user); other errors pass.
pub fn explain_unwritable(root: &Path, err: StoreError) -> StoreError {
    use std::os::unix::fs::MetadataExt;
    if !matches!(err.kind(), ErrorKind::PERMISSION | ErrorKind::IO) {
        return err;
    }
    // The store's own directory, or where it would be made.
    let meta = root.join(META_DIR);
    let Some(dir) = [meta.as_path(), root].into_iter().chain(root.ancestors().skip(1)).find(|p| p.exists())
    else {
        return err;
    };
    let writable = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK);
    if writable.is_ok() {
        return err;
    }
    let owner = fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
    let uid = nix::unistd::geteuid();
    let (shown, root_shown) = (dir.display(), root.display());
    let fix = if root.exists() {
        format!("run snapstore as its owner (uid {owner}), or give uid {uid} the store (chown -R {uid} {root_shown})")
    } else {
        format!("create the root for uid {uid} first (as root: mkdir -p {root_shown} && chown {uid} {root_shown})")
    };
    StoreError::new(
        ErrorKind::PERMISSION,
        format!("{}; {shown} is not writable by uid {uid}: {fix}", err.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_paths_name_one_file_per_kind() {
        let meta = Path::new("/r/.snapstore");
        assert_eq!(lock_path(meta, LockKind::Build, "a"), Path::new("/r/.snapstore/locks/build/a"));
        assert_eq!(lock_path(meta, LockKind::Use, "a"), Path::new("/r/.snapstore/locks/use/a"));
        assert_eq!(lock_path(meta, LockKind::Cache, "c"), Path::new("/r/.snapstore/locks/cache/c"));
        assert_eq!(lock_path(meta, LockKind::Tmp, "t"), Path::new("/r/.snapstore/locks/tmp/t"));
        assert_eq!(lock_path(meta, LockKind::Lease, "l"), Path::new("/r/.snapstore/locks/lease/l"));
        assert_eq!(generation_lock_path(meta), Path::new("/r/.snapstore/locks/generation"));
    }

    #[test]
    fn prepare_root_makes_every_lock_directory() {
        let dir = tempfile::tempdir().unwrap();
        prepare_root(dir.path(), "rsync").unwrap();
        let meta = dir.path().join(META_DIR);
        for kind in LockKind::ALL {
            assert!(lock_path(&meta, kind, "x").parent().unwrap().is_dir(), "{kind:?}");
        }
        assert!(dir.path().join(STATE_DIR).is_dir());
    }

    #[test]
    fn marker_ties_the_root_to_one_backend() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!check_marker(dir.path(), "rsync").unwrap());
        prepare_root(dir.path(), "rsync").unwrap();
        assert!(check_marker(dir.path(), "rsync").unwrap());
        prepare_root(dir.path(), "rsync").unwrap();
        let other = prepare_root(dir.path(), "btrfs").unwrap_err();
        assert_eq!(other.kind(), ErrorKind::INVALID_INPUT, "{other:?}");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // What a writer killed before the rename leaves, as recovery knows it.
        let left = staged(&path, b"three").unwrap().into_temp_path().keep().unwrap();
        let name = left.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!(".f{STAGED_MARK}")), "{name}");
    }
}
