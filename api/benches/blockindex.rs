//! Block size for delta updates, measured: for an old and a new slot image, at each candidate
//! block size, the index's size, the share of the new image a node holding the old one would
//! fetch, what those ranges would be if each were served zstd-compressed (the alternative to
//! serving blocks from an uncompressed copy), the memory the engine holds for it (the index
//! and the lookup), and the indexing speed. The whole image as a zstd payload (8 MiB frames,
//! level 3, as the vm-tests build it) is printed for scale.
//!
//! `cargo bench -p slipway-api --bench blockindex -- OLD.img NEW.img` (without paths: the
//! vm-tests' cached 1.0.0 and 2.0.0 slot images, if built). Under `cargo test` (no `--bench`)
//! it checks itself on two small generated images.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use slipway_api::blockindex::{BlockIndex, DeltaPlan, Lookup, RUNNING, Step};

fn measure(old: &[u8], new: &[u8], block_size: u32) -> (usize, f64, f64, usize, f64) {
    let t = Instant::now();
    let (new_index, _) = BlockIndex::build(new, block_size).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (old_index, _) = BlockIndex::build(old, block_size).unwrap();
    let new_index = Arc::new(new_index);
    let mut lookup = Lookup::wanting(new_index.clone());
    for (i, d) in old_index.digests.iter().enumerate() {
        lookup.offer(RUNNING, i as u32, d);
    }
    let plan = DeltaPlan::new(&new_index, |_, d, at| lookup.locate(d, at), 8 << 20);
    // The fetched ranges, each compressed as one zstd frame.
    let compressed: usize = plan
        .steps
        .iter()
        .filter_map(|s| match *s {
            Step::Fetch { at, len } => Some(
                zstd::bulk::compress(&new[at as usize..(at + len) as usize], 3)
                    .unwrap()
                    .len(),
            ),
            Step::Copy { .. } => None,
        })
        .sum();
    // What the engine keeps while applying: the index and the lookup.
    let lookup =
        new_index.digests.len() * slipway_api::blockindex::DIGEST_LEN + lookup.heap_bytes();
    (
        new_index.to_bytes().len(),
        plan.fetch_ratio(),
        compressed as f64 / new.len() as f64,
        lookup,
        new.len() as f64 / secs / 1e6,
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let bench = std::env::args().any(|a| a == "--bench");
    let (old, new, what) = if args.len() == 2 {
        (
            std::fs::read(&args[0]).unwrap(),
            std::fs::read(&args[1]).unwrap(),
            format!("{} -> {}", args[0], args[1]),
        )
    } else {
        let set = std::fs::read_dir(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vm-images"),
        )
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("slot-1.0.0.img").exists() && p.join("slot-2.0.0.img").exists())
        });
        match (bench, set) {
            (true, Some(set)) => (
                std::fs::read(set.join("slot-1.0.0.img")).unwrap(),
                std::fs::read(set.join("slot-2.0.0.img")).unwrap(),
                format!("{} 1.0.0 -> 2.0.0", set.display()),
            ),
            _ => {
                // Two generated images: 256 blocks, every 16th changed.
                let old: Vec<u8> = (0..256u32 * 4096).map(|i| (i / 4096) as u8).collect();
                let mut new = old.clone();
                for b in (0..256).step_by(16) {
                    new[b * 4096] ^= 0xff;
                }
                (
                    old,
                    new,
                    "generated (1 MiB, every 16th 4 KiB block changed)".to_string(),
                )
            }
        }
    };
    println!(
        "block size for deltas: {what} ({} -> {} bytes)",
        old.len(),
        new.len()
    );
    let payload: usize = new
        .chunks(8 << 20)
        .map(|c| zstd::bulk::compress(c, 3).unwrap().len())
        .sum();
    println!(
        "the whole image as a zstd payload: {payload} bytes ({:.1}% of the image)",
        payload as f64 / new.len() as f64 * 100.0
    );
    println!(
        "{:>10} {:>12} {:>10} {:>13} {:>14} {:>12}",
        "block", "index bytes", "fetched", "as zstd", "held MiB", "index MB/s"
    );
    for bs in [4096u32, 16 << 10, 64 << 10, 256 << 10] {
        let (index, ratio, zstd_ratio, lookup, speed) = measure(&old, &new, bs);
        println!(
            "{:>10} {index:>12} {:>9.2}% {:>12.2}% {:>14.1} {speed:>12.0}",
            bs,
            ratio * 100.0,
            zstd_ratio * 100.0,
            lookup as f64 / (1 << 20) as f64
        );
        if !bench && bs == 4096 {
            assert!((ratio - 1.0 / 16.0).abs() < 1e-9, "{ratio}");
        }
    }
}
