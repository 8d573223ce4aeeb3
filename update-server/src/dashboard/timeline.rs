//! A rollout drawn: one lane per node with its phases over time (downloading, waiting and why,
//! draining, rebooting, verifying, healthy or failed), the policy's reboot window and its
//! unavailability budget above them. Built from the cluster history the operators' reports
//! leave ([`crate::clusters`]); [`build`] is pure, [`svg`] draws it as server-rendered SVG
//! (tooltips are SVG `<title>`s, so it reads without JavaScript).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use slipway_api::wire::{NodeReport, PolicyReport};

use super::html::{esc, span};
use crate::clusters::{ClusterChange, Subject};

/// A span of time in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    /// Start (clipped to the timeline).
    pub from: Timestamp,
    /// End (clipped to the timeline).
    pub to: Timestamp,
    /// The node's phase (`Downloading`, `Draining`, ...), or the window's `open`/`closed`, or
    /// the budget's `UNAVAILABLE/MAX`.
    pub state: String,
    /// Why the operator kept the node waiting (`OutsideWindow`, `MaxUnavailable`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The same, for humans, or the node's last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One node's lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lane {
    /// The node.
    pub node: String,
    /// Its states, in order, without gaps while it was reported.
    pub segments: Vec<Segment>,
}

/// A rollout's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// The cluster.
    pub cluster: String,
    /// The policy drawn (None: the cluster has reported no policy).
    pub policy: Option<String>,
    /// The version it rolled out.
    pub target: Option<String>,
    /// When the rollout started (the policy first reported this target).
    pub started: Option<Timestamp>,
    /// When every node of the policy was on the target and available again, if it is over.
    pub finished: Option<Timestamp>,
    /// The time drawn.
    pub from: Timestamp,
    /// The time drawn.
    pub to: Timestamp,
    /// The reboot window: `open` or `closed` spans.
    pub window: Vec<Segment>,
    /// The budget: `UNAVAILABLE/MAX` spans.
    pub budget: Vec<Segment>,
    /// One lane per node of the policy.
    pub lanes: Vec<Lane>,
}

/// A state as drawn: its name, why it waits, and a detail for the tooltip.
type Shown = (String, Option<String>, Option<String>);

/// What is shown of a node at one moment.
fn node_state(n: &NodeReport) -> Shown {
    let waiting = n.waiting_reason.clone();
    let detail = n
        .last_error
        .clone()
        .filter(|_| matches!(n.phase.as_str(), "Failed" | "RolledBack"))
        .or_else(|| n.waiting_message.clone().filter(|_| waiting.is_some()));
    (n.phase.clone(), waiting, detail)
}

fn window_state(p: &PolicyReport) -> String {
    match p.window.as_deref() {
        Some(w) if w == "always" || w.starts_with("open") => "open".into(),
        Some(_) => "closed".into(),
        // Without a window the policy may reboot at any time.
        None if p.next_window.is_none() => "open".into(),
        None => "closed".into(),
    }
}

/// Spans of a subject's states from its history rows (in order), each to the next change, the
/// last to `end`; clipped to `[from, to]`, equal neighbours merged.
fn spans(
    rows: &[(Timestamp, Option<Shown>)],
    from: Timestamp,
    to: Timestamp,
    end: Timestamp,
) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (i, (at, state)) in rows.iter().enumerate() {
        let Some((state, waiting, detail)) = state else {
            continue;
        };
        let until = rows.get(i + 1).map_or(end, |(next, _)| *next);
        let (a, b) = ((*at).max(from), until.min(to));
        if a >= b {
            continue;
        }
        if let Some(last) = out.last_mut()
            && last.to == a
            && last.state == *state
            && last.waiting == *waiting
            && last.detail == *detail
        {
            last.to = b;
            continue;
        }
        out.push(Segment {
            from: a,
            to: b,
            state: state.clone(),
            waiting: waiting.clone(),
            detail: detail.clone(),
        });
    }
    out
}

