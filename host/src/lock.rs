//! Advisory file locks (`flock`) shared between snapstore processes.
//!
//! A lock dies with its process, so a lock that can be taken tells for sure
//! that its former holder is gone: that is how stale temporary trees are
//! recognised, never by their age.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use store_api::{IoContext, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path, mode: Mode) -> Result<FileLock, StoreError> {
        Self::take(path, mode, true).map(|lock| lock.expect("a blocking lock is always taken"))
    }

    /// Takes the lock on `path` if nobody holds it, else returns `None`.
    pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<FileLock>, StoreError> {
        Self::take(path, mode, false)
    }

    fn take(path: &Path, mode: Mode, wait: bool) -> Result<Option<FileLock>, StoreError> {
        let arg = match (mode, wait) {
            (Mode::Shared, true) => FlockArg::LockShared,
            (Mode::Shared, false) => FlockArg::LockSharedNonblock,
            (Mode::Exclusive, true) => FlockArg::LockExclusive,
            (Mode::Exclusive, false) => FlockArg::LockExclusiveNonblock,
        };
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .context(format_args!("cannot open lock file {}", path.display()))?;
            let locked = match Flock::lock(file, arg) {
                Ok(locked) => locked,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => {
                    let err = std::io::Error::from(errno);
                    return Err(StoreError::io(format_args!("cannot lock {}", path.display()), &err));
                }
            };
            // The holder may have unlinked the file before we got the lock
            // (see `release_and_remove`); then our lock guards nothing: retry.
            let ours = locked.metadata().context("cannot stat lock")?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(Some(FileLock { _file: locked, path: path.to_path_buf() }))
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file, then releases the lock. Safe against others
    /// waiting on it: they notice the file is gone and retry on a new one.
    pub fn release_and_remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let held = FileLock::acquire(&path, Mode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&path, Mode::Shared).unwrap().is_none());
        drop(held);
        let a = FileLock::try_acquire(&path, Mode::Shared).unwrap();
        let b = FileLock::try_acquire(&path, Mode::Shared).unwrap();
        assert!(a.is_some() && b.is_some());
        assert!(FileLock::try_acquire(&path, Mode::Exclusive).unwrap().is_none());
    }

    #[test]
    fn removed_lock_file_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        FileLock::acquire(&path, Mode::Exclusive).unwrap().release_and_remove();
        assert!(!path.exists());
        let again = FileLock::try_acquire(&path, Mode::Exclusive).unwrap();
        assert!(again.is_some() && path.exists());
    }
}
