//! Server-wide limits on the requests that cost the server most and that any
//! connection can make: registrations (they grow the database for good) and
//! login challenges (each hands out a key store). Per connection, the frame
//! rate already applies; these bound the sum over every connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TokenBucket;

/// The server-wide admission limits, shared by every session.
#[derive(Debug)]
pub(crate) struct Admission {
    /// When recent registrations were accepted (the last hour's).
    registrations: Mutex<VecDeque<Instant>>,
    per_hour: usize,
    /// Login challenges handed out.
    logins: Mutex<TokenBucket>,
}

/// The window registrations are counted over.
const HOUR: Duration = Duration::from_secs(3600);

impl Admission {
    /// At most `per_hour` registrations in any hour, and `logins_per_minute`
    /// login challenges a minute (in bursts of up to a tenth of that).
    pub fn new(per_hour: usize, logins_per_minute: f64) -> Self {
        let per_minute = logins_per_minute.max(1.0);
        Admission {
            registrations: Mutex::new(VecDeque::new()),
            per_hour,
            logins: Mutex::new(TokenBucket::new(
                per_minute / 60.0,
                (per_minute / 10.0).max(1.0),
            )),
        }
    }

    /// Take a registration slot at `now`; false when the hour's are used up.
    pub fn register(&self, now: Instant) -> bool {
        let Ok(mut recent) = self.registrations.lock() else {
            return false;
        };
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            recent.pop_front();
        }
        if recent.len() >= self.per_hour {
            return false;
        }
        recent.push_back(now);
        true
    }

    /// Give a registration slot back (the registration failed).
    pub(crate) fn unregister(&self) {
        if let Ok(mut recent) = self.registrations.lock() {
            recent.pop_back();
        }
    }

    /// Take a login slot at `now`; false when over the rate.
    pub fn login(&self, now: Instant) -> bool {
        self.logins
            .lock()
            .is_ok_and(|mut b| b.try_take_at(1.0, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_bounded_per_hour() {
        let a = Admission::new(3, 600.0);
        let t0 = Instant::now();
        assert!(a.register(t0));
        assert!(a.register(t0));
        assert!(a.register(t0));
        assert!(
            !a.register(t0 + Duration::from_secs(3599)),
            "the hour is full"
        );
        a.unregister();
        assert!(a.register(t0), "a failed registration gives its slot back");
        assert!(a.register(t0 + HOUR), "an hour later, room again");
    }

    #[test]
    fn logins_are_bounded_per_minute() {
        let a = Admission::new(10, 60.0);
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| a.login(t0)).count();
        assert_eq!(burst, 6, "a tenth of a minute's worth at once");
        assert!(a.login(t0 + Duration::from_secs(1)), "then one a second");
    }
}
