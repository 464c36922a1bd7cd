//! The write queue both backends use: callers send operations, the
//! backend's single writer applies them in batches (group commit) and
//! answers each one.

use super::{CompactStats, DatastoreError, KeyValue, Result, Revision};
use tokio::sync::{mpsc, oneshot};

pub(crate) enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    /// Drop history older than the newest `keep` revisions, at most
    /// `at_most` revisions of it in this transaction.
    Compact {
        keep: u64,
        at_most: u64,
    },
}

pub(crate) enum Reply {
    Rev(Revision),
    Deleted(Revision, KeyValue),
    Compacted(CompactStats),
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Reply>>,
}

/// The sending side, held by the backend.
pub(crate) struct WriteQueue {
    tx: mpsc::Sender<Request>,
}

fn stopped() -> DatastoreError {
    DatastoreError::Unavailable("datastore writer stopped".into())
}

fn unexpected() -> DatastoreError {
    DatastoreError::Unavailable("unexpected datastore writer reply".into())
}

impl WriteQueue {
    pub fn new(depth: usize) -> (Self, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(depth);
        (Self { tx }, rx)
    }

    async fn send(&self, op: Op) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        match self
            .send(Op::Create {
                key: key.into(),
                value,
            })
            .await?
        {
            Reply::Rev(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    pub async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        match self
            .send(Op::Update {
                key: key.into(),
                value,
                expected,
            })
            .await?
        {
            Reply::Rev(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    pub async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue)> {
        match self
            .send(Op::Delete {
                key: key.into(),
                expected,
            })
            .await?
        {
            Reply::Deleted(r, kv) => Ok((r, kv)),
            _ => Err(unexpected()),
        }
    }

    pub async fn compact(&self, keep: u64, at_most: u64) -> Result<CompactStats> {
        match self.send(Op::Compact { keep, at_most }).await? {
            Reply::Compacted(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }
}
