//! Bearer service-account tokens: the signature and claims (`tokens`),
//! then the objects they name, read live: the service account (same uid),
//! the bound pod or secret (same uid), or for a legacy token its Secret
//! still holding it. Successes are remembered for 10 s, as upstream's token
//! cache does; failures are not.

use super::Auth;
use crate::datastore::objects::Ref;
use crate::registry::UserInfo;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
const TOKEN_CACHE_MAX: usize = 4096;

type Entry = (Instant, Arc<UserInfo>, Vec<String>);

/// Recently verified tokens by the hash of token and audiences.
#[derive(Default)]
pub struct TokenCache(Mutex<HashMap<[u8; 32], Entry>>);

impl Auth {
    /// A service-account token's user (and the audiences it was accepted
    /// for), checked against the objects it names: the service account (same
    /// uid), the bound pod or secret (same uid), or for a legacy token its
    /// Secret still holding it.
    pub async fn authenticate_token(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Option<(Arc<UserInfo>, Vec<String>)> {
        let mut key = Sha256::new();
        key.update(token.as_bytes());
        for a in audiences {
            key.update([0]);
            key.update(a.as_bytes());
        }
        let key: [u8; 32] = key.finalize().into();
        if let Some((at, u, aud)) = self.token_cache.0.lock().expect("token cache").get(&key) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Some((u.clone(), aud.clone()));
            }
        }
        let v = self.tokens.verify(token, audiences)?;
        let uid_of = |o: &serde_json::Value| {
            o.pointer("/metadata/uid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let get = |r: Ref| async move { self.objects.get(&r).await.ok().flatten() };
        let sa = get(Ref::namespaced(
            "serviceaccounts",
            &v.namespace,
            &v.service_account,
        ))
        .await?;
        if uid_of(&sa).as_deref() != Some(v.service_account_uid.as_str()) {
            return None;
        }
        if let Some((kind, name, uid)) = &v.bound {
            let live = match kind.as_str() {
                "pod" => match self.pods.pod_by_uid(uid) {
                    Some(p) => Some(p.uid.clone()),
                    // Not seen here yet (made on another server a moment ago)?
                    None => get(Ref::namespaced("pods", &v.namespace, name))
                        .await
                        .and_then(|p| uid_of(&p)),
                },
                _ => get(Ref::namespaced("secrets", &v.namespace, name))
                    .await
                    .and_then(|s| uid_of(&s)),
            };
            if live.as_deref() != Some(uid.as_str()) {
                return None;
            }
        }
        if let Some(secret) = &v.secret {
            let s = get(Ref::namespaced("secrets", &v.namespace, secret)).await?;
            use base64::Engine;
            let stored = s
                .pointer("/data/token")
                .and_then(serde_json::Value::as_str)
                .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                stored.as_slice(),
                token.as_bytes(),
            )) {
                return None;
            }
        }
        let user = Arc::new(v.user);
        let mut cache = self.token_cache.0.lock().expect("token cache");
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (at, ..)| at.elapsed() < TOKEN_CACHE_TTL);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), user.clone(), v.audiences.clone()));
        Some((user, v.audiences))
    }
}
