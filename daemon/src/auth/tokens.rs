//! Service-account tokens: ES256 JWTs signed by a cluster key.
//!
//! The key set is stored once in the datastore, sealed with the cluster
//! token like the bootstrap data (`/service-account-keys/<hash>`), so every
//! server signs with the same key and verifies what any other issued. The
//! first key signs; a rotation puts a new key first and keeps the old ones
//! for verification until their `retireAt` (the grace period), then drops
//! them. Every server follows the entry, so a rotation on one reaches all.
//!
//! Claims are upstream's: bound tokens (`iss`, `aud`, `exp`, `kubernetes.io`
//! with the service account and the bound pod or secret) and legacy
//! Secret tokens (`kubernetes/serviceaccount`, no expiry, valid while
//! their Secret holds them).

use crate::datastore::{Datastore, DatastoreError, EventKind};
use crate::registry::UserInfo;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// K3s's issuer and API audiences.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const API_AUDIENCES: [&str; 2] = ["https://kubernetes.default.svc.cluster.local", "k3s"];
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the service-account signing keys cannot be read: {0}")]
    Keys(String),
    #[error(transparent)]
    Store(#[from] DatastoreError),
}

/// One stored key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    /// PKCS#8 DER, base64.
    pkcs8: String,
    #[serde(rename = "retireAt", default, skip_serializing_if = "Option::is_none")]
    retire_at: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    keys: Vec<StoredKey>,
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Uncompressed P-256 point (0x04 | x | y).
    point: Vec<u8>,
    retire_at: Option<i64>,
}

/// A P-256 public key as PKIX SubjectPublicKeyInfo DER.
fn spki(point: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
    let mut der =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("static hex");
    der.extend_from_slice(point);
    der
}

impl Key {
    fn from_pkcs8(der: &[u8], retire_at: Option<i64>) -> Result<Self, TokenError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| TokenError::Keys(format!("not a P-256 PKCS#8 key: {e}")))?;
        let point = pair.public_key().as_ref().to_vec();
        // Upstream's key id: the hash of the public key's PKIX encoding.
        let kid = B64URL.encode(Sha256::digest(spki(&point)));
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ec_der(der),
            decoding: DecodingKey::from_ec_der(&point),
            point,
            retire_at,
        })
    }

    fn jwk(&self) -> Value {
        json!({
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": B64URL.encode(&self.point[1..33]), "y": B64URL.encode(&self.point[33..65]),
        })
    }
}

fn new_pkcs8() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .expect("P-256 key generation")
        .as_ref()
        .to_vec()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub user: UserInfo,
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// (kind, name, uid) of the object the token is bound to.
    pub bound: Option<(String, String, String)>,
    /// A legacy token's Secret name.
    pub secret: Option<String>,
    pub audiences: Vec<String>,
}

/// Signs and verifies service-account tokens.
pub struct Issuer {
    secret: String,
    store_key: String,
    keys: RwLock<Arc<Vec<Key>>>,
    /// The longest a requested token may live (`--service-account-max-token-expiration`).
    pub max_expiration: Option<Duration>,
}

fn parse(stored: &Stored) -> Result<Vec<Key>, TokenError> {
    let t = now();
    let keys: Vec<Key> = stored
        .keys
        .iter()
        .filter(|k| k.retire_at.is_none_or(|r| r > t))
        .map(|k| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(&k.pkcs8)
                .map_err(|e| TokenError::Keys(e.to_string()))?;
            Key::from_pkcs8(&der, k.retire_at)
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(TokenError::Keys("no key in the stored set".into()));
    }
    Ok(keys)
}

impl Issuer {
    fn store_key(secret: &str) -> String {
        let h = hex::encode(Sha256::digest(secret.as_bytes()));
        format!("/service-account-keys/{}", &h[..12])
    }

