//! What the dashboard shows, as plain data computed from stored records: a machine's state, the
//! fleet overview (machines per channel and version, how far each rollout wave has gone), the
//! machines table's filter, and releases with the machines still running advised ones. No I/O,
//! no HTML: the JSON API serializes these types and the pages render them.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::{Deserialize, Serialize};
use slipway_api::wire::EventKind;

use crate::gate::{FailingMachine, Halt, WaveCounts, WaveState};
use crate::gatekeeper::GateView;
use crate::rollout::{self, Wave};
use crate::store::{
    AdvisoryMark, ChannelRecord, MachineQuery, MachineRecord, ReleaseRecord, StateCondition,
    TransferTotals,
};

/// How long a machine may stay silent before the dashboard calls it stale. Engines check every
/// few minutes to hours; an hour without a word is worth a look.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Where a machine stands, for the table's filter and the overview's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Its last report was a failure or a rollback (until it reports healthy again).
    Failed,
    /// Downloading, staged, rebooting or booted on trial.
    Updating,
    /// Not heard from for [`STALE_AFTER`].
    Stale,
    /// Runs its channel's target.
    UpToDate,
    /// Runs an older version than its channel's target.
    Behind,
    /// Runs a newer version than its channel's target (the target was moved back).
    Ahead,
    /// Its channel has no target.
    NoTarget,
}

impl MachineState {
    /// Every state, in the order the dashboard lists them.
    pub const ALL: [MachineState; 7] = [
        MachineState::Failed,
        MachineState::Updating,
        MachineState::Stale,
        MachineState::Behind,
        MachineState::UpToDate,
        MachineState::Ahead,
        MachineState::NoTarget,
    ];

    /// The name used in URLs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Failed => "failed",
            MachineState::Updating => "updating",
            MachineState::Stale => "stale",
            MachineState::UpToDate => "up-to-date",
            MachineState::Behind => "behind",
            MachineState::Ahead => "ahead",
            MachineState::NoTarget => "no-target",
        }
    }

    /// Parses [`Self::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A machine's state: failures first (an operator must see them even on a silent machine),
/// then an update in flight, then silence, then its version against the target.
pub fn machine_state(m: &MachineRecord, target: Option<&Version>, now: Timestamp) -> MachineState {
    match m.last_event {
        Some(EventKind::Failed | EventKind::RolledBack) if m.last_error.is_some() => {
            return MachineState::Failed;
        }
        _ => {}
    }
    let silent = now.duration_since(m.last_seen);
    let updating = matches!(
        m.last_event,
        Some(EventKind::Downloading | EventKind::Staged | EventKind::Rebooting | EventKind::Booted)
    );
    if updating && target.is_some_and(|t| m.version < *t) {
        return MachineState::Updating;
    }
    if silent > SignedDuration::try_from(STALE_AFTER).unwrap_or(SignedDuration::MAX) {
        return MachineState::Stale;
    }
    match target {
        None => MachineState::NoTarget,
        Some(t) if m.version == *t => MachineState::UpToDate,
        Some(t) if m.version < *t => MachineState::Behind,
        Some(_) => MachineState::Ahead,
    }
}

/// The channels' targets, by name.
pub fn targets(channels: &[ChannelRecord]) -> BTreeMap<&str, &Version> {
    channels
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.target.as_ref()?)))
        .collect()
}

/// One machine as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRow {
    /// The stored record.
    #[serde(flatten)]
    pub machine: MachineRecord,
    /// Its state.
    pub state: MachineState,
    /// Its channel's target, if any.
    pub target: Option<Version>,
}

/// Rows for every machine, with their states.
pub fn rows(
    machines: Vec<MachineRecord>,
    channels: &[ChannelRecord],
    now: Timestamp,
) -> Vec<MachineRow> {
    let targets = targets(channels);
    machines
        .into_iter()
        .map(|m| {
            let target = targets.get(m.channel.as_str()).map(|v| (*v).clone());
            MachineRow {
                state: machine_state(&m, target.as_ref(), now),
                target,
                machine: m,
            }
        })
        .collect()
}

