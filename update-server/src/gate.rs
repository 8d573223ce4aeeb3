//! Health-gated waves, as pure functions: what the machines of a rollout's open waves report
//! decides whether the next wave opens or the rollout halts. No clock, no store: the inputs are
//! each machine's outcome on the target, the persisted progress and `now`.
//!
//! A gated rollout opens its waves one at a time. Wave 0 opens when its `after` comes. Wave
//! `n + 1` opens when all of these hold:
//! - its own `after` has come (the schedule still sets the earliest time);
//! - wave `n` has soaked: its soak time has passed since it opened;
//! - no machine of the open waves is still updating within its soak time (each machine that
//!   started on the target must be healthy, have failed, or be overdue);
//! - the failures among the machines of the open waves that reached the target are at most the
//!   gate's rate.
//!
//! A failure is a machine whose latest outcome on the target is `failed` or `rolled-back`, or
//! one that started on the target (any event about it) longer than its wave's soak time ago and
//! never reported `healthy`. Whenever the failures exceed the rate, the rollout halts: the
//! channel is paused with the reason and the failing machines. Waves whose machines never
//! started (machines offline) do not hold the rollout: there is nothing to judge.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::rollout::{Wave, duration_text, place};

/// A health gate on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gate {
    /// Largest share of failures, in [0, 1], among the machines of the open waves that reached
    /// the target, for the next wave to open; above it the rollout halts.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_failure_rate: f64,
    /// How long a wave soaks before the next may open, and how long a machine has from its
    /// first event on the target to report `healthy`, for waves that set no `soak` of their own.
    #[serde(with = "duration_text", default = "default_soak")]
    #[schemars(schema_with = "duration_text::schema")]
    pub soak: Duration,
}

/// The soak time of a gate that names none.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(3600);

fn default_soak() -> Duration {
    DEFAULT_SOAK
}

impl Gate {
    /// Parses the CLI's text: `failure-rate<=2%` (or `<=0.02`).
    pub fn parse(s: &str, soak: Duration) -> Result<Self, String> {
        let s = s.trim();
        let Some(rate) = s.strip_prefix("failure-rate<=") else {
            return Err(format!(
                "unknown gate {s:?}: the gate is failure-rate<=N% (e.g. failure-rate<=2%)"
            ));
        };
        let rate = rate.trim();
        let value = match rate.strip_suffix('%') {
            Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
            None => rate.parse::<f64>(),
        }
        .map_err(|_| format!("gate {s:?}: {rate:?} is not a number or a percentage"))?;
        let gate = Gate {
            max_failure_rate: value,
            soak,
        };
        gate.validate()?;
        Ok(gate)
    }

    /// Checks the rate is in [0, 1] and the soak at most a year.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_failure_rate) {
            return Err(format!(
                "gate: failure rate {} is not within [0, 1] (0% to 100%)",
                self.max_failure_rate
            ));
        }
        if self.soak > Duration::from_secs(366 * 86_400) {
            return Err("gate: soak is more than a year".into());
        }
        Ok(())
    }

    /// The soak time of `wave`.
    pub fn soak_of(&self, wave: &Wave) -> Duration {
        wave.soak.unwrap_or(self.soak)
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failure-rate<={}%, soak {}",
            percent(self.max_failure_rate),
            duration_text::format(self.soak)
        )
    }
}

/// A share as a percentage for people: `2`, `0.5`, `33.3`.
pub fn percent(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

/// A gated rollout's progress, stored with the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gating {
    /// The gate.
    pub gate: Gate,
    /// When each wave opened, in order (the first `opened.len()` waves are open).
    #[serde(default)]
    pub opened: Vec<Timestamp>,
    /// Outcomes reported before this are not counted: the promotion, or the resumption of a
    /// halted rollout (an admin who resumes accepts the failures so far).
    pub counted_from: Timestamp,
    /// Set when the gate halted the rollout (the channel is paused too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<Halt>,
    /// When an admin last resumed a halted rollout: the last open wave soaks again from then
    /// (the outcomes before it are no longer counted, so nothing else would hold the next wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<Timestamp>,
}

