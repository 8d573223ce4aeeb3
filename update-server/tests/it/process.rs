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

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// Lines the server logged after "listening", as they come.
    pub(crate) log: mpsc::Receiver<String>,
}

/// A child process killed when dropped (SPIRE, HAProxy: helpers a test starts).
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(dir: &Path, database: &str) -> Server {
    spawn_with(dir, database, &[])
}

fn spawn_with(dir: &Path, database: &str, args: &[&str]) -> Server {
    spawn_on(dir, database, "127.0.0.1:0", args)
}

/// Starts the server listening on `listen`; waits until it logs where.
pub(crate) fn spawn_on(dir: &Path, database: &str, listen: &str, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway-server"))
        .args(["--listen", listen, "--database", database])
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slipway-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let (log_tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(url);
            }
            assert!(!line.contains(TOKEN), "a token was logged: {line}");
            assert!(!line.contains("panicked"), "{line}");
            let _ = log_tx.send(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("slipway-server logs where it listens");
    Server { child, url, log }
}

/// Uploads `payload` (the admin token); its digest.
async fn upload(client: &reqwest::Client, s: &Server, payload: &[u8]) -> slipway_api::Sha256Digest {
    let (sha, status) = crate::harness::upload_to(client, &s.url, payload).await;
    assert_eq!(status, StatusCode::CREATED);
    sha
}

pub(crate) fn sigterm(mut s: Server) {
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "exit after SIGTERM: {exit}");
}

/// A data directory with the test root of trust and the admin token.
pub(crate) fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), root_json()).unwrap();
    std::fs::write(
        dir.path().join("admin-tokens"),
        format!("# test\n{TOKEN}\n"),
    )
    .unwrap();
    dir
}

