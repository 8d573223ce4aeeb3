//! Ed25519 keys: key ids, PEM files (PKCS#8 private, SPKI public), weak-key checks.

use std::fmt;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};

/// The id of a key: lowercase hex of the sha256 of its raw 32 public-key bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    Sha256Digest::of(key.as_bytes()).to_hex()
}

/// A trusted ed25519 public key with its id. Weak (small-order) keys cannot be constructed.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl PublicKey {
    /// Wraps a key, refusing weak ones.
    pub fn new(key: VerifyingKey) -> Result<Self> {
        let id = key_id(&key);
        if key.is_weak() {
            return Err(Error::WeakKey { keyid: id });
        }
        Ok(Self { key, id })
    }

    /// Parses 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
            keyid: None,
            reason: format!("an ed25519 public key is 32 bytes, got {}", bytes.len()),
        })?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|e| Error::InvalidKey {
            keyid: Some(Sha256Digest::of(&arr).to_hex()),
            reason: format!("not a point on the curve: {e}"),
        })?;
        Self::new(key)
    }

    /// Parses an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`), as written by `openssl pkey -pubout`.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| Error::InvalidKey {
            keyid: None,
            reason: format!("not an ed25519 SPKI PEM public key: {e}"),
        })?;
        Self::new(key)
    }

    /// SPKI PEM text.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("encoding a valid ed25519 key as PEM cannot fail")
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Strict verification: rejects non-canonical and small-order signature components.
    pub(crate) fn verify_strict(&self, msg: &[u8], sig: &ed25519_dalek::Signature) -> bool {
        self.key.verify_strict(msg, sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// An ed25519 signing key. Its Debug output never shows the secret.
pub struct PrivateKey {
    key: SigningKey,
    public: PublicKey,
}

impl PrivateKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Self {
        let key = SigningKey::generate(&mut rand_core::UnwrapErr(getrandom::SysRng));
        Self::from_signing_key(key)
    }

    /// A key from its 32-byte seed (for tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(&seed))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let verifying = key.verifying_key();
        // A key derived from a secret scalar is never small-order.
        let public = PublicKey {
            id: key_id(&verifying),
            key: verifying,
        };
        Self { key, public }
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `slipway keygen` or `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| Error::InvalidKey {
            keyid: None,
            reason: format!("not an ed25519 PKCS#8 PEM private key: {e}"),
        })?;
        Ok(Self::from_signing_key(key))
    }

    /// PKCS#8 PEM text. Handle with care: this is the secret.
    ///
    /// Written as a PKCS#8 v1 structure (seed only), the form `openssl genpkey` writes:
    /// OpenSSL 3.0 cannot read the v2 form that also embeds the public key.
    pub fn to_pem(&self) -> String {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("encoding a valid ed25519 key as PKCS#8 cannot fail")
            .to_string()
    }

    /// The matching public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id of the public half.
    pub fn id(&self) -> &str {
        self.public.id()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, secret hidden)", self.public.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let k = PrivateKey::from_seed([7; 32]);
        let again = PrivateKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(again.id(), k.id());
        let public = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        assert_eq!(public, *k.public());
        assert_eq!(k.id().len(), 64);
    }

    #[test]
    fn identity_point_is_weak() {
        // The identity point (y = 1) has order 1: verify() would accept it for any message.
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        let err = PublicKey::from_bytes(&bytes).unwrap_err();
        assert!(matches!(err, Error::WeakKey { .. }), "{err}");
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(matches!(
            PublicKey::from_bytes(&[1; 31]),
            Err(Error::InvalidKey { .. })
        ));
    }
}
