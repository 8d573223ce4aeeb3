//! The dashboard's pages: server-rendered HTML, readable without JavaScript. Every text that
//! comes from a machine, a release or an operator goes through [`esc`].

use std::fmt::Write as _;

use jiff::Timestamp;
use slipway_api::wire::{ClusterReport, EventKind};

use super::view::{MachineFilter, MachineRow, MachineState, Overview, ReleaseRow};
use crate::store::EventRecord;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A time for humans: `2026-11-29 10:12:03 UTC (5 min ago)`.
pub fn when(t: Timestamp, now: Timestamp) -> String {
    let abs = t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    format!(
        "<time datetime=\"{}\" title=\"{abs}\">{}</time>",
        t,
        esc(&ago(t, now))
    )
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`, `in 4 min`.
pub fn ago(t: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - t.as_second();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let text = match n {
        0..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// The pages of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/`.
    Overview,
    /// `/machines` and one machine.
    Machines,
    /// `/releases`.
    Releases,
    /// `/cluster`.
    Cluster,
}

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The stylesheet, served at `/assets/dashboard.css`.
pub fn stylesheet() -> &'static str {
    CSS
}

/// The script, served at `/assets/dashboard.js`.
pub fn script() -> &'static str {
    JS
}

/// A whole page around `body` (the part that live updates replace).
pub fn page(title: &str, current: Page, body: &str) -> String {
    let nav = [
        (Page::Overview, "/", "Overview"),
        (Page::Machines, "/machines", "Machines"),
        (Page::Releases, "/releases", "Releases"),
        (Page::Cluster, "/cluster", "Cluster"),
    ]
    .iter()
    .map(|(p, href, label)| {
        let here = if *p == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{here}>{label}</a>")
    })
    .collect::<Vec<_>>()
    .join("");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Slipway</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
         </head><body><header><strong>Slipway</strong><nav>{nav}</nav>\
         <span id=\"live-status\" class=\"muted\">static</span></header>\
         <main id=\"live\">{body}</main>\
         <script src=\"/assets/dashboard.js\" defer></script></body></html>\n",
        title = esc(title),
    )
}

fn state_badge(s: MachineState) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", s.as_str())
}

