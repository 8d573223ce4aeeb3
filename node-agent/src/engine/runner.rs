//! The engine's I/O half: it owns the persisted state, feeds inputs to the pure state machine,
//! persists each new state before acting on it, and carries out the effects (HTTP, slots, boot
//! loader, reports). D-Bus, the `--once` command and the check timer all drive it through
//! [`Engine`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use semver::Version;
use slipway_api::wire::{CheckRequest, CheckResponse, EventKind, EventReport, Transfer};
use slipway_api::{EnginePhase, TrustedRoot, admit};
use tokio::sync::watch;

use super::boot::BootBackend;
use super::delta;
use super::download::{self, Job, Progress};
use super::machine::{Effect, Input, Memory, Policy, Release, State, step};
use super::settings::Settings;
use super::slot::Slot;
use super::store::{Persisted, Store};
use super::sysext::Sysext;
use crate::error::{Error, Result};

/// What the engine shows the world (D-Bus properties, `status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Phase.
    pub phase: EnginePhase,
    /// Version running (last marked good).
    pub current_version: String,
    /// Version staged or on trial, empty if none.
    pub staged_version: String,
    /// The slot this boot came from.
    pub booted_slot: String,
    /// Payload bytes downloaded so far.
    pub downloaded_bytes: u64,
    /// Payload size of the release in flight.
    pub total_bytes: u64,
    /// Last error, empty if none.
    pub last_error: String,
}

/// The machine facts read once at start-up.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Machine id.
    pub machine_id: String,
    /// Version in the booted slot's os-release.
    pub os_version: Version,
    /// Booted slot.
    pub booted_slot: Slot,
    /// This boot's id.
    pub boot_id: String,
    /// CPU architecture.
    pub arch: String,
}

impl Facts {
    /// Reads the facts from the files named in `settings`.
    pub fn read(settings: &Settings) -> Result<Self> {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
        let machine_id = read(&settings.machine_id_file)?.trim().to_owned();
        if !slipway_api::wire::is_valid_machine_id(&machine_id) {
            return Err(Error::Config(format!(
                "{}: {machine_id:?} is not a valid machine id",
                settings.machine_id_file.display()
            )));
        }
        let os_version = parse_os_release(&read(&settings.os_release)?).ok_or_else(|| {
            Error::Config(format!(
                "{}: no SLIPWAY_VERSION (or semver VERSION_ID)",
                settings.os_release.display()
            ))
        })?;
        let booted_slot = parse_cmdline(&read(&settings.cmdline)?).ok_or_else(|| {
            Error::Config(format!(
                "{}: no slipway.slot=A|B or root=PARTLABEL=SLIPWAY_A|B",
                settings.cmdline.display()
            ))
        })?;
        let boot_id = read(&settings.boot_id_file)?.trim().to_owned();
        Ok(Self {
            machine_id,
            os_version,
            booted_slot,
            boot_id,
            arch: std::env::consts::ARCH.to_owned(),
        })
    }
}

/// `SLIPWAY_VERSION=`, else a `VERSION_ID=` that is semver.
pub fn parse_os_release(text: &str) -> Option<Version> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
        })
    };
    get("SLIPWAY_VERSION")
        .and_then(|v| v.parse().ok())
        .or_else(|| get("VERSION_ID").and_then(|v| v.parse().ok()))
}

/// `slipway.slot=A`, else `root=PARTLABEL=SLIPWAY_A`.
pub fn parse_cmdline(text: &str) -> Option<Slot> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .find_map(|w| w.strip_prefix("slipway.slot=").and_then(|s| s.parse().ok()))
        .or_else(|| {
            words.iter().find_map(|w| match *w {
                "root=PARTLABEL=SLIPWAY_A" => Some(Slot::A),
                "root=PARTLABEL=SLIPWAY_B" => Some(Slot::B),
                _ => None,
            })
        })
}

