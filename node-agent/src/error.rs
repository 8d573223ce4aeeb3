//! The agent's error type: each variant names the thing that failed.

use std::path::{Path, PathBuf};

use crate::engine::boot::BootError;

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or device operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or device.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The trust core refused something (boxed: its variants carry versions and key lists,
    /// and every `Result` of the agent would otherwise pay for that size).
    #[error(transparent)]
    Trust(Box<slipway_api::Error>),
    /// Talking to the update server failed.
    #[error("update server {url}: {reason}")]
    Server {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The update server could not be reached at all (connect, timeout, reset): nothing was
    /// refused, the machine just could not ask.
    #[error("update server {url}: unreachable: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A payload did not match what was signed, or the server misbehaved while sending it.
    #[error("payload {url}: {reason}")]
    Payload {
        /// The payload URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The transfer was interrupted (connection lost, timeout, server error); resumable.
    #[error("payload {url}: interrupted: {reason}")]
    Interrupted {
        /// The payload URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The slot re-read does not match what was written.
    #[error("slot {slot} verification failed: {reason}")]
    Verify {
        /// The slot.
        slot: String,
        /// What differs.
        reason: String,
    },
    /// A boot backend failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The engine's persisted state is unreadable.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request that makes no sense now (e.g. from D-Bus).
    #[error(transparent)]
    Invalid(#[from] crate::engine::machine::Invalid),
    /// Refused to do something unsafe (e.g. write the running slot).
    #[error("refused: {0}")]
    Refused(String),
    /// D-Bus failed.
    #[error("D-Bus: {0}")]
    Dbus(String),
}

impl From<slipway_api::Error> for Error {
    fn from(e: slipway_api::Error) -> Self {
        Error::Trust(Box::new(e))
    }
}

/// An error with its causes, `outer: inner: innermost` (an HTTP client error's own text says
/// only "error sending request"; the cause says why: a certificate, a refused connection).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    text
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A short, stable label for metrics and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Config(_) => "config",
            Error::Trust(e) => e.kind(),
            Error::Server { .. } => "server",
            Error::Unreachable { .. } => "unreachable",
            Error::Payload { .. } => "payload",
            Error::Interrupted { .. } => "interrupted",
            Error::Verify { .. } => "verify",
            Error::Boot(_) => "boot",
            Error::State { .. } => "state",
            Error::Invalid(_) => "invalid",
            Error::Refused(_) => "refused",
            Error::Dbus(_) => "dbus",
        }
    }
}
