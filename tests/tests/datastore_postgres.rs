//! The datastore conformance suite against a real PostgreSQL server, each
//! case on a fresh database that rk3s creates itself.

use rk3s_tests::Postgres;
use rk3sd::datastore::{conformance, postgres::PostgresBackend, Datastore, TlsFiles};
use std::sync::Arc;

async fn backend(pg: &Postgres, db: &str) -> Arc<PostgresBackend> {
    Arc::new(
        PostgresBackend::connect(&pg.url(db), &TlsFiles::default())
            .await
            .expect("connect"),
    )
}

async fn store(pg: &Postgres, db: &str) -> Datastore {
    Datastore::new(backend(pg, db).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    let pg = Postgres::start();
    conformance::create_update_delete_with_conflicts(store(&pg, "c1").await).await;
    conformance::list_by_prefix_is_exact(store(&pg, "c2").await).await;
    conformance::watch_is_ordered_and_replays_from_revision(store(&pg, "c3").await).await;
    conformance::a_watcher_that_falls_behind_catches_up_from_the_log(store(&pg, "c4").await).await;
    conformance::compaction_refuses_old_watch_and_keeps_newest(store(&pg, "c5").await).await;
    conformance::racing_writes_in_one_batch_keep_their_meaning(store(&pg, "c6").await).await;
    let b = backend(&pg, "c7").await;
    conformance::compaction_goes_in_bounded_steps(Datastore::new(b.clone()), b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_see_each_others_writes_in_order() {
    let pg = Postgres::start();
    let a = store(&pg, "shared").await;
    let b = store(&pg, "shared").await;
    let from = b.current_revision().await.unwrap();
    let mut w = b.watch("/registry/x/", from).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { &a } else { &b };
        revs.push(
            s.create(&format!("/registry/x/k{i}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    for want in revs {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
            .await
            .expect("event within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(e.revision, want);
    }
    // Both see the same current state.
    assert_eq!(
        a.list("/registry/x/").await.unwrap(),
        b.list("/registry/x/").await.unwrap()
    );
}

#[test]
fn a_server_on_postgres_keeps_its_nodes_across_restarts() {
    let pg = Postgres::start();
    let t = rk3s_tests::tempdir();
    let url = pg.url("cluster");
    let mut server = rk3s_tests::Server::start_with_env(
        &t.path().join("s"),
        &[],
        &[("RK3S_DATASTORE_ENDPOINT", &url)],
    );
    let _a = rk3s_tests::Agent::start(
        &t.path().join("a"),
        "pg-worker",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("pg-worker", "Ready", std::time::Duration::from_secs(20)));
    let status = rk3s_tests::stdout(&server.ctl(&["status", "-o", "json"]));
    assert!(
        status.contains("postgres postgres://rk3s@127.0.0.1"),
        "{status}"
    );
    assert!(
        !std::fs::exists(t.path().join("s/data/server/db/state.db")).unwrap(),
        "no SQLite file when on PostgreSQL"
    );
    server.stop();
    server.restart();
    assert!(server.wait_status("pg-worker", "Ready", std::time::Duration::from_secs(20)));
    assert_eq!(server.nodes().len(), 2);
}

#[test]
fn a_bad_endpoint_is_a_clear_error_without_the_password() {
    let t = rk3s_tests::tempdir();
    let o = std::process::Command::new(rk3s_tests::bin("rk3sd"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--datastore-endpoint",
            "mysql://u:hunter2@h/db",
            "--data-dir",
        ])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = rk3s_tests::stderr(&o);
    assert!(
        err.contains("--datastore-endpoint") && err.contains("postgres://"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn servers_sharing_postgres_share_one_ca_and_refuse_another_token() {
    let pg = Postgres::start();
    let t = rk3s_tests::tempdir();
    let url = pg.url("ha");
    let env = [
        ("RK3S_DATASTORE_ENDPOINT", url.as_str()),
        ("RK3S_TOKEN", "ha-cluster-secret-0123"),
    ];
    // Two servers starting at the same moment on an empty datastore.
    let (s1, s2) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            rk3s_tests::Server::start_with_env(
                &t.path().join("s1"),
                &["--node-name", "server-1", "--service-cidr", "10.96.0.0/27"],
                &env,
            )
        });
        let b = s.spawn(|| {
            rk3s_tests::Server::start_with_env(
                &t.path().join("s2"),
                &["--node-name", "server-2", "--service-cidr", "10.96.0.0/27"],
                &env,
            )
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(s1.ca_pem(), s2.ca_pem(), "exactly one CA");
    assert_eq!(s1.token(), s2.token());
    assert!(
        !std::fs::read_to_string(s1.data_dir.join("server/tls/server-ca.key"))
            .unwrap()
            .is_empty()
    );

    // An agent joining through server 2 with server 1's token file is seen by both.
    let _a = rk3s_tests::Agent::start(
        &t.path().join("a"),
        "ha-worker",
        &s2.url(),
        &s1.token_file(),
        &[],
    );
    assert!(s1.wait_status("ha-worker", "Ready", std::time::Duration::from_secs(20)));
    // The Node turns Ready a moment before its Lease records the tunnel's server.
    let connected = rk3s_tests::wait_for(std::time::Duration::from_secs(20), || {
        let c = s1.node("ha-worker")?["connected"].clone();
        (c == "server-2").then_some(c)
    });
    assert_eq!(
        connected.as_ref().and_then(|c| c.as_str()),
        Some("server-2"),
        "{:?}",
        s1.node("ha-worker")
    );
    // Both servers serve certificates from the shared CA, and their admin
    // kubeconfigs work (whichever server lost the race re-issued them).
    for s in [&s1, &s2] {
        let k = rk3s_tests::Kubectl::new(
            rk3s_tests::kubectl(None),
            &s.kubeconfig(),
            &s.dir.join("kcache"),
        );
        assert!(k.ok(&["get", "nodes"]).contains("ha-worker"));
    }
    // Service-account tokens one server issues verify on the other, also
    // after a key rotation on the first (the second follows the key set).
    let kubectl_on = |s: &rk3s_tests::Server, name: &str| {
        rk3s_tests::Kubectl::new(
            rk3s_tests::kubectl(None),
            &s.kubeconfig(),
            &t.path().join(name),
        )
    };
    let k1 = kubectl_on(&s1, "k1");
    k1.ok(&["create", "serviceaccount", "ha-bot"]);
    let verify_on_s2 = |token: &str, name: &str| {
        let kc = rk3s_tests::token_kubeconfig(&t.path().join(name), &s2.url(), &s2.ca_pem(), token);
        let k = rk3s_tests::Kubectl::new(
            rk3s_tests::kubectl(None),
            &kc,
            &t.path().join(format!("{name}-c")),
        );
        k.run(&["auth", "whoami"])
    };
    let first = k1.ok(&["create", "token", "ha-bot"]);
    let o = verify_on_s2(first.trim(), "first");
    assert!(
        rk3s_tests::stdout(&o).contains("system:serviceaccount:default:ha-bot"),
        "{}",
        rk3s_tests::stderr(&o)
    );
    assert!(s1
        .ctl(&["service-account-key", "rotate", "--grace", "1h"])
        .status
        .success());
    let second = k1.ok(&["create", "token", "ha-bot"]);
    let followed = rk3s_tests::wait_for(std::time::Duration::from_secs(10), || {
        verify_on_s2(second.trim(), "second")
            .status
            .success()
            .then_some(())
    });
    assert!(followed.is_some(), "server 2 did not learn the rotated key");
    assert!(verify_on_s2(first.trim(), "first-again").status.success());

    // Services created on both servers at once (a /27 leaves 28 addresses
    // to hand out) never share an address: the datastore decides.
    let k2 = kubectl_on(&s2, "k2");
    std::thread::scope(|sc| {
        for (k, side) in [(&k1, "a"), (&k2, "b")] {
            sc.spawn(move || {
                for i in 0..12 {
                    k.ok(&[
                        "create",
                        "service",
                        "clusterip",
                        &format!("{side}{i}"),
                        "--tcp=80",
                    ]);
                }
            });
        }
    });
    let list: serde_json::Value =
        serde_json::from_str(&k1.ok(&["get", "services", "-o", "json"])).unwrap();
    let ips: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["spec"]["clusterIP"].as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = ips.iter().copied().collect();
    assert_eq!(ips.len(), 25, "{ips:?}");
    assert_eq!(
        distinct.len(),
        ips.len(),
        "an address was handed out twice: {ips:?}"
    );
    assert!(ips.iter().all(|ip| ip.starts_with("10.96.0.")), "{ips:?}");

    // A server with another token stops with a clear error and writes nothing.
    let o = std::process::Command::new(rk3s_tests::bin("rk3sd"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--https-listen-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--disable-agent",
            "--data-dir",
        ])
        .arg(t.path().join("s3"))
        .arg("--admin-socket")
        .arg(t.path().join("s3.sock"))
        .arg("--write-kubeconfig")
        .arg(t.path().join("s3.kubeconfig"))
        .env("RK3S_DATASTORE_ENDPOINT", &url)
        .env("RK3S_TOKEN", "some-other-secret")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = rk3s_tests::stderr(&o);
    assert!(err.contains("encrypted with a different token"), "{err}");
    assert!(!err.contains("some-other-secret"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entries = rt.block_on(async {
        store(&pg, "ha")
            .await
            .list("/bootstrap/")
            .await
            .unwrap()
            .1
            .len()
    });
    assert_eq!(entries, 1);
}

#[test]
fn a_server_reaches_postgres_over_tls_with_a_client_certificate() {
    let t = rk3s_tests::tempdir();
    let files = rk3s_tests::PgTlsFiles::generate(&t.path().join("pki"));
    let pg = Postgres::start_tls(&files);
    let url = pg.url("tls");
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (
        path(&files.ca),
        path(&files.client_cert),
        path(&files.client_key),
    );
    let s = rk3s_tests::Server::start_with_env(
        &t.path().join("s"),
        &[
            "--datastore-cafile",
            &ca,
            "--datastore-certfile",
            &cert,
            "--datastore-keyfile",
            &key,
        ],
        &[("RK3S_DATASTORE_ENDPOINT", url.as_str())],
    );
    assert!(s.wait_status("server-0", "Ready", std::time::Duration::from_secs(20)));

    // The server refuses anything but TLS with a client certificate, so
    // the checks below prove what rk3s sent.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = |ca: bool, client: bool| TlsFiles {
        ca: ca.then(|| files.ca.clone()),
        cert: client.then(|| files.client_cert.clone()),
        key: client.then(|| files.client_key.clone()),
    };
    let attempt = |f: TlsFiles| {
        rt.block_on(PostgresBackend::connect(&url, &f))
            .err()
            .map(|e| e.to_string())
    };
    let plain = attempt(tls(false, false)).expect("plain text must be refused");
    assert!(
        plain.contains("no encryption") || plain.contains("pg_hba"),
        "{plain}"
    );
    let no_cert =
        attempt(tls(true, false)).expect("TLS without a client certificate must be refused");
    assert!(no_cert.contains("certificate"), "{no_cert}");
    assert_eq!(attempt(tls(true, true)), None);

    // A missing TLS file is reported at once, naming the flag.
    let o = std::process::Command::new(rk3s_tests::bin("rk3sd"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--disable-agent",
            "--data-dir",
        ])
        .arg(t.path().join("bad"))
        .args(["--datastore-cafile", "/nonexistent/ca.crt"])
        .env("RK3S_DATASTORE_ENDPOINT", &url)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = rk3s_tests::stderr(&o);
    assert!(
        err.contains("--datastore-cafile /nonexistent/ca.crt"),
        "{err}"
    );
}
