//! The engine's TOML drop-in. Must hold: no panic; accepted settings meet every rule the engine
//! relies on (valid channel, at least one attempt and boot try, two distinct slots, a fetch share
//! from 0 to 1, checkpoints of at least 1 MiB); durations parse without overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_agent::engine::settings::{Settings, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(text);
    if let Ok(s) = Settings::from_toml(text) {
        assert!(slipway_api::manifest::is_valid_name(&s.channel));
        assert!(s.max_attempts >= 1 && s.boot_tries >= 1);
        assert_ne!(s.slots.a, s.slots.b);
        assert!((0.0..=1.0).contains(&s.delta_max_fetch));
        assert!(s.checkpoint_bytes >= 1 << 20);
    }
});
