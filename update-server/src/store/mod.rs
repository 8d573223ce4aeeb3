//! The server's state behind one trait, [`Store`]: releases, channel state, machines and
//! events. SQLite ([`sqlite`], the default) and PostgreSQL ([`postgres`]) implement it; both
//! run the same versioned schema migrations at open.

pub mod postgres;
pub mod query;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::wire::{ClusterReport, EventKind, Transfer};

use crate::clusters::{ClusterChange, ClusterWrite};
use crate::error::{Error, Result};
use crate::gate::{Gating, MachineOutcome, Outcome};
use crate::rollout::Wave;
pub use query::{MachinePage, MachineQuery, PageRequest, StateCondition};

/// A published release, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    /// The channel it was signed for.
    pub channel: String,
    /// Its version.
    pub version: Version,
    /// The signed envelope, compact JSON, exactly as offered to machines.
    pub envelope: String,
    /// The verified manifest, JSON.
    pub manifest: String,
    /// When it was published.
    pub published_at: Timestamp,
    /// The advisory set on it, if any.
    pub advisory: Option<AdvisoryMark>,
    /// Whether it is a floor.
    pub floor: bool,
}

/// An advisory set on a release: machines running it are offered the channel's target at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdvisoryMark {
    /// Identifier (`CVE-2026-1234`).
    pub id: String,
    /// One line for humans.
    #[serde(default)]
    pub summary: String,
    /// When it was set.
    pub marked_at: Timestamp,
}

/// What publishing a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Created,
    /// The same envelope was already stored (publishing is idempotent).
    Unchanged,
    /// Another envelope is stored under this channel and version.
    Conflict,
}

/// A channel's rollout state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRecord {
    /// The channel name.
    pub name: String,
    /// The promoted version.
    pub target: Option<Version>,
    /// The promotion's wave schedule.
    pub waves: Vec<Wave>,
    /// When the target was promoted.
    pub promoted_at: Option<Timestamp>,
    /// Paused channels offer nothing.
    pub paused: bool,
    /// A health-gated rollout's gate and progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gating: Option<Gating>,
    /// Last change.
    pub updated_at: Timestamp,
}

impl ChannelRecord {
    /// The rollout plan of this state over `releases` (a channel promoted long ago without a
    /// recorded time counts from its last change).
    pub fn plan<'a>(
        &'a self,
        releases: &'a [crate::rollout::ReleaseInfo],
    ) -> crate::rollout::ChannelPlan<'a> {
        crate::rollout::ChannelPlan {
            target: self.target.as_ref(),
            waves: &self.waves,
            promoted_at: self.promoted_at.unwrap_or(self.updated_at),
            gating: self.gating.as_ref(),
            paused: self.paused,
            releases,
        }
    }
}

/// What a machine said in a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCheck {
    /// Machine id.
    pub id: String,
    /// Channel it follows.
    pub channel: String,
    /// Its group.
    pub group: String,
    /// Version it runs.
    pub version: Version,
    /// Architecture.
    pub arch: String,
    /// Current boot id.
    pub boot_id: String,
    /// When it checked.
    pub at: Timestamp,
}

/// A machine as the server remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineRecord {
    /// Machine id.
    pub id: String,
    /// Channel it follows (empty if it never checked).
    pub channel: String,
    /// Its group.
    pub group: String,
    /// Version it last reported running.
    pub version: Version,
    /// Architecture.
    pub arch: String,
    /// Last boot id.
    pub boot_id: String,
    /// First contact.
    pub first_seen: Timestamp,
    /// Last contact (check or event).
    pub last_seen: Timestamp,
    /// Last event reported.
    pub last_event: Option<EventKind>,
    /// When.
    pub last_event_at: Option<Timestamp>,
    /// Detail of the last `failed` / `rolled-back` event, cleared by `healthy`.
    pub last_error: Option<String>,
}

