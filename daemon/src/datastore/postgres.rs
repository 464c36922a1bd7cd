//! PostgreSQL backend: the external datastore several servers share.
//!
//! Same two tables as SQLite (`rk3s_log`, `rk3s_current`) plus
//! `rk3s_meta`. Every write transaction first locks the `revision` row of
//! `rk3s_meta`, so writers from all servers are serialized and commit in
//! revision order: a reader that sees revision N also sees every revision
//! before it. Each transaction ends with `pg_notify`; every server LISTENs,
//! and on each notification reads the log after the last revision it
//! published and broadcasts those events in order. A lost notification is
//! covered by the next one and by a slow safety tick, so nothing is skipped
//! and nothing arrives out of order.
//!
//! PostgreSQL may go away while the server runs (restart, network cut).
//! Every connection is re-made on demand, every statement has a deadline,
//! and TCP keepalives notice a peer that vanished without a word. A write
//! whose commit was not confirmed is reported as failed (it may or may not
//! have landed; the caller retries at a revision), so no acknowledged write
//! is ever lost.

use super::pgtls::{self, RustlsConnect, TlsFiles};
use super::queue::{Op, Reply, Request, WriteQueue};
use super::{Backend, CompactStats, DatastoreError, Event, EventKind, KeyValue, Result, Revision};
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_postgres::{Client, Statement};

const CHANNEL: &str = "rk3s_events";
const MAX_BATCH: usize = 256;
const READERS: usize = 3;
const SAFETY_TICK: Duration = Duration::from_secs(2);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a statement (or a write transaction) may take before its
/// connection is given up as broken.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A broken writer connection is re-made at most this often, so an outage
/// fails writes quickly instead of queueing them behind connect attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

const SCHEMA: &str = "
SET client_min_messages TO warning;
CREATE TABLE IF NOT EXISTS rk3s_log (
    revision        BIGINT   PRIMARY KEY,
    key             TEXT     COLLATE \"C\" NOT NULL,
    kind            SMALLINT NOT NULL,
    create_revision BIGINT   NOT NULL,
    value           BYTEA    NOT NULL
);
CREATE TABLE IF NOT EXISTS rk3s_current (
    key             TEXT     COLLATE \"C\" PRIMARY KEY,
    create_revision BIGINT   NOT NULL,
    mod_revision    BIGINT   NOT NULL,
    value           BYTEA    NOT NULL
);
CREATE TABLE IF NOT EXISTS rk3s_meta (
    name  TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO rk3s_meta (name, value) VALUES ('revision', 0), ('compacted', 0) ON CONFLICT DO NOTHING;
";

fn unavailable(e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Unavailable(e.to_string())
}

/// tokio-postgres prints server errors as just "db error"; the message
/// and the cause (refused, TLS, pg_hba) are what an operator needs.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn pg(e: tokio_postgres::Error) -> DatastoreError {
    DatastoreError::Unavailable(describe(&e))
}

/// `postgres://user:pass@host:port/db` without the password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn parse_endpoint(url: &str, tls: &TlsFiles) -> Result<(tokio_postgres::Config, RustlsConnect)> {
    let url = url.replacen("postgresql://", "postgres://", 1);
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| DatastoreError::Unavailable(format!("invalid --datastore-endpoint: {e}")))?;
    let connector =
        pgtls::configure(&mut cfg, tls).map_err(|e| DatastoreError::Unavailable(e.to_string()))?;
    Ok((cfg, connector))
}

/// Check the endpoint URL and TLS files without connecting: mistakes there
/// are reported at once instead of being retried like an outage.
pub fn check_settings(url: &str, tls: &TlsFiles) -> Result<()> {
    parse_endpoint(url, tls).map(|_| ())
}

/// Where and how to connect.
struct Endpoint {
    cfg: tokio_postgres::Config,
    tls: RustlsConnect,
}

