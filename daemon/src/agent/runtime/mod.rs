//! The node's container runtime: containerd started and supervised by the
//! agent (or an existing CRI runtime named by `--container-runtime-endpoint`),
//! checked over CRI (`Version`, `Status`), with the pause image and the
//! air-gap image tarballs imported. What it finds is published as a
//! [`RuntimeInfo`] the agent sends with its node status, so the node's
//! Ready condition and `containerRuntimeVersion` say what the runtime is.

pub mod containerd;
pub mod cri;
pub mod images;

use rk3s_api::tunnel::RuntimeInfo;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the agent gets its runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeSettings {
    /// Start containerd under `data_dir` (K3s's default).
    Containerd { data_dir: PathBuf },
    /// Use an existing CRI socket (`--container-runtime-endpoint`).
    Endpoint { socket: PathBuf, data_dir: PathBuf },
}

impl RuntimeSettings {
    /// The CRI socket the node's kubelet talks to.
    pub fn socket(&self) -> PathBuf {
        match self {
            Self::Containerd { data_dir } => containerd::Paths::new(data_dir).socket,
            Self::Endpoint { socket, .. } => socket.clone(),
        }
    }

    fn data_dir(&self) -> &std::path::Path {
        match self {
            Self::Containerd { data_dir } | Self::Endpoint { data_dir, .. } => data_dir,
        }
    }
}

/// How often CRI status is polled and the images directory rescanned.
const POLL: Duration = Duration::from_secs(5);

fn not_ready(version: &str, message: impl Into<String>) -> RuntimeInfo {
    RuntimeInfo {
        version: version.to_string(),
        ready: false,
        message: message.into(),
        network_not_ready: None,
    }
}

/// Run the runtime until `cancel`, publishing its state on `status`.
pub async fn run(
    settings: RuntimeSettings,
    imports: images::Imports,
    status: watch::Sender<Option<RuntimeInfo>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let ended = match &settings {
            RuntimeSettings::Endpoint { socket, .. } => {
                watch_runtime(
                    socket,
                    settings.data_dir(),
                    &imports,
                    &status,
                    &cancel,
                    None,
                )
                .await
            }
            RuntimeSettings::Containerd { data_dir } => {
                supervise(data_dir, &imports, &status, &cancel).await
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        let version = status
            .borrow()
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        tracing::warn!(reason = %ended, "container runtime not ready; retrying in {backoff:?}");
        status.send_replace(Some(not_ready(
            &version,
            format!("container runtime is down: {ended}"),
        )));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Start containerd and watch it; returns why it stopped being usable.
async fn supervise(
    data_dir: &std::path::Path,
    imports: &images::Imports,
    status: &watch::Sender<Option<RuntimeInfo>>,
    cancel: &CancellationToken,
) -> String {
    let bin = match containerd::find_binary() {
        Ok(b) => b,
        Err(e) => return e,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return "containerd needs root: run rk3sd as root, or pass --disable-runtime to register this node without one".into();
    }
    let paths = containerd::Paths::new(data_dir);
    if let Err(e) = containerd::write_config(&paths, images::PAUSE_IMAGE) {
        return format!("writing {}: {e}", paths.config.display());
    }
    let mut child = match containerd::spawn(&bin, &paths) {
        Ok(c) => c,
        Err(e) => return format!("starting {}: {e}", bin.display()),
    };
    tracing::info!(socket = %paths.socket.display(), log = %paths.log.display(), "containerd started");
    let result = watch_runtime(
        &paths.socket,
        data_dir,
        imports,
        status,
        cancel,
        Some(&mut child),
    )
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// Wait for the CRI socket, import images, then poll CRI status until the
/// runtime fails (or `child` exits). Returns why.
async fn watch_runtime(
    socket: &std::path::Path,
    data_dir: &std::path::Path,
    imports: &images::Imports,
    status: &watch::Sender<Option<RuntimeInfo>>,
    cancel: &CancellationToken,
    mut child: Option<&mut tokio::process::Child>,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let version = status
        .borrow()
        .as_ref()
        .map(|s| s.version.clone())
        .unwrap_or_default();
    status.send_replace(Some(not_ready(
        &version,
        format!("waiting for the container runtime on {}", socket.display()),
    )));
    let client = loop {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                return format!("containerd exited during startup ({st})");
            }
        }
        match cri::Cri::connect(socket).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > deadline => {
                return format!("no CRI runtime answers on {}: {e}", socket.display())
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return "stopping".into(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    let version = match client.runtime_version().await {
        Ok(v) => v,
        Err(e) => return format!("CRI Version failed: {e}"),
    };
    tracing::info!(runtime = %version, "container runtime answers");
    let ctr = containerd::which("ctr");
    let images_dir = data_dir.join("agent/images");
    let mut seen = images::Seen::new();
    let mut pause_imported = false;
    loop {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                return format!("containerd exited ({st})");
            }
        }
        // The pause image first: without it no sandbox starts. The
        // packages put it among the air-gap images (imported below); a
        // binary run from elsewhere writes its built-in copy.
        if !pause_imported {
            if images_dir.join(images::PAUSE_TARBALL).exists() {
                pause_imported = true;
            } else if let Some(ctr) = &ctr {
                pause_imported = import_pause(imports, ctr, socket, data_dir).await;
            }
        }
        if let Some(ctr) = &ctr {
            for (file, stamp) in images::changed(&images_dir, &seen) {
                match images::import(imports, ctr, socket, &file).await {
                    Ok(names) => {
                        tracing::info!(file = %file.display(), images = ?names, "imported images")
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "image tarball not imported; skipped")
                    }
                }
                seen.insert(file, stamp);
            }
        }
        let info = match client.conditions().await {
            Ok(s) if s.runtime.is_empty() => RuntimeInfo {
                version: version.clone(),
                ready: true,
                message: String::new(),
                network_not_ready: s.network,
            },
            Ok(s) => not_ready(&version, s.runtime.join("; ")),
            Err(e) => return format!("CRI Status failed: {e}"),
        };
        status.send_if_modified(|s| {
            let changed = s.as_ref() != Some(&info);
            *s = Some(info.clone());
            changed
        });
        tokio::select! {
            _ = cancel.cancelled() => return "stopping".into(),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Write the pause image where containerd's import can read it and import it.
async fn import_pause(
    imports: &images::Imports,
    ctr: &std::path::Path,
    socket: &std::path::Path,
    data_dir: &std::path::Path,
) -> bool {
    let file = data_dir.join("agent/containerd/rk3s-pause.tar");
    if let Err(e) = crate::host::fsutil::write_atomic(&file, &images::pause_archive(), 0o644) {
        tracing::warn!(error = %e, "could not write the pause image");
        return false;
    }
    match images::import(imports, ctr, socket, &file).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not import the pause image");
            false
        }
    }
}
