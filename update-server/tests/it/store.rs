//! The same store suite against SQLite and PostgreSQL: releases (idempotent, immutable),
//! advisories and floors, channel state, machines from checks and events, event retention,
//! and migrations that run once and survive reopening.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use slipway_api::wire::EventKind;
use slipway_server::gate::{Gate, Gating};
use slipway_server::rollout::Wave;
use slipway_server::store::{
    self, AdvisoryMark, ChannelRecord, EventRecord, MachineCheck, PutOutcome, ReleaseRecord,
    Retention,
};

use slipway_runtime::ManualClock;
use slipway_server::AppState;
use slipway_server::auth::AdminTokens;
use slipway_server::payloads::PayloadDir;
use slipway_server::state::{Limits, StateConfig};
use tokio::sync::Notify;

use crate::harness::{Backend, database_url, t0};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn release(channel: &str, version: &str, envelope: &str) -> ReleaseRecord {
    ReleaseRecord {
        channel: channel.into(),
        version: v(version),
        envelope: envelope.into(),
        manifest: "{}".into(),
        published_at: t0(),
        advisory: None,
        floor: false,
    }
}

fn event(machine: &str, kind: EventKind, detail: &str, at: Timestamp) -> EventRecord {
    EventRecord {
        id: 0,
        machine_id: machine.into(),
        version: v("2.0.0"),
        event: kind,
        detail: detail.into(),
        transfer: None,
        at,
    }
}

