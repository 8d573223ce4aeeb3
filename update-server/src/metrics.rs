//! The server's metrics (OpenMetrics text on `/metrics`): checks, offers, events by kind,
//! payload bytes sent, request latency by route. Names: `slipway_server_<thing>_<unit|total>`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use slipway_api::wire::EventKind;

/// Labels of the offers counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OfferLabels {
    /// `wave` or `advisory`.
    pub reason: &'static str,
}

/// Labels of the events counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event's wire name.
    pub event: EventLabel,
}

/// An event kind as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct EventLabel(pub EventKind);

impl EncodeLabelValue for EventLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

/// Labels of the request latency histogram. Only values the server chose (route templates,
/// methods it routes, status codes), so clients cannot grow the label space.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route template (`/v1/payloads/{sha256}`), `/v1/admin` for any admin route,
    /// or `unmatched`.
    pub route: &'static str,
    /// HTTP method (`other` for unusual ones).
    pub method: &'static str,
    /// Status code.
    pub code: u16,
}

type HistogramCtor = fn() -> Histogram;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Update checks answered.
    pub checks: Counter,
    /// Checks answered with an update, by reason.
    pub offers: Family<OfferLabels, Counter>,
    /// Events recorded, by kind.
    pub events: Family<EventLabels, Counter>,
    /// Payload bytes sent.
    pub payload_bytes: Counter,
    /// Image bytes machines did not download thanks to deltas (image size less bytes fetched,
    /// as their `staged` reports say).
    pub delta_saved_bytes: Counter,
    /// Request latency by route, method and code.
    pub requests: Family<RequestLabels, Histogram, HistogramCtor>,
    /// Cincinnati graph requests answered.
    pub graph_requests: Counter,
    /// Waves of health-gated rollouts this replica opened.
    pub gate_waves_opened: Counter,
    /// Health-gated rollouts this replica halted.
    pub gate_halts: Counter,
    /// The CloudEvents emitter's (`slipway_server_cloudevents_*`), by sink.
    pub cloudevents: slipway_events::Metrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("slipway_server");
        let checks = Counter::default();
        registry.register("checks", "Update checks answered", checks.clone());
        let offers = Family::<OfferLabels, Counter>::default();
        registry.register(
            "offers",
            "Update checks answered with a release, by reason",
            offers.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Machine events recorded, by kind", events.clone());
        let payload_bytes = Counter::default();
        registry.register_with_unit(
            "payload_sent",
            "Payload bytes sent to machines",
            Unit::Bytes,
            payload_bytes.clone(),
        );
        let delta_saved_bytes = Counter::default();
        registry.register_with_unit(
            "delta_saved",
            "OS image bytes machines built from their own slots instead of downloading (delta updates)",
            Unit::Bytes,
            delta_saved_bytes.clone(),
        );
        let requests = Family::<RequestLabels, Histogram, HistogramCtor>::new_with_constructor(
            latency_histogram as HistogramCtor,
        );
        registry.register_with_unit(
            "request_duration",
            "HTTP request latency until the response head, by route",
            Unit::Seconds,
            requests.clone(),
        );
        let graph_requests = Counter::default();
        registry.register(
            "graph_requests",
            "Cincinnati update-graph requests answered (GET /v1/graph)",
            graph_requests.clone(),
        );
        let gate_waves_opened = Counter::default();
        registry.register(
            "gate_waves_opened",
            "Waves of health-gated rollouts opened by this replica",
            gate_waves_opened.clone(),
        );
        let gate_halts = Counter::default();
        registry.register(
            "gate_halts",
            "Health-gated rollouts halted by this replica (failures above the gate)",
            gate_halts.clone(),
        );
        let cloudevents = slipway_events::Metrics::registered_in(&mut registry);
        Self {
            graph_requests,
            gate_waves_opened,
            gate_halts,
            registry,
            checks,
            offers,
            events,
            payload_bytes,
            delta_saved_bytes,
            requests,
            cloudevents,
        }
    }
}

impl Metrics {
    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