impl Gating {
    /// A new gated rollout: nothing open yet.
    pub fn new(gate: Gate, promoted_at: Timestamp) -> Self {
        Self {
            gate,
            opened: Vec::new(),
            counted_from: promoted_at,
            halt: None,
            resumed_at: None,
        }
    }

    /// The fraction of machines offered the target: that of the last open wave.
    pub fn open_fraction(&self, waves: &[Wave]) -> f64 {
        self.opened
            .len()
            .checked_sub(1)
            .and_then(|i| waves.get(i))
            .map_or(0.0, |w| w.fraction)
    }
}

/// Why and when a gate halted a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Halt {
    /// When.
    pub at: Timestamp,
    /// One line for humans.
    pub reason: String,
    /// Failures counted.
    pub failed: u64,
    /// Machines of the open waves that reached the target.
    pub reached: u64,
    /// The failing machines (at most [`MAX_LISTED`]), with why each counts as failed.
    pub machines: Vec<FailingMachine>,
}

/// How many failing machines a halt names.
pub const MAX_LISTED: usize = 20;

/// A machine counted as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailingMachine {
    /// Machine id.
    pub id: String,
    /// `failed: <detail>`, `rolled-back: <detail>`, or `not healthy within 30m`.
    pub why: String,
}

/// What one machine's events about the target say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its latest outcome is `healthy`.
    Healthy,
    /// Its latest outcome is `failed` (`rolled_back` false) or `rolled-back`, with the detail.
    Failed {
        /// Whether it fell back rather than failed.
        rolled_back: bool,
        /// What it said.
        detail: String,
    },
    /// It reported progress (downloading, staged, rebooting, booted) but no outcome yet.
    Updating,
}

/// One machine of a channel that reported about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineOutcome {
    /// Machine id.
    pub machine_id: String,
    /// Its first event about the target (counted ones only).
    pub first_at: Timestamp,
    /// What its events say.
    pub outcome: Outcome,
}

/// One wave's machines that reached the target, by state.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct WaveCounts {
    /// Machines that reported about the target.
    pub reached: u64,
    /// Healthy on it.
    pub healthy: u64,
    /// Failed or rolled back.
    pub failed: u64,
    /// Still updating past their soak time (counted as failures).
    pub overdue: u64,
    /// Still updating within their soak time.
    pub updating: u64,
}

impl WaveCounts {
    fn add(&mut self, o: &WaveCounts) {
        self.reached += o.reached;
        self.healthy += o.healthy;
        self.failed += o.failed;
        self.overdue += o.overdue;
        self.updating += o.updating;
    }

    /// Failures as the gate counts them.
    pub fn failures(&self) -> u64 {
        self.failed + self.overdue
    }
}

/// The wave a machine belongs to in the rollout of `target`: the first whose fraction its
/// place is below; `None` for a machine outside every wave.
pub fn wave_of(waves: &[Wave], machine_id: &str, target: &Version) -> Option<usize> {
    let p = place(machine_id, target);
    waves.iter().position(|w| p < w.fraction)
}

/// Counts outcomes per wave (machines outside every wave are left out) and lists the failing
/// machines of the first `open` waves (at most [`MAX_LISTED`], oldest start first).
pub fn count(
    waves: &[Wave],
    gate: &Gate,
    target: &Version,
    outcomes: &[MachineOutcome],
    open: usize,
    now: Timestamp,
) -> (Vec<WaveCounts>, Vec<FailingMachine>) {
    let mut counts = vec![WaveCounts::default(); waves.len()];
    let mut failing: Vec<(Timestamp, FailingMachine)> = Vec::new();
    for m in outcomes {
        let Some(i) = wave_of(waves, &m.machine_id, target) else {
            continue;
        };
        let soak = gate.soak_of(&waves[i]);
        let c = &mut counts[i];
        c.reached += 1;
        let why = match &m.outcome {
            Outcome::Healthy => {
                c.healthy += 1;
                None
            }
            Outcome::Failed {
                rolled_back,
                detail,
            } => {
                c.failed += 1;
                let kind = if *rolled_back {
                    "rolled-back"
                } else {
                    "failed"
                };
                Some(if detail.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{kind}: {detail}")
                })
            }
            Outcome::Updating => {
                if overdue(m.first_at, soak, now) {
                    c.overdue += 1;
                    Some(format!(
                        "not healthy within {}",
                        duration_text::format(soak)
                    ))
                } else {
                    c.updating += 1;
                    None
                }
            }
        };
        if let Some(why) = why.filter(|_| i < open) {
            failing.push((
                m.first_at,
                FailingMachine {
                    id: m.machine_id.clone(),
                    why,
                },
            ));
        }
    }
    failing.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let failing = failing
        .into_iter()
        .take(MAX_LISTED)
        .map(|(_, f)| f)
        .collect();
    (counts, failing)
}