async fn suite(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 4).await.unwrap();
    assert_eq!(
        s.backend(),
        if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    s.ping().await.unwrap();

    // Releases.
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e1"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e1"))
            .await
            .unwrap(),
        PutOutcome::Unchanged
    );
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e2"))
            .await
            .unwrap(),
        PutOutcome::Conflict
    );
    assert_eq!(
        s.put_release(&release("beta", "1.0.0", "e3"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    let mark = AdvisoryMark {
        id: "CVE-1".into(),
        summary: "bad".into(),
        marked_at: t0(),
    };
    assert!(
        s.set_advisory("stable", &v("1.0.0"), Some(&mark))
            .await
            .unwrap()
    );
    assert!(
        !s.set_advisory("stable", &v("9.0.0"), Some(&mark))
            .await
            .unwrap()
    );
    assert!(s.set_floor("beta", &v("1.0.0"), true).await.unwrap());
    assert!(!s.set_floor("nope", &v("1.0.0"), true).await.unwrap());
    let all = s.releases().await.unwrap();
    assert_eq!(all.len(), 2);
    let stable = all.iter().find(|r| r.channel == "stable").unwrap();
    assert_eq!(stable.advisory.as_ref(), Some(&mark));
    assert_eq!(stable.envelope, "e1");
    assert!(all.iter().find(|r| r.channel == "beta").unwrap().floor);
    assert!(s.set_advisory("stable", &v("1.0.0"), None).await.unwrap());

    // Channels.
    let mut ch = ChannelRecord {
        name: "stable".into(),
        target: Some(v("1.0.0")),
        waves: vec![Wave {
            after: Duration::from_secs(3600),
            fraction: 0.25,
            soak: Some(Duration::from_secs(600)),
        }],
        promoted_at: Some(t0()),
        paused: false,
        gating: None,
        updated_at: t0(),
    };
    s.put_channel(&ch).await.unwrap();
    ch.paused = true;
    s.put_channel(&ch).await.unwrap();
    assert_eq!(s.channels().await.unwrap(), vec![ch.clone()]);
    // A gate's progress round-trips; a conditional write lands only on the state it read.
    let mut gating = Gating::new(
        Gate {
            max_failure_rate: 0.02,
            soak: Duration::from_secs(1800),
        },
        t0(),
    );
    gating.opened.push(t0());
    let read_at = ch.updated_at;
    ch.gating = Some(gating);
    ch.updated_at = t0() + SignedDuration::from_millis(1);
    assert!(s.put_channel_if(&ch, read_at).await.unwrap());
    let stale = ChannelRecord {
        paused: false,
        updated_at: t0() + SignedDuration::from_millis(2),
        ..ch.clone()
    };
    assert!(!s.put_channel_if(&stale, read_at).await.unwrap());
    assert_eq!(s.channels().await.unwrap(), vec![ch]);

    // Machines from checks: created, then updated in place.
    let check = |id: &str, version: &str, at| MachineCheck {
        id: id.into(),
        channel: "stable".into(),
        group: "workers".into(),
        version: v(version),
        arch: "x86_64".into(),
        boot_id: "b1".into(),
        at,
    };
    let later = t0() + SignedDuration::from_secs(60);
    s.record_checks(&[check("m1", "1.0.0", t0()), check("m2", "1.0.0", t0())])
        .await
        .unwrap();
    s.record_checks(&[check("m1", "1.1.0", later)])
        .await
        .unwrap();
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!(
        (m1.version.clone(), m1.first_seen, m1.last_seen),
        (v("1.1.0"), t0(), later)
    );
    assert_eq!(m1.group, "workers");
    assert_eq!(s.machine_count().await.unwrap(), 2);
    assert!(s.machine("nobody").await.unwrap().is_none());
    let page = s.machines(Some("stable"), Some("m1"), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m2"]
    );
    assert!(s.machines(Some("beta"), None, 10).await.unwrap().is_empty());

    // Events: a failure sets last_error, healthy clears it and moves the version.
    let id1 = s
        .record_event(&event("m1", EventKind::Failed, "disk full", later))
        .await
        .unwrap();
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!(m1.last_error.as_deref(), Some("disk full"));
    assert_eq!(m1.last_event, Some(EventKind::Failed));
    assert_eq!(m1.version, v("1.1.0"));
    let id2 = s
        .record_event(&event("m1", EventKind::Healthy, "", later))
        .await
        .unwrap();
    assert!(id2 > id1);
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!((m1.last_error, m1.version), (None, v("2.0.0")));
    // An event from a machine never seen creates it.
    s.record_event(&event("m9", EventKind::Downloading, "", later))
        .await
        .unwrap();
    assert_eq!(s.machine("m9").await.unwrap().unwrap().channel, "");
    let evs = s.events(Some("m1"), 10).await.unwrap();
    assert_eq!(
        evs.iter().map(|e| e.event).collect::<Vec<_>>(),
        [EventKind::Healthy, EventKind::Failed]
    );
    // A gate reads the events about one version of one channel's machines, in order.
    let rollout = s.rollout_events("stable", &v("2.0.0"), t0()).await.unwrap();
    assert_eq!(
        rollout
            .iter()
            .map(|e| (e.machine_id.as_str(), e.event, e.detail.as_str()))
            .collect::<Vec<_>>(),
        [
            ("m1", EventKind::Failed, "disk full"),
            ("m1", EventKind::Healthy, "")
        ]
    );
    let after = later + SignedDuration::from_millis(1);
    assert!(
        s.rollout_events("stable", &v("2.0.0"), after)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.rollout_events("stable", &v("1.1.0"), t0())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.rollout_events("beta", &v("2.0.0"), t0())
            .await
            .unwrap()
            .is_empty()
    );

    // Staged events carry how the image came; totals per version sum them.
    let staged = |m: &str, image: u64, fetched: u64, delta: bool| {
        let mut e = event(m, EventKind::Staged, "slot B", later);
        e.transfer = Some(slipway_api::wire::Transfer {
            image_bytes: image,
            fetched_bytes: fetched,
            local_bytes: image - fetched.min(image),
            delta,
            fallback: if delta {
                String::new()
            } else {
                "no index".into()
            },
        });
        e
    };
    s.record_event(&staged("m1", 1000, 30, true)).await.unwrap();
    s.record_event(&staged("m2", 1000, 1000, false))
        .await
        .unwrap();
    s.record_event(&event("m2", EventKind::Staged, "no transfer", later))
        .await
        .unwrap();
    let back = s.events(Some("m1"), 1).await.unwrap();
    assert_eq!(back[0].transfer, staged("m1", 1000, 30, true).transfer);
    assert_eq!(
        s.transfer_totals().await.unwrap(),
        vec![store::TransferTotals {
            version: v("2.0.0"),
            staged: 2,
            deltas: 1,
            image_bytes: 2000,
            fetched_bytes: 1030,
        }]
    );

    // Per machine: a machine's oldest `checked` events beyond the limit go; its update events
    // and other machines' stay.
    s.record_event(&event("m3", EventKind::Healthy, "the update", later))
        .await
        .unwrap();
    for i in 0..12 {
        s.record_event(&event("m3", EventKind::Checked, &i.to_string(), later))
            .await
            .unwrap();
    }
    assert_eq!(s.trim_machine_events("m3", 4).await.unwrap(), 8);
    let m3: Vec<String> = s
        .events(Some("m3"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(
        m3,
        ["11", "10", "9", "8", "the update"],
        "the newest are kept"
    );
    assert_eq!(s.trim_machine_events("m3", 4).await.unwrap(), 0);
    assert_eq!(s.trim_machine_events("nobody", 4).await.unwrap(), 0);
    assert!(!s.events(Some("m2"), 100).await.unwrap().is_empty());
    assert_eq!(
        s.prune_events(
            Retention {
                max_age: Duration::from_secs(86_400),
                max_count: 1_000_000,
                per_machine: 1
            },
            later
        )
        .await
        .unwrap(),
        0
    );
    s.trim_machine_events("m3", 0).await.unwrap();
    assert_eq!(s.events(Some("m3"), 100).await.unwrap().len(), 1);

    // Retention: by count, then by age.
    for i in 0..10 {
        s.record_event(&event("m2", EventKind::Checked, &i.to_string(), later))
            .await
            .unwrap();
    }
    let keep5 = Retention {
        max_age: Duration::from_secs(86_400),
        max_count: 5,
        per_machine: 1000,
    };
    assert_eq!(
        s.prune_events(keep5, later).await.unwrap(),
        12,
        "m3 kept its update event"
    );
    let left = s.events(None, 100).await.unwrap();
    assert_eq!(left.len(), 5);
    assert_eq!(left[0].detail, "9", "the newest are kept");
    let much_later = later + SignedDuration::from_secs(2 * 86_400);
    assert_eq!(s.prune_events(keep5, much_later).await.unwrap(), 5);
    assert!(s.events(None, 100).await.unwrap().is_empty());

    // Reopening runs no migration twice and keeps everything.
    s.close().await;
    drop(s);
    let s = store::open(&url, 4).await.unwrap();
    assert_eq!(s.releases().await.unwrap().len(), 2);
    assert_eq!(
        s.machine_count().await.unwrap(),
        4,
        "m3 came with its events"
    );
}

#[tokio::test]
async fn store_suite_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn store_suite_postgres() {
    suite(Backend::Postgres).await;
}

#[tokio::test]
async fn a_bad_database_url_is_refused() {
    let err = store::open("mysql://x", 1).await.err().unwrap();
    assert_eq!(err.kind(), "config");
}

/// A store that, once armed, holds the next `channels()` call after it has read the rows and
/// before it returns them, until released: a snapshot rebuild that has read but not installed. No real database can be made to pause
/// there on demand, so the pause is this wrapper's; the rows are a real SQLite store's.
struct PausingStore {
    inner: Arc<dyn store::Store>,
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl store::Store for PausingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> slipway_server::Result<()> {
        self.inner.ping().await
    }
    async fn put_release(&self, r: &ReleaseRecord) -> slipway_server::Result<PutOutcome> {
        self.inner.put_release(r).await
    }
    async fn releases(&self) -> slipway_server::Result<Vec<ReleaseRecord>> {
        self.inner.releases().await
    }
    async fn set_advisory(
        &self,
        channel: &str,
        version: &Version,
        advisory: Option<&AdvisoryMark>,
    ) -> slipway_server::Result<bool> {
        self.inner.set_advisory(channel, version, advisory).await
    }
    async fn set_floor(
        &self,
        channel: &str,
        version: &Version,
        floor: bool,
    ) -> slipway_server::Result<bool> {
        self.inner.set_floor(channel, version, floor).await
    }
    async fn put_channel(&self, c: &ChannelRecord) -> slipway_server::Result<()> {
        self.inner.put_channel(c).await
    }
    async fn put_channel_if(
        &self,
        c: &ChannelRecord,
        expected: Timestamp,
    ) -> slipway_server::Result<bool> {
        self.inner.put_channel_if(c, expected).await
    }
    async fn rollout_events(
        &self,
        channel: &str,
        version: &Version,
        since: Timestamp,
    ) -> slipway_server::Result<Vec<store::RolloutEvent>> {
        self.inner.rollout_events(channel, version, since).await
    }
    async fn channels(&self) -> slipway_server::Result<Vec<ChannelRecord>> {
        let rows = self.inner.channels().await;
        if self.armed.swap(false, Ordering::SeqCst) {
            let released = self.release.notified();
            self.entered.notify_one();
            released.await;
        }
        rows
    }
    async fn record_checks(&self, checks: &[MachineCheck]) -> slipway_server::Result<()> {
        self.inner.record_checks(checks).await
    }
    async fn record_event(&self, e: &EventRecord) -> slipway_server::Result<i64> {
        self.inner.record_event(e).await
    }
    async fn machine(&self, id: &str) -> slipway_server::Result<Option<store::MachineRecord>> {
        self.inner.machine(id).await
    }
    async fn machines(
        &self,
        channel: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> slipway_server::Result<Vec<store::MachineRecord>> {
        self.inner.machines(channel, after, limit).await
    }
    fn dialect(&self) -> store::query::Dialect {
        self.inner.dialect()
    }
    async fn machine_window(
        &self,
        sql: store::query::Sql,
    ) -> slipway_server::Result<store::query::Window> {
        self.inner.machine_window(sql).await
    }
    async fn machine_count(&self) -> slipway_server::Result<u64> {
        self.inner.machine_count().await
    }
    async fn trim_machine_events(&self, id: &str, keep: u64) -> slipway_server::Result<u64> {
        self.inner.trim_machine_events(id, keep).await
    }
    async fn sample_adoption(&self, at: Timestamp) -> slipway_server::Result<u64> {
        self.inner.sample_adoption(at).await
    }
    async fn adoption(
        &self,
        channel: &str,
        since: Timestamp,
    ) -> slipway_server::Result<Vec<store::AdoptionSample>> {
        self.inner.adoption(channel, since).await
    }
    async fn prune_adoption(
        &self,
        max_age: std::time::Duration,
        now: Timestamp,
    ) -> slipway_server::Result<u64> {
        self.inner.prune_adoption(max_age, now).await
    }
    async fn put_cluster(
        &self,
        r: &slipway_api::wire::ClusterReport,
    ) -> slipway_server::Result<slipway_server::clusters::ClusterWrite> {
        self.inner.put_cluster(r).await
    }
    async fn clusters(&self) -> slipway_server::Result<Vec<slipway_api::wire::ClusterReport>> {
        self.inner.clusters().await
    }
    async fn cluster_history(
        &self,
        cluster: &str,
        since: Timestamp,
        after: i64,
        limit: u32,
    ) -> slipway_server::Result<Vec<slipway_server::clusters::ClusterChange>> {
        self.inner
            .cluster_history(cluster, since, after, limit)
            .await
    }
    async fn prune_cluster_history(
        &self,
        max_age: std::time::Duration,
        now: Timestamp,
    ) -> slipway_server::Result<u64> {
        self.inner.prune_cluster_history(max_age, now).await
    }
    async fn events(
        &self,
        machine_id: Option<&str>,
        limit: u32,
    ) -> slipway_server::Result<Vec<EventRecord>> {
        self.inner.events(machine_id, limit).await
    }
    async fn prune_events(
        &self,
        retention: Retention,
        now: jiff::Timestamp,
    ) -> slipway_server::Result<u64> {
        self.inner.prune_events(retention, now).await
    }
    async fn transfer_totals(&self) -> slipway_server::Result<Vec<store::TransferTotals>> {
        self.inner.transfer_totals().await
    }
}

/// The periodic refresh and an admin change overlapping: the refresh read the store before
/// the change and finishes after it. The newer snapshot must stay (CI once saw a channel
/// published at start-up vanish until the next refresh an hour later).
#[tokio::test]
async fn a_refresh_that_read_older_rows_never_replaces_a_newer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(Backend::Sqlite, &dir).await;
    let pausing = Arc::new(PausingStore {
        inner: store::open(&url, 4).await.unwrap(),
        armed: AtomicBool::new(false),
        entered: Notify::new(),
        release: Notify::new(),
    });
    let state = AppState::new(StateConfig {
        store: pausing.clone(),
        clock: Arc::new(ManualClock::new(t0())),
        root: None,
        tokens: AdminTokens::parse(crate::harness::TOKEN).unwrap(),
        payloads: PayloadDir::open(dir.path()).unwrap(),
        limits: Limits::default(),
        retention: Retention {
            max_age: Duration::from_secs(86_400),
            max_count: 1000,
            per_machine: 1000,
        },
        refresh: Duration::from_secs(3600),
        gate_interval: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    assert!(state.snapshot().channels.is_empty());

    // The refresh starts and stops between reading releases and channels.
    pausing.armed.store(true, Ordering::SeqCst);
    let refresh = tokio::spawn({
        let state = state.clone();
        async move { state.reload().await }
    });
    pausing.entered.notified().await;

    // An admin change lands and reloads.
    pausing
        .inner
        .put_channel(&ChannelRecord {
            name: "stable".into(),
            target: None,
            waves: Vec::new(),
            promoted_at: None,
            paused: false,
            gating: None,
            updated_at: t0(),
        })
        .await
        .unwrap();
    let change = tokio::spawn({
        let state = state.clone();
        async move { state.reload().await }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    pausing.release.notify_one();
    refresh.await.unwrap().unwrap();
    change.await.unwrap().unwrap();
    assert!(
        state.snapshot().channels.contains_key("stable"),
        "the snapshot lost a channel the store holds"
    );
}

/// A PostgreSQL session cut mid-use (`pg_terminate_backend`, what a restart or failover does
/// to it) is "unavailable" (503, retry), not an internal error; a query PostgreSQL refuses
/// is not.
#[tokio::test]
async fn a_lost_postgres_session_is_unavailable_not_internal() {
    let url = crate::pg::cluster().new_database().await;
    let (victim, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let lost = victim.query_one("SELECT 1", &[]).await.unwrap_err();
    let e = slipway_server::Error::Postgres {
        what: "test".into(),
        source: lost,
    };
    assert!(e.is_unavailable(), "{e}");

    let refused = admin
        .query_one("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    let e = slipway_server::Error::Postgres {
        what: "test".into(),
        source: refused,
    };
    assert!(!e.is_unavailable(), "{e}");
}

/// The WAL's length after `events` events written without a pause (256 in flight), with the
/// writer starting the WAL over beyond `limit` bytes.
async fn wal_after_nonstop_writes(limit: u64, events: usize) -> u64 {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slipway.db");
    let s = Arc::new(
        store::sqlite::SqliteStore::open_with_wal_limit(&path, limit)
            .await
            .unwrap(),
    );
    let wal = dir.path().join("slipway.db-wal");
    let mut longest = 0;
    let mut writes = futures::stream::iter(0..events)
        .map(|i| {
            let s = s.clone();
            async move {
                store::Store::record_event(
                    &*s,
                    &event(
                        &format!("m-{:04}", i % 2000),
                        EventKind::Checked,
                        "up to date",
                        t0(),
                    ),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(256);
    let mut n = 0;
    while writes.next().await.is_some() {
        n += 1;
        if n % 1000 == 0 {
            longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
    }
    longest
}

#[tokio::test]
async fn the_sqlite_wal_is_started_over_under_writes_that_never_pause() {
    // Why a limit is needed: with none, the WAL only grows while writes go on (the passive
    // checkpoints never reach its end, so SQLite never starts it over).
    let unbounded = wal_after_nonstop_writes(u64::MAX, 80_000).await;
    let bounded = wal_after_nonstop_writes(1 << 20, 80_000).await;
    eprintln!("wal without a limit: {unbounded} bytes; with 1 MiB: {bounded} bytes");
    assert!(unbounded > 16 << 20, "{unbounded}");
    // The limit, plus the commit that crossed it and the odd few that followed while a
    // checkpoint in progress kept the restart from finishing (1.2 MiB here). The WAL's length
    // is taken after each commit, so this holds however fast the machine writes (a length
    // looked at every 250 ms reached 17 MiB on a faster one).
    assert!(bounded < 6 << 20, "{bounded} against {unbounded}");
}

/// The next transaction id PostgreSQL will hand out (each write transaction takes one; this
/// query takes one too).
async fn next_xid(url: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Checks a server only notes (queued and committed in batches, `Store::note_check`): a read
/// of machines sees every check noted before it, the later of two checks of a machine wins,
/// closing the store writes what is still queued, and on PostgreSQL thousands of checks cost
/// a few transactions, not one each.
async fn noted_checks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 4).await.unwrap();
    let check = |id: String, version: &str, at: Timestamp| MachineCheck {
        id,
        channel: "stable".into(),
        group: "workers".into(),
        version: v(version),
        arch: "x86_64".into(),
        boot_id: "b".into(),
        at,
    };
    const N: usize = 5000;
    let first_xid = match backend {
        Backend::Postgres => Some(next_xid(&url).await),
        Backend::Sqlite => None,
    };
    for i in 0..N {
        s.note_check(check(format!("m-{i:05}"), "1.0.0", t0()))
            .await
            .unwrap();
    }
    let later = t0() + SignedDuration::from_hours(1);
    s.note_check(check("m-00007".into(), "2.0.0", later))
        .await
        .unwrap();
    // Read at once: the reads wait for what was queued before them.
    assert_eq!(s.machine_count().await.unwrap(), N as u64);
    let m = s.machine("m-00007").await.unwrap().unwrap();
    assert_eq!(
        (m.version, m.last_seen, m.first_seen),
        (v("2.0.0"), later, t0())
    );
    if let Some(first) = first_xid {
        let used = next_xid(&url).await - first - 1;
        eprintln!("{N} checks noted on PostgreSQL: {used} transactions");
        assert!(
            used <= (N / 100) as i64,
            "{used} transactions for {N} checks"
        );
    }
    for i in N..N + 1000 {
        s.note_check(check(format!("m-{i:05}"), "1.0.0", t0()))
            .await
            .unwrap();
    }
    s.close().await;
    drop(s);
    let reopened = store::open(&url, 1).await.unwrap();
    assert_eq!(reopened.machine_count().await.unwrap(), (N + 1000) as u64);
    reopened.close().await;
}

#[tokio::test]
async fn noted_checks_are_read_back_and_written_on_close_sqlite() {
    noted_checks(Backend::Sqlite).await;
}

#[tokio::test]
async fn noted_checks_are_read_back_and_written_on_close_postgres() {
    noted_checks(Backend::Postgres).await;
}
