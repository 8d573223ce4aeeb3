//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temp dir, `pg_ctl start` on a
//! free port with its unix socket in that dir (TCP off), as the `postgres` user when running as
//! root. One cluster per test process, one fresh database per test; a watchdog process stops
//! the cluster and deletes the dir when the test process exits, even after a panic.
//! If PostgreSQL cannot start, tests fail with the reason: they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running cluster.
pub struct PgCluster {
    socket_dir: PathBuf,
    port: u16,
    next_db: AtomicU32,
    ctl: Ctl,
}

/// What `pg_ctl` needs to start and stop a cluster.
#[derive(Clone)]
struct Ctl {
    pg_ctl: PathBuf,
    data: String,
    opts: String,
    log: String,
    as_postgres: bool,
}

impl Ctl {
    fn start(&self) -> Result<(), String> {
        run(
            self.as_postgres,
            &self.pg_ctl,
            &[
                "-D", &self.data, "-l", &self.log, "-w", "-t", "60", "-o", &self.opts, "start",
            ],
        )
    }

    /// `-m fast`: sessions are disconnected, as in a restart for an upgrade or a failover.
    fn stop(&self) -> Result<(), String> {
        run(
            self.as_postgres,
            &self.pg_ctl,
            &["-D", &self.data, "-m", "fast", "-w", "stop"],
        )
    }
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();

fn pg_bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("/usr/lib/postgresql: {e} (apt-get install postgresql; scripts/setup.sh does)")
        })?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)".into())
}

fn is_root() -> bool {
    // The owner of /proc/self is our effective uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// Runs `program args` as the cluster's user, failing with its output.
fn run(as_postgres: bool, program: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} failed ({}): {}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A free TCP port on loopback (for servers the tests start).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

fn start() -> Result<PgCluster, String> {
    let bin = pg_bin_dir()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("slipway-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let dir_s = dir.to_str().ok_or("temp dir path is not UTF-8")?.to_owned();
    if root {
        // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
        let status = Command::new("chown")
            .args(["postgres:postgres", &dir_s])
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "chown postgres {dir_s} failed (is there a postgres user?)"
            ));
        }
    }
    let data = format!("{dir_s}/data");
    run(
        root,
        &bin.join("initdb"),
        &[
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
    )?;
    // The watchdog: when this process is gone, stop the cluster and delete its directory.
    let pg_ctl = bin.join("pg_ctl");
    let stop = format!(
        "{} {} -D {data} stop -m immediate",
        if root { "runuser -u postgres --" } else { "" },
        pg_ctl.display()
    );
    let watchdog = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir_s}",
        pid = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the cluster watchdog: {e}"))?;
    let mut last_err = String::new();
    for _ in 0..5 {
        let port = free_port();
        let opts = format!(
            "-k {dir_s} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c max_connections=200"
        );
        let ctl = Ctl {
            pg_ctl: pg_ctl.clone(),
            data: data.clone(),
            opts,
            log: format!("{dir_s}/log"),
            as_postgres: root,
        };
        match ctl.start() {
            Ok(()) => {
                return Ok(PgCluster {
                    socket_dir: dir.clone(),
                    port,
                    next_db: AtomicU32::new(0),
                    ctl,
                });
            }
            Err(e) => {
                let log = std::fs::read_to_string(format!("{dir_s}/log")).unwrap_or_default();
                last_err = format!("{e}\nserver log:\n{log}");
            }
        }
    }
    Err(last_err)
}

/// A cluster of the caller's own (for a test that stops and starts it), stopped and deleted
/// when the test process exits. Panics (failing the test) if it cannot run.
pub fn own_cluster() -> PgCluster {
    start().unwrap_or_else(|e| panic!("PostgreSQL tests cannot run: a cluster did not start: {e}"))
}

/// The process's cluster, started on first use. Panics (failing the test) if it cannot run.
pub fn cluster() -> &'static PgCluster {
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("PostgreSQL tests cannot run: the throwaway cluster did not start: {e}"),
    }
}

impl PgCluster {
    /// Stops the server (sessions disconnected) and, after `down`, starts it again on the
    /// same socket.
    pub async fn restart(&self, down: std::time::Duration) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.stop())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
        tokio::time::sleep(down).await;
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.start())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("starting PostgreSQL again: {e}"));
    }

    fn url(&self, db: &str) -> String {
        let host = self.socket_dir.to_str().unwrap().replace('/', "%2F");
        format!("postgres://postgres@{host}:{}/{db}", self.port)
    }

    /// A new, empty database, as a libpq key-value string (for programs that take that form,
    /// as SPIRE's datastore does).
    pub async fn new_database_keyvalue(&self) -> String {
        let url = self.new_database().await;
        let db = url.rsplit('/').next().unwrap();
        format!(
            "host={} port={} user=postgres dbname={db} sslmode=disable",
            self.socket_dir.display(),
            self.port
        )
    }

    /// A new, empty database; its URL.
    pub async fn new_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the throwaway cluster: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        drop(client);
        let _ = task.await;
        self.url(&name)
    }
}
