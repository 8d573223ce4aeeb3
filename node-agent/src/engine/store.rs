//! The engine's durable state: one JSON file written atomically (temp file, fsync, rename, fsync
//! of the directory), holding the state machine's memory and the queue of reports not yet
//! delivered to the update server.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_api::wire::EventReport;

use super::machine::Memory;
use crate::error::{Error, Result};

/// Format version of the state file.
const FORMAT: u32 = 1;

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Persisted {
    /// Format version.
    pub format: u32,
    /// The state machine's memory.
    pub memory: Memory,
    /// Reports waiting for the server, oldest first (bounded).
    pub outbox: VecDeque<EventReport>,
}

impl Persisted {
    /// A fresh state.
    pub fn new(memory: Memory) -> Self {
        Self {
            format: FORMAT,
            memory,
            outbox: VecDeque::new(),
        }
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The state file inside `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("engine.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state, or `None` when the engine never ran here.
    pub fn load(&self) -> Result<Option<Persisted>> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let p: Persisted = serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if p.format != FORMAT {
            return Err(Error::State {
                path: self.path.clone(),
                reason: format!("format {} is not the supported {FORMAT}", p.format),
            });
        }
        Ok(Some(p))
    }

    /// Writes the state durably; readers see the old file or the new one, never a torn one.
    pub fn save(&self, p: &Persisted) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(p).expect("state always serializes");
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let first = !self.path.exists();
        // The same crash-safe replacement the boot backends use for their state.
        super::boot::durable::replace_file("state", &self.path, &bytes)?;
        if first {
            // A private file; later replacements keep its mode.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}
