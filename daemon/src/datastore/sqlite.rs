//! Embedded SQLite backend.
//!
//! Two tables: `log` (one row per write; its primary key is the revision) and
//! `current` (the newest value of each live key), written together in one
//! transaction. Reads use `current` and never scan history; watches read
//! `log`; compaction only trims `log`.
//!
//! All writes go through ONE writer thread that drains its queue into a
//! single transaction (group commit). There is never a second writer, so
//! "database is locked" cannot happen however many callers write at once,
//! and a batch of N writes costs one fsync. Readers use their own
//! connections; WAL lets them run beside the writer.

use super::queue::{Op, Reply, Request, WriteQueue};
use super::{
    prefix_end, Backend, CompactStats, DatastoreError, Event, EventKind, KeyValue, Result, Revision,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

const MAX_BATCH: usize = 512;
const READERS: usize = 4;
const BROADCAST_CAPACITY: usize = 4096;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    revision        INTEGER PRIMARY KEY,
    key             TEXT    NOT NULL,
    kind            INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    value           BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS current (
    key             TEXT    PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    value           BLOB    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
";

pub struct SqliteBackend {
    path: PathBuf,
    writer: WriteQueue,
    readers: Arc<Mutex<Vec<Connection>>>,
    events: broadcast::Sender<Arc<Event>>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
}

fn unavailable(e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Unavailable(e.to_string())
}

fn kind_code(k: EventKind) -> i64 {
    match k {
        EventKind::Create => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
    }
}

fn kind_from(code: i64) -> EventKind {
    match code {
        0 => EventKind::Create,
        1 => EventKind::Update,
        _ => EventKind::Delete,
    }
}

fn open_conn(path: &Path, write: bool) -> rusqlite::Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

impl SqliteBackend {
    /// Open (creating if needed) the database at `path`. The parent
    /// directory must exist.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = open_conn(path, true).map_err(|e| {
            DatastoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        // NORMAL in WAL mode is durable across process crashes; only an OS
        // crash can lose the last transactions, as with K3s/kine.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024i64)
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let (revision, compacted) = read_meta(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_conn(path, false).map_err(unavailable)?);
        }
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (tx, rx) = WriteQueue::new(4096);
        let revision = Arc::new(AtomicI64::new(revision));
        let compacted = Arc::new(AtomicI64::new(compacted));
        let w = Writer {
            conn,
            rx,
            events: events.clone(),
            revision: revision.clone(),
            compacted: compacted.clone(),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || w.run())
            .map_err(unavailable)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            events,
            revision,
            compacted,
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match conn {
                Some(c) => c,
                None => open_conn(&path, false)?,
            };
            let out = f(&mut conn);
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < READERS {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }
}

fn read_meta(conn: &mut Connection) -> Result<(Revision, Revision)> {
    let get = |name: &str| -> Result<Revision> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .map_err(unavailable)
    };
    Ok((get("revision")?, get("compacted")?))
}

