//! Deterministic keys, roots and manifests for the tests.

use jiff::Timestamp;
use semver::Version;
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Manifest, PrivateKey, Root, Sha256Digest, TrustedRoot};

/// Key number `n` (deterministic).
pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_seed([n; 32])
}

/// "Now" for every test: 2026-11-25T12:00:00Z.
pub fn now() -> Timestamp {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

pub fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// A trusted root of version 1 over keys `ids` with `threshold`, self-signed by all of them.
pub fn root(ids: &[u8], threshold: u32) -> TrustedRoot {
    let keys: Vec<PrivateKey> = ids.iter().map(|&n| key(n)).collect();
    let publics: Vec<_> = keys.iter().map(|k| k.public()).collect();
    let signers: Vec<_> = keys.iter().collect();
    let env = Root::new(1, threshold, &publics).sign(&signers);
    TrustedRoot::bootstrap(env.to_json_pretty().as_bytes()).expect("fixture root is valid")
}

/// A valid manifest for `version` on `stable`, expiring a week after [`now`].
pub fn manifest(version: &str) -> Manifest {
    Manifest {
        kind: RELEASE_TYPE.into(),
        channel: "stable".into(),
        version: v(version),
        expires: "2026-12-02T12:00:00Z".parse().unwrap(),
        os: Some(OsImage {
            url: "/v1/payloads/abc".into(),
            size: 1 << 20,
            sha256: Sha256Digest::of(b"os image"),
            format: PayloadFormat::Zstd,
            delta: None,
        }),
        runtime: vec![],
        min_from_version: None,
        advisories: vec![],
    }
}

/// `manifest(version)` signed by keys `ids`, as envelope JSON bytes.
pub fn signed(version: &str, ids: &[u8]) -> Vec<u8> {
    let keys: Vec<PrivateKey> = ids.iter().map(|&n| key(n)).collect();
    let signers: Vec<_> = keys.iter().collect();
    manifest(version)
        .sign(&signers)
        .to_json_pretty()
        .into_bytes()
}
