//! Server side of node passwords: the Secret holding a node's hash.
//!
//! Never fails open: if the secret cannot be read or written the
//! registration is refused (503), unlike K3s which admits the node and
//! retries in the background.

use crate::credentials::nodepassword::{hash, judge, secret_name, HashError, Verdict};
use crate::credentials::nodepassword::{
    ANNOTATION_SET_AT, DATA_HASH, DATA_PENDING_HASH, SECRET_NAMESPACE, SECRET_TYPE,
};
use crate::datastore::objects::{now_rfc3339, ObjectError, Ref};
use crate::datastore::DatastoreError;
use crate::registry::Registry;
use crate::registry::{KubeError, Subject};
use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("unable to verify password for node {node}: hash does not match")]
    Mismatch { node: String },
    #[error("node password secret for {node} is corrupt: {reason}")]
    Corrupt { node: String, reason: String },
    #[error(transparent)]
    Objects(#[from] ObjectError),
    #[error(transparent)]
    Write(#[from] KubeError),
}

impl From<PasswordError> for KubeError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Mismatch { .. } => {
                KubeError::forbidden(Subject::default(), e.to_string())
            }
            PasswordError::Corrupt { .. } => KubeError::Internal(e.to_string()),
            PasswordError::Objects(o) => o.into(),
            PasswordError::Write(k) => k,
        }
    }
}

pub fn secret_ref(node: &str) -> Ref {
    Ref::namespaced("secrets", SECRET_NAMESPACE, &secret_name(node))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn data_field(secret: &Value, key: &str) -> Option<String> {
    let raw = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// The Secret object for a fresh hash.
pub fn new_secret(node: &str, hash: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "immutable": true,
        "metadata": {
            "name": secret_name(node),
            "namespace": SECRET_NAMESPACE,
            "labels": {"rk3s.io/node": node},
            "annotations": {ANNOTATION_SET_AT: now_rfc3339()},
        },
        "data": {DATA_HASH: b64(hash)},
    })
}

/// Run a hash off the async threads, at most one per CPU at a time: each
/// scrypt call holds its work memory, and a registration storm must not
/// turn into hundreds of blocking threads each keeping an allocator arena.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
    });
    let _permit = slots.acquire().await.expect("semaphore never closed");
    tokio::task::spawn_blocking(f)
        .await
        .expect("hash task panicked")
}