    async fn read(&self, store: &Datastore) -> Result<Option<(Stored, i64)>, TokenError> {
        let Some(kv) = store.get(&self.store_key).await? else {
            return Ok(None);
        };
        let plain = crate::credentials::sealed::open(&self.secret, &kv.value).ok_or_else(|| {
            TokenError::Keys("they cannot be decrypted with this server's token".into())
        })?;
        let s: Stored =
            serde_json::from_slice(&plain).map_err(|e| TokenError::Keys(e.to_string()))?;
        Ok(Some((s, kv.mod_revision)))
    }

    /// The cluster's keys, created by the first server to start.
    pub async fn load(
        store: &Datastore,
        secret: &str,
        max_expiration: Option<Duration>,
    ) -> Result<Self, TokenError> {
        let me = Self {
            secret: secret.to_string(),
            store_key: Self::store_key(secret),
            keys: RwLock::default(),
            max_expiration,
        };
        for _ in 0..3 {
            if let Some((s, _)) = me.read(store).await? {
                *me.keys.write().expect("keys") = Arc::new(parse(&s)?);
                return Ok(me);
            }
            let fresh = Stored {
                keys: vec![StoredKey {
                    pkcs8: base64::engine::general_purpose::STANDARD.encode(new_pkcs8()),
                    retire_at: None,
                }],
            };
            let sealed = crate::credentials::sealed::seal(
                secret,
                &serde_json::to_vec(&fresh).expect("json"),
            );
            match store.create(&me.store_key, sealed).await {
                Ok(_) => {
                    tracing::info!("created the service-account signing key");
                    *me.keys.write().expect("keys") = Arc::new(parse(&fresh)?);
                    return Ok(me);
                }
                // Another server made it a moment ago: read that one.
                Err(DatastoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenError::Keys(
            "the key set kept changing while being read".into(),
        ))
    }

    /// Sign with a new key from now on; tokens of the old keys verify for
    /// `grace` more. Returns the new key's id.
    pub async fn rotate(&self, store: &Datastore, grace: Duration) -> Result<String, TokenError> {
        for _ in 0..8 {
            let (mut s, rev) = self
                .read(store)
                .await?
                .ok_or_else(|| TokenError::Keys("no key set stored".into()))?;
            let t = now();
            let retire = t + grace.as_secs() as i64;
            s.keys.retain(|k| k.retire_at.is_none_or(|r| r > t));
            for k in &mut s.keys {
                k.retire_at = Some(k.retire_at.map_or(retire, |r| r.min(retire)));
            }
            let der = new_pkcs8();
            s.keys.insert(
                0,
                StoredKey {
                    pkcs8: base64::engine::general_purpose::STANDARD.encode(&der),
                    retire_at: None,
                },
            );
            let sealed = crate::credentials::sealed::seal(
                &self.secret,
                &serde_json::to_vec(&s).expect("json"),
            );
            match store.update(&self.store_key, sealed, rev).await {
                Ok(_) => {
                    let keys = parse(&s)?;
                    let kid = keys[0].kid.clone();
                    *self.keys.write().expect("keys") = Arc::new(keys);
                    return Ok(kid);
                }
                Err(DatastoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenError::Keys(
            "the key set kept changing; try again".into(),
        ))
    }

    /// Follow rotations made by any server until `stop`.
    pub async fn follow(self: Arc<Self>, store: Datastore, stop: CancellationToken) {
        let key = self.store_key.clone();
        let apply = |bytes: &[u8]| {
            let parsed = crate::credentials::sealed::open(&self.secret, bytes)
                .and_then(|p| serde_json::from_slice::<Stored>(&p).ok())
                .map(|s| parse(&s));
            match parsed {
                Some(Ok(keys)) => *self.keys.write().expect("keys") = Arc::new(keys),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "ignoring a changed service-account key set")
                }
                None => tracing::warn!("ignoring a service-account key set that does not decrypt"),
            }
        };
        crate::datastore::follow(
            &store,
            &key,
            &stop,
            |_, kvs| {
                for kv in kvs.iter().filter(|kv| kv.key == key) {
                    apply(&kv.value);
                }
            },
            |ev| {
                if ev.key == key && !matches!(ev.kind, EventKind::Delete) {
                    apply(&ev.value);
                }
            },
        )
        .await
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().expect("keys").clone()
    }

    /// Upstream's JWKS document (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let t = now();
        let keys: Vec<Value> = self
            .keys()
            .iter()
            .filter(|k| k.retire_at.is_none_or(|r| r > t))
            .map(Key::jwk)
            .collect();
        json!({ "keys": keys })
    }

    fn sign(&self, claims: &Value) -> String {
        let keys = self.keys();
        let key = &keys[0];
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("ES256 signing")
    }

    /// A bound token (TokenRequest). `bound` is (kind, name, uid).
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        namespace: &str,
        sa: &str,
        sa_uid: &str,
        audiences: &[String],
        expiration: Duration,
        bound: Option<(&str, &str, &str)>,
        node: Option<(&str, &str)>,
    ) -> (String, i64) {
        let iat = now();
        let exp = iat + expiration.as_secs() as i64;
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": sa, "uid": sa_uid},
        });
        if let Some((kind, name, uid)) = bound {
            k8s[kind.to_ascii_lowercase()] = json!({"name": name, "uid": uid});
        }
        if let Some((name, uid)) = node {
            k8s["node"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": audiences, "exp": exp, "iat": iat, "nbf": iat, "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("{}{namespace}:{sa}", crate::registry::admission::SA_PREFIX),
            "kubernetes.io": k8s,
        });
        (self.sign(&claims), exp)
    }

    /// A legacy token for a `kubernetes.io/service-account-token` Secret.
    pub fn issue_legacy(&self, namespace: &str, sa: &str, sa_uid: &str, secret: &str) -> String {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": sa,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
            "sub": format!("{}{namespace}:{sa}", crate::registry::admission::SA_PREFIX),
        });
        self.sign(&claims)
    }

    /// Check signature, issuer, expiry and audience (one of `audiences`).
    /// `None`: not a token of this issuer, or invalid. The objects it names
    /// are checked by the caller.
    pub fn verify(&self, token: &str, audiences: &[&str]) -> Option<Verified> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES256 {
            return None;
        }
        let keys = self.keys();
        let t = now();
        let candidates = keys
            .iter()
            .filter(|k| k.retire_at.is_none_or(|r| r > t))
            .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid));
        for key in candidates {
            // Legacy tokens have no exp and no aud; they are told apart by
            // their issuer after the signature checks out.
            let mut v = Validation::new(Algorithm::ES256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_aud = false;
            v.leeway = 0;
            let Ok(data) = jsonwebtoken::decode::<Value>(token, &key.decoding, &v) else {
                continue;
            };
            return verified(&data.claims, audiences, t);
        }
        None
    }
}

