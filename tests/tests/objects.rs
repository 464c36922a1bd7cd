//! The Kubernetes object model through unmodified kubectl 1.27 and 1.33:
//! workload kinds with upstream's defaults, tables and validation; scale;
//! status only through /status; field selectors; graceful deletion,
//! finalizers, garbage collection and namespace termination.

use rk3s_tests::*;
use serde_json::Value;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);

fn json(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&a)).expect("kubectl -o json")
}

fn apply(k: &Kubectl, dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    k.ok(&["apply", "-f", p.to_str().unwrap()])
}

fn gone(k: &Kubectl, args: &[&str]) -> bool {
    wait_for(SETTLE, || {
        let o = k.run(args);
        (!o.status.success() && stderr(&o).contains("NotFound")).then_some(())
    })
    .is_some()
}

fn deployment(ns: &str, name: &str, labels: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {selector}}}\n  template:\n    metadata: {{labels: {labels}}}\n    spec: {{containers: [{{name: c, image: \"busybox:1\"}}]}}\n{extra}"
    )
}

/// `generators`: create through kubectl's typed generators (`kubectl create
/// deployment|cronjob|pdb|…`, sent as protobuf by kubectl 1.32+) rather
/// than from YAML files.
fn session(k: &Kubectl, dir: &std::path::Path, ns: &str, generators: bool) {
    k.ok(&["create", "namespace", ns]);
    let n = ["-n", ns];
    let with = |args: &[&str]| -> Vec<String> {
        n.iter().chain(args.iter()).map(|s| s.to_string()).collect()
    };
    let run = |args: &[&str]| k.ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());

    // Deployments with upstream's defaults, scale through /scale.
    if generators {
        run(&[
            "create",
            "deployment",
            "web",
            "--image=busybox:1",
            "--replicas=2",
        ]);
    } else {
        apply(
            k,
            dir,
            "web.yaml",
            &deployment(ns, "web", "{app: web}", "{app: web}", ""),
        );
    }
    let d = json(
        k,
        &with(&["get", "deployment", "web"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%",
        "{d}"
    );
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        "25%"
    );
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(d["metadata"]["generation"], 1);
    run(&["scale", "deployment", "web", "--replicas=4"]);
    let d = json(
        k,
        &with(&["get", "deployment", "web"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );

    // Status: ignored on the main resource, written through /status.
    run(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    let d = json(
        k,
        &with(&["get", "deployment", "web"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_ne!(d["status"]["replicas"], 9, "{d}");
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a status-only change keeps generation"
    );
    run(&[
        "patch",
        "deployment",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"readyReplicas":3,"updatedReplicas":4,"availableReplicas":3}}"#,
    ]);
    // The Deployment controller owns the status and puts the truth back:
    // four pods of the template, none ready (no node here runs pods).
    let table = wait_for(std::time::Duration::from_secs(30), || {
        let t = run(&["get", "deployments", "-o", "wide"]);
        t.lines()
            .any(|l| {
                l.starts_with("web ")
                    && l.contains("0/4")
                    && l.split_whitespace().nth(2) == Some("4")
            })
            .then_some(t)
    })
    .unwrap_or_else(|| run(&["get", "deployments", "-o", "wide"]));
    assert!(
        table.starts_with("NAME")
            && table.contains("READY")
            && table.contains("UP-TO-DATE")
            && table.contains("AVAILABLE")
            && table.contains("SELECTOR"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("web ")
            && l.contains("0/4")
            && l.contains("busybox:1")
            && l.contains("app=web")),
        "{table}"
    );

    // Pods: defaults, admission and the columns of `kubectl get pods`.
    run(&[
        "run",
        "p1",
        "--image=busybox:1",
        "--restart=Never",
        "--",
        "true",
    ]);
    let p = json(
        k,
        &with(&["get", "pod", "p1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    assert_eq!(p["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
    assert_eq!(p["status"]["phase"], "Pending");
    let pods = run(&["get", "pods"]);
    assert!(
        pods.starts_with("NAME") && pods.contains("READY") && pods.contains("RESTARTS"),
        "{pods}"
    );
    assert!(
        pods.lines()
            .any(|l| l.starts_with("p1 ") && l.contains("0/1") && l.contains("Pending")),
        "{pods}"
    );
    // Field selectors of pods.
    assert!(run(&["get", "pods", "--field-selector", "status.phase=Pending"]).contains("p1"));
    let none = k.run(
        &with(&["get", "pods", "--field-selector", "spec.nodeName=nowhere"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        stdout(&none).is_empty() && stderr(&none).contains("No resources found"),
        "{}",
        stderr(&none)
    );
    let bad = k.fails(
        &with(&["get", "pods", "--field-selector", "spec.bogus=1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        bad.contains("field label not supported: spec.bogus"),
        "{bad}"
    );

    // Jobs: selector from the uid, batch defaults.
    {
        run(&["create", "job", "j1", "--image=busybox:1", "--", "true"]);
        let j = json(
            k,
            &with(&["get", "job", "j1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            j["metadata"]["uid"]
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);
        let jobs = run(&["get", "jobs"]);
        assert!(
            jobs.contains("STATUS") && jobs.contains("COMPLETIONS") && jobs.contains("0/1"),
            "{jobs}"
        );
    }
    run(&["create", "serviceaccount", "robot"]);
    if generators {
        for (args, made) in [
            (
                &[
                    "create",
                    "cronjob",
                    "c1",
                    "--image=busybox:1",
                    "--schedule=*/5 * * * *",
                ][..],
                "cronjob.batch/c1 created",
            ),
            (
                &["create", "service", "clusterip", "s1", "--tcp=80:8080"],
                "service/s1 created",
            ),
            (
                &[
                    "create",
                    "pdb",
                    "p1",
                    "--selector=app=web",
                    "--min-available=1",
                ],
                "poddisruptionbudget.policy/p1 created",
            ),
            (
                &["create", "ingress", "i1", "--rule=foo.com/bar=s1:80"],
                "ingress.networking.k8s.io/i1 created",
            ),
            (
                &["create", "quota", "q1", "--hard=pods=10"],
                "resourcequota/q1 created",
            ),
            (
                &["create", "secret", "generic", "sec1", "--from-literal=a=b"],
                "secret/sec1 created",
            ),
        ] {
            assert!(run(args).contains(made), "{args:?}");
        }
        let s = json(
            k,
            &with(&["get", "service", "s1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080, "{s}");
        assert_eq!(s["spec"]["sessionAffinity"], "None", "{s}");
        let sec = json(
            k,
            &with(&["get", "secret", "sec1"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_eq!(sec["data"]["a"], "Yg==", "{sec}");
        let cj = run(&["get", "cronjobs"]);
        assert!(cj.contains("*/5 * * * *") && cj.contains("SUSPEND"), "{cj}");
    }
    let all = run(&["get", "all"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("pod/p1"),
        "{all}"
    );

    // Validation: 422 with field paths; unknown fields refused (Strict).
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        deployment(ns, "bad", "{app: other}", "{app: web}", ""),
    )
    .unwrap();
    let e = k.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(
        e.contains("The Deployment \"bad\" is invalid")
            && e.contains("spec.template.metadata.labels: Invalid value"),
        "{e}"
    );
    std::fs::write(
        &bad,
        deployment(ns, "bad", "{app: web}", "{app: web}", "  bogus: 1\n"),
    )
    .unwrap();
    let e = k.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(e.contains("unknown field \"spec.bogus\""), "{e}");
    // A member given twice: refused under Strict, a warning under Warn.
    let dup = dir.join("dup.json");
    std::fs::write(
        &dup,
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"dup","namespace":"{ns}"}},"data":{{"a":"1","a":"2"}}}}"#),
    )
    .unwrap();
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    let e = k.fails(&[
        "create",
        "--raw",
        &format!("{path}?fieldValidation=Strict"),
        "-f",
        dup.to_str().unwrap(),
    ]);
    assert!(
        e.contains(r#"strict decoding error: duplicate field \"data.a\""#)
            || e.contains(r#"duplicate field "data.a""#),
        "{e}"
    );
    let o = k.run(&[
        "create",
        "--raw",
        &format!("{path}?fieldValidation=Warn"),
        "-f",
        dup.to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && stderr(&o).contains("duplicate field"),
        "{}",
        stderr(&o)
    );
    k.ok(&["delete", "-n", ns, "configmap", "dup"]);
    let e = k.fails(&with(&["patch", "deployment", "web", "--type=merge", "-p", r#"{"spec":{"selector":{"matchLabels":{"app":"x"}},"template":{"metadata":{"labels":{"app":"x"}}}}}"#]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        e.contains("spec.selector: Invalid value") && e.contains("field is immutable"),
        "{e}"
    );

    // Graceful deletion: a pod on a node gets a deletionTimestamp and stays
    // (its kubelet finishes it); grace 0 removes it.
    apply(k, dir, "bound.yaml", &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: bound, namespace: {ns}}}\nspec: {{nodeName: server-0, containers: [{{name: c, image: \"busybox:1\"}}]}}\n"));
    run(&["delete", "pod", "bound", "--wait=false"]);
    let p = json(
        k,
        &with(&["get", "pod", "bound"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p}");
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(run(&["get", "pods"])
        .lines()
        .any(|l| l.starts_with("bound ") && l.contains("Terminating")));
    run(&["delete", "pod", "bound", "--grace-period=0", "--force"]);
    assert!(gone(
        k,
        &with(&["get", "pod", "bound"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    ));

    // Finalizers hold a deleted object until they are removed.
    apply(k, dir, "held.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: held, namespace: {ns}, finalizers: [example.com/hold]}}\n"));
    run(&["delete", "configmap", "held", "--wait=false"]);
    let c = json(
        k,
        &with(&["get", "configmap", "held"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(c["metadata"]["deletionTimestamp"].is_string(), "{c}");
    run(&[
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(gone(
        k,
        &with(&["get", "configmap", "held"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    ));

    // Garbage collection: background, orphan and foreground propagation.
    for (owner, cascade) in [
        ("o-bg", "background"),
        ("o-orphan", "orphan"),
        ("o-fg", "foreground"),
    ] {
        run(&["create", "configmap", owner]);
        let uid = json(
            k,
            &with(&["get", "configmap", owner])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let dep = format!("{owner}-dep");
        apply(k, dir, "dep.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {dep}\n  namespace: {ns}\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: \"{uid}\", blockOwnerDeletion: true}}]\n"));
        run(&[
            "delete",
            "configmap",
            owner,
            &format!("--cascade={cascade}"),
            "--wait=false",
        ]);
        let dep_args = with(&["get", "configmap", &dep]);
        let dep_args: Vec<&str> = dep_args.iter().map(String::as_str).collect();
        assert!(
            gone(
                k,
                &with(&["get", "configmap", owner])
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            ),
            "{owner} stays"
        );
        if cascade == "orphan" {
            let d = json(k, &dep_args);
            assert!(
                d["metadata"].get("ownerReferences").is_none(),
                "orphaned dependent keeps its owner: {d}"
            );
        } else {
            assert!(gone(k, &dep_args), "{dep} was not collected ({cascade})");
        }
    }
    run(&["delete", "deployment", "web"]);
    server_side_apply(k, dir, ns);
}

/// Server-side apply beside client-side apply: managedFields, conflicts
/// naming the other manager, --force-conflicts, fields an apply stops
/// declaring are removed.
fn server_side_apply(k: &Kubectl, dir: &std::path::Path, ns: &str) {
    let d = deployment(ns, "ssa", "{app: ssa}", "{app: ssa}", "");
    let p = dir.join("ssa.yaml");
    std::fs::write(&p, &d).unwrap();
    let file = p.to_str().unwrap();
    assert!(k.ok(&["apply", "-f", file]).contains("created"));
    k.ok(&["scale", "-n", ns, "deployment", "ssa", "--replicas=5"]);
    let e = k.fails(&["apply", "--server-side", "-f", file]);
    assert!(
        e.contains("Apply failed with 1 conflict") && e.contains(": .spec.replicas"),
        "{e}"
    );
    assert!(k
        .ok(&["apply", "--server-side", "--force-conflicts", "-f", file])
        .contains("serverside-applied"));
    let got = json(
        k,
        &[
            "get",
            "-n",
            ns,
            "deployment",
            "ssa",
            "--show-managed-fields",
        ],
    );
    assert_eq!(got["spec"]["replicas"], 2);
    let managers: Vec<(&str, &str)> = got["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(managers.contains(&("kubectl", "Apply")), "{managers:?}");
    // Client-side apply still works on the same object.
    std::fs::write(&p, d.replace("replicas: 2", "replicas: 3")).unwrap();
    assert!(k.ok(&["apply", "-f", file]).contains("configured"));

    // An apply that stops declaring a field removes it; others' stay.
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ssa, namespace: {ns}}}\ndata: {{{data}}}\n")
    };
    std::fs::write(&p, cm("x: '1', y: '2'")).unwrap();
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=team-a",
        "-f",
        file,
    ]);
    k.ok(&[
        "patch",
        "-n",
        ns,
        "configmap",
        "ssa",
        "--type=merge",
        "-p",
        r#"{"data":{"z":"3"}}"#,
    ]);
    std::fs::write(&p, cm("x: '1'")).unwrap();
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=team-a",
        "-f",
        file,
    ]);
    let got = json(k, &["get", "-n", ns, "configmap", "ssa"]);
    assert_eq!(
        got["data"],
        serde_json::json!({"x": "1", "z": "3"}),
        "{got}"
    );
    k.ok(&["delete", "-n", ns, "deployment/ssa", "configmap/ssa"]);
}

#[test]
fn object_model_with_kubectl_127_and_133() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    for (v, generators) in [("1.27", false), ("1.33", true)] {
        let dir = t.path().join(format!("k{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Kubectl::new(kubectl(Some(v)), &server.kubeconfig(), &dir.join("cache"));
        let ns = format!("objects-{}", v.replace('.', ""));
        session(&k, &dir, &ns, generators);

        // Discovery: short names, categories, subresources.
        let res = k.ok(&["api-resources"]);
        for (name, short, group) in [
            ("deployments", "deploy", "apps/v1"),
            ("cronjobs", "cj", "batch/v1"),
            ("poddisruptionbudgets", "pdb", "policy/v1"),
            ("horizontalpodautoscalers", "hpa", "autoscaling/v2"),
            ("priorityclasses", "pc", "scheduling.k8s.io/v1"),
        ] {
            assert!(
                res.lines()
                    .any(|l| l.starts_with(name) && l.contains(short) && l.contains(group)),
                "{name}: {res}"
            );
        }
        // kubectl explain reads upstream's schemas (OpenAPI v3).
        let e = k.ok(&["explain", "deployment.spec.template"]);
        assert!(
            e.contains("KIND:       Deployment")
                && e.contains("FIELD: template <PodTemplateSpec>")
                && e.contains("spec\t<PodSpec>"),
            "{e}"
        );
        let e = k.ok(&["explain", "cj.spec.schedule"]);
        assert!(
            e.contains("schedule <string>") && e.contains("Cron format"),
            "{e}"
        );
        let all = k.ok(&["get", "all", "-A"]);
        assert!(all.contains("service/kubernetes"), "{all}");
        // kubectl describe answers for every namespaced kind (its typed
        // describers fetch related objects: events, pods, replica sets...).
        for kind in [
            "pods",
            "services",
            "serviceaccounts",
            "replicationcontrollers",
            "persistentvolumeclaims",
            "podtemplates",
            "resourcequotas",
            "limitranges",
            "configmaps",
            "secrets",
            "events",
            "deployments",
            "replicasets",
            "statefulsets",
            "daemonsets",
            "controllerrevisions",
            "jobs",
            "cronjobs",
            "endpointslices",
            "ingresses",
            "networkpolicies",
            "poddisruptionbudgets",
            "horizontalpodautoscalers",
            "leases",
        ] {
            let o = k.run(&["describe", kind, "-n", &ns]);
            assert!(o.status.success(), "describe {kind}: {}", stderr(&o));
        }
        for cluster_kind in [
            "priorityclasses",
            "storageclasses",
            "ingressclasses",
            "persistentvolumes",
            "namespaces",
            "customresourcedefinitions",
        ] {
            let o = k.run(&["describe", cluster_kind]);
            assert!(
                o.status.success(),
                "describe {cluster_kind}: {}",
                stderr(&o)
            );
        }
        let d = k.ok(&["describe", "-n", &ns, "job", "j1"]);
        assert!(
            d.contains("Name:") && d.contains("j1") && d.contains("Pod Template:"),
            "{d}"
        );
        let node = k.ok(&["describe", "node", "server-0"]);
        assert!(
            node.contains("Allocatable:") && node.contains("Non-terminated Pods:"),
            "{node}"
        );

        // Namespace termination: Terminating, refuses new content, then gone.
        k.ok(&["delete", "namespace", &ns, "--wait=false"]);
        let phase = k.run(&["get", "namespace", &ns, "-o", "jsonpath={.status.phase}"]);
        if phase.status.success() {
            assert_eq!(stdout(&phase), "Terminating");
            let o = k.run(&["create", "configmap", "late", "-n", &ns]);
            // The namespace may finish terminating between the two
            // commands; then the create is refused as upstream refuses a
            // write into a missing namespace.
            if !o.status.success() {
                let e = stderr(&o);
                assert!(
                    e.contains("because it is being terminated")
                        || e.contains(&format!("namespaces \"{ns}\" not found")),
                    "{e}"
                );
            }
        }
        assert!(
            gone(&k, &["get", "namespace", &ns]),
            "namespace {ns} was not removed"
        );
    }
    // The bundled PriorityClasses exist.
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &t.path().join("cache"));
    let pcs = k.ok(&["get", "priorityclasses"]);
    assert!(
        pcs.contains("system-node-critical")
            && pcs.contains("2000001000")
            && pcs.contains("system-cluster-critical"),
        "{pcs}"
    );
    // Priority admission: a pod's priority comes from its class, or the
    // global default class; an unknown class or a priority that
    // disagrees with the class is refused with upstream's message.
    // A pod with `extra` merged into its spec.
    let pod = |name: &str, extra: Value| {
        let mut p = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            p["spec"][k] = v.clone();
        }
        p.to_string()
    };
    k.ok_stdin(
        &["create", "-f", "-"],
        &pod(
            "vital",
            serde_json::json!({"priorityClassName": "system-node-critical"}),
        ),
    );
    let vital = json(&k, &["get", "pod", "vital"]);
    assert_eq!(vital["spec"]["priority"], 2_000_001_000, "{vital}");
    assert_eq!(vital["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    let refused = |text: &str| {
        let o = k.run_stdin(&["create", "-f", "-"], text);
        assert!(!o.status.success(), "{}", stdout(&o));
        stderr(&o)
    };
    let e = refused(&pod(
        "ghost",
        serde_json::json!({"priorityClassName": "no-such"}),
    ));
    assert!(
        e.contains("(Forbidden)")
            && e.contains(
                "pods \"ghost\" is forbidden: no PriorityClass with name no-such was found"
            ),
        "{e}"
    );
    let e = refused(&pod("claims", serde_json::json!({"priority": 7})));
    assert!(
        e.contains("pods \"claims\" is forbidden: the integer value of priority (7) must not be provided in pod spec; priority admission controller computed 0 from the given PriorityClass name"),
        "{e}"
    );
    k.ok(&[
        "create",
        "priorityclass",
        "everyday",
        "--value=1000",
        "--global-default=true",
    ]);
    k.ok_stdin(&["create", "-f", "-"], &pod("plain", serde_json::json!({})));
    let plain = json(&k, &["get", "pod", "plain"]);
    assert_eq!(plain["spec"]["priority"], 1000, "{plain}");
    assert_eq!(plain["spec"]["priorityClassName"], "everyday");
    k.ok(&["delete", "priorityclass", "everyday"]);
    k.ok(&["delete", "pod", "vital", "plain", "--wait=false"]);
}
