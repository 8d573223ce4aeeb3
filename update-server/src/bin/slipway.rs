//! `slipway`: the release manager's command line: keys, roots of trust, signing and verifying
//! releases, and publishing, promoting, pausing and advising on an update server.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use jiff::Timestamp;
use semver::Version;
use slipway_api::manifest::{Advisory, check_expiry};
use slipway_api::{Envelope, Manifest, PrivateKey, PublicKey, Root, TrustedRoot, admit};
use slipway_server::files::{
    create_new, digest_file, digest_file_with_head, read_head, read_limited, write_atomic,
};
use slipway_server::magic::{self, MAGIC_LEN, Magic};
use slipway_server::release::{self, Draft, Fields, PayloadFile};

/// Largest manifest, root or key file read (all are a few KiB at most).
const SMALL_FILE_LIMIT: u64 = 1 << 20;

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Manage Slipway signing keys, roots of trust and signed releases",
    long_about = "Manage Slipway signing keys, roots of trust and signed releases.\n\n\
        A typical first run:\n  \
        slipway keygen --out keys --name release-1\n  \
        slipway root init --key keys/release-1.key --threshold 1 --out root.json\n  \
        slipway manifest new --channel stable --version 2.0.0 --expires-in 30d --out manifest.json\n  \
        slipway sign --key keys/release-1.key --os os.img.zst manifest.json > release.json\n  \
        slipway verify --root root.json --os os.img.zst release.json\n  \
        slipway publish --server https://updates.example --token-file admin.token --os os.img.zst release.json\n  \
        slipway promote --server https://updates.example --token-file admin.token \\\n      \
        --channel stable --version 2.0.0 --wave 0s=0.01 --wave 1h=0.1 --wave 1d=1"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SPKI PEM).
    Keygen {
        /// Directory to write the key files into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = "slipway")]
        name: String,
    },
    /// Print the key id (sha256 of the raw public key) of a public or private key file.
    KeyId {
        /// A `.pub` or `.key` PEM file.
        file: PathBuf,
    },
    /// Create, rotate, inspect and check roots of trust (`root.json`).
    #[command(subcommand)]
    Root(RootCommand),
    /// Write release manifests from flags: `slipway manifest new`.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Sign a release into a DSSE envelope, completing its payloads from the files (size,
    /// sha256, format, url); from a manifest file, the flags, or both.
    Sign(SignArgs),
    /// Add signatures to an existing envelope (a release or a root), one key holder at a time.
    Cosign {
        /// Private key(s) to sign with.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The envelope to add signatures to; it is rewritten in place unless --out is given.
        envelope: PathBuf,
        /// Write the result here instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a signed release against a root of trust; prints the manifest on success.
    Verify(VerifyArgs),
    /// Upload a release's payloads and its signed envelope to an update server.
    Publish(PublishArgs),
    /// Start rolling a published version out on a channel, in waves.
    Promote(PromoteArgs),
    /// Stop offering updates on a channel.
    Pause(ChannelArgs),
    /// Offer updates on a paused channel again.
    Resume(ChannelArgs),
    /// Mark a release with an advisory: machines running it get the channel's target at once.
    Advise(AdviseArgs),
    /// Make a release a floor: older machines pass through it before anything newer.
    Floor(FloorArgs),
    /// Show channels (rollout state, releases) on an update server.
    Status(StatusArgs),
    /// Copy channels' signed releases and their payloads from a server or a mirror directory to
    /// another server or directory (for sites without internet access). Every envelope is
    /// verified against --root and every payload against its signed digest before it moves;
    /// payloads the destination has are skipped, interrupted downloads resume: rerun to finish.
    #[command(after_help = "Examples:\n  \
        slipway mirror --from https://updates.example --from-token-file src.token \\\n      \
        --to-dir /media/usb/slipway --root root.json --channel stable\n  \
        slipway mirror --from-dir /media/usb/slipway --to http://127.0.0.1:8080 \\\n      \
        --to-token-file admin.token --root root.json")]
    Mirror(MirrorArgs),
}

#[derive(Args)]
struct MirrorArgs {
    /// The source server's base URL.
    #[arg(
        long,
        required_unless_present = "from_dir",
        conflicts_with = "from_dir"
    )]
    from: Option<String>,
    /// File holding an admin token of the source server (listing releases needs one).
    #[arg(long, requires = "from")]
    from_token_file: Option<PathBuf>,
    /// A mirror directory to import from.
    #[arg(long)]
    from_dir: Option<PathBuf>,
    /// The destination server's base URL.
    #[arg(long, required_unless_present = "to_dir", conflicts_with = "to_dir")]
    to: Option<String>,
    /// File holding an admin token of the destination server.
    #[arg(long, requires = "to")]
    to_token_file: Option<PathBuf>,
    /// A mirror directory to write (created if missing; a server imports it with --from-dir).
    #[arg(long)]
    to_dir: Option<PathBuf>,
    /// The root of trust every release must verify against.
    #[arg(long)]
    root: PathBuf,
    /// Only this channel (repeat for several; default: every channel).
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Where downloads in progress are kept, to resume an interrupted mirror
    /// [default: TO_DIR/.work, or ~/.cache/slipway/mirror].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Copy advisory and floor marks too (they are not signed: whoever could alter the copy
    /// could set them).
    #[arg(long)]
    copy_marks: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct ServerArgs {
    /// The update server's base URL.
    #[arg(long, env = "SLIPWAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// File holding an admin bearer token (first non-comment line).
    #[arg(long, env = "SLIPWAY_TOKEN_FILE")]
    token_file: PathBuf,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Clone)]
struct TlsArgs {
    /// PEM bundle of the CAs the server's certificate must chain to (only these are trusted);
    /// default: the system's.
    #[arg(long, env = "SLIPWAY_CA")]
    ca: Option<PathBuf>,
    /// Allow http:// to a server other than loopback (the admin token crosses the network
    /// unencrypted).
    #[arg(long, env = "SLIPWAY_ALLOW_PLAIN_HTTP")]
    allow_plain_http: bool,
}

