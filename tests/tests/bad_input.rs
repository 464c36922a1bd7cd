//! Hostile and broken clients: each gets a clear error, and the server keeps
//! serving everybody else.

use futures_util::{SinkExt, StreamExt};
use rk3s_tests::*;
use rk3sd::agent::registration::connect_tunnel;
use rk3sd::agent::AgentError;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn tls(server: &Server) -> Arc<rustls::ClientConfig> {
    Arc::new(rk3sd::credentials::certs::client_config_pinned(&server.ca_pem()).unwrap())
}

fn secret(server: &Server) -> String {
    server.token().rsplit(':').next().unwrap().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Raw HTTPS GET with arbitrary headers, returning (status, body).
async fn raw_get(server: &Server, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
        .build()
        .unwrap();
    let mut req = client.get(format!("{}/v1-rk3s/connect", server.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

fn basic(user_secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_secret)
    )
}

#[test]
fn registration_errors_are_kubernetes_status_objects() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let good = basic(&format!("node:{}", secret(&server)));
    rt().block_on(async {
        for auth in [
            "",
            "Bearer xyz",
            "Basic !!!notbase64",
            &basic("nocolon"),
            &basic("node:wrong"),
            &basic("admin:x"),
        ] {
            let (status, body) = raw_get(&server, &[("Authorization", auth)]).await;
            assert_eq!(status, 401, "auth {auth:?}");
            assert_eq!(body["kind"], "Status");
            assert_eq!(body["reason"], "Unauthorized");
            assert_eq!(body["code"], 401);
        }
        let (status, body) = raw_get(&server, &[("Authorization", &good)]).await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("node name not set"),
            "{body}"
        );
        let (status, body) = raw_get(
            &server,
            &[("Authorization", &good), ("Rk3s-Node-Name", "n1")],
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("node password not set"),
            "{body}"
        );
        for bad in ["UPPER", "under_score", "-x", &"a".repeat(300)] {
            let (status, body) = raw_get(
                &server,
                &[
                    ("Authorization", &good),
                    ("Rk3s-Node-Name", bad),
                    ("Rk3s-Node-Password", "pw"),
                ],
            )
            .await;
            assert_eq!(status, 400, "{bad}");
            assert!(
                body["message"].as_str().unwrap().contains("RFC 1123"),
                "{body}"
            );
        }
        let (status, body) = raw_get(
            &server,
            &[
                ("Authorization", &good),
                ("Rk3s-Node-Name", "n1"),
                ("Rk3s-Node-Password", "pw"),
                ("Rk3s-Node-IP", "not-an-ip"),
            ],
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("invalid node IP"),
            "{body}"
        );
        // Valid credentials without a websocket upgrade.
        let (status, body) = raw_get(
            &server,
            &[
                ("Authorization", &good),
                ("Rk3s-Node-Name", "n1"),
                ("Rk3s-Node-Password", "pw"),
            ],
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"].as_str().unwrap().contains("websocket"),
            "{body}"
        );
    });
    // None of these registered anything.
    assert_eq!(server.nodes().len(), 1);
}

