//! The emitter against real HTTP sinks on 127.0.0.1: an axum server that records what it is
//! sent and answers as each test scripts it (2xx, 503, 429, 400, or never), and a port with
//! nothing listening on it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use jiff::Timestamp;
use serde_json::{Value, json};
use slipway_events::{EmitOutcome, Emitter, Event, EventType, Metrics, Settings};
use tokio::net::TcpListener;
use url::Url;

const SOURCE: &str = "/slipway/operator/slipway-system";

/// How the sink answers one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answers.
    Hang,
}

/// One request the sink accepted (answered 2xx).
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn data(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    attempts: AtomicUsize,
    /// Answers for the next requests, in order; then `otherwise`.
    script: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Option<Answer>>,
}

#[derive(Clone, Default)]
struct Sink(Arc<SinkState>);

impl Sink {
    fn answering(otherwise: Answer) -> Self {
        let s = Self::default();
        *s.0.otherwise.lock().unwrap() = Some(otherwise);
        s
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.0.script.lock().unwrap().extend(answers);
    }

    fn received(&self) -> Vec<Received> {
        self.0.received.lock().unwrap().clone()
    }

    fn attempts(&self) -> usize {
        self.0.attempts.load(Ordering::SeqCst)
    }

    async fn serve_on(&self, listener: TcpListener) -> Url {
        let url: Url = format!("http://{}/events", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    async fn start(&self) -> Url {
        self.serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
            .await
    }
}

async fn receive(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    sink.0.attempts.fetch_add(1, Ordering::SeqCst);
    let next = sink.0.script.lock().unwrap().pop_front();
    let answer = next
        .or(*sink.0.otherwise.lock().unwrap())
        .unwrap_or(Answer::Status(202));
    match answer {
        Answer::Hang => std::future::pending().await,
        Answer::Status(code) => {
            let code = StatusCode::from_u16(code).unwrap();
            if code.is_success() {
                sink.0
                    .received
                    .lock()
                    .unwrap()
                    .push(Received { headers, body });
            }
            code
        }
    }
}

fn settings(sinks: Vec<Url>, bound: usize) -> Settings {
    let mut s = Settings::new(SOURCE, sinks);
    s.queue_bound = bound;
    s.initial_backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(200);
    s.request_timeout = Duration::from_secs(60);
    s
}

fn event(i: usize) -> Event {
    let kind = EventType::ALL[i % EventType::ALL.len()];
    let time: Timestamp = "2026-11-29T10:00:00.123456789Z".parse().unwrap();
    Event::new(
        kind,
        format!("node-{i:03}"),
        time + jiff::SignedDuration::from_secs(i as i64),
        json!({"seq": i, "node": format!("node-{i:03}"), "nested": {"ünïcode": "ok", "list": [1, 2, 3]}}),
    )
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    // Generous: the machine is shared with other builds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn seqs(received: &[Received]) -> Vec<u64> {
    received
        .iter()
        .map(|r| r.data()["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_sink_receives_every_required_attribute_with_unique_ids_and_intact_data() {
    let sink = Sink::default();
    let url = sink.start().await;
    let mut registry = prometheus_client::registry::Registry::with_prefix("slipway_test");
    let metrics = Metrics::registered_in(&mut registry);
    let emitter = Emitter::start(settings(vec![url.clone()], 1000), metrics.clone()).unwrap();
    let events: Vec<Event> = (0..50).map(event).collect();
    for e in &events {
        assert_eq!(
            emitter.emit(e.clone()),
            EmitOutcome {
                queued: 1,
                dropped: 0
            }
        );
    }
    wait_for("50 events at the sink", || sink.received().len() == 50).await;
    let received = sink.received();
    let mut ids = HashSet::new();
    for (r, e) in received.iter().zip(&events) {
        assert_eq!(r.header("ce-specversion"), "1.0");
        assert_eq!(r.header("ce-id"), e.id);
        assert!(ids.insert(r.header("ce-id").to_string()), "duplicate id");
        assert_eq!(r.header("ce-source"), SOURCE);
        assert_eq!(r.header("ce-type"), e.kind.as_str());
        assert!(r.header("ce-type").starts_with("dev.slipway."));
        let time: Timestamp = r.header("ce-time").parse().unwrap();
        assert_eq!(time, e.time);
        assert_eq!(r.header("ce-subject"), e.subject.as_deref().unwrap());
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.data(), e.data, "data intact");
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(seqs(&received), (0..50).collect::<Vec<_>>(), "in order");
    let name = url.to_string();
    assert_eq!(metrics.delivered_to(&name), 50);
    assert_eq!(metrics.queue_depth_of(&name), 0);
    assert_eq!(metrics.retries_at(&name), 0);
    // The metrics render under the embedding registry's prefix.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(&format!(
            "slipway_test_cloudevents_delivered_total{{sink=\"{name}\"}} 50"
        )),
        "{text}"
    );
    assert_eq!(emitter.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn a_sink_that_is_down_then_comes_up_receives_every_event_in_order_up_to_the_bound() {
    // Reserve a port, then close it: connections are refused until the sink starts there.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url: Url = format!("http://{addr}/events").parse().unwrap();
    let bound = 25;
    let metrics = Metrics::default();
    let emitter = Emitter::start(settings(vec![url.clone()], bound), metrics.clone()).unwrap();
    let events: Vec<Event> = (0..bound).map(event).collect();
    for e in &events {
        assert_eq!(emitter.emit(e.clone()).queued, 1);
    }
    let name = url.to_string();
    wait_for("a few refused attempts", || metrics.retries_at(&name) >= 3).await;
    assert_eq!(metrics.delivered_to(&name), 0);
    assert_eq!(metrics.queue_depth_of(&name), bound as i64);
    // The sink comes up, first answering 503 and 429 (both retried), then 202.
    let sink = Sink::default();
    sink.script([
        Answer::Status(503),
        Answer::Status(503),
        Answer::Status(429),
    ]);
    let listener = TcpListener::bind(addr).await.unwrap();
    sink.serve_on(listener).await;
    wait_for("every event at the sink", || sink.received().len() == bound).await;
    let received = sink.received();
    assert_eq!(seqs(&received), (0..bound as u64).collect::<Vec<_>>());
    let ids: Vec<&str> = received.iter().map(|r| r.header("ce-id")).collect();
    let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want, "each event once, in order");
    assert_eq!(sink.attempts(), bound + 3);
    assert_eq!(metrics.delivered_to(&name), bound as u64);
    assert_eq!(metrics.dropped_for(&name, "queue_full"), 0);
    assert_eq!(metrics.failed_at(&name), 0);
    assert_eq!(metrics.queue_depth_of(&name), 0);
    assert_eq!(emitter.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn beyond_the_bound_new_events_are_dropped_and_counted_and_emit_never_waits() {
    let sink = Sink::answering(Answer::Hang);
    let url = sink.start().await;
    let bound = 10;
    let n = 5_000;
    let metrics = Metrics::default();
    let emitter = Emitter::start(settings(vec![url.clone()], bound), metrics.clone()).unwrap();
    let events: Vec<Event> = (0..n).map(event).collect();
    let started = Instant::now();
    let mut total = EmitOutcome::default();
    for e in events {
        let o = emitter.emit(e);
        total.queued += o.queued;
        total.dropped += o.dropped;
    }
    let took = started.elapsed();
    // Generous: emit is a few atomics and a channel push; this is far below any network wait.
    assert!(
        took < Duration::from_secs(5),
        "emitting {n} events took {took:?}"
    );
    assert_eq!(
        total,
        EmitOutcome {
            queued: bound,
            dropped: n - bound
        },
        "the first {bound} were kept, the newer ones dropped"
    );
    let name = url.to_string();
    assert_eq!(metrics.queue_depth_of(&name), bound as i64);
    assert_eq!(metrics.dropped_for(&name, "queue_full"), (n - bound) as u64);
    // The hanging sink holds the first event in flight; the rest wait behind it.
    wait_for("the first delivery attempt", || sink.attempts() == 1).await;
    assert_eq!(metrics.queue_depth_of(&name), bound as i64);
    // Shutdown gives up at its deadline and says how many were not delivered.
    let started = Instant::now();
    let undelivered = emitter.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(undelivered, bound);
    assert_eq!(metrics.dropped_for(&name, "shutdown"), bound as u64);
    assert_eq!(metrics.queue_depth_of(&name), 0);
    assert_eq!(metrics.delivered_to(&name), 0);
    // After shutdown, emitting still returns at once and counts the drop.
    assert_eq!(
        emitter.emit(event(0)),
        EmitOutcome {
            queued: 0,
            dropped: 1
        }
    );
    assert_eq!(metrics.dropped_for(&name, "shutdown"), bound as u64 + 1);
}

#[tokio::test]
async fn a_400_is_a_permanent_failure_and_is_not_retried() {
    let sink = Sink::answering(Answer::Status(400));
    let url = sink.start().await;
    let metrics = Metrics::default();
    let emitter = Emitter::start(settings(vec![url.clone()], 100), metrics.clone()).unwrap();
    for i in 0..3 {
        emitter.emit(event(i));
    }
    let name = url.to_string();
    wait_for("three refusals", || metrics.failed_at(&name) == 3).await;
    // Delivery is sequential, so every attempt has been made by now: one per event.
    assert_eq!(sink.attempts(), 3);
    assert_eq!(metrics.retries_at(&name), 0);
    assert_eq!(metrics.delivered_to(&name), 0);
    assert_eq!(metrics.queue_depth_of(&name), 0);
    // The sink recovers: the next event goes through.
    *sink.0.otherwise.lock().unwrap() = Some(Answer::Status(200));
    emitter.emit(event(3));
    wait_for("the next event delivered", || {
        metrics.delivered_to(&name) == 1
    })
    .await;
    assert_eq!(seqs(&sink.received()), vec![3]);
    assert_eq!(emitter.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_within_its_deadline_to_every_sink() {
    let slow = Sink::default();
    // Down for a few attempts: shutdown keeps retrying within its deadline.
    slow.script([Answer::Status(503); 4]);
    let fine = Sink::default();
    let urls = vec![slow.start().await, fine.start().await];
    let metrics = Metrics::default();
    let emitter = Emitter::start(settings(urls.clone(), 100), metrics.clone()).unwrap();
    assert_eq!(
        emitter.sinks(),
        urls.iter().map(Url::to_string).collect::<Vec<_>>()
    );
    for i in 0..20 {
        assert_eq!(emitter.emit(event(i)).queued, 2);
    }
    assert_eq!(emitter.shutdown(Duration::from_secs(30)).await, 0);
    for sink in [&slow, &fine] {
        assert_eq!(seqs(&sink.received()), (0..20).collect::<Vec<_>>());
    }
    for url in &urls {
        assert_eq!(metrics.delivered_to(url.as_str()), 20);
    }
}
