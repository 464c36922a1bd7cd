//! Slow and hostile clients on :6443: each limit (`--request-header-timeout`,
//! `--request-timeout`, `--max-request-body-bytes`) cuts off the one client
//! that overruns it, answered as upstream answers, while everybody else
//! keeps being served. Every wait is bounded.

use rk3s_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the API port with no client certificate.
fn tls(server: &Server) -> Tls {
    let cfg = Arc::new(rk3sd::credentials::certs::client_config_pinned(&server.ca_pem()).unwrap());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
        .unwrap()
        .to_owned();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Everything the server sends until it closes (or 30 s pass).
fn read_all(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Send `request` (possibly cut short) on a fresh connection; the whole
/// answer and its JSON body.
fn exchange(server: &Server, request: &[u8]) -> (String, serde_json::Value) {
    let mut s = tls(server);
    s.write_all(request).unwrap();
    s.flush().unwrap();
    let answer = read_all(&mut s);
    let status = body_of(&answer);
    (answer, status)
}

/// The JSON body of a raw HTTP/1.1 answer.
fn body_of(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map(|i| i + 1).unwrap_or(body.len());
    serde_json::from_str(&body[start..end]).unwrap_or(serde_json::Value::Null)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server still answers an authenticated request.
fn serves_others(server: &Server) {
    rt().block_on(async {
        let r = server
            .admin_http()
            .get(format!("{}/api/v1/namespaces/default", server.url()))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the server answers others");
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn slowloris_before_and_inside_tls_is_cut_off_at_the_header_timeout() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &["--request-header-timeout", "2s"]);
    // 40 connections that never start TLS, and 10 that finish TLS and then
    // dribble the tunnel's connect request one byte at a time.
    let mut bare: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    let mut dribblers: Vec<Tls> = (0..10).map(|_| tls(&server)).collect();
    let request = b"GET /v1-rk3s/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let started = Instant::now();
    let mut cut: Vec<Option<Duration>> = vec![None; dribblers.len()];
    for (i, byte) in request.iter().enumerate() {
        if cut.iter().all(Option::is_some) || started.elapsed() > Duration::from_secs(20) {
            break;
        }
        for (d, s) in dribblers.iter_mut().enumerate() {
            if cut[d].is_none() && (s.write_all(&[*byte]).is_err() || s.flush().is_err()) {
                cut[d] = Some(started.elapsed());
            }
        }
        if i == 2 {
            serves_others(&server);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Cut at the 2 s flag, not at the 10 s default (a write notices the
    // close a byte or two later).
    for (d, when) in cut.iter().enumerate() {
        let when = when.unwrap_or_else(|| panic!("dribbler {d} was never cut off"));
        assert!(
            when < Duration::from_secs(8),
            "dribbler {d} cut after {when:?}"
        );
    }
    for s in dribblers.iter_mut() {
        let answer = read_all(s);
        assert!(
            !answer.contains(" 101 "),
            "a dribbled upgrade went through: {answer}"
        );
    }
    for s in bare.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "a connection that never spoke TLS was still open after {:?}",
                    started.elapsed()
                )
            }
            r => assert!(matches!(r, Ok(0) | Err(_)), "{r:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "slow clients were held for {:?}",
        started.elapsed()
    );
    serves_others(&server);
}

#[test]
fn bodies_over_the_limit_get_413_and_a_slow_body_gets_504() {
    let t = tempdir();
    let server = Server::start(
        &t.path().join("s"),
        &[
            "--request-timeout",
            "2s",
            "--max-request-body-bytes",
            "1048576",
        ],
    );
    // A declared 100 MB body is refused from its headers alone: nothing is
    // sent after them, and the answer still comes.
    let (answer, status) = exchange(&server, b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(status["kind"], "Status", "{answer}");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(
        status["message"],
        "Request entity too large: limit is 1048576"
    );

    rt().block_on(async {
        let http = server.admin_http();
        let url = format!("{}/api/v1/namespaces/default/configmaps", server.url());
        // Chunked, so no length is declared: cut off at the limit.
        let chunk = "x".repeat(64 * 1024);
        let chunks: Vec<Result<String, std::io::Error>> =
            (0..40).map(|_| Ok(chunk.clone())).collect();
        let r = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await;
        if let Ok(r) = r {
            assert_eq!(r.status(), 413);
        }
        // Under the limit, and bigger than axum's own 2 MB default would
        // allow at the default limit: accepted.
        let data = "y".repeat(900 * 1024);
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big"}, "data": {"k": data}});
        // A new client: the refused upload's connection is closed by the
        // server, and a pooled reuse of it would race that close.
        let r = server
            .admin_http()
            .post(&url)
            .json(&cm)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    });

    // A body that never finishes arriving: 504 Timeout at the deadline.
    let (answer, status) = exchange(&server, b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apiVersion\"");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(status["reason"], "Timeout", "{answer}");
    assert_eq!(status["code"], 504);
    serves_others(&server);
}

#[test]
fn a_watch_that_is_never_read_holds_up_nobody() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &["--request-timeout", "3s"]);
    rt().block_on(async {
        let http = server.admin_http();
        let base = format!("{}/api/v1/namespaces/default/configmaps", server.url());
        // The stuck watcher: headers taken, body never read. Watches are
        // long-running, so the request deadline does not end it either.
        let stuck = http.get(format!("{base}?watch=true")).send().await.unwrap();
        assert_eq!(stuck.status(), 200);
        let reader = http.get(format!("{base}?watch=true")).send().await.unwrap();
        let mut events = WatchEvents::new(reader);
        // Far more than the socket buffers of the stuck watch can take.
        let data = "z".repeat(32 * 1024);
        let n = 200;
        for i in 0..n {
            let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}")}, "data": {"k": data}});
            let r =
                tokio::time::timeout(Duration::from_secs(10), http.post(&base).json(&cm).send())
                    .await
                    .expect("a write is not held up by a stuck watcher")
                    .unwrap();
            assert_eq!(r.status(), 201);
        }
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < n && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(Some(e)) if e["type"] == "ADDED" => seen += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(seen, n, "the reading watcher saw every change");
        drop(stuck);
    });
    serves_others(&server);
}

#[test]
fn ten_thousand_idle_connections_do_not_lock_others_out() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &["--request-header-timeout", "3s"]);
    // This process needs a descriptor per connection too.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let baseline = open_fds(server.pid());
    let n = 10_000;
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(("127.0.0.1", server.port)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} failed: {e}", idle.len()),
        }
    }
    serves_others(&server);
    // The server lets go of every one of them at the header timeout.
    let released = wait_for(Duration::from_secs(60), || {
        (open_fds(server.pid()) < baseline + 100).then_some(())
    });
    assert!(
        released.is_some(),
        "{} descriptors still open ({baseline} before {n} idle connections)",
        open_fds(server.pid())
    );
    drop(idle);
    serves_others(&server);
}
