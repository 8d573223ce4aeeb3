//! The attack list: each refusal the trust core owes a node, one test each.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use slipway_api::dsse::{EnvelopeSignature, RELEASE_PAYLOAD_TYPE, pae};
use slipway_api::error::{Rejection, Role};
use slipway_api::{Envelope, Error, Root, TrustedRoot, admit};

use crate::fixtures::*;

fn threshold_error(err: Error) -> (Role, usize, u32, Vec<Rejection>) {
    match err {
        Error::ThresholdNotMet {
            role,
            valid,
            threshold,
            rejected,
        } => (
            role,
            valid,
            threshold,
            rejected.into_iter().map(|r| r.reason).collect(),
        ),
        other => panic!("expected ThresholdNotMet, got {other:?} ({other})"),
    }
}

#[test]
fn a_correctly_signed_release_verifies_and_is_admitted() {
    let root = root(&[1, 2, 3], 2);
    let m = root.verify_release(&signed("2.0.0", &[1, 3])).unwrap();
    assert_eq!(m, manifest("2.0.0"));
    admit(&m, &v("1.9.9"), now()).unwrap();
    m.check_channel("stable").unwrap();
}

#[test]
fn tampered_payload_byte_is_refused() {
    let root = root(&[1], 1);
    let mut env = Envelope::from_json(&signed("2.0.0", &[1])).unwrap();
    let mut payload = env.payload_bytes().unwrap();
    // Turn "2.0.0" into "3.0.0": a single byte, still valid JSON.
    let at = payload.windows(5).position(|w| w == b"2.0.0").unwrap();
    payload[at] = b'3';
    env.payload = STANDARD.encode(&payload);
    let err = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    let (role, valid, _, why) = threshold_error(err);
    assert_eq!((role, valid), (Role::Release, 0));
    assert_eq!(why, vec![Rejection::BadSignature]);
}

#[test]
fn signature_by_an_untrusted_key_is_refused() {
    let root = root(&[1], 1);
    let err = root.verify_release(&signed("2.0.0", &[9])).unwrap_err();
    let msg = err.to_string();
    let (_, valid, _, why) = threshold_error(err);
    assert_eq!(valid, 0);
    assert_eq!(why, vec![Rejection::UntrustedKey]);
    assert!(
        msg.contains(&key(9).id()[..16]),
        "error names the key: {msg}"
    );
}

#[test]
fn two_of_three_with_one_valid_signature_is_refused() {
    let root = root(&[1, 2, 3], 2);
    let err = root.verify_release(&signed("2.0.0", &[2])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "release signature threshold not met: 1 valid of 2 required"
    );
    // One valid plus one by a stranger is still one.
    let err = root.verify_release(&signed("2.0.0", &[2, 7])).unwrap_err();
    let (_, valid, threshold, why) = threshold_error(err);
    assert_eq!((valid, threshold), (1, 2));
    assert_eq!(why, vec![Rejection::UntrustedKey]);
}

#[test]
fn two_signatures_by_the_same_key_count_once() {
    let root = root(&[1, 2], 2);
    let mut env = Envelope::from_json(&signed("2.0.0", &[1])).unwrap();
    let again = env.signatures[0].clone();
    env.signatures.push(again);
    // A second, different-looking entry for the same key id must not count either.
    env.signatures.push(EnvelopeSignature {
        keyid: key(1).id().to_owned(),
        sig: env.signatures[0].sig.clone(),
    });
    let err = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    let (_, valid, _, why) = threshold_error(err);
    assert_eq!(valid, 1);
    assert_eq!(why, vec![Rejection::Duplicate, Rejection::Duplicate]);
}

#[test]
fn expired_manifest_is_refused_naming_when() {
    let mut m = manifest("2.0.0");
    m.expires = "2026-11-25T11:59:59Z".parse().unwrap();
    let err = admit(&m, &v("1.0.0"), now()).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }));
    assert_eq!(
        err.to_string(),
        "release 2.0.0 expired at 2026-11-25T11:59:59Z (now 2026-11-25T12:00:00Z)"
    );
    // Exactly at the expiry instant is already too late.
    m.expires = now();
    assert!(matches!(
        admit(&m, &v("1.0.0"), now()),
        Err(Error::Expired { .. })
    ));
}

