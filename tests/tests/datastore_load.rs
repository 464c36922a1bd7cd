//! Many writers at once against the SQLite datastore: no "database is
//! locked", and every acknowledged write is readable afterwards, also after
//! reopening the file.

use rk3sd::datastore::{sqlite::SqliteBackend, Datastore};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const RUN_FOR: Duration = Duration::from_secs(10);
/// Bound on writes per writer, whatever the machine's speed.
const MAX_WRITES: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_for_ten_seconds() {
    let dir = rk3s_tests::tempdir();
    let path = dir.path().join("state.db");
    let store = Datastore::new(Arc::new(SqliteBackend::open(&path).unwrap()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            // Each writer also keeps updating one hot key, like a heartbeat.
            let hot = format!("/registry/leases/kube-node-lease/w{w}");
            let mut rev = s.create(&hot, b"0".to_vec()).await.unwrap();
            let mut i = 0;
            while start.elapsed() < RUN_FOR && i < MAX_WRITES {
                let key = format!("/registry/configmaps/default/w{w}-{i}");
                match s.create(&key, format!("v{i}").into_bytes()).await {
                    Ok(r) => acked.push((key, r, format!("v{i}"))),
                    Err(e) => errors.push(e.to_string()),
                }
                match s.update(&hot, format!("{i}").into_bytes(), rev).await {
                    Ok(r) => rev = r,
                    Err(e) => errors.push(e.to_string()),
                }
                i += 1;
            }
            (acked, errors)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let (acked, errors) = t.await.unwrap();
        assert!(
            errors.is_empty(),
            "writers saw errors: {:?}",
            &errors[..errors.len().min(5)]
        );
        all.extend(acked);
    }
    assert!(
        all.len() > 1000,
        "only {} writes in {:?}",
        all.len(),
        RUN_FOR
    );
    // Revisions are unique across writers.
    let mut revs: Vec<i64> = all.iter().map(|(_, r, _)| *r).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), all.len());
    let check = |store: Datastore, all: Vec<(String, i64, String)>| async move {
        let (_, items) = store.list("/registry/configmaps/default/").await.unwrap();
        assert_eq!(items.len(), all.len());
        for (key, rev, value) in all.iter().step_by(97) {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} lost"));
            assert_eq!(
                (kv.mod_revision, kv.value.as_slice()),
                (*rev, value.as_bytes())
            );
        }
    };
    check(store.clone(), all.clone()).await;
    drop(store);
    let reopened = Datastore::new(Arc::new(SqliteBackend::open(&path).unwrap()));
    check(reopened, all).await;
}