/// https://, or http:// to loopback (or anywhere with `allow_plain`).
fn check_scheme(u: &str, allow_plain: bool) -> Result<()> {
    let url = url::Url::parse(u).with_context(|| format!("{u}: not a URL"))?;
    let loopback = slipway_api::wire::is_loopback_host(url.host_str());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_plain => Ok(()),
        "http" => bail!(
            "{u}: plain HTTP to another host would send the admin token unencrypted; use https:// (with --ca for a private CA) or --allow-plain-http"
        ),
        other => bail!("{u}: the scheme must be https or http, not {other}"),
    }
}

/// The HTTP client for `urls`: refuses http:// to another host unless allowed, and trusts only
/// `--ca` when given.
fn http_client(tls: &TlsArgs, urls: &[&str]) -> Result<reqwest::Client> {
    for u in urls {
        check_scheme(u, tls.allow_plain_http)?;
    }
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
    if let Some(ca) = &tls.ca {
        let pem = read_limited(ca, SMALL_FILE_LIMIT)
            .with_context(|| format!("reading {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not a PEM certificate bundle", ca.display()))?;
        if certs.is_empty() {
            bail!("{}: no certificate in the bundle", ca.display());
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("building the HTTP client")
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Verify the envelope and the payload files against this root before uploading.
    #[arg(long)]
    root: Option<PathBuf>,
    /// The OS payload file; its delta files (FILE.blockidx, FILE.raw) are uploaded too where
    /// `slipway sign` wrote them.
    #[arg(long)]
    os: Option<PathBuf>,
    /// A runtime image payload, NAME=FILE.
    #[arg(long = "runtime", value_name = "NAME=FILE", value_parser = parse_named_file)]
    runtime: Vec<(String, PathBuf)>,
    /// The signed release envelope.
    envelope: PathBuf,
}

#[derive(Args)]
struct ChannelArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The channel.
    #[arg(long)]
    channel: String,
}

#[derive(Args)]
struct PromoteArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// The version to roll out (already published on the channel).
    #[arg(long)]
    version: Version,
    /// A wave, AFTER=FRACTION[,soak=DURATION] (e.g. `0s=0.01 1h=0.1 4h=0.5 1d=1`); default:
    /// everyone now. A soak (with --gate) overrides --soak for that wave.
    #[arg(long = "wave", value_name = "AFTER=FRACTION[,soak=DURATION]", value_parser = parse_wave)]
    waves: Vec<slipway_server::rollout::Wave>,
    /// A health gate, `failure-rate<=N%`: each wave opens only when the failures among the open
    /// waves' machines that reached the target are at most N% (and its time has come); above
    /// it the server halts the rollout (pauses the channel) and names the failing machines.
    #[arg(long, value_name = "failure-rate<=N%")]
    gate: Option<String>,
    /// With --gate: how long each wave soaks before the next may open, and how long a machine
    /// has from its first event on the target to report healthy (else it counts as failed).
    #[arg(long, value_name = "DURATION", default_value = "1h", requires = "gate",
          value_parser = slipway_server::rollout::duration_text::parse)]
    soak: Duration,
}

#[derive(Args)]
struct AdviseArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// The affected release.
    #[arg(long)]
    version: Version,
    /// Advisory id (e.g. CVE-2026-1234).
    #[arg(long, required_unless_present = "clear")]
    id: Option<String>,
    /// One line for humans.
    #[arg(long, default_value = "")]
    summary: String,
    /// Remove the advisory instead.
    #[arg(long, conflicts_with = "id")]
    clear: bool,
}

#[derive(Args)]
struct FloorArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// The release that becomes a floor.
    #[arg(long)]
    version: Version,
    /// Remove the floor instead.
    #[arg(long)]
    clear: bool,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only this channel.
    #[arg(long)]
    channel: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

