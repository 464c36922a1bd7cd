//! The agent's Kubernetes API client: HTTPS with one of the agent's client
//! certificates (the kubelet's, so the Node authorizer decides what it may
//! do; or the pod network's controller identity), tried against the
//! agent's servers in the load balancer's order, so it survives a server's
//! loss like the tunnel does.

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The servers to try, best first (the agent's load balancer).
pub type Servers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no server answered: {0}")]
    Unreachable(String),
    #[error("{status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad response: {0}")]
    Decode(String),
}

/// A client certificate the agent holds under `<data-dir>/agent`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Identity {
    /// `client-kubelet.crt`, CN=system:node:<node>: the kubelet's.
    Kubelet,
    /// `client-rk3s-controller.crt`, CN=system:rk3s-controller: the pod
    /// network's.
    Controller,
}

impl Identity {
    /// File stem under `<data-dir>/agent`.
    pub fn stem(self) -> &'static str {
        match self {
            Self::Kubelet => "client-kubelet",
            Self::Controller => "client-rk3s-controller",
        }
    }

    /// The user agent's component name.
    fn agent_name(self) -> &'static str {
        match self {
            Self::Kubelet => "kubelet",
            Self::Controller => "network",
        }
    }

    pub fn route(self) -> &'static str {
        match self {
            Self::Kubelet => rk3s_api::routes::CLIENT_KUBELET_CERT,
            Self::Controller => rk3s_api::routes::CLIENT_CONTROLLER_CERT,
        }
    }

    pub fn common_name(self, node: &str) -> String {
        match self {
            Self::Kubelet => format!("system:node:{node}"),
            Self::Controller => crate::auth::policy::RK3S_CONTROLLER.to_string(),
        }
    }
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    servers: Servers,
}

impl Api {
    /// A client with `identity`'s certificate in `agent_dir`, verifying
    /// servers against `ca_pem`.
    pub fn new(
        agent_dir: &Path,
        identity: Identity,
        ca_pem: &[u8],
        servers: Servers,
    ) -> Result<Self, String> {
        let read = |ext: &str| {
            let f = agent_dir.join(format!("{}.{ext}", identity.stem()));
            std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))
        };
        let mut pem = read("crt")?;
        pem.extend(read("key")?);
        let tls_identity = reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?;
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(tls_identity)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(format!(
                "rk3s-{}/{}",
                identity.agent_name(),
                rk3s_api::VERSION
            ))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http, servers })
    }

    /// Send `build(base_url)` to each server in turn until one answers.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let mut last = String::from("no servers known");
        for base in (self.servers)() {
            match build(&base).send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    return Err(ApiError::Status { status, body });
                }
                Err(e) => last = format!("{base}: {e}"),
            }
        }
        Err(ApiError::Unreachable(last))
    }

    async fn json(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Value, ApiError> {
        let r = self.send(build).await?;
        r.json().await.map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// GET `path` (from `/api/...`) as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.json(|b| {
            self.http
                .get(format!("{b}{path}"))
                .timeout(Duration::from_secs(10))
        })
        .await
    }

    /// POST `body` to `path`, answer as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.json(|b| {
            self.http
                .post(format!("{b}{path}"))
                .json(body)
                .timeout(Duration::from_secs(10))
        })
        .await
    }

    /// The pods bound to `node` and the list's resourceVersion.
    pub async fn list_pods(&self, node: &str) -> Result<(Vec<Value>, String), ApiError> {
        self.list("/api/v1/pods", &format!("spec.nodeName={node}"))
            .await
    }

    /// Watch the pods bound to `node` from `rv` (see [`Api::watch`]).
    pub async fn watch_pods(
        &self,
        node: &str,
        rv: &str,
        on_event: impl FnMut(&str, Value),
    ) -> Result<(), ApiError> {
        self.watch(
            "/api/v1/pods",
            &format!("spec.nodeName={node}"),
            rv,
            on_event,
        )
        .await
    }

    /// The items of the collection at `path` matching `field_selector`
    /// (may be empty), and the list's resourceVersion.
    pub async fn list(
        &self,
        path: &str,
        field_selector: &str,
    ) -> Result<(Vec<Value>, String), ApiError> {
        let v = self
            .json(|b| {
                let mut r = self.http.get(format!("{b}{path}"));
                if !field_selector.is_empty() {
                    r = r.query(&[("fieldSelector", field_selector)]);
                }
                r.timeout(Duration::from_secs(30))
            })
            .await?;
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        Ok((items, rv))
    }

    /// Watch the collection at `path` (narrowed by `field_selector`) from
    /// `rv`, calling `on_event(type, object)` for each event until the
    /// watch ends (timeout, error).
    pub async fn watch(
        &self,
        path: &str,
        field_selector: &str,
        rv: &str,
        mut on_event: impl FnMut(&str, Value),
    ) -> Result<(), ApiError> {
        let r = self
            .send(|b| {
                self.http.get(format!("{b}{path}")).query(&[
                    ("fieldSelector", field_selector.to_string()),
                    ("watch", "true".into()),
                    ("resourceVersion", rv.to_string()),
                    ("timeoutSeconds", "300".into()),
                    ("allowWatchBookmarks", "true".into()),
                ])
            })
            .await?;
        let mut r = r;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?
        {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let kind = ev["type"].as_str().unwrap_or("").to_string();
                if kind == "ERROR" {
                    return Err(ApiError::Status {
                        status: ev["object"]["code"].as_u64().unwrap_or(500) as u16,
                        body: ev["object"]["message"].as_str().unwrap_or("").to_string(),
                    });
                }
                on_event(&kind, ev["object"].clone());
            }
        }
        Ok(())
    }

    /// PATCH `path` with `body` of `content_type` (merge, strategic merge).
    pub async fn patch(
        &self,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        let text = body.to_string();
        self.send(|b| {
            self.http
                .patch(format!("{b}{path}"))
                .header("Content-Type", content_type)
                .body(text.clone())
                .timeout(Duration::from_secs(10))
        })
        .await
        .map(|_| ())
    }

    /// Merge-patch a pod's status.
    pub async fn patch_pod_status(
        &self,
        ns: &str,
        name: &str,
        status: &Value,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({ "status": status });
        self.send(|b| {
            self.http
                .patch(format!("{b}/api/v1/namespaces/{ns}/pods/{name}/status"))
                .header("Content-Type", "application/merge-patch+json")
                .body(body.to_string())
                .timeout(Duration::from_secs(10))
        })
        .await
        .map(|_| ())
    }

    /// The kubelet's final delete of a terminated pod (grace 0, this uid).
    pub async fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        });
        match self
            .send(|b| {
                self.http
                    .delete(format!("{b}/api/v1/namespaces/{ns}/pods/{name}"))
                    .json(&body)
                    .timeout(Duration::from_secs(10))
            })
            .await
        {
            Ok(_)
            | Err(ApiError::Status {
                status: 404 | 409, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
