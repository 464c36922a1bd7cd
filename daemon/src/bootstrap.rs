//! Bootstrap data shared through an external datastore, so every server of
//! a cluster has the same CAs (and so the same token CA hash).
//!
//! Stored at `/bootstrap/<first 12 hex of sha256(token secret)>`, encrypted
//! with AES-256-GCM under a key derived from the token secret (PBKDF2-SHA256),
//! as K3s does: the datastore alone does not reveal the CA keys, and a server
//! with another token finds nothing it can decrypt and stops without writing.
//! The entry is written with create-if-absent, so two servers starting at
//! once on an empty datastore agree on exactly one CA.

use crate::datastore::{Datastore, DatastoreError};
use crate::fsutil;
use anyhow::{bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;

const PREFIX: &str = "/bootstrap/";
const PBKDF2_ROUNDS: u32 = 100_000;
/// The files that make a cluster's identity.
const FILES: [&str; 4] = [
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
];

fn key_for(secret: &str) -> String {
    let h = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("{PREFIX}{}", &h[..12])
}

fn derive(secret: &str, salt: &[u8]) -> LessSafeKey {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).expect("nonzero"),
        salt,
        secret.as_bytes(),
        &mut key,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte key"))
}

/// salt(16) | nonce(12) | ciphertext+tag
pub fn seal(secret: &str, plaintext: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt).expect("rng");
    rng.fill(&mut nonce).expect("rng");
    let mut buf = plaintext.to_vec();
    derive(secret, &salt)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .expect("seal");
    [salt.as_slice(), nonce.as_slice(), buf.as_slice()].concat()
}

pub fn open(secret: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 28 + 16 {
        return None;
    }
    let (salt, rest) = sealed.split_at(16);
    let (nonce, ct) = rest.split_at(12);
    let mut buf = ct.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let plain = derive(secret, salt)
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .ok()?;
    Some(plain.to_vec())
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
    fn seal_and_open() {
        let s = seal("token-secret", b"ca data");
        assert_eq!(open("token-secret", &s).as_deref(), Some(&b"ca data"[..]));
        assert_eq!(open("other-token", &s), None);
        let mut tampered = s.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open("token-secret", &tampered), None);
        assert!(!s.windows(7).any(|w| w == b"ca data"));
    }

    #[test]
    fn key_depends_on_token_only() {
        assert_eq!(key_for("a"), key_for("a"));
        assert_ne!(key_for("a"), key_for("b"));
        assert_eq!(key_for("a").len(), PREFIX.len() + 12);
    }
}