/// State shared with the writer thread (checkpoints arrive from there).
struct Shared {
    store: Store,
    persisted: Mutex<Persisted>,
    policy: Policy,
    outbox_limit: usize,
    changed: watch::Sender<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Persisted> {
        // A panic while holding the lock cannot leave the data half-updated: every update
        // replaces whole values. Recover the guard rather than poisoning the daemon.
        self.persisted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one step and persists it; returns the effects other than reports (which go to
    /// the outbox in the same write).
    fn step(&self, input: Input, machine_id: &str) -> Result<Vec<Effect>> {
        let mut p = self.lock();
        let input_name = format!("{input:?}");
        let (next, effects) = step(&p.memory, input, &self.policy)?;
        if next.state.phase() != p.memory.state.phase() {
            tracing::info!(
                from = %p.memory.state.phase(),
                to = %next.state.phase(),
                input = %input_name.chars().take(120).collect::<String>(),
                "engine phase"
            );
        }
        let mut rest = Vec::new();
        let mut candidate = p.clone();
        candidate.memory = next;
        for e in effects {
            match e {
                Effect::Report {
                    event,
                    version,
                    detail,
                    transfer,
                } => {
                    if candidate.outbox.len() >= self.outbox_limit {
                        candidate.outbox.pop_front();
                        tracing::warn!("report queue full; dropped the oldest report");
                    }
                    candidate.outbox.push_back(EventReport {
                        machine_id: machine_id.to_owned(),
                        version,
                        event,
                        detail,
                        transfer,
                    });
                }
                other => rest.push(other),
            }
        }
        self.store.save(&candidate)?;
        *p = candidate;
        drop(p);
        self.changed.send_replace(());
        Ok(rest)
    }
}

/// The engine.
pub struct Engine {
    settings: Settings,
    facts: Facts,
    root: TrustedRoot,
    boot: Box<dyn BootBackend>,
    http: super::http::Http,
    shared: Arc<Shared>,
    sysext: Sysext,
    /// Held while an operation (check, download, verify) runs; requests that would start a
    /// second one are refused as busy instead of queueing behind a long download.
    op: tokio::sync::Mutex<()>,
    /// Held while reports are delivered: two flushes at once (the report timer and the end of
    /// a check) would both send the report at the head of the queue.
    flushing: tokio::sync::Mutex<()>,
    progress: Progress,
    /// What `progress` counts up to (the payload's size, or the image's for a delta).
    progress_total: Arc<AtomicU64>,
    /// The re-read digest of the last download, (slot, bytes, digest): lets the Verify effect
    /// that follows a download skip a second full read.
    reread: Mutex<Option<(Slot, u64, slipway_api::Sha256Digest)>>,
    clock: Arc<dyn slipway_runtime::Clock>,
    units: Arc<dyn super::sysext::UnitManager>,
}

impl Engine {
    /// Opens the engine: loads the root of trust and the persisted state (or starts fresh
    /// from what the machine runs).
    pub fn open(
        settings: Settings,
        facts: Facts,
        boot: Box<dyn BootBackend>,
        units: Arc<dyn super::sysext::UnitManager>,
    ) -> Result<Self> {
        let root_bytes = std::fs::read(&settings.root).map_err(|e| Error::io(&settings.root, e))?;
        let root = TrustedRoot::bootstrap(&root_bytes)
            .map_err(|e| Error::Config(format!("{}: {e}", settings.root.display())))?;
        let store = Store::new(&settings.state_dir);
        let persisted = match store.load()? {
            Some(p) => p,
            None => Persisted::new(Memory::new(facts.os_version.clone(), facts.booted_slot)),
        };
        let http = super::http::Http::new(&settings)?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            store,
            persisted: Mutex::new(persisted),
            policy: Policy {
                auto_download: settings.auto_download,
                boot_tries: settings.boot_tries,
                max_attempts: settings.max_attempts,
            },
            outbox_limit: settings.outbox_limit,
            changed,
        });
        let sysext = Sysext::new(settings.runtime.clone());
        Ok(Self {
            settings,
            facts,
            root,
            boot,
            http,
            shared,
            sysext,
            op: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            progress: Arc::new(AtomicU64::new(0)),
            progress_total: Arc::new(AtomicU64::new(0)),
            reread: Mutex::new(None),
            clock: Arc::new(slipway_runtime::SystemClock),
            units,
        })
    }

