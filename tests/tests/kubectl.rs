//! Unmodified kubectl (1.27, 1.32, 1.33) against a real server with agents,
//! over real TLS with the admin kubeconfig and a node's own certificate.

use rk3s_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

const JOIN: Duration = Duration::from_secs(20);

const CM_V1: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  namespace: default\ndata:\n  a: \"1\"\n";
const CM_V2: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  namespace: default\ndata:\n  a: \"2\"\n  b: \"3\"\n";
const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
"#;
const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: default\nspec:\n  size: 3\n";

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The scripted session every kubectl version must pass.
/// Default validation throughout: kubectl 1.27 checks OpenAPI v2
/// (protobuf), later ones OpenAPI v3, before it sends a create or apply.
fn session(k: &Kubectl, dir: &std::path::Path, agent: &Agent) {
    // get nodes in every output format.
    let plain = k.ok(&["get", "nodes"]);
    assert!(
        plain.starts_with("NAME") && plain.contains("STATUS") && plain.contains("ROLES"),
        "{plain}"
    );
    assert!(
        plain.lines().any(|l| l.starts_with("server-0")
            && l.contains("Ready")
            && l.contains("control-plane")),
        "{plain}"
    );
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with(&agent.name) && l.contains("Ready") && l.contains("<none>")),
        "{plain}"
    );
    let wide = k.ok(&["get", "nodes", "-o", "wide"]);
    for col in [
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ] {
        assert!(wide.contains(col), "{col} missing: {wide}");
    }
    assert!(wide.contains("127.0.0.1"), "{wide}");
    let yaml = k.ok(&["get", "nodes", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Node") && yaml.contains("node-role.kubernetes.io/control-plane"),
        "{yaml}"
    );
    let json: Value = serde_json::from_str(&k.ok(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 2);
    assert!(
        json["items"][0]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let names = k.ok(&["get", "nodes", "-o", "name"]);
    assert!(names.contains("node/server-0"), "{names}");

    // Node-password secrets: listed, hashes only.
    let secrets = k.ok(&["get", "secrets", "-n", "kube-system"]);
    let secret_name = format!("{}.node-password.rk3s", agent.name);
    assert!(
        secrets.contains(&secret_name) && secrets.contains("rk3s.io/node-password"),
        "{secrets}"
    );
    let dump = k.ok(&["get", "secrets", "-A", "-o", "yaml"]);
    assert!(
        !dump.contains(&agent.password()),
        "plaintext node password in secrets"
    );
    let one: Value = serde_json::from_str(&k.ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &secret_name,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(one["immutable"], true);
    assert!(one["data"]["hash"].is_string());

    // create, apply (create then patch), delete.
    let cm1 = write(dir, "cm1.yaml", CM_V1);
    let cm2 = write(dir, "cm2.yaml", CM_V2);
    assert!(k
        .ok(&["create", "-f", &cm1])
        .contains("configmap/demo created"));
    let err = k.fails(&["create", "-f", &cm1]);
    assert!(
        err.contains("Error from server (AlreadyExists)")
            && err.contains("configmaps \"demo\" already exists"),
        "{err}"
    );
    let err = k.fails(&["create", "--raw", "/api/v1/configmaps", "-f", &cm1]);
    assert!(
        err.contains("MethodNotAllowed"),
        "a namespaced kind needs a namespace: {err}"
    );
    k.ok(&["apply", "-f", &cm1]);
    assert!(k.ok(&["apply", "-f", &cm2]).contains("configured"));
    assert!(k.ok(&["apply", "-f", &cm2]).contains("unchanged"));
    let cm: Value = serde_json::from_str(&k.ok(&["get", "cm", "demo", "-o", "json"])).unwrap();
    assert_eq!(cm["data"], serde_json::json!({"a": "2", "b": "3"}));
    k.ok(&["label", "cm", "demo", "tier=web"]);
    k.ok(&["annotate", "cm", "demo", "note=hello"]);
    assert!(k.ok(&["get", "cm", "-l", "tier=web"]).contains("demo"));
    assert!(!k.ok(&["get", "cm", "-l", "tier!=web"]).contains("demo"));
    let cm: Value = serde_json::from_str(&k.ok(&["get", "cm", "demo", "-o", "json"])).unwrap();
    assert_eq!(cm["metadata"]["annotations"]["note"], "hello");
    assert!(k
        .ok(&["delete", "-f", &cm2])
        .contains("configmap \"demo\" deleted"));
    let err = k.fails(&["get", "cm", "demo"]);
    assert!(
        err.contains("Error from server (NotFound): configmaps \"demo\" not found"),
        "{err}"
    );

    // A CRD and a custom object.
    let crd = write(dir, "crd.yaml", CRD);
    let widget = write(dir, "w.yaml", WIDGET);
    k.ok(&["create", "-f", &crd]);
    assert!(k
        .ok(&["create", "-f", &widget])
        .contains("widget.example.com/w1 created"));
    let table = k.ok(&["get", "widgets"]);
    assert!(
        table.contains("SIZE")
            && table
                .lines()
                .any(|l| l.starts_with("w1") && l.contains('3')),
        "{table}"
    );
    write(dir, "w.yaml", &WIDGET.replace("size: 3", "size: 4"));
    k.ok(&["apply", "-f", &widget]);
    assert!(k
        .ok(&["get", "wd", "w1"])
        .lines()
        .any(|l| l.starts_with("w1") && l.contains('4')));
    k.ok(&["delete", "-f", &widget]);
    k.ok(&["delete", "-f", &crd]);
    // With kubectl's discovery cache still fresh the error comes from the
    // server (404), otherwise from discovery; either way widgets are gone.
    let err = k.fails(&["get", "widgets"]);
    assert!(
        err.contains("widgets")
            && (err.contains("NotFound") || err.contains("doesn't have a resource type")),
        "{err}"
    );

    // Generators send protobuf bodies (kubectl 1.30+); a missing namespace is a 404 for it.
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "create",
        "configmap",
        "gen",
        "-n",
        "team-a",
        "--from-literal=k=v",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "gen",
        "-n",
        "team-a",
        "--from-literal=password=s3cr3t",
    ]);
    let s: Value =
        serde_json::from_str(&k.ok(&["get", "secret", "gen", "-n", "team-a", "-o", "json"]))
            .unwrap();
    assert_eq!(s["data"]["password"], "czNjcjN0");
    let err = k.fails(&[
        "create",
        "configmap",
        "lost",
        "-n",
        "no-such-ns",
        "--from-literal=k=v",
    ]);
    assert!(err.contains("namespaces \"no-such-ns\" not found"), "{err}");
    // JSON patch and deleting a namespace with its contents.
    k.ok(&[
        "patch",
        "cm",
        "gen",
        "-n",
        "team-a",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/x","value":"y"}]"#,
    ]);
    assert!(k
        .ok(&[
            "get",
            "cm",
            "gen",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.x}"
        ])
        .contains('y'));
    k.ok(&["delete", "namespace", "team-a"]);
    assert!(k
        .fails(&["get", "cm", "gen", "-n", "team-a"])
        .contains("NotFound"));
    let err = k.fails(&["delete", "namespace", "kube-system"]);
    assert!(err.contains("may not be deleted"), "{err}");

    // Health through kubectl.
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).trim(), "ok");

    // A node's own certificate: its node yes, secrets and other nodes no.
    let node_kc = agent.dir.join("data/agent/kubelet.kubeconfig");
    assert!(node_kc.exists());
    let nk = Kubectl::new(k.bin.clone(), &node_kc, &dir.join("node-cache"));
    nk.ok(&["get", "node", &agent.name]);
    let err = nk.fails(&["get", "secrets", "-n", "kube-system"]);
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains(&format!("system:node:{}", agent.name)),
        "{err}"
    );
    let err = nk.fails(&["get", "node", "server-0"]);
    assert!(err.contains("Forbidden"), "{err}");
}

