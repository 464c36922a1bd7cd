//! Auto-deployed manifests on a real server: files dropped into
//! `<data-dir>/server/manifests` are applied, updated, pruned, skipped and
//! reported, through kubectl and `rk3sctl manifest list`.

use rk3s_tests::{kubectl, wait_for, Kubectl, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn manifests_dir(s: &Server) -> PathBuf {
    s.data_dir.join("server/manifests")
}

fn kube(s: &Server) -> Kubectl {
    Kubectl::new(kubectl(None), &s.kubeconfig(), &s.dir.join("kcache"))
}

/// Write a file the way an operator's editor would not: in place. The
/// controller must cope with partial writes (it debounces).
fn put(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn cm(name: &str, ns: Option<&str>, value: &str) -> String {
    let ns = ns
        .map(|n| format!("\n  namespace: {n}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:\n  k: \"{value}\"\n"
    )
}

fn get(k: &Kubectl, args: &[&str]) -> Option<Value> {
    let o = k.run(&[args, &["-o", "json"]].concat());
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn manifests(s: &Server) -> Vec<Value> {
    let o = s.ctl(&["manifest", "list", "-o", "json"]);
    assert!(o.status.success(), "{}", rk3s_tests::stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn manifest(s: &Server, name: &str) -> Option<Value> {
    manifests(s).into_iter().find(|m| m["name"] == name)
}

/// Wait (2 s, the promise) until the Addon of `name` was applied with the
/// file's current content.
fn applied(s: &Server, name: &str, within: Duration) -> bool {
    let path = manifests_dir(s).join(format!("{name}.yaml"));
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))
    };
    wait_for(within, || {
        let m = manifest(s, name)?;
        (m["checksum"] == sum.as_str() && m["error"] == "" && m["applied"].is_string())
            .then_some(())
    })
    .is_some()
}

const TWO_SECONDS: Duration = Duration::from_millis(2000);

#[test]
fn files_are_applied_updated_pruned_skipped_and_reported() {
    let t = rk3s_tests::tempdir();
    let s = Server::start(&t.path().join("s"), &["--disable-agent"]);
    let k = kube(&s);
    let dir = manifests_dir(&s);
    assert!(
        applied(&s, "cluster-info", Duration::from_secs(10)),
        "bundled manifests at startup"
    );

    // Drop a file: a namespace, an object in it, one without a namespace.
    let app = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n{}---\n{}---\n{}",
        cm("app-a", Some("demo"), "v1"),
        cm("app-b", Some("demo"), "v1"),
        cm("plain", None, "v1")
    );
    put(&dir, "app.yaml", &app);
    assert!(applied(&s, "app", TWO_SECONDS), "{:?}", manifest(&s, "app"));
    assert_eq!(
        get(&k, &["get", "cm", "app-a", "-n", "demo"]).unwrap()["data"]["k"],
        "v1"
    );
    assert!(
        get(&k, &["get", "cm", "plain", "-n", "default"]).is_some(),
        "no namespace: default"
    );

    // Someone else labels an object; the file changes a value and drops an object.
    k.ok(&["label", "cm", "app-a", "-n", "demo", "owner=ops"]);
    let edited = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n{}---\n{}",
        cm("app-a", Some("demo"), "v2"),
        cm("plain", None, "v1")
    );
    put(&dir, "app.yaml", &edited);
    assert!(applied(&s, "app", TWO_SECONDS));
    let a = get(&k, &["get", "cm", "app-a", "-n", "demo"]).unwrap();
    assert_eq!(a["data"]["k"], "v2");
    assert_eq!(
        a["metadata"]["labels"]["owner"], "ops",
        "changes outside the file are kept"
    );
    assert!(
        get(&k, &["get", "cm", "app-b", "-n", "demo"]).is_none(),
        "dropped from the file: pruned"
    );
    assert_eq!(manifest(&s, "app").unwrap()["objects"], 3);

    // `.skip` disables a file; a later file in the same pass proves the pass ran.
    put(&dir, "skipped.yaml.skip", "");
    put(&dir, "skipped.yaml", &cm("skipped", None, "x"));
    put(&dir, "zz-marker.yaml", &cm("marker-1", None, "x"));
    assert!(applied(&s, "zz-marker", TWO_SECONDS));
    assert!(get(&k, &["get", "cm", "skipped"]).is_none());
    assert!(manifest(&s, "skipped").is_none());

    // A broken file: the error names the file and document; nothing else moves.
    put(
        &dir,
        "broken.yaml",
        &format!("{}---\nkey: [unclosed\n", cm("never", None, "x")),
    );
    let err = wait_for(TWO_SECONDS, || {
        let e = manifest(&s, "broken")?["error"].as_str()?.to_string();
        (!e.is_empty()).then_some(e)
    })
    .expect("the broken file's Addon carries the error");
    assert!(
        err.contains("broken.yaml") && err.contains("document 2"),
        "{err}"
    );
    assert!(
        get(&k, &["get", "cm", "never"]).is_none(),
        "nothing of a broken file is applied"
    );
    let events = k.ok(&["get", "events", "-n", "kube-system", "-o", "json"]);
    assert!(
        events.contains("ApplyFailed") && events.contains("document 2"),
        "{events}"
    );
    // A good file that turns bad keeps the objects of its last good version.
    put(
        &dir,
        "app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-a, namespace: demo}\ndata: [oops\n",
    );
    assert!(
        wait_for(TWO_SECONDS, || (manifest(&s, "app")?["error"] != "")
            .then_some(()))
        .is_some()
    );
    assert_eq!(
        get(&k, &["get", "cm", "app-a", "-n", "demo"]).unwrap()["data"]["k"],
        "v2"
    );
    put(&dir, "app.yaml", &edited);
    assert!(applied(&s, "app", TWO_SECONDS));
    put(&dir, "zz-marker.yaml", &cm("marker-2", None, "x"));
    assert!(applied(&s, "zz-marker", TWO_SECONDS));
    assert!(
        get(&k, &["get", "cm", "marker-1"]).is_none(),
        "the renamed object was pruned"
    );

    // A CRD and its first object in one file, the object written first.
    put(
        &dir,
        "widgets.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n---\n\
         apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\n\
         spec:\n  group: example.com\n  names: {kind: Widget, plural: widgets, singular: widget}\n  scope: Namespaced\n\
         \x20 versions:\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n",
    );
    assert!(
        applied(&s, "widgets", TWO_SECONDS),
        "{:?}",
        manifest(&s, "widgets")
    );
    assert_eq!(
        get(&k, &["get", "widget", "w1"]).unwrap()["spec"]["size"],
        3
    );
    // An object of a kind nobody defined is an error naming the object.
    put(
        &dir,
        "gadgets.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\n",
    );
    let err = wait_for(TWO_SECONDS, || {
        let e = manifest(&s, "gadgets")?["error"].as_str()?.to_string();
        (!e.is_empty()).then_some(e)
    })
    .expect("an unknown kind is reported");
    assert!(
        err.contains("Gadget/g1") && err.contains("gadgets.yaml"),
        "{err}"
    );

    // Deleting the file leaves its objects.
    std::fs::remove_file(dir.join("app.yaml")).unwrap();
    let note = wait_for(TWO_SECONDS, || {
        let e = manifest(&s, "app")?["error"].as_str()?.to_string();
        e.contains("removed").then_some(e)
    });
    assert!(note.is_some(), "{:?}", manifest(&s, "app"));
    assert!(get(&k, &["get", "cm", "app-a", "-n", "demo"]).is_some());
    assert!(s.log().contains("left in place"));

    // kubectl shows the same Addons as rk3sctl.
    let mut from_ctl: Vec<String> = manifests(&s)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let mut from_kubectl: Vec<String> = k
        .ok(&["get", "addons", "-n", "kube-system", "-o", "name"])
        .lines()
        .map(|l| l.trim_start_matches("addon.rk3s.io/").to_string())
        .collect();
    from_ctl.sort();
    from_kubectl.sort();
    assert_eq!(from_ctl, from_kubectl);
    let table = rk3s_tests::stdout(&s.ctl(&["manifest", "list"]));
    assert!(
        table.starts_with("NAME") && table.contains("CHECKSUM") && table.contains("broken"),
        "{table}"
    );
}

#[test]
fn restarts_reapply_nothing_and_disable_removes_a_bundled_manifest() {
    let t = rk3s_tests::tempdir();
    let mut s = Server::start(&t.path().join("s"), &["--disable-agent"]);
    let k = kube(&s);
    let dir = manifests_dir(&s);
    put(&dir, "mine.yaml", &cm("mine", None, "1"));
    assert!(applied(&s, "mine", TWO_SECONDS));
    assert!(applied(&s, "cluster-info", TWO_SECONDS));
    let rv = |args: &[&str]| get(&k, args).unwrap()["metadata"]["resourceVersion"].clone();
    let before = (
        rv(&["get", "cm", "mine"]),
        rv(&["get", "cm", "cluster-info", "-n", "kube-public"]),
        rv(&["get", "addon", "mine", "-n", "kube-system"]),
    );

    s.stop();
    put(&dir, "zz-marker.yaml", &cm("marker", None, "x"));
    s.restart();
    assert!(applied(&s, "zz-marker", Duration::from_secs(10)));
    let after = (
        rv(&["get", "cm", "mine"]),
        rv(&["get", "cm", "cluster-info", "-n", "kube-public"]),
        rv(&["get", "addon", "mine", "-n", "kube-system"]),
    );
    assert_eq!(before, after, "unchanged files are not applied again");
    let restarted_log = s.log();
    let second_run = restarted_log
        .rsplit("rk3s server is serving")
        .next()
        .unwrap();
    assert!(!second_run.contains("addon=mine"), "{second_run}");

    // --disable removes the bundled file, its Addon and its objects.
    s.stop();
    s.extra
        .extend(["--disable".to_string(), "cluster-info".to_string()]);
    s.restart();
    assert!(wait_for(Duration::from_secs(10), || get(
        &k,
        &["get", "cm", "cluster-info", "-n", "kube-public"]
    )
    .is_none()
    .then_some(()))
    .is_some());
    assert!(manifest(&s, "cluster-info").is_none());
    assert!(!dir.join("cluster-info.yaml").exists());
    assert!(get(&k, &["get", "cm", "mine"]).is_some());

    // A name that is not bundled is a clear error.
    let o = std::process::Command::new(rk3s_tests::bin("rk3sd"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--disable",
            "traefik",
            "--data-dir",
        ])
        .arg(t.path().join("other"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = rk3s_tests::stderr(&o);
    assert!(
        err.contains("--disable") && err.contains("traefik") && err.contains("cluster-info"),
        "{err}"
    );
}

#[test]
fn five_hundred_manifests_at_startup() {
    let t = rk3s_tests::tempdir();
    let dir = t.path().join("s/data/server/manifests");
    for i in 0..500 {
        put(
            &dir,
            &format!("m{i:03}.yaml"),
            &cm(&format!("m{i:03}"), None, &i.to_string()),
        );
    }
    let s = Server::start(&t.path().join("s"), &["--disable-agent"]);
    let all = wait_for(Duration::from_secs(120), || {
        let m = manifests(&s);
        (m.iter()
            .filter(|m| m["applied"].is_string() && m["error"] == "")
            .count()
            == 502)
            .then_some(m)
    });
    assert!(
        all.is_some(),
        "500 manifests (and 2 bundled) must all be applied"
    );
    let names = kube(&s).ok(&["get", "cm", "-o", "name"]);
    assert_eq!(
        names
            .lines()
            .filter(|l| l.starts_with("configmap/m"))
            .count(),
        500
    );
}
