//! `slipway-server` as a real process: starts with flags, logs where it listens, stops cleanly
//! on SIGTERM, and a new process on the same data serves what the old one stored.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TOKEN, database_url, manifest, release_key, root_json};

struct Server {
    child: Child,
    url: String,
}

fn spawn(dir: &Path, database: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway-server"))
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slipway-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(url);
            }
            assert!(!line.contains(TOKEN), "a token was logged: {line}");
            assert!(!line.contains("panicked"), "{line}");
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("slipway-server logs where it listens");
    Server { child, url }
}

fn sigterm(mut s: Server) {
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "exit after SIGTERM: {exit}");
}

async fn process_restarts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), root_json()).unwrap();
    std::fs::write(
        dir.path().join("admin-tokens"),
        format!("# test\n{TOKEN}\n"),
    )
    .unwrap();
    let database = database_url(backend, &dir).await;
    let client = reqwest::Client::new();

    let s = spawn(dir.path(), &database);
    for (version, payload) in [("1.0.0", b"one".as_slice()), ("1.1.0", b"two".as_slice())] {
        let sha = slipway_api::Sha256Digest::of(payload);
        let r = client
            .put(format!("{}/v1/admin/payloads/{sha}", s.url))
            .bearer_auth(TOKEN)
            .body(payload.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let env = manifest("stable", version, payload, sha).sign(&[&release_key()]);
        let r = client
            .post(format!("{}/v1/admin/releases", s.url))
            .bearer_auth(TOKEN)
            .body(env.to_json_pretty())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = client
        .post(format!("{}/v1/admin/channels/stable/promote", s.url))
        .bearer_auth(TOKEN)
        .json(&json!({"version": "1.1.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    sigterm(s);

    let s = spawn(dir.path(), &database);
    let check =
        json!({"machineId": "m1", "channel": "stable", "version": "1.0.0", "arch": "x86_64"});
    let r: serde_json::Value = client
        .post(format!("{}/v1/check", s.url))
        .json(&check)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!r["update"].is_null(), "offered after a restart: {r}");
    let ev = json!({"machineId": "m1", "version": "1.1.0", "event": "staged"});
    let r = client
        .post(format!("{}/v1/events", s.url))
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    sigterm(s);

    let s = spawn(dir.path(), &database);
    let m: serde_json::Value = client
        .get(format!("{}/v1/admin/machines/m1", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["machine"]["lastEvent"], "staged", "{m}");
    assert_eq!(m["events"].as_array().unwrap().len(), 1);
    let sha = slipway_api::Sha256Digest::of(b"two");
    let body = client
        .get(format!("{}/v1/payloads/{sha}", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"two");
    sigterm(s);
}

#[tokio::test]
async fn process_restarts_sqlite() {
    process_restarts(Backend::Sqlite).await;
}

#[tokio::test]
async fn process_restarts_postgres() {
    process_restarts(Backend::Postgres).await;
}

/// PostgreSQL restarted (sessions cut, 2 s down) while 20 machines report events, each
/// retrying a refused report as the engine's outbox does: every report is stored, the server
/// says "unavailable" (503, not 500) while the database is away, and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_machines_report_loses_no_report() {
    let pg = crate::pg::own_cluster();
    let database = pg.new_database().await;
    let s = crate::harness::TestServer::start_with(
        tempfile::tempdir().unwrap(),
        database,
        std::sync::Arc::new(slipway_runtime::ManualClock::new(crate::harness::t0())),
        slipway_server::state::Limits::default(),
    )
    .await;
    s.publish("stable", "1.0.0").await;

    let (machines, per) = (20, 15);
    let reporters: Vec<_> = (0..machines)
        .map(|m| {
            let (client, url) = (s.client.clone(), s.url.clone());
            tokio::spawn(async move {
                let mut refused = 0u32;
                for i in 0..per {
                    let ev = json!({"machineId": format!("m{m}"), "version": "1.0.0",
                        "event": "checked", "detail": format!("{m}-{i}")});
                    loop {
                        match client
                            .post(format!("{url}/v1/events"))
                            .json(&ev)
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == StatusCode::OK => break,
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                assert_eq!(
                                    status,
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "a report refused with {status}: {body}"
                                );
                                refused += 1;
                            }
                            Err(e) => panic!("the server stopped answering: {e}"),
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                refused
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let watch = {
        let (client, url) = (s.client.clone(), s.url.clone());
        tokio::spawn(async move {
            // Until the database is back: did readiness say it was away?
            let mut saw_unready = false;
            for _ in 0..200 {
                let r = client.get(format!("{url}/readyz")).send().await.unwrap();
                saw_unready |= r.status() == StatusCode::SERVICE_UNAVAILABLE;
                if saw_unready && r.status() == StatusCode::OK {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            saw_unready
        })
    };
    pg.restart(Duration::from_secs(2)).await;
    let mut refused = 0;
    for r in reporters {
        refused += r.await.unwrap();
    }
    assert!(watch.await.unwrap(), "/readyz never said the database was away");
    assert!(refused > 0, "no report was refused: the restart was not felt");

    // Every report is there.
    let (status, body) = s
        .admin(reqwest::Method::GET, "/events?limit=1000", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events: Vec<serde_json::Value> = serde_json::from_value(body).unwrap();
    let stored: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .collect();
    for m in 0..machines {
        for i in 0..per {
            assert!(stored.contains(&format!("{m}-{i}")), "report {m}-{i} was lost");
        }
    }
    println!(
        "{} reports, {refused} refused during the restart and sent again, {} stored",
        machines * per,
        events.len()
    );
    // Without a restart of its own, the server answers from the database again.
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.check("m0", "stable", "1.0.0").await, None);
}
