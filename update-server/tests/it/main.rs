//! Integration tests of the update-server crate: the `slipway` CLI run as a real process.

mod cli;
