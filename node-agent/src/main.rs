//! `slipway-agent`: the update engine (`engine`, a systemd service owning the D-Bus name
//! `dev.slipway.Engine1`) and the node side (`node`, a DaemonSet bridging the engine and
//! Kubernetes). Planned layout: `engine/` (state machine, download, verify, slots, boot
//! backends, D-Bus) and `node/` (status, drain, reboot). Not built yet (issues 3 and 7).

fn main() {
    eprintln!("slipway-agent: not built yet; the engine and node side land with their own issues");
    std::process::exit(2);
}