fn overdue(first_at: Timestamp, soak: Duration, now: Timestamp) -> bool {
    SignedDuration::try_from(soak).is_ok_and(|s| now.duration_since(first_at) >= s)
}

/// One wave's state, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum WaveState {
    /// Open, and soaked (or the last wave).
    #[serde(rename_all = "camelCase")]
    Open {
        /// When it opened.
        since: Timestamp,
    },
    /// Open, soaking until `until`.
    #[serde(rename_all = "camelCase")]
    Soaking {
        /// When it opened.
        since: Timestamp,
        /// When its soak ends.
        until: Timestamp,
    },
    /// Next to open; its time has not come.
    #[serde(rename_all = "camelCase")]
    WaitingOnTime {
        /// When it may open.
        at: Timestamp,
    },
    /// Next to open; time has come but the gate holds it.
    #[serde(rename_all = "camelCase")]
    Gated {
        /// Why.
        why: String,
    },
    /// The rollout halted (this wave was open).
    #[serde(rename_all = "camelCase")]
    Halted {
        /// When it had opened.
        since: Timestamp,
    },
    /// Waits for an earlier wave.
    Later,
}

impl WaveState {
    /// A short label (`open`, `soaking`, `waiting-on-time`, `gated`, `halted`, `later`).
    pub fn label(&self) -> &'static str {
        match self {
            WaveState::Open { .. } => "open",
            WaveState::Soaking { .. } => "soaking",
            WaveState::WaitingOnTime { .. } => "waiting-on-time",
            WaveState::Gated { .. } => "gated",
            WaveState::Halted { .. } => "halted",
            WaveState::Later => "later",
        }
    }
}

/// What the gate does now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing changes.
    Hold,
    /// Open this wave (always the next one).
    Open(usize),
    /// Halt the rollout.
    Halt {
        /// One line for humans.
        reason: String,
    },
}

/// The gate's verdict: what to do, and each wave's state (as it is before the action).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// Each wave's state.
    pub waves: Vec<WaveState>,
    /// The open waves' counts, summed.
    pub totals: WaveCounts,
}

