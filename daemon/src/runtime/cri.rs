//! The CRI v1 client (k8s-cri's generated tonic client) over the runtime's
//! Unix socket.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, VersionRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// What a CRI call can fail with, worded for a node condition.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Call(String),
}

impl From<tonic::Status> for CriError {
    fn from(s: tonic::Status) -> Self {
        CriError::Call(format!("{:?}: {}", s.code(), s.message()))
    }
}

impl Cri {
    /// Connect to the CRI socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let path: PathBuf = socket.to_path_buf();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::from_static("http://[::1]:1")
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| {
                CriError::Connect(format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ))
            })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `containerd://1.6.20`, as a node's containerRuntimeVersion.
    pub async fn version(&self) -> Result<String, CriError> {
        let v = self
            .runtime
            .clone()
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    /// What keeps the runtime from running pods (empty when RuntimeReady
    /// holds), and why the pod network is not ready, if it is not.
    pub async fn status(&self) -> Result<CriStatus, CriError> {
        let s = self
            .runtime
            .clone()
            .status(StatusRequest { verbose: false })
            .await?
            .into_inner();
        let mut out = CriStatus::default();
        for c in s.status.map(|s| s.conditions).unwrap_or_default() {
            if c.status {
                continue;
            }
            let text = format!(
                "{}=false reason:{} message:{}",
                c.r#type, c.reason, c.message
            );
            match c.r#type.as_str() {
                "NetworkReady" => {
                    out.network = Some(format!("container runtime network not ready: {text}"))
                }
                _ => out.runtime.push(text),
            }
        }
        Ok(out)
    }
}

impl Cri {
    /// The sandbox (pause) image the runtime is configured with, from its
    /// verbose `Status` (containerd reports its CRI config there as JSON;
    /// `None` when a runtime does not).
    pub async fn sandbox_image(&self) -> Option<String> {
        let s = self
            .runtime
            .clone()
            .status(StatusRequest { verbose: true })
            .await
            .ok()?
            .into_inner();
        sandbox_image_of(&s.info)
    }
}

/// `sandboxImage` of the JSON config in a verbose `Status`'s info.
fn sandbox_image_of(info: &std::collections::HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    config["sandboxImage"]
        .as_str()
        .filter(|i| !i.is_empty())
        .map(str::to_string)
}

/// CRI `Status` as the node's conditions need it.
#[derive(Debug, Default, PartialEq)]
pub struct CriStatus {
    pub runtime: Vec<String>,
    pub network: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_image_comes_from_the_verbose_config() {
        let info = |config: &str| {
            std::collections::HashMap::from([("config".to_string(), config.to_string())])
        };
        assert_eq!(
            sandbox_image_of(&info(
                r#"{"sandboxImage":"registry.local/pause:3.9","x":1}"#
            )),
            Some("registry.local/pause:3.9".into())
        );
        assert_eq!(sandbox_image_of(&info(r#"{"sandboxImage":""}"#)), None);
        assert_eq!(sandbox_image_of(&info("not json")), None);
        assert_eq!(sandbox_image_of(&Default::default()), None);
    }
}
