//! Auto-deployed manifests: every file in `<data-dir>/server/manifests` is
//! applied at startup and whenever it changes, and tracked by one Addon
//! (`rk3s.io/v1`, kube-system) holding its source, checksum and what it
//! applied. Objects dropped from a file are pruned; deleting the file
//! leaves its objects in place, as K3s documents. Bundled manifests are
//! compiled in and written to the directory at every start, except those
//! turned off with `--disable`, whose objects are removed.
//!
//! Every server writes its bundled files; only the leader applies.

pub mod addons;
pub mod manifest;

use crate::apiserver::apply::{self, ObjectRef};
use crate::apiserver::state::ApiState;
use crate::datastore::objects::{now_rfc3339, Ref};
use crate::host::fsutil;
use crate::registry::{KubeError, Registry};
use crate::server::deploy::addons::{disabled, BUNDLED};
use manifest::ManifestFile;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ADDON_NAMESPACE: &str = "kube-system";
const ADDON_CRD: &str = "addons.rk3s.io";
/// Full rescans catch what inotify missed (network filesystems, overflow).
const RESCAN: Duration = Duration::from_secs(15);

/// Values substituted for `%{NAME}%` in bundled manifests.
pub struct Placeholders {
    pub cluster_domain: String,
    pub server_url: String,
    pub ca_cert_base64: String,
}

impl Placeholders {
    fn fill(&self, text: &str) -> String {
        text.replace("%{CLUSTER_DOMAIN}%", &self.cluster_domain)
            .replace("%{SERVER_URL}%", &self.server_url)
            .replace("%{CA_CERT_BASE64}%", &self.ca_cert_base64)
    }
}