/// A channel's status for people: the rollout, each wave's state and why, the gate's counts and
/// a halt's failing machines, the releases.
fn status_text(c: &slipway_server::routes::admin::ChannelStatus, now: Timestamp) -> String {
    use slipway_server::gate::{WaveState, percent};
    use slipway_server::rollout::duration_text;
    use std::fmt::Write as _;
    let ago = |t: Timestamp| {
        let secs = now.duration_since(t).as_secs();
        match secs {
            s if s < 0 => format!(
                "in {}",
                duration_text::format(Duration::from_secs(s.unsigned_abs()))
            ),
            s => format!(
                "{} ago",
                duration_text::format(Duration::from_secs(s as u64))
            ),
        }
    };
    let mut h = String::new();
    let _ = write!(h, "{}", c.name);
    match &c.target {
        Some(t) => {
            let _ = write!(h, ": target {t}");
        }
        None => h.push_str(": no target"),
    }
    if let Some(at) = c.promoted_at {
        let _ = write!(h, ", promoted {at} ({})", ago(at));
    }
    if c.paused {
        h.push_str(", PAUSED");
    }
    h.push('\n');
    if let Some(g) = &c.gate {
        let _ = writeln!(h, "  gate: {g}");
    }
    if c.target.is_some() {
        let _ = writeln!(h, "  offered to {}% of machines", percent(c.fraction_now));
    }
    for (i, (w, st)) in c.waves.iter().zip(&c.wave_states).enumerate() {
        let state = match st {
            WaveState::Open { since } => format!("open since {since}"),
            WaveState::Soaking { until, .. } => format!("soaking until {until} ({})", ago(*until)),
            WaveState::WaitingOnTime { at } => {
                format!("waiting on time: opens {at} ({})", ago(*at))
            }
            WaveState::Gated { why } => format!("gated: {why}"),
            WaveState::Halted { since } => format!("halted (open since {since})"),
            WaveState::Later => "later".to_owned(),
        };
        let soak = w
            .soak
            .map(|s| format!(", soak {}", duration_text::format(s)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "  wave {}: +{} {:>5}%{soak}  {state}",
            i + 1,
            duration_text::format(w.after),
            percent(w.fraction)
        );
    }
    if let Some(n) = &c.gate_counts {
        let _ = writeln!(
            h,
            "  open waves: {} reached the target, {} healthy, {} failed, {} overdue, {} updating",
            n.reached, n.healthy, n.failed, n.overdue, n.updating
        );
    }
    if let Some(halt) = &c.halt {
        let _ = writeln!(h, "  HALTED {}: {}", halt.at, halt.reason);
        let _ = writeln!(
            h,
            "  (resume with `slipway resume --channel {}`: failures so far are accepted)",
            c.name
        );
    }
    for f in &c.failing {
        let _ = writeln!(h, "    {}  {}", f.id, f.why);
    }
    let releases: Vec<String> = c
        .releases
        .iter()
        .map(|r| {
            let mut s = r.version.to_string();
            if r.floor {
                s.push_str(" (floor)");
            }
            if let Some(a) = &r.advisory {
                let _ = write!(s, " (advisory {})", a.id);
            }
            s
        })
        .collect();
    let _ = writeln!(
        h,
        "  releases: {}",
        if releases.is_empty() {
            "none".to_owned()
        } else {
            releases.join(", ")
        }
    );
    h
}

fn parse_wave(s: &str) -> Result<slipway_server::rollout::Wave, String> {
    let (wave, soak) = match s.split_once(',') {
        Some((wave, option)) => {
            let soak = option
                .strip_prefix("soak=")
                .ok_or_else(|| format!("expected AFTER=FRACTION,soak=DURATION, got {s:?}"))?;
            (
                wave,
                Some(slipway_server::rollout::duration_text::parse(soak)?),
            )
        }
        None => (s, None),
    };
    let (after, fraction) = wave
        .split_once('=')
        .ok_or_else(|| format!("expected AFTER=FRACTION, got {s:?}"))?;
    Ok(slipway_server::rollout::Wave {
        after: slipway_server::rollout::duration_text::parse(after)?,
        fraction: fraction
            .parse()
            .map_err(|_| format!("fraction {fraction:?} is not a number"))?,
        soak,
    })
}

#[derive(Subcommand)]
enum RootCommand {
    /// Create root version 1, trusting the given keys, self-signed by the private ones.
    Init {
        /// Private keys: trusted, and they sign the new root.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Public keys: trusted, but not signing now (their holders can `cosign` later).
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// How many distinct keys must sign a release or the next root.
        #[arg(long)]
        threshold: u32,
        /// Write the signed root here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create root N+1, signed by a threshold of root N's keys and of its own.
    Rotate {
        /// The root currently trusted (version N).
        #[arg(long)]
        root: PathBuf,
        /// Private keys of root N that sign the rotation.
        #[arg(long = "old-key", required = true)]
        old_keys: Vec<PathBuf>,
        /// Private keys of root N+1: trusted, and they sign.
        #[arg(long = "new-key", required = true)]
        new_keys: Vec<PathBuf>,
        /// Public keys of root N+1 that do not sign now.
        #[arg(long = "new-public-key")]
        new_public_keys: Vec<PathBuf>,
        /// Threshold of root N+1 (default: root N's threshold).
        #[arg(long)]
        threshold: Option<u32>,
        /// Write the signed root here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a root (and optionally its rotations, in order) and print the resulting root.
    Verify {
        /// The trusted root (version N).
        #[arg(long)]
        root: PathBuf,
        /// Rotated roots N+1, N+2, ... to check in order.
        rotations: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Write a release manifest from flags, so nobody types JSON by hand. Without payload
    /// flags it is a draft: `slipway sign --os FILE` completes and signs it.
    New(ManifestNewArgs),
}

#[derive(Args)]
struct ManifestNewArgs {
    /// Write the manifest here (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldArgs,
    #[command(flatten)]
    payloads: PayloadArgs,
}

/// The manifest's fields as flags, shared by `manifest new` and `sign`.
#[derive(Args)]
#[command(next_help_heading = "Manifest fields")]
struct FieldArgs {
    /// The channel the release is signed for (`channel`), e.g. stable.
    #[arg(long)]
    channel: Option<String>,
    /// The release's SemVer version (`version`), e.g. 2.0.0.
    #[arg(long)]
    version: Option<Version>,
    /// When nodes stop accepting the release (`expires`), RFC 3339, e.g. 2026-09-01T00:00:00Z.
    #[arg(long, value_name = "INSTANT", conflicts_with = "expires_in")]
    expires: Option<Timestamp>,
    /// Or how long from now until it expires, e.g. 30d, 12h, 1d12h (sets `expires`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires_in: Option<Duration>,
    /// Machines running an older version must update to this release first
    /// (`minFromVersion`).
    #[arg(long, value_name = "VERSION")]
    min_from_version: Option<Version>,
    /// An advisory the release fixes (`advisories`), ID[:SEVERITY[:SUMMARY]], severity one
    /// of low, moderate, important, critical; e.g. CVE-2026-1234:critical:kernel fix.
    /// Repeatable; replaces the manifest's advisory of the same id.
    #[arg(
        long = "advisory",
        value_name = "ID[:SEVERITY[:SUMMARY]]",
        value_parser = release::parse_advisory
    )]
    advisories: Vec<Advisory>,
}

/// Payload files as flags, shared by `manifest new` and `sign`.
#[derive(Args)]
#[command(next_help_heading = "Payloads (each one creates or completes its manifest entry)")]
struct PayloadArgs {
    /// The OS image file: `os` gets its size, sha256, url and format (raw, zstd or xz, from
    /// the file's first bytes; other compressions are refused).
    #[arg(long, value_name = "FILE")]
    os: Option<PathBuf>,
    /// A runtime (sysext) image, NAME=FILE: the `runtime` entry NAME (added if missing) gets
    /// its size, sha256 and url. Runtime images are installed as served: not compressed.
    /// Repeatable.
    #[arg(long = "runtime", value_name = "NAME=FILE", value_parser = parse_named_file)]
    runtime: Vec<(String, PathBuf)>,
    /// The url of the payloads given here, {sha256} standing for the digest, e.g.
    /// https://cdn.example/slipway/{sha256}. Default: the url the manifest has (a {sha256} in
    /// it filled in), else /v1/payloads/{sha256} on the update server `slipway publish`
    /// uploads to.
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_url_template)]
    payload_url: Option<String>,
    /// Sign the release without a block index (`os.delta`): every node downloads the whole
    /// payload. Needed while nodes run an engine older than delta updates, which refuses a
    /// manifest with `os.delta`.
    #[arg(long)]
    no_delta: bool,
    /// Bytes per block of the block index (a power of two from 4096 to 16 MiB). With --os,
    /// the index (FILE.blockidx) and, for a compressed FILE, the uncompressed image (FILE.raw)
    /// are written beside FILE; `slipway publish --os FILE` uploads them.
    #[arg(long, value_name = "BYTES", default_value_t = slipway_server::deltafiles::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
}

