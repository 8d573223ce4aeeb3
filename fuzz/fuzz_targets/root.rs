//! root.json bootstrap and rotation. Must hold: no panic; a bootstrapped root's threshold is
//! between 1 and its key count; a rotation from the fixed root v1 is accepted only for root v2 as
//! the fixtures signed it, and yields version 2.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use slipway_api::{Envelope, TrustedRoot};
use slipway_fuzz::{is_signed_fixture, trusted};

static V1: LazyLock<TrustedRoot> = LazyLock::new(trusted);

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = TrustedRoot::bootstrap(data) {
        let keys = root.key_set();
        assert!(keys.threshold() >= 1);
        assert!(keys.threshold() as usize <= keys.keys().count());
    }
    if let Ok(next) = V1.rotate(data) {
        assert_eq!(next.version(), 2);
        let env = Envelope::from_json(data).expect("a rotated-to root is an envelope");
        assert!(is_signed_fixture(&env), "rotated to a root nobody signed");
    }
});
