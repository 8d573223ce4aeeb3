//! The crate's one error type: what can go wrong setting an emitter up. Delivery failures are
//! not errors to callers (emitting never fails); they are logged and counted per sink.

/// Why an emitter could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sink URL is not `http` or `https`.
    #[error("CloudEvents sink {url}: {reason}")]
    InvalidSink {
        /// The sink as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is out of range (e.g. a queue bound of 0, an empty source).
    #[error("CloudEvents settings: {0}")]
    InvalidSettings(String),
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the CloudEvents HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Error {
    /// A short, stable name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSink { .. } => "invalid-sink",
            Self::InvalidSettings(_) => "invalid-settings",
            Self::Client(_) => "client",
        }
    }
}

/// A specialised `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