impl Endpoint {
    fn for_db(&self, db: &str) -> Self {
        let mut cfg = self.cfg.clone();
        cfg.dbname(db);
        Self {
            cfg,
            tls: self.tls.clone(),
        }
    }

    async fn connect(&self) -> Result<Client> {
        let (client, conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.cfg.connect(self.tls.clone()))
                .await
                .map_err(|_| {
                    unavailable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
                })?
                .map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %describe(&e), "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }
}

/// A shared read connection, re-made when it breaks.
struct Reader {
    endpoint: Arc<Endpoint>,
    slot: Mutex<Option<Arc<Client>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Reader {
    fn new(endpoint: Arc<Endpoint>, client: Client) -> Self {
        Self {
            endpoint,
            slot: Mutex::new(Some(Arc::new(client))),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<Client>> {
        self.slot
            .lock()
            .expect("lock")
            .clone()
            .filter(|c| !c.is_closed())
    }

    async fn client(&self) -> Result<Arc<Client>> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let c = Arc::new(self.endpoint.connect().await?);
        *self.slot.lock().expect("lock") = Some(c.clone());
        tracing::info!("PostgreSQL read connection re-established");
        Ok(c)
    }

    fn discard(&self, c: &Arc<Client>) {
        let mut slot = self.slot.lock().expect("lock");
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, c)) {
            *slot = None;
        }
    }

