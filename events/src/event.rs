//! The events themselves: the closed set of types Slipway emits ([`EventType`]) and one event
//! ([`Event`]) with the CloudEvents 1.0 context attributes it carries in HTTP binary mode.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;

/// The CloudEvents specification version sent in `ce-specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// The `datacontenttype` of every Slipway event (sent as the `Content-Type` header).
pub const CONTENT_TYPE: &str = "application/json";

/// What happened. The CloudEvents `type` is [`EventType::as_str`], e.g. `dev.slipway.node.granted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The operator granted a node a drain and reboot (subject: the node).
    NodeGranted,
    /// A node finished draining and asked to reboot (subject: the node).
    NodeDrained,
    /// A node booted the new version and is verifying it (subject: the node).
    NodeRebooted,
    /// A node's new version passed its health check (subject: the node).
    NodeHealthy,
    /// A node's update failed (subject: the node).
    NodeFailed,
    /// A node fell back to its previous version (subject: the node).
    NodeRolledBack,
    /// A rollout policy halted after too many failures (subject: the policy).
    RolloutHalted,
    /// Every node a policy selects runs its target version (subject: the policy).
    RolloutCompleted,
    /// A policy's Prometheus gates went from all open to some closed (subject: the policy).
    RolloutGateClosed,
    /// A policy's Prometheus gates are all open again (subject: the policy).
    RolloutGateOpened,
    /// A release was published on the update server (subject: the version).
    ReleasePublished,
    /// An advisory was set on a published release (subject: the version).
    ReleaseAdvised,
    /// The update server opened the next wave of a health-gated rollout (subject: the channel).
    RolloutWaveOpened,
    /// The update server halted a health-gated rollout: failures above its gate (subject: the
    /// channel).
    RolloutWaveHalted,
}

impl EventType {
    /// Every type, in a fixed order.
    pub const ALL: [Self; 14] = [
        Self::NodeGranted,
        Self::NodeDrained,
        Self::NodeRebooted,
        Self::NodeHealthy,
        Self::NodeFailed,
        Self::NodeRolledBack,
        Self::RolloutHalted,
        Self::RolloutCompleted,
        Self::RolloutGateClosed,
        Self::RolloutGateOpened,
        Self::ReleasePublished,
        Self::ReleaseAdvised,
        Self::RolloutWaveOpened,
        Self::RolloutWaveHalted,
    ];

    /// The CloudEvents `type` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeGranted => "dev.slipway.node.granted",
            Self::NodeDrained => "dev.slipway.node.drained",
            Self::NodeRebooted => "dev.slipway.node.rebooted",
            Self::NodeHealthy => "dev.slipway.node.healthy",
            Self::NodeFailed => "dev.slipway.node.failed",
            Self::NodeRolledBack => "dev.slipway.node.rolled-back",
            Self::RolloutHalted => "dev.slipway.rollout.halted",
            Self::RolloutCompleted => "dev.slipway.rollout.completed",
            Self::RolloutGateClosed => "dev.slipway.rollout.gate-closed",
            Self::RolloutGateOpened => "dev.slipway.rollout.gate-opened",
            Self::ReleasePublished => "dev.slipway.release.published",
            Self::ReleaseAdvised => "dev.slipway.release.advised",
            Self::RolloutWaveOpened => "dev.slipway.rollout.wave-opened",
            Self::RolloutWaveHalted => "dev.slipway.rollout.wave-halted",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. The `source` is the emitter's (one per process), so it is not stored here.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `id`: a random UUID (version 4), unique per event.
    pub id: String,
    /// `type`.
    pub kind: EventType,
    /// `subject`: the node, policy or release version the event is about.
    pub subject: Option<String>,
    /// `time`: when it happened (sent as RFC 3339).
    pub time: Timestamp,
    /// The payload, sent as the JSON body.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event with a fresh random id. `time` comes from the caller's clock.
    pub fn new(
        kind: EventType,
        subject: impl Into<String>,
        time: Timestamp,
        data: serde_json::Value,
    ) -> Self {
        Self {
            id: new_id(),
            kind,
            subject: Some(subject.into()),
            time,
            data,
        }
    }
}

/// A random UUID v4 in its usual text form. If the OS has no randomness to give (it practically
/// always does), falls back to a value that is still unique within this process: the time in
/// nanoseconds and a counter, so an event is never left without an id.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let nanos = Timestamp::now().as_nanosecond().unsigned_abs();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        b[..8].copy_from_slice(&(nanos as u64).to_be_bytes());
        b[8..].copy_from_slice(&(n ^ u64::from(std::process::id()) << 32).to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_uuid_v4_and_unique() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(&id[14..15], "4", "{id}");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        }
    }

    #[test]
    fn types_are_the_documented_names() {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev.slipway.node.granted",
                "dev.slipway.node.drained",
                "dev.slipway.node.rebooted",
                "dev.slipway.node.healthy",
                "dev.slipway.node.failed",
                "dev.slipway.node.rolled-back",
                "dev.slipway.rollout.halted",
                "dev.slipway.rollout.completed",
                "dev.slipway.rollout.gate-closed",
                "dev.slipway.rollout.gate-opened",
                "dev.slipway.release.published",
                "dev.slipway.release.advised",
                "dev.slipway.rollout.wave-opened",
                "dev.slipway.rollout.wave-halted",
            ]
        );
    }
}
