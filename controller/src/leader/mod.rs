//! What only the leader does, each as a [`Task`] run by one runner:
//! [`placement`] elects each VIP's director (the grants that let a director
//! hold one come from every controller, see [`crate::grants`]),
//! [`lost_agents`] drains the backends of realserver agents gone silent.
//!
//! The runner runs each task's round a period after the last one ended; on a follower it tells the
//! task it is not leading (so it drops its soft state), and on the leader it
//! hands the task the instant this leadership began, since a new leader
//! knows nobody's liveness yet and must wait before it judges.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;

pub mod lost_agents;
pub mod placement;

/// One leader-only loop.
pub trait Task: Send + 'static {
    /// How often [`Task::round`] runs.
    fn period(&self) -> Duration;
    /// One round on the leader; `since` is when this leadership began.
    fn round(&mut self, app: &App, since: Instant) -> impl Future<Output = ()> + Send;
    /// A round on a node that is not (or no longer) the leader.
    fn not_leading(&mut self, _app: &App) {}
}

/// Runs `task` until `shutdown` turns true.
pub async fn run(app: Arc<App>, mut task: impl Task, mut shutdown: watch::Receiver<bool>) {
    let mut since: Option<Instant> = None;
    // A full period between rounds, however long a round took: under a
    // slow CPU, back-to-back quorum rounds would starve everything else.
    let period = task.period();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|d| *d) => return,
        }
        if app.require_leader().is_err() {
            since = None;
            task.not_leading(&app);
            continue;
        }
        let since = *since.get_or_insert_with(Instant::now);
        task.round(&app, since).await;
    }
}

/// Starts every leader task.
pub fn spawn(app: &Arc<App>, shutdown: &watch::Sender<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run(
            app.clone(),
            placement::Placement::new(app.leases),
            shutdown.subscribe(),
        )),
        tokio::spawn(run(
            app.clone(),
            lost_agents::LostAgents::new(app.agent_grace),
            shutdown.subscribe(),
        )),
    ]
}