/// Decides what a gated rollout does at `now`, from its schedule, its progress, each wave's
/// counts (see [`count`]) and whether the channel is paused (a paused rollout opens nothing and
/// does not halt; a halted one stays halted until an admin resumes it).
pub fn evaluate(
    waves: &[Wave],
    gating: &Gating,
    promoted_at: Timestamp,
    counts: &[WaveCounts],
    paused: bool,
    now: Timestamp,
) -> Verdict {
    let open = gating.opened.len().min(waves.len());
    let mut totals = WaveCounts::default();
    for c in counts.iter().take(open) {
        totals.add(c);
    }
    let gate = &gating.gate;
    let mut states: Vec<WaveState> = Vec::with_capacity(waves.len());
    if gating.halt.is_some() {
        for (i, _) in waves.iter().enumerate() {
            states.push(match gating.opened.get(i) {
                Some(&since) => WaveState::Halted { since },
                None => WaveState::Later,
            });
        }
        return Verdict {
            action: Action::Hold,
            waves: states,
            totals,
        };
    }
    for (i, w) in waves.iter().enumerate().take(open) {
        let since = gating.opened[i];
        // The last open wave soaks again after a resume.
        let soak_start = match gating.resumed_at {
            Some(r) if i + 1 == open => since.max(r),
            _ => since,
        };
        let until = soak_start.saturating_add(soak_signed(gate.soak_of(w)));
        let until = until.unwrap_or(since);
        states.push(if now < until && i + 1 < waves.len() {
            WaveState::Soaking { since, until }
        } else {
            WaveState::Open { since }
        });
    }
    let failures = totals.failures();
    let over = above_rate(failures, totals.reached, gate.max_failure_rate);
    let mut action = Action::Hold;
    if open < waves.len() {
        let due = promoted_at
            .saturating_add(soak_signed(waves[open].after))
            .unwrap_or(promoted_at);
        let soaking = states.last().and_then(|s| match s {
            WaveState::Soaking { until, .. } => Some(*until),
            _ => None,
        });
        let state = if over {
            WaveState::Gated {
                why: failure_line(failures, totals.reached, gate),
            }
        } else if let Some(until) = soaking {
            WaveState::Gated {
                // Waves are numbered from 1 for people (as `slipway status` and the
                // dashboard list them).
                why: format!("wave {open} soaks until {until}"),
            }
        } else if totals.updating > 0 {
            WaveState::Gated {
                why: format!(
                    "{} {} of the open waves {} still updating",
                    totals.updating,
                    if totals.updating == 1 {
                        "machine"
                    } else {
                        "machines"
                    },
                    if totals.updating == 1 { "is" } else { "are" }
                ),
            }
        } else if now < due {
            WaveState::WaitingOnTime { at: due }
        } else {
            if paused {
                WaveState::Gated {
                    why: "the channel is paused".into(),
                }
            } else {
                action = Action::Open(open);
                WaveState::Gated {
                    why: "opening".into(),
                }
            }
        };
        states.push(state);
        states.extend((open + 1..waves.len()).map(|_| WaveState::Later));
    }
    if over && !paused {
        action = Action::Halt {
            reason: failure_line(failures, totals.reached, gate),
        };
    }
    Verdict {
        action,
        waves: states,
        totals,
    }
}

/// Whether `failures` of `reached` exceed `rate`, in whole numbers: a rate is kept to a
/// hundredth of a percent, so "at most 29%" lets exactly 29 of 100 through (0.29 × 100 in
/// floating point is 28.999…).
fn above_rate(failures: u64, reached: u64, rate: f64) -> bool {
    let per_10k = (rate * 10_000.0).round() as u128;
    reached > 0 && u128::from(failures) * 10_000 > per_10k * u128::from(reached)
}

fn failure_line(failures: u64, reached: u64, gate: &Gate) -> String {
    format!(
        "{failures} of {reached} machine{} that reached the target failed ({}%), above the gate's {}%",
        if reached == 1 { "" } else { "s" },
        percent(failures as f64 / reached.max(1) as f64),
        percent(gate.max_failure_rate)
    )
}

