//! The engine's settings: TOML drop-ins read once at start-up (Zincati-style), first
//! `/usr/lib/slipway/engine.d/*.toml` (the image's defaults), then `/etc/slipway/engine.d/*.toml`
//! (the admin's overrides), each directory in file-name order, later keys winning. Unknown keys
//! are errors, so a typo never silently keeps a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::boot::BootSettings;
use super::slot::Slot;
use crate::error::{Error, Result};

/// Where drop-ins are read from, lowest priority first.
pub const DEFAULT_CONFIG_DIRS: [&str; 2] = ["/usr/lib/slipway/engine.d", "/etc/slipway/engine.d"];

/// Everything the engine is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// The update server's base URL.
    pub server: url::Url,
    /// The channel this machine follows.
    #[serde(default = "defaults::channel")]
    pub channel: String,
    /// The machine's group (RolloutPolicy / FleetLock group).
    #[serde(default)]
    pub group: String,
    /// The signed root of trust.
    #[serde(default = "defaults::root")]
    pub root: PathBuf,
    /// Where the engine keeps its state (a persistent partition).
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// The machine id file.
    #[serde(default = "defaults::machine_id")]
    pub machine_id_file: PathBuf,
    /// The os-release file of the booted slot; its `SLIPWAY_VERSION` (or a semver
    /// `VERSION_ID`) is the running version.
    #[serde(default = "defaults::os_release")]
    pub os_release: PathBuf,
    /// The kernel command line (`slipway.slot=A|B` names the booted slot).
    #[serde(default = "defaults::cmdline")]
    pub cmdline: PathBuf,
    /// The current boot's id.
    #[serde(default = "defaults::boot_id")]
    pub boot_id_file: PathBuf,
    /// How often to check for updates (`30s`, `15m`, `1h`).
    #[serde(default = "defaults::check_interval", deserialize_with = "duration")]
    pub check_interval: Duration,
    /// Download as soon as an update is found.
    #[serde(default = "defaults::yes")]
    pub auto_download: bool,
    /// Trial boots granted to a new slot before the boot loader falls back.
    #[serde(default = "defaults::boot_tries")]
    pub boot_tries: u32,
    /// Failed attempts at one release before the engine stops trying it.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Bytes between durable download checkpoints.
    #[serde(default = "defaults::checkpoint_bytes")]
    pub checkpoint_bytes: u64,
    /// Build the new OS image from blocks the machine's slots already hold and fetch only the
    /// rest, where the release offers a block index (`delta = false`: always download the
    /// whole payload).
    #[serde(default = "defaults::yes")]
    pub delta: bool,
    /// Give up a delta, and download the whole payload, when the delta would fetch more than
    /// this share of the payload's size (0 to 1; the slots are read and hashed for a delta,
    /// which a near-full fetch does not repay).
    #[serde(default = "defaults::delta_max_fetch")]
    pub delta_max_fetch: f64,
    /// HTTP timeouts (connect, and idle between received bytes).
    #[serde(default = "defaults::http_timeout", deserialize_with = "duration")]
    pub http_timeout: Duration,
    /// PEM bundle of the certificate authorities the update server's certificate must chain
    /// to; when set, only these are trusted (a private CA). Unset: the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// With `client-key`: a PEM certificate (an X.509-SVID) the engine presents to the server
    /// (mutual TLS); re-read when it changes, so a rotated certificate needs no restart.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key of `client-cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The SPIFFE Workload API socket (`unix:///run/spire/agent/public/api.sock`) the engine
    /// takes its X.509-SVID from for mutual TLS, instead of `client-cert`/`client-key`; a
    /// rotated SVID is used from the next request on.
    #[serde(default)]
    pub spiffe_endpoint: Option<String>,
    /// Allow `http://` to a server other than loopback (reports, and which release is offered,
    /// cross the network unencrypted; releases stay verified by their signatures).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Maximum queued reports kept while the server is unreachable.
    #[serde(default = "defaults::outbox_limit")]
    pub outbox_limit: usize,
    /// The two slots.
    #[serde(default)]
    pub slots: SlotPaths,
    /// The boot loader.
    #[serde(default)]
    pub boot: BootSettings,
    /// Runtime (sysext) images.
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

