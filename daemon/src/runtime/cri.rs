//! The CRI v1 client (k8s-cri's generated tonic client) over the runtime's
//! Unix socket.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ContainerStatusRequest, StatusRequest, VersionRequest};
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

    /// The host pid of container `id`'s init process, from its verbose
    /// status (`None` when the runtime does not report one).
    pub async fn container_pid(&self, id: &str) -> Option<u32> {
        let s = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            })
            .await
            .ok()?
            .into_inner();
        pid_of(&s.info)
    }
}

/// `pid` of the JSON under `info` in a verbose `ContainerStatus` (as
/// containerd reports it).
fn pid_of(info: &std::collections::HashMap<String, String>) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v["pid"].as_u64()?.try_into().ok().filter(|p| *p > 0)
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

    #[test]
    fn the_container_pid_comes_from_the_verbose_info() {
        let info = |v: &str| std::collections::HashMap::from([("info".to_string(), v.to_string())]);
        assert_eq!(pid_of(&info(r#"{"pid":4242,"sandboxID":"x"}"#)), Some(4242));
        // Not started yet, or not containerd's shape.
        assert_eq!(pid_of(&info(r#"{"pid":0}"#)), None);
        assert_eq!(pid_of(&info("[]")), None);
        assert_eq!(pid_of(&Default::default()), None);
    }
}
