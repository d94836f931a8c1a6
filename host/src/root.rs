//! Which directories may be a store's root.
//!
//! A store removes what it finds in its own directories, so its root must
//! be a directory snapstore made: a new or empty directory, or a store
//! (`ROOT/.snapstore/store.toml`). Refused: `/` and system directories, a
//! directory holding anything else, a root inside another store, and one
//! that contains a store.

use std::fs;
use std::path::{Component, Path, PathBuf};

use store_api::{ErrorKind, StoreError};

use crate::store::{META_DIR, STATE_DIR};

const MARKER: &str = "store.toml";

/// Directories that are never a store's root (as the root itself).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/spool",
    "/var/tmp",
];

/// What a store's root holds before the store is complete: the directories
/// the host and the backends lay out (all empty until the store exists),
/// and a fresh filesystem's `lost+found`.
const LAYOUT: &[&str] = &[
    META_DIR,
    STATE_DIR,
    "result",
    "result-tmp",
    "cache",
    "cache-tmp",
    "trash",
    "lost+found",
    // The overlayfs backend's layers.
    "layers",
];

fn refuse(message: String) -> StoreError {
    StoreError::new(ErrorKind::INVALID_INPUT, message)
}

/// Whether `dir` is a store: it holds the marker snapstore writes.
pub fn is_store(dir: &Path) -> bool {
    dir.join(META_DIR).join(MARKER).is_file()
}

/// Checks that `root` may be (or already is) a store's root.
pub fn validate(root: &Path) -> Result<(), StoreError> {
    let shown = root.display();
    let resolved = resolve(root)?;
    for path in [root, resolved.as_path()] {
        if SYSTEM_DIRS.iter().any(|dir| Path::new(dir) == path) {
            return Err(refuse(format!(
                "store root {} is a system directory; set root to a directory of its own, \
                 e.g. /var/lib/snapstore",
                path.display()
            )));
        }
    }
    if let Some(outer) = resolved.ancestors().skip(1).find(|dir| is_store(dir)) {
        return Err(refuse(format!(
            "store root {shown} is inside the store {}; set root to a directory outside it",
            outer.display()
        )));
    }
    let entries = match fs::read_dir(&resolved) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            return Err(refuse(format!("store root {shown} is not a directory; set root to a directory")));
        }
        Err(e) => return Err(StoreError::io(format_args!("cannot read the store root {shown}"), &e)),
    };
    if is_store(&resolved) {
        return Ok(());
    }
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format_args!("cannot read the store root {shown}"), &e))?;
        let path = entry.path();
        if is_store(&path) {
            return Err(refuse(format!(
                "store root {shown} contains the store {}; set root to that store or to an empty directory",
                path.display()
            )));
        }
        let name = entry.file_name();
        // The bookkeeping directory fills up before the marker is written.
        let laid_out = if name == META_DIR {
            fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
        } else {
            LAYOUT.iter().any(|l| name == *l) && is_empty_dir(&path)
        };
        if !laid_out {
            // Made a store meanwhile by another process's first use (which
            // writes the marker, then builds): what we listed is its work.
            if is_store(&resolved) {
                return Ok(());
            }
            return Err(refuse(format!(
                "store root {shown} is not empty and is not a snapstore store (it holds {:?}); \
                 set root to a new or empty directory",
                name
            )));
        }
    }
    Ok(())
}

/// `root` with symlinks resolved, as far as it exists.
fn resolve(root: &Path) -> Result<PathBuf, StoreError> {
    if !root.is_absolute() {
        return Err(refuse(format!("store root {} is not an absolute path", root.display())));
    }
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let mut resolved = fs::canonicalize(existing)
        .map_err(|e| StoreError::io(format_args!("cannot resolve {}", existing.display()), &e))?;
    for part in root.strip_prefix(existing).unwrap_or(Path::new("")).components() {
        match part {
            Component::Normal(name) => resolved.push(name),
            Component::CurDir => {}
            _ => {
                return Err(refuse(format!(
                    "store root {} has `..` after a missing directory; write the path without `..`",
                    root.display()
                )))
            }
        }
    }
    Ok(resolved)
}

fn is_empty_dir(path: &Path) -> bool {
    let meta = fs::symlink_metadata(path);
    meta.is_ok_and(|m| m.is_dir()) && fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}
