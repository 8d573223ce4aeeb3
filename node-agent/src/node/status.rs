//! What the node reports in its `NodeUpdate.status`, decided purely from the engine's D-Bus
//! properties and what the node side itself is doing (draining, rebooting, a health check), and
//! when a new report is worth a write: phase, versions and errors at once, download progress at
//! most every `min_interval` so a fast download does not become a write storm on the API server.

use std::time::Duration;

use slipway_api::crd::{NodePhase, NodeUpdateStatus};
use slipway_api::{EnginePhase, WaitingReason};

// The engine's D-Bus properties are its `Snapshot`, read back over the bus.
use crate::engine::Snapshot;

/// What the node side is doing on top of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeActivity {
    /// Cordoned and evicting.
    pub draining: bool,
    /// Reboot requested from logind.
    pub rebooting: bool,
    /// The version last marked good by this agent (reported `Healthy` while it runs).
    pub healthy_version: Option<String>,
    /// Why the node side waits (`DrainBlocked`, `RebootInhibited`, `GrantReturned`), if it does.
    pub waiting_reason: Option<WaitingReason>,
    /// The node side's own last error (drain or health), which wins over the engine's.
    pub error: Option<String>,
    /// The trial boot failed its health check (reported `Failed` until the engine is back on
    /// the old slot and says `RolledBack`).
    pub failed: bool,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The status to report.
pub fn status(engine: &Snapshot, node: &NodeActivity) -> NodeUpdateStatus {
    let phase = match engine.phase {
        EnginePhase::Trial | EnginePhase::RollingBack if node.failed => NodePhase::Failed,
        EnginePhase::Downloading | EnginePhase::Verifying | EnginePhase::Activating => {
            NodePhase::Downloading
        }
        EnginePhase::Staged if node.rebooting => NodePhase::Rebooting,
        EnginePhase::Staged if node.draining => NodePhase::Draining,
        EnginePhase::Staged => NodePhase::Staged,
        EnginePhase::Trial => NodePhase::Verifying,
        EnginePhase::RollingBack => NodePhase::Rebooting,
        EnginePhase::Failed => NodePhase::Failed,
        EnginePhase::RolledBack => NodePhase::RolledBack,
        // Running a version; healthy if we verified this one.
        EnginePhase::Idle | EnginePhase::Checking | EnginePhase::Available => {
            if node.healthy_version.as_deref() == Some(engine.current_version.as_str())
                && !engine.current_version.is_empty()
            {
                NodePhase::Healthy
            } else {
                NodePhase::Idle
            }
        }
    };
    let progress = (phase == NodePhase::Downloading && engine.total_bytes > 0).then(|| {
        (engine.downloaded_bytes.min(engine.total_bytes) * 100 / engine.total_bytes) as u8
    });
    NodeUpdateStatus {
        phase,
        current_version: non_empty(&engine.current_version),
        staged_version: non_empty(&engine.staged_version),
        booted_slot: non_empty(&engine.booted_slot),
        progress,
        waiting_reason: node.waiting_reason.map(|r| r.to_string()),
        last_error: node.error.clone().or_else(|| non_empty(&engine.last_error)),
        conditions: Vec::new(),
    }
}

