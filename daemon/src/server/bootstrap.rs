//! What a server starts with: the cluster token's secret, the CAs and its
//! serving certificate, and the token files agents join with.
//!
//! With an external datastore the CAs are bootstrap data shared through
//! it, so every server of a cluster has the same CAs (and so the same token
//! CA hash). Stored at `/bootstrap/<first 12 hex of sha256(token secret)>`, encrypted
//! with AES-256-GCM under a key derived from the token secret (PBKDF2-SHA256),
//! as K3s does: the datastore alone does not reveal the CA keys, and a server
//! with another token finds nothing it can decrypt and stops without writing.
//! The entry is written with create-if-absent, so two servers starting at
//! once on an empty datastore agree on exactly one CA.

use super::settings::Settings;
use crate::credentials::certs::Pki;
use crate::credentials::sealed::{open, seal};
use crate::credentials::token::{self, Token};
use crate::datastore::{Datastore, DatastoreError};
use crate::host::fsutil;
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const PREFIX: &str = "/bootstrap/";
/// The files that make a cluster's identity.
const FILES: [&str; 4] = [
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
];

/// A server's credentials, ready to serve with.
pub struct Credentials {
    /// The cluster token's secret.
    pub secret: String,
    pub pki: Pki,
    /// The full token (`K10<CA hash>::server:<secret>`), also in `token_file`.
    pub token: Token,
    /// `--agent-token`, when agents join with a token of their own.
    pub agent_token: Option<Token>,
    pub token_file: PathBuf,
}

/// The token secret, the CAs (the cluster's, through an external
/// datastore) with a serving certificate for `sans`, and the token files.
pub async fn credentials(
    cfg: &Settings,
    store: &Datastore,
    server_dir: &Path,
    sans: &[String],
) -> anyhow::Result<Credentials> {
    let token_file = server_dir.join("token");
    let secret = token_secret(cfg, &token_file)?;
    let tls_dir = server_dir.join("tls");
    if cfg.datastore_endpoint.is_some() {
        // Servers sharing a datastore share their CAs through it.
        reconcile(store, &secret, &tls_dir, || {
            Pki::load_or_create(&tls_dir, sans)
                .map(|_| ())
                .map_err(Into::into)
        })
        .await
        .context("reconciling bootstrap data with the external datastore")?;
    }
    let pki = Pki::load_or_create(&tls_dir, sans).context("preparing TLS certificates")?;
    check_pin(cfg, &pki, &token_file)?;
    let token = Token::secure(pki.ca_bundle(), "server", &secret);
    fsutil::write_atomic(
        &token_file,
        format!("{}\n", token.expose()).as_bytes(),
        0o600,
    )?;
    let agent_token = cfg
        .agent_token
        .as_ref()
        .map(|t| Token::secure(pki.ca_bundle(), "node", t.secret()));
    if let Some(t) = &agent_token {
        fsutil::write_atomic(
            &server_dir.join("agent-token"),
            format!("{}\n", t.expose()).as_bytes(),
            0o600,
        )?;
    }
    Ok(Credentials {
        secret,
        pki,
        token,
        agent_token,
        token_file,
    })
}

/// The cluster token's secret: the configured one, else the stored one,
/// else a new one.
fn token_secret(cfg: &Settings, token_file: &std::path::Path) -> anyhow::Result<String> {
    Ok(match &cfg.token {
        Some(t) => t.secret().to_string(),
        None => match fsutil::read_optional(token_file)? {
            Some(b) => Token::parse(&String::from_utf8_lossy(&b))
                .with_context(|| {
                    format!(
                        "{} is not a valid token; delete it to generate a new one",
                        token_file.display()
                    )
                })?
                .secret()
                .to_string(),
            None => token::random_secret(),
        },
    })
}

/// A configured token pinned to another CA is refused.
fn check_pin(cfg: &Settings, pki: &Pki, token_file: &std::path::Path) -> anyhow::Result<()> {
    let our_hash = token::ca_hash(pki.ca_bundle());
    if let Some(h) = cfg.token.as_ref().and_then(|t| t.ca_hash.as_ref()) {
        if *h != our_hash {
            bail!(
                "the configured token is pinned to CA hash {h}, but this server's CA ({}) hashes to {our_hash}; \
                 use the token from {} or only its secret part",
                pki_dir_hint(cfg),
                token_file.display()
            );
        }
    }
    Ok(())
}

