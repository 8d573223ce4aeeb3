//! Rebooting through a systemd-logind stand-in on a private dbus-daemon: no inhibitor means one
//! `RebootWithFlags(0)`; a `block` inhibitor on shutdown is reported (who, why) and waited out,
//! never overridden; `delay` inhibitors and other kinds do not block.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_agent::node::reboot::{
    Inhibitor, Logind, RebootOutcome, Rebooter, reboot_when_allowed,
};

use crate::dbus::Bus;

pub type Lock = (String, String, String, String, u32, u32);

/// Stand-in for `org.freedesktop.login1.Manager`: inhibitor locks to list, reboots recorded.
#[derive(Clone, Default)]
pub struct FakeLogin1 {
    pub inhibitors: Arc<Mutex<Vec<Lock>>>,
    pub reboots: Arc<Mutex<Vec<u64>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogin1 {
    async fn list_inhibitors(&self) -> Vec<Lock> {
        self.inhibitors.lock().unwrap().clone()
    }

    async fn reboot_with_flags(&self, flags: u64) {
        self.reboots.lock().unwrap().push(flags);
    }
}

pub fn lock(what: &str, who: &str, why: &str, mode: &str) -> Lock {
    (what.into(), who.into(), why.into(), mode.into(), 0, 4242)
}

pub async fn logind(bus: &Bus, fake: FakeLogin1) -> zbus::Connection {
    let conn = bus.connect().await;
    conn.object_server()
        .at("/org/freedesktop/login1", fake)
        .await
        .unwrap();
    conn.request_name("org.freedesktop.login1").await.unwrap();
    conn
}

#[tokio::test]
async fn reboots_through_logind_only_when_no_block_inhibitor_holds_shutdown() {
    let bus = Bus::start();
    let fake = FakeLogin1::default();
    fake.inhibitors.lock().unwrap().extend([
        lock("sleep", "laptop-lid", "lid", "block"),
        lock("shutdown", "journal", "flush", "delay"),
    ]);
    let _service = logind(&bus, fake.clone()).await;
    let rebooter = Logind::new(bus.connect().await);
    assert_eq!(rebooter.reboot().await.unwrap(), RebootOutcome::Requested);
    assert_eq!(
        *fake.reboots.lock().unwrap(),
        vec![0],
        "flags 0: inhibitors honoured"
    );

    fake.inhibitors.lock().unwrap().push(lock(
        "shutdown:sleep",
        "backup",
        "nightly backup running",
        "block",
    ));
    let outcome = rebooter.reboot().await.unwrap();
    assert_eq!(
        outcome,
        RebootOutcome::Inhibited(vec![Inhibitor {
            what: "shutdown:sleep".into(),
            who: "backup".into(),
            why: "nightly backup running".into(),
            pid: 4242,
        }])
    );
    assert_eq!(
        fake.reboots.lock().unwrap().len(),
        1,
        "no reboot while inhibited"
    );
}

#[tokio::test]
async fn an_inhibited_reboot_is_retried_and_reported_until_the_lock_goes() {
    let bus = Bus::start();
    let fake = FakeLogin1::default();
    fake.inhibitors
        .lock()
        .unwrap()
        .push(lock("shutdown", "db", "checkpoint", "block"));
    let _service = logind(&bus, fake.clone()).await;
    let rebooter = Logind::new(bus.connect().await);
    let inhibitors = fake.inhibitors.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        inhibitors.lock().unwrap().clear();
    });
    let mut reports = Vec::new();
    let outcome = reboot_when_allowed(
        &rebooter,
        Duration::from_millis(50),
        Duration::from_secs(10),
        |held| reports.push(held[0].who.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, RebootOutcome::Requested);
    assert!(
        !reports.is_empty() && reports.iter().all(|w| w == "db"),
        "{reports:?}"
    );
    assert_eq!(*fake.reboots.lock().unwrap(), vec![0]);

    // A lock that never goes: give up at the deadline, still without rebooting.
    fake.inhibitors
        .lock()
        .unwrap()
        .push(lock("shutdown", "db", "checkpoint", "block"));
    let outcome = reboot_when_allowed(
        &rebooter,
        Duration::from_millis(50),
        Duration::from_millis(200),
        |_| {},
    )
    .await
    .unwrap();
    assert!(matches!(outcome, RebootOutcome::Inhibited(_)));
    assert_eq!(fake.reboots.lock().unwrap().len(), 1);
}
