//! systemd's D-Bus API (`org.freedesktop.systemd1`): the Manager and Unit proxies, defined once,
//! and the two calls the agent makes through them: restarting a unit (the engine, after a
//! runtime image changed: `engine::sysext`) and reading a unit's state (the node side's health
//! check: `node::health`).

use std::time::Duration;

use futures::StreamExt;
use zbus::OwnedObjectPath;

use crate::error::{Error, Result};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// The object path of a loaded unit (`NoSuchUnit` if it is not loaded).
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a restart job.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Asks systemd to send job signals to this client.
    fn subscribe(&self) -> zbus::Result<()>;
    /// A job finished with `result` (`done`, `failed`, ...).
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    /// `active`, `failed`, `inactive`, ...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// systemd's manager over one D-Bus connection (the system bus in production).
#[derive(Debug, Clone)]
pub struct SystemdClient {
    conn: zbus::Connection,
}

impl SystemdClient {
    /// Over `conn`.
    pub fn new(conn: zbus::Connection) -> Self {
        Self { conn }
    }

    /// Restarts `unit` (`RestartUnit`, mode `replace`) and waits at most `timeout` for its job
    /// to end; an error naming the unit unless the job's result is `done`.
    pub async fn restart_unit(&self, unit: &str, timeout: Duration) -> Result<()> {
        let dbus = |e: zbus::Error| Error::Dbus(format!("systemd RestartUnit({unit}): {e}"));
        let proxy = ManagerProxy::new(&self.conn).await.map_err(dbus)?;
        // Listen before queueing, so a fast job cannot finish unseen.
        let mut removed = proxy.receive_job_removed().await.map_err(dbus)?;
        let _ = proxy.subscribe().await;
        let job = proxy.restart_unit(unit, "replace").await.map_err(dbus)?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job == job {
                    return Ok(args.result.clone());
                }
            }
            Err(Error::Dbus(format!(
                "systemd: job stream ended while restarting {unit}"
            )))
        };
        let result = tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::Dbus(format!("restarting {unit}: no result within {timeout:?}"))
        })??;
        if result == "done" {
            Ok(())
        } else {
            Err(Error::Dbus(format!("restarting {unit}: job {result}")))
        }
    }

    /// The unit's `ActiveState`: `active`, `failed`, `inactive`, ... (`inactive` for a unit
    /// systemd has not loaded: systemd's own word for it).
    pub async fn active_state(&self, unit: &str) -> zbus::Result<String> {
        let manager = ManagerProxy::new(&self.conn).await?;
        let path = match manager.get_unit(unit).await {
            Ok(p) => p,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                return Ok("inactive".into());
            }
            Err(e) => return Err(e),
        };
        let unit_proxy = UnitProxy::builder(&self.conn).path(path).build().await?;
        unit_proxy.active_state().await
    }
}
