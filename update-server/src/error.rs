//! The crate's error type: store, file and configuration failures, each naming what failed.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail inside the server (as opposed to what a client got wrong; see
/// `routes::ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused or failed an operation.
    #[error("sqlite {what}: {source}")]
    Sqlite {
        /// The operation.
        what: String,
        /// The driver's error.
        source: rusqlite::Error,
    },
    /// PostgreSQL refused or failed an operation.
    #[error("postgres {what}: {source}")]
    Postgres {
        /// The operation.
        what: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database's schema is newer than this server, or a migration failed.
    #[error("schema migration: {0}")]
    Migration(String),
    /// A stored row does not parse (hand-edited or corrupted database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The store was closed (server shutting down).
    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Sqlite { .. } => "sqlite",
            Error::Postgres { .. } => "postgres",
            Error::Pool(_) => "postgres-pool",
            Error::Io { .. } => "io",
            Error::Migration(_) => "migration",
            Error::Corrupt(_) => "corrupt",
            Error::Config(_) => "config",
            Error::Closed => "closed",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
