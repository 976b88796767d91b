//! Keeps [`App::may_grant_leases`] current: on the leader, a quorum round
//! (`ensure_linearizable`) every period; the start of a round that
//! succeeds is when leadership was last known to hold.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::timing::LeaseTiming;

pub struct Confirm {
    timing: LeaseTiming,
}

impl Confirm {
    pub fn new(timing: LeaseTiming) -> Self {
        Confirm { timing }
    }
}

impl super::Task for Confirm {
    /// A confirmation stays good for `margin`; renewing it every fifth of
    /// that leaves room for slow rounds before the leader must withhold acks.
    fn period(&self) -> Duration {
        self.timing.round()
    }

    async fn round(&mut self, app: &App, _since: Instant) {
        let started = Instant::now();
        let round = tokio::time::timeout(self.timing.margin, app.raft.ensure_linearizable()).await;
        let mut c = app
            .leadership_confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(round, Ok(Ok(_))) {
            *c = Some(started);
        } else if app.require_leader().is_err() {
            *c = None;
        }
        // Otherwise a slow round: the previous confirmation ages out by itself.
    }

    fn not_leading(&mut self, app: &App) {
        *app.leadership_confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}
