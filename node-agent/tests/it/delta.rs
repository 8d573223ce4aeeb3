//! Delta updates end to end: the engine builds the new image in the inactive slot from blocks
//! of its slots and fetches the rest with `Range` requests, or falls back to the full payload.

use slipway_agent::engine::Slot;
use slipway_agent::engine::machine::State;
use slipway_api::EnginePhase;
use slipway_api::blockindex::BlockIndex;
use slipway_api::manifest::{Blob, DeltaSource, PayloadFormat};
use slipway_api::wire::{EventKind, Transfer};

use crate::fixtures::*;
use crate::server::{Mode, TestServer};

const BS: u32 = 16 << 10;
const B: usize = BS as usize;

/// Offers release 2.0.0 of `image` with a block index: a raw payload `os` (the image itself)
/// and the index `idx`, whose served bytes are `tamper`ed first. `indexed` is the image the
/// index describes (normally `image`).
fn offer_delta_of(node: &Node, image: &[u8], indexed: &[u8], tamper: impl FnOnce(&mut Vec<u8>)) {
    let (index, _) = BlockIndex::build(indexed, BS).unwrap();
    let signed = index.to_bytes();
    let mut served = signed.clone();
    tamper(&mut served);
    let mut m = manifest("2.0.0", image, "/v1/payloads/os", PayloadFormat::Raw);
    let os = m.os.as_mut().unwrap();
    os.delta = Some(DeltaSource {
        block_size: BS,
        index: Blob {
            url: "/v1/payloads/idx".into(),
            size: signed.len() as u64,
            sha256: sha(&signed),
        },
        image: Blob {
            url: "/v1/payloads/os".into(),
            size: image.len() as u64,
            sha256: sha(image),
        },
    });
    m.validate().unwrap();
    node.server
        .with(|r| r.payloads.insert("idx".into(), served.into()));
    node.offer("os", image.to_vec(), sign(&m));
}

fn offer_delta(node: &Node, image: &[u8]) {
    offer_delta_of(node, image, image, |_| {});
}

/// `base` with block `i` of each listed index overwritten with fresh bytes.
fn with_blocks_changed(base: &[u8], blocks: &[usize]) -> Vec<u8> {
    let mut out = base.to_vec();
    for &i in blocks {
        out[i * B..(i + 1) * B].copy_from_slice(&bytes(B, 1000 + i as u64));
    }
    out
}

/// Checks, waits for the engine to stage, and returns the staged report's transfer.
async fn apply_and_stage(node: &Node, image: &[u8]) -> Transfer {
    let engine = node.engine().await;
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
    assert_eq!(&node.slot(Slot::B)[..image.len()], image);
    assert_eq!(
        node.slot(Slot::A),
        node.running_a,
        "the running slot is never written"
    );
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::B));
    engine.flush_reports().await;
    staged_transfer(&node.server)
}

fn staged_transfer(server: &TestServer) -> Transfer {
    server.with(|r| {
        r.events
            .iter()
            .find(|e| e.event == EventKind::Staged)
            .and_then(|e| e.transfer.clone())
            .expect("the staged report carries the transfer")
    })
}

/// The `Range` headers of requests for payload `name`.
fn requests_for(server: &TestServer, name: &str) -> Vec<Option<String>> {
    server.with(|r| {
        r.requests
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, range)| range.clone())
            .collect()
    })
}

fn range(first_block: usize, blocks: usize) -> Option<String> {
    Some(format!(
        "bytes={}-{}",
        first_block * B,
        (first_block + blocks) * B - 1
    ))
}

#[tokio::test]
async fn an_identical_image_is_built_from_the_running_slot_without_fetching_a_block() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = node.running_a.clone();
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(
        requests_for(&server, "os").is_empty(),
        "nothing fetched from the image"
    );
    assert_eq!(requests_for(&server, "idx"), vec![None]);
    let index_len = slipway_api::blockindex::index_len(image.len() as u64, BS);
    assert_eq!(
        t,
        Transfer {
            image_bytes: image.len() as u64,
            fetched_bytes: index_len,
            local_bytes: image.len() as u64,
            delta: true,
            fallback: String::new(),
        }
    );
}

#[tokio::test]
async fn one_changed_block_is_the_only_range_fetched() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[100]);
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert_eq!(requests_for(&server, "os"), vec![range(100, 1)]);
    assert!(t.delta);
    assert_eq!(t.local_bytes, (image.len() - B) as u64);
    let staged = server.with(|r| {
        r.events
            .iter()
            .find(|e| e.event == EventKind::Staged)
            .unwrap()
            .detail
            .clone()
    });
    assert!(staged.contains("delta: fetched"), "{staged}");
}

