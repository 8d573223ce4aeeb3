//! `slipway-server`'s settings, parsed once at start-up (flags, or `SLIPWAY_*` variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

fn duration(s: &str) -> Result<Duration, String> {
    crate::rollout::duration_text::parse(s)
}

fn timeout(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!("a timeout of {s:?} would refuse every request")),
        d => Ok(d),
    }
}

/// The update server's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "slipway-server",
    version,
    about = "Slipway's update server: channels, phased rollouts, payloads, fleet reports"
)]
pub struct Settings {
    /// Address to listen on (port 0: any free port; the log says which).
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for payloads and the default SQLite database, root and token files.
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = "./slipway-data")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: sqlite://DATA_DIR/slipway.db].
    #[arg(long, env = "SLIPWAY_DATABASE")]
    pub database: Option<String>,
    /// PostgreSQL connection pool size.
    #[arg(long, env = "SLIPWAY_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: usize,
    /// Signed root of trust releases are verified against on publish
    /// [default: DATA_DIR/root.json; without it publishing is refused].
    #[arg(long, env = "SLIPWAY_ROOT")]
    pub root: Option<PathBuf>,
    /// File of admin bearer tokens, one per line [default: DATA_DIR/admin-tokens; without it
    /// the admin API is disabled].
    #[arg(long, env = "SLIPWAY_ADMIN_TOKENS")]
    pub admin_tokens: Option<PathBuf>,
    /// Events older than this are deleted (e.g. `30d`, `12h`).
    #[arg(long, env = "SLIPWAY_EVENTS_MAX_AGE", default_value = "30d", value_parser = duration)]
    pub events_max_age: Duration,
    /// At most this many events are kept (the oldest go first).
    #[arg(long, env = "SLIPWAY_EVENTS_MAX_COUNT", default_value_t = 1_000_000)]
    pub events_max_count: u64,
    /// At most this many `checked` events are kept per machine (the oldest go first; engines
    /// report one at every check). Update events go only by age and --events-max-count.
    #[arg(long, env = "SLIPWAY_EVENTS_PER_MACHINE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_per_machine: u64,
    /// How often releases and channel state are re-read from the database (changes made
    /// through other replicas).
    #[arg(long, env = "SLIPWAY_REFRESH", default_value = "5s", value_parser = duration)]
    pub refresh: Duration,
    /// How often the health gates of gated rollouts are evaluated (opening waves, halting).
    #[arg(long, env = "SLIPWAY_GATE_INTERVAL", default_value = "10s", value_parser = timeout)]
    pub gate_interval: Duration,
    /// Largest payload upload, in bytes.
    #[arg(long, env = "SLIPWAY_MAX_PAYLOAD_BYTES", default_value_t = 64 << 30)]
    pub max_payload_bytes: u64,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept open.
    #[arg(long, env = "SLIPWAY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = timeout)]
    pub header_read_timeout: Duration,
    /// How long a JSON request body (check, event, admin command) may take to arrive (408
    /// after).
    #[arg(long, env = "SLIPWAY_BODY_DEADLINE", default_value = "60s", value_parser = timeout)]
    pub body_deadline: Duration,
    /// How long a payload upload may go without sending a byte (408 after).
    #[arg(long, env = "SLIPWAY_BODY_IDLE_TIMEOUT", default_value = "30s", value_parser = timeout)]
    pub body_idle_timeout: Duration,
    /// How long a response (a payload download) may wait for a client that stopped reading
    /// before the connection is dropped.
    #[arg(long, env = "SLIPWAY_WRITE_STALL_TIMEOUT", default_value = "60s", value_parser = timeout)]
    pub write_stall_timeout: Duration,
    /// PEM certificate chain to serve HTTPS with (with --tls-key); re-read on SIGHUP.
    #[arg(long, env = "SLIPWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; re-read on SIGHUP.
    #[arg(long, env = "SLIPWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM trust bundle (a SPIFFE X.509 bundle) for machines' client certificates: with it,
    /// checks and reports must come with an X.509-SVID whose SPIFFE ID is exactly
    /// `spiffe://TRUST_DOMAIN/PATH_PREFIX/MACHINE_ID`. Needs --tls-cert and
    /// --spiffe-trust-domain.
    #[arg(long, env = "SLIPWAY_CLIENT_CA", requires_all = ["tls_cert", "spiffe_trust_domain"])]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: the SPIFFE trust domain of machines' IDs.
    #[arg(long, env = "SLIPWAY_SPIFFE_TRUST_DOMAIN", requires = "client_ca")]
    pub spiffe_trust_domain: Option<String>,
    /// With --client-ca: the path of machines' SPIFFE IDs before the machine id.
    #[arg(
        long,
        env = "SLIPWAY_SPIFFE_PATH_PREFIX",
        default_value = "slipway/machine"
    )]
    pub spiffe_path_prefix: String,
    /// Serve plain HTTP on an address other than loopback (behind a TLS-terminating proxy, or a
    /// network you trust); without it the server refuses to start there without --tls-cert.
    #[arg(long, env = "SLIPWAY_ALLOW_PLAIN_HTTP")]
    pub allow_plain_http: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLIPWAY_LOG_JSON")]
    pub log_json: bool,
    /// Send CloudEvents (HTTP binary mode) to this URL; repeat for several sinks (the variable
    /// takes a comma-separated list).
    #[arg(
        long = "cloudevents-sink",
        value_name = "URL",
        env = "SLIPWAY_CLOUDEVENTS_SINKS",
        value_delimiter = ','
    )]
    pub cloudevents_sinks: Vec<url::Url>,
    /// CloudEvents waiting per sink before new ones are dropped.
    #[arg(long, env = "SLIPWAY_CLOUDEVENTS_QUEUE", default_value_t = slipway_events::DEFAULT_QUEUE_BOUND)]
    pub cloudevents_queue: usize,
    /// The URL machines and admins reach this server at; the CloudEvents `source`
    /// [default: /slipway/server].
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json` serves) and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

impl Settings {
    /// The database URL.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("slipway.db").display()))
    }

    /// The root file.
    pub fn root_path(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("root.json"))
    }

    /// The admin token file.
    pub fn tokens_path(&self) -> PathBuf {
        self.admin_tokens
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin-tokens"))
    }
}
