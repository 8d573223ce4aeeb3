//! Boot backends: how the boot loader is told which slot to try next, how many times, and which
//! slot is good. One file per backend; every backend implements [`BootBackend`]. Beside them:
//! [`grubenv`] (the GRUB environment block format), [`grubcfg`] (the grub.cfg script that is
//! GRUB's half of the GRUB backend), `durable` (crash-safe file replacement) and [`testing`]
//! (a model of the boot loader's power-on, for tests).
//!
//! The common model (ChromeOS/CoreOS style): each slot has a *good* flag and a number of *tries*
//! left. The boot loader boots the preferred slot if it is good, or if it has tries left (and
//! spends one); otherwise it boots the other slot. So a trial that never gets marked good falls
//! back by itself once its tries run out.

use std::path::PathBuf;

use serde::Deserialize;

use super::slot::Slot;

pub(crate) mod durable;
pub mod gpt;
pub mod grub;
pub mod grubcfg;
pub mod grubenv;
pub mod sdboot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Which boot backend, and where its state lives: the `[boot]` table of the engine's settings.
/// Defined here, not in `settings`, so that the boot backends (and [`BootError`], which the
/// crate's error type wraps) never import the module that imports them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "kebab-case")]
pub enum BootSettings {
    /// GRUB environment block.
    Grub {
        /// The `grubenv` file.
        grubenv: PathBuf,
    },
    /// systemd-boot boot counting.
    SystemdBoot {
        /// The ESP mount point.
        esp: PathBuf,
    },
    /// ChromeOS/CoreOS GPT attributes.
    Gpt {
        /// The disk holding the slots' partitions.
        disk: PathBuf,
    },
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings::Grub {
            grubenv: "/boot/grub/grubenv".into(),
        }
    }
}

/// The backend `settings` names. No I/O happens here: a broken boot-loader state shows up on the
/// first `status()`, where it is reported with its path, instead of keeping the engine from
/// starting (it still has to report the problem).
pub fn open(settings: &BootSettings) -> Result<Box<dyn BootBackend>, BootError> {
    Ok(match settings {
        BootSettings::Grub { grubenv } => Box::new(grub::GrubEnv::new(grubenv)),
        BootSettings::SystemdBoot { esp } => Box::new(sdboot::SdBoot::new(esp)),
        BootSettings::Gpt { disk } => Box::new(gpt::GptDisk::new(disk)),
    })
}

/// Per-slot state as the boot loader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Marked good (booted successfully and passed health checks).
    pub good: bool,
    /// Trial boots left before the boot loader gives up on this slot (0 when good or bad).
    pub tries: u32,
}

/// What the boot loader will do next, and the state of each slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootStatus {
    /// The slot the boot loader will boot next, if any is bootable.
    pub next: Option<Slot>,
    /// State of slot A.
    pub a: SlotState,
    /// State of slot B.
    pub b: SlotState,
}

impl BootStatus {
    /// The state of `slot`.
    pub fn slot(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }
}

/// Errors of the boot backends.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading or writing the boot loader's state failed.
    #[error("{backend}: {path}: {source}")]
    Io {
        /// Backend name.
        backend: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The boot loader's state is not in a form the backend understands.
    #[error("{backend}: {path}: {reason}")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// The file or device.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The request does not make sense in the current state (e.g. marking good a slot that
    /// was never tried, or a slot that has no boot entry).
    #[error("{backend}: {reason}")]
    Invalid {
        /// Backend name.
        backend: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How the engine drives a boot loader. Implementations write their state durably (fsync)
/// before returning, and never leave it half-written (a power cut during a call leaves either
/// the old state or the new one).
pub trait BootBackend: Send + Sync {
    /// Short name for logs and errors (`grub`, `systemd-boot`, `gpt`).
    fn name(&self) -> &'static str;

    /// The full state: next slot and each slot's good flag and tries.
    fn status(&self) -> Result<BootStatus, BootError>;

    /// The slot the boot loader will boot next (`status().next`), an error if none is bootable.
    fn active_slot(&self) -> Result<Slot, BootError> {
        self.status()?.next.ok_or_else(|| BootError::Invalid {
            backend: self.name(),
            reason: "no slot is bootable".into(),
        })
    }

    /// Prefer `slot` for the next boots, not yet good, with `tries` trial boots; the other slot
    /// stays as it was (good), so that the boot loader falls back to it when tries run out.
    fn set_trial(&self, slot: Slot, tries: u32) -> Result<(), BootError>;

    /// Mark `slot` good: it stays preferred for every later boot.
    fn mark_good(&self, slot: Slot) -> Result<(), BootError>;

    /// Mark `slot` bad: no tries left, not good, and the other slot preferred.
    fn mark_bad(&self, slot: Slot) -> Result<(), BootError>;
}
