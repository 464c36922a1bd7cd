//! What tests that run pods share: a busybox image from Debian's
//! busybox-static, and the cleanup of what a test's containerd ran.

use rk3sd::runtime::images::{docker_archive, LayerFile, LayerLink};
use std::path::Path;
use std::time::Duration;

/// Kills what a test's containerd still runs when the test ends (the
/// shims outlive the agent, as they should): declared after the server, so
/// it runs while containerd is still up.
pub struct Containers(std::path::PathBuf);

impl Containers {
    /// For the server or agent whose data dir is `data_dir`.
    pub fn of(data_dir: &Path) -> Self {
        Self(rk3sd::runtime::containerd::Paths::new(data_dir).socket)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(&self.0)
                .args(["--namespace", "k8s.io"])
                .args(args)
                .output()
        };
        // The node's kubelet may still be running and restart what was
        // killed: a few rounds, until nothing is left.
        // Sandboxes' network namespaces: containerd removes them only when
        // the sandbox is stopped through CRI, which a test's end does not
        // do, so they would pile up in /run/netns.
        let mut netns = std::collections::BTreeSet::new();
        if let Ok(o) = run(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(o) = run(&["containers", "info", id]) {
                    netns.extend(cni_netns(&String::from_utf8_lossy(&o.stdout)));
                }
            }
        }
        for _ in 0..3 {
            let Ok(o) = run(&["tasks", "ls", "-q"]) else {
                return;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                let _ = run(&["tasks", "kill", "--signal", "SIGKILL", id]);
            }
            std::thread::sleep(Duration::from_millis(500));
            for id in &ids {
                let _ = run(&["tasks", "delete", "--force", id]);
                let _ = run(&["containers", "delete", id]);
            }
        }
        netns.extend(kill_orphaned_shims(&self.0));
        for name in netns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &name])
                .output();
        }
        // Its pod network's bridge (named after the data dir: one per test).
        if let Some(data_dir) = self.0.ancestors().nth(4) {
            let bridge = rk3sd::runtime::containerd::Paths::new(data_dir).bridge;
            let _ = std::process::Command::new("ip")
                .args(["link", "delete", &bridge])
                .output();
        }
        // Leftover mounts would keep the temporary directory.
        if let Ok(m) = std::fs::read_to_string("/proc/mounts") {
            let root = self
                .0
                .ancestors()
                .nth(4)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| !root.is_empty() && p.starts_with(&root))
                .collect();
            points.sort_by(|a, b| b.cmp(a));
            for p in points {
                let _ = std::process::Command::new("umount")
                    .args(["-l", p])
                    .status();
            }
        }
    }
}

/// Shims of the containerd at `socket` that are still running: after the
/// test killed that containerd's agent (and with it containerd), nothing
/// can stop them through it. Their processes are killed; returns the CNI
/// network namespaces those processes were in.
fn kill_orphaned_shims(socket: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let needle = format!("-address {}", socket.display());
    let pids = |dir: &str| -> Vec<u32> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let named: Vec<(u64, String)> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let ino = std::fs::metadata(e.path()).ok()?.ino();
                    name.starts_with("cni-").then_some((ino, name))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for pid in pids("/proc") {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("containerd-shim") || !cmd.contains(&needle) {
            continue;
        }
        for tid in pids(&format!("/proc/{pid}/task")) {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                if let Ok(ns) = std::fs::metadata(format!("/proc/{child}/ns/net")) {
                    found.extend(
                        named
                            .iter()
                            .filter(|(ino, _)| *ino == ns.ino())
                            .map(|(_, n)| n.clone()),
                    );
                }
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", child])
                    .status();
            }
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    found
}

/// Names of the CNI network namespaces (`/run/netns/cni-…`) a container's
/// `ctr containers info` mentions.
fn cni_netns(info: &str) -> Vec<String> {
    info.split("/netns/")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            name.starts_with("cni-").then_some(name)
        })
        .collect()
}

/// A busybox image from Debian's busybox-static, as a `docker save` archive.
pub fn busybox_archive(name: &str) -> Vec<u8> {
    let bin = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let links: Vec<LayerLink> = [
        "sh", "sleep", "cat", "echo", "ls", "ping", "wget", "nc", "hostname", "ip",
    ]
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

/// The agent's images directory under `dir`, with the test busybox in it.
pub fn with_busybox(dir: &Path) -> std::path::PathBuf {
    let images = dir.join("data/agent/images");
    std::fs::create_dir_all(&images).unwrap();
    let archive = busybox_archive("docker.io/library/busybox:test");
    std::fs::write(images.join("busybox.tar"), archive).unwrap();
    images
}

/// `ctr` against the containerd at `socket`, namespace k8s.io; its
/// output, or a panic with its error.
pub fn ctr(socket: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
