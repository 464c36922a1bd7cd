//! One HTTP/1.1 request passed on over a connection the caller opened,
//! upgrades included: the apiserver passes `exec`, `attach` and
//! `portforward` to the node's kubelet over a tunnel stream, and the
//! kubelet passes them to the runtime's stream server over TCP, as
//! upstream's upgrade-aware proxies do. When the far end switches
//! protocols (SPDY/3.1, or a WebSocket channel protocol), both upgraded
//! connections are spliced until either side closes; any other answer is
//! passed back as it is (a refused WebSocket subprotocol then reaches
//! kubectl as the upgrade failure it falls back to SPDY on).
//!
//! Credentials do not travel on: the client's Authorization, cookies and
//! impersonation headers stay with the server that checked them.

use axum::body::Body;
use axum::http::{header, HeaderName, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("invalid request: {0}")]
    Request(#[from] axum::http::Error),
}

/// Headers that carry the client's identity or belong to its hop only.
fn stays_here(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == header::AUTHORIZATION
        || n == header::COOKIE
        || n == header::PROXY_AUTHORIZATION
        || n == header::HOST
        || n.starts_with("impersonate-")
        || n == "keep-alive"
        || n == "proxy-connection"
        || n == header::TE
        || n == header::TRAILER
}

/// Send `req` to `path` (path and query) over `io` and answer with what
/// comes back; after a 101 the two upgraded connections are joined.
pub async fn forward<IO>(
    io: IO,
    mut req: Request<Body>,
    path: &str,
) -> Result<Response<Body>, ForwardError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "forwarded connection ended");
        }
    });
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .header(header::HOST, "localhost");
    for (k, v) in &parts.headers {
        if !stays_here(k) {
            out = out.header(k, v);
        }
    }
    let mut resp = sender.send_request(out.body(body)?).await?;
    let status = resp.status();
    let far_side =
        (status == StatusCode::SWITCHING_PROTOCOLS).then(|| hyper::upgrade::on(&mut resp));
    let (rparts, rbody) = resp.into_parts();
    let mut answer = Response::builder().status(status);
    for (k, v) in &rparts.headers {
        answer = answer.header(k, v);
    }
    if let (Some(client), Some(far)) = (client_side, far_side) {
        tokio::spawn(async move {
            let (client, far) = match tokio::try_join!(client, far) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "an upgrade did not complete");
                    return;
                }
            };
            let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(far));
            if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                tracing::debug!(error = %e, "an upgraded stream ended");
            }
        });
        return Ok(answer.body(Body::empty())?);
    }
    Ok(answer.body(Body::new(rbody))?)
}
