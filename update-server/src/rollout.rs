//! Phased rollout, as pure functions: a machine's place in a rollout, the fraction of a wave
//! schedule open at `now`, and which release (if any) a machine is offered. No clock, no store.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::gate::Gating;

/// One step of a wave schedule: `after` the promotion, `fraction` of the machines are offered
/// the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Time since promotion at which this step opens (`"0s"`, `"90m"`, `"1h"`, `"1d"`, or a
    /// number of seconds).
    #[serde(with = "duration_text")]
    #[schemars(schema_with = "duration_text::schema")]
    pub after: Duration,
    /// Fraction of machines in [0, 1] offered the target once this step is open.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: f64,
    /// With a health gate: how long this wave soaks before the next may open, and how long
    /// each of its machines has to report healthy (default: the gate's).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration_text::option"
    )]
    #[schemars(schema_with = "duration_text::schema")]
    pub soak: Option<Duration>,
}

/// The schedule used when a promotion names none: everyone, at once.
pub fn immediate() -> Vec<Wave> {
    vec![Wave {
        after: Duration::ZERO,
        fraction: 1.0,
        soak: None,
    }]
}

/// Why a wave schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidWaves(pub String);

impl fmt::Display for InvalidWaves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a schedule: 1-64 steps, fractions in [0, 1], `after` and `fraction` both
/// non-decreasing (a rollout never shrinks).
pub fn validate_waves(waves: &[Wave]) -> Result<(), InvalidWaves> {
    if waves.is_empty() || waves.len() > 64 {
        return Err(InvalidWaves(format!(
            "a wave schedule has 1 to 64 steps, got {}",
            waves.len()
        )));
    }
    for (i, w) in waves.iter().enumerate() {
        if !(0.0..=1.0).contains(&w.fraction) {
            return Err(InvalidWaves(format!(
                "wave {i}: fraction {} is not within [0, 1]",
                w.fraction
            )));
        }
        if w.soak.is_some_and(|s| s > MAX_AFTER) {
            return Err(InvalidWaves(format!("wave {i}: soak is more than a year")));
        }
        if w.after > MAX_AFTER {
            return Err(InvalidWaves(format!(
                "wave {i}: after {}s is more than a year",
                w.after.as_secs()
            )));
        }
        if let Some(prev) = i.checked_sub(1).map(|p| waves[p]) {
            if w.after < prev.after {
                return Err(InvalidWaves(format!(
                    "wave {i}: after must not be earlier than wave {}'s",
                    i - 1
                )));
            }
            if w.fraction < prev.fraction {
                return Err(InvalidWaves(format!(
                    "wave {i}: fraction {} is smaller than wave {}'s {}",
                    w.fraction,
                    i - 1,
                    prev.fraction
                )));
            }
        }
    }
    Ok(())
}

const MAX_AFTER: Duration = Duration::from_secs(366 * 24 * 3600);

/// A machine's place in the rollout of `target`: a stable value in [0, 1) derived from
/// sha256(machine id, target version). The same machine lands elsewhere for the next version, so
/// the same machines are not always first.
pub fn place(machine_id: &str, target: &Version) -> f64 {
    let mut h = Sha256::new();
    h.update(b"slipway-rollout-v1\0");
    h.update(machine_id.as_bytes());
    h.update(b"\0");
    h.update(target.to_string().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits fit an f64 exactly, so the result is uniform and strictly below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The fraction open at `now` for a schedule promoted at `promoted_at`: that of the latest
/// step whose time has come, 0 before the first.
pub fn fraction_at(waves: &[Wave], promoted_at: Timestamp, now: Timestamp) -> f64 {
    let elapsed = now.duration_since(promoted_at);
    let mut open = 0.0;
    for w in waves {
        match SignedDuration::try_from(w.after) {
            Ok(after) if elapsed >= after => open = w.fraction,
            _ => break,
        }
    }
    open
}

/// Whether a machine at `place` is inside a rollout open to `fraction`.
pub fn in_wave(place: f64, fraction: f64) -> bool {
    place < fraction
}

/// A published release as the rollout sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseInfo {
    /// Its version.
    pub version: Version,
    /// When nodes stop accepting it.
    pub expires: Timestamp,
    /// Machines below this version must pass through an intermediate release first.
    pub min_from_version: Option<Version>,
    /// An advisory is set on it: machines running it get the target at once.
    pub advised: bool,
    /// It is a floor: machines older than it pass through it on the way to anything newer.
    pub floor: bool,
}

/// A channel as the rollout sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChannelPlan<'a> {
    /// The promoted version, if any.
    pub target: Option<&'a Version>,
    /// The promotion's wave schedule.
    pub waves: &'a [Wave],
    /// When the target was promoted.
    pub promoted_at: Timestamp,
    /// A health-gated rollout's progress: its open waves, not the clock, set the fraction.
    pub gating: Option<&'a Gating>,
    /// A paused channel offers nothing.
    pub paused: bool,
    /// Every release published on the channel.
    pub releases: &'a [ReleaseInfo],
}

