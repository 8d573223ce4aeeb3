//! Slipway's shared types and trust core, with no I/O and no clock: release manifests,
//! DSSE envelopes, the node's root of trust and its rotation, and the admission policy.
//! Also the custom resources (`RolloutPolicy`, `NodeUpdate`) and the wire types shared by the
//! operator, the agent and the server.

pub mod blockindex;
pub mod contract;
pub mod crd;
pub mod digest;
pub mod dsse;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod root;
pub mod wire;

pub use contract::{EnginePhase, WaitingReason};
pub use digest::Sha256Digest;
pub use dsse::{Envelope, KeySet};
pub use error::{Error, Result};
pub use keys::{PrivateKey, PublicKey};
pub use manifest::{Manifest, admit};
pub use root::{Root, TrustedRoot};
