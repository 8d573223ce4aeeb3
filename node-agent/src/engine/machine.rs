//! The engine's brain: a pure state machine. `step(state, input, settings)` returns the next
//! state and the effects to carry out; no clock, files, network or metrics in here. The runner
//! (`runner.rs`) persists the state and executes the effects, feeding their results back in as
//! inputs. An input that makes no sense in a state is an error, never a panic: a D-Bus caller
//! racing the engine must not kill the daemon.

use std::collections::BTreeSet;

use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::wire::{EventKind, Transfer};
use slipway_api::{EnginePhase, Envelope, Manifest, Sha256Digest};

use super::slot::Slot;

/// A verified, admitted release the engine is working on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The verified manifest.
    pub manifest: Manifest,
    /// The envelope it came in (kept so the release can be re-verified after a restart).
    pub envelope: Envelope,
}

impl Release {
    /// The release's version.
    pub fn version(&self) -> &Version {
        &self.manifest.version
    }
}

/// How far a download into a slot got, as last made durable (fsynced) — enough to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Bytes of the payload (as served) consumed and accounted for.
    pub served: u64,
    /// Bytes written and fsynced into the slot (differs from `served` for compressed payloads).
    pub written: u64,
    /// Serialized SHA-256 state over the first `served` bytes (hex).
    pub served_hash: String,
    /// Serialized SHA-256 state over the first `written` slot bytes (hex).
    pub written_hash: String,
    /// The slot is being built by a delta apply (blocks copied from the node's slots, the rest
    /// fetched from the uncompressed image): `served` and `written` are both the position in
    /// the image, and a resume continues the delta (a full download starts over).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// Bytes fetched from the server so far by a delta apply (the rest came from the slots).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fetched: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The engine's phase, with the data each phase needs. Persisted across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase")]
pub enum State {
    /// Nothing in flight.
    Idle,
    /// Asking the update server.
    Checking,
    /// A verified release is waiting for `ApplyUpdate` (when downloads are not automatic).
    Available {
        /// The release.
        release: Release,
    },
    /// Writing the release into the inactive slot.
    Downloading {
        /// The release.
        release: Release,
        /// The slot being written (never the booted one).
        slot: Slot,
        /// Durable progress, for resuming.
        checkpoint: Checkpoint,
    },
    /// The slot is written and fsynced; re-reading it to compare digests.
    Verifying {
        /// The release.
        release: Release,
        /// The written slot.
        slot: Slot,
        /// Bytes written into the slot.
        written: u64,
        /// SHA-256 of the bytes written into the slot.
        written_digest: Sha256Digest,
        /// How the bytes came.
        #[serde(default)]
        transfer: Transfer,
    },
    /// A runtime-only release (no OS image): installing its sysext images and restarting the
    /// runtime units, without touching the slots or rebooting.
    Activating {
        /// The release.
        release: Release,
    },
    /// Verified and the boot loader set to try the slot: waiting for the node side to reboot.
    Staged {
        /// The release.
        release: Release,
        /// The slot the next boot tries.
        slot: Slot,
        /// The boot during which it was staged (a different boot id means we rebooted).
        boot_id: String,
    },
    /// Booted into the new slot on trial: waiting for health checks (`MarkGood`).
    Trial {
        /// The release.
        release: Release,
        /// The slot on trial (the booted one).
        slot: Slot,
    },
    /// The trial slot was marked bad on request; waiting for the reboot into the old slot.
    RollingBack {
        /// The release that failed.
        version: Version,
        /// Why.
        reason: String,
    },
    /// The last update attempt failed before reboot; the running slot is untouched.
    Failed {
        /// The release that failed, if known.
        version: Option<Version>,
        /// Why.
        reason: String,
    },
    /// The machine fell back to the previous slot.
    RolledBack {
        /// The release that was abandoned.
        version: Version,
        /// Why.
        reason: String,
    },
}

impl State {
    /// The phase shown on D-Bus and in `slipway-agent status`.
    pub fn phase(&self) -> EnginePhase {
        match self {
            State::Idle => EnginePhase::Idle,
            State::Checking => EnginePhase::Checking,
            State::Available { .. } => EnginePhase::Available,
            State::Downloading { .. } => EnginePhase::Downloading,
            State::Verifying { .. } => EnginePhase::Verifying,
            State::Activating { .. } => EnginePhase::Activating,
            State::Staged { .. } => EnginePhase::Staged,
            State::Trial { .. } => EnginePhase::Trial,
            State::RollingBack { .. } => EnginePhase::RollingBack,
            State::Failed { .. } => EnginePhase::Failed,
            State::RolledBack { .. } => EnginePhase::RolledBack,
        }
    }

    /// The release this state is about, if any.
    pub fn release(&self) -> Option<&Release> {
        match self {
            State::Available { release }
            | State::Downloading { release, .. }
            | State::Verifying { release, .. }
            | State::Activating { release }
            | State::Staged { release, .. }
            | State::Trial { release, .. } => Some(release),
            _ => None,
        }
    }

    /// Whether a new check may start from this state.
    fn at_rest(&self) -> bool {
        matches!(
            self,
            State::Idle | State::Failed { .. } | State::RolledBack { .. } | State::Available { .. }
        )
    }
}

