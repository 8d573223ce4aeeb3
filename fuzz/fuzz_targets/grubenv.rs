//! GRUB environment block read/write. Input: a 1024-byte block, then `NAME\0VALUE\0` pairs to
//! set. Must hold: no panic; a block that parses is written back byte for byte; a refused set
//! leaves the block unchanged; after a set, the value reads back, and the written block parses
//! to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_agent::engine::boot::grubenv::{ENV_SIZE, EnvBlock};

fuzz_target!(|data: &[u8]| {
    let (block, sets) = data.split_at(data.len().min(ENV_SIZE));
    let Ok(mut env) = EnvBlock::parse(block) else {
        return;
    };
    assert_eq!(
        env.to_bytes().as_deref(),
        Ok(block),
        "a parsed block is written back unchanged"
    );
    let mut parts = sets.split(|&b| b == 0);
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let before = env.clone();
        if env.set(name, value).is_err() {
            assert_eq!(env, before, "a refused set changed the block");
            continue;
        }
        assert_eq!(env.get(name), Some(value));
        match env.to_bytes() {
            Ok(bytes) => {
                assert_eq!(bytes.len(), ENV_SIZE);
                let reread = EnvBlock::parse(&bytes).expect("a written block parses");
                assert!(reread.vars().eq(env.vars()), "variables survive a write");
                assert_eq!(reread.get(name), Some(value));
            }
            // Full: the caller keeps the old file (the backend writes only what serializes).
            Err(e) => assert!(e.contains("full"), "{e}"),
        }
    }
});