#[derive(Args)]
struct SignArgs {
    /// Private key(s) to sign with.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Write the envelope here (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The release manifest (JSON; see docs/protocol.md), e.g. from `slipway manifest new`.
    /// Flags given replace its fields. Optional: without it the release is built from the
    /// flags alone (at least --channel, --version, --expires or --expires-in, and --os or
    /// --runtime).
    manifest: Option<PathBuf>,
    #[command(flatten)]
    payloads: PayloadArgs,
    #[command(flatten)]
    fields: FieldArgs,
}

#[derive(Args)]
struct VerifyArgs {
    /// The node's root of trust (`root.json`).
    #[arg(long)]
    root: PathBuf,
    /// Also refuse what a node running this version would refuse (not newer, minFromVersion).
    #[arg(long)]
    running_version: Option<Version>,
    /// Refuse a release signed for another channel.
    #[arg(long)]
    channel: Option<String>,
    /// Check this file against the signed OS payload size and digest.
    #[arg(long)]
    os: Option<PathBuf>,
    /// Check NAME=FILE against the signed runtime image NAME.
    #[arg(long = "runtime", value_name = "NAME=FILE", value_parser = parse_named_file)]
    runtime: Vec<(String, PathBuf)>,
    /// Judge expiry at this instant (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<jiff::Timestamp>,
    /// The signed release envelope.
    envelope: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    slipway_server::rollout::duration_text::parse(s)
}

fn parse_url_template(s: &str) -> Result<String, String> {
    if !s.contains(release::SHA256_PLACEHOLDER) {
        return Err(format!(
            "{s:?} has no {} for the digest (e.g. https://cdn.example/slipway/{})",
            release::SHA256_PLACEHOLDER,
            release::SHA256_PLACEHOLDER
        ));
    }
    Ok(s.to_owned())
}

fn parse_named_file(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE, got {s:?}"))?;
    if name.is_empty() || file.is_empty() {
        return Err(format!("expected NAME=FILE, got {s:?}"));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("slipway: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out, name } => keygen(&out, &name),
        Command::KeyId { file } => {
            let text = read_text(&file)?;
            let id = if text.contains("PRIVATE KEY") {
                PrivateKey::from_pem(&text)
                    .with_context(|| format!("{}", file.display()))?
                    .id()
                    .to_owned()
            } else {
                PublicKey::from_pem(&text)
                    .with_context(|| format!("{}", file.display()))?
                    .id()
                    .to_owned()
            };
            print_stdout(&format!("{id}\n"))
        }
        Command::Root(cmd) => root(cmd),
        Command::Manifest(ManifestCommand::New(args)) => manifest_new(args),
        Command::Sign(args) => sign(args),
        Command::Cosign {
            keys,
            envelope,
            out,
        } => cosign(&keys, &envelope, out.as_deref()),
        Command::Verify(args) => verify(args),
        Command::Publish(args) => admin::publish(args),
        Command::Promote(args) => {
            let waves = (!args.waves.is_empty()).then_some(&args.waves);
            let gate = args
                .gate
                .as_deref()
                .map(|g| slipway_server::gate::Gate::parse(g, args.soak))
                .transpose()
                .map_err(|e| anyhow!("--gate: {e}"))?;
            let body = serde_json::json!({"version": args.version, "waves": waves, "gate": gate});
            admin::call(
                &args.server,
                "POST",
                &format!("/channels/{}/promote", args.channel),
                Some(body),
            )
        }
        Command::Pause(args) => admin::call(
            &args.server,
            "POST",
            &format!("/channels/{}/pause", args.channel),
            None,
        ),
        Command::Resume(args) => admin::call(
            &args.server,
            "POST",
            &format!("/channels/{}/resume", args.channel),
            None,
        ),
        Command::Advise(args) => {
            let path = format!(
                "/channels/{}/releases/{}/advisory",
                args.channel, args.version
            );
            match args.id {
                Some(id) if !args.clear => admin::call(
                    &args.server,
                    "PUT",
                    &path,
                    Some(serde_json::json!({"id": id, "summary": args.summary})),
                ),
                _ => admin::call(&args.server, "DELETE", &path, None),
            }
        }
        Command::Floor(args) => {
            let path = format!("/channels/{}/releases/{}/floor", args.channel, args.version);
            let method = if args.clear { "DELETE" } else { "PUT" };
            admin::call(&args.server, method, &path, None)
        }
        Command::Mirror(args) => mirror(args),
        Command::Status(args) => {
            let path = match &args.channel {
                Some(c) => format!("/channels/{c}"),
                None => "/channels".to_owned(),
            };
            let value = admin::request(&args.server, "GET", &path, None)?;
            if args.json {
                let mut text = serde_json::to_string_pretty(&value)?;
                text.push('\n');
                return print_stdout(&text);
            }
            let list = match value {
                serde_json::Value::Array(list) => list,
                one => vec![one],
            };
            let mut text = String::new();
            for c in list {
                let c: slipway_server::routes::admin::ChannelStatus = serde_json::from_value(c)
                    .context("the server's channel status is not what this CLI expects")?;
                text.push_str(&status_text(&c, Timestamp::now()));
            }
            if text.is_empty() {
                text.push_str("no channel yet: publish a release with `slipway publish`\n");
            }
            print_stdout(&text)
        }
    }
}

fn mirror(args: MirrorArgs) -> Result<()> {
    use slipway_server::mirror::{Options, Place, run};
    let token = |file: &Option<PathBuf>, flag: &str| -> Result<String> {
        read_token(
            file.as_ref()
                .ok_or_else(|| anyhow!("{flag} is needed with a server"))?,
        )
    };
    let from = match (&args.from, &args.from_dir) {
        (Some(url), _) => Place::Server {
            url: url.clone(),
            token: token(&args.from_token_file, "--from-token-file")?,
        },
        (None, Some(dir)) => Place::Dir(dir.clone()),
        (None, None) => bail!("--from or --from-dir is needed"),
    };
    let to = match (&args.to, &args.to_dir) {
        (Some(url), _) => Place::Server {
            url: url.clone(),
            token: token(&args.to_token_file, "--to-token-file")?,
        },
        (None, Some(dir)) => Place::Dir(dir.clone()),
        (None, None) => bail!("--to or --to-dir is needed"),
    };
    let root_json = read_limited(&args.root, SMALL_FILE_LIMIT)
        .with_context(|| format!("reading {}", args.root.display()))?;
    let root = load_root(&args.root)?;
    let work_dir = match (&args.work_dir, &args.to_dir) {
        (Some(w), _) => w.clone(),
        (None, Some(d)) => d.join(".work"),
        // A private directory: a shared one (/tmp) would let another user plant files there.
        (None, None) => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("slipway/mirror"))
            .ok_or_else(|| anyhow!("--work-dir is needed (no HOME to keep downloads under)"))?,
    };
    fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&work_dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", work_dir.display()))?;
    }
    let urls: Vec<&str> = [args.from.as_deref(), args.to.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let client = http_client(&args.tls, &urls)?;
    let opts = Options {
        client,
        from,
        to,
        root,
        root_json,
        channels: args.channels,
        work_dir,
        copy_marks: args.copy_marks,
    };
    let summary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(&opts, &mut |line| eprintln!("{line}")))?;
    eprintln!(
        "mirrored {} into {}: {} releases published ({} already there), {} payloads copied ({} already there), {} bytes downloaded",
        opts.from,
        opts.to,
        summary.releases_copied,
        summary.releases_present,
        summary.payloads_copied,
        summary.payloads_present,
        summary.bytes_downloaded
    );
    let mut text = serde_json::to_string_pretty(&summary)?;
    text.push('\n');
    print_stdout(&text)
}

