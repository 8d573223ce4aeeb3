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
    /// What a node needs to build the image from blocks it already holds and fetch only the
    /// rest (see [`crate::blockindex`]); absent: every update is a full download. Engines built
    /// before this field existed refuse a manifest that has it (`deny_unknown_fields`), so a
    /// fleet still running one gets a release without it first (`slipway sign --no-delta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSource>,
}

/// The signed parts of a delta update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeltaSource {
    /// Bytes per indexed block.
    pub block_size: u32,
    /// The block index ([`crate::blockindex`] format): one SHA-256 per block of the image.
    pub index: Blob,
    /// The uncompressed slot image, served with HTTP `Range`: the bytes the index describes
    /// and the digest the finished slot must have. For a raw payload, the payload itself.
    pub image: Blob,
}

/// A file on the server: where, how big, and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// Where to fetch it: absolute, or relative to the update server.
    pub url: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
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

impl DeltaSource {
    /// The rules a delta source must meet, given its OS image: a valid block size, an index as
    /// long as the image's block count says, and for a raw payload the payload itself as image.
    fn validate(&self, os: &OsImage) -> std::result::Result<(), String> {
        use crate::blockindex;
        if !self.block_size.is_power_of_two()
            || !(blockindex::MIN_BLOCK_SIZE..=blockindex::MAX_BLOCK_SIZE).contains(&self.block_size)
        {
            return Err(format!(
                "blockSize {} is not a power of two from {} to {}",
                self.block_size,
                blockindex::MIN_BLOCK_SIZE,
                blockindex::MAX_BLOCK_SIZE
            ));
        }
        if self.index.url.is_empty() || self.image.url.is_empty() {
            return Err("index.url and image.url must not be empty".into());
        }
        if self.image.size == 0 {
            return Err("image.size is 0".into());
        }
        let expected = blockindex::index_len(self.image.size, self.block_size);
        if self.index.size != expected {
            return Err(format!(
                "index.size is {}, but an index of a {}-byte image in {}-byte blocks has {expected} bytes",
                self.index.size, self.image.size, self.block_size
            ));
        }
        if os.format == PayloadFormat::Raw
            && (self.image.sha256 != os.sha256 || self.image.size != os.size)
        {
            return Err(
                "the payload is raw, so image must be the payload itself (same size and sha256)"
                    .into(),
            );
        }
        Ok(())
    }
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

/// [`is_valid_name`] as a regular expression (for the API's schema).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

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
            Some(os) => {
                if let Some(d) = &os.delta {
                    d.validate(os)
                        .map_err(|r| invalid(format!("os.delta: {r}")))?;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockindex::index_len;

    fn release_with(format: PayloadFormat, delta: DeltaSource) -> Manifest {
        let payload = Sha256Digest([1; 32]);
        Manifest {
            kind: RELEASE_TYPE.into(),
            channel: "stable".into(),
            version: Version::new(2, 0, 0),
            expires: "2099-01-01T00:00:00Z".parse().unwrap(),
            os: Some(OsImage {
                url: "/v1/payloads/a".into(),
                size: 100_000,
                sha256: payload,
                format,
                delta: Some(delta),
            }),
            runtime: vec![],
            min_from_version: None,
            advisories: vec![],
        }
    }

    fn delta(block_size: u32, image_size: u64, image_sha: [u8; 32]) -> DeltaSource {
        DeltaSource {
            block_size,
            index: Blob {
                url: "/v1/payloads/i".into(),
                size: index_len(image_size, block_size),
                sha256: Sha256Digest([2; 32]),
            },
            image: Blob {
                url: "/v1/payloads/a".into(),
                size: image_size,
                sha256: Sha256Digest(image_sha),
            },
        }
    }

    #[test]
    fn a_delta_source_must_agree_with_its_image_and_payload() {
        let ok = release_with(PayloadFormat::Raw, delta(16384, 100_000, [1; 32]));
        ok.validate().unwrap();
        // Round trip through JSON: camelCase, nothing lost.
        let json = serde_json::to_string(&ok).unwrap();
        assert!(json.contains(r#""blockSize":16384"#), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), ok);
        let refused = |m: Manifest, why: &str| {
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(
            release_with(PayloadFormat::Raw, delta(3000, 100_000, [1; 32])),
            "power of two",
        );
        let mut short = delta(16384, 100_000, [1; 32]);
        short.index.size -= 32;
        refused(release_with(PayloadFormat::Raw, short), "index.size");
        // A raw payload is its own image.
        refused(
            release_with(PayloadFormat::Raw, delta(16384, 100_000, [9; 32])),
            "the payload itself",
        );
        // A compressed payload's image is another file.
        release_with(PayloadFormat::Zstd, delta(16384, 400_000, [9; 32]))
            .validate()
            .unwrap();
        // An unknown field inside `delta` is refused like anywhere in a signed document.
        let odd = json.replace(r#""blockSize":16384"#, r#""blockSize":16384,"algo":"x""#);
        assert!(serde_json::from_str::<Manifest>(&odd).is_err());
    }
}
