//! Harness for process-level tests: real `rk3sd` and `rk3sctl` binaries on
//! 127.0.0.1, each in its own temporary directory, with fast timings.
//!
//! Binaries come from the same target directory as the test executable
//! (`cargo test --workspace` builds them). Every child is killed when its
//! handle drops, and its log is printed if the test is failing.

pub mod netns;
pub mod nspawn;
pub mod pods;

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps/, bench binaries from target/<profile>/.
    let here = exe.parent().expect("exe dir");
    let p = [
        here.join(name),
        here.parent().map(|d| d.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| here.join(name));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// `--name VALUE` from the command line (bench binaries), else `default`.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let v: Vec<String> = std::env::args().collect();
    v.iter()
        .position(|a| a == name)
        .and_then(|i| v.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Poll `f` every 100 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run rk3sctl against `socket`.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("rk3sctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run rk3sctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fast timings so tests do not wait for production defaults.
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "500ms",
    "--reconnect-backoff-max",
    "1s",
];

/// Pass in `extra` to have a server's or agent's node run its container
/// runtime; without it the harness adds `--disable-runtime`, so tests that
/// do not run pods start no containerd.
pub const RUNTIME: &str = "+runtime";

/// `extra` without the harness's markers, plus `--disable-runtime` unless
/// [`RUNTIME`] was asked for.
fn daemon_args(extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = extra.iter().filter(|a| *a != RUNTIME).cloned().collect();
    if !extra.iter().any(|a| a == RUNTIME) {
        out.push("--disable-runtime".into());
    } else if !extra.iter().any(|a| a.contains("eviction-hard")) {
        // Only the memory threshold: the host's own disk (CI machines run
        // with under 10 % free) must not put test nodes under DiskPressure
        // and so taint them against every pod.
        out.push("--kubelet-arg=eviction-hard=memory.available<100Mi".into());
    }
    out
}

/// A child process whose output goes to a log file; killed on drop, its
/// log tail printed if the test is failing.
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
    label: String,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command, log: PathBuf) -> Self {
        let f = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        Self {
            child: Some(child),
            log,
            label: label.to_string(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn signal(&mut self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Wait for exit up to `timeout`; returns the exit code if it exited.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let code = wait_for(timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        Some(code.code().unwrap_or(-1))
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("----- last log lines of {} -----", self.label);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

pub struct Server {
    proc: Proc,
    /// Network namespace the server runs in (see `netns`), if any.
    pub netns: Option<String>,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Server {
    /// Start a server in `dir` (its own data dir, socket, node config) and
    /// wait until it serves. `extra` flags are appended.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(None, dir, extra, env)
    }

    /// Start a server inside network namespace `netns` (when given).
    pub fn start_in(netns: Option<&str>, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut s = Self {
            netns: netns.map(str::to_string),
            proc: Proc {
                child: None,
                log: dir.join("server.log"),
                label: "server".into(),
            },
            dir: dir.to_path_buf(),
            data_dir: dir.join("data"),
            socket: dir.join("server.sock"),
            port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = in_netns(self.netns.as_deref(), &bin("rk3sd"));
        cmd.arg("server")
            .args(["--config", "/dev/null", "--bind-address", "127.0.0.1"])
            .args(["--https-listen-port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-socket")
            .arg(&self.socket)
            .arg("--node-config-dir")
            .arg(self.dir.join("node"))
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args([
                "--node-name",
                "server-0",
                "--node-monitor-grace-period",
                "3s",
                "--node-monitor-period",
                "250ms",
            ])
            .args(FAST)
            .args(daemon_args(&self.extra))
            // The caller's environment must not leak in; the test's may.
            .env_remove("RK3S_TOKEN")
            .env_remove("RK3S_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.proc = Proc::spawn("server", cmd, self.dir.join("server.log"));
        let status = wait_for(Duration::from_secs(30), || {
            if !self.proc.running() {
                panic!("server exited during startup:\n{}", self.log());
            }
            let o = ctl(&self.socket, &["status", "-o", "json"]);
            o.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&o.stdout).unwrap())
        })
        .unwrap_or_else(|| panic!("server did not become ready:\n{}", self.log()));
        let addr = status["api_address"].as_str().unwrap();
        self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server/token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("server/token")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("server/tls/server-ca.crt")).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("server running")
    }

    /// An HTTPS client with the admin's client certificate, trusting only
    /// this server's CA.
    pub fn admin_http(&self) -> reqwest::Client {
        let tls = self.data_dir.join("server/tls");
        let mut pem = std::fs::read(tls.join("client-admin.crt")).unwrap();
        pem.extend(std::fs::read(tls.join("client-admin.key")).unwrap());
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem()).unwrap())
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.socket, args)
    }

    /// `rk3sctl node list -o json`.
    pub fn nodes(&self) -> Vec<Value> {
        let o = self.ctl(&["node", "list", "-o", "json"]);
        assert!(o.status.success(), "node list failed: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("node list JSON")
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }

    /// Wait until `name` has `status` (Ready/Unknown/NotReady).
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            (self.node(name)?["status"] == status).then_some(())
        })
        .is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait(Duration::from_secs(20))
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait(timeout)
    }

    /// Start again with the same directories and port.
    pub fn restart(&mut self) {
        self.launch();
    }

    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}

pub struct Agent {
    proc: Proc,
    pub netns: Option<String>,
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Agent {
    /// Start `rk3sd agent` named `name` in `dir`, joining `server_url` with
    /// the token in `token_file`. Does not wait for registration.
    pub fn start(
        dir: &Path,
        name: &str,
        server_url: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = vec![
            "--server".into(),
            server_url.into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--node-name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_args(dir, name, args, &[])
    }

    pub fn start_args(dir: &Path, name: &str, args: Vec<String>, env: &[(&str, &str)]) -> Self {
        Self::start_in(None, dir, name, args, env)
    }

    /// Start an agent inside network namespace `netns` (when given).
    pub fn start_in(
        netns: Option<&str>,
        dir: &Path,
        name: &str,
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut a = Self {
            netns: netns.map(str::to_string),
            proc: Proc {
                child: None,
                log: dir.join("agent.log"),
                label: format!("agent {name}"),
            },
            name: name.into(),
            dir: dir.to_path_buf(),
            socket: dir.join("agent.sock"),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        a.launch();
        a
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = in_netns(self.netns.as_deref(), &bin("rk3sd"));
        cmd.arg("agent");
        if !self.args.iter().any(|a| a == "--config") {
            cmd.args(["--config", "/dev/null"]);
        }
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--admin-socket")
            .arg(&self.socket)
            .arg("--node-config-dir")
            .arg(self.node_config_dir())
            .args(FAST)
            .args(daemon_args(&self.args))
            .env_remove("RK3S_TOKEN")
            .env_remove("RK3S_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let label = format!("agent {}", self.name);
        self.proc = Proc::spawn(&label, cmd, self.dir.join("agent.log"));
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("agent running")
    }

    pub fn node_config_dir(&self) -> PathBuf {
        self.dir.join("node")
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(self.node_config_dir().join("password"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    pub fn status(&self) -> Option<Value> {
        let o = ctl(&self.socket, &["status", "-o", "json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }

    /// Wait until the agent's own socket reports a registration whose text
    /// starts with `state` (`registered`, `rejected`...).
    pub fn wait_registration(&self, state: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.status().filter(|s| {
                s["registration"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(state))
            })
        })
        .is_some()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn stop(&mut self) -> Option<i32> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait(Duration::from_secs(20))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait(timeout)
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn restart(&mut self) {
        self.launch();
    }

    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}

/// `program`, run inside network namespace `netns` when given. `nsenter`
/// execs the program, so the child's pid is the program's own.
pub fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        // Only the network namespace: `ip netns exec` also remounts /sys,
        // which hides the cgroup mounts a node's runc needs.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A fresh temporary directory for one test.
/// utime + stime of `pid`, in seconds (0 once it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident and peak resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rk3s-test-")
        .tempdir()
        .expect("tempdir")
}

/// A kubectl binary of the machine image: `kubectl` itself, or a versioned
/// one (`kubectl.1.27`) from the same folder.
pub fn kubectl(version: Option<&str>) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v kubectl)\""])
        .output()
        .expect("sh");
    let main = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        main.is_file(),
        "kubectl is not installed (tests/run-all installs it)"
    );
    match version {
        None => main,
        Some(v) => {
            let p = main.with_file_name(format!("kubectl.{v}"));
            assert!(p.is_file(), "{} is missing", p.display());
            p
        }
    }
}

/// The `p` quantile of `v` in milliseconds (0 for none).
pub fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Run a Python `script` (the `kubernetes` client is installed) with the
/// kubeconfig as its first argument.
pub fn python(script: &str, kubeconfig: &Path) -> Output {
    Command::new("python3")
        .args(["-c", script])
        .arg(kubeconfig)
        .output()
        .expect("python3")
}

/// What an extension API server needs behind the aggregator, written to
/// `dir`: a self-signed serving certificate for `cn` (`tls.crt`,
/// `tls.key`) and the CA of the front-proxy client certificate from
/// `kube-system/extension-apiserver-authentication` (`ca.crt`).
pub fn extension_tls(k: &Kubectl, dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let o = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", stderr(&o));
    let ca = wait_for(Duration::from_secs(30), || {
        let o = k.run(&[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
            "-o",
            "jsonpath={.data.requestheader-client-ca-file}",
        ]);
        (o.status.success() && !o.stdout.is_empty()).then(|| stdout(&o))
    })
    .expect("the extension-apiserver-authentication ConfigMap");
    std::fs::write(dir.join("ca.crt"), ca).unwrap();
}

/// The events of a `?watch=1` response, one JSON object per line (the
/// benches follow pods this way).
pub struct WatchEvents {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchEvents {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the watch ends.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if let Ok(ev) = serde_json::from_slice(&line) {
                    return Some(ev);
                }
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

/// Runs one kubectl binary against a kubeconfig with a private cache dir.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
    /// Run inside this network namespace (a test host's).
    pub netns: Option<String>,
}

impl Kubectl {
    pub fn new(bin: PathBuf, kubeconfig: &Path, cache: &Path) -> Self {
        Self {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            cache: cache.to_path_buf(),
            netns: None,
        }
    }

    /// The same, run from test host `netns`.
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_string());
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = in_netns(self.netns.as_deref(), &self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        c.env_remove("KUBECONFIG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// Run with `input` on stdin and require success; returns stdout.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        succeeded(args, self.run_stdin(args, input))
    }

    /// Run with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `kubectl port-forward <target> :<remote>`: the running child and
    /// the local port it chose (from its "Forwarding from" line).
    pub fn port_forward(&self, target: &str, remote: u16) -> (Child, u16) {
        use std::io::BufRead;
        let mut child = self
            .command(&["port-forward", target, &format!(":{remote}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl port-forward");
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line);
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward {target} said {line:?}"));
        (child, port)
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should fail: {}",
            stdout(&o)
        );
        stderr(&o)
    }
}

/// The stdout of kubectl run with `args`, which must have succeeded.
fn succeeded(args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "kubectl {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// A kubeconfig at `path` for `url` (verified with `ca_pem`) that
/// authenticates with a bearer `token`.
pub fn token_kubeconfig(path: &Path, url: &str, ca_pem: &[u8], token: &str) -> PathBuf {
    let ca = path.with_extension("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        ca.display()
    );
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// A real PostgreSQL server (Debian's postgresql package) in a temporary
/// directory, on 127.0.0.1 and a free port, trusting local connections.
/// Runs as the `postgres` user when the tests run as root (PostgreSQL
/// refuses to run as root). Stopped when dropped.
pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Address it listens on (127.0.0.1 unless started in a namespace).
    pub host: String,
    netns: Option<String>,
    /// TLS on: `hostssl` with client-certificate authentication only.
    tls: bool,
    /// fsync on (benchmarks); tests run without it.
    durable: bool,
}

/// PEM files of a test PKI for PostgreSQL over TLS: a CA, a server
/// certificate for 127.0.0.1, and a client certificate for user `rk3s`.
pub struct PgTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl PgTlsFiles {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "rk3s-test-pg-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).unwrap();
        let leaf = |cn: &str, sans: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server_cert, server_key) = leaf("postgres", vec!["127.0.0.1".into()]);
        let (client_cert, client_key) = leaf("rk3s", vec![]);
        let files = Self {
            ca: dir.join("pg-ca.crt"),
            server_cert: dir.join("pg-server.crt"),
            server_key: dir.join("pg-server.key"),
            client_cert: dir.join("pg-client.crt"),
            client_key: dir.join("pg-client.key"),
        };
        std::fs::create_dir_all(dir).unwrap();
        for (path, pem) in [
            (&files.ca, ca_cert.pem()),
            (&files.server_cert, server_cert),
            (&files.server_key, server_key),
            (&files.client_cert, client_cert),
            (&files.client_key, client_key),
        ] {
            std::fs::write(path, pem).unwrap();
        }
        files
    }
}

impl Postgres {
    fn bin_dir() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (tests/run-all installs Debian's postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
            .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
    }

    fn as_pg(&self, cmd: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if is_root() {
                    c.args(["runuser", "-u", "postgres", "--"]);
                }
                c.arg(cmd);
                c
            }
            None => as_postgres(cmd),
        }
    }

    pub fn start() -> Self {
        Self::start_in(None, "127.0.0.1")
    }

    /// Start PostgreSQL in network namespace `netns`, listening on `host`
    /// and trusting the namespace's /24.
    pub fn start_in(netns: Option<&str>, host: &str) -> Self {
        Self::start_with(netns, host, None, false)
    }

    /// Start PostgreSQL on 127.0.0.1 that accepts only TLS connections
    /// authenticated by a client certificate from `tls`.
    pub fn start_tls(tls: &PgTlsFiles) -> Self {
        Self::start_with(None, "127.0.0.1", Some(tls), false)
    }

    /// PostgreSQL on 127.0.0.1 with fsync on, as in production: for
    /// benchmarks that compare it with SQLite.
    pub fn start_durable() -> Self {
        Self::start_with(None, "127.0.0.1", None, true)
    }

    fn start_with(
        netns: Option<&str>,
        host: &str,
        tls: Option<&PgTlsFiles>,
        durable: bool,
    ) -> Self {
        let bin = Self::bin_dir();
        let dir = tempdir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let s = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(s.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            _dir: dir,
            data: data.clone(),
            bin,
            port,
            host: host.to_string(),
            netns: netns.map(str::to_string),
            tls: tls.is_some(),
            durable,
        };
        let o = pg
            .as_pg(&pg.bin.join("initdb"))
            .args(["-A", "trust", "-U", "rk3s", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb: {}", stderr(&o));
        if host != "127.0.0.1" {
            let net = host.rsplit_once('.').map(|(n, _)| n).unwrap_or(host);
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .unwrap();
            use std::io::Write;
            writeln!(hba, "host all all {net}.0/24 trust").unwrap();
        }
        if let Some(files) = tls {
            for (from, to) in [
                (&files.server_cert, "server.crt"),
                (&files.server_key, "server.key"),
                (&files.ca, "ca.crt"),
            ] {
                let dest = data.join(to);
                std::fs::copy(from, &dest).unwrap();
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
                if is_root() {
                    let s = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&dest)
                        .status()
                        .unwrap();
                    assert!(s.success());
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
            )
            .unwrap();
        }
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let (port, data) = (self.port, &self.data);
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses={} -c fsync={}",
            data.display(),
            self.host,
            if self.durable { "on" } else { "off" }
        );
        if self.tls {
            opts.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt");
        }
        let o = self
            .as_pg(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(data.join("log"))
            .arg("-D")
            .arg(data)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pg_ctl start: {}{}",
            stdout(&o),
            std::fs::read_to_string(data.join("log")).unwrap_or_default()
        );
    }

    /// Stop the server (fast shutdown: sessions are cut, as in an outage).
    pub fn stop(&self) {
        let o = self
            .as_pg(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output()
            .unwrap();
        assert!(o.status.success(), "pg_ctl stop: {}", stderr(&o));
    }

    /// Start it again after `stop`.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Connection URL for `db` (created on first use by rk3s).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://rk3s@{}:{}/{db}", self.host, self.port)
    }

    /// The data directory (server.crt, postgresql.conf...).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_pg(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cmd`, run as the postgres user when we are root.
fn as_postgres(cmd: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}
