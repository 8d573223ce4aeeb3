//! Applying releases end to end: download into the inactive slot, verification, the boot
//! loader's trial, marking good, rolling back, resuming, and refusing misbehaving servers.

use std::sync::Arc;

use slipway_agent::engine::Slot;
use slipway_agent::engine::machine::State;
use slipway_api::EnginePhase;
use slipway_api::manifest::{PayloadFormat, RuntimeImage};
use slipway_api::wire::EventKind;

use crate::fixtures::*;
use crate::server::{Mode, TestServer};

#[tokio::test]
async fn full_apply_then_mark_good_then_rollback() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(6 << 20, 2);
    let m = manifest("2.0.0", &image, "/v1/payloads/os-2", PayloadFormat::Raw);
    node.offer("os-2", image.clone(), sign(&m));

    let engine = node.engine().await;
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(
        snap.phase,
        EnginePhase::Staged,
        "last error: {}",
        snap.last_error
    );
    assert_eq!(snap.staged_version, "2.0.0");
    // Slot B holds the image; slot A is untouched; the boot loader tries B once.
    assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..]);
    assert_eq!(node.slot(Slot::A), node.running_a);
    let boot = engine.boot().status().unwrap();
    assert_eq!(boot.next, Some(Slot::B));
    assert!(!boot.b.good);
    assert_eq!(boot.b.tries, 1);
    assert!(boot.a.good);
    engine.flush_reports().await;
    drop(engine);

    // The boot loader spends the try and boots B; the engine starts on the new boot.
    assert_eq!(node.backend_simulate_boot(), Some(Slot::B));
    node.reboot_into(Slot::B, "boot-2");
    let engine = node.engine().await;
    assert_eq!(engine.snapshot().phase, EnginePhase::Trial);
    engine.mark_good().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(
        (snap.phase.as_str(), snap.current_version.as_str()),
        ("Idle", "2.0.0")
    );
    let boot = engine.boot().status().unwrap();
    assert!(boot.b.good);
    assert_eq!(boot.next, Some(Slot::B));

    // Rollback to the previous release: A boots next.
    engine.rollback("admin asked").await.unwrap();
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::A));
    node.reboot_into(Slot::A, "boot-3");
    engine.flush_reports().await;
    drop(engine);
    let engine = node.engine().await;
    assert_eq!(engine.snapshot().current_version, "1.0.0");
    engine.flush_reports().await;

    let events: Vec<EventKind> = server.with(|r| r.events.iter().map(|e| e.event).collect());
    assert_eq!(
        events,
        vec![
            EventKind::Checked,
            EventKind::Downloading,
            EventKind::Staged,
            EventKind::Booted,
            EventKind::Healthy,
            EventKind::RolledBack,
        ]
    );
}

#[tokio::test]
async fn zstd_and_xz_payloads_are_decompressed_into_the_slot() {
    for format in [PayloadFormat::Zstd, PayloadFormat::Xz] {
        let server = TestServer::start().await;
        let node = Node::new(&server);
        let image = bytes(5 << 20, 3);
        let served = match format {
            PayloadFormat::Zstd => zstd_frames(&image, 1 << 20),
            _ => {
                let mut out = Vec::new();
                let mut enc = liblzma::write::XzEncoder::new(&mut out, 1);
                std::io::Write::write_all(&mut enc, &image).unwrap();
                enc.finish().unwrap();
                out
            }
        };
        let m = manifest("2.0.0", &served, "/v1/payloads/os", format);
        node.offer("os", served, sign(&m));
        let engine = node.engine().await;
        engine.check().await.unwrap();
        let snap = engine.snapshot();
        assert_eq!(
            snap.phase,
            EnginePhase::Staged,
            "{format:?}: {}",
            snap.last_error
        );
        assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..], "{format:?}");
    }
}