/// Check a registering node's password; the first registration stores it.
/// Settles a half-done rotation either way (see [`Verdict`]).
pub async fn verify_or_create(
    registry: &Registry,
    node: &str,
    password: &str,
) -> Result<(), PasswordError> {
    let r = secret_ref(node);
    for _ in 0..4 {
        let Some(secret) = registry.objects.get(&r).await? else {
            let pw = password.to_string();
            let h = blocking(move || hash(&pw)).await;
            match registry.create_at(&r, new_secret(node, &h)).await {
                Ok(_) => {
                    tracing::info!(node, "stored node password hash for first registration");
                    return Ok(());
                }
                // Someone registered the same name at the same moment:
                // verify against theirs.
                Err(KubeError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let corrupt = |reason: &str| PasswordError::Corrupt {
            node: node.to_string(),
            reason: reason.to_string(),
        };
        let current = data_field(&secret, DATA_HASH).ok_or_else(|| corrupt("no data.hash"))?;
        let pending = data_field(&secret, DATA_PENDING_HASH);
        let pw = password.to_string();
        let (cur2, pend2) = (current.clone(), pending.clone());
        let verdict = blocking(move || judge(&pw, &cur2, pend2.as_deref()))
            .await
            .map_err(|e: HashError| corrupt(&e.to_string()))?;
        match verdict {
            Verdict::Mismatch => {
                return Err(PasswordError::Mismatch {
                    node: node.to_string(),
                })
            }
            Verdict::Current {
                drop_pending: false,
            } => return Ok(()),
            Verdict::Current { drop_pending: true } => {
                tracing::info!(
                    node,
                    "node still uses its previous password; dropping the unconfirmed rotation"
                );
                settle(registry, &r, pending.as_deref(), None).await?;
                return Ok(());
            }
            Verdict::Pending => {
                tracing::info!(
                    node,
                    "node uses its rotated password; completing the rotation"
                );
                settle(registry, &r, pending.as_deref(), pending.as_deref()).await?;
                return Ok(());
            }
        }
    }
    Err(ObjectError::Store(DatastoreError::Unavailable(format!(
        "node password secret for {node} keeps changing; try again"
    )))
    .into())
}

/// Resolve a pending rotation: `promote` = the pending hash becomes current;
/// `None` = drop it. Only acts if the pending hash is still `expected`.
pub async fn settle(
    registry: &Registry,
    r: &Ref,
    expected: Option<&str>,
    promote: Option<&str>,
) -> Result<(), PasswordError> {
    let now = now_rfc3339();
    // In place beside the registry: the Secret is immutable to API
    // clients (see `Objects::raw`).
    registry
        .objects
        .raw()
        .modify(r, |s| {
            if data_field(s, DATA_PENDING_HASH).as_deref() != expected || expected.is_none() {
                return false;
            }
            let data = s["data"].as_object_mut().expect("data");
            data.remove(DATA_PENDING_HASH);
            if let Some(h) = promote {
                data.insert(DATA_HASH.into(), json!(b64(h)));
                s["metadata"]["annotations"][ANNOTATION_SET_AT] = json!(now);
            }
            true
        })
        .await?;
    Ok(())
}

/// Record `hash` as pending next to the current one (rotation step 1).
pub async fn set_pending(
    registry: &Registry,
    node: &str,
    new_hash: &str,
) -> Result<bool, PasswordError> {
    let encoded = b64(new_hash);
    Ok(registry
        .objects
        .raw()
        .modify(&secret_ref(node), |s| {
            s["data"][DATA_PENDING_HASH] = json!(encoded);
            true
        })
        .await?
        .is_some())
}

/// When the current hash was set, and whether a rotation is pending.
pub fn describe(secret: &Value) -> (Option<String>, bool) {
    let set_at = secret
        .pointer(&format!(
            "/metadata/annotations/{}",
            ANNOTATION_SET_AT.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            secret["metadata"]["creationTimestamp"]
                .as_str()
                .map(str::to_string)
        });
    (set_at, data_field(secret, DATA_PENDING_HASH).is_some())
}

/// Import K3s's pre-v1.20.2 `server/cred/node-passwd` into secrets, then
/// rename it `node-passwd.migrated`. Nodes that already have a secret keep it.
pub async fn import_legacy(registry: &Registry, path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let Some(bytes) = crate::host::fsutil::read_optional(path)? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&bytes);
    let (entries, errors) = crate::credentials::nodepassword::parse_legacy(&text);
    for e in &errors {
        tracing::warn!(file = %path.display(), line = e.line, reason = e.reason, "skipping bad line in legacy node-passwd file");
    }
    let mut imported = 0;
    for (node, pw) in entries {
        let r = secret_ref(&node);
        if registry.objects.get(&r).await?.is_some() {
            tracing::info!(
                node,
                "legacy node-passwd entry skipped: the node already has a password secret"
            );
            continue;
        }
        let h = blocking(move || hash(&pw)).await;
        match registry.create_at(&r, new_secret(&node, &h)).await {
            Ok(_) | Err(KubeError::AlreadyExists(_)) => imported += 1,
            Err(e) => return Err(e).with_context(|| format!("importing {}", path.display())),
        }
    }
    let done = path.with_file_name("node-passwd.migrated");
    std::fs::rename(path, &done)
        .with_context(|| format!("renaming {} after import", path.display()))?;
    tracing::info!(file = %path.display(), imported, skipped_lines = errors.len(), renamed_to = %done.display(), "imported legacy node passwords");
    Ok(())
}