/// Everything the engine remembers across restarts, besides the phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// The current phase.
    pub state: State,
    /// The version of the slot that was last marked good and is (or will be) booted.
    pub current_version: Version,
    /// The slot holding `current_version`.
    pub current_slot: Slot,
    /// The other slot's version, when it holds a good previous release (manual rollback target).
    pub previous: Option<(Slot, Version)>,
    /// Versions that failed on this machine: never offered again automatically.
    pub refused: BTreeSet<Version>,
    /// Failed attempts per version not (yet) refused; at `Policy::max_attempts` a version is
    /// refused, so a release that cannot apply is not downloaded again and again.
    #[serde(default)]
    pub attempts: std::collections::BTreeMap<Version, u32>,
    /// The last error, for humans (cleared when an update succeeds).
    pub last_error: Option<String>,
}

impl Memory {
    /// A fresh engine on a machine running `version` from `slot`.
    pub fn new(version: Version, slot: Slot) -> Self {
        Self {
            state: State::Idle,
            current_version: version,
            current_slot: slot,
            previous: None,
            refused: BTreeSet::new(),
            attempts: std::collections::BTreeMap::new(),
            last_error: None,
        }
    }
}

/// Settings the decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Download as soon as a check finds a release (otherwise wait for `ApplyUpdate`).
    pub auto_download: bool,
    /// Trial boots the boot loader grants the new slot.
    pub boot_tries: u32,
    /// Failed attempts at one version before it is refused for good.
    pub max_attempts: u32,
}

/// What happened: requests from D-Bus and results of effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start a check (timer or `CheckForUpdate`).
    Check,
    /// The server offered this verified, admitted release.
    Found(Box<Release>),
    /// The server had nothing (or only refused versions).
    NothingNew,
    /// The check failed (the server refused or misbehaved, bad signature, not admitted).
    CheckFailed(String),
    /// The check never reached the server (connect, timeout, reset).
    ServerUnreachable(String),
    /// Download (or resume) the available release (`ApplyUpdate`).
    Apply,
    /// A checkpoint was made durable.
    Progress(Checkpoint),
    /// The whole payload is written and fsynced.
    Downloaded {
        /// Bytes written into the slot.
        written: u64,
        /// SHA-256 of the bytes written.
        written_digest: Sha256Digest,
        /// How the bytes came (reported with `staged`).
        transfer: Transfer,
    },
    /// The slot re-read matches.
    Verified,
    /// The release's runtime images are installed and active.
    RuntimeInstalled,
    /// The boot loader now tries the slot next; `boot_id` is the current boot.
    TrialSet {
        /// The current boot's id.
        boot_id: String,
    },
    /// Download, verification or boot-selection change failed for good.
    ApplyFailed(String),
    /// The download was interrupted (connection lost, timeout, server error): keep the
    /// checkpoint and resume later.
    Interrupted(String),
    /// The engine started: which slot was booted and whether this is a new boot since the
    /// state was last written.
    Started {
        /// The booted slot.
        slot: Slot,
        /// The current boot's id.
        boot_id: String,
    },
    /// Health checks passed (`MarkGood`).
    MarkGood,
    /// Abandon the staged/trial release, or go back to the previous release (`Rollback`).
    Rollback {
        /// Why (for the report).
        reason: String,
    },
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Check => "Check",
            Input::Found(_) => "Found",
            Input::NothingNew => "NothingNew",
            Input::CheckFailed(_) => "CheckFailed",
            Input::ServerUnreachable(_) => "ServerUnreachable",
            Input::Apply => "Apply",
            Input::Progress(_) => "Progress",
            Input::Downloaded { .. } => "Downloaded",
            Input::Verified => "Verified",
            Input::RuntimeInstalled => "RuntimeInstalled",
            Input::TrialSet { .. } => "TrialSet",
            Input::ApplyFailed(_) => "ApplyFailed",
            Input::Interrupted(_) => "Interrupted",
            Input::Started { .. } => "Started",
            Input::MarkGood => "MarkGood",
            Input::Rollback { .. } => "Rollback",
        }
    }
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask the update server; answer with `Found`, `NothingNew` or `CheckFailed`.
    Check,
    /// Write the release's payload into `slot`, resuming from `from`; answer with `Progress`
    /// while going, then `Downloaded` or `ApplyFailed`.
    Download {
        /// The release.
        release: Box<Release>,
        /// The target slot.
        slot: Slot,
        /// Where to resume.
        from: Checkpoint,
    },
    /// Re-read `written` bytes of `slot` and compare with `digest`; answer `Verified` or
    /// `ApplyFailed`.
    Verify {
        /// The slot.
        slot: Slot,
        /// How many bytes.
        written: u64,
        /// Expected digest.
        digest: Sha256Digest,
    },
    /// Install and activate the release's runtime (sysext) images; answer `RuntimeInstalled`
    /// or `ApplyFailed`. Comes before the trial, so a failure leaves the boot selection alone.
    InstallRuntime {
        /// The release.
        release: Box<Release>,
    },
    /// Tell the boot loader to try `slot` with `tries`; answer `TrialSet` or `ApplyFailed`.
    SetTrial {
        /// The slot.
        slot: Slot,
        /// Trial boots.
        tries: u32,
    },
    /// Tell the boot loader `slot` is good.
    MarkGood {
        /// The slot.
        slot: Slot,
    },
    /// Tell the boot loader `slot` is bad (the other slot boots next).
    MarkBad {
        /// The slot.
        slot: Slot,
    },
    /// Queue a report to the update server.
    Report {
        /// What happened.
        event: EventKind,
        /// The version it is about.
        version: Version,
        /// Detail.
        detail: String,
        /// How the OS image came (with `staged`).
        transfer: Option<Transfer>,
    },
}

/// An input that is not valid in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input} is not valid while the engine is {phase}")]
pub struct Invalid {
    /// The input's name.
    pub input: &'static str,
    /// The phase it arrived in.
    pub phase: EnginePhase,
}

