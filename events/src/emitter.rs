//! The emitter: one bounded queue per sink, each drained in order by its own background task
//! that POSTs events in CloudEvents HTTP binary mode and retries with capped exponential
//! backoff; [`Emitter::emit`] only enqueues, so a slow or dead sink never holds a caller up.
//!
//! Delivery guarantees, per sink:
//! - Order: events are delivered in the order they were emitted (one task, one at a time; an
//!   event is retried until it is delivered or refused before the next one is sent).
//! - Retries: connection errors, timeouts, 5xx and 429 are retried without limit, waiting
//!   `initial_backoff`, doubling, up to `max_backoff`. Other answers outside 2xx (4xx, and 3xx:
//!   redirects are not followed) are final: the event is logged and counted as failed.
//! - Bound: at most `queue_bound` events wait per sink, counting the one in flight. When the
//!   queue is full the *new* event is dropped (and counted), not an old one: what is queued
//!   stays a gap-free prefix of the history, the earliest events of a storm (the cause) survive
//!   rather than its tail, and `emit` never has to reach into a queue a delivery task is
//!   reading from. A sink that is down therefore delays events, and loses none until
//!   `queue_bound` are waiting.
//! - Shutdown: [`Emitter::shutdown`] stops accepting events and keeps delivering (retries
//!   included) until its deadline; whatever is left then is dropped and counted.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use crate::error::{Error, Result};
use crate::event::{CONTENT_TYPE, Event, EventType, SPEC_VERSION};
use crate::metrics::{DropLabels, Metrics, SinkLabels};

/// The default per-sink queue bound.
pub const DEFAULT_QUEUE_BOUND: usize = 1000;

