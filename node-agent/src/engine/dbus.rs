//! The engine's D-Bus service: `dev.slipway.Engine1` at `/dev/slipway/Engine1`, and the client
//! proxy the node side and `slipway-agent status` use.
//!
//! Long work (checks that lead to downloads) runs in the background: the methods that start it
//! return at once, and callers follow `Phase` and the progress properties through
//! `PropertiesChanged`. A request that conflicts with work in progress is answered with an
//! error, never queued for minutes behind a download.

use std::sync::Arc;
use std::time::Duration;

use slipway_api::EnginePhase;
use slipway_api::names::{DBUS_INTERFACE, DBUS_NAME, DBUS_PATH};
use zbus::fdo;

use super::runner::{Engine, Snapshot};
use crate::error::{Error, Result};

/// The object served on the bus.
pub struct Engine1 {
    engine: Arc<Engine>,
}

fn fdo_err(e: Error) -> fdo::Error {
    match e {
        Error::Invalid(_) | Error::Refused(_) => fdo::Error::AccessDenied(e.to_string()),
        other => fdo::Error::Failed(other.to_string()),
    }
}

#[zbus::interface(name = "dev.slipway.Engine1")]
impl Engine1 {
    /// Starts a check (and, with auto-download, the download); returns at once.
    async fn check_for_update(&self) -> fdo::Result<()> {
        self.spawn(|e| async move { e.check().await })
    }

    /// Starts (or resumes) downloading and staging the available release; returns at once.
    async fn apply_update(&self) -> fdo::Result<()> {
        let phase = self.engine.snapshot().phase;
        if !phase.accepts_apply() {
            return Err(fdo::Error::AccessDenied(format!(
                "nothing to apply while the engine is {phase}; CheckForUpdate first"
            )));
        }
        self.spawn(|e| async move { e.apply().await })
    }

    /// Health checks passed on the booted trial slot: keep it.
    async fn mark_good(&self) -> fdo::Result<()> {
        self.engine.mark_good().await.map_err(fdo_err)
    }

    /// Abandons the staged or trial release (or goes back to the previous one); the node side
    /// reboots afterwards when a trial was abandoned.
    async fn rollback(&self, reason: &str) -> fdo::Result<()> {
        self.engine.rollback(reason).await.map_err(fdo_err)
    }

    /// `Idle`, `Checking`, `Available`, `Downloading`, `Verifying`, `Staged`, `Trial`,
    /// `RollingBack`, `Failed`, `RolledBack`.
    #[zbus(property)]
    async fn phase(&self) -> String {
        self.engine.snapshot().phase.to_string()
    }

    /// The version running (last marked good).
    #[zbus(property)]
    async fn current_version(&self) -> String {
        self.engine.snapshot().current_version
    }

    /// The version staged or on trial (empty if none).
    #[zbus(property)]
    async fn staged_version(&self) -> String {
        self.engine.snapshot().staged_version
    }

    /// The slot this boot came from (`A` or `B`).
    #[zbus(property)]
    async fn booted_slot(&self) -> String {
        self.engine.snapshot().booted_slot
    }

    /// Bytes of the payload downloaded so far.
    #[zbus(property)]
    async fn downloaded_bytes(&self) -> u64 {
        self.engine.snapshot().downloaded_bytes
    }

    /// Size of the payload in flight.
    #[zbus(property)]
    async fn total_bytes(&self) -> u64 {
        self.engine.snapshot().total_bytes
    }

    /// The last error (empty if none).
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.engine.snapshot().last_error
    }
}

impl Engine1 {
    fn spawn<F, Fut>(&self, work: F) -> fdo::Result<()>
    where
        F: FnOnce(Arc<Engine>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        // Refuse at once if busy, so the caller learns it now rather than from a log.
        let phase = self.engine.snapshot().phase;
        if matches!(
            phase,
            EnginePhase::Checking
                | EnginePhase::Downloading
                | EnginePhase::Verifying
                | EnginePhase::Activating
        ) {
            return Err(fdo::Error::AccessDenied(format!(
                "the engine is busy ({phase}); try again when it is done"
            )));
        }
        let engine = self.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = work(engine.clone()).await {
                tracing::warn!(error = %e, "engine operation failed");
            }
            engine.flush_reports().await;
        });
        Ok(())
    }
}