fn verified(c: &Value, audiences: &[&str], t: i64) -> Option<Verified> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    match c["iss"].as_str()? {
        LEGACY_ISSUER => {
            let ns = s(&c["kubernetes.io/serviceaccount/namespace"])?;
            let sa = s(&c["kubernetes.io/serviceaccount/service-account.name"])?;
            let uid = s(&c["kubernetes.io/serviceaccount/service-account.uid"])?;
            Some(Verified {
                user: UserInfo::of_service_account(&ns, &sa, &uid),
                namespace: ns,
                service_account: sa,
                service_account_uid: uid,
                bound: None,
                secret: s(&c["kubernetes.io/serviceaccount/secret.name"]),
                audiences: API_AUDIENCES.iter().map(|a| a.to_string()).collect(),
            })
        }
        ISSUER => {
            let exp = c["exp"].as_i64()?;
            if exp <= t || c["nbf"].as_i64().is_some_and(|nbf| nbf > t + 60) {
                return None;
            }
            let aud: Vec<String> = match &c["aud"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().filter_map(s).collect(),
                _ => return None,
            };
            let matched: Vec<String> = aud
                .iter()
                .filter(|a| audiences.contains(&a.as_str()))
                .cloned()
                .collect();
            if matched.is_empty() {
                return None;
            }
            let k = &c["kubernetes.io"];
            let ns = s(&k["namespace"])?;
            let sa = s(&k["serviceaccount"]["name"])?;
            let uid = s(&k["serviceaccount"]["uid"])?;
            let bound = ["pod", "secret"].iter().find_map(|kind| {
                let o = &k[*kind];
                Some((kind.to_string(), s(&o["name"])?, s(&o["uid"])?))
            });
            let mut user = UserInfo::of_service_account(&ns, &sa, &uid);
            if let Some((kind, name, buid)) = &bound {
                user.extra.insert(
                    format!("authentication.kubernetes.io/{kind}-name"),
                    vec![name.clone()],
                );
                user.extra.insert(
                    format!("authentication.kubernetes.io/{kind}-uid"),
                    vec![buid.clone()],
                );
            }
            if let Some(jti) = s(&c["jti"]) {
                user.extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    vec![format!("JTI={jti}")],
                );
            }
            Some(Verified {
                user,
                namespace: ns,
                service_account: sa,
                service_account_uid: uid,
                bound,
                secret: None,
                audiences: matched,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(keys: Vec<StoredKey>) -> Issuer {
        let i = Issuer {
            secret: "s".into(),
            store_key: Issuer::store_key("s"),
            keys: RwLock::default(),
            max_expiration: None,
        };
        *i.keys.write().unwrap() = Arc::new(parse(&Stored { keys }).unwrap());
        i
    }

    fn key(retire_at: Option<i64>) -> StoredKey {
        StoredKey {
            pkcs8: base64::engine::general_purpose::STANDARD.encode(new_pkcs8()),
            retire_at,
        }
    }

    #[test]
    fn issue_and_verify() {
        let i = issuer(vec![key(None)]);
        let aud = vec!["k3s".to_string()];
        let (t, exp) = i.issue(
            "d",
            "sa",
            "u1",
            &aud,
            Duration::from_secs(600),
            Some(("Pod", "p", "pu")),
            None,
        );
        assert!(exp > now());
        let v = i.verify(&t, &API_AUDIENCES).unwrap();
        assert_eq!(v.user.name, "system:serviceaccount:d:sa");
        assert!(v.user.in_group("system:serviceaccounts:d"));
        assert_eq!(v.bound, Some(("pod".into(), "p".into(), "pu".into())));
        // Wrong audience, tampered, expired, another key: refused.
        assert!(i.verify(&t, &["other"]).is_none());
        let mut bad = t.clone();
        bad.replace_range(bad.len() - 3.., "AAA");
        assert!(i.verify(&bad, &API_AUDIENCES).is_none());
        let (old, _) = i.issue("d", "sa", "u1", &aud, Duration::ZERO, None, None);
        assert!(i.verify(&old, &API_AUDIENCES).is_none());
        let other = issuer(vec![key(None)]);
        assert!(other.verify(&t, &API_AUDIENCES).is_none());
        assert!(i.verify("not.a.jwt", &API_AUDIENCES).is_none());
        assert!(i.verify("", &API_AUDIENCES).is_none());
        let legacy = i.issue_legacy("d", "sa", "u1", "sec");
        let v = i.verify(&legacy, &API_AUDIENCES).unwrap();
        assert_eq!(v.secret.as_deref(), Some("sec"));
        assert_eq!(i.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn retired_keys_stop_verifying() {
        let old = key(None);
        let a = issuer(vec![old.clone()]);
        let (t, _) = a.issue(
            "d",
            "sa",
            "u",
            &["k3s".into()],
            Duration::from_secs(600),
            None,
            None,
        );
        // Rotated with grace: the old key still verifies.
        let b = issuer(vec![
            key(None),
            StoredKey {
                retire_at: Some(now() + 60),
                ..old.clone()
            },
        ]);
        assert!(b.verify(&t, &API_AUDIENCES).is_some());
        assert_eq!(b.jwks()["keys"].as_array().unwrap().len(), 2);
        // Past the grace period it is dropped.
        let c = issuer(vec![
            key(None),
            StoredKey {
                retire_at: Some(now() - 1),
                ..old
            },
        ]);
        assert!(c.verify(&t, &API_AUDIENCES).is_none());
    }
}