/// Write the bundled manifests into `dir` (created 0700; files 0600), and
/// remove the files of disabled ones.
pub fn write_bundled(
    dir: &Path,
    values: &Placeholders,
    disable: &[String],
) -> Result<(), fsutil::FsError> {
    fsutil::ensure_dir(dir, 0o700)?;
    for (name, text) in BUNDLED {
        let path = dir.join(name);
        if disabled(name, disable) {
            if path.exists() {
                tracing::info!(file = %path.display(), "bundled manifest disabled; removing its file");
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        fsutil::write_atomic(&path, values.fill(text).as_bytes(), 0o600)?;
    }
    Ok(())
}

fn addon_ref(name: &str) -> Ref {
    Ref::namespaced("rk3s.io/addons", ADDON_NAMESPACE, name)
}

fn recorded(addon: &Value) -> Vec<ObjectRef> {
    serde_json::from_value(addon["status"]["objects"].clone()).unwrap_or_default()
}

/// The Addon CRD must exist before any Addon is written, whatever the
/// bundled files say.
async fn ensure_addon_crd(sv: &ApiState) -> Result<(), String> {
    let (_, text) = BUNDLED
        .iter()
        .find(|(name, _)| *name == "rk3s-crds.yaml")
        .expect("the Addon CRD is bundled");
    for obj in manifest::parse(text.as_bytes())? {
        if obj["metadata"]["name"] == ADDON_CRD {
            apply::apply(sv, &obj).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Record the Addon of `file` (create or replace spec and status),
/// through the registry: its spec, then its status through `status`.
async fn write_addon(
    registry: &Registry,
    file: &ManifestFile,
    status: Value,
) -> Result<(), String> {
    let r = addon_ref(&file.addon);
    let spec = json!({"source": file.path.display().to_string(), "checksum": file.checksum});
    let e = |e: KubeError| e.to_string();
    let existed = registry
        .modify_at(&r, |a| {
            if a["spec"] == spec {
                return false;
            }
            a["spec"] = spec.clone();
            true
        })
        .await
        .map_err(e)?
        .is_some();
    if !existed {
        let a = json!({"apiVersion": "rk3s.io/v1", "kind": "Addon", "metadata": {"name": file.addon}, "spec": spec, "status": status});
        match registry.create_at(&r, a).await {
            Ok(_) => return Ok(()),
            Err(KubeError::AlreadyExists(_)) => {}
            Err(err) => return Err(e(err)),
        }
    }
    write_addon_status(registry, &file.addon, |s| *s = status.clone()).await
}

/// Change an Addon's status through its `status` subresource.
async fn write_addon_status(
    registry: &Registry,
    name: &str,
    mut f: impl FnMut(&mut Value),
) -> Result<(), String> {
    let Some((rt, ns, name)) = registry.locate(&addon_ref(name).key()) else {
        return Err("the Addon kind is not served".into());
    };
    registry
        .modify_in(&rt, ns.as_deref(), &name, Some("status"), |a| {
            let before = a["status"].clone();
            f(&mut a["status"]);
            a["status"] != before
        })
        .await
        .map_err(|e| e.to_string())
}

/// Apply one file; prune what an earlier version applied and this one
/// does not have. On any error nothing is pruned and the error lands in
/// the Addon's status, an Event and the log.
async fn apply_file(sv: &ApiState, file: &ManifestFile, previous: Option<&Value>) {
    let before = previous.map(recorded).unwrap_or_default();
    let fail = |error: String, objects: Vec<ObjectRef>| async move {
        tracing::error!(file = %file.path.display(), addon = %file.addon, error = %error, "manifest not applied");
        let status = json!({"objects": objects, "objectCount": objects.len(), "error": error,
            "lastApplied": previous.and_then(|p| p.pointer("/status/lastApplied")).cloned().unwrap_or(Value::Null)});
        if let Err(e) = write_addon(&sv.registry, file, status).await {
            tracing::warn!(error = %e, "could not record the manifest error");
        }
        if let Ok(Some(addon)) = sv.objects.get(&addon_ref(&file.addon)).await {
            apply::event(sv, &addon, true, "ApplyFailed", &error);
        }
    };
    let mut objects = match manifest::parse(&file.content) {
        Ok(o) => o,
        Err(e) => return fail(format!("{}: {e}", file.path.display()), before).await,
    };
    manifest::order(&mut objects);
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    let mut changed = 0;
    for obj in &objects {
        match apply::apply(sv, obj).await {
            Ok((id, c)) => {
                changed += usize::from(c);
                applied.push(id);
            }
            Err(e) => {
                let what = format!(
                    "{}/{}",
                    obj["kind"].as_str().unwrap_or("?"),
                    obj.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                );
                errors.push(format!("{what}: {e}"));
            }
        }
    }
    if !errors.is_empty() {
        // Keep the earlier record too: those objects were not pruned.
        let mut keep = before;
        keep.extend(applied);
        keep.sort();
        keep.dedup();
        return fail(
            format!("{}: {}", file.path.display(), errors.join("; ")),
            keep,
        )
        .await;
    }
    let mut pruned = 0;
    for gone in before.iter().filter(|b| !applied.contains(b)) {
        if gone.kind == "CustomResourceDefinition" && gone.name == ADDON_CRD {
            continue;
        }
        match apply::delete(sv, gone).await {
            Ok(true) => pruned += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(object = %gone, error = %e, "could not prune an object dropped from its manifest")
            }
        }
    }
    let status = json!({"objects": applied, "objectCount": applied.len(), "lastApplied": now_rfc3339(),
        "appliedChecksum": file.checksum, "error": ""});
    if let Err(e) = write_addon(&sv.registry, file, status).await {
        tracing::warn!(addon = %file.addon, error = %e, "could not record the applied manifest; it will be applied again");
        return;
    }
    tracing::info!(file = %file.path.display(), addon = %file.addon, objects = applied.len(), changed, pruned, "applied manifest");
}

/// Delete a disabled bundled manifest's objects and its Addon.
async fn remove_addon(sv: &ApiState, name: &str) {
    let r = addon_ref(name);
    let Ok(Some(addon)) = sv.objects.get(&r).await else {
        return;
    };
    for id in recorded(&addon) {
        if let Err(e) = apply::delete(sv, &id).await {
            tracing::warn!(object = %id, error = %e, "could not remove an object of a disabled manifest");
        }
    }
    let _ = sv.registry.delete_at(&r).await;
    tracing::info!(addon = name, "disabled manifest removed with its objects");
}

/// One pass: apply every new or changed file; note removed ones.
pub async fn sync(sv: &ApiState, dir: &Path) {
    let addons: BTreeMap<String, Value> = match sv
        .objects
        .list("rk3s.io/addons", Some(ADDON_NAMESPACE))
        .await
    {
        Ok((_, list)) => list
            .into_iter()
            .filter_map(|a| Some((a["metadata"]["name"].as_str()?.to_string(), a)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list Addons; will retry");
            return;
        }
    };
    let files = manifest::scan(dir);
    for file in &files {
        let previous = addons.get(&file.addon);
        let current = previous.is_some_and(|a| {
            a["status"]["appliedChecksum"] == file.checksum.as_str()
                && a["status"]["removed"] != true
        });
        if !current {
            apply_file(sv, file, previous).await;
        }
    }
    let dir_text = dir.display().to_string();
    for (name, addon) in &addons {
        let source = addon["spec"]["source"].as_str().unwrap_or("");
        let gone = source.starts_with(&dir_text) && !files.iter().any(|f| &f.addon == name);
        if gone && addon["status"]["removed"] != true {
            tracing::warn!(addon = %name, file = source, "manifest file removed; the objects it applied are left in place (delete them with kubectl)");
            let _ = write_addon_status(&sv.registry, name, |s| {
                s["removed"] = json!(true);
                s["appliedChecksum"] = Value::Null;
                s["error"] = json!("source file removed; its objects are left in place");
            })
            .await;
        }
    }
}

/// The controller, run by the leader: apply at start, then on every change
/// (inotify) and every `RESCAN` as a safety net.
pub async fn controller(sv: Arc<ApiState>, dir: PathBuf, disable: Vec<String>) {
    for (name, _) in BUNDLED {
        if disabled(name, &disable) {
            remove_addon(&sv, &manifest::addon_name(Path::new(name))).await;
        }
    }
    while let Err(e) = ensure_addon_crd(&sv).await {
        tracing::warn!(error = %e, "cannot create the Addon CRD; will retry");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = {
        use notify::Watcher;
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok() {
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::Recursive).map(|()| w))
    };
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifests directory; relying on the periodic rescan");
            None
        }
    };
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sync(&sv, &dir).await;
        tokio::select! {
            _ = rescan.tick() => {}
            Some(()) = rx.recv() => {
                // Let an editor finish writing (write, rename, chmod...).
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

/// What `rk3sctl manifest list` shows: every Addon, by name.
pub async fn summaries(
    objects: &crate::datastore::objects::Objects,
) -> crate::datastore::objects::Result<Vec<rk3s_api::admin::ManifestSummary>> {
    let (_, addons) = objects
        .list("rk3s.io/addons", Some(ADDON_NAMESPACE))
        .await?;
    Ok(addons
        .iter()
        .map(|a| {
            let s = |p: &str| {
                a.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            rk3s_api::admin::ManifestSummary {
                name: s("/metadata/name"),
                file: s("/spec/source"),
                checksum: s("/spec/checksum"),
                objects: recorded(a).len(),
                applied: Some(s("/status/lastApplied")).filter(|t| !t.is_empty()),
                error: s("/status/error"),
            }
        })
        .collect())
}

/// `run_until_cancelled` adaptor for the leader's task list.
pub async fn run(sv: Arc<ApiState>, dir: PathBuf, disable: Vec<String>, cancel: CancellationToken) {
    cancel
        .run_until_cancelled(controller(sv, dir, disable))
        .await;
}
