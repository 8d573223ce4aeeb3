//! The one place the operator reads the wall clock. Everything else gets `now` from a `Clock`,
//! so tests drive time with `ManualClock` (a window that opens "in two minutes" opens when the
//! test says so) while the operator still talks real HTTP to a real API server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;

/// A boxed sleep.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where time comes from.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// A future that completes once `now() >= at`.
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// The system clock, with tokio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let wait = at.duration_since(Timestamp::now());
        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
        // A few milliseconds late rather than early: the edge must have passed when we wake.
        Box::pin(tokio::time::sleep(
            wait + std::time::Duration::from_millis(5),
        ))
    }
}

/// A clock that moves only when told to (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: Timestamp) -> Self {
        Self {
            now: Arc::new(watch::channel(at).0),
        }
    }

    /// Moves the clock to `at` (never backwards).
    pub fn set(&self, at: Timestamp) {
        self.now.send_if_modified(|now| {
            let moved = at > *now;
            if moved {
                *now = at;
            }
            moved
        });
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: jiff::SignedDuration) {
        let at = *self.now.borrow() + by;
        self.set(at);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= at {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    #[tokio::test]
    async fn a_manual_sleep_wakes_only_when_the_clock_passes_its_instant() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(t0);
        let sleeper = tokio::spawn(clock.sleep_until(t0 + SignedDuration::from_mins(2)));
        clock.advance(SignedDuration::from_mins(1));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        clock.advance(SignedDuration::from_mins(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), sleeper)
            .await
            .expect("woke")
            .unwrap();
        clock.set(t0);
        assert_eq!(
            clock.now(),
            t0 + SignedDuration::from_mins(2),
            "never backwards"
        );
    }
}
