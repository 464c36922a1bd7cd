//! The CRI v1 client (k8s-cri's generated tonic client) over the runtime's
//! Unix socket, with the deadline of every call decided here, as
//! upstream's `remoteRuntimeService` decides it: the runtime request
//! timeout (`--kubelet-arg=runtime-request-timeout`, 2m) for a call that
//! only asks or changes state, that plus the call's own time where the
//! runtime works for as long as it was told (StopContainer waits out the
//! grace period before SIGKILL, ExecSync runs its command), and none for
//! an image pull, which takes as long as the registry does. A single
//! channel-wide deadline cancelled a 30 s stop at 10 s, so a container
//! that ignores SIGTERM was never killed.

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// Upstream kubelet's `--runtime-request-timeout` default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    request_timeout: Duration,
}

/// How long one call may run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Deadline {
    /// The runtime request timeout.
    Request,
    /// The request timeout plus what the call itself was asked to take.
    RequestPlus(Duration),
    /// As long as it takes.
    None,
}

impl Deadline {
    fn of(self, request_timeout: Duration) -> Option<Duration> {
        match self {
            Deadline::Request => Some(request_timeout),
            Deadline::RequestPlus(d) => Some(request_timeout + d),
            Deadline::None => None,
        }
    }
}

/// A count of seconds from CRI as a duration (negative is none).
fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64)
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

/// The request with its deadline: tonic's channel enforces `grpc-timeout`
/// on its side, and the runtime learns it from the same header.
fn request<T>(msg: T, limit: Option<Duration>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(d) = limit {
        r.set_timeout(d);
    }
    r
}

/// A request's deadline, from what it asks the runtime to do.
trait Timed {
    fn deadline(&self) -> Deadline;
}

