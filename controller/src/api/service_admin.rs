//! `lb.v1.ServiceAdmin`: validated writes through Raft, linearizable reads,
//! and the ordered event stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use lb_proto::convert::{check_name, realserver, realserver_key};
use lb_proto::model::{AdminState, RealServerPatch, Service};
use lb_proto::{pb, FieldError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::paging::Page;
use crate::app::App;
use crate::error::status;
use crate::state::{Applied, Command, Event, EventKind, Health};

pub(super) struct ServiceAdmin {
    app: Arc<App>,
}

impl ServiceAdmin {
    pub(super) fn new(app: Arc<App>) -> Self {
        ServiceAdmin { app }
    }

    async fn write(&self, cmd: Command) -> Result<Response<pb::ServiceResponse>, Status> {
        let Applied { revision, service } = self.app.write(cmd).await.map_err(status)?;
        Ok(Response::new(pb::ServiceResponse {
            service: service.as_ref().map(pb::Service::from),
            revision,
        }))
    }
}

fn service_spec(s: Option<pb::Service>) -> Result<Service, Status> {
    let s = s
        .ok_or_else(|| FieldError::new("service", "is required"))
        .map_err(|e| status(e.into()))?;
    Service::try_from(s).map_err(|e| status(e.into()))
}

fn name_field(field: &str, name: &str) -> Result<(), Status> {
    check_name(field, name).map_err(|e| status(e.into()))
}

pub(super) fn event(e: &Event) -> pb::Event {
    let kind = match e.kind {
        EventKind::ServiceCreated => pb::EventKind::ServiceCreated,
        EventKind::ServiceUpdated => pb::EventKind::ServiceUpdated,
        EventKind::ServiceDeleted => pb::EventKind::ServiceDeleted,
        EventKind::RealServerAdded => pb::EventKind::RealserverAdded,
        EventKind::RealServerUpdated => pb::EventKind::RealserverUpdated,
        EventKind::RealServerRemoved => pb::EventKind::RealserverRemoved,
    };
    pb::Event {
        revision: e.revision,
        kind: kind.into(),
        service_name: e.service.name.clone(),
        service: Some(pb::Service::from(&*e.service)),
        realserver: e.realserver.as_ref().map(pb::RealServer::from),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::service_admin_server::ServiceAdmin for ServiceAdmin {
    #[tracing::instrument(skip_all, err)]
    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let service = service_spec(req.into_inner().service)?;
        self.write(Command::CreateService { service }).await
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = req.into_inner();
        name_field("name", &req.name)?;
        self.app.read_barrier(req.stale).await.map_err(status)?;
        let data = self.app.state.read();
        let service = data
            .state
            .services
            .get(&req.name)
            .ok_or_else(|| Status::not_found(format!("service {} not found", req.name)))?;
        Ok(Response::new(pb::ServiceResponse {
            service: Some(pb::Service::from(&**service)),
            revision: data.state.revision,
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token).map_err(|e| status(e.into()))?;
        self.app.read_barrier(req.stale).await.map_err(status)?;
        let data = self.app.state.read();
        let (services, next_page_token) = page.of_services(&data.state.services, |_| true);
        Ok(Response::new(pb::ListServicesResponse {
            services: services.into_iter().map(pb::Service::from).collect(),
            revision: data.state.revision,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err)]
    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = req.into_inner();
        let service = service_spec(req.service)?;
        self.write(Command::UpdateService {
            service,
            expected_mod_revision: req.expected_mod_revision,
        })
        .await
    }

    #[tracing::instrument(skip_all, err)]
    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let name = req.into_inner().name;
        name_field("name", &name)?;
        let applied = self
            .app
            .write(Command::DeleteService { name })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteServiceResponse {
            revision: applied.revision,
        }))
    }

    #[tracing::instrument(skip_all, err)]
    async fn apply_services(
        &self,
        req: Request<pb::ApplyServicesRequest>,
    ) -> Result<Response<pb::ApplyServicesResponse>, Status> {
        let req = req.into_inner();
        let mut names = std::collections::BTreeSet::new();
        let mut services = Vec::with_capacity(req.services.len());
        for (i, s) in req.services.into_iter().enumerate() {
            let service = Service::try_from(s).map_err(|e| {
                status(FieldError::new(lb_proto::convert::batch_field(i, &e.field), e.rule).into())
            })?;
            if !names.insert(service.name.clone()) {
                let e = FieldError::new(
                    format!("services[{i}].name"),
                    format!("{:?} appears more than once", service.name),
                );
                return Err(status(e.into()));
            }
            services.push(service);
        }
        if services.is_empty() {
            return Err(status(
                FieldError::new("services", "is empty: give at least one service").into(),
            ));
        }
        let order: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        let applied = self
            .app
            .write(Command::ApplyServices {
                services,
                replace: req.replace,
            })
            .await
            .map_err(status)?;
        let data = self.app.state.read();
        Ok(Response::new(pb::ApplyServicesResponse {
            revision: applied.revision,
            services: order
                .iter()
                .filter_map(|n| data.state.services.get(n))
                .map(|s| pb::Service::from(&**s))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, err)]
    async fn add_real_server(
        &self,
        req: Request<pb::AddRealServerRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = req.into_inner();
        name_field("service", &req.service)?;
        let rs = req
            .realserver
            .ok_or_else(|| FieldError::new("realserver", "is required"))
            .and_then(|rs| realserver("realserver", rs))
            .map_err(|e| status(e.into()))?;
        self.write(Command::AddRealServer {
            service: req.service,
            realserver: rs,
        })
        .await
    }

    #[tracing::instrument(skip_all, err)]
    async fn update_real_server(
        &self,
        req: Request<pb::UpdateRealServerRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = req.into_inner();
        name_field("service", &req.service)?;
        let (address, port) =
            realserver_key(&req.address, req.port).map_err(|e| status(e.into()))?;
        let patch = RealServerPatch::try_from(&req).map_err(|e| status(e.into()))?;
        self.write(Command::UpdateRealServer {
            service: req.service,
            address,
            port,
            patch,
        })
        .await
    }

    #[tracing::instrument(skip_all, err)]
    async fn remove_real_server(
        &self,
        req: Request<pb::RemoveRealServerRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        let req = req.into_inner();
        name_field("service", &req.service)?;
        let (address, port) =
            realserver_key(&req.address, req.port).map_err(|e| status(e.into()))?;
        self.write(Command::RemoveRealServer {
            service: req.service,
            address,
            port,
        })
        .await
    }

    async fn set_agent_drain(
        &self,
        req: Request<pb::SetAgentDrainRequest>,
    ) -> Result<Response<pb::SetAgentDrainResponse>, Status> {
        let req = req.into_inner();
        name_field("node_id", &req.node_id)?;
        let applied = self
            .app
            .write(Command::SetAgentDrain {
                node_id: req.node_id,
                drain: req.drain,
            })
            .await
            .map_err(status)?;
        let revision = match applied.revision {
            // Already so: nothing changed.
            0 => self.app.state.read().state.revision,
            r => r,
        };
        Ok(Response::new(pb::SetAgentDrainResponse { revision }))
    }

    #[tracing::instrument(skip_all, err)]
    async fn revoke_node(
        &self,
        req: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        let node_id = req.into_inner().node_id;
        name_field("node_id", &node_id)?;
        self.app
            .write(Command::RevokeNode {
                node_id,
                at_ms: lb_proto::pki::unix_ms(std::time::SystemTime::now()),
            })
            .await
            .map_err(status)?;
        let revoked = self
            .app
            .state
            .read()
            .state
            .security
            .revoked
            .keys()
            .cloned()
            .collect();
        Ok(Response::new(pb::RevokeNodeResponse { revoked }))
    }

    async fn list_real_servers(
        &self,
        req: Request<pb::ListRealServersRequest>,
    ) -> Result<Response<pb::ListRealServersResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token).map_err(|e| status(e.into()))?;
        self.app.read_barrier(req.stale).await.map_err(status)?;
        let data = self.app.state.read();
        if !req.service.is_empty() && !data.state.services.contains_key(&req.service) {
            return Err(Status::not_found(format!(
                "service {} not found",
                req.service
            )));
        }
        let state = &data.state;
        let (services, next_page_token) = page.of_services(&state.services, |s| {
            req.service.is_empty() || s.name == req.service
        });
        let realservers = services
            .into_iter()
            .flat_map(|s| {
                state
                    .backends(s)
                    .into_iter()
                    .map(|(rs, agent, health)| pb::RealServerEntry {
                        service: s.name.clone(),
                        realserver: Some((&rs).into()),
                        agent: agent.map(|a| a.node_id.clone()).unwrap_or_default(),
                        health: health.as_str().to_string(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Response::new(pb::ListRealServersResponse {
            realservers,
            revision: data.state.revision,
            next_page_token,
        }))
    }

    async fn list_directors(
        &self,
        _req: Request<pb::ListDirectorsRequest>,
    ) -> Result<Response<pb::ListDirectorsResponse>, Status> {
        self.app.require_leader().map_err(status)?;
        Ok(Response::new(pb::ListDirectorsResponse {
            directors: self
                .app
                .fleet
                .directors_status(&self.app.state, self.app.leases),
            revision: self.app.state.read().state.revision,
            vips: self.app.fleet.vips_status(&self.app.state),
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::FabricStatus>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token).map_err(|e| status(e.into()))?;
        let only_vip = match req.vip.as_str() {
            "" => None,
            v => Some(v.parse::<std::net::IpAddr>().map_err(|_| {
                status(FieldError::new("vip", format!("{v:?} is not an IP address")).into())
            })?),
        };
        self.app.require_leader().map_err(status)?;
        let directors = self
            .app
            .fleet
            .directors_status(&self.app.state, self.app.leases);
        let mut vips = self.app.fleet.vips_status(&self.app.state);
        if let Some(v) = only_vip {
            vips.retain(|s| s.vip.parse().ok() == Some(v));
        }
        // Looked up per service: by VIP, and each director's counters by
        // service name (a scan per service would cost services × VIPs).
        let owners: HashMap<&str, &pb::VipStatus> = vips
            .iter()
            .filter(|v| !v.owner.is_empty())
            .map(|v| (v.vip.as_str(), v))
            .collect();
        let counted: Vec<(&pb::DirectorStatus, HashMap<&str, &pb::ServiceStats>)> = directors
            .iter()
            .map(|d| {
                let by_name = d
                    .stats
                    .iter()
                    .flat_map(|st| &st.services)
                    .map(|ss| (ss.service.as_str(), ss))
                    .collect();
                (d, by_name)
            })
            .collect();
        let data = self.app.state.read();
        let state = &data.state;
        if !req.service.is_empty() && !state.services.contains_key(&req.service) {
            return Err(Status::not_found(format!(
                "service {} not found",
                req.service
            )));
        }
        let (page, next_page_token) = page.of_services(&state.services, |s| {
            (req.service.is_empty() || s.name == req.service)
                && only_vip.is_none_or(|v| s.vip() == Some(v))
        });
        let services =
            page.into_iter()
                .map(|s| {
                    let vip = s.vip().map(|v| v.to_string()).unwrap_or_default();
                    let owner = owners.get(vip.as_str()).copied();
                    // The owner carries the traffic; a standby's synced
                    // connections would count twice. No owner: every director's.
                    let stats: Vec<(&pb::ServiceStats, u64)> = counted
                        .iter()
                        .filter(|(d, _)| owner.is_none_or(|o| o.owner == d.node_id))
                        .filter_map(|(d, by_name)| {
                            Some((*by_name.get(s.name.as_str())?, d.stats_age_ms))
                        })
                        .collect();
                    let sorry = state.sorry_in_use(s);
                    let in_use = sorry.is_some();
                    let backends = state
                        .backends(s)
                        .into_iter()
                        .map(move |(rs, agent, health)| {
                            let withheld = in_use
                                && rs.admin_state == AdminState::Active
                                && health != Health::Down;
                            (rs, agent, health.as_str(), withheld, false)
                        });
                    let realservers =
                        backends
                            .chain(sorry.map(|rs| (rs, None, "sorry", false, true)))
                            .map(|(rs, agent, health, withheld, sorry_server)| {
                                let mut b = pb::BackendStatus {
                                    realserver: Some((&rs).into()),
                                    health: health.to_string(),
                                    agent: agent.map(|a| a.node_id.clone()).unwrap_or_default(),
                                    sorry_server,
                                    withheld,
                                    ..Default::default()
                                };
                                for (ss, _) in &stats {
                                    let addr = rs.address.to_string();
                                    for r in ss.realservers.iter().filter(|r| {
                                        r.address == addr && r.port == u32::from(rs.port)
                                    }) {
                                        b.active_conns += r.active_conns;
                                        b.inactive_conns += r.inactive_conns;
                                        add_counters(&mut b.counters, r.counters.as_ref());
                                    }
                                }
                                b
                            })
                            .collect();
                    let mut counters = None;
                    for (ss, _) in &stats {
                        add_counters(&mut counters, ss.counters.as_ref());
                    }
                    pb::ServiceStatus {
                        service: Some(s.into()),
                        owner: owner.map(|o| o.owner.clone()).unwrap_or_default(),
                        epoch: owner.map_or(0, |o| o.epoch),
                        held: owner.is_some_and(|o| o.held),
                        counters,
                        realservers,
                        stats_age_ms: stats.iter().map(|(_, age)| *age).max().unwrap_or(0),
                        below_quorum: state.below_quorum.contains(&s.name),
                        live_weight: state.live_weight(s),
                    }
                })
                .collect();
        Ok(Response::new(pb::FabricStatus {
            revision: state.revision,
            services,
            directors: u32::try_from(directors.len()).unwrap_or(u32::MAX),
            directors_live: u32::try_from(directors.iter().filter(|d| d.live).count())
                .unwrap_or(u32::MAX),
            vips,
            live_directors: directors
                .iter()
                .filter(|d| d.live)
                .map(|d| d.node_id.clone())
                .collect(),
            director_errors: directors
                .iter()
                .flat_map(|d| {
                    d.errors.iter().map(|e| pb::DirectorError {
                        director: d.node_id.clone(),
                        error: e.clone(),
                    })
                })
                .collect(),
            next_page_token,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Revoked or expired while watching: the stream ends (checked
        // whenever the state changes, which a revocation does).
        let caller = super::authz::caller(&req);
        let app = self.app.clone();
        let from = req.into_inner().from_revision;
        let shared = self.app.state.clone();
        // Subscribe before reading so no change slips between the read and the wait.
        let mut changed = shared.subscribe();
        let mut shutdown = self.app.shutdown.clone();
        let mut next = if from == 0 {
            shared.read().state.revision + 1
        } else {
            from
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                if super::authz::end_if_cut_off(&app, caller.as_ref(), &tx).await {
                    return;
                }
                let batch = shared.read().state.events_since(next);
                match batch {
                    Err(c) => {
                        let msg = format!(
                            "from_revision: revision {next} is no longer kept (oldest is {}); list again and watch from the list's revision + 1",
                            c.oldest
                        );
                        let _ = tx.send(Err(Status::out_of_range(msg))).await;
                        return;
                    }
                    Ok(events) => {
                        for e in &events {
                            next = e.revision + 1;
                            if tx.send(Ok(event(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = shutdown.wait_for(|down| *down) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Adds `more` into `total` (rates too: directors' rates add up).
fn add_counters(total: &mut Option<pb::Counters>, more: Option<&pb::Counters>) {
    let Some(m) = more else { return };
    let t = total.get_or_insert_with(Default::default);
    t.conns += m.conns;
    t.in_packets += m.in_packets;
    t.out_packets += m.out_packets;
    t.in_bytes += m.in_bytes;
    t.out_bytes += m.out_bytes;
    t.conns_per_second += m.conns_per_second;
    t.in_packets_per_second += m.in_packets_per_second;
    t.out_packets_per_second += m.out_packets_per_second;
    t.in_bytes_per_second += m.in_bytes_per_second;
    t.out_bytes_per_second += m.out_bytes_per_second;
}
