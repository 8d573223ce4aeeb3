//! The SQLite store (the default): one file in WAL mode, one writer thread that commits
//! whatever queued up meanwhile in a single transaction (group commit, so thousands of checks
//! a second cost a few commits), a reader connection for queries, and a thread that
//! checkpoints the WAL so no commit ever waits for one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};
use semver::Version;
use tokio::sync::{mpsc, oneshot};

use super::query::{Dialect, MACHINE_COLUMNS, Sql, Value, Window, version_key};
use super::{
    AdoptionSample, AdvisoryMark, ChannelRecord, EventRecord, MIGRATIONS, MachineCheck,
    MachineRecord, PutOutcome, ReleaseRecord, Retention, RolloutEvent, Store, TRANSFER_COLUMNS,
    TransferTotals, VERSION_KEYS, event_effects, event_kind, from_json, latest_schema, ms, to_json,
    transfer_columns, transfer_of, ts, version,
};
use crate::clusters::{ClusterChange, ClusterWrite};
use crate::error::{Error, Result};
use slipway_api::wire::ClusterReport;

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// How long the writer gathers queued checks before committing them.
const LINGER: Duration = Duration::from_millis(2);
/// Most writes waiting for the writer thread.
const QUEUE: usize = 16_384;

type Job = Box<dyn Job_ + Send>;

/// What the writer thread receives.
enum Msg {
    /// A write whose caller waits for the commit.
    Job(Job),
    /// A check to record; nobody waits (see [`Store::note_check`]).
    Check(MachineCheck),
}

// A write: `run` inside the batch's transaction (in its own savepoint, so one failing job
// does not undo the others), `finish` after the commit, with the commit's outcome.
trait Job_ {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, committed: std::result::Result<(), String>);
}

struct TypedJob<R, F> {
    work: Option<F>,
    result: Option<rusqlite::Result<R>>,
    reply: Option<oneshot::Sender<Result<R>>>,
    what: &'static str,
}

impl<R: Send, F: FnOnce(&Connection) -> rusqlite::Result<R> + Send> Job_ for TypedJob<R, F> {
    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else { return };
        let result = conn.execute_batch("SAVEPOINT job").and_then(|()| {
            let r = work(conn);
            let end = if r.is_ok() {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            conn.execute_batch(end)?;
            r
        });
        self.result = Some(result);
    }

    fn finish(mut self: Box<Self>, committed: std::result::Result<(), String>) {
        let what = self.what;
        let outcome = match (self.result.take(), committed) {
            (Some(Ok(r)), Ok(())) => Ok(r),
            (Some(Err(source)), _) => Err(Error::Sqlite {
                what: what.into(),
                source,
            }),
            (_, Err(e)) => Err(Error::Sqlite {
                what: format!("{what} (commit)"),
                source: rusqlite::Error::InvalidParameterName(e),
            }),
            (None, Ok(())) => Err(Error::Closed),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome);
        }
    }
}