/// An event a machine reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Sequence number (assigned by the store; 0 before).
    pub id: i64,
    /// Reporting machine.
    pub machine_id: String,
    /// Version the event is about.
    pub version: Version,
    /// What happened.
    pub event: EventKind,
    /// Detail.
    pub detail: String,
    /// How the OS image came to the machine's slot (on `staged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// When the server received it.
    pub at: Timestamp,
}

/// What the machines that staged one version reported about their downloads, over the events
/// kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferTotals {
    /// The version.
    pub version: Version,
    /// Stagings that reported how their image came.
    pub staged: u64,
    /// Of those, how many were deltas.
    pub deltas: u64,
    /// Bytes of image written, summed.
    pub image_bytes: u64,
    /// Bytes downloaded for them, summed.
    pub fetched_bytes: u64,
}

/// How many machines of a channel ran a version at one sampling time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionSample {
    /// When.
    pub at: Timestamp,
    /// The version.
    pub version: Version,
    /// Machines running it.
    pub machines: u64,
}

/// One event in a rollout, as a health gate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    /// Reporting machine.
    pub machine_id: String,
    /// What happened.
    pub event: EventKind,
    /// Detail.
    pub detail: String,
    /// When.
    pub at: Timestamp,
}

/// Each machine's outcome from its rollout events (in the order stored): the latest of
/// `healthy`, `failed` and `rolled-back` decides; a machine with only progress events is
/// updating. `checked` events say nothing about the target and are skipped.
pub fn outcomes(events: &[RolloutEvent]) -> Vec<MachineOutcome> {
    let mut by_machine: std::collections::BTreeMap<&str, MachineOutcome> =
        std::collections::BTreeMap::new();
    for e in events {
        if e.event == EventKind::Checked {
            continue;
        }
        let m = by_machine
            .entry(e.machine_id.as_str())
            .or_insert_with(|| MachineOutcome {
                machine_id: e.machine_id.clone(),
                first_at: e.at,
                outcome: Outcome::Updating,
            });
        m.first_at = m.first_at.min(e.at);
        match e.event {
            EventKind::Healthy => m.outcome = Outcome::Healthy,
            EventKind::Failed | EventKind::RolledBack => {
                m.outcome = Outcome::Failed {
                    rolled_back: e.event == EventKind::RolledBack,
                    detail: e.detail.clone(),
                }
            }
            _ => {}
        }
    }
    by_machine.into_values().collect()
}

/// Event retention: events older than `max_age`, all but the newest `max_count`, and each
/// machine's beyond its newest `per_machine` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Oldest event kept.
    pub max_age: std::time::Duration,
    /// Most events kept.
    pub max_count: u64,
    /// Most `checked` events kept per machine (engines report one at every check, so a
    /// machine checking every few minutes for a year would otherwise keep a hundred thousand).
    /// A machine's other events (its updates: what health gates and timelines read) go only
    /// by age and the overall count.
    pub per_machine: u64,
}

impl Retention {
    /// A machine's events are trimmed to `per_machine` after every this-many-th event stored
    /// (by id), so the cost of trimming is spread thin; a machine keeps at most about
    /// `per_machine` plus a few of these.
    pub const TRIM_EVERY: i64 = 64;
}