/// The timeline of `policy` (default: the first the history names) from a cluster's history
/// (oldest first). Without `range` it spans the policy's latest rollout: from when it first
/// reported its current target to when every node was on it and available again (or `now`),
/// with a little room on each side.
pub fn build(
    cluster: &str,
    history: &[ClusterChange],
    policy: Option<&str>,
    range: Option<(Timestamp, Timestamp)>,
    now: Timestamp,
) -> Timeline {
    let policy = policy.map(str::to_owned).or_else(|| {
        history
            .iter()
            .filter(|c| c.kind == Subject::Policy)
            .map(|c| c.name.clone())
            .min()
    });
    let policy_rows: Vec<&ClusterChange> = history
        .iter()
        .filter(|c| c.kind == Subject::Policy && Some(&c.name) == policy.as_ref())
        .collect();
    let last = policy_rows.iter().rev().find_map(|c| c.policy.as_ref());
    let target = last.and_then(|p| p.target_version.clone());
    // The rollout began with the first of the latest run of rows naming this target.
    let started = target.as_ref().and_then(|t| {
        let mut start = None;
        for c in &policy_rows {
            match &c.policy {
                Some(p) if p.target_version.as_ref() == Some(t) => {
                    start = start.or(Some(c.at));
                }
                _ => start = None,
            }
        }
        start
    });
    let in_policy = |n: &NodeReport| policy.is_none() || n.policy == policy;
    let node_rows: Vec<&ClusterChange> =
        history.iter().filter(|c| c.kind == Subject::Node).collect();
    let finished = match (last, started) {
        (Some(p), Some(start)) if p.updated >= p.nodes && p.unavailable == 0 => {
            let last_node = node_rows
                .iter()
                .filter(|c| c.at >= start && c.node.as_ref().is_some_and(in_policy))
                .map(|c| c.at)
                .max();
            let last_policy = policy_rows.last().map(|c| c.at);
            last_node.max(last_policy)
        }
        _ => None,
    };
    let (from, to) = range.unwrap_or_else(|| {
        let start = started
            .or_else(|| history.first().map(|c| c.at))
            .unwrap_or(now);
        let end = finished.unwrap_or(now).max(start);
        let room = SignedDuration::from_millis(
            ((end.as_millisecond() - start.as_millisecond()) / 20).max(60_000),
        );
        (start - room, finished.map_or(now, |f| (f + room).min(now)))
    });
    let to = to.max(from + SignedDuration::from_secs(1));

    let mut by_node: BTreeMap<&str, Vec<&ClusterChange>> = BTreeMap::new();
    for c in &node_rows {
        by_node.entry(c.name.as_str()).or_default().push(c);
    }
    let lanes = by_node
        .into_iter()
        .filter(|(_, rows)| {
            // A node of this policy at some moment drawn (or just before it).
            rows.iter().enumerate().any(|(i, c)| {
                let until = rows.get(i + 1).map_or(to, |n| n.at);
                c.node.as_ref().is_some_and(in_policy) && until > from && c.at < to
            })
        })
        .map(|(node, rows)| {
            let states: Vec<_> = rows
                .iter()
                .map(|c| (c.at, c.node.as_ref().map(node_state)))
                .collect();
            Lane {
                node: node.to_owned(),
                segments: spans(&states, from, to, now.max(to)),
            }
        })
        .collect();
    let policy_states = |f: &dyn Fn(&PolicyReport) -> String| {
        let rows: Vec<_> = policy_rows
            .iter()
            .map(|c| (c.at, c.policy.as_ref().map(|p| (f(p), None, None))))
            .collect();
        spans(&rows, from, to, now.max(to))
    };
    Timeline {
        cluster: cluster.to_owned(),
        policy,
        target,
        started,
        finished,
        from,
        to,
        window: policy_states(&window_state),
        budget: policy_states(&|p| format!("{}/{}", p.unavailable, p.max_unavailable)),
        lanes,
    }
}

// Drawing.
const WIDTH: f64 = 1000.0;
const LABELS: f64 = 150.0;
const ROW: f64 = 22.0;
const GAP: f64 = 4.0;

/// The phases in lifecycle order, with their colours (also the legend).
const PHASES: [(&str, &str); 11] = [
    ("Idle", "#d5d9de"),
    ("NotReady", "#9aa1a9"),
    ("Downloading", "#5b9bd5"),
    ("Staged", "#a9c8ea"),
    ("Draining", "#f0a030"),
    ("Rebooting", "#8e6cc4"),
    ("Verifying", "#3bb3b3"),
    ("Healthy", "#3c9d4e"),
    ("Failed", "#d2352c"),
    ("RolledBack", "#8c1c17"),
    ("waiting", "url(#slipway-waiting)"),
];

fn fill(state: &str, waiting: bool) -> &'static str {
    if waiting {
        return "url(#slipway-waiting)";
    }
    PHASES
        .iter()
        .find(|(p, _)| *p == state)
        .map_or("#c0c4c8", |(_, c)| c)
}

fn x(t: Timestamp, from: Timestamp, to: Timestamp) -> f64 {
    let span = (to.as_millisecond() - from.as_millisecond()).max(1) as f64;
    let at = (t.as_millisecond() - from.as_millisecond()) as f64;
    LABELS + (WIDTH - LABELS - 10.0) * (at / span).clamp(0.0, 1.0)
}

