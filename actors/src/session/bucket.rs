//! The per-user rate limiter.

use std::time::Instant;

/// A token bucket: `rate` tokens/s up to `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }

    /// Take `n` tokens at `now`; the balance may go negative (debt), and the
    /// result says whether the frame was within the limit.
    pub(crate) fn take_at(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n;
        self.tokens >= 0.0
    }

    /// Take `n` tokens at `now` only if there are that many: a refusal costs
    /// nothing (for limits shared by many senders, where one sender's excess
    /// must not become everyone's debt).
    pub(crate) fn try_take_at(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether the debt is so deep the sender is flooding (a full burst owed).
    pub(crate) fn flooding(&self) -> bool {
        self.tokens < -self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 200.0);
        for _ in 0..200 {
            assert!(b.take_at(1.0, t0));
        }
        assert!(!b.take_at(1.0, t0), "burst spent");
        // 100 ms later: 5 tokens back, one debt repaid.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take_at(1.0, t1));
        assert!(!b.flooding());
        for _ in 0..250 {
            b.take_at(1.0, t1);
        }
        assert!(b.flooding(), "a full burst of debt is a flood");
    }
}
