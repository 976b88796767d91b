//! Lease timing, in one place: how long a director's lease lasts, the margin
//! before the leader gives a silent director's VIPs away, the preemption
//! hold-down, and the period of the leader's rounds derived from them.

use std::time::Duration;

/// Lease timing shared by the controller and its directors.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// A director drops a VIP this long after sending the last acknowledged heartbeat.
    pub fence: Duration,
    /// Extra wait before the leader gives a silent director's VIPs away.
    pub margin: Duration,
    /// How long a preferred director must have been live before it takes
    /// its VIP back from another live director.
    pub hold_down: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            fence: Duration::from_millis(200),
            margin: Duration::from_millis(50),
            hold_down: Duration::from_secs(10),
        }
    }
}

impl LeaseTiming {
    /// `fence + margin`: a director silent this long has let its VIPs go,
    /// and a new leader waits this long before it moves any VIP.
    pub fn silence(&self) -> Duration {
        self.fence + self.margin
    }

    /// The lease a grant carries, in the wire's milliseconds.
    pub fn lease_ms(&self) -> u32 {
        u32::try_from(self.fence.as_millis()).unwrap_or(u32::MAX)
    }

    /// A fifth of the margin, between 5 and 50 ms (10 ms at the defaults):
    /// how often the leader looks for VIPs to move.
    pub fn round(&self) -> Duration {
        (self.margin / 5).clamp(Duration::from_millis(5), Duration::from_millis(50))
    }
}
