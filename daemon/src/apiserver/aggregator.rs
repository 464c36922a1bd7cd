//! The aggregation layer: a group-version no kind of rk3s serves, named
//! by an APIService with a `service`, is passed to that extension API
//! server, as upstream's kube-aggregator passes it. The request keeps its
//! method, path, body and upgrade; the client's credentials stay here
//! and the user it authenticated as travels in `X-Remote-User`,
//! `X-Remote-Group` and `X-Remote-Extra-*`, vouched for by the
//! front-proxy client certificate (`system:auth-proxy`, from the client
//! CA; the extension server learns both from the
//! `kube-system/extension-apiserver-authentication` ConfigMap). Like
//! upstream, the aggregator does not authorize: the extension server
//! does (by SubjectAccessReview).
//!
//! The backend is one of the Service's ready endpoints (upstream's
//! `--enable-aggregator-routing`; there is no service proxy to route a
//! ClusterIP), over TLS verified against the APIService's `caBundle`
//! for `<service>.<namespace>.svc`, or not at all with
//! `insecureSkipTLSVerify`. Discovery: the legacy `/apis` list and
//! `/apis/<group>` include the APIServices' groups; the aggregated one
//! fetches each extension's `/apis/<group>/<version>` when asked.

use super::authn::Requester;
use super::state::ApiState;
use crate::credentials::certs;
use crate::registry::{kinds, KubeError};
use crate::streams::upgrade;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub use crate::auth::FRONT_PROXY as PROXY_USER;
/// Who asks the extensions for their discovery documents.
const DISCOVERY_USER: &str = "system:kube-aggregator";
/// Connecting to an extension, and its discovery answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DISCOVERY_BYTES: usize = 4 << 20;

/// Does rk3s serve `group/version` itself?
fn local(sv: &ApiState, group: &str, version: &str) -> bool {
    sv.registry
        .kinds()
        .iter()
        .any(|t| t.group == group && t.version == version)
}

fn decode(v: Value) -> Option<APIService> {
    serde_json::from_value(v).ok()
}

/// Every APIService backed by a Service.
pub async fn remote_services(sv: &ApiState) -> Vec<APIService> {
    let rt = kinds::API_SERVICES.resource_type();
    let Ok((_, items)) = sv.registry.list(&rt, None).await else {
        return vec![];
    };
    let mut out: Vec<APIService> = items
        .into_iter()
        .filter_map(decode)
        .filter(|a| a.spec.as_ref().is_some_and(|s| s.service.is_some()))
        .collect();
    // Upstream's order: group priority, then version priority, highest first.
    out.sort_by_key(|a| {
        let s = a.spec.clone().unwrap_or_default();
        (
            -s.group_priority_minimum,
            s.group.unwrap_or_default(),
            -s.version_priority,
        )
    });
    out
}

async fn remote(sv: &ApiState, group: &str, version: &str) -> Option<APIService> {
    let rt = kinds::API_SERVICES.resource_type();
    let name = crate::registry::apiregistration::name_of(group, version);
    let v = sv.registry.get(&rt, None, &name).await.ok()?;
    decode(v).filter(|a| a.spec.as_ref().is_some_and(|s| s.service.is_some()))
}

fn unavailable(a: &APIService, why: impl std::fmt::Display) -> KubeError {
    KubeError::Unavailable(format!(
        "the extension API server of {} is unavailable: {why}",
        a.metadata.name.as_deref().unwrap_or("")
    ))
}

