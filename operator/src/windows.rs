//! Reboot windows: a policy's `windows` (cron schedule + duration + IANA time zone) compiled
//! once and asked, for a given instant, whether a window is open, until when, and when the next
//! one opens. Pure: the instant is passed in. DST is the time-zone database's business: the cron
//! schedule is matched in local wall-clock time through croner and jiff, so `0 2 * * *` in
//! `Europe/Berlin` opens at 02:00 local on both sides of a DST change (and at 03:00 on a
//! spring-forward day, when 02:00 does not exist).

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use slipway_api::crd::RebootWindow;

/// A window definition that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The cron expression does not parse.
    #[error("window {index}: schedule {schedule:?} is not a 5-field cron expression: {reason}")]
    Schedule {
        /// Position in `spec.windows`.
        index: usize,
        /// The expression.
        schedule: String,
        /// croner's complaint.
        reason: String,
    },
    /// The time zone is not in the IANA database.
    #[error("window {index}: time zone {zone:?} is not an IANA time zone name")]
    TimeZone {
        /// Position in `spec.windows`.
        index: usize,
        /// The name.
        zone: String,
    },
    /// A zero duration never opens.
    #[error("window {index}: duration must be longer than 0s")]
    Duration {
        /// Position in `spec.windows`.
        index: usize,
    },
}

/// Whether reboots may start, as of some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// The policy has no windows: reboots may start at any time.
    Always,
    /// A window is open now and stays open until `until` (overlapping windows merged).
    Open {
        /// When the open window (or chain of overlapping windows) closes.
        until: Timestamp,
    },
    /// No window is open; the next opens at `next` (none if no schedule ever fires again).
    Closed {
        /// When the next window opens.
        next: Option<Timestamp>,
    },
}

impl WindowState {
    /// Whether reboots may start now.
    pub fn is_open(&self) -> bool {
        !matches!(self, Self::Closed { .. })
    }

    /// The next instant at which this state changes by itself, if any.
    pub fn next_edge(&self) -> Option<Timestamp> {
        match *self {
            Self::Always => None,
            Self::Open { until } => Some(until),
            Self::Closed { next } => next,
        }
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    cron: Cron,
    duration: SignedDuration,
    zone: TimeZone,
}

/// A policy's compiled windows.
#[derive(Debug, Clone)]
pub struct Windows {
    windows: Vec<Compiled>,
}

/// How many window occurrences are chained when merging overlapping windows, so that a
/// schedule like `* * * * *` with a 2-minute duration (always open) still answers quickly.
const MAX_CHAIN: usize = 512;

impl Windows {
    /// Compiles a policy's windows; the first invalid one is reported.
    pub fn compile(windows: &[RebootWindow]) -> Result<Self, WindowError> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let mut out = Vec::with_capacity(windows.len());
        for (index, w) in windows.iter().enumerate() {
            let cron = parser
                .parse(w.schedule.trim())
                .map_err(|e| WindowError::Schedule {
                    index,
                    schedule: w.schedule.clone(),
                    reason: e.to_string(),
                })?;
            let zone = TimeZone::get(&w.time_zone).map_err(|_| WindowError::TimeZone {
                index,
                zone: w.time_zone.clone(),
            })?;
            let secs = w.duration.get().as_secs();
            if secs == 0 {
                return Err(WindowError::Duration { index });
            }
            let duration = SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX));
            out.push(Compiled {
                cron,
                duration,
                zone,
            });
        }
        Ok(Self { windows: out })
    }

    /// Whether a window is open at `now`, until when, or when the next opens.
    pub fn state_at(&self, now: Timestamp) -> WindowState {
        if self.windows.is_empty() {
            return WindowState::Always;
        }
        // The latest end among windows open now, then extended by any window that starts
        // before that end (overlapping or touching windows are one open period).
        let mut until: Option<Timestamp> = None;
        for w in &self.windows {
            if let Some(end) = w.open_until(now) {
                until = Some(until.map_or(end, |u| u.max(end)));
            }
        }
        let Some(mut until) = until else {
            let next = self.windows.iter().filter_map(|w| w.next_start(now)).min();
            return WindowState::Closed { next };
        };
        for _ in 0..MAX_CHAIN {
            let extended = self
                .windows
                .iter()
                .filter_map(|w| w.open_until(until))
                .max()
                .filter(|end| *end > until);
            match extended {
                Some(end) => until = end,
                None => break,
            }
        }
        WindowState::Open { until }
    }
}

impl Compiled {
    /// If this window is open at `t`, when its latest occurrence covering `t` ends.
    fn open_until(&self, t: Timestamp) -> Option<Timestamp> {
        let local = t.to_zoned(self.zone.clone());
        let start: Zoned = self.cron.find_previous_occurrence(&local, true).ok()?;
        let end = start.timestamp().checked_add(self.duration).ok()?;
        (end > t).then_some(end)
    }