/// SQLite behind [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Msg>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stop_checkpoints: Arc<std::sync::atomic::AtomicBool>,
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn sqlite_err(what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        what: what.into(),
        source,
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sqlite_err("open"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err("busy_timeout"))?;
    // WAL: readers never block the writer. synchronous=NORMAL: a commit survives a process
    // crash; only an OS crash or power loss can lose the last commits (WAL is fsynced at
    // checkpoints), which is the usual trade for a server's telemetry.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536; PRAGMA mmap_size = 268435456;
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(sqlite_err("pragmas"))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let err = sqlite_err("migrate");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(err)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite_err("migrate"))?;
    if current > latest_schema() {
        return Err(Error::Migration(format!(
            "database schema version {current} is newer than this server's {}",
            latest_schema()
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn.transaction().map_err(sqlite_err("migrate"))?;
        tx.execute_batch(m.sqlite)
            .map_err(|e| Error::Migration(format!("step {}: {e}", m.version)))?;
        if m.version == VERSION_KEYS {
            fill_version_keys(&tx).map_err(sqlite_err("migrate: version keys"))?;
        }
        tx.execute(
            // The database's clock: the record is informational only.
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES (?1, CAST(unixepoch('subsec') * 1000 AS INTEGER))",
            params![m.version],
        )
        .map_err(sqlite_err("migrate"))?;
        tx.commit().map_err(sqlite_err("migrate"))?;
        tracing::info!(version = m.version, "applied schema migration");
    }
    Ok(())
}

/// Writes the version key of every machine stored before keys were (one update per version).
fn fill_version_keys(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let versions: Vec<String> = tx
        .prepare("SELECT DISTINCT version FROM machines")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE machines SET vkey = ?1 WHERE version = ?2")?;
    for text in versions {
        // An unparsable version keeps the empty key (it is reported as corrupt when read).
        if let Ok(v) = Version::parse(&text) {
            update.execute(params![version_key(&v), text])?;
        }
    }
    Ok(())
}

/// A known machine's check: an UPDATE, which touches the table alone. The same as
/// [`UPSERT_CHECK`]'s update, but an upsert also opens every index for its insert branch (the
/// partial indexes of failed and updating machines), which costs a check about a tenth.
const UPDATE_CHECK: &str = "UPDATE machines SET channel = ?2, grp = ?3, version = ?4, arch = ?5,
        boot_id = ?6, last_seen = ?7, vkey = ?8 WHERE id = ?1";

/// Records a check: updates the machine, or inserts it when new (the writer thread is the only
/// writer, so nothing comes between the two).
fn upsert_check(conn: &Connection, m: &MachineCheck) -> rusqlite::Result<()> {
    let p = params![
        m.id,
        m.channel,
        m.group,
        m.version.to_string(),
        m.arch,
        m.boot_id,
        ms(m.at),
        version_key(&m.version)
    ];
    if conn.prepare_cached(UPDATE_CHECK)?.execute(p)? == 0 {
        conn.prepare_cached(UPSERT_CHECK)?.execute(p)?;
    }
    Ok(())
}

fn record_queued_checks(conn: &Connection, checks: &[MachineCheck]) {
    for m in checks {
        if let Err(e) = upsert_check(conn, m) {
            tracing::error!(error = %e, machine = %m.id, "recording a check failed");
        }
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, wal_limit: u64) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut checks: Vec<MachineCheck> = Vec::with_capacity(MAX_BATCH);
    let wal = WalLength::watch(&mut conn);
    while let Some(first) = rx.blocking_recv() {
        // Nobody waits for a queued check, so linger a moment to gather more: one wake-up
        // and one commit for many checks instead of one each. Durable jobs go at once.
        if matches!(first, Msg::Check(_)) {
            std::thread::sleep(LINGER);
        }
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(j) => jobs.push(j),
                Msg::Check(c) => checks.push(c),
            }
            if jobs.len() + checks.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let committed = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())
            .and_then(|()| {
                if !checks.is_empty() {
                    record_queued_checks(&conn, &checks);
                }
                for job in jobs.iter_mut() {
                    job.run(&conn);
                }
                conn.execute_batch("COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    e.to_string()
                })
            });
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = jobs.len(), checks = checks.len(), "sqlite commit failed");
        }
        checks.clear();
        for job in jobs.drain(..) {
            job.finish(committed.clone());
        }
        wal.restart_if_over(&conn, wal_limit);
    }
}

/// A WAL longer than this is checkpointed to its end and started over by the writer.
pub const WAL_RESTART_BYTES: u64 = 64 << 20;