fn pki_dir_hint(cfg: &Settings) -> String {
    cfg.data_dir
        .join("server/tls/server-ca.crt")
        .display()
        .to_string()
}

fn key_for(secret: &str) -> String {
    let h = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("{PREFIX}{}", &h[..12])
}

fn read_local(tls_dir: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let mut m = serde_json::Map::new();
    for f in FILES {
        match fsutil::read_optional(&tls_dir.join(f))? {
            Some(b) => {
                m.insert(
                    f.to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(&b).into_owned()),
                );
            }
            None => return Ok(None),
        }
    }
    Ok(Some(serde_json::Value::Object(m)))
}

fn write_local(tls_dir: &Path, data: &serde_json::Value) -> anyhow::Result<()> {
    fsutil::ensure_dir(tls_dir, 0o700)?;
    for f in FILES {
        let text = data[f]
            .as_str()
            .with_context(|| format!("bootstrap data lacks {f}"))?;
        let mode = if f.ends_with(".key") { 0o600 } else { 0o644 };
        fsutil::write_atomic(&tls_dir.join(f), text.as_bytes(), mode)?;
    }
    // Certificates signed by the CAs just replaced would not verify.
    for stale in [
        "serving-kube-apiserver.crt",
        "serving-kube-apiserver.key",
        "serving-kube-apiserver.json",
        "client-admin.crt",
        "client-admin.key",
    ] {
        let _ = std::fs::remove_file(tls_dir.join(stale));
    }
    Ok(())
}

/// Apply the cluster's bootstrap data if the datastore has it for this
/// token; `false` if there is none.
async fn adopt(store: &Datastore, secret: &str, tls_dir: &Path) -> anyhow::Result<bool> {
    let Some(kv) = store.get(&key_for(secret)).await? else {
        return Ok(false);
    };
    let plain = open(secret, &kv.value).context(
        "bootstrap data in the datastore cannot be decrypted with this token (it is corrupt, or the token changed)",
    )?;
    let data: serde_json::Value =
        serde_json::from_slice(&plain).context("bootstrap data is not valid JSON")?;
    if read_local(tls_dir)? != Some(data.clone()) {
        tracing::info!("using the cluster CA from the datastore");
        write_local(tls_dir, &data)?;
    }
    Ok(true)
}

/// Make the local CA files match the cluster's. `make_local` creates a CA
/// in `tls_dir` when neither side has one yet.
pub async fn reconcile(
    store: &Datastore,
    secret: &str,
    tls_dir: &Path,
    make_local: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if adopt(store, secret, tls_dir).await? {
        return Ok(());
    }
    let (_, others) = store.list(PREFIX).await?;
    if others.iter().any(|kv| kv.key == key_for(secret)) {
        // Written by another server of this cluster a moment ago.
        return adopt(store, secret, tls_dir).await.map(|_| ());
    }
    if !others.is_empty() {
        bail!(
            "bootstrap data already found in the datastore and encrypted with a different token; \
             use the cluster's token (from <data-dir>/server/token on an existing server). Nothing was written"
        );
    }
    if read_local(tls_dir)?.is_none() {
        make_local()?;
    }
    let data = read_local(tls_dir)?.context("CA files missing after creation")?;
    let sealed = seal(secret, data.to_string().as_bytes());
    match store.create(&key_for(secret), sealed).await {
        Ok(_) => {
            tracing::info!("stored the cluster CA in the datastore (encrypted with the token)");
            Ok(())
        }
        // Another server won the race: adopt its CA.
        Err(DatastoreError::AlreadyExists(_)) => adopt(store, secret, tls_dir).await.map(|_| ()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_token_only() {
        assert_eq!(key_for("a"), key_for("a"));
        assert_ne!(key_for("a"), key_for("b"));
        assert_eq!(key_for("a").len(), PREFIX.len() + 12);
    }
}
