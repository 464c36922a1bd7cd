//! The server's PKI, created on first start under `<data-dir>/server/tls/`
//! and reused afterwards: a server CA (what `/cacerts` serves and the token
//! pins), a client CA (for client certificates), and the serving
//! certificate. The serving certificate is re-issued when a SAN it should
//! carry is missing or when it is within 90 days of expiry; the CAs never
//! change once made.

use crate::host::fsutil::{self, FsError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

pub struct Pki {
    dir: PathBuf,
    pub server_ca_pem: String,
    pub client_ca_pem: String,
    client_ca_key: KeyPair,
    pub serving_cert_pem: String,
    serving_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    p
}

/// Load `<name>.crt`/`<name>.key` or create a new CA pair.
fn load_or_create_ca(dir: &Path, name: &str) -> Result<(String, KeyPair), CertError> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    match (fsutil::read_optional(&crt)?, fsutil::read_optional(&key)?) {
        (Some(c), Some(k)) => {
            let c = String::from_utf8(c).map_err(|_| invalid(&crt, "not PEM text"))?;
            let k = String::from_utf8(k).map_err(|_| invalid(&key, "not PEM text"))?;
            let kp = KeyPair::from_pem(&k).map_err(|e| invalid(&key, &e.to_string()))?;
            Issuer::from_ca_cert_pem(&c, &kp).map_err(|e| invalid(&crt, &e.to_string()))?;
            Ok((c, kp))
        }
        (None, None) => {
            let kp = KeyPair::generate()?;
            let cn = format!("rk3s-{name}@{}", OffsetDateTime::now_utc().unix_timestamp());
            let cert = ca_params(&cn).self_signed(&kp)?;
            fsutil::write_atomic(&key, kp.serialize_pem().as_bytes(), 0o600)?;
            fsutil::write_atomic(&crt, cert.pem().as_bytes(), 0o644)?;
            Ok((cert.pem(), kp))
        }
        _ => Err(invalid(
            &crt,
            "only one of the certificate and its key exists; restore the missing file from backup \
             (replacing the CA would lock out every agent)",
        )),
    }
}

fn invalid(path: &Path, message: &str) -> CertError {
    CertError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ServingMeta {
    sans: BTreeSet<String>,
    not_after_unix: i64,
}

fn san_type(s: &str) -> Result<SanType, rcgen::Error> {
    Ok(match s.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.to_string().try_into()?),
    })
}

