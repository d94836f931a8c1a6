//! The log of lookups: `result ID` notes a use by appending one line to a
//! file beside the result record, instead of opening the record (sqlite)
//! and writing a transaction. A lookup is the command a build farm runs
//! most, and this keeps the record's parser and journal off its path.
//!
//! The record folds the log in (see [`fold`]) before anything reads the
//! times of use: the next `list`, `prune`, build or delete.
//!
//! Concurrency: appenders hold a shared `flock` while they write; the fold
//! holds it exclusively while it reads, applies and empties the log, so no
//! line is emptied unread. A line cut short (a full disk, a kill) is
//! skipped, and applying a line twice (a crash before the log was
//! emptied) changes nothing: a use only moves a time forward.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use store_api::{IoContext, StoreError};

/// The log beside the record at `record`.
pub fn log_path(record: &Path) -> PathBuf {
    record.with_extension("uses")
}

/// Appends a use of `id` at `time_ns` to the log of the record at `record`.
pub fn note(record: &Path, id: &str, time_ns: i64) -> std::io::Result<()> {
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(log_path(record))?;
    let mut log = lock(log, FlockArg::LockShared)?;
    // One write: lines of concurrent appenders never interleave.
    log.write_all(format!("{time_ns} {id}\n").as_bytes())
}

/// Takes every use out of the record's log, passing them (latest time per
/// id, in no order) to `apply`, and empties the log once `apply` succeeded.
/// No log, or an empty one, costs one `open`.
pub fn fold(
    record: &Path,
    apply: impl FnOnce(&[(String, i64)]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = log_path(record);
    let context = || format!("the log of lookups {}", path.display());
    let log = match OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_NOFOLLOW).open(&path)
    {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(context()),
    };
    if log.metadata().context(context())?.len() == 0 {
        return Ok(());
    }
    let mut log = lock(log, FlockArg::LockExclusive).context(context())?;
    let mut bytes = Vec::new();
    log.read_to_end(&mut bytes).context(context())?;
    let uses = latest_uses(&String::from_utf8_lossy(&bytes));
    if !uses.is_empty() {
        apply(&uses)?;
    }
    log.set_len(0).context(context())
}

/// The latest time of each id in the log's text, skipping damaged lines.
fn latest_uses(text: &str) -> Vec<(String, i64)> {
    let mut latest = std::collections::HashMap::<&str, i64>::new();
    for line in text.lines() {
        let Some((time, id)) = line.split_once(' ') else { continue };
        let (Ok(time), Ok(())) = (time.parse::<i64>(), crate::names::check_id(id).map(drop)) else {
            continue;
        };
        let entry = latest.entry(id).or_insert(time);
        *entry = (*entry).max(time);
    }
    latest.into_iter().map(|(id, time)| (id.to_string(), time)).collect()
}

/// The file, locked until it is dropped.
fn lock(file: File, how: FlockArg) -> std::io::Result<Flock<File>> {
    Flock::lock(file, how).map_err(|(_, errno)| errno.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_use_of_each_id_is_kept_and_damage_skipped() {
        let mut uses = latest_uses("5 a\n7 b\n9 a\n3 a\nnot-a-time a\n8 ../x\n12 b-cut-sh");
        uses.sort();
        assert_eq!(uses, [("a".to_string(), 9), ("b".to_string(), 7), ("b-cut-sh".to_string(), 12)]);
    }

    #[test]
    fn a_fold_empties_the_log_only_when_applied() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("results.sqlite");
        note(&record, "a", 1).unwrap();
        note(&record, "a", 2).unwrap();
        assert!(fold(&record, |_| Err(StoreError::other("busy"))).is_err());
        let mut seen = Vec::new();
        fold(&record, |uses| {
            seen = uses.to_vec();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [("a".to_string(), 2)]);
        assert_eq!(std::fs::metadata(log_path(&record)).unwrap().len(), 0);
        fold(&record, |_| panic!("an empty log applied")).unwrap();
    }

    /// Lookups appending while folds empty the log: every use reaches
    /// some fold, none is emptied unread.
    #[test]
    fn no_use_is_lost_to_a_concurrent_fold() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("results.sqlite");
        let applied = std::sync::Mutex::new(std::collections::HashMap::<String, i64>::new());
        let apply = |uses: &[(String, i64)]| {
            let mut applied = applied.lock().unwrap();
            for (id, time) in uses {
                let latest = applied.entry(id.clone()).or_insert(*time);
                *latest = (*latest).max(*time);
            }
            Ok(())
        };
        std::thread::scope(|s| {
            for writer in 0..4 {
                let record = &record;
                s.spawn(move || {
                    for time in 1..=500 {
                        note(record, &format!("w{writer}.{time}"), time).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    fold(&record, apply).unwrap();
                }
            });
        });
        fold(&record, apply).unwrap();
        let applied = applied.into_inner().unwrap();
        assert_eq!(applied.len(), 4 * 500, "uses were lost");
    }
}
