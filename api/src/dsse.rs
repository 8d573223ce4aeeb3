//! DSSE envelopes: the PAE encoding, signing, and threshold verification over a key set.
//!
//! Verification never looks inside the payload: it decodes the base64, checks signatures over
//! `PAE(payloadType, payload)` and hands back the raw bytes only once enough distinct trusted
//! keys have signed.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Rejected, Rejection, Result, Role};
use crate::keys::{PrivateKey, PublicKey};

/// Payload type of a signed release manifest.
pub const RELEASE_PAYLOAD_TYPE: &str = "application/vnd.slipway.release.v1+json";
/// Payload type of a signed root of trust.
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.slipway.root.v1+json";
/// The largest envelope the trust core parses. Manifests are a few KiB; this bounds memory.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// The most signatures one envelope may carry; bounds the work an attacker can cause.
pub const MAX_SIGNATURES: usize = 32;

/// A DSSE envelope as it travels in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// What the payload is; bound into every signature by PAE.
    pub payload_type: String,
    /// The payload, standard base64 with padding.
    pub payload: String,
    /// Signatures over `PAE(payloadType, payload bytes)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signing key's id (hex sha256 of its raw public key).
    pub keyid: String,
    /// The 64-byte ed25519 signature, standard base64.
    pub sig: String,
}

/// DSSE's Pre-Authentication Encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` with every key given (a key given twice signs once).
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&PrivateKey]) -> Self {
        let mut env = Self {
            payload_type: payload_type.to_owned(),
            payload: STANDARD.encode(payload),
            signatures: Vec::new(),
        };
        let msg = pae(payload_type, payload);
        for key in keys {
            env.push_signature(key, &msg);
        }
        env
    }

    /// Adds a signature by `key` over this envelope's payload (multi-party signing: each
    /// holder adds theirs). Does nothing if that key already signed.
    pub fn add_signature(&mut self, key: &PrivateKey) -> Result<()> {
        let payload = self.payload_bytes()?;
        let msg = pae(&self.payload_type, &payload);
        self.push_signature(key, &msg);
        Ok(())
    }

    fn push_signature(&mut self, key: &PrivateKey, msg: &[u8]) {
        if self.signatures.iter().any(|s| s.keyid == key.id()) {
            return;
        }
        self.signatures.push(EnvelopeSignature {
            keyid: key.id().to_owned(),
            sig: STANDARD.encode(key.sign(msg)),
        });
    }

    /// Parses an envelope from JSON bytes, refusing oversized input and unknown fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Error::TooLarge {
                what: "envelope",
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|error| Error::Json {
            what: "envelope",
            error,
        })
    }

    /// Pretty JSON, newline-terminated, as written to files.
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("an envelope always serializes");
        s.push('\n');
        s
    }

    /// The decoded payload bytes. Unverified: callers must not parse them before
    /// [`KeySet::verify`] has accepted the envelope.
    pub fn payload_bytes(&self) -> Result<Vec<u8>> {
        STANDARD
            .decode(&self.payload)
            .map_err(|error| Error::Base64 {
                what: "envelope payload",
                error,
            })
    }
}

/// A set of trusted keys with a threshold: the verifier of one role.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: BTreeMap<String, PublicKey>,
    threshold: u32,
}

impl KeySet {
    /// A key set. The caller guarantees `1 <= threshold <= keys.len()` (roots check it).
    pub(crate) fn new(keys: impl IntoIterator<Item = PublicKey>, threshold: u32) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.id().to_owned(), k)).collect(),
            threshold,
        }
    }

    /// The trusted keys, by id.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Verifies `env` as `role` with payload type `payload_type`, returning its payload bytes
    /// only when at least `threshold` distinct trusted keys produced valid signatures.
    pub fn verify(
        &self,
        env: &Envelope,
        payload_type: &'static str,
        role: Role,
    ) -> Result<Vec<u8>> {
        if env.payload_type != payload_type {
            return Err(Error::PayloadType {
                expected: payload_type,
                found: env.payload_type.chars().take(200).collect(),
            });
        }
        if env.signatures.is_empty() {
            return Err(Error::NoSignatures);
        }
        if env.signatures.len() > MAX_SIGNATURES {
            return Err(Error::TooManySignatures {
                count: env.signatures.len(),
                limit: MAX_SIGNATURES,
            });
        }
        let payload = env.payload_bytes()?;
        let msg = pae(&env.payload_type, &payload);
        let mut valid = BTreeSet::new();
        let mut rejected = Vec::new();
        for s in &env.signatures {
            let reason = match self.check_one(s, &msg) {
                Ok(()) if valid.insert(s.keyid.as_str()) => continue,
                Ok(()) => Rejection::Duplicate,
                Err(reason) => reason,
            };
            rejected.push(Rejected {
                keyid: s.keyid.chars().take(80).collect(),
                reason,
            });
        }
        if valid.len() < self.threshold as usize {
            return Err(Error::ThresholdNotMet {
                role,
                valid: valid.len(),
                threshold: self.threshold,
                rejected,
            });
        }
        Ok(payload)
    }

    fn check_one(&self, s: &EnvelopeSignature, msg: &[u8]) -> Result<(), Rejection> {
        let key = self.keys.get(&s.keyid).ok_or(Rejection::UntrustedKey)?;
        let raw = STANDARD
            .decode(&s.sig)
            .map_err(|e| Rejection::MalformedSignature(format!("base64: {e}")))?;
        let bytes: [u8; 64] = raw.as_slice().try_into().map_err(|_| {
            Rejection::MalformedSignature(format!("{} bytes, expected 64", raw.len()))
        })?;
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        if key.verify_strict(msg, &sig) {
            Ok(())
        } else {
            Err(Rejection::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The worked example from the DSSE protocol description.
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(
            got,
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_lengths_separate_type_from_body() {
        // Moving bytes between type and body must change the encoding.
        assert_ne!(pae("a b", b"c"), pae("a", b"b c"));
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn signing_twice_with_one_key_adds_one_signature() {
        let k = PrivateKey::from_seed([1; 32]);
        let mut env = Envelope::sign(RELEASE_PAYLOAD_TYPE, b"{}", &[&k, &k]);
        env.add_signature(&k).unwrap();
        assert_eq!(env.signatures.len(), 1);
    }
}
