//! The update engine: a pure state machine (`machine`), and the I/O that runs it: slots, boot
//! backends, downloads, the D-Bus service.

pub mod boot;
pub mod slot;

pub use slot::Slot;
