//! Every parser that bytes from the network or from files reach, fed
//! mutated inputs: none may panic (a panic in a request's task is a bug
//! even when tokio contains it). The suite must build on stable, so this
//! is a small deterministic mutator of its own (the coverage-guided
//! targets, which need nightly, are in `fuzz/`): seeds per parser,
//! byte flips, inserted tokens (multi-byte characters among them, for byte
//! slicing of strings), deletions, duplications and splices, chained so
//! that inputs drift far from the seeds.
//!
//! Bounded in the suite: `RK3S_FUZZ_SECS` per parser (default 0.5 s),
//! fixed seed `RK3S_FUZZ_SEED` (default 1). A long run:
//! `RK3S_FUZZ_ITERS=1000000 cargo test --release -p rk3sd --test parsers -- --nocapture`.

use rk3sd::apiserver::{patch, protobuf, request, selectors};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic for a seed, good enough to mutate.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Tokens common to every grammar here, plus characters whose UTF-8 is
/// two, three and four bytes long.
const COMMON: &[&str] = &[
    "",
    " ",
    ",",
    "=",
    "==",
    "!=",
    "!",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ":",
    ";",
    "/",
    "\\",
    "\"",
    "'",
    "-",
    ".",
    "~",
    "*",
    "@",
    "#",
    "%",
    "\n",
    "\t",
    "\0",
    "é",
    "日本",
    "🦀",
    "\u{fffd}",
    "0",
    "-1",
    "1e309",
    "18446744073709551616",
    "null",
    "true",
];

fn mutate(rng: &mut Rng, base: &[u8], dict: &[&str]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            2 | 3 => {
                let t = if !dict.is_empty() && rng.below(2) == 0 {
                    dict[rng.below(dict.len())]
                } else {
                    COMMON[rng.below(COMMON.len())]
                };
                let i = rng.below(len + 1);
                v.splice(i..i, t.bytes());
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                v.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                let piece = v[a..b].to_vec();
                let i = rng.below(len + 1);
                v.splice(i..i, piece);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0x00, 0xff, 0x80, 0xc3, 0x7f][rng.below(5)];
            }
            7 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(4);
                v.splice(i..i, std::iter::repeat_n(rng.next() as u8, n));
            }
        }
        if v.len() > 4096 {
            v.truncate(4096);
        }
    }
    v
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Feed `f` mutations of `seeds` for the configured time or count.
fn fuzz(name: &str, seeds: &[&[u8]], dict: &[&str], mut f: impl FnMut(&[u8])) {
    let budget = Duration::from_secs_f64(env("RK3S_FUZZ_SECS", 0.5));
    let iters: u64 = env("RK3S_FUZZ_ITERS", 0);
    // Never zero (xorshift would stay there); each parser its own stream.
    let mut rng = Rng((env::<u64>("RK3S_FUZZ_SEED", 1) ^ (name.len() as u64 * 0x9e37)) | 1);
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    for s in seeds {
        run_one(name, s, &mut f);
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        if iters > 0 {
            if n >= iters {
                break;
            }
        } else if t0.elapsed() >= budget {
            break;
        }
        let base = corpus[rng.below(corpus.len())].clone();
        let input = mutate(&mut rng, &base, dict);
        run_one(name, &input, &mut f);
        // Keep some inputs as bases, so mutations pile up.
        if rng.below(8) == 0 {
            if corpus.len() < 512 {
                corpus.push(input);
            } else {
                let i = seeds.len() + rng.below(corpus.len() - seeds.len());
                corpus[i] = input;
            }
        }
        n += 1;
    }
    eprintln!(
        "{name}: {n} inputs in {:.2} s, no panic",
        t0.elapsed().as_secs_f64()
    );
}

