//! Cluster tokens, in K3s's format: `K10<sha256 of the CA bundle>::<user>:<secret>`
//! (secure: the agent pins the CA) or a bare secret (no pinning).

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

const PREFIX: &str = "K10";
const HASH_HEX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("token must not be empty")]
    Empty,
    #[error(
        "invalid token CA hash length: expected {HASH_HEX_LEN} hex characters after K10, got {0}"
    )]
    HashLength(usize),
    #[error("invalid token CA hash: not hexadecimal")]
    HashNotHex,
    #[error("invalid token format: expected K10<ca-hash>::<user>:<secret> or a bare secret")]
    Format,
    #[error("invalid token: the secret part is empty")]
    EmptySecret,
    #[error("invalid token: it contains whitespace or control characters")]
    BadCharacters,
}

/// A parsed token. `Debug`/`Display` never reveal the secret.
#[derive(Clone, PartialEq)]
pub struct Token {
    /// Lowercase hex SHA-256 of the cluster CA bundle, when the token pins one.
    pub ca_hash: Option<String>,
    pub username: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("ca_hash", &self.ca_hash)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Token {
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(TokenError::Empty);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::BadCharacters);
        }
        let Some(rest) = raw.strip_prefix(PREFIX) else {
            return Ok(Self::bare(raw));
        };
        let Some((hash, creds)) = rest.split_once("::") else {
            // "K10..." without "::" is a bare secret that happens to start with K10.
            return Ok(Self::bare(raw));
        };
        if hash.len() != HASH_HEX_LEN {
            return Err(TokenError::HashLength(hash.len()));
        }
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::HashNotHex);
        }
        let (user, secret) = creds.split_once(':').ok_or(TokenError::Format)?;
        if user.is_empty() {
            return Err(TokenError::Format);
        }
        if secret.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        Ok(Self {
            ca_hash: Some(hash.to_ascii_lowercase()),
            username: user.to_string(),
            secret: secret.to_string(),
        })
    }

    fn bare(secret: &str) -> Self {
        Self {
            ca_hash: None,
            username: "server".into(),
            secret: secret.to_string(),
        }
    }

    /// A secure token for `secret`, pinned to the CA bundle `ca_pem`.
    pub fn secure(ca_pem: &[u8], user: &str, secret: &str) -> Self {
        Self {
            ca_hash: Some(ca_hash(ca_pem)),
            username: user.to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The full token text. Only for the token file and `rk3sctl token`.
    pub fn expose(&self) -> String {
        match &self.ca_hash {
            Some(h) => format!("{PREFIX}{h}::{}:{}", self.username, self.secret),
            None => self.secret.clone(),
        }
    }

    /// Constant-time comparison of the secret part.
    pub fn secret_matches(&self, presented: &str) -> bool {
        self.secret.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// SHA-256 of the CA bundle as agents compute it from `/cacerts`.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// A new random secret: 32 hex characters (128 bits), as K3s generates.
pub fn random_secret() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2b4a7c0e0c8a2c3e8f4f2dcd7c5c7a7d9f1a0b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn secure_token_round_trips() {
        let t = Token::parse(&format!("K10{HASH}::server:s3cret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(HASH));
        assert_eq!(t.username, "server");
        assert_eq!(t.secret(), "s3cret");
        assert_eq!(t.expose(), format!("K10{HASH}::server:s3cret"));
        // Secrets with colons keep everything after the first one.
        let t = Token::parse(&format!("K10{HASH}::node:a:b")).unwrap();
        assert_eq!((t.username.as_str(), t.secret()), ("node", "a:b"));
    }

    #[test]
    fn bare_tokens_do_not_pin() {
        let t = Token::parse("  justasecret\n").unwrap();
        assert_eq!(t.ca_hash, None);
        assert_eq!(t.secret(), "justasecret");
        assert_eq!(Token::parse("K10abc").unwrap().ca_hash, None);
    }

    #[test]
    fn malformed_tokens_are_rejected_with_reasons() {
        assert_eq!(Token::parse(""), Err(TokenError::Empty));
        assert_eq!(Token::parse("   "), Err(TokenError::Empty));
        assert_eq!(
            Token::parse("K10abcd::server:x"),
            Err(TokenError::HashLength(4))
        );
        let nothex = "z".repeat(64);
        assert_eq!(
            Token::parse(&format!("K10{nothex}::server:x")),
            Err(TokenError::HashNotHex)
        );
        assert_eq!(
            Token::parse(&format!("K10{HASH}::serverx")),
            Err(TokenError::Format)
        );
        assert_eq!(
            Token::parse(&format!("K10{HASH}:::x")),
            Err(TokenError::Format)
        );
        assert_eq!(
            Token::parse(&format!("K10{HASH}::server:")),
            Err(TokenError::EmptySecret)
        );
        assert_eq!(Token::parse("a b"), Err(TokenError::BadCharacters));
    }

    #[test]
    fn debug_hides_secret_and_compare_works() {
        let t = Token::parse(&format!("K10{HASH}::server:topsecret")).unwrap();
        assert!(!format!("{t:?}").contains("topsecret"));
        assert!(t.secret_matches("topsecret"));
        assert!(!t.secret_matches("topsecreT"));
        assert!(!t.secret_matches(""));
    }

    #[test]
    fn ca_hash_is_sha256_hex() {
        assert_eq!(
            ca_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
