//! FleetLock request bodies. Input: a flags byte (bit 0: the protocol header is sent), then the
//! body. Must hold: no panic; without the header, or over the size limit, always refused; an
//! accepted request names a non-empty id and group, as its body says.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use slipway_operator::fleetlock::{MAX_BODY, parse_request};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    if flags & 1 == 1 {
        headers.insert("fleet-lock-protocol", HeaderValue::from_static("true"));
    }
    match parse_request(&headers, body) {
        Ok(p) => {
            assert!(flags & 1 == 1, "accepted without the protocol header");
            assert!(body.len() <= MAX_BODY);
            assert!(!p.id.trim().is_empty() && !p.group.trim().is_empty());
            // (serde_json skips the fields it ignores without checking their UTF-8, so an accepted
            // body need not parse as a whole JSON value; where it does, it says the same.)
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                assert_eq!(v["client_params"]["id"].as_str(), Some(p.id.as_str()));
                assert_eq!(v["client_params"]["group"].as_str(), Some(p.group.as_str()));
            }
        }
        Err((status, kind, message)) => {
            assert!(status.is_client_error(), "{status}");
            assert!(!kind.is_empty() && !message.is_empty());
        }
    }
});