#[test]
fn version_equal_to_running_is_refused() {
    let err = admit(&manifest("2.0.0"), &v("2.0.0"), now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "release 2.0.0 is not newer than the running version 2.0.0"
    );
}

#[test]
fn version_older_than_running_is_refused() {
    // Build metadata has no precedence (SemVer 2.0 §10); a pre-release is older.
    for (offered, running) in [
        ("2.0.0", "2.0.1"),
        ("2.0.0", "10.0.0"),
        ("2.0.0+build.9", "2.0.0+build.1"),
        ("2.0.0-rc.1", "2.0.0"),
    ] {
        let err = admit(&manifest(offered), &v(running), now());
        assert!(
            matches!(err, Err(Error::NotNewer { .. })),
            "{offered} over {running}: {err:?}"
        );
    }
    admit(&manifest("2.0.0"), &v("2.0.0-rc.1"), now()).unwrap();
}

#[test]
fn min_from_version_not_met_is_refused() {
    let mut m = manifest("3.0.0");
    m.min_from_version = Some(v("2.0.0"));
    let err = admit(&m, &v("1.5.0"), now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "release 3.0.0 requires running at least 2.0.0, but 1.5.0 runs"
    );
    admit(&m, &v("2.0.0"), now()).unwrap();
}

#[test]
fn unknown_field_in_the_manifest_is_refused_even_when_signed() {
    let root = root(&[1], 1);
    let mut value = serde_json::to_value(manifest("2.0.0")).unwrap();
    value["os"]["mirror"] = "http://elsewhere".into();
    let bytes = serde_json::to_vec(&value).unwrap();
    let env = Envelope::sign(RELEASE_PAYLOAD_TYPE, &bytes, &[&key(1)]);
    let err = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Json {
            what: "release manifest",
            ..
        }
    ));
    assert!(err.to_string().contains("unknown field `mirror`"), "{err}");
}

#[test]
fn unknown_field_in_the_envelope_is_refused() {
    let mut value: serde_json::Value = serde_json::from_slice(&signed("2.0.0", &[1])).unwrap();
    value["note"] = "hi".into();
    let err = root(&[1], 1)
        .verify_release(&serde_json::to_vec(&value).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "envelope",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn malformed_json_envelope_is_refused() {
    let root = root(&[1], 1);
    for bad in [&b""[..], b"{", b"null", b"[]", b"{\"payloadType\":1}"] {
        let err = root.verify_release(bad).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn malformed_base64_payload_is_refused() {
    let mut env = Envelope::from_json(&signed("2.0.0", &[1])).unwrap();
    env.payload.insert(3, '!');
    let err = root(&[1], 1)
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::Base64 { .. }), "{err}");
}

#[test]
fn malformed_base64_signature_is_refused() {
    let mut env = Envelope::from_json(&signed("2.0.0", &[1])).unwrap();
    env.signatures[0].sig = "not base64 at all".into();
    let err = root(&[1], 1)
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    let (_, _, _, why) = threshold_error(err);
    assert!(
        matches!(why[..], [Rejection::MalformedSignature(_)]),
        "{why:?}"
    );
    // A signature of the wrong length.
    env.signatures[0].sig = STANDARD.encode([0u8; 63]);
    let err = root(&[1], 1)
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    let (_, _, _, why) = threshold_error(err);
    assert_eq!(
        why,
        vec![Rejection::MalformedSignature(
            "63 bytes, expected 64".into()
        )]
    );
}

#[test]
fn signature_not_over_pae_is_refused() {
    let root = root(&[1], 1);
    let payload = manifest("2.0.0").to_json();
    let raw_sig = key(1).sign(&payload);
    let mut env = Envelope::sign(RELEASE_PAYLOAD_TYPE, &payload, &[]);
    env.signatures.push(EnvelopeSignature {
        keyid: key(1).id().into(),
        sig: STANDARD.encode(raw_sig),
    });
    let (_, _, _, why) = threshold_error(
        root.verify_release(env.to_json_pretty().as_bytes())
            .unwrap_err(),
    );
    assert_eq!(why, vec![Rejection::BadSignature]);

    // A PAE whose length fields were shifted so that type and body trade bytes.
    let shifted = pae(&format!("{RELEASE_PAYLOAD_TYPE} 1"), &payload[1..]);
    env.signatures[0].sig = STANDARD.encode(key(1).sign(&shifted));
    let (_, _, _, why) = threshold_error(
        root.verify_release(env.to_json_pretty().as_bytes())
            .unwrap_err(),
    );
    assert_eq!(why, vec![Rejection::BadSignature]);
}

#[test]
fn envelope_of_another_payload_type_is_refused() {
    // A validly signed root envelope must not be usable as a release.
    let root1 = root(&[1], 1);
    let env = Root::new(2, 1, &[key(1).public()]).sign(&[&key(1)]);
    let err = root1
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::PayloadType { .. }), "{err}");
}