async fn process_restarts(backend: Backend) {
    let dir = data_dir();
    let database = database_url(backend, &dir).await;
    let client = reqwest::Client::new();

    let s = spawn(dir.path(), &database);
    for (version, payload) in [("1.0.0", b"one".as_slice()), ("1.1.0", b"two".as_slice())] {
        let sha = upload(&client, &s, payload).await;
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
    assert!(
        watch.await.unwrap(),
        "/readyz never said the database was away"
    );
    assert!(
        refused > 0,
        "no report was refused: the restart was not felt"
    );

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
            assert!(
                stored.contains(&format!("{m}-{i}")),
                "report {m}-{i} was lost"
            );
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

/// A server process with a root and an admin token, on SQLite, with `args`.
fn spawn_fresh(args: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = data_dir();
    let database = format!("sqlite://{}/db.sqlite", dir.path().display());
    let s = spawn_with(dir.path(), &database, args);
    (dir, s)
}

fn addr(s: &Server) -> std::net::SocketAddr {
    s.url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(c: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Clients that take too long (headers dripped a byte at a time, a JSON body dripped, an
/// upload that stops sending) are cut off once their timeout passes, with a 408 where a
/// request was under way, while a well-behaved machine's checks keep being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_keep_being_served() {
    use tokio::io::AsyncWriteExt as _;
    let (_dir, s) = spawn_fresh(&[
        "--header-read-timeout",
        "2s",
        "--body-deadline",
        "2s",
        "--body-idle-timeout",
        "2s",
    ]);
    let at = addr(&s);
    let started = std::time::Instant::now();
    let drip = |request: String, then: &'static [u8]| async move {
        let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let (mut rd, mut wr) = c.into_split();
        let writer = tokio::spawn(async move {
            // One byte every 300 ms, far more slowly than any timeout allows for.
            for b in then.iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            use tokio::io::AsyncReadExt as _;
            let mut got = Vec::new();
            let _ = rd.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        })
        .await
        .expect("a slow client was never cut off");
        writer.abort();
        (answer, started.elapsed())
    };
    let mut slow = Vec::new();
    for _ in 0..30 {
        // Headers that never end.
        slow.push(tokio::spawn(drip(
            "POST /v1/check HTTP/1.1\r\nHost: x\r\nX-Slow: ".into(),
            b"a",
        )));
        // A JSON body that never ends.
        slow.push(tokio::spawn(drip(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".into(),
            b" ",
        )));
    }
    // Uploads that stop after a few bytes.
    let mut stalled = Vec::new();
    for i in 0..10 {
        let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
        let sha = slipway_api::Sha256Digest::of(format!("upload {i}").as_bytes());
        c.write_all(
            format!(
                "PUT /v1/admin/payloads/{sha} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000000\r\n\r\nfirst bytes"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(c);
    }

    // Meanwhile a machine checks every 100 ms and is answered every time.
    let client = reqwest::Client::new();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let r = client
            .post(format!("{}/v1/check", s.url))
            .json(&json!({"machineId": "m1", "channel": "stable", "version": "1.0.0", "arch": "x86_64"}))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a well-behaved machine was not answered");
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "unknown channel, as expected"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 20, "only {answered} checks answered in 4 s");

    let mut slowest = Duration::ZERO;
    for (i, t) in slow.into_iter().enumerate() {
        let (answer, when) = t.await.unwrap();
        slowest = slowest.max(when);
        if i % 2 == 1 {
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "a dripped body got: {answer:?}"
            );
            assert!(answer.contains("body-timeout"), "{answer}");
        }
    }
    for mut c in stalled {
        let answer = tokio::time::timeout(Duration::from_secs(30), read_to_close(&mut c))
            .await
            .expect("a stalled upload was never cut off");
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a stalled upload got: {answer:?}"
        );
    }
    // 2 s timeouts; generous room for a loaded machine, far from "never".
    assert!(
        slowest < Duration::from_secs(15),
        "the slowest cut-off took {slowest:?}"
    );
    println!(
        "slow clients cut off after at most {slowest:?}; {answered} checks answered meanwhile"
    );
    sigterm(s);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 10,000 connections opened and left idle: the server keeps serving machines meanwhile,
/// and closes every one of them once the idle timeout passes, giving back their descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_held_then_closed() {
    const IDLE: usize = 10_000;
    // This process holds the client ends: raise its descriptor limit to the hard limit (the
    // server, a child started after, inherits it).
    let me = std::process::id().to_string();
    let out = Command::new("prlimit")
        .args(["--pid", &me, "--nofile=unlimited:"])
        .output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        let hard = Command::new("prlimit")
            .args([
                "--pid",
                &me,
                "--nofile",
                "--raw",
                "--noheadings",
                "--output=HARD",
            ])
            .output()
            .expect("prlimit (util-linux) is needed to raise the descriptor limit");
        let hard = String::from_utf8_lossy(&hard.stdout).trim().to_owned();
        let status = Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={hard}:")])
            .status()
            .unwrap();
        assert!(status.success(), "raising the descriptor limit to {hard}");
        assert!(
            hard == "unlimited" || hard.parse::<usize>().unwrap() > IDLE + 500,
            "the hard descriptor limit {hard} is too low to hold {IDLE} connections"
        );
    }
    // Long enough to open all 10,000 on a loaded machine (about 1 s when idle). With 8 s, a
    // run on a loaded machine found none held: most likely opening outlasted the timeout and
    // the first connections were closed before the last were open.
    let (_dir, s) = spawn_fresh(&["--header-read-timeout", "20s"]);
    let pid = s.child.id();
    let at = addr(&s);
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    let opened = std::time::Instant::now();
    let mut conns = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        conns.push(tokio::net::TcpStream::connect(at).await.unwrap());
    }
    let open_time = opened.elapsed();
    // Every connection accepted: the server holds a descriptor for each.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_fds(pid) < fds_before + IDLE && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fds_held, rss_held) = (open_fds(pid), rss_kib(pid));
    assert!(
        fds_held >= fds_before + IDLE,
        "the server holds {fds_held} descriptors (before: {fds_before}; opening took {open_time:?})"
    );

    // Machines are still served.
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client
            .post(format!("{}/v1/check", s.url))
            .json(&json!({"machineId": "m1", "channel": "stable", "version": "1.0.0", "arch": "x86_64"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a machine was not answered beside 10,000 idle connections");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    // Once idle for the timeout, every connection is closed by the server.
    let closers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), read_to_close(&mut c))
                    .await
                    .is_ok()
            })
        })
        .collect();
    for c in closers {
        assert!(c.await.unwrap(), "an idle connection was never closed");
    }
    let closed_after = opened.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_fds(pid) > fds_before + 50 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_after = open_fds(pid);
    assert!(
        fds_after <= fds_before + 50,
        "the server still holds {fds_after} descriptors (before: {fds_before})"
    );
    println!(
        "{IDLE} idle connections: opened in {open_time:?}; server RSS {rss_before} KiB -> {rss_held} KiB ({:.1} KiB per connection); all closed by the server {closed_after:?} after opening; descriptors {fds_before} -> {fds_held} -> {fds_after}",
        (rss_held.saturating_sub(rss_before)) as f64 / IDLE as f64
    );
    sigterm(s);
}

