//! The dashboard's pictures against a real server: a rollout an operator reported step by step
//! is drawn as a timeline (one lane per node, the window and the budget above), as SVG that
//! reads without JavaScript, and a real headless Chromium shows it, with a screenshot kept in
//! `target/dashboard/`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, t0};
use crate::webdriver::Browser;

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

/// One node as the operator reports it: `phase`, or `phase:Reason` while it waits.
fn node(name: &str, phase: &str) -> Value {
    let (phase, waiting) = phase
        .split_once(':')
        .map_or((phase, None), |(p, w)| (p, Some(w)));
    json!({
        "name": name, "policy": "workers", "phase": phase,
        "currentVersion": if phase == "Healthy" { "2.0.0" } else { "1.0.0" },
        "targetVersion": "2.0.0",
        "granted": matches!(phase, "Draining" | "Rebooting" | "Verifying"),
        "waitingReason": waiting,
        "waitingMessage": waiting.map(|w| format!("waits: {w}")),
        "lastError": (phase == "Failed").then_some("health check failed: kubelet not ready"),
        "progress": (phase == "Downloading").then_some(40),
    })
}

/// The rollout as the operator saw it: (seconds after t0, window, nodes a b c).
const STEPS: [(i64, &str, [&str; 3]); 8] = [
    (0, "closed", ["Idle", "Idle", "Idle"]),
    (60, "closed", ["Downloading", "Downloading", "Downloading"]),
    (
        180,
        "closed",
        [
            "Staged:OutsideWindow",
            "Staged:OutsideWindow",
            "Staged:OutsideWindow",
        ],
    ),
    (
        600,
        "open until 18:00",
        ["Draining", "Staged:MaxUnavailable", "Staged:MaxUnavailable"],
    ),
    (
        660,
        "open until 18:00",
        [
            "Rebooting",
            "Staged:MaxUnavailable",
            "Staged:MaxUnavailable",
        ],
    ),
    (
        780,
        "open until 18:00",
        ["Healthy", "Draining", "Staged:MaxUnavailable"],
    ),
    (900, "open until 18:00", ["Healthy", "Failed", "Draining"]),
    (1080, "open until 18:00", ["Healthy", "Failed", "Healthy"]),
];

fn report(secs: i64, window: &str, phases: [&str; 3]) -> Value {
    let nodes: Vec<Value> = ["a", "b", "c"]
        .iter()
        .zip(phases)
        .map(|(n, p)| node(n, p))
        .collect();
    let healthy = phases.iter().filter(|p| **p == "Healthy").count();
    let unavailable = phases
        .iter()
        .filter(|p| matches!(**p, "Draining" | "Rebooting" | "Verifying"))
        .count();
    json!({
        "cluster": "prod",
        "at": at(secs),
        "policies": [{
            "name": "workers", "channel": "stable",
            "targetVersion": if secs == 0 { "1.0.0" } else { "2.0.0" },
            "nodes": 3, "updated": if secs == 0 { 3 } else { healthy },
            "unavailable": unavailable, "maxUnavailable": 1, "window": window,
        }],
        "nodes": nodes,
    })
}

/// The steps, with node b recovering instead of failing when `recovers`.
fn steps(recovers: bool) -> Vec<(i64, &'static str, [&'static str; 3])> {
    STEPS
        .iter()
        .map(|(secs, window, phases)| {
            let phases = phases.map(|p| {
                if recovers && p == "Failed" {
                    "Healthy"
                } else {
                    p
                }
            });
            (*secs, *window, phases)
        })
        .collect()
}

async fn reported() -> TestServer {
    report_steps(&steps(false)).await
}

async fn report_steps(steps: &[(i64, &str, [&str; 3])]) -> TestServer {
    let s = TestServer::start(Backend::Sqlite).await;
    for &(secs, window, phases) in steps {
        // Each report is sent several times, as the operator does: only changes are kept.
        for _ in 0..2 {
            let (st, b) = s
                .admin(Method::POST, "/cluster", Some(report(secs, window, phases)))
                .await;
            assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
        }
    }
    s.set_now(at(4000));
    s
}

/// The recorded phases of `node` from the steps, merged like the timeline merges them:
/// (state, waiting reason, seconds it started).
fn expected_lane(i: usize) -> Vec<(String, Option<String>, i64)> {
    expected_lane_of(&steps(false), i)
}

fn expected_lane_of(
    steps: &[(i64, &str, [&str; 3])],
    i: usize,
) -> Vec<(String, Option<String>, i64)> {
    let mut out: Vec<(String, Option<String>, i64)> = Vec::new();
    for &(secs, _, phases) in steps {
        let (phase, waiting) = phases[i]
            .split_once(':')
            .map_or((phases[i], None), |(p, w)| (p, Some(w.to_owned())));
        if out
            .last()
            .is_none_or(|(p, w, _)| p != phase || *w != waiting)
        {
            out.push((phase.to_owned(), waiting, secs));
        }
    }
    out
}

