//! The aggregation layer: an extension API server (a small Python HTTPS
//! server on the server's host, trusting only the front-proxy client
//! certificate from `kube-system/extension-apiserver-authentication`)
//! behind a Service and an APIService. kubectl 1.27 (legacy discovery)
//! and the newest (aggregated discovery) list its kind; the user arrives
//! in X-Remote headers (impersonation included); the APIService's
//! availability follows its endpoints; rk3s's own groups are listed as
//! Local APIServices. Needs root (network namespaces).

use rk3s_tests::netns::Net;
use rk3s_tests::*;
use serde_json::json;
use std::time::Duration;

const EXTENSION: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
cert, key, ca, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
G = "wardle.example.com/v1alpha1"
class H(BaseHTTPRequestHandler):
    def send(self, code, body):
        b = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        peer = self.connection.getpeercert()
        cn = dict(x[0] for x in peer["subject"])["commonName"]
        if cn != "system:auth-proxy":
            return self.send(403, {"message": "not the front proxy: " + cn})
        user = self.headers.get("X-Remote-User", "")
        groups = ",".join(self.headers.get_all("X-Remote-Group") or [])
        path = self.path.split("?")[0]
        if path == "/apis/" + G:
            return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": G,
                "resources": [{"name": "flunders", "singularName": "flunder", "namespaced": True,
                    "kind": "Flunder", "verbs": ["get", "list"]}]})
        if path == "/apis/" + G + "/namespaces/default/flunders":
            item = {"apiVersion": G, "kind": "Flunder",
                "metadata": {"name": "seen-by-" + user.replace(":", "-"), "namespace": "default",
                    "annotations": {"groups": groups}, "creationTimestamp": "2026-01-01T00:00:00Z"}}
            return self.send(200, {"apiVersion": G, "kind": "FlunderList", "metadata": {}, "items": [item]})
        self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(ca)
srv = HTTPServer(("10.77.0.11", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn an_extension_api_server_behind_an_apiservice() {
    let mut net = Net::new();
    let t = tempdir();
    let ns = net.host("s1", "10.77.0.11");
    let dir = t.path().join("s1");
    let server = Server::start_in(
        Some(&ns),
        &dir,
        &[
            "--bind-address",
            "10.77.0.11",
            "--https-listen-port",
            "6443",
            "--node-name",
            "s1",
        ],
        &[],
    );
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache")).in_netns(&ns);

    // rk3s's own groups are Local APIServices.
    let local = wait_for(Duration::from_secs(30), || {
        let o = k.ok(&["get", "apiservices"]);
        (o.contains("v1.apps") && o.contains("v1beta1.metrics.k8s.io")).then_some(o)
    })
    .expect("no local APIServices");
    let apps = local.lines().find(|l| l.starts_with("v1.apps ")).unwrap();
    let cells: Vec<&str> = apps.split_whitespace().collect();
    assert_eq!(&cells[1..3], ["Local", "True"], "{local}");

    // The extension trusts what the ConfigMap says.
    let tls = t.path().join("tls");
    extension_tls(&k, &tls, "wardle.default.svc");
    let names = k.ok(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "extension-apiserver-authentication",
        "-o",
        "jsonpath={.data.requestheader-allowed-names}",
    ]);
    assert_eq!(names, r#"["system:auth-proxy"]"#);
    let script = t.path().join("extension.py");
    std::fs::write(&script, EXTENSION).unwrap();
    let mut ext = net
        .exec(
            &ns,
            &[
                "python3",
                script.to_str().unwrap(),
                tls.join("tls.crt").to_str().unwrap(),
                tls.join("tls.key").to_str().unwrap(),
                tls.join("ca.crt").to_str().unwrap(),
                "8443",
            ],
        )
        .spawn()
        .unwrap();

    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wardle"},
            "spec": {"ports": [{"port": 443, "targetPort": 8443}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "wardle"},
            "subsets": [{"addresses": [{"ip": "10.77.0.11"}], "ports": [{"port": 8443}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.wardle.example.com"},
            "spec": {"group": "wardle.example.com", "version": "v1alpha1",
                "service": {"namespace": "default", "name": "wardle", "port": 443},
                "insecureSkipTLSVerify": true, "groupPriorityMinimum": 1000, "versionPriority": 15}}]});
    k.ok_stdin(&["apply", "-f", "-"], &objects.to_string());
    let available = wait_for(Duration::from_secs(30), || {
        let o = k.ok(&["get", "apiservice", "v1alpha1.wardle.example.com"]);
        o.contains("default/wardle   True").then_some(o)
    });
    assert!(
        available.is_some(),
        "{}\n{}",
        k.ok(&[
            "get",
            "apiservice",
            "v1alpha1.wardle.example.com",
            "-o",
            "yaml"
        ]),
        server.log()
    );

    for v in [Some("1.27"), None] {
        let k = Kubectl::new(
            kubectl(v),
            &server.kubeconfig(),
            &dir.join(format!("kc{v:?}")),
        )
        .in_netns(&ns);
        let o = k.run(&["get", "flunders"]);
        assert!(
            stdout(&o).contains("seen-by-system-admin"),
            "{v:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let o = k.run(&[
            "get",
            "flunders",
            "--as=alice",
            "--as-group=devs",
            "-o",
            "json",
        ]);
        let text = stdout(&o);
        assert!(
            text.contains("seen-by-alice"),
            "{v:?}: {text}{}",
            stderr(&o)
        );
        assert!(text.contains("devs"), "{text}");
    }
    let groups = k.ok(&["api-versions"]);
    assert!(groups.contains("wardle.example.com/v1alpha1"), "{groups}");

    // Its endpoints gone, the APIService says why and requests get 503.
    k.ok(&["delete", "endpoints", "wardle"]);
    let gone = wait_for(Duration::from_secs(30), || {
        let o = k.ok(&["get", "apiservice", "v1alpha1.wardle.example.com"]);
        o.contains("False (MissingEndpoints)").then_some(())
    });
    assert!(gone.is_some(), "{}", k.ok(&["get", "apiservices"]));
    let e = k.fails(&[
        "get",
        "--raw",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders",
    ]);
    assert!(
        e.contains("ServiceUnavailable") || e.contains("unavailable"),
        "{e}"
    );
    let _ = ext.kill();
    let _ = ext.wait();
}