fn clock(t: Timestamp, span: SignedDuration) -> String {
    let f = if span > SignedDuration::from_hours(24) {
        "%m-%d %H:%M"
    } else if span > SignedDuration::from_mins(10) {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    t.strftime(f).to_string()
}

fn segment_title(subject: &str, s: &Segment, drawn: SignedDuration) -> String {
    let mut t = format!(
        "{subject}: {}{} from {} to {} ({})",
        s.state,
        s.waiting
            .as_ref()
            .map_or(String::new(), |w| format!(", waiting ({w})")),
        clock(s.from, drawn),
        clock(s.to, drawn),
        span(s.to.duration_since(s.from))
    );
    if let Some(d) = &s.detail {
        let _ = write!(t, ": {d}");
    }
    t
}

#[allow(clippy::too_many_arguments)]
fn bar(
    out: &mut String,
    class: &str,
    subject: &str,
    s: &Segment,
    tl: &Timeline,
    y: f64,
    h: f64,
    colour: &str,
) {
    let span = tl.to.duration_since(tl.from);
    let (x0, x1) = (x(s.from, tl.from, tl.to), x(s.to, tl.from, tl.to));
    let w = (x1 - x0).max(1.0);
    let label = s.waiting.as_deref().unwrap_or(&s.state);
    let _ = write!(
        out,
        "<g class=\"{class}\" data-subject=\"{subj}\" data-state=\"{state}\"{waiting} data-from=\"{from}\" data-to=\"{to}\">\
         <title>{title}</title><rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\"/>",
        subj = esc(subject),
        state = esc(&s.state),
        waiting = s
            .waiting
            .as_ref()
            .map_or(String::new(), |w| format!(" data-waiting=\"{}\"", esc(w))),
        from = s.from,
        to = s.to,
        title = esc(&segment_title(subject, s, span)),
    );
    // A label where it fits (about 6.5 px a character at 11 px).
    if w > label.len() as f64 * 6.5 + 8.0 {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x0 + 4.0,
            y + h / 2.0 + 4.0,
            esc(label)
        );
    }
    out.push_str("</g>");
}

/// Tick marks: a round step giving at most about 8 of them.
fn ticks(from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    const STEPS: [i64; 14] = [
        1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 604_800,
    ];
    let span = (to.as_second() - from.as_second()).max(1);
    let step = STEPS.into_iter().find(|s| span / s <= 8).unwrap_or(604_800);
    let first = (from.as_second() + step - 1).div_euclid(step) * step;
    (0..)
        .map(|i| first + i * step)
        .take_while(|s| *s <= to.as_second())
        .filter_map(|s| Timestamp::from_second(s).ok())
        .collect()
}