#[tokio::test]
async fn adjacent_changed_blocks_are_fetched_in_one_range() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[10, 11, 12, 300]);
    offer_delta(&node, &image);
    apply_and_stage(&node, &image).await;
    assert_eq!(
        requests_for(&server, "os"),
        vec![range(10, 3), range(300, 1)]
    );
}

#[tokio::test]
async fn moved_blocks_and_the_inactive_slots_leftovers_are_copied_not_fetched() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    // The inactive slot still holds 64 KiB that the new image needs (from an older release),
    // at 4 MiB; the new image drops the running image's first block (so everything moves
    // by one block) and has those 64 KiB at 2 MiB.
    let extra = bytes(4 * B, 77);
    let mut slot_b = node.slot(Slot::B);
    slot_b[4 << 20..(4 << 20) + extra.len()].copy_from_slice(&extra);
    std::fs::write(node.dir.join("slot-b"), &slot_b).unwrap();
    let shifted = &node.running_a[B..];
    let mut image = shifted[..2 << 20].to_vec();
    image.extend_from_slice(&extra);
    image.extend_from_slice(&shifted[2 << 20..]);
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(requests_for(&server, "os").is_empty());
    assert_eq!(t.local_bytes, image.len() as u64);
}

#[tokio::test]
async fn a_compressed_release_fetches_blocks_from_the_uncompressed_image() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[7]);
    let payload = zstd_frames(&image, 1 << 20);
    let (index, _) = BlockIndex::build(image.as_slice(), BS).unwrap();
    let idx = index.to_bytes();
    let mut m = manifest(
        "2.0.0",
        &payload,
        "/v1/payloads/os.zst",
        PayloadFormat::Zstd,
    );
    m.os.as_mut().unwrap().delta = Some(DeltaSource {
        block_size: BS,
        index: Blob {
            url: "/v1/payloads/idx".into(),
            size: idx.len() as u64,
            sha256: sha(&idx),
        },
        image: Blob {
            url: "/v1/payloads/img".into(),
            size: image.len() as u64,
            sha256: sha(&image),
        },
    });
    server.with(|r| {
        r.payloads.insert("idx".into(), idx.clone().into());
        r.payloads.insert("img".into(), image.clone().into());
    });
    node.offer("os.zst", payload.clone(), sign(&m));
    let t = apply_and_stage(&node, &image).await;
    assert!(
        requests_for(&server, "os.zst").is_empty(),
        "the payload is not downloaded"
    );
    assert_eq!(requests_for(&server, "img"), vec![range(7, 1)]);
    assert_eq!(t.fetched_bytes, (B + idx.len()) as u64);
}

#[tokio::test]
async fn a_tampered_truncated_or_padded_index_is_refused_and_the_full_payload_downloaded() {
    type Tamper = fn(&mut Vec<u8>);
    let cases: [(&str, Tamper, &str); 3] = [
        ("tampered", |b| b[100] ^= 1, "does not match the signed"),
        (
            "truncated",
            |b| b.truncate(b.len() - 32),
            "does not match the signed",
        ),
        (
            "padded",
            |b| b.extend_from_slice(&[0; 32]),
            "longer than the signed",
        ),
    ];
    for (what, tamper, why) in cases {
        let server = TestServer::start().await;
        let node = Node::new(&server);
        let image = with_blocks_changed(&node.running_a, &[3]);
        offer_delta_of(&node, &image, &image, tamper);
        let t = apply_and_stage(&node, &image).await;
        assert!(!t.delta, "{what}");
        assert!(t.fallback.contains(why), "{what}: {}", t.fallback);
        assert_eq!(
            requests_for(&server, "os"),
            vec![None],
            "{what}: one full download"
        );
        assert_eq!(t.fetched_bytes, image.len() as u64);
    }
}

#[tokio::test]
async fn an_index_that_lies_about_a_block_never_makes_the_built_image_bootable() {
    // The release's image changes block 5, but its (signed) index describes the running
    // image, so every entry is found locally and hashes right: the image built from it is
    // the old one. Its re-read digest is not the signed image digest: the built slot is never
    // handed to the boot loader; the engine downloads the whole payload instead.
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[5]);
    let running = node.running_a.clone();
    offer_delta_of(&node, &image, &running, |_| {});
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert!(t.fallback.contains("hashes to"), "{}", t.fallback);
    assert_eq!(requests_for(&server, "os"), vec![None]);
    // One trial set, for the image downloaded whole.
    assert_eq!(node.backend().status().unwrap().b.tries, 1);
}

#[tokio::test]
async fn a_server_without_range_support_gets_a_full_download() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[40]);
    offer_delta(&node, &image);
    server.with(|r| r.mode = Mode::NoRange);
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert!(t.fallback.contains("no Range support"), "{}", t.fallback);
    assert_eq!(requests_for(&server, "os"), vec![range(40, 1), None]);
}

