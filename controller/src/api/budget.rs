//! How many Raft writes one agent's stream may cause.

/// Raft writes one agent's reports may cause: a burst, then a steady rate, so
/// a flapping or misbehaving agent (realserver or director) cannot flood the
/// log. Health changes are never lost, only coalesced: a change over budget
/// is written with a later report, which recomputes it from the state.
#[derive(Debug)]
pub(super) struct WriteBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl WriteBudget {
    const BURST: f64 = 10.0;
    const PER_SECOND: f64 = 5.0;

    pub(super) fn new(now: std::time::Instant) -> Self {
        WriteBudget {
            tokens: Self::BURST,
            at: now,
        }
    }

    pub(super) fn take(&mut self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WriteBudget;
    use std::time::{Duration, Instant};

    #[test]
    fn the_budget_allows_a_burst_then_a_rate() {
        let t0 = Instant::now();
        let mut b = WriteBudget::new(t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 10);
        // One second later: five more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take(t1)).count(), 5);
    }
}