#[async_trait]
impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT key, value, create_revision, mod_revision FROM current WHERE key = ?1",
            )?
            .query_row([&key], row_kv)
            .optional()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Revision, Vec<KeyValue>)> {
        let start = prefix.to_string();
        let end = prefix_end(prefix);
        self.read(move |c| {
            // One read transaction: the items and the revision come from the
            // same snapshot, so the list's resourceVersion is exact.
            let tx = c.transaction()?;
            let rev: Revision =
                tx.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                    r.get(0)
                })?;
            let items = {
                let mut stmt = tx.prepare_cached(
                    "SELECT key, value, create_revision, mod_revision FROM current
                     WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
                )?;
                let rows = stmt.query_map(params![start, end], row_kv)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok((rev, items))
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        self.writer.create(key, value).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        self.writer.update(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        self.writer.delete(key, expected).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.revision.load(Ordering::Acquire))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.compacted.load(Ordering::Acquire))
    }

    async fn events_after(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let start = prefix.to_string();
        let end = prefix_end(prefix);
        let (compacted, events) = self
            .read(move |c| {
                let tx = c.transaction()?;
                let compacted: Revision =
                    tx.query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                        r.get(0)
                    })?;
                let events = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT revision, key, kind, create_revision, value FROM log
                         WHERE revision > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)
                         ORDER BY revision LIMIT ?4",
                    )?;
                    let rows = stmt.query_map(params![after, start, end, limit as i64], |r| {
                        Ok(Event {
                            revision: r.get(0)?,
                            key: r.get(1)?,
                            kind: kind_from(r.get(2)?),
                            create_revision: r.get(3)?,
                            value: r.get(4)?,
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                };
                tx.commit()?;
                Ok((compacted, events))
            })
            .await?;
        if after < compacted {
            return Err(DatastoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(events)
    }

    async fn compact(&self, keep: u64) -> Result<CompactStats> {
        self.writer.compact(keep).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

fn row_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
    })
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Request>,
    events: broadcast::Sender<Arc<Event>>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let start_rev = self.revision.load(Ordering::Acquire);
        let mut rev = start_rev;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut checkpoint = false;
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for req in &batch {
                let r = apply(&tx, &req.op, &mut rev, &mut events)?;
                if matches!(r, Ok(Reply::Compacted(_))) {
                    checkpoint = true;
                }
                results.push(r);
            }
            if rev != start_rev {
                tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [rev])?;
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                if checkpoint {
                    // Truncate the WAL so the file stays bounded; readers
                    // holding old snapshots make it a no-op, which is fine.
                    // Before the replies, so a finished compaction has also
                    // given its space back.
                    if let Err(e) =
                        self.conn
                            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
                self.revision.store(rev, Ordering::Release);
                for (req, res) in batch.into_iter().zip(results) {
                    if let Ok(Reply::Compacted(s)) = &res {
                        self.compacted.store(s.compacted_to, Ordering::Release);
                    }
                    let _ = req.reply.send(res);
                }
                for ev in events {
                    let _ = self.events.send(Arc::new(ev));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "datastore transaction failed; writes not applied");
                for req in batch {
                    let _ = req.reply.send(Err(unavailable(&e)));
                }
            }
        }
    }
}

