//! The datastore conformance suite against a real PostgreSQL server, each
//! case on a fresh database that rk3s creates itself.

use rk3s_tests::Postgres;
use rk3sd::datastore::{conformance, postgres::PostgresBackend, Datastore};
use std::sync::Arc;

async fn store(pg: &Postgres, db: &str) -> Datastore {
    Datastore::new(Arc::new(
        PostgresBackend::connect(&pg.url(db))
            .await
            .expect("connect"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    let pg = Postgres::start();
    conformance::create_update_delete_with_conflicts(store(&pg, "c1").await).await;
    conformance::list_by_prefix_is_exact(store(&pg, "c2").await).await;
    conformance::watch_is_ordered_and_replays_from_revision(store(&pg, "c3").await).await;
    conformance::a_watcher_that_falls_behind_catches_up_from_the_log(store(&pg, "c4").await).await;
    conformance::compaction_refuses_old_watch_and_keeps_newest(store(&pg, "c5").await).await;
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
