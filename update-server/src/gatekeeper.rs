//! Runs the health gates of gated rollouts ([`crate::gate`] decides, this module reads the
//! store, writes the changes and announces them). Every replica runs it; a change is written
//! only if the channel is as it was read (`put_channel_if`), so when two replicas reach the
//! same decision one writes it and announces it, the other finds the channel changed.

use jiff::Timestamp;
use semver::Version;

use crate::error::Result;
use crate::gate::{self, Action, FailingMachine, Gating, Halt, Verdict, WaveCounts, WaveState};
use crate::rollout::{Wave, duration_text};
use crate::state::AppState;
use crate::store::{ChannelRecord, outcomes};

/// A gated rollout as it stands: the verdict, the counts per wave and the failing machines.
#[derive(Debug, Clone, PartialEq)]
pub struct GateView {
    /// What the gate decides now, and each wave's state.
    pub verdict: Verdict,
    /// Each wave's counts.
    pub counts: Vec<WaveCounts>,
    /// The failing machines of the open waves (at most [`gate::MAX_LISTED`]).
    pub failing: Vec<FailingMachine>,
}

/// Reads a gated channel's outcomes and evaluates its gate at `now`; `None` for a channel
/// without a gate or a target.
pub async fn view(
    state: &AppState,
    record: &ChannelRecord,
    now: Timestamp,
) -> Result<Option<GateView>> {
    let (Some(gating), Some(target), Some(promoted_at)) =
        (&record.gating, &record.target, record.promoted_at)
    else {
        return Ok(None);
    };
    let events = state
        .store()
        .rollout_events(&record.name, target, gating.counted_from)
        .await?;
    let found = outcomes(&events);
    Ok(Some(judge(
        &record.waves,
        gating,
        target,
        promoted_at,
        &found,
        record.paused,
        now,
    )))
}

/// [`view`] without the store: counts `found` and evaluates.
pub fn judge(
    waves: &[Wave],
    gating: &Gating,
    target: &Version,
    promoted_at: Timestamp,
    found: &[gate::MachineOutcome],
    paused: bool,
    now: Timestamp,
) -> GateView {
    let (counts, failing) =
        gate::count(waves, &gating.gate, target, found, gating.opened.len(), now);
    let verdict = gate::evaluate(waves, gating, promoted_at, &counts, paused, now);
    GateView {
        verdict,
        counts,
        failing,
    }
}

/// Each wave's state: the gate's verdict for a gated rollout, the clock's otherwise; none
/// without a target.
pub fn wave_states(
    record: &ChannelRecord,
    gate: Option<&GateView>,
    now: Timestamp,
) -> Vec<WaveState> {
    match (gate, &record.target, record.promoted_at) {
        (Some(v), _, _) => v.verdict.waves.clone(),
        (None, Some(_), Some(at)) => timed_states(&record.waves, at, now),
        _ => Vec::new(),
    }
}

/// Each wave's state for a rollout without a gate: open once its time has come.
pub fn timed_states(waves: &[Wave], promoted_at: Timestamp, now: Timestamp) -> Vec<WaveState> {
    waves
        .iter()
        .map(|w| {
            let at = jiff::SignedDuration::try_from(w.after)
                .ok()
                .and_then(|a| promoted_at.checked_add(a).ok())
                .unwrap_or(Timestamp::MAX);
            if at <= now {
                WaveState::Open { since: at }
            } else {
                WaveState::WaitingOnTime { at }
            }
        })
        .collect()
}

/// One pass over every gated channel: opens the next wave or halts where the gate says so.
/// Returns what it changed, as `(channel, action)`.
pub async fn tick(state: &AppState) -> Result<Vec<(String, Action)>> {
    let mut changed = Vec::new();
    for record in state.store().channels().await? {
        let gated = record
            .gating
            .as_ref()
            .is_some_and(|g| g.halt.is_none() && !record.paused);
        if !gated {
            continue;
        }
        // One channel's trouble (a query that fails) does not stop the others' gates.
        match tick_one(state, &record).await {
            Ok(Some(action)) => changed.push((record.name.clone(), action)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(channel = %record.name, error = %e, "evaluating the health gate failed")
            }
        }
    }
    Ok(changed)
}

async fn tick_one(state: &AppState, record: &ChannelRecord) -> Result<Option<Action>> {
    let now = state.0.clock.now();
    // Read without the admin lock (admin requests need not wait for the query); the write
    // below lands only if the channel is still as read.
    let Some(view) = view(state, record, now).await? else {
        return Ok(None);
    };
    let action = view.verdict.action.clone();
    let mut next = record.clone();
    // Strictly after what was read, so the next conditional write sees a change even within
    // the same millisecond.
    next.updated_at = now.max(
        record
            .updated_at
            .checked_add(jiff::SignedDuration::from_millis(1))
            .unwrap_or(now),
    );
    let Some(g) = next.gating.as_mut() else {
        return Ok(None);
    };
    match &action {
        Action::Hold => return Ok(None),
        Action::Open(_) => g.opened.push(now),
        Action::Halt { reason } => {
            g.halt = Some(Halt {
                at: now,
                reason: reason.clone(),
                failed: view.verdict.totals.failures(),
                reached: view.verdict.totals.reached,
                machines: view.failing.clone(),
            });
            next.paused = true;
        }
    }
    let _admin = state.0.admin.lock().await;
    if !state
        .store()
        .put_channel_if(&next, record.updated_at)
        .await?
    {
        tracing::debug!(channel = %record.name, "channel changed meanwhile; gate decision left to the next pass");
        return Ok(None);
    }
    // Written: announce it even if this replica's snapshot refresh fails (the periodic
    // refresh catches up).
    announce(state, &next, &action, &view, now);
    if let Err(e) = state.reload().await {
        tracing::warn!(error = %e, "reloading after a gate decision failed");
    }
    Ok(Some(action))
}

fn announce(
    state: &AppState,
    record: &ChannelRecord,
    action: &Action,
    view: &GateView,
    now: Timestamp,
) {
    let target = record
        .target
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let totals = &view.verdict.totals;
    match action {
        Action::Hold => {}
        Action::Open(i) => {
            let w = &record.waves[*i];
            tracing::info!(channel = %record.name, target = %target, wave = i + 1, fraction = w.fraction, "gate passed: wave opened");
            state.metrics().gate_waves_opened.inc();
            state.emit(slipway_events::Event::new(
                slipway_events::EventType::RolloutWaveOpened,
                record.name.clone(),
                now,
                serde_json::json!({
                    "channel": record.name,
                    "version": target,
                    "wave": i + 1,
                    "fraction": w.fraction,
                    "after": duration_text::format(w.after),
                    "reached": totals.reached,
                    "healthy": totals.healthy,
                    "failed": totals.failures(),
                }),
            ));
        }
        Action::Halt { reason } => {
            tracing::warn!(channel = %record.name, target = %target, reason = %reason, "gate halted the rollout");
            state.metrics().gate_halts.inc();
            let machines: Vec<serde_json::Value> = view
                .failing
                .iter()
                .map(|f| serde_json::json!({"id": f.id, "why": f.why}))
                .collect();
            state.emit(slipway_events::Event::new(
                slipway_events::EventType::RolloutWaveHalted,
                record.name.clone(),
                now,
                serde_json::json!({
                    "channel": record.name,
                    "version": target,
                    "openWaves": record.gating.as_ref().map_or(0, |g| g.opened.len()),
                    "reason": reason,
                    "reached": totals.reached,
                    "failed": totals.failures(),
                    "machines": machines,
                }),
            ));
        }
    }
}
