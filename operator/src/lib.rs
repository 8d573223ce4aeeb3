//! Slipway's cluster operator: watches Nodes, `NodeUpdate`s and `RolloutPolicy`s and decides,
//! cluster-wide, which nodes may drain and reboot now. The decisions live in `plan` and
//! `windows` (pure), what the leader writes and remembers in `writes` (pure); `reconcile` keeps
//! the reflectors and carries the writes out; `fleetlock` serves the FleetLock protocol (its
//! lock decisions pure, beside the HTTP handlers) and metrics; `leader` holds the lease and keeps the
//! leader label on the leader's Pod; time comes from `slipway_runtime`'s `Clock`;
//! `cloudevents` decides (purely) which CloudEvents an evaluation gives rise to; `gates` asks
//! Prometheus, Open Policy Agent and the pods what the planner's checks need; `kubectl` renders
//! what the `kubectl slipway` plugin prints.

pub mod cloudevents;
#[cfg(test)]
mod fixtures;
pub mod fleetlock;
pub mod gates;
pub mod kubectl;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod windows;
pub mod writes;
