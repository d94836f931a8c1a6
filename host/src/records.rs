//! The record of results (`.snapstore/results.sqlite`): when each was
//! created and last used, and its base. It drives `prune` and `list`.
//!
//! The backend is the truth about which results exist; the record follows
//! it. A crash between a commit and its record (or a delete and its
//! record) is repaired by [`Records::reconcile`], which adopts results the
//! record lacks and drops records whose result is gone. It runs when a
//! whole view is needed (`list`, `prune`), never on the hot path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use store_api::StoreError;

/// One result as recorded. Times are Unix nanoseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResultRecord {
    pub id: String,
    pub base: Option<String>,
    pub created: i64,
    pub last_used: i64,
    /// How many recorded results are built on this one.
    pub children: u64,
    /// When its tree, a clone of `base`, was handed to the build: files
    /// whose status changed well before were left as the clone made them
    /// (see `diff_trees_after_clone`). `None` for results not built on a
    /// clone, adopted, or recorded by older versions.
    #[serde(skip)]
    pub cloned: Option<i64>,
}

pub struct Records {
    conn: Mutex<Connection>,
    /// The record's file: the log of lookups is beside it (`uses`).
    path: PathBuf,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::new(store_api::ErrorKind::IO, format!("cannot use the result record: {e}"))
}