/// `ip:port` of a ready endpoint of the APIService's Service.
async fn endpoint(sv: &ApiState, a: &APIService) -> Result<(String, u16), KubeError> {
    let spec = a.spec.clone().unwrap_or_default();
    let svc_ref = spec.service.clone().unwrap_or_default();
    let (ns, name) = (
        svc_ref.namespace.unwrap_or_default(),
        svc_ref.name.unwrap_or_default(),
    );
    let port = svc_ref.port.unwrap_or(443);
    let svc: Service = sv
        .registry
        .get(&kinds::SERVICES.resource_type(), Some(&ns), &name)
        .await
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| unavailable(a, format!("service/{name} in {ns:?} is not present")))?;
    let sp = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port).cloned())
        .ok_or_else(|| unavailable(a, format!("service/{name} in {ns:?} has no port {port}")))?;
    let eps: Endpoints = sv
        .registry
        .get(&kinds::ENDPOINTS.resource_type(), Some(&ns), &name)
        .await
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    for subset in eps.subsets.iter().flatten() {
        let port = subset.ports.iter().flatten().find(|p| p.name == sp.name);
        let ip = subset
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.clone())
            .next();
        if let (Some(p), Some(ip)) = (port, ip) {
            return Ok((ip, p.port as u16));
        }
    }
    Err(unavailable(
        a,
        format!(
            "endpoints for service/{name} in {ns:?} have no addresses with port name {:?}",
            sp.name.unwrap_or_default()
        ),
    ))
}

