//! Several replicas on one database: operators' cluster reports and their history live in the
//! store (both backends, surviving a restart), and on PostgreSQL each replica tells the others
//! of its changes (LISTEN/NOTIFY), so a live view on one replica refreshes for a report or a
//! promotion made through another.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};
use slipway_api::wire::{ClusterReport, NodeReport, PolicyReport};
use slipway_runtime::ManualClock;
use slipway_server::clusters::{ClusterWrite, Subject};
use slipway_server::state::Limits;
use slipway_server::store;

use crate::harness::{Backend, TestServer, database_url, t0};

fn node(name: &str, phase: &str) -> NodeReport {
    NodeReport {
        name: name.into(),
        policy: Some("workers".into()),
        phase: phase.into(),
        current_version: Some("1.0.0".into()),
        target_version: Some("1.1.0".into()),
        granted: phase != "Idle",
        waiting_reason: None,
        waiting_message: None,
        last_error: None,
        progress: None,
    }
}

fn policy(unavailable: u32) -> PolicyReport {
    PolicyReport {
        name: "workers".into(),
        channel: "stable".into(),
        target_version: Some("1.1.0".into()),
        paused: false,
        halted_since: None,
        failed_nodes: vec![],
        nodes: 2,
        updated: 0,
        unavailable,
        max_unavailable: 1,
        window: Some("Mon-Fri 09:00-17:00 Europe/Berlin".into()),
        next_window: None,
        closed_gates: vec![],
    }
}

fn report(cluster: &str, secs: i64, nodes: Vec<NodeReport>, unavailable: u32) -> ClusterReport {
    ClusterReport {
        cluster: cluster.into(),
        at: t0() + SignedDuration::from_secs(secs),
        policies: vec![policy(unavailable)],
        nodes,
    }
}

fn written(changed: bool, history: usize) -> ClusterWrite {
    ClusterWrite { changed, history }
}

async fn history_suite(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 4).await.unwrap();
    assert!(s.clusters().await.unwrap().is_empty());

    let first = report("prod", 0, vec![node("a", "Idle"), node("b", "Idle")], 0);
    assert_eq!(s.put_cluster(&first).await.unwrap(), written(true, 3));
    // The same picture again: nothing to show, nothing to record.
    assert_eq!(s.put_cluster(&first).await.unwrap(), written(false, 0));
    // A newer picture of the same state: the view refreshes (its age), no history row.
    let again = report("prod", 5, vec![node("a", "Idle"), node("b", "Idle")], 0);
    assert_eq!(s.put_cluster(&again).await.unwrap(), written(true, 0));
    let draining = report(
        "prod",
        10,
        vec![node("a", "Draining"), node("b", "Idle")],
        1,
    );
    assert_eq!(s.put_cluster(&draining).await.unwrap(), written(true, 2));
    let rebooting = report("prod", 20, vec![node("a", "Rebooting")], 1);
    assert_eq!(s.put_cluster(&rebooting).await.unwrap(), written(true, 2));
    let other = report("dev", 3, vec![node("x", "Idle")], 0);
    assert_eq!(s.put_cluster(&other).await.unwrap(), written(true, 2));

    let clusters = s.clusters().await.unwrap();
    assert_eq!(clusters, vec![other.clone(), rebooting.clone()]);

    let all = s
        .cluster_history("prod", Timestamp::UNIX_EPOCH, 0, 1000)
        .await
        .unwrap();
    assert_eq!(all.len(), 7, "{all:#?}");
    let lane = |name: &str| -> Vec<String> {
        all.iter()
            .filter(|c| c.name == name && c.kind == Subject::Node)
            .map(|c| c.node.as_ref().map_or("gone".into(), |n| n.phase.clone()))
            .collect()
    };
    assert_eq!(lane("a"), ["Idle", "Draining", "Rebooting"]);
    assert_eq!(lane("b"), ["Idle", "gone"]);
    let budget: Vec<u32> = all
        .iter()
        .filter_map(|c| c.policy.as_ref().map(|p| p.unavailable))
        .collect();
    assert_eq!(budget, [0, 1]);
    assert!(
        all.windows(2)
            .all(|w| w[0].id < w[1].id && w[0].at <= w[1].at)
    );
    assert!(all.iter().all(|c| c.cluster == "prod"));

    // Pages follow ids; `since` bounds by time.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .cluster_history("prod", Timestamp::UNIX_EPOCH, after, 3)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().unwrap().id;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let recent = s
        .cluster_history("prod", draining.at, 0, 1000)
        .await
        .unwrap();
    assert_eq!(recent, all[3..].to_vec());

    // Retention: rows older than the age go, the newest report stays.
    let now = t0() + SignedDuration::from_secs(25);
    let pruned = s
        .prune_cluster_history(Duration::from_secs(15), now)
        .await
        .unwrap();
    assert_eq!(
        pruned, 5,
        "the rows before t0+10s (prod: 3, dev: 2) are older than 15 s"
    );
    let kept = s
        .cluster_history("prod", Timestamp::UNIX_EPOCH, 0, 1000)
        .await
        .unwrap();
    assert_eq!(kept, all[3..].to_vec());
    s.close().await;

    // Reopened (a restart, or another replica): everything is still there.
    let s = store::open(&url, 4).await.unwrap();
    assert_eq!(s.clusters().await.unwrap(), vec![other, rebooting.clone()]);
    // And the next report is diffed against the stored one, not recorded whole again.
    let healthy = report("prod", 30, vec![node("a", "Idle")], 0);
    assert_eq!(s.put_cluster(&healthy).await.unwrap(), written(true, 2));
    s.close().await;
}

