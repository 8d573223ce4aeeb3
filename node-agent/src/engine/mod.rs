//! The update engine: a pure state machine (`machine`), and the I/O that runs it (`runner`):
//! slots, boot backends, downloads, runtime images, the D-Bus service, persisted state.

pub mod boot;
pub mod dbus;
pub mod delta;
pub mod download;
pub mod http;
pub mod machine;
pub mod runner;
pub mod settings;
pub mod slot;
pub mod spiffe;
pub mod store;
pub mod sysext;

pub use runner::{Engine, Facts, Snapshot};
pub use settings::Settings;
pub use slot::Slot;
