//! Each channel's adoption over time: machines per version, stacked (oldest version at the
//! bottom), from the samples the server takes on a fixed schedule
//! ([`crate::state::ADOPTION_EVERY`]). Server-rendered SVG; tooltips are SVG `<title>`s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use semver::Version;

use super::html::esc;
use crate::store::AdoptionSample;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 30.0;

const PALETTE: [&str; 8] = [
    "#9aa1a9", "#5b9bd5", "#8e6cc4", "#f0a030", "#3bb3b3", "#c45f9e", "#7a8b3c", "#b07a4f",
];
const TARGET: &str = "#3c9d4e";

/// Samples by time: each version's machines.
fn by_time(samples: &[AdoptionSample]) -> BTreeMap<Timestamp, BTreeMap<&Version, u64>> {
    let mut out: BTreeMap<Timestamp, BTreeMap<&Version, u64>> = BTreeMap::new();
    for s in samples {
        *out.entry(s.at).or_default().entry(&s.version).or_default() += s.machines;
    }
    out
}

/// The chart of one channel's samples; `target`: the version promoted (drawn in green).
pub fn svg(channel: &str, samples: &[AdoptionSample], target: Option<&Version>) -> String {
    let times = by_time(samples);
    let mut versions: Vec<&Version> = samples.iter().map(|s| &s.version).collect();
    versions.sort();
    versions.dedup();
    let peak = times
        .values()
        .map(|v| v.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (first, last) = match (times.keys().next(), times.keys().next_back()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => (Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH),
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = (last.as_millisecond() - first.as_millisecond()).max(1) as f64;
    let x = |t: Timestamp| {
        if times.len() < 2 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * (t.as_millisecond() - first.as_millisecond()) as f64 / span
        }
    };
    let y = |n: u64| TOP + plot_h * (1.0 - n as f64 / peak as f64);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"adoption\" data-channel=\"{c}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"Machines per version on {c}\" \
         font-family=\"sans-serif\" font-size=\"11\"><style>text{{fill:#1d2329}}</style>",
        c = esc(channel)
    );
    if times.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{LEFT}\" y=\"{:.1}\">No samples yet: the server counts machines per version every few minutes.</text></svg>",
            TOP + plot_h / 2.0
        );
        return out;
    }
    // The stack: for each time, the machines below each version.
    let mut colour_of = BTreeMap::new();
    let mut next = 0;
    for v in &versions {
        let c = if Some(*v) == target {
            TARGET
        } else {
            let c = PALETTE[next % PALETTE.len()];
            next += 1;
            c
        };
        colour_of.insert(*v, c);
    }
    let latest = times.values().next_back().cloned().unwrap_or_default();
    for (i, v) in versions.iter().enumerate() {
        let mut top = Vec::new();
        let mut bottom = Vec::new();
        let mut most = 0;
        for (t, counts) in &times {
            let below: u64 = versions[..i]
                .iter()
                .map(|w| counts.get(w).copied().unwrap_or(0))
                .sum();
            let here = counts.get(v).copied().unwrap_or(0);
            most = most.max(here);
            top.push((x(*t), y(below + here)));
            bottom.push((x(*t), y(below)));
        }
        if times.len() == 1 {
            // One sample: a bar.
            let (cx, ty) = top[0];
            let by = bottom[0].1;
            top = vec![(cx - 8.0, ty), (cx + 8.0, ty)];
            bottom = vec![(cx - 8.0, by), (cx + 8.0, by)];
        }
        let mut d = String::new();
        for (k, (px, py)) in top.iter().chain(bottom.iter().rev()).enumerate() {
            let _ = write!(d, "{}{px:.1},{py:.1}", if k == 0 { "M" } else { " L" });
        }
        d.push_str(" Z");
        let now = latest.get(v).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<g class=\"adoption-version\" data-version=\"{ver}\" data-latest=\"{now}\" data-peak=\"{most}\">\
             <title>{ver}: {now} machines at the last sample (at most {most})</title>\
             <path d=\"{d}\" fill=\"{colour}\" fill-opacity=\"0.85\" stroke=\"#fff\" stroke-width=\"0.5\"/></g>",
            ver = esc(&v.to_string()),
            colour = colour_of[v],
        );
    }
    // Axes: machines on the left, time below (UTC).
    for n in [0, peak / 2, peak] {
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{x2:.1}\" y2=\"{yy:.1}\" stroke=\"#6b737b\" stroke-opacity=\"0.25\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{n}</text>",
            yy = y(n),
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y(n) + 4.0,
        );
    }
    let format = if last.duration_since(first) > jiff::SignedDuration::from_hours(24) {
        "%m-%d %H:%M"
    } else {
        "%H:%M"
    };
    let axis_y = HEIGHT - BOTTOM + 16.0;
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{axis_y:.1}\">{}</text>\
         <text x=\"{:.1}\" y=\"{axis_y:.1}\" text-anchor=\"end\">{} UTC</text>",
        first.strftime(format),
        WIDTH - RIGHT,
        last.strftime(format),
    );
    // The legend, newest version first, with the last sample's count.
    let mut ly = TOP + 4.0;
    for v in versions.iter().rev() {
        let now = latest.get(v).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\
             <text class=\"legend\" x=\"{tx:.1}\" y=\"{ty:.1}\">{ver}{mark}: {now}</text>",
            lx = WIDTH - RIGHT + 14.0,
            c = colour_of[v],
            tx = WIDTH - RIGHT + 28.0,
            ty = ly + 9.0,
            ver = esc(&v.to_string()),
            mark = if Some(*v) == target { " (target)" } else { "" },
        );
        ly += 16.0;
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: i64, version: &str, machines: u64) -> AdoptionSample {
        AdoptionSample {
            at: Timestamp::from_second(1_800_000_000 + secs).unwrap(),
            version: version.parse().unwrap(),
            machines,
        }
    }

    #[test]
    fn versions_stack_oldest_at_the_bottom_with_their_latest_counts() {
        let samples = [
            sample(0, "1.0.0", 10),
            sample(300, "1.0.0", 6),
            sample(300, "2.0.0", 4),
            sample(600, "2.0.0", 10),
        ];
        let target: Version = "2.0.0".parse().unwrap();
        let svg = svg("stable", &samples, Some(&target));
        assert!(
            svg.contains("data-version=\"1.0.0\" data-latest=\"0\" data-peak=\"10\""),
            "{svg}"
        );
        assert!(
            svg.contains("data-version=\"2.0.0\" data-latest=\"10\" data-peak=\"10\""),
            "{svg}"
        );
        assert!(svg.contains("2.0.0 (target): 10"), "{svg}");
        assert!(svg.contains(&format!("fill=\"{TARGET}\"")));
        // 1.0.0 is drawn first (below), 2.0.0 over it.
        assert!(svg.find("data-version=\"1.0.0\"") < svg.find("data-version=\"2.0.0\""));
        // Three samples: each area has three points on top and three below.
        let path = svg.split("data-version=\"2.0.0\"").nth(1).unwrap();
        let d = path
            .split("d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches(['M', 'L']).count(), 6, "{d}");
    }

    #[test]
    fn no_samples_say_so_and_one_sample_is_a_bar() {
        assert!(svg("beta", &[], None).contains("No samples yet"));
        let one = svg("beta", &[sample(0, "1.0.0", 3)], None);
        assert!(one.contains("data-latest=\"3\""), "{one}");
        assert_eq!(one.matches("<path").count(), 1);
    }
}