/// The schema's version, kept in the record's `user_version`.
const SCHEMA_VERSION: i64 = 3;

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Records {
    /// Opens (or creates) the record at `path`. A record damaged beyond
    /// use (possible after a power loss, see below) is set aside and
    /// rebuilt empty: reconcile then adopts every result.
    pub fn open(path: &Path) -> Result<Records, StoreError> {
        match Self::open_checked(path) {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                ) =>
            {
                let aside = path.with_extension(format!("sqlite.damaged-{}", now_ns()));
                tracing::warn!("the result record is damaged; moved to {} and rebuilt", aside.display());
                let _ = std::fs::rename(path, &aside);
                Self::open_checked(path).map_err(db_error)
            }
            other => other.map_err(db_error),
        }
    }

    fn open_checked(path: &Path) -> rusqlite::Result<Records> {
        let mut conn = Connection::open(path)?;
        // A rollback journal, not WAL: WAL's shared memory is an mmap that
        // raises SIGBUS when the filesystem is full, and stores do fill up.
        // No fsync: what a process wrote survives its kill -9 (it is in the
        // kernel), and the record is an aid that reconcile repairs; fsyncs
        // would cost more than the snapshot operations themselves.
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "TRUNCATE")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        // Most commands open an existing record: its version says the
        // schema is there, without parsing the statements that make it.
        if conn.pragma_query_value(None, "user_version", |v| v.get::<_, i64>(0))? == SCHEMA_VERSION {
            return Ok(Records { conn: Mutex::new(conn), path: path.to_path_buf() });
        }
        Self::make_schema(&mut conn)?;
        Ok(Records { conn: Mutex::new(conn), path: path.to_path_buf() })
    }

    /// Creates the schema, or brings an older record to it, copied over
    /// once. Version 2 keeps the rows in id order (WITHOUT ROWID), so
    /// reading the whole record (`list` of 100 000) needs no sort; version
    /// 3 adds when each tree was cloned.
    fn make_schema(conn: &mut Connection) -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have done it while this one waited.
        if tx.pragma_query_value(None, "user_version", |v| v.get::<_, i64>(0))? == SCHEMA_VERSION {
            return tx.commit();
        }
        let older: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'results')", [], |r| {
                r.get(0)
            })?;
        tx.execute_batch(
            "CREATE TABLE results_v3 (
                 id TEXT PRIMARY KEY,
                 base TEXT,
                 created INTEGER NOT NULL,
                 last_used INTEGER NOT NULL,
                 cloned INTEGER
             ) WITHOUT ROWID;",
        )?;
        if older {
            tx.execute_batch(
                "INSERT INTO results_v3 (id, base, created, last_used)
                     SELECT id, base, created, last_used FROM results;
                 DROP TABLE results;",
            )?;
        }
        tx.execute_batch(
            "ALTER TABLE results_v3 RENAME TO results;
             CREATE INDEX results_base ON results(base);
             CREATE INDEX results_last_used ON results(last_used);",
        )?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(db_error)
    }

    /// Records a new result, and the use of its base, in one write.
    /// `cloned`: when its tree, a clone of `base`, was handed to the build.
    pub fn committed(&self, id: &str, base: Option<&str>, cloned: Option<i64>) -> Result<(), StoreError> {
        let now = now_ns();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO results (id, base, created, last_used, cloned) VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET base = excluded.base, created = excluded.created,
                     last_used = excluded.last_used, cloned = excluded.cloned",
                params![id, base, now, cloned],
            )?;
            if let Some(base) = base {
                tx.execute("UPDATE results SET last_used = ?2 WHERE id = ?1", params![base, now])?;
            }
            tx.commit()
        })
    }

    /// Moves the lookups noted in the log ([`crate::uses`]) into the record,
    /// before anything reads the times of use. Only recorded results are
    /// updated: adopting the others is reconcile's job.
    fn fold_uses(&self) -> Result<(), StoreError> {
        crate::uses::fold(&self.path, |uses| {
            self.with(|c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                {
                    let mut update =
                        tx.prepare("UPDATE results SET last_used = ?2 WHERE id = ?1 AND last_used < ?2")?;
                    for (id, time) in uses {
                        update.execute(params![id, time])?;
                    }
                }
                tx.commit()
            })
        })
    }

    pub fn deleted(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM results WHERE id = ?1", params![id])).map(drop)
    }

    /// Makes the record match `present`, the results the backend holds,
    /// and returns it, by id. Reads the record once, and writes only what
    /// differs (most calls write nothing).
    pub fn reconcile(&self, present: &[String]) -> Result<Reconciled, StoreError> {
        let records = self.all()?;
        // Hashing, not sorting, the backend's listing: it comes in directory
        // order, and sorting 100 000 ids costs more than hashing them.
        let present: HashSet<&str> = present.iter().map(String::as_str).collect();
        let gone: Vec<&str> =
            records.iter().map(|r| r.id.as_str()).filter(|id| !present.contains(id)).collect();
        let missing: Vec<&str> = if records.len() - gone.len() == present.len() {
            Vec::new() // every present result is recorded: the usual case
        } else {
            let recorded: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
            present.iter().copied().filter(|id| !recorded.contains(id)).collect()
        };
        if missing.is_empty() && gone.is_empty() {
            return Ok(Reconciled { adopted: 0, dropped: 0, records });
        }
        let now = now_ns();
        let (adopted, dropped) = self.with(|c| {
            // IMMEDIATE: take the write lock up front; a deferred transaction
            // that reads then writes gets SQLITE_BUSY without waiting.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut adopted = 0;
            for id in &missing {
                adopted += tx.execute(
                    "INSERT OR IGNORE INTO results (id, base, created, last_used) VALUES (?1, NULL, ?2, ?2)",
                    params![id, now],
                )?;
            }
            let mut dropped = 0;
            for id in &gone {
                dropped += tx.execute("DELETE FROM results WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok((adopted, dropped))
        })?;
        // Read again, in id order, with the children counted anew.
        Ok(Reconciled { adopted, dropped, records: self.all()? })
    }

    pub fn get(&self, id: &str) -> Result<Option<ResultRecord>, StoreError> {
        self.fold_uses()?;
        self.with(|c| {
            c.query_row(
                "SELECT r.id, r.base, r.created, r.last_used,
                     (SELECT COUNT(*) FROM results c WHERE c.base = r.id), r.cloned
                 FROM results r WHERE r.id = ?1",
                params![id],
                |r| {
                    Ok(ResultRecord {
                        id: r.get(0)?,
                        base: r.get(1)?,
                        created: r.get(2)?,
                        last_used: r.get(3)?,
                        children: r.get::<_, i64>(4)? as u64,
                        cloned: r.get(5)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Every recorded result, by id, in one query (children are counted
    /// here rather than by a subquery per row: `list` reads 100 000).
    pub fn all(&self) -> Result<Vec<ResultRecord>, StoreError> {
        self.fold_uses()?;
        let mut records = self.with(|c| {
            // The table is kept in id order (schema version 2).
            let mut stmt = c.prepare("SELECT id, base, created, last_used, cloned FROM results")?;
            let rows = stmt.query_map([], |r| {
                Ok(ResultRecord {
                    id: r.get(0)?,
                    base: r.get(1)?,
                    created: r.get(2)?,
                    last_used: r.get(3)?,
                    children: 0,
                    cloned: r.get(4)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        count_children(&mut records);
        Ok(records)
    }

    /// Up to `limit` results nothing is built on, least recently used
    /// first (ties by id), optionally only those last used before
    /// `used_before` (Unix nanoseconds), and only those after `after` in
    /// that order: the next page. Read through the indexes of last uses
    /// and of bases, so a page costs the same in a store of any size.
    pub fn leaves_by_age(
        &self,
        used_before: Option<i64>,
        after: Option<&Leaf>,
        limit: usize,
    ) -> Result<Vec<Leaf>, StoreError> {
        self.fold_uses()?;
        let (after_used, after_id) = after.map_or((i64::MIN, ""), |l| (l.last_used, l.id.as_str()));
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.last_used, r.id FROM results r
                 WHERE r.last_used < ?1 AND (r.last_used, r.id) > (?2, ?3)
                   AND NOT EXISTS (SELECT 1 FROM results c WHERE c.base = r.id)
                 ORDER BY r.last_used, r.id
                 LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![used_before.unwrap_or(i64::MAX), after_used, after_id, limit as i64],
                |r| Ok(Leaf { last_used: r.get(0)?, id: r.get(1)? }),
            )?;
            rows.collect()
        })
    }
}

/// A result nothing is built on, as [`Records::leaves_by_age`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub last_used: i64,
    pub id: String,
}

/// Fills in how many of `records` (sorted by id) are built on each.
fn count_children(records: &mut [ResultRecord]) {
    let mut counts = vec![0u64; records.len()];
    for base in records.iter().filter_map(|r| r.base.as_deref()) {
        if let Ok(at) = records.binary_search_by(|r| r.id.as_str().cmp(base)) {
            counts[at] += 1;
        }
    }
    for (record, count) in records.iter_mut().zip(counts) {
        record.children = count;
    }
}

/// What [`Records::reconcile`] did, and the record it left.
pub struct Reconciled {
    pub adopted: usize,
    pub dropped: usize,
    pub records: Vec<ResultRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_come_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("db")).unwrap();
        r.committed("b", None, None).unwrap();
        r.committed("c1", Some("b"), None).unwrap();
        r.committed("c2", Some("b"), None).unwrap();
        crate::uses::note(&dir.path().join("db"), "c1", now_ns()).unwrap();
        let ids = |leaves: Vec<Leaf>| leaves.into_iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(ids(r.leaves_by_age(None, None, 10).unwrap()), ["c2", "c1"]);
        // Page by page.
        let first = r.leaves_by_age(None, None, 1).unwrap();
        assert_eq!(ids(first.clone()), ["c2"]);
        assert_eq!(ids(r.leaves_by_age(None, first.last(), 1).unwrap()), ["c1"]);
        assert_eq!(
            ids(r.leaves_by_age(None, r.leaves_by_age(None, first.last(), 1).unwrap().last(), 1).unwrap()),
            Vec::<String>::new()
        );
        // Only those used before a time.
        assert_eq!(ids(r.leaves_by_age(Some(first[0].last_used + 1), None, 10).unwrap()), ["c2"]);
        assert_eq!(r.get("b").unwrap().unwrap().children, 2);
        r.deleted("c2").unwrap();
        r.deleted("c1").unwrap();
        assert_eq!(ids(r.leaves_by_age(None, None, 10).unwrap()), ["b"]);
    }

    /// A record in `dir` as an older version left it: `sql` made it.
    fn older_record(dir: &tempfile::TempDir, sql: &str) -> PathBuf {
        let path = dir.path().join("db");
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        path
    }

    #[test]
    fn an_older_record_is_brought_to_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = older_record(
            &dir,
            "CREATE TABLE results (id TEXT PRIMARY KEY, base TEXT, created INTEGER NOT NULL,
                 last_used INTEGER NOT NULL);
             INSERT INTO results VALUES ('z', NULL, 1, 5), ('a', 'z', 2, 3);
             PRAGMA user_version = 1;",
        );
        let r = Records::open(&path).unwrap();
        let ids: Vec<_> =
            r.all().unwrap().into_iter().map(|r| (r.id, r.base, r.last_used, r.children)).collect();
        assert_eq!(ids, [("a".into(), Some("z".into()), 3, 0), ("z".into(), None, 5, 1)]);
        assert_eq!(r.get("a").unwrap().unwrap().cloned, None);
        r.committed("b", Some("a"), Some(7)).unwrap();
        drop(r);
        // Opening it again finds the current version and changes nothing.
        let again = Records::open(&path).unwrap();
        assert_eq!(again.all().unwrap().len(), 3);
        assert_eq!(again.get("b").unwrap().unwrap().cloned, Some(7));
    }

    #[test]
    fn a_version_2_record_gains_the_clone_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = older_record(
            &dir,
            "CREATE TABLE results (id TEXT PRIMARY KEY, base TEXT, created INTEGER NOT NULL,
                 last_used INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO results VALUES ('a', NULL, 1, 5);
             PRAGMA user_version = 2;",
        );
        let r = Records::open(&path).unwrap();
        let a = r.get("a").unwrap().unwrap();
        assert_eq!((a.created, a.last_used, a.cloned), (1, 5, None));
        r.committed("b", Some("a"), Some(9)).unwrap();
        assert_eq!(r.all().unwrap().iter().map(|x| x.cloned).collect::<Vec<_>>(), [None, Some(9)]);
    }

    #[test]
    fn reconcile_adopts_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("db")).unwrap();
        r.committed("ghost", None, None).unwrap();
        r.committed("kept", None, None).unwrap();
        r.committed("child", Some("kept"), None).unwrap();
        let present = ["kept".into(), "old".into(), "child".into()];
        let reconciled = r.reconcile(&present).unwrap();
        assert_eq!((reconciled.adopted, reconciled.dropped), (1, 1));
        let listed: Vec<(String, u64)> = reconciled.records.into_iter().map(|x| (x.id, x.children)).collect();
        let stored: Vec<(String, u64)> = r.all().unwrap().into_iter().map(|x| (x.id, x.children)).collect();
        assert_eq!(listed, [("child".into(), 0), ("kept".into(), 1), ("old".into(), 0)]);
        assert_eq!(stored, listed);
        let again = r.reconcile(&present).unwrap();
        assert_eq!((again.adopted, again.dropped), (0, 0));
    }
}
