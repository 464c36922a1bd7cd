//! The admin kubeconfig (`/etc/rancher/rk3s/rk3s.yaml`, non-root: under the
//! data dir): client certificate CN=system:admin, O=system:masters, the
//! cluster CA, and the server's local address (https://127.0.0.1:<port> unless
//! --bind-address names another).

use crate::credentials::certs::Pki;
use crate::host::fsutil;
use anyhow::Context;
use base64::Engine;
use std::path::Path;

pub fn default_path(data_dir: &Path) -> std::path::PathBuf {
    if rk3s_api::paths::is_root() {
        std::path::PathBuf::from(rk3s_api::paths::SYSTEM_KUBECONFIG)
    } else {
        data_dir.join("rk3s.yaml")
    }
}

/// Parse `--write-kubeconfig-mode` (octal, e.g. 0600 or 644).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
        .map_err(|_| format!("'{s}' is not an octal file mode (e.g. 0600)"))?;
    if m > 0o777 {
        return Err(format!("'{s}' is not a file mode"));
    }
    Ok(m)
}

/// Render a kubeconfig for `server` with an embedded client certificate.
pub fn render(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: default\n\
         contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\n\
         users:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
}

/// Write the admin kubeconfig, reusing the admin certificate kept in `tls_dir`.
pub fn write_admin(
    pki: &Pki,
    tls_dir: &Path,
    path: &Path,
    mode: u32,
    server_url: &str,
) -> anyhow::Result<()> {
    let crt = tls_dir.join("client-admin.crt");
    let key = tls_dir.join("client-admin.key");
    let (cert_pem, key_pem) = match (fsutil::read_optional(&crt)?, fsutil::read_optional(&key)?) {
        (Some(c), Some(k)) => (
            String::from_utf8_lossy(&c).into_owned(),
            String::from_utf8_lossy(&k).into_owned(),
        ),
        _ => {
            let (c, k) = pki.issue_client_keypair("system:admin", &["system:masters"])?;
            fsutil::write_atomic(&key, k.as_bytes(), 0o600)?;
            fsutil::write_atomic(&crt, c.as_bytes(), 0o644)?;
            (c, k)
        }
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fsutil::ensure_dir(dir, 0o755)?;
        }
    }
    let text = render(server_url, &pki.server_ca_pem, &cert_pem, &key_pem);
    fsutil::write_atomic(path, text.as_bytes(), mode)
        .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes() {
        assert_eq!(super::parse_mode("0600").unwrap(), 0o600);
        assert_eq!(super::parse_mode("644").unwrap(), 0o644);
        assert!(super::parse_mode("rw").is_err());
        assert!(super::parse_mode("7777").is_err());
    }
}