/// The machines table's filter and page (the query string of `/machines` and `/api/machines`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFilter {
    /// Part of the id or group, any case.
    #[serde(default)]
    pub q: Option<String>,
    /// One state ([`MachineState::as_str`]).
    #[serde(default)]
    pub state: Option<String>,
    /// One channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// One version.
    #[serde(default)]
    pub version: Option<String>,
    /// The start of the id.
    #[serde(default)]
    pub prefix: Option<String>,
    /// One group.
    #[serde(default)]
    pub group: Option<String>,
    /// Machines with ids after this (the previous page's cursor).
    #[serde(default)]
    pub after: Option<String>,
    /// Rows per page (1 to [`MAX_PAGE`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Most rows of one page of the machines list.
pub const MAX_PAGE: u32 = 1000;

/// Whether `s` may be (the start of) a machine id: `[A-Za-z0-9._-]`, at most 128.
fn id_like(s: &str) -> bool {
    s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MachineFilter {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// Checks the filter: an unknown state, a prefix or cursor no id could have, or a page
    /// size out of range is an error (not an empty table).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = Self::given(&self.state)
            && MachineState::parse(s).is_none()
        {
            let known: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
            return Err(format!("unknown state {s:?}; one of {}", known.join(", ")));
        }
        for (name, v) in [("prefix", &self.prefix), ("after", &self.after)] {
            if let Some(v) = Self::given(v)
                && !id_like(v)
            {
                return Err(format!(
                    "{name} {v:?}: machine ids are at most 128 of A-Z a-z 0-9 . _ -"
                ));
            }
        }
        if let Some(n) = self.limit
            && !(1..=MAX_PAGE).contains(&n)
        {
            return Err(format!("limit {n}: from 1 to {MAX_PAGE}"));
        }
        Ok(())
    }

    /// Whether a row passes (the page's cursor and size aside).
    pub fn matches(&self, row: &MachineRow) -> bool {
        if let Some(q) = Self::given(&self.q) {
            let q = q.to_ascii_lowercase();
            if !row.machine.id.to_ascii_lowercase().contains(&q)
                && !row.machine.group.to_ascii_lowercase().contains(&q)
            {
                return false;
            }
        }
        if let Some(s) = Self::given(&self.state)
            && row.state.as_str() != s
        {
            return false;
        }
        if let Some(c) = Self::given(&self.channel)
            && row.machine.channel != c
        {
            return false;
        }
        if let Some(v) = Self::given(&self.version)
            && row.machine.version.to_string() != v
        {
            return false;
        }
        if let Some(p) = Self::given(&self.prefix)
            && !row.machine.id.starts_with(p)
        {
            return false;
        }
        if let Some(g) = Self::given(&self.group)
            && row.machine.group != g
        {
            return false;
        }
        true
    }

    /// Whether any criterion is set.
    pub fn is_empty(&self) -> bool {
        [
            &self.q,
            &self.state,
            &self.channel,
            &self.version,
            &self.prefix,
            &self.group,
        ]
        .iter()
        .all(|v| Self::given(v).is_none())
    }

    /// The filter as the store's query, with what deciding a state needs: the channels'
    /// targets and the time.
    pub fn query(&self, channels: &[ChannelRecord], now: Timestamp) -> MachineQuery {
        let own = |v: &Option<String>| Self::given(v).map(str::to_owned);
        MachineQuery {
            prefix: own(&self.prefix),
            channel: own(&self.channel),
            version: own(&self.version),
            group: own(&self.group),
            text: own(&self.q),
            state: Self::given(&self.state)
                .and_then(MachineState::parse)
                .map(|state| StateCondition {
                    state,
                    targets: channels
                        .iter()
                        .filter_map(|c| Some((c.name.clone(), c.target.clone()?)))
                        .collect(),
                    stale_before: now
                        - SignedDuration::try_from(STALE_AFTER).unwrap_or(SignedDuration::MAX),
                }),
        }
    }

    /// The query string of this filter's page after `after` (none: the first page).
    pub fn query_string(&self, after: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("q", &self.q),
            ("state", &self.state),
            ("channel", &self.channel),
            ("version", &self.version),
            ("prefix", &self.prefix),
            ("group", &self.group),
        ] {
            if let Some(v) = Self::given(v) {
                q.append_pair(k, v);
            }
        }
        if let Some(n) = self.limit {
            q.append_pair("limit", &n.to_string());
        }
        if let Some(a) = after {
            q.append_pair("after", a);
        }
        q.finish()
    }
}

