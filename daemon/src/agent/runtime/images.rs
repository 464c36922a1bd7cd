//! Images without a registry, as K3s's air-gap install: every tarball in
//! `<data-dir>/agent/images/` (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`;
//! `docker save` archives or OCI layouts) is imported into containerd's
//! `k8s.io` namespace at start and whenever the files change, and pinned
//! (`io.cri-containerd.pinned=pinned`) so image GC keeps it. containerd 1.6
//! has no import RPC; `ctr images import` does the client-side import, as
//! K3s's Go client does. A bad tarball is reported by name and skipped.
//!
//! Also here: writing a `docker save` archive, which is how rk3s makes its
//! pause image (a static program built with the daemon) and how tests make
//! theirs from Debian's busybox-static.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The pause image every pod sandbox starts from; nothing pulls it.
pub const PAUSE_IMAGE: &str = "docker.io/rancher/mirrored-pause:3.6";
/// The file name the packages give the pause image in the air-gap images
/// directory (`/var/lib/rancher/rk3s/agent/images/`).
pub const PAUSE_TARBALL: &str = "rk3s-pause.tar";
/// The static pause program built with the daemon (`daemon/pause/pause.c`).
pub const PAUSE_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// A file of an image's single layer.
pub struct LayerFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
    pub mode: u32,
}

/// A file of the image layer that is a symlink.
pub struct LayerLink<'a> {
    pub path: &'a str,
    pub target: &'a str,
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn tar_entry(
    out: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut h, path, data)
}

/// A one-layer `docker save` archive tagged `name` (a full reference such
/// as `docker.io/library/busybox:1.35`).
pub fn docker_archive(
    name: &str,
    files: &[LayerFile<'_>],
    links: &[LayerLink<'_>],
    entrypoint: &[&str],
    cmd: &[&str],
) -> std::io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = vec![];
    let all_paths = files
        .iter()
        .map(|f| f.path)
        .chain(links.iter().map(|l| l.path));
    for p in all_paths {
        let mut acc = String::new();
        let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        for d in &parts[..parts.len().saturating_sub(1)] {
            acc.push_str(d);
            acc.push('/');
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        layer.append_data(&mut h, d, std::io::empty())?;
    }
    for f in files {
        tar_entry(&mut layer, f.path.trim_start_matches('/'), f.data, f.mode)?;
    }
    for l in links {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        layer.append_link(&mut h, l.path.trim_start_matches('/'), l.target)?;
    }
    let layer = layer.into_inner()?;
    let diff_id = format!("sha256:{}", sha(&layer));
    let config = serde_json::json!({
        "architecture": crate::host::nodeinfo::go_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": if entrypoint.is_empty() { serde_json::Value::Null } else { serde_json::json!(entrypoint) },
            "Cmd": if cmd.is_empty() { serde_json::Value::Null } else { serde_json::json!(cmd) },
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "rk3s"}],
    });
    let config = serde_json::to_vec(&config).expect("json");
    let config_name = format!("{}.json", sha(&config));
    let layer_dir = sha(&layer);
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]);
    let mut out = tar::Builder::new(Vec::new());
    tar_entry(&mut out, &config_name, &config, 0o644)?;
    tar_entry(&mut out, &format!("{layer_dir}/layer.tar"), &layer, 0o644)?;
    tar_entry(
        &mut out,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
        0o644,
    )?;
    out.into_inner()
}

/// The pause image as a `docker save` archive.
pub fn pause_archive() -> Vec<u8> {
    docker_archive(
        PAUSE_IMAGE,
        &[LayerFile {
            path: "pause",
            data: PAUSE_PROGRAM,
            mode: 0o755,
        }],
        &[],
        &["/pause"],
        &[],
    )
    .expect("an in-memory tar cannot fail")
}

/// Whether `path` names an image tarball K3s would import.
pub fn is_image_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [
        ".tar",
        ".tar.gz",
        ".tgz",
        ".tar.zst",
        ".tar.zstd",
        ".tar.lz4",
        ".tar.bz2",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// What the import saw of each file last time, to import only changes.
pub type Seen = BTreeMap<PathBuf, (u64, SystemTime)>;

/// The image tarballs in `dir` whose size or mtime changed since `seen`.
pub fn changed(dir: &Path, seen: &Seen) -> Vec<(PathBuf, (u64, SystemTime))> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_image_file(p))
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            let stamp = (m.len(), m.modified().ok()?);
            (seen.get(&p) != Some(&stamp)).then_some((p, stamp))
        })
        .collect();
    out.sort();
    out
}

