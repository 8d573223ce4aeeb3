//! The PostgreSQL store, for several server replicas sharing one database: a connection pool
//! (deadpool), prepared statements cached per connection, migrations under an advisory lock so
//! replicas starting together migrate once.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use jiff::Timestamp;
use semver::Version;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use super::query::{Dialect, MACHINE_COLUMNS, Sql, Value, Window, version_key};
use super::sqlite::{UPSERT_CHECK, UPSERT_EVENT_MACHINE};
use super::{
    AdoptionSample, AdvisoryMark, ChannelRecord, EventRecord, MIGRATIONS, MachineCheck,
    MachineRecord, Notice, NoticeHandler, PutOutcome, ReleaseRecord, Retention, RolloutEvent,
    Store, TRANSFER_COLUMNS, TransferTotals, VERSION_KEYS, event_effects, event_kind, from_json,
    latest_schema, ms, to_json, transfer_columns, transfer_of, ts, version,
};
use crate::clusters::{ClusterChange, ClusterWrite};
use crate::error::{Error, Result};
use slipway_api::wire::ClusterReport;

/// An arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x0511_73a7_5e7e;

/// PostgreSQL behind [`Store`].
pub struct PostgresStore {
    pool: Pool,
    /// For the listening connection (outside the pool: it stays open).
    config: tokio_postgres::Config,
    /// Checks on their way to the database (see [`Store::note_check`]); `None` once closed.
    checks: std::sync::Mutex<Option<mpsc::Sender<Queued>>>,
    /// The task writing them.
    check_writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the check writer is sent.
enum Queued {
    Check(MachineCheck),
    /// Answered once every check queued before it is written (or given up).
    Flush(oneshot::Sender<()>),
}

/// Checks queued before `note_check` waits (backpressure when the database cannot keep up).
const CHECK_QUEUE: usize = 16_384;
/// Most checks written in one transaction.
const CHECK_BATCH: usize = 512;

/// An arbitrary constant naming the per-cluster report locks (with the name's hash).
const CLUSTER_LOCK: i32 = 0x51_1b_c1;

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn pg_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        what: what.into(),
        source,
    }
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or libpq key-value string) and migrates.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("--database: invalid postgres URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        let (tx, rx) = mpsc::channel(CHECK_QUEUE);
        let store = Self {
            pool: pool.clone(),
            config,
            checks: std::sync::Mutex::new(Some(tx)),
            check_writer: std::sync::Mutex::new(None),
        };
        store.migrate().await?;
        *store.check_writer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(check_writer(pool, rx)));
        Ok(store)
    }

    fn check_queue(&self) -> Result<mpsc::Sender<Queued>> {
        let guard = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().cloned().ok_or(Error::Closed)
    }

    /// Waits until every check this replica queued before now is written, so its reads of
    /// machines see them (as on SQLite; another replica's queue is its own).
    async fn flush(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.check_queue()?
            .send(Queued::Flush(reply))
            .await
            .map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)
    }

    async fn conn(&self) -> Result<Object> {
        pooled(&self.pool).await
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err("migration lock"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(pg_err("migrate"))?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg_err("migrate"))?
            .get(0);
        if current > latest_schema() {
            return Err(Error::Migration(format!(
                "database schema version {current} is newer than this server's {}",
                latest_schema()
            )));
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.postgres)
                .await
                .map_err(|e| Error::Migration(format!("step {}: {e}", m.version)))?;
            if m.version == VERSION_KEYS {
                // Each stored version's key (one update per version).
                let versions = tx
                    .query("SELECT DISTINCT version FROM machines", &[])
                    .await
                    .map_err(pg_err("migrate: version keys"))?;
                for r in versions {
                    let text: String = r.get(0);
                    // An unparsable version keeps the empty key (reported as corrupt when read).
                    if let Ok(v) = Version::parse(&text) {
                        tx.execute(
                            "UPDATE machines SET vkey = $1 WHERE version = $2",
                            &[&version_key(&v), &text],
                        )
                        .await
                        .map_err(pg_err("migrate: version keys"))?;
                    }
                }
            }
            // The database's clock: the record is informational only.
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at)
                 VALUES ($1, (extract(epoch from now()) * 1000)::bigint)",
                &[&m.version],
            )
            .await
            .map_err(pg_err("migrate"))?;
            tracing::info!(version = m.version, "applied schema migration");
        }
        tx.commit().await.map_err(pg_err("migrate"))
    }
}

