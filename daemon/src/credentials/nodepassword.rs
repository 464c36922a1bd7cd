//! Node passwords.
//!
//! Agent side: a random password in `<node-config-dir>/password` (and the
//! optional node id in `<node-config-dir>/id`), created once, written
//! atomically.
//!
//! Server side: only a salted scrypt hash, in the immutable Secret
//! `kube-system/<node>.node-password.rk3s`, in K3s's hash format
//! `$1:<salt hex>:<log2 N>:<r>:<p>:<base64 key>` so hashes carry their own
//! parameters. Node passwords are 128-bit random machine secrets, so key
//! stretching buys little; the cost is chosen so a thousand agents can
//! register in seconds, and verification honours whatever cost a stored
//! hash names (K3s's N=2^15 hashes verify too).
//!
//! Rotation keeps a second, pending hash next to the current one until the
//! agent confirms it stored the new password; registration accepts either
//! and settles the pending state, so no crash between the steps locks a node
//! out (see [`Verdict`]).

use crate::host::fsutil::{self, FsError};
use base64::Engine;
use rand::RngCore;
use std::path::Path;
use subtle::ConstantTimeEq;

/// Default cost: N = 2^8, r = 8, p = 1 (256 KiB, about a third of a
/// millisecond). Passwords are 128 random bits, so guessing is hopeless at
/// any cost; the hash only has to be one-way and salted. The cost is paid
/// once per first registration and once per reconnect, so it bounds how
/// fast a fleet can join or come back after a server restart: at 2^10 the
/// hashes were a fifth of a two-core server's time while 10,000 agents
/// joined. Stored hashes name their own cost, so older ones still verify.
pub const DEFAULT_LOG_N: u8 = 8;
const R: u32 = 8;
const P: u32 = 1;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;

pub const SECRET_TYPE: &str = "rk3s.io/node-password";
pub const SECRET_SUFFIX: &str = ".node-password.rk3s";
pub const SECRET_NAMESPACE: &str = "kube-system";
/// Data key of the current hash.
pub const DATA_HASH: &str = "hash";
/// Data key of the hash of a password sent to the agent but not yet confirmed.
pub const DATA_PENDING_HASH: &str = "pendingHash";
/// Annotation with the time the current hash was set.
pub const ANNOTATION_SET_AT: &str = "rk3s.io/password-set-at";

pub fn secret_name(node: &str) -> String {
    format!("{}{SECRET_SUFFIX}", node.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HashError {
    #[error("malformed node password hash (expected $1:<salt>:<logN>:<r>:<p>:<key>)")]
    Malformed,
    #[error("unsupported scrypt parameters in node password hash")]
    Params,
}

/// Hash `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    hash_with(password, DEFAULT_LOG_N)
}

pub fn hash_with(password: &str, log_n: u8) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    let key = derive(password.as_bytes(), &salt, log_n, R, P).expect("valid default scrypt params");
    format!(
        "$1:{}:{log_n}:{R}:{P}:{}",
        hex::encode(salt),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)
    )
}

fn derive(pw: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<Vec<u8>, HashError> {
    // Bound the cost a stored hash can ask for: a tampered hash must not be
    // able to make every registration burn gigabytes.
    if !(1..=20).contains(&log_n) || r == 0 || r > 32 || p == 0 || p > 16 {
        return Err(HashError::Params);
    }
    let params = scrypt::Params::new(log_n, r, p, KEY_LEN).map_err(|_| HashError::Params)?;
    let mut out = vec![0u8; KEY_LEN];
    scrypt::scrypt(pw, salt, &params, &mut out).map_err(|_| HashError::Params)?;
    Ok(out)
}

/// Constant-time check of `password` against a stored hash string.
pub fn verify(password: &str, stored: &str) -> Result<bool, HashError> {
    let parts: Vec<&str> = stored.split(':').collect();
    let [v, salt, log_n, r, p, key] = parts.as_slice() else {
        return Err(HashError::Malformed);
    };
    if *v != "$1" {
        return Err(HashError::Malformed);
    }
    let salt = hex::decode(salt).map_err(|_| HashError::Malformed)?;
    let log_n: u8 = log_n.parse().map_err(|_| HashError::Malformed)?;
    let r: u32 = r.parse().map_err(|_| HashError::Malformed)?;
    let p: u32 = p.parse().map_err(|_| HashError::Malformed)?;
    let want = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(key.trim_end_matches('='))
        .map_err(|_| HashError::Malformed)?;
    if want.is_empty() || want.len() > 64 {
        return Err(HashError::Malformed);
    }
    let params = scrypt::Params::new(log_n, r, p, want.len()).map_err(|_| HashError::Params)?;
    if !(1..=20).contains(&log_n) || r > 32 || p > 16 {
        return Err(HashError::Params);
    }
    let mut got = vec![0u8; want.len()];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut got).map_err(|_| HashError::Params)?;
    Ok(got.ct_eq(&want).into())
}

/// What a registration's password means for the stored secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Matches the current hash; a leftover pending hash (a rotation the
    /// agent never stored) must be dropped.
    Current {
        drop_pending: bool,
    },
    /// Matches the pending hash: the agent stored the rotated password but
    /// the server did not get to swap. Promote pending to current.
    Pending,
    Mismatch,
}