#[tokio::test]
async fn a_delta_that_would_fetch_most_of_the_image_downloads_the_payload_instead() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(6 << 20, 99); // unrelated to anything on the node
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert!(t.fallback.contains("would fetch"), "{}", t.fallback);
    assert_eq!(requests_for(&server, "os"), vec![None]);
}

#[tokio::test]
async fn delta_false_in_the_settings_downloads_the_whole_payload() {
    let server = TestServer::start().await;
    let node = Node::with_config(&server, "delta = false");
    let image = with_blocks_changed(&node.running_a, &[1]);
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert_eq!(t.fallback, "delta = false");
    assert!(requests_for(&server, "idx").is_empty());
    assert_eq!(requests_for(&server, "os"), vec![None]);
}

#[tokio::test]
async fn an_interrupted_delta_resumes_as_a_delta_in_a_new_engine() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    // Every 8th block changed: 64 single-block ranges, an eighth of the image.
    let changed: Vec<usize> = (0..node.running_a.len() / B).step_by(8).collect();
    let image = with_blocks_changed(&node.running_a, &changed);
    offer_delta(&node, &image);
    server.with(|r| {
        r.mode = Mode::DropRequest {
            name: "os".into(),
            nth: 40,
        }
    });
    let engine = node.engine().await;
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Downloading, "{}", snap.last_error);
    assert!(
        snap.last_error.contains("interrupted"),
        "{}",
        snap.last_error
    );
    let State::Downloading { checkpoint, .. } = engine.memory().state else {
        panic!("not downloading")
    };
    assert!(checkpoint.delta, "{checkpoint:?}");
    assert!(checkpoint.written >= 4 << 20, "{checkpoint:?}");
    assert!(checkpoint.fetched > 0 && checkpoint.fetched < checkpoint.written / 4);
    drop(engine);

    // A new engine (as after a restart) resumes the delta on start where the checkpoint is:
    // the index again, then only ranges past the checkpoint.
    let before = requests_for(&server, "os").len();
    let engine = node.engine().await;
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
    assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..]);
    engine.flush_reports().await;
    let t = staged_transfer(&server);
    let after = requests_for(&server, "os");
    assert!(t.delta, "{t:?}");
    let resumed = &after[before..];
    let first = resumed[0].as_deref().unwrap();
    let start: u64 = first["bytes=".len()..]
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        start >= checkpoint.written,
        "{first} before {}",
        checkpoint.written
    );
    assert!(after.iter().all(Option::is_some), "never a full download");
    assert_eq!(requests_for(&server, "idx").len(), 2);
    assert_eq!(
        t.image_bytes - t.local_bytes,
        (changed.len() * B) as u64,
        "the fetched blocks, counted across the resume"
    );
}

#[tokio::test]
async fn an_unrelated_running_slot_is_given_up_after_a_sample_not_read_whole() {
    let server = TestServer::start().await;
    let mut node = Node::new(&server);
    // A 48 MiB running slot: past the 32 MiB sample the engine judges before reading on; the
    // inactive slot (zeros) is sampled too.
    node.running_a = bytes(48 << 20, 1);
    std::fs::write(node.dir.join("slot-a"), &node.running_a).unwrap();
    std::fs::write(node.dir.join("slot-b"), vec![0u8; 48 << 20]).unwrap();
    let image = bytes(48 << 20, 99);
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert!(
        t.fallback
            .contains("the first 32 MiB of the running slot hold 0 of the new image's")
            && t.fallback.ends_with("and the inactive slot too"),
        "{}",
        t.fallback
    );
    assert_eq!(requests_for(&server, "os"), vec![None]);
}

#[tokio::test]
async fn after_a_rollback_the_inactive_slot_lends_its_blocks_when_the_running_one_cannot() {
    // The machine runs an old unrelated image from A; B still holds the release it rolled back
    // from, and the new release changes one block of that.
    let server = TestServer::start().await;
    let mut node = Node::new(&server);
    node.running_a = bytes(48 << 20, 1);
    std::fs::write(node.dir.join("slot-a"), &node.running_a).unwrap();
    let previous = bytes(48 << 20, 7);
    std::fs::write(node.dir.join("slot-b"), &previous).unwrap();
    let image = with_blocks_changed(&previous, &[2000]);
    offer_delta(&node, &image);
    let t = apply_and_stage(&node, &image).await;
    assert!(t.delta, "{t:?}");
    assert_eq!(requests_for(&server, "os"), vec![range(2000, 1)]);
}

#[tokio::test]
async fn a_missing_index_is_a_full_download() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = with_blocks_changed(&node.running_a, &[9]);
    offer_delta(&node, &image);
    server.with(|r| r.payloads.remove("idx"));
    let t = apply_and_stage(&node, &image).await;
    assert!(!t.delta);
    assert!(t.fallback.contains("HTTP 404"), "{}", t.fallback);
    assert_eq!(requests_for(&server, "os"), vec![None]);
}