fn keygen(dir: &Path, name: &str) -> Result<()> {
    if !slipway_api::manifest::is_valid_name(name) {
        bail!("key name {name:?} must be 1-63 characters of letters, digits, '.', '_' or '-'");
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = PrivateKey::generate();
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    create_new(&secret, key.to_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", secret.display()))?;
    create_new(&public, key.public().to_pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", public.display()))?;
    eprintln!(
        "wrote {} (private, mode 0600) and {}",
        secret.display(),
        public.display()
    );
    print_stdout(&format!("{}\n", key.id()))
}

fn root(cmd: RootCommand) -> Result<()> {
    match cmd {
        RootCommand::Init {
            keys,
            public_keys,
            threshold,
            out,
        } => {
            let signers = load_private_keys(&keys)?;
            let mut trusted: BTreeMap<String, PublicKey> = signers
                .iter()
                .map(|k| (k.id().to_owned(), k.public().clone()))
                .collect();
            for p in load_public_keys(&public_keys)? {
                trusted.insert(p.id().to_owned(), p);
            }
            if trusted.is_empty() {
                bail!("a root needs at least one key (--key or --public-key)");
            }
            let publics: Vec<&PublicKey> = trusted.values().collect();
            let root = Root::new(1, threshold, &publics);
            root.key_set()?;
            let refs: Vec<&PrivateKey> = signers.iter().collect();
            let env = root.sign(&refs);
            let note = if signers.len() < threshold as usize {
                format!(
                    "; only {} of {threshold} required signatures so far: add more with `slipway cosign`",
                    signers.len()
                )
            } else {
                String::new()
            };
            eprintln!(
                "root version 1: {} keys, threshold {threshold}{note}",
                trusted.len()
            );
            write_output(out.as_deref(), env.to_json_pretty().as_bytes())
        }
        RootCommand::Rotate {
            root,
            old_keys,
            new_keys,
            new_public_keys,
            threshold,
            out,
        } => {
            let current = load_root(&root)?;
            let old_signers = load_private_keys(&old_keys)?;
            let new_signers = load_private_keys(&new_keys)?;
            let mut trusted: BTreeMap<String, PublicKey> = new_signers
                .iter()
                .map(|k| (k.id().to_owned(), k.public().clone()))
                .collect();
            for p in load_public_keys(&new_public_keys)? {
                trusted.insert(p.id().to_owned(), p);
            }
            let threshold = threshold.unwrap_or(current.key_set().threshold());
            let publics: Vec<&PublicKey> = trusted.values().collect();
            let next = Root::new(current.version() + 1, threshold, &publics);
            next.key_set()?;
            let refs: Vec<&PrivateKey> = old_signers.iter().chain(&new_signers).collect();
            let env = next.sign(&refs);
            // Check the result the way a node will, so a short-signed rotation is caught here.
            let bytes = env.to_json_pretty();
            match current.rotate(bytes.as_bytes()) {
                Ok(_) => eprintln!(
                    "root version {}: {} keys, threshold {threshold}; a node trusting version {} accepts it",
                    next.version,
                    trusted.len(),
                    current.version()
                ),
                Err(e) => eprintln!(
                    "root version {} written, but not yet acceptable to nodes: {e}; add signatures with `slipway cosign`",
                    next.version
                ),
            }
            write_output(out.as_deref(), bytes.as_bytes())
        }
        RootCommand::Verify { root, rotations } => {
            let mut trusted = load_root(&root)?;
            for path in &rotations {
                let bytes = read_limited(path, SMALL_FILE_LIMIT)
                    .with_context(|| format!("reading {}", path.display()))?;
                trusted = trusted
                    .rotate(&bytes)
                    .with_context(|| format!("{}", path.display()))?;
            }
            let r = trusted.root();
            let mut text = format!(
                "root version {}: threshold {} of {} keys\n",
                r.version,
                r.threshold,
                r.keys.len()
            );
            for id in r.keys.keys() {
                text.push_str(&format!("  {id}\n"));
            }
            print_stdout(&text)
        }
    }
}

/// Builds a release from a manifest file (if any), the field flags and the payload files, and
/// says on standard error what each payload file turned out to be.
/// `complete`: ready to sign; otherwise a manifest may still lack its payloads.
fn build_manifest(
    file: Option<&Path>,
    fields: &FieldArgs,
    payloads: &PayloadArgs,
    complete: bool,
) -> Result<Manifest> {
    let in_file = |e: slipway_server::Error| match file {
        Some(path) => anyhow!(e).context(format!("{}", path.display())),
        None => anyhow!(e),
    };
    let mut draft = match file {
        Some(path) => {
            let bytes = read_limited(path, SMALL_FILE_LIMIT)
                .with_context(|| format!("reading {}", path.display()))?;
            Draft::from_json(&bytes).map_err(in_file)?
        }
        None => Draft::new(),
    };
    // Whole seconds: `expires` is read by people too.
    let now = Timestamp::from_second(Timestamp::now().as_second())?;
    let expires = match (fields.expires, fields.expires_in) {
        (Some(at), _) => Some(at),
        (None, Some(d)) => Some(
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
                .ok_or_else(|| anyhow!("--expires-in {d:?}: too far in the future"))?,
        ),
        (None, None) => None,
    };
    draft
        .apply(&Fields {
            channel: fields.channel.clone(),
            version: fields.version.clone(),
            expires,
            min_from_version: fields.min_from_version.clone(),
            advisories: fields.advisories.clone(),
        })
        .map_err(in_file)?;
    // Mistakes in the fields show before any large file is hashed.
    draft.check_header(now).map_err(in_file)?;
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &payloads.runtime {
        if !seen.insert(name) {
            bail!("--runtime {name}=... is given twice");
        }
    }
    let url = payloads.payload_url.as_deref();
    let mut notes = Vec::new();
    if let Some(os) = &payloads.os {
        let measured = measure_payload(os)?;
        draft.set_os(&measured, url).map_err(in_file)?;
        notes.push(describe_payload("os", &measured));
        if !payloads.no_delta {
            let Magic::Format(format) = measured.magic else {
                unreachable!("set_os refuses formats nodes cannot decode")
            };
            eprintln!(
                "indexing {} in {}-byte blocks for delta updates...",
                os.display(),
                payloads.block_size
            );
            let files = slipway_server::deltafiles::make(&measured, format, payloads.block_size)
                .with_context(|| format!("indexing {} for delta updates", os.display()))?;
            draft.set_delta(&files, url).map_err(in_file)?;
            if format != slipway_api::manifest::PayloadFormat::Raw {
                notes.push(describe_payload("uncompressed os image", &files.image));
            }
            notes.push(format!(
                "block index: {}, {} bytes ({} blocks of {}), sha256 {}",
                files.index.name,
                files.index.size,
                files.index.size.saturating_sub(20) / 32,
                files.block_size,
                files.index.sha256
            ));
        }
    }
    if payloads.no_delta {
        draft.clear_delta();
    }
    for (name, path) in &payloads.runtime {
        let measured = measure_payload(path)?;
        draft.set_runtime(name, &measured, url).map_err(in_file)?;
        notes.push(describe_payload(&format!("runtime {name}"), &measured));
    }
    let manifest = if complete {
        draft.finish(now)
    } else {
        draft.finish_draft(now)
    }
    .map_err(in_file)?;
    // Only now: a failure prints its one error line and nothing else.
    for note in notes {
        eprintln!("{note}");
    }
    Ok(manifest)
}

/// Size, digest and magic of a payload file.
fn measure_payload(file: &Path) -> Result<PayloadFile> {
    let (size, sha256, head) = digest_file_with_head(file, MAGIC_LEN)
        .with_context(|| format!("hashing {}", file.display()))?;
    if size == 0 {
        bail!("{} is empty", file.display());
    }
    Ok(PayloadFile {
        name: file.display().to_string(),
        size,
        sha256,
        magic: magic::detect(&head),
    })
}

fn describe_payload(what: &str, p: &PayloadFile) -> String {
    let format = match p.magic {
        Magic::Format(f) => f.as_str(),
        Magic::Unsupported(name) => name,
    };
    format!(
        "{what}: {}, {} bytes, {format}, sha256 {}",
        p.name, p.size, p.sha256
    )
}

fn manifest_new(args: ManifestNewArgs) -> Result<()> {
    let manifest = build_manifest(None, &args.fields, &args.payloads, false)?;
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    write_output(args.out.as_deref(), text.as_bytes())?;
    if manifest.os.is_none() && manifest.runtime.is_empty() {
        let file = args
            .out
            .as_deref()
            .map_or("MANIFEST".into(), |p| p.display().to_string());
        eprintln!(
            "release {} for channel {}: no payloads yet; `slipway sign --key KEY --os FILE {file}` \
             fills them in and signs",
            manifest.version, manifest.channel
        );
    }
    Ok(())
}

fn sign(args: SignArgs) -> Result<()> {
    // Keys first: a wrong path fails before large payloads are hashed and indexed.
    let keys = load_private_keys(&args.keys)?;
    let manifest = build_manifest(args.manifest.as_deref(), &args.fields, &args.payloads, true)?;
    let refs: Vec<&PrivateKey> = keys.iter().collect();
    let env = manifest.sign(&refs);
    eprintln!(
        "signed release {} for channel {} with {} key(s): {}",
        manifest.version,
        manifest.channel,
        env.signatures.len(),
        env.signatures
            .iter()
            .map(|s| &s.keyid[..16])
            .collect::<Vec<_>>()
            .join(", ")
    );
    write_output(args.out.as_deref(), env.to_json_pretty().as_bytes())
}

fn cosign(keys: &[PathBuf], envelope: &Path, out: Option<&Path>) -> Result<()> {
    let bytes = read_limited(envelope, SMALL_FILE_LIMIT)
        .with_context(|| format!("reading {}", envelope.display()))?;
    let mut env = Envelope::from_json(&bytes).with_context(|| format!("{}", envelope.display()))?;
    let before = env.signatures.len();
    for key in load_private_keys(keys)? {
        env.add_signature(&key)
            .with_context(|| format!("{}", envelope.display()))?;
    }
    eprintln!(
        "{}: {} signature(s) added, {} in all",
        envelope.display(),
        env.signatures.len() - before,
        env.signatures.len()
    );
    write_output(
        Some(out.unwrap_or(envelope)),
        env.to_json_pretty().as_bytes(),
    )
}

fn verify(args: VerifyArgs) -> Result<()> {
    let root = load_root(&args.root)?;
    let bytes = read_limited(&args.envelope, SMALL_FILE_LIMIT)
        .with_context(|| format!("reading {}", args.envelope.display()))?;
    let manifest = root
        .verify_release(&bytes)
        .with_context(|| format!("{}", args.envelope.display()))?;
    let now = args.now.unwrap_or_else(jiff::Timestamp::now);
    match &args.running_version {
        Some(running) => admit(&manifest, running, now),
        None => check_expiry(&manifest, now),
    }
    .with_context(|| format!("{}", args.envelope.display()))?;
    if let Some(channel) = &args.channel {
        manifest.check_channel(channel)?;
    }
    check_payloads(&manifest, args.os.as_deref(), &args.runtime)?;
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    print_stdout(&text)
}

/// Checks the given payload files against the manifest's signed sizes and digests.
fn check_payloads(
    manifest: &Manifest,
    os: Option<&Path>,
    runtime: &[(String, PathBuf)],
) -> Result<()> {
    if let Some(file) = os {
        let image = manifest.os.as_ref().ok_or_else(|| {
            anyhow!(
                "release {} is runtime-only: it has no os image to check {} against",
                manifest.version,
                file.display()
            )
        })?;
        check_payload(file, "os payload", image.size, &image.sha256)?;
        // The digest matched, so the file is the one signed; a format that disagrees with it
        // (a manifest signed by hand or by an older `slipway sign`) would fail on every node.
        let head =
            read_head(file, MAGIC_LEN).with_context(|| format!("reading {}", file.display()))?;
        let found = magic::detect(&head);
        if found != Magic::Format(image.format) {
            bail!(
                "os payload {}: release {} says format {}, but the file is {found}; nodes \
                 would fail to decode it: sign it again with `slipway sign --os`",
                file.display(),
                manifest.version,
                image.format.as_str()
            );
        }
    }
    for (name, file) in runtime {
        let image = manifest
            .runtime
            .iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "release {} has no runtime image named {name:?}",
                    manifest.version
                )
            })?;
        check_payload(
            file,
            &format!("runtime image {name}"),
            image.size,
            &image.sha256,
        )?;
    }
    Ok(())
}