fn run_one(name: &str, input: &[u8], f: &mut impl FnMut(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        panic!(
            "{name} panicked on {:?} (bytes {:?})",
            String::from_utf8_lossy(input),
            input
        );
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "d", "labels": {"app": "web", "tier": "a/b"},
            "finalizers": ["x", "y"], "annotations": {"a~b": "1"}},
        "spec": {"containers": [
            {"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "env": [{"name": "A", "value": "1"}]},
            {"name": "d", "image": "j"}],
            "volumes": [{"name": "v", "emptyDir": {}}], "nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
}

#[test]
fn label_selectors() {
    let p = pod();
    fuzz(
        "label selector",
        &[
            b"app=web,tier!=b",
            b"app in (web, api),!legacy",
            b"tier notin (a,b),env",
            b"example.com/key==v",
        ],
        &["in", "notin", "app", "(", ")", "example.com/", "!"],
        |b| {
            if let Ok(s) = selectors::LabelSelector::parse(&text(b)) {
                s.matches(&p);
            }
        },
    );
}

#[test]
fn field_selectors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rk3sd::datastore::Datastore::new(std::sync::Arc::new(
        rk3sd::datastore::sqlite::SqliteBackend::open(&dir.path().join("s.db")).unwrap(),
    ));
    let reg = rt.block_on(rk3sd::registry::Registry::new(
        rk3sd::datastore::objects::Objects::new(store),
    ));
    let pods = reg.find("", "v1", "pods").unwrap();
    let p = pod();
    fuzz(
        "field selector",
        &[
            b"metadata.name=p,spec.nodeName!=n2",
            b"status.phase==Running",
            b"metadata.namespace=d",
        ],
        &["metadata.name", "spec.nodeName", "status.phase", "==", "!="],
        |b| {
            if let Ok(s) = selectors::FieldSelector::parse(&pods, &text(b)) {
                s.matches(&p);
                s.exact_name();
            }
        },
    );
}

/// A random JSON value built from `keys` and awkward scalars.
fn value(rng: &mut Rng, keys: &[&str], depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(3) as i64 - 1),
        2 => json!(["", "é", "🦀", "x"][rng.below(4)]),
        3 => json!(rng.below(2) == 0),
        4 => json!(keys[rng.below(keys.len())]),
        5 | 6 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                m.insert(
                    keys[rng.below(keys.len())].to_string(),
                    value(rng, keys, depth - 1),
                );
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.below(4))
                .map(|_| value(rng, keys, depth - 1))
                .collect(),
        ),
    }
}

/// Patches: the mutated bytes when they are JSON, else a random document
/// seeded by them.
fn patches(name: &str, seeds: &[&[u8]], keys: &[&str], mut apply: impl FnMut(&mut Value, &Value)) {
    let base = pod();
    fuzz(name, seeds, keys, |b| {
        let patch = serde_json::from_slice::<Value>(b).unwrap_or_else(|_| {
            let mut rng = Rng(b
                .iter()
                .fold(0x1234_5678u64, |h, c| h.rotate_left(5) ^ u64::from(*c))
                | 1);
            value(&mut rng, keys, 4)
        });
        let mut target = base.clone();
        apply(&mut target, &patch);
    });
}

const PATCH_KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "containers",
    "name",
    "image",
    "labels",
    "finalizers",
    "ports",
    "containerPort",
    "env",
    "value",
    "volumes",
    "$patch",
    "delete",
    "replace",
    "merge",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "conditions",
    "type",
    "op",
    "path",
    "from",
    "add",
    "remove",
    "move",
    "copy",
    "test",
    "/spec/containers/0",
    "/spec/containers/-",
    "/metadata/labels/a~1b",
    "/~01",
    "",
    "/spec/containers/99999999999999999999",
    "/metadata/finalizers/1",
];