fn report(event: EventKind, version: &Version, detail: impl Into<String>) -> Effect {
    Effect::Report {
        event,
        version: version.clone(),
        detail: detail.into(),
        transfer: None,
    }
}

/// The transition function.
pub fn step(mem: &Memory, input: Input, policy: &Policy) -> Result<(Memory, Vec<Effect>), Invalid> {
    let invalid = |input: &Input| Invalid {
        input: input.name(),
        phase: mem.state.phase(),
    };
    let mut next = mem.clone();
    let mut fx = Vec::new();
    match (&mem.state, input) {
        // A check from rest. From Available, a fresh check may find something newer.
        (s, Input::Check) if s.at_rest() => {
            next.state = State::Checking;
            fx.push(Effect::Check);
        }
        (State::Checking, Input::Found(release)) => {
            let release = *release;
            let v = release.version().clone();
            fx.push(report(EventKind::Checked, &v, "update available"));
            if mem.refused.contains(&v) {
                // Offered again after failing here: never retried automatically.
                next.state = State::Idle;
            } else if policy.auto_download {
                next.state = begin_apply(mem, release, &mut fx);
            } else {
                next.state = State::Available { release };
            }
        }
        (State::Checking, Input::NothingNew) => {
            fx.push(report(
                EventKind::Checked,
                &mem.current_version,
                "no update",
            ));
            next.state = State::Idle;
        }
        (State::Checking, Input::CheckFailed(reason)) => {
            // Refused releases (bad signature, expired, older) are reported so that the
            // server's operators see them; the running version is the one the report is about.
            fx.push(report(
                EventKind::Failed,
                &mem.current_version,
                format!("check: {reason}"),
            ));
            next.last_error = Some(reason);
            next.state = State::Idle;
        }
        // Not reported: nothing failed on this machine, and a report of it would only arrive once
        // the server answers again, marking a healthy machine failed on the dashboard until its
        // next event. The server sees the silence itself (the machine goes stale).
        (State::Checking, Input::ServerUnreachable(reason)) => {
            next.last_error = Some(reason);
            next.state = State::Idle;
        }
        (State::Available { release }, Input::Apply) => {
            next.state = begin_apply(mem, release.clone(), &mut fx);
        }
        // Resume activating a runtime-only release after a restart (installing an image that
        // is already in place is a no-op).
        (State::Activating { release }, Input::Apply) => {
            fx.push(Effect::InstallRuntime {
                release: Box::new(release.clone()),
            });
        }
        // A runtime-only release is live once its units restarted: the machine runs it now,
        // on the same boot and the same slot.
        (State::Activating { release }, Input::RuntimeInstalled) => {
            let v = release.version().clone();
            let names: Vec<&str> = release
                .manifest
                .runtime
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            fx.push(report(
                EventKind::Healthy,
                &v,
                format!(
                    "runtime images {} installed and units restarted, no reboot",
                    names.join(", ")
                ),
            ));
            next.attempts.remove(&v);
            next.current_version = v;
            next.state = State::Idle;
            next.last_error = None;
        }
        (
            State::Downloading {
                release,
                slot,
                checkpoint,
            },
            Input::Apply,
        ) => {
            // Resume after a restart.
            fx.push(report(
                EventKind::Downloading,
                release.version(),
                format!("resuming at byte {}", checkpoint.served),
            ));
            fx.push(Effect::Download {
                release: Box::new(release.clone()),
                slot: *slot,
                from: checkpoint.clone(),
            });
        }
        (State::Downloading { release, slot, .. }, Input::Progress(cp)) => {
            next.state = State::Downloading {
                release: release.clone(),
                slot: *slot,
                checkpoint: cp,
            };
        }
        (
            State::Downloading { release, slot, .. },
            Input::Downloaded {
                written,
                written_digest,
                transfer,
            },
        ) => {
            fx.push(Effect::Verify {
                slot: *slot,
                written,
                digest: written_digest,
            });
            next.state = State::Verifying {
                release: release.clone(),
                slot: *slot,
                written,
                written_digest,
                transfer,
            };
        }
        // Resume verification after a restart (the crash-between-write-and-flip case).
        (
            State::Verifying {
                slot,
                written,
                written_digest,
                ..
            },
            Input::Apply,
        ) => {
            fx.push(Effect::Verify {
                slot: *slot,
                written: *written,
                digest: *written_digest,
            });
        }
        (State::Verifying { release, slot, .. }, Input::Verified) => {
            if release.manifest.runtime.is_empty() {
                fx.push(Effect::SetTrial {
                    slot: *slot,
                    tries: policy.boot_tries,
                });
            } else {
                fx.push(Effect::InstallRuntime {
                    release: Box::new(release.clone()),
                });
            }
        }
        (State::Verifying { slot, .. }, Input::RuntimeInstalled) => {
            fx.push(Effect::SetTrial {
                slot: *slot,
                tries: policy.boot_tries,
            });
        }
        (
            State::Verifying {
                release,
                slot,
                transfer,
                ..
            },
            Input::TrialSet { boot_id },
        ) => {
            let how = if transfer.image_bytes == 0 {
                String::new()
            } else if transfer.delta {
                format!(
                    "; delta: fetched {} of {} bytes, {} from the slots",
                    transfer.fetched_bytes, transfer.image_bytes, transfer.local_bytes
                )
            } else if transfer.fallback.is_empty() {
                format!("; fetched {} bytes", transfer.fetched_bytes)
            } else {
                format!(
                    "; fetched {} bytes (no delta: {})",
                    transfer.fetched_bytes, transfer.fallback
                )
            };
            fx.push(Effect::Report {
                event: EventKind::Staged,
                version: release.version().clone(),
                detail: format!("slot {slot}{how}"),
                transfer: (transfer.image_bytes > 0).then(|| transfer.clone()),
            });
            next.state = State::Staged {
                release: release.clone(),
                slot: *slot,
                boot_id,
            };
            next.last_error = None;
        }
        (State::Downloading { .. }, Input::Interrupted(reason)) => {
            next.last_error = Some(reason);
        }
        (
            State::Downloading { release, .. }
            | State::Verifying { release, .. }
            | State::Activating { release },
            Input::ApplyFailed(reason),
        ) => {
            let v = release.version().clone();
            let n = next.attempts.entry(v.clone()).or_insert(0);
            *n += 1;
            let reason = if *n >= policy.max_attempts {
                next.attempts.remove(&v);
                next.refused.insert(v.clone());
                format!(
                    "{reason} (attempt {}: giving up on {v})",
                    policy.max_attempts
                )
            } else {
                reason
            };
            fx.push(report(EventKind::Failed, release.version(), reason.clone()));
            next.last_error = Some(reason.clone());
            next.state = State::Failed {
                version: Some(release.version().clone()),
                reason,
            };
        }
        (
            State::Staged {
                release,
                slot,
                boot_id,
            },
            Input::Started {
                slot: booted,
                boot_id: now_id,
            },
        ) => {
            if *boot_id == now_id {
                // The engine restarted; the machine did not reboot.
            } else if booted == *slot {
                fx.push(report(
                    EventKind::Booted,
                    release.version(),
                    format!("slot {slot} on trial"),
                ));
                next.state = State::Trial {
                    release: release.clone(),
                    slot: *slot,
                };
            } else {
                let v = release.version().clone();
                let reason = format!(
                    "the boot loader did not boot slot {slot} (booted {booted}): boot counting fell back"
                );
                fall_back(&mut next, &mut fx, *slot, v, reason);
            }
        }
        (State::Trial { release, slot }, Input::Started { slot: booted, .. }) => {
            if booted != *slot {
                let v = release.version().clone();
                let reason = format!(
                    "slot {slot} was not marked good and its boot tries ran out; booted {booted} again"
                );
                fall_back(&mut next, &mut fx, *slot, v, reason);
            }
        }
        (State::RollingBack { version, reason }, Input::Started { slot: booted, .. }) => {
            if booted == mem.current_slot {
                fx.push(report(EventKind::RolledBack, version, reason.clone()));
                next.state = State::RolledBack {
                    version: version.clone(),
                    reason: reason.clone(),
                };
            }
        }
        // At rest: a manual rollback to the previous release takes effect on this boot.
        (s, Input::Started { slot: booted, .. }) if s.at_rest() || *s == State::Checking => {
            if *s == State::Checking {
                next.state = State::Idle;
            }
            if booted != mem.current_slot {
                match &mem.previous {
                    Some((pslot, pversion)) if *pslot == booted => {
                        let from = mem.current_version.clone();
                        fx.push(report(
                            EventKind::RolledBack,
                            &from,
                            format!("booted previous release {pversion} in slot {booted}"),
                        ));
                        next.current_version = pversion.clone();
                        next.current_slot = booted;
                        next.previous = None;
                    }
                    _ => {
                        // Booted a slot we know nothing about: trust what runs.
                        next.current_slot = booted;
                        next.previous = None;
                    }
                }
            }
        }
        (
            State::Downloading { .. } | State::Verifying { .. } | State::Activating { .. },
            Input::Started { .. },
        ) => {
            // Resumed by an explicit Apply from the runner.
        }
        (State::Trial { release, slot }, Input::MarkGood) => {
            let v = release.version().clone();
            fx.push(Effect::MarkGood { slot: *slot });
            fx.push(report(
                EventKind::Healthy,
                &v,
                format!("slot {slot} marked good"),
            ));
            next.previous = Some((mem.current_slot, mem.current_version.clone()));
            next.attempts.clear();
            next.current_version = v;
            next.current_slot = *slot;
            next.state = State::Idle;
            next.last_error = None;
        }
        // Marking good what already runs is harmless (a retried D-Bus call).
        (State::Idle, Input::MarkGood) => {
            fx.push(Effect::MarkGood {
                slot: mem.current_slot,
            });
        }
        (State::Staged { release, slot, .. }, Input::Rollback { reason }) => {
            // Nothing booted yet: undo the boot selection and forget the release.
            fx.push(Effect::MarkBad { slot: *slot });
            let v = release.version().clone();
            fx.push(report(
                EventKind::Failed,
                &v,
                format!("cancelled: {reason}"),
            ));
            next.refused.insert(v.clone());
            next.state = State::Failed {
                version: Some(v),
                reason: format!("cancelled: {reason}"),
            };
        }
        (State::Trial { release, slot }, Input::Rollback { reason }) => {
            fx.push(Effect::MarkBad { slot: *slot });
            let v = release.version().clone();
            fx.push(report(EventKind::Failed, &v, reason.clone()));
            next.refused.insert(v.clone());
            next.last_error = Some(reason.clone());
            next.state = State::RollingBack { version: v, reason };
        }
        // Back to the previous good release: prefer its slot at the next boot; the boot
        // itself is recorded by `Started`.
        (s, Input::Rollback { .. }) if s.at_rest() && mem.previous.is_some() => {
            fx.push(Effect::MarkBad {
                slot: mem.current_slot,
            });
        }
        (_, input) => return Err(invalid(&input)),
    }
    Ok((next, fx))
}

