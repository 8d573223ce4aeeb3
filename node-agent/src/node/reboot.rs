//! Rebooting through systemd-logind over D-Bus (`org.freedesktop.login1.Manager`), honouring
//! inhibitors: before asking for the reboot the agent lists the inhibitor locks, and a `block`
//! lock on `shutdown` (a backup job, a database checkpoint, an admin's `systemd-inhibit`) makes it
//! report who holds it and why, and wait, never passing the flag that would override it.

use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1Manager {
    /// (what, who, why, mode, uid, pid) for every inhibitor lock.
    fn list_inhibitors(&self) -> zbus::Result<Vec<(String, String, String, String, u32, u32)>>;
    /// Reboots; flags 0 honours inhibitors.
    fn reboot_with_flags(&self, flags: u64) -> zbus::Result<()>;
}

/// One inhibitor lock that blocks a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    /// What it inhibits (`shutdown`, `sleep`, ... colon-separated).
    pub what: String,
    /// Who holds it.
    pub who: String,
    /// Why, in its own words.
    pub why: String,
    /// Its process id.
    pub pid: u32,
}

impl std::fmt::Display for Inhibitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}): {}", self.who, self.pid, self.why)
    }
}

/// What asking for a reboot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootOutcome {
    /// logind accepted the request; the machine is going down.
    Requested,
    /// Block inhibitors hold the reboot off.
    Inhibited(Vec<Inhibitor>),
}

/// A reboot request failed for a reason other than an inhibitor.
#[derive(Debug, thiserror::Error)]
#[error("asking systemd-logind to reboot: {0}")]
pub struct RebootError(#[from] zbus::Error);

/// Something that can reboot the machine (logind in production, a recorder in tests).
#[async_trait]
pub trait Rebooter: Send + Sync {
    /// Asks for a reboot unless an inhibitor blocks it.
    async fn reboot(&self) -> Result<RebootOutcome, RebootError>;
}

/// systemd-logind on a D-Bus connection (the system bus in production).
#[derive(Debug, Clone)]
pub struct Logind {
    conn: zbus::Connection,
}

impl Logind {
    /// Uses `conn` (e.g. `zbus::Connection::system().await?`).
    pub fn new(conn: zbus::Connection) -> Self {
        Self { conn }
    }
}

fn blocking(list: Vec<(String, String, String, String, u32, u32)>) -> Vec<Inhibitor> {
    list.into_iter()
        .filter(|(what, _, _, mode, _, _)| {
            mode == "block" && what.split(':').any(|w| w == "shutdown")
        })
        .map(|(what, who, why, _, _, pid)| Inhibitor {
            what,
            who,
            why,
            pid,
        })
        .collect()
}

#[async_trait]
impl Rebooter for Logind {
    async fn reboot(&self) -> Result<RebootOutcome, RebootError> {
        let proxy = Login1ManagerProxy::new(&self.conn).await?;
        let held = blocking(proxy.list_inhibitors().await?);
        if !held.is_empty() {
            return Ok(RebootOutcome::Inhibited(held));
        }
        match proxy.reboot_with_flags(0).await {
            Ok(()) => Ok(RebootOutcome::Requested),
            // A lock taken between the listing and the request: logind refuses; report it.
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().contains("Inhibit") => {
                let held = blocking(proxy.list_inhibitors().await?);
                Ok(RebootOutcome::Inhibited(held))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Asks for a reboot until it is accepted or `deadline` passes, waiting `retry` while inhibitors
/// block it; `on_inhibited` hears about each refusal (to report `RebootInhibited`). Returns the
/// last outcome.
pub async fn reboot_when_allowed(
    rebooter: &dyn Rebooter,
    retry: Duration,
    deadline: Duration,
    mut on_inhibited: impl FnMut(&[Inhibitor]) + Send,
) -> Result<RebootOutcome, RebootError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match rebooter.reboot().await? {
            RebootOutcome::Requested => {
                info!("reboot requested from systemd-logind");
                return Ok(RebootOutcome::Requested);
            }
            RebootOutcome::Inhibited(held) => {
                let list: Vec<String> = held.iter().map(ToString::to_string).collect();
                warn!(inhibitors = %list.join("; "), "reboot blocked by inhibitor locks; waiting");
                on_inhibited(&held);
                if tokio::time::Instant::now() + retry > until {
                    return Ok(RebootOutcome::Inhibited(held));
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}
