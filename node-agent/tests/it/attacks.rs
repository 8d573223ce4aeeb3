//! Every refusal of the foundation's attack list, end to end through the engine: after each,
//! the boot selection and the running slot's bytes are unchanged, and the server heard of it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use slipway_agent::engine::Slot;
use slipway_api::dsse::{EnvelopeSignature, RELEASE_PAYLOAD_TYPE};
use slipway_api::manifest::PayloadFormat;
use slipway_api::wire::EventKind;
use slipway_api::{Envelope, Root};

use crate::fixtures::*;
use crate::server::TestServer;

enum Offer {
    Envelope(Envelope),
}

/// Runs one check against `offer` and asserts nothing changed on the machine.
async fn refused(name: &str, offer: Offer, payload: Vec<u8>, root_threshold_2: bool, expect: &str) {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    if root_threshold_2 {
        let root = Root::new(1, 2, &[key(1).public(), key(2).public(), key(3).public()]).sign(&[
            &key(1),
            &key(2),
            &key(3),
        ]);
        std::fs::write(node.dir.join("root.json"), root.to_json_pretty()).unwrap();
    }
    server.with(|r| {
        r.payloads.insert("os".into(), payload.into());
    });
    let Offer::Envelope(env) = offer;
    server.with(|r| r.offer = Some(env));
    let engine = node.engine().await;
    let boot_before = engine.boot().status().unwrap();
    let b_before = node.slot(Slot::B);
    engine.check().await.unwrap();
    engine.flush_reports().await;
    let snap = engine.snapshot();
    assert!(
        matches!(snap.phase.as_str(), "Idle" | "Failed"),
        "{name}: phase {}",
        snap.phase
    );
    assert!(
        snap.last_error.contains(expect),
        "{name}: error {:?} should contain {expect:?}",
        snap.last_error
    );
    assert_eq!(
        engine.boot().status().unwrap(),
        boot_before,
        "{name}: boot selection changed"
    );
    assert_eq!(
        sha(&node.slot(Slot::A)),
        sha(&node.running_a),
        "{name}: running slot changed"
    );
    if name != "tampered payload byte" {
        assert_eq!(
            node.slot(Slot::B),
            b_before,
            "{name}: a byte reached slot B"
        );
    }
    let failed = server.with(|r| r.events.iter().any(|e| e.event == EventKind::Failed));
    assert!(failed, "{name}: the server was told");
}

fn image() -> Vec<u8> {
    bytes(1 << 20, 42)
}

fn good(version: &str) -> slipway_api::Manifest {
    manifest(version, &image(), "/v1/payloads/os", PayloadFormat::Raw)
}

#[tokio::test]
async fn tampered_payload_byte() {
    let mut served = image();
    served[12345] ^= 1;
    refused(
        "tampered payload byte",
        Offer::Envelope(sign(&good("2.0.0"))),
        served,
        false,
        "sha256 digest mismatch",
    )
    .await;
}

#[tokio::test]
async fn tampered_manifest_byte() {
    let mut env = sign(&good("2.0.0"));
    let mut payload = env.payload_bytes().unwrap();
    let at = payload.windows(5).position(|w| w == b"2.0.0").unwrap();
    payload[at] = b'3';
    env.payload = STANDARD.encode(payload);
    refused(
        "tampered manifest",
        Offer::Envelope(env),
        image(),
        false,
        "does not verify",
    )
    .await;
}

#[tokio::test]
async fn untrusted_key() {
    let env = good("2.0.0").sign(&[&key(9)]);
    refused(
        "untrusted key",
        Offer::Envelope(env),
        image(),
        false,
        "is not trusted",
    )
    .await;
}

#[tokio::test]
async fn two_of_three_with_one_signature() {
    let env = good("2.0.0").sign(&[&key(2)]);
    refused(
        "2-of-3 with one",
        Offer::Envelope(env),
        image(),
        true,
        "1 valid of 2 required",
    )
    .await;
}