/// How far one step of a channel's wave schedule has gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    /// Time after the promotion at which it opens (`"0s"`, `"2h"`).
    pub after: String,
    /// When that is.
    pub opens_at: Option<Timestamp>,
    /// Fraction of the channel's machines it covers (cumulative).
    pub fraction: f64,
    /// Whether it is open now.
    pub open: bool,
    /// Machines of the channel it covers.
    pub machines: u64,
    /// Of which already on the target (or newer).
    pub updated: u64,
    /// Its state: `open`, `soaking`, `waiting-on-time`, `gated`, `halted`, `later`, `paused`.
    pub state: String,
    /// Why, for a gated wave; until when, for a soaking one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// One channel in the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelOverview {
    /// Its name.
    pub name: String,
    /// The promoted version.
    pub target: Option<Version>,
    /// Paused channels offer nothing.
    pub paused: bool,
    /// When the target was promoted.
    pub promoted_at: Option<Timestamp>,
    /// Machines following it.
    pub machines: u64,
    /// Of which on the target (or newer).
    pub updated: u64,
    /// Machines per version, newest version first.
    pub versions: Vec<VersionCount>,
    /// The wave schedule and how far each step has gone.
    pub waves: Vec<WaveProgress>,
    /// The rollout's health gate, for people (`failure-rate<=2%, soak 1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// With a gate: the open waves' machines that reached the target, by outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_counts: Option<WaveCounts>,
    /// With a gate: the failing machines of the open waves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingMachine>,
    /// Why the gate halted the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<Halt>,
}

/// Machines on one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCount {
    /// The version.
    pub version: Version,
    /// How many machines run it.
    pub machines: u64,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When it was computed.
    pub at: Timestamp,
    /// Every machine the server knows.
    pub machines: u64,
    /// Machines per state (every state listed, zeros included).
    pub states: BTreeMap<MachineState, u64>,
    /// Every channel with machines, releases or a rollout.
    pub channels: Vec<ChannelOverview>,
}

/// Computes the overview; `gates` holds the gated channels' gate views (see
/// [`crate::gatekeeper::view`]).
pub fn overview(
    rows: &[MachineRow],
    channels: &[ChannelRecord],
    gates: &BTreeMap<String, GateView>,
    now: Timestamp,
) -> Overview {
    let mut b = OverviewBuilder::new(channels, now);
    for r in rows {
        b.add(&r.machine);
    }
    b.finish(gates)
}

/// What the overview counts of one channel's machines.
#[derive(Default)]
struct ChannelTally {
    machines: u64,
    updated: u64,
    versions: BTreeMap<Version, u64>,
    /// Per wave step: (machines it covers, of which updated).
    waves: Vec<(u64, u64)>,
}

/// The overview built one machine at a time, so a fleet of any size is counted from pages of
/// machines without holding them all (memory: one tally per channel and version).
pub struct OverviewBuilder<'a> {
    channels: &'a [ChannelRecord],
    now: Timestamp,
    total: u64,
    states: BTreeMap<MachineState, u64>,
    tallies: BTreeMap<String, ChannelTally>,
}

impl<'a> OverviewBuilder<'a> {
    /// An empty overview of `channels` at `now`.
    pub fn new(channels: &'a [ChannelRecord], now: Timestamp) -> Self {
        let mut tallies: BTreeMap<String, ChannelTally> = BTreeMap::new();
        for c in channels {
            tallies.entry(c.name.clone()).or_default().waves = vec![(0, 0); c.waves.len()];
        }
        Self {
            channels,
            now,
            total: 0,
            states: MachineState::ALL.iter().map(|s| (*s, 0)).collect(),
            tallies,
        }
    }

    /// Counts one machine.
    pub fn add(&mut self, m: &MachineRecord) {
        let record = self.channels.iter().find(|c| c.name == m.channel);
        let target = record.and_then(|c| c.target.as_ref());
        self.total += 1;
        *self
            .states
            .entry(machine_state(m, target, self.now))
            .or_default() += 1;
        let t = self.tallies.entry(m.channel.clone()).or_default();
        t.machines += 1;
        *t.versions.entry(m.version.clone()).or_default() += 1;
        let done = target.is_some_and(|t| m.version >= *t);
        t.updated += u64::from(done);
        if let (Some(c), Some(target)) = (record, target) {
            let place = rollout::place(&m.id, target);
            for (w, tally) in c.waves.iter().zip(t.waves.iter_mut()) {
                if rollout::in_wave(place, w.fraction) {
                    tally.0 += 1;
                    tally.1 += u64::from(done);
                }
            }
        }
    }