#[test]
fn oversized_headers_and_garbage_tls_do_not_hurt_the_server() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    // Plain text on the TLS port.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    rt().block_on(async {
        let huge = "x".repeat(200 * 1024);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
            .build()
            .unwrap();
        let r = client
            .get(format!("{}/ping", server.url()))
            .header("X-Huge", &huge)
            .send()
            .await;
        // Either a 4xx answer or a closed connection is a refusal.
        if let Ok(resp) = r {
            assert!(resp.status().is_client_error(), "{}", resp.status());
        }
        let pong = client
            .get(format!("{}/ping", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(pong, "pong");
        let ready = client
            .get(format!("{}/v1-rk3s/readyz", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let missing = client
            .get(format!("{}/nope", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    });
}

#[test]
fn garbage_and_oversized_websocket_frames_close_only_that_tunnel() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let good = Agent::start(
        &t.path().join("g"),
        "good",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("good", "Ready", Duration::from_secs(20)));
    let tls = tls(&server);
    let sec = secret(&server);
    rt().block_on(async {
        let cases: Vec<(&str, Message)> = vec![
            ("text garbage", Message::text("{not json")),
            ("unknown type", Message::text(r#"{"type":"format_disk"}"#)),
            ("binary", Message::binary(vec![0u8, 1, 2, 3])),
            (
                "heartbeat first",
                Message::text(r#"{"type":"heartbeat","seq":1}"#),
            ),
        ];
        for (i, (what, msg)) in cases.into_iter().enumerate() {
            let name = format!("evil-{i}");
            let mut ws = connect_tunnel(
                &server.url(),
                tls.clone(),
                &sec,
                &name,
                "evilpassword-123",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            ws.send(msg).await.unwrap();
            let mut closed = None;
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {
                match frame {
                    Ok(Message::Close(f)) => {
                        closed = f;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            let f = closed.unwrap_or_else(|| panic!("{what}: server should close with a reason"));
            assert_eq!(u16::from(f.code), 1008, "{what}");
            assert!(!f.reason.is_empty(), "{what}");
        }
        // An oversized frame is refused by the websocket layer.
        let mut ws = connect_tunnel(
            &server.url(),
            tls.clone(),
            &sec,
            "evil-big",
            "evilpassword-123",
            &[],
        )
        .await
        .unwrap();
        let big = format!(
            r#"{{"type":"shutting_down","reason":"{}"}}"#,
            "x".repeat(1024 * 1024)
        );
        let _ = ws.send(Message::text(big)).await;
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "oversized frame must end the tunnel");

        // Streams are the server's to open: an agent's attempt is reset,
        // and its tunnel stays up.
        use rk3s_api::tunnel::StreamFrame;
        let mut ws = connect_tunnel(
            &server.url(),
            tls.clone(),
            &sec,
            "evil-open",
            "evilpassword-123",
            &[],
        )
        .await
        .unwrap();
        let open = StreamFrame::Open {
            id: 7,
            target: "kubelet".into(),
        };
        ws.send(Message::binary(open.encode())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return StreamFrame::decode(&b).ok(),
                    Some(Ok(Message::Close(f))) => panic!("tunnel closed: {f:?}"),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("no answer to a stream opened by an agent");
        assert!(
            matches!(answer, Some(StreamFrame::Reset { id: 7, .. })),
            "{answer:?}"
        );

        // Password mismatch through the real client gives the actionable 403.
        match connect_tunnel(
            &server.url(),
            tls.clone(),
            &sec,
            "good",
            "wrong-password-123",
            &[],
        )
        .await
        {
            Err(AgentError::PasswordRejected { message, .. }) => {
                assert!(
                    message.contains("rk3sctl node forget good")
                        && message.contains("--with-node-id"),
                    "{message}"
                );
            }
            Err(e) => panic!("expected 403, got {e}"),
            Ok(_) => panic!("wrong password admitted"),
        }
    });
    // The well-behaved agent never noticed.
    assert_eq!(server.node("good").unwrap()["status"], "Ready");
    assert_eq!(server.node("good").unwrap()["connected"], "server-0");
    drop(good);
}

#[test]
fn anonymous_callers_reach_only_health_and_version() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    rt().block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
            .build()
            .unwrap();
        for open in [
            "/readyz", "/livez", "/healthz", "/version", "/cacerts", "/ping",
        ] {
            let r = client
                .get(format!("{}{open}", server.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{open}");
        }
        for closed in [
            "/api",
            "/apis",
            "/api/v1/nodes",
            "/api/v1/namespaces/kube-system/secrets",
            "/openapi/v3",
        ] {
            let r = client
                .get(format!("{}{closed}", server.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{closed}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                (body["kind"].as_str(), body["reason"].as_str()),
                (Some("Status"), Some("Unauthorized")),
                "{closed}"
            );
        }
    });
}

#[test]
fn an_unknown_allocator_choice_is_named_and_ignored() {
    let run = |value: &str| {
        std::process::Command::new(bin("rk3sd"))
            .arg("--version")
            .env("RK3S_MALLOC", value)
            .output()
            .unwrap()
    };
    let o = run("glibc");
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("RK3S_MALLOC=glibc is neither \"system\" nor \"mimalloc\"; ignored"),
        "{err}"
    );
    for known in ["system", "mimalloc"] {
        let o = run(known);
        assert!(o.status.success() && o.stderr.is_empty(), "{known}: {o:?}");
    }
}