/// Everything the server keeps, behind one interface.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// Answers if the database is reachable.
    async fn ping(&self) -> Result<()>;
    /// Stores a release unless one exists under its channel and version.
    async fn put_release(&self, release: &ReleaseRecord) -> Result<PutOutcome>;
    /// Every release.
    async fn releases(&self) -> Result<Vec<ReleaseRecord>>;
    /// Sets or clears a release's advisory; false if there is no such release.
    async fn set_advisory(
        &self,
        channel: &str,
        version: &Version,
        advisory: Option<&AdvisoryMark>,
    ) -> Result<bool>;
    /// Marks or unmarks a release as a floor; false if there is no such release.
    async fn set_floor(&self, channel: &str, version: &Version, floor: bool) -> Result<bool>;
    /// Writes a channel's state.
    async fn put_channel(&self, channel: &ChannelRecord) -> Result<()>;
    /// Writes a channel's state only if its stored `updated_at` is still `expected` (another
    /// replica's gate or an admin may have changed it since it was read); returns whether it
    /// was written.
    async fn put_channel_if(&self, channel: &ChannelRecord, expected: Timestamp) -> Result<bool>;
    /// Every channel's state.
    async fn channels(&self) -> Result<Vec<ChannelRecord>>;
    /// The events about `version` since `since` of the machines following `channel`, in order,
    /// `checked` events left out (for a health gate, see [`outcomes`]).
    async fn rollout_events(
        &self,
        channel: &str,
        version: &Version,
        since: Timestamp,
    ) -> Result<Vec<RolloutEvent>>;
    /// Records checks (creating machines), durably, before returning.
    async fn record_checks(&self, checks: &[MachineCheck]) -> Result<()>;
    /// Records a check without making the caller wait for the commit: the write is queued
    /// and committed within milliseconds, and [`Store::close`] flushes the queue. What a check
    /// writes is "last seen" telemetry, so a check's answer need not wait for it; state that
    /// must survive (releases, channels, events) goes through the durable methods.
    async fn note_check(&self, check: MachineCheck) -> Result<()> {
        self.record_checks(&[check]).await
    }
    /// Records an event and updates the machine's last event, durably; returns its id.
    async fn record_event(&self, event: &EventRecord) -> Result<i64>;
    /// One machine.
    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>>;
    /// Machines, by id, optionally of one channel, at most `limit`, ids after `after`.
    async fn machines(
        &self,
        channel: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MachineRecord>>;
    /// The SQL dialect of [`Self::machine_window`].
    fn dialect(&self) -> query::Dialect;
    /// Runs one bounded read of a machine list ([`query::window_sql`]).
    async fn machine_window(&self, sql: query::Sql) -> Result<query::Window>;
    /// A page of the machines meeting `q`, by id, reading at most `req.scan` rows beyond
    /// what an index narrows (see [`query`]).
    async fn machine_page(&self, q: &MachineQuery, req: &PageRequest) -> Result<MachinePage> {
        query::page(q, req, self.dialect(), |sql| self.machine_window(sql)).await
    }
    /// Number of machines.
    async fn machine_count(&self) -> Result<u64>;
    /// The newest events (of one machine, optionally), newest first.
    async fn events(&self, machine_id: Option<&str>, limit: u32) -> Result<Vec<EventRecord>>;
    /// Deletes a machine's `checked` events beyond its newest `keep`; returns how many went.
    async fn trim_machine_events(&self, machine_id: &str, keep: u64) -> Result<u64>;
    /// Deletes events beyond retention; returns how many went.
    async fn prune_events(&self, retention: Retention, now: Timestamp) -> Result<u64>;
    /// Per version, what the `staged` events kept say about downloads.
    async fn transfer_totals(&self) -> Result<Vec<TransferTotals>>;
    /// Stores an operator's report as its cluster's newest, and a history row for each node
    /// and policy whose state changed since the stored one (see [`crate::clusters::changes`]).
    async fn put_cluster(&self, report: &ClusterReport) -> Result<ClusterWrite>;
    /// The newest report of every cluster, by name.
    async fn clusters(&self) -> Result<Vec<ClusterReport>>;
    /// A cluster's history: rows with ids after `after` seen at or after `since`, oldest
    /// first, at most `limit`.
    async fn cluster_history(
        &self,
        cluster: &str,
        since: Timestamp,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ClusterChange>>;
    /// Deletes cluster history older than `max_age`; returns how many rows went.
    async fn prune_cluster_history(
        &self,
        max_age: std::time::Duration,
        now: Timestamp,
    ) -> Result<u64>;
    /// Records how many machines of each channel run each version now, as the sample of `at`
    /// (a replica that samples the same `at` again changes nothing); returns the rows written.
    async fn sample_adoption(&self, at: Timestamp) -> Result<u64>;
    /// A channel's adoption samples since `since`, oldest first.
    async fn adoption(&self, channel: &str, since: Timestamp) -> Result<Vec<AdoptionSample>>;
    /// Deletes adoption samples older than `max_age`; returns how many went.
    async fn prune_adoption(&self, max_age: std::time::Duration, now: Timestamp) -> Result<u64>;
    /// Tells the other replicas on this database that something changed (`notice` says what,
    /// see [`Notice`]). Stores without replicas (SQLite) do nothing.
    async fn announce(&self, _notice: &str) -> Result<()> {
        Ok(())
    }
    /// Calls `on` with each notice announced through this database (its own included; a
    /// notice says who sent it), from a task that reconnects after errors and calls `on` with
    /// [`Notice::RECONNECTED`] when it has, as notices may have been missed. `None`: this store
    /// has no other replicas.
    fn listen(&self, _on: NoticeHandler) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
    /// Finishes pending writes and closes (graceful shutdown).
    async fn close(&self) {}
}

/// Receives the notices of [`Store::listen`].
pub type NoticeHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// Notices replicas send each other through the database (`REPLICA:WHAT`).
pub struct Notice;

impl Notice {
    /// The PostgreSQL channel they travel on.
    pub const CHANNEL: &str = "slipway_changes";
    /// Handed to the listener after it reconnected: reload everything.
    pub const RECONNECTED: &str = ":reconnected";
}

/// Opens the store a `--database` URL names: `sqlite://PATH` or `postgres://...`.
pub async fn open(url: &str, pool_size: usize) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresStore::open(url, pool_size).await?,
        ))
    } else {
        Err(Error::Config(
            "--database must be sqlite://PATH or postgres://USER@HOST/DB".into(),
        ))
    }
}

