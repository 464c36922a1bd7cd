//! What tests that run pods share: a busybox image from Debian's
//! busybox-static, and the cleanup of what a test's containerd ran.

use crate::{kubectl, stderr, stdout, wait_for, Kubectl, Server, RUNTIME};
use rk3sd::agent::runtime::images::{docker_archive, LayerFile, LayerLink};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Kills what a test's containerd still runs when the test ends (the
/// shims outlive the agent, as they should): declared after the server, so
/// it runs while containerd is still up.
pub struct Containers(std::path::PathBuf);

impl Containers {
    /// For the server or agent whose data dir is `data_dir`.
    pub fn of(data_dir: &Path) -> Self {
        Self(rk3sd::agent::runtime::containerd::Paths::new(data_dir).socket)
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
        let data_dir = self.0.ancestors().nth(4).map(Path::to_path_buf);
        // The node's kubelet would start again what is killed below, making
        // new sandboxes (a bridge, a network namespace, NAT rules) after
        // the last sweep: the daemons of this data dir are frozen first.
        // They are killed at the end, as their `Proc` would do next.
        let frozen = data_dir.as_deref().map(freeze_daemons).unwrap_or_default();
        // Sandboxes' network namespaces: containerd removes them only when
        // the sandbox is stopped through CRI, which a test's end does not
        // do, so they would pile up in /run/netns.
        let mut netns = std::collections::BTreeSet::new();
        let mut ids = Vec::new();
        if let Ok(o) = run(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(o) = run(&["containers", "info", id]) {
                    netns.extend(cni_netns(&String::from_utf8_lossy(&o.stdout)));
                }
                ids.push(id.to_string());
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
        // The portmap plugin's NAT rules of those sandboxes: left behind,
        // the next run's hostPort would be forwarded to a dead pod's IP.
        remove_hostport_rules(&ids);
        // Its pod network's bridge (named after the data dir: one per test).
        if let Some(data_dir) = &data_dir {
            let bridge = rk3sd::agent::runtime::containerd::Paths::new(data_dir).bridge;
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
        for pid in frozen {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The numbered entries of a /proc directory: process or thread ids.
fn numbered(dir: &str) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops (SIGSTOP) the `rk3sd` processes started with `--data-dir
/// <data_dir>`; returns their pids.
fn freeze_daemons(data_dir: &Path) -> Vec<i32> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    let mut frozen = Vec::new();
    for pid in numbered("/proc") {
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let pid = pid as i32;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args.first().is_some_and(|a| a.ends_with(b"rk3sd"))
            && args
                .windows(2)
                .any(|w| w[0] == b"--data-dir" && w[1] == want);
        if ours {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            frozen.push(pid);
        }
    }
    frozen
}

/// Deletes the NAT rules the CNI portmap plugin added for sandboxes `ids`
/// (their comment names the sandbox) and the chains they jump to.
fn remove_hostport_rules(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    for tool in ["iptables", "ip6tables"] {
        let Ok(o) = std::process::Command::new(tool)
            .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
            .output()
        else {
            continue;
        };
        for rule in String::from_utf8_lossy(&o.stdout).lines() {
            if !ids
                .iter()
                .any(|id| rule.contains(&format!("id: \\\"{id}\\\"")))
            {
                continue;
            }
            let Some(chain) = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1) else {
                continue;
            };
            // `-S` quotes the comment for a shell; the same words without
            // the shell's quoting are the rule's specification.
            let Some(spec) = shlex::split(rule.trim_start_matches("-A ")) else {
                continue;
            };
            let mut delete = std::process::Command::new(tool);
            delete.args(["-t", "nat", "-D"]).args(&spec);
            let _ = delete.output();
            for flag in ["-F", "-X"] {
                let _ = std::process::Command::new(tool)
                    .args(["-t", "nat", flag, chain])
                    .output();
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
    for pid in numbered("/proc") {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("containerd-shim") || !cmd.contains(&needle) {
            continue;
        }
        for tid in numbered(&format!("/proc/{pid}/task")) {
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
        // kubectl cp runs tar in the container.
        "tar", "mkdir", "tty", "stty",
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

/// How long a test waits for its node or a pod to become Ready.
pub const READY: Duration = Duration::from_secs(60);

/// The Node `name` as kubectl gets it.
pub fn node(server: &Server, name: &str) -> Option<Value> {
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

/// A node's Ready condition: (status, message).
pub fn ready(n: &Value) -> (String, String) {
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

/// A server in `dir` whose node runs containerd with the busybox image,
/// once the node is Ready on it; the guard removes the test's containers.
pub fn ready_node(dir: &std::path::Path, extra: &[&str]) -> (Server, Containers, Kubectl) {
    with_busybox(dir);
    let args: Vec<&str> = std::iter::once(RUNTIME)
        .chain(extra.iter().copied())
        .collect();
    let server = Server::start(dir, &args);
    let containers = Containers::of(&dir.join("data"));
    let k = Kubectl::new(kubectl(None), &server.kubeconfig(), &dir.join("kcache"));
    let up = wait_for(READY, || {
        let n = node(&server, "server-0")?;
        (ready(&n).0 == "True"
            && n["status"]["nodeInfo"]["containerRuntimeVersion"]
                .as_str()?
                .starts_with("containerd://"))
        .then_some(())
    });
    assert!(
        up.is_some(),
        "the node never became Ready on containerd:\n{}",
        server.log()
    );
    (server, containers, k)
}

/// `kubectl wait --for=condition=Ready pod/<name>`, or fail with the log.
pub fn wait_ready(k: &Kubectl, server: &Server, name: &str) {
    let pod = format!("pod/{name}");
    let o = k.run(&["wait", "--for=condition=Ready", &pod, "--timeout=90s"]);
    assert!(
        o.status.success(),
        "{}{}\n{}",
        stdout(&o),
        stderr(&o),
        server.log()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn iptables_rules_split_into_their_arguments() {
        // `iptables -S` quotes as a shell does, which `shlex` undoes.
        let rule = r#"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"rk3s\" id: \"8a83\"" -m multiport --dports 18080 -j CNI-DN-969b"#;
        let words = shlex::split(rule).unwrap();
        assert_eq!(words[7], r#"dnat name: "rk3s" id: "8a83""#);
        assert_eq!(words.len(), 14, "{words:?}");
        assert_eq!(words.last().unwrap(), "CNI-DN-969b");
    }
}
