//! The release manifest: what a signed release says about its OS image and runtime images.

use std::collections::BTreeSet;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::dsse::{Envelope, RELEASE_PAYLOAD_TYPE};
use crate::error::{Error, Result};
use crate::keys::PrivateKey;

/// The `type` of a release manifest.
pub const RELEASE_TYPE: &str = "slipway.dev/release/v1";

/// A release: an OS image and any number of runtime (sysext) images, for one channel. A release
/// without an OS image is runtime-only: nodes apply it without writing a slot or rebooting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Always [`RELEASE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The channel this release was signed for (`stable`, `beta`, ...).
    pub channel: String,
    /// The release's version.
    pub version: Version,
    /// After this instant nodes refuse the release (limits replay of old signed releases).
    pub expires: jiff::Timestamp,
    /// The OS image written to the inactive slot; absent in a runtime-only release (which then
    /// lists at least one runtime image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsImage>,
    /// systemd-sysext images for the container runtime and kubelet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime: Vec<RuntimeImage>,
    /// Machines running an older version must first update to this one (or newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from_version: Option<Version>,
    /// Security or bug advisories this release fixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<Advisory>,
}

/// The OS image payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsImage {
    /// Where to fetch it: absolute, or relative to the update server.
    pub url: String,
    /// Exact size in bytes of the payload as served (before decompression).
    pub size: u64,
    /// SHA-256 of the payload as served.
    pub sha256: Sha256Digest,
    /// How the served bytes encode the slot image.
    #[serde(default)]
    pub format: PayloadFormat,
}

/// The encoding of a served payload; the slot receives the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The slot image as is.
    #[default]
    Raw,
    /// zstd-compressed.
    Zstd,
    /// xz-compressed.
    Xz,
}

impl PayloadFormat {
    /// The manifest's name for it (`raw`, `zstd`, `xz`), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Raw => "raw",
            PayloadFormat::Zstd => "zstd",
            PayloadFormat::Xz => "xz",
        }
    }
}

/// A systemd-sysext runtime image (container runtime, kubelet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeImage {
    /// Image name; becomes `<name>.raw` in the extensions directory.
    pub name: String,
    /// Where to fetch it.
    pub url: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
}

/// An advisory fixed by a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advisory {
    /// Identifier, e.g. `CVE-2026-1234` or `SLIPWAY-2026-07`.
    pub id: String,
    /// How urgent it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Advisory severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Low.
    Low,
    /// Moderate.
    Moderate,
    /// Important.
    Important,
    /// Critical.
    Critical,
}

/// A channel, runtime image or advisory name: 1-63 characters of `[A-Za-z0-9._-]`,
/// starting with an alphanumeric (safe as a file name and in URLs).
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Manifest {
    /// Parses and validates manifest JSON. The trust core calls this only on verified bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(|error| Error::Json {
            what: "release manifest",
            error,
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Compact JSON bytes, the form that gets signed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Signs this manifest into a release envelope.
    pub fn sign(&self, keys: &[&PrivateKey]) -> Envelope {
        Envelope::sign(RELEASE_PAYLOAD_TYPE, &self.to_json(), keys)
    }

    /// Rules the schema cannot express.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidManifest {
            version: self.version.clone(),
            reason,
        };
        if self.kind != RELEASE_TYPE {
            return Err(Error::DocumentType {
                expected: RELEASE_TYPE,
                found: self.kind.clone(),
            });
        }
        if !is_valid_name(&self.channel) {
            return Err(invalid(format!(
                "channel {:?} is not a valid name",
                self.channel
            )));
        }
        match &self.os {
            Some(os) if os.url.is_empty() => return Err(invalid("os.url is empty".into())),
            Some(os) if os.size == 0 => return Err(invalid("os.size is 0".into())),
            Some(_) => {}
            None if self.runtime.is_empty() => {
                return Err(invalid(
                    "neither an os image nor runtime images: nothing to install".into(),
                ));
            }
            None => {}
        }
        let mut names = BTreeSet::new();
        for r in &self.runtime {
            // The name becomes a file name on the node: no separators, no `..`.
            if !is_valid_name(&r.name) {
                return Err(invalid(format!(
                    "runtime image name {:?} is not a valid name",
                    r.name
                )));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(format!("runtime image {:?} listed twice", r.name)));
            }
            if r.url.is_empty() || r.size == 0 {
                return Err(invalid(format!(
                    "runtime image {:?} has no url or size",
                    r.name
                )));
            }
        }
        if let Some(min) = &self.min_from_version
            && *min >= self.version
        {
            return Err(invalid(format!(
                "minFromVersion {min} must be older than the release itself"
            )));
        }
        for a in &self.advisories {
            if a.id.is_empty() || a.id.len() > 128 {
                return Err(invalid("advisory id must be 1-128 characters".into()));
            }
        }
        Ok(())
    }

    /// Refuses a release signed for another channel than the machine follows.
    pub fn check_channel(&self, channel: &str) -> Result<()> {
        if self.channel == channel {
            Ok(())
        } else {
            Err(Error::ChannelMismatch {
                version: self.version.clone(),
                expected: channel.to_owned(),
                found: self.channel.clone(),
            })
        }
    }
}

/// The admission policy for a verified release on a machine running `running` at `now`:
/// refuses expired releases, releases not newer than what runs, and releases whose
/// `minFromVersion` is above the running version.
pub fn admit(manifest: &Manifest, running: &Version, now: jiff::Timestamp) -> Result<()> {
    check_expiry(manifest, now)?;
    // Precedence per SemVer 2.0: build metadata does not make a version newer.
    if manifest.version.cmp_precedence(running).is_le() {
        return Err(Error::NotNewer {
            offered: manifest.version.clone(),
            running: running.clone(),
        });
    }
    if let Some(min) = &manifest.min_from_version
        && running.cmp_precedence(min).is_lt()
    {
        return Err(Error::MinFromVersion {
            offered: manifest.version.clone(),
            min_from: min.clone(),
            running: running.clone(),
        });
    }
    Ok(())
}

/// Refuses a release whose `expires` instant is at or before `now`.
pub fn check_expiry(manifest: &Manifest, now: jiff::Timestamp) -> Result<()> {
    if now >= manifest.expires {
        return Err(Error::Expired {
            version: manifest.version.clone(),
            expired_at: manifest.expires,
            now,
        });
    }
    Ok(())
}
