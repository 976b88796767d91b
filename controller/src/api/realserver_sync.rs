//! `lb.v1.RealServerSync`: the realserver agents' stream, served by the leader.
//!
//! An agent's first report registers it (a Raft command, so every
//! controller agrees on the backends and the directors' configuration
//! follows); a later report with another address or other labels
//! re-registers it. The controller answers every heartbeat and sends the
//! services the host is a backend of whenever the configuration changes.
//! Closing the stream deregisters nothing: a restarting agent must not
//! take its backends out of service. The stream skeleton is
//! [`super::stream`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lb_proto::convert::{check_name, labels, unicast_ip};
use lb_proto::pb;
use tonic::{Request, Response, Status, Streaming};

use super::budget::WriteBudget;
use super::stream::{first_report, serve, AgentStream, Outbound};
use crate::app::App;
use crate::error::status;
use crate::state::{Agent, Command};
use crate::tls::Verified;

pub(super) struct RealServerSync {
    app: Arc<App>,
}

impl RealServerSync {
    pub(super) fn new(app: Arc<App>) -> Self {
        RealServerSync { app }
    }
}

/// The agent a report describes, validated; errors name the report's field.
fn agent(report: &pb::RealServerReport) -> Result<Agent, Status> {
    let invalid = |e: lb_proto::FieldError| Status::invalid_argument(e.to_string());
    check_name("node_id", &report.node_id).map_err(invalid)?;
    let address = unicast_ip("address", &report.address).map_err(invalid)?;
    let labels = labels(
        "labels",
        report
            .labels
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    )
    .map_err(invalid)?;
    let mut unhealthy = std::collections::BTreeSet::new();
    for (i, name) in report.unhealthy.iter().enumerate() {
        check_name(&format!("unhealthy[{i}]"), name).map_err(invalid)?;
        unhealthy.insert(name.clone());
    }
    Ok(Agent {
        node_id: report.node_id.clone(),
        address,
        labels,
        unhealthy,
        draining: report.draining,
        // Kept from the registered agent when the command applies.
        drained: false,
        // It reports: not lost.
        lost: false,
    })
}

/// What `agent` must prepare its host for and check: every service that
/// has its address among its backends — also while its check fails, so the
/// agent keeps checking (and the host stays ready) until it passes again —
/// and whether an operator drained it. Read under one lock.
fn services(app: &App, agent: &Agent) -> (u64, Vec<pb::Service>, bool) {
    let data = app.state.read();
    let state = &data.state;
    let drained = state.agents.get(&agent.node_id).is_some_and(|a| a.drained);
    // Its own services only (the derived view's index), not a walk over
    // every service on each heartbeat.
    let services = data
        .derived
        .hosts
        .get(&agent.address)
        .into_iter()
        .flatten()
        .filter_map(|name| state.services.get(name))
        .map(|s| {
            let mut s = lb_proto::model::Service::clone(s);
            s.realservers = state
                .backends(&s)
                .into_iter()
                .map(|(rs, _, _)| rs)
                .collect();
            pb::Service::from(&s)
        })
        .collect();
    (state.revision, services, drained)
}

/// What was last sent: the services, the live directors' addresses, and
/// whether the host is drained.
type Sent = (Vec<pb::Service>, Vec<String>, bool);

/// One realserver agent's stream.
struct RealServer {
    caller: Option<Verified>,
    registered: Agent,
    /// The heartbeat the next message acknowledges.
    ack: u64,
    sent: Option<Sent>,
}

impl AgentStream for RealServer {
    type Report = pb::RealServerReport;
    type Desired = pb::RealServerDesired;
    const ROLE: &'static str = "realserver";
    const LEADER_ONLY: bool = true;

    fn node_id(report: &pb::RealServerReport) -> &str {
        &report.node_id
    }

    /// Heartbeat answers carry the configuration only when it changed.
    fn desired(&mut self, app: &App) -> Vec<pb::RealServerDesired> {
        let (revision, services, drained) = services(app, &self.registered);
        let now = (services, app.fleet.director_addresses(app.leases), drained);
        let config = (self.sent.as_ref() != Some(&now)).then(|| pb::RealServerConfig {
            services: now.0.clone(),
            director_addresses: now.1.clone(),
            drained,
        });
        self.sent = Some(now);
        vec![pb::RealServerDesired {
            revision,
            config,
            heartbeat_ack: self.ack,
        }]
    }

    async fn report(
        &mut self,
        app: &App,
        report: pb::RealServerReport,
        budget: &mut WriteBudget,
    ) -> Result<(), Status> {
        self.ack = report.heartbeat;
        app.fleet.agent_seen(&report.node_id);
        let now = agent(&report)?;
        if self
            .caller
            .as_ref()
            .is_some_and(|c| !c.ips.contains(&now.address))
        {
            return Err(Status::permission_denied(format!(
                "address: {} is not in this agent's certificate",
                now.address
            )));
        }
        // A change waits for the budget; the next report (a heartbeat
        // later) carries it again.
        if now != self.registered && budget.take(Instant::now()) {
            app.write(Command::RegisterRealServer { agent: now.clone() })
                .await
                .map_err(status)?;
            self.registered = now;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::real_server_sync_server::RealServerSync for RealServerSync {
    type SyncStream = Outbound<pb::RealServerDesired>;

    #[tracing::instrument(skip_all, err)]
    async fn sync(
        &self,
        req: Request<Streaming<pb::RealServerReport>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        self.app.require_leader().map_err(status)?;
        let caller = super::authz::caller(&req);
        let mut inbound = req.into_inner();
        let first = first_report(&mut inbound).await?;
        let registered = agent(&first)?;
        // A realserver agent speaks only for its own node id and address.
        if let Some(c) = &caller {
            if c.identity.name != registered.node_id {
                return Err(Status::permission_denied(format!(
                    "node_id: {} may not register as realserver {}",
                    c.identity, registered.node_id
                )));
            }
            if !c.ips.contains(&registered.address) {
                return Err(Status::permission_denied(format!(
                    "address: {} may not register address {} (its certificate names {:?})",
                    c.identity, registered.address, c.ips
                )));
            }
        }
        self.app.fleet.agent_seen(&first.node_id);
        self.app
            .write(Command::RegisterRealServer {
                agent: registered.clone(),
            })
            .await
            .map_err(status)?;
        let node = registered.node_id.clone();
        tracing::info!(realserver = %node, address = %registered.address, "realserver agent registered");
        let agent = RealServer {
            caller: caller.clone(),
            registered,
            ack: first.heartbeat,
            sent: None,
        };
        Ok(Response::new(serve(
            self.app.clone(),
            caller,
            node,
            inbound,
            agent,
        )))
    }
}