/// The overview's body.
pub fn overview(o: &Overview) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h1>Fleet</h1><section class=\"cards\"><div class=\"card\"><div class=\"n\" id=\"count-machines\">{}</div>machines</div>",
        o.machines
    );
    for (state, n) in &o.states {
        let _ = write!(
            h,
            "<a class=\"card s-{s}\" href=\"/machines?state={s}\"><div class=\"n\" id=\"count-{s}\">{n}</div>{s}</a>",
            s = state.as_str()
        );
    }
    h.push_str("</section><h2>Channels</h2>");
    if o.channels.is_empty() {
        h.push_str("<p class=\"muted\">No channel yet: publish a release with <code>slipway publish</code>.</p>");
    }
    for c in &o.channels {
        let target = c
            .target
            .as_ref()
            .map_or("no target".to_owned(), |t| format!("target {t}"));
        let paused = if c.paused {
            " <span class=\"badge s-failed\">paused</span>"
        } else {
            ""
        };
        let pct = if c.machines == 0 {
            0.0
        } else {
            100.0 * c.updated as f64 / c.machines as f64
        };
        let _ = write!(
            h,
            "<section class=\"channel\" id=\"channel-{id}\"><h3>{name} <small>{target}</small>{paused}</h3>\
             <p><meter min=\"0\" max=\"100\" value=\"{pct:.0}\"></meter> {updated} of {machines} machines on the target ({pct:.0}%)</p>",
            id = esc(&c.name),
            name = esc(&c.name),
            target = esc(&target),
            updated = c.updated,
            machines = c.machines,
        );
        h.push_str("<table><thead><tr><th>version</th><th>machines</th></tr></thead><tbody>");
        for v in &c.versions {
            let _ = write!(
                h,
                "<tr><td><a href=\"/machines?channel={ch}&amp;version={vq}\">{v}</a></td><td>{n}</td></tr>",
                ch = url_part(&c.name),
                vq = url_part(&v.version.to_string()),
                v = esc(&v.version.to_string()),
                n = v.machines
            );
        }
        h.push_str("</tbody></table>");
        if let Some(g) = &c.gate {
            let _ = write!(
                h,
                "<p class=\"gate\">Health gate: <strong>{}</strong>",
                esc(g)
            );
            if let Some(n) = &c.gate_counts {
                let _ = write!(
                    h,
                    " &middot; open waves: {} reached the target, {} healthy, {} failed, {} overdue, {} updating",
                    n.reached, n.healthy, n.failed, n.overdue, n.updating
                );
            }
            h.push_str("</p>");
        }
        if let Some(halt) = &c.halt {
            let _ = write!(
                h,
                "<p class=\"halt\"><span class=\"badge s-failed\">halted</span> {at}: {reason}. \
                 Resume with <code>slipway resume --channel {name}</code> (failures so far are accepted).</p>",
                at = when(halt.at, o.at),
                reason = esc(&halt.reason),
                name = esc(&c.name),
            );
        }
        if !c.failing.is_empty() {
            h.push_str("<table class=\"failing\"><thead><tr><th>failing machine</th><th>why</th></tr></thead><tbody>");
            for f in &c.failing {
                let _ = write!(
                    h,
                    "<tr><td><a href=\"/machines/{id}\">{name}</a></td><td>{why}</td></tr>",
                    id = url_part(&f.id),
                    name = esc(&f.id),
                    why = esc(&f.why),
                );
            }
            h.push_str("</tbody></table>");
        }
        if !c.waves.is_empty() {
            h.push_str("<table class=\"waves\"><thead><tr><th>wave</th><th>opens</th><th>covers</th><th>updated</th><th>state</th></tr></thead><tbody>");
            for (i, w) in c.waves.iter().enumerate() {
                let opens = w.opens_at.map_or("—".to_owned(), |t| when(t, o.at));
                let why = w
                    .why
                    .as_deref()
                    .map(|y| format!(" <small class=\"why\">{}</small>", esc(y)))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<tr id=\"wave-{id}-{n}\"><td>{n} (+{after}, {pct:.0}%)</td><td>{opens}</td><td>{m}</td><td>{u} of {m}</td><td><span class=\"badge w-{state}\">{state}</span>{why}</td></tr>",
                    id = esc(&c.name),
                    n = i + 1,
                    after = esc(&w.after),
                    pct = w.fraction * 100.0,
                    m = w.machines,
                    u = w.updated,
                    state = esc(&w.state),
                );
            }
            h.push_str("</tbody></table>");
        }
        h.push_str("</section>");
    }
    h
}

/// A page of the machines table, and where it stands.
pub struct MachinesView<'a> {
    /// The page's rows.
    pub rows: &'a [MachineRow],
    /// Where the next page starts, when more may match.
    pub next: Option<&'a str>,
    /// Machines read to find them.
    pub scanned: u64,
    /// Machines the server knows (the overview's count).
    pub total: u64,
    /// The filter and page asked for.
    pub filter: &'a MachineFilter,
    /// Channel names for the channel filter.
    pub channels: &'a [String],
}