#[test]
fn kubectl_sessions_across_versions() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let agent = Agent::start(
        &t.path().join("a"),
        "worker-1",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("worker-1", "Ready", JOIN));
    assert!(wait_for(JOIN, || agent
        .dir
        .join("data/agent/kubelet.kubeconfig")
        .exists()
        .then_some(()))
    .is_some());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.kubeconfig())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    for v in ["1.27", "1.32", "1.33"] {
        let dir = t.path().join(format!("kubectl-{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Kubectl::new(kubectl(Some(v)), &server.kubeconfig(), &dir.join("cache"));
        session(&k, &dir, &agent);
    }
}

/// Lines a background kubectl prints, collected until `until` matches.
fn watch_until(
    k: &Kubectl,
    args: &[&str],
    mut action: impl FnMut(),
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut child = k
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // First line: the header or initial state, so the watch is established.
    if let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        lines.push(l);
    }
    action();
    let start = Instant::now();
    while !until(&lines) && start.elapsed() < Duration::from_secs(30) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn watches_see_changes_and_expire_after_compaction() {
    let t = tempdir();
    let server = Server::start(
        &t.path().join("s"),
        &["--compaction-interval", "500ms", "--compaction-keep", "10"],
    );
    let mut agent = Agent::start(
        &t.path().join("a"),
        "watched",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("watched", "Ready", JOIN));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &t.path().join("cache"));

    // Lease heartbeats show up on a watch.
    let lines = watch_until(
        &k,
        &["get", "leases", "-n", "kube-node-lease", "-w", "-o", "name"],
        || {},
        |l| l.iter().filter(|x| x.ends_with("/watched")).count() >= 3,
    );
    // The initial state plus at least two renewals.
    assert!(
        lines.iter().filter(|x| x.ends_with("/watched")).count() >= 3,
        "{lines:?}"
    );

    // A heartbeat refreshing the node's Ready condition, the node going
    // Unknown, and its deletion all show up on `get nodes -w`.
    let lines = watch_until(
        &k,
        &["get", "nodes", "-w", "--output-watch-events"],
        || {
            std::thread::sleep(Duration::from_secs(4)); // > 6 heartbeats of 500 ms
            agent.kill();
            assert!(server.wait_status("watched", "Unknown", Duration::from_secs(15)));
            k.ok(&["delete", "node", "watched"]);
        },
        |l| {
            l.iter()
                .any(|x| x.starts_with("DELETED") && x.contains("watched"))
        },
    );
    let ready_refresh = lines
        .iter()
        .position(|x| x.starts_with("MODIFIED") && x.contains("watched") && x.contains(" Ready "));
    let unknown = lines
        .iter()
        .position(|x| x.starts_with("MODIFIED") && x.contains("watched") && x.contains("Unknown"));
    assert!(
        ready_refresh.is_some() && unknown.is_some() && ready_refresh < unknown,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|x| x.starts_with("DELETED") && x.contains("watched")),
        "{lines:?}"
    );
    // Deleting the node went through `forget`: its password secret and lease are gone too.
    assert!(!k
        .ok(&["get", "secrets", "-n", "kube-system"])
        .contains("watched.node-password.rk3s"));
    assert!(!k
        .ok(&["get", "leases", "-n", "kube-node-lease"])
        .contains("watched"));

    // Enough writes for compaction to pass revision 1, then resume from it.
    let many: String = (0..30)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\n  namespace: default\ndata:\n  k: v\n"))
        .collect();
    let file = t.path().join("many.yaml");
    std::fs::write(&file, many).unwrap();
    k.ok(&["create", "-f", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));
    let raw = k.run(&[
        "get",
        "--raw",
        "/api/v1/configmaps?watch=true&resourceVersion=1&timeoutSeconds=5",
    ]);
    let text = stdout(&raw);
    let first: Value = serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(first["type"], "ERROR", "{text}");
    assert_eq!(first["object"]["code"], 410);
    assert_eq!(first["object"]["reason"], "Expired");
    // A fresh list works and a watch from its revision is accepted.
    let list: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/configmaps"])).unwrap();
    let in_default = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["namespace"] == "default")
        .filter(|c| c["metadata"]["name"] != "kube-root-ca.crt")
        .count();
    assert_eq!(in_default, 30, "kube-public/cluster-info is there too");
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    let again = k.run(&[
        "get",
        "--raw",
        &format!("/api/v1/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
    ]);
    assert!(
        again.status.success() && !stdout(&again).contains("ERROR"),
        "{}",
        stdout(&again)
    );
    // deletecollection with a field selector removes exactly the selected object.
    let out = k.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dc0",
    ]);
    let deleted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deleted["items"].as_array().unwrap().len(), 1, "{out}");
    let list: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .filter(|n| *n != "kube-root-ca.crt")
        .collect();
    assert_eq!(names.len(), 29, "{names:?}");
}