/// Under writes that never pause, the checkpointer's passive checkpoints never catch up with
/// the WAL's end, so SQLite never starts the WAL over and it grows without bound (measured:
/// 5 GB after a simulated month of a thousand machines' checks). So the writer itself, after a
/// commit that left the WAL longer than the limit, checkpoints it fully (RESTART: waits for
/// readers of older snapshots, briefly; the passive checkpoints have copied most pages
/// already) so that the next commit writes from its start, and `journal_size_limit` cuts the
/// file back.
///
/// The WAL's length is the frame count SQLite hands its WAL hook after every commit, not the
/// file's: the file keeps its longest length (up to `journal_size_limit`) after a restart, and
/// a size looked at on a timer let a fast writer run a quarter second's writes past the limit
/// (17 MiB past a 1 MiB limit on a faster machine).
struct WalLength {
    /// Frames in the WAL after the last commit (set by the hook, on the writer's thread).
    frames: Arc<std::sync::atomic::AtomicU64>,
    page_size: u64,
}

impl WalLength {
    fn watch(conn: &mut Connection) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let frames = Arc::new(AtomicU64::new(0));
        let seen = frames.clone();
        let hooked = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: i32| {
            seen.store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }));
        if let Err(e) = hooked {
            tracing::warn!(error = %e, "cannot watch the wal's length; it is not started over");
        }
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(4096);
        Self { frames, page_size }
    }

    fn bytes(&self) -> u64 {
        // A frame is a page and its 24-byte header.
        self.frames.load(std::sync::atomic::Ordering::Relaxed) * (self.page_size + 24)
    }

    /// Starts the WAL over when it is longer than `limit`. A checkpoint that could not finish
    /// (the checkpointer thread was in one, or a reader held an old snapshot) is tried again
    /// after the next commit, which finds the WAL still long.
    fn restart_if_over(&self, conn: &Connection, limit: u64) {
        let len = self.bytes();
        if len <= limit {
            return;
        }
        match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => self.frames.store(0, std::sync::atomic::Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, wal_bytes = len, "restarting the wal failed"),
        }
    }
}

/// Checkpoints the WAL from its own connection, so the writer never stalls on one (PASSIVE:
/// never blocks the writer or readers). Stops when `stop` is set.
fn checkpoint_loop(conn: Connection, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "wal checkpoint failed");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with_wal_limit(path, WAL_RESTART_BYTES).await
    }

    /// [`Self::open`], with the WAL started over once longer than `wal_restart_bytes` (see
    /// [`WAL_RESTART_BYTES`]; for tests of the limit).
    pub async fn open_with_wal_limit(path: &Path, wal_restart_bytes: u64) -> Result<Self> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let p = path.clone();
        let (writer_conn, reader, checkpoints) =
            tokio::task::spawn_blocking(move || -> Result<_> {
                let mut w = connect(&p)?;
                migrate(&mut w)?;
                // Checkpoints run on their own thread (below), never inside a commit.
                w.execute_batch("PRAGMA wal_autocheckpoint = 0")
                    .map_err(sqlite_err("pragmas"))?;
                let r = connect(&p)?;
                let c = connect(&p)?;
                Ok((w, r, c))
            })
            .await
            .map_err(|e| Error::Config(format!("opening sqlite: {e}")))??;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, wal_restart_bytes))
            .map_err(|e| Error::io(&path, e))?;
        let stop_checkpoints = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stop_checkpoints.clone();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoints, stop))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stop_checkpoints,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    async fn write<R, F>(&self, what: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply: Some(reply),
            what,
        });
        self.sender()?
            .send(Msg::Job(job))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn sender(&self) -> Result<mpsc::Sender<Msg>> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().cloned().ok_or(Error::Closed)
    }

    /// Waits until every check queued before now is committed, so machine reads see them.
    async fn flush(&self) -> Result<()> {
        self.write("flush", |_| Ok(())).await
    }

    async fn read<R, F>(&self, what: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            work(&conn)
        })
        .await
        .map_err(|e| Error::Config(format!("sqlite {what}: {e}")))?
    }
}

const RELEASE_COLUMNS: &str = "channel, version, envelope, manifest, published_at, advisory, floor";