/// Paths of the two slots: block devices in production, files in tests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPaths {
    /// Slot A.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
}

impl Default for SlotPaths {
    fn default() -> Self {
        Self {
            a: "/dev/disk/by-partlabel/SLIPWAY_A".into(),
            b: "/dev/disk/by-partlabel/SLIPWAY_B".into(),
        }
    }
}

/// Runtime (sysext) images.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RuntimeSettings {
    /// Where sysext images go.
    pub extensions_dir: PathBuf,
    /// Units restarted after a runtime image changes.
    pub restart_units: Vec<String>,
    /// Where the image each update replaces is kept, for rolling back a failed restart
    /// (outside the extensions directory, so systemd-sysext never merges it).
    pub previous_dir: PathBuf,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            extensions_dir: "/var/lib/extensions".into(),
            restart_units: vec!["containerd.service".into(), "kubelet.service".into()],
            previous_dir: "/var/lib/slipway/extensions.previous".into(),
        }
    }
}

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn channel() -> String {
        "stable".into()
    }
    pub fn root() -> PathBuf {
        "/etc/slipway/root.json".into()
    }
    pub fn state_dir() -> PathBuf {
        "/var/lib/slipway".into()
    }
    pub fn machine_id() -> PathBuf {
        "/etc/machine-id".into()
    }
    pub fn os_release() -> PathBuf {
        "/etc/os-release".into()
    }
    pub fn cmdline() -> PathBuf {
        "/proc/cmdline".into()
    }
    pub fn boot_id() -> PathBuf {
        "/proc/sys/kernel/random/boot_id".into()
    }
    pub fn check_interval() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn delta_max_fetch() -> f64 {
        0.75
    }
    pub fn boot_tries() -> u32 {
        1
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn checkpoint_bytes() -> u64 {
        64 << 20
    }
    pub fn http_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn outbox_limit() -> usize {
        256
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses `90s`, `15m`, `1h30m`, `2d`, `500ms`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 30s, 15m, 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        let unit = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86400),
            _ => return Err(bad()),
        };
        total = unit
            .and_then(|u| total.checked_add(u))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

