//! The emitter's metrics, per sink: delivered, failed permanently, dropped (by reason), retries
//! and queue depth. They register into the embedding component's registry, so the names come
//! out as `slipway_<component>_cloudevents_<thing>_<unit|total>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A sink label: the sink URL without credentials.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink.
    pub sink: String,
}

/// A dropped-event label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The sink.
    pub sink: String,
    /// `queue_full`, `shutdown` (not delivered by the shutdown deadline, or emitted after
    /// shutdown began) or `closed` (the sink's delivery task is gone).
    pub reason: &'static str,
}

/// The emitter's metric families (cheap to clone: clones share the values).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Events the sink accepted (2xx).
    pub delivered: Family<SinkLabels, Counter>,
    /// Events the sink refused with a 4xx other than 429 (not retried).
    pub failed: Family<SinkLabels, Counter>,
    /// Events never delivered because the queue was full or the process shut down.
    pub dropped: Family<DropLabels, Counter>,
    /// Delivery attempts that failed and were retried.
    pub retries: Family<SinkLabels, Counter>,
    /// Events accepted and not yet finished with (queued plus the one in flight).
    pub queue_depth: Family<SinkLabels, Gauge>,
}

impl Metrics {
    /// New families, registered in `registry` as `cloudevents_*`.
    pub fn registered_in(registry: &mut Registry) -> Self {
        let m = Self::default();
        m.register(registry);
        m
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cloudevents_delivered",
            "CloudEvents the sink accepted, by sink",
            self.delivered.clone(),
        );
        registry.register(
            "cloudevents_failed",
            "CloudEvents the sink refused for good (4xx other than 429), by sink",
            self.failed.clone(),
        );
        registry.register(
            "cloudevents_dropped",
            "CloudEvents never delivered (queue full, shutdown), by sink and reason",
            self.dropped.clone(),
        );
        registry.register(
            "cloudevents_retries",
            "CloudEvent delivery attempts that failed and were retried, by sink",
            self.retries.clone(),
        );
        registry.register(
            "cloudevents_queue_depth",
            "CloudEvents waiting for delivery (including the one in flight), by sink",
            self.queue_depth.clone(),
        );
    }

    fn label(sink: &str) -> SinkLabels {
        SinkLabels {
            sink: sink.to_string(),
        }
    }

    /// Events delivered to `sink` so far.
    pub fn delivered_to(&self, sink: &str) -> u64 {
        self.delivered.get_or_create(&Self::label(sink)).get()
    }

    /// Events `sink` refused for good so far.
    pub fn failed_at(&self, sink: &str) -> u64 {
        self.failed.get_or_create(&Self::label(sink)).get()
    }

    /// Events dropped for `sink` for `reason` so far.
    pub fn dropped_for(&self, sink: &str, reason: &'static str) -> u64 {
        self.dropped
            .get_or_create(&DropLabels {
                sink: sink.to_string(),
                reason,
            })
            .get()
    }

    /// Retried attempts at `sink` so far.
    pub fn retries_at(&self, sink: &str) -> u64 {
        self.retries.get_or_create(&Self::label(sink)).get()
    }

    /// Events waiting for `sink` now.
    pub fn queue_depth_of(&self, sink: &str) -> i64 {
        self.queue_depth.get_or_create(&Self::label(sink)).get()
    }
}