fn release_row(r: &Row<'_>) -> rusqlite::Result<Result<ReleaseRecord>> {
    let version_text: String = r.get(1)?;
    let published: i64 = r.get(4)?;
    let advisory: Option<String> = r.get(5)?;
    let channel: String = r.get(0)?;
    let envelope: String = r.get(2)?;
    let manifest: String = r.get(3)?;
    let floor: bool = r.get(6)?;
    Ok((|| {
        Ok(ReleaseRecord {
            channel,
            version: version(&version_text)?,
            envelope,
            manifest,
            published_at: ts(published)?,
            advisory: advisory
                .as_deref()
                .map(|a| from_json("advisory", a))
                .transpose()?,
            floor,
        })
    })())
}

fn machine_row(r: &Row<'_>) -> rusqlite::Result<Result<MachineRecord>> {
    let id: String = r.get(0)?;
    let channel: String = r.get(1)?;
    let group: String = r.get(2)?;
    let ver: String = r.get(3)?;
    let arch: String = r.get(4)?;
    let boot_id: String = r.get(5)?;
    let first_seen: i64 = r.get(6)?;
    let last_seen: i64 = r.get(7)?;
    let last_event: Option<String> = r.get(8)?;
    let last_event_at: Option<i64> = r.get(9)?;
    let last_error: Option<String> = r.get(10)?;
    Ok((|| {
        Ok(MachineRecord {
            id,
            channel,
            group,
            version: version(&ver)?,
            arch,
            boot_id,
            first_seen: ts(first_seen)?,
            last_seen: ts(last_seen)?,
            last_event: last_event.as_deref().map(event_kind).transpose()?,
            last_event_at: last_event_at.map(ts).transpose()?,
            last_error,
        })
    })())
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<Result<EventRecord>> {
    let id: i64 = r.get(0)?;
    let machine_id: String = r.get(1)?;
    let ver: String = r.get(2)?;
    let kind: String = r.get(3)?;
    let detail: String = r.get(4)?;
    let at: i64 = r.get(5)?;
    let transfer = transfer_of(r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?);
    Ok((|| {
        Ok(EventRecord {
            id,
            machine_id,
            version: version(&ver)?,
            event: event_kind(&kind)?,
            detail,
            transfer,
            at: ts(at)?,
        })
    })())
}

fn collect<T>(
    conn: &Connection,
    what: &str,
    sql: &str,
    params: impl rusqlite::Params,
    row: fn(&Row<'_>) -> rusqlite::Result<Result<T>>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sqlite_err(what))?;
    let rows = stmt.query_map(params, row).map_err(sqlite_err(what))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(sqlite_err(what))??);
    }
    Ok(out)
}

pub(crate) const UPSERT_CHECK: &str = "INSERT INTO machines
        (id, channel, grp, version, arch, boot_id, first_seen, last_seen, vkey)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
    ON CONFLICT (id) DO UPDATE SET channel = excluded.channel, grp = excluded.grp,
        version = excluded.version, vkey = excluded.vkey, arch = excluded.arch,
        boot_id = excluded.boot_id, last_seen = excluded.last_seen";