/// The timeline as a standalone SVG document fragment (`<svg>…</svg>`).
pub fn svg(tl: &Timeline) -> String {
    let lanes_top = 2.0 * (ROW + GAP) + 8.0;
    let height = lanes_top + tl.lanes.len() as f64 * (ROW + GAP) + 60.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"{label}\" font-family=\"sans-serif\" font-size=\"11\">\
         <defs><pattern id=\"slipway-waiting\" width=\"8\" height=\"8\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
         <rect width=\"8\" height=\"8\" fill=\"#f6e3b4\"/><rect width=\"3\" height=\"8\" fill=\"#e0b34a\"/></pattern></defs>\
         <style>text{{fill:#1d2329;pointer-events:none}} .lane-label{{font-weight:600}}</style>",
        label = esc(&format!(
            "Rollout of {} on {}: {} nodes",
            tl.target.as_deref().unwrap_or("nothing"),
            tl.cluster,
            tl.lanes.len()
        )),
    );
    let row_label = |out: &mut String, y: f64, text: &str, class: &str| {
        let _ = write!(
            out,
            "<text class=\"{class}\" x=\"4\" y=\"{:.1}\">{}</text>",
            y + ROW / 2.0 + 4.0,
            esc(text)
        );
    };
    // The window and the budget.
    let mut y = 4.0;
    row_label(&mut out, y, "reboot window", "row-label");
    for s in &tl.window {
        let colour = if s.state == "open" {
            "#bfe3c4"
        } else {
            "#eceef0"
        };
        bar(&mut out, "window", "reboot window", s, tl, y, ROW, colour);
    }
    y += ROW + GAP;
    row_label(&mut out, y, "unavailable / budget", "row-label");
    for s in &tl.budget {
        let (used, max) = s.state.split_once('/').unwrap_or(("0", "0"));
        let (used, max): (f64, f64) = (used.parse().unwrap_or(0.0), max.parse().unwrap_or(0.0));
        let colour = if max > 0.0 && used >= max {
            "#f3c089"
        } else if used > 0.0 {
            "#f9dfb8"
        } else {
            "#f4f5f6"
        };
        bar(
            &mut out,
            "budget",
            "unavailable / budget",
            s,
            tl,
            y,
            ROW,
            colour,
        );
    }
    // The lanes.
    y = lanes_top;
    for lane in &tl.lanes {
        row_label(&mut out, y, &lane.node, "lane-label");
        for s in &lane.segments {
            bar(
                &mut out,
                "phase",
                &lane.node,
                s,
                tl,
                y,
                ROW,
                fill(&s.state, s.waiting.is_some()),
            );
        }
        y += ROW + GAP;
    }
    // The time axis (UTC).
    let span = tl.to.duration_since(tl.from);
    let _ = write!(
        out,
        "<line x1=\"{LABELS}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#6b737b\"/>",
        WIDTH - 10.0
    );
    for t in ticks(tl.from, tl.to) {
        let tx = x(t, tl.from, tl.to);
        let _ = write!(
            out,
            "<line x1=\"{tx:.1}\" y1=\"{top:.1}\" x2=\"{tx:.1}\" y2=\"{y2:.1}\" stroke=\"#6b737b\" stroke-opacity=\"0.25\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>",
            clock(t, span),
            top = 4.0,
            y2 = y + 4.0,
            ty = y + 16.0,
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">UTC</text>",
        WIDTH - 10.0,
        y + 16.0
    );
    // The legend.
    let mut lx = LABELS;
    let ly = y + 30.0;
    for (phase, colour) in PHASES {
        let _ = write!(
            out,
            "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{phase}</text>",
            lx + 13.0,
            ly + 9.0
        );
        lx += 13.0 + phase.len() as f64 * 6.5 + 12.0;
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::wire::ClusterReport;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn node(name: &str, phase: &str, waiting: Option<&str>) -> NodeReport {
        NodeReport {
            name: name.into(),
            policy: Some("workers".into()),
            phase: phase.into(),
            current_version: Some("1.0.0".into()),
            target_version: Some("1.1.0".into()),
            granted: false,
            waiting_reason: waiting.map(str::to_owned),
            waiting_message: waiting.map(|w| format!("because {w}")),
            last_error: (phase == "Failed").then(|| "health check failed".to_owned()),
            progress: None,
        }
    }

    fn policy(target: &str, updated: u32, unavailable: u32, window: &str) -> PolicyReport {
        PolicyReport {
            name: "workers".into(),
            channel: "stable".into(),
            target_version: Some(target.into()),
            paused: false,
            halted_since: None,
            failed_nodes: vec![],
            nodes: 2,
            updated,
            unavailable,
            max_unavailable: 1,
            window: Some(window.into()),
            next_window: None,
            closed_gates: vec![],
        }
    }

    /// The history a sequence of reports leaves, as the store would keep it.
    fn history(reports: &[ClusterReport]) -> Vec<ClusterChange> {
        let mut out = Vec::new();
        let mut prev: Option<&ClusterReport> = None;
        for r in reports {
            for mut c in crate::clusters::changes(prev, r) {
                c.id = out.len() as i64 + 1;
                out.push(c);
            }
            prev = Some(r);
        }
        out
    }

    fn report(at: i64, nodes: Vec<NodeReport>, p: PolicyReport) -> ClusterReport {
        ClusterReport {
            cluster: "prod".into(),
            at: t(at),
            policies: vec![p],
            nodes,
        }
    }

    fn rollout() -> Vec<ClusterChange> {
        history(&[
            report(
                0,
                vec![node("a", "Idle", None), node("b", "Idle", None)],
                policy("1.0.0", 2, 0, "closed"),
            ),
            report(
                100,
                vec![
                    node("a", "Downloading", None),
                    node("b", "Downloading", None),
                ],
                policy("1.1.0", 0, 0, "closed"),
            ),
            report(
                160,
                vec![
                    node("a", "Staged", Some("OutsideWindow")),
                    node("b", "Staged", Some("OutsideWindow")),
                ],
                policy("1.1.0", 0, 0, "closed"),
            ),
            report(
                300,
                vec![
                    node("a", "Draining", None),
                    node("b", "Staged", Some("MaxUnavailable")),
                ],
                policy("1.1.0", 0, 1, "open until 18:00"),
            ),
            report(
                330,
                vec![
                    node("a", "Rebooting", None),
                    node("b", "Staged", Some("MaxUnavailable")),
                ],
                policy("1.1.0", 0, 1, "open until 18:00"),
            ),
            report(
                400,
                vec![node("a", "Healthy", None), node("b", "Draining", None)],
                policy("1.1.0", 1, 1, "open until 18:00"),
            ),
            report(
                500,
                vec![node("a", "Healthy", None), node("b", "Healthy", None)],
                policy("1.1.0", 2, 0, "open until 18:00"),
            ),
        ])
    }

    fn states(segments: &[Segment]) -> Vec<String> {
        segments
            .iter()
            .map(|s| {
                let w = s
                    .waiting
                    .as_ref()
                    .map_or(String::new(), |w| format!("({w})"));
                format!(
                    "{}-{} {}{w}",
                    s.from.as_second() - t(0).as_second(),
                    s.to.as_second() - t(0).as_second(),
                    s.state
                )
            })
            .collect()
    }

    #[test]
    fn a_finished_rollout_spans_from_its_target_to_its_last_change() {
        let tl = build("prod", &rollout(), None, None, t(10_000));
        assert_eq!(tl.policy.as_deref(), Some("workers"));
        assert_eq!(tl.target.as_deref(), Some("1.1.0"));
        assert_eq!(tl.started, Some(t(100)));
        assert_eq!(tl.finished, Some(t(500)));
        // At least a minute of room on each side.
        assert_eq!((tl.from, tl.to), (t(40), t(560)));
        let a = &tl.lanes[0];
        assert_eq!(a.node, "a");
        assert_eq!(
            states(&a.segments),
            [
                "40-100 Idle",
                "100-160 Downloading",
                "160-300 Staged(OutsideWindow)",
                "300-330 Draining",
                "330-400 Rebooting",
                "400-560 Healthy"
            ]
        );
        assert_eq!(
            states(&tl.lanes[1].segments),
            [
                "40-100 Idle",
                "100-160 Downloading",
                "160-300 Staged(OutsideWindow)",
                "300-400 Staged(MaxUnavailable)",
                "400-500 Draining",
                "500-560 Healthy"
            ]
        );
        assert_eq!(
            states(&tl.window),
            ["40-300 closed", "300-560 open"],
            "equal neighbours merge"
        );
        assert_eq!(
            states(&tl.budget),
            ["40-300 0/1", "300-500 1/1", "500-560 0/1"]
        );
        assert_eq!(
            tl.lanes[1].segments[3].detail.as_deref(),
            Some("because MaxUnavailable")
        );
    }

    #[test]
    fn a_rollout_in_progress_runs_to_now_and_a_range_clips() {
        let mut h = rollout();
        h.retain(|c| c.at < t(400));
        let tl = build("prod", &h, Some("workers"), None, t(450));
        assert_eq!(tl.finished, None);
        assert_eq!(tl.to, t(450));
        assert_eq!(
            states(&tl.lanes[0].segments).last().unwrap(),
            "330-450 Rebooting"
        );
        let tl = build("prod", &rollout(), None, Some((t(310), t(420))), t(10_000));
        assert_eq!(
            states(&tl.lanes[0].segments),
            ["310-330 Draining", "330-400 Rebooting", "400-420 Healthy"]
        );
        // Another policy's nodes are not drawn; an unknown policy draws nothing.
        let tl = build("prod", &rollout(), Some("gpu"), None, t(10_000));
        assert!(tl.lanes.is_empty() && tl.window.is_empty() && tl.target.is_none());
    }

    #[test]
    fn the_svg_has_a_bar_per_segment_with_its_times_and_a_failure_reason() {
        let mut reports = vec![
            report(
                0,
                vec![node("a", "Downloading", None)],
                policy("1.1.0", 0, 0, "always"),
            ),
            report(
                90,
                vec![node("a", "Failed", None)],
                policy("1.1.0", 0, 0, "always"),
            ),
        ];
        reports[1].policies[0].nodes = 1;
        let tl = build("prod", &history(&reports), None, None, t(200));
        let svg = svg(&tl);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"phase\"").count(), 2, "{svg}");
        assert!(svg.contains("data-state=\"Failed\""), "{svg}");
        assert!(svg.contains(": health check failed</title>"), "{svg}");
        assert!(svg.contains(&format!("data-from=\"{}\"", t(90))), "{svg}");
        // Every tag closes: it parses as XML.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert!(svg.contains(">UTC</text>"));
    }

    #[test]
    fn ticks_are_round() {
        let ts = ticks(t(7), t(400));
        assert!(ts.len() <= 9 && ts.len() >= 3, "{ts:?}");
        assert!(ts.iter().all(|t| t.as_second() % 60 == 0), "{ts:?}");
    }
}
