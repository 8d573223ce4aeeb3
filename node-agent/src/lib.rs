//! `slipway-agent`: the update engine (`engine`, a systemd service owning the D-Bus name
//! `dev.slipway.Engine1`: checks, downloads, verifies and writes the inactive slot, drives the
//! boot loader) and the node side (`node`, the DaemonSet bridging the engine and Kubernetes:
//! reports, drains, reboots, checks health). See docs/architecture.md.

pub mod engine;
pub mod error;
pub mod node;
pub mod systemd;

pub use error::{Error, Result};
