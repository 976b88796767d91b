//! The session with the controller leader: one `DirectorSync` stream at a
//! time (reconnecting is `lb_proto::client::follow_leader`'s job), a report
//! every heartbeat, the lease grants acted on, and each desired
//! configuration published for the reconciler and the checker.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use lb_hostnet::checks::{self, Target};
use lb_proto::client::{channel, Session};
use lb_proto::model::Service;
use lb_proto::pb;
use lb_proto::pb::director_sync_client::DirectorSyncClient;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use super::{Config, Desired, Progress};
use crate::lease_file::LeaseFile;
use crate::vip::{lease_until, Lease, SentHeartbeats};

fn report(
    config: &Config,
    heartbeat: u64,
    progress: &Mutex<Progress>,
    lease: &Mutex<Lease>,
    stats_sent: &mut u64,
) -> pb::DirectorReport {
    let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
    // Counters change every round; sending them with each heartbeat would
    // multiply the stream's traffic for nothing.
    let stats = (p.stats_round > *stats_sent)
        .then(|| p.stats.as_deref().cloned())
        .flatten();
    *stats_sent = p.stats_round;
    let (applied_revision, changes_applied) = (p.applied_revision, p.changes_applied);
    let (errors, foreign_services) = (p.errors.clone(), p.foreign_services.clone());
    let addresses = p.addresses.clone();
    let unhealthy: Vec<pb::BackendRef> = p
        .unhealthy
        .iter()
        .map(|(service, b)| pb::BackendRef {
            service: service.clone(),
            address: b.ip().to_string(),
            port: b.port().into(),
        })
        .collect();
    drop(p);
    let held = lease
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .held(std::time::Instant::now());
    pb::DirectorReport {
        node_id: config.node_id.clone(),
        labels: config.labels.clone().into_iter().collect(),
        heartbeat,
        applied_revision,
        errors,
        foreign_services,
        changes_applied,
        held: held
            .into_iter()
            .map(|(vip, epoch)| pb::VipLease {
                vip: vip.to_string(),
                epoch,
            })
            .collect(),
        stats,
        unhealthy,
        addresses,
    }
}

/// The health checks the controller asks of this director, from the
/// services' check specs.
fn check_targets(services: &[Service], asked: &[pb::BackendRef]) -> Vec<Target> {
    asked
        .iter()
        .filter_map(|b| {
            let s = services.iter().find(|s| s.name == b.service)?;
            let backend = SocketAddr::new(b.address.parse().ok()?, u16::try_from(b.port).ok()?);
            checks::target(s, backend)
        })
        .collect()
}

/// The session's side of the agent: what it reads and what it publishes.
pub(super) struct Director {
    config: Config,
    desired: watch::Sender<Option<Desired>>,
    checks: watch::Sender<Vec<Target>>,
    progress: Arc<Mutex<Progress>>,
    lease: Arc<Mutex<Lease>>,
    lease_changed: Arc<Notify>,
    lease_file: LeaseFile,
    /// Numbers the reports across sessions, so an ack names one send time.
    heartbeat: u64,
}