#[test]
fn merge_patches() {
    patches(
        "merge patch",
        &[br#"{"metadata": {"labels": {"app": null, "x": "y"}}, "spec": {"containers": []}}"#],
        PATCH_KEYS,
        patch::merge_patch,
    );
}

#[test]
fn json_patches() {
    patches(
        "json patch",
        &[
            br#"[{"op": "add", "path": "/metadata/labels/x", "value": "y"}]"#,
            br#"[{"op": "move", "from": "/spec/containers/0", "path": "/spec/containers/-"}]"#,
            br#"[{"op": "test", "path": "/status/phase", "value": "Running"}, {"op": "remove", "path": "/metadata/finalizers/0"}]"#,
            br#"[{"op": "copy", "from": "/metadata", "path": "/metadata/labels/m"}]"#,
        ],
        PATCH_KEYS,
        |t, p| {
            let _ = patch::json_patch(t, p);
        },
    );
}

#[test]
fn strategic_merge_patches() {
    patches(
        "strategic merge patch",
        &[
            br#"{"spec": {"containers": [{"name": "c", "image": "k"}, {"name": "d", "$patch": "delete"}]}}"#,
            br#"{"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}, "spec": {"$setElementOrder/containers": [{"name": "d"}, {"name": "c"}]}}"#,
            br#"{"spec": {"$retainKeys": ["containers"], "volumes": [{"name": "v", "$patch": "replace"}]}}"#,
        ],
        PATCH_KEYS,
        |t, p| {
            let _ = patch::strategic_merge(t, p);
        },
    );
}

/// A protobuf body as kubectl sends one: the magic, then a
/// runtime.Unknown whose raw bytes are a v1 ConfigMap.
fn configmap_protobuf() -> Vec<u8> {
    let field = |n: u8, b: &[u8]| {
        let mut v = vec![(n << 3) | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    };
    let meta = field(1, b"cm");
    let entry = [field(1, b"k"), field(2, b"v")].concat();
    let raw = [field(1, &meta), field(2, &entry)].concat();
    let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
    [
        b"k8s\0".to_vec(),
        field(1, &type_meta),
        field(2, &raw),
        field(4, b"application/vnd.kubernetes.protobuf"),
    ]
    .concat()
}

#[test]
fn protobuf_bodies() {
    let seed = configmap_protobuf();
    let decoded = protobuf::decode(&seed).expect("the seed decodes");
    assert_eq!(decoded["data"]["k"], "v", "{decoded}");
    fuzz(
        "protobuf body",
        &[&seed],
        &["k8s\0", "\u{8}", "\u{12}"],
        |b| {
            let _ = protobuf::decode(b);
            // Past the magic too, where most mutations would otherwise stop.
            let _ = protobuf::decode(&[b"k8s\0", b.get(4..).unwrap_or_default()].concat());
        },
    );
}

#[test]
fn json_and_yaml_bodies_and_manifests() {
    fuzz(
        "request body",
        &[
            br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}"#,
            b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n",
        ],
        &[
            "apiVersion",
            "kind",
            "metadata",
            ": ",
            "\n  ",
            "- ",
            "---",
            "&a",
            "*a",
            "!!binary",
            "<<",
        ],
        |b| {
            let _ = request::parse_body(&axum::body::Bytes::copy_from_slice(b));
        },
    );
    fuzz(
        "manifest",
        &[
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: s}\n",
            br#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}"#,
        ],
        &["---", "\n", "items:", "- ", "kind: List", "&a", "*a", "!!str", "<<: *a", "{", "}"],
        |b| {
            let _ = rk3sd::server::deploy::manifest::parse(b);
            // The file's path names its Addon.
            let _ = rk3sd::server::deploy::manifest::addon_name(std::path::Path::new(&text(b)));
        },
    );
}