/// A machine that asks for a payload and stops reading (its receive window fills) is cut off
/// once `--write-stall-timeout` passes without a byte going out, while another download of the
/// same payload completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_client_stops_reading_is_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let (_dir, s) = spawn_fresh(&["--write-stall-timeout", "2s"]);
    // Larger than what the kernel's socket buffers hold on both sides of a loopback connection.
    let payload: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let client = reqwest::Client::new();
    let sha = upload(&client, &s, &payload).await;

    let mut stalled = tokio::net::TcpStream::connect(addr(&s)).await.unwrap();
    stalled
        .write_all(format!("GET /v1/payloads/{sha} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let whole = client
        .get(format!("{}/v1/payloads/{sha}", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        whole.len(),
        payload.len(),
        "the other download was cut short"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        let _ = stalled.read_to_end(&mut got).await;
        got
    })
    .await
    .expect("the stalled connection was never closed");
    assert!(
        got.len() < payload.len(),
        "a client that stopped reading got the whole payload ({} bytes)",
        got.len()
    );
    println!(
        "a client that stopped reading was cut off after {} of {} bytes",
        got.len(),
        payload.len()
    );
    sigterm(s);
}

#[tokio::test]
async fn each_machine_keeps_its_newest_events_up_to_the_limit() {
    let dir = data_dir();
    let db = format!("sqlite://{}", dir.path().join("db").display());
    let s = spawn_with(dir.path(), &db, &["--events-per-machine", "10"]);
    let client = reqwest::Client::new();
    let send = |id: &'static str, n: usize| {
        let (client, url) = (client.clone(), s.url.clone());
        async move {
            let r = client
                .post(format!("{url}/v1/events"))
                .json(
                    &json!({"machineId": id, "version": "1.0.0", "event": "checked",
                              "detail": format!("check {n}")}),
                )
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let (busy, quiet) = (
        "00000000000000000000000000000001",
        "00000000000000000000000000000002",
    );
    for n in 0..3 {
        send(quiet, n).await;
    }
    // An update event of the busy machine: kept whatever the checks after it.
    let r = client
        .post(format!("{}/v1/events", s.url))
        .json(&json!({"machineId": busy, "version": "1.0.0", "event": "healthy", "detail": "the update"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // A year of checks in miniature: 300 events of one machine.
    for n in 0..300 {
        send(busy, n).await;
    }
    let events = |id: &'static str| {
        let (client, url) = (client.clone(), s.url.clone());
        async move {
            let v: serde_json::Value = client
                .get(format!("{url}/v1/admin/events?machine={id}&limit=1000"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v.as_array()
                .or_else(|| v["events"].as_array())
                .unwrap()
                .iter()
                .map(|e| e["detail"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let kept = events(busy).await;
    // Trimmed every 64th event stored: at most the limit plus one stretch between trims.
    assert!((10..10 + 64).contains(&kept.len()), "{} kept", kept.len());
    assert_eq!(kept[0], "check 299", "the newest are kept");
    assert_eq!(
        kept.last().unwrap(),
        "the update",
        "update events are not trimmed"
    );
    assert_eq!(events(quiet).await.len(), 3, "another machine's stay");
    let out = Command::new(env!("CARGO_BIN_EXE_slipway-server"))
        .args(["--events-per-machine", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--events-per-machine"));
    sigterm(s);
}
