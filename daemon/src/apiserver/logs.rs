//! `pods/log`: the options and the container checked here, as upstream's
//! pod registry checks them (the container named, or the pod's only one;
//! a pod on no node yet has no log), then the log streamed from the
//! node's kubelet (`/containerLogs`) over a stream [`Kubelets`] opens.
//! The kubelet's plain-text errors become Statuses as upstream's response
//! checker makes them (400 → BadRequest, 404 → NotFound).

use super::request::Target;
use super::state::ApiState;
use crate::kube::log_options::{LogOptions, LogOptionsError};
use crate::registry::{FieldError, KubeError};
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;

fn invalid(pod: &str, e: LogOptionsError) -> KubeError {
    let error = match &e {
        LogOptionsError::Parse(m) => return KubeError::BadRequest(m.clone()),
        LogOptionsError::Invalid {
            field,
            value,
            detail,
        } => FieldError::invalid(field, value, detail),
        LogOptionsError::BothSince => FieldError::forbidden("", &e.to_string()),
    };
    KubeError::Invalid {
        kind: "PodLogOptions".into(),
        name: pod.to_string(),
        errors: vec![error],
    }
}

fn names(cs: impl Iterator<Item = String>) -> String {
    cs.collect::<Vec<_>>().join(" ")
}

/// The container a log or a stream is of, as upstream's LogLocation and
/// its exec/attach options pick it.
pub(super) fn container_of(
    pod: &Pod,
    name: &str,
    asked: Option<&str>,
) -> Result<String, KubeError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.unwrap_or_default();
    let ephemeral = spec.ephemeral_containers.unwrap_or_default();
    match asked {
        Some(c) => {
            let known = spec.containers.iter().any(|x| x.name == c)
                || init.iter().any(|x| x.name == c)
                || ephemeral.iter().any(|x| x.name == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(KubeError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match spec.containers.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => Err(KubeError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut m = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names(many.iter().map(|c| c.name.clone()))
                );
                if !init.is_empty() {
                    m.push_str(&format!(
                        " or one of the init containers: [{}]",
                        names(init.iter().map(|c| c.name.clone()))
                    ));
                }
                if !ephemeral.is_empty() {
                    m.push_str(&format!(
                        " or one of the ephemeral containers: [{}]",
                        names(ephemeral.iter().map(|c| c.name.clone()))
                    ));
                }
                Err(KubeError::BadRequest(m))
            }
        },
    }
}

fn text_plain(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

pub async fn serve(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<Response, KubeError> {
    let name = t.name();
    let opts = LogOptions::from_query(q, chrono::Utc::now()).map_err(|e| invalid(name, e))?;
    let obj = sv.registry.get(&t.rt, t.ns(), name).await?;
    let pod: Pod = serde_json::from_value(obj)
        .map_err(|e| KubeError::Internal(format!("stored pod {name} does not decode: {e}")))?;
    let container = container_of(&pod, name, opts.container.as_deref())?;
    // Not on a node yet: upstream answers with an empty log.
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(text_plain(Body::empty()));
    };
    let ns = t.ns().unwrap_or("default");
    let path = format!(
        "/containerLogs/{ns}/{name}/{container}?{}",
        opts.kubelet_query()
    );
    let resp = super::kubelet::get(sv.kubelets.as_ref(), &node, &path).await?;
    Ok(text_plain(resp.into_body()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = pod(json!({"containers": [{"name": "a"}]}));
        assert_eq!(container_of(&one, "web", None).unwrap(), "a");
        let e = container_of(&one, "web", Some("zz")).unwrap_err();
        assert_eq!(e.to_string(), "container zz is not valid for pod web");
        let two = pod(json!({"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "setup"}]}));
        assert_eq!(container_of(&two, "web", Some("setup")).unwrap(), "setup");
        let e = container_of(&two, "web", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [setup]"
        );
    }

    #[test]
    fn invalid_options_are_invalid_pod_log_options() {
        let e = invalid(
            "web",
            LogOptionsError::Invalid {
                field: "tailLines",
                value: -1,
                detail: "must be greater than or equal to 0",
            },
        );
        assert_eq!(
            e.to_string(),
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
    }
}