#[test]
fn tokens_node_passwords_and_agent_messages() {
    fuzz(
        "token",
        &[
            b"K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:secret",
            b"secret",
            b"K10::node:x",
        ],
        &["K10", "::", "server:", "node:"],
        |b| {
            let _ = rk3sd::credentials::token::Token::parse(&text(b));
        },
    );
    fuzz(
        "legacy node-passwd",
        &[b"hash1,node-a,node-a,rk3s:agent\nhash2,node-b,node-b,rk3s:agent\n"],
        &[",", "\n", "rk3s:agent"],
        |b| {
            let _ = rk3sd::credentials::nodepassword::parse_legacy(&text(b));
        },
    );
    fuzz(
        "tunnel message",
        &[
            br#"{"type": "heartbeat", "seq": 1}"#,
            br#"{"type": "node_status", "hostname": "a", "addresses": ["10.0.0.1"]}"#,
        ],
        &["type", "heartbeat", "node_status", "seq", "hostname"],
        |b| {
            let _ = serde_json::from_slice::<rk3s_api::tunnel::AgentMessage>(b);
        },
    );
}

/// What reaches the tunnel's stream multiplexer, the kubelet's log reader
/// (lines a container wrote) and the log options of a request.
#[test]
fn stream_frames_log_records_and_log_options() {
    use rk3s_api::tunnel::StreamFrame;
    let open = StreamFrame::Open {
        id: 1,
        target: "kubelet".into(),
    }
    .encode();
    let data = StreamFrame::Data {
        id: 1,
        data: b"GET / HTTP/1.1\r\n".to_vec(),
    }
    .encode();
    // One runtime for every input: the multiplexer spawns its tasks on it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let window = StreamFrame::Window {
        id: 1,
        increment: 65536,
    }
    .encode();
    fuzz(
        "stream frame",
        &[
            &open,
            &data,
            &window,
            &[3, 0, 0, 0, 1],
            &[4, 0, 0, 0, 1, b'x'],
        ],
        &["\u{0}", "\u{1}", "\u{2}", "\u{ff}", "kubelet"],
        |b| {
            // Decoded, and delivered to a live multiplexer: neither panics.
            let _ = StreamFrame::decode(b);
            rt.block_on(async {
                let (accepted, _accepts) = tokio::sync::mpsc::channel(1);
                let (mux, _out) = rk3sd::streams::mux::Mux::new(Some(accepted));
                let _ = mux.deliver(&open);
                let _ = mux.deliver(b);
                mux.shutdown();
            });
        },
    );
    fuzz(
        "CRI log record",
        &[
            b"2026-12-07T10:00:00.123456789Z stdout F hello",
            b"2026-12-07T10:00:00Z stderr P part",
            b"2026-12-07T10:00:00+01:00 stdout P:F x y z",
        ],
        &[" ", "stdout", "stderr", "P", "F", ":", "Z", "\u{e9}"],
        |b| {
            let opts = rk3sd::kube::log_options::LogOptions {
                timestamps: true,
                limit_bytes: Some(7),
                since: Some(chrono::Utc::now()),
                ..Default::default()
            };
            let mut r = rk3sd::agent::kubelet::container_logs::Renderer::new(opts);
            if let Some(rec) = rk3sd::agent::kubelet::container_logs::parse(b) {
                let mut out = Vec::new();
                r.render(&rec, &mut out);
                assert!(out.len() <= 7, "limitBytes exceeded");
            }
        },
    );
    fuzz(
        "log options",
        &[b"follow=true&tailLines=10&sinceTime=2026-12-07T10:00:00Z&limitBytes=5&container=c"],
        &[
            "=",
            "&",
            "tail",
            "all",
            "sinceSeconds",
            "-",
            "9223372036854775807",
        ],
        |b| {
            let q: std::collections::HashMap<String, String> = text(b)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Ok(o) = rk3sd::kube::log_options::LogOptions::from_query(&q, chrono::Utc::now())
            {
                let _ = o.kubelet_query();
            }
        },
    );
}

