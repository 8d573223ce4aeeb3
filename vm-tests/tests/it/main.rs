//! VM scenarios: real QEMU nodes (TCG) running the real engine against the real update server,
//! with releases signed by the real CLI. One scenario at a time (they share the two cores).

mod fleet;
mod scenarios;
