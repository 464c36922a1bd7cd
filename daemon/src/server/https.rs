//! Serving an axum router over TLS (the API port) or a Unix socket (the
//! admin socket), with limits that keep one bad client from hurting others:
//! a TLS handshake and header timeout (which also closes idle keep-alive
//! connections: hyper starts it whenever a connection waits for its next
//! request), a bounded header buffer, a body size limit and a deadline for
//! every request that is not long-running, each a flag ([`Limits`]).

use crate::apiserver::authn::Caller;
use crate::registry::KubeError;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests with more header bytes than this are refused (431/400).
const MAX_HEADER_BUF: usize = 64 * 1024;

/// What one client may take of :6443.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `--request-header-timeout`: to finish the TLS handshake, to send a
    /// request's headers, and to start the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// `--request-timeout`: a request that is not long-running (a watch, an
    /// upgrade, a followed log) must be read and answered within this.
    pub request_timeout: Duration,
    /// `--max-request-body-bytes`.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    /// kube-apiserver's: 60 s per request, 3 MiB per body; Go's servers
    /// give headers 10 s in K3s's supervisor.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

/// Serve one connection until it ends or `cancel` fires (then gracefully).
pub async fn serve_connection<S>(
    stream: S,
    app: Router,
    header_timeout: Duration,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BUF);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Accept TLS connections until `cancel`; waits for open connections to drain.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    // The body limit is ours (a `Status`, and the flag's size), not axum's
    // plain-text 2 MB default.
    let app = app
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(limits, limit_request));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, cancel) = (acceptor.clone(), app.clone(), cancel.clone());
        tracker.spawn(async move {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The client certificate (if any) is the caller's identity.
                    let caller = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Caller::from_cert(c.as_ref()))
                        .unwrap_or_default();
                    let app = app.layer(axum::Extension(caller));
                    serve_connection(stream, app, limits.header_timeout, cancel).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

/// Watches, upgrades (tunnels, exec, port-forward) and followed logs run
/// for as long as the client wants; upstream's `--request-timeout` spares
/// them the same way.
fn long_running(req: &Request) -> bool {
    let query = req.uri().query().unwrap_or("");
    let flag = |name: &str| {
        query.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == name && (v == "true" || v == "1"))
        })
    };
    req.headers().contains_key(http::header::UPGRADE)
        || req.uri().path().contains("/watch/")
        || flag("watch")
        || flag("follow")
}

/// The body limit and the request deadline, answered as upstream's
/// `Status` objects (413 RequestEntityTooLarge, 504 Timeout).
async fn limit_request(
    axum::extract::State(limits): axum::extract::State<Limits>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let max = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return KubeError::TooLarge(max).into_response();
    }
    if long_running(&req) {
        return next.run(req).await;
    }
    let work = async {
        // Read the body here, bounded, so a chunked upload cannot exceed the
        // limit either and a slow one counts against the deadline.
        let (parts, body) = req.into_parts();
        let bytes = match http_body_util::Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return KubeError::TooLarge(max).into_response()
            }
            Err(e) => {
                return KubeError::BadRequest(format!("reading the request body: {e}"))
                    .into_response()
            }
        };
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    };
    match tokio::time::timeout(limits.request_timeout, work).await {
        Ok(resp) => resp,
        Err(_) => KubeError::Timeout.into_response(),
    }
}