/// Starts applying `release`: a runtime-only release (no OS image) installs its runtime images
/// in place; any other downloads its OS image into the inactive slot first.
fn begin_apply(mem: &Memory, release: Release, fx: &mut Vec<Effect>) -> State {
    let v = release.version().clone();
    if release.manifest.os.is_none() {
        fx.push(report(EventKind::Downloading, &v, "runtime images only"));
        fx.push(Effect::InstallRuntime {
            release: Box::new(release.clone()),
        });
        return State::Activating { release };
    }
    fx.push(report(EventKind::Downloading, &v, ""));
    let slot = mem.current_slot.other();
    fx.push(Effect::Download {
        release: Box::new(release.clone()),
        slot,
        from: Checkpoint::default(),
    });
    State::Downloading {
        release,
        slot,
        checkpoint: Checkpoint::default(),
    }
}

fn fall_back(next: &mut Memory, fx: &mut Vec<Effect>, slot: Slot, v: Version, reason: String) {
    fx.push(Effect::MarkBad { slot });
    fx.push(report(EventKind::RolledBack, &v, reason.clone()));
    next.refused.insert(v.clone());
    next.last_error = Some(reason.clone());
    next.state = State::RolledBack { version: v, reason };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE, RuntimeImage};

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn release(version: &str) -> Release {
        let manifest = Manifest {
            kind: RELEASE_TYPE.into(),
            channel: "stable".into(),
            version: v(version),
            expires: "2030-01-01T00:00:00Z".parse().unwrap(),
            os: Some(OsImage {
                url: "/p".into(),
                size: 10,
                sha256: Sha256Digest::of(b"x"),
                format: PayloadFormat::Raw,
                delta: None,
            }),
            runtime: vec![],
            min_from_version: None,
            advisories: vec![],
        };
        Release {
            envelope: manifest.sign(&[]),
            manifest,
        }
    }

    const AUTO: Policy = Policy {
        auto_download: true,
        boot_tries: 1,
        max_attempts: 3,
    };

    fn run(mem: &Memory, inputs: Vec<Input>) -> (Memory, Vec<Effect>) {
        let mut m = mem.clone();
        let mut all = Vec::new();
        for i in inputs {
            let (n, fx) = step(&m, i, &AUTO).unwrap();
            m = n;
            all.extend(fx);
        }
        (m, all)
    }

    fn reports(fx: &[Effect]) -> Vec<EventKind> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Report { event, .. } => Some(*event),
                _ => None,
            })
            .collect()
    }

    fn fresh() -> Memory {
        Memory::new(v("1.0.0"), Slot::A)
    }

    fn staged() -> Memory {
        let digest = Sha256Digest::of(b"x");
        run(
            &fresh(),
            vec![
                Input::Check,
                Input::Found(Box::new(release("2.0.0"))),
                Input::Downloaded {
                    written: 10,
                    written_digest: digest,
                    transfer: Transfer::default(),
                },
                Input::Verified,
                Input::TrialSet {
                    boot_id: "boot-1".into(),
                },
            ],
        )
        .0
    }

    #[test]
    fn the_staged_report_says_how_the_image_came() {
        let delta = Transfer {
            image_bytes: 100,
            fetched_bytes: 7,
            local_bytes: 95,
            delta: true,
            fallback: String::new(),
        };
        let (m, _) = run(
            &fresh(),
            vec![Input::Check, Input::Found(Box::new(release("2.0.0")))],
        );
        let (m, _) = run(
            &m,
            vec![Input::Downloaded {
                written: 100,
                written_digest: Sha256Digest::of(b"x"),
                transfer: delta.clone(),
            }],
        );
        let (_, fx) = run(
            &m,
            vec![
                Input::Verified,
                Input::TrialSet {
                    boot_id: "b".into(),
                },
            ],
        );
        let staged = fx
            .iter()
            .find_map(|e| match e {
                Effect::Report {
                    event: EventKind::Staged,
                    detail,
                    transfer,
                    ..
                } => Some((detail.clone(), transfer.clone())),
                _ => None,
            })
            .expect("a staged report");
        assert_eq!(staged.1, Some(delta));
        assert_eq!(
            staged.0,
            "slot B; delta: fetched 7 of 100 bytes, 95 from the slots"
        );
    }

    #[test]
    fn full_update_reaches_staged_writing_only_the_other_slot() {
        let digest = Sha256Digest::of(b"x");
        let (m, fx) = run(&fresh(), vec![Input::Check]);
        assert_eq!(m.state, State::Checking);
        assert_eq!(fx, vec![Effect::Check]);

        let (m, fx) = run(&m, vec![Input::Found(Box::new(release("2.0.0")))]);
        assert_eq!(m.state.phase(), EnginePhase::Downloading);
        assert_eq!(
            reports(&fx),
            vec![EventKind::Checked, EventKind::Downloading]
        );
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Download { slot: Slot::B, .. }))
        );

        let cp = Checkpoint {
            served: 5,
            written: 5,
            ..Default::default()
        };
        let (m, fx) = run(&m, vec![Input::Progress(cp.clone())]);
        assert!(fx.is_empty());
        assert!(matches!(&m.state, State::Downloading { checkpoint, .. } if *checkpoint == cp));

        let (m, fx) = run(
            &m,
            vec![Input::Downloaded {
                written: 10,
                written_digest: digest,
                transfer: Transfer::default(),
            }],
        );
        assert_eq!(
            fx,
            vec![Effect::Verify {
                slot: Slot::B,
                written: 10,
                digest
            }]
        );
        let (m, fx) = run(&m, vec![Input::Verified]);
        assert_eq!(
            fx,
            vec![Effect::SetTrial {
                slot: Slot::B,
                tries: 1
            }]
        );
        let (m, fx) = run(
            &m,
            vec![Input::TrialSet {
                boot_id: "boot-1".into(),
            }],
        );
        assert_eq!(m.state.phase(), EnginePhase::Staged);
        assert_eq!(reports(&fx), vec![EventKind::Staged]);
    }

    #[test]
    fn runtime_images_are_installed_before_the_trial_is_set() {
        let mut r = release("2.0.0");
        r.manifest.runtime.push(RuntimeImage {
            name: "containerd".into(),
            url: "/c".into(),
            size: 1,
            sha256: Sha256Digest::of(b""),
        });
        let mem = Memory {
            state: State::Verifying {
                release: r,
                slot: Slot::B,
                written: 10,
                written_digest: Sha256Digest::of(b"x"),
                transfer: Transfer::default(),
            },
            ..fresh()
        };
        let (m, fx) = run(&mem, vec![Input::Verified]);
        assert!(matches!(fx[..], [Effect::InstallRuntime { .. }]));
        let (_, fx) = run(&m, vec![Input::RuntimeInstalled]);
        assert!(matches!(fx[..], [Effect::SetTrial { .. }]));
        // A failed runtime install fails the update without touching the boot selection.
        let (m, fx) = run(
            &m,
            vec![Input::ApplyFailed("containerd restart failed".into())],
        );
        assert_eq!(m.state.phase(), EnginePhase::Failed);
        assert!(fx.iter().all(|e| !matches!(e, Effect::SetTrial { .. })));
    }

    /// A release with runtime images and no OS image.
    fn runtime_only(version: &str) -> Release {
        let mut r = release(version);
        r.manifest.os = None;
        r.manifest.runtime.push(RuntimeImage {
            name: "kubelet".into(),
            url: "/k".into(),
            size: 1,
            sha256: Sha256Digest::of(b"k"),
        });
        r
    }

    #[test]
    fn a_runtime_only_release_is_activated_in_place_without_a_reboot() {
        let (m, fx) = run(
            &fresh(),
            vec![Input::Check, Input::Found(Box::new(runtime_only("1.0.1")))],
        );
        assert_eq!(m.state.phase(), EnginePhase::Activating);
        assert_eq!(
            reports(&fx),
            vec![EventKind::Checked, EventKind::Downloading]
        );
        assert!(matches!(
            fx.last(),
            Some(Effect::InstallRuntime { release }) if release.version() == &v("1.0.1")
        ));
        // Neither slot is written nor the boot selection touched, at any point.
        let no_slot_or_boot_change = |fx: &[Effect]| {
            fx.iter().all(|e| {
                !matches!(
                    e,
                    Effect::Download { .. }
                        | Effect::Verify { .. }
                        | Effect::SetTrial { .. }
                        | Effect::MarkBad { .. }
                        | Effect::MarkGood { .. }
                )
            })
        };
        assert!(no_slot_or_boot_change(&fx));
        // An engine restart in the middle (same boot) resumes the install.
        let (m, fx) = run(
            &m,
            vec![Input::Started {
                slot: Slot::A,
                boot_id: "b1".into(),
            }],
        );
        assert!(fx.is_empty());
        let (m, fx) = run(&m, vec![Input::Apply]);
        assert!(matches!(fx[..], [Effect::InstallRuntime { .. }]));
        let (m, fx) = run(&m, vec![Input::RuntimeInstalled]);
        assert_eq!(m.state, State::Idle);
        assert_eq!(m.current_version, v("1.0.1"));
        assert_eq!(m.current_slot, Slot::A);
        assert_eq!(m.previous, None);
        assert_eq!(reports(&fx), vec![EventKind::Healthy]);
        assert!(no_slot_or_boot_change(&fx));
        let Some(Effect::Report { detail, .. }) = fx.first() else {
            unreachable!()
        };
        assert!(
            detail.contains("kubelet") && detail.contains("no reboot"),
            "{detail}"
        );
    }

    #[test]
    fn a_failed_runtime_only_release_leaves_the_running_version_and_counts_attempts() {
        let (m, fx) = run(
            &fresh(),
            vec![
                Input::Check,
                Input::Found(Box::new(runtime_only("1.0.1"))),
                Input::ApplyFailed("restarting kubelet.service: job failed".into()),
            ],
        );
        assert_eq!(m.state.phase(), EnginePhase::Failed);
        assert_eq!(m.current_version, v("1.0.0"));
        assert_eq!(m.attempts.get(&v("1.0.1")), Some(&1));
        assert_eq!(
            reports(&fx),
            vec![
                EventKind::Checked,
                EventKind::Downloading,
                EventKind::Failed
            ]
        );
        // Without auto-download it waits for Apply like any release.
        let manual = Policy {
            auto_download: false,
            ..AUTO
        };
        let (m, _) = step(&fresh(), Input::Check, &manual).unwrap();
        let (m, _) = step(&m, Input::Found(Box::new(runtime_only("1.0.1"))), &manual).unwrap();
        assert_eq!(m.state.phase(), EnginePhase::Available);
        let (m, fx) = step(&m, Input::Apply, &manual).unwrap();
        assert_eq!(m.state.phase(), EnginePhase::Activating);
        assert!(matches!(fx.last(), Some(Effect::InstallRuntime { .. })));
    }

    #[test]
    fn without_auto_download_a_release_waits_for_apply() {
        let manual = Policy {
            auto_download: false,
            boot_tries: 2,
            max_attempts: 3,
        };
        let (m, _) = step(&fresh(), Input::Check, &manual).unwrap();
        let (m, fx) = step(&m, Input::Found(Box::new(release("2.0.0"))), &manual).unwrap();
        assert_eq!(m.state.phase(), EnginePhase::Available);
        assert_eq!(reports(&fx), vec![EventKind::Checked]);
        let (m, fx) = step(&m, Input::Apply, &manual).unwrap();
        assert_eq!(m.state.phase(), EnginePhase::Downloading);
        assert!(fx.iter().any(|e| matches!(e, Effect::Download { .. })));
    }

    #[test]
    fn failures_before_reboot_leave_the_running_version() {
        let (m, _) = run(
            &fresh(),
            vec![Input::Check, Input::Found(Box::new(release("2.0.0")))],
        );
        let (m, fx) = run(
            &m,
            vec![Input::ApplyFailed("sha256 digest mismatch".into())],
        );
        assert_eq!(reports(&fx), vec![EventKind::Failed]);
        assert_eq!(m.current_version, v("1.0.0"));
        assert_eq!(m.current_slot, Slot::A);
        assert!(
            fx.iter()
                .all(|e| !matches!(e, Effect::SetTrial { .. } | Effect::MarkBad { .. }))
        );
        // A failed check (e.g. bad signature) is reported and leaves the engine at rest.
        let (m, fx) = run(
            &m,
            vec![Input::Check, Input::CheckFailed("threshold".into())],
        );
        assert_eq!(m.state, State::Idle);
        assert_eq!(reports(&fx), vec![EventKind::Failed]);
        // A check that never reached the server is kept as the last error, not reported.
        let (m, fx) = run(
            &m,
            vec![
                Input::Check,
                Input::ServerUnreachable("connection refused".into()),
            ],
        );
        assert_eq!(m.state, State::Idle);
        assert_eq!(m.last_error.as_deref(), Some("connection refused"));
        assert!(reports(&fx).is_empty(), "{fx:?}");
    }

    #[test]
    fn an_interrupted_download_keeps_its_checkpoint_and_resumes() {
        let cp = Checkpoint {
            served: 7,
            written: 7,
            ..Default::default()
        };
        let (m, _) = run(
            &fresh(),
            vec![
                Input::Check,
                Input::Found(Box::new(release("2.0.0"))),
                Input::Progress(cp.clone()),
                Input::Interrupted("connection reset at byte 9".into()),
            ],
        );
        assert_eq!(m.state.phase(), EnginePhase::Downloading);
        assert_eq!(m.last_error.as_deref(), Some("connection reset at byte 9"));
        let (_, fx) = run(&m, vec![Input::Apply]);
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Download { from, .. } if *from == cp))
        );
    }

    #[test]
    fn a_release_that_keeps_failing_is_given_up_after_max_attempts() {
        let mut m = fresh();
        for attempt in 1..=3 {
            let (n, fx) = run(
                &m,
                vec![
                    Input::Check,
                    Input::Found(Box::new(release("2.0.0"))),
                    Input::ApplyFailed("sha256 digest mismatch".into()),
                ],
            );
            assert!(
                fx.iter().any(|e| matches!(e, Effect::Download { .. })),
                "attempt {attempt}"
            );
            m = n;
        }
        assert!(m.refused.contains(&v("2.0.0")));
        assert!(
            m.last_error
                .as_deref()
                .unwrap()
                .contains("giving up on 2.0.0")
        );
        let (m, fx) = run(
            &m,
            vec![Input::Check, Input::Found(Box::new(release("2.0.0")))],
        );
        assert_eq!(m.state, State::Idle);
        assert!(fx.iter().all(|e| !matches!(e, Effect::Download { .. })));
        // A newer release is still taken.
        let (m, _) = run(
            &m,
            vec![Input::Check, Input::Found(Box::new(release("2.0.1")))],
        );
        assert_eq!(m.state.phase(), EnginePhase::Downloading);
    }

    #[test]
    fn restart_without_reboot_keeps_staged() {
        let m = staged();
        let (m2, fx) = run(
            &m,
            vec![Input::Started {
                slot: Slot::A,
                boot_id: "boot-1".into(),
            }],
        );
        assert_eq!(m2, m);
        assert!(fx.is_empty());
    }

    #[test]
    fn reboot_into_the_new_slot_goes_on_trial_then_good() {
        let (m, fx) = run(
            &staged(),
            vec![Input::Started {
                slot: Slot::B,
                boot_id: "boot-2".into(),
            }],
        );
        assert_eq!(m.state.phase(), EnginePhase::Trial);
        assert_eq!(reports(&fx), vec![EventKind::Booted]);
        let (m, fx) = run(&m, vec![Input::MarkGood]);
        assert_eq!(m.state, State::Idle);
        assert_eq!(
            (m.current_version.clone(), m.current_slot),
            (v("2.0.0"), Slot::B)
        );
        assert_eq!(m.previous, Some((Slot::A, v("1.0.0"))));
        assert_eq!(fx[0], Effect::MarkGood { slot: Slot::B });
        assert_eq!(reports(&fx), vec![EventKind::Healthy]);
        // The next update writes slot A, the one not running.
        let (_, fx) = run(
            &m,
            vec![Input::Check, Input::Found(Box::new(release("3.0.0")))],
        );
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Download { slot: Slot::A, .. }))
        );
    }

    #[test]
    fn boot_loader_fallback_is_rolled_back_and_never_retried() {
        let (m, fx) = run(
            &staged(),
            vec![Input::Started {
                slot: Slot::A,
                boot_id: "boot-2".into(),
            }],
        );
        assert_eq!(m.state.phase(), EnginePhase::RolledBack);
        assert_eq!(fx[0], Effect::MarkBad { slot: Slot::B });
        assert_eq!(reports(&fx), vec![EventKind::RolledBack]);
        assert!(m.refused.contains(&v("2.0.0")));
        // Offered again: checked, not downloaded.
        let (m, fx) = run(
            &m,
            vec![Input::Check, Input::Found(Box::new(release("2.0.0")))],
        );
        assert_eq!(m.state, State::Idle);
        assert!(fx.iter().all(|e| !matches!(e, Effect::Download { .. })));
    }

    #[test]
    fn trial_that_fails_health_rolls_back_after_reboot() {
        let (m, _) = run(
            &staged(),
            vec![Input::Started {
                slot: Slot::B,
                boot_id: "boot-2".into(),
            }],
        );
        let (m, fx) = run(
            &m,
            vec![Input::Rollback {
                reason: "health check kubelet.service failed".into(),
            }],
        );
        assert_eq!(m.state.phase(), EnginePhase::RollingBack);
        assert_eq!(fx[0], Effect::MarkBad { slot: Slot::B });
        let (m, fx) = run(
            &m,
            vec![Input::Started {
                slot: Slot::A,
                boot_id: "boot-3".into(),
            }],
        );
        assert_eq!(m.state.phase(), EnginePhase::RolledBack);
        assert_eq!(reports(&fx), vec![EventKind::RolledBack]);
        assert_eq!(m.current_version, v("1.0.0"));
    }

    #[test]
    fn manual_rollback_to_the_previous_release() {
        let (m, _) = run(
            &staged(),
            vec![
                Input::Started {
                    slot: Slot::B,
                    boot_id: "boot-2".into(),
                },
                Input::MarkGood,
            ],
        );
        let (m, fx) = run(
            &m,
            vec![Input::Rollback {
                reason: "admin".into(),
            }],
        );
        assert_eq!(fx, vec![Effect::MarkBad { slot: Slot::B }]);
        let (m, fx) = run(
            &m,
            vec![Input::Started {
                slot: Slot::A,
                boot_id: "boot-3".into(),
            }],
        );
        assert_eq!(
            (m.current_version.clone(), m.current_slot),
            (v("1.0.0"), Slot::A)
        );
        assert_eq!(reports(&fx), vec![EventKind::RolledBack]);
        // Nothing to go back to now.
        assert!(
            step(
                &m,
                Input::Rollback {
                    reason: "again".into()
                },
                &AUTO
            )
            .is_err()
        );
    }

    #[test]
    fn staged_release_can_be_cancelled_before_reboot() {
        let (m, fx) = run(
            &staged(),
            vec![Input::Rollback {
                reason: "admin".into(),
            }],
        );
        assert_eq!(fx[0], Effect::MarkBad { slot: Slot::B });
        assert_eq!(m.state.phase(), EnginePhase::Failed);
    }

    #[test]
    fn illegal_inputs_are_errors_not_panics() {
        let (downloading, _) = run(
            &fresh(),
            vec![Input::Check, Input::Found(Box::new(release("2.0.0")))],
        );
        for (mem, input) in [
            (fresh(), Input::Verified),
            (fresh(), Input::Apply),
            (fresh(), Input::Rollback { reason: "x".into() }),
            (downloading.clone(), Input::Check),
            (downloading.clone(), Input::MarkGood),
            (staged(), Input::MarkGood),
            (staged(), Input::Check),
        ] {
            let err = step(&mem, input, &AUTO).unwrap_err();
            assert!(err.to_string().contains("is not valid while"), "{err}");
        }
    }

    fn any_input() -> impl Strategy<Value = Input> {
        let slot = prop_oneof![Just(Slot::A), Just(Slot::B)];
        prop_oneof![
            Just(Input::Check),
            (2u64..5).prop_map(|m| Input::Found(Box::new(release(&format!("{m}.0.0"))))),
            (2u64..5).prop_map(|m| Input::Found(Box::new(runtime_only(&format!("{m}.0.1"))))),
            Just(Input::NothingNew),
            Just(Input::CheckFailed("x".into())),
            Just(Input::ServerUnreachable("x".into())),
            Just(Input::Apply),
            Just(Input::Progress(Checkpoint::default())),
            Just(Input::Downloaded {
                written: 1,
                written_digest: Sha256Digest::of(b"x"),
                transfer: Transfer::default(),
            }),
            Just(Input::Verified),
            Just(Input::RuntimeInstalled),
            Just(Input::TrialSet {
                boot_id: "b1".into()
            }),
            Just(Input::ApplyFailed("x".into())),
            Just(Input::Interrupted("x".into())),
            (slot, prop_oneof![Just("b1"), Just("b2"), Just("b3")]).prop_map(|(slot, b)| {
                Input::Started {
                    slot,
                    boot_id: b.into(),
                }
            }),
            Just(Input::MarkGood),
            Just(Input::Rollback { reason: "x".into() }),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order: no panic, downloads and trials never target the
        /// slot that runs, and a refused version is never downloaded again.
        #[test]
        fn no_input_sequence_writes_the_running_slot(inputs in proptest::collection::vec(any_input(), 0..40)) {
            let mut m = fresh();
            for input in inputs {
                if let Ok((next, fx)) = step(&m, input, &AUTO) {
                    for e in &fx {
                        if let Effect::Download { slot, release, .. } = e {
                            prop_assert_ne!(*slot, m.current_slot);
                            prop_assert!(!m.refused.contains(release.version()));
                            prop_assert!(release.manifest.os.is_some(), "a runtime-only release writes no slot");
                        }
                        if let Effect::SetTrial { slot, .. } = e {
                            prop_assert_ne!(*slot, m.current_slot);
                        }
                    }
                    m = next;
                }
            }
        }
    }
}
