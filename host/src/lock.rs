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
use tracing::info;

use crate::names::unescape_cache_name;

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
    /// Waits for the lock on `path` (created if missing), saying what for
    /// when another process holds it.
    pub fn acquire(path: &Path, mode: Mode) -> Result<FileLock, StoreError> {
        if let Some(lock) = Self::take(path, mode, false)? {
            return Ok(lock);
        }
        let what = held_for(path);
        info!("waiting for {what}");
        let _waiting = crate::progress::Activity::start(|| format!("waiting for {what}"));
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

/// What the lock on `path` guards, and the process that holds it, for a
/// person waiting: "result `x` (a build, clone or delete of it) by process 1234".
fn held_for(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let kind = path.parent().and_then(Path::file_name).map(|k| k.to_string_lossy().into_owned());
    let what = match (kind.as_deref().unwrap_or(""), name.as_str()) {
        ("build", id) => format!("result `{id}` (a build, clone or delete of it)"),
        ("use", id) => format!("result `{id}` (in use as a base)"),
        ("cache", escaped) => match unescape_cache_name(escaped) {
            Some(cache) => format!("cache `{cache}`"),
            None => format!("a cache ({escaped})"),
        },
        ("lease", lease) => format!("lease `{lease}`"),
        (_, "generation") => "the cache generation counter".to_string(),
        _ => format!("lock {}", path.display()),
    };
    match holder(path) {
        Some(pid) => format!("{what} held by process {pid}"),
        None => format!("{what} held by another process"),
    }
}

/// The process holding the lock on `path`, from `/proc/locks`.
fn holder(path: &Path) -> Option<u32> {
    let meta = fs::metadata(path).ok()?;
    let (major, minor) = (nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()));
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; waiters have `->`.
    locks.lines().filter(|line| !line.contains("->")).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&file.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
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
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("build")).unwrap();
        let path = dir.path().join("build/step1");
        let _held = FileLock::acquire(&path, Mode::Exclusive).unwrap();
        let told = held_for(&path);
        let me = std::process::id();
        assert_eq!(told, format!("result `step1` (a build, clone or delete of it) held by process {me}"));
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
