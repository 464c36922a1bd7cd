//! Datastore conformance: the semantics every backend must have, run
//! against SQLite by its unit tests and against a real PostgreSQL server by
//! the tests crate. Each function takes a fresh store.

use super::{Backend, Datastore, DatastoreError, EventKind, Revision};

pub async fn create_update_delete_with_conflicts(s: Datastore) {
    let r1 = s.create("/registry/a/x", b"1".to_vec()).await.unwrap();
    assert_eq!(
        s.create("/registry/a/x", b"2".to_vec()).await,
        Err(DatastoreError::AlreadyExists("/registry/a/x".into()))
    );
    let r2 = s.update("/registry/a/x", b"2".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    // A stale revision is a conflict and changes nothing.
    assert!(matches!(
        s.update("/registry/a/x", b"3".to_vec(), r1).await,
        Err(DatastoreError::Conflict { expected, actual, .. }) if expected == r1 && actual == r2
    ));
    assert!(matches!(
        s.delete("/registry/a/x", Some(r1)).await,
        Err(DatastoreError::Conflict { .. })
    ));
    let kv = s.get("/registry/a/x").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], r1, r2)
    );
    let (r3, old) = s.delete("/registry/a/x", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(old.value, b"2");
    assert_eq!(s.get("/registry/a/x").await.unwrap(), None);
    assert_eq!(
        s.update("/registry/a/x", b"4".to_vec(), r3).await,
        Err(DatastoreError::NotFound("/registry/a/x".into()))
    );
    assert_eq!(s.current_revision().await.unwrap(), r3);
}

pub async fn list_by_prefix_is_exact(s: Datastore) {
    let rev0 = s.current_revision().await.unwrap();
    for k in [
        "/registry/nodes/a",
        "/registry/nodes/b",
        "/registry/nodesx/c",
        "/registry/leases/a",
    ] {
        s.create(k, b"{}".to_vec()).await.unwrap();
    }
    let (rev, items) = s.list("/registry/nodes/").await.unwrap();
    let keys: Vec<_> = items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/registry/nodes/a", "/registry/nodes/b"]);
    assert_eq!(rev, rev0 + 4);
}

pub async fn watch_is_ordered_and_replays_from_revision(s: Datastore) {
    let r1 = s.create("/registry/n/a", b"1".to_vec()).await.unwrap();
    s.create("/registry/other/z", b"z".to_vec()).await.unwrap();
    let mut w = s.watch("/registry/n/", r1 - 1).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!((e.kind, e.revision), (EventKind::Create, r1));
    // Concurrent writers: every event arrives, in strictly increasing order.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                s.create(&format!("/registry/n/t{t}-{i}"), b"v".to_vec())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = r1;
    for _ in 0..200 {
        let e = w.next().await.unwrap().unwrap();
        assert!(
            e.revision > last,
            "out of order: {} after {}",
            e.revision,
            last
        );
        assert!(e.key.starts_with("/registry/n/"));
        last = e.revision;
    }
    let (_, v) = s.delete("/registry/n/a", None).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.value, v.value);
}

pub async fn a_watcher_that_falls_behind_catches_up_from_the_log(s: Datastore) {
    let from = s.current_revision().await.unwrap();
    let mut w = s.watch("/registry/lag/", from).await.unwrap();
    // More events than the broadcast and the watch buffer hold together,
    // written while nobody reads the watch.
    let n = 4096 + 2000;
    let mut rev = s.create("/registry/lag/k", b"0".to_vec()).await.unwrap();
    for i in 1..n {
        rev = s
            .update("/registry/lag/k", i.to_string().into_bytes(), rev)
            .await
            .unwrap();
    }
    let mut last = from;
    for i in 0..n {
        let e = w.next().await.unwrap().unwrap();
        assert_eq!(e.revision, last + 1, "event {i} skipped or reordered");
        assert_eq!(e.value, i.to_string().into_bytes());
        last = e.revision;
    }
}

/// One key written 100 times ("0" to "99"): (compacted revision before,
/// the last revision).
pub async fn hundred_revisions(s: &Datastore) -> (Revision, Revision) {
    let before = s.compacted_revision().await.unwrap();
    let mut rev = s.create("/registry/k/a", b"0".to_vec()).await.unwrap();
    for i in 1..100 {
        rev = s
            .update("/registry/k/a", format!("{i}").into_bytes(), rev)
            .await
            .unwrap();
    }
    (before, rev)
}