/// Serves the engine on `conn` (already connected to the system bus, or a private one in
/// tests), claims the well-known name, and emits `PropertiesChanged` whenever the state
/// changes (download progress at most every `progress_every`). Runs until the connection ends.
pub async fn serve(
    conn: &zbus::Connection,
    engine: Arc<Engine>,
    progress_every: Duration,
) -> Result<()> {
    let dbus = |e: zbus::Error| Error::Dbus(e.to_string());
    conn.object_server()
        .at(
            DBUS_PATH,
            Engine1 {
                engine: engine.clone(),
            },
        )
        .await
        .map_err(dbus)?;
    conn.request_name(DBUS_NAME).await.map_err(dbus)?;
    tracing::info!(name = DBUS_NAME, path = DBUS_PATH, "engine on D-Bus");
    let iface = conn
        .object_server()
        .interface::<_, Engine1>(DBUS_PATH)
        .await
        .map_err(dbus)?;
    let mut changed = engine.subscribe();
    let mut last = Snapshot::default();
    let mut tick = tokio::time::interval(progress_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            _ = tick.tick() => {},
        }
        let now = engine.snapshot();
        let obj = iface.get().await;
        let em = iface.signal_emitter();
        // Each property that changed is announced; the emitter groups nothing, so keep the
        // order stable: phase last, so a client that reacts to Phase sees the rest updated.
        if now.current_version != last.current_version {
            obj.current_version_changed(em).await.map_err(dbus)?;
        }
        if now.staged_version != last.staged_version {
            obj.staged_version_changed(em).await.map_err(dbus)?;
        }
        if now.booted_slot != last.booted_slot {
            obj.booted_slot_changed(em).await.map_err(dbus)?;
        }
        if now.total_bytes != last.total_bytes {
            obj.total_bytes_changed(em).await.map_err(dbus)?;
        }
        if now.downloaded_bytes != last.downloaded_bytes {
            obj.downloaded_bytes_changed(em).await.map_err(dbus)?;
        }
        if now.last_error != last.last_error {
            obj.last_error_changed(em).await.map_err(dbus)?;
        }
        if now.phase != last.phase {
            obj.phase_changed(em).await.map_err(dbus)?;
        }
        last = now;
    }
}

/// Client side of the engine's interface (used by the node side and `status`).
#[zbus::proxy(
    interface = "dev.slipway.Engine1",
    default_service = "dev.slipway.Engine1",
    default_path = "/dev/slipway/Engine1"
)]
pub trait EngineClient {
    /// See [`Engine1::check_for_update`].
    fn check_for_update(&self) -> zbus::Result<()>;
    /// See [`Engine1::apply_update`].
    fn apply_update(&self) -> zbus::Result<()>;
    /// See [`Engine1::mark_good`].
    fn mark_good(&self) -> zbus::Result<()>;
    /// See [`Engine1::rollback`].
    fn rollback(&self, reason: &str) -> zbus::Result<()>;
    /// Phase.
    #[zbus(property)]
    fn phase(&self) -> zbus::Result<String>;
    /// Current version.
    #[zbus(property)]
    fn current_version(&self) -> zbus::Result<String>;
    /// Staged version.
    #[zbus(property)]
    fn staged_version(&self) -> zbus::Result<String>;
    /// Booted slot.
    #[zbus(property)]
    fn booted_slot(&self) -> zbus::Result<String>;
    /// Downloaded bytes.
    #[zbus(property)]
    fn downloaded_bytes(&self) -> zbus::Result<u64>;
    /// Total bytes.
    #[zbus(property)]
    fn total_bytes(&self) -> zbus::Result<u64>;
    /// Last error.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
}

/// The interface name, re-exported for policy files and docs.
pub const INTERFACE: &str = DBUS_INTERFACE;
