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
//!
//! Checkpoints (copying the WAL into the database, with two fsyncs) run on
//! a thread of their own, never in a commit: SQLite's automatic checkpoint
//! runs inside the commit that crosses its threshold, and on this kind of
//! disk one fsync can take a second, during which no write completes (at
//! ten thousand agents, every heartbeat in that second waited for it).

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
/// How often the checkpointer copies committed WAL frames into the
/// database. Often enough that each copy is small (SQLite's own threshold
/// is 1000 pages); a passive checkpoint does not hold up the writer.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// WAL frames (pages) beyond which the checkpointer also starts the WAL
/// over. A passive checkpoint copies the WAL but cannot restart it while
/// the writer keeps committing, so under steady writes it would grow
/// without end (ten thousand agents write 11-15 MB of WAL a second: a
/// page per table touched by each heartbeat). A restart waits for the
/// writer and holds it while it copies the rest, so it comes after two
/// passive passes, when little is left. 64 MiB, as `journal_size_limit`.
const WAL_RESTART_FRAMES: i64 = 16_384;

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
        // The checkpointer below does it instead (see the module comment).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let (revision, compacted) = read_meta(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_conn(path, false).map_err(unavailable)?);
        }
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let checkpointer = open_conn(path, true).map_err(unavailable)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, stopped, CHECKPOINT_EVERY, WAL_RESTART_FRAMES))
            .map_err(unavailable)?;
        let (tx, rx) = WriteQueue::new(4096);
        let revision = Arc::new(AtomicI64::new(revision));
        let compacted = Arc::new(AtomicI64::new(compacted));
        let w = Writer {
            conn,
            rx,
            events: events.clone(),
            revision: revision.clone(),
            compacted: compacted.clone(),
            _stop_checkpoints: stop_checkpoints,
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

    async fn compact(&self, keep: u64, at_most: u64) -> Result<CompactStats> {
        self.writer.compact(keep, at_most).await
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
    /// Dropped with the writer, which ends the checkpointer.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// The checkpointer: a passive checkpoint `every` ([`CHECKPOINT_EVERY`])
/// until the writer is gone. Passive means it copies what no reader still
/// needs and waits for no one; the writer goes on appending meanwhile. A
/// WAL of `restart_frames` ([`WAL_RESTART_FRAMES`]) or more is started
/// over: RESTART rather than TRUNCATE, so the writer overwrites the file's
/// blocks instead of allocating new ones, whose data every fsync of the
/// database would otherwise wait for (ext4's ordered mode);
/// `journal_size_limit` trims what is beyond it.
fn checkpoints(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
    every: std::time::Duration,
    restart_frames: i64,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let checkpoint = |mode: &str| {
        // (busy, frames in the WAL, frames copied)
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            r.get::<_, i64>(1)
        })
    };
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let done = match checkpoint("PASSIVE") {
            Ok(frames) if frames >= restart_frames => checkpoint("PASSIVE")
                .and_then(|_| checkpoint("RESTART"))
                .map(|_| ()),
            other => other.map(|_| ()),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
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
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for req in &batch {
                results.push(apply(&tx, &req.op, &mut rev, &mut events)?);
            }
            if rev != start_rev {
                tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [rev])?;
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
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
        Op::Compact { keep, at_most } => {
            let old: Revision =
                tx.query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                    r.get(0)
                })?;
            let target = (*rev - *keep as i64).max(0).min(old + *at_most as i64);
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

    #[test]
    fn the_checkpointer_restarts_a_wal_that_keeps_growing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let w = open_conn(&db, true).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // As the writer's: a restarted WAL is cut back to this at its next
        // commit, which is how a restart shows in the file's size.
        w.pragma_update(None, "journal_size_limit", 64 * 4096)
            .unwrap();
        w.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let (stop, stopped) = std::sync::mpsc::channel();
        let c = open_conn(&db, true).unwrap();
        let every = std::time::Duration::from_millis(20);
        let checkpointer = std::thread::spawn(move || checkpoints(c, stopped, every, 64));
        let wal = dir.path().join("state.db-wal");
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // Writes that never pause, as at ten thousand agents: a passive
        // checkpoint alone never starts this WAL over.
        let (mut largest, mut shrank) = (0, false);
        let started = std::time::Instant::now();
        while !shrank && started.elapsed() < std::time::Duration::from_secs(20) {
            w.execute("INSERT INTO t VALUES (?1)", [vec![0u8; 2048]])
                .unwrap();
            let now = size();
            shrank = largest > 2 * 64 * 4096 && now <= 64 * 4096;
            largest = largest.max(now);
        }
        drop(stop);
        checkpointer.join().unwrap();
        assert!(
            shrank,
            "the WAL grew to {largest} bytes and never started over"
        );
    }

    #[tokio::test]
    async fn compaction_goes_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(SqliteBackend::open(&dir.path().join("state.db")).unwrap());
        conformance::compaction_goes_in_bounded_steps(Datastore::new(b.clone()), b).await;
    }

    #[tokio::test]
    async fn commits_leave_checkpoints_to_the_checkpointer() {
        let (d, s) = store();
        let db = d.path().join("state.db");
        let size = || std::fs::metadata(&db).unwrap().len();
        let before = size();
        // About 1 MiB of WAL (a log row and a current row per key): far
        // under SQLite's own threshold of 1000 pages, so only the
        // checkpointer copies it into the database file.
        for i in 0..512 {
            s.create(&format!("/k/{i}"), vec![b'x'; 1024])
                .await
                .unwrap();
        }
        let copied = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            size() > before + 512 * 1024
        });
        assert!(copied, "WAL not checkpointed: {before} -> {} bytes", size());
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
        // The database file once its WAL is copied in (the WAL's own bound
        // is the checkpointer's, tested below).
        let size = |d: &tempfile::TempDir| {
            let db = d.path().join("state.db");
            open_conn(&db, true)
                .unwrap()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            std::fs::metadata(&db).unwrap().len()
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
