//! Who may do what, with unmodified kubectl 1.27 and 1.33: RBAC on service
//! account tokens, escalation prevention, `auth can-i` / `--list` /
//! `whoami`, impersonation, the Node authorizer's matrix with a real agent's
//! certificate, bound and legacy tokens, issuer discovery, bad tokens and
//! key rotation.

use rk3s_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const JOIN: Duration = Duration::from_secs(20);
/// Token authentications are cached for 10 s, as upstream's are.
const TOKEN_CACHE: Duration = Duration::from_secs(20);

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// kubectl authenticated by `token`.
fn as_token(server: &Server, bin: &Path, dir: &Path, name: &str, token: &str) -> Kubectl {
    let kc = token_kubeconfig(&dir.join(name), &server.url(), &server.ca_pem(), token);
    Kubectl::new(bin.to_path_buf(), &kc, &dir.join(format!("{name}-cache")))
}

/// Whether `f` holds within `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || f().then_some(())).is_some()
}

/// Whether `k`'s credentials are refused (401).
fn unauthorized(k: &Kubectl) -> bool {
    stderr(&k.run(&["auth", "whoami"])).contains("Unauthorized")
}

fn succeeds(k: &Kubectl, args: &[&str]) -> bool {
    k.run(args).status.success()
}

/// `kubectl auth can-i` prints yes/no (and exits 1 for no).
fn can_i(k: &Kubectl, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    stdout(&k.run(&a)).trim().to_string()
}

