//! The node side of the agent (`slipway-agent node`, a DaemonSet): the bridge between the engine
//! on D-Bus and the cluster. Built so far: `drain` (cordon with ownership, eviction through
//! PodDisruptionBudgets with backoff and timeout, force or give back), `reboot` (logind,
//! honouring inhibitors), `health` (unit active, command, Node Ready) and `status` (what to report in `NodeUpdate.status`, and when).

pub mod drain;
pub mod health;
pub mod reboot;
pub mod status;