#[tokio::test]
async fn a_server_sending_more_than_the_size_is_cut_off() {
    for mode in [Mode::Oversize, Mode::Endless] {
        let server = TestServer::start().await;
        let node = Node::new(&server);
        let image = bytes(2 << 20, 4);
        let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
        node.offer("os", image.clone(), sign(&m));
        server.with(|r| r.mode = mode.clone());
        let engine = node.engine().await;
        let before = engine.boot().status().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(60), engine.check())
            .await
            .expect("the engine stops reading at the signed size")
            .unwrap();
        let snap = engine.snapshot();
        assert_eq!(snap.phase, EnginePhase::Failed, "{mode:?}");
        assert!(
            snap.last_error.contains("more than the signed size"),
            "{mode:?}: {}",
            snap.last_error
        );
        assert_eq!(engine.boot().status().unwrap(), before);
        assert_eq!(node.slot(Slot::A), node.running_a);
    }
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_range_in_a_new_engine() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(8 << 20, 5);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    server.with(|r| r.mode = Mode::DropAfter((image.len() as u64) * 4 / 10));

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
    assert!(
        checkpoint.served >= 2 << 20,
        "checkpointed at {}",
        checkpoint.served
    );
    drop(engine);

    // A new engine (as after a restart) resumes on start.
    let engine = node.engine().await;
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
    assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..]);
    let (ranges, served) = server.with(|r| (r.ranges.clone(), r.bytes_served));
    assert_eq!(ranges[0], None);
    assert_eq!(ranges[1], Some(format!("bytes={}-", checkpoint.served)));
    assert!(
        served < image.len() as u64 * 3 / 2,
        "served {served} for a {} byte payload",
        image.len()
    );
}

/// The update server dies mid-download (the stand-in, because a real server cannot be made
/// to stop at a chosen byte): the engine keeps what it verified, touches nothing else while
/// the server is gone, and resumes with `Range` from its checkpoint once it is back.
#[tokio::test]
async fn a_server_that_dies_mid_download_and_comes_back_is_resumed_from() {
    let server = TestServer::start_killable().await;
    let node = Node::new(&server);
    let image = bytes(8 << 20, 6);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    let stall_at = image.len() as u64 * 4 / 10;
    server.with(|r| r.mode = Mode::StallAfter(stall_at));

    let engine = node.engine().await;
    let before = engine.boot().status().unwrap();
    let kill = async {
        while server.with(|r| r.bytes_served) < stall_at {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        server.kill();
    };
    let (checked, ()) = tokio::join!(engine.check(), kill);
    checked.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Downloading, "{}", snap.last_error);
    let State::Downloading { checkpoint, .. } = engine.memory().state else {
        panic!("not downloading")
    };
    assert!(
        checkpoint.served >= 2 << 20 && checkpoint.served <= stall_at,
        "checkpointed at {}",
        checkpoint.served
    );

    // While the server is down: a check fails to connect and changes nothing.
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Downloading, "{}", snap.last_error);
    assert!(
        !snap.last_error.is_empty(),
        "no error while the server is down"
    );
    let State::Downloading {
        checkpoint: still, ..
    } = engine.memory().state
    else {
        panic!("not downloading")
    };
    assert_eq!(still.served, checkpoint.served, "the checkpoint moved");
    assert_eq!(engine.boot().status().unwrap(), before);
    assert_eq!(node.slot(Slot::A), node.running_a);

    // The server is back (same address, same payloads): the same engine resumes.
    server.revive().await;
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
    assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..]);
    assert_eq!(node.slot(Slot::A), node.running_a);
    let (ranges, served) = server.with(|r| (r.ranges.clone(), r.bytes_served));
    assert_eq!(ranges[0], None);
    assert_eq!(
        ranges.last().unwrap(),
        &Some(format!("bytes={}-", checkpoint.served))
    );
    assert!(
        served < image.len() as u64 * 3 / 2,
        "served {served} for a {} byte payload",
        image.len()
    );
}

/// A tmpfs of `size` mounted on `dir` (a real file system that really fills up), unmounted
/// when dropped. The tests run as root (scripts/test.sh); without the right to mount they fail
/// and say so.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs on {} (the disk-full test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// What a failed update must leave: slot A and the boot selection as they were, the engine
/// failed with `cause` in its error, and a `failed` report saying so on the server.
async fn assert_failed_cleanly(
    engine: &slipway_agent::engine::Engine,
    node: &Node,
    server: &TestServer,
    before: &slipway_agent::engine::boot::BootStatus,
    cause: &str,
) {
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Failed, "{}", snap.last_error);
    assert!(snap.last_error.contains(cause), "{}", snap.last_error);
    assert_eq!(&engine.boot().status().unwrap(), before);
    assert_eq!(node.slot(Slot::A), node.running_a);
    engine.flush_reports().await;
    let reported = server.with(|r| {
        r.events
            .iter()
            .any(|e| e.event == EventKind::Failed && e.detail.contains(cause))
    });
    assert!(reported, "no failed report naming {cause:?}");
}

