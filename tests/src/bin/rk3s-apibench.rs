//! Kubernetes API benchmark against a real `rk3sd server` over TLS with the
//! admin client certificate.
//!
//! cargo build --release --workspace
//! target/release/rk3s-apibench [--objects 10000] [--watchers 100] [--rate 200] [--secs 10]
//!
//! 1. create throughput: 8 concurrent clients create `--objects` ConfigMaps;
//! 2. list latency: full lists of those ConfigMaps (p50/p99);
//! 3. watch delivery: `--watchers` watches while one client writes at
//!    `--rate` writes/s for `--secs` s; reports create latency and the delay
//!    from sending each write to its arrival at every watcher (end to end).
//!
//! 4. authorization cost: GETs by a service-account token (authorized by
//!    RBAC through a RoleBinding), p50/p99 with no other bindings, then
//!    with `--rbac-bindings` (1000) more RoleBindings in that namespace
//!    (`--authz-only` runs just this step).
//!
//! With `--postgres`, the datastore is a local PostgreSQL (Debian's, fsync
//! on) and a second server shares it: writes go to the first server and
//! the watchers watch the second, so step 3 measures cross-server watch
//! delivery (LISTEN/NOTIFY plus the catch-up read).

use futures_util::StreamExt;
use rk3s_tests::{arg, tempdir, Server};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Objects in the listed namespace.
const LIST_SIZE: usize = 10_000;

/// The storage ceiling for the same work: `n` rows holding what a create
/// stores (a ConfigMap with server-set metadata), inserted by 8 threads
/// sharing one connection, one transaction per row, with the datastore's
/// pragmas (WAL, synchronous=NORMAL). Inserts per second.
fn sqlite_ceiling(path: &std::path::Path, n: usize) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE kv (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, value BLOB NOT NULL)",
    )
    .unwrap();
    let conn = Arc::new(Mutex::new(conn));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (conn, next) = (conn.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut body = cm("bulk", &format!("cm-{i:06}"), 0);
                body["metadata"]["uid"] = json!(format!("{i:08}-0000-4000-8000-000000000000"));
                body["metadata"]["creationTimestamp"] = json!("2026-11-23T00:00:00Z");
                body["metadata"]["resourceVersion"] = json!(i.to_string());
                let value = serde_json::to_vec(&body).unwrap();
                let mut c = conn.lock().unwrap();
                let tx = c.transaction().unwrap();
                tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                    rusqlite::params![format!("/registry/configmaps/bulk/cm-{i:06}"), value],
                )
                .unwrap();
                tx.commit().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn cm(ns: &str, name: &str, stamp: u128) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"sent": stamp.to_string()}})
}

fn now_us(epoch: Instant) -> u128 {
    epoch.elapsed().as_micros()
}

