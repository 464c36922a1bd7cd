//! TLS to PostgreSQL through rustls (`--datastore-cafile`, `--datastore-certfile`,
//! `--datastore-keyfile`). One connector type serves both cases: without TLS
//! settings the connection runs with `sslmode=disable` and the connector is
//! never asked to handshake.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// TLS files for the datastore connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{flag} {}: {cause}", file.display())]
    File {
        flag: &'static str,
        file: PathBuf,
        cause: String,
    },
    #[error("{0}")]
    Config(String),
}

fn read(flag: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError::File {
        flag,
        file: file.to_path_buf(),
        cause: e.to_string(),
    })
}

#[derive(Clone)]
pub struct RustlsConnect(Arc<rustls::ClientConfig>);

/// Settle the connection's TLS: with files, TLS is required (unless the URL
/// asks for a stricter or explicit mode); without, it is off, and a URL
/// that demands TLS without a CA to check it against is an error.
pub fn configure(
    cfg: &mut tokio_postgres::Config,
    files: &TlsFiles,
) -> Result<RustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    if files.is_empty() {
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(TlsError::Config(
                "--datastore-endpoint asks for sslmode=require: give the CA that signed the PostgreSQL server certificate with --datastore-cafile".into(),
            ));
        }
        cfg.ssl_mode(SslMode::Disable);
        let empty = builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        return Ok(RustlsConnect(Arc::new(empty)));
    }
    let ca_file = files.ca.as_ref().ok_or_else(|| {
        TlsError::Config(
            "--datastore-certfile/--datastore-keyfile need --datastore-cafile to verify the server"
                .into(),
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("datastore-cafile", ca_file)?[..]) {
        let c = c.map_err(|e| TlsError::File {
            flag: "datastore-cafile",
            file: ca_file.clone(),
            cause: e.to_string(),
        })?;
        roots.add(c).map_err(|e| TlsError::File {
            flag: "datastore-cafile",
            file: ca_file.clone(),
            cause: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::File {
            flag: "datastore-cafile",
            file: ca_file.clone(),
            cause: "no PEM certificate in the file".into(),
        });
    }
    let builder = builder.with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = rustls_pemfile::certs(&mut &read("datastore-certfile", cert)?[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::File {
                    flag: "datastore-certfile",
                    file: cert.clone(),
                    cause: e.to_string(),
                })?;
            let bad_key = |cause: String| TlsError::File {
                flag: "datastore-keyfile",
                file: key.clone(),
                cause,
            };
            let pk = rustls_pemfile::private_key(&mut &read("datastore-keyfile", key)?[..])
                .map_err(|e| bad_key(e.to_string()))?
                .ok_or_else(|| bad_key("no PEM private key in the file".into()))?;
            builder.with_client_auth_cert(chain, pk).map_err(|e| {
                TlsError::Config(format!("--datastore-certfile/--datastore-keyfile: {e}"))
            })?
        }
        _ => {
            return Err(TlsError::Config(
                "--datastore-certfile and --datastore-keyfile go together".into(),
            ))
        }
    };
    if cfg.get_ssl_mode() != SslMode::Require {
        cfg.ssl_mode(SslMode::Require);
    }
    Ok(RustlsConnect(Arc::new(config)))
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnector {
            config: self.0.clone(),
            name,
        })
    }
}

pub struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is optional; the server certificate is
        // already verified against --datastore-cafile.
        ChannelBinding::none()
    }
}