/// Whether `next` should be written, given what was written last and how long ago.
pub fn should_write(
    last: Option<&NodeUpdateStatus>,
    since_last: Duration,
    next: &NodeUpdateStatus,
    min_interval: Duration,
) -> bool {
    let Some(last) = last else { return true };
    if last == next {
        return false;
    }
    let mut without_progress = last.clone();
    without_progress.progress = next.progress;
    if &without_progress != next {
        return true; // something other than progress changed
    }
    since_last >= min_interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(phase: EnginePhase) -> Snapshot {
        Snapshot {
            phase,
            current_version: "1.0.0".into(),
            staged_version: "2.0.0".into(),
            booted_slot: "A".into(),
            downloaded_bytes: 30,
            total_bytes: 120,
            last_error: String::new(),
        }
    }

    #[test]
    fn engine_phases_map_to_node_phases_with_the_node_sides_activity_on_top() {
        let idle = NodeActivity::default();
        let draining = NodeActivity {
            draining: true,
            ..Default::default()
        };
        let rebooting = NodeActivity {
            draining: true,
            rebooting: true,
            ..Default::default()
        };
        for (engine_phase, activity, want) in [
            (EnginePhase::Idle, &idle, NodePhase::Idle),
            (EnginePhase::Checking, &idle, NodePhase::Idle),
            (EnginePhase::Downloading, &idle, NodePhase::Downloading),
            (EnginePhase::Verifying, &idle, NodePhase::Downloading),
            (EnginePhase::Activating, &idle, NodePhase::Downloading),
            (EnginePhase::Staged, &idle, NodePhase::Staged),
            (EnginePhase::Staged, &draining, NodePhase::Draining),
            (EnginePhase::Staged, &rebooting, NodePhase::Rebooting),
            (EnginePhase::Trial, &idle, NodePhase::Verifying),
            (EnginePhase::RollingBack, &idle, NodePhase::Rebooting),
            (EnginePhase::Failed, &idle, NodePhase::Failed),
            (EnginePhase::RolledBack, &idle, NodePhase::RolledBack),
        ] {
            assert_eq!(
                status(&engine(engine_phase), activity).phase,
                want,
                "{engine_phase}"
            );
        }
        let failed = NodeActivity {
            failed: true,
            ..Default::default()
        };
        assert_eq!(
            status(&engine(EnginePhase::RollingBack), &failed).phase,
            NodePhase::Failed
        );
        assert_eq!(
            status(&engine(EnginePhase::RolledBack), &failed).phase,
            NodePhase::RolledBack
        );
        let healthy = NodeActivity {
            healthy_version: Some("1.0.0".into()),
            ..Default::default()
        };
        assert_eq!(
            status(&engine(EnginePhase::Idle), &healthy).phase,
            NodePhase::Healthy
        );
        let stale = NodeActivity {
            healthy_version: Some("0.9.0".into()),
            ..Default::default()
        };
        assert_eq!(
            status(&engine(EnginePhase::Idle), &stale).phase,
            NodePhase::Idle
        );
    }

    #[test]
    fn progress_versions_and_errors_are_reported() {
        let s = status(&engine(EnginePhase::Downloading), &NodeActivity::default());
        assert_eq!(s.progress, Some(25));
        assert_eq!(s.current_version.as_deref(), Some("1.0.0"));
        assert_eq!(s.booted_slot.as_deref(), Some("A"));
        assert_eq!(
            status(&engine(EnginePhase::Staged), &NodeActivity::default()).progress,
            None
        );
        let mut e = engine(EnginePhase::Failed);
        e.last_error = "sha256 mismatch".into();
        assert_eq!(
            status(&e, &NodeActivity::default()).last_error.as_deref(),
            Some("sha256 mismatch")
        );
        let node = NodeActivity {
            error: Some("drain blocked by default/web-1 (PDB web-pdb)".into()),
            waiting_reason: Some(WaitingReason::DrainBlocked),
            ..Default::default()
        };
        let s = status(&engine(EnginePhase::Staged), &node);
        assert_eq!(s.last_error, node.error);
        assert_eq!(s.waiting_reason.as_deref(), Some("DrainBlocked"));
        let empty = Snapshot {
            phase: EnginePhase::Idle,
            ..Default::default()
        };
        assert_eq!(
            status(&empty, &NodeActivity::default()).current_version,
            None
        );
    }

    #[test]
    fn progress_is_debounced_but_everything_else_is_written_at_once() {
        let min = Duration::from_secs(5);
        let a = status(&engine(EnginePhase::Downloading), &NodeActivity::default());
        assert!(should_write(None, Duration::ZERO, &a, min));
        assert!(
            !should_write(Some(&a), Duration::from_secs(60), &a, min),
            "nothing changed"
        );
        let mut more = engine(EnginePhase::Downloading);
        more.downloaded_bytes = 90;
        let b = status(&more, &NodeActivity::default());
        assert!(
            !should_write(Some(&a), Duration::from_secs(1), &b, min),
            "progress only, too soon"
        );
        assert!(
            should_write(Some(&a), Duration::from_secs(5), &b, min),
            "progress after the interval"
        );
        let staged = status(&engine(EnginePhase::Staged), &NodeActivity::default());
        assert!(
            should_write(Some(&b), Duration::ZERO, &staged, min),
            "phase change at once"
        );
    }
}