#[tokio::test]
async fn a_reported_rollout_is_drawn_lane_by_lane() {
    let s = reported().await;
    let (st, body) = s.get("/api/cluster/prod/timeline").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let tl: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tl["policy"], "workers");
    assert_eq!(tl["target"], "2.0.0");
    assert_eq!(tl["started"], json!(at(60)));
    // Not finished: node b failed, so not every node is on the target.
    assert!(tl["finished"].is_null(), "{tl}");
    assert_eq!(
        tl["to"],
        json!(at(4000)),
        "an unfinished rollout runs to now"
    );
    let lanes = tl["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), 3);
    for (i, lane) in lanes.iter().enumerate() {
        assert_eq!(lane["node"], ["a", "b", "c"][i]);
        let got: Vec<(String, Option<String>, i64)> = lane["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let from: Timestamp = s["from"].as_str().unwrap().parse().unwrap();
                (
                    s["state"].as_str().unwrap().to_owned(),
                    s["waiting"].as_str().map(str::to_owned),
                    from.duration_since(t0()).as_secs().max(0),
                )
            })
            .collect();
        // The first segment starts at the drawn edge (before t0+60), the rest at their report.
        let mut want = expected_lane(i);
        want[0].2 = got[0].2;
        assert_eq!(got, want, "lane {i}");
    }
    let failed = &lanes[1]["segments"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(failed["state"], "Failed");
    assert_eq!(failed["detail"], "health check failed: kubelet not ready");
    let window: Vec<&str> = tl["window"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(window, ["closed", "open"]);
    let budget: Vec<&str> = tl["budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(budget, ["0/1", "1/1", "0/1"]);

    // The page without JavaScript: the SVG inline, and the same phases as a table.
    let (st, page) = s.get("/cluster/prod/timeline?policy=workers").await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("<svg"), "{page}");
    assert!(page.contains("<strong>in progress</strong>"), "{page}");
    let bars = page.matches("class=\"phase\"").count();
    let segments: usize = lanes
        .iter()
        .map(|l| l["segments"].as_array().unwrap().len())
        .sum();
    assert_eq!(bars, segments);
    assert!(
        page.contains("<td>MaxUnavailable: waits: MaxUnavailable</td>"),
        "{page}"
    );
    // The SVG alone, for embedding elsewhere.
    let resp = s
        .client
        .get(format!("{}/cluster/prod/timeline.svg", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let svg = resp.text().await.unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    // A range draws just that.
    let (_, body) = s
        .get(&format!(
            "/api/cluster/prod/timeline?from={}&to={}",
            at(600),
            at(700)
        ))
        .await;
    let part: Value = serde_json::from_str(&body).unwrap();
    let a: Vec<&str> = part["lanes"][0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(a, ["Draining", "Rebooting"]);
    // Errors say what is wrong.
    let (st, body) = s.get("/api/cluster/nowhere/timeline").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("unknown-cluster"), "{body}");
    let (st, body) = s
        .get(&format!("/api/cluster/prod/timeline?from={}", at(600)))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, _) = s.get("/cluster/nowhere/timeline").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The cluster view links each policy to its timeline and shows download progress.
    let (_, page) = s.get("/cluster").await;
    assert!(
        page.contains("href=\"/cluster/prod/timeline?policy=workers\""),
        "{page}"
    );
    assert!(page.contains("<td>open until 18:00</td>"), "{page}");
    assert!(!page.contains("open (open until"), "{page}");
    // A node downloading shows how far it is.
    let (st, _) = s
        .admin(
            Method::POST,
            "/cluster",
            Some(report(4100, "closed", ["Healthy", "Failed", "Downloading"])),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, page) = s.get("/cluster").await;
    assert!(
        page.contains("<progress max=\"100\" value=\"40\" title=\"40% downloaded\">"),
        "{page}"
    );
}

#[tokio::test]
async fn a_finished_rollout_ends_where_its_last_node_did() {
    let s = report_steps(&steps(true)).await;
    s.set_now(at(9000));
    let (_, body) = s.get("/api/cluster/prod/timeline").await;
    let tl: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tl["finished"], json!(at(1080)), "{tl}");
    // A minute of room after the end, not up to now.
    assert_eq!(tl["to"], json!(at(1140)));
    let (_, page) = s.get("/cluster/prod/timeline").await;
    assert!(page.contains("<strong>finished</strong>"), "{page}");
    assert!(page.contains("after 17 min 0 s"), "{page}");
}

#[tokio::test]
async fn a_browser_shows_a_finished_rollouts_timeline_and_it_redraws_live() {
    let steps = steps(true);
    let s = report_steps(&steps).await;
    s.set_now(at(9000));
    let b = Browser::start().await;
    b.goto(&format!("{}/cluster/prod/timeline", s.url)).await;
    b.wait_text("#live-status", "live", Duration::from_secs(10))
        .await;
    let summary = b.text_of(".timeline-summary").await;
    assert!(
        summary.contains("finished") && summary.contains("after 17 min 0 s"),
        "{summary}"
    );
    // What the browser drew, lane by lane, against what the operator reported.
    let drawn = b
        .execute(
            "return [...document.querySelectorAll('svg.timeline g rect')].map(r => { \
             const b = r.getBoundingClientRect(); const g = r.parentNode; \
             return [g.getAttribute('class'), g.dataset.subject, g.dataset.state, \
             g.dataset.waiting || null, b.width, b.height]; })",
        )
        .await;
    let drawn = drawn.as_array().unwrap();
    for bx in drawn {
        assert!(bx[4].as_f64().unwrap() >= 1.0, "{bx}");
        assert!(bx[5].as_f64().unwrap() > 10.0, "{bx}");
    }
    let of = |class: &str, subject: &str| -> Vec<(String, Option<String>)> {
        drawn
            .iter()
            .filter(|d| d[0] == class && d[1] == subject)
            .map(|d| {
                (
                    d[2].as_str().unwrap().to_owned(),
                    d[3].as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    for (i, node) in ["a", "b", "c"].iter().enumerate() {
        let want: Vec<(String, Option<String>)> = expected_lane_of(&steps, i)
            .into_iter()
            .map(|(state, waiting, _)| (state, waiting))
            .collect();
        assert_eq!(of("phase", node), want, "lane {node}");
    }
    let states = |v: Vec<(String, Option<String>)>| -> Vec<String> {
        v.into_iter().map(|(s, _)| s).collect()
    };
    assert_eq!(states(of("window", "reboot window")), ["closed", "open"]);
    assert_eq!(
        states(of("budget", "unavailable / budget")),
        ["0/1", "1/1", "0/1"]
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rollout-timeline.png"), b.screenshot().await).unwrap();

    // The operator reports b rolled back after all: the page redraws without a reload.
    let mut phases = steps[7].2;
    phases[1] = "RolledBack";
    let (st, _) = s
        .admin(
            Method::POST,
            "/cluster",
            Some(report(1200, steps[7].1, phases)),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let start = std::time::Instant::now();
    while b
        .find_all("svg.timeline g.phase[data-state=RolledBack]")
        .await
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the timeline did not redraw"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.text_of(".timeline-summary").await.contains("in progress"));
}

/// Six machines move from 1.0.0 to 2.0.0 over three samples, five minutes apart.
async fn adopting() -> TestServer {
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "2.0.0").await;
    s.promote("stable", "2.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    for (step, on_new) in [(0, 0), (1, 3), (2, 6)] {
        s.set_now(at(step * 300));
        for i in 0..6 {
            let version = if i < on_new { "2.0.0" } else { "1.0.0" };
            s.check(&format!("m-{i}"), "stable", version).await;
        }
        assert_eq!(
            s.state.sample_adoption().await.unwrap(),
            if on_new % 6 == 0 { 1 } else { 2 }
        );
        // The same period again (another replica, or a restart): nothing more.
        assert_eq!(s.state.sample_adoption().await.unwrap(), 0);
    }
    s
}

#[tokio::test]
async fn adoption_is_sampled_and_charted_per_channel() {
    let s = adopting().await;
    let (st, body) = s.get("/api/releases/stable/adoption").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    let got: Vec<(i64, &str, u64)> = a["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let t: Timestamp = x["at"].as_str().unwrap().parse().unwrap();
            (
                t.duration_since(t0()).as_secs(),
                x["version"].as_str().unwrap(),
                x["machines"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "1.0.0", 6),
            (300, "1.0.0", 3),
            (300, "2.0.0", 3),
            (600, "2.0.0", 6)
        ]
    );
    let (_, page) = s.get("/releases").await;
    assert!(page.contains("<h2>Adoption on stable"), "{page}");
    assert!(
        page.contains("data-version=\"2.0.0\" data-latest=\"6\" data-peak=\"6\""),
        "{page}"
    );
    assert!(page.contains("2.0.0 (target): 6"), "{page}");
    let resp = s
        .client
        .get(format!("{}/releases/stable/adoption.svg", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let (st, body) = s.get("/api/releases/nope/adoption").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // Later samples only.
    let (_, body) = s
        .get(&format!("/api/releases/stable/adoption?since={}", at(300)))
        .await;
    let later: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(later["samples"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_browser_shows_the_adoption_chart() {
    let s = adopting().await;
    let b = Browser::start().await;
    b.goto(&format!("{}/releases", s.url)).await;
    let areas = b
        .execute(
            "return [...document.querySelectorAll('svg.adoption g.adoption-version')].map(g => { \
             const r = g.querySelector('path').getBoundingClientRect(); \
             return [g.dataset.version, g.dataset.latest, r.width, r.height]; })",
        )
        .await;
    let areas = areas.as_array().unwrap();
    assert_eq!(areas.len(), 2, "{areas:?}");
    assert_eq!(areas[0][0], "1.0.0");
    assert_eq!(areas[0][1], "0");
    assert_eq!(areas[1][0], "2.0.0");
    assert_eq!(areas[1][1], "6");
    for a in areas {
        assert!(
            a[2].as_f64().unwrap() > 100.0 && a[3].as_f64().unwrap() > 20.0,
            "{a}"
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adoption.png"), b.screenshot().await).unwrap();
}