    /// Run one read with a deadline; a timed-out connection is dropped so
    /// the next read connects afresh.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let c = self.client().await?;
        match tokio::time::timeout(OP_TIMEOUT, f(c.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if c.is_closed() {
                    self.discard(&c);
                }
                Err(pg(e))
            }
            Err(_) => {
                self.discard(&c);
                Err(unavailable(format!(
                    "no answer from PostgreSQL within {}s",
                    OP_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

pub struct PostgresBackend {
    description: String,
    writer: WriteQueue,
    readers: Vec<Reader>,
    next_reader: AtomicUsize,
    events: broadcast::Sender<Arc<Event>>,
    published: Arc<AtomicI64>,
}

impl PostgresBackend {
    /// Connect, creating the database and schema if missing.
    pub async fn connect(url: &str, tls: &TlsFiles) -> Result<Self> {
        let (mut cfg, connector) = parse_endpoint(url, tls)?;
        let db = cfg.get_dbname().unwrap_or("kubernetes").to_string();
        cfg.dbname(&db);
        // A peer that vanished (cable cut, host gone) is noticed in ~10 s.
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .connect_timeout(CONNECT_TIMEOUT);
        let endpoint = Arc::new(Endpoint {
            cfg,
            tls: connector,
        });
        // Create the database if it does not exist (needs CREATEDB; skipped if it exists).
        if let Ok(c) = endpoint.for_db("postgres").connect().await {
            let exists = c
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await
                .map_err(pg)?
                .is_some();
            if !exists {
                let quoted = db.replace('"', "\"\"");
                if let Err(e) = c
                    .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
                    .await
                {
                    tracing::debug!(error = %describe(&e), "CREATE DATABASE failed (it may have been created concurrently)");
                }
            }
        }
        let writer_client = endpoint.connect().await?;
        writer_client.batch_execute(SCHEMA).await.map_err(pg)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            readers.push(Reader::new(endpoint.clone(), endpoint.connect().await?));
        }
        let head: Revision = readers[0]
            .run(|c| async move {
                c.query_one("SELECT value FROM rk3s_meta WHERE name = 'revision'", &[])
                    .await
            })
            .await?
            .get(0);
        let (events, _) = broadcast::channel(4096);
        let published = Arc::new(AtomicI64::new(head));
        let (tx, rx) = WriteQueue::new(4096);
        tokio::spawn(writer(endpoint.clone(), Some(writer_client), rx));
        let publisher = Reader::new(endpoint.clone(), endpoint.connect().await?);
        tokio::spawn(listener(
            endpoint,
            publisher,
            events.clone(),
            published.clone(),
        ));
        Ok(Self {
            description: format!(
                "postgres {}",
                redact(&url.replacen("postgresql://", "postgres://", 1))
            ),
            writer: tx,
            readers,
            next_reader: AtomicUsize::new(0),
            events,
            published,
        })
    }

    fn reader(&self) -> &Reader {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        &self.readers[i]
    }
}

fn kind_from(c: i16) -> EventKind {
    match c {
        0 => EventKind::Create,
        1 => EventKind::Update,
        _ => EventKind::Delete,
    }
}

fn prefix_bounds(prefix: &str) -> (String, String) {
    // The upper bound for an unbounded prefix: above every printable key.
    (
        prefix.to_string(),
        super::prefix_end(prefix).unwrap_or_else(|| "\u{7f}".into()),
    )
}

/// The writer's connection with its statements, prepared once: parsing
/// and planning each statement anew was a good part of PostgreSQL's time,
/// and preparing on the fly costs a round trip of its own.
struct WriteConn {
    client: Client,
    lock: Statement,
    create: Statement,
    update: Statement,
    delete: Statement,
    state: Statement,
    finish: Statement,
}

impl WriteConn {
    async fn new(client: Client) -> std::result::Result<Self, tokio_postgres::Error> {
        let lock = client
            .prepare("SELECT value FROM rk3s_meta WHERE name = 'revision' FOR UPDATE")
            .await?;
        // Each write is one statement: the change and its log entry, made
        // only when the key is (or is not) there at the expected revision.
        let create = client
            .prepare(
                "WITH ins AS (INSERT INTO rk3s_current (key, create_revision, mod_revision, value) \
                 VALUES ($1, $2, $2, $3) ON CONFLICT (key) DO NOTHING RETURNING key) \
                 INSERT INTO rk3s_log (revision, key, kind, create_revision, value) \
                 SELECT $2, $1, 0, $2, $3 FROM ins RETURNING revision",
            )
            .await?;
        let update = client
            .prepare(
                "WITH upd AS (UPDATE rk3s_current SET mod_revision = $2, value = $3 \
                 WHERE key = $1 AND mod_revision = $4 RETURNING create_revision) \
                 INSERT INTO rk3s_log (revision, key, kind, create_revision, value) \
                 SELECT $2, $1, 1, create_revision, $3 FROM upd RETURNING revision",
            )
            .await?;
        let delete = client
            .prepare(
                "WITH del AS (DELETE FROM rk3s_current WHERE key = $1 \
                 AND ($3::BIGINT IS NULL OR mod_revision = $3) \
                 RETURNING create_revision, mod_revision, value), \
                 ins AS (INSERT INTO rk3s_log (revision, key, kind, create_revision, value) \
                 SELECT $2, $1, 2, create_revision, value FROM del) \
                 SELECT create_revision, mod_revision, value FROM del",
            )
            .await?;
        let state = client
            .prepare("SELECT mod_revision FROM rk3s_current WHERE key = $1")
            .await?;
        let finish = client
            .prepare(
                "WITH u AS (UPDATE rk3s_meta SET value = $1 WHERE name = 'revision') \
                 SELECT pg_notify($2, $3)",
            )
            .await?;
        Ok(Self {
            client,
            lock,
            create,
            update,
            delete,
            state,
            finish,
        })
    }
}

/// Group commit: one transaction per batch, revisions assigned under the
/// `rk3s_meta` row lock. The connection is re-made when it breaks (one
/// attempt per `RECONNECT_EVERY`); while it cannot be, writes fail with
/// `Unavailable` after that attempt.
async fn writer(endpoint: Arc<Endpoint>, client: Option<Client>, mut rx: mpsc::Receiver<Request>) {
    let mut conn = match client {
        Some(c) => WriteConn::new(c).await.ok(),
        None => None,
    };
    let mut last_attempt: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            // At most one attempt per RECONNECT_EVERY; a write arriving
            // sooner waits for the next one rather than failing unasked
            // (PostgreSQL may be back: the reads may already have seen it).
            if let Some(t) = last_attempt {
                tokio::time::sleep(RECONNECT_EVERY.saturating_sub(t.elapsed())).await;
            }
            last_attempt = Some(Instant::now());
            let made = match endpoint.connect().await {
                Ok(c) => WriteConn::new(c).await.map_err(|e| describe(&e)),
                Err(e) => Err(e.to_string()),
            };
            match made {
                Ok(c) => {
                    tracing::info!("PostgreSQL write connection re-established");
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL unreachable; failing writes until it returns")
                }
            }
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let outcome = match conn.as_mut().filter(|c| !c.client.is_closed()) {
            None => Err("no connection to PostgreSQL".to_string()),
            Some(c) => match tokio::time::timeout(OP_TIMEOUT, commit(c, &batch)).await {
                Ok(Ok(results)) => Ok(results),
                Ok(Err(e)) => Err(describe(&e)),
                Err(_) => {
                    // A half-finished transaction on a wedged connection:
                    // drop it; PostgreSQL rolls back what did not commit.
                    conn = None;
                    Err(format!("no answer within {}s", OP_TIMEOUT.as_secs()))
                }
            },
        };
        match outcome {
            Ok(results) => {
                for (req, res) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "PostgreSQL transaction failed; writes not applied");
                for req in batch {
                    let _ = req.reply.send(Err(unavailable(&e)));
                }
            }
        }
    }
}

/// One batch in one transaction. The writes are sent together (tokio-postgres
/// pipelines statements issued at once, and PostgreSQL runs them in order),
/// each at the revision it gets if every write before it succeeds. A write
/// that does not apply (the key exists, is gone, or moved on) leaves its
/// revision unused: revisions only ever grow, as watchers need, but may
/// skip, as kine's do. Waiting for each write's answer before sending the
/// next made the batch as long as its round trips, and this single writer,
/// holding the cluster-wide revision lock, the bottleneck of every server.
async fn commit(
    conn: &mut WriteConn,
    batch: &[Request],
) -> std::result::Result<Vec<Result<Reply>>, tokio_postgres::Error> {
    let tx = conn.client.transaction().await?;
    let start: Revision = tx.query_one(&conn.lock, &[]).await?.get(0);
    let (create, update, delete) = (&conn.create, &conn.update, &conn.delete);
    let writes = batch.iter().zip(start + 1..).map(|(req, rev)| {
        let tx = &tx;
        async move {
            // None: not a write, or a write that did not apply.
            let row = match &req.op {
                Op::Create { key, value } => tx.query_opt(create, &[key, &rev, value]).await?,
                Op::Update {
                    key,
                    value,
                    expected,
                } => tx.query_opt(update, &[key, &rev, value, expected]).await?,
                Op::Delete { key, expected } => {
                    tx.query_opt(delete, &[key, &rev, expected]).await?
                }
                Op::Compact { .. } => None,
            };
            Ok::<_, tokio_postgres::Error>((rev, row))
        }
    });
    let sent = futures_util::future::try_join_all(writes).await?;
    // The last write that applied; compactions count back from it.
    let head = sent
        .iter()
        .filter(|(_, row)| row.is_some())
        .map(|(rev, _)| *rev)
        .max()
        .unwrap_or(start);
    let mut results = Vec::with_capacity(batch.len());
    for (req, (rev, row)) in batch.iter().zip(sent) {
        let r = match (&req.op, row) {
            (Op::Create { .. } | Op::Update { .. }, Some(_)) => Ok(Reply::Rev(rev)),
            (Op::Delete { key, .. }, Some(row)) => Ok(Reply::Deleted(
                rev,
                KeyValue {
                    key: key.clone(),
                    value: row.get(2),
                    create_revision: row.get(0),
                    mod_revision: row.get(1),
                },
            )),
            (Op::Create { key, .. }, None) => Err(DatastoreError::AlreadyExists(key.clone())),
            (Op::Update { key, expected, .. }, None) => {
                not_applied(&tx, &conn.state, key, *expected).await?
            }
            (Op::Delete { key, expected }, None) => {
                not_applied(&tx, &conn.state, key, expected.unwrap_or(0)).await?
            }
            (Op::Compact { keep, at_most }, _) => {
                Ok(Reply::Compacted(compact(&tx, head, *keep, *at_most).await?))
            }
        };
        results.push(r);
    }
    if head != start {
        tx.query_one(&conn.finish, &[&head, &CHANNEL, &head.to_string()])
            .await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// Why an update or delete at `expected` did not apply, as the key
/// stands now.
async fn not_applied(
    tx: &tokio_postgres::Transaction<'_>,
    state: &Statement,
    key: &str,
    expected: Revision,
) -> std::result::Result<Result<Reply>, tokio_postgres::Error> {
    Ok(Err(match tx.query_opt(state, &[&key]).await? {
        None => DatastoreError::NotFound(key.to_string()),
        Some(row) => DatastoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: row.get(0),
        },
    }))
}

/// Drop log entries more than `keep` revisions behind `head`, at most
/// `at_most` revisions of them.
async fn compact(
    tx: &tokio_postgres::Transaction<'_>,
    head: Revision,
    keep: u64,
    at_most: u64,
) -> std::result::Result<CompactStats, tokio_postgres::Error> {
    let old: i64 = tx
        .query_one("SELECT value FROM rk3s_meta WHERE name = 'compacted'", &[])
        .await?
        .get(0);
    let target = (head - keep as i64).max(0).min(old + at_most as i64);
    if target <= old {
        return Ok(CompactStats {
            compacted_to: old,
            events_deleted: 0,
        });
    }
    let n = tx
        .execute("DELETE FROM rk3s_log WHERE revision <= $1", &[&target])
        .await?;
    tx.execute(
        "UPDATE rk3s_meta SET value = $1 WHERE name = 'compacted'",
        &[&target],
    )
    .await?;
    Ok(CompactStats {
        compacted_to: target,
        events_deleted: n,
    })
}

async fn read_events(
    client: &Client,
    after: Revision,
    limit: i64,
    bounds: Option<(&str, &str)>,
) -> std::result::Result<Vec<Event>, tokio_postgres::Error> {
    let rows = match bounds {
        Some((lo, hi)) => {
            client
                .query(
                    "SELECT revision, key, kind, create_revision, value FROM rk3s_log
                     WHERE revision > $1 AND key >= $2 AND key < $3 ORDER BY revision LIMIT $4",
                    &[&after, &lo, &hi, &limit],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT revision, key, kind, create_revision, value FROM rk3s_log WHERE revision > $1 ORDER BY revision LIMIT $2",
                    &[&after, &limit],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| Event {
            revision: r.get(0),
            key: r.get(1),
            kind: kind_from(r.get(2)),
            create_revision: r.get(3),
            value: r.get(4),
        })
        .collect())
}

/// LISTEN for commits from any server and publish the log in order.
async fn listener(
    endpoint: Arc<Endpoint>,
    reader: Reader,
    events: broadcast::Sender<Arc<Event>>,
    published: Arc<AtomicI64>,
) {
    let wake = Arc::new(Notify::new());
    // A dedicated connection whose notifications wake the publisher.
    {
        let wake = wake.clone();
        tokio::spawn(async move {
            loop {
                let connected = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    endpoint.cfg.connect(endpoint.tls.clone()),
                )
                .await;
                match connected {
                    Ok(Ok((client, mut conn))) => {
                        let wake2 = wake.clone();
                        let driver = tokio::spawn(async move {
                            use futures_util::StreamExt;
                            let mut stream =
                                futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                            while let Some(m) = stream.next().await {
                                match m {
                                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                        wake2.notify_one()
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        if client
                            .batch_execute(&format!("LISTEN {CHANNEL}"))
                            .await
                            .is_ok()
                        {
                            // Catch up on whatever committed before LISTEN took effect.
                            wake.notify_one();
                            let _ = driver.await;
                            tracing::warn!("PostgreSQL LISTEN connection lost; reconnecting");
                        } else {
                            driver.abort();
                        }
                        drop(client);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying")
                    }
                    Err(_) => tracing::warn!(
                        "cannot LISTEN on PostgreSQL: connection timed out; retrying"
                    ),
                }
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(SAFETY_TICK) => {}
        }
        loop {
            let after = published.load(Ordering::Acquire);
            match reader
                .run(|c| async move { read_events(&c, after, 1000, None).await })
                .await
            {
                Ok(page) => {
                    let n = page.len();
                    for ev in page {
                        published.store(ev.revision, Ordering::Release);
                        let _ = events.send(Arc::new(ev));
                    }
                    if n < 1000 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the PostgreSQL event log failed; will retry");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let row = self
            .reader()
            .run(|c| async move {
                c.query_opt(
                    "SELECT key, value, create_revision, mod_revision FROM rk3s_current WHERE key = $1",
                    &[&key],
                )
                .await
            })
            .await?;
        Ok(row.map(|r| KeyValue {
            key: r.get(0),
            value: r.get(1),
            create_revision: r.get(2),
            mod_revision: r.get(3),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Revision, Vec<KeyValue>)> {
        let (lo, hi) = prefix_bounds(prefix);
        // One statement, one snapshot: the items and the revision agree.
        let rows = self
            .reader()
            .run(|c| async move {
                c.query(
                    "SELECT (SELECT value FROM rk3s_meta WHERE name = 'revision'), c.key, c.value, c.create_revision, c.mod_revision
                     FROM (SELECT 1) AS one LEFT JOIN rk3s_current c ON c.key >= $1 AND c.key < $2 ORDER BY c.key",
                    &[&lo, &hi],
                )
                .await
            })
            .await?;
        let rev: Revision = rows.first().map(|r| r.get(0)).unwrap_or(0);
        let items = rows
            .iter()
            .filter_map(|r| {
                let key: Option<String> = r.get(1);
                Some(KeyValue {
                    key: key?,
                    value: r.get(2),
                    create_revision: r.get(3),
                    mod_revision: r.get(4),
                })
            })
            .collect();
        Ok((rev, items))
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
        meta(self.reader(), "revision").await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        meta(self.reader(), "compacted").await
    }

    async fn events_after(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let (lo, hi) = prefix_bounds(prefix);
        let compacted = self.compacted_revision().await?;
        if after < compacted {
            return Err(DatastoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        // Only what the publisher has already broadcast: the catch-up read
        // and the broadcast then meet without a gap or a reordering.
        let head = self.published.load(Ordering::Acquire);
        let mut events = self
            .reader()
            .run(|c| async move { read_events(&c, after, limit as i64, Some((&lo, &hi))).await })
            .await?;
        events.retain(|e| e.revision <= head);
        Ok(events)
    }

    async fn compact(&self, keep: u64, at_most: u64) -> Result<CompactStats> {
        self.writer.compact(keep, at_most).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

async fn meta(reader: &Reader, name: &str) -> Result<Revision> {
    Ok(reader
        .run(|c| async move {
            c.query_one("SELECT value FROM rk3s_meta WHERE name = $1", &[&name])
                .await
        })
        .await?
        .get(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://rk3s:s3cret@db:5432/k"),
            "postgres://rk3s:***@db:5432/k"
        );
        assert_eq!(super::redact("postgres://db/k"), "postgres://db/k");
        assert_eq!(
            super::redact("postgres://rk3s@db/k"),
            "postgres://rk3s@db/k"
        );
    }
}