/// A schema migration: a version and its SQL for each backend.
pub(crate) struct Migration {
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// The schema, in order. Append; never edit a released step.
///
/// SQLite's `machines` is clustered by id (`WITHOUT ROWID`) and has no secondary index, so
/// recording a check rewrites one B-tree page, not three (the write rate of checks is bound by
/// pages written to the WAL); listing by channel scans in id order, which paging needs anyway.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: "
        CREATE TABLE releases (
            channel TEXT NOT NULL, version TEXT NOT NULL, envelope TEXT NOT NULL,
            manifest TEXT NOT NULL, published_at INTEGER NOT NULL, advisory TEXT,
            floor INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (channel, version));
        CREATE TABLE channels (
            name TEXT PRIMARY KEY, target TEXT, waves TEXT NOT NULL, promoted_at INTEGER,
            paused INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL);
        CREATE TABLE machines (
            id TEXT PRIMARY KEY, channel TEXT NOT NULL, grp TEXT NOT NULL, version TEXT NOT NULL,
            arch TEXT NOT NULL, boot_id TEXT NOT NULL, first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL, last_event TEXT, last_event_at INTEGER, last_error TEXT)
            WITHOUT ROWID;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, machine_id TEXT NOT NULL, version TEXT NOT NULL,
            kind TEXT NOT NULL, detail TEXT NOT NULL, at INTEGER NOT NULL);
        CREATE INDEX events_by_machine ON events (machine_id, id);
        CREATE INDEX events_by_time ON events (at);",
        postgres: "
        CREATE TABLE releases (
            channel TEXT NOT NULL, version TEXT NOT NULL, envelope TEXT NOT NULL,
            manifest TEXT NOT NULL, published_at BIGINT NOT NULL, advisory TEXT,
            floor BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (channel, version));
        CREATE TABLE channels (
            name TEXT PRIMARY KEY, target TEXT, waves TEXT NOT NULL, promoted_at BIGINT,
            paused BOOLEAN NOT NULL DEFAULT FALSE, updated_at BIGINT NOT NULL);
        CREATE TABLE machines (
            id TEXT PRIMARY KEY, channel TEXT NOT NULL, grp TEXT NOT NULL, version TEXT NOT NULL,
            arch TEXT NOT NULL, boot_id TEXT NOT NULL, first_seen BIGINT NOT NULL,
            last_seen BIGINT NOT NULL, last_event TEXT, last_event_at BIGINT, last_error TEXT);
        CREATE INDEX machines_by_channel ON machines (channel, id);
        CREATE TABLE events (
            id BIGSERIAL PRIMARY KEY, machine_id TEXT NOT NULL, version TEXT NOT NULL,
            kind TEXT NOT NULL, detail TEXT NOT NULL, at BIGINT NOT NULL);
        CREATE INDEX events_by_machine ON events (machine_id, id);
        CREATE INDEX events_by_time ON events (at);",
    },
    // How a staged image came: downloaded whole or built as a delta.
    Migration {
        version: 2,
        sqlite: "
        ALTER TABLE events ADD COLUMN image_bytes INTEGER;
        ALTER TABLE events ADD COLUMN fetched_bytes INTEGER;
        ALTER TABLE events ADD COLUMN local_bytes INTEGER;
        ALTER TABLE events ADD COLUMN delta INTEGER;
        ALTER TABLE events ADD COLUMN fallback TEXT;
        CREATE INDEX events_staged ON events (version) WHERE kind = 'staged';",
        postgres: "
        ALTER TABLE events ADD COLUMN image_bytes BIGINT, ADD COLUMN fetched_bytes BIGINT,
            ADD COLUMN local_bytes BIGINT, ADD COLUMN delta BOOLEAN, ADD COLUMN fallback TEXT;
        CREATE INDEX events_staged ON events (version) WHERE kind = 'staged';",
    },
    // Health-gated rollouts: the gate and its progress, JSON; the gate reads a version's events.
    Migration {
        version: 3,
        sqlite: "
        ALTER TABLE channels ADD COLUMN gating TEXT;
        CREATE INDEX events_by_version ON events (version, id);",
        postgres: "
        ALTER TABLE channels ADD COLUMN gating TEXT;
        CREATE INDEX events_by_version ON events (version, id);",
    },
    // Operators' cluster reports: the newest per cluster, and each node's and policy's changes.
    Migration {
        version: 4,
        sqlite: "
        CREATE TABLE clusters (name TEXT PRIMARY KEY, at INTEGER NOT NULL, report TEXT NOT NULL);
        CREATE TABLE cluster_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT, cluster TEXT NOT NULL, at INTEGER NOT NULL,
            kind TEXT NOT NULL, name TEXT NOT NULL, state TEXT);
        CREATE INDEX cluster_history_by_cluster ON cluster_history (cluster, id);
        CREATE INDEX cluster_history_by_time ON cluster_history (at);",
        postgres: "
        CREATE TABLE clusters (name TEXT PRIMARY KEY, at BIGINT NOT NULL, report TEXT NOT NULL);
        CREATE TABLE cluster_history (
            id BIGSERIAL PRIMARY KEY, cluster TEXT NOT NULL, at BIGINT NOT NULL,
            kind TEXT NOT NULL, name TEXT NOT NULL, state TEXT);
        CREATE INDEX cluster_history_by_cluster ON cluster_history (cluster, id);
        CREATE INDEX cluster_history_by_time ON cluster_history (at);",
    },
    // Adoption over time: machines per channel and version, sampled on a fixed schedule.
    Migration {
        version: 5,
        sqlite: "
        CREATE TABLE adoption (
            channel TEXT NOT NULL, at INTEGER NOT NULL, version TEXT NOT NULL,
            machines INTEGER NOT NULL, PRIMARY KEY (channel, at, version)) WITHOUT ROWID;
        CREATE INDEX adoption_by_time ON adoption (at);",
        postgres: "
        CREATE TABLE adoption (
            channel TEXT NOT NULL, at BIGINT NOT NULL, version TEXT NOT NULL,
            machines BIGINT NOT NULL, PRIMARY KEY (channel, at, version));
        CREATE INDEX adoption_by_time ON adoption (at);",
    },
    // Machine lists at fleet scale (see `query`): each version's sort key, partial indexes for
    // the failed and updating machines (no check writes them: a check sets neither column), and
    // on PostgreSQL ids compared byte by byte (as SQLite does, so that pages and prefixes
    // mean the same on both), room on each page for updates in place (a check changes no
    // indexed column, so it writes no index), and indexes on version and group.
    Migration {
        version: VERSION_KEYS,
        sqlite: "
        ALTER TABLE machines ADD COLUMN vkey TEXT NOT NULL DEFAULT '';
        CREATE INDEX machines_failed ON machines (id)
            WHERE last_error IS NOT NULL AND last_event IN ('failed', 'rolled-back');
        CREATE INDEX machines_updating ON machines (id)
            WHERE last_event IN ('downloading', 'staged', 'rebooting', 'booted');",
        postgres: "
        ALTER TABLE machines SET (fillfactor = 80);
        ALTER TABLE machines ALTER COLUMN id TYPE TEXT COLLATE \"C\",
            ADD COLUMN vkey TEXT COLLATE \"C\" NOT NULL DEFAULT '';
        CREATE INDEX machines_by_version ON machines (version, id);
        CREATE INDEX machines_by_group ON machines (grp, id);
        CREATE INDEX machines_failed ON machines (id)
            WHERE last_error IS NOT NULL AND last_event IN ('failed', 'rolled-back');
        CREATE INDEX machines_updating ON machines (id)
            WHERE last_event IN ('downloading', 'staged', 'rebooting', 'booted');",
    },
];

