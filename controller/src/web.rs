//! The controller's HTTP listeners: `--metrics-listen` (Prometheus metrics
//! at `/metrics`) and `--http-listen` (the dashboard, and the metrics). The figures about the fabric's state are read at scrape
//! time from the node itself ([`Fabric`]); the leader knows the fleet
//! (directors' reports, agents' liveness), a follower reports its Raft
//! view and the replicated VIP owners.

use std::sync::{Arc, Weak};

use lb_proto::metrics::{Collector, DescriptorEncoder, Labels, Registry, Scrape, Unit};

use crate::app::App;

/// The registry of a controller node: its event metrics and [`Fabric`].
pub fn registry(app: &Arc<App>) -> Registry {
    let mut registry = lb_proto::metrics::registry();
    app.metrics.register(&mut registry);
    registry.register_collector(Box::new(Fabric(Arc::downgrade(app))));
    registry
}

/// Serves the node's metrics on `listener` until the process ends.
pub fn serve(app: &Arc<App>, listener: tokio::net::TcpListener) {
    let routes = lb_proto::metrics::routes(Arc::new(registry(app)));
    lb_proto::metrics::serve(listener, routes);
}

/// Serves the dashboard ([`crate::dashboard`]) and the metrics on
/// `listener` until the process ends: HTTPS with the controller's
/// certificate when the API is TLS (`tls`), as the API's rules decide.
pub fn serve_dashboard(
    app: &Arc<App>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::ServerCert>>,
) -> Result<(), crate::tls::TlsError> {
    let routes = lb_proto::metrics::routes(Arc::new(registry(app)))
        .merge(crate::dashboard::routes(app.clone()));
    let addr = listener.local_addr().ok();
    match tls {
        Some(cert) => {
            let https = crate::tls::HttpsListener::new(cert, listener)?;
            tracing::info!(dashboard = ?addr, "serving the dashboard at / (HTTPS)");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(https, routes).await {
                    tracing::warn!(error = %e, "the dashboard listener stopped");
                }
            });
        }
        None => {
            tracing::info!(dashboard = ?addr, "serving the dashboard at /");
            lb_proto::metrics::serve(listener, routes);
        }
    }
    Ok(())
}

/// Scrape-time state of one node. Holds the node weakly: the node owns
/// its metrics, not the other way round.
#[derive(Debug)]
struct Fabric(Weak<App>);

fn label(name: &'static str, value: impl ToString) -> Labels {
    vec![(name, value.to_string())]
}

impl Collector for Fabric {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(app) = self.0.upgrade() else {
            return Ok(());
        };
        let mut s = Scrape::new(encoder);
        let raft = app.raft.metrics().borrow().clone();
        let role = raft.state;
        s.gauges(
            "raft_role",
            "1 for this node's Raft role (leader, follower, candidate, learner), 0 for the others",
            None,
            [
                ("leader", openraft::ServerState::Leader),
                ("follower", openraft::ServerState::Follower),
                ("candidate", openraft::ServerState::Candidate),
                ("learner", openraft::ServerState::Learner),
            ]
            .map(|(name, state)| (label("role", name), i64::from(role == state))),
        )?;
        s.gauge(
            "raft_term",
            "The current Raft term",
            None,
            raft.current_term,
        )?;
        s.gauge(
            "raft_leader_id",
            "The node id of the leader this node knows (0: none)",
            None,
            raft.current_leader.unwrap_or(0),
        )?;
        s.gauge(
            "raft_last_log_index",
            "Index of the last entry in this node's Raft log",
            None,
            raft.last_log_index.unwrap_or(0),
        )?;
        s.gauge(
            "raft_applied_index",
            "Index of the last entry applied to this node's state",
            None,
            raft.last_applied.map_or(0, |l| l.index),
        )?;
        s.gauge(
            "raft_snapshot_index",
            "Last log index the current snapshot covers",
            None,
            raft.snapshot.map_or(0, |l| l.index),
        )?;
        if let Some(built) = app.state.last_snapshot() {
            s.gauge(
                "snapshot_size",
                "Size of the last snapshot this node built",
                Some(Unit::Bytes),
                built.bytes as u64,
            )?;
            s.gauge(
                "snapshot_build_duration",
                "Time the last snapshot build took",
                Some(Unit::Seconds),
                built.took.as_secs_f64(),
            )?;
        }

        let leading = role == openraft::ServerState::Leader;
        let vips = app.fleet.vips_status(&app.state);
        s.gauges(
            "vip_owner",
            "1 for each VIP's owner (director label; empty while nobody owns it)",
            None,
            vips.iter().map(|v| {
                let labels = vec![("vip", v.vip.clone()), ("director", v.owner.clone())];
                (labels, 1i64)
            }),
        )?;
        s.gauges(
            "vip_epoch",
            "Each VIP's ownership epoch (grows with every move)",
            None,
            vips.iter().map(|v| (label("vip", &v.vip), v.epoch)),
        )?;
        if leading {
            // Only the leader hears the directors' reports.
            s.gauges(
                "vip_held",
                "1 when the VIP's owner reports holding it under its current epoch",
                None,
                vips.iter()
                    .map(|v| (label("vip", &v.vip), i64::from(v.held))),
            )?;
            let (directors, agents) = {
                let fleet = app.fleet.lock();
                let directors = fleet
                    .directors
                    .values()
                    .filter(|d| d.live(app.leases))
                    .count();
                let agents = fleet
                    .agents
                    .values()
                    .filter(|seen| seen.elapsed() <= app.agent_grace)
                    .count();
                (directors, agents)
            };
            s.gauge(
                "directors_live",
                "Directors whose lease-keeping reports reach the leader",
                None,
                directors as u64,
            )?;
            s.gauge(
                "realserver_agents_live",
                "Realserver agents heard from within the grace period",
                None,
                agents as u64,
            )?;
        }
        Ok(())
    }
}
