//! Wire types of the update-server protocol (JSON over HTTPS; see docs/protocol.md), shared by
//! the engine (client) and the server. Unknown fields are ignored here, unlike in signed
//! documents, so that newer clients can talk to older servers.

use schemars::JsonSchema;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;

/// `POST /v1/check`: a machine asks whether an update is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    /// The machine's stable id (e.g. `/etc/machine-id`).
    #[schemars(regex(pattern = MACHINE_ID_PATTERN))]
    pub machine_id: String,
    /// The channel it follows.
    #[schemars(regex(pattern = crate::manifest::NAME_PATTERN))]
    pub channel: String,
    /// Its group (maps to a RolloutPolicy / FleetLock group); empty for none.
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = NO_CONTROL_PATTERN))]
    pub group: String,
    /// The OS version it runs.
    pub version: Version,
    /// Its architecture (`x86_64`, `aarch64`).
    #[schemars(length(max = 253), regex(pattern = NO_CONTROL_PATTERN))]
    pub arch: String,
    /// The current boot's id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = NO_CONTROL_PATTERN))]
    pub boot_id: String,
}

/// The answer to a check: a signed release envelope, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResponse {
    /// The release to apply, still to be verified by the machine.
    pub update: Option<Envelope>,
}

/// `POST /v1/events`: a machine reports a step of its update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventReport {
    /// The reporting machine.
    #[schemars(regex(pattern = MACHINE_ID_PATTERN))]
    pub machine_id: String,
    /// The version the event is about (the target while updating, the running one otherwise).
    pub version: Version,
    /// What happened.
    pub event: EventKind,
    /// Human-readable detail (an error message for `failed` / `rolled-back`).
    #[serde(default)]
    pub detail: String,
    /// How the OS image came to the slot (on `staged`): bytes fetched against the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// How a machine got an OS image into its slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    /// Bytes of the image written into the slot.
    #[serde(deserialize_with = "whole::deserialize")]
    pub image_bytes: u64,
    /// Bytes downloaded for it: the payload, or the block index and the blocks fetched.
    #[serde(deserialize_with = "whole::deserialize")]
    pub fetched_bytes: u64,
    /// Bytes copied from the machine's own slots.
    #[serde(deserialize_with = "whole::deserialize")]
    pub local_bytes: u64,
    /// Whether the image was built as a delta.
    pub delta: bool,
    /// Why a delta that the release offered was not used or was given up (empty: it was used,
    /// or none was offered).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fallback: String,
}

/// The steps a machine reports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Asked the server for an update.
    Checked,
    /// Started (or resumed) downloading a release.
    Downloading,
    /// Wrote and verified the inactive slot; ready to reboot.
    Staged,
    /// Rebooting into the new slot.
    Rebooting,
    /// Booted a new slot (on trial).
    Booted,
    /// Health checks passed; the slot is marked good.
    Healthy,
    /// The update failed (download, verification, write, health).
    Failed,
    /// The machine fell back to the previous slot.
    RolledBack,
}

impl EventKind {
    /// Every kind, in lifecycle order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Checked,
        EventKind::Downloading,
        EventKind::Staged,
        EventKind::Rebooting,
        EventKind::Booted,
        EventKind::Healthy,
        EventKind::Failed,
        EventKind::RolledBack,
    ];

    /// The wire name (`rolled-back`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Checked => "checked",
            EventKind::Downloading => "downloading",
            EventKind::Staged => "staged",
            EventKind::Rebooting => "rebooting",
            EventKind::Booted => "booted",
            EventKind::Healthy => "healthy",
            EventKind::Failed => "failed",
            EventKind::RolledBack => "rolled-back",
        }
    }
}

/// The error body every non-2xx answer of the server carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable kind (`bad-request`, `not-found`, `unauthorized`, ...).
    pub kind: String,
    /// What went wrong, for humans.
    pub message: String,
}

/// `POST /v1/admin/cluster`: what an operator sees of its cluster, for the server's dashboard.
/// The operator sends the whole picture each time (it is small: one entry per node), so the
/// server keeps the newest report per cluster and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// The cluster's name (the operator's `--cluster-name`).
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// When the operator took the picture.
    pub at: jiff::Timestamp,
    /// Every RolloutPolicy.
    #[serde(default)]
    pub policies: Vec<PolicyReport>,
    /// Every node with a NodeUpdate.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
}

/// One RolloutPolicy in a [`ClusterReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// Its name.
    pub name: String,
    /// The update channel its nodes follow.
    pub channel: String,
    /// The version it rolls out.
    #[serde(default)]
    pub target_version: Option<String>,
    /// Paused by an admin.
    #[serde(default)]
    pub paused: bool,
    /// Halted after failures: since when, and which nodes failed.
    #[serde(default)]
    pub halted_since: Option<jiff::Timestamp>,
    /// Nodes whose failures count towards (or caused) a halt.
    #[serde(default)]
    pub failed_nodes: Vec<String>,
    /// Nodes it selects.
    #[serde(default, deserialize_with = "whole::deserialize")]
    pub nodes: u32,
    /// Of which on the target version.
    #[serde(default, deserialize_with = "whole::deserialize")]
    pub updated: u32,
    /// Nodes unavailable now (granted, draining, rebooting, ...).
    #[serde(default, deserialize_with = "whole::deserialize")]
    pub unavailable: u32,
    /// The budget.
    #[serde(default, deserialize_with = "whole::deserialize")]
    pub max_unavailable: u32,
    /// The reboot window open now, if any (its schedule, for humans).
    #[serde(default)]
    pub window: Option<String>,
    /// When the next window opens, if none is open.
    #[serde(default)]
    pub next_window: Option<jiff::Timestamp>,
    /// Its closed gates, each as "gate NAME: why" (empty while all are open).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed_gates: Vec<String>,
}

