//! The leader's watch over silent realserver agents: one not heard from for
//! the grace period (its host down, or cut off) has its backends drained —
//! not removed — until it reports again. A new leader gives every agent the
//! grace period to find it before judging.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::state::Command;

pub struct LostAgents {
    grace: Duration,
}

impl LostAgents {
    pub fn new(grace: Duration) -> Self {
        LostAgents { grace }
    }
}

impl super::Task for LostAgents {
    fn period(&self) -> Duration {
        (self.grace / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    async fn round(&mut self, app: &App, since: Instant) {
        let silent: Vec<String> = {
            let fleet = app.fleet.lock();
            let data = app.state.read();
            data.state
                .agents
                .values()
                .filter(|a| !a.lost)
                .filter(|a| {
                    let last = fleet
                        .agents
                        .get(&a.node_id)
                        .copied()
                        .unwrap_or(since)
                        .max(since);
                    last.elapsed() > self.grace
                })
                .map(|a| a.node_id.clone())
                .collect()
        };
        for node_id in silent {
            tracing::warn!(realserver = %node_id, grace_ms = self.grace.as_millis() as u64, "realserver agent silent: draining its backends");
            if let Err(e) = app.write(Command::SetAgentLost { node_id }).await {
                tracing::warn!(error = %e, "marking an agent lost");
            }
        }
    }
}
