//! systemd-boot entry names and files, through the systemd-boot backend on an ESP directory.
//! Input: an operation byte, then `NAME\0CONTENT\0` entry files up to an empty name, then
//! loader.conf. Must hold: no panic and no hang (the loader.conf glob is matched in linear
//! time); the version comparison is a total order; a refused operation changes no file; an
//! accepted one touches only the two slots' entries and leaves their slot in the promised state.
#![no_main]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use slipway_agent::engine::boot::sdboot::{SdBoot, split_counter, verscmp};
use slipway_agent::engine::boot::{BootBackend, SlotState};
use slipway_agent::engine::slot::Slot;

static ESP: LazyLock<PathBuf> =
    LazyLock::new(|| PathBuf::from(format!("/dev/shm/slipway-fuzz-esp-{}", std::process::id())));

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn ours(name: &str) -> bool {
    let (stem, _) = split_counter(name);
    ["slipway-a", "slipway-b"]
        .iter()
        .any(|s| stem.eq_ignore_ascii_case(s))
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let esp = &*ESP;
    let _ = fs::remove_dir_all(esp);
    let entries = esp.join("loader/entries");
    fs::create_dir_all(&entries).unwrap();
    for k in ["slipway/a", "slipway/b"] {
        fs::create_dir_all(esp.join(k)).unwrap();
        fs::write(esp.join(k).join("vmlinuz"), b"k").unwrap();
    }
    let mut parts = rest.split(|&b| b == 0);
    let mut names = Vec::new();
    while let Some(name) = parts.next() {
        if name.is_empty() {
            break;
        }
        let content = parts.next().unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if names.len() >= 8 || name.len() > 80 || name.contains('/') || name.starts_with('.') {
            continue;
        }
        fs::write(entries.join(name), content).unwrap();
        names.push(name.to_owned());
    }
    let loader: Vec<u8> = parts.collect::<Vec<_>>().join(&0u8);
    fs::write(esp.join("loader/loader.conf"), &loader).unwrap();

    // The order systemd-boot sorts by: antisymmetric and transitive over these names.
    for a in &names {
        assert_eq!(verscmp(a, a), Ordering::Equal);
        for b in &names {
            assert_eq!(verscmp(a, b), verscmp(b, a).reverse(), "{a:?} vs {b:?}");
            for c in &names {
                if verscmp(a, b).is_le() && verscmp(b, c).is_le() {
                    assert!(verscmp(a, c).is_le(), "{a:?} <= {b:?} <= {c:?}");
                }
            }
        }
    }

    let sd = SdBoot::new(esp);
    let Ok(_) = sd.status() else {
        return;
    };
    let before = files(&entries);
    let slot = if op & 1 == 0 { Slot::A } else { Slot::B };
    let tries = u32::from(op >> 4);
    let kind = (op >> 1) & 7;
    let result = match kind {
        0..=2 => sd.set_trial(slot, tries),
        3 | 4 => sd.mark_good(slot),
        _ => sd.mark_bad(slot),
    };
    let after = files(&entries);
    assert_eq!(fs::read(esp.join("loader/loader.conf")).unwrap(), loader);
    if result.is_err() {
        assert_eq!(
            after, before,
            "a refused operation changed the entries: {result:?}"
        );
        return;
    }
    let foreign = |m: &BTreeMap<String, Vec<u8>>| {
        m.iter()
            .filter(|(n, _)| !ours(n))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(foreign(&after), foreign(&before), "foreign entries changed");
    let status = sd.status().expect("the written entries read back");
    match kind {
        0..=2 => assert_eq!(status.slot(slot), SlotState { good: false, tries }),
        3 | 4 => assert!(status.slot(slot).good),
        _ => assert_eq!(
            status.slot(slot),
            SlotState {
                good: false,
                tries: 0
            }
        ),
    }
});