/// The migration that adds `machines.vkey`; after it, each backend fills the key of the
/// machines already stored (computed here, not in SQL).
pub(crate) const VERSION_KEYS: i64 = 6;

/// The newest schema version this server knows.
pub(crate) fn latest_schema() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

// Row conversions shared by both backends: times are Unix milliseconds, versions and kinds
// their text forms, waves and advisories JSON.

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn ts(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| Error::Corrupt(format!("timestamp {ms}: {e}")))
}

pub(crate) fn version(s: &str) -> Result<Version> {
    Version::parse(s).map_err(|e| Error::Corrupt(format!("version {s:?}: {e}")))
}

pub(crate) fn event_kind(s: &str) -> Result<EventKind> {
    EventKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| Error::Corrupt(format!("event kind {s:?}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The event columns after `at`, in order: image_bytes, fetched_bytes, local_bytes, delta,
/// fallback.
pub(crate) const TRANSFER_COLUMNS: &str =
    "image_bytes, fetched_bytes, local_bytes, delta, fallback";

/// The transfer columns of an event row.
pub(crate) fn transfer_of(
    image: Option<i64>,
    fetched: Option<i64>,
    local: Option<i64>,
    delta: Option<bool>,
    fallback: Option<String>,
) -> Option<Transfer> {
    Some(Transfer {
        image_bytes: u64::try_from(image?).unwrap_or(0),
        fetched_bytes: u64::try_from(fetched.unwrap_or(0)).unwrap_or(0),
        local_bytes: u64::try_from(local.unwrap_or(0)).unwrap_or(0),
        delta: delta.unwrap_or(false),
        fallback: fallback.unwrap_or_default(),
    })
}

/// The transfer of an event as column values (all NULL without one).
#[allow(clippy::type_complexity)]
pub(crate) fn transfer_columns(
    t: Option<&Transfer>,
) -> (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<String>,
) {
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match t {
        None => (None, None, None, None, None),
        Some(t) => (
            Some(big(t.image_bytes)),
            Some(big(t.fetched_bytes)),
            Some(big(t.local_bytes)),
            Some(t.delta),
            Some(t.fallback.clone()),
        ),
    }
}

/// How an event changes the machine's `last_error` and `version`.
pub(crate) fn event_effects(e: &EventRecord) -> (Option<&str>, bool, bool) {
    match e.event {
        // A failure's detail becomes the machine's last error.
        EventKind::Failed | EventKind::RolledBack => (Some(e.detail.as_str()), false, false),
        // Healthy on a version: the machine now runs it, and its last error is resolved.
        EventKind::Healthy => (None, true, true),
        _ => (None, false, false),
    }
}
