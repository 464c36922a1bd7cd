//! Byte streams multiplexed over one agent tunnel, with per-stream flow
//! control: each end may have at most [`STREAM_WINDOW_BYTES`] of a stream
//! in flight, and the reader grants more only as its application reads.
//! A reader that stalls therefore holds its own window and nothing else:
//! the tunnel, its heartbeats and every other stream keep moving.
//!
//! Transport-agnostic: the session feeds binary frames in with
//! [`Mux::deliver`] and writes out what [`Mux::new`]'s receiver yields,
//! after its own control messages (the sessions poll that receiver last,
//! so a heartbeat never queues behind data). Each stream is a
//! [`DuplexStream`] to its application: an HTTP client on the server, the
//! kubelet's API on the agent.

use rk3s_api::tunnel::{StreamFrame, STREAM_CHUNK_BYTES, STREAM_WINDOW_BYTES};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// What the local end of a stream buffers besides the window.
const LOCAL_BUFFER_BYTES: usize = 2 * STREAM_CHUNK_BYTES;

/// Send credit beyond which a peer's `Window` is a protocol violation
/// (a window of 1 GiB is a bug, and the semaphore has a ceiling).
const MAX_CREDIT: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the tunnel is closed")]
    Closed,
    #[error("the peer does not accept streams")]
    NotAccepting,
}

/// A stream the peer opened.
pub struct Accepted {
    pub target: String,
    pub stream: DuplexStream,
}

struct Entry {
    /// Data from the peer, for the task that writes it to the local end;
    /// `None` once the peer closed its side.
    incoming: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Bytes the peer may still send: granted minus received.
    budget: u64,
    /// What the peer lets us send.
    credit: Arc<Semaphore>,
    cancel: CancellationToken,
    /// Our side sent Close / the peer's Close came: both → the entry goes.
    local_closed: bool,
    remote_closed: bool,
}

struct Inner {
    /// Encoded frames for the session to write. Unbounded on purpose: data
    /// in it is bounded by the windows (streams × window), and control
    /// frames (grants, closes) must never wait behind a full queue.
    out: mpsc::UnboundedSender<Vec<u8>>,
    streams: Mutex<HashMap<u32, Entry>>,
    next_id: AtomicU32,
    accept: Option<mpsc::Sender<Accepted>>,
    cancel: CancellationToken,
}

/// One tunnel's streams. Cloned handles share them; [`Mux::shutdown`]
/// (or the session ending, which calls it) ends every stream.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

impl Mux {
    /// A multiplexer whose outgoing frames come out of the receiver.
    /// `accept` receives the streams the peer opens (`None`: the peer may
    /// not open any; each attempt is reset).
    pub fn new(accept: Option<mpsc::Sender<Accepted>>) -> (Self, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let m = Self {
            inner: Arc::new(Inner {
                out,
                streams: Mutex::new(HashMap::new()),
                next_id: AtomicU32::new(1),
                accept,
                cancel: CancellationToken::new(),
            }),
        };
        (m, rx)
    }

