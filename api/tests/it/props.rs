//! Property tests: arbitrary input never panics and never verifies.

use proptest::prelude::*;
use slipway_api::Envelope;

use crate::fixtures::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let root = root(&[1], 1);
        prop_assert!(root.verify_release(&bytes).is_err());
        prop_assert!(root.rotate(&bytes).is_err());
        prop_assert!(slipway_api::TrustedRoot::bootstrap(&bytes).is_err());
    }

    #[test]
    fn arbitrary_envelope_shaped_json_never_verifies(
        payload_type in "[ -~]{0,60}",
        payload in "[A-Za-z0-9+/=]{0,200}",
        sigs in proptest::collection::vec(("[0-9a-f]{0,64}", "[A-Za-z0-9+/=]{0,100}"), 0..4),
    ) {
        let env = serde_json::json!({
            "payloadType": payload_type,
            "payload": payload,
            "signatures": sigs.iter().map(|(k, s)| serde_json::json!({"keyid": k, "sig": s})).collect::<Vec<_>>(),
        });
        let root = root(&[1], 1);
        prop_assert!(root.verify_release(&serde_json::to_vec(&env).unwrap()).is_err());
    }

    /// Any single-byte change to a signed envelope either fails or yields exactly the
    /// manifest that was signed (a whitespace change in the envelope is harmless).
    #[test]
    fn a_mutated_envelope_never_yields_another_manifest(at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let root = root(&[1], 1);
        let mut bytes = signed("2.0.0", &[1]);
        let i = at.index(bytes.len());
        bytes[i] = to;
        if let Ok(m) = root.verify_release(&bytes) {
            prop_assert_eq!(m, manifest("2.0.0"));
        }
    }
}

#[test]
fn envelope_json_round_trips() {
    let bytes = signed("2.0.0", &[1, 2]);
    let env = Envelope::from_json(&bytes).unwrap();
    assert_eq!(env.to_json_pretty().as_bytes(), &bytes[..]);
}
