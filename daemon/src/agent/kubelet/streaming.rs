//! The kubelet's streaming endpoints, as upstream's: `/exec`, `/attach`
//! and `/portForward` ask the runtime (CRI Exec, Attach, PortForward)
//! for a one-time URL on its stream server, which stays on loopback, and
//! pass the request with its upgrade on to it (`streams::upgrade`). The
//! client's streaming protocol (SPDY/3.1, or the channel WebSockets) is
//! then spoken between the client and the runtime, through the server's
//! proxy and the tunnel.

use super::listing::{containers_of, sandboxes_of, uid, LABEL_CONTAINER};
use super::lookup::Lookup;
use crate::streams::upgrade;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_cri::v1 as cri;

/// An error as upstream's kubelet writes a streaming one: a Status, which
/// kubectl prints after "unable to upgrade connection".
fn failure(code: StatusCode, message: String) -> Response {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

/// What the query asks: repeated `command`, and the streams wanted
/// (`stdin`/`stdout`/`stderr`/`tty` as the client sent them, or
/// upstream's `input`/`output`/`error`), and `port` for port-forward.
#[derive(Default, Debug, PartialEq)]
struct Params {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    ports: Vec<i32>,
}

fn params(query: &str) -> Result<Params, String> {
    let mut p = Params::default();
    let on = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE");
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "command" => p.command.push(v.into_owned()),
            "stdin" | "input" => p.stdin = on(&v),
            "stdout" | "output" => p.stdout = on(&v),
            "stderr" | "error" => p.stderr = on(&v),
            "tty" => p.tty = on(&v),
            "port" => {
                for port in v.split(',').filter(|s| !s.is_empty()) {
                    let n: u16 = port
                        .parse()
                        .map_err(|_| format!("invalid port {port:?}: must be 1-65535"))?;
                    if n == 0 {
                        return Err("invalid port 0: must be 1-65535".into());
                    }
                    p.ports.push(i32::from(n));
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// The id of the container's running attempt.
async fn running(s: &Lookup, ns: &str, pod: &str, name: &str) -> Result<String, Response> {
    let p = s
        .pod(ns, pod)
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("pod {pod:?} does not exist")))?;
    let found = containers_of(&s.cri, &uid(&p))
        .await
        .map_err(runtime_error)?
        .into_iter()
        .filter(|c| c.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(name))
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .max_by_key(|c| c.created_at);
    found.map(|c| c.id).ok_or_else(|| {
        failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({name:?})"),
        )
    })
}

/// Pass `req` on to the runtime's stream server at `url`.
async fn to_runtime(url: &str, req: Request<Body>) -> Response {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned an unusable stream URL {url:?}"),
        );
    };
    let (Some(auth), Some(pq)) = (uri.authority(), uri.path_and_query()) else {
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime returned an unusable stream URL {url:?}"),
        );
    };
    let tcp = match tokio::net::TcpStream::connect(auth.as_str()).await {
        Ok(t) => t,
        Err(e) => {
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot reach the runtime's stream server at {auth}: {e}"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    upgrade::forward(tcp, req, pq.as_str())
        .await
        .unwrap_or_else(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The runtime's error, as a streaming failure.
fn runtime_error(e: tonic::Status) -> Response {
    failure(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string())
}

fn bad_request(message: String) -> Response {
    failure(StatusCode::BAD_REQUEST, message)
}

/// Pass `req` on to the stream URL `url` gives, or answer its failure.
async fn answer(url: Result<String, Response>, req: Request<Body>) -> Response {
    match url {
        Ok(url) => to_runtime(&url, req).await,
        Err(r) => r,
    }
}

async fn exec_url(
    s: &Lookup,
    (ns, pod, c): (String, String, String),
    query: &str,
) -> Result<String, Response> {
    let p = params(query).map_err(bad_request)?;
    if p.command.is_empty() {
        return Err(bad_request("you must specify at least 1 command".into()));
    }
    let asked = cri::ExecRequest {
        container_id: running(s, &ns, &pod, &c).await?,
        cmd: p.command,
        tty: p.tty,
        stdin: p.stdin,
        stdout: p.stdout,
        // The runtime refuses stderr with a tty (it is part of the tty).
        stderr: p.stderr && !p.tty,
    };
    Ok(s.cri.exec(asked).await.map_err(runtime_error)?.url)
}

async fn attach_url(
    s: &Lookup,
    (ns, pod, c): (String, String, String),
    query: &str,
) -> Result<String, Response> {
    let p = params(query).map_err(bad_request)?;
    let asked = cri::AttachRequest {
        container_id: running(s, &ns, &pod, &c).await?,
        stdin: p.stdin,
        tty: p.tty,
        stdout: p.stdout,
        stderr: p.stderr && !p.tty,
    };
    Ok(s.cri.attach(asked).await.map_err(runtime_error)?.url)
}

async fn port_forward_url(
    s: &Lookup,
    (ns, pod): (String, String),
    query: &str,
) -> Result<String, Response> {
    let p = params(query).map_err(bad_request)?;
    let found = s
        .pod(&ns, &pod)
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("pod {pod:?} does not exist")))?;
    let sandbox = sandboxes_of(&s.cri, &uid(&found))
        .await
        .map_err(runtime_error)?
        .into_iter()
        .filter(|sb| sb.state == cri::PodSandboxState::SandboxReady as i32)
        .max_by_key(|sb| sb.created_at)
        .ok_or_else(|| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("pod {pod:?} has no running sandbox"),
            )
        })?;
    let asked = cri::PortForwardRequest {
        pod_sandbox_id: sandbox.id,
        port: p.ports,
    };
    Ok(s.cri.port_forward(asked).await.map_err(runtime_error)?.url)
}

pub(super) async fn exec(
    State(s): State<Lookup>,
    Path(target): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    let url = exec_url(&s, target, query.as_deref().unwrap_or("")).await;
    answer(url, req).await
}

pub(super) async fn attach(
    State(s): State<Lookup>,
    Path(target): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    let url = attach_url(&s, target, query.as_deref().unwrap_or("")).await;
    answer(url, req).await
}

pub(super) async fn port_forward(
    State(s): State<Lookup>,
    Path(target): Path<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    let url = port_forward_url(&s, target, query.as_deref().unwrap_or("")).await;
    answer(url, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_command_and_streams() {
        let p = params(
            "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=1&tty=false&container=c",
        )
        .unwrap();
        assert_eq!(p.command, ["sh", "-c", "echo hi"]);
        assert!(p.stdin && p.stdout && !p.stderr && !p.tty);
        assert_eq!(
            params("port=80,8080&port=9000").unwrap().ports,
            [80, 8080, 9000]
        );
        assert!(params("port=0").is_err());
        assert!(params("port=http").is_err());
    }
}