/// A kubelet's `/stats/summary`, as the server's metrics API reads it
/// from an agent.
#[test]
fn kubelet_stats_summaries() {
    let seed = br#"{"node":{"nodeName":"n","cpu":{"time":"2026-01-01T00:00:00Z","usageNanoCores":5,"usageCoreNanoSeconds":9,"windowNanoSeconds":1000},"memory":{"time":"2026-01-01T00:00:00Z","workingSetBytes":4096}},"pods":[{"podRef":{"name":"p","namespace":"d","uid":"u"},"containers":[{"name":"c","cpu":{"time":"2026-01-01T00:00:00.5Z","usageNanoCores":1}}]}]}"#;
    fuzz(
        "stats summary",
        &[seed, b"{}", br#"{"node":{"nodeName":""}}"#],
        &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "null",
            "-1",
            "18446744073709551616",
            "1e309",
        ],
        |b| {
            let _ = serde_json::from_slice::<rk3sd::kube::stats_summary::Summary>(b);
        },
    );
}

#[test]
fn quantities_durations_addresses_and_schedules() {
    fuzz(
        "quantity",
        &[
            b"250m",
            b"1.5Gi",
            b"1e3",
            b"64Mi",
            b"0.001",
            b"1500000n",
            b"12u",
        ],
        &[
            "m", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "e", "E", ".", "n", "u",
        ],
        |b| {
            let _ = rk3sd::kube::quantity::milli(&text(b));
        },
    );
    fuzz(
        "duration",
        &[b"10s", b"1h30m", b"500ms", b"2m0s"],
        &["h", "m", "s", "ms", "us", "ns"],
        |b| {
            let _ = rk3sd::config::parse_duration(&text(b));
        },
    );
    fuzz(
        "server url",
        &[
            b"https://10.0.0.1:6443",
            b"server.example:6443",
            b"https://[::1]:6443/",
        ],
        &["https://", "http://", "[", "]", ":", "@", "/", "?"],
        |b| {
            let _ = rk3sd::config::normalize_server_url(&text(b));
        },
    );
    fuzz(
        "postgres endpoint",
        &[
            b"postgres://rk3s:secret@db.example:5432/kubernetes?sslmode=require",
            b"host=db user=rk3s password=secret dbname=k",
        ],
        &[
            "postgres://",
            "@",
            ":",
            "/",
            "?",
            "&",
            "=",
            "sslmode",
            "password=",
            "host=",
        ],
        |b| {
            let s = text(b);
            let _ = rk3sd::datastore::postgres::redact(&s);
            let _ = rk3sd::datastore::postgres::check_settings(
                &s,
                &rk3sd::datastore::TlsFiles::default(),
            );
        },
    );
    fuzz(
        "CIDRs and port ranges",
        &[
            b"10.42.0.0/16",
            b"10.43.0.0/16 30000-32767",
            b"192.168.1.0/24",
        ],
        &["/", ".", "-", " ", "255", "32", "0"],
        |b| {
            let s = text(b);
            let (cidr, ports) = s.split_once(' ').unwrap_or((&s, "30000-32767"));
            let _ = rk3sd::server::ipam::Ipam::parse(cidr, 24);
            let _ = rk3sd::registry::ranges::ServiceRanges::parse(cidr, ports);
            let _ = rk3sd::registry::ranges::parse_cidr(cidr);
        },
    );
    fuzz(
        "cron schedule",
        &[
            b"*/5 * * * *",
            b"@every 1h30m",
            b"0 0 1 1 MON",
            b"@hourly",
            b"TZ=UTC 0 * * * *",
        ],
        &[
            "*", "/", ",", "-", "@every ", "@daily", "MON", "JAN", "?", "L", "#", "TZ=",
        ],
        |b| {
            let _ = rk3sd::registry::batch::Schedule::parse(&text(b));
        },
    );
    fuzz(
        "kubelet args and times",
        &[
            b"container-log-max-size=10Mi\neviction-hard=memory.available<100Mi,nodefs.available<10%",
            b"kube-reserved=cpu=100m,memory=100Mi\nmax-pods=110",
            b"2026-12-01T10:00:00Z",
        ],
        &["=", "<", "%", ",", "\n", "--", "Mi", "eviction-hard", "kube-reserved"],
        |b| {
            let s = text(b);
            let args: Vec<String> = s.lines().map(String::from).collect();
            let _ = rk3sd::agent::kubelet::settings::parse(&args);
            let _ = rk3sd::datastore::objects::parse_time(&s);
            let _ = rk3sd::credentials::kubeconfig::parse_mode(&s);
        },
    );
}

