//! How long the daemon keeps looking for work before it sleeps.
//!
//! A request that finds the daemon asleep waits for its wake-up first: on a
//! VM whose idle vCPUs halt, tens of microseconds, more than the request
//! costs. A client whose requests follow one another (a toolstack's
//! transaction: start, write, commit) pays it on every one. So after work
//! for dom0 (the socket's clients) the daemon polls without sleeping for a
//! while (its *window*), and the window adapts to what it catches, as
//! Linux's `cpuidle-haltpoll` governor adapts its poll time. Between two
//! turns with dom0 work (an *idle spell* of dom0's):
//!
//! * a spell that ended within the window changes nothing;
//! * one that ended after the window but within `max` grows the window
//!   (doubled, from [`GROW_START`]);
//! * one longer than `max` halves the window, to nothing below
//!   [`GROW_START`].
//!
//! Guests' requests are served as they come but neither start, extend nor
//! grow a window: no guest makes dom0's xenstored spin. (A guest can still
//! make dom0's own clients busy, by writing what they watch; their
//! requests are dom0's.) An idle daemon sleeps, and one serving a steady
//! stream from dom0 spends at most `max` between two requests looking for
//! the next one. `max` zero turns the polling off.

use std::time::Duration;

/// The first window, and the smallest.
pub const GROW_START: Duration = Duration::from_micros(25);

/// The default `max`.
pub const DEFAULT_MAX: Duration = Duration::from_micros(200);

/// The largest `max` taken: while it polls, the daemon does not look at
/// watch events' expiry.
pub const LIMIT: Duration = Duration::from_millis(10);

/// The window and its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    max: Duration,
    window: Duration,
}

impl BusyPoll {
    /// Polling of at most `max` after work, starting with none.
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll {
            max,
            window: Duration::ZERO,
        }
    }

    /// How long to look for work after the last of it before sleeping.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// An idle spell of dom0's of `idle` has ended.
    pub fn idle_ended(&mut self, idle: Duration) {
        if idle > self.max {
            self.window /= 2;
            if self.window < GROW_START {
                self.window = Duration::ZERO;
            }
        } else if idle > self.window {
            self.window = (self.window * 2).max(GROW_START).min(self.max);
        }
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll::new(DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_window_grows_to_what_dom0_needs_and_no_further() {
        let mut p = BusyPoll::new(200 * US);
        assert_eq!(p.window(), Duration::ZERO);
        p.idle_ended(60 * US);
        assert_eq!(p.window(), 25 * US);
        p.idle_ended(60 * US);
        assert_eq!(p.window(), 50 * US);
        p.idle_ended(60 * US);
        assert_eq!(p.window(), 100 * US);
        // Caught within the window: unchanged.
        p.idle_ended(60 * US);
        assert_eq!(p.window(), 100 * US);
        for _ in 0..5 {
            p.idle_ended(190 * US);
        }
        assert_eq!(p.window(), 200 * US);
    }

    #[test]
    fn long_sleeps_shrink_it_to_nothing() {
        let mut p = BusyPoll::new(200 * US);
        for _ in 0..4 {
            p.idle_ended(150 * US);
        }
        assert_eq!(p.window(), 200 * US);
        p.idle_ended(Duration::from_millis(5));
        assert_eq!(p.window(), 100 * US);
        p.idle_ended(Duration::from_millis(5));
        p.idle_ended(Duration::from_millis(5));
        assert_eq!(p.window(), 25 * US);
        p.idle_ended(Duration::from_millis(5));
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn max_zero_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        p.idle_ended(Duration::ZERO);
        p.idle_ended(10 * US);
        assert_eq!(p.window(), Duration::ZERO);
    }
}
