//! Pod volumes on the node, under `<data-dir>/agent/pods/<uid>/volumes/`:
//! emptyDir, hostPath, configMap, secret, downwardAPI and projected
//! (service-account token, ConfigMap and Secret items, downward API), as
//! files the containers get bind-mounted. ConfigMap, Secret and token
//! contents are refreshed while the pod runs (a token at 80 % of its life),
//! so updates reach running pods.

use super::downward::{file_field, resource};
use super::node::Allocatable;
use crate::agent::apiclient::{Api, ApiError};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often ConfigMap and Secret volumes are re-read.
pub const REFRESH: Duration = Duration::from_secs(30);

/// A pod's volumes as host paths, by volume name.
pub type Prepared = BTreeMap<String, PathBuf>;

/// What the kubelet remembers of a pod's volumes.
#[derive(Default)]
pub struct VolumeState {
    pub prepared: Option<Prepared>,
    pub refreshed: Option<Instant>,
    /// Projected tokens: renew after this instant.
    pub token_renew: Option<Instant>,
}

fn write(path: &Path, data: &[u8], mode: i32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    crate::host::fsutil::write_atomic(path, data, (mode & 0o777) as u32).map_err(|e| e.to_string())
}

/// A relative path inside a volume, refusing `..` and absolute paths.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "volume path {rel:?} must be relative and stay inside the volume"
        ));
    }
    Ok(dir.join(p))
}

/// Write `data` (key → bytes) as files, all keys or the listed items.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: i32,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                write(&inside(dir, k)?, v, mode)?;
            }
        }
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("{what} has no key {:?}", it.key))?;
                write(&inside(dir, &it.path)?, v, it.mode.unwrap_or(mode))?;
            }
        }
    }
    Ok(())
}

fn downward(
    dir: &Path,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
    node: &Allocatable,
) -> Result<(), String> {
    for it in items {
        let v = if let Some(f) = &it.field_ref {
            file_field(pod, &f.field_path)
                .ok_or_else(|| format!("unsupported downward API field {:?}", f.field_path))?
        } else if let Some(r) = &it.resource_field_ref {
            // A volume's reference must name its container.
            resource(pod, "", r, node)?
        } else {
            continue;
        };
        write(
            &inside(dir, &it.path)?,
            v.as_bytes(),
            it.mode.unwrap_or(mode),
        )?;
    }
    Ok(())
}

/// Key → bytes, as volumes and env read ConfigMaps and Secrets.
pub type Data = BTreeMap<String, Vec<u8>>;

/// GET `/api/v1/namespaces/<ns>/<resource>/<name>` as `T`; `None` if absent.
async fn read<T: serde::de::DeserializeOwned>(
    api: &Api,
    ns: &str,
    resource: &str,
    name: &str,
) -> Result<Option<T>, String> {
    match api
        .get(&format!("/api/v1/namespaces/{ns}/{resource}/{name}"))
        .await
    {
        Ok(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(ApiError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// ConfigMap `name`'s data and binaryData (`None` if it does not exist).
pub async fn config_map(api: &Api, ns: &str, name: &str) -> Result<Option<Data>, String> {
    Ok(read::<ConfigMap>(api, ns, "configmaps", name)
        .await?
        .map(|cm| {
            let text = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()));
            let binary = cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0));
            text.chain(binary).collect()
        }))
}

/// Secret `name`'s data (`None` if it does not exist).
pub async fn secret(api: &Api, ns: &str, name: &str) -> Result<Option<Data>, String> {
    Ok(read::<Secret>(api, ns, "secrets", name).await?.map(|s| {
        let data = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        let text = s
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        data.chain(text).collect()
    }))
}

/// Write a ConfigMap's or Secret's keys, or accept its absence if optional.
fn write_source(
    dir: &Path,
    data: Option<Data>,
    items: Option<&Vec<KeyToPath>>,
    mode: i32,
    optional: Option<bool>,
    what: String,
) -> Result<(), String> {
    match data {
        Some(d) => write_keys(dir, &d, items, mode, &what),
        None if optional == Some(true) => Ok(()),
        None => Err(format!("{what} not found")),
    }
}

