//! Small helpers most directory-based backends need.

use std::fs;
use std::path::Path;

use crate::{IoContext, StoreError};

/// The key names in directory `dir`: entries whose name is a valid key
/// name. Anything else (e.g. a backend's `.`-prefixed trees in transit) is
/// skipped.
pub fn list_key_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).context(format_args!("cannot list {}", dir.display()))? {
        let entry = entry.context(format_args!("cannot list {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            if crate::key::check_name(name).is_ok() {
                names.push(name.to_string());
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