/// Parameters: id, version, at, kind, error, version key, clears the error, sets the version
/// (numbered in order of first use: SQLite numbers `$N` that way).
pub(crate) const UPSERT_EVENT_MACHINE: &str = "INSERT INTO machines
        (id, channel, grp, version, arch, boot_id, first_seen, last_seen, last_event,
         last_event_at, last_error, vkey)
        VALUES ($1, '', '', $2, '', '', $3, $3, $4, $3, $5, $6)
    ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
        last_event = excluded.last_event, last_event_at = excluded.last_event_at,
        last_error = CASE WHEN $7 THEN NULL ELSE COALESCE($5, machines.last_error) END,
        version = CASE WHEN $8 THEN excluded.version ELSE machines.version END,
        vkey = CASE WHEN $8 THEN excluded.vkey ELSE machines.vkey END";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read("ping", |c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(sqlite_err("ping"))
        })
        .await
    }

    async fn put_release(&self, release: &ReleaseRecord) -> Result<PutOutcome> {
        let r = release.clone();
        self.write("put release", move |c| {
            let existing: Option<String> = c
                .query_row(
                    "SELECT envelope FROM releases WHERE channel = ?1 AND version = ?2",
                    params![r.channel, r.version.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            match existing {
                Some(e) if e == r.envelope => Ok(PutOutcome::Unchanged),
                Some(_) => Ok(PutOutcome::Conflict),
                None => {
                    c.execute(
                        &format!(
                            "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                        ),
                        params![
                            r.channel,
                            r.version.to_string(),
                            r.envelope,
                            r.manifest,
                            ms(r.published_at),
                            r.advisory.as_ref().map(to_json),
                            r.floor
                        ],
                    )?;
                    Ok(PutOutcome::Created)
                }
            }
        })
        .await
    }

    async fn releases(&self) -> Result<Vec<ReleaseRecord>> {
        self.read("releases", |c| {
            collect(
                c,
                "releases",
                &format!("SELECT {RELEASE_COLUMNS} FROM releases ORDER BY channel, published_at"),
                [],
                release_row,
            )
        })
        .await
    }

    async fn set_advisory(
        &self,
        channel: &str,
        version: &Version,
        advisory: Option<&AdvisoryMark>,
    ) -> Result<bool> {
        let (channel, version, advisory) = (
            channel.to_owned(),
            version.to_string(),
            advisory.map(to_json),
        );
        self.write("set advisory", move |c| {
            let n = c.execute(
                "UPDATE releases SET advisory = ?3 WHERE channel = ?1 AND version = ?2",
                params![channel, version, advisory],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_floor(&self, channel: &str, version: &Version, floor: bool) -> Result<bool> {
        let (channel, version) = (channel.to_owned(), version.to_string());
        self.write("set floor", move |c| {
            let n = c.execute(
                "UPDATE releases SET floor = ?3 WHERE channel = ?1 AND version = ?2",
                params![channel, version, floor],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_channel(&self, ch: &ChannelRecord) -> Result<()> {
        let ch = ch.clone();
        self.write("put channel", move |c| {
            c.execute(
                "INSERT INTO channels (name, target, waves, promoted_at, paused, updated_at, gating)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET target = excluded.target,
                   waves = excluded.waves, promoted_at = excluded.promoted_at,
                   paused = excluded.paused, updated_at = excluded.updated_at,
                   gating = excluded.gating",
                params![
                    ch.name,
                    ch.target.as_ref().map(|v| v.to_string()),
                    to_json(&ch.waves),
                    ch.promoted_at.map(ms),
                    ch.paused,
                    ms(ch.updated_at),
                    ch.gating.as_ref().map(to_json)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_channel_if(&self, ch: &ChannelRecord, expected: Timestamp) -> Result<bool> {
        let ch = ch.clone();
        self.write("put channel", move |c| {
            let n = c.execute(
                "UPDATE channels SET target = ?2, waves = ?3, promoted_at = ?4, paused = ?5,
                   updated_at = ?6, gating = ?7
                 WHERE name = ?1 AND updated_at = ?8",
                params![
                    ch.name,
                    ch.target.as_ref().map(|v| v.to_string()),
                    to_json(&ch.waves),
                    ch.promoted_at.map(ms),
                    ch.paused,
                    ms(ch.updated_at),
                    ch.gating.as_ref().map(to_json),
                    ms(expected)
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn rollout_events(
        &self,
        channel: &str,
        version: &Version,
        since: Timestamp,
    ) -> Result<Vec<RolloutEvent>> {
        let (channel, version) = (channel.to_owned(), version.to_string());
        self.read("rollout events", move |c| {
            collect(
                c,
                "rollout events",
                "SELECT e.machine_id, e.kind, e.detail, e.at FROM events e
                 JOIN machines m ON m.id = e.machine_id
                 WHERE e.version = ?1 AND e.at >= ?2 AND m.channel = ?3 AND e.kind <> 'checked'
                 ORDER BY e.id",
                params![version, ms(since), channel],
                |r| {
                    let machine_id: String = r.get(0)?;
                    let kind: String = r.get(1)?;
                    let detail: String = r.get(2)?;
                    let at: i64 = r.get(3)?;
                    Ok((|| {
                        Ok(RolloutEvent {
                            machine_id,
                            event: event_kind(&kind)?,
                            detail,
                            at: ts(at)?,
                        })
                    })())
                },
            )
        })
        .await
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>> {
        fn row(r: &Row<'_>) -> rusqlite::Result<Result<ChannelRecord>> {
            let name: String = r.get(0)?;
            let target: Option<String> = r.get(1)?;
            let waves: String = r.get(2)?;
            let promoted_at: Option<i64> = r.get(3)?;
            let paused: bool = r.get(4)?;
            let updated_at: i64 = r.get(5)?;
            let gating: Option<String> = r.get(6)?;
            Ok((|| {
                Ok(ChannelRecord {
                    name,
                    target: target.as_deref().map(version).transpose()?,
                    waves: from_json("waves", &waves)?,
                    promoted_at: promoted_at.map(ts).transpose()?,
                    paused,
                    gating: gating
                        .as_deref()
                        .map(|g| from_json("gating", g))
                        .transpose()?,
                    updated_at: ts(updated_at)?,
                })
            })())
        }
        self.read("channels", |c| {
            collect(
                c,
                "channels",
                "SELECT name, target, waves, promoted_at, paused, updated_at, gating FROM channels
                 ORDER BY name",
                [],
                row,
            )
        })
        .await
    }

    async fn record_checks(&self, checks: &[MachineCheck]) -> Result<()> {
        let checks = checks.to_vec();
        self.write("record check", move |c| {
            for m in &checks {
                upsert_check(c, m)?;
            }
            Ok(())
        })
        .await
    }

    async fn note_check(&self, check: MachineCheck) -> Result<()> {
        // Immediate unless the queue is full: then checks wait, which is the backpressure that
        // keeps memory bounded when the disk cannot keep up.
        self.sender()?
            .send(Msg::Check(check))
            .await
            .map_err(|_| Error::Closed)
    }

    async fn record_event(&self, e: &EventRecord) -> Result<i64> {
        let e = e.clone();
        self.write("record event", move |c| {
            let (image, fetched, local, delta, fallback) = transfer_columns(e.transfer.as_ref());
            c.prepare_cached(
                "INSERT INTO events (machine_id, version, kind, detail, at, image_bytes,
                 fetched_bytes, local_bytes, delta, fallback)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                e.machine_id,
                e.version.to_string(),
                e.event.as_str(),
                e.detail,
                ms(e.at),
                image,
                fetched,
                local,
                delta,
                fallback
            ])?;
            let id = c.last_insert_rowid();
            let (error, clear, set_version) = event_effects(&e);
            c.prepare_cached(UPSERT_EVENT_MACHINE)?.execute(params![
                e.machine_id,
                e.version.to_string(),
                ms(e.at),
                e.event.as_str(),
                error,
                version_key(&e.version),
                clear,
                set_version
            ])?;
            Ok(id)
        })
        .await
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        self.flush().await?;
        let id = id.to_owned();
        self.read("machine", move |c| {
            Ok(collect(
                c,
                "machine",
                &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
                [id],
                machine_row,
            )?
            .pop())
        })
        .await
    }

    async fn machines(
        &self,
        channel: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MachineRecord>> {
        self.flush().await?;
        let (channel, after) = (channel.map(str::to_owned), after.unwrap_or("").to_owned());
        self.read("machines", move |c| {
            collect(
                c,
                "machines",
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines
                     WHERE (?1 IS NULL OR channel = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
                ),
                params![channel, after, limit],
                machine_row,
            )
        })
        .await
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn machine_window(&self, sql: Sql) -> Result<Window> {
        self.flush().await?;
        self.read("machine list", move |c| {
            let params = sql.params.iter().map(|p| match p {
                Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
                Value::Int(n) => rusqlite::types::Value::Integer(*n),
            });
            let mut stmt = c
                .prepare_cached(&sql.text)
                .map_err(sqlite_err("machine list"))?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(sqlite_err("machine list"))?;
            let mut w = Window::default();
            while let Some(r) = rows.next().map_err(sqlite_err("machine list"))? {
                let read = |r: &Row<'_>| -> rusqlite::Result<(Option<String>, i64, bool)> {
                    Ok((
                        r.get(12)?,
                        r.get(13)?,
                        r.get::<_, Option<String>>(0)?.is_some(),
                    ))
                };
                let (last, n, hit) = read(r).map_err(sqlite_err("machine list"))?;
                w.last = last;
                w.read = u64::try_from(n).unwrap_or(0);
                if hit {
                    w.matches
                        .push(machine_row(r).map_err(sqlite_err("machine list"))??);
                }
            }
            Ok(w)
        })
        .await
    }

    async fn machine_count(&self) -> Result<u64> {
        self.flush().await?;
        self.read("machine count", |c| {
            c.query_row("SELECT COUNT(*) FROM machines", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(sqlite_err("machine count"))
        })
        .await
    }

    async fn events(&self, machine_id: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let machine_id = machine_id.map(str::to_owned);
        self.read("events", move |c| {
            collect(
                c,
                "events",
                &format!(
                    "SELECT id, machine_id, version, kind, detail, at, {TRANSFER_COLUMNS}
                     FROM events WHERE (?1 IS NULL OR machine_id = ?1) ORDER BY id DESC LIMIT ?2"
                ),
                params![machine_id, limit],
                event_row,
            )
        })
        .await
    }

    async fn transfer_totals(&self) -> Result<Vec<TransferTotals>> {
        self.flush().await?;
        self.read("transfer totals", |c| {
            collect(
                c,
                "transfer totals",
                "SELECT version, COUNT(*), SUM(delta), SUM(image_bytes), SUM(fetched_bytes)
                 FROM events WHERE kind = 'staged' AND image_bytes IS NOT NULL GROUP BY version",
                [],
                |r| {
                    let ver: String = r.get(0)?;
                    let n = |i| {
                        r.get::<_, Option<i64>>(i)
                            .map(|v| v.unwrap_or(0).max(0) as u64)
                    };
                    let (staged, deltas, image, fetched) = (n(1)?, n(2)?, n(3)?, n(4)?);
                    Ok(version(&ver).map(|version| TransferTotals {
                        version,
                        staged,
                        deltas,
                        image_bytes: image,
                        fetched_bytes: fetched,
                    }))
                },
            )
        })
        .await
    }

    async fn trim_machine_events(&self, machine_id: &str, keep: u64) -> Result<u64> {
        let (machine_id, keep) = (
            machine_id.to_owned(),
            i64::try_from(keep).unwrap_or(i64::MAX),
        );
        self.write("trim machine events", move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM events WHERE machine_id = ?1 AND kind = 'checked' AND id <= (
                 SELECT id FROM events WHERE machine_id = ?1 AND kind = 'checked'
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![machine_id, keep])? as u64)
        })
        .await
    }

    async fn prune_events(&self, retention: Retention, now: Timestamp) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let keep = i64::try_from(retention.max_count).unwrap_or(i64::MAX);
        self.write("prune events", move |c| {
            let old = c.execute("DELETE FROM events WHERE at < ?1", params![cutoff])?;
            let over = c.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                params![keep],
            )?;
            Ok((old + over) as u64)
        })
        .await
    }

    async fn put_cluster(&self, report: &ClusterReport) -> Result<ClusterWrite> {
        let report = report.clone();
        self.write("put cluster", move |c| {
            let stored: Option<String> = c
                .query_row(
                    "SELECT report FROM clusters WHERE name = ?1",
                    params![report.cluster],
                    |r| r.get(0),
                )
                .optional()?;
            // A stored report that no longer parses is replaced (and its history restarts).
            let old: Option<ClusterReport> = stored.and_then(|s| serde_json::from_str(&s).ok());
            let changes = crate::clusters::changes(old.as_ref(), &report);
            let mut insert = c.prepare_cached(
                "INSERT INTO cluster_history (cluster, at, kind, name, state)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for ch in &changes {
                insert.execute(params![
                    ch.cluster,
                    ms(ch.at),
                    ch.kind.as_str(),
                    ch.name,
                    ch.state_json()
                ])?;
            }
            c.execute(
                "INSERT INTO clusters (name, at, report) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET at = excluded.at, report = excluded.report",
                params![report.cluster, ms(report.at), to_json(&report)],
            )?;
            Ok(ClusterWrite {
                changed: old.as_ref() != Some(&report),
                history: changes.len(),
            })
        })
        .await
    }

    async fn clusters(&self) -> Result<Vec<ClusterReport>> {
        self.read("clusters", |c| {
            collect(
                c,
                "clusters",
                "SELECT report FROM clusters ORDER BY name",
                [],
                |r| {
                    let s: String = r.get(0)?;
                    Ok(from_json("cluster report", &s))
                },
            )
        })
        .await
    }

    async fn cluster_history(
        &self,
        cluster: &str,
        since: Timestamp,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ClusterChange>> {
        let cluster = cluster.to_owned();
        self.read("cluster history", move |c| {
            collect(
                c,
                "cluster history",
                "SELECT id, cluster, at, kind, name, state FROM cluster_history
                 WHERE cluster = ?1 AND id > ?2 AND at >= ?3 ORDER BY id LIMIT ?4",
                params![cluster, after, ms(since), limit],
                |r| {
                    let (id, cluster, at): (i64, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                    let (kind, name, state): (String, String, Option<String>) =
                        (r.get(3)?, r.get(4)?, r.get(5)?);
                    Ok(ts(at).and_then(|at| {
                        ClusterChange::from_row(id, cluster, at, &kind, name, state.as_deref())
                    }))
                },
            )
        })
        .await
    }

    async fn prune_cluster_history(&self, max_age: Duration, now: Timestamp) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        self.write("prune cluster history", move |c| {
            let n = c.execute("DELETE FROM cluster_history WHERE at < ?1", params![cutoff])?;
            Ok(n as u64)
        })
        .await
    }

    async fn sample_adoption(&self, at: Timestamp) -> Result<u64> {
        self.flush().await?;
        self.write("sample adoption", move |c| {
            let n = c.execute(
                "INSERT INTO adoption (channel, at, version, machines)
                 SELECT channel, ?1, version, COUNT(*) FROM machines WHERE channel <> ''
                 GROUP BY channel, version
                 ON CONFLICT DO NOTHING",
                params![ms(at)],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn adoption(&self, channel: &str, since: Timestamp) -> Result<Vec<AdoptionSample>> {
        let channel = channel.to_owned();
        self.read("adoption", move |c| {
            collect(
                c,
                "adoption",
                "SELECT at, version, machines FROM adoption WHERE channel = ?1 AND at >= ?2
                 ORDER BY at, version",
                params![channel, ms(since)],
                |r| {
                    let (at, v, n): (i64, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                    Ok((|| {
                        Ok(AdoptionSample {
                            at: ts(at)?,
                            version: version(&v)?,
                            machines: u64::try_from(n).unwrap_or(0),
                        })
                    })())
                },
            )
        })
        .await
    }

    async fn prune_adoption(&self, max_age: Duration, now: Timestamp) -> Result<u64> {
        let cutoff = ms(now) - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        self.write("prune adoption", move |c| {
            Ok(c.execute("DELETE FROM adoption WHERE at < ?1", params![cutoff])? as u64)
        })
        .await
    }

    async fn close(&self) {
        drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.stop_checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
