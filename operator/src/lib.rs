//! Slipway's cluster operator: watches Nodes, `NodeUpdate`s and `RolloutPolicy`s and decides,
//! cluster-wide, which nodes may drain and reboot now. The decisions live in `plan` and
//! `windows` (pure); `reconcile` builds the view from reflectors and carries decisions out;
//! `fleetlock` serves the FleetLock protocol and metrics; `leader` holds the lease and keeps the
//! leader label on the leader's Pod; `clock` is the only module that reads the wall clock;
//! `cloudevents` decides (purely) which CloudEvents an evaluation gives rise to.

pub mod clock;
pub mod cloudevents;
pub mod fleetlock;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod windows;
