//! What every request handler shares: the store, the clock, the root of trust, admin tokens,
//! payload files, metrics, and an in-memory snapshot of releases and channel state that update
//! checks are answered from (so a check costs no database read).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use semver::Version;
use slipway_api::{Manifest, TrustedRoot};
use slipway_runtime::Clock;

use crate::auth::AdminTokens;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::payloads::PayloadDir;
use crate::rollout::ReleaseInfo;
use crate::store::{ChannelRecord, ReleaseRecord, Retention, Store};

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest JSON body of a machine request (check, event) or an admin command.
    pub json_body: usize,
    /// Largest release envelope accepted on publish.
    pub envelope_body: usize,
    /// Largest payload accepted on upload.
    pub payload: u64,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_read: Duration,
    /// How long a whole JSON body (check, event, admin command) may take to arrive.
    pub body_deadline: Duration,
    /// How long an upload may go without a byte.
    pub body_idle: Duration,
    /// How long a response may wait for the client to read (a client that stopped reading).
    pub write_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            json_body: 64 << 10,
            envelope_body: slipway_api::dsse::MAX_ENVELOPE_BYTES,
            payload: 64 << 30,
            header_read: crate::HEADER_READ_TIMEOUT,
            body_deadline: Duration::from_secs(60),
            body_idle: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
        }
    }
}

/// One channel as checks see it.
#[derive(Debug, Default, PartialEq)]
pub struct ChannelView {
    /// The rollout state, if the channel was ever promoted, paused or resumed.
    pub state: Option<ChannelRecord>,
    /// Every release published on it, for the rollout decision.
    pub releases: Vec<ReleaseInfo>,
    /// The answer to a check offering each release: `{"update": <envelope>}`.
    pub offers: HashMap<Version, Bytes>,
    /// Each release's OS image and advisory, for the Cincinnati graph.
    pub details: HashMap<Version, ReleaseDetail>,
}

impl ChannelView {
    /// The rollout plan checks are decided by: `None` while the channel has no state.
    pub fn plan(&self) -> Option<crate::rollout::ChannelPlan<'_>> {
        self.state.as_ref().map(|s| s.plan(&self.releases))
    }
}

/// What the Cincinnati graph says about a release besides its version.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseDetail {
    /// Its OS image, if it has one.
    pub os: Option<slipway_api::manifest::OsImage>,
    /// The advisory set on it.
    pub advisory: Option<crate::store::AdvisoryMark>,
}

/// Releases and channel state, rebuilt from the store after every admin change and
/// periodically (other replicas may change the database).
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Channels by name: every channel with a release or a state.
    pub channels: HashMap<String, ChannelView>,
}

impl Snapshot {
    /// Builds the snapshot from stored rows.
    pub fn build(releases: Vec<ReleaseRecord>, channels: Vec<ChannelRecord>) -> Result<Self> {
        let mut map: HashMap<String, ChannelView> = HashMap::new();
        for r in releases {
            let m: Manifest = serde_json::from_str(&r.manifest).map_err(|e| {
                Error::Corrupt(format!(
                    "release {} {}: manifest: {e}",
                    r.channel, r.version
                ))
            })?;
            let view = map.entry(r.channel.clone()).or_default();
            view.releases.push(ReleaseInfo {
                version: r.version.clone(),
                expires: m.expires,
                min_from_version: m.min_from_version.clone(),
                advised: r.advisory.is_some(),
                floor: r.floor,
            });
            let body = format!("{{\"update\":{}}}", r.envelope);
            view.details.insert(
                r.version.clone(),
                ReleaseDetail {
                    os: m.os.clone(),
                    advisory: r.advisory.clone(),
                },
            );
            view.offers.insert(r.version, Bytes::from(body));
        }
        for c in channels {
            let name = c.name.clone();
            map.entry(name).or_default().state = Some(c);
        }
        Ok(Self { channels: map })
    }
}

/// Everything the server is configured with, before it starts.
pub struct StateConfig {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock (the system clock outside tests).
    pub clock: Arc<dyn Clock>,
    /// The root releases are verified against on publish; none refuses publishing.
    pub root: Option<TrustedRoot>,
    /// Admin tokens; none disables the admin API.
    pub tokens: AdminTokens,
    /// Payload files.
    pub payloads: PayloadDir,
    /// Request limits.
    pub limits: Limits,
    /// Event retention.
    pub retention: Retention,
    /// How often the snapshot is rebuilt from the store.
    pub refresh: Duration,
    /// How often health gates are evaluated.
    pub gate_interval: Duration,
}

/// How often a replica tells the others on its database that something changed here (one
/// notice per period at most, however many changes: a burst of checks costs one).
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);

/// How often machines per channel and version are counted for the adoption charts. Samples
/// fall on multiples of it, so replicas sampling the same moment write one sample.
pub const ADOPTION_EVERY: Duration = Duration::from_secs(300);

/// A name for this process among the replicas: host, process id and start time.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}/{}/{started:x}", host.trim(), std::process::id()).replace(':', "-")
}

