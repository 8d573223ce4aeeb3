//! Test machines: keys and a root of trust, slot files, machine facts, settings, a boot loader
//! state, and releases signed the way `slipway sign` signs them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_agent::engine::boot::BootBackend;
use slipway_agent::engine::boot::testing::SimulateBoot;
use slipway_agent::engine::sysext::UnitManager;
use slipway_agent::engine::{Engine, Facts, Settings, Slot};
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Envelope, Manifest, PrivateKey, Root, Sha256Digest};
use tempfile::TempDir;

use crate::server::TestServer;

pub const SLOT_SIZE: usize = 8 << 20;

pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_seed([n; 32])
}

/// `len` deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::of(bytes)
}

pub fn manifest(version: &str, served: &[u8], url: &str, format: PayloadFormat) -> Manifest {
    Manifest {
        kind: RELEASE_TYPE.into(),
        channel: "stable".into(),
        version: version.parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        os: Some(OsImage {
            url: url.into(),
            size: served.len() as u64,
            sha256: sha(served),
            format,
            delta: None,
        }),
        runtime: vec![],
        min_from_version: None,
        advisories: vec![],
    }
}

pub fn sign(m: &Manifest) -> Envelope {
    m.sign(&[&key(1)])
}

/// zstd in several independent frames of `frame` input bytes each, as a payload builder
/// that wants resumable downloads would write it.
pub fn zstd_frames(data: &[u8], frame: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(frame) {
        out.extend(zstd::encode_all(piece, 3).unwrap());
    }
    out
}

/// A test machine: files for everything the engine reads and writes.
pub struct Node {
    _tmp: TempDir,
    pub dir: PathBuf,
    pub server: TestServer,
    pub config: PathBuf,
    pub running_a: Vec<u8>,
}

impl Node {
    /// A machine running 1.0.0 from slot A, pointed at `server`.
    pub fn new(server: &TestServer) -> Self {
        Self::with_config(server, "")
    }

    pub fn with_config(server: &TestServer, extra: &str) -> Self {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let running_a = bytes(SLOT_SIZE, 1);
        std::fs::write(dir.join("slot-a"), &running_a).unwrap();
        std::fs::write(dir.join("slot-b"), vec![0u8; SLOT_SIZE]).unwrap();
        let root = Root::new(1, 1, &[key(1).public()]).sign(&[&key(1)]);
        std::fs::write(dir.join("root.json"), root.to_json_pretty()).unwrap();
        std::fs::write(dir.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.join("os-release"), "ID=debian\nSLIPWAY_VERSION=1.0.0\n").unwrap();
        Self::boot(&dir, Slot::A, "boot-1");
        slipway_agent::engine::boot::grub::GrubEnv::create(dir.join("grubenv")).unwrap();
        let config = dir.join("engine.toml");
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                r#"server = "{url}"
channel = "stable"
root = "{d}/root.json"
state-dir = "{d}/state"
machine-id-file = "{d}/machine-id"
os-release = "{d}/os-release"
cmdline = "{d}/cmdline"
boot-id-file = "{d}/boot_id"
checkpoint-bytes = 1048576
http-timeout = "5s"
{extra}
[slots]
a = "{d}/slot-a"
b = "{d}/slot-b"
[boot]
backend = "grub"
grubenv = "{d}/grubenv"
[runtime]
extensions-dir = "{d}/extensions"
previous-dir = "{d}/extensions.previous"
restart-units = ["containerd.service"]
"#,
                url = server.url()
            ),
        )
        .unwrap();
        Self {
            _tmp: tmp,
            dir,
            server: server.clone(),
            config,
            running_a,
        }
    }

    /// Simulates a boot into `slot`: the kernel command line and a new boot id.
    pub fn boot(dir: &Path, slot: Slot, boot_id: &str) {
        std::fs::write(
            dir.join("cmdline"),
            format!("console=ttyS0 slipway.slot={slot} ro\n"),
        )
        .unwrap();
        std::fs::write(dir.join("boot_id"), format!("{boot_id}\n")).unwrap();
    }

    pub fn reboot_into(&self, slot: Slot, boot_id: &str) {
        Self::boot(&self.dir, slot, boot_id);
    }

    pub fn settings(&self) -> Settings {
        Settings::load(&[], std::slice::from_ref(&self.config)).unwrap()
    }

    /// What the boot loader does at power-on: pick the slot, spend a try.
    pub fn backend_simulate_boot(&self) -> Option<Slot> {
        slipway_agent::engine::boot::grub::GrubEnv::new(self.dir.join("grubenv"))
            .simulate_boot()
            .unwrap()
    }

    pub fn backend(&self) -> Box<dyn BootBackend> {
        slipway_agent::engine::boot::open(&self.settings().boot).unwrap()
    }

    /// Opens (and starts) an engine as the daemon would, with `units` for runtime images.
    pub async fn engine_with(&self, units: Arc<dyn UnitManager>) -> Engine {
        let settings = self.settings();
        let facts = Facts::read(&settings).unwrap();
        let engine = Engine::open(settings, facts, self.backend(), units).unwrap();
        engine.start().await.unwrap();
        engine
    }

    pub async fn engine(&self) -> Engine {
        self.engine_with(Arc::new(RecordingUnits::default())).await
    }

    pub fn slot(&self, slot: Slot) -> Vec<u8> {
        std::fs::read(self.dir.join(match slot {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        }))
        .unwrap()
    }

    /// Publishes `served` at `/v1/payloads/{name}` and offers `envelope`.
    pub fn offer(&self, name: &str, served: Vec<u8>, envelope: Envelope) {
        self.server.with(|r| {
            r.payloads.insert(name.into(), served.into());
            r.offer = Some(envelope);
        });
    }
}

/// Records unit restarts; fails the units listed in `fail`.
#[derive(Default)]
pub struct RecordingUnits {
    pub restarted: std::sync::Mutex<Vec<String>>,
    pub fail: Vec<String>,
}

#[async_trait::async_trait]
impl UnitManager for RecordingUnits {
    async fn restart_unit(&self, unit: &str) -> slipway_agent::Result<()> {
        self.restarted.lock().unwrap().push(unit.to_owned());
        if self.fail.iter().any(|u| u == unit) {
            return Err(slipway_agent::Error::Dbus(format!(
                "restarting {unit}: job failed"
            )));
        }
        Ok(())
    }
}