    /// Replaces the clock that release expiry is judged by (tests move it).
    pub fn with_clock(mut self, clock: Arc<dyn slipway_runtime::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Records this boot (booted slot and boot id: trial, fallback, manual rollback). Quick:
    /// the daemon does this before it serves D-Bus and leaves an interrupted download to its
    /// first check, so that a long resumed download never keeps it off the bus (nor past
    /// systemd's start timeout).
    pub async fn record_boot(&self) -> Result<()> {
        let _op = self.op.lock().await;
        self.run(Input::Started {
            slot: self.facts.booted_slot,
            boot_id: self.facts.boot_id.clone(),
        })
        .await
    }

    /// Records this boot, then resumes an interrupted download, verification or runtime
    /// activation before returning (`--once`).
    pub async fn start(&self) -> Result<()> {
        self.record_boot().await?;
        let _op = self.op.lock().await;
        if self.resumable() {
            self.run(Input::Apply).await?;
        }
        Ok(())
    }

    /// Checks for an update (and downloads it when `auto-download` is on). An interrupted
    /// download or verification is resumed instead.
    pub async fn check(&self) -> Result<()> {
        let _op = self.busy()?;
        if self.resumable() {
            return self.run(Input::Apply).await;
        }
        self.run(Input::Check).await
    }

    /// Whether a download, verification or runtime activation was interrupted and waits to
    /// be resumed.
    pub fn resumable(&self) -> bool {
        matches!(
            self.memory().state,
            State::Downloading { .. } | State::Verifying { .. } | State::Activating { .. }
        )
    }

    /// Downloads and stages the available release, or resumes an interrupted one.
    pub async fn apply(&self) -> Result<()> {
        let _op = self.busy()?;
        self.run(Input::Apply).await
    }

    /// Health checks passed: keep the booted slot.
    pub async fn mark_good(&self) -> Result<()> {
        let _op = self.busy()?;
        self.run(Input::MarkGood).await
    }

    /// Abandon the staged or trial release, or go back to the previous release.
    pub async fn rollback(&self, reason: &str) -> Result<()> {
        let _op = self.busy()?;
        self.run(Input::Rollback {
            reason: reason.to_owned(),
        })
        .await
    }

    fn busy(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        self.op.try_lock().map_err(|_| {
            Error::Refused(format!(
                "the engine is busy ({}); try again when it is done",
                self.memory().state.phase()
            ))
        })
    }

    /// A copy of the state machine's memory.
    pub fn memory(&self) -> Memory {
        self.shared.lock().memory.clone()
    }

    /// Reports not yet delivered.
    pub fn outbox_len(&self) -> usize {
        self.shared.lock().outbox.len()
    }

    /// A receiver that wakes on every state change.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.shared.changed.subscribe()
    }

    /// What the engine shows.
    pub fn snapshot(&self) -> Snapshot {
        let mem = self.memory();
        let staged_version = match &mem.state {
            State::Staged { release, .. } | State::Trial { release, .. } => {
                release.version().to_string()
            }
            _ => String::new(),
        };
        let os_size = |r: &Release| r.manifest.os.as_ref().map_or(0, |os| os.size);
        let (downloaded_bytes, total_bytes) = match &mem.state {
            // A delta's progress is through the image, a download's through the payload.
            State::Downloading { release, .. } => (
                self.progress.load(Ordering::Relaxed),
                match self.progress_total.load(Ordering::Relaxed) {
                    0 => os_size(release),
                    n => n,
                },
            ),
            State::Verifying { release, .. } | State::Staged { release, .. } => {
                (os_size(release), os_size(release))
            }
            _ => (0, 0),
        };
        Snapshot {
            phase: mem.state.phase(),
            current_version: mem.current_version.to_string(),
            staged_version,
            booted_slot: self.facts.booted_slot.to_string(),
            downloaded_bytes,
            total_bytes,
            last_error: mem.last_error.unwrap_or_default(),
        }
    }

    /// Live download progress (served bytes).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The SVID from the Workload API in use (with `spiffe-endpoint`), once one came.
    pub fn svid(&self) -> Option<Arc<super::spiffe::Svid>> {
        self.http.svid()
    }

    /// Waits up to `timeout` for the first SVID from the Workload API (with `spiffe-endpoint`;
    /// checks made before it came go without a client certificate).
    pub async fn wait_for_svid(
        &self,
        timeout: std::time::Duration,
    ) -> Option<Arc<super::spiffe::Svid>> {
        self.http.wait_for_svid(timeout).await
    }