#[tokio::test]
async fn cluster_reports_and_their_history_are_stored_sqlite() {
    history_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn cluster_reports_and_their_history_are_stored_postgres() {
    history_suite(Backend::Postgres).await;
}

/// A report as the operator posts it.
fn report_json(cluster: &str, secs: i64, phase: &str) -> Value {
    serde_json::to_value(report(cluster, secs, vec![node("a", phase)], 1)).unwrap()
}

#[tokio::test]
async fn the_cluster_view_and_its_history_survive_a_restart_sqlite() {
    let s = TestServer::start(Backend::Sqlite).await;
    for (secs, phase) in [(0, "Downloading"), (5, "Draining"), (9, "Rebooting")] {
        let (st, b) = s
            .admin(
                Method::POST,
                "/cluster",
                Some(report_json("prod", secs, phase)),
            )
            .await;
        assert_eq!(st, 204, "{b}");
    }
    let s = s.restart().await;
    let (st, body) = s.get("/api/cluster").await;
    assert_eq!(st, 200);
    let clusters: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(clusters[0]["nodes"][0]["phase"], "Rebooting");
    let (st, body) = s.get("/api/cluster/prod/history?limit=2").await;
    assert_eq!(st, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let phases: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["node"]["phase"].as_str())
        .collect();
    assert_eq!(phases, ["Downloading"], "{page}");
    let next = page["next"].as_i64().expect("a next page");
    let (_, body) = s
        .get(&format!("/api/cluster/prod/history?after={next}"))
        .await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    let phases: Vec<&str> = rest["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["node"]["phase"].as_str())
        .collect();
    assert_eq!(phases, ["Draining", "Rebooting"], "{rest}");
    assert!(rest["next"].is_null());
    let (st, body) = s.get("/api/cluster/prod/history?limit=0").await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("limit must be 1-1000"), "{body}");
    let (st, body) = s.get("/api/cluster/prod/history?since=yesterday").await;
    assert_eq!(st, 400, "{body}");
}

/// Waits for the next `change` event of a dashboard stream; how long it took.
async fn next_change(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let left = within
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no change announced within {within:?}"));
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("no change announced within {within:?}"))
            .expect("stream ended")
            .unwrap();
        if String::from_utf8_lossy(&chunk).contains("event: change") {
            return start.elapsed();
        }
    }
}