/// The RBAC session every kubectl version must pass, in its own namespace.
fn session(server: &Server, bin: &Path, dir: &Path) {
    let admin = Kubectl::new(bin.to_path_buf(), &server.kubeconfig(), &dir.join("cache"));
    let ns = dir.file_name().unwrap().to_str().unwrap().replace('.', "-");
    let ns = ns.as_str();
    admin.ok(&["create", "namespace", ns]);
    admin.ok(&["-n", ns, "create", "serviceaccount", "bot"]);
    admin.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods,configmaps",
    ]);
    admin.ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "bot-reader",
        "--role=reader",
        &format!("--serviceaccount={ns}:bot"),
    ]);
    let wide = admin.ok(&["-n", ns, "get", "rolebinding", "bot-reader", "-o", "wide"]);
    assert!(
        wide.contains("Role/reader") && wide.contains(&format!("{ns}/bot")),
        "{wide}"
    );
    admin.ok(&["-n", ns, "create", "configmap", "c1", "--from-literal=a=1"]);

    let token = admin
        .ok(&["-n", ns, "create", "token", "bot"])
        .trim()
        .to_string();
    let bot = as_token(server, bin, dir, "bot", &token);
    // Exactly what the binding allows.
    assert!(bot.ok(&["-n", ns, "get", "configmaps"]).contains("c1"));
    bot.ok(&["-n", ns, "get", "pods"]);
    let err = bot.fails(&["-n", ns, "get", "secrets"]);
    assert!(
        err.contains(&format!("secrets is forbidden: User \"system:serviceaccount:{ns}:bot\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\"")),
        "{err}"
    );
    assert!(bot
        .fails(&["-n", "default", "get", "pods"])
        .contains("forbidden"));
    assert!(bot
        .fails(&["-n", ns, "create", "configmap", "c2"])
        .contains("forbidden"));
    assert!(bot.fails(&["get", "nodes"]).contains("forbidden"));

    // can-i and --list match what just happened.
    assert_eq!(can_i(&bot, &["list", "pods", "-n", ns]), "yes");
    assert_eq!(can_i(&bot, &["get", "configmaps/c1", "-n", ns]), "yes");
    assert_eq!(can_i(&bot, &["delete", "pods", "-n", ns]), "no");
    assert_eq!(can_i(&bot, &["list", "secrets", "-n", ns]), "no");
    assert_eq!(can_i(&bot, &["list", "pods", "-n", "default"]), "no");
    let list = bot.ok(&["auth", "can-i", "--list", "-n", ns]);
    let row = |res: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(res))
            .map(str::to_string)
    };
    assert!(
        row("pods").is_some_and(|r| r.contains("[get list]")),
        "{list}"
    );
    assert!(
        row("configmaps").is_some_and(|r| r.contains("[get list]")),
        "{list}"
    );
    assert!(row("secrets").is_none(), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    let who = bot.ok(&["auth", "whoami", "-o", "json"]);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{ns}:bot")
    );

    // The admin asks on the bot's behalf; the bot may not impersonate.
    let as_bot = format!("--as=system:serviceaccount:{ns}:bot");
    assert_eq!(can_i(&admin, &["list", "pods", "-n", ns, &as_bot]), "yes");
    assert_eq!(can_i(&admin, &["create", "pods", "-n", ns, &as_bot]), "no");
    let err = bot.fails(&["-n", ns, "get", "pods", "--as=alice"]);
    assert!(
        err.contains(&format!("users \"alice\" is forbidden: User \"system:serviceaccount:{ns}:bot\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope")),
        "{err}"
    );

    // Escalation: the bot may write RBAC objects but grant only what it holds.
    admin.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "rbac-writer",
        "--verb=create,get,list",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
    ]);
    admin.ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "bot-rbac",
        "--role=rbac-writer",
        &format!("--serviceaccount={ns}:bot"),
    ]);
    admin.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "everything",
        "--verb=*",
        "--resource=*",
    ]);
    assert!(eventually(Duration::from_secs(5), || can_i(
        &bot,
        &["create", "roles", "-n", ns]
    ) == "yes"));
    let err = bot.fails(&[
        "-n",
        ns,
        "create",
        "role",
        "deleter",
        "--verb=delete",
        "--resource=pods",
    ]);
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held")
            && err.contains(r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#),
        "{err}"
    );
    bot.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "getter",
        "--verb=get",
        "--resource=pods",
    ]);
    let err = bot.fails(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "grab",
        "--role=everything",
        "--user=mallory",
    ]);
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    bot.ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "share",
        "--role=reader",
        "--user=carol",
    ]);
    // With `bind` on the role the binding is allowed; with `escalate`, the role.
    admin.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "binder",
        "--verb=bind,escalate",
        "--resource=roles.rbac.authorization.k8s.io",
    ]);
    admin.ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "bot-binder",
        "--role=binder",
        &format!("--serviceaccount={ns}:bot"),
    ]);
    assert!(eventually(Duration::from_secs(5), || can_i(
        &bot,
        &["bind", "roles", "-n", ns]
    ) == "yes"));
    bot.ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        "grab",
        "--role=everything",
        "--user=mallory",
    ]);
    bot.ok(&[
        "-n",
        ns,
        "create",
        "role",
        "deleter",
        "--verb=delete",
        "--resource=pods",
    ]);

    // Nothing once the binding is gone.
    admin.ok(&["-n", ns, "delete", "rolebinding", "bot-reader"]);
    assert!(
        eventually(Duration::from_secs(5), || !succeeds(
            &bot,
            &["-n", ns, "get", "configmaps"]
        )),
        "the bot still reads configmaps after its binding was deleted"
    );
    assert_eq!(can_i(&bot, &["list", "configmaps", "-n", ns]), "no");
    admin.ok(&["delete", "namespace", ns, "--wait=false"]);
}

