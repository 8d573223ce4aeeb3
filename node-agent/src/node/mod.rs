//! The node side of the agent (`slipway-agent node`, a DaemonSet): the bridge between the engine
//! on D-Bus and the cluster:
//! - `decide`: the pure next-step table (drain, reboot, check health, bless or roll back,
//!   uncordon), self-healing included;
//! - `drain`: cordon with ownership, eviction through PodDisruptionBudgets with backoff and a
//!   timeout, then force or give back;
//! - `reboot`: systemd-logind, honouring inhibitors;
//! - `health`: unit active, command exit code, Node Ready;
//! - `status`: what to report in `NodeUpdate.status`, and when;
//! - `metrics`: the `slipway_agent_*` metrics and the `/metrics` and `/healthz` server;
//! - `runner`: reads the engine and the cluster, decides, acts and reports (one `step` at a time).

pub mod decide;
pub mod drain;
pub mod health;
pub mod metrics;
pub mod reboot;
pub mod runner;
pub mod status;
