//! Container log rotation, upstream's container log manager: every
//! `container-log-monitor-interval`, each running container whose log is
//! larger than `container-log-max-size` has it renamed to
//! `<n>.log.<YYYYMMDD-HHMMSS>` and the runtime is asked to reopen it
//! (CRI ReopenContainerLog); the oldest rotated files go so that at most
//! `container-log-max-files` remain, the live one included. As upstream,
//! every rotated file but the newest is then gzipped (`<name>.gz`, written
//! as `.gz.tmp` and renamed, so a crash leaves a whole file or none;
//! leftovers of an interrupted one are cleaned before the next rotation).

use super::settings::Settings;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Rotated siblings of `log` (`<log>.<stamp>`), oldest first.
pub fn rotated(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|stamp| !stamp.ends_with(".tmp"))
        })
        .map(|e| e.path())
        .collect();
    // The stamps sort by time.
    found.sort();
    found
}

/// Remove the oldest rotated files of `log` so that `keep` remain.
pub fn remove_excess(log: &Path, keep: usize) {
    let old = rotated(log);
    let excess = old.len().saturating_sub(keep);
    for p in &old[..excess] {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::debug!(file = %p.display(), error = %e, "could not remove a rotated log");
        }
    }
}

/// Remove what an interrupted compression left: `.tmp` files, and plain
/// files whose `.gz` was completed (upstream's cleanupUnusedLogs).
pub fn cleanup_unused(log: &Path) {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let prefix = format!("{name}.");
    let mut names = std::collections::HashSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Some(n) = e.file_name().to_str() {
            if n.starts_with(&prefix) {
                names.insert(n.to_string());
            }
        }
    }
    for n in &names {
        let gzipped_too = !n.ends_with(".gz") && names.contains(&format!("{n}.gz"));
        if n.ends_with(".tmp") || gzipped_too {
            let _ = std::fs::remove_file(dir.join(n));
        }
    }
}

/// Gzip `p` into `<p>.gz` and remove `p`.
fn compress(p: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let gz = PathBuf::from(format!("{}.gz", p.display()));
    let tmp = PathBuf::from(format!("{}.gz.tmp", p.display()));
    let mut input = std::fs::File::open(p)?;
    let out = std::fs::File::create(&tmp)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let written = std::io::copy(&mut input, &mut enc)
        .and_then(|_| enc.finish())
        .and_then(|mut f| f.flush().map(|_| f));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(p)
}

/// Gzip every rotated file of `log` but the newest (which the runtime may
/// have had open a moment ago, and which upstream also leaves plain).
pub fn compress_older(log: &Path) {
    let old = rotated(log);
    let Some((_, older)) = old.split_last() else {
        return;
    };
    for p in older
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "gz"))
    {
        if let Err(e) = compress(p) {
            tracing::warn!(file = %p.display(), error = %e, "could not compress a rotated container log");
        }
    }
}

/// The name `log` is rotated to now; never one that exists already.
fn rotated_name(log: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let base = format!("{}.{stamp}", log.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() || PathBuf::from(format!("{}.gz", candidate.display())).exists() {
        // Two rotations within a second (a tiny size limit).
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

async fn rotate_one(cri_: &Cri, id: &str, s: &Settings) -> Result<bool, String> {
    let status = cri_
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .status
        .unwrap_or_default();
    if status.log_path.is_empty() {
        return Ok(false);
    }
    let log = PathBuf::from(&status.log_path);
    let Ok(meta) = std::fs::metadata(&log) else {
        return Ok(false);
    };
    if meta.len() <= s.log_max_size {
        return Ok(false);
    }
    cleanup_unused(&log);
    // Room for the file about to be rotated, with the live one.
    remove_excess(&log, s.log_max_files.saturating_sub(2));
    let to = rotated_name(&log);
    std::fs::rename(&log, &to).map_err(|e| format!("renaming {}: {e}", log.display()))?;
    if let Err(e) = cri_
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.to_string(),
        })
        .await
    {
        // Put it back so the container's output still lands in its log.
        let _ = std::fs::rename(&to, &log);
        return Err(format!("reopening the log: {}", e.message()));
    }
    // Compressing a 10 MiB file takes a while: off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || compress_older(&log)).await;
    Ok(true)
}

/// Rotate the logs of running containers until `cancel`.
pub async fn run(cri_: Cri, s: Settings, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(s.log_monitor_interval) => {}
        }
        let running = cri_
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await;
        let Ok(running) = running else { continue };
        for c in running.containers {
            match rotate_one(&cri_, &c.id, &s).await {
                Ok(true) => tracing::debug!(container = %c.id, "container log rotated"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "container log not rotated")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_rotated_logs_go_first() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        std::fs::write(&log, "live").unwrap();
        for stamp in ["20261201-100000", "20261201-090000", "20261201-110000"] {
            std::fs::write(d.path().join(format!("0.log.{stamp}")), stamp).unwrap();
        }
        // Another container's and a half-written file are not ours to count.
        std::fs::write(d.path().join("1.log.20261201-080000"), "").unwrap();
        std::fs::write(d.path().join("0.log.20261201-120000.tmp"), "").unwrap();
        assert_eq!(rotated(&log).len(), 3);
        remove_excess(&log, 1);
        let left: Vec<_> = rotated(&log)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["0.log.20261201-110000"]);
        assert!(log.exists());
        let next = rotated_name(&log);
        assert!(next.to_string_lossy().contains("0.log.2"), "{next:?}");
    }

    #[test]
    fn older_rotated_logs_are_gzipped_and_leftovers_cleaned() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        std::fs::write(&log, "live").unwrap();
        let line = "2026-12-01T10:00:00.000000000Z stdout F hello\n".repeat(1000);
        for stamp in ["20261201-090000", "20261201-100000", "20261201-110000"] {
            std::fs::write(
                d.path().join(format!("0.log.{stamp}")),
                format!("{stamp}{line}"),
            )
            .unwrap();
        }
        // An interrupted compression: its temporary file, and a plain file
        // whose .gz was finished.
        std::fs::write(d.path().join("0.log.20261201-080000.gz.tmp"), "partial").unwrap();
        std::fs::write(d.path().join("0.log.20261201-070000"), "dup").unwrap();
        std::fs::write(d.path().join("0.log.20261201-070000.gz"), "").unwrap();
        cleanup_unused(&log);
        assert!(!d.path().join("0.log.20261201-080000.gz.tmp").exists());
        assert!(!d.path().join("0.log.20261201-070000").exists());
        std::fs::remove_file(d.path().join("0.log.20261201-070000.gz")).unwrap();

        compress_older(&log);
        let names: Vec<_> = rotated(&log)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20261201-090000.gz",
                "0.log.20261201-100000.gz",
                "0.log.20261201-110000"
            ]
        );
        let gz = std::fs::File::open(d.path().join("0.log.20261201-100000.gz")).unwrap();
        assert!(
            gz.metadata().unwrap().len() < line.len() as u64 / 10,
            "compressed"
        );
        let mut back = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, format!("20261201-100000{line}"));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "live");
        // Counting and removing the oldest works the same on .gz files.
        remove_excess(&log, 1);
        assert_eq!(rotated(&log).len(), 1);
    }
}