#[tokio::test]
async fn replicas_on_postgres_show_the_same_cluster_and_hear_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let database = database_url(Backend::Postgres, &dir).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let start = |d| TestServer::start_with(d, database.clone(), clock.clone(), Limits::default());
    let a = start(tempfile::tempdir().unwrap()).await;
    let b = start(tempfile::tempdir().unwrap()).await;
    assert_ne!(a.state.replica(), b.state.replica());

    let resp = a
        .client
        .get(format!("{}/api/stream", a.url))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    // Quiet: neither replica changed anything, so A announces nothing.
    let quiet = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(quiet.is_err(), "announced without a change: {quiet:?}");

    // A report through B: A's live view refreshes within a second, and shows it.
    let (st, body) = b
        .admin(
            Method::POST,
            "/cluster",
            Some(report_json("prod", 0, "Draining")),
        )
        .await;
    assert_eq!(st, 204, "{body}");
    let took = next_change(&mut stream, Duration::from_secs(1)).await;
    eprintln!("a report through B reached A's stream in {took:?}");
    for s in [&a, &b] {
        let (_, body) = s.get("/api/cluster").await;
        let clusters: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(clusters[0]["nodes"][0]["phase"], "Draining", "{}", s.url);
        let (_, page) = s.get("/cluster").await;
        assert!(page.contains("Draining"), "{page}");
    }

    // A release promoted through B: A offers it at once, not at its next refresh (an hour).
    b.publish("stable", "1.1.0").await;
    b.promote("stable", "1.1.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    let start = Instant::now();
    loop {
        // Before the reload A does not know the channel (404); after it, it offers 1.1.0.
        let (st, body) = a
            .post_raw(
                "/v1/check",
                json!({"machineId": "m-1", "channel": "stable", "version": "1.0.0",
                       "arch": "x86_64", "group": "", "bootId": "b"})
                .to_string(),
            )
            .await;
        if st == 200 {
            assert!(body["update"].is_object(), "1.1.0 not offered: {body}");
            break;
        }
        assert_eq!(st, 404, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "A did not offer B's promotion within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "a promotion through B was offered by A after {:?}",
        start.elapsed()
    );

    // A check through A (telemetry, not an admin change) reaches B's live view too.
    let resp = b
        .client
        .get(format!("{}/api/stream", b.url))
        .send()
        .await
        .unwrap();
    let mut b_stream = resp.bytes_stream();
    // Earlier changes may still be announced: wait for a quiet half second first.
    while tokio::time::timeout(Duration::from_millis(500), b_stream.next())
        .await
        .is_ok()
    {}
    a.check("m-2", "stable", "1.0.0").await;
    next_change(&mut b_stream, Duration::from_secs(1)).await;
}

/// HAProxy (Debian's) on loopback, round robin over `backends`, health-checking `/healthz`
/// every 300 ms so a dead replica leaves the rotation at once.
fn haproxy(dir: &std::path::Path, backends: &[String]) -> (crate::process::KillOnDrop, String) {
    let port = crate::pg::free_port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!(
                "  server r{i} {} check\n",
                url.trim_start_matches("http://")
            )
        })
        .collect();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n\
             timeout server 30s\n  retries 2\n  option redispatch\nfrontend fe\n  bind 127.0.0.1:{port}\n\
             default_backend replicas\nbackend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n\
             default-server inter 300ms fall 1 rise 2\n{servers}"
        ),
    )
    .unwrap();
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("haproxy is not installed (apt-get install haproxy; scripts/setup.sh does)");
    let child = std::process::Command::new(haproxy)
        .args(["-db", "-f"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
        .spawn()
        .unwrap();
    (
        crate::process::KillOnDrop(child),
        format!("http://127.0.0.1:{port}"),
    )
}

/// POSTs `body` to `url` until an answer that is not a gateway or server error comes (a
/// replica killed mid-request, or the balancer's 502/503 while it notices): how many tries.
async fn post_retrying(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    token: bool,
) -> (u16, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut req = client.post(url).json(body);
        if token {
            req = req.bearer_auth(crate::harness::TOKEN);
        }
        match req.send().await {
            Ok(r) if !r.status().is_server_error() => return (r.status().as_u16(), tries),
            _ if tries < 50 => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(r) => panic!("{url}: still {} after {tries} tries", r.status()),
            Err(e) => panic!("{url}: {e} after {tries} tries"),
        }
    }
}

