//! `Range` header interpretation. Input: the payload length (8 bytes, little endian), then the
//! header value. Must hold: no panic; a part lies inside the payload, first byte before last; a
//! suffix or open range that the payload can satisfy is never refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_server::routes::machine::{RangeRequest, parse_range};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) >> (data[0] % 64);
    let Ok(value) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    match parse_range(value, len) {
        RangeRequest::Part { start, end } => {
            assert!(start <= end, "{value:?} of {len}: {start} > {end}");
            assert!(end < len, "{value:?} of {len}: ends at {end}");
        }
        RangeRequest::Unsatisfiable => {
            // Only a range starting at or past the end, or an empty suffix, is refused.
            let spec = value
                .trim()
                .split_once('=')
                .map(|(_, s)| s.trim())
                .unwrap_or("");
            let first = spec.split_once('-').map(|(f, _)| f.trim()).unwrap_or("");
            if let Ok(start) = first.parse::<u64>() {
                assert!(start >= len, "{value:?} of {len} refused");
            }
        }
        RangeRequest::Full => {}
    }
});
