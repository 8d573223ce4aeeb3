//! Integration tests of the agent: the engine against a real local HTTP server, real slot
//! files, a real boot-loader state file, and (for D-Bus) a private dbus-daemon.

mod fixtures;
mod server;

mod apply;
mod attacks;
mod dbus;
mod delta;
mod drain;
mod health;
mod node_side;
mod reboot;
