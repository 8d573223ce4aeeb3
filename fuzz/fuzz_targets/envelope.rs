//! DSSE envelope parse and verify. Must hold: no panic; a parsed envelope survives its own JSON
//! unchanged; a release the fixed root accepts carries exactly a payload the fixtures signed
//! (the fuzzer cannot forge a signature, so anything else means verification is broken).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use slipway_api::{Envelope, TrustedRoot};
use slipway_fuzz::{is_signed_fixture, trusted};

static ROOT: LazyLock<TrustedRoot> = LazyLock::new(trusted);

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::from_json(data) else {
        return;
    };
    let again = Envelope::from_json(env.to_json_pretty().as_bytes())
        .expect("an envelope's own JSON parses");
    assert_eq!(again, env, "envelope JSON round trip");
    if let Ok(manifest) = ROOT.verify_release_envelope(&env) {
        assert!(is_signed_fixture(&env), "accepted a payload nobody signed");
        manifest
            .validate()
            .expect("a verified release's manifest is valid");
    }
});