/// Slot B's disk fills up part-way through the write: a real ENOSPC from a 4 MiB tmpfs under
/// an 8 MiB image.
#[tokio::test]
async fn a_slot_disk_that_fills_up_mid_write_fails_cleanly_and_is_reported() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let disk = SmallDisk::mount(&node.dir.join("small-disk"), "4m");
    let b = disk.0.join("slot-b");
    std::fs::File::create(&b)
        .unwrap()
        .set_len(SLOT_SIZE as u64)
        .unwrap();
    std::fs::remove_file(node.dir.join("slot-b")).unwrap();
    std::os::unix::fs::symlink(&b, node.dir.join("slot-b")).unwrap();

    let image = bytes(SLOT_SIZE, 7);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    let engine = node.engine().await;
    let before = engine.boot().status().unwrap();
    engine.check().await.unwrap();
    assert_failed_cleanly(&engine, &node, &server, &before, "No space left on device").await;
    drop(engine);
    drop(disk);
}

/// Slot B's device returns EIO part-way through the write (injected: no device here can be
/// made to fail on demand).
#[tokio::test]
async fn a_slot_device_that_returns_io_errors_mid_write_fails_cleanly_and_is_reported() {
    let scenario = fail::FailScenario::setup();
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(SLOT_SIZE, 8);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    fail::cfg(
        "slot-write-eio",
        &format!("return({}@{})", node.dir.join("slot-b").display(), 3 << 20),
    )
    .unwrap();
    let engine = node.engine().await;
    let before = engine.boot().status().unwrap();
    engine.check().await.unwrap();
    assert_failed_cleanly(&engine, &node, &server, &before, "Input/output error").await;
    drop(engine);
    scenario.teardown();
}

/// One check that the server interrupts, then a new engine (as after a restart) that resumes:
/// slot B ends up holding `image`, slot A untouched. Returns the payload requests' `Range`s.
async fn interrupted_then_resumed(
    server: &TestServer,
    node: &Node,
    image: &[u8],
) -> Vec<Option<String>> {
    let engine = node.engine().await;
    engine.check().await.unwrap();
    assert_eq!(engine.snapshot().phase, EnginePhase::Downloading);
    drop(engine);
    let engine = node.engine().await;
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
    assert_eq!(&node.slot(Slot::B)[..image.len()], image);
    assert_eq!(node.slot(Slot::A), node.running_a);
    server.with(|r| r.ranges.clone())
}

#[tokio::test]
async fn a_payload_in_small_pieces_is_written_whole_across_a_resume() {
    // Odd-sized small pieces: batches for the writer gather hundreds of chunks, checkpoints
    // fall between them, and the resume starts mid-piece.
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes((3 << 20) + 12_345, 9);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    server.with(|r| {
        r.chunk = Some(997);
        r.mode = Mode::DropAfter((image.len() as u64) * 6 / 10);
    });
    let ranges = interrupted_then_resumed(&server, &node, &image).await;
    assert!(
        matches!(ranges.as_slice(), [None, Some(r)] if r != "bytes=0-"),
        "{ranges:?}"
    );
}

#[tokio::test]
async fn recording_the_boot_leaves_an_interrupted_download_to_the_first_check() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(4 << 20, 13);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    server.with(|r| r.mode = Mode::DropAfter((image.len() as u64) * 6 / 10));
    let engine = node.engine().await;
    engine.check().await.unwrap();
    assert_eq!(engine.snapshot().phase, EnginePhase::Downloading);
    drop(engine);

    // As the daemon does before serving D-Bus: quick, no request.
    let settings = node.settings();
    let facts = slipway_agent::engine::Facts::read(&settings).unwrap();
    let units = Arc::new(RecordingUnits::default());
    let engine =
        slipway_agent::engine::Engine::open(settings, facts, node.backend(), units).unwrap();
    engine.record_boot().await.unwrap();
    assert_eq!(engine.snapshot().phase, EnginePhase::Downloading);
    assert_eq!(server.with(|r| r.ranges.len()), 1);
    // The first check resumes it with a Range request.
    engine.check().await.unwrap();
    assert_eq!(engine.snapshot().phase, EnginePhase::Staged);
    let ranges = server.with(|r| r.ranges.clone());
    assert!(
        ranges.len() == 2 && ranges[1].is_some(),
        "resumed with a Range request: {ranges:?}"
    );
}