/// How an emitter delivers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events go (`http` or `https`); none disables emitting.
    pub sinks: Vec<Url>,
    /// The CloudEvents `source` of every event this emitter sends (a URI reference, e.g.
    /// `/slipway/operator/slipway-system` or the update server's public URL).
    pub source: String,
    /// Events waiting per sink, including the one in flight; beyond it new events are dropped.
    pub queue_bound: usize,
    /// Longest one delivery attempt may take (connecting, sending, reading the status).
    pub request_timeout: Duration,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl Settings {
    /// Settings with the default bound, timeout and backoff.
    pub fn new(source: impl Into<String>, sinks: Vec<Url>) -> Self {
        Self {
            sinks,
            source: source.into(),
            queue_bound: DEFAULT_QUEUE_BOUND,
            request_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What happened to one emitted event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitOutcome {
    /// Sinks whose queue took it.
    pub queued: usize,
    /// Sinks that dropped it (queue full, or shutting down).
    pub dropped: usize,
}

/// Sends events to every configured sink. Cheap to clone (clones share the queues); the
/// default value has no sinks and ignores events.
#[derive(Clone, Default)]
pub struct Emitter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    source: String,
    sinks: Vec<SinkQueue>,
    metrics: Metrics,
    closing: AtomicBool,
    /// The shutdown deadline, once shutdown began.
    stop: watch::Sender<Option<Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct SinkQueue {
    shared: Arc<SinkShared>,
    tx: mpsc::Sender<Arc<Prepared>>,
}

/// What the emitting side and a sink's delivery task share.
struct SinkShared {
    /// The metric label and log name (the URL without credentials).
    name: String,
    labels: SinkLabels,
    bound: usize,
    /// Accepted and not finished with: queued plus in flight. Never above `bound`.
    depth: AtomicUsize,
    /// Dropping because full (so the first drop of a run is logged, not every one).
    dropping: AtomicBool,
    metrics: Metrics,
}

impl SinkShared {
    fn drop_event(&self, reason: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                sink: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// The delivery task is done with one event (delivered, refused or abandoned).
    fn finish(&self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.get_or_create(&self.labels).dec();
        self.dropping.store(false, Ordering::Relaxed);
    }
}

/// An event serialised once for every sink.
#[derive(Debug)]
struct Prepared {
    id: String,
    kind: EventType,
    subject: Option<String>,
    time: String,
    body: bytes::Bytes,
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Emitter(disabled)"),
            Some(i) => f
                .debug_struct("Emitter")
                .field("source", &i.source)
                .field(
                    "sinks",
                    &i.sinks.iter().map(|s| &s.shared.name).collect::<Vec<_>>(),
                )
                .finish_non_exhaustive(),
        }
    }
}

/// The URL without user name and password, for labels and logs.
fn sink_name(url: &Url) -> String {
    let mut u = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Percent-encodes what CloudEvents' HTTP binding says must be: space, `"`, `%` and anything
/// outside printable ASCII (as UTF-8 bytes). The result is always a valid header value.
fn header_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Emitter {
    /// Starts one delivery task per sink (call inside a tokio runtime). With no sinks, returns
    /// an emitter that ignores events and starts nothing.
    pub fn start(settings: Settings, metrics: Metrics) -> Result<Self> {
        if settings.sinks.is_empty() {
            return Ok(Self::default());
        }
        if settings.queue_bound == 0 {
            return Err(Error::InvalidSettings(
                "the queue bound must be at least 1".into(),
            ));
        }
        if settings.source.is_empty() {
            return Err(Error::InvalidSettings(
                "the source must not be empty".into(),
            ));
        }
        for url in &settings.sinks {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::InvalidSink {
                    url: sink_name(url),
                    reason: format!("scheme {:?} is not http or https", url.scheme()),
                });
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::Client)?;
        let (stop, _) = watch::channel(None);
        let source: Arc<str> = Arc::from(header_text(&settings.source));
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        for url in settings.sinks {
            let name = sink_name(&url);
            let labels = SinkLabels { sink: name.clone() };
            // Every sink shows up in the metrics from the start, at zero.
            let _ = metrics.delivered.get_or_create(&labels);
            let _ = metrics.failed.get_or_create(&labels);
            let _ = metrics.retries.get_or_create(&labels);
            metrics.queue_depth.get_or_create(&labels).set(0);
            let shared = Arc::new(SinkShared {
                name,
                labels,
                bound: settings.queue_bound,
                depth: AtomicUsize::new(0),
                dropping: AtomicBool::new(false),
                metrics: metrics.clone(),
            });
            // `depth` keeps queued + in flight at most `bound`, so the channel never fills.
            let (tx, rx) = mpsc::channel(settings.queue_bound);
            let worker = Worker {
                url,
                shared: shared.clone(),
                source: source.clone(),
                client: client.clone(),
                request_timeout: settings.request_timeout,
                initial_backoff: settings.initial_backoff,
                max_backoff: settings.max_backoff.max(settings.initial_backoff),
                stop: stop.subscribe(),
            };
            tasks.push(tokio::spawn(worker.run(rx)));
            sinks.push(SinkQueue { shared, tx });
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                source: settings.source,
                sinks,
                metrics,
                closing: AtomicBool::new(false),
                stop,
                tasks: Mutex::new(tasks),
            })),
        })
    }

    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The `source` attribute this emitter sends.
    pub fn source(&self) -> Option<&str> {
        self.inner.as_ref().map(|i| i.source.as_str())
    }

    /// The sinks, as named in metric labels (URLs without credentials).
    pub fn sinks(&self) -> Vec<String> {
        self.inner
            .iter()
            .flat_map(|i| i.sinks.iter().map(|s| s.shared.name.clone()))
            .collect()
    }

    /// The metrics this emitter updates (empty families when disabled).
    pub fn metrics(&self) -> Metrics {
        self.inner
            .as_ref()
            .map(|i| i.metrics.clone())
            .unwrap_or_default()
    }

    /// Queues `event` for every sink and returns at once: never waits, never fails. A sink
    /// whose queue is full drops this (newest) event and counts it.
    pub fn emit(&self, event: Event) -> EmitOutcome {
        let mut outcome = EmitOutcome::default();
        let Some(inner) = &self.inner else {
            return outcome;
        };
        let prepared = Arc::new(Prepared {
            id: header_text(&event.id),
            kind: event.kind,
            subject: event.subject.as_deref().map(header_text),
            time: event.time.to_string(),
            // Serialising a `Value` cannot fail.
            body: bytes::Bytes::from(serde_json::to_vec(&event.data).unwrap_or_default()),
        });
        for sink in &inner.sinks {
            let s = &sink.shared;
            if inner.closing.load(Ordering::Acquire) {
                s.drop_event("shutdown");
                outcome.dropped += 1;
                continue;
            }
            let reserved = s
                .depth
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    (d < s.bound).then_some(d + 1)
                })
                .is_ok();
            if !reserved {
                s.drop_event("queue_full");
                outcome.dropped += 1;
                if !s.dropping.swap(true, Ordering::Relaxed) {
                    warn!(sink = %s.name, bound = s.bound, r#type = %event.kind, id = %event.id,
                        "CloudEvents queue full; dropping new events until the sink catches up");
                }
                continue;
            }
            s.metrics.queue_depth.get_or_create(&s.labels).inc();
            match sink.tx.try_send(prepared.clone()) {
                Ok(()) => outcome.queued += 1,
                Err(_) => {
                    // Full cannot happen (see `depth`); closed means the task is gone.
                    s.depth.fetch_sub(1, Ordering::AcqRel);
                    s.metrics.queue_depth.get_or_create(&s.labels).dec();
                    s.drop_event("closed");
                    outcome.dropped += 1;
                }
            }
        }
        outcome
    }

    /// Stops accepting events, keeps delivering what is queued until `grace` has passed, then
    /// drops the rest. Returns how many events (summed over sinks) were not delivered because
    /// of the deadline. Later calls, and calls on other clones, return 0.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let Some(inner) = &self.inner else { return 0 };
        inner.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        let tasks = std::mem::take(&mut *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if tasks.is_empty() {
            return 0;
        }
        let before: u64 = inner
            .sinks
            .iter()
            .map(|s| inner.metrics.dropped_for(&s.shared.name, "shutdown"))
            .sum();
        inner.stop.send_replace(Some(deadline));
        for mut task in tasks {
            // A task checks the deadline between attempts and bounds each attempt by it; the
            // extra second only covers scheduling. Past it, the task is stopped.
            if tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let mut undelivered = 0u64;
        for s in &inner.sinks {
            // Anything a stopped task still held.
            let left = s.shared.depth.swap(0, Ordering::AcqRel);
            for _ in 0..left {
                s.shared.drop_event("shutdown");
            }
            inner
                .metrics
                .queue_depth
                .get_or_create(&s.shared.labels)
                .set(0);
            undelivered += inner.metrics.dropped_for(&s.shared.name, "shutdown");
        }
        let undelivered = usize::try_from(undelivered.saturating_sub(before)).unwrap_or(usize::MAX);
        if undelivered > 0 {
            warn!(
                undelivered,
                "CloudEvents not delivered by the shutdown deadline"
            );
        }
        undelivered
    }
}