    /// What the engine runs and where (read at start).
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The boot backend.
    pub fn boot(&self) -> &dyn BootBackend {
        self.boot.as_ref()
    }

    async fn run(&self, input: Input) -> Result<()> {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let effects = self.shared.step(input, &self.facts.machine_id)?;
            for effect in effects {
                let name = format!("{effect:?}");
                let started = std::time::Instant::now();
                let result = self.execute(effect).await;
                tracing::debug!(
                    effect = %name.chars().take(60).collect::<String>(),
                    secs = started.elapsed().as_secs_f64(),
                    "effect done"
                );
                if let Some(next) = result? {
                    queue.push_back(next);
                }
            }
        }
        Ok(())
    }

    async fn execute(&self, effect: Effect) -> Result<Option<Input>> {
        Ok(match effect {
            Effect::Check => Some(match self.fetch_update().await {
                Ok(Some(release)) => Input::Found(Box::new(release)),
                Ok(None) => Input::NothingNew,
                Err(e) => {
                    tracing::warn!(error = %e, "update check failed");
                    if matches!(e, Error::Unreachable { .. }) {
                        Input::ServerUnreachable(e.to_string())
                    } else {
                        Input::CheckFailed(e.to_string())
                    }
                }
            }),
            Effect::Download {
                release,
                slot,
                from,
            } => Some(match self.download(&release, slot, from).await {
                Ok((done, transfer)) => {
                    *self.reread.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((slot, done.written, done.reread_digest));
                    Input::Downloaded {
                        written: done.written,
                        written_digest: done.written_digest,
                        transfer,
                    }
                }
                Err(e @ Error::Interrupted { .. }) => {
                    tracing::warn!(error = %e, "download interrupted; it resumes from the last checkpoint");
                    Input::Interrupted(e.to_string())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "download failed");
                    Input::ApplyFailed(e.to_string())
                }
            }),
            Effect::Verify {
                slot,
                written,
                digest,
            } => {
                let path = self.slot_path_for_write(slot)?;
                let cached = self
                    .reread
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .filter(|(s, n, _)| *s == slot && *n == written)
                    .map(|(_, _, d)| d);
                let got = match cached {
                    // The download re-read every byte it wrote, and fsynced the slot.
                    Some(d) => Ok(d),
                    // After a restart nothing was re-read by this process: read the slot now.
                    None => {
                        tracing::info!(%slot, written, "re-reading the slot to verify it");
                        tokio::task::spawn_blocking(move || download::digest_slot(&path, written))
                            .await
                            .map_err(|e| Error::Refused(format!("verify task: {e}")))?
                    }
                };
                Some(match got {
                    Ok(d) if d == digest => Input::Verified,
                    Ok(d) => Input::ApplyFailed(
                        Error::Verify {
                            slot: slot.to_string(),
                            reason: format!("re-read digest {d}, written {digest}"),
                        }
                        .to_string(),
                    ),
                    Err(e) => Input::ApplyFailed(e.to_string()),
                })
            }
            Effect::InstallRuntime { release } => {
                // Runtime images follow the OS release; a failure here fails the update.
                Some(match self.install_runtime(&release).await {
                    Ok(()) => Input::RuntimeInstalled,
                    Err(e) => Input::ApplyFailed(e.to_string()),
                })
            }
            Effect::SetTrial { slot, tries } => {
                crash_point_before_set_trial(&self.settings.state_dir)?;
                Some(match self.boot.set_trial(slot, tries) {
                    Ok(()) => Input::TrialSet {
                        boot_id: self.facts.boot_id.clone(),
                    },
                    Err(e) => Input::ApplyFailed(e.to_string()),
                })
            }
            Effect::MarkGood { slot } => {
                self.boot.mark_good(slot)?;
                None
            }
            Effect::MarkBad { slot } => {
                self.boot.mark_bad(slot)?;
                None
            }
            Effect::Report { .. } => None, // queued by Shared::step
        })
    }

    /// The path of `slot`, refusing the booted slot (and anything that resolves to it).
    fn slot_path_for_write(&self, slot: Slot) -> Result<std::path::PathBuf> {
        if slot == self.facts.booted_slot {
            return Err(Error::Refused(format!(
                "slot {slot} is the booted slot; it is never written"
            )));
        }
        let target = self.settings.slot_path(slot);
        let running = self.settings.slot_path(self.facts.booted_slot);
        if let (Ok(a), Ok(b)) = (std::fs::metadata(target), std::fs::metadata(running)) {
            use std::os::unix::fs::MetadataExt;
            let same_file = a.dev() == b.dev() && a.ino() == b.ino();
            let same_device = a.rdev() != 0 && a.rdev() == b.rdev();
            if same_file || same_device {
                return Err(Error::Refused(format!(
                    "{} and {} are the same device; refusing to write the running slot",
                    target.display(),
                    running.display()
                )));
            }
        }
        Ok(target.to_path_buf())
    }

    fn resolve(&self, url: &str) -> Result<String> {
        self.settings
            .server
            .join(url)
            .map(|u| u.to_string())
            .map_err(|e| Error::Payload {
                url: url.into(),
                reason: format!("not a valid URL: {e}"),
            })
    }

    async fn download(
        &self,
        release: &Release,
        slot: Slot,
        from: super::machine::Checkpoint,
    ) -> Result<(download::Outcome, Transfer)> {
        let slot_path = self.slot_path_for_write(slot)?;
        let os = release.manifest.os.as_ref().ok_or_else(|| {
            Error::Refused(format!(
                "release {} is runtime-only: no os image to download",
                release.version()
            ))
        })?;
        let shared = self.shared.clone();
        let machine_id = self.facts.machine_id.clone();
        let persist = move |cp| {
            if let Err(e) = shared.step(Input::Progress(cp), &machine_id) {
                tracing::warn!(error = %e, "could not persist a download checkpoint");
            }
        };
        let mut from = from;
        let mut fallback = String::new();
        match &os.delta {
            Some(source) if self.settings.delta && (from.delta || from.written == 0) => {
                self.progress.store(from.written, Ordering::Relaxed);
                self.progress_total
                    .store(source.image.size, Ordering::Relaxed);
                let job = delta::DeltaJob {
                    source: source.clone(),
                    index_url: self.resolve(&source.index.url)?,
                    image_url: self.resolve(&source.image.url)?,
                    payload_size: os.size,
                    running: self
                        .settings
                        .slot_path(self.facts.booted_slot)
                        .to_path_buf(),
                    slot_path: slot_path.clone(),
                    from: from.clone(),
                    checkpoint_bytes: self.settings.checkpoint_bytes,
                    idle_timeout: self.settings.http_timeout,
                    max_fetch: self.settings.delta_max_fetch,
                };
                match delta::run(
                    &self.http.client(),
                    job,
                    self.progress.clone(),
                    persist.clone(),
                )
                .await?
                {
                    delta::Applied::Done(outcome, transfer) => {
                        tracing::info!(
                            fetched = transfer.fetched_bytes,
                            local = transfer.local_bytes,
                            image = transfer.image_bytes,
                            "delta applied"
                        );
                        return Ok((outcome, transfer));
                    }
                    delta::Applied::Fallback(reason) => {
                        tracing::warn!(%reason, "no delta; downloading the whole payload");
                        fallback = reason;
                        from = super::machine::Checkpoint::default();
                    }
                }
            }
            Some(_) if !self.settings.delta => fallback = "delta = false".into(),
            Some(_) => {} // resuming a full download
            None => {}
        }
        if from.delta {
            // A delta's checkpoint, but no delta now (turned off, or the release changed).
            from = super::machine::Checkpoint::default();
        }
        self.progress.store(from.served, Ordering::Relaxed);
        self.progress_total.store(os.size, Ordering::Relaxed);
        let job = Job {
            url: self.resolve(&os.url)?,
            size: os.size,
            sha256: os.sha256,
            format: os.format,
            slot_path,
            from,
            checkpoint_bytes: self.settings.checkpoint_bytes,
            idle_timeout: self.settings.http_timeout,
        };
        let outcome =
            download::run(&self.http.client(), job, self.progress.clone(), persist).await?;
        let transfer = Transfer {
            image_bytes: outcome.written,
            fetched_bytes: os.size,
            local_bytes: 0,
            delta: false,
            fallback,
        };
        Ok((outcome, transfer))
    }

    async fn install_runtime(&self, release: &Release) -> Result<()> {
        for image in &release.manifest.runtime {
            let url = self.resolve(&image.url)?;
            self.sysext
                .install(&self.http.client(), &url, image, self.settings.http_timeout)
                .await?;
        }
        self.sysext.activate(self.units.as_ref()).await
    }

    async fn fetch_update(&self) -> Result<Option<Release>> {
        let running = self.memory().current_version;
        let url = self.resolve("v1/check")?;
        let req = CheckRequest {
            machine_id: self.facts.machine_id.clone(),
            channel: self.settings.channel.clone(),
            group: self.settings.group.clone(),
            version: running.clone(),
            arch: self.facts.arch.clone(),
            boot_id: self.facts.boot_id.clone(),
        };
        let server_err = |reason: String| Error::Server {
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .client()
            .post(&url)
            .json(&req)
            .timeout(self.settings.http_timeout)
            .send()
            .await
            .map_err(|e| Error::Unreachable {
                url: url.clone(),
                reason: crate::error::with_causes(&e),
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            let error: Option<slipway_api::wire::ErrorBody> = serde_json::from_slice(&body).ok();
            // Nothing has been published on this channel yet: nothing to do, not a failure.
            if status == reqwest::StatusCode::NOT_FOUND
                && error.as_ref().is_some_and(|e| e.kind == "unknown-channel")
            {
                return Ok(None);
            }
            return Err(server_err(match error {
                Some(e) => format!("HTTP {status}: {} ({})", e.message, e.kind),
                None => format!("HTTP {status}"),
            }));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| server_err(format!("reading the answer: {e}")))?;
        let answer: CheckResponse = serde_json::from_slice(&body)
            .map_err(|e| server_err(format!("malformed answer: {e}")))?;
        let Some(envelope) = answer.update else {
            return Ok(None);
        };
        // Signatures first; only then is the manifest parsed.
        let manifest = self.root.verify_release_envelope(&envelope)?;
        manifest.check_channel(&self.settings.channel)?;
        admit(&manifest, &running, self.clock.now())?;
        Ok(Some(Release { manifest, envelope }))
    }

    /// Delivers queued reports, oldest first, until the queue is empty or the server fails.
    /// Never blocks an update: callers run it in the background.
    pub async fn flush_reports(&self) -> usize {
        let _one = self.flushing.lock().await;
        let url = match self.resolve("v1/events") {
            Ok(u) => u,
            Err(_) => return 0,
        };
        let mut sent = 0;
        loop {
            let Some(report) = self.shared.lock().outbox.front().cloned() else {
                return sent;
            };
            let ok = self
                .http
                .client()
                .post(&url)
                .json(&report)
                .timeout(self.settings.http_timeout)
                .send()
                .await
                .map(|r| r.status().is_success() || r.status().is_client_error())
                .unwrap_or(false);
            if !ok {
                return sent;
            }
            let mut p = self.shared.lock();
            if p.outbox.front() == Some(&report) {
                p.outbox.pop_front();
                if let Err(e) = self.shared.store.save(&p) {
                    tracing::warn!(error = %e, "could not persist the report queue");
                }
            }
            sent += 1;
        }
    }

    /// Event kinds still queued (tests and `status`).
    pub fn queued_events(&self) -> Vec<EventKind> {
        self.shared.lock().outbox.iter().map(|r| r.event).collect()
    }
}

/// The crash point between writing a slot and flipping the boot selection (tests; a no-op
/// unless built with the `failpoints` feature). Configured as `return(STATE_DIR)` it stops only
/// the engine with that state directory, so that tests running other engines in the same
/// process at the same time are not hit; plain `return` stops every engine.
fn crash_point_before_set_trial(state_dir: &std::path::Path) -> Result<()> {
    let _ = state_dir;
    fail::fail_point!("before-set-trial", |only: Option<String>| match only {
        Some(dir) if std::path::Path::new(&dir) != state_dir => Ok(()),
        _ => Err(Error::Refused("failpoint before-set-trial".into())),
    });
    Ok(())
}
