//! GPT header and entries, through the GPT boot backend on a disk image file. Input: an
//! operation byte, then the disk image. Must hold: no panic; a refused operation leaves every
//! byte of the disk as it was; an accepted one changes nothing but the scheme's attribute bits
//! (48-56) of the two slots' entries (every other entry, every other attribute bit and every
//! partition's contents are kept), and the status afterwards says what the operation promises.
#![no_main]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use slipway_agent::engine::boot::gpt::GptDisk;
use slipway_agent::engine::boot::{BootBackend, SlotState};
use slipway_agent::engine::slot::Slot;

/// A file on tmpfs per process (libFuzzer's -fork/-jobs run several).
static DISK: LazyLock<PathBuf> = LazyLock::new(|| {
    PathBuf::from(format!(
        "/dev/shm/slipway-fuzz-gpt-{}.img",
        std::process::id()
    ))
});

/// Bits 48 (priority) to 56 (successful): what the scheme may change.
const SCHEME_BITS: u64 = 0x1ff << 48;

fn table(bytes: &[u8]) -> gptman::GPT {
    gptman::GPT::read_from(&mut Cursor::new(bytes), 512).expect("the backend read this table")
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, image)) = data.split_first() else {
        return;
    };
    std::fs::write(&*DISK, image).expect("write the disk image");
    let disk = GptDisk::new(&*DISK);
    let Ok(before) = disk.status() else {
        assert_eq!(
            std::fs::read(&*DISK).unwrap(),
            image,
            "a refused read wrote"
        );
        return;
    };
    let slot = if op & 1 == 0 { Slot::A } else { Slot::B };
    let tries = u32::from(op >> 4);
    let result = match (op >> 1) & 7 {
        0..=2 => disk.set_trial(slot, tries),
        3 | 4 => disk.mark_good(slot),
        _ => disk.mark_bad(slot),
    };
    let after_bytes = std::fs::read(&*DISK).unwrap();
    if result.is_err() {
        assert_eq!(after_bytes, image, "a refused operation wrote: {result:?}");
        return;
    }
    assert_eq!(after_bytes.len(), image.len());
    let (old, new) = (table(image), table(&after_bytes));
    let slots = [Slot::A, Slot::B].map(|s| {
        old.iter()
            .find(|(_, p)| p.is_used() && p.partition_name.as_str() == s.partition_label())
            .map(|(n, _)| n)
            .expect("the backend found both slots")
    });
    for (n, p) in old.iter() {
        let q = &new[n];
        let mask = if slots.contains(&n) { !SCHEME_BITS } else { !0 };
        assert_eq!(
            p.attribute_bits & mask,
            q.attribute_bits & mask,
            "entry {n}'s other bits"
        );
        assert_eq!(p.partition_name.as_str(), q.partition_name.as_str());
        assert_eq!(
            (p.starting_lba, p.ending_lba),
            (q.starting_lba, q.ending_lba)
        );
        assert_eq!(p.partition_type_guid, q.partition_type_guid);
        assert_eq!(p.unique_partition_guid, q.unique_partition_guid);
        if p.is_used() {
            let range = |b: &[u8]| {
                let start = (p.starting_lba * 512).min(b.len() as u64) as usize;
                let end = ((p.ending_lba + 1) * 512).min(b.len() as u64) as usize;
                b[start..end].to_vec()
            };
            assert_eq!(
                range(image),
                range(&after_bytes),
                "partition {n}'s contents"
            );
        }
    }
    let status = disk.status().expect("a written table reads back");
    match (op >> 1) & 7 {
        0..=2 => {
            assert_eq!(status.next, Some(slot), "a trial slot boots next");
            assert_eq!(status.slot(slot), SlotState { good: false, tries });
            assert_eq!(
                status.slot(slot.other()).good,
                before.slot(slot.other()).good
            );
        }
        3 | 4 => assert!(status.slot(slot).good),
        _ => {
            assert_eq!(
                status.slot(slot),
                SlotState {
                    good: false,
                    tries: 0
                }
            );
            assert_ne!(status.next, Some(slot), "a bad slot boots next");
        }
    }
});