/// The shared state (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub root: Option<TrustedRoot>,
    pub tokens: AdminTokens,
    pub payloads: PayloadDir,
    pub limits: Limits,
    pub retention: Retention,
    pub refresh: Duration,
    pub gate_interval: Duration,
    pub metrics: Metrics,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held from a reload's first read of the store until its snapshot is installed, so a
    /// reload that read older rows can never install its snapshot over a newer one.
    reloading: tokio::sync::Mutex<()>,
    /// Serializes admin changes with the snapshot rebuild that follows each.
    pub admin: tokio::sync::Mutex<()>,
    /// Bumped on every change the dashboard shows (an event, a check, an admin change, a
    /// cluster report); live views poll it. A counter, not a channel: a check costs one atomic
    /// add, whoever is watching.
    pub generation: std::sync::atomic::AtomicU64,
    /// Changes made through this replica (a subset of `generation`'s): what it announces to the
    /// other replicas on the same database.
    local_changes: std::sync::atomic::AtomicU64,
    /// Of those, changes to releases or channels (the others reload their snapshot for them).
    admin_changes: std::sync::atomic::AtomicU64,
    /// This process's name in the notices replicas send each other.
    replica: String,
    /// When a machine request's miss last reloaded the snapshot (Unix ms).
    miss_reload_ms: std::sync::atomic::AtomicU64,
    /// The dashboard's overview, counted at most so often (see `dashboard::overview_data`).
    pub overview: std::sync::Mutex<Option<crate::dashboard::CachedOverview>>,
    /// Held while the overview is counted (one count at a time).
    pub overview_counting: Arc<tokio::sync::Mutex<()>>,
    /// Where admin changes are announced as CloudEvents (set once at start-up; unset: nowhere).
    pub cloudevents: std::sync::OnceLock<slipway_events::Emitter>,
    /// Set when machine requests must carry a client certificate naming the machine.
    pub identity: std::sync::OnceLock<crate::tls::IdentityPolicy>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.0.store.backend())
            .field("tokens", &self.0.tokens)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state and loads the first snapshot.
    pub async fn new(config: StateConfig) -> Result<Self> {
        let state = Self(Arc::new(Inner {
            store: config.store,
            clock: config.clock,
            root: config.root,
            tokens: config.tokens,
            payloads: config.payloads,
            limits: config.limits,
            retention: config.retention,
            refresh: config.refresh,
            gate_interval: config.gate_interval,
            metrics: Metrics::default(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            reloading: tokio::sync::Mutex::new(()),
            admin: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            local_changes: std::sync::atomic::AtomicU64::new(0),
            admin_changes: std::sync::atomic::AtomicU64::new(0),
            replica: replica_name(),
            miss_reload_ms: std::sync::atomic::AtomicU64::new(0),
            overview: std::sync::Mutex::new(None),
            overview_counting: Arc::new(tokio::sync::Mutex::new(())),
            cloudevents: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        }));
        state.reload_with(false).await?;
        Ok(state)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Sends admin changes (releases published, advisories set) to `emitter` from now on.
    /// Only the first call takes effect; returns whether this one did.
    pub fn set_cloudevents(&self, emitter: slipway_events::Emitter) -> bool {
        self.0.cloudevents.set(emitter).is_ok()
    }

    /// From now on, machine requests must carry a client certificate whose SPIFFE ID names the
    /// machine (mutual TLS). Only the first call takes effect; returns whether this one did.
    pub fn require_identity(&self, policy: crate::tls::IdentityPolicy) -> bool {
        self.0.identity.set(policy).is_ok()
    }

    /// Refuses a machine request whose client certificate does not name `machine_id`, when
    /// identities are required.
    pub fn authorize_machine(
        &self,
        identity: Option<&crate::tls::ClientIdentity>,
        machine_id: &str,
    ) -> std::result::Result<(), crate::api_error::ApiError> {
        let Some(policy) = self.0.identity.get() else {
            return Ok(());
        };
        policy
            .authorize(identity, machine_id)
            .map_err(|(status, kind, message)| {
                crate::api_error::ApiError::new(
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::FORBIDDEN),
                    kind,
                    message,
                )
            })
    }

    /// Whether machine requests must carry a matching client certificate.
    pub fn identity_required(&self) -> bool {
        self.0.identity.get().is_some()
    }

    /// Emits `event` if CloudEvents are configured (never waits).
    pub fn emit(&self, event: slipway_events::Event) {
        if let Some(e) = self.0.cloudevents.get() {
            e.emit(event);
        }
    }

    /// Notes that something the dashboard shows changed through this replica (the other
    /// replicas on the same database hear of it within [`ANNOUNCE_EVERY`]).
    pub fn changed(&self) {
        self.0.local_changes.fetch_add(1, Relaxed);
        self.0.generation.fetch_add(1, Relaxed);
    }

    /// Counts machines per channel and version for the adoption charts, as the sample of the
    /// current [`ADOPTION_EVERY`] period; returns the rows written (0 if taken already).
    pub async fn sample_adoption(&self) -> Result<u64> {
        let step = i64::try_from(ADOPTION_EVERY.as_millis()).unwrap_or(i64::MAX);
        let now = self.0.clock.now().as_millisecond();
        let at = jiff::Timestamp::from_millisecond(now.div_euclid(step) * step)
            .map_err(|e| Error::Config(format!("adoption sample time: {e}")))?;
        let n = self.0.store.sample_adoption(at).await?;
        if n > 0 {
            self.changed();
        }
        Ok(n)
    }

    /// This replica's name in the notices replicas exchange.
    pub fn replica(&self) -> &str {
        &self.0.replica
    }

    /// The counts of changes made here, all and to releases or channels (for the announcer).
    pub fn local_changes(&self) -> (u64, u64) {
        (
            self.0.local_changes.load(Relaxed),
            self.0.admin_changes.load(Relaxed),
        )
    }

    /// The notice that tells the other replicas what changed here since `before` (a value of
    /// [`Self::local_changes`]), if anything did.
    pub fn notice_since(&self, before: (u64, u64)) -> Option<String> {
        let now = self.local_changes();
        if now == before {
            None
        } else if now.1 != before.1 {
            Some(format!("{}:admin", self.0.replica))
        } else {
            Some(format!("{}:data", self.0.replica))
        }
    }

    /// Takes a notice another replica sent through the database: live views refresh, and
    /// after a change to releases or channels (or a reconnection, after which notices may
    /// have been missed) the snapshot is reloaded at once rather than at the next refresh.
    pub fn take_notice(&self, notice: &str) {
        let (from, what) = notice.split_once(':').unwrap_or(("", notice));
        if from == self.0.replica {
            return;
        }
        self.0.generation.fetch_add(1, Relaxed);
        if what == "admin" || notice == crate::store::Notice::RECONNECTED {
            let state = self.clone();
            tokio::spawn(async move {
                if let Err(e) = state.reload_with(false).await {
                    tracing::warn!(error = %e, "reloading after another replica's change failed");
                }
            });
        }
    }

    /// How many changes there have been (see [`Self::changed`]).
    pub fn generation(&self) -> u64 {
        self.0.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The snapshot, reloaded from the store first if `present` does not hold for the one in
    /// memory: another replica may have published the release or channel a request names a
    /// moment ago, and its notice may not have arrived yet. For admin requests (behind the
    /// token); machine requests use [`Self::snapshot_reloaded_on_miss`].
    pub async fn snapshot_with(
        &self,
        present: impl Fn(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>> {
        let snap = self.snapshot();
        if present(&snap) {
            return Ok(snap);
        }
        self.reload_with(false).await?;
        Ok(self.snapshot())
    }

    /// [`Self::snapshot_with`] for machine requests: misses reload at most ten times a second
    /// (machines naming a channel that does not exist cannot make every request a reload).
    /// Misses are decided one at a time, after any reload in flight, so a miss that waited
    /// takes the snapshot that reload made. (Deciding before taking the lock let two
    /// simultaneous misses on two worker threads race: the one that lost the right to reload
    /// could take the free lock before the winner did, and answer 404 for a channel promoted a
    /// moment before; seen twice in the three-replica test.)
    pub async fn snapshot_reloaded_on_miss(
        &self,
        present: impl Fn(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>> {
        let snap = self.snapshot();
        if present(&snap) {
            return Ok(snap);
        }
        let _one_at_a_time = self.0.reloading.lock().await;
        let snap = self.snapshot();
        if present(&snap) {
            return Ok(snap);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if now.saturating_sub(self.0.miss_reload_ms.load(Relaxed)) < 100 {
            return Ok(snap);
        }
        self.0.miss_reload_ms.store(now, Relaxed);
        self.reload_locked(false).await?;
        Ok(self.snapshot())
    }

    /// Rebuilds the snapshot from the store.
    ///
    /// Reloads run one at a time: the periodic refresh and an admin change may overlap, and
    /// without this the refresh could read the store before the change, finish after it, and
    /// put back a snapshot without it (until the next refresh).
    pub async fn reload(&self) -> Result<()> {
        self.reload_with(true).await
    }

    /// [`Self::reload`]; `announce`: a change found is this replica's to tell the others
    /// (false when another replica's notice caused the reload, or for the periodic refresh).
    pub async fn reload_with(&self, announce: bool) -> Result<()> {
        let _one_at_a_time = self.0.reloading.lock().await;
        self.reload_locked(announce).await
    }

    /// [`Self::reload_with`], the caller holding `reloading`.
    async fn reload_locked(&self, announce: bool) -> Result<()> {
        let releases = self.0.store.releases().await?;
        let channels = self.0.store.channels().await?;
        let snap = Arc::new(Snapshot::build(releases, channels)?);
        let mut current = self.0.snapshot.write().unwrap_or_else(|p| p.into_inner());
        if *current != snap {
            *current = snap;
            drop(current);
            if announce {
                self.0.admin_changes.fetch_add(1, Relaxed);
                self.changed();
            } else {
                self.0.generation.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }
}