pub fn judge(password: &str, current: &str, pending: Option<&str>) -> Result<Verdict, HashError> {
    if verify(password, current)? {
        return Ok(Verdict::Current {
            drop_pending: pending.is_some(),
        });
    }
    if let Some(p) = pending {
        if verify(password, p)? {
            return Ok(Verdict::Pending);
        }
    }
    Ok(Verdict::Mismatch)
}

/// A new random node password: 16 random bytes as hex (32 chars).
pub fn generate() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Read `<dir>/password`, creating it (0600, atomically) if absent.
pub fn load_or_create(dir: &Path) -> Result<String, FsError> {
    let path = dir.join("password");
    if let Some(bytes) = fsutil::read_optional(&path)? {
        let pw = String::from_utf8_lossy(&bytes).trim().to_string();
        if !pw.is_empty() {
            return Ok(pw);
        }
        tracing::warn!(path = %path.display(), "node password file is empty; generating a new password");
    }
    let pw = generate();
    store(dir, &pw)?;
    Ok(pw)
}

/// Atomically replace `<dir>/password`.
pub fn store(dir: &Path, password: &str) -> Result<(), FsError> {
    fsutil::ensure_dir(dir, 0o700)?;
    fsutil::write_atomic(
        &dir.join("password"),
        format!("{password}\n").as_bytes(),
        0o600,
    )
}

/// Read `<dir>/id` (8 hex chars), creating it once if absent.
pub fn load_or_create_node_id(dir: &Path) -> Result<String, FsError> {
    let path = dir.join("id");
    if let Some(bytes) = fsutil::read_optional(&path)? {
        let id = String::from_utf8_lossy(&bytes).trim().to_ascii_lowercase();
        if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
        tracing::warn!(path = %path.display(), "node id file is malformed; generating a new id");
    }
    let mut b = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut b);
    let id = hex::encode(b);
    fsutil::ensure_dir(dir, 0o700)?;
    fsutil::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
}

/// A line of K3s's pre-v1.20.2 `server/cred/node-passwd` that could not be used.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyLineError {
    pub line: usize,
    pub reason: &'static str,
}

/// Parse the legacy file: `password,node[,extra...]` per line. Blank lines
/// and `#` comments are skipped. Errors never include the line's text,
/// which holds a password.
pub fn parse_legacy(text: &str) -> (Vec<(String, String)>, Vec<LegacyLineError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(',');
        let pw = fields.next().unwrap_or("").trim();
        let node = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let reason = if pw.is_empty() {
            Some("empty password field")
        } else if node.is_empty() {
            Some("missing node name (expected password,node)")
        } else if crate::kube::names::validate_node_name(&node).is_err() {
            Some("node name is not a valid RFC 1123 name")
        } else {
            None
        };
        match reason {
            Some(reason) => errors.push(LegacyLineError {
                line: i + 1,
                reason,
            }),
            None => entries.push((node, pw.to_string())),
        }
    }
    (entries, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse");
        assert!(h.starts_with("$1:"));
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("correct horsf", &h).unwrap());
        // Salted: two hashes of one password differ.
        assert_ne!(h, hash("correct horse"));
    }

    #[test]
    fn verifies_parameters_from_the_hash() {
        let h = hash_with("pw", 10);
        assert!(h.contains(":10:8:1:"));
        assert!(verify("pw", &h).unwrap());
    }

    #[test]
    fn malformed_hashes_are_errors_not_matches() {
        for bad in [
            "",
            "$1:zz:12:8:1:abc",
            "$2:00:12:8:1:AAAA",
            "$1:00:99:8:1:AAAA",
            "$1:00:12:8:1",
        ] {
            assert!(verify("pw", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotation_verdicts_never_lock_out() {
        let old = hash("old");
        let new = hash("new");
        // Rotation started, agent never stored the new password.
        assert_eq!(
            judge("old", &old, Some(&new)).unwrap(),
            Verdict::Current { drop_pending: true }
        );
        // Agent stored it, server died before swapping.
        assert_eq!(judge("new", &old, Some(&new)).unwrap(), Verdict::Pending);
        assert_eq!(judge("other", &old, Some(&new)).unwrap(), Verdict::Mismatch);
        assert_eq!(
            judge("old", &old, None).unwrap(),
            Verdict::Current {
                drop_pending: false
            }
        );
    }

    #[test]
    fn password_file_is_created_once_and_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("node");
        let a = load_or_create(&dir).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(load_or_create(&dir).unwrap(), a);
        std::fs::write(dir.join("password"), "  spaced\n\n").unwrap();
        assert_eq!(load_or_create(&dir).unwrap(), "spaced");
        use std::os::unix::fs::PermissionsExt;
        store(&dir, "x").unwrap();
        let mode = std::fs::metadata(dir.join("password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn node_id_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let id = load_or_create_node_id(d.path()).unwrap();
        assert_eq!(id.len(), 8);
        assert_eq!(load_or_create_node_id(d.path()).unwrap(), id);
    }

    #[test]
    fn legacy_file_parsing() {
        let text =
            "pw1,node-a\n\n# comment\npw2,Node-B,extra,fields\n,node-c\npw4\npw5,bad_name!\n";
        let (entries, errors) = parse_legacy(text);
        assert_eq!(
            entries,
            vec![
                ("node-a".into(), "pw1".into()),
                ("node-b".into(), "pw2".into())
            ]
        );
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
    }
}
