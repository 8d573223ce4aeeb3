//! The update server (`slipway-server`): channels with phased rollouts, payloads served with
//! HTTP Range, what every machine reports, metrics and the dashboard. Filled by issue 5;
//! today the crate holds the `slipway` CLI's helpers.

pub mod files;
