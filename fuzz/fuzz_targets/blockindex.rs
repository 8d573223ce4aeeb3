//! Block index parse (with its digest as signed) and the delta plan over it. Must hold: no
//! panic; a parsed index serializes back to the same bytes; the plan covers the image exactly
//! once, in order, with no fetched range past the limit unless one block is larger.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use slipway_api::Sha256Digest;
use slipway_api::blockindex::{BlockIndex, LocalBlock, Lookup, RUNNING, Step, TARGET};

fuzz_target!(|data: &[u8]| {
    // The first byte steers the plan; the rest is the index.
    let Some((&steer, bytes)) = data.split_first() else {
        return;
    };
    let signed = Sha256Digest(Sha256::digest(bytes).into());
    let Ok(index) = BlockIndex::parse_verified(bytes, &signed) else {
        return;
    };
    assert_eq!(index.to_bytes(), bytes, "index round trip");
    let index = Arc::new(index);
    // Offer every other block as found in the running slot and some in the target.
    let mut lookup = Lookup::wanting(index.clone());
    for (i, d) in index.digests.iter().enumerate() {
        if (i + usize::from(steer)) % 3 == 0 {
            lookup.offer(RUNNING, i as u32, d);
        } else if (i + usize::from(steer)) % 5 == 0 {
            lookup.offer(TARGET, (i + usize::from(steer % 4)) as u32, d);
        }
    }
    let max_fetch = u64::from(steer) * 1024;
    let mut at = 0u64;
    let bs = u64::from(index.block_size);
    for step in lookup.steps(max_fetch) {
        let (start, len) = step.span();
        assert_eq!(start, at, "steps are contiguous");
        assert!(len > 0);
        match step {
            Step::Fetch { len, .. } => assert!(len <= max_fetch.max(bs), "range {len} over limit"),
            Step::Copy {
                from: LocalBlock { source, offset },
                ..
            } => {
                assert!(source == RUNNING || source == TARGET);
                if source == TARGET {
                    assert!(offset >= start, "a target block is copied backwards only");
                }
            }
        }
        at += len;
    }
    assert_eq!(at, index.image_size, "steps cover the image");
});