fn check_payload(
    file: &Path,
    what: &str,
    size: u64,
    sha256: &slipway_api::Sha256Digest,
) -> Result<()> {
    let f = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let (got_size, got) = slipway_server::files::digest_reader(f, size)
        .with_context(|| format!("reading {}", file.display()))?;
    if got_size > size {
        bail!(
            "{what} {}: larger than the signed size of {size} bytes",
            file.display()
        );
    }
    if got_size < size {
        bail!(
            "{what} {}: {got_size} bytes, but the signed size is {size}",
            file.display()
        );
    }
    if got != *sha256 {
        bail!(
            "{what} {}: sha256 digest mismatch: signed {sha256}, file has {got}",
            file.display()
        );
    }
    Ok(())
}

fn load_root(path: &Path) -> Result<TrustedRoot> {
    let bytes = read_limited(path, SMALL_FILE_LIMIT)
        .with_context(|| format!("reading {}", path.display()))?;
    TrustedRoot::bootstrap(&bytes)
        .with_context(|| format!("{}: not a valid root of trust", path.display()))
}

fn load_private_keys(paths: &[PathBuf]) -> Result<Vec<PrivateKey>> {
    paths
        .iter()
        .map(|p| {
            let text = read_text(p)?;
            PrivateKey::from_pem(&text).with_context(|| format!("{}", p.display()))
        })
        .collect()
}