/// `b` is the backend under `s`: one step drops at most what it is told,
/// and the handle's compaction takes as many steps as it needs.
pub async fn compaction_goes_in_bounded_steps(s: Datastore, b: std::sync::Arc<dyn Backend>) {
    let (before, rev) = hundred_revisions(&s).await;
    let step = b.compact(10, 30).await.unwrap();
    assert_eq!(step.compacted_to, before + 30);
    assert_eq!(step.events_deleted, 30);
    let all = s.compact(10).await.unwrap();
    assert_eq!(all.compacted_to, rev - 10);
    assert_eq!(all.events_deleted, (rev - 10 - before - 30) as u64);
}

pub async fn compaction_refuses_old_watch_and_keeps_newest(s: Datastore) {
    let (before, rev) = hundred_revisions(&s).await;
    let stats = s.compact(10).await.unwrap();
    assert_eq!(stats.compacted_to, rev - 10);
    assert_eq!(stats.events_deleted, (rev - 10 - before) as u64);
    assert!(matches!(
        s.watch("/registry/k/", 5).await,
        Err(DatastoreError::Compacted { requested: 5, .. })
    ));
    // The newest revisions are still watchable.
    let mut w = s.watch("/registry/k/", rev - 10).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e.revision, rev - 9);
    // Current values are untouched by compaction.
    assert_eq!(s.get("/registry/k/a").await.unwrap().unwrap().value, b"99");
}

/// Writes racing in one batch: of updates at the same revision exactly
/// one wins and the rest conflict naming its revision; a second create of
/// a key and a delete at a stale revision fail as alone; every applied
/// write is watched once, in strictly increasing revision order.
pub async fn racing_writes_in_one_batch_keep_their_meaning(s: Datastore) {
    let base = s.create("/registry/r/hot", b"0".to_vec()).await.unwrap();
    let doomed = s.create("/registry/r/doomed", b"d".to_vec()).await.unwrap();
    let mut w = s.watch("/registry/r/", doomed).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => (
                    "update",
                    s.update("/registry/r/hot", format!("u{i}").into_bytes(), base)
                        .await,
                ),
                1 => (
                    "create",
                    s.create(&format!("/registry/r/k{i}"), b"v".to_vec()).await,
                ),
                2 => (
                    "dup",
                    s.create("/registry/r/doomed", b"again".to_vec()).await,
                ),
                _ => (
                    "stale-delete",
                    s.delete("/registry/r/doomed", Some(doomed - 1))
                        .await
                        .map(|(r, _)| r),
                ),
            }
        }));
    }
    let mut applied = Vec::new();
    let mut winners = Vec::new();
    for t in tasks {
        let (what, r) = t.await.unwrap();
        match (what, r) {
            ("update", Ok(rev)) => {
                winners.push(rev);
                applied.push(rev);
            }
            ("update", Err(DatastoreError::Conflict { expected, .. })) => {
                assert_eq!(expected, base)
            }
            ("create", Ok(rev)) => applied.push(rev),
            ("dup", Err(DatastoreError::AlreadyExists(_))) => {}
            ("stale-delete", Err(DatastoreError::Conflict { actual, .. })) => {
                assert_eq!(actual, doomed)
            }
            (what, r) => panic!("{what}: unexpected {r:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "updates at one revision: exactly one wins"
    );
    let hot = s.get("/registry/r/hot").await.unwrap().unwrap();
    assert_eq!(hot.mod_revision, winners[0]);
    // A later conflicting update names the winner's revision.
    match s.update("/registry/r/hot", b"late".to_vec(), base).await {
        Err(DatastoreError::Conflict { actual, .. }) => assert_eq!(actual, winners[0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.get("/registry/r/doomed").await.unwrap().unwrap().value,
        b"d"
    );
    applied.sort();
    assert_eq!(applied.len(), 11, "ten creates and one update");
    let mut seen = Vec::new();
    while seen.len() < applied.len() {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("every applied write is watched")
            .unwrap()
            .unwrap();
        if let Some(last) = seen.last() {
            assert!(
                e.revision > *last,
                "out of order: {} after {last}",
                e.revision
            );
        }
        seen.push(e.revision);
    }
    assert_eq!(seen, applied);
    assert!(s.current_revision().await.unwrap() >= *applied.last().unwrap());
}