#[test]
fn python_kubernetes_client_lists_and_watches() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    assert!(server.wait_status("server-0", "Ready", JOIN));
    let script = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
nodes = v1.list_node()
print("nodes", [n.metadata.name for n in nodes.items])
v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-python"), data={"k": "v"}))
seen = []
for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default", resource_version=nodes.metadata.resource_version, timeout_seconds=3):
    seen.append((ev["type"], ev["object"].metadata.name))
print("events", seen)
# The Python client's own e2e tests compare a conflict's body as text.
svc = client.V1Service(metadata=client.V1ObjectMeta(name="mock-2"),
    spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]))
v1.create_namespaced_service("default", svc)
try:
    v1.create_namespaced_service("default", svc)
    print("no conflict")
except client.exceptions.ApiException as e:
    print("conflict", e.status, e.reason)
    sys.stdout.write("body<" + e.body + ">")
"#;
    let o = python(script, &server.kubeconfig());
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "python client failed: {out}{}",
        stderr(&o)
    );
    assert!(out.contains("nodes ['server-0']"), "{out}");
    assert!(out.contains("('ADDED', 'from-python')"), "{out}");
    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \"mock-2\" already exists","reason":"AlreadyExists","details":{"name":"mock-2","kind":"services"},"code":409}"#;
    let body = format!("{body}\n");
    assert!(out.contains("conflict 409 Conflict"), "{out}");
    assert!(
        out.contains(&format!("body<{body}>")),
        "{out}\nwanted {body}"
    );
}

