//! The workload controllers with the real kubelet on containerd: Jobs
//! (parallelism, backoffLimit, Indexed, activeDeadlineSeconds, TTL), a
//! CronJob firing, a DaemonSet on every node (a node added later too) and
//! its rolling update, a StatefulSet's ordinals in order both ways and its
//! claims, a ReplicationController. Needs root (containerd).

use rk3s_tests::pods::*;
use rk3s_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn get(k: &Kubectl, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend(what);
    args.extend(["-o", "json"]);
    let o = k.run(&args);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn items(k: &Kubectl, what: &[&str]) -> Vec<Value> {
    get(k, what)
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
}

fn condition<'a>(v: &'a Value, t: &str) -> Option<&'a Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t && c["status"] == "True")
}

const MANIFESTS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  parallelism: 2
  completions: 4
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "busybox:test", command: ["sh", "-c", "sleep 2"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "busybox:test", command: ["sh", "-c", "exit 3"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: "busybox:test"
        command: ["sh", "-c", "case \"$JOB_COMPLETION_INDEX\" in 0|1|2) exit 0;; *) exit 1;; esac"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: ttl}
spec:
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "busybox:test", command: ["sh", "-c", "exit 0"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: deadline}
spec:
  activeDeadlineSeconds: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: "busybox:test", command: ["sleep", "600"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  timeZone: "Etc/UTC"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: c, image: "busybox:test", command: ["sh", "-c", "exit 0"]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: daemon}
spec:
  selector: {matchLabels: {app: daemon}}
  template:
    metadata: {labels: {app: daemon}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: "busybox:test", command: ["sleep", "600"]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: "busybox:test"
        command: ["sleep", "600"]
        readinessProbe: {exec: {command: ["sh", "-c", "exit 0"]}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: "busybox:test", command: ["sleep", "600"]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: ReplicationController
metadata: {name: rc}
spec:
  replicas: 2
  selector: {app: rc}
  template:
    metadata: {labels: {app: rc, tier: front}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: "busybox:test", command: ["sleep", "600"], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: unready, labels: {tier: front}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: "busybox:test"
    command: ["sleep", "600"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {exec: {command: ["sh", "-c", "exit 1"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  selector: {tier: front}
  ports: [{port: 80, targetPort: http}]
"#;

#[test]
fn jobs_cronjobs_daemonsets_statefulsets_and_rcs_run_on_the_kubelet() {
    let t = tempdir();
    let dir = t.path().join("s");
    with_busybox(&dir);
    let server = Server::start(&dir, &[RUNTIME]);
    let _containers = Containers::of(&dir.join("data"));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache"));
    let ready = wait_for(Duration::from_secs(90), || {
        let n = get(&k, &["node", "server-0"])?;
        condition(&n, "Ready").map(|_| ())
    });
    assert!(ready.is_some(), "node not Ready:\n{}", server.log());
    k.ok_stdin(&["apply", "-f", "-"], MANIFESTS);
    let started = Instant::now();

    // Job ok: 4 completions, never more than 2 pods at once.
    let mut most = 0;
    let done = wait_for(T, || {
        let j = get(&k, &["job", "ok"])?;
        most = most.max(j["status"]["active"].as_i64().unwrap_or(0));
        let running = items(&k, &["pods", "-l", "job-name=ok"])
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count() as i64;
        most = most.max(running);
        condition(&j, "Complete").is_some().then_some(j)
    })
    .unwrap_or_else(|| {
        panic!(
            "job ok did not complete: {}\n{}",
            k.ok(&["describe", "job", "ok"]),
            server.log()
        )
    });
    assert_eq!(done["status"]["succeeded"], 4, "{done}");
    assert!(most <= 2, "parallelism 2 exceeded: {most}");
    assert!(most >= 1);
    assert!(done["status"]["completionTime"].is_string(), "{done}");
    assert_eq!(items(&k, &["pods", "-l", "job-name=ok"]).len(), 4);
    let w = k.run(&["wait", "--for=condition=complete", "job/ok", "--timeout=5s"]);
    assert!(w.status.success(), "{}", stderr(&w));

    // Job bad: two failed pods (backoffLimit 1, 10 s apart), then Failed.
    let failed = wait_for(T, || {
        let j = get(&k, &["job", "bad"])?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .unwrap_or_else(|| {
        panic!(
            "job bad did not fail: {}",
            k.ok(&["describe", "job", "bad"])
        )
    });
    assert_eq!(failed["status"]["failed"], 2, "{failed}");
    assert_eq!(
        condition(&failed, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    let pods = items(&k, &["pods", "-l", "job-name=bad"]);
    assert_eq!(pods.len(), 2, "{pods:?}");
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=bad",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");

    // Job idx: each index ran once and saw its JOB_COMPLETION_INDEX.
    let idx = wait_for(T, || {
        let j = get(&k, &["job", "idx"])?;
        (condition(&j, "Complete").is_some() || condition(&j, "Failed").is_some()).then_some(j)
    })
    .unwrap();
    assert!(condition(&idx, "Complete").is_some(), "{idx}");
    assert_eq!(idx["status"]["completedIndexes"], "0-2", "{idx}");
    let mut names: Vec<String> = items(&k, &["pods", "-l", "job-name=idx"])
        .iter()
        .map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["0", "1", "2"]);

    // Job deadline: failed at its deadline, its pod deleted.
    let dl = wait_for(T, || {
        let j = get(&k, &["job", "deadline"])?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .unwrap();
    assert_eq!(
        condition(&dl, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
    let gone = wait_for(Duration::from_secs(30), || {
        items(&k, &["pods", "-l", "job-name=deadline"])
            .is_empty()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "{}",
        k.ok(&["get", "pods", "-l", "job-name=deadline"])
    );

    // Job ttl: deleted after it finished, with its pods.
    let gone = wait_for(T, || {
        (get(&k, &["job", "ttl"]).is_none()
            && items(&k, &["pods", "-l", "job-name=ttl"]).is_empty())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "job ttl still there: {}",
        k.ok(&["get", "jobs,pods"])
    );

    // DaemonSet: one pod on the node, rolled by `set env`.
    let o = k.run(&["rollout", "status", "ds/daemon", "--timeout=90s"]);
    assert!(
        o.status.success(),
        "{}{}",
        stderr(&o),
        k.ok(&["describe", "ds", "daemon"])
    );
    let first = items(&k, &["pods", "-l", "app=daemon"]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["spec"]["nodeName"], "server-0");
    k.ok(&["set", "env", "ds/daemon", "ROUND=2"]);
    let o = k.run(&["rollout", "status", "ds/daemon", "--timeout=90s"]);
    assert!(
        o.status.success(),
        "{}{}",
        stderr(&o),
        k.ok(&["describe", "ds", "daemon"])
    );
    let second = wait_for(Duration::from_secs(30), || {
        let p = items(
            &k,
            &[
                "pods",
                "-l",
                "app=daemon",
                "--field-selector",
                "status.phase=Running",
            ],
        );
        (p.len() == 1 && p[0]["metadata"]["uid"] != first[0]["metadata"]["uid"]).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "{}",
            k.ok(&["get", "pods", "-l", "app=daemon", "-o", "wide"])
        )
    });
    assert_ne!(
        second[0]["metadata"]["labels"]["controller-revision-hash"],
        first[0]["metadata"]["labels"]["controller-revision-hash"]
    );
    let h = k.ok(&["rollout", "history", "ds/daemon"]);
    assert!(h.contains("1 ") && h.contains("2 "), "{h}");
    // A node that joins gets its daemon (a Node written as a kubelet would;
    // nothing runs there, so only the binding is checked).
    k.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "late-node", "labels": {"kubernetes.io/hostname": "late-node"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}],
                   "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"},
                   "capacity": {"cpu": "2", "memory": "2Gi", "pods": "110"}}}"#);
    let bound = wait_for(Duration::from_secs(30), || {
        items(
            &k,
            &[
                "pods",
                "-l",
                "app=daemon",
                "--field-selector",
                "spec.nodeName=late-node",
            ],
        )
        .into_iter()
        .next()
    });
    assert!(bound.is_some(), "{}", k.ok(&["get", "pods", "-o", "wide"]));
    let ds = get(&k, &["ds", "daemon"]).unwrap();
    assert_eq!(ds["status"]["desiredNumberScheduled"], 2, "{ds}");
    // Its pod is deleted with it (no kubelet finishes it: the pod GC
    // removes it after its 40 s quarantine; checked at the end).
    k.ok(&["delete", "node", "late-node"]);

    // StatefulSet web: ordinals created in order, each after the one
    // before was Ready.
    let o = k.run(&["rollout", "status", "sts/web", "--timeout=90s"]);
    assert!(
        o.status.success(),
        "{}{}",
        stderr(&o),
        k.ok(&["describe", "sts", "web"])
    );
    let pods: Vec<Value> = (0..3)
        .map(|i| get(&k, &["pod", &format!("web-{i}")]).unwrap())
        .collect();
    for w in pods.windows(2) {
        let ready_at = condition(&w[0], "Ready").unwrap()["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string();
        let created = w[1]["metadata"]["creationTimestamp"].as_str().unwrap();
        assert!(
            created >= ready_at.as_str(),
            "{} created at {created}, before {} was Ready at {ready_at}",
            w[1]["metadata"]["name"],
            w[0]["metadata"]["name"]
        );
    }
    assert_eq!(pods[1]["spec"]["hostname"], "web-1");
    assert_eq!(pods[1]["spec"]["subdomain"], "web");
    assert_eq!(
        pods[2]["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "2"
    );
    // Scaled down: the highest ordinal goes first.
    k.ok(&["scale", "sts/web", "--replicas=1"]);
    let mut order = vec![];
    let shrunk = wait_for(T, || {
        let names: Vec<String> = items(&k, &["pods", "-l", "app=web"])
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        if order.last() != Some(&names) {
            order.push(names.clone());
        }
        (names == ["web-0"]).then_some(())
    });
    assert!(shrunk.is_some(), "{order:?}");
    let has = |names: &Vec<String>, n: &str| names.iter().any(|x| x == n);
    assert!(
        !order
            .iter()
            .any(|names| has(names, "web-2") && !has(names, "web-1")),
        "web-1 went before web-2: {order:?}"
    );

    // StatefulSet db: its claim exists, its pod waits for it to bind.
    let claim = wait_for(Duration::from_secs(30), || get(&k, &["pvc", "data-db-0"]));
    assert!(claim.is_some(), "{}", k.ok(&["get", "pvc"]));
    let msg = wait_for(Duration::from_secs(30), || {
        let p = get(&k, &["pod", "db-0"])?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        c["message"].as_str().map(str::to_string)
    })
    .unwrap();
    assert!(
        msg.contains("pod has unbound immediate PersistentVolumeClaims"),
        "{msg}"
    );
    let db0 = get(&k, &["pod", "db-0"]).unwrap();
    assert_eq!(
        db0["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-db-0",
        "{db0}"
    );

    // ReplicationController: 2 pods Running, then 1.
    let two = wait_for(T, || {
        let p = items(
            &k,
            &[
                "pods",
                "-l",
                "app=rc",
                "--field-selector",
                "status.phase=Running",
            ],
        );
        (p.len() == 2).then_some(())
    });
    assert!(two.is_some(), "{}", k.ok(&["describe", "rc", "rc"]));
    // Service front: the two ready RC pods as addresses on their named
    // port, the unready pod as not ready, in Endpoints and in a slice.
    let ip_of = |name: &str| {
        get(&k, &["pod", name]).unwrap()["status"]["podIP"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let rc_ips = |k: &Kubectl| -> BTreeSet<String> {
        items(k, &["pods", "-l", "app=rc"])
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
            .collect()
    };
    let addrs = |e: &Value, field: &str| -> BTreeSet<String> {
        e["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_string))
            .collect()
    };
    let want = rc_ips(&k);
    let ep = wait_for(Duration::from_secs(30), || {
        let e = get(&k, &["endpoints", "front"])?;
        let unready = ip_of("unready");
        (!unready.is_empty()
            && addrs(&e, "addresses") == want
            && addrs(&e, "notReadyAddresses") == BTreeSet::from([unready]))
        .then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "endpoints of front: {}",
            k.ok(&["get", "endpoints", "front", "-o", "yaml"])
        )
    });
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080, "{ep}");
    let slices = items(
        &k,
        &["endpointslices", "-l", "kubernetes.io/service-name=front"],
    );
    assert_eq!(slices.len(), 1, "{slices:?}");
    let sl = &slices[0];
    assert_eq!(sl["addressType"], "IPv4");
    assert_eq!(sl["ports"][0]["port"], 8080);
    let ready_in_slice: BTreeSet<String> = sl["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ready_in_slice, want, "{sl}");
    assert_eq!(sl["endpoints"].as_array().unwrap().len(), 3, "{sl}");
    assert_eq!(sl["metadata"]["ownerReferences"][0]["name"], "front");

    // A bare pod the RC's selector matches is adopted, and the surplus
    // goes: two pods, both the RC's.
    k.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "rc", "tier": "front"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "600"]}]}}"#,
    );
    let adopted = wait_for(T, || {
        let live: Vec<Value> = items(&k, &["pods", "-l", "app=rc"])
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let owned = live
            .iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["name"] == "rc");
        (live.len() == 2 && owned).then_some(())
    });
    assert!(
        adopted.is_some(),
        "{}",
        k.ok(&["get", "pods", "-l", "app=rc", "-o", "yaml"])
    );
    let events = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=rc",
    ]);
    assert!(events.contains("SuccessfulDelete"), "{events}");

    k.ok(&["scale", "rc/rc", "--replicas=1"]);
    let one = wait_for(T, || {
        let rc = get(&k, &["rc", "rc"])?;
        (rc["status"]["replicas"] == 1 && rc["status"]["readyReplicas"] == 1).then_some(())
    });
    assert!(one.is_some(), "{}", k.ok(&["describe", "rc", "rc"]));
    let shrunk = wait_for(Duration::from_secs(30), || {
        let e = get(&k, &["endpoints", "front"])?;
        (addrs(&e, "addresses").len() == 1 && addrs(&e, "addresses") == rc_ips(&k)).then_some(())
    });
    assert!(
        shrunk.is_some(),
        "{}",
        k.ok(&["get", "endpoints", "front", "-o", "yaml"])
    );

    // CronJob tick: fired within a minute or so, its Job completed.
    let fired = wait_for(
        Duration::from_secs(150)
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(75)),
        || {
            let cj = get(&k, &["cronjob", "tick"])?;
            cj["status"]["lastSuccessfulTime"].is_string().then_some(cj)
        },
    )
    .unwrap_or_else(|| {
        panic!(
            "cronjob never succeeded: {}",
            k.ok(&["describe", "cronjob", "tick"])
        )
    });
    assert!(fired["status"]["lastScheduleTime"].is_string(), "{fired}");
    let jobs = items(&k, &["jobs"]);
    let tick_jobs: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
        .collect();
    assert!(
        !tick_jobs.is_empty() && tick_jobs.len() <= 2,
        "{tick_jobs:?}"
    );
    let name = tick_jobs[0]["metadata"]["name"].as_str().unwrap();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let at = tick_jobs[0]["metadata"]["annotations"]
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
    assert_eq!(at.timestamp() / 60, minutes, "{name} at {at}");
    assert_eq!(at.timestamp() % 60, 0);

    let gone = wait_for(Duration::from_secs(90), || {
        items(
            &k,
            &[
                "pods",
                "-l",
                "app=daemon",
                "--field-selector",
                "spec.nodeName=late-node",
            ],
        )
        .is_empty()
        .then_some(())
    });
    assert!(gone.is_some(), "the daemon of a deleted node stayed");

    k.ok(&[
        "delete",
        "jobs,cronjobs,ds,sts,rc,pvc,pods",
        "--all",
        "--wait=false",
    ]);
    k.ok(&["delete", "svc", "front"]);
    let gone = wait_for(Duration::from_secs(30), || {
        (get(&k, &["endpoints", "front"]).is_none()
            && items(
                &k,
                &["endpointslices", "-l", "kubernetes.io/service-name=front"],
            )
            .is_empty())
        .then_some(())
    });
    assert!(gone.is_some(), "the Service's endpoints outlived it");
}
