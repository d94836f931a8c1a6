//! Advisory locks on lock files (`flock(2)`), for a backend's own
//! bookkeeping between processes (e.g. "this staging tree has a live
//! owner").
//!
//! A lock is held as long as its [`FileLock`] lives, and released by the
//! kernel when the process dies, so a lock that can be taken belongs to
//! nobody. The host's locks are separate: a backend never needs them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{IoContext, StoreError};

/// Whether other holders may share the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Any number of shared holders, and no exclusive one.
    Shared,
    /// One holder only.
    Exclusive,
}

/// A held lock on a lock file; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    _locked: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing, never truncated),
    /// waiting for other holders to release it.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock, StoreError> {
        let how = match mode {
            LockMode::Shared => FlockArg::LockShared,
            LockMode::Exclusive => FlockArg::LockExclusive,
        };
        // A waiting lock is never refused as held.
        let locked = Self::lock(path, how)?;
        locked.ok_or_else(|| StoreError::busy(format!("cannot lock {}", path.display())))
    }

    /// Takes the lock on `path` (created if missing) without waiting:
    /// `None` if another holder keeps it from being taken.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>, StoreError> {
        let how = match mode {
            LockMode::Shared => FlockArg::LockSharedNonblock,
            LockMode::Exclusive => FlockArg::LockExclusiveNonblock,
        };
        Self::lock(path, how)
    }

    fn lock(path: &Path, how: FlockArg) -> Result<Option<FileLock>, StoreError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .context(format_args!("cannot open lock file {}", path.display()))?;
        loop {
            match Flock::lock(file, how) {
                Ok(locked) => return Ok(Some(FileLock { _locked: locked, path: path.to_path_buf() })),
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((again, Errno::EINTR)) => file = again,
                Err((_, errno)) => {
                    return Err(StoreError::errno(format_args!("cannot lock {}", path.display()), errno))
                }
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the lock file while still holding the lock, then releases
    /// it: for lock files that guard one thing and are done with it. A
    /// process waiting on the deleted file gets a lock nobody else can
    /// see, so only use this where waiters check again what they locked.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes an exclusive lock on an already open file (a lock file, or a
/// directory a backend hands out) without waiting: `false` if another
/// holder has it. The lock lives as long as `file` stays open.
pub fn try_lock_open(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = std::env::temp_dir().join(crate::util::unique_name("snapstore-lock"));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("l");
        let held = FileLock::acquire(&path, LockMode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&path, LockMode::Exclusive).unwrap().is_none());
        assert!(FileLock::try_acquire(&path, LockMode::Shared).unwrap().is_none());
        assert!(!try_lock_open(&File::open(&path).unwrap()).unwrap(), "an open file sees the held lock");
        drop(held);
        let a = FileLock::try_acquire(&path, LockMode::Shared).unwrap().expect("free");
        let b = FileLock::try_acquire(&path, LockMode::Shared).unwrap().expect("shared");
        assert!(FileLock::try_acquire(&path, LockMode::Exclusive).unwrap().is_none());
        drop((a, b));
        let c = FileLock::try_acquire(&path, LockMode::Exclusive).unwrap().expect("free again");
        assert_eq!(c.path(), path);
        c.remove();
        assert!(!path.exists(), "remove deletes the lock file");
        let err = FileLock::acquire(&dir.join("missing/l"), LockMode::Shared).unwrap_err();
        assert!(err.message().starts_with("cannot open lock file "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