#[test]
fn rbac_and_service_account_tokens_across_kubectl_versions() {
    let t = tempdir();
    let server = Server::start(&t.path().join("s"), &[]);
    for v in ["1.27", "1.33"] {
        let dir = t.path().join(format!("rbac-{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        session(&server, &kubectl(Some(v)), &dir);
    }

    let dir = t.path();
    let admin = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("cache"));
    // The default policy, aggregated as upstream's.
    let roles = admin.ok(&["get", "clusterroles"]);
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
    ] {
        assert!(
            roles.lines().any(|l| l.starts_with(&format!("{r} "))),
            "{r}: {roles}"
        );
    }
    let view: Value =
        serde_json::from_str(&admin.ok(&["get", "clusterrole", "view", "-o", "json"])).unwrap();
    assert!(view["rules"].to_string().contains("\"pods\""), "{view}");
    let edit = admin.ok(&["get", "clusterrole", "edit", "-o", "json"]);
    assert!(
        edit.contains("\"pods\"") && edit.contains("\"delete\""),
        "{edit}"
    );
    // Every namespace has its default account and root CA, recreated if deleted.
    admin.ok(&["create", "namespace", "fresh"]);
    assert!(eventually(Duration::from_secs(5), || succeeds(
        &admin,
        &["-n", "fresh", "get", "sa", "default"]
    )));
    admin.ok(&["-n", "fresh", "delete", "sa", "default"]);
    assert!(eventually(Duration::from_secs(5), || succeeds(
        &admin,
        &["-n", "fresh", "get", "sa", "default"]
    )));
    let ca = admin.ok(&[
        "-n",
        "fresh",
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert_eq!(
        ca.trim(),
        String::from_utf8(server.ca_pem()).unwrap().trim()
    );
    // A pod naming a missing account is refused, as upstream.
    let err = admin.fails(&[
        "-n",
        "fresh",
        "run",
        "p0",
        "--image=busybox",
        "--overrides={\"spec\":{\"serviceAccountName\":\"nope\"}}",
    ]);
    assert!(
        err.contains(
            "error looking up service account fresh/nope: serviceaccount \"nope\" not found"
        ),
        "{err}"
    );
}

#[test]
fn node_authorizer_bound_legacy_and_bad_tokens_and_key_rotation() {
    let t = tempdir();
    let dir = t.path();
    let server = Server::start(&dir.join("s"), &[]);
    let _agent = Agent::start(
        &dir.join("a"),
        "worker-1",
        &server.url(),
        &server.token_file(),
        &[],
    );
    assert!(server.wait_status("worker-1", "Ready", JOIN));
    let kc = dir.join("a/data/agent/kubelet.kubeconfig");
    assert!(wait_for(JOIN, || kc.exists().then_some(())).is_some());
    let bin = kubectl(Some("1.33"));
    let admin = Kubectl::new(bin.clone(), &server.kubeconfig(), &dir.join("cache"));
    let node = Kubectl::new(bin.clone(), &kc, &dir.join("node-cache"));

    admin.ok(&["create", "serviceaccount", "app"]);
    admin.ok(&["create", "secret", "generic", "s1", "--from-literal=k=v"]);
    admin.ok(&["create", "secret", "generic", "s2", "--from-literal=k=v"]);
    admin.ok(&["create", "configmap", "cm1", "--from-literal=k=v"]);
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
      "spec": {"nodeName": "worker-1", "serviceAccountName": "app",
        "containers": [{"name": "c", "image": "busybox",
          "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]}],
        "volumes": [{"name": "v", "configMap": {"name": "cm1"}}]}}"#;
    admin.ok(&["apply", "-f", &write(dir, "p1.json", pod)]);
    // Admission gave it the token volume, mounted where clients look.
    let p: Value = serde_json::from_str(&admin.ok(&["get", "pod", "p1", "-o", "json"])).unwrap();
    let vols = p["spec"]["volumes"].to_string();
    assert!(
        vols.contains("kube-api-access-") && vols.contains("serviceAccountToken"),
        "{vols}"
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );

    // The node's matrix: its pod and what that pod references, nothing else.
    assert!(eventually(Duration::from_secs(5), || succeeds(
        &node,
        &["get", "secret", "s1"]
    )));
    assert!(node.fails(&["get", "secret", "s2"]).contains("forbidden"));
    node.ok(&["get", "configmap", "cm1"]);
    node.ok(&["get", "pod", "p1"]);
    node.ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=worker-1",
    ]);
    assert!(node.fails(&["get", "pods", "-A"]).contains("forbidden"));
    assert!(node
        .fails(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=server-0"
        ])
        .contains("forbidden"));
    node.ok(&["get", "node", "worker-1"]);
    assert!(node
        .fails(&["get", "node", "server-0"])
        .contains("forbidden"));
    node.ok(&["label", "node", "worker-1", "seen=yes"]);
    assert!(node
        .fails(&["label", "node", "server-0", "seen=yes"])
        .contains("forbidden"));
    assert!(node
        .fails(&["delete", "configmap", "cm1"])
        .contains("forbidden"));
    node.ok(&[
        "create",
        "token",
        "app",
        "--bound-object-kind=Pod",
        "--bound-object-name=p1",
    ]);
    let err = node.fails(&["create", "token", "app"]);
    assert!(err.contains("not bound to a pod scheduled on it"), "{err}");
    admin.ok(&["create", "serviceaccount", "other"]);
    assert!(node
        .fails(&["create", "token", "other"])
        .contains("forbidden"));

    // A token bound to the pod dies with it.
    let bound = admin.ok(&[
        "create",
        "token",
        "app",
        "--bound-object-kind=Pod",
        "--bound-object-name=p1",
    ]);
    let app = as_token(&server, &bin, dir, "app", bound.trim());
    app.ok(&["auth", "whoami"]);
    admin.ok(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    assert!(
        eventually(TOKEN_CACHE, || unauthorized(&app)),
        "a token bound to a deleted pod still works"
    );

    // Legacy Secret tokens are filled in by the controller and work until deleted.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-token\n  annotations:\n    kubernetes.io/service-account.name: app\ntype: kubernetes.io/service-account-token\n";
    admin.ok(&["apply", "-f", &write(dir, "secret.yaml", secret)]);
    let legacy = wait_for(Duration::from_secs(10), || {
        let b64 = admin.ok(&["get", "secret", "app-token", "-o", "jsonpath={.data.token}"]);
        (!b64.trim().is_empty()).then(|| {
            use base64::Engine;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap(),
            )
            .unwrap()
        })
    })
    .expect("the token controller fills the secret");
    let lk = as_token(&server, &bin, dir, "legacy", &legacy);
    assert!(lk
        .ok(&["auth", "whoami"])
        .contains("system:serviceaccount:default:app"));
    // Issuer discovery, for anyone authenticated.
    let oidc: Value =
        serde_json::from_str(&lk.ok(&["get", "--raw", "/.well-known/openid-configuration"]))
            .unwrap();
    assert_eq!(
        oidc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let jwks: Value = serde_json::from_str(&lk.ok(&["get", "--raw", "/openid/v1/jwks"])).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    admin.ok(&["delete", "secret", "app-token"]);
    assert!(eventually(TOKEN_CACHE, || unauthorized(&lk)));

    // Bad tokens: 401 with upstream's body, never echoed in the log.
    let good = admin.ok(&["create", "token", "app"]).trim().to_string();
    let mut forged = good.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let wrong_aud = admin
        .ok(&["create", "token", "app", "--audience=someone-else"])
        .trim()
        .to_string();
    for (name, tok) in [
        ("garbage", "not-a-token"),
        ("forged", forged.as_str()),
        ("audience", wrong_aud.as_str()),
        ("empty-ish", "a.b.c"),
    ] {
        let k = as_token(&server, &bin, dir, name, tok);
        let o = k.run(&["get", "--raw", "/api/v1/namespaces"]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("Unauthorized"),
            "{name}: {}",
            stderr(&o)
        );
    }
    let log = server.log();
    for tok in [good.as_str(), &forged, &wrong_aud, &legacy, bound.trim()] {
        assert!(!log.contains(tok), "a token appeared in the server log");
    }

    // Rotation: new tokens come from the new key; old ones verify for the grace period.
    let before = admin.ok(&["create", "token", "app"]).trim().to_string();
    let o = server.ctl(&["service-account-key", "rotate", "--grace", "3s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let old = as_token(&server, &bin, dir, "old", &before);
    old.ok(&["auth", "whoami"]);
    let after = admin.ok(&["create", "token", "app"]).trim().to_string();
    as_token(&server, &bin, dir, "new", &after).ok(&["auth", "whoami"]);
    let jwks: Value =
        serde_json::from_str(&admin.ok(&["get", "--raw", "/openid/v1/jwks"])).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert!(eventually(TOKEN_CACHE, || unauthorized(&old)));
    as_token(&server, &bin, dir, "new2", &after).ok(&["auth", "whoami"]);
    let o = server.ctl(&["service-account-key", "rotate", "--grace", "soon"]);
    assert!(stderr(&o).contains("--grace \"soon\""), "{}", stderr(&o));
}
