//! Booted Debian containers for system tests: `systemd-nspawn --boot` on a
//! debootstrap bookworm rootfs (built once, cached under
//! `target/nspawn/bookworm-runtime`), each container on a network namespace of
//! `netns::Net`. Commands run inside through `nsenter` into the
//! container's init, so the host needs neither systemd nor machined.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The cached bookworm rootfs, built with debootstrap when absent.
pub fn rootfs() -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nspawn");
    // The name changes with the package list, so an old cache is not used.
    let root = base.join("bookworm-runtime");
    if root.join("usr/bin/man").exists() && root.join("usr/bin/containerd").exists() {
        return root;
    }
    std::fs::create_dir_all(&base).unwrap();
    let tmp = base.join("bookworm.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let o = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            // rk3s's dependencies too: dpkg -i does not fetch them.
            "--include=systemd,systemd-sysv,dbus,iproute2,procps,libpam-systemd,man-db,\
             containerd,runc,containernetworking-plugins,iptables",
            "bookworm",
        ])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap (apt install debootstrap)");
    assert!(
        o.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, &root).unwrap();
    root
}

pub struct Container {
    pub name: String,
    pub dir: PathBuf,
    netns: String,
    nspawn: Option<Child>,
    log: PathBuf,
    /// The container's init, found once per boot (every command needs it).
    init: std::cell::Cell<Option<u32>>,
}

impl Container {
    /// A fresh copy of the rootfs in `parent/name`, not booted yet.
    pub fn new(parent: &Path, name: &str, netns: &str) -> Self {
        let dir = parent.join(name);
        let o = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(rootfs())
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "copy rootfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(dir.join("etc/hostname"), format!("{name}\n")).unwrap();
        Self {
            name: name.to_string(),
            log: parent.join(format!("{name}.console.log")),
            dir,
            netns: netns.to_string(),
            nspawn: None,
            init: std::cell::Cell::new(None),
        }
    }

    /// Boot and wait until systemd reports the system up.
    pub fn boot(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("systemd-nspawn")
            .arg("--boot")
            .arg("--directory")
            .arg(&self.dir)
            .args([
                "--machine",
                &self.name,
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.netns
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn (apt install systemd-container)");
        self.nspawn = Some(child);
        self.init.set(None);
        let up = crate::wait_for(Duration::from_secs(60), || {
            let o = self.sh("systemctl is-system-running")?;
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            (s == "running" || s == "degraded").then_some(())
        });
        assert!(
            up.is_some(),
            "container {} did not boot: {}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// The host pid of the container's init (systemd), if it runs.
    pub fn leader(&self) -> Option<u32> {
        let nspawn = self.nspawn.as_ref()?.id();
        if let Some(pid) = self.init.get() {
            return Some(pid);
        }
        let pid = Self::find_init(nspawn)?;
        self.init.set(Some(pid));
        Some(pid)
    }

    /// Walk the descendants of the nspawn process for systemd.
    fn find_init(nspawn: u32) -> Option<u32> {
        let mut frontier = vec![nspawn];
        for _ in 0..4 {
            let mut next = Vec::new();
            for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let ppid: u32 = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                if frontier.contains(&ppid) {
                    if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                    {
                        return Some(pid);
                    }
                    next.push(pid);
                }
            }
            frontier = next;
        }
        None
    }

    /// Run `cmd` with /bin/sh inside the container; None if it is not up.
    pub fn sh(&self, cmd: &str) -> Option<Output> {
        let pid = self.leader()?;
        Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-a",
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "/bin/sh",
                "-c",
                cmd,
            ])
            .output()
            .ok()
    }

    /// Run `cmd` inside and require success; returns stdout.
    pub fn ok(&self, cmd: &str) -> String {
        let o = self
            .sh(cmd)
            .unwrap_or_else(|| panic!("container {} is not running", self.name));
        assert!(
            o.status.success(),
            "in {}: {cmd}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Wait for the container to stop on its own (poweroff).
    pub fn wait_stopped(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.nspawn.as_mut() else {
            return true;
        };
        let done = crate::wait_for(timeout, || child.try_wait().ok().flatten()).is_some();
        if done {
            self.nspawn = None;
            self.init.set(None);
        }
        done
    }

    /// A path inside the container, seen from the host.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The container's init first: SIGKILL to the first process of a PID
        // namespace ends every process in it. Killing only systemd-nspawn
        // leaves the booted system (and the containerd the package pulls
        // in) running, reparented to the host's init.
        if let Some(pid) = self.leader() {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // the container's init found under our nspawn process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut c) = self.nspawn.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