/// One method per RPC the node uses, each request type with its deadline.
macro_rules! rpcs {
    ($( $(#[$doc:meta])* $client:ident . $name:ident ( $req:ident ) -> $resp:ident , |$r:ident| $deadline:expr ; )*) => {
        $(
            impl Timed for cri::$req {
                fn deadline(&self) -> Deadline {
                    let $r = self;
                    $deadline
                }
            }
        )*
        impl Cri {
            $(
                $(#[$doc])*
                pub async fn $name(&self, req: cri::$req) -> Result<cri::$resp, tonic::Status> {
                    let limit = req.deadline().of(self.request_timeout);
                    self.$client.clone().$name(request(req, limit)).await.map(tonic::Response::into_inner)
                }
            )*
        }
    };
}

rpcs! {
    runtime.version(VersionRequest) -> VersionResponse, |_r| Deadline::Request;
    runtime.status(StatusRequest) -> StatusResponse, |_r| Deadline::Request;
    runtime.run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse, |_r| Deadline::Request;
    /// The runtime kills what still runs in the sandbox at once.
    runtime.stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse, |_r| Deadline::Request;
    runtime.remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse, |_r| Deadline::Request;
    runtime.pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse, |_r| Deadline::Request;
    runtime.list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse, |_r| Deadline::Request;
    runtime.create_container(CreateContainerRequest) -> CreateContainerResponse, |_r| Deadline::Request;
    runtime.start_container(StartContainerRequest) -> StartContainerResponse, |_r| Deadline::Request;
    /// The runtime sends SIGTERM, waits `timeout` seconds, then SIGKILL:
    /// the call lasts that long.
    runtime.stop_container(StopContainerRequest) -> StopContainerResponse, |r| Deadline::RequestPlus(secs(r.timeout));
    runtime.remove_container(RemoveContainerRequest) -> RemoveContainerResponse, |_r| Deadline::Request;
    runtime.list_containers(ListContainersRequest) -> ListContainersResponse, |_r| Deadline::Request;
    runtime.container_status(ContainerStatusRequest) -> ContainerStatusResponse, |_r| Deadline::Request;
    runtime.list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse, |_r| Deadline::Request;
    runtime.reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse, |_r| Deadline::Request;
    /// Exec, Attach and PortForward only hand out a streaming URL; the
    /// stream behind it lasts as long as its client keeps it.
    runtime.exec(ExecRequest) -> ExecResponse, |_r| Deadline::Request;
    runtime.attach(AttachRequest) -> AttachResponse, |_r| Deadline::Request;
    runtime.port_forward(PortForwardRequest) -> PortForwardResponse, |_r| Deadline::Request;
    /// The command runs for up to its own `timeout` (none: as long as it takes).
    runtime.exec_sync(ExecSyncRequest) -> ExecSyncResponse, |r| match r.timeout {
        t if t > 0 => Deadline::RequestPlus(secs(t)),
        _ => Deadline::None,
    };
    images.list_images(ListImagesRequest) -> ListImagesResponse, |_r| Deadline::Request;
    images.image_status(ImageStatusRequest) -> ImageStatusResponse, |_r| Deadline::Request;
    /// A pull lasts as long as the registry takes.
    images.pull_image(PullImageRequest) -> PullImageResponse, |_r| Deadline::None;
    images.remove_image(RemoveImageRequest) -> RemoveImageResponse, |_r| Deadline::Request;
    images.image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse, |_r| Deadline::Request;
}

impl Cri {
    /// Connect to the CRI socket at `socket`, with upstream's request timeout.
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        Self::connect_with(socket, REQUEST_TIMEOUT).await
    }

    /// Connect with `request_timeout` as the deadline of ordinary calls.
    pub async fn connect_with(socket: &Path, request_timeout: Duration) -> Result<Self, CriError> {
        let path: PathBuf = socket.to_path_buf();
        // The URI is required by tonic and ignored by the connector. No
        // channel-wide timeout: each call carries its own.
        let channel = Endpoint::from_static("http://[::1]:1")
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
            request_timeout,
        })
    }

    /// `containerd://1.6.20`, as a node's containerRuntimeVersion.
    pub async fn runtime_version(&self) -> Result<String, CriError> {
        let v = self
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await?;
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    /// What keeps the runtime from running pods (empty when RuntimeReady
    /// holds), and why the pod network is not ready, if it is not.
    pub async fn conditions(&self) -> Result<CriStatus, CriError> {
        let s = self.status(cri::StatusRequest { verbose: false }).await?;
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
            .status(cri::StatusRequest { verbose: true })
            .await
            .ok()?;
        sandbox_image_of(&s.info)
    }

    /// The host pid of container `id`'s init process, from its verbose
    /// status (`None` when the runtime does not report one).
    pub async fn container_pid(&self, id: &str) -> Option<u32> {
        let s = self
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            })
            .await
            .ok()?;
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
    fn a_stop_or_an_exec_gets_its_own_time_on_top_of_the_request_timeout() {
        let t = Duration::from_secs(120);
        let stop = cri::StopContainerRequest {
            container_id: "c".into(),
            timeout: 30,
        };
        // The grace period is waited out before SIGKILL: the call must
        // outlive it, or the kill never comes.
        assert_eq!(stop.deadline().of(t), Some(Duration::from_secs(150)));
        let kill = cri::StopContainerRequest {
            timeout: -1,
            ..stop
        };
        assert_eq!(kill.deadline().of(t), Some(t));
        let exec = |timeout| cri::ExecSyncRequest {
            timeout,
            ..Default::default()
        };
        assert_eq!(exec(5).deadline().of(t), Some(Duration::from_secs(125)));
        assert_eq!(
            exec(0).deadline().of(t),
            None,
            "no timeout: as long as it runs"
        );
        assert_eq!(cri::PullImageRequest::default().deadline().of(t), None);
        assert_eq!(
            cri::ListContainersRequest::default().deadline().of(t),
            Some(t)
        );
        assert_eq!(
            cri::StopPodSandboxRequest::default().deadline().of(t),
            Some(t)
        );
    }

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