    /// The overview of the machines added.
    pub fn finish(self, gates: &BTreeMap<String, GateView>) -> Overview {
        let now = self.now;
        let mut out = Vec::new();
        for (name, t) in self.tallies {
            if name.is_empty() {
                continue;
            }
            let record = self.channels.iter().find(|c| c.name == name);
            let target = record.and_then(|c| c.target.clone());
            let gate_view = gates.get(&name);
            let waves = match (record, &target) {
                (Some(c), Some(_)) => {
                    let states = crate::gatekeeper::wave_states(c, gate_view, now);
                    wave_progress(&c.waves, c.promoted_at, &t.waves, &states, c.paused)
                }
                _ => Vec::new(),
            };
            let gating = record.and_then(|c| c.gating.as_ref());
            out.push(ChannelOverview {
                paused: record.is_some_and(|c| c.paused),
                promoted_at: record.and_then(|c| c.promoted_at),
                machines: t.machines,
                updated: t.updated,
                versions: t
                    .versions
                    .into_iter()
                    .rev()
                    .map(|(version, machines)| VersionCount { version, machines })
                    .collect(),
                waves,
                target,
                gate: gating.map(|g| g.gate.to_string()),
                gate_counts: gate_view.map(|v| v.verdict.totals),
                failing: gate_view.map(|v| v.failing.clone()).unwrap_or_default(),
                halt: gating.and_then(|g| g.halt.clone()),
                name,
            });
        }
        Overview {
            at: now,
            machines: self.total,
            states: self.states,
            channels: out,
        }
    }
}

fn wave_progress(
    waves: &[Wave],
    promoted_at: Option<Timestamp>,
    tallies: &[(u64, u64)],
    states: &[WaveState],
    paused: bool,
) -> Vec<WaveProgress> {
    waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (machines, updated) = tallies.get(i).copied().unwrap_or_default();
            let scheduled = promoted_at.and_then(|p| {
                let after = SignedDuration::try_from(w.after).ok()?;
                p.checked_add(after).ok()
            });
            let st = states.get(i);
            let opens_at = match st {
                Some(WaveState::Open { since })
                | Some(WaveState::Soaking { since, .. })
                | Some(WaveState::Halted { since }) => Some(*since),
                _ => scheduled,
            };
            let open = matches!(st, Some(WaveState::Open { .. } | WaveState::Soaking { .. }));
            let (state, why) = match st {
                _ if paused && !matches!(st, Some(WaveState::Halted { .. })) => {
                    ("paused".to_owned(), None)
                }
                Some(WaveState::Gated { why }) => ("gated".to_owned(), Some(why.clone())),
                Some(WaveState::Soaking { until, .. }) => {
                    ("soaking".to_owned(), Some(format!("until {until}")))
                }
                Some(other) => (other.label().to_owned(), None),
                None => ("later".to_owned(), None),
            };
            WaveProgress {
                after: rollout::duration_text::format(w.after),
                opens_at,
                fraction: w.fraction,
                open: open && !paused,
                machines,
                updated,
                state,
                why,
            }
        })
        .collect()
}

/// One release in the releases view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRow {
    /// Its channel.
    pub channel: String,
    /// Its version.
    pub version: Version,
    /// When it was published.
    pub published_at: Timestamp,
    /// The advisory on it, if any.
    pub advisory: Option<AdvisoryMark>,
    /// Whether it is a floor.
    pub floor: bool,
    /// Whether it is its channel's target.
    pub target: bool,
    /// Machines of the channel running it.
    pub running: u64,
    /// Ids of the machines still running it when it carries an advisory (at most 50).
    pub advised_machines: Vec<String>,
    /// How machines that staged this version got its image (deltas, bytes fetched), over the
    /// events kept; absent when none reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferTotals>,
}

impl ReleaseRow {
    /// Bytes the machines that staged it did not download, thanks to deltas.
    pub fn saved_bytes(&self) -> u64 {
        self.transfer
            .as_ref()
            .map_or(0, |t| t.image_bytes.saturating_sub(t.fetched_bytes))
    }
}

/// Most machine ids listed under an advised release.
pub const ADVISED_LIST: usize = 50;