/// Run `ctr` against the runtime's `k8s.io` namespace; stdout, or the
/// last line ctr wrote to stderr.
async fn ctr_k8s(ctr: &Path, socket: &Path, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = tokio::process::Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        // A caller that gives up (a timeout) does not leave ctr running.
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", ctr.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .trim()
            .lines()
            .last()
            .unwrap_or("ctr failed")
            .to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Held while a tarball is imported and pinned, and while image GC decides
/// what to remove and removes it. Between `ctr images import` and the pin
/// label an imported image looks unpinned (containerd 1.6's `ctr` cannot
/// label on import), and GC's first look dates every image it finds as
/// old, so without this a GC pass at agent start could remove an air-gap
/// image it saw in that window.
#[derive(Clone, Default)]
pub struct Imports(std::sync::Arc<tokio::sync::Mutex<()>>);

impl Imports {
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

/// Import one tarball with `ctr` and pin what it brought, holding
/// `imports` throughout. Returns the image names imported.
pub async fn import(
    imports: &Imports,
    ctr: &Path,
    socket: &Path,
    file: &Path,
) -> Result<Vec<String>, String> {
    let _held = imports.hold().await;
    let os = std::ffi::OsStr::new;
    let out = ctr_k8s(
        ctr,
        socket,
        &[
            os("images"),
            os("import"),
            os("--all-platforms"),
            file.as_os_str(),
        ],
    )
    .await?;
    // ctr prints "unpacking <name> (sha256:...)...done" per image.
    let names: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("unpacking "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for n in &names {
        ctr_k8s(
            ctr,
            socket,
            &[
                os("images"),
                os("label"),
                os(n),
                os("io.cri-containerd.pinned=pinned"),
            ],
        )
        .await
        .map_err(|e| format!("pinning {n}: {e}"))?;
    }
    Ok(names)
}

/// The names of the pinned images (labelled by [`import`]). containerd
/// 1.6's CRI does not report the label, so image GC asks here; a runtime
/// that does not answer within 30 s is an error.
pub async fn pinned(ctr: &Path, socket: &Path) -> Result<Vec<String>, String> {
    let os = std::ffi::OsStr::new;
    let args = [
        os("images"),
        os("ls"),
        os("-q"),
        os(r#"labels."io.cri-containerd.pinned"==pinned"#),
    ];
    let listed = ctr_k8s(ctr, socket, &args);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), listed)
        .await
        .map_err(|_| "ctr images ls did not answer within 30 s".to_string())??;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_import_waits_while_image_gc_holds_the_images() {
        let imports = Imports::default();
        let held = imports.hold().await;
        let other = imports.clone();
        // `false` stands in for ctr: the import fails at once when it runs.
        let mut import = tokio::spawn(async move {
            let nowhere = Path::new("/nonexistent");
            import(&other, Path::new("/bin/false"), nowhere, nowhere).await
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), &mut import);
        assert!(
            waited.await.is_err(),
            "the import ran while GC held the images"
        );
        drop(held);
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), import);
        assert!(done
            .await
            .expect("import ran once released")
            .unwrap()
            .is_err());
    }

    #[test]
    fn archives_are_docker_save_shaped() {
        let a = docker_archive(
            "docker.io/library/t:1",
            &[LayerFile {
                path: "bin/busybox",
                data: b"x",
                mode: 0o755,
            }],
            &[LayerLink {
                path: "bin/sh",
                target: "busybox",
            }],
            &[],
            &["sh"],
        )
        .unwrap();
        let mut names = vec![];
        let mut manifest = None;
        for e in tar::Archive::new(a.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "manifest.json" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                manifest = Some(serde_json::from_str::<serde_json::Value>(&s).unwrap());
            }
            names.push(p);
        }
        let m = manifest.unwrap();
        assert_eq!(m[0]["RepoTags"][0], "docker.io/library/t:1");
        assert!(names.contains(&m[0]["Config"].as_str().unwrap().to_string()));
        assert!(names.contains(&m[0]["Layers"][0].as_str().unwrap().to_string()));
        assert!(!PAUSE_PROGRAM.is_empty());
        assert!(is_image_file(Path::new("a.tar.zst")) && !is_image_file(Path::new("a.txt")));
    }
}
