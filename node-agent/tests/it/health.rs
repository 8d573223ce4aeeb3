//! The post-boot health check: a unit's ActiveState read from a systemd stand-in on a private
//! dbus-daemon (GetUnit + the Unit interface's property, as on a real system bus), real commands
//! run with exit codes and timeouts, and the Node's readiness.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use slipway_agent::node::health::{
    HealthCheck, NodeReadiness, SystemdUnits, check_once, wait_healthy,
};
use zbus::OwnedObjectPath;

use crate::dbus::Bus;

/// systemd's own error for a unit it has not loaded.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SystemdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

struct Manager {
    units: Arc<Mutex<BTreeMap<String, String>>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, SystemdError> {
        if !self.units.lock().unwrap().contains_key(name) {
            return Err(SystemdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        let escaped: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Ok(OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}")).unwrap())
    }
}

struct UnitObject {
    name: String,
    units: Arc<Mutex<BTreeMap<String, String>>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitObject {
    #[zbus(property)]
    async fn active_state(&self) -> String {
        self.units
            .lock()
            .unwrap()
            .get(&self.name)
            .cloned()
            .unwrap_or_default()
    }
}

struct Ready(Arc<Mutex<bool>>);

#[async_trait]
impl NodeReadiness for Ready {
    async fn ready(&self) -> Result<bool, String> {
        Ok(*self.0.lock().unwrap())
    }
}

fn check(unit: Option<&str>, command: &[&str], timeout_ms: u64) -> HealthCheck {
    HealthCheck {
        unit: unit.map(Into::into),
        command: command.iter().map(|s| s.to_string()).collect(),
        node_ready: true,
        timeout: Duration::from_millis(timeout_ms),
        interval: Duration::from_millis(25),
        command_timeout: Duration::from_millis(500),
    }
}

/// A systemd stand-in serving `units` (name → ActiveState) on `bus`.
pub async fn systemd(bus: &Bus, units: Arc<Mutex<BTreeMap<String, String>>>) -> zbus::Connection {
    let conn = bus.connect().await;
    conn.object_server()
        .at(
            "/org/freedesktop/systemd1",
            Manager {
                units: units.clone(),
            },
        )
        .await
        .unwrap();
    let names: Vec<String> = units.lock().unwrap().keys().cloned().collect();
    for name in names {
        let escaped: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        conn.object_server()
            .at(
                format!("/org/freedesktop/systemd1/unit/{escaped}"),
                UnitObject {
                    name,
                    units: units.clone(),
                },
            )
            .await
            .unwrap();
    }
    conn.request_name("org.freedesktop.systemd1").await.unwrap();
    conn
}

#[tokio::test]
async fn every_check_must_pass_and_a_failure_names_the_check() {
    let bus = Bus::start();
    let units = Arc::new(Mutex::new(BTreeMap::from([
        ("kubelet.service".to_string(), "active".to_string()),
        ("broken.service".to_string(), "failed".to_string()),
    ])));
    let _systemd = systemd(&bus, units.clone()).await;
    let sd = SystemdUnits::new(bus.connect().await);
    let ready = Ready(Arc::new(Mutex::new(true)));

    check_once(
        &check(Some("kubelet.service"), &["true"], 1000),
        &sd,
        &ready,
    )
    .await
    .unwrap();
    let e = check_once(&check(Some("broken.service"), &[], 1000), &sd, &ready)
        .await
        .unwrap_err();
    assert_eq!(e, "unit broken.service is failed, not active");
    let e = check_once(
        &check(
            Some("kubelet.service"),
            &["sh", "-c", "echo no route >&2; exit 3"],
            1000,
        ),
        &sd,
        &ready,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("exited with exit status: 3") && e.contains("no route"),
        "{e}"
    );
    let e = check_once(&check(None, &["sleep", "5"], 1000), &sd, &ready)
        .await
        .unwrap_err();
    assert!(e.contains("did not finish"), "{e}");
    let e = check_once(&check(None, &["/nonexistent/probe"], 1000), &sd, &ready)
        .await
        .unwrap_err();
    assert!(e.contains("could not start"), "{e}");
    *ready.0.lock().unwrap() = false;
    let e = check_once(&check(None, &[], 1000), &sd, &ready)
        .await
        .unwrap_err();
    assert_eq!(e, "the Node is not Ready");
}

#[tokio::test]
async fn waiting_passes_once_the_unit_comes_up_and_times_out_with_the_last_failure() {
    let bus = Bus::start();
    let units = Arc::new(Mutex::new(BTreeMap::from([(
        "kubelet.service".to_string(),
        "activating".to_string(),
    )])));
    let _systemd = systemd(&bus, units.clone()).await;
    let sd = SystemdUnits::new(bus.connect().await);
    let ready = Ready(Arc::new(Mutex::new(true)));
    let flip = units.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        flip.lock()
            .unwrap()
            .insert("kubelet.service".into(), "active".into());
    });
    wait_healthy(&check(Some("kubelet.service"), &[], 5_000), &sd, &ready)
        .await
        .unwrap();

    // A unit systemd never loaded is inactive (systemd's NoSuchUnit), and the wait gives up.
    let started = std::time::Instant::now();
    let e = wait_healthy(&check(Some("missing.service"), &[], 300), &sd, &ready)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "not healthy after 0.3s: unit missing.service is inactive, not active"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}