fn load_public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| {
            let text = read_text(p)?;
            PublicKey::from_pem(&text).with_context(|| format!("{}", p.display()))
        })
        .collect()
}

/// The first token of an admin token file.
fn read_token(file: &Path) -> Result<String> {
    let text = read_text(file)?;
    slipway_api::wire::token_lines(&text)
        .next()
        .map(|(_, t)| t.to_owned())
        .ok_or_else(|| anyhow!("{}: no token in the file", file.display()))
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_limited(path, SMALL_FILE_LIMIT)
        .with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

fn write_output(out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(path) => {
            write_atomic(path, bytes, 0o644).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(bytes)
                .and_then(|()| stdout.flush())
                .context("writing to standard output")
        }
    }
}

fn print_stdout(text: &str) -> Result<()> {
    write_output(None, text.as_bytes())
}

/// The admin API client behind `publish`, `promote`, `pause`, `resume`, `advise`, `floor`
/// and `status`.
mod admin {
    use super::*;

    fn token(args: &ServerArgs) -> Result<String> {
        read_token(&args.token_file)
    }

    fn runtime() -> Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    }

    fn url(args: &ServerArgs, path: &str) -> String {
        format!("{}/v1/admin{path}", args.server.trim_end_matches('/'))
    }

    /// Turns a non-2xx answer into one error line, `STATUS KIND: MESSAGE`.
    async fn answer(resp: reqwest::Response, what: &str) -> Result<serde_json::Value> {
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{what}: reading the answer"))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if !status.is_success() {
            let kind = value["kind"].as_str().unwrap_or("error");
            let message = value["message"].as_str().unwrap_or("");
            bail!("{what}: the server answered {status} {kind}: {message}");
        }
        Ok(value)
    }

    fn print_json(value: &serde_json::Value) -> Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        print_stdout(&text)
    }

    pub(super) fn call(
        args: &ServerArgs,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<()> {
        let value = request(args, method, path, body)?;
        print_json(&value)
    }

    /// Sends an admin request; the answer's JSON.
    pub(super) fn request(
        args: &ServerArgs,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let token = token(args)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        runtime()?.block_on(async {
            let mut req = http_client(&args.tls, &[&args.server])?
                .request(method.clone(), url(args, path))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("{method} {}", url(args, path)))?;
            answer(resp, &format!("{method} {path}")).await
        })
    }

    pub(super) fn publish(args: PublishArgs) -> Result<()> {
        let token = token(&args.server)?;
        let bytes = read_limited(&args.envelope, SMALL_FILE_LIMIT)
            .with_context(|| format!("reading {}", args.envelope.display()))?;
        let envelope =
            Envelope::from_json(&bytes).with_context(|| format!("{}", args.envelope.display()))?;
        // Which delta files the release names (read without verifying: the server verifies,
        // and --root below too): only those are uploaded.
        let named: Vec<slipway_api::Sha256Digest> = envelope
            .payload_bytes()
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .and_then(|m| m.os)
            .and_then(|os| os.delta)
            .map(|d| vec![d.index.sha256, d.image.sha256])
            .unwrap_or_default();
        if let Some(root) = &args.root {
            let root = load_root(root)?;
            let manifest = root
                .verify_release(&bytes)
                .with_context(|| format!("{}", args.envelope.display()))?;
            check_payloads(&manifest, args.os.as_deref(), &args.runtime)?;
        }
        // The delta files `slipway sign --os FILE` wrote beside FILE, if there.
        let delta: Vec<PathBuf> = args
            .os
            .iter()
            .flat_map(|f| {
                [
                    slipway_server::deltafiles::index_path(f),
                    slipway_server::deltafiles::raw_path(f),
                ]
            })
            .filter(|p| p.exists() && digest_file(p).is_ok_and(|(_, d)| named.contains(&d)))
            .collect();
        let files: Vec<&PathBuf> = args
            .os
            .iter()
            .chain(delta.iter())
            .chain(args.runtime.iter().map(|(_, f)| f))
            .collect();
        runtime()?.block_on(async {
            let client = http_client(&args.server.tls, &[&args.server.server])?;
            for file in files {
                let (size, sha256) =
                    digest_file(file).with_context(|| format!("hashing {}", file.display()))?;
                // Asked first: the server answers a PUT of a payload it has without reading
                // the body, and a large body still being sent then ends in a broken pipe (and
                // re-sending a stored image is a waste anyway).
                let stored = client
                    .head(format!(
                        "{}/v1/payloads/{sha256}",
                        args.server.server.trim_end_matches('/')
                    ))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == reqwest::StatusCode::OK)
                    // The header itself: a HEAD response's body (what content_length()
                    // reports) is empty.
                    .and_then(|r| {
                        r.headers()
                            .get(reqwest::header::CONTENT_LENGTH)?
                            .to_str()
                            .ok()?
                            .parse::<u64>()
                            .ok()
                    });
                if stored == Some(size) {
                    eprintln!(
                        "{}: {size} bytes, sha256 {sha256}: already there",
                        file.display()
                    );
                    continue;
                }
                let f = tokio::fs::File::open(file)
                    .await
                    .with_context(|| format!("opening {}", file.display()))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    f,
                    1 << 20,
                ));
                let resp = client
                    .put(url(&args.server, &format!("/payloads/{sha256}")))
                    .bearer_auth(&token)
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("uploading {}", file.display()))?;
                let v = answer(resp, &format!("uploading {}", file.display())).await?;
                let state = if v["created"] == true {
                    "uploaded"
                } else {
                    "already there"
                };
                eprintln!("{}: {size} bytes, sha256 {sha256}: {state}", file.display());
            }
            let resp = client
                .post(url(&args.server, "/releases"))
                .bearer_auth(&token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes)
                .send()
                .await
                .context("publishing the release")?;
            let v = answer(resp, "publishing the release").await?;
            eprintln!(
                "release {} on channel {}: {}",
                v["version"].as_str().unwrap_or("?"),
                v["channel"].as_str().unwrap_or("?"),
                if v["created"] == true {
                    "published"
                } else {
                    "already published"
                }
            );
            print_json(&v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_goes_to_loopback_only_unless_allowed() {
        for (url, allow, ok) in [
            ("https://updates.example", false, true),
            ("http://127.0.0.1:8080", false, true),
            ("http://localhost:8080", false, true),
            ("http://[::1]:8080", false, true),
            ("http://updates.example", false, false),
            ("http://10.1.2.3:8080", false, false),
            ("http://updates.example", true, true),
            ("ftp://updates.example", true, false),
            ("not a url", true, false),
        ] {
            let got = check_scheme(url, allow);
            assert_eq!(got.is_ok(), ok, "{url} {allow}: {got:?}");
        }
        let e = check_scheme("http://updates.example", false).unwrap_err();
        assert!(e.to_string().contains("--allow-plain-http"), "{e}");
    }
}