    /// The first start strictly after `t`.
    fn next_start(&self, t: Timestamp) -> Option<Timestamp> {
        let local = t.to_zoned(self.zone.clone());
        let next: Zoned = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(schedule: &str, duration: &str, zone: &str) -> RebootWindow {
        RebootWindow {
            schedule: schedule.into(),
            duration: duration.parse().unwrap(),
            time_zone: zone.into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn no_windows_means_always() {
        let w = Windows::compile(&[]).unwrap();
        assert_eq!(w.state_at(ts("2026-01-01T00:00:00Z")), WindowState::Always);
    }

    #[test]
    fn a_nightly_window_opens_and_closes_at_the_right_instants() {
        let w = Windows::compile(&[window("0 2 * * *", "3h", "UTC")]).unwrap();
        for (now, want) in [
            (
                "2026-03-01T01:59:59Z",
                WindowState::Closed {
                    next: Some(ts("2026-03-01T02:00:00Z")),
                },
            ),
            (
                "2026-03-01T02:00:00Z",
                WindowState::Open {
                    until: ts("2026-03-01T05:00:00Z"),
                },
            ),
            (
                "2026-03-01T04:59:59Z",
                WindowState::Open {
                    until: ts("2026-03-01T05:00:00Z"),
                },
            ),
            (
                "2026-03-01T05:00:00Z",
                WindowState::Closed {
                    next: Some(ts("2026-03-02T02:00:00Z")),
                },
            ),
        ] {
            assert_eq!(w.state_at(ts(now)), want, "at {now}");
        }
    }

    #[test]
    fn weekday_windows_skip_the_weekend() {
        // 2026-03-06 is a Friday.
        let w = Windows::compile(&[window("0 22 * * 1-5", "2h", "UTC")]).unwrap();
        assert_eq!(
            w.state_at(ts("2026-03-07T12:00:00Z")),
            WindowState::Closed {
                next: Some(ts("2026-03-09T22:00:00Z"))
            }
        );
        // Friday's window runs past midnight into Saturday, then nothing until Monday.
        assert_eq!(
            w.state_at(ts("2026-03-06T23:30:00Z")),
            WindowState::Open {
                until: ts("2026-03-07T00:00:00Z")
            }
        );
        assert_eq!(
            w.state_at(ts("2026-03-07T00:30:00Z")),
            WindowState::Closed {
                next: Some(ts("2026-03-09T22:00:00Z"))
            }
        );
    }

    #[test]
    fn time_zones_and_dst_are_honoured() {
        // Europe/Berlin: CET (+1) until 2026-03-29 02:00, then CEST (+2).
        let w = Windows::compile(&[window("30 1 * * *", "1h", "Europe/Berlin")]).unwrap();
        assert_eq!(
            w.state_at(ts("2026-03-28T00:30:00Z")),
            WindowState::Open {
                until: ts("2026-03-28T01:30:00Z")
            },
            "01:30 CET is 00:30 UTC"
        );
        assert_eq!(
            w.state_at(ts("2026-03-29T23:45:00Z")),
            WindowState::Open {
                until: ts("2026-03-30T00:30:00Z")
            },
            "01:30 CEST is 23:30 UTC the day before"
        );
        // 02:30 does not exist on the spring-forward day: the window opens at 03:00 CEST.
        let w = Windows::compile(&[window("30 2 * * *", "1h", "Europe/Berlin")]).unwrap();
        assert_eq!(
            w.state_at(ts("2026-03-28T23:00:00Z")),
            WindowState::Closed {
                next: Some(ts("2026-03-29T01:00:00Z"))
            }
        );
    }

    #[test]
    fn overlapping_windows_merge_into_one_open_period() {
        let w = Windows::compile(&[
            window("0 1 * * *", "2h", "UTC"),
            window("0 2 * * *", "3h", "UTC"),
        ])
        .unwrap();
        assert_eq!(
            w.state_at(ts("2026-05-01T01:30:00Z")),
            WindowState::Open {
                until: ts("2026-05-01T05:00:00Z")
            }
        );
        let every_minute = Windows::compile(&[window("* * * * *", "2m", "UTC")]).unwrap();
        assert!(every_minute.state_at(ts("2026-05-01T01:30:00Z")).is_open());
    }

    #[test]
    fn bad_definitions_name_what_is_wrong() {
        let e = Windows::compile(&[window("0 2 * *", "1h", "UTC")]).unwrap_err();
        assert!(matches!(e, WindowError::Schedule { index: 0, .. }), "{e}");
        let e = Windows::compile(&[
            window("0 2 * * *", "1h", "UTC"),
            window("0 2 * * *", "1h", "Mars/Olympus"),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            WindowError::TimeZone {
                index: 1,
                zone: "Mars/Olympus".into()
            }
        );
        let e = Windows::compile(&[window("0 2 * * *", "0s", "UTC")]).unwrap_err();
        assert_eq!(e, WindowError::Duration { index: 0 });
        assert!(Windows::compile(&[window("61 2 * * *", "1h", "UTC")]).is_err());
    }
}
