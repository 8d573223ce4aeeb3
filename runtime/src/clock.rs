//! Where time comes from. Code that needs "now" is handed a [`Clock`] (or, when pure, a `now`
//! argument), so tests drive time with [`ManualClock`] (a window that opens "in two minutes"
//! opens when the test says so) while everything else stays real.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// A boxed sleep.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of "now", and sleeps measured against it.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// A future that completes once `now() >= at`.
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// The system's wall clock, with tokio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let wait = at.duration_since(Timestamp::now());
        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
        // A few milliseconds late rather than early: the instant must have passed when we wake.
        Box::pin(tokio::time::sleep(
            wait + std::time::Duration::from_millis(5),
        ))
    }
}

/// A clock that moves only when told to (tests, benchmarks). Clones share one time.
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

    /// Sets the time to `at`, forward or back (a wall clock can jump either way).
    pub fn set(&self, at: Timestamp) {
        self.now.send_replace(at);
    }

    /// Moves the time by `by` (back, with a negative duration); saturates at the ends of time.
    pub fn advance(&self, by: SignedDuration) {
        self.now
            .send_modify(|t| *t = t.saturating_add(by).unwrap_or(*t));
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
    use std::time::Duration;

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[tokio::test]
    async fn a_manual_sleep_wakes_only_when_the_clock_reaches_its_instant() {
        let clock = ManualClock::new(t0());
        let sleeper = tokio::spawn(clock.sleep_until(t0() + SignedDuration::from_mins(2)));
        clock.advance(SignedDuration::from_mins(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        // A jump back does not wake it either.
        clock.set(t0() - SignedDuration::from_hours(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        assert_eq!(clock.now(), t0() - SignedDuration::from_hours(1));
        clock.set(t0() + SignedDuration::from_mins(2));
        tokio::time::timeout(Duration::from_secs(1), sleeper)
            .await
            .expect("woke")
            .unwrap();
    }

    #[tokio::test]
    async fn clones_share_one_time_and_the_system_clock_sleeps_past_its_instant() {
        let a = ManualClock::new(t0());
        let b = a.clone();
        a.advance(SignedDuration::from_secs(-30));
        assert_eq!(b.now(), t0() - SignedDuration::from_secs(30));
        let at = SystemClock.now() + SignedDuration::from_millis(30);
        SystemClock.sleep_until(at).await;
        assert!(SystemClock.now() >= at);
        // An instant in the past is no wait at all (beyond the few milliseconds' margin).
        tokio::time::timeout(Duration::from_secs(1), SystemClock.sleep_until(t0()))
            .await
            .expect("no wait for the past");
    }
}