impl Director {
    pub(super) fn new(
        config: Config,
        (desired, checks): (watch::Sender<Option<Desired>>, watch::Sender<Vec<Target>>),
        progress: Arc<Mutex<Progress>>,
        (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
        lease_file: LeaseFile,
    ) -> Self {
        Director {
            config,
            desired,
            checks,
            progress,
            lease,
            lease_changed,
            lease_file,
            heartbeat: 0,
        }
    }

    /// Acts on a grant: the lease runs from the send time of the heartbeat
    /// it acknowledges. Saved before the next report (sent from this task)
    /// can tell the controller what the lease now says.
    fn granted(&self, d: &pb::DirectorDesired, sent: &mut SentHeartbeats) {
        let changed = {
            let mut l = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
            let before = l.clone();
            if let Some(at) = sent.acked(d.heartbeat_ack) {
                l.until = Some(lease_until(at, d.lease_ms));
            }
            l.vips = d
                .leases
                .iter()
                .filter_map(|v| Some((v.vip.parse().ok()?, v.epoch)))
                .collect();
            (*l != before).then(|| l.clone())
        };
        if let Some(l) = changed {
            if let Err(e) = self.lease_file.save(&l) {
                tracing::warn!(error = %e, "saving the lease");
            }
            self.lease_changed.notify_one();
        }
    }

    /// Publishes a new configuration for the reconciler and the checker.
    fn configure(&self, revision: u64, cfg: pb::DesiredConfig) {
        let previous = self.desired.borrow().as_ref().map(|d| d.services.clone());
        let (services, refused) = accept(cfg.services, previous.as_deref().unwrap_or(&[]));
        for why in &refused {
            tracing::error!(revision, refused = %why, "refusing a service the controller sent");
        }
        self.checks
            .send_replace(check_targets(&services, &cfg.checks));
        self.desired.send_replace(Some(Desired {
            revision,
            services,
            refused,
        }));
    }

    fn next_report(
        &mut self,
        sent: &mut SentHeartbeats,
        stats_sent: &mut u64,
    ) -> pb::DirectorReport {
        self.heartbeat += 1;
        sent.sent(self.heartbeat, std::time::Instant::now());
        report(
            &self.config,
            self.heartbeat,
            &self.progress,
            &self.lease,
            stats_sent,
        )
    }
}

impl Session for Director {
    /// One stream with one controller; returns when it ends.
    async fn run(&mut self, addr: &str) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        let mut sent = SentHeartbeats::default();
        // A new stream may reach a new leader, which has no counters yet.
        let mut stats_sent = 0;
        let _ = tx.send(self.next_report(&mut sent, &mut stats_sent)).await;
        let mut renewed = self.config.tls.changed();
        let mut inbound =
            DirectorSyncClient::new(channel(addr, self.config.tls.current().as_ref())?)
                .sync(ReceiverStream::new(rx))
                .await?
                .into_inner();
        tracing::info!(controller = %addr, "connected");
        let mut ticker = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(d) => {
                        self.granted(&d, &mut sent);
                        if let Some(cfg) = d.config {
                            self.configure(d.revision, cfg);
                        }
                    }
                    None => return Ok(()),
                },
                // A renewed certificate counts from the next connection.
                Ok(()) = renewed.changed() => return Ok(()),
                _ = ticker.tick() => {
                    let report = self.next_report(&mut sent, &mut stats_sent);
                    if tx.send(report).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The services of a configuration this director takes, and those it
/// refuses with the reason. A refused service keeps the version it had in
/// `previous` (nothing in the kernel changes for it), or is left out if it
/// is new: a controller whose rules this director does not share must not
/// freeze the rest of the table, nor have the refusal go unreported.
pub(super) fn accept(wire: Vec<pb::Service>, previous: &[Service]) -> (Vec<Service>, Vec<String>) {
    let mut services = Vec::new();
    let mut refused = Vec::new();
    for s in wire {
        let name = s.name.clone();
        match Service::try_from(s) {
            Ok(s) => services.push(s),
            Err(e) => {
                refused.push(format!("service {name} refused: {e}"));
                if let Some(kept) = previous.iter().find(|p| p.name == name) {
                    services.push(kept.clone());
                }
            }
        }
    }
    (services, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str, vip: &str, scheduler: &str) -> pb::Service {
        pb::Service {
            name: name.into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: vip.into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            mode: "nat".into(),
            scheduler: scheduler.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_service_is_reported_and_keeps_its_previous_version() {
        let (before, refused) = accept(
            vec![wire("web", "10.0.0.1", "rr"), wire("api", "10.0.0.2", "rr")],
            &[],
        );
        assert!(refused.is_empty());
        assert_eq!(before.len(), 2);
        // The controller now sends a scheduler this director does not know,
        // for one service, and a new service the same way.
        let (now, refused) = accept(
            vec![
                wire("web", "10.0.0.1", "nonesuch"),
                wire("api", "10.0.0.2", "wrr"),
                wire("new", "10.0.0.3", "nonesuch"),
            ],
            &before,
        );
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0]
                .starts_with("service web refused: service.scheduler: unknown value \"nonesuch\""),
            "{refused:?}"
        );
        assert!(refused[1].starts_with("service new refused: service.scheduler"));
        let names: Vec<&str> = now.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        assert_eq!(now[0], before[0], "web keeps what it had");
        assert_eq!(now[1].scheduler.to_string(), "wrr", "api is updated");
    }
}
