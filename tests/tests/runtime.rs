//! The node's container runtime: containerd from Debian started by the
//! agent with the config it writes, checked over CRI, with the pause image
//! and air-gap image tarballs imported and pinned; a missing or dead
//! runtime makes the node NotReady with the reason. Needs root (containerd).

use rk3s_tests::*;
use rk3sd::runtime::images::{docker_archive, LayerFile, LayerLink};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

/// A busybox image from Debian's busybox-static, as a `docker save` archive.
fn busybox_archive(name: &str) -> Vec<u8> {
    let bin = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let links: Vec<LayerLink> = ["sh", "sleep", "cat", "echo", "ls"]
        .iter()
        .map(|l| LayerLink {
            path: Box::leak(format!("bin/{l}").into_boxed_str()),
            target: "busybox",
        })
        .collect();
    docker_archive(
        name,
        &[LayerFile {
            path: "bin/busybox",
            data: &bin,
            mode: 0o755,
        }],
        &links,
        &[],
        &["sh"],
    )
    .unwrap()
}

fn node(server: &Server, name: &str) -> Option<Value> {
    let k = Kubectl::new(
        kubectl(None),
        &server.kubeconfig(),
        &server.dir.join("kcache"),
    );
    let o = k.run(&["get", "node", name, "-o", "json"]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn ready(n: &Value) -> (String, String) {
    let c = n["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").into(),
        c["message"].as_str().unwrap_or("").into(),
    )
}

fn ctr(socket: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr {args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn containerd_runs_under_the_agent_and_imports_air_gap_images() {
    let t = tempdir();
    let dir = t.path().join("s");
    let images = dir.join("data/agent/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(
        images.join("busybox.tar"),
        busybox_archive("docker.io/library/busybox:test"),
    )
    .unwrap();
    std::fs::write(images.join("broken.tar"), b"this is not a tarball").unwrap();
    let server = Server::start(&dir, &[RUNTIME]);
    let n = wait_for(READY, || {
        let n = node(&server, "server-0")?;
        n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()?
            .starts_with("containerd://")
            .then_some(n)
    })
    .unwrap_or_else(|| panic!("the node never reported containerd:\n{}", server.log()));
    assert_eq!(ready(&n).0, "True", "{n}");
    // The config it wrote, the socket under the data dir, the images pinned.
    let cfg = std::fs::read_to_string(dir.join("data/agent/etc/containerd/config.toml")).unwrap();
    assert!(
        cfg.contains("sandbox_image = \"docker.io/rancher/mirrored-pause:3.6\""),
        "{cfg}"
    );
    let socket = dir.join("data/agent/run/containerd/containerd.sock");
    let listed = wait_for(Duration::from_secs(30), || {
        let l = ctr(&socket, &["images", "ls"]);
        (l.contains("docker.io/library/busybox:test") && l.contains("mirrored-pause")).then_some(l)
    })
    .unwrap_or_else(|| panic!("images not imported:\n{}", server.log()));
    for line in listed
        .lines()
        .filter(|l| l.contains("busybox:test") || l.contains("mirrored-pause"))
    {
        assert!(line.contains("io.cri-containerd.pinned=pinned"), "{line}");
    }
    let log = server.log();
    assert!(
        log.contains("broken.tar") && log.contains("skipped"),
        "{log}"
    );
    // A containerd that dies is started again.
    let pid_of = || {
        let o = std::process::Command::new("pgrep")
            .args([
                "-f",
                &format!(
                    "containerd -c {}",
                    dir.join("data/agent/etc/containerd/config.toml").display()
                ),
            ])
            .output()
            .unwrap();
        stdout(&o).trim().to_string()
    };
    let first = pid_of();
    assert!(!first.is_empty(), "containerd is not running");
    std::process::Command::new("kill")
        .args(["-9", &first])
        .status()
        .unwrap();
    let second = wait_for(Duration::from_secs(30), || {
        let p = pid_of();
        (!p.is_empty() && p != first).then_some(p)
    });
    assert!(
        second.is_some(),
        "containerd was not restarted:\n{}",
        server.log()
    );
    assert!(
        server.log().contains("containerd exited"),
        "{}",
        server.log()
    );
    assert!(
        wait_for(READY, || (ready(&node(&server, "server-0")?).0 == "True")
            .then_some(()))
        .is_some()
    );
    // A tarball added later is imported too.
    std::fs::write(
        images.join("later.tar"),
        busybox_archive("docker.io/library/later:1"),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || ctr(&socket, &["images", "ls"])
            .contains("later:1")
            .then_some(()))
        .is_some()
    );
}

#[test]
fn a_runtime_that_is_missing_or_unreachable_makes_the_node_not_ready() {
    let t = tempdir();
    // No containerd on PATH: the reason names the packages to install.
    let server =
        Server::start_with_env(&t.path().join("s"), &[RUNTIME], &[("PATH", "/nonexistent")]);
    let msg = wait_for(READY, || {
        let (status, msg) = ready(&node(&server, "server-0")?);
        (status == "False").then_some(msg)
    })
    .unwrap_or_else(|| panic!("the node did not go NotReady:\n{}", server.log()));
    assert!(
        msg.contains("containerd is not installed") && msg.contains("containernetworking-plugins"),
        "{msg}"
    );
    drop(server);
    // An endpoint nobody serves.
    let server = Server::start(
        &t.path().join("e"),
        &[
            RUNTIME,
            "--container-runtime-endpoint",
            "unix:///nonexistent/cri.sock",
        ],
    );
    let msg = wait_for(READY, || {
        let (status, msg) = ready(&node(&server, "server-0")?);
        (status == "False").then_some(msg)
    })
    .unwrap_or_else(|| panic!("the node did not go NotReady:\n{}", server.log()));
    assert!(msg.contains("/nonexistent/cri.sock"), "{msg}");
    // A bad endpoint is refused at start with the flag named.
    let o = std::process::Command::new(bin("rk3sd"))
        .args([
            "agent",
            "--config",
            "/dev/null",
            "--server",
            "https://127.0.0.1:1",
            "--token",
            "x",
            "--container-runtime-endpoint",
            "tcp://x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--container-runtime-endpoint"),
        "{}",
        stderr(&o)
    );
}