/// A token for the pod's service account, bound to the pod. Returns the
/// token and its lifetime.
async fn token(
    api: &Api,
    pod: &Pod,
    audience: Option<&str>,
    seconds: i64,
) -> Result<(String, Duration), String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let mut spec = json!({
        "expirationSeconds": seconds,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid},
    });
    if let Some(a) = audience {
        spec["audiences"] = json!([a]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let r = api
        .post(
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            &body,
        )
        .await
        .map_err(|e| format!("requesting a token for service account {ns}/{sa}: {e}"))?;
    let token = r
        .pointer("/status/token")
        .and_then(Value::as_str)
        .ok_or("the token request returned no token")?;
    let life = r
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(seconds);
    Ok((token.to_string(), Duration::from_secs(life.max(60) as u64)))
}

/// Make (or refresh) one volume of `pod` under `root`: its host path.
async fn volume(
    api: &Api,
    pod: &Pod,
    v: &Volume,
    root: &Path,
    node: &Allocatable,
    renew: &mut Option<Instant>,
) -> Result<PathBuf, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let dir = root.join("volumes").join(&v.name);
    let path = if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
            std::fs::create_dir_all(&p).map_err(|e| format!("hostPath {}: {e}", p.display()))?;
        }
        p
    } else if v.empty_dir.is_some() {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        dir
    } else if let Some(c) = &v.config_map {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        write_source(
            &dir,
            config_map(api, &ns, &c.name).await?,
            c.items.as_ref(),
            c.default_mode.unwrap_or(0o644),
            c.optional,
            format!("configmap {:?}", c.name),
        )?;
        dir
    } else if let Some(s) = &v.secret {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let name = s.secret_name.clone().unwrap_or_default();
        write_source(
            &dir,
            secret(api, &ns, &name).await?,
            s.items.as_ref(),
            s.default_mode.unwrap_or(0o644),
            s.optional,
            format!("secret {name:?}"),
        )?;
        dir
    } else if let Some(d) = &v.downward_api {
        downward(
            &dir,
            pod,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode.unwrap_or(0o644),
            node,
        )?;
        dir
    } else if let Some(p) = &v.projected {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mode = p.default_mode.unwrap_or(0o644);
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let (tok, life) = token(
                    api,
                    pod,
                    t.audience.as_deref(),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .await?;
                write(&inside(&dir, &t.path)?, tok.as_bytes(), mode)?;
                let at = Instant::now() + life.mul_f64(0.8);
                *renew = Some(renew.map_or(at, |r: Instant| r.min(at)));
            }
            if let Some(c) = &src.config_map {
                write_source(
                    &dir,
                    config_map(api, &ns, &c.name).await?,
                    c.items.as_ref(),
                    mode,
                    c.optional,
                    format!("configmap {:?}", c.name),
                )?
            }
            if let Some(s) = &src.secret {
                write_source(
                    &dir,
                    secret(api, &ns, &s.name).await?,
                    s.items.as_ref(),
                    mode,
                    s.optional,
                    format!("secret {:?}", s.name),
                )?
            }
            if let Some(d) = &src.downward_api {
                downward(
                    &dir,
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    node,
                )?;
            }
        }
        dir
    } else {
        // Kinds without a node-side implementation yet (PVCs, CSI...).
        return Err(format!(
            "volume {:?}: this kind of volume is not supported yet",
            v.name
        ));
    };
    Ok(path)
}

/// Make (or refresh) every volume of `pod` under `root`. A volume that
/// cannot be made fails the pod's start with upstream's FailedMount
/// message.
pub async fn prepare(
    api: &Api,
    pod: &Pod,
    root: &Path,
    node: &Allocatable,
    st: &mut VolumeState,
) -> Result<Prepared, String> {
    let fresh = st.refreshed.is_some_and(|t| t.elapsed() < REFRESH)
        && st.token_renew.is_none_or(|t| Instant::now() < t);
    if let (true, Some(p)) = (fresh, &st.prepared) {
        return Ok(p.clone());
    }
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Prepared::new();
    let mut renew: Option<Instant> = None;
    for v in &volumes {
        let path = volume(api, pod, v, root, node, &mut renew)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    // A token renewed earlier keeps its schedule until this pass made a new one.
    st.token_renew = renew.or(st.token_renew.filter(|_| fresh));
    st.refreshed = Some(Instant::now());
    st.prepared = Some(out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_inside_the_volume() {
        let d = tempfile::tempdir().unwrap();
        let data = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        write_keys(d.path(), &data, None, 0o644, "cm").unwrap();
        assert_eq!(std::fs::read(d.path().join("b")).unwrap(), b"2");
        let items = vec![KeyToPath {
            key: "a".into(),
            path: "sub/x".into(),
            mode: Some(0o600),
        }];
        write_keys(d.path(), &data, Some(&items), 0o644, "cm").unwrap();
        assert_eq!(std::fs::read(d.path().join("sub/x")).unwrap(), b"1");
        let escape = vec![KeyToPath {
            key: "a".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(write_keys(d.path(), &data, Some(&escape), 0o644, "cm").is_err());
        let missing = vec![KeyToPath {
            key: "z".into(),
            path: "z".into(),
            mode: None,
        }];
        assert!(write_keys(d.path(), &data, Some(&missing), 0o644, "cm")
            .unwrap_err()
            .contains("no key \"z\""));
    }
}
