//! Health-gated waves through the real HTTP API: 200 simulated machines check and report through
//! `/v1/events`; a bad release halts after its first wave (the channel pauses, names the failing
//! machines, nothing more is offered), a good one opens every wave in order, held while machines
//! of the open waves are still updating. The dashboard, `slipway status` and CloudEvents (to a
//! real HTTP sink) show it. The gate runs in the server's housekeeping every 100 ms here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cloudevents::{Sink, start_sink};
use crate::harness::{Backend, TOKEN, TestServer, t0};

const FLEET: usize = 200;

fn fleet() -> Vec<String> {
    (0..FLEET).map(|i| format!("node-{i:03}")).collect()
}

async fn with_sink(s: &TestServer) -> Sink {
    let sink = Sink::default();
    let url = start_sink(&sink).await;
    let emitter = slipway_events::Emitter::start(
        slipway_events::Settings::new("/slipway/server", vec![url]),
        s.state.metrics().cloudevents.clone(),
    )
    .unwrap();
    assert!(s.state.set_cloudevents(emitter));
    sink
}

async fn report(s: &TestServer, machine: &str, version: &str, event: &str, detail: &str) {
    let (status, body) = s
        .post_raw(
            "/v1/events",
            json!({"machineId": machine, "version": version, "event": event, "detail": detail})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "event: {body}");
}