    /// Open a stream to `target` on the peer.
    pub fn open(&self, target: &str) -> Result<DuplexStream, MuxError> {
        if self.inner.cancel.is_cancelled() {
            return Err(MuxError::Closed);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let local = self.start(id);
        self.send(StreamFrame::Open {
            id,
            target: target.to_string(),
        })?;
        Ok(local)
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.inner.streams.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// End every stream (their applications see EOF) and refuse new ones.
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.streams.lock().expect("lock").clear();
    }

    /// Handle one binary frame from the peer. An error is a frame that
    /// cannot be read at all (the session treats it as a protocol
    /// violation); a frame for a stream that is gone is ignored, as late
    /// frames after a reset are normal.
    pub fn deliver(&self, frame: &[u8]) -> Result<(), rk3s_api::tunnel::FrameError> {
        match StreamFrame::decode(frame)? {
            StreamFrame::Open { id, target } => self.accept(id, target),
            StreamFrame::Data { id, data } => {
                let mut streams = self.inner.streams.lock().expect("lock");
                let Some(e) = streams.get_mut(&id) else {
                    return Ok(());
                };
                let n = data.len() as u64;
                let sent = match &e.incoming {
                    Some(tx) if n <= e.budget => {
                        e.budget -= n;
                        tx.send(data).is_ok()
                    }
                    _ => false,
                };
                if !sent {
                    drop(streams);
                    self.reset(id, "data beyond the stream's window or after its close");
                }
            }
            StreamFrame::Window { id, increment } => {
                let streams = self.inner.streams.lock().expect("lock");
                if let Some(e) = streams.get(&id) {
                    if e.credit.available_permits() + increment as usize > MAX_CREDIT {
                        drop(streams);
                        self.reset(id, "window grown beyond 1 GiB");
                    } else {
                        e.credit.add_permits(increment as usize);
                    }
                }
            }
            StreamFrame::Close { id } => {
                let mut streams = self.inner.streams.lock().expect("lock");
                if let Some(e) = streams.get_mut(&id) {
                    e.incoming = None;
                    e.remote_closed = true;
                    if e.local_closed {
                        streams.remove(&id);
                    }
                }
            }
            StreamFrame::Reset { id, reason } => {
                if let Some(e) = self.inner.streams.lock().expect("lock").remove(&id) {
                    tracing::debug!(id, reason, "stream reset by the peer");
                    e.cancel.cancel();
                }
            }
        }
        Ok(())
    }

    fn accept(&self, id: u32, target: String) {
        let known = self.inner.streams.lock().expect("lock").contains_key(&id);
        let Some(accept) = self.inner.accept.as_ref().filter(|_| !known) else {
            let _ = self.send(StreamFrame::Reset {
                id,
                reason: "streams cannot be opened from this side".into(),
            });
            return;
        };
        let stream = self.start(id);
        if accept.try_send(Accepted { target, stream }).is_err() {
            self.reset(id, "too many streams are being opened");
        }
    }

    fn send(&self, f: StreamFrame) -> Result<(), MuxError> {
        self.inner
            .out
            .send(f.encode())
            .map_err(|_| MuxError::Closed)
    }

    /// Drop stream `id` here and tell the peer.
    fn reset(&self, id: u32, reason: &str) {
        if let Some(e) = self.inner.streams.lock().expect("lock").remove(&id) {
            e.cancel.cancel();
        }
        let _ = self.send(StreamFrame::Reset {
            id,
            reason: reason.to_string(),
        });
    }

    /// Register stream `id` and start the two tasks that move its bytes;
    /// the application's end is returned.
    fn start(&self, id: u32) -> DuplexStream {
        let (app, local) = tokio::io::duplex(LOCAL_BUFFER_BYTES);
        let (mut rd, mut wr) = tokio::io::split(local);
        let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let credit = Arc::new(Semaphore::new(STREAM_WINDOW_BYTES as usize));
        let cancel = self.inner.cancel.child_token();
        self.inner.streams.lock().expect("lock").insert(
            id,
            Entry {
                incoming: Some(in_tx),
                budget: u64::from(STREAM_WINDOW_BYTES),
                credit: credit.clone(),
                cancel: cancel.clone(),
                local_closed: false,
                remote_closed: false,
            },
        );
        // Out: what the application writes, as Data within the credit.
        let mux = self.clone();
        let c = cancel.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
            loop {
                let n = tokio::select! {
                    _ = c.cancelled() => return,
                    r = rd.read(&mut buf) => r.unwrap_or(0),
                };
                if n == 0 {
                    mux.closed_locally(id);
                    return;
                }
                tokio::select! {
                    _ = c.cancelled() => return,
                    p = credit.acquire_many(n as u32) => match p {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    },
                }
                let data = buf[..n].to_vec();
                if mux.send(StreamFrame::Data { id, data }).is_err() {
                    return;
                }
            }
        });
        // In: the peer's Data to the application, granting as it is taken.
        let mux = self.clone();
        tokio::spawn(async move {
            let mut consumed = 0u32;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    d = in_rx.recv() => d,
                };
                let Some(data) = next else {
                    let _ = wr.shutdown().await;
                    return;
                };
                let written = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = wr.write_all(&data) => r,
                };
                if written.is_err() {
                    // The application is gone: stop the peer sending.
                    mux.reset(id, "the reader closed the stream");
                    return;
                }
                consumed += data.len() as u32;
                // Grant in quarters of the window: fewer frames, and the
                // sender never waits while a quarter is in flight.
                if consumed >= STREAM_WINDOW_BYTES / 4 {
                    mux.grant(id, consumed);
                    consumed = 0;
                }
            }
        });
        app
    }

    fn grant(&self, id: u32, increment: u32) {
        let mut streams = self.inner.streams.lock().expect("lock");
        if let Some(e) = streams.get_mut(&id) {
            e.budget += u64::from(increment);
            drop(streams);
            let _ = self.send(StreamFrame::Window { id, increment });
        }
    }

    fn closed_locally(&self, id: u32) {
        let mut streams = self.inner.streams.lock().expect("lock");
        let Some(e) = streams.get_mut(&id) else {
            return;
        };
        e.local_closed = true;
        if e.remote_closed {
            streams.remove(&id);
        }
        drop(streams);
        let _ = self.send(StreamFrame::Close { id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two ends joined as a tunnel joins them: each one's frames are the
    /// other's input. The server end opens; the agent end accepts.
    fn pair() -> (Mux, Mux, mpsc::Receiver<Accepted>) {
        let (accepted, accepts) = mpsc::channel(16);
        let (server, mut s_out) = Mux::new(None);
        let (agent, mut a_out) = Mux::new(Some(accepted));
        let (s, a) = (server.clone(), agent.clone());
        tokio::spawn(async move {
            while let Some(f) = s_out.recv().await {
                a.deliver(&f).unwrap();
            }
        });
        tokio::spawn(async move {
            while let Some(f) = a_out.recv().await {
                s.deliver(&f).unwrap();
            }
        });
        (server, agent, accepts)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_closes_end_both_sides() {
        let (server, agent, mut accepts) = pair();
        let s = server.open("kubelet").unwrap();
        let acc = accepts.recv().await.unwrap();
        assert_eq!(acc.target, "kubelet");
        let a = acc.stream;
        let up = pattern(3 * STREAM_WINDOW_BYTES as usize + 17, 1);
        let down = pattern(2 * STREAM_WINDOW_BYTES as usize + 5, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let agent_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut r, mut w) = tokio::io::split(a);
            let writer = tokio::spawn(async move {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            });
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got, up2);
        });
        let (mut r, mut w) = tokio::io::split(s);
        let writer = tokio::spawn(async move {
            w.write_all(&up).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, down);
        writer.await.unwrap();
        agent_side.await.unwrap();
        // Both sides closed: the streams are forgotten on both ends.
        for _ in 0..100 {
            if server.is_empty() && agent.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((server.len(), agent.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_stalled_reader_holds_its_window_and_nothing_else() {
        let (server, _agent, mut accepts) = pair();
        // Stream 1: the agent writes 8 MiB that the server never reads.
        let stalled = server.open("kubelet").unwrap();
        let mut a1 = accepts.recv().await.unwrap().stream;
        let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = pushed.clone();
        tokio::spawn(async move {
            let chunk = vec![7u8; 16 * 1024];
            for _ in 0..512 {
                if a1.write_all(&chunk).await.is_err() {
                    return;
                }
                p.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        });
        // Stream 2: 4 MiB each way, through the same tunnel, meanwhile.
        let s2 = server.open("kubelet").unwrap();
        let a2 = accepts.recv().await.unwrap().stream;
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(a2);
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let data = pattern(4 << 20, 3);
        let (mut r, mut w) = tokio::io::split(s2);
        let d = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&d).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
            .await
            .expect("the second stream was held up by the stalled one")
            .unwrap();
        assert_eq!(got, data);
        writer.await.unwrap();
        echo.await.unwrap();
        // The stalled stream's writer got no further than its window and
        // the buffers at either end.
        let limit = STREAM_WINDOW_BYTES as usize
            + 2 * LOCAL_BUFFER_BYTES
            + 2 * STREAM_CHUNK_BYTES
            + 16 * 1024;
        let stuck = pushed.load(Ordering::Relaxed);
        assert!(
            stuck <= limit,
            "{stuck} bytes went into a stream nobody reads (limit {limit})"
        );
        // Reading it now lets it finish.
        let mut rest = Vec::new();
        let (mut sr, _sw) = tokio::io::split(stalled);
        let mut buf = vec![0u8; 64 * 1024];
        while rest.len() < 8 << 20 {
            let n = tokio::time::timeout(Duration::from_secs(10), sr.read(&mut buf))
                .await
                .expect("the stalled stream never resumed")
                .unwrap();
            assert!(n > 0, "early EOF after {}", rest.len());
            rest.extend_from_slice(&buf[..n]);
        }
        assert!(rest.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn a_dropped_end_ends_the_other() {
        let (server, agent, mut accepts) = pair();
        let s = server.open("kubelet").unwrap();
        let mut a = accepts.recv().await.unwrap().stream;
        drop(s);
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "the agent's end saw no EOF");
        // Writing into a stream whose reader is gone ends it too.
        let _ = a.write_all(&[1; 1024]).await;
        drop(a);
        for _ in 0..200 {
            if server.is_empty() && agent.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((server.len(), agent.len()), (0, 0));
    }

    #[tokio::test]
    async fn data_beyond_the_window_resets_the_stream() {
        let (accepted, mut accepts) = mpsc::channel(1);
        let (agent, mut out) = Mux::new(Some(accepted));
        agent
            .deliver(
                &StreamFrame::Open {
                    id: 5,
                    target: "kubelet".into(),
                }
                .encode(),
            )
            .unwrap();
        let _stream = accepts.recv().await.unwrap();
        let flood = vec![0u8; STREAM_WINDOW_BYTES as usize + 1];
        agent
            .deliver(&StreamFrame::Data { id: 5, data: flood }.encode())
            .unwrap();
        let f = StreamFrame::decode(&out.recv().await.unwrap()).unwrap();
        assert!(matches!(f, StreamFrame::Reset { id: 5, .. }), "{f:?}");
        assert!(agent.is_empty());
        // A side that accepts nothing refuses opens.
        let (server, mut s_out) = Mux::new(None);
        server
            .deliver(
                &StreamFrame::Open {
                    id: 1,
                    target: "x".into(),
                }
                .encode(),
            )
            .unwrap();
        let f = StreamFrame::decode(&s_out.recv().await.unwrap()).unwrap();
        assert!(matches!(f, StreamFrame::Reset { id: 1, .. }), "{f:?}");
        assert!(agent.deliver(&[9, 9]).is_err());
    }
}
