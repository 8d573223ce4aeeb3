//! Slipway's cluster operator: watches Nodes, `NodeUpdate`s and `RolloutPolicy`s and decides,
//! cluster-wide, which nodes may drain and reboot now. The decisions live in `plan` (pure) and
//! `windows` (pure); `reconcile` builds the view from reflectors and carries decisions out;
//! `fleetlock` serves the FleetLock protocol for hosts outside Kubernetes; `metrics` exports
//! what happened.

pub mod plan;
pub mod windows;