#[tokio::test]
async fn concurrent_flushes_deliver_each_report_once() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(1 << 20, 14);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image, sign(&m));
    server.with(|r| r.events_down = true);
    let engine = node.engine().await;
    engine.check().await.unwrap();
    assert_eq!(engine.outbox_len(), 3);
    server.with(|r| r.events_down = false);
    let (a, b) = tokio::join!(engine.flush_reports(), engine.flush_reports());
    assert_eq!(a + b, 3);
    assert_eq!(server.with(|r| r.events.len()), 3);
}

#[tokio::test]
async fn a_zstd_download_resumes_at_a_frame_boundary() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(8 << 20, 6);
    let served = zstd_frames(&image, 1 << 20);
    let m = manifest("2.0.0", &served, "/v1/payloads/os", PayloadFormat::Zstd);
    node.offer("os", served.clone(), sign(&m));
    server.with(|r| r.mode = Mode::DropAfter((served.len() as u64) * 6 / 10));
    let ranges = interrupted_then_resumed(&server, &node, &image).await;
    assert!(
        ranges[1].is_some(),
        "resumed with a Range request: {ranges:?}"
    );
}

#[tokio::test]
async fn reports_wait_for_a_server_that_is_down_without_delaying_the_update() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(1 << 20, 7);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image, sign(&m));
    server.with(|r| r.events_down = true);
    let engine = node.engine().await;
    engine.check().await.unwrap();
    assert_eq!(engine.snapshot().phase, EnginePhase::Staged);
    assert_eq!(engine.flush_reports().await, 0);
    assert_eq!(
        engine.queued_events(),
        vec![
            EventKind::Checked,
            EventKind::Downloading,
            EventKind::Staged
        ]
    );
    drop(engine);
    // The queue survives a restart and drains once the server is back.
    server.with(|r| r.events_down = false);
    let engine = node.engine().await;
    assert_eq!(engine.flush_reports().await, 3);
    assert_eq!(engine.outbox_len(), 0);
    assert_eq!(server.with(|r| r.events.len()), 3);
}

#[tokio::test]
async fn runtime_images_are_installed_and_units_restarted_or_rolled_back() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let old = bytes(100_000, 8);
    std::fs::create_dir_all(node.dir.join("extensions")).unwrap();
    std::fs::write(node.dir.join("extensions/containerd.raw"), &old).unwrap();

    for (version, fail) in [("2.0.0", true), ("2.0.1", false)] {
        let image = bytes(1 << 20, 9);
        let runtime = bytes(300_000, 10 + version.len() as u64 + fail as u64);
        let mut m = manifest(version, &image, "/v1/payloads/os", PayloadFormat::Raw);
        m.runtime.push(RuntimeImage {
            name: "containerd".into(),
            url: "/v1/payloads/ctr".into(),
            size: runtime.len() as u64,
            sha256: sha(&runtime),
        });
        server.with(|r| {
            r.payloads.insert("ctr".into(), runtime.clone().into());
        });
        node.offer("os", image, sign(&m));
        let units = Arc::new(RecordingUnits {
            fail: if fail {
                vec!["containerd.service".into()]
            } else {
                vec![]
            },
            ..Default::default()
        });
        let engine = node.engine_with(units.clone()).await;
        engine.check().await.unwrap();
        let installed = std::fs::read(node.dir.join("extensions/containerd.raw")).unwrap();
        let restarted = units.restarted.lock().unwrap().clone();
        if fail {
            // The failed restart put the previous image back and restarted again.
            assert_eq!(engine.snapshot().phase, EnginePhase::Failed);
            assert_eq!(installed, old);
            assert_eq!(
                restarted,
                vec![
                    "systemd-sysext.service",
                    "containerd.service",
                    "systemd-sysext.service",
                    "containerd.service"
                ]
            );
        } else {
            assert_eq!(
                engine.snapshot().phase,
                EnginePhase::Staged,
                "{}",
                engine.snapshot().last_error
            );
            assert_eq!(installed, runtime);
            assert_eq!(
                restarted,
                vec!["systemd-sysext.service", "containerd.service"]
            );
        }
    }
}