impl ChannelPlan<'_> {
    /// The fraction of machines offered the target at `now`.
    pub fn fraction(&self, now: Timestamp) -> f64 {
        match self.gating {
            Some(g) => g.open_fraction(self.waves),
            None => fraction_at(self.waves, self.promoted_at, now),
        }
    }
}

/// What a machine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Offer this version.
    Offer {
        /// The version offered (the target, or a floor on the way to it).
        version: Version,
        /// Why now.
        why: OfferReason,
    },
    /// Offer nothing.
    Stay(StayReason),
}

/// Why a machine is offered an update now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OfferReason {
    /// Its place is inside the open fraction.
    Wave {
        /// The machine's place.
        place: f64,
        /// The fraction open now.
        fraction: f64,
    },
    /// It runs a release with an advisory: waves are bypassed.
    Advisory,
}

/// Why a machine is offered nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StayReason {
    /// Nothing is promoted on the channel.
    NoTarget,
    /// The channel is paused.
    Paused,
    /// The machine runs the target or something newer.
    UpToDate,
    /// The machine's place is not yet inside the open fraction.
    NotYet {
        /// The machine's place.
        place: f64,
        /// The fraction open now.
        fraction: f64,
    },
    /// The release it would get has expired (published releases are immutable: publish and
    /// promote a new version).
    Expired,
}

impl StayReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StayReason::NoTarget => "no-target",
            StayReason::Paused => "paused",
            StayReason::UpToDate => "up-to-date",
            StayReason::NotYet { .. } => "not-yet",
            StayReason::Expired => "expired",
        }
    }
}

fn newer(a: &Version, b: &Version) -> bool {
    a.cmp_precedence(b) == Ordering::Greater
}

/// Decides what a machine running `running` is offered at `now`.
///
/// A paused channel offers nothing. Otherwise a machine older than the target is offered an
/// update when its place is inside the open fraction, or at once when it runs an advised
/// release. What it is offered is the target, unless a floor lies between: the oldest floor
/// newer than what it runs, or the oldest release satisfying the target's `minFromVersion`.
pub fn decide(
    plan: &ChannelPlan<'_>,
    machine_id: &str,
    running: &Version,
    now: Timestamp,
) -> Decision {
    decide_placed(plan, |target| place(machine_id, target), running, now)
}

/// [`decide`] for a machine whose place in the rollout of a target is `place_of(target)`
/// (a Cincinnati client may state its own, as `rollout_wariness`).
pub fn decide_placed(
    plan: &ChannelPlan<'_>,
    place_of: impl FnOnce(&Version) -> f64,
    running: &Version,
    now: Timestamp,
) -> Decision {
    if plan.paused {
        return Decision::Stay(StayReason::Paused);
    }
    let Some(target) = plan.target else {
        return Decision::Stay(StayReason::NoTarget);
    };
    let Some(target_info) = plan.releases.iter().find(|r| r.version == *target) else {
        return Decision::Stay(StayReason::NoTarget);
    };
    if !newer(target, running) {
        return Decision::Stay(StayReason::UpToDate);
    }
    let advised = plan
        .releases
        .iter()
        .any(|r| r.advised && r.version.cmp_precedence(running) == Ordering::Equal);
    let why = if advised {
        OfferReason::Advisory
    } else {
        let place = place_of(target);
        let fraction = plan.fraction(now);
        if !in_wave(place, fraction) {
            return Decision::Stay(StayReason::NotYet { place, fraction });
        }
        OfferReason::Wave { place, fraction }
    };
    let step = next_step(plan.releases, target_info, running);
    if step.expires <= now {
        return Decision::Stay(StayReason::Expired);
    }
    Decision::Offer {
        version: step.version.clone(),
        why,
    }
}