/// A TLS connection to the extension server behind `a`.
async fn connect(
    sv: &ApiState,
    a: &APIService,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, KubeError> {
    let id = &sv.aggregation;
    let (ip, port) = endpoint(sv, a).await?;
    let spec = a.spec.clone().unwrap_or_default();
    let svc = spec.service.clone().unwrap_or_default();
    let tls = if spec.insecure_skip_tls_verify.unwrap_or(false) {
        certs::client_config_unverified(&id.cert_pem, &id.key_pem)
    } else {
        let bundle = spec.ca_bundle.map(|b| b.0).unwrap_or_default();
        certs::client_config_with_identity(&bundle, &id.cert_pem, &id.key_pem)
    }
    .map_err(|e| unavailable(a, e))?;
    let server_name = format!(
        "{}.{}.svc",
        svc.name.unwrap_or_default(),
        svc.namespace.unwrap_or_default()
    );
    let name =
        rustls::pki_types::ServerName::try_from(server_name).map_err(|e| unavailable(a, e))?;
    let open = async {
        let tcp = tokio::net::TcpStream::connect((ip.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(unavailable(a, format!("https://{ip}:{port}: {e}"))),
        Err(_) => Err(unavailable(
            a,
            format!(
                "https://{ip}:{port}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Put the user's identity in the X-Remote headers, dropping any the
/// client sent (only this server may vouch for a user).
fn identify(req: &mut Request, user: &crate::registry::admission::UserInfo) {
    let h = req.headers_mut();
    let theirs: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-remote-"))
        .cloned()
        .collect();
    for k in theirs {
        h.remove(k);
    }
    if let Ok(v) = HeaderValue::from_str(&user.name) {
        h.insert("x-remote-user", v);
    }
    for g in &user.groups {
        if let Ok(v) = HeaderValue::from_str(g) {
            h.append("x-remote-group", v);
        }
    }
    for (k, vs) in &user.extra {
        let key = form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>();
        let Ok(name) = HeaderName::from_bytes(format!("x-remote-extra-{key}").as_bytes()) else {
            continue;
        };
        for v in vs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(name.clone(), v);
            }
        }
    }
}

async fn pass(sv: &ApiState, a: &APIService, mut req: Request) -> Result<Response, KubeError> {
    let user = req
        .extensions()
        .get::<Requester>()
        .map(|r| r.0.clone())
        .ok_or_else(KubeError::unauthorized)?;
    identify(&mut req, &user);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let stream = connect(sv, a).await?;
    upgrade::forward(stream, req, &path)
        .await
        .map_err(|e| unavailable(a, e))
}

/// `/apis/<group>` for a group only extensions serve: its APIServices.
fn group_document(group: &str, services: &[APIService]) -> Option<Value> {
    let versions: Vec<Value> = services
        .iter()
        .filter_map(|a| a.spec.as_ref())
        .filter(|s| s.group.as_deref() == Some(group))
        .map(|s| {
            let v = s.version.clone().unwrap_or_default();
            json!({"groupVersion": format!("{group}/{v}"), "version": v})
        })
        .collect();
    let preferred = versions.first()?.clone();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions, "preferredVersion": preferred}),
    )
}

/// The router's layer (after authentication): requests for an
/// extension's group go to it, everything else on.
pub async fn middleware(State(sv): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["apis", g, v, ..] if !v.is_empty() => (g.to_string(), Some(v.to_string())),
        ["apis", g] if !g.is_empty() => (g.to_string(), None),
        _ => return next.run(req).await,
    };
    let builtin = sv.registry.kinds().iter().any(|t| t.group == group);
    match version {
        Some(v) if !local(&sv, &group, &v) => match remote(&sv, &group, &v).await {
            Some(a) => pass(&sv, &a, req)
                .await
                .unwrap_or_else(IntoResponse::into_response),
            None => next.run(req).await,
        },
        None if !builtin => match group_document(&group, &remote_services(&sv).await) {
            Some(doc) => axum::Json(doc).into_response(),
            None => next.run(req).await,
        },
        _ => next.run(req).await,
    }
}

/// GET `/apis/<group>/<version>` of an extension, as the aggregator.
async fn discovery_of(sv: &ApiState, a: &APIService) -> Result<Value, KubeError> {
    let spec = a.spec.clone().unwrap_or_default();
    let path = format!(
        "/apis/{}/{}",
        spec.group.unwrap_or_default(),
        spec.version.unwrap_or_default()
    );
    let mut req = Request::get(&path)
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .expect("a valid GET");
    identify(
        &mut req,
        &crate::registry::admission::UserInfo {
            name: DISCOVERY_USER.into(),
            groups: vec!["system:authenticated".into()],
            ..Default::default()
        },
    );
    let ask = async {
        let stream = connect(sv, a).await?;
        let resp = upgrade::forward(stream, req, &path)
            .await
            .map_err(|e| unavailable(a, e))?;
        if resp.status() != StatusCode::OK {
            return Err(unavailable(
                a,
                format!("its discovery answered {}", resp.status()),
            ));
        }
        let body = http_body_util::Limited::new(resp.into_body(), DISCOVERY_BYTES)
            .collect()
            .await
            .map_err(|e| unavailable(a, e))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| unavailable(a, e))
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, ask)
        .await
        .unwrap_or_else(|_| Err(unavailable(a, "its discovery did not answer in time")))
}

/// Is the extension behind `a` answering its discovery? (The
/// availability check of the APIService controller.)
pub async fn probe(sv: &ApiState, a: &APIService) -> Result<(), String> {
    discovery_of(sv, a)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Aggregated discovery entries for the extensions' groups: each version
/// from its `APIResourceList`, or `Stale` when it does not answer.
pub async fn aggregated_groups(sv: &ApiState) -> Vec<Value> {
    let services = remote_services(sv).await;
    let mut groups: Vec<(String, Vec<Value>)> = vec![];
    for a in &services {
        let spec = a.spec.clone().unwrap_or_default();
        let (g, v) = (
            spec.group.unwrap_or_default(),
            spec.version.unwrap_or_default(),
        );
        if local(sv, &g, &v) {
            continue;
        }
        let entry = match discovery_of(sv, a).await {
            Ok(list) => {
                let resources: Vec<Value> = list["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| !r["name"].as_str().unwrap_or("").contains('/'))
                    .map(|r| {
                        json!({
                            "resource": r["name"],
                            "singularResource": r["singularName"],
                            "scope": if r["namespaced"].as_bool().unwrap_or(false) { "Namespaced" } else { "Cluster" },
                            "responseKind": {"group": g, "version": v, "kind": r["kind"]},
                            "verbs": r["verbs"],
                            "shortNames": r.get("shortNames").cloned().unwrap_or(json!([])),
                            "categories": r.get("categories").cloned().unwrap_or(json!([])),
                        })
                    })
                    .collect();
                json!({"version": v, "freshness": "Current", "resources": resources})
            }
            Err(e) => {
                tracing::debug!(apiservice = ?a.metadata.name, error = %e, "extension discovery failed");
                json!({"version": v, "freshness": "Stale", "resources": []})
            }
        };
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(entry),
            None => groups.push((g, vec![entry])),
        }
    }
    groups
        .into_iter()
        .map(|(g, versions)| json!({"metadata": {"name": g}, "versions": versions}))
        .collect()
}

/// Legacy `/apis` entries for the extensions' groups.
pub async fn legacy_groups(sv: &ApiState) -> Vec<Value> {
    let services = remote_services(sv).await;
    let mut names: Vec<String> = vec![];
    for a in &services {
        let g = a
            .spec
            .as_ref()
            .and_then(|s| s.group.clone())
            .unwrap_or_default();
        if !sv.registry.kinds().iter().any(|t| t.group == g) && !names.contains(&g) {
            names.push(g);
        }
    }
    names
        .iter()
        .filter_map(|g| group_document(g, &services))
        .map(|mut d| {
            if let Some(o) = d.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            d
        })
        .collect()
}

/// A GET through the aggregation layer as `user`: the extension's JSON
/// answer, or why there is none (no APIService, unavailable, an error
/// status with its message).
pub async fn get_as(
    sv: &ApiState,
    user: &crate::registry::admission::UserInfo,
    path: &str,
) -> Result<Value, String> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["apis", g, v, ..] => (g.to_string(), v.split('?').next().unwrap_or("").to_string()),
        _ => return Err(format!("{path} is not an API group path")),
    };
    let Some(a) = remote(sv, &group, &version).await else {
        return Err(format!(
            "the server could not find the requested resource ({group}/{version} is not served by any extension API server)"
        ));
    };
    let mut req = Request::get(path)
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    identify(&mut req, user);
    let ask = async {
        let stream = connect(sv, &a).await.map_err(|e| e.to_string())?;
        let resp = upgrade::forward(stream, req, path)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), DISCOVERY_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!(
                "the server answered {status}: {}",
                v["message"].as_str().unwrap_or("")
            ));
        }
        Ok(v)
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, ask)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// The HPA's metrics: resource metrics from the kubelets, custom and
/// external ones through the aggregation layer as the controller's
/// service account (`kube-system/horizontal-pod-autoscaler`, the name
/// adapters' RBAC grants, as upstream's controller manager uses it).
pub struct Metrics(pub Arc<ApiState>);

