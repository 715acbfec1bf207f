//! Logging a repeated event once per episode: the first occurrence is logged,
//! the repeats are counted, and the count is reported when the next episode
//! starts (after a quiet spell), so one flooding peer writes a few lines, not
//! thousands. Every occurrence is still counted on `/metrics` by the caller.

use std::time::{Duration, Instant};

/// The quiet spell that ends an episode.
pub(crate) const QUIET: Duration = Duration::from_secs(60);

/// One kind of event's episodes.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    /// When the event last happened.
    last: Option<Instant>,
    /// Repeats since the line that opened this episode.
    repeats: u64,
}

impl Episode {
    /// The event happened at `now`. `Some(n)`: log it, a new episode has
    /// begun, and the last one had `n` repeats that were not logged. `None`:
    /// a repeat within the episode, counted only.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        let new = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        self.last = Some(now);
        if new {
            Some(std::mem::take(&mut self.repeats))
        } else {
            self.repeats += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_an_episode_is_logged_and_the_repeats_counted() {
        let t0 = Instant::now();
        let mut e = Episode::default();
        assert_eq!(e.hit(t0), Some(0));
        for i in 1..=500 {
            assert_eq!(e.hit(t0 + Duration::from_millis(i)), None);
        }
        // After a quiet spell: a new episode, reporting the last one's repeats.
        let later = t0 + Duration::from_millis(500) + QUIET;
        assert_eq!(e.hit(later), Some(500));
        assert_eq!(e.hit(later), None);
    }
}