/// The machines table: the filter form, one page of matching machines, and links to the
/// first and next pages.
pub fn machines(v: &MachinesView<'_>, now: Timestamp) -> String {
    let filter = v.filter;
    let mut h = String::from("<h1>Machines</h1>");
    let sel = |v: &Option<String>, x: &str| {
        if v.as_deref() == Some(x) {
            " selected"
        } else {
            ""
        }
    };
    let _ = write!(
        h,
        "<form class=\"filters\" method=\"get\" action=\"/machines\" id=\"machine-filter\">\
         <input type=\"search\" name=\"q\" placeholder=\"id or group\" value=\"{q}\" aria-label=\"search\">",
        q = esc(filter.q.as_deref().unwrap_or(""))
    );
    h.push_str("<select name=\"state\" aria-label=\"state\"><option value=\"\">any state</option>");
    for s in MachineState::ALL {
        let _ = write!(
            h,
            "<option value=\"{0}\"{1}>{0}</option>",
            s.as_str(),
            sel(&filter.state, s.as_str())
        );
    }
    h.push_str(
        "</select><select name=\"channel\" aria-label=\"channel\"><option value=\"\">any channel</option>",
    );
    for c in v.channels {
        let _ = write!(
            h,
            "<option value=\"{0}\"{1}>{0}</option>",
            esc(c),
            sel(&filter.channel, c)
        );
    }
    let _ = write!(
        h,
        "</select><input name=\"version\" placeholder=\"version\" value=\"{ver}\" aria-label=\"version\" size=\"10\">\
         <input name=\"prefix\" placeholder=\"id starts with\" value=\"{prefix}\" aria-label=\"id prefix\" size=\"12\">\
         <input name=\"group\" placeholder=\"group\" value=\"{group}\" aria-label=\"group\" size=\"10\">{limit}\
         <button type=\"submit\">Filter</button> <a href=\"/machines\">clear</a></form>",
        ver = esc(filter.version.as_deref().unwrap_or("")),
        prefix = esc(filter.prefix.as_deref().unwrap_or("")),
        group = esc(filter.group.as_deref().unwrap_or("")),
        limit = filter.limit.map_or(String::new(), |n| format!(
            "<input type=\"hidden\" name=\"limit\" value=\"{n}\">"
        )),
    );
    let first = filter.after.as_deref().is_none_or(|a| a.trim().is_empty());
    let n = v.rows.len();
    let count = match (first, v.next) {
        (true, None) => format!("{n} of {} machines match", v.total),
        (false, None) => format!("{n} more match; the last page"),
        (_, Some(_)) if n > 0 && filter.limit.unwrap_or(super::SHOWN_ROWS) as usize == n => {
            format!("showing {n} of {} machines; more on the next page", v.total)
        }
        (_, Some(next)) => format!(
            "{n} match among the {} machines read (up to {}); the next page reads on",
            v.scanned,
            esc(next)
        ),
    };
    let _ = write!(
        h,
        "<p class=\"muted\" id=\"machine-count\" data-shown=\"{n}\" data-next=\"{next}\">{count}</p>",
        next = esc(v.next.unwrap_or("")),
    );
    let mut pages = String::new();
    if !first {
        let _ = write!(
            pages,
            "<a id=\"first-page\" href=\"/machines?{}\">« first page</a> ",
            esc(&filter.query_string(None))
        );
    }
    if let Some(next) = v.next {
        let _ = write!(
            pages,
            "<a id=\"next-page\" href=\"/machines?{}\">next page »</a>",
            esc(&filter.query_string(Some(next)))
        );
    }
    if !pages.is_empty() {
        let _ = write!(h, "<p class=\"pages\">{pages}</p>");
    }
    h.push_str(
        "<table id=\"machines\"><thead><tr><th>machine</th><th>state</th><th>channel</th><th>version</th>\
         <th>target</th><th>last event</th><th>last seen</th><th>last error</th></tr></thead><tbody>",
    );
    for r in v.rows {
        let m = &r.machine;
        let last_event = match (m.last_event, m.last_event_at) {
            (Some(e), Some(at)) => format!("{} {}", e.as_str(), when(at, now)),
            (Some(e), None) => e.as_str().to_owned(),
            _ => "—".to_owned(),
        };
        let _ = write!(
            h,
            "<tr data-machine=\"{ida}\"><td><a href=\"/machines/{idu}\">{id}</a></td><td>{state}</td><td>{ch}</td><td>{v}</td><td>{t}</td>\
             <td>{last_event}</td><td>{seen}</td><td class=\"err\">{err}</td></tr>",
            ida = esc(&m.id),
            idu = url_part(&m.id),
            id = esc(&m.id),
            state = state_badge(r.state),
            ch = esc(&m.channel),
            v = esc(&m.version.to_string()),
            t = r
                .target
                .as_ref()
                .map_or("—".to_owned(), |t| esc(&t.to_string())),
            seen = when(m.last_seen, now),
            err = esc(m.last_error.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</tbody></table>");
    h
}

fn event_class(e: EventKind) -> &'static str {
    match e {
        EventKind::Failed | EventKind::RolledBack => "bad",
        EventKind::Healthy => "good",
        _ => "",
    }
}

/// One machine: its record and a timeline of its events, newest first.
pub fn machine(row: &MachineRow, events: &[EventRecord], now: Timestamp) -> String {
    let m = &row.machine;
    let mut h = format!(
        "<p><a href=\"/machines\">← machines</a></p><h1>{id} {state}</h1><dl class=\"facts\">\
         <dt>channel</dt><dd>{ch}</dd><dt>group</dt><dd>{g}</dd><dt>version</dt><dd>{v}</dd>\
         <dt>target</dt><dd>{t}</dd><dt>arch</dt><dd>{a}</dd><dt>boot id</dt><dd><code>{b}</code></dd>\
         <dt>first seen</dt><dd>{first}</dd><dt>last seen</dt><dd>{last}</dd><dt>last error</dt><dd class=\"err\">{err}</dd></dl>",
        id = esc(&m.id),
        state = state_badge(row.state),
        ch = esc(&m.channel),
        g = esc(if m.group.is_empty() { "—" } else { &m.group }),
        v = esc(&m.version.to_string()),
        t = row
            .target
            .as_ref()
            .map_or("—".to_owned(), |t| esc(&t.to_string())),
        a = esc(&m.arch),
        b = esc(&m.boot_id),
        first = when(m.first_seen, now),
        last = when(m.last_seen, now),
        err = esc(m.last_error.as_deref().unwrap_or("—")),
    );
    h.push_str("<h2>Timeline</h2>");
    if events.is_empty() {
        h.push_str("<p class=\"muted\">No event reported yet.</p>");
    }
    h.push_str("<ol class=\"timeline\" id=\"timeline\">");
    for e in events {
        let _ = write!(
            h,
            "<li class=\"{cls}\" data-event-id=\"{eid}\"><span class=\"ev\">{kind}</span> <span class=\"ver\">{v}</span> {at}<div class=\"detail\">{d}</div></li>",
            cls = event_class(e.event),
            eid = e.id,
            kind = e.event.as_str(),
            v = esc(&e.version.to_string()),
            at = when(e.at, now),
            d = esc(&e.detail),
        );
    }
    h.push_str("</ol>");
    h
}

/// Releases per channel, advisories and the machines still running advised releases.
pub fn releases(rows: &[ReleaseRow], now: Timestamp) -> String {
    let mut h = String::from("<h1>Releases</h1>");
    if rows.is_empty() {
        h.push_str("<p class=\"muted\">No release published yet.</p>");
        return h;
    }
    h.push_str(
        "<table id=\"releases\"><thead><tr><th>channel</th><th>version</th><th>published</th><th>running</th>\
         <th>download</th><th>advisory</th></tr></thead><tbody>",
    );
    for r in rows {
        let advised_running = r.advisory.is_some() && r.running > 0;
        let mut marks = String::new();
        if r.target {
            marks.push_str(" <span class=\"badge s-up-to-date\">target</span>");
        }
        if r.floor {
            marks.push_str(" <span class=\"badge\">floor</span>");
        }
        let advisory = match &r.advisory {
            Some(a) => {
                let mut s = format!("<strong>{}</strong> {}", esc(&a.id), esc(&a.summary));
                if advised_running {
                    let ids: Vec<String> = r
                        .advised_machines
                        .iter()
                        .map(|id| format!("<a href=\"/machines/{}\">{}</a>", url_part(id), esc(id)))
                        .collect();
                    let more = if r.running as usize > r.advised_machines.len() {
                        format!(
                            " and {} more",
                            r.running as usize - r.advised_machines.len()
                        )
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        s,
                        "<div class=\"err\">still running it: {}{more}</div>",
                        ids.join(", ")
                    );
                }
                s
            }
            None => "—".to_owned(),
        };
        let _ = write!(
            h,
            "<tr class=\"{cls}\"><td>{ch}</td><td>{v}{marks}</td><td>{at}</td><td><a href=\"/machines?channel={chq}&amp;version={vq}\">{n}</a></td><td class=\"transfer\">{download}</td><td>{advisory}</td></tr>",
            cls = if advised_running {
                "advised-running"
            } else {
                ""
            },
            ch = esc(&r.channel),
            v = esc(&r.version.to_string()),
            at = when(r.published_at, now),
            chq = url_part(&r.channel),
            vq = url_part(&r.version.to_string()),
            n = r.running,
            download = download(r),
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// How the machines that staged a release got its image: deltas, share fetched, bytes saved.
fn download(r: &ReleaseRow) -> String {
    let Some(t) = &r.transfer else {
        return "—".to_owned();
    };
    let share = if t.image_bytes == 0 {
        0.0
    } else {
        t.fetched_bytes as f64 / t.image_bytes as f64 * 100.0
    };
    format!(
        "{staged} staged, {deltas} as deltas; fetched {share:.1}% of the image, saved {saved}",
        staged = t.staged,
        deltas = t.deltas,
        saved = bytes(r.saved_bytes()),
    )
}

/// A byte count for people (binary units).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What the operators of each cluster last reported.
pub fn clusters(reports: &[ClusterReport], now: Timestamp) -> String {
    let mut h = String::from("<h1>Clusters</h1>");
    if reports.is_empty() {
        h.push_str(
            "<p class=\"muted\">No operator has reported yet. Start <code>slipway-operator</code> with \
             <code>--server-url</code> and an admin token to see its policies and nodes here.</p>",
        );
    }
    for r in reports {
        let _ = write!(
            h,
            "<section class=\"cluster\" data-cluster=\"{c}\"><h2>{c} <small>reported {at}</small></h2>",
            c = esc(&r.cluster),
            at = when(r.at, now)
        );
        h.push_str(
            "<table class=\"policies\"><thead><tr><th>policy</th><th>channel</th><th>target</th><th>updated</th>\
             <th>unavailable</th><th>window</th><th>state</th></tr></thead><tbody>",
        );
        for p in &r.policies {
            let state = if let Some(since) = p.halted_since {
                format!(
                    "<span class=\"badge s-failed\">halted</span> {} after {}",
                    when(since, now),
                    esc(&p.failed_nodes.join(", "))
                )
            } else if p.paused {
                "<span class=\"badge s-stale\">paused</span>".to_owned()
            } else if !p.closed_gates.is_empty() {
                format!(
                    "<span class=\"badge s-failed\">gate closed</span> {}",
                    esc(&p.closed_gates.join("; "))
                )
            } else {
                "<span class=\"badge s-up-to-date\">active</span>".to_owned()
            };
            // The operator says `always`, `open until …` or `closed`.
            let window = match (p.window.as_deref(), p.next_window) {
                (Some("closed") | None, Some(next)) => format!("closed, opens {}", when(next, now)),
                (Some(w), _) => esc(w),
                (None, None) => "—".to_owned(),
            };
            let _ = write!(
                h,
                "<tr><td><a href=\"/cluster/{cu}/timeline?policy={pu}\" title=\"this rollout's timeline\">{n}</a></td><td>{ch}</td><td>{t}</td><td>{u} of {total}</td><td>{un} of {max}</td><td>{window}</td><td>{state}</td></tr>",
                cu = url_part(&r.cluster),
                pu = url_part(&p.name),
                n = esc(&p.name),
                ch = esc(&p.channel),
                t = esc(p.target_version.as_deref().unwrap_or("—")),
                u = p.updated,
                total = p.nodes,
                un = p.unavailable,
                max = p.max_unavailable,
            );
        }
        h.push_str("</tbody></table>");
        h.push_str(
            "<table class=\"nodes\"><thead><tr><th>node</th><th>policy</th><th>phase</th><th>version</th>\
             <th>waiting</th><th>last error</th></tr></thead><tbody>",
        );
        for n in &r.nodes {
            let version = match (&n.current_version, &n.target_version) {
                (Some(c), Some(t)) if c != t => format!("{} → {}", esc(c), esc(t)),
                (Some(c), _) => esc(c),
                (None, Some(t)) => format!("? → {}", esc(t)),
                (None, None) => "—".to_owned(),
            };
            let mut phase = esc(&n.phase);
            if let Some(pct) = n.progress {
                let _ = write!(
                    phase,
                    " <progress max=\"100\" value=\"{pct}\" title=\"{pct}% downloaded\">{pct}%</progress> {pct}%"
                );
            }
            if n.granted {
                phase.push_str(" <span class=\"badge s-updating\">granted</span>");
            }
            let waiting = match (&n.waiting_reason, &n.waiting_message) {
                (Some(r), Some(m)) => {
                    format!("<span title=\"{}\">{}</span> {}", esc(m), esc(r), esc(m))
                }
                (Some(r), None) => esc(r),
                _ => "—".to_owned(),
            };
            let _ = write!(
                h,
                "<tr data-node=\"{na}\"><td>{name}</td><td>{p}</td><td>{phase}</td><td>{version}</td><td>{waiting}</td><td class=\"err\">{err}</td></tr>",
                na = esc(&n.name),
                name = esc(&n.name),
                p = esc(n.policy.as_deref().unwrap_or("—")),
                err = esc(n.last_error.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</tbody></table></section>");
    }
    h
}

/// A channel's adoption chart on the releases page.
pub fn adoption(channel: &str, svg: &str) -> String {
    format!(
        "<section class=\"adoption\" data-channel=\"{c}\"><h2>Adoption on {c} <small>machines per version, \
         last 7 days · <a href=\"/releases/{u}/adoption.svg\">SVG</a></small></h2><figure class=\"timeline\">{svg}</figure></section>",
        c = esc(channel),
        u = url_part(channel),
    )
}

/// A rollout's timeline page: what it rolled out and when, the picture, and each node's
/// phases as a table (the same facts, for reading and for screen readers).
pub fn timeline(tl: &super::timeline::Timeline, now: Timestamp) -> String {
    let mut h = format!(
        "<h1>Rollout timeline <small>{} · {}</small></h1>",
        esc(&tl.cluster),
        esc(tl.policy.as_deref().unwrap_or("no policy"))
    );
    let state = match (tl.started, tl.finished) {
        (Some(s), Some(f)) => format!(
            "started {}, <strong>finished</strong> {} after {}",
            when(s, now),
            when(f, now),
            span(f.duration_since(s))
        ),
        (Some(s), None) => format!("started {}, <strong>in progress</strong>", when(s, now)),
        _ => "no rollout recorded".to_owned(),
    };
    let _ = write!(
        h,
        "<p class=\"timeline-summary\">target <strong>{}</strong>: {state}. Drawn from {} to {} UTC \
         · <a href=\"/cluster/{c}/timeline.svg?{q}\">SVG</a> · <a href=\"/cluster\">cluster view</a></p>",
        esc(tl.target.as_deref().unwrap_or("—")),
        tl.from.strftime("%Y-%m-%d %H:%M:%S"),
        tl.to.strftime("%H:%M:%S"),
        c = url_part(&tl.cluster),
        q = tl
            .policy
            .as_deref()
            .map_or(String::new(), |p| format!("policy={}", url_part(p))),
    );
    let _ = write!(
        h,
        "<figure class=\"timeline\">{}</figure>",
        super::timeline::svg(tl)
    );
    h.push_str(
        "<table class=\"phases\"><thead><tr><th>node</th><th>phase</th><th>from</th><th>for</th>\
         <th>why</th></tr></thead><tbody>",
    );
    for lane in &tl.lanes {
        for s in &lane.segments {
            let _ = write!(
                h,
                "<tr data-node=\"{n}\" data-state=\"{st}\"><td>{n}</td><td>{st}</td><td>{from}</td><td>{d}</td><td>{why}</td></tr>",
                n = esc(&lane.node),
                st = esc(&s.state),
                from = s.from.strftime("%H:%M:%S"),
                d = span(s.to.duration_since(s.from)),
                why = esc(&match (&s.waiting, &s.detail) {
                    (Some(w), Some(d)) => format!("{w}: {d}"),
                    (Some(w), None) => w.clone(),
                    (None, Some(d)) => d.clone(),
                    (None, None) => String::new(),
                }),
            );
        }
    }
    h.push_str("</tbody></table>");
    h
}

/// `45 s`, `3 min 20 s`, `2 h 5 min`.
pub fn span(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        ..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A page for an error (unknown machine, bad filter).
pub fn error(message: &str) -> String {
    format!(
        "<h1>Not here</h1><p class=\"err\">{}</p><p><a href=\"/\">back to the overview</a></p>",
        esc(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_machines_cannot_inject_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_part("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_800_000_000 - s).unwrap();
        assert_eq!(ago(at(5), now), "5 s ago");
        assert_eq!(ago(at(300), now), "5 min ago");
        assert_eq!(ago(at(7200), now), "2 h ago");
        assert_eq!(ago(at(3 * 86_400), now), "3 d ago");
        assert_eq!(ago(at(-120), now), "in 2 min");
    }
}
