//! Who is calling: the TLS client certificate (CN = user, O = groups), else
//! a bearer service-account token; then impersonation headers (allowed
//! only with the `impersonate` verb). Non-resource paths (discovery,
//! OpenAPI, health) are authorized here; resource requests by the handlers.
//! Without credentials only the public health and version paths answer
//! (K3s runs the API with anonymous authentication off).

use crate::apiserver::state::ApiState;
use crate::auth::{tokens, Request as AuthzRequest};
use crate::registry::{KubeError, UserInfo};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The identity of one TLS connection's client certificate.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<UserInfo>);

impl Caller {
    /// CN = user, O = groups, as Kubernetes reads client certificates.
    pub fn from_cert(der: &[u8]) -> Self {
        Self(user_of_cert(der))
    }
}

fn user_of_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(UserInfo::new(name, groups))
}

/// The authenticated (and possibly impersonated) requester of a request.
#[derive(Debug, Clone)]
pub struct Requester(pub Arc<UserInfo>);

/// Paths anyone may read, as upstream's `system:public-info-viewer`.
const PUBLIC: [&str; 5] = ["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// A resource request: `/api/v1/<more>` or `/apis/<g>/<v>/<more>`.
fn is_resource_path(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.first() {
        Some(&"api") => segs.len() > 2,
        Some(&"apis") => segs.len() > 3,
        _ => false,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticate, impersonate, and authorize non-resource paths.
pub async fn middleware(State(sv): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let user = match caller.0 {
        Some(u) => Some(u),
        None => match bearer(req.headers()) {
            Some(token) => match sv
                .auth
                .authenticate_token(token, &tokens::API_AUDIENCES)
                .await
            {
                Some((u, _)) => Some((*u).clone()),
                None => return KubeError::unauthorized().into_response(),
            },
            None => None,
        },
    };
    let Some(user) = user else {
        if PUBLIC.contains(&path.as_str()) {
            return next.run(req).await;
        }
        return KubeError::unauthorized().into_response();
    };
    let user = match impersonate(&sv, user, req.headers()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    if !is_resource_path(&path) {
        let verb = non_resource_verb(req.method());
        if let Err(e) = sv.auth.authorize(&user, &AuthzRequest::path(&verb, &path)) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(Requester(Arc::new(user)));
    next.run(req).await
}

fn non_resource_verb(m: &Method) -> String {
    m.as_str().to_ascii_lowercase()
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// Upstream's impersonation filter: every impersonated attribute needs
/// `impersonate` on it (users, groups, serviceaccounts, uids, userextras).
fn impersonate(sv: &ApiState, user: UserInfo, h: &HeaderMap) -> Result<UserInfo, KubeError> {
    let values = |name: &str| -> Vec<String> {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    };
    let target = values(IMPERSONATE_USER).into_iter().next();
    let groups = values(IMPERSONATE_GROUP);
    let uid = values(IMPERSONATE_UID).into_iter().next();
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in h {
        if let Some(key) = k.as_str().strip_prefix(IMPERSONATE_EXTRA) {
            if let Ok(v) = v.to_str() {
                let key = percent_decode(key);
                extra.entry(key).or_default().push(v.to_string());
            }
        }
    }
    let Some(name) = target else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(KubeError::BadRequest(
                "requested impersonation of groups, uid or extra fields without impersonating a user".into(),
            ));
        }
        return Ok(user);
    };
    let check = |r: AuthzRequest<'_>| sv.auth.authorize(&user, &r);
    let sa = name
        .strip_prefix(crate::registry::admission::SA_PREFIX)
        .and_then(|s| s.split_once(':'));
    match sa {
        Some((ns, n)) => check(AuthzRequest::resource(
            "impersonate",
            "",
            "serviceaccounts",
            "",
            ns,
            n,
        ))?,
        None => check(AuthzRequest::resource(
            "impersonate",
            "",
            "users",
            "",
            "",
            &name,
        ))?,
    }
    for g in &groups {
        check(AuthzRequest::resource(
            "impersonate",
            "",
            "groups",
            "",
            "",
            g,
        ))?;
    }
    if let Some(u) = &uid {
        check(AuthzRequest::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            "",
            u,
        ))?;
    }
    for (k, vs) in &extra {
        for v in vs {
            check(AuthzRequest::resource(
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                k,
                "",
                v,
            ))?;
        }
    }
    let mut out = UserInfo {
        name: name.clone(),
        uid: uid.unwrap_or_default(),
        groups,
        extra,
    };
    if let Some((ns, _)) = sa {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !out.groups.contains(&g) {
                out.groups.push(g);
            }
        }
    }
    if name != "system:anonymous" && !out.in_group("system:authenticated") {
        out.groups.push("system:authenticated".into());
    }
    Ok(out)
}

/// Header names carry extra keys percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        assert!(is_resource_path("/api/v1/pods"));
        assert!(is_resource_path("/apis/apps/v1/namespaces/d/deployments"));
        assert!(!is_resource_path("/api/v1"));
        assert!(!is_resource_path("/apis/apps/v1"));
        assert!(!is_resource_path("/apis"));
        assert!(!is_resource_path("/openapi/v3/apis/apps/v1"));
    }

    #[test]
    fn extra_keys_are_decoded() {
        assert_eq!(percent_decode("scopes%2Fa"), "scopes/a");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
        assert_eq!(percent_decode("é%"), "é%");
    }
}
