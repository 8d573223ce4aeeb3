//! The node loop on real boots: update, reboot into the other slot, fall back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use slipway_vm_tests::image::{self, Images};
use slipway_vm_tests::qemu::Node;
use slipway_vm_tests::server::Server;

/// Scenarios run one at a time: two TCG guests at once would starve each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const BOOT: Duration = Duration::from_secs(180);

fn images() -> Images {
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
        let machine_id = format!(
            "{:032x}",
            u128::from_le_bytes(*b"slipway-vm-test!") ^ name.len() as u128
        );
        let node = Node::create(
            &tmp.path().join("node"),
            &images.disk(),
            server.port,
            &machine_id,
        )?;
        Ok(Self {
            _tmp: tmp,
            images,
            server,
            node,
            started: Instant::now(),
        })
    }

    fn release(&self, version: &str) -> Result<()> {
        let work = self.node.dir.join("releases");
        std::fs::create_dir_all(&work)?;
        self.server.release(
            &self.images.keys,
            &work,
            version,
            &self.images.payload(version),
        )
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
