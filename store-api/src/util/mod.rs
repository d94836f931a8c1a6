//! The plumbing backends share, so that each one holds only its own
//! primitives:
//!
//! * [`remove_tree`]: the one removal every directory backend uses; it
//!   never deletes through a mount or a symlink, and copes with what a
//!   build leaves (read-only directories, `chattr +i`/`+a`, a concurrent
//!   deleter). See [`remove`] for the rules.
//! * [`DirLayout`]: a key `NS/NAME` as the directory `ROOT/NS/NAME`
//!   ([`DirLayout::path_of`]), listing a namespace, creating the namespace
//!   directories and a key's directory with its owner.
//! * [`FileLock`]: shared or exclusive `flock` on a lock file, waiting or
//!   not.
//! * [`unique_name`] / [`random_token`]: names unique across processes,
//!   for temporary trees and trash entries.
//! * [`trash`]: a trash entry that cannot be deleted is set aside and
//!   reported once, never blocking the others.
//! * [`mounts`]: the mounts under a tree.
//! * [`copy::copy_tree`]: the parallel tree copy (FICLONE or
//!   `copy_file_range`) that keeps every entry and its metadata.
//! * Errors: [`crate::StoreError::errno`] and [`crate::IoContext`] on
//!   `nix` and `rustix` results turn an errno into a classified error.

use std::fs;
use std::path::Path;

use crate::{IoContext, StoreError};

pub mod copy;
mod layout;
mod lock;
pub mod mounts;
pub mod remove;
pub mod trash;

/// How deep a tree the walks (copies, removals) go: deeper ones are
/// refused rather than risking the walker's stack.
const MAX_DEPTH: usize = 2000;

pub use layout::DirLayout;
pub use lock::{try_lock_open, FileLock, LockMode};
pub use remove::remove_tree;

/// The key names in directory `dir`: entries whose name is a valid key
/// name. Anything else (e.g. a backend's `.`-prefixed trees in transit) is
/// skipped.
pub fn list_key_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).context(format_args!("cannot list {}", dir.display()))? {
        let entry = entry.context(format_args!("cannot list {}", dir.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            if crate::key::check_name(&name).is_ok() {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Free space of the filesystem holding `path`, in percent: the space an
/// unprivileged user can still allocate (`f_bavail`), which on btrfs
/// matches "Free (estimated)" of `btrfs filesystem usage`.
pub fn free_percent(path: &Path) -> Result<f64, StoreError> {
    let stat = nix::sys::statvfs::statvfs(path)
        .map_err(std::io::Error::from)
        .context(format_args!("cannot statvfs {}", path.display()))?;
    if stat.blocks() == 0 {
        return Ok(0.0);
    }
    Ok(100.0 * stat.blocks_available() as f64 / stat.blocks() as f64)
}

/// Creates the empty directory `path`, mode 0755 whatever the umask, owned
/// by `owner` if given (else by the calling process): what
/// [`crate::SnapshotBackend::create`] promises, for directory backends.
pub fn create_owned_dir(path: &Path, owner: Option<crate::Owner>) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir(path).context(format_args!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .context(format_args!("cannot chmod {}", path.display()))?;
    if let Some(crate::Owner { uid, gid }) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .context(format_args!("cannot chown {} to {uid}:{gid}", path.display()))?;
    }
    Ok(())
}

/// `PREFIX-` and a [`random_token`]: a name unique across processes.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", random_token())
}

/// A random 16-hex-digit token, unique across processes: names for
/// temporary trees, trash entries and leases.
pub fn random_token() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Only if the kernel's random source is unavailable.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (nanos.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
