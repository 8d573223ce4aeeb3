//! CloudEvents (spec 1.0, HTTP binary mode) that Slipway's operator and update server send to
//! configured sinks: [`EventType`] names what happened, [`Event`] carries it, and [`Emitter`]
//! queues it per sink (bounded) and delivers it in the background with retries, so that
//! emitting never blocks a rollout.
//!
//! Why not the `cloudevents-sdk` crate: its current release (0.9) binds reqwest 0.12 for HTTP,
//! beside the reqwest 0.13 the workspace uses, and brings chrono (the workspace uses jiff),
//! snafu and delegate-attr with it. Binary mode over HTTP is a handful of headers, so a small
//! typed emitter here costs less than a second HTTP stack.

mod emitter;
mod error;
mod event;
mod metrics;

pub use emitter::{DEFAULT_QUEUE_BOUND, EmitOutcome, Emitter, Settings};
pub use error::{Error, Result};
pub use event::{CONTENT_TYPE, Event, EventType, SPEC_VERSION};
pub use metrics::{DropLabels, Metrics, SinkLabels};