/// One node in a [`ClusterReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The Node's name.
    pub name: String,
    /// The policy that selects it, if any.
    #[serde(default)]
    pub policy: Option<String>,
    /// Its update phase, as the node agent reports it (`Idle`, `Downloading`, `Draining`, ...).
    pub phase: String,
    /// The version it runs.
    #[serde(default)]
    pub current_version: Option<String>,
    /// The version the operator wants it on.
    #[serde(default)]
    pub target_version: Option<String>,
    /// Whether it holds a reboot grant.
    #[serde(default)]
    pub granted: bool,
    /// Why the operator keeps it waiting (`OutsideWindow`, `MaxUnavailable`, `Halted`, ...).
    #[serde(default)]
    pub waiting_reason: Option<String>,
    /// The same, for humans.
    #[serde(default)]
    pub waiting_message: Option<String>,
    /// The node's last error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Download progress in percent, while downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress: Option<u8>,
}

/// Whether a URL's host (as `host_str` gives it: `localhost`, `127.0.0.1`, `[::1]`) names this
/// machine, where plain HTTP is allowed without asking; the engine and the CLI refuse it
/// elsewhere unless told.
pub fn is_loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The admin bearer tokens in a token file (the server's `admin-tokens`, the CLI's and the
/// operator's `--token-file`s), with their line numbers: one per line, surrounding whitespace
/// trimmed, blank lines and `#` comments skipped.
pub fn token_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Counts in bodies: JSON has one kind of number, and a whole number written with a fraction
/// (`3.0`, as some encoders write every number) is still 3, as JSON Schema's `integer` says.
/// Refuses fractions, negatives and numbers past the target type.
pub mod whole {
    use serde::de::{Deserializer, Error, Unexpected, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number, not negative")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exact as an f64; every whole f64 below it converts exactly.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    /// serde `deserialize_with` for unsigned integer fields.
    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let n = d.deserialize_any(Whole)?;
        T::try_from(n)
            .map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(n), &"a smaller number"))
    }
}

/// [`is_valid_machine_id`] as a regular expression (for the API's schema).
pub const MACHINE_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,128}$";

/// Text without control characters (for the API's schema; `char::is_control`).
pub const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// A machine id: 1-128 characters of `[A-Za-z0-9._-]` (a systemd machine id is 32 hex digits).
pub fn is_valid_machine_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_skip_blank_lines_and_comments_and_keep_line_numbers() {
        let text = "# admin tokens\n\n  first-token-0123456789  \n# old\nsecond-token-0123456789\n";
        let got: Vec<_> = token_lines(text).collect();
        assert_eq!(
            got,
            [
                (3, "first-token-0123456789"),
                (5, "second-token-0123456789")
            ]
        );
        assert_eq!(token_lines("# nothing\n\n").count(), 0);
    }

    #[test]
    fn event_kinds_use_their_wire_names() {
        for k in EventKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
    }

    #[test]
    fn counts_take_whole_numbers_however_written() {
        let t = |n: &str| {
            serde_json::from_str::<Transfer>(&format!(
                r#"{{"imageBytes":{n},"fetchedBytes":0,"localBytes":0,"delta":false}}"#
            ))
            .map(|t| t.image_bytes)
        };
        assert_eq!(t("7").unwrap(), 7);
        assert_eq!(t("7.0").unwrap(), 7);
        assert_eq!(t("7e3").unwrap(), 7000);
        assert_eq!(t("18446744073709551615").unwrap(), u64::MAX);
        for bad in ["7.5", "-1", "-1.0", "1e20", "\"7\"", "null"] {
            assert!(t(bad).is_err(), "{bad} was taken");
        }
        let p = |n: &str| {
            serde_json::from_str::<PolicyReport>(&format!(
                r#"{{"name":"p","channel":"c","nodes":{n}}}"#
            ))
            .map(|p| p.nodes)
        };
        assert_eq!(p("3.0").unwrap(), 3);
        assert!(p("4294967296").is_err(), "past u32 was taken");
        assert_eq!(
            serde_json::from_str::<PolicyReport>(r#"{"name":"p","channel":"c"}"#)
                .unwrap()
                .nodes,
            0,
            "a missing count is still 0"
        );
    }

    #[test]
    fn no_update_is_null() {
        let r = CheckResponse { update: None };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"update":null}"#);
    }

    proptest::proptest! {
        /// The API schema's patterns say what the server's checks say.
        #[test]
        fn the_schema_patterns_agree_with_the_checks(
            s in "[A-Za-z0-9._\\-]{0,130}|.{0,70}|[\\x00-\\x20\\u{7f}-\\u{a0}a-z]{0,5}",
        ) {
            let id = regex::Regex::new(MACHINE_ID_PATTERN).unwrap();
            proptest::prop_assert_eq!(id.is_match(&s), is_valid_machine_id(&s));
            let name = regex::Regex::new(crate::manifest::NAME_PATTERN).unwrap();
            proptest::prop_assert_eq!(name.is_match(&s), crate::manifest::is_valid_name(&s));
            let plain = regex::Regex::new(NO_CONTROL_PATTERN).unwrap();
            proptest::prop_assert_eq!(plain.is_match(&s), !s.chars().any(char::is_control));
        }
    }
}
