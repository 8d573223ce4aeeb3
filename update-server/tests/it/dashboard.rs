//! The dashboard against a real server with seeded machines: the JSON API behind every view,
//! the HTML pages without JavaScript, Server-Sent Events, and a real headless Chromium that
//! filters the table, opens a timeline and sees a new event arrive without a reload.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestServer};
use crate::webdriver::Browser;

/// 12 machines: 6 on stable 2.0.0 (the target), 3 on stable 1.0.0 (advised), 2 on beta
/// 1.0.0, and `m-broken` on stable 1.0.0 whose update was rolled back.
async fn seeded() -> TestServer {
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "2.0.0").await;
    s.publish("beta", "1.0.0").await;
    s.promote("stable", "2.0.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    let (st, b) = s
        .admin(
            Method::PUT,
            "/channels/stable/releases/1.0.0/advisory",
            Some(
                json!({"id": "CVE-2026-0001", "summary": "remote root in the <b>frobnicator</b>"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    for i in 0..6 {
        s.check(&format!("m-new-{i}"), "stable", "2.0.0").await;
    }
    for i in 0..3 {
        s.check(&format!("m-old-{i}"), "stable", "1.0.0").await;
    }
    for i in 0..2 {
        s.check(&format!("m-beta-{i}"), "beta", "1.0.0").await;
    }
    s.check("m-broken", "stable", "1.0.0").await;
    for (event, detail) in [
        ("downloading", ""),
        ("staged", "slot B"),
        ("booted", "slot B on trial"),
        (
            "rolled-back",
            "health check failed: <script>alert(1)</script>",
        ),
    ] {
        event_of(&s, "m-broken", "2.0.0", event, detail).await;
    }
    s
}

async fn event_of(s: &TestServer, machine: &str, version: &str, event: &str, detail: &str) {
    let (st, b) = s
        .post_raw(
            "/v1/events",
            json!({"machineId": machine, "version": version, "event": event, "detail": detail})
                .to_string(),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "event: {b}");
}

async fn get_json(s: &TestServer, path: &str) -> Value {
    let (st, body) = s.get(path).await;
    assert_eq!(st, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn the_json_api_counts_filters_and_shows_timelines() {
    let s = seeded().await;
    let o = get_json(&s, "/api/overview").await;
    assert_eq!(o["machines"], 12);
    assert_eq!(o["states"]["up-to-date"], 6, "{o}");
    assert_eq!(o["states"]["behind"], 3, "{o}");
    assert_eq!(o["states"]["failed"], 1, "{o}");
    assert_eq!(o["states"]["no-target"], 2, "{o}");
    let stable = o["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stable")
        .unwrap();
    assert_eq!(stable["target"], "2.0.0");
    assert_eq!(stable["machines"], 10);
    assert_eq!(stable["updated"], 6);
    assert_eq!(
        stable["versions"],
        json!([{"version": "2.0.0", "machines": 6}, {"version": "1.0.0", "machines": 4}])
    );
    assert_eq!(stable["waves"][0]["open"], true);
    assert_eq!(stable["waves"][0]["machines"], 10);
    assert_eq!(stable["waves"][0]["updated"], 6);

    let failed = get_json(&s, "/api/machines?state=failed").await;
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["id"], "m-broken");
    assert!(
        failed[0]["lastError"]
            .as_str()
            .unwrap()
            .contains("health check failed")
    );
    let beta_old = get_json(&s, "/api/machines?channel=beta&version=1.0.0&q=BETA-1").await;
    assert_eq!(beta_old.as_array().unwrap().len(), 1, "{beta_old}");
    let (st, body) = s.get("/api/machines?state=on-fire").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown state"), "{body}");

    let m = get_json(&s, "/api/machines/m-broken").await;
    let kinds: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rolled-back", "booted", "staged", "downloading"]);
    let (st, _) = s.get("/api/machines/nobody").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let releases = get_json(&s, "/api/releases").await;
    let advised = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel"] == "stable" && r["version"] == "1.0.0")
        .unwrap();
    assert_eq!(advised["advisory"]["id"], "CVE-2026-0001");
    assert_eq!(advised["running"], 4);
    assert_eq!(advised["advisedMachines"].as_array().unwrap().len(), 4);
}

/// The ids of a JSON list of machine rows, in order.
fn ids_of(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Follows `Link: <...>; rel="next"` from `path`; returns each page's ids.
async fn pages_of(s: &TestServer, path: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        assert!(pages.len() < 20, "no end to the pages");
        let resp = s
            .client
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            l.trim_start_matches('<')
                .trim_end_matches(">; rel=\"next\"")
                .to_owned()
        });
        pages.push(ids_of(&resp.json().await.unwrap()));
    }
    pages
}

#[tokio::test]
async fn the_machines_api_pages_with_a_cursor_and_filters_by_prefix_and_group() {
    let s = seeded().await;
    for (m, group) in [
        ("m-new-0", "rack-a"),
        ("m-old-1", "rack-a"),
        ("m-beta-0", "rack-b"),
    ] {
        let (st, b) = s
            .post_raw(
                "/v1/check",
                json!({"machineId": m, "channel": if m.starts_with("m-beta") { "beta" } else { "stable" },
                       "version": if m == "m-new-0" { "2.0.0" } else { "1.0.0" },
                       "arch": "x86_64", "group": group, "bootId": "b"})
                .to_string(),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
    }
    // Every machine once, in id order, five to a page.
    let pages = pages_of(&s, "/api/machines?limit=5").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 2],
        "{pages:?}"
    );
    let ids: Vec<String> = pages.concat();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 12);
    // The filter travels with the cursor.
    let pages = pages_of(&s, "/api/machines?state=up-to-date&limit=4").await;
    assert_eq!(
        pages,
        [
            vec!["m-new-0", "m-new-1", "m-new-2", "m-new-3"],
            vec!["m-new-4", "m-new-5"]
        ]
    );
    let old = get_json(&s, "/api/machines?prefix=m-old").await;
    let old = ids_of(&old);
    assert_eq!(old, ["m-old-0", "m-old-1", "m-old-2"]);
    let rack = get_json(&s, "/api/machines?group=rack-a").await;
    let rack = ids_of(&rack);
    assert_eq!(rack, ["m-new-0", "m-old-1"]);
    let behind_in_rack = get_json(&s, "/api/machines?group=rack-a&state=behind").await;
    assert_eq!(
        behind_in_rack.as_array().unwrap().len(),
        1,
        "{behind_in_rack}"
    );
    assert_eq!(behind_in_rack[0]["id"], "m-old-1");
    let after = get_json(&s, "/api/machines?after=m-new-5&prefix=m-").await;
    let after = ids_of(&after);
    assert_eq!(after, ["m-old-0", "m-old-1", "m-old-2"]);
    for (bad, why) in [
        ("limit=0", "limit 0"),
        ("limit=1001", "limit 1001"),
        ("prefix=m%2Fold", "m/old\\\": machine ids are"),
        ("after=%3Cx%3E", "<x>\\\": machine ids are"),
    ] {
        let (st, body) = s.get(&format!("/api/machines?{bad}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (st, page) = s.get("/machines?limit=0").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(page.contains("from 1 to 1000"), "{page}");
}

/// The machine ids of the table's rows, in order.
async fn row_ids(b: &Browser) -> Vec<String> {
    let v = b
        .execute("return [...document.querySelectorAll('#machines tbody tr')].map(r => r.dataset.machine);")
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_browser_pages_through_the_table_and_filters_by_prefix() {
    let s = seeded().await;
    let b = Browser::start().await;
    b.goto(&format!("{}/machines?limit=5", s.url)).await;
    let mut seen = row_ids(&b).await;
    assert_eq!(seen.len(), 5);
    assert!(b.try_find("#first-page").await.is_none());
    b.wait_text("#machine-count", "showing 5 of 12", Duration::from_secs(10))
        .await;
    // Next, next: five, then the last two, and the last page says so.
    b.click(&b.find("#next-page").await).await;
    b.wait_text("#machine-count", "showing 5 of 12", Duration::from_secs(10))
        .await;
    assert!(b.url().await.contains("after="), "{}", b.url().await);
    seen.extend(row_ids(&b).await);
    b.click(&b.find("#next-page").await).await;
    b.wait_text(
        "#machine-count",
        "2 more match; the last page",
        Duration::from_secs(10),
    )
    .await;
    seen.extend(row_ids(&b).await);
    assert!(b.try_find("#next-page").await.is_none());
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "every machine once, in order");
    assert_eq!(seen.len(), 12);
    // Back to the first page, then a prefix through the form: the page size stays.
    b.click(&b.find("#first-page").await).await;
    b.wait_text("#machine-count", "showing 5 of 12", Duration::from_secs(10))
        .await;
    b.send_keys(&b.find("input[name=prefix]").await, "m-new")
        .await;
    b.click(&b.find("#machine-filter button").await).await;
    b.wait_text("#machine-count", "showing 5 of 12", Duration::from_secs(10))
        .await;
    assert!(b.url().await.contains("prefix=m-new"), "{}", b.url().await);
    assert!(row_ids(&b).await.iter().all(|id| id.starts_with("m-new")));
    b.click(&b.find("#next-page").await).await;
    b.wait_text(
        "#machine-count",
        "1 more match; the last page",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(row_ids(&b).await, ["m-new-5"]);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("machines-last-page.png"), b.screenshot().await).unwrap();
}

#[tokio::test]
async fn the_pages_render_without_javascript_and_escape_what_machines_send() {
    let s = seeded().await;
    let (st, home) = s.get("/").await;
    assert_eq!(st, StatusCode::OK);
    assert!(home.contains("id=\"count-machines\">12<"), "{home}");
    assert!(home.contains("id=\"count-failed\">1<"));
    let (_, table) = s.get("/machines?state=behind").await;
    assert!(table.contains("data-shown=\"3\""), "{table}");
    assert!(table.contains("3 of 12 machines match"), "{table}");
    assert!(!table.contains("id=\"next-page\""), "{table}");
    assert!(table.contains("m-old-2") && !table.contains("m-new-0"));
    let (_, machine) = s.get("/machines/m-broken").await;
    assert!(machine.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!machine.contains("<script>alert(1)"));
    let (_, releases) = s.get("/releases").await;
    assert!(releases.contains("class=\"advised-running\""));
    assert!(releases.contains("&lt;b&gt;frobnicator&lt;/b&gt;"));
    let (st, missing) = s.get("/machines/nobody").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(missing.contains("No machine"));
    let (st, bad) = s.get("/machines?state=on-fire").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(bad.contains("unknown state"));
    // The live script asks for the body only.
    let fragment = s
        .client
        .get(format!("{}/machines", s.url))
        .header("x-slipway-fragment", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(fragment.starts_with("<h1>Machines</h1>"), "{fragment}");
    for asset in ["/assets/dashboard.css", "/assets/dashboard.js"] {
        let (st, body) = s.get(asset).await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.len() > 500, "{asset}");
    }
}

#[tokio::test]
async fn operators_report_their_cluster_with_an_admin_token() {
    let s = seeded().await;
    let report = json!({
        "cluster": "prod-eu",
        "at": "2026-06-01T00:00:00Z",
        "policies": [{"name": "workers", "channel": "stable", "targetVersion": "2.0.0",
            "haltedSince": "2026-06-01T00:00:00Z", "failedNodes": ["node-3"], "nodes": 3,
            "updated": 1, "unavailable": 0, "maxUnavailable": 1,
            "nextWindow": "2026-06-01T02:00:00Z"}],
        "nodes": [{"name": "node-3", "policy": "workers", "phase": "Failed",
            "currentVersion": "1.0.0", "targetVersion": "2.0.0",
            "waitingReason": "Halted", "waitingMessage": "the rollout halted after 1 failure",
            "lastError": "health check failed"}]
    });
    let (st, _) = s.post_raw("/v1/admin/cluster", report.to_string()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, b) = s.admin(Method::POST, "/cluster", Some(report)).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    let clusters = get_json(&s, "/api/cluster").await;
    assert_eq!(clusters[0]["cluster"], "prod-eu");
    assert_eq!(clusters[0]["nodes"][0]["waitingReason"], "Halted");
    let (_, page) = s.get("/cluster").await;
    assert!(page.contains("data-node=\"node-3\""), "{page}");
    assert!(page.contains("halted"));
    assert!(page.contains("1.0.0 → 2.0.0"));
    // A policy held by a closed gate says which and why.
    let gated = json!({
        "cluster": "prod-us",
        "at": "2026-06-01T00:00:00Z",
        "policies": [{"name": "edge", "channel": "stable", "nodes": 2,
            "closedGates": ["gate alerts: 1 series: ALERTS{alertname=\"NodeDown\"}"]}],
        "nodes": []
    });
    let (st, b) = s.admin(Method::POST, "/cluster", Some(gated)).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    let (_, page) = s.get("/cluster").await;
    assert!(
        page.contains(
            "gate closed</span> gate alerts: 1 series: ALERTS{alertname=&quot;NodeDown&quot;}"
        ),
        "{page}"
    );
}

/// The live stream's body, checked to be one.
async fn stream_of(s: &TestServer) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> {
    let resp = s
        .client
        .get(format!("{}/api/stream", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    resp.bytes_stream()
}

#[tokio::test]
async fn the_stream_announces_a_new_event() {
    let s = seeded().await;
    let mut body = std::pin::pin!(stream_of(&s).await);
    // Nothing changes: nothing is announced.
    let quiet = tokio::time::timeout(Duration::from_millis(800), body.next()).await;
    assert!(quiet.is_err(), "announced without a change: {quiet:?}");
    event_of(&s, "m-old-0", "2.0.0", "downloading", "").await;
    let got = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("no change announced within 10 s")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("event: change"), "{text}");
}

#[tokio::test]
async fn a_stream_announces_changes_that_never_stop_every_two_seconds_not_each() {
    let s = seeded().await;
    let mut body = std::pin::pin!(stream_of(&s).await);
    // An event every 50 ms for 4 s: 80 changes, never a quiet quarter second.
    let writer = {
        let (url, client) = (s.url.clone(), s.client.clone());
        tokio::spawn(async move {
            for i in 0..80 {
                let event = json!({"machineId": format!("m-new-{}", i % 6), "version": "2.0.0",
                                   "event": "checked", "detail": ""});
                let r = client
                    .post(format!("{url}/v1/events"))
                    .header("content-type", "application/json")
                    .body(event.to_string())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let until = tokio::time::Instant::now() + Duration::from_millis(4500);
    let mut announced = 0;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(until, body.next()).await {
        announced += String::from_utf8_lossy(&chunk.unwrap())
            .matches("event: change")
            .count();
    }
    writer.await.unwrap();
    // One every two seconds while changes go on (and a second's gap at least): 2 or 3, where
    // announcing each quarter second with a change would be about 16.
    assert!((1..=5).contains(&announced), "{announced} announcements");
}

#[tokio::test]
async fn a_browser_filters_the_table_opens_a_timeline_and_sees_a_new_event_live() {
    let s = seeded().await;
    let b = Browser::start().await;
    b.goto(&format!("{}/", s.url)).await;
    assert_eq!(b.text_of("#count-machines").await, "12");
    assert_eq!(b.text_of("#count-failed").await, "1");
    assert_eq!(b.text_of("#count-behind").await, "3");
    b.wait_text("#live-status", "live", Duration::from_secs(10))
        .await;

    // The machines table: search, then narrow by state.
    b.click(&b.find("nav a[href='/machines']").await).await;
    assert_eq!(b.find_all("#machines tbody tr").await.len(), 12);
    b.send_keys(&b.find("input[name=q]").await, "m-old").await;
    b.click(&b.find("#machine-filter button").await).await;
    b.wait_text("#machine-count", "3 of 12", Duration::from_secs(10))
        .await;
    assert_eq!(b.find_all("#machines tbody tr").await.len(), 3);
    assert!(b.url().await.contains("q=m-old"));
    b.goto(&format!("{}/machines?state=failed", s.url)).await;
    let rows = b.find_all("#machines tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(b.text_of("#machines tbody tr").await.contains("m-broken"));

    // A machine's timeline.
    b.click(&b.find("#machines a[href='/machines/m-broken']").await)
        .await;
    b.wait_text("h1", "m-broken", Duration::from_secs(10)).await;
    let before = b.find_all("#timeline li").await.len();
    assert_eq!(before, 4);
    let detail = b.text_of("#timeline li").await;
    assert!(detail.contains("<script>alert(1)</script>"), "{detail}");

    // A new event arrives without a reload: a marker set on the page survives.
    b.execute("window.__slipwayMarker = 'still here'; return null;")
        .await;
    b.wait_text("#live-status", "live", Duration::from_secs(10))
        .await;
    event_of(&s, "m-broken", "2.0.0", "healthy", "retried by hand").await;
    b.wait_text("#timeline li", "retried by hand", Duration::from_secs(15))
        .await;
    assert_eq!(b.find_all("#timeline li").await.len(), before + 1);
    assert_eq!(
        b.execute("return window.__slipwayMarker || null;").await,
        json!("still here"),
        "the page was reloaded"
    );
    let png = b.screenshot().await;
    assert_eq!(&png[1..4], b"PNG");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("machine-timeline.png"), &png).unwrap();
    b.goto(&format!("{}/", s.url)).await;
    std::fs::write(out.join("overview.png"), b.screenshot().await).unwrap();
}

#[tokio::test]
async fn a_hidden_page_does_not_refresh_and_catches_up_when_shown() {
    let s = seeded().await;
    let b = Browser::start().await;
    b.goto(&format!("{}/machines/m-broken", s.url)).await;
    b.wait_text("#live-status", "live", Duration::from_secs(10))
        .await;
    assert_eq!(b.find_all("#timeline li").await.len(), 4);
    // The tab goes to the background (headless Chromium is always visible: the page is told
    // so the way a browser tells it).
    b.execute(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
         document.dispatchEvent(new Event('visibilitychange')); return null;",
    )
    .await;
    event_of(&s, "m-broken", "2.0.0", "healthy", "while hidden").await;
    // A change is announced within about half a second; the hidden page lets it pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        b.find_all("#timeline li").await.len(),
        4,
        "refreshed while hidden"
    );
    b.execute(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
         document.dispatchEvent(new Event('visibilitychange')); return null;",
    )
    .await;
    b.wait_text("#timeline li", "while hidden", Duration::from_secs(10))
        .await;
    assert_eq!(b.find_all("#timeline li").await.len(), 5);
}

#[tokio::test]
async fn the_releases_view_and_a_metric_show_what_deltas_saved() {
    let s = seeded().await;
    let staged = |machine: &str, image: u64, fetched: u64, delta: bool| {
        json!({"machineId": machine, "version": "2.0.0", "event": "staged", "detail": "slot B",
               "transfer": {"imageBytes": image, "fetchedBytes": fetched,
                            "localBytes": image - fetched, "delta": delta}})
        .to_string()
    };
    for (m, body) in [
        ("m-new-0", staged("m-new-0", 300 << 20, 9 << 20, true)),
        ("m-new-1", staged("m-new-1", 300 << 20, 6 << 20, true)),
        ("m-new-2", staged("m-new-2", 300 << 20, 300 << 20, false)),
    ] {
        let (st, b) = s.post_raw("/v1/events", body).await;
        assert_eq!(st, StatusCode::OK, "{m}: {b}");
    }
    // A transfer on another kind of event is not counted.
    let (st, _) = s
        .post_raw(
            "/v1/events",
            json!({"machineId": "m-new-3", "version": "2.0.0", "event": "healthy",
                   "transfer": {"imageBytes": 1, "fetchedBytes": 0, "localBytes": 1, "delta": true}})
            .to_string(),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let releases = get_json(&s, "/api/releases").await;
    let r = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2.0.0")
        .unwrap();
    // m-broken staged 2.0.0 without a transfer (an older engine): not counted.
    assert_eq!(
        r["transfer"],
        json!({"version": "2.0.0", "staged": 3, "deltas": 2,
               "imageBytes": 900u64 << 20, "fetchedBytes": 315u64 << 20}),
        "{r}"
    );
    let (_, page) = s.get("/releases").await;
    assert!(
        page.contains("3 staged, 2 as deltas; fetched 35.0% of the image, saved 585.0 MiB"),
        "{page}"
    );
    let (_, metrics) = s.get("/metrics").await;
    let saved = (300u64 << 20) * 2 - (15u64 << 20);
    assert!(
        metrics.contains(&format!("slipway_server_delta_saved_bytes_total {saved}")),
        "{metrics}"
    );
}