async fn status(s: &TestServer) -> Value {
    let (code, body) = s.admin(Method::GET, "/channels/stable", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

fn states(st: &Value) -> Vec<String> {
    st["waveStates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the channel's status until `done` holds (the gate runs every 100 ms).
async fn until(s: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(s).await;
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: still {st:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every machine checks once; those offered the target, by id.
async fn check_all(s: &TestServer, machines: &[String], running: &str) -> BTreeSet<String> {
    let mut offered = BTreeSet::new();
    for m in machines {
        if s.check(m, "stable", running).await.is_some() {
            offered.insert(m.clone());
        }
    }
    offered
}

fn of_type(sink: &Sink, kind: &str) -> Vec<Value> {
    sink.0
        .lock()
        .unwrap()
        .iter()
        .filter(|(h, _)| h.get("ce-type").unwrap().to_str().unwrap() == kind)
        .map(|(_, v)| v.clone())
        .collect()
}

async fn wait_events(sink: &Sink, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = of_type(sink, kind);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{n} {kind} CloudEvents expected, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Promotes 2.0.0: 10% at once, 50% after 5 minutes (soak 30 minutes), everyone after 5
/// minutes; the gate's soak is 10 minutes.
async fn promote_gated(s: &TestServer, rate: f64) {
    let (code, body) = s
        .admin(
            Method::POST,
            "/channels/stable/promote",
            Some(json!({
                "version": "2.0.0",
                "waves": [
                    {"after": "0s", "fraction": 0.1},
                    {"after": "5m", "fraction": 0.5, "soak": "30m"},
                    {"after": "5m", "fraction": 1.0}
                ],
                "gate": {"maxFailureRate": rate, "soak": "10m"}
            })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["gate"]["maxFailureRate"], rate);
}

async fn start(backend: Backend) -> (TestServer, Sink, Vec<String>) {
    let s = TestServer::start(backend).await;
    let sink = with_sink(&s).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "2.0.0").await;
    let machines = fleet();
    // The fleet registers on 1.0.0 before the promotion.
    assert!(check_all(&s, &machines, "1.0.0").await.is_empty());
    (s, sink, machines)
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn in_wave(machine: &str, fraction: f64) -> bool {
    slipway_server::rollout::place(machine, &"2.0.0".parse().unwrap()) < fraction
}

#[tokio::test]
async fn a_bad_release_halts_after_its_first_wave() {
    let (s, sink, machines) = start(Backend::Sqlite).await;
    let want: BTreeSet<String> = machines
        .iter()
        .filter(|m| in_wave(m, 0.1))
        .cloned()
        .collect();
    assert!(want.len() > 5, "{}", want.len());
    // A rate that only the third failure exceeds: the halt cannot race the reports.
    let rate = 2.5 / want.len() as f64;
    promote_gated(&s, rate).await;
    let st = until(&s, "first wave opens", |st| states(st)[0] == "soaking").await;
    assert_eq!(states(&st), ["soaking", "gated", "later"]);
    assert_eq!(st["fractionNow"], 0.1);

    let first = check_all(&s, &machines, "1.0.0").await;
    assert_eq!(first, want, "exactly the first wave is offered");

    // The first three fail to verify the image; the rest are still downloading.
    s.set_now(at(60));
    let failed: Vec<&String> = first.iter().take(3).collect();
    for m in &first {
        report(&s, m, "2.0.0", "downloading", "").await;
    }
    for m in &failed {
        report(&s, m, "2.0.0", "failed", "sha256 mismatch").await;
    }
    let st = until(&s, "the gate halts", |st| st["halt"].is_object()).await;
    assert_eq!(st["paused"], true);
    assert_eq!(states(&st), ["halted", "later", "later"]);
    let reason = st["halt"]["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        format!(
            "3 of {n} machines that reached the target failed ({pct}%), above the gate's {gate}%",
            n = first.len(),
            pct = slipway_server::gate::percent(3.0 / first.len() as f64),
            gate = slipway_server::gate::percent(rate),
        )
    );
    let named: BTreeSet<&str> = st["halt"]["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["why"], "failed: sha256 mismatch");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        named,
        failed.iter().map(|m| m.as_str()).collect::<BTreeSet<_>>()
    );

    // Halted: nothing is offered any more, whatever the clock says, and the gate stays shut.
    s.set_now(at(3 * 3600));
    assert!(check_all(&s, &machines, "1.0.0").await.is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let st = status(&s).await;
    assert_eq!(states(&st), ["halted", "later", "later"]);

    // CloudEvents: the first wave opened, then the halt with the failing machines.
    let opened = wait_events(&sink, "dev.slipway.rollout.wave-opened", 1).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(
        opened[0]["wave"], 1,
        "waves are numbered from 1, as people read them"
    );
    let halted = wait_events(&sink, "dev.slipway.rollout.wave-halted", 1).await;
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0]["reason"], reason);
    assert_eq!(halted[0]["failed"], 3);
    assert_eq!(halted[0]["machines"].as_array().unwrap().len(), 3);
    let metrics = s.get("/metrics").await.1;
    assert!(
        metrics.contains("slipway_server_gate_halts_total 1"),
        "{metrics}"
    );

    // The dashboard says so, in the JSON and in the page.
    let (_, overview) = s.get("/api/overview").await;
    let overview: Value = serde_json::from_str(&overview).unwrap();
    let stable = &overview["channels"][0];
    assert_eq!(stable["waves"][0]["state"], "halted");
    assert_eq!(stable["halt"]["reason"], reason);
    let (_, page) = s.get("/").await;
    let gate_text = format!(
        "failure-rate<={}%, soak 10m",
        slipway_server::gate::percent(rate)
    );
    assert!(
        page.contains(&format!(
            "Health gate: <strong>{}</strong>",
            gate_text.replace('<', "&lt;")
        )),
        "{page}"
    );
    assert!(page.contains("<span class=\"badge s-failed\">halted</span>"));
    assert!(page.contains(failed[0].as_str()), "failing machine listed");

    // `slipway status` prints the waves, the halt and the failing machines.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let (code, out, err) = {
        let d = work.path().to_path_buf();
        let url = s.url.clone();
        tokio::task::spawn_blocking(move || {
            crate::cli_admin::slipway(
                &d,
                [
                    "status",
                    "--channel",
                    "stable",
                    "--server",
                    &url,
                    "--token-file",
                    "admin.token",
                ]
                .map(String::from)
                .to_vec(),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("gate: {gate_text}")), "{out}");
    assert!(out.contains("wave 1: +0s    10%  halted"), "{out}");
    assert!(
        out.contains(&format!("HALTED {}", st["halt"]["at"].as_str().unwrap())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}  failed: sha256 mismatch", failed[0])),
        "{out}"
    );

    // Resuming accepts the failures so far: the gate counts from now, the first wave soaks
    // again (nothing would hold the next wave otherwise), then the rollout goes on.
    let (code, body) = s.admin(Method::POST, "/channels/stable/resume", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body["halt"].is_null(), "{body}");
    assert_eq!(body["paused"], false);
    assert_eq!(states(&body), ["soaking", "gated", "later"], "{body:#}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(states(&status(&s).await), ["soaking", "gated", "later"]);
    s.set_now(at(3 * 3600 + 600));
    let st = until(&s, "resumed rollout opens the second wave", |st| {
        states(st)[1] != "later" && states(st)[1] != "gated"
    })
    .await;
    assert_eq!(states(&st)[1], "soaking", "{st:#}");
}

async fn a_good_release_opens_every_wave_in_order(backend: Backend) {
    let (s, sink, machines) = start(backend).await;
    promote_gated(&s, 0.02).await;
    until(&s, "first wave opens", |st| states(st)[0] == "soaking").await;

    let mut offered_so_far = BTreeSet::new();
    let mut now = 0;
    // Each round: the open waves' new machines update; two of them lag behind.
    for (wave, fraction) in [(0, 0.1), (1, 0.5), (2, 1.0)] {
        let offered = check_all(&s, &machines, "1.0.0").await;
        let want: BTreeSet<String> = machines
            .iter()
            .filter(|m| in_wave(m, fraction))
            .cloned()
            .collect();
        assert_eq!(
            offered, want,
            "wave {wave}: exactly the open waves' machines"
        );
        let new: Vec<&String> = offered.difference(&offered_so_far).collect();
        now += 60;
        s.set_now(at(now));
        for m in &new {
            report(&s, m, "2.0.0", "downloading", "").await;
        }
        let (laggards, rest) = new.split_at(2);
        for m in rest {
            for e in ["staged", "rebooting", "booted", "healthy"] {
                report(&s, m, "2.0.0", e, "").await;
            }
        }
        if wave == 2 {
            for m in laggards {
                report(&s, m, "2.0.0", "healthy", "").await;
            }
            break;
        }
        // Past the wave's soak (10 minutes, then 30) and the next wave's time, the laggards
        // (within their own soak) still hold it.
        now = [630, 2460][wave];
        s.set_now(at(now));
        let st = until(&s, "gated on laggards", |st| {
            states(st)[wave + 1] == "gated"
        })
        .await;
        assert_eq!(
            st["waveStates"][wave + 1]["why"],
            "2 machines of the open waves are still updating",
            "{st:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(states(&status(&s).await)[wave + 1], "gated");
        for m in laggards {
            report(&s, m, "2.0.0", "healthy", "").await;
        }
        until(&s, "next wave opens", |st| {
            matches!(states(st)[wave + 1].as_str(), "soaking" | "open")
        })
        .await;
        offered_so_far = offered;
    }
    let st = status(&s).await;
    assert_eq!(states(&st), ["open", "open", "open"]);
    assert_eq!(st["gateCounts"]["reached"], FLEET);
    assert_eq!(st["gateCounts"]["healthy"], FLEET);
    assert!(st["halt"].is_null());
    assert_eq!(st["paused"], false);
    let opened = wait_events(&sink, "dev.slipway.rollout.wave-opened", 3).await;
    let order: Vec<u64> = opened.iter().map(|e| e["wave"].as_u64().unwrap()).collect();
    assert_eq!(order, [1, 2, 3]);
    assert!(of_type(&sink, "dev.slipway.rollout.wave-halted").is_empty());
}

#[tokio::test]
async fn a_good_release_opens_every_wave_in_order_sqlite() {
    a_good_release_opens_every_wave_in_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_good_release_opens_every_wave_in_order_postgres() {
    a_good_release_opens_every_wave_in_order(Backend::Postgres).await;
}

#[tokio::test]
async fn a_gate_is_refused_when_it_makes_no_sense() {
    let (s, _sink, _) = start(Backend::Sqlite).await;
    for (body, kind) in [
        (
            json!({"version": "2.0.0", "gate": {"maxFailureRate": 1.5}}),
            "invalid-gate",
        ),
        (
            json!({"version": "2.0.0", "waves": [{"after": 0, "fraction": 1.0, "soak": "1h"}]}),
            "invalid-waves",
        ),
    ] {
        let (code, answer) = s
            .admin(Method::POST, "/channels/stable/promote", Some(body))
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["kind"], kind, "{answer}");
    }
}