/// Apply one op inside the batch transaction. The outer `Err` aborts the
/// whole batch (an SQL failure); the inner one is this op's own answer
/// (conflict, not found...) and leaves the batch going.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    rev: &mut Revision,
    events: &mut Vec<Event>,
) -> rusqlite::Result<Result<Reply>> {
    let lookup = |key: &str| -> rusqlite::Result<Option<KeyValue>> {
        tx.prepare_cached(
            "SELECT key, value, create_revision, mod_revision FROM current WHERE key = ?1",
        )?
        .query_row([key], row_kv)
        .optional()
    };
    let mut append = |kind: EventKind, key: &str, value: &[u8], create_rev: Option<Revision>| {
        *rev += 1;
        let create_revision = create_rev.unwrap_or(*rev);
        tx.prepare_cached(
            "INSERT INTO log (revision, key, kind, create_revision, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![*rev, key, kind_code(kind), create_revision, value])?;
        events.push(Event {
            kind,
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
            revision: *rev,
        });
        Ok::<_, rusqlite::Error>((*rev, create_revision))
    };
    Ok(match op {
        Op::Create { key, value } => {
            if lookup(key)?.is_some() {
                return Ok(Err(DatastoreError::AlreadyExists(key.clone())));
            }
            let (r, c) = append(EventKind::Create, key, value, None)?;
            tx.prepare_cached(
                "INSERT INTO current (key, create_revision, mod_revision, value) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, c, r, value])?;
            Ok(Reply::Rev(r))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(cur) = lookup(key)? else {
                return Ok(Err(DatastoreError::NotFound(key.clone())));
            };
            if cur.mod_revision != *expected {
                return Ok(Err(DatastoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: cur.mod_revision,
                }));
            }
            let (r, _) = append(EventKind::Update, key, value, Some(cur.create_revision))?;
            tx.prepare_cached("UPDATE current SET mod_revision = ?2, value = ?3 WHERE key = ?1")?
                .execute(params![key, r, value])?;
            Ok(Reply::Rev(r))
        }
        Op::Delete { key, expected } => {
            let Some(cur) = lookup(key)? else {
                return Ok(Err(DatastoreError::NotFound(key.clone())));
            };
            if let Some(exp) = expected {
                if cur.mod_revision != *exp {
                    return Ok(Err(DatastoreError::Conflict {
                        key: key.clone(),
                        expected: *exp,
                        actual: cur.mod_revision,
                    }));
                }
            }
            let (r, _) = append(
                EventKind::Delete,
                key,
                &cur.value,
                Some(cur.create_revision),
            )?;
            tx.prepare_cached("DELETE FROM current WHERE key = ?1")?
                .execute([key])?;
            Ok(Reply::Deleted(r, cur))
        }
        Op::Compact { keep } => {
            let target = (*rev - *keep as i64).max(0);
            let old: Revision =
                tx.query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                    r.get(0)
                })?;
            if target <= old {
                return Ok(Ok(Reply::Compacted(CompactStats {
                    compacted_to: old,
                    events_deleted: 0,
                })));
            }
            let n = tx.execute("DELETE FROM log WHERE revision <= ?1", [target])?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
                [target],
            )?;
            Ok(Reply::Compacted(CompactStats {
                compacted_to: target,
                events_deleted: n as u64,
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::{conformance, Datastore};
    use super::*;

    fn store() -> (tempfile::TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("state.db")).unwrap();
        (dir, Datastore::new(Arc::new(b)))
    }

    #[tokio::test]
    async fn create_update_delete_with_conflicts() {
        let (_d, s) = store();
        conformance::create_update_delete_with_conflicts(s).await;
    }

    #[tokio::test]
    async fn list_by_prefix_is_exact() {
        let (_d, s) = store();
        conformance::list_by_prefix_is_exact(s).await;
    }

    #[tokio::test]
    async fn watch_is_ordered_and_replays_from_revision() {
        let (_d, s) = store();
        conformance::watch_is_ordered_and_replays_from_revision(s).await;
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_catches_up_from_the_log() {
        let (_d, s) = store();
        conformance::a_watcher_that_falls_behind_catches_up_from_the_log(s).await;
    }

    #[tokio::test]
    async fn compaction_refuses_old_watch_and_keeps_newest() {
        let (_d, s) = store();
        conformance::compaction_refuses_old_watch_and_keeps_newest(s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_writes_in_one_batch_keep_their_meaning() {
        let (_d, s) = store();
        conformance::racing_writes_in_one_batch_keep_their_meaning(s).await;
    }

    #[tokio::test]
    async fn revision_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let rev = {
            let s = Datastore::new(Arc::new(SqliteBackend::open(&path).unwrap()));
            s.create("/registry/a/b", b"x".to_vec()).await.unwrap();
            s.create("/registry/a/c", b"x".to_vec()).await.unwrap()
        };
        let s = Datastore::new(Arc::new(SqliteBackend::open(&path).unwrap()));
        assert_eq!(s.current_revision().await.unwrap(), rev);
        assert!(s.create("/registry/a/d", b"x".to_vec()).await.unwrap() > rev);
    }

    #[tokio::test]
    async fn file_stays_bounded_under_endless_updates() {
        let (d, s) = store();
        let mut rev = s
            .create("/registry/leases/n", vec![b'x'; 512])
            .await
            .unwrap();
        let size = |d: &tempfile::TempDir| {
            ["state.db", "state.db-wal"]
                .iter()
                .map(|f| {
                    std::fs::metadata(d.path().join(f))
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum::<u64>()
        };
        let mut sizes = Vec::new();
        for round in 0..4 {
            for _ in 0..2000 {
                rev = s
                    .update("/registry/leases/n", vec![b'y'; 512], rev)
                    .await
                    .unwrap();
            }
            s.compact(100).await.unwrap();
            if round > 0 {
                sizes.push(size(&d));
            }
        }
        // After the first round the file reuses freed pages instead of growing.
        let (first, last) = (sizes[0], *sizes.last().unwrap());
        assert!(last <= first + 64 * 1024, "grew from {first} to {last}");
    }
}
