//! Data sealed with the cluster token's secret (the bootstrap CAs, the
//! service-account signing key): AES-256-GCM under a PBKDF2-SHA256 key, as
//! K3s seals its bootstrap data, so the datastore alone reveals nothing.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

const PBKDF2_ROUNDS: u32 = 100_000;

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
}