impl crate::controllers::autoscaler::MetricsSource for Metrics {
    fn pod_metrics<'a>(
        &'a self,
        pods: &'a [k8s_openapi::api::core::v1::Pod],
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::collections::HashMap<
                        String,
                        crate::kube::metrics_api::PodMetrics,
                    >,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            super::resource_metrics::Scraper {
                kubelets: self.0.kubelets.clone(),
            }
            .pods(pods)
            .await
        })
    }

    fn get<'a>(
        &'a self,
        path: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let user = crate::registry::admission::UserInfo {
                name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:kube-system".into(),
                    "system:authenticated".into(),
                ],
                ..Default::default()
            };
            get_as(&self.0, &user, &path).await
        })
    }
}

/// The APIService controller's availability check, through this API.
pub struct Prober(pub Arc<ApiState>);

impl crate::controllers::apiservices::ExtensionProbe for Prober {
    fn probe<'a>(
        &'a self,
        api: &'a APIService,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(probe(&self.0, api))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::admission::UserInfo;

    #[test]
    fn only_this_server_vouches_for_the_user() {
        let mut req = Request::get("/apis/x/v1")
            .header("X-Remote-User", "system:admin")
            .header("X-Remote-Group", "system:masters")
            .header("x-remote-extra-scopes", "all")
            .body(Body::empty())
            .unwrap();
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            extra: [("example.com/team".to_string(), vec!["blue".to_string()])].into(),
            ..Default::default()
        };
        identify(&mut req, &user);
        let all = |k: &str| -> Vec<&str> {
            req.headers()
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-remote-user"), ["alice"]);
        assert_eq!(all("x-remote-group"), ["devs", "system:authenticated"]);
        assert!(all("x-remote-extra-scopes").is_empty());
        assert_eq!(all("x-remote-extra-example.com%2fteam"), ["blue"]);
    }
}
