//! The watch log: the events since the last compaction, kept so a watch can resume from a
//! resourceVersion (one older than the log reaches answers 410 Gone), the broadcast that carries
//! new events to open watches, and the interval of their BOOKMARKs.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One entry of the watch log.
#[derive(Debug)]
pub(crate) struct WatchRecord {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub kind: EventKind,
    pub object: Value,
    pub previous: Option<Value>,
}

/// What open watches receive.
#[derive(Debug, Clone)]
pub(crate) enum WatchMessage {
    Event(Arc<WatchRecord>),
    /// Every open watch answers 410 Gone and closes (test hook).
    Expire,
}

/// The bounded event log and the channel to open watches.
#[derive(Debug)]
pub(super) struct WatchLog {
    log: VecDeque<Arc<WatchRecord>>,
    limit: usize,
    /// Highest resourceVersion dropped from the log: watches from before it get 410.
    compacted: u64,
    tx: broadcast::Sender<WatchMessage>,
    bookmark_interval: Duration,
}

impl WatchLog {
    /// An empty log keeping 10,000 events, with BOOKMARKs every 5 s.
    pub(super) fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            log: VecDeque::new(),
            limit: 10_000,
            compacted: 0,
            tx,
            bookmark_interval: Duration::from_secs(5),
        }
    }

    /// Appends an event, compacts the log to its limit and sends the event to open watches.
    pub(super) fn push(&mut self, rec: WatchRecord) {
        let rec = Arc::new(rec);
        self.log.push_back(rec.clone());
        self.trim();
        // No open watch is no error.
        let _ = self.tx.send(WatchMessage::Event(rec));
    }

    /// Keeps at most `events` events (at least one), compacting at once.
    pub(super) fn set_limit(&mut self, events: usize) {
        self.limit = events.max(1);
        self.trim();
    }

    fn trim(&mut self) {
        while self.log.len() > self.limit {
            if let Some(dropped) = self.log.pop_front() {
                self.compacted = dropped.rv;
            }
        }
    }

    /// Compacts everything up to `rv` and makes every open watch answer 410 Gone and close.
    pub(super) fn expire(&mut self, rv: u64) {
        self.compacted = rv;
        self.log.clear();
        let _ = self.tx.send(WatchMessage::Expire);
    }

    /// 410 Gone when `rv` is older than the log reaches back (for watches and list continue
    /// tokens alike).
    pub(super) fn ensure_retained(&self, rv: u64) -> Result<()> {
        if rv < self.compacted {
            return Err(Error::Gone {
                requested: rv,
                oldest: self.compacted,
            });
        }
        Ok(())
    }

    /// The logged events of one type after `rv`, oldest first (410 Gone when compacted away).
    pub(super) fn since(
        &self,
        rv: u64,
        group: &str,
        plural: &str,
    ) -> Result<Vec<Arc<WatchRecord>>> {
        self.ensure_retained(rv)?;
        Ok(self
            .log
            .iter()
            .filter(|r| r.rv > rv && r.group == group && r.plural == plural)
            .cloned()
            .collect())
    }

    /// A receiver for the events pushed from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<WatchMessage> {
        self.tx.subscribe()
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub(super) fn bookmark_interval(&self) -> Duration {
        self.bookmark_interval
    }

    /// Sets the BOOKMARK interval for watches started from now on.
    pub(super) fn set_bookmark_interval(&mut self, every: Duration) {
        self.bookmark_interval = every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(rv: u64, plural: &str) -> WatchRecord {
        WatchRecord {
            rv,
            group: String::new(),
            plural: plural.into(),
            namespace: None,
            kind: EventKind::Added,
            object: json!({"metadata": {"name": format!("o{rv}")}}),
            previous: None,
        }
    }

    fn rvs(records: &[Arc<WatchRecord>]) -> Vec<u64> {
        records.iter().map(|r| r.rv).collect()
    }

    #[test]
    fn replays_one_type_after_a_resource_version() {
        let mut log = WatchLog::new();
        for (rv, plural) in [(1, "nodes"), (2, "pods"), (3, "nodes"), (4, "nodes")] {
            log.push(rec(rv, plural));
        }
        assert_eq!(rvs(&log.since(0, "", "nodes").unwrap()), [1, 3, 4]);
        assert_eq!(rvs(&log.since(3, "", "nodes").unwrap()), [4]);
        assert_eq!(rvs(&log.since(1, "", "pods").unwrap()), [2]);
        assert!(log.since(1, "apps", "pods").unwrap().is_empty());
    }

    #[test]
    fn compaction_makes_older_versions_gone() {
        let mut log = WatchLog::new();
        log.set_limit(2);
        for rv in 1..=4 {
            log.push(rec(rv, "nodes"));
        }
        // Events 1 and 2 were dropped: resuming after 2 loses nothing, after 1 would lose 2.
        assert!(matches!(
            log.since(1, "", "nodes"),
            Err(Error::Gone {
                requested: 1,
                oldest: 2
            })
        ));
        assert!(log.ensure_retained(1).is_err());
        assert_eq!(rvs(&log.since(2, "", "nodes").unwrap()), [3, 4]);
        log.ensure_retained(2).unwrap();
    }

    #[test]
    fn a_lower_limit_compacts_at_once_and_never_below_one_event() {
        let mut log = WatchLog::new();
        for rv in 1..=3 {
            log.push(rec(rv, "nodes"));
        }
        log.set_limit(0);
        assert_eq!(rvs(&log.since(2, "", "nodes").unwrap()), [3]);
        assert!(log.since(1, "", "nodes").is_err());
    }

    #[test]
    fn expiry_tells_open_watches_and_forgets_the_log() {
        let mut log = WatchLog::new();
        log.push(rec(1, "nodes"));
        let mut rx = log.subscribe();
        log.push(rec(2, "nodes"));
        log.expire(2);
        assert!(matches!(rx.try_recv(), Ok(WatchMessage::Event(r)) if r.rv == 2));
        assert!(matches!(rx.try_recv(), Ok(WatchMessage::Expire)));
        assert!(matches!(
            log.since(1, "", "nodes"),
            Err(Error::Gone {
                requested: 1,
                oldest: 2
            })
        ));
        assert!(log.since(2, "", "nodes").unwrap().is_empty());
    }

    #[test]
    fn bookmark_interval_defaults_to_five_seconds() {
        let mut log = WatchLog::new();
        assert_eq!(log.bookmark_interval(), Duration::from_secs(5));
        log.set_bookmark_interval(Duration::from_millis(100));
        assert_eq!(log.bookmark_interval(), Duration::from_millis(100));
    }
}
