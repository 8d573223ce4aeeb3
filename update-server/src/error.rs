//! The crate's error type: store, file and configuration failures, and the release manifests
//! the CLI builds, each naming what failed.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail inside the server (as opposed to what a client got wrong; see
/// `api_error::ApiError`).
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
    /// A release manifest being built (the `slipway` CLI) lacks a field or has a bad one.
    #[error("manifest field `{field}`: {problem}; {fix}")]
    ManifestField {
        /// The field as the manifest spells it (`version`, `os.format`, `runtime.containerd`).
        field: String,
        /// What is wrong with it.
        problem: String,
        /// What to do about it, usually the flag that sets it.
        fix: String,
    },
    /// A release manifest being built is not one: not a JSON object, or refused by the
    /// manifest's own rules.
    #[error("not a valid release manifest: {0}")]
    InvalidManifest(String),
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
            Error::ManifestField { .. } => "manifest-field",
            Error::InvalidManifest(_) => "invalid-manifest",
        }
    }

    /// Whether the database is away rather than the request wrong: the store closed, no
    /// connection from the pool, or a PostgreSQL session lost mid-query (the connection
    /// closed, SQLSTATE class 08 "connection exception", or 57P01-57P03: the server shutting
    /// down or starting). Worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Closed | Error::Pool(_) => true,
            Error::Postgres { source, .. } => {
                source.is_closed()
                    || source.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
                    })
                    || std::error::Error::source(source)
                        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
            }
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
