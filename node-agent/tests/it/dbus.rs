//! The engine on a real (private) dbus-daemon: a zbus client calls every method and receives
//! `PropertiesChanged`; a systemd1 stand-in on the same bus records the runtime refresh.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use slipway_agent::engine::dbus::{self, EngineClientProxy};
use slipway_agent::engine::sysext::Systemd;
use slipway_agent::engine::{Engine, Facts, Slot};
use slipway_api::manifest::{PayloadFormat, RuntimeImage};
use zbus::OwnedObjectPath;
use zbus::object_server::SignalEmitter;

use crate::fixtures::*;
use crate::server::TestServer;

/// A private bus daemon, killed on drop.
pub struct Bus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let mut child = Command::new("dbus-daemon")
            .args([
                "--session",
                "--nofork",
                "--print-address=1",
                "--address",
                &address,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is installed by scripts/setup.sh");
        // The daemon prints its address once it listens.
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "dbus-daemon printed no address");
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stand-in for `org.freedesktop.systemd1.Manager`: records restarts, finishes each job at
/// once with `done` (or `failed` for units in `fail`).
pub struct FakeSystemd {
    pub restarted: Arc<Mutex<Vec<String>>>,
    pub fail: Vec<String>,
    next_job: u32,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    async fn restart_unit(
        &mut self,
        name: &str,
        _mode: &str,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> OwnedObjectPath {
        self.next_job += 1;
        let id = self.next_job;
        self.restarted.lock().unwrap().push(name.to_owned());
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap();
        let result = if self.fail.iter().any(|u| u == name) {
            "failed"
        } else {
            "done"
        };
        let (emitter, job2, unit) = (emitter.to_owned(), job.clone(), name.to_owned());
        // systemd answers the call first and signals the job's end later.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = FakeSystemd::job_removed(&emitter, id, job2, unit, result.into()).await;
        });
        job
    }

    async fn subscribe(&self) {}

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[tokio::test]
async fn engine_serves_every_method_and_signals_property_changes() {
    let bus = Bus::start();
    let systemd_conn = bus.connect().await;
    let restarted = Arc::new(Mutex::new(Vec::new()));
    systemd_conn
        .object_server()
        .at(
            "/org/freedesktop/systemd1",
            FakeSystemd {
                restarted: restarted.clone(),
                fail: vec![],
                next_job: 0,
            },
        )
        .await
        .unwrap();
    systemd_conn
        .request_name("org.freedesktop.systemd1")
        .await
        .unwrap();

    let server = TestServer::start().await;
    let node = Node::new(&server);
    let image = bytes(3 << 20, 21);
    let runtime = bytes(200_000, 22);
    let mut m = manifest("2.0.0", &image, "/v1/payloads/os", PayloadFormat::Raw);
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

    let engine_conn = bus.connect().await;
    let settings = node.settings();
    let facts = Facts::read(&settings).unwrap();
    let units = Arc::new(Systemd::new(engine_conn.clone(), Duration::from_secs(10)));
    let engine = Arc::new(Engine::open(settings, facts, node.backend(), units).unwrap());
    engine.start().await.unwrap();
    {
        let (engine, conn) = (engine.clone(), engine_conn.clone());
        tokio::spawn(async move { dbus::serve(&conn, engine, Duration::from_millis(50)).await });
    }

    let client_conn = bus.connect().await;
    let proxy = wait_for_engine(&client_conn).await;
    assert_eq!(proxy.phase().await.unwrap(), "Idle");
    assert_eq!(proxy.current_version().await.unwrap(), "1.0.0");
    assert_eq!(proxy.booted_slot().await.unwrap(), "A");
    let mut phases = proxy.receive_phase_changed().await;

    proxy.check_for_update().await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.last().map(String::as_str) != Some("Staged") {
        let change = tokio::time::timeout_at(deadline, phases.next())
            .await
            .expect("PropertiesChanged for Phase")
            .unwrap();
        seen.push(change.get().await.unwrap());
    }
    assert!(seen.contains(&"Downloading".to_owned()), "{seen:?}");
    assert_eq!(proxy.staged_version().await.unwrap(), "2.0.0");
    assert_eq!(proxy.total_bytes().await.unwrap(), 3 << 20);
    assert_eq!(proxy.downloaded_bytes().await.unwrap(), 3 << 20);
    assert_eq!(
        restarted.lock().unwrap().clone(),
        vec!["systemd-sysext.service", "containerd.service"]
    );

    // MarkGood is refused before the reboot: it is not a trial yet.
    let err = proxy.mark_good().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("not valid while the engine is Staged"),
        "{err}"
    );
    // Rollback cancels the staged release; the change arrives as a signal (the proxy's
    // property cache follows PropertiesChanged).
    proxy.rollback("changed my mind").await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), phases.next())
        .await
        .expect("PropertiesChanged after Rollback")
        .unwrap();
    assert_eq!(next.get().await.unwrap(), "Failed");
    assert_eq!(engine.boot().status().unwrap().next, Some(Slot::A));
    // ApplyUpdate with nothing available is refused at once.
    let err = proxy.apply_update().await.unwrap_err();
    assert!(err.to_string().contains("nothing to apply"), "{err}");
}

async fn wait_for_engine(conn: &zbus::Connection) -> EngineClientProxy<'static> {
    for _ in 0..100 {
        if let Ok(p) = EngineClientProxy::new(conn).await
            && p.phase().await.is_ok()
        {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the engine never appeared on the bus");
}
