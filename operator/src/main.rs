//! `slipway-operator`: watches Nodes and RolloutPolicies and decides, cluster-wide, which nodes
//! may drain and reboot now (reboot windows, maxUnavailable, pause, halting after failures).
//! Planned layout: `plan.rs` (pure decisions), `reconcile.rs` (reflectors, actions),
//! `windows.rs`, `fleetlock.rs`, `metrics.rs`, `src/bin/crdgen.rs`. Not built yet (issue 6).

fn main() {
    eprintln!("slipway-operator: not built yet; the operator lands with its own issue");
    std::process::exit(2);
}