impl Settings {
    /// Loads the drop-ins of `dirs` (lowest priority first) and any explicit `files` after them.
    pub fn load(dirs: &[PathBuf], files: &[PathBuf]) -> Result<Self> {
        let mut merged = toml::Table::new();
        let mut sources = Vec::new();
        for dir in dirs {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir, e)),
            };
            entries.sort();
            sources.extend(entries);
        }
        sources.extend(files.iter().cloned());
        if sources.is_empty() {
            return Err(Error::Config(format!(
                "no configuration found (looked for *.toml in {})",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for path in &sources {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            merge(&mut merged, table);
        }
        Self::from_table(merged, &describe(&sources))
    }

    /// The settings of one drop-in's text, as [`Settings::load`] reads it (for tools and tests
    /// that hold the text rather than files).
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("settings: {e}")))?;
        Self::from_table(table, "settings")
    }

    fn from_table(merged: toml::Table, sources: &str) -> Result<Self> {
        let settings: Settings = merged
            .try_into()
            .map_err(|e| Error::Config(format!("{sources}: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        if !slipway_api::manifest::is_valid_name(&self.channel) {
            return Err(Error::Config(format!(
                "channel {:?} is not a valid name",
                self.channel
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("max-attempts must be at least 1".into()));
        }
        if self.boot_tries == 0 {
            return Err(Error::Config("boot-tries must be at least 1".into()));
        }
        if self.slots.a == self.slots.b {
            return Err(Error::Config(
                "slots.a and slots.b are the same path".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.delta_max_fetch) {
            return Err(Error::Config(format!(
                "delta-max-fetch must be from 0 to 1 (a share of the payload), not {}",
                self.delta_max_fetch
            )));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(Error::Config(
                "client-cert and client-key go together (a certificate and its key)".into(),
            ));
        }
        if let Some(endpoint) = &self.spiffe_endpoint {
            if self.client_cert.is_some() {
                return Err(Error::Config(
                    "spiffe-endpoint and client-cert are two sources of one identity: set one"
                        .into(),
                ));
            }
            super::spiffe::socket_path(endpoint)?;
        }
        match self.server.scheme() {
            "https" => {}
            "http"
                if self.allow_plain_http
                    || slipway_api::wire::is_loopback_host(self.server.host_str()) => {}
            "http" => {
                return Err(Error::Config(format!(
                    "server = \"{}\": plain HTTP to another host; use https:// (with `ca` for a private CA) or set allow-plain-http = true",
                    self.server
                )));
            }
            other => {
                return Err(Error::Config(format!(
                    "server = \"{}\": the scheme must be https or http, not {other}",
                    self.server
                )));
            }
        }
        if self.checkpoint_bytes < 1 << 20 {
            return Err(Error::Config(
                "checkpoint-bytes must be at least 1 MiB".into(),
            ));
        }
        Ok(())
    }

    /// The path of `slot`.
    pub fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slots.a,
            Slot::B => &self.slots.b,
        }
    }
}

fn describe(sources: &[PathBuf]) -> String {
    sources
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "h", "10", "10x", "1.5h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_duration_past_what_fits_is_an_error_not_a_panic() {
        // Both overflowed (a panic in debug builds, a wrong value in release) before.
        for long in ["213503982334602d", "18446744073709551615s1s"] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("too long"), "{long}: {e}");
        }
        assert_eq!(
            parse_duration("18446744073709551615s").unwrap(),
            Duration::from_secs(u64::MAX)
        );
    }

    #[test]
    fn one_drop_in_parses_from_text_with_the_same_checks() {
        let e = Settings::from_toml("server = \"http://127.0.0.1:1/\"\nmax-attempts = 0\n")
            .unwrap_err();
        assert!(e.to_string().contains("max-attempts"), "{e}");
        let e = Settings::from_toml("no-such-key = 1").unwrap_err();
        assert!(e.to_string().contains("no-such-key"), "{e}");
    }

    #[test]
    fn plain_http_goes_to_loopback_only_unless_allowed() {
        for (server, extra, ok) in [
            ("https://updates.example", "", true),
            ("http://127.0.0.1:8080/", "", true),
            ("http://localhost/", "", true),
            ("http://[::1]:8080/", "", true),
            ("http://10.0.2.100/", "", false),
            ("http://updates.example/", "", false),
            ("http://10.0.2.100/", "allow-plain-http = true\n", true),
            ("ftp://updates.example/", "allow-plain-http = true\n", false),
        ] {
            let got = Settings::from_toml(&format!("server = \"{server}\"\n{extra}"));
            assert_eq!(got.is_ok(), ok, "{server} {extra}: {got:?}");
            if let Err(e) = got {
                let e = e.to_string();
                assert!(e.contains(server), "{e}");
                if server.starts_with("http:") {
                    assert!(
                        e.contains("allow-plain-http = true") && e.contains("`ca`"),
                        "{e}"
                    );
                }
            }
        }
        let s =
            Settings::from_toml("server = \"https://u.example\"\nca = \"/etc/slipway/ca.pem\"\n")
                .unwrap();
        assert_eq!(s.ca.as_deref(), Some(Path::new("/etc/slipway/ca.pem")));
    }

    #[test]
    fn later_drop_ins_override_and_unknown_keys_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            lib.join("10-base.toml"),
            "server = \"https://a\"\nchannel = \"beta\"\n[boot]\nbackend = \"grub\"\ngrubenv = \"/x\"\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("50-site.toml"),
            "channel = \"stable\"\ncheck-interval = \"5m\"\n",
        )
        .unwrap();
        let s = Settings::load(&[lib.clone(), etc.clone()], &[]).unwrap();
        assert_eq!(s.channel, "stable");
        assert_eq!(s.check_interval, Duration::from_secs(300));
        assert!(matches!(s.boot, BootSettings::Grub { .. }));
        std::fs::write(etc.join("60-typo.toml"), "chanel = \"x\"\n").unwrap();
        let err = Settings::load(&[lib, etc], &[]).unwrap_err().to_string();
        assert!(err.contains("unknown field `chanel`"), "{err}");
    }
}
