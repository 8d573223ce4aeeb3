//! Payload files, content-addressed under `<data-dir>/payloads/<sha256>`: uploads stream to a
//! temp file while hashing and are renamed into place only when the digest matches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use slipway_api::Sha256Digest;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The payload directory.
#[derive(Debug)]
pub struct PayloadDir {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

/// Why an upload was refused or failed.
#[derive(Debug)]
pub enum UploadError {
    /// The bytes hash to something else than the name they were uploaded under.
    DigestMismatch {
        /// The sha256 of the bytes received.
        actual: Sha256Digest,
    },
    /// More bytes than allowed.
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's body failed mid-way (disconnect).
    Body(String),
    /// The client sent nothing for this long.
    Idle(std::time::Duration),
    /// The server could not write.
    Io(Error),
}

impl PayloadDir {
    /// Opens (creating) `<data_dir>/payloads`, clearing temp files a crash left behind.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("payloads");
        let tmp = dir.join(".incoming");
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            dir,
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    /// Where the payload with this digest lives.
    pub fn path(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join(sha256.to_hex())
    }

    /// The stored payload's size, if present.
    pub async fn size(&self, sha256: &Sha256Digest) -> Option<u64> {
        tokio::fs::metadata(self.path(sha256))
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Streams `body` to disk while hashing, at most `limit` bytes; keeps it only if its
    /// sha256 is `expected`. Returns the size. An existing payload is left as is.
    pub async fn store<S, E>(
        &self,
        expected: &Sha256Digest,
        mut body: S,
        limit: u64,
        idle: std::time::Duration,
    ) -> std::result::Result<u64, UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}-{}-{n}", expected.to_hex(), std::process::id()));
        let result = async {
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| UploadError::Io(Error::io(&tmp, e)))?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| UploadError::Idle(idle))?
            {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(UploadError::TooLarge { limit });
                }
                hasher.update(&chunk);
                out.write_all(&chunk)
                    .await
                    .map_err(|e| UploadError::Io(Error::io(&tmp, e)))?;
            }
            let actual = Sha256Digest::from_hasher(hasher);
            if actual != *expected {
                return Err(UploadError::DigestMismatch { actual });
            }
            out.flush()
                .await
                .map_err(|e| UploadError::Io(Error::io(&tmp, e)))?;
            let file = out.into_inner();
            file.sync_all()
                .await
                .map_err(|e| UploadError::Io(Error::io(&tmp, e)))?;
            let dest = self.path(expected);
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|e| UploadError::Io(Error::io(&dest, e)))?;
            if let Ok(d) = tokio::fs::File::open(&self.dir).await {
                let _ = d.sync_all().await;
            }
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}
