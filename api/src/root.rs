//! The root of trust on a node (`root.json`): versioned keys with a threshold, and TUF-style
//! rotation where root N+1 must be signed by a threshold of root N's keys *and* of its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, KeySet, RELEASE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE};
use crate::error::{Error, Result, Role};
use crate::keys::{PrivateKey, PublicKey};
use crate::manifest::Manifest;

/// The `type` of a root document.
pub const ROOT_TYPE: &str = "slipway.dev/root/v1";
/// The most keys one root may list.
pub const MAX_ROOT_KEYS: usize = 32;

/// The only key type Slipway trusts.
pub const KEYTYPE_ED25519: &str = "ed25519";

/// A root document as signed: which keys are trusted for releases and for the next rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Always [`ROOT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Starts at 1; each rotation adds exactly one.
    pub version: u64,
    /// How many distinct keys must sign a release or the next root.
    pub threshold: u32,
    /// Trusted keys by key id.
    pub keys: BTreeMap<String, RootKey>,
}

/// One trusted key as written in a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKey {
    /// Always `ed25519`.
    pub keytype: String,
    /// The raw 32-byte public key, lowercase hex.
    pub public: String,
}

impl Root {
    /// A root of `version` trusting `keys` with `threshold`.
    pub fn new(version: u64, threshold: u32, keys: &[&PublicKey]) -> Self {
        Self {
            kind: ROOT_TYPE.to_owned(),
            version,
            threshold,
            keys: keys
                .iter()
                .map(|k| {
                    let entry = RootKey {
                        keytype: KEYTYPE_ED25519.to_owned(),
                        public: hex::encode(k.as_bytes()),
                    };
                    (k.id().to_owned(), entry)
                })
                .collect(),
        }
    }

    /// Checks the document and returns its key set.
    pub fn key_set(&self) -> Result<KeySet> {
        let invalid = |reason: String| Error::InvalidRoot {
            version: self.version,
            reason,
        };
        if self.kind != ROOT_TYPE {
            return Err(Error::DocumentType {
                expected: ROOT_TYPE,
                found: self.kind.clone(),
            });
        }
        if self.version == 0 {
            return Err(invalid("version must start at 1".into()));
        }
        if self.keys.is_empty() || self.keys.len() > MAX_ROOT_KEYS {
            return Err(invalid(format!(
                "{} keys; a root lists 1 to {MAX_ROOT_KEYS}",
                self.keys.len()
            )));
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return Err(invalid(format!(
                "threshold {} with {} keys; it must be between 1 and the number of keys",
                self.threshold,
                self.keys.len()
            )));
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for (declared, entry) in &self.keys {
            if entry.keytype != KEYTYPE_ED25519 {
                return Err(Error::InvalidKey {
                    keyid: Some(declared.clone()),
                    reason: format!("key type {:?}, only ed25519 is trusted", entry.keytype),
                });
            }
            let raw = hex::decode(&entry.public).map_err(|e| Error::InvalidKey {
                keyid: Some(declared.clone()),
                reason: format!("public key is not hex: {e}"),
            })?;
            let key = PublicKey::from_bytes(&raw)?;
            if key.id() != declared {
                return Err(Error::KeyIdMismatch {
                    declared: declared.clone(),
                    actual: key.id().to_owned(),
                });
            }
            keys.push(key);
        }
        Ok(KeySet::new(keys, self.threshold))
    }

    /// Signs this root with `keys` into an envelope (for `root init` / `root rotate`).
    pub fn sign(&self, keys: &[&PrivateKey]) -> Envelope {
        Envelope::sign(ROOT_PAYLOAD_TYPE, &self.to_json(), keys)
    }

    /// Compact JSON bytes, the form that gets signed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a root always serializes")
    }

    fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|error| Error::Json {
            what: "root",
            error,
        })
    }
}

/// A root the node trusts: the verifier for releases and for the next root.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    root: Root,
    keys: KeySet,
}

impl TrustedRoot {
    /// Loads the root a node was provisioned with (the bytes of a signed `root.json`).
    ///
    /// Trust in this first root comes from how it was delivered (baked into the image);
    /// its payload must be read to learn its keys, then a threshold of those keys must have
    /// signed it, which catches corrupted or hand-edited files.
    pub fn bootstrap(envelope_json: &[u8]) -> Result<Self> {
        let env = Envelope::from_json(envelope_json)?;
        if env.payload_type != ROOT_PAYLOAD_TYPE {
            return Err(Error::PayloadType {
                expected: ROOT_PAYLOAD_TYPE,
                found: env.payload_type.chars().take(200).collect(),
            });
        }
        let root = Root::from_json(&env.payload_bytes()?)?;
        let keys = root.key_set()?;
        keys.verify(&env, ROOT_PAYLOAD_TYPE, Role::Root)?;
        Ok(Self { root, keys })
    }

    /// Accepts root N+1: a threshold of *this* root's keys must have signed it before its
    /// payload is parsed; then it must be version N+1 and a threshold of its own keys must
    /// have signed it too.
    pub fn rotate(&self, envelope_json: &[u8]) -> Result<Self> {
        let env = Envelope::from_json(envelope_json)?;
        let payload = self
            .keys
            .verify(&env, ROOT_PAYLOAD_TYPE, Role::PreviousRoot)?;
        let next = Root::from_json(&payload)?;
        let expected = self.root.version + 1;
        if next.version != expected {
            return Err(Error::RootVersion {
                current: self.root.version,
                expected,
                found: next.version,
            });
        }
        let keys = next.key_set()?;
        keys.verify(&env, ROOT_PAYLOAD_TYPE, Role::Root)?;
        Ok(Self { root: next, keys })
    }

    /// Verifies a signed release and only then parses and validates its manifest.
    /// Admission (expiry, versions) is a separate step: see [`crate::admit`].
    pub fn verify_release(&self, envelope_json: &[u8]) -> Result<Manifest> {
        let env = Envelope::from_json(envelope_json)?;
        self.verify_release_envelope(&env)
    }

    /// As [`Self::verify_release`], for an envelope already parsed.
    pub fn verify_release_envelope(&self, env: &Envelope) -> Result<Manifest> {
        let payload = self.keys.verify(env, RELEASE_PAYLOAD_TYPE, Role::Release)?;
        Manifest::from_json(&payload)
    }

    /// The root document.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The root's version.
    pub fn version(&self) -> u64 {
        self.root.version
    }

    /// The trusted keys and threshold.
    pub fn key_set(&self) -> &KeySet {
        &self.keys
    }
}