/// `--manifests N`: N manifest files (one ConfigMap each) in the manifests
/// directory before the first start; time until every one is applied.
fn manifests_at_startup(dir: &std::path::Path, n: usize) {
    let mdir = dir.join("data/server/manifests");
    std::fs::create_dir_all(&mdir).unwrap();
    for i in 0..n {
        std::fs::write(
            mdir.join(format!("m{i:04}.yaml")),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m{i:04}\ndata:\n  i: \"{i}\"\n"),
        )
        .unwrap();
    }
    let t0 = Instant::now();
    let server = Server::start(dir, &["--disable-agent"]);
    let ready = t0.elapsed();
    let done = rk3s_tests::wait_for(Duration::from_secs(300), || {
        let o = server.ctl(&["manifest", "list", "-o", "json"]);
        let list: Vec<Value> = serde_json::from_slice(&o.stdout).ok()?;
        let ok = list
            .iter()
            .filter(|m| m["applied"].is_string() && m["error"] == "")
            .count();
        (ok >= n + rk3sd::server::deploy::addons::BUNDLED.len()).then(|| t0.elapsed())
    })
    .expect("all manifests applied");
    println!(
        "{n} manifests at startup: server ready after {:.2} s, all applied after {:.2} s ({:.2} ms per manifest)",
        ready.as_secs_f64(),
        done.as_secs_f64(),
        (done - ready).as_secs_f64() * 1000.0 / n as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    rk3sd::host::process::raise_nofile_limit();
    let objects = arg("--objects", 10_000) as usize;
    let watchers = arg("--watchers", 100) as usize;
    let rate = arg("--rate", 200);
    let secs = arg("--secs", 10);
    let dir = tempdir();
    let manifests = arg("--manifests", 0usize);
    if manifests > 0 {
        return manifests_at_startup(&dir.path().join("server"), manifests);
    }
    let postgres = std::env::args().any(|a| a == "--postgres");
    let pg = postgres.then(rk3s_tests::Postgres::start_durable);
    let url = pg.as_ref().map(|p| p.url("bench")).unwrap_or_default();
    let env = [
        ("RK3S_DATASTORE_ENDPOINT", url.as_str()),
        ("RK3S_TOKEN", "apibench-secret-0123"),
    ];
    let env: &[(&str, &str)] = if postgres { &env } else { &[] };
    let server = Server::start_with_env(&dir.path().join("server"), &["--disable-agent"], env);
    let second = postgres
        .then(|| Server::start_with_env(&dir.path().join("server2"), &["--disable-agent"], env));
    println!(
        "datastore: {}",
        if postgres {
            "PostgreSQL (fsync on), two servers"
        } else {
            "SQLite"
        }
    );
    let base = server.url();
    let http = server.admin_http();
    if std::env::args().any(|a| a == "--authz-only") {
        return authz(&base, &http, &server.ca_pem(), arg("--rbac-bindings", 1000)).await;
    }
    // Watchers use the second server when there is one.
    let watch_base = second.as_ref().map_or_else(|| base.clone(), Server::url);
    let watch_http = second
        .as_ref()
        .map_or_else(|| http.clone(), Server::admin_http);
    for ns in ["bench", "bulk", "watch"] {
        let r = http
            .post(format!("{base}/api/v1/namespaces"))
            .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    // 1. Create throughput, 8 clients, as the store grows: the rate over
    // the creates just before each mark. The first LIST_SIZE go to "bench"
    // (listed below), the rest to "bulk".
    let marks: Vec<usize> = [1_000, 10_000, 50_000]
        .into_iter()
        .filter(|m| *m <= objects)
        .collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, base, next, lat, done) = (
            http.clone(),
            base.clone(),
            next.clone(),
            lat.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= objects {
                    break;
                }
                let ns = if i < LIST_SIZE { "bench" } else { "bulk" };
                let t0 = Instant::now();
                let r = http
                    .post(format!("{base}/api/v1/namespaces/{ns}/configmaps"))
                    .json(&cm(ns, &format!("cm-{i:06}"), 0))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                lat.lock().unwrap().push(t0.elapsed());
                done.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    let mut l = lat.lock().unwrap().clone();
    println!("create, 8 clients:        {objects} ConfigMaps in {:.2} s = {:.0} creates/s; p50 {:.2} ms, p99 {:.2} ms",
        took.as_secs_f64(), objects as f64 / took.as_secs_f64(), pct(&mut l, 0.5), pct(&mut l, 0.99));
    let mut done = done.lock().unwrap().clone();
    done.sort();
    let ceiling = sqlite_ceiling(&dir.path().join("ceiling.db"), objects.min(20_000));
    println!(
        "raw SQLite inserts (same bodies, one transaction each, 8 threads): {ceiling:.0} inserts/s"
    );
    for m in &marks {
        let w = (m / 2).min(1_000);
        let secs = (done[m - 1] - done[m - 1 - w]).as_secs_f64();
        let rate = w as f64 / secs;
        println!(
            "creates/s at {m:>6} stored: {rate:>6.0} ({:.2} x the raw SQLite ceiling)",
            rate / ceiling
        );
    }

    // 2. List latency: request sent to the last byte received (the client
    // parses the body afterwards, outside the timing, to check it).
    let mut l = Vec::new();
    let mut parse = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let body = http
            .get(format!("{base}/api/v1/namespaces/bench/configmaps"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        l.push(t0.elapsed());
        let t1 = Instant::now();
        let body: Value = serde_json::from_slice(&body).unwrap();
        parse.push(t1.elapsed());
        // Plus the namespace's kube-root-ca.crt.
        assert_eq!(
            body["items"].as_array().unwrap().len(),
            objects.min(LIST_SIZE) + 1
        );
    }
    println!(
        "client-side parse of each list (not in the list figure): p50 {:.1} ms",
        pct(&mut parse, 0.5)
    );
    println!(
        "list of {} ConfigMaps:  p50 {:.1} ms, p99 {:.1} ms (30 lists, {objects} stored)",
        objects.min(LIST_SIZE),
        pct(&mut l, 0.5),
        pct(&mut l, 0.99)
    );

    // 3. Watch delivery to many watchers under a steady write rate.
    let epoch = Instant::now();
    let delivery: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rv = {
        let body: Value = http
            .get(format!("{base}/api/v1/namespaces/watch/configmaps"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut watch_tasks = Vec::new();
    for _ in 0..watchers {
        let (http, base, delivery, received, rv) = (
            watch_http.clone(),
            watch_base.clone(),
            delivery.clone(),
            received.clone(),
            rv.clone(),
        );
        watch_tasks.push(tokio::spawn(async move {
            let resp = http
                .get(format!("{base}/api/v1/namespaces/watch/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds={}", secs + 5))
                .send()
                .await
                .unwrap();
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                    if let Some(sent) = ev["object"]["data"]["sent"].as_str().and_then(|s| s.parse::<u128>().ok()) {
                        let d = now_us(epoch).saturating_sub(sent);
                        delivery.lock().unwrap().push(Duration::from_micros(d as u64));
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = (rate * secs) as usize;
    let mut write_lat = Vec::with_capacity(writes);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let wstart = Instant::now();
    for i in 0..writes {
        tick.tick().await;
        let t0 = Instant::now();
        let r = http
            .post(format!("{base}/api/v1/namespaces/watch/configmaps"))
            .json(&cm("watch", &format!("w-{i:06}"), now_us(epoch)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        write_lat.push(t0.elapsed());
    }
    let wtook = wstart.elapsed();
    let expected = writes * watchers;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::Relaxed) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut d = delivery.lock().unwrap().clone();
    println!("writes at {rate}/s for {secs} s: {writes} creates in {:.2} s; create p50 {:.2} ms, p99 {:.2} ms",
        wtook.as_secs_f64(), pct(&mut write_lat, 0.5), pct(&mut write_lat, 0.99));
    println!("watch delivery to {watchers} watchers: {} of {expected} events; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        d.len(), pct(&mut d, 0.5), pct(&mut d, 0.99), d.last().map(|x| x.as_secs_f64() * 1000.0).unwrap_or(0.0));
    for t in watch_tasks {
        t.abort();
    }
    authz(&base, &http, &server.ca_pem(), arg("--rbac-bindings", 1000)).await;
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let r = http.post(url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// p50 and p99 (ms) of `n` GETs of `url` with `token`, 4 at a time.
async fn timed_gets(http: &reqwest::Client, url: &str, token: &str, n: usize) -> (f64, f64) {
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..4 {
        let (http, url, token, lat, next) = (
            http.clone(),
            url.to_string(),
            token.to_string(),
            lat.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let t0 = Instant::now();
                let mut req = http.get(&url);
                if !token.is_empty() {
                    req = req.bearer_auth(&token);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                lat.lock().unwrap().push(t0.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = lat.lock().unwrap().clone();
    (pct(&mut l, 0.5), pct(&mut l, 0.99))
}

/// Step 4, what RBAC costs a request: the same GETs by a service account with
/// its one binding, then with `bindings` more in the namespace.
async fn authz(base: &str, admin: &reqwest::Client, ca_pem: &[u8], bindings: usize) {
    const GETS: usize = 4000;
    let ns = "authz";
    post(
        admin,
        format!("{base}/api/v1/namespaces"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    post(
        admin,
        format!("{base}/api/v1/namespaces/{ns}/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
    )
    .await;
    post(
        admin,
        format!("{base}/api/v1/namespaces/{ns}/configmaps"),
        cm(ns, "target", 0),
    )
    .await;
    let rbac = format!("{base}/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}");
    post(admin, format!("{rbac}/roles"), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]})).await;
    let binding = |name: String, subject: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [subject]})
    };
    post(
        admin,
        format!("{rbac}/rolebindings"),
        binding(
            "reader".into(),
            json!({"kind": "ServiceAccount", "name": "reader", "namespace": ns}),
        ),
    )
    .await;
    let tr = post(
        admin,
        format!("{base}/api/v1/namespaces/{ns}/serviceaccounts/reader/token"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await;
    let token = tr["status"]["token"].as_str().unwrap().to_string();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    let url = format!("{base}/api/v1/namespaces/{ns}/configmaps/target");
    // The binding reaches the authorizer through its watch of RBAC objects.
    let t0 = Instant::now();
    loop {
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the binding never took effect: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "a new RoleBinding took effect after {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    // Warm up connections and the token cache, then measure.
    timed_gets(&http, &url, &token, 200).await;
    let (p50_0, p99_0) = timed_gets(&http, &url, &token, GETS).await;
    for i in 0..bindings {
        post(admin, format!("{rbac}/rolebindings"), binding(format!("other-{i:05}"), json!({"kind": "User", "name": format!("user-{i}"), "apiGroup": "rbac.authorization.k8s.io"}))).await;
    }
    timed_gets(&http, &url, &token, 200).await;
    let (p50_n, p99_n) = timed_gets(&http, &url, &token, GETS).await;
    // Reference: the admin certificate (system:masters) skips RBAC.
    let (p50_a, p99_a) = timed_gets(admin, &url, "", GETS).await;
    println!("authorized GET by a service-account token, {GETS} requests, 4 clients:");
    println!("  admin certificate:    p50 {p50_a:.2} ms, p99 {p99_a:.2} ms (system:masters, no RBAC lookup)");
    println!("  1 RoleBinding:        p50 {p50_0:.2} ms, p99 {p99_0:.2} ms");
    println!(
        "  {} RoleBindings:   p50 {p50_n:.2} ms, p99 {p99_n:.2} ms (p99 ratio {:.2}x)",
        bindings + 1,
        p99_n / p99_0
    );
}
