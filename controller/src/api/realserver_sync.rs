//! `lb.v1.RealServerSync`: the realserver agents' stream, served by the leader.
//!
//! An agent's first report registers it (a Raft command, so every
//! controller agrees on the backends and the directors' configuration
//! follows); a later report with another address or other labels
//! re-registers it. The controller answers every heartbeat and sends the
//! services the host is a backend of whenever the configuration changes.
//! Closing the stream deregisters nothing: a restarting agent must not
//! take its backends out of service.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_proto::convert::{check_name, labels, unicast_ip};
use lb_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::app::App;
use crate::state::{Agent, Command};

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
    let services = state
        .services
        .values()
        .filter_map(|s| {
            let all: Vec<_> = state.backends(s).into_iter().map(|(rs, _, _)| rs).collect();
            all.iter().any(|r| r.address == agent.address).then(|| {
                let mut s = s.clone();
                s.realservers = all;
                pb::Service::from(&s)
            })
        })
        .collect();
    (state.revision, services, drained)
}

/// The live directors' own addresses, sorted.
fn director_addresses(app: &App) -> Vec<String> {
    let directors = app
        .directors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out: Vec<String> = directors
        .values()
        .filter(|d| d.live(app.leases))
        .flat_map(|d| d.addresses.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn seen(app: &App, node: &str) {
    app.agents_seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(node.to_string(), Instant::now());
}

/// The leader's watch over silent agents: one not heard from for the grace
/// period (its host down, or cut off) has its backends drained — not
/// removed — until it reports again. A new leader gives every agent the
/// grace period to find it before judging.
pub async fn drain_lost_agents(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut leader_since: Option<Instant> = None;
    let period = (app.agent_grace / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|d| *d) => return,
        }
        if app.require_leader().is_err() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let silent: Vec<String> = {
            let seen = app
                .agents_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let data = app.state.read();
            data.state
                .agents
                .values()
                .filter(|a| !a.lost)
                .filter(|a| {
                    let last = seen.get(&a.node_id).copied().unwrap_or(since).max(since);
                    last.elapsed() > app.agent_grace
                })
                .map(|a| a.node_id.clone())
                .collect()
        };
        for node_id in silent {
            tracing::warn!(realserver = %node_id, grace_ms = app.agent_grace.as_millis() as u64, "realserver agent silent: draining its backends");
            if let Err(e) = app.write(Command::SetAgentLost { node_id }).await {
                tracing::warn!(error = %e, "marking an agent lost");
            }
        }
    }
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<pb::RealServerDesired, Status>> + Send>>;

#[tonic::async_trait]
impl pb::real_server_sync_server::RealServerSync for RealServerSync {
    type SyncStream = DesiredStream;

    #[tracing::instrument(skip_all, err)]
    async fn sync(
        &self,
        req: Request<Streaming<pb::RealServerReport>>,
    ) -> Result<Response<DesiredStream>, Status> {
        self.app.require_leader().map_err(status)?;
        let caller = super::authz::caller(&req);
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("node_id: the stream ended before the first report")
        })?;
        let mut registered = agent(&first)?;
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
        seen(&self.app, &first.node_id);
        self.app
            .write(Command::RegisterRealServer {
                agent: registered.clone(),
            })
            .await
            .map_err(status)?;
        let node = registered.node_id.clone();
        tracing::info!(realserver = %node, address = %registered.address, "realserver agent registered");

        let app = self.app.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut changed = app.state.subscribe();
            let mut shutdown = app.shutdown.clone();
            let mut budget = super::budget::WriteBudget::new(std::time::Instant::now());
            let mut ack = first.heartbeat;
            let mut sent: Option<(Vec<pb::Service>, Vec<String>, bool)> = None;
            loop {
                // Revoked, or expired since the stream began.
                if super::authz::end_if_cut_off(&app, caller.as_ref(), &tx).await {
                    break;
                }
                // Heartbeat answers carry the configuration only when it changed.
                let (revision, services, drained) = services(&app, &registered);
                let now = (services, director_addresses(&app), drained);
                let config = (sent.as_ref() != Some(&now)).then(|| pb::RealServerConfig {
                    services: now.0.clone(),
                    director_addresses: now.1.clone(),
                    drained,
                });
                let msg = pb::RealServerDesired {
                    revision,
                    config,
                    heartbeat_ack: ack,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                sent = Some(now);
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(report)) if report.node_id == node => {
                            ack = report.heartbeat;
                            seen(&app, &node);
                            let now = match agent(&report) {
                                Ok(a) => a,
                                Err(e) => { let _ = tx.send(Err(e)).await; break; }
                            };
                            if caller.as_ref().is_some_and(|c| !c.ips.contains(&now.address)) {
                                let msg = format!("address: {} is not in this agent's certificate", now.address);
                                let _ = tx.send(Err(Status::permission_denied(msg))).await;
                                break;
                            }
                            // A change waits for the budget; the next report
                            // (a heartbeat later) carries it again.
                            if now != registered && budget.take(std::time::Instant::now()) {
                                if let Err(e) = app.write(Command::RegisterRealServer { agent: now.clone() }).await {
                                    let _ = tx.send(Err(status(e))).await;
                                    break;
                                }
                                registered = now;
                            }
                        }
                        Ok(Some(report)) => {
                            let msg = format!("node_id: this stream belongs to {node}, not {}", report.node_id);
                            let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    },
                    r = changed.changed() => if r.is_err() { break },
                    // Drop the non-Send watch::Ref before any arm awaits.
                    _ = async { let _ = shutdown.wait_for(|down| *down).await; } => break,
                }
            }
            tracing::info!(realserver = %node, "realserver agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