fn soak_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t("2026-01-01T00:00:00Z") + SignedDuration::from_secs(secs)
    }

    fn wave(after: u64, fraction: f64, soak: Option<u64>) -> Wave {
        Wave {
            after: Duration::from_secs(after),
            fraction,
            soak: soak.map(Duration::from_secs),
        }
    }

    fn gate(rate: f64) -> Gate {
        Gate {
            max_failure_rate: rate,
            soak: Duration::from_secs(600),
        }
    }

    fn counts(reached: u64, healthy: u64, failed: u64, overdue: u64, updating: u64) -> WaveCounts {
        WaveCounts {
            reached,
            healthy,
            failed,
            overdue,
            updating,
        }
    }

    fn gating(rate: f64, opened: &[i64]) -> Gating {
        Gating {
            gate: gate(rate),
            opened: opened.iter().map(|&s| at(s)).collect(),
            counted_from: at(0),
            halt: None,
            resumed_at: None,
        }
    }

    #[test]
    fn the_gate_parses_percentages_and_shares_and_refuses_the_rest() {
        let soak = Duration::from_secs(60);
        assert_eq!(
            Gate::parse("failure-rate<=2%", soak)
                .unwrap()
                .max_failure_rate,
            0.02
        );
        assert_eq!(
            Gate::parse(" failure-rate<=0.5 ", soak)
                .unwrap()
                .max_failure_rate,
            0.5
        );
        assert_eq!(
            Gate::parse("failure-rate<=0%", soak)
                .unwrap()
                .max_failure_rate,
            0.0
        );
        for bad in [
            "failure-rate<=101%",
            "failure-rate<=-1%",
            "failure-rate<=x",
            "failure-rate>=2%",
            "errors<=2%",
            "failure-rate<=NaN",
        ] {
            assert!(Gate::parse(bad, soak).is_err(), "{bad}");
        }
        assert_eq!(
            Gate::parse("failure-rate<=2.5%", soak).unwrap().to_string(),
            "failure-rate<=2.5%, soak 1m"
        );
    }

    /// One row: the schedule's state, the counts of each wave, and what must happen.
    struct Row {
        name: &'static str,
        rate: f64,
        opened: &'static [i64],
        counts: [WaveCounts; 3],
        paused: bool,
        now: i64,
        action: Action,
        states: [&'static str; 3],
    }

    #[test]
    fn table() {
        // Waves: 10% at 0 s (soak 600 s, the gate's), 50% at 60 s (soak 100 s), all at 120 s.
        let waves = [
            wave(0, 0.1, None),
            wave(60, 0.5, Some(100)),
            wave(120, 1.0, None),
        ];
        let none = WaveCounts::default();
        let rows = [
            Row {
                name: "nothing open, first wave due: opens",
                rate: 0.02,
                opened: &[],
                counts: [none; 3],
                paused: false,
                now: 0,
                action: Action::Open(0),
                states: ["gated", "later", "later"],
            },
            Row {
                name: "paused: nothing opens",
                rate: 0.02,
                opened: &[],
                counts: [none; 3],
                paused: true,
                now: 0,
                action: Action::Hold,
                states: ["gated", "later", "later"],
            },
            Row {
                name: "first wave soaking",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 10, 0, 0, 0), none, none],
                paused: false,
                now: 599,
                action: Action::Hold,
                states: ["soaking", "gated", "later"],
            },
            Row {
                name: "soaked, all healthy: second opens",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 10, 0, 0, 0), none, none],
                paused: false,
                now: 600,
                action: Action::Open(1),
                states: ["open", "gated", "later"],
            },
            Row {
                name: "soaked, but machines still updating: gated",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 8, 0, 0, 2), none, none],
                paused: false,
                now: 600,
                action: Action::Hold,
                states: ["open", "gated", "later"],
            },
            Row {
                name: "one failure in ten above 2%: halts while soaking",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 5, 1, 0, 4), none, none],
                paused: false,
                now: 30,
                action: Action::Halt {
                    reason: "1 of 10 machines that reached the target failed (10%), above the gate's 2%".into(),
                },
                states: ["soaking", "gated", "later"],
            },
            Row {
                name: "an overdue machine is a failure",
                rate: 0.05,
                opened: &[0],
                counts: [counts(10, 9, 0, 1, 0), none, none],
                paused: false,
                now: 600,
                action: Action::Halt {
                    reason: "1 of 10 machines that reached the target failed (10%), above the gate's 5%".into(),
                },
                states: ["open", "gated", "later"],
            },
            Row {
                name: "failures at the rate pass",
                rate: 0.1,
                opened: &[0],
                counts: [counts(10, 9, 1, 0, 0), none, none],
                paused: false,
                now: 600,
                action: Action::Open(1),
                states: ["open", "gated", "later"],
            },
            Row {
                name: "paused with failures above the rate: no halt",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 5, 5, 0, 0), none, none],
                paused: true,
                now: 600,
                action: Action::Hold,
                states: ["open", "gated", "later"],
            },
            Row {
                name: "machines outside the open waves are not counted",
                rate: 0.02,
                opened: &[0],
                counts: [counts(10, 10, 0, 0, 0), counts(5, 0, 5, 0, 0), none],
                paused: false,
                now: 600,
                action: Action::Open(1),
                states: ["open", "gated", "later"],
            },
            Row {
                name: "second wave soaking: the third is gated",
                rate: 0.02,
                opened: &[0, 600],
                counts: [counts(1, 1, 0, 0, 0), counts(4, 4, 0, 0, 0), none],
                paused: false,
                now: 650,
                action: Action::Hold,
                states: ["open", "soaking", "gated"],
            },
            Row {
                name: "second wave's own soak (100 s)",
                rate: 0.02,
                opened: &[0, 600],
                counts: [counts(1, 1, 0, 0, 0), counts(4, 4, 0, 0, 0), none],
                paused: false,
                now: 700,
                action: Action::Open(2),
                states: ["open", "open", "gated"],
            },
            Row {
                name: "no machine reached the target: nothing to judge, opens on time",
                rate: 0.0,
                opened: &[0],
                counts: [none; 3],
                paused: false,
                now: 600,
                action: Action::Open(1),
                states: ["open", "gated", "later"],
            },
            Row {
                name: "all open: failures still halt",
                rate: 0.2,
                opened: &[0, 600, 700],
                counts: [counts(1, 1, 0, 0, 0), counts(4, 4, 0, 0, 0), counts(5, 1, 4, 0, 0)],
                paused: false,
                now: 700,
                action: Action::Halt {
                    reason: "4 of 10 machines that reached the target failed (40%), above the gate's 20%".into(),
                },
                states: ["open", "open", "open"],
            },
            Row {
                name: "all open and healthy: nothing to do",
                rate: 0.2,
                opened: &[0, 600, 700],
                counts: [counts(1, 1, 0, 0, 0), counts(4, 4, 0, 0, 0), counts(5, 5, 0, 0, 0)],
                paused: false,
                now: 10_000,
                action: Action::Hold,
                states: ["open", "open", "open"],
            },
        ];
        for row in rows {
            let g = gating(row.rate, row.opened);
            let v = evaluate(&waves, &g, at(0), &row.counts, row.paused, at(row.now));
            assert_eq!(v.action, row.action, "{}", row.name);
            let labels: Vec<&str> = v.waves.iter().map(WaveState::label).collect();
            assert_eq!(labels, row.states, "{}", row.name);
        }
    }

    #[test]
    fn a_gated_wave_says_why() {
        let waves = [wave(0, 0.1, None), wave(3600, 1.0, None)];
        let g = gating(0.02, &[0]);
        let c = [counts(10, 8, 0, 0, 2), WaveCounts::default()];
        let v = evaluate(&waves, &g, at(0), &c, false, at(7200));
        assert_eq!(
            v.waves[1],
            WaveState::Gated {
                why: "2 machines of the open waves are still updating".into()
            }
        );
        let v = evaluate(&waves, &g, at(0), &c, false, at(10));
        assert_eq!(
            v.waves[1],
            WaveState::Gated {
                why: format!("wave 1 soaks until {}", at(600))
            }
        );
        let c = [counts(10, 10, 0, 0, 0), WaveCounts::default()];
        let v = evaluate(&waves, &g, at(0), &c, false, at(600));
        assert_eq!(v.waves[1], WaveState::WaitingOnTime { at: at(3600) });
        assert_eq!(v.totals, c[0]);
    }

    #[test]
    fn a_halted_rollout_holds_until_resumed() {
        let waves = [wave(0, 0.1, None), wave(0, 1.0, None)];
        let mut g = gating(0.02, &[0]);
        g.halt = Some(Halt {
            at: at(5),
            reason: "x".into(),
            failed: 1,
            reached: 1,
            machines: Vec::new(),
        });
        let c = [counts(10, 10, 0, 0, 0), WaveCounts::default()];
        let v = evaluate(&waves, &g, at(0), &c, false, at(100_000));
        assert_eq!(v.action, Action::Hold);
        let labels: Vec<&str> = v.waves.iter().map(WaveState::label).collect();
        assert_eq!(labels, ["halted", "later"]);
    }

    #[test]
    fn counting_places_machines_in_waves_and_names_the_failing_ones() {
        let target = Version::new(2, 0, 0);
        let waves = [wave(0, 0.3, Some(100)), wave(0, 1.0, None)];
        let g = gate(0.0);
        let now = at(1000);
        // Find machines in each wave.
        let ids: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
        let first: Vec<&String> = ids
            .iter()
            .filter(|id| wave_of(&waves, id, &target) == Some(0))
            .take(4)
            .collect();
        let second: Vec<&String> = ids
            .iter()
            .filter(|id| wave_of(&waves, id, &target) == Some(1))
            .take(2)
            .collect();
        let o = |id: &str, first_at: i64, outcome: Outcome| MachineOutcome {
            machine_id: id.into(),
            first_at: at(first_at),
            outcome,
        };
        let failed = |detail: &str| Outcome::Failed {
            rolled_back: false,
            detail: detail.into(),
        };
        let outcomes = [
            o(first[0], 10, Outcome::Healthy),
            o(first[1], 20, failed("sha256 mismatch")),
            o(first[2], 899, Outcome::Updating), // overdue at 999 (soak 100 s)
            o(first[3], 950, Outcome::Updating), // within its soak
            o(
                second[0],
                5,
                Outcome::Failed {
                    rolled_back: true,
                    detail: String::new(),
                },
            ),
            o(second[1], 5, Outcome::Updating), // wave 1's soak: the gate's 600 s, overdue
        ];
        let (c, failing) = count(&waves, &g, &target, &outcomes, 1, now);
        assert_eq!(c[0], counts(4, 1, 1, 1, 1));
        assert_eq!(c[1], counts(2, 0, 1, 1, 0));
        assert_eq!(
            failing,
            vec![
                FailingMachine {
                    id: first[1].clone(),
                    why: "failed: sha256 mismatch".into()
                },
                FailingMachine {
                    id: first[2].clone(),
                    why: "not healthy within 100s".into()
                },
            ]
        );
        // Every wave open: the second wave's failures are named too, oldest start first.
        let (_, failing) = count(&waves, &g, &target, &outcomes, 2, now);
        let named: Vec<&str> = failing.iter().map(|f| f.why.as_str()).collect();
        assert_eq!(
            named,
            [
                "rolled-back",
                "not healthy within 10m",
                "failed: sha256 mismatch",
                "not healthy within 100s"
            ]
        );
    }

    #[test]
    fn a_resumed_rollout_soaks_its_last_wave_again() {
        let waves = [wave(0, 0.1, None), wave(0, 1.0, None)];
        let mut g = gating(0.02, &[0]);
        g.resumed_at = Some(at(5000));
        let none = [WaveCounts::default(); 2];
        let v = evaluate(&waves, &g, at(0), &none, false, at(5000 + 599));
        assert_eq!(v.action, Action::Hold);
        assert_eq!(v.waves[0].label(), "soaking");
        let v = evaluate(&waves, &g, at(0), &none, false, at(5000 + 600));
        assert_eq!(v.action, Action::Open(1));
    }

    #[test]
    fn rates_compare_in_whole_numbers() {
        assert!(!above_rate(29, 100, 0.29));
        assert!(above_rate(30, 100, 0.29));
        assert!(!above_rate(57, 100, 0.57));
        assert!(above_rate(1, 10_000, 0.0));
        assert!(!above_rate(0, 10, 0.0));
        assert!(!above_rate(5, 0, 0.0));
        assert!(!above_rate(2, 3, 1.0));
    }

    #[test]
    fn open_fraction_is_the_last_open_waves() {
        let waves = [wave(0, 0.1, None), wave(60, 0.5, None)];
        assert_eq!(gating(0.0, &[]).open_fraction(&waves), 0.0);
        assert_eq!(gating(0.0, &[0]).open_fraction(&waves), 0.1);
        assert_eq!(gating(0.0, &[0, 60]).open_fraction(&waves), 0.5);
    }
}