/// Error bodies as kube-apiserver writes them, byte for byte, over HTTPS.
#[test]
fn api_errors_are_upstreams_status_bytes() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    let url = server.url();
    let admin = server.admin_http();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |r: reqwest::RequestBuilder| {
        rt.block_on(async {
            let r = r.send().await.unwrap();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), ct, r.text().await.unwrap())
        })
    };
    let status = |tail: &str| {
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure",{tail}}}"#
        ) + "\n"
    };
    let cases = [
        (
            admin.get(format!("{url}/api/v1/namespaces/default/configmaps/nope")),
            404,
            status(
                r#""message":"configmaps \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"configmaps"},"code":404"#,
            ),
        ),
        (
            admin.get(format!(
                "{url}/apis/apps/v1/namespaces/default/deployments/web"
            )),
            404,
            status(
                r#""message":"deployments.apps \"web\" not found","reason":"NotFound","details":{"name":"web","group":"apps","kind":"deployments"},"code":404"#,
            ),
        ),
        (
            admin.get(format!("{url}/api/v1/namespaces/default/nosuchthings")),
            404,
            status(
                r#""message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404"#,
            ),
        ),
        (
            anonymous.get(format!("{url}/api/v1/namespaces")),
            401,
            status(r#""message":"Unauthorized","reason":"Unauthorized","code":401"#),
        ),
        (
            admin.get(format!(
                "{url}/api/v1/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1"
            )),
            200,
            String::new(),
        ),
    ];
    for (req, code, want) in cases {
        let (got_code, ct, body) = send(req);
        assert_eq!(got_code, code, "{body}");
        if code != 200 {
            assert_eq!(ct.as_deref(), Some("application/json"));
            assert_eq!(body, want);
        }
    }
    // 409 AlreadyExists, 409 Conflict and 422 Invalid from writes.
    let cm =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let cms = format!("{url}/api/v1/namespaces/default/configmaps");
    let (code, _, created) = send(admin.post(&cms).json(&cm));
    assert_eq!(code, 201, "{created}");
    let (_, _, again) = send(admin.post(&cms).json(&cm));
    assert_eq!(
        again,
        status(
            r#""message":"configmaps \"c\" already exists","reason":"AlreadyExists","details":{"name":"c","kind":"configmaps"},"code":409"#
        )
    );
    let mut stale = cm.clone();
    stale["metadata"]["resourceVersion"] = "1".into();
    let (_, _, conflict) = send(admin.put(format!("{cms}/c")).json(&stale));
    assert_eq!(
        conflict,
        status(
            r#""message":"Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"c","kind":"configmaps"},"code":409"#
        )
    );
    let bad = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}});
    let (code, _, invalid) = send(admin.post(&cms).json(&bad));
    assert_eq!(code, 422, "{invalid}");
    assert!(
        invalid.starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": "#)
            && invalid.ends_with("\"reason\":\"Invalid\",\"details\":{\"name\":\"Bad_Name\",\"kind\":\"ConfigMap\",\"causes\":[{\"reason\":\"FieldValueInvalid\",\"message\":\"Invalid value: \\\"Bad_Name\\\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')\",\"field\":\"metadata.name\"}]},\"code\":422}\n"),
        "{invalid}"
    );
    // Lists the API writes itself: upstream's field order and newline,
    // filtered or not.
    for q in ["", "?labelSelector=a%3Db"] {
        let (code, _, list) = send(admin.get(format!("{cms}{q}")));
        assert_eq!(code, 200);
        assert!(
            list.starts_with(
                r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":""#
            ) && list.ends_with("]}\n"),
            "{list}"
        );
    }
    // 405: a collection cannot be replaced.
    let (code, _, not_allowed) = send(admin.put(&cms).json(&cm));
    assert_eq!(code, 405, "{not_allowed}");
    assert_eq!(
        not_allowed,
        status(
            r#""message":"the server does not allow this method on the requested resource","reason":"MethodNotAllowed","details":{},"code":405"#
        )
    );
}
