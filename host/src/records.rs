//! The record of results (`.snapstore/results.sqlite`): when each was
//! created and last used, and its base. It drives `prune` and `list`.
//!
//! The backend is the truth about which results exist; the record follows
//! it. A crash between a commit and its record (or a delete and its
//! record) is repaired by [`Records::reconcile`], which adopts results the
//! record lacks and drops records whose result is gone. It runs when a
//! whole view is needed (`list`, `prune`), never on the hot path.

use std::path::Path;
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
}

pub struct Records {
    conn: Mutex<Connection>,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::new(store_api::ErrorKind::IO, format!("cannot use the result record: {e}"))
}

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
        let conn = Connection::open(path)?;
        // A rollback journal, not WAL: WAL's shared memory is an mmap that
        // raises SIGBUS when the filesystem is full, and stores do fill up.
        // No fsync: what a process wrote survives its kill -9 (it is in the
        // kernel), and the record is an aid that reconcile repairs; fsyncs
        // would cost more than the snapshot operations themselves.
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "TRUNCATE")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS results (
                 id TEXT PRIMARY KEY,
                 base TEXT,
                 created INTEGER NOT NULL,
                 last_used INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS results_base ON results(base);
             CREATE INDEX IF NOT EXISTS results_last_used ON results(last_used);",
        )?;
        Ok(Records { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(db_error)
    }

    /// Records a new result, and the use of its base, in one write.
    pub fn committed(&self, id: &str, base: Option<&str>) -> Result<(), StoreError> {
        let now = now_ns();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO results (id, base, created, last_used) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(id) DO UPDATE SET base = excluded.base, created = excluded.created,
                     last_used = excluded.last_used",
                params![id, base, now],
            )?;
            if let Some(base) = base {
                tx.execute("UPDATE results SET last_used = ?2 WHERE id = ?1", params![base, now])?;
            }
            tx.commit()
        })
    }

    /// Marks an existing result as used now (adopting it if unrecorded).
    pub fn used(&self, id: &str) -> Result<(), StoreError> {
        let now = now_ns();
        self.with(|c| {
            let changed = c.execute("UPDATE results SET last_used = ?2 WHERE id = ?1", params![id, now])?;
            if changed == 0 {
                c.execute(
                    "INSERT OR IGNORE INTO results (id, base, created, last_used) VALUES (?1, NULL, ?2, ?2)",
                    params![id, now],
                )?;
            }
            Ok(())
        })
    }

    pub fn deleted(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM results WHERE id = ?1", params![id])).map(drop)
    }

    /// Makes the record match `present`, the results the backend holds.
    /// Returns (adopted, dropped).
    pub fn reconcile(&self, present: &[String]) -> Result<(usize, usize), StoreError> {
        let now = now_ns();
        self.with(|c| {
            // IMMEDIATE: take the write lock up front; a deferred transaction
            // that reads then writes gets SQLITE_BUSY without waiting.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let recorded: std::collections::HashSet<String> = {
                let mut stmt = tx.prepare("SELECT id FROM results")?;
                let ids = stmt.query_map([], |row| row.get::<_, String>(0))?;
                ids.collect::<rusqlite::Result<_>>()?
            };
            let present_set: std::collections::HashSet<&String> = present.iter().collect();
            let mut adopted = 0;
            for id in present.iter().filter(|id| !recorded.contains(*id)) {
                adopted += tx.execute(
                    "INSERT OR IGNORE INTO results (id, base, created, last_used) VALUES (?1, NULL, ?2, ?2)",
                    params![id, now],
                )?;
            }
            let mut dropped = 0;
            for id in recorded.iter().filter(|id| !present_set.contains(id)) {
                dropped += tx.execute("DELETE FROM results WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok((adopted, dropped))
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<ResultRecord>, StoreError> {
        self.with(|c| c.query_row(&format!("{SELECT} WHERE r.id = ?1"), params![id], row).optional())
    }

    /// Every recorded result.
    pub fn all(&self) -> Result<Vec<ResultRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{SELECT} ORDER BY r.id"))?;
            let rows = stmt.query_map([], row)?;
            rows.collect()
        })
    }

    /// Results nothing is built on, least recently used first, optionally
    /// only those last used before `used_before` (Unix nanoseconds).
    pub fn leaves_by_age(&self, used_before: Option<i64>) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT r.id FROM results r
                 WHERE NOT EXISTS (SELECT 1 FROM results c WHERE c.base = r.id)
                   AND r.last_used < ?1
                 ORDER BY r.last_used, r.id",
            )?;
            let rows = stmt.query_map(params![used_before.unwrap_or(i64::MAX)], |r| r.get(0))?;
            rows.collect()
        })
    }
}

const SELECT: &str = "SELECT r.id, r.base, r.created, r.last_used,
        (SELECT COUNT(*) FROM results c WHERE c.base = r.id) FROM results r";

fn row(r: &rusqlite::Row) -> rusqlite::Result<ResultRecord> {
    Ok(ResultRecord {
        id: r.get(0)?,
        base: r.get(1)?,
        created: r.get(2)?,
        last_used: r.get(3)?,
        children: r.get::<_, i64>(4)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_come_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("db")).unwrap();
        r.committed("b", None).unwrap();
        r.committed("c1", Some("b")).unwrap();
        r.committed("c2", Some("b")).unwrap();
        r.used("c1").unwrap();
        assert_eq!(r.leaves_by_age(None).unwrap(), ["c2", "c1"]);
        assert_eq!(r.get("b").unwrap().unwrap().children, 2);
        r.deleted("c2").unwrap();
        r.deleted("c1").unwrap();
        assert_eq!(r.leaves_by_age(None).unwrap(), ["b"]);
    }

    #[test]
    fn reconcile_adopts_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("db")).unwrap();
        r.committed("ghost", None).unwrap();
        r.committed("kept", None).unwrap();
        let (adopted, dropped) = r.reconcile(&["kept".into(), "old".into()]).unwrap();
        assert_eq!((adopted, dropped), (1, 1));
        let ids: Vec<String> = r.all().unwrap().into_iter().map(|x| x.id).collect();
        assert_eq!(ids, ["kept", "old"]);
    }
}