#[tokio::test]
async fn same_key_twice_for_a_threshold_of_two() {
    let mut env = good("2.0.0").sign(&[&key(1)]);
    env.signatures.push(env.signatures[0].clone());
    refused(
        "duplicate key",
        Offer::Envelope(env),
        image(),
        true,
        "signed more than once",
    )
    .await;
}

#[tokio::test]
async fn expired() {
    let mut m = good("2.0.0");
    m.expires = "2020-01-01T00:00:00Z".parse().unwrap();
    refused(
        "expired",
        Offer::Envelope(sign(&m)),
        image(),
        false,
        "expired at 2020-01-01T00:00:00Z",
    )
    .await;
}

#[tokio::test]
async fn same_and_older_versions() {
    refused(
        "equal",
        Offer::Envelope(sign(&good("1.0.0"))),
        image(),
        false,
        "not newer than the running version 1.0.0",
    )
    .await;
    refused(
        "older",
        Offer::Envelope(sign(&good("0.9.0"))),
        image(),
        false,
        "not newer",
    )
    .await;
}

#[tokio::test]
async fn min_from_version_not_met() {
    let mut m = good("3.0.0");
    m.min_from_version = Some("2.0.0".parse().unwrap());
    refused(
        "minFromVersion",
        Offer::Envelope(sign(&m)),
        image(),
        false,
        "requires running at least 2.0.0",
    )
    .await;
}

#[tokio::test]
async fn unknown_field_in_the_signed_manifest() {
    let mut value = serde_json::to_value(good("2.0.0")).unwrap();
    value["os"]["mirror"] = "http://elsewhere".into();
    let env = Envelope::sign(
        RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(&value).unwrap(),
        &[&key(1)],
    );
    refused(
        "unknown field",
        Offer::Envelope(env),
        image(),
        false,
        "unknown field `mirror`",
    )
    .await;
}

#[tokio::test]
async fn malformed_base64_payload() {
    let mut env = sign(&good("2.0.0"));
    env.payload.insert(5, '*');
    refused(
        "bad base64",
        Offer::Envelope(env),
        image(),
        false,
        "malformed base64",
    )
    .await;
}

#[tokio::test]
async fn signature_not_over_pae() {
    let m = good("2.0.0");
    let mut env = Envelope::sign(RELEASE_PAYLOAD_TYPE, &m.to_json(), &[]);
    env.signatures.push(EnvelopeSignature {
        keyid: key(1).id().into(),
        sig: STANDARD.encode(key(1).sign(&m.to_json())),
    });
    refused(
        "not PAE",
        Offer::Envelope(env),
        image(),
        false,
        "does not verify",
    )
    .await;
}

#[tokio::test]
async fn empty_signature_list() {
    let env = Envelope::sign(RELEASE_PAYLOAD_TYPE, &good("2.0.0").to_json(), &[]);
    refused(
        "no signatures",
        Offer::Envelope(env),
        image(),
        false,
        "no signatures",
    )
    .await;
}

#[tokio::test]
async fn another_channel() {
    let mut m = good("2.0.0");
    m.channel = "beta".into();
    refused(
        "channel",
        Offer::Envelope(sign(&m)),
        image(),
        false,
        "for channel \"beta\"",
    )
    .await;
}

#[tokio::test]
async fn weak_key_in_root_json_stops_the_engine_at_start() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let mut root = Root::new(1, 1, &[key(1).public()]);
    root.keys.insert(
        sha(&weak).to_hex(),
        slipway_api::root::RootKey {
            keytype: "ed25519".into(),
            public: hex::encode(weak),
        },
    );
    std::fs::write(
        node.dir.join("root.json"),
        root.sign(&[&key(1)]).to_json_pretty(),
    )
    .unwrap();
    let settings = node.settings();
    let facts = slipway_agent::engine::Facts::read(&settings).unwrap();
    let err = slipway_agent::engine::Engine::open(
        settings,
        facts,
        node.backend(),
        std::sync::Arc::new(RecordingUnits::default()),
    )
    .err()
    .expect("a weak key in root.json is refused");
    assert!(err.to_string().contains("weak (small-order)"), "{err}");
}