const RELEASE_COLUMNS: &str = "channel, version, envelope, manifest, published_at, advisory, floor";

fn release_row(r: &Row) -> Result<ReleaseRecord> {
    let advisory: Option<String> = r.get(5);
    Ok(ReleaseRecord {
        channel: r.get(0),
        version: version(r.get(1))?,
        envelope: r.get(2),
        manifest: r.get(3),
        published_at: ts(r.get(4))?,
        advisory: advisory
            .as_deref()
            .map(|a| from_json("advisory", a))
            .transpose()?,
        floor: r.get(6),
    })
}

fn machine_row(r: &Row) -> Result<MachineRecord> {
    let last_event: Option<String> = r.get(8);
    let last_event_at: Option<i64> = r.get(9);
    Ok(MachineRecord {
        id: r.get(0),
        channel: r.get(1),
        group: r.get(2),
        version: version(r.get(3))?,
        arch: r.get(4),
        boot_id: r.get(5),
        first_seen: ts(r.get(6))?,
        last_seen: ts(r.get(7))?,
        last_event: last_event.as_deref().map(event_kind).transpose()?,
        last_event_at: last_event_at.map(ts).transpose()?,
        last_error: r.get(10),
    })
}

fn event_row(r: &Row) -> Result<EventRecord> {
    Ok(EventRecord {
        id: r.get(0),
        machine_id: r.get(1),
        version: version(r.get(2))?,
        event: event_kind(r.get(3))?,
        detail: r.get(4),
        transfer: transfer_of(r.get(6), r.get(7), r.get(8), r.get(9), r.get(10)),
        at: ts(r.get(5))?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        let c = self.conn().await?;
        c.simple_query("SELECT 1").await.map_err(pg_err("ping"))?;
        Ok(())
    }

    async fn put_release(&self, r: &ReleaseRecord) -> Result<PutOutcome> {
        let c = self.conn().await?;
        let inserted = c
            .execute(
                &format!(
                    "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (channel, version) DO NOTHING"
                ),
                &[
                    &r.channel,
                    &r.version.to_string(),
                    &r.envelope,
                    &r.manifest,
                    &ms(r.published_at),
                    &r.advisory.as_ref().map(to_json),
                    &r.floor,
                ],
            )
            .await
            .map_err(pg_err("put release"))?;
        if inserted == 1 {
            return Ok(PutOutcome::Created);
        }
        let row = c
            .query_one(
                "SELECT envelope FROM releases WHERE channel = $1 AND version = $2",
                &[&r.channel, &r.version.to_string()],
            )
            .await
            .map_err(pg_err("put release"))?;
        let existing: String = row.get(0);
        Ok(if existing == r.envelope {
            PutOutcome::Unchanged
        } else {
            PutOutcome::Conflict
        })
    }

    async fn releases(&self) -> Result<Vec<ReleaseRecord>> {
        let c = self.conn().await?;
        c.query(
            &format!("SELECT {RELEASE_COLUMNS} FROM releases ORDER BY channel, published_at"),
            &[],
        )
        .await
        .map_err(pg_err("releases"))?
        .iter()
        .map(release_row)
        .collect()
    }

    async fn set_advisory(
        &self,
        channel: &str,
        version: &Version,
        advisory: Option<&AdvisoryMark>,
    ) -> Result<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE releases SET advisory = $3 WHERE channel = $1 AND version = $2",
                &[&channel, &version.to_string(), &advisory.map(to_json)],
            )
            .await
            .map_err(pg_err("set advisory"))?;
        Ok(n > 0)
    }

    async fn set_floor(&self, channel: &str, version: &Version, floor: bool) -> Result<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE releases SET floor = $3 WHERE channel = $1 AND version = $2",
                &[&channel, &version.to_string(), &floor],
            )
            .await
            .map_err(pg_err("set floor"))?;
        Ok(n > 0)
    }

    async fn put_channel(&self, ch: &ChannelRecord) -> Result<()> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO channels (name, target, waves, promoted_at, paused, updated_at, gating)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET target = excluded.target,
               waves = excluded.waves, promoted_at = excluded.promoted_at,
               paused = excluded.paused, updated_at = excluded.updated_at,
               gating = excluded.gating",
            &[
                &ch.name,
                &ch.target.as_ref().map(|v| v.to_string()),
                &to_json(&ch.waves),
                &ch.promoted_at.map(ms),
                &ch.paused,
                &ms(ch.updated_at),
                &ch.gating.as_ref().map(to_json),
            ],
        )
        .await
        .map_err(pg_err("put channel"))?;
        Ok(())
    }

    async fn put_channel_if(&self, ch: &ChannelRecord, expected: Timestamp) -> Result<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE channels SET target = $2, waves = $3, promoted_at = $4, paused = $5,
                   updated_at = $6, gating = $7
                 WHERE name = $1 AND updated_at = $8",
                &[
                    &ch.name,
                    &ch.target.as_ref().map(|v| v.to_string()),
                    &to_json(&ch.waves),
                    &ch.promoted_at.map(ms),
                    &ch.paused,
                    &ms(ch.updated_at),
                    &ch.gating.as_ref().map(to_json),
                    &ms(expected),
                ],
            )
            .await
            .map_err(pg_err("put channel"))?;
        Ok(n > 0)
    }

    async fn rollout_events(
        &self,
        channel: &str,
        version: &Version,
        since: Timestamp,
    ) -> Result<Vec<RolloutEvent>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT e.machine_id, e.kind, e.detail, e.at FROM events e
                 JOIN machines m ON m.id = e.machine_id COLLATE \"C\"
                 WHERE e.version = $1 AND e.at >= $2 AND m.channel = $3 AND e.kind <> 'checked'
                 ORDER BY e.id",
                &[&version.to_string(), &ms(since), &channel],
            )
            .await
            .map_err(pg_err("rollout events"))?;
        rows.iter()
            .map(|r| {
                Ok(RolloutEvent {
                    machine_id: r.get(0),
                    event: event_kind(r.get(1))?,
                    detail: r.get(2),
                    at: ts(r.get(3))?,
                })
            })
            .collect()
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT name, target, waves, promoted_at, paused, updated_at, gating FROM channels
                 ORDER BY name",
                &[],
            )
            .await
            .map_err(pg_err("channels"))?;
        rows.iter()
            .map(|r| {
                let target: Option<String> = r.get(1);
                let promoted_at: Option<i64> = r.get(3);
                let gating: Option<&str> = r.get(6);
                Ok(ChannelRecord {
                    gating: gating.map(|g| from_json("gating", g)).transpose()?,
                    name: r.get(0),
                    target: target.as_deref().map(version).transpose()?,
                    waves: from_json("waves", r.get(2))?,
                    promoted_at: promoted_at.map(ts).transpose()?,
                    paused: r.get(4),
                    updated_at: ts(r.get(5))?,
                })
            })
            .collect()
    }

    async fn record_checks(&self, checks: &[MachineCheck]) -> Result<()> {
        write_checks(&self.pool, checks).await
    }

    async fn note_check(&self, check: MachineCheck) -> Result<()> {
        // Immediate unless the queue is full: then checks wait, which is the backpressure that
        // keeps memory bounded when the database cannot keep up.
        self.check_queue()?
            .send(Queued::Check(check))
            .await
            .map_err(|_| Error::Closed)
    }

    async fn record_event(&self, e: &EventRecord) -> Result<i64> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err("record event"))?;
        let (image, fetched, local, delta, fallback) = transfer_columns(e.transfer.as_ref());
        let id: i64 = tx
            .query_one(
                "INSERT INTO events (machine_id, version, kind, detail, at, image_bytes,
                 fetched_bytes, local_bytes, delta, fallback)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                &[
                    &e.machine_id,
                    &e.version.to_string(),
                    &e.event.as_str(),
                    &e.detail,
                    &ms(e.at),
                    &image,
                    &fetched,
                    &local,
                    &delta,
                    &fallback,
                ],
            )
            .await
            .map_err(pg_err("record event"))?
            .get(0);
        let (error, clear, set_version) = event_effects(e);
        let stmt = tx
            .prepare_cached(UPSERT_EVENT_MACHINE)
            .await
            .map_err(pg_err("record event"))?;
        tx.execute(
            &stmt,
            &[
                &e.machine_id,
                &e.version.to_string(),
                &ms(e.at),
                &e.event.as_str(),
                &error,
                &version_key(&e.version),
                &clear,
                &set_version,
            ],
        )
        .await
        .map_err(pg_err("record event"))?;
        tx.commit().await.map_err(pg_err("record event"))?;
        Ok(id)
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        self.flush().await?;
        let c = self.conn().await?;
        c.query_opt(
            &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(pg_err("machine"))?
        .as_ref()
        .map(machine_row)
        .transpose()
    }

    async fn machines(
        &self,
        channel: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MachineRecord>> {
        self.flush().await?;
        let c = self.conn().await?;
        c.query(
            &format!(
                "SELECT {MACHINE_COLUMNS} FROM machines
                 WHERE ($1::text IS NULL OR channel = $1) AND id > $2 ORDER BY id LIMIT $3"
            ),
            &[&channel, &after.unwrap_or(""), &i64::from(limit)],
        )
        .await
        .map_err(pg_err("machines"))?
        .iter()
        .map(machine_row)
        .collect()
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn machine_window(&self, sql: Sql) -> Result<Window> {
        self.flush().await?;
        let c = self.conn().await?;
        let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = sql
            .params
            .into_iter()
            .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match p {
                    Value::Text(t) => Box::new(t),
                    Value::Int(n) => Box::new(n),
                }
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let stmt = c
            .prepare_cached(&sql.text)
            .await
            .map_err(pg_err("machine list"))?;
        let rows = c
            .query(&stmt, &refs)
            .await
            .map_err(pg_err("machine list"))?;
        let mut w = Window::default();
        for r in &rows {
            w.last = r.get(12);
            w.read = u64::try_from(r.get::<_, i64>(13)).unwrap_or(0);
            if r.get::<_, Option<String>>(0).is_some() {
                w.matches.push(machine_row(r)?);
            }
        }
        Ok(w)
    }

    async fn machine_count(&self) -> Result<u64> {
        self.flush().await?;
        let c = self.conn().await?;
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM machines", &[])
            .await
            .map_err(pg_err("machine count"))?
            .get(0);
        Ok(n as u64)
    }

    async fn events(&self, machine_id: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let c = self.conn().await?;
        c.query(
            &format!(
                "SELECT id, machine_id, version, kind, detail, at, {TRANSFER_COLUMNS}
                 FROM events WHERE ($1::text IS NULL OR machine_id = $1) ORDER BY id DESC LIMIT $2"
            ),
            &[&machine_id, &i64::from(limit)],
        )
        .await
        .map_err(pg_err("events"))?
        .iter()
        .map(event_row)
        .collect()
    }

    async fn transfer_totals(&self) -> Result<Vec<TransferTotals>> {
        self.flush().await?;
        let c = self.conn().await?;
        c.query(
            "SELECT version, COUNT(*), SUM(CASE WHEN delta THEN 1 ELSE 0 END)::BIGINT,
                 SUM(image_bytes)::BIGINT, SUM(fetched_bytes)::BIGINT
             FROM events WHERE kind = 'staged' AND image_bytes IS NOT NULL GROUP BY version",
            &[],
        )
        .await
        .map_err(pg_err("transfer totals"))?
        .iter()
        .map(|r| {
            let n = |i| r.get::<_, Option<i64>>(i).unwrap_or(0).max(0) as u64;
            Ok(TransferTotals {
                version: version(r.get(0))?,
                staged: n(1),
                deltas: n(2),
                image_bytes: n(3),
                fetched_bytes: n(4),
            })
        })
        .collect()
    }

    async fn trim_machine_events(&self, machine_id: &str, keep: u64) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let c = self.conn().await?;
        c.execute(
            "DELETE FROM events WHERE machine_id = $1 AND kind = 'checked' AND id <= (
             SELECT id FROM events WHERE machine_id = $1 AND kind = 'checked'
             ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&machine_id, &keep],
        )
        .await
        .map_err(pg_err("trim machine events"))
    }

    async fn prune_events(&self, retention: Retention, now: Timestamp) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let keep = i64::try_from(retention.max_count).unwrap_or(i64::MAX);
        let c = self.conn().await?;
        let old = c
            .execute("DELETE FROM events WHERE at < $1", &[&cutoff])
            .await
            .map_err(pg_err("prune events"))?;
        let over = c
            .execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)",
                &[&keep],
            )
            .await
            .map_err(pg_err("prune events"))?;
        Ok(old + over)
    }

    async fn put_cluster(&self, report: &ClusterReport) -> Result<ClusterWrite> {
        let err = pg_err("put cluster");
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(err)?;
        // One writer per cluster at a time, whichever replica each report reached: the rows
        // of two reports cannot interleave, and each is diffed against the one before it.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&CLUSTER_LOCK, &report.cluster],
        )
        .await
        .map_err(pg_err("put cluster"))?;
        let stored: Option<String> = tx
            .query_opt(
                "SELECT report FROM clusters WHERE name = $1",
                &[&report.cluster],
            )
            .await
            .map_err(pg_err("put cluster"))?
            .map(|r| r.get(0));
        // A stored report that no longer parses is replaced (and its history restarts).
        let old: Option<ClusterReport> = stored.and_then(|s| serde_json::from_str(&s).ok());
        let changes = crate::clusters::changes(old.as_ref(), report);
        if !changes.is_empty() {
            let insert = tx
                .prepare(
                    "INSERT INTO cluster_history (cluster, at, kind, name, state)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await
                .map_err(pg_err("put cluster"))?;
            for ch in &changes {
                tx.execute(
                    &insert,
                    &[
                        &ch.cluster,
                        &ms(ch.at),
                        &ch.kind.as_str(),
                        &ch.name,
                        &ch.state_json(),
                    ],
                )
                .await
                .map_err(pg_err("put cluster"))?;
            }
        }
        tx.execute(
            "INSERT INTO clusters (name, at, report) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET at = excluded.at, report = excluded.report",
            &[&report.cluster, &ms(report.at), &to_json(report)],
        )
        .await
        .map_err(pg_err("put cluster"))?;
        tx.commit().await.map_err(pg_err("put cluster"))?;
        Ok(ClusterWrite {
            changed: old.as_ref() != Some(report),
            history: changes.len(),
        })
    }

    async fn clusters(&self) -> Result<Vec<ClusterReport>> {
        let c = self.conn().await?;
        let rows = c
            .query("SELECT report FROM clusters ORDER BY name", &[])
            .await
            .map_err(pg_err("clusters"))?;
        rows.iter()
            .map(|r| from_json("cluster report", r.get(0)))
            .collect()
    }

    async fn cluster_history(
        &self,
        cluster: &str,
        since: Timestamp,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ClusterChange>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, cluster, at, kind, name, state FROM cluster_history
                 WHERE cluster = $1 AND id > $2 AND at >= $3 ORDER BY id LIMIT $4",
                &[&cluster, &after, &ms(since), &i64::from(limit)],
            )
            .await
            .map_err(pg_err("cluster history"))?;
        rows.iter()
            .map(|r| {
                ClusterChange::from_row(
                    r.get(0),
                    r.get(1),
                    ts(r.get(2))?,
                    r.get(3),
                    r.get(4),
                    r.get(5),
                )
            })
            .collect()
    }

    async fn prune_cluster_history(
        &self,
        max_age: std::time::Duration,
        now: Timestamp,
    ) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let c = self.conn().await?;
        c.execute("DELETE FROM cluster_history WHERE at < $1", &[&cutoff])
            .await
            .map_err(pg_err("prune cluster history"))
    }

    async fn sample_adoption(&self, at: Timestamp) -> Result<u64> {
        self.flush().await?;
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO adoption (channel, at, version, machines)
             SELECT channel, $1, version, COUNT(*) FROM machines WHERE channel <> ''
             GROUP BY channel, version
             ON CONFLICT DO NOTHING",
            &[&ms(at)],
        )
        .await
        .map_err(pg_err("sample adoption"))
    }

    async fn adoption(&self, channel: &str, since: Timestamp) -> Result<Vec<AdoptionSample>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT at, version, machines FROM adoption WHERE channel = $1 AND at >= $2
                 ORDER BY at, version",
                &[&channel, &ms(since)],
            )
            .await
            .map_err(pg_err("adoption"))?;
        rows.iter()
            .map(|r| {
                Ok(AdoptionSample {
                    at: ts(r.get(0))?,
                    version: version(r.get(1))?,
                    machines: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn prune_adoption(&self, max_age: std::time::Duration, now: Timestamp) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let c = self.conn().await?;
        c.execute("DELETE FROM adoption WHERE at < $1", &[&cutoff])
            .await
            .map_err(pg_err("prune adoption"))
    }

    async fn announce(&self, notice: &str) -> Result<()> {
        let c = self.conn().await?;
        c.execute("SELECT pg_notify($1, $2)", &[&Notice::CHANNEL, &notice])
            .await
            .map_err(pg_err("announce"))?;
        Ok(())
    }

    fn listen(&self, on: NoticeHandler) -> Option<tokio::task::JoinHandle<()>> {
        let config = self.config.clone();
        Some(tokio::spawn(listen_loop(config, on)))
    }

    async fn close(&self) {
        // The writer drains what was queued, then ends with the queue.
        drop(self.checks.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self
            .check_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.pool.close();
    }
}

/// A connection from the pool.
async fn pooled(pool: &Pool) -> Result<Object> {
    pool.get().await.map_err(|e| Error::Pool(e.to_string()))
}

/// Writes checks in one transaction, sent together (the connection pipelines them): one round
/// trip for the batch, not one per check.
async fn write_checks(pool: &Pool, checks: &[MachineCheck]) -> Result<()> {
    let mut c = pooled(pool).await?;
    let tx = c.transaction().await.map_err(pg_err("record check"))?;
    let stmt = tx
        .prepare_cached(UPSERT_CHECK)
        .await
        .map_err(pg_err("record check"))?;
    let rows: Vec<_> = checks
        .iter()
        .map(|m| (m.version.to_string(), ms(m.at), version_key(&m.version)))
        .collect();
    let (txr, stmt) = (&tx, &stmt);
    futures::future::try_join_all(
        checks
            .iter()
            .zip(&rows)
            .map(|(m, (ver, at, key))| async move {
                txr.execute(
                    stmt,
                    &[
                        &m.id, &m.channel, &m.group, ver, &m.arch, &m.boot_id, at, key,
                    ],
                )
                .await
            }),
    )
    .await
    .map_err(pg_err("record check"))?;
    tx.commit().await.map_err(pg_err("record check"))
}

/// Writes queued checks until the queue is closed and drained: what has gathered while the
/// last batch was written goes in the next (up to [`CHECK_BATCH`]), so a busy fleet's checks
/// cost one transaction per batch, not one each, and a quiet fleet's are written at once.
/// A batch the database refused while unavailable is tried once more a second later; then it
/// is given up with a warning (a check is "last seen" telemetry: the machine's next check
/// writes it again).
async fn check_writer(pool: Pool, mut rx: mpsc::Receiver<Queued>) {
    let mut batch: Vec<MachineCheck> = Vec::with_capacity(CHECK_BATCH);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Queued::Check(c) => batch.push(c),
                // Answered after this batch, which holds every check queued before it.
                Queued::Flush(reply) => flushes.push(reply),
            }
            if batch.len() < CHECK_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let mut written = write_checks(&pool, &batch).await;
            if matches!(&written, Err(e) if e.is_unavailable()) {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                written = write_checks(&pool, &batch).await;
            }
            if let Err(e) = written {
                tracing::warn!(error = %e, checks = batch.len(), "recording checks failed; they are dropped");
            }
            batch.clear();
        }
        for reply in flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Listens for replicas' notices until the task is aborted, reconnecting a second after a
/// lost connection (and then telling `on` that notices may have been missed).
async fn listen_loop(config: tokio_postgres::Config, on: NoticeHandler) {
    let mut connected_before = false;
    loop {
        if let Err(e) = listen_once(&config, &on, &mut connected_before).await {
            tracing::warn!(error = %e, "listening for other replicas' changes failed; retrying");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    on: &NoticeHandler,
    connected_before: &mut bool,
) -> std::result::Result<(), tokio_postgres::Error> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(Ok(n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", Notice::CHANNEL))
            .await?;
        if *connected_before {
            on(Notice::RECONNECTED);
        }
        *connected_before = true;
        while let Some(notice) = rx.recv().await {
            on(&notice?);
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}