#[test]
fn empty_signature_list_is_refused() {
    let env = Envelope::sign(RELEASE_PAYLOAD_TYPE, &manifest("2.0.0").to_json(), &[]);
    let err = root(&[1], 1)
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::NoSignatures));
}

#[test]
fn weak_small_order_key_in_root_is_refused() {
    // The identity point: verify() (non-strict) would accept any signature (R = identity,
    // s = 0) for any message under this key.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let weak_id = slipway_api::Sha256Digest::of(&weak).to_hex();
    let mut root = Root::new(1, 1, &[key(1).public()]);
    root.keys.insert(
        weak_id.clone(),
        slipway_api::root::RootKey {
            keytype: "ed25519".into(),
            public: hex::encode(weak),
        },
    );
    let env = root.sign(&[&key(1)]);
    let err = TrustedRoot::bootstrap(env.to_json_pretty().as_bytes()).unwrap_err();
    match err {
        Error::WeakKey { keyid } => assert_eq!(keyid, weak_id),
        other => panic!("expected WeakKey, got {other}"),
    }
}

#[test]
fn release_signed_for_another_channel_is_refused_by_channel_check() {
    let m = manifest("2.0.0");
    let err = m.check_channel("beta").unwrap_err();
    assert_eq!(
        err.to_string(),
        "release 2.0.0 is for channel \"stable\", this machine follows \"beta\""
    );
}

#[test]
fn runtime_image_name_with_a_path_is_refused() {
    let root = root(&[1], 1);
    let mut m = manifest("2.0.0");
    m.runtime.push(slipway_api::manifest::RuntimeImage {
        name: "../../etc/passwd".into(),
        url: "/x".into(),
        size: 1,
        sha256: slipway_api::Sha256Digest::of(b""),
    });
    let env = m.sign(&[&key(1)]);
    let err = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidManifest { .. }), "{err}");
}

#[test]
fn a_runtime_only_release_verifies_but_one_with_nothing_to_install_is_refused() {
    let root = root(&[1], 1);
    let mut m = manifest("2.0.1");
    m.os = None;
    let env = m.sign(&[&key(1)]);
    let err = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("nothing to install"), "{err}");
    m.runtime.push(slipway_api::manifest::RuntimeImage {
        name: "kubelet".into(),
        url: "/v1/payloads/def".into(),
        size: 4096,
        sha256: slipway_api::Sha256Digest::of(b"kubelet sysext"),
    });
    let env = m.sign(&[&key(1)]);
    let got = root
        .verify_release(env.to_json_pretty().as_bytes())
        .unwrap();
    assert_eq!(got.os, None);
    assert_eq!(got.runtime.len(), 1);
    // The signed JSON has no "os" key at all (not `"os": null`).
    assert!(!String::from_utf8(m.to_json()).unwrap().contains("\"os\""));
}

#[test]
fn oversized_envelope_is_refused_before_parsing() {
    let big = vec![b' '; slipway_api::dsse::MAX_ENVELOPE_BYTES + 1];
    let err = root(&[1], 1).verify_release(&big).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}
