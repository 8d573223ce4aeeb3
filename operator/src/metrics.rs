//! The operator's metrics (OpenMetrics text on `/metrics`): nodes by phase, waiting nodes by
//! reason, grants, revocations, halts, reconcile duration, whether this replica leads, and the
//! CloudEvents emitter's delivery counts.
//! Names: `slipway_operator_<thing>_<unit|total>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A phase label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `NodeUpdate.status.phase`.
    pub phase: String,
}

/// A waiting-reason label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The plan's reason code.
    pub reason: String,
}

/// A gate label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    /// The policy.
    pub policy: String,
    /// The gate's name.
    pub gate: String,
}

/// A FleetLock operation label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLockLabels {
    /// `pre-reboot` or `steady-state`.
    pub op: &'static str,
    /// `ok`, or the HTTP status of the refusal (`409` waiting, `404` unknown group, `503` standby or storage).
    pub result: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Nodes per phase (all policies).
    pub nodes: Family<PhaseLabels, Gauge>,
    /// Nodes waiting, per reason.
    pub waiting: Family<ReasonLabels, Gauge>,
    /// Reboot grants written.
    pub grants: Counter,
    /// Grants taken back before the drain started.
    pub revocations: Counter,
    /// Policies halted.
    pub halts: Counter,
    /// Seconds per evaluation (plan + writes).
    pub reconcile_duration: Histogram,
    /// Writes the API server accepted (NodeUpdates, policy status).
    pub writes: Counter,
    /// Writes the API server refused.
    pub write_errors: Counter,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// FleetLock requests by operation and result.
    pub fleetlock: Family<FleetLockLabels, Counter>,
    /// 1 while a policy's Prometheus gate is closed, 0 while open (every gate of every policy).
    pub gate_closed: Family<GateLabels, Gauge>,
    /// The CloudEvents emitter's (`slipway_operator_cloudevents_*`), by sink.
    pub cloudevents: slipway_events::Metrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("slipway_operator");
        let nodes = Family::<PhaseLabels, Gauge>::default();
        registry.register("nodes", "Nodes per update phase", nodes.clone());
        let waiting = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "waiting_nodes",
            "Nodes waiting for a grant, per reason",
            waiting.clone(),
        );
        let grants = Counter::default();
        registry.register("grants", "Reboot grants written", grants.clone());
        let revocations = Counter::default();
        registry.register(
            "revocations",
            "Grants taken back before the drain started",
            revocations.clone(),
        );
        let halts = Counter::default();
        registry.register("halts", "Policies halted after failures", halts.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "reconcile_duration",
            "Time per evaluation (plan and writes)",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let writes = Counter::default();
        registry.register("writes", "Writes the API server accepted", writes.clone());
        let write_errors = Counter::default();
        registry.register(
            "write_errors",
            "Writes the API server refused",
            write_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let fleetlock = Family::<FleetLockLabels, Counter>::default();
        registry.register(
            "fleetlock_requests",
            "FleetLock requests by operation and result",
            fleetlock.clone(),
        );
        let gate_closed = Family::<GateLabels, Gauge>::default();
        registry.register(
            "gate_closed",
            "1 while a policy's Prometheus gate is closed, 0 while it is open",
            gate_closed.clone(),
        );
        let cloudevents = slipway_events::Metrics::registered_in(&mut registry);
        Self {
            registry,
            nodes,
            waiting,
            grants,
            revocations,
            halts,
            reconcile_duration,
            writes,
            write_errors,
            leader,
            fleetlock,
            gate_closed,
            cloudevents,
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