/// The release a machine running `running` must take next on its way to `target`.
fn next_step<'a>(
    releases: &'a [ReleaseInfo],
    target: &'a ReleaseInfo,
    running: &Version,
) -> &'a ReleaseInfo {
    let between =
        |r: &&ReleaseInfo| newer(&r.version, running) && newer(&target.version, &r.version);
    let explicit = releases.iter().filter(between).filter(|r| r.floor);
    let required = target
        .min_from_version
        .as_ref()
        .filter(|min| newer(min, running))
        .into_iter()
        .flat_map(|min| {
            releases
                .iter()
                .filter(between)
                .filter(move |r| r.version.cmp_precedence(min) != Ordering::Less)
        });
    explicit
        .chain(required)
        .min_by(|a, b| a.version.cmp_precedence(&b.version))
        .unwrap_or(target)
}

/// Durations as short text (`"90s"`, `"15m"`, `"1h"`, `"2d"`, `"1h30m"`) or a number of
/// seconds.
pub mod duration_text {
    use super::*;

    /// Parses `"1h30m"`-style text: integers with units `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 12 {
                return Err(format!(
                    "invalid duration {s:?} (try \"90s\", \"1h\", \"2d\")"
                ));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {s:?}"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                "d" => Duration::from_secs(n * 86_400),
                _ => {
                    return Err(format!(
                        "invalid duration {s:?}: each number needs a unit of ms, s, m, h or d"
                    ));
                }
            };
            rest = &rest[unit_len..];
            total = total
                .checked_add(unit)
                .ok_or_else(|| format!("duration {s:?} overflows"))?;
        }
        Ok(total)
    }

    /// Formats as the largest exact unit: `"0s"`, `"90s"`, `"1h"`, `"1500ms"`.
    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() != 0 {
            return format!("{}ms", d.as_millis());
        }
        let s = d.as_secs();
        match s {
            0 => "0s".into(),
            s if s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }

    /// The schema of what [`deserialize`] takes (for the API's document).
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: integers with units ms, s, m, h or d (\"90m\", \"1h30m\"), or a number of seconds.",
            "oneOf": [
                {"type": "string", "pattern": "^\\s*([0-9]{1,12}(ms|s|m|h|d))+\\s*$"},
                {"type": "integer", "minimum": 0, "maximum": super::MAX_AFTER.as_secs()},
            ],
        })
    }

    /// serde for `Option<Duration>`: text when set.
    pub mod option {
        use super::*;

        /// serde: serialize as text.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// serde: text or a non-negative number of seconds.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }

    /// serde: serialize as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// serde: text or a non-negative number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Secs(#[serde(deserialize_with = "slipway_api::wire::whole::deserialize")] u64),
            Text(String),
        }
        match Text::deserialize(d)? {
            Text::Secs(n) => Ok(Duration::from_secs(n)),
            Text::Text(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn waves() -> Vec<Wave> {
        let w = |secs, fraction| Wave {
            after: Duration::from_secs(secs),
            fraction,
            soak: None,
        };
        vec![w(0, 0.01), w(3600, 0.1), w(4 * 3600, 0.5), w(86_400, 1.0)]
    }

    #[test]
    fn fraction_at_each_edge_of_each_step() {
        let p = t("2026-01-01T00:00:00Z");
        let ns = SignedDuration::from_nanos(1);
        let at = |secs: i64| p + SignedDuration::from_secs(secs);
        let table = [
            (p - ns, 0.0),
            (p, 0.01),
            (at(3600) - ns, 0.01),
            (at(3600), 0.1),
            (at(4 * 3600) - ns, 0.1),
            (at(4 * 3600), 0.5),
            (at(86_400) - ns, 0.5),
            (at(86_400), 1.0),
            (at(365 * 86_400), 1.0),
        ];
        for (now, want) in table {
            assert_eq!(fraction_at(&waves(), p, now), want, "at {now}");
        }
    }

    #[test]
    fn a_delayed_first_step_opens_nothing_before_it() {
        let p = t("2026-01-01T00:00:00Z");
        let w = [Wave {
            after: Duration::from_secs(60),
            fraction: 1.0,
            soak: None,
        }];
        assert_eq!(fraction_at(&w, p, p + SignedDuration::from_secs(59)), 0.0);
        assert_eq!(fraction_at(&w, p, p + SignedDuration::from_secs(60)), 1.0);
    }

    #[test]
    fn place_is_stable_uniform_and_depends_on_the_version() {
        let a = place("machine-1", &v("1.0.0"));
        assert_eq!(a, place("machine-1", &v("1.0.0")));
        assert_ne!(a, place("machine-1", &v("1.0.1")));
        assert!((0.0..1.0).contains(&a));
        let n = 20_000;
        let below = (0..n)
            .filter(|i| place(&format!("m{i}"), &v("2.0.0")) < 0.25)
            .count();
        let share = below as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.01, "{share}");
    }

    #[test]
    fn in_wave_is_strict_at_the_edge() {
        assert!(!in_wave(0.1, 0.1));
        assert!(in_wave(0.099_999, 0.1));
        assert!(!in_wave(0.0, 0.0));
        assert!(in_wave(0.999_999, 1.0));
    }

    fn rel(ver: &str) -> ReleaseInfo {
        ReleaseInfo {
            version: v(ver),
            expires: t("2099-01-01T00:00:00Z"),
            min_from_version: None,
            advised: false,
            floor: false,
        }
    }

    #[test]
    fn decisions() {
        let now = t("2026-01-01T12:00:00Z");
        let target = v("3.0.0");
        let all = immediate();
        let none = [Wave {
            after: Duration::ZERO,
            fraction: 0.0,
            soak: None,
        }];
        let mut advised = rel("1.0.0");
        advised.advised = true;
        let mut floor = rel("2.0.0");
        floor.floor = true;
        let mut needs_25 = rel("3.0.0");
        needs_25.min_from_version = Some(v("2.5.0"));
        let mut expired = rel("3.0.0");
        expired.expires = now;
        let plain = [rel("1.0.0"), rel("2.0.0"), rel("3.0.0")];
        let with_advisory = [advised, rel("2.0.0"), rel("3.0.0")];
        let with_floor = [rel("1.0.0"), floor.clone(), rel("3.0.0")];
        let with_min_from = [rel("1.0.0"), rel("2.6.0"), rel("2.5.1"), needs_25];
        let with_expired = [rel("1.0.0"), expired];
        let offer = |ver: &str| Some(v(ver));
        #[allow(clippy::type_complexity)]
        let table: Vec<(
            &str,
            &[ReleaseInfo],
            &[Wave],
            bool,
            &str,
            Option<Version>,
            &str,
        )> = vec![
            (
                "everyone, now",
                &plain,
                &all,
                false,
                "1.0.0",
                offer("3.0.0"),
                "wave",
            ),
            ("paused", &plain, &all, true, "1.0.0", None, "paused"),
            (
                "up to date",
                &plain,
                &all,
                false,
                "3.0.0",
                None,
                "up-to-date",
            ),
            (
                "newer than target",
                &plain,
                &all,
                false,
                "4.0.0",
                None,
                "up-to-date",
            ),
            (
                "build metadata is not newer",
                &plain,
                &all,
                false,
                "3.0.0+b1",
                None,
                "up-to-date",
            ),
            (
                "wave closed",
                &plain,
                &none,
                false,
                "1.0.0",
                None,
                "not-yet",
            ),
            (
                "advisory bypasses waves",
                &with_advisory,
                &none,
                false,
                "1.0.0",
                offer("3.0.0"),
                "advisory",
            ),
            (
                "advisory on another version",
                &with_advisory,
                &none,
                false,
                "2.0.0",
                None,
                "not-yet",
            ),
            (
                "paused beats advisory",
                &with_advisory,
                &all,
                true,
                "1.0.0",
                None,
                "paused",
            ),
            (
                "floor first",
                &with_floor,
                &all,
                false,
                "1.0.0",
                offer("2.0.0"),
                "wave",
            ),
            (
                "at the floor",
                &with_floor,
                &all,
                false,
                "2.0.0",
                offer("3.0.0"),
                "wave",
            ),
            (
                "past the floor",
                &with_floor,
                &all,
                false,
                "2.1.0",
                offer("3.0.0"),
                "wave",
            ),
            (
                "minFromVersion picks oldest satisfying",
                &with_min_from,
                &all,
                false,
                "1.0.0",
                offer("2.5.1"),
                "wave",
            ),
            (
                "minFromVersion met",
                &with_min_from,
                &all,
                false,
                "2.5.0",
                offer("3.0.0"),
                "wave",
            ),
            (
                "expired target",
                &with_expired,
                &all,
                false,
                "1.0.0",
                None,
                "expired",
            ),
        ];
        for (name, releases, waves, paused, running, want, why) in table {
            let plan = ChannelPlan {
                target: Some(&target),
                waves,
                promoted_at: t("2026-01-01T00:00:00Z"),
                gating: None,
                paused,
                releases,
            };
            let got = decide(&plan, "machine-a", &v(running), now);
            match (&got, &want) {
                (Decision::Offer { version, why: w }, Some(want)) => {
                    assert_eq!(version, want, "{name}");
                    let label = match w {
                        OfferReason::Wave { .. } => "wave",
                        OfferReason::Advisory => "advisory",
                    };
                    assert_eq!(label, why, "{name}");
                }
                (Decision::Stay(r), None) => assert_eq!(r.as_str(), why, "{name}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_target_offers_nothing() {
        let releases = [rel("1.0.0")];
        let plan = ChannelPlan {
            target: None,
            waves: &[],
            promoted_at: t("2026-01-01T00:00:00Z"),
            gating: None,
            paused: false,
            releases: &releases,
        };
        let d = decide(&plan, "m", &v("0.1.0"), t("2026-01-02T00:00:00Z"));
        assert_eq!(d, Decision::Stay(StayReason::NoTarget));
    }

    #[test]
    fn a_machine_exactly_at_the_fraction_waits_and_just_below_is_offered() {
        let target = v("3.0.0");
        let releases = [rel("1.0.0"), rel("3.0.0")];
        let p = place("edge-machine", &target);
        let now = t("2026-01-01T00:00:00Z");
        for (fraction, offered) in [(p, false), (p + 1e-12, true)] {
            let w = [Wave {
                after: Duration::ZERO,
                fraction,
                soak: None,
            }];
            let plan = ChannelPlan {
                target: Some(&target),
                waves: &w,
                promoted_at: now,
                gating: None,
                paused: false,
                releases: &releases,
            };
            let d = decide(&plan, "edge-machine", &v("1.0.0"), now);
            assert_eq!(
                matches!(d, Decision::Offer { .. }),
                offered,
                "fraction {fraction}"
            );
        }
    }

    #[test]
    fn wave_validation() {
        assert!(validate_waves(&waves()).is_ok());
        assert!(validate_waves(&[]).is_err());
        let mut shrinking = waves();
        shrinking[2].fraction = 0.05;
        assert!(validate_waves(&shrinking).is_err());
        let mut backwards = waves();
        backwards[2].after = Duration::from_secs(1);
        assert!(validate_waves(&backwards).is_err());
        let mut over = waves();
        over[3].fraction = 1.5;
        assert!(validate_waves(&over).is_err());
        let mut nan = waves();
        nan[3].fraction = f64::NAN;
        assert!(validate_waves(&nan).is_err());
    }

    #[test]
    fn durations_parse_and_format() {
        for (text, secs) in [
            ("0s", 0),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
        ] {
            assert_eq!(
                duration_text::parse(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["", "1", "h", "1x", "-1s", "1.5h"] {
            assert!(duration_text::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(duration_text::format(Duration::from_secs(5400)), "90m");
        assert_eq!(duration_text::format(Duration::from_secs(86_400)), "1d");
        let w: Wave = serde_json::from_str(r#"{"after": 3600, "fraction": 0.5}"#).unwrap();
        assert_eq!(w.after, Duration::from_secs(3600));
        let w: Wave = serde_json::from_str(r#"{"after": "4h", "fraction": 0.5}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"after":"4h","fraction":0.5}"#
        );
    }
}
