//! The node side of the agent (`slipway-agent node`, a DaemonSet): the bridge between the engine
//! on D-Bus and the cluster. Built so far: `drain` (cordon with ownership, eviction through
//! PodDisruptionBudgets with backoff and timeout, force or give back).

pub mod drain;