/// How one delivery attempt ended.
enum Attempt {
    Delivered,
    /// A final refusal (4xx other than 429, 3xx): not retried.
    Refused(StatusCode),
    /// Worth retrying (connection error, timeout, 5xx, 429).
    Retry(String),
}

/// One sink's delivery task.
struct Worker {
    url: Url,
    shared: Arc<SinkShared>,
    source: Arc<str>,
    client: reqwest::Client,
    request_timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    stop: watch::Receiver<Option<Instant>>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Prepared>>) {
        loop {
            let shutting_down = self.stop.borrow_and_update().is_some();
            let item = if shutting_down {
                // Take what is left without waiting for more.
                match rx.try_recv() {
                    Ok(item) => item,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => return,
                    },
                    changed = self.stop.changed() => {
                        if changed.is_err() {
                            // The emitter is gone without a shutdown: abandon the queue.
                            while rx.try_recv().is_ok() {
                                self.shared.drop_event("shutdown");
                                self.shared.finish();
                            }
                            return;
                        }
                        continue;
                    }
                }
            };
            self.deliver(&item).await;
            self.shared.finish();
        }
    }

    /// Retries `item` until it is delivered, refused, or the shutdown deadline passes.
    async fn deliver(&self, item: &Prepared) {
        let name = &self.shared.name;
        let mut backoff = self.initial_backoff;
        let mut attempts = 0u32;
        loop {
            let deadline = *self.stop.borrow();
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.shared.drop_event("shutdown");
                        return;
                    }
                    self.request_timeout.min(left)
                }
                None => self.request_timeout,
            };
            attempts += 1;
            match self.attempt(item, timeout).await {
                Attempt::Delivered => {
                    self.shared
                        .metrics
                        .delivered
                        .get_or_create(&self.shared.labels)
                        .inc();
                    if attempts > 1 {
                        info!(sink = %name, id = %item.id, attempts, "CloudEvent delivered after retries");
                    }
                    return;
                }
                Attempt::Refused(status) => {
                    self.shared
                        .metrics
                        .failed
                        .get_or_create(&self.shared.labels)
                        .inc();
                    warn!(sink = %name, id = %item.id, r#type = %item.kind, %status,
                        "CloudEvent refused by the sink; not retried");
                    return;
                }
                Attempt::Retry(why) => {
                    self.shared
                        .metrics
                        .retries
                        .get_or_create(&self.shared.labels)
                        .inc();
                    if attempts == 1 {
                        warn!(sink = %name, id = %item.id, error = %why, "CloudEvent delivery failed; retrying with backoff");
                    } else {
                        debug!(sink = %name, id = %item.id, error = %why, attempts, "CloudEvent delivery failed again");
                    }
                }
            }
            let mut until = Instant::now() + backoff;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                // Shutdown began: try again now, within the deadline.
                changed = stop.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until).await;
                    }
                }
            }
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }

    async fn attempt(&self, item: &Prepared, timeout: Duration) -> Attempt {
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .header("ce-specversion", SPEC_VERSION)
            .header("ce-id", &item.id)
            .header("ce-source", &*self.source)
            .header("ce-type", item.kind.as_str())
            .header("ce-time", &item.time)
            .header(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE))
            .body(item.body.clone());
        if let Some(subject) = &item.subject {
            req = req.header("ce-subject", subject);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    Attempt::Retry(format!("HTTP {status}"))
                } else {
                    Attempt::Refused(status)
                }
            }
            Err(e) if e.is_builder() => {
                // Header values are percent-encoded, so this is not expected; retrying would
                // not help either.
                warn!(sink = %self.shared.name, error = %e, "CloudEvent request could not be built");
                Attempt::Refused(StatusCode::BAD_REQUEST)
            }
            Err(e) => Attempt::Retry(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_encoded_as_the_http_binding_requires() {
        assert_eq!(header_text("node-01"), "node-01");
        assert_eq!(header_text("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(header_text("é"), "%C3%A9");
        assert_eq!(header_text("/slipway/operator/ns"), "/slipway/operator/ns");
    }

    #[test]
    fn sink_names_hide_credentials() {
        let u: Url = "https://user:secret@sink.example/events".parse().unwrap();
        assert_eq!(sink_name(&u), "https://sink.example/events");
    }

    #[tokio::test]
    async fn no_sinks_means_a_disabled_emitter_that_ignores_events() {
        let e = Emitter::start(Settings::new("/x", vec![]), Metrics::default()).unwrap();
        assert!(!e.is_enabled());
        let ev = Event::new(
            EventType::NodeGranted,
            "n",
            jiff::Timestamp::UNIX_EPOCH,
            serde_json::json!({}),
        );
        assert_eq!(e.emit(ev), EmitOutcome::default());
        assert_eq!(e.shutdown(Duration::from_secs(1)).await, 0);
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let file: Url = "file:///tmp/x".parse().unwrap();
        let err = Emitter::start(Settings::new("/x", vec![file]), Metrics::default()).unwrap_err();
        assert_eq!(err.kind(), "invalid-sink");
        let ok: Url = "http://127.0.0.1:9/".parse().unwrap();
        let mut s = Settings::new("/x", vec![ok]);
        s.queue_bound = 0;
        assert_eq!(
            Emitter::start(s, Metrics::default()).unwrap_err().kind(),
            "invalid-settings"
        );
    }
}