#[test]
fn config_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    fuzz(
        "config file",
        &[
            b"token = \"secret\"\nnode-label = [\"a=b\", \"c=d\"]\nhttps-listen-port = 6443\n",
            b"server = \"https://10.0.0.1:6443\"\nnode-monitor-grace-period = \"40s\"\ncluster-cidr = \"10.42.0.0/16\"\nrequest-timeout = \"1m\"\n",
            b"[table]\nkey = 1\n",
        ],
        &[
            "=", "\"", "'", "[", "]", "{", "}", "\n", "#", "token", "server", "data-dir",
            "node-label", "cluster-cidr", "service-cidr", "request-timeout",
            "max-request-body-bytes", "kubelet-arg", "1e9", "-1", "true",
        ],
        |b| {
            std::fs::write(&path, b).unwrap();
            let mut server = rk3sd::config::ServerArgs::default();
            server.common.config = Some(path.clone());
            server.common.data_dir = Some(dir.path().join("data"));
            let _ = rk3sd::config::ServerConfig::resolve(&server);
            let mut agent = rk3sd::config::AgentArgs::default();
            agent.common.config = Some(path.clone());
            agent.common.data_dir = Some(dir.path().join("data"));
            let _ = rk3sd::config::AgentConfig::resolve(&agent);
        },
    );
}

/// The admin socket's requests, raw bytes through hyper and the real
/// router (an agent's, which needs no server behind it).
#[test]
fn admin_requests() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = || {
        rk3sd::admin::Backend::Agent(
            std::sync::Arc::new(rk3sd::agent::AgentState::default()),
            std::sync::Arc::new(rk3sd::admin::AgentInfo {
                started: Instant::now(),
                server_url: "https://10.0.0.1:6443".into(),
            }),
        )
    };
    fuzz(
        "admin request",
        &[
            b"GET /v1/status HTTP/1.1\r\nHost: rk3s\r\n\r\n",
            b"DELETE /v1/nodes/node-a?force=true HTTP/1.1\r\nHost: rk3s\r\n\r\n",
            b"POST /v1/service-account-key/rotate?grace=1h HTTP/1.1\r\nHost: rk3s\r\nContent-Length: 0\r\n\r\n",
            b"GET /v1/nodes/a%2Fb HTTP/1.1\r\nHost: rk3s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ],
        &[
            "\r\n", "?", "&", "=", "%", "%ff", "%2F", "/", "force=", "grace=", "true",
            "Content-Length: ", "Transfer-Encoding: chunked", "HTTP/1.0", "/v1/nodes/",
            "/rotate-password",
        ],
        |b| {
            let app = rk3sd::admin::router(backend());
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut client, server) = tokio::io::duplex(64 * 1024);
                let serve = rk3sd::server::https::serve_connection(
                    server,
                    app,
                    Duration::from_millis(200),
                    tokio_util::sync::CancellationToken::new(),
                );
                let talk = async {
                    let _ = client.write_all(b).await;
                    let _ = client.shutdown().await;
                    let mut out = Vec::new();
                    let _ = client.read_to_end(&mut out).await;
                };
                // Not spawned: a panic in a handler must reach catch_unwind.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    tokio::join!(serve, talk)
                })
                .await;
            });
        },
    );
}

/// The harness finds what it is here for: a parser that cuts a string at
/// a byte offset panics inside a multi-byte character.
#[test]
#[should_panic(expected = "byte-slicing parser panicked")]
fn the_harness_finds_byte_slicing() {
    fuzz("byte-slicing parser", &[b"name=value"], &[], |b| {
        let s = text(b);
        let _ = &s[..s.len().min(4)];
    });
}
