//! HTTP/1.1 over the daemon's Unix socket.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rk3s_api::admin::ErrorBody;
use serde::de::DeserializeOwned;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the rk3s admin socket {path}: {reason}.\nIs the daemon running? Check `systemctl status rk3s-server` (or `rk3s-agent`), or start one with `rk3sd server`; use --socket or RK3S_SOCKET if it listens elsewhere")]
    NotRunning { path: PathBuf, reason: String },
    #[error("permission denied on {path}: the admin socket is for root; run rk3sctl with sudo")]
    Permission { path: PathBuf },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    fn proto(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message: e.to_string(),
        }
    }

    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => ClientError::Permission {
                    path: self.socket.clone(),
                },
                _ => ClientError::NotRunning {
                    path: self.socket.clone(),
                    reason: e.to_string(),
                },
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.proto(e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "rk3s")
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.proto(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.proto(e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.proto(e))?
            .to_bytes();
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
                code: "http".into(),
                message: format!(
                    "the daemon answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            });
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: err.code,
                message: err.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| self.proto(format!("unexpected answer: {e}")))
    }
}
