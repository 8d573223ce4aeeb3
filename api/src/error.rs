//! The one error type of the trust core: every variant names exactly what failed.

use std::fmt;

use semver::Version;

/// Result with the trust core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a DSSE envelope is being verified as; names the role in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A release manifest, signed by the root's keys.
    Release,
    /// A root of trust, signed by the keys of the root it replaces (rotation).
    PreviousRoot,
    /// A root of trust, signed by its own keys.
    Root,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Release => "release",
            Role::PreviousRoot => "root (by the previous root's keys)",
            Role::Root => "root (by its own keys)",
        })
    }
}

/// Why one signature in an envelope did not count towards the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The key id is not among the trusted keys.
    UntrustedKey,
    /// The key is trusted but the signature does not verify over the PAE bytes.
    BadSignature,
    /// The signature is not 64 bytes of valid base64.
    MalformedSignature(String),
    /// The key already produced a valid signature; a key counts once.
    Duplicate,
}

/// One signature that did not count, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The key id as written in the envelope.
    pub keyid: String,
    /// Why it did not count.
    pub reason: Rejection,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = short(&self.keyid);
        match &self.reason {
            Rejection::UntrustedKey => write!(f, "key {id} is not trusted"),
            Rejection::BadSignature => write!(f, "signature by key {id} does not verify"),
            Rejection::MalformedSignature(why) => {
                write!(f, "signature by key {id} is malformed: {why}")
            }
            Rejection::Duplicate => write!(f, "key {id} signed more than once (counted once)"),
        }
    }
}

/// A key id shortened for humans (full ids are 64 hex digits).
fn short(keyid: &str) -> &str {
    keyid.get(..16).unwrap_or(keyid)
}

struct List<'a>(&'a [Rejected]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(": ")?;
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Everything the trust core can refuse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that should be JSON of a given shape are not.
    // The parser's complaint is part of the message, not a `source`, so that error chains
    // printed with `{:#}` do not repeat it.
    #[error("malformed {what}: {error}")]
    Json {
        /// What was being parsed (`envelope`, `release manifest`, `root`).
        what: &'static str,
        /// The parser's complaint, with line and column.
        error: serde_json::Error,
    },
    /// A base64 field does not decode.
    #[error("malformed base64 in {what}: {error}")]
    Base64 {
        /// Which field.
        what: &'static str,
        /// The decoder's complaint.
        error: base64::DecodeError,
    },
    /// Input larger than the trust core accepts.
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The envelope carries a payload type other than the one expected.
    #[error("envelope payload type is {found:?}, expected {expected:?}")]
    PayloadType {
        /// What the verifier expects.
        expected: &'static str,
        /// What the envelope says.
        found: String,
    },
    /// The envelope has no signatures at all.
    #[error("envelope has no signatures")]
    NoSignatures,
    /// The envelope has more signatures than any honest signer would add.
    #[error("envelope has {count} signatures, more than the limit of {limit}")]
    TooManySignatures {
        /// How many it has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Fewer distinct trusted keys signed than the threshold requires.
    #[error(
        "{role} signature threshold not met: {valid} valid of {threshold} required{}",
        List(rejected)
    )]
    ThresholdNotMet {
        /// What was being verified.
        role: Role,
        /// Distinct trusted keys whose signatures verified.
        valid: usize,
        /// Distinct keys required.
        threshold: u32,
        /// The signatures that did not count, each with its reason.
        rejected: Vec<Rejected>,
    },
    /// A public key is of small order (or otherwise weak) and would accept forged signatures.
    #[error("key {keyid} is a weak (small-order) ed25519 key and cannot be trusted")]
    WeakKey {
        /// The weak key's id.
        keyid: String,
    },
    /// A key's declared id is not the sha256 of its bytes.
    #[error("key id {declared} does not match its public key (sha256 is {actual})")]
    KeyIdMismatch {
        /// The id written in the root.
        declared: String,
        /// The id computed from the key.
        actual: String,
    },
    /// A key cannot be parsed.
    #[error("invalid key{}: {reason}", keyid.as_deref().map(|k| format!(" {k}")).unwrap_or_default())]
    InvalidKey {
        /// The key id, when known.
        keyid: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A root document is internally inconsistent.
    #[error("invalid root (version {version}): {reason}")]
    InvalidRoot {
        /// The root's version.
        version: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A rotated root does not carry the next version number.
    #[error("root rotation from version {current} must produce version {expected}, got {found}")]
    RootVersion {
        /// Version of the trusted root.
        current: u64,
        /// The only acceptable new version.
        expected: u64,
        /// The version offered.
        found: u64,
    },
    /// A document's `type` field is not the one expected.
    #[error("document type is {found:?}, expected {expected:?}")]
    DocumentType {
        /// The expected type.
        expected: &'static str,
        /// What the document says.
        found: String,
    },
    /// A release manifest violates a rule the schema cannot express.
    #[error("invalid release manifest {version}: {reason}")]
    InvalidManifest {
        /// The manifest's version.
        version: Version,
        /// What is wrong with it.
        reason: String,
    },
    /// A sha256 digest is not 64 lowercase hex digits.
    #[error("invalid sha256 digest {0:?}: expected 64 lowercase hex digits")]
    InvalidDigest(String),
    /// The manifest's expiry time has passed.
    #[error("release {version} expired at {expired_at} (now {now})")]
    Expired {
        /// The release's version.
        version: Version,
        /// When it expired.
        expired_at: jiff::Timestamp,
        /// The time of the check.
        now: jiff::Timestamp,
    },
    /// The release is not newer than what runs.
    #[error("release {offered} is not newer than the running version {running}")]
    NotNewer {
        /// The release's version.
        offered: Version,
        /// The running version.
        running: Version,
    },
    /// The release requires passing through a newer version first.
    #[error("release {offered} requires running at least {min_from}, but {running} runs")]
    MinFromVersion {
        /// The release's version.
        offered: Version,
        /// Its `minFromVersion`.
        min_from: Version,
        /// The running version.
        running: Version,
    },
    /// The release was signed for another channel.
    #[error("release {version} is for channel {found:?}, this machine follows {expected:?}")]
    ChannelMismatch {
        /// The release's version.
        version: Version,
        /// The machine's channel.
        expected: String,
        /// The release's channel.
        found: String,
    },
}

impl Error {
    /// A short, stable label for metrics and event details.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Json { .. } => "malformed-json",
            Error::Base64 { .. } => "malformed-base64",
            Error::TooLarge { .. } => "too-large",
            Error::PayloadType { .. } => "payload-type",
            Error::NoSignatures => "no-signatures",
            Error::TooManySignatures { .. } => "too-many-signatures",
            Error::ThresholdNotMet { .. } => "threshold-not-met",
            Error::WeakKey { .. } => "weak-key",
            Error::KeyIdMismatch { .. } => "key-id-mismatch",
            Error::InvalidKey { .. } => "invalid-key",
            Error::InvalidRoot { .. } => "invalid-root",
            Error::RootVersion { .. } => "root-version",
            Error::DocumentType { .. } => "document-type",
            Error::InvalidManifest { .. } => "invalid-manifest",
            Error::InvalidDigest(_) => "invalid-digest",
            Error::Expired { .. } => "expired",
            Error::NotNewer { .. } => "not-newer",
            Error::MinFromVersion { .. } => "min-from-version",
            Error::ChannelMismatch { .. } => "channel-mismatch",
        }
    }
}
