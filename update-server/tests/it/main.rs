//! Integration tests of the update-server crate: the `slipway` CLI run as a real process, and
//! the update server on 127.0.0.1:0 against SQLite and a throwaway PostgreSQL cluster.

mod cli;
mod cli_admin;
mod cloudevents;
mod dashboard;
mod gates;
mod graph;
mod harness;
mod http;
mod lists;
mod mirror;
mod openapi;
mod pg;
mod pictures;
mod process;
mod replicas;
mod rollout;
mod spire;
mod store;
mod tls;
mod webdriver;
