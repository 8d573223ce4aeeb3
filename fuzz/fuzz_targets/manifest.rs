//! Release manifest parse and validation. Must hold: no panic; a manifest that parses survives
//! its own JSON unchanged and validates the same way again; admission never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_api::manifest::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::from_json(data) else {
        return;
    };
    let again = Manifest::from_json(&m.to_json()).expect("a manifest's own JSON parses");
    assert_eq!(again, m, "manifest JSON round trip");
    let valid = m.validate().is_ok();
    assert_eq!(again.validate().is_ok(), valid);
    if valid {
        m.check_channel(&m.channel.clone())
            .expect("a valid manifest is valid for its own channel");
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("timestamp");
        for running in [
            semver::Version::new(0, 0, 0),
            m.version.clone(),
            semver::Version::new(u64::MAX, 0, 0),
        ] {
            let _ = manifest::admit(&m, &running, now);
        }
        let _ = manifest::check_expiry(&m, now);
        // Never admitted onto its own version.
        assert!(manifest::admit(&m, &m.version, now).is_err());
    }
});
