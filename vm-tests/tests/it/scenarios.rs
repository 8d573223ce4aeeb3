//! The node loop on real boots: update, reboot into the other slot, fall back, survive a power
//! loss mid-download, refuse a tampered payload, and apply a runtime image without a reboot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use slipway_vm_tests::image::{self, Images};
use slipway_vm_tests::qemu::Node;
use slipway_vm_tests::server::Server;
use slipway_vm_tests::throttle::Throttle;

/// Scenarios run one at a time: two TCG guests at once would starve each other.
pub(crate) static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const BOOT: Duration = Duration::from_secs(180);

pub(crate) fn images() -> Images {
    let t = Instant::now();
    let images = image::build().expect("building node images");
    eprintln!(
        "vm-tests: images ready in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        if images.build_secs > 0.0 {
            "built"
        } else {
            "cached"
        }
    );
    images
}

struct Scenario {
    _tmp: tempfile::TempDir,
    images: Images,
    server: Server,
    /// Between the guest and the server; unlimited unless a scenario slows it.
    throttle: Throttle,
    node: Node,
    started: Instant,
}

impl Scenario {
    fn new(name: &str) -> Result<Self> {
        let images = images();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("slipway-vm-{name}-"))
            .tempdir()?;
        let server = Server::start(tmp.path(), &images.keys)?;
        let throttle = Throttle::start(server.port, 0)?;
        let machine_id = format!(
            "{:032x}",
            u128::from_le_bytes(*b"slipway-vm-test!") ^ name.len() as u128
        );
        let node = Node::create(
            &tmp.path().join("node"),
            &images.disk(),
            throttle.port(),
            &machine_id,
        )?;
        Ok(Self {
            _tmp: tmp,
            images,
            server,
            throttle,
            node,
            started: Instant::now(),
        })
    }

    fn release(&self, version: &str) -> Result<()> {
        self.images
            .release(&self.server, &self.node.dir.join("releases"), version)
    }

    fn wait(&mut self, needle: &str) -> String {
        let t = Instant::now();
        match self.node.wait_for(needle, BOOT) {
            Ok(line) => {
                eprintln!(
                    "vm-tests: [{:6.1} s, +{:5.1} s, boot {}] {line}",
                    self.started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                    self.node.boots
                );
                line
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The server's event log for the node once it holds `event` for `version` (reports are
    /// sent after the console line that announces them, so a test that reads the log right
    /// after that line would race the report); the log as it is after 60 s otherwise.
    /// Powers the node on again after a cut mid-update: the old slot boots untouched, the engine
    /// finishes the update to 2.0.0, the node reboots into it and marks it good. Returns the
    /// `healthy` events of 2.0.0 (each reported once) and powers the node off.
    fn resume_after_power_cut(&mut self) -> Vec<(String, String, String)> {
        self.node.power_on().unwrap();
        self.wait("slipway: booting slot A trial=0");
        self.wait("SLIPWAY-VM: up slot=A version=1.0.0");
        self.wait("SLIPWAY-VM: rebooting into 2.0.0");
        self.wait("slipway: booting slot B trial=1");
        self.wait("SLIPWAY-VM: up slot=B version=2.0.0");
        self.wait("SLIPWAY-VM: marked good slot=B version=2.0.0");
        let events = self.events_once("healthy", "2.0.0");
        self.node.power_off().unwrap();
        events
    }

    fn events_once(&self, event: &str, version: &str) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.server.events(&self.node.machine_id).unwrap();
            if events.iter().any(|(e, v, _)| e == event && v == version)
                || Instant::now() > deadline
            {
                return events;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn events(&self) -> Vec<String> {
        self.server
            .events(&self.node.machine_id)
            .expect("events")
            .into_iter()
            .map(|(e, v, _)| format!("{e} {v}"))
            .collect()
    }
}

#[test]
fn update_reboots_into_the_other_slot_and_stays_there() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("update").unwrap();
    s.release("2.0.0").unwrap();
    s.node.power_on().unwrap();
    s.wait("slipway: booting slot A trial=0");
    let up = Instant::now();
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    eprintln!(
        "vm-tests: boot to ready {:.1} s",
        up.elapsed().as_secs_f64()
    );
    s.wait("SLIPWAY-VM: rebooting into 2.0.0");
    s.wait("slipway: booting slot B trial=1");
    s.wait("SLIPWAY-VM: up slot=B version=2.0.0");
    s.wait("SLIPWAY-VM: marked good slot=B version=2.0.0");
    // A further reboot stays on B, no longer on trial.
    s.node.power_off().unwrap();
    s.node.power_on().unwrap();
    s.wait("slipway: booting slot B trial=0");
    s.wait("SLIPWAY-VM: up slot=B version=2.0.0");
    s.wait("SLIPWAY-VM: phase=Idle current=2.0.0");
    s.node.power_off().unwrap();
    let events = s.events();
    let want = [
        "downloading 2.0.0",
        "staged 2.0.0",
        "booted 2.0.0",
        "healthy 2.0.0",
    ];
    let mut at = 0;
    for e in &events {
        if at < want.len() && e == want[at] {
            at += 1;
        }
    }
    assert_eq!(
        at,
        want.len(),
        "server's event log {events:?} lacks the sequence {want:?}"
    );
    eprintln!(
        "vm-tests: scenario update took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}

#[test]
fn a_bad_update_falls_back_by_boot_counting_and_is_not_retried() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("fallback").unwrap();
    // 3.0.0's health check fails on purpose (see image/build.sh).
    s.release("3.0.0").unwrap();
    s.node.power_on().unwrap();
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    s.wait("SLIPWAY-VM: rebooting into 3.0.0");
    s.wait("slipway: booting slot B trial=1");
    s.wait("SLIPWAY-VM: up slot=B version=3.0.0");
    s.wait("SLIPWAY-VM: health check failed slot=B version=3.0.0");
    // The trial's only try is spent: GRUB goes back to A by itself.
    s.wait("slipway: booting slot A trial=0");
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    // RolledBack may last less than the stand-in's poll before the next check moves the
    // engine on; the server's event log below is the record that it was reported.
    s.node
        .wait_for_any(
            &[
                "SLIPWAY-VM: phase=RolledBack current=1.0.0",
                "SLIPWAY-VM: phase=Idle current=1.0.0",
            ],
            BOOT,
        )
        .unwrap();
    // The server still offers 3.0.0; the engine checks again and does not take it.
    let retried = s
        .node
        .wait_for("SLIPWAY-VM: rebooting into 3.0.0", Duration::from_secs(30));
    assert!(retried.is_err(), "the engine retried 3.0.0: {retried:?}");
    s.node.power_off().unwrap();
    let events = s.server.events(&s.node.machine_id).unwrap();
    let rolled = events
        .iter()
        .find(|(e, v, _)| e == "rolled-back" && v == "3.0.0")
        .unwrap_or_else(|| panic!("no rolled-back 3.0.0 in {events:?}"));
    assert!(rolled.2.contains("tries ran out"), "reason: {}", rolled.2);
    eprintln!(
        "vm-tests: scenario fallback took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}

#[test]
fn a_tampered_payload_is_refused_and_the_boot_selection_never_changes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("tampered").unwrap();
    s.release("2.0.0").unwrap();
    // Change one byte of the stored payload: the server now serves bytes that differ from
    // the signed digest.
    let digest = image::sha256_file(&s.images.payload("2.0.0")).unwrap();
    let stored = s.server.payload_path(&digest).unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&stored, &bytes).unwrap();

    s.node.power_on().unwrap();
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    // Depending on where the changed byte falls, the zstd decoder (frame checksum) or the
    // SHA-256 of the served bytes catches it; either way before the boot selection changes.
    let refused = |d: &str| d.contains("sha256 digest mismatch") || d.contains(": zstd: ");
    let failed = s.wait("SLIPWAY-VM: phase=Failed current=1.0.0");
    assert!(refused(&failed), "{failed}");
    assert!(
        failed.contains("SLIPWAY_ORDER=A B,SLIPWAY_A_GOOD=1"),
        "boot selection changed: {failed}"
    );
    // After max-attempts the engine gives up on it; nothing was staged, and a reboot boots A.
    s.wait("giving up on 2.0.0");
    s.node.power_off().unwrap();
    s.node.power_on().unwrap();
    s.wait("slipway: booting slot A trial=0");
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    s.node.power_off().unwrap();
    let events = s.server.events(&s.node.machine_id).unwrap();
    assert!(
        events
            .iter()
            .any(|(e, v, d)| e == "failed" && v == "2.0.0" && refused(d)),
        "the server recorded no digest failure: {events:?}"
    );
    assert!(!events.iter().any(|(e, _, _)| e == "staged"), "{events:?}");
    eprintln!(
        "vm-tests: scenario tampered took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}

/// The value of `key=` in a serial line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_once(key)
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn power_loss_mid_download_resumes_from_the_checkpoint_and_completes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("powerloss").unwrap();
    let size = std::fs::metadata(s.images.payload("2.0.0")).unwrap().len();
    // About 40 s for the whole payload: many 4 MiB checkpoints (engine.toml), and a window
    // wide enough to pull the plug in whatever TCG's timing is today.
    let rate = (size / 40).max(256 << 10);
    s.throttle.set_rate(rate);
    s.release("2.0.0").unwrap();
    s.node.power_on().unwrap();
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    // Past several checkpoints, well before the end: pull the plug (QMP quit) while B is
    // written. Late rather than early: the resumed part runs at TCG's unthrottled pace.
    let cut = size * 3 / 5;
    let served = loop {
        let line = s.wait("SLIPWAY-VM: phase=Downloading ");
        let progress = field(&line, "phase=Downloading ");
        let served: u64 = progress
            .split_once('/')
            .and_then(|(a, _)| a.parse().ok())
            .unwrap_or_else(|| panic!("progress in {line:?}"));
        if served >= cut {
            break served;
        }
    };
    s.node.power_off().unwrap();
    eprintln!(
        "vm-tests: powered off at {served} of {size} payload bytes ({} bytes through the throttle at {rate} B/s)",
        s.throttle.bytes_down()
    );
    s.throttle.set_rate(0);
    // The next boot is the old slot, untouched; the engine resumes and finishes the update.
    let events = s.resume_after_power_cut();
    // The engine reports where it resumed: from its last durable checkpoint, not from 0.
    let resumed: Vec<u64> = events
        .iter()
        .filter(|(e, v, _)| e == "downloading" && v == "2.0.0")
        .filter_map(|(_, _, d)| d.strip_prefix("resuming at byte ")?.parse().ok())
        .collect();
    assert!(!resumed.is_empty(), "no resumed download: {events:?}");
    assert!(
        resumed.iter().all(|&at| at > 0 && at < size),
        "resumed at {resumed:?} of {size} (plug pulled at about {served}): {events:?}"
    );
    // Only the first download started from byte 0.
    assert_eq!(
        events
            .iter()
            .filter(|(e, v, d)| e == "downloading" && v == "2.0.0" && d.is_empty())
            .count(),
        1,
        "{events:?}"
    );
    let kinds: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|e| **e == "staged").count(),
        1,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(e, v, _)| e == "healthy" && v == "2.0.0"),
        "{events:?}"
    );
    eprintln!("vm-tests: resumed at byte {} of {size}", resumed[0]);
    eprintln!(
        "vm-tests: scenario powerloss took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}

/// The payload requests in the server's log: (digest, Range header or "-", bytes sent).
fn payload_requests(log: &str) -> Vec<(String, String, u64)> {
    log.lines()
        .filter(|l| l.contains("payload request"))
        .map(|l| {
            // " key=": `bytes=` also starts the value of `range=`.
            let value = |key: &str| {
                l.split_once(&format!(" {key}="))
                    .map(|(_, rest)| {
                        rest.trim_start_matches('"')
                            .split(['"', ' '])
                            .next()
                            .unwrap_or("")
                            .to_owned()
                    })
                    .unwrap_or_default()
            };
            (
                value("payload"),
                value("range"),
                value("bytes").parse().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_delta_update_fetches_a_small_part_of_the_image_and_resumes_after_a_power_cut() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("delta").unwrap();
    // 2.0.0 is 1.0.0 plus one Debian package (vm-tests/image/packages-2.0.0).
    let image_size = std::fs::metadata(s.images.dir.join("slot-2.0.0.img"))
        .unwrap()
        .len();
    let image_digest = image::sha256_file(&s.images.dir.join("slot-2.0.0.img")).unwrap();
    let payload_digest = image::sha256_file(&s.images.payload("2.0.0")).unwrap();
    s.images
        .release_delta(&s.server, &s.node.dir.join("releases"), "2.0.0")
        .unwrap();
    // Slow enough that the fetched blocks take a while, so the plug can be pulled mid-write.
    s.throttle.set_rate(128 << 10);
    s.node.power_on().unwrap();
    s.wait("SLIPWAY-VM: up slot=A version=1.0.0");
    let cut = image_size * 2 / 5;
    let at = loop {
        let line = s.wait("SLIPWAY-VM: phase=Downloading ");
        let progress = field(&line, "phase=Downloading ");
        let (done, total) = progress
            .split_once('/')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("progress in {line:?}"));
        // A delta's progress runs through the image, not the compressed payload.
        assert_eq!(total, image_size, "{line}");
        if done >= cut {
            break done;
        }
    };
    s.node.power_off().unwrap();
    let fetched_before = s.throttle.bytes_down();
    eprintln!(
        "vm-tests: powered off at byte {at} of the {image_size}-byte image, {fetched_before} bytes through the link"
    );
    s.throttle.set_rate(0);
    let events = s.resume_after_power_cut();

    // The server's log: the compressed payload was never asked for, and every request for the
    // uncompressed image was a Range request; together a small part of the image.
    let requests = payload_requests(&s.server.log());
    assert!(
        !requests.iter().any(|(p, _, _)| *p == payload_digest),
        "the full payload was downloaded: {requests:?}"
    );
    let image_requests: Vec<_> = requests
        .iter()
        .filter(|(p, _, _)| *p == image_digest)
        .collect();
    assert!(!image_requests.is_empty(), "{requests:?}");
    assert!(
        image_requests
            .iter()
            .all(|(_, r, _)| r.starts_with("bytes=")),
        "{image_requests:?}"
    );
    let fetched: u64 = image_requests.iter().map(|(_, _, n)| n).sum();
    assert!(fetched > 0, "{image_requests:?}");
    let share = fetched as f64 / image_size as f64;
    eprintln!(
        "vm-tests: delta fetched {fetched} of {image_size} image bytes ({:.2}%) in {} Range requests; {} bytes through the link in all",
        share * 100.0,
        image_requests.len(),
        s.throttle.bytes_down()
    );
    assert!(share < 0.15, "fetched {:.1}% of the image", share * 100.0);
    // Resumed from a checkpoint, as a delta: one download from byte 0, one resumed mid-image.
    let resumed: Vec<u64> = events
        .iter()
        .filter(|(e, v, _)| e == "downloading" && v == "2.0.0")
        .filter_map(|(_, _, d)| d.strip_prefix("resuming at byte ")?.parse().ok())
        .collect();
    assert!(
        resumed.iter().any(|&b| b > 0 && b < image_size),
        "no resume mid-image: {events:?}"
    );
    let staged: Vec<&String> = events
        .iter()
        .filter(|(e, _, _)| e == "staged")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(staged.len(), 1, "{events:?}");
    assert!(staged[0].contains("delta: fetched"), "{staged:?}");
    eprintln!("vm-tests: staged: {}", staged[0]);
    eprintln!(
        "vm-tests: scenario delta took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}

#[test]
fn a_runtime_image_is_applied_and_its_unit_restarted_without_a_reboot() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scenario::new("runtime").unwrap();
    let name = "slipway-vm-runtime";
    let sysext = image::build_sysext(&s.node.dir, name, "1.1.0").unwrap();
    s.node.power_on().unwrap();
    // The runtime unit starts at boot without the extension.
    let before = s.wait("SLIPWAY-VM: runtime started ");
    assert_eq!(field(&before, "version="), "none", "{before}");
    let boot_id = field(&before, "boot_id=").to_owned();
    // Published only now, so that the next start of the unit is the engine's restart.
    let work = s.node.dir.join("releases");
    std::fs::create_dir_all(&work).unwrap();
    s.server
        .release_runtime(&s.images.keys, &work, "1.1.0", &[(name, &sysext)])
        .unwrap();
    let after = s.wait("SLIPWAY-VM: runtime started ");
    assert_eq!(field(&after, "version="), "1.1.0", "{after}");
    assert_eq!(field(&after, "boot_id="), boot_id, "the node rebooted");
    assert_eq!(s.node.boots, 1, "QEMU was restarted");
    assert!(s.node.running(), "the node went down");
    // The engine reports the release healthy once its units restarted.
    let events = s.events_once("healthy", "1.1.0");
    let healthy = events
        .iter()
        .find(|(e, v, _)| e == "healthy" && v == "1.1.0")
        .unwrap_or_else(|| panic!("no healthy 1.1.0 in {events:?}"));
    assert!(
        healthy.2.contains(name) && healthy.2.contains("no reboot"),
        "{healthy:?}"
    );
    assert!(
        events
            .iter()
            .all(|(e, _, _)| !matches!(e.as_str(), "staged" | "booted" | "rebooting" | "failed")),
        "{events:?}"
    );
    assert_eq!(s.node.boots, 1);
    s.node.power_off().unwrap();
    eprintln!(
        "vm-tests: scenario runtime took {:.1} s over {} boots",
        s.started.elapsed().as_secs_f64(),
        s.node.boots
    );
}