/// Arms the crash point before the boot selection flips, for `node`'s engine only (other tests'
/// engines run in this process at the same time).
fn crash_before_set_trial(node: &Node) {
    let state_dir = node.settings().state_dir;
    fail::cfg(
        "before-set-trial",
        &format!("return({})", state_dir.display()),
    )
    .unwrap();
}

#[tokio::test]
async fn a_crash_between_writing_and_flipping_re_verifies_on_restart() {
    let scenario = fail::FailScenario::setup();
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(2 << 20, 11);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    crash_before_set_trial(&node);
    let engine = node.engine().await;
    assert!(
        engine.check().await.is_err(),
        "the failpoint stops the engine"
    );
    fail::remove("before-set-trial");
    assert_eq!(engine.snapshot().phase, EnginePhase::Verifying);
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::A));
    drop(engine);

    // Between the crash and the restart, the slot is damaged: the restart must notice.
    let mut b = node.slot(Slot::B);
    b[1000] ^= 0xff;
    std::fs::write(node.dir.join("slot-b"), &b).unwrap();
    let engine = node.engine().await;
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Failed);
    assert!(
        snap.last_error.contains("verification failed"),
        "{}",
        snap.last_error
    );
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::A));
    drop(engine);

    // Same crash with an intact slot: the restart re-verifies and stages.
    let node = Node::new(&server);
    crash_before_set_trial(&node);
    let engine = node.engine().await;
    assert!(engine.check().await.is_err());
    fail::remove("before-set-trial");
    drop(engine);
    let engine = node.engine().await;
    assert_eq!(engine.snapshot().phase, EnginePhase::Staged);
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::B));
    scenario.teardown();
}

#[tokio::test]
async fn the_engine_binary_resumes_in_a_new_process_after_an_interruption() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(8 << 20, 12);
    let m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
    node.offer("os", image.clone(), sign(&m));
    server.with(|r| r.mode = Mode::DropAfter((image.len() as u64) * 4 / 10));
    let once = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway-agent"))
            .args(["engine", "--once", "--config"])
            .arg(&node.config)
            .env("SLIPWAY_DBUS_ADDRESS", "unix:path=/nonexistent")
            .output()
    };
    let first = once().await.unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let second = once().await.unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("staged 2.0.0"), "{stdout}");
    assert_eq!(&node.slot(Slot::B)[..image.len()], &image[..]);
    let (ranges, served) = server.with(|r| (r.ranges.clone(), r.bytes_served));
    assert!(
        ranges[1]
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=")),
        "{ranges:?}"
    );
    assert!(served < image.len() as u64 * 3 / 2, "served {served}");
}

#[tokio::test]
async fn an_unknown_channel_is_nothing_new_but_other_server_errors_fail_the_check() {
    let server = TestServer::start().await;
    let node = Node::new(&server);
    server.with(|r| r.check_error = Some((axum::http::StatusCode::NOT_FOUND, "unknown-channel")));
    let engine = node.engine().await;
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(
        (snap.phase.as_str(), snap.last_error.as_str()),
        ("Idle", "")
    );
    assert_eq!(engine.queued_events(), vec![EventKind::Checked]);

    server.with(|r| r.check_error = Some((axum::http::StatusCode::BAD_REQUEST, "bad-machine-id")));
    engine.check().await.unwrap();
    let snap = engine.snapshot();
    assert_eq!(snap.phase, EnginePhase::Idle);
    assert!(
        snap.last_error.contains("HTTP 400") && snap.last_error.contains("bad-machine-id"),
        "{}",
        snap.last_error
    );
    assert_eq!(engine.queued_events().last(), Some(&EventKind::Failed));
}
