//! Not a fuzz target: writes the seed inputs of every target to `corpus/TARGET/seed-NAME`
//! (deterministic: the same bytes on every run, so the committed seeds change only when a format
//! does) and exits. It is built as a target so that it links like one (the instrumented code
//! needs libFuzzer's runtime); `scripts/fuzz.sh` runs it first. `SLIPWAY_FUZZ_CORPUS` names
//! another directory than `corpus`.
#![no_main]
// The init block exits the process, so the macro's code after it is unreachable by design.
#![allow(unreachable_code)]

use libfuzzer_sys::fuzz_target;

fn write_seeds() -> std::io::Result<usize> {
    let root = std::env::var("SLIPWAY_FUZZ_CORPUS").unwrap_or_else(|_| "corpus".into());
    let mut written = 0;
    for (target, name, bytes) in slipway_fuzz::seeds() {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        written += 1;
    }
    println!("{written} seeds written under {root}/");
    Ok(written)
}

fuzz_target!(
    init: {
        let code = match write_seeds() {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("seeds: {e}");
                1
            }
        };
        std::process::exit(code);
    },
    |_data: &[u8]| {}
);