/// Releases, newest first within each channel, with how many machines run them (from the
/// overview's counts) and, for advised ones, `advised`: some of the machines still running them
/// (at most [`ADVISED_LIST`]), by channel and version.
pub fn releases(
    records: &[ReleaseRecord],
    channels: &[ChannelRecord],
    overview: &Overview,
    advised: &BTreeMap<(String, Version), Vec<String>>,
    transfers: &[TransferTotals],
) -> Vec<ReleaseRow> {
    let targets = targets(channels);
    let running = |channel: &str, version: &Version| {
        overview
            .channels
            .iter()
            .filter(|c| c.name == channel)
            .flat_map(|c| &c.versions)
            .find(|v| v.version == *version)
            .map_or(0, |v| v.machines)
    };
    let mut out: Vec<ReleaseRow> = records
        .iter()
        .map(|r| ReleaseRow {
            channel: r.channel.clone(),
            version: r.version.clone(),
            published_at: r.published_at,
            advisory: r.advisory.clone(),
            floor: r.floor,
            target: targets.get(r.channel.as_str()) == Some(&&r.version),
            running: running(&r.channel, &r.version),
            advised_machines: match r.advisory {
                Some(_) => advised
                    .get(&(r.channel.clone(), r.version.clone()))
                    .map(|ids| ids.iter().take(ADVISED_LIST).cloned().collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            },
            transfer: transfers.iter().find(|t| t.version == r.version).cloned(),
        })
        .collect();
    out.sort_by(|a, b| {
        a.channel
            .cmp(&b.channel)
            .then_with(|| b.version.cmp(&a.version))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn machine(id: &str, channel: &str, version: &str, now: Timestamp) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            channel: channel.into(),
            group: String::new(),
            version: v(version),
            arch: "x86_64".into(),
            boot_id: String::new(),
            first_seen: now,
            last_seen: now,
            last_event: None,
            last_event_at: None,
            last_error: None,
        }
    }

    fn channel(name: &str, target: &str, waves: Vec<Wave>, promoted: Timestamp) -> ChannelRecord {
        ChannelRecord {
            name: name.into(),
            target: Some(v(target)),
            waves,
            promoted_at: Some(promoted),
            paused: false,
            gating: None,
            updated_at: promoted,
        }
    }

    #[test]
    fn a_failure_shows_even_when_the_machine_is_silent_and_healthy_clears_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut m = machine("a", "stable", "1.0.0", now);
        m.last_seen = now - SignedDuration::from_hours(5);
        m.last_event = Some(EventKind::RolledBack);
        m.last_error = Some("tries ran out".into());
        assert_eq!(
            machine_state(&m, Some(&v("2.0.0")), now),
            MachineState::Failed
        );
        m.last_error = None;
        assert_eq!(
            machine_state(&m, Some(&v("2.0.0")), now),
            MachineState::Stale
        );
        m.last_seen = now;
        assert_eq!(
            machine_state(&m, Some(&v("2.0.0")), now),
            MachineState::Behind
        );
        m.last_event = Some(EventKind::Staged);
        assert_eq!(
            machine_state(&m, Some(&v("2.0.0")), now),
            MachineState::Updating
        );
        m.version = v("2.0.0");
        assert_eq!(
            machine_state(&m, Some(&v("2.0.0")), now),
            MachineState::UpToDate
        );
        assert_eq!(
            machine_state(&m, Some(&v("1.5.0")), now),
            MachineState::Ahead
        );
        assert_eq!(machine_state(&m, None, now), MachineState::NoTarget);
    }

    #[test]
    fn the_filter_combines_its_criteria_and_refuses_unknown_states() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut a = machine("node-Alpha", "stable", "1.0.0", now);
        a.group = "edge".into();
        let b = machine("node-beta", "beta", "2.0.0", now);
        let channels = [channel("stable", "2.0.0", rollout::immediate(), now)];
        let rows = rows(vec![a, b], &channels, now);
        let pick = |f: MachineFilter| -> Vec<String> {
            rows.iter()
                .filter(|r| f.matches(r))
                .map(|r| r.machine.id.clone())
                .collect()
        };
        assert_eq!(pick(MachineFilter::default()).len(), 2);
        let q = |s: &str| MachineFilter {
            q: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(pick(q("ALPHA")), ["node-Alpha"]);
        assert_eq!(pick(q("edge")), ["node-Alpha"]);
        assert_eq!(
            pick(MachineFilter {
                state: Some("behind".into()),
                ..Default::default()
            }),
            ["node-Alpha"]
        );
        assert_eq!(
            pick(MachineFilter {
                channel: Some("beta".into()),
                version: Some("2.0.0".into()),
                ..Default::default()
            }),
            ["node-beta"]
        );
        assert!(
            pick(MachineFilter {
                channel: Some("beta".into()),
                version: Some("1.0.0".into()),
                ..Default::default()
            })
            .is_empty()
        );
        let bad = MachineFilter {
            state: Some("broken".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("up-to-date"));
        assert!(
            MachineFilter {
                state: Some(" ".into()),
                ..Default::default()
            }
            .is_empty()
        );
    }

    #[test]
    fn the_overview_counts_versions_and_how_far_each_wave_has_gone() {
        let promoted = Timestamp::from_second(1_800_000_000).unwrap();
        let now = promoted + SignedDuration::from_hours(1);
        let waves = vec![
            Wave {
                after: Duration::ZERO,
                fraction: 0.25,
                soak: None,
            },
            Wave {
                after: Duration::from_secs(7200),
                fraction: 1.0,
                soak: None,
            },
        ];
        let target = v("2.0.0");
        let mut machines = Vec::new();
        for i in 0..200 {
            let id = format!("m{i:03}");
            // Every machine inside the first wave has updated; none outside it.
            let first = rollout::place(&id, &target) < 0.25;
            let version = if first { "2.0.0" } else { "1.0.0" };
            machines.push(machine(&id, "stable", version, now));
        }
        let channels = [channel("stable", "2.0.0", waves, promoted)];
        let rows = rows(machines, &channels, now);
        let o = overview(&rows, &channels, &BTreeMap::new(), now);
        assert_eq!(o.machines, 200);
        let c = &o.channels[0];
        let first = c.waves[0].machines;
        assert!((30..=70).contains(&first), "first wave {first} of 200");
        assert_eq!(c.waves[0].updated, first);
        assert!(c.waves[0].open);
        assert_eq!(c.waves[1].machines, 200);
        assert_eq!(c.waves[1].updated, first);
        assert!(!c.waves[1].open);
        assert_eq!(
            c.waves[1].opens_at,
            Some(promoted + SignedDuration::from_hours(2))
        );
        assert_eq!(c.updated, first);
        assert_eq!(c.versions[0].version, target);
        assert_eq!(c.versions[0].machines, first);
        assert_eq!(c.versions[1].machines, 200 - first);
        assert_eq!(o.states[&MachineState::UpToDate], first);
        assert_eq!(o.states[&MachineState::Behind], 200 - first);
        assert_eq!(o.states[&MachineState::Failed], 0);
    }

    #[test]
    fn an_advised_release_lists_the_machines_still_running_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let release = |ver: &str, advised: bool| ReleaseRecord {
            channel: "stable".into(),
            version: v(ver),
            envelope: String::new(),
            manifest: String::new(),
            published_at: now,
            advisory: advised.then(|| AdvisoryMark {
                id: "CVE-2026-1".into(),
                summary: "bad".into(),
                marked_at: now,
            }),
            floor: false,
        };
        let records = [release("1.0.0", true), release("2.0.0", false)];
        let channels = [channel("stable", "2.0.0", rollout::immediate(), now)];
        let rows = rows(
            vec![
                machine("a", "stable", "1.0.0", now),
                machine("b", "stable", "2.0.0", now),
                machine("c", "other", "1.0.0", now),
            ],
            &channels,
            now,
        );
        let o = overview(&rows, &channels, &BTreeMap::new(), now);
        // Listed under the advised release only (a stray list for another is ignored).
        let advised = BTreeMap::from([
            (
                (String::from("stable"), v("1.0.0")),
                vec![String::from("a")],
            ),
            (
                (String::from("stable"), v("2.0.0")),
                vec![String::from("b")],
            ),
        ]);
        let out = releases(&records, &channels, &o, &advised, &[]);
        assert_eq!(out[0].version, v("2.0.0"));
        assert!(out[0].target);
        assert_eq!(out[0].running, 1);
        assert!(out[0].advised_machines.is_empty());
        // Counted in its channel only: `c` runs 1.0.0 on another channel.
        assert_eq!(out[1].running, 1);
        assert_eq!(out[1].advised_machines, ["a"]);
    }
}