#[tokio::test]
async fn three_replicas_behind_haproxy_agree_and_lose_no_report_when_one_dies() {
    let dir = crate::process::data_dir();
    let database = crate::pg::cluster().new_database().await;
    // Three processes on one database (and one data directory, for payloads).
    let mut replicas: Vec<Option<crate::process::Server>> = (0..3)
        .map(|_| {
            Some(crate::process::spawn_on(
                dir.path(),
                &database,
                "127.0.0.1:0",
                &[],
            ))
        })
        .collect();
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().url.clone())
        .collect();
    let (_lb, lb) = haproxy(dir.path(), &urls);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Ready through the balancer (its first health checks pass).
    let start = Instant::now();
    while client
        .get(format!("{lb}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "HAProxy not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A channel to check against, set up through the balancer.
    let payload = b"os image for replicas".repeat(32);
    let (sha, st) = crate::harness::upload_to(&client, &lb, &payload).await;
    assert!(st.is_success(), "{st}");
    let env = crate::harness::manifest("stable", "2.0.0", &payload, sha)
        .sign(&[&crate::harness::release_key()]);
    let (st, _) = post_retrying(
        &client,
        &format!("{lb}/v1/admin/releases"),
        &serde_json::from_str(&env.to_json_pretty()).unwrap(),
        true,
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = post_retrying(
        &client,
        &format!("{lb}/v1/admin/channels/stable/promote"),
        &json!({"version": "2.0.0", "waves": [{"after": "0s", "fraction": 1.0}]}),
        true,
    )
    .await;
    assert_eq!(st, 200);

    // Load: 40 machines check and send 15 reports each, while an operator reports its
    // cluster; one replica is killed (SIGKILL) a third of the way in.
    const MACHINES: usize = 40;
    const REPORTS: usize = 15;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let retried = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for m in 0..MACHINES {
        let (client, lb, sent, retried) =
            (client.clone(), lb.clone(), sent.clone(), retried.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("{m:032x}");
            let check = json!({"machineId": id, "channel": "stable", "version": "1.0.0",
                               "arch": "x86_64", "group": "", "bootId": "b"});
            let (st, tries) =
                post_retrying(&client, &format!("{lb}/v1/check"), &check, false).await;
            assert_eq!(st, 200);
            retried.fetch_add(tries - 1, Ordering::Relaxed);
            for n in 0..REPORTS {
                let event = json!({"machineId": id, "version": "2.0.0", "event": "downloading",
                                   "detail": format!("report {n}")});
                let (st, tries) =
                    post_retrying(&client, &format!("{lb}/v1/events"), &event, false).await;
                assert!((200..300).contains(&st), "event {n} of {id}: {st}");
                retried.fetch_add(tries - 1, Ordering::Relaxed);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let operator = {
        let (client, lb) = (client.clone(), lb.clone());
        tokio::spawn(async move {
            let phases = [
                "Idle",
                "Downloading",
                "Staged",
                "Draining",
                "Rebooting",
                "Healthy",
            ];
            let mut last = Value::Null;
            for (i, phase) in phases.iter().cycle().take(24).enumerate() {
                last = report_json("prod", i as i64, phase);
                let (st, _) =
                    post_retrying(&client, &format!("{lb}/v1/admin/cluster"), &last, true).await;
                assert_eq!(st, 204);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            last
        })
    };
    let start = Instant::now();
    while sent.load(Ordering::Relaxed) < MACHINES * REPORTS / 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load stalled at {} reports",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut victim = replicas[1].take().unwrap();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let last_report = operator.await.unwrap();
    eprintln!(
        "{} reports sent through HAProxy, {} retries after the kill",
        sent.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed)
    );

    // No report lost: every one the machines sent is stored (a retried request whose first
    // attempt was stored before its answer was lost may be stored twice).
    let store = store::open(&database, 2).await.unwrap();
    for m in 0..MACHINES {
        let id = format!("{m:032x}");
        let events = store.events(Some(&id), 1000).await.unwrap();
        let mut details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
        details.sort_unstable();
        details.dedup();
        assert_eq!(details.len(), REPORTS, "machine {id}: {details:?}");
    }
    assert_eq!(store.machine_count().await.unwrap(), MACHINES as u64);

    // The replicas left agree with each other and with what was sent last.
    let live: Vec<&String> = [&urls[0], &urls[2]].into_iter().collect();
    let mut clusters = Vec::new();
    let mut overviews = Vec::new();
    for url in &live {
        let c: Value = client
            .get(format!("{url}/api/cluster"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        clusters.push(c);
        let o: Value = client
            .get(format!("{url}/api/overview"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        overviews.push((
            o["machines"].clone(),
            o["states"].clone(),
            o["channels"].clone(),
        ));
    }
    assert_eq!(clusters[0], clusters[1]);
    assert_eq!(
        clusters[0][0], last_report,
        "the newest report is the last one sent"
    );
    assert_eq!(overviews[0], overviews[1]);
    assert_eq!(overviews[0].0, json!(MACHINES));

    // A live view on one replica refreshes for a report made through another.
    let resp = client
        .get(format!("{}/api/stream", urls[0]))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    while tokio::time::timeout(Duration::from_millis(500), stream.next())
        .await
        .is_ok()
    {}
    let (st, _) = post_retrying(
        &client,
        &format!("{}/v1/admin/cluster", urls[2]),
        &report_json("prod", 100, "Verifying"),
        true,
    )
    .await;
    assert_eq!(st, 204);
    let took = next_change(&mut stream, Duration::from_secs(1)).await;
    eprintln!("a report through replica 3 reached replica 1's stream in {took:?}");
    // An open stream would hold a replica's graceful shutdown for its grace period.
    drop(stream);
    for r in replicas.into_iter().flatten() {
        crate::process::sigterm(r);
    }
}

/// PostgreSQL restarted under two replicas (sessions cut, a second down): each replica's
/// listener reconnects by itself, and a report through one reaches the other's live view again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_each_other_again_after_postgres_restarts() {
    let pg = crate::pg::own_cluster();
    let database = pg.new_database().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let start = |d| TestServer::start_with(d, database.clone(), clock.clone(), Limits::default());
    let a = start(tempfile::tempdir().unwrap()).await;
    let b = start(tempfile::tempdir().unwrap()).await;
    pg.restart(Duration::from_secs(1)).await;
    let resp = a
        .client
        .get(format!("{}/api/stream", a.url))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    // The reconnection itself refreshes A's views (notices may have been missed): let it pass.
    while tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .is_ok()
    {}
    // B's first request after the restart may meet a connection the restart cut (503):
    // retried as the operator does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = b
            .admin(
                Method::POST,
                "/cluster",
                Some(report_json("prod", 7, "Rebooting")),
            )
            .await;
        if st == 204 {
            break;
        }
        assert!(Instant::now() < deadline, "{st}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = next_change(&mut stream, Duration::from_secs(3)).await;
    eprintln!("after the restart, a report through B reached A's stream in {took:?}");
    let (_, body) = a.get("/api/cluster").await;
    let clusters: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(clusters[0]["nodes"][0]["phase"], "Rebooting");
}
