//! How the API answers: JSON as upstream's serializer writes it.

use crate::registry::Written;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `v` as upstream's JSON serializer writes a response: a newline after.
pub fn json_response(code: StatusCode, v: &impl serde::Serialize) -> Response {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A written object, with upstream's `Warning` headers for dropped fields.
pub fn written_response(code: StatusCode, w: &Written) -> Response {
    let mut r = json_response(code, &w.object);
    for warning in &w.warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", warning.replace('"', "'"))) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}
