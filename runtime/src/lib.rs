//! Process plumbing that Slipway's daemons (operator, update server, engine, node side) and its
//! test harnesses share: the one [`Clock`] abstraction (the only place the wall clock is read;
//! tests move time with [`ManualClock`]) and [`shutdown_signal`].

pub mod clock;
pub mod signal;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use signal::shutdown_signal;