impl Pki {
    /// Load or create everything under `dir`; `sans` are what the serving
    /// certificate must cover (127.0.0.1 and localhost are always added).
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Self, CertError> {
        fsutil::ensure_dir(dir, 0o700)?;
        let (server_ca_pem, server_ca_key) = load_or_create_ca(dir, "server-ca")?;
        let (client_ca_pem, client_ca_key) = load_or_create_ca(dir, "client-ca")?;
        let mut want: BTreeSet<String> = sans.iter().map(|s| s.trim().to_string()).collect();
        want.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        want.remove("");
        let crt = dir.join("serving-kube-apiserver.crt");
        let key = dir.join("serving-kube-apiserver.key");
        let meta_path = dir.join("serving-kube-apiserver.json");
        let existing = match (
            fsutil::read_optional(&crt)?,
            fsutil::read_optional(&key)?,
            fsutil::read_optional(&meta_path)?,
        ) {
            (Some(c), Some(k), Some(m)) => serde_json::from_slice::<ServingMeta>(&m)
                .ok()
                .filter(|m| {
                    want.is_subset(&m.sans)
                        && m.not_after_unix
                            > (OffsetDateTime::now_utc() + Duration::days(RENEW_BEFORE_DAYS))
                                .unix_timestamp()
                })
                .and_then(|_| Some((String::from_utf8(c).ok()?, String::from_utf8(k).ok()?))),
            _ => None,
        };
        let (serving_cert_pem, serving_key_pem) = match existing {
            Some(pair) => pair,
            None => {
                let issuer = Issuer::from_ca_cert_pem(&server_ca_pem, &server_ca_key)?;
                let kp = KeyPair::generate()?;
                let mut p = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "rk3s");
                dn.push(DnType::OrganizationName, "rk3s");
                p.distinguished_name = dn;
                p.subject_alt_names = want.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let now = OffsetDateTime::now_utc();
                p.not_before = now - Duration::hours(1);
                p.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
                let cert = p.signed_by(&kp, &issuer)?;
                // Serve the chain so clients trusting only the CA verify it.
                let pem = cert.pem();
                fsutil::write_atomic(&key, kp.serialize_pem().as_bytes(), 0o600)?;
                fsutil::write_atomic(&crt, pem.as_bytes(), 0o644)?;
                let meta = ServingMeta {
                    sans: want.clone(),
                    not_after_unix: p.not_after.unix_timestamp(),
                };
                fsutil::write_atomic(
                    &meta_path,
                    &serde_json::to_vec(&meta).unwrap_or_default(),
                    0o644,
                )?;
                tracing::info!(sans = ?want, "issued serving certificate");
                (pem, kp.serialize_pem())
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            server_ca_pem,
            client_ca_pem,
            client_ca_key,
            serving_cert_pem,
            serving_key_pem,
        })
    }

    /// The bundle `/cacerts` serves; the token's CA hash is its SHA-256.
    pub fn ca_bundle(&self) -> &[u8] {
        self.server_ca_pem.as_bytes()
    }

    /// Sign a client certificate (CN = user, O = groups) for `public_key_pem`'s key.
    pub fn issue_client_cert(
        &self,
        csr_der: &[u8],
        cn: &str,
        orgs: &[&str],
    ) -> Result<String, CertError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let issuer = Issuer::from_ca_cert_pem(&self.client_ca_pem, &self.client_ca_key)?;
        Ok(client_params(cn, orgs)
            .signed_by(&csr.public_key, &issuer)?
            .pem())
    }

    /// A client certificate and a new key for `cn`/`orgs` (admin kubeconfig).
    pub fn issue_client_keypair(
        &self,
        cn: &str,
        orgs: &[&str],
    ) -> Result<(String, String), CertError> {
        let kp = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.client_ca_pem, &self.client_ca_key)?;
        let cert = client_params(cn, orgs).signed_by(&kp, &issuer)?;
        Ok((cert.pem(), kp.serialize_pem()))
    }

    /// rustls config for the HTTPS listener: HTTP/1.1, client certificates
    /// requested (not required) and verified against the client CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
        let certs = rustls_pemfile::certs(&mut self.serving_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))?;
        let key = rustls_pemfile::private_key(&mut self.serving_key_pem.as_bytes())
            .map_err(|e| tls(&e))?
            .ok_or_else(|| CertError::Tls("no private key in serving key file".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.client_ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| tls(&e))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn client_params(cn: &str, orgs: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
    p
}

/// A rustls client config trusting exactly `ca_pem` and presenting the
/// client certificate `cert_pem` with its key.
pub fn client_config_with_identity(
    ca_pem: &[u8],
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let roots = roots_of(ca_pem)?;
    let (certs, key) = identity(cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls(&e))
}

/// Accepts any server certificate: an APIService with
/// `insecureSkipTLSVerify`, where the user asked for exactly that.
/// Signatures are still checked, so the handshake proves the key.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client config that presents `cert_pem` and does not verify
/// the server's certificate (see [`AnyServer`]).
pub fn client_config_unverified(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let (certs, key) = identity(cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls(&e))
}

/// A certificate chain and its key, from PEM.
type Identity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn identity(cert_pem: &str, key_pem: &str) -> Result<Identity, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| CertError::Tls("no private key".into()))?;
    Ok((certs, key))
}

fn roots_of(ca_pem: &[u8]) -> Result<rustls::RootCertStore, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    if roots.is_empty() {
        return Err(CertError::Tls("the CA bundle holds no certificate".into()));
    }
    Ok(roots)
}

/// A rustls client config trusting exactly the CA bundle `ca_pem`.
pub fn client_config_pinned(ca_pem: &[u8]) -> Result<rustls::ClientConfig, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let roots = roots_of(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_reused_and_serving_cert_reissued_for_new_sans() {
        let d = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(d.path(), &["node1".into()]).unwrap();
        let b = Pki::load_or_create(d.path(), &["node1".into()]).unwrap();
        assert_eq!(a.server_ca_pem, b.server_ca_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        let c = Pki::load_or_create(d.path(), &["node1".into(), "10.1.2.3".into()]).unwrap();
        assert_eq!(a.server_ca_pem, c.server_ca_pem, "CA must never change");
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        use std::os::unix::fs::PermissionsExt;
        for k in [
            "server-ca.key",
            "client-ca.key",
            "serving-kube-apiserver.key",
        ] {
            let m = std::fs::metadata(d.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600, "{k}");
        }
        c.server_config().unwrap();
        client_config_pinned(c.ca_bundle()).unwrap();
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        Pki::load_or_create(d.path(), &[]).unwrap();
        std::fs::remove_file(d.path().join("server-ca.key")).unwrap();
        let e = Pki::load_or_create(d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("server-ca.crt") && e.contains("restore"), "{e}");
    }
}
