//! The sessions with the controllers: one `DirectorSync` stream with
//! **every** controller (`lb_proto::client::keep_connected` each), a report
//! on each every heartbeat, each controller's grants folded into the quorum
//! lease ([`crate::lease`]), and the newest desired configuration any of
//! them sends published for the reconciler and the checker.
//!
//! The streams start with the `--controller` list and then follow the
//! cluster's membership as the controllers name it, so a director pointed
//! at one controller still reaches the majority its lease needs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_hostnet::checks::Target;
use lb_proto::client::{channel, keep_connected, AckDeadline, Backoff, Session};
use lb_proto::convert::{parse_vip_leases, vip_leases};
use lb_proto::model::ForwardingMode;
use lb_proto::pb;
use lb_proto::pb::director_sync_client::DirectorSyncClient;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::accept::{accept, by_name, check_targets, vips_of};
use super::from_controller::{log_update, Applied, FromController};
use super::{Config, Desired, Progress, ServiceList};
use crate::hook::{Event, Hooks, QuorumChange};
use crate::lease::{epochs, same_epochs, Lease, SentHeartbeats};
use crate::lease_file::{BackgroundSave, LeaseFile};

/// The counters a stream sent: which round's, and the reading itself,
/// which the next ones are sent as deltas from.
#[derive(Default)]
struct StatsSent {
    round: u64,
    base: Option<Arc<pb::IpvsStats>>,
}

impl StatsSent {
    /// What to send of the reading `now`: all of it first (a new stream
    /// may reach a controller that has none), then what changed; nothing
    /// when nothing did.
    fn next(&mut self, now: Arc<pb::IpvsStats>) -> Option<pb::IpvsStats> {
        let out = match &self.base {
            None => Some((*now).clone()),
            Some(base) => {
                let d = crate::stats::delta(base, &now);
                (!d.services.is_empty() || !d.removed.is_empty()).then_some(d)
            }
        };
        self.base = Some(now);
        out
    }
}

/// The VIPs a stream's reports said the director holds, to say
/// `held_same` instead of listing them again.
#[derive(Default)]
struct HeldSent {
    /// The controller reads `held_same` (its answers say so).
    knows: bool,
    /// What the last report listed.
    last: Option<Vec<(IpAddr, u64)>>,
}

/// Each controller's answers so far, by address.
pub(super) type Answers = Arc<watch::Sender<BTreeMap<String, u64>>>;

/// What every stream reads and publishes.
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) desired: watch::Sender<Option<Desired>>,
    pub(super) checks: watch::Sender<Vec<Target>>,
    pub(super) progress: Arc<Mutex<Progress>>,
    pub(super) lease: Arc<Mutex<Lease>>,
    /// Wakes the VIP loop when the lease changed.
    pub(super) lease_changed: Arc<Notify>,
    pub(super) lease_file: LeaseFile,
    /// Saves the lease whose ends alone moved (see [`Shared::granted`]).
    saver: BackgroundSave,
    /// Bumped to have every stream report at once, not at its next tick
    /// (a VIP let go, the agent leaving): hand-overs wait on that report.
    pub(super) report_now: Arc<watch::Sender<u64>>,
    /// True once the agent is stopping.
    pub(super) leaving: watch::Receiver<bool>,
    /// Counts each controller's answers, by address (a hand-over waits for
    /// those to the reports that say the VIPs are gone).
    pub(super) answers: Answers,
    /// The controllers to keep a stream with.
    targets: watch::Sender<BTreeSet<String>>,
    /// Where quorum changes go (the operator's `--on-quorum-change`).
    hooks: Option<Hooks>,
}

impl Shared {
    pub(super) fn new(
        config: Config,
        (desired, checks): (watch::Sender<Option<Desired>>, watch::Sender<Vec<Target>>),
        progress: Arc<Mutex<Progress>>,
        (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
        (lease_file, saver): (LeaseFile, BackgroundSave),
        (report_now, leaving, answers): (Arc<watch::Sender<u64>>, watch::Receiver<bool>, Answers),
        hooks: Option<Hooks>,
    ) -> Self {
        let listed = config.controllers.addrs().iter().cloned().collect();
        Shared {
            config,
            desired,
            checks,
            progress,
            lease,
            lease_changed,
            lease_file,
            saver,
            report_now,
            leaving,
            answers,
            targets: watch::channel(listed).0,
            hooks,
        }
    }

    /// The controllers the streams go to.
    pub(super) fn controllers(&self) -> BTreeSet<String> {
        self.targets.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next report: what the reconciler did, what the kernel has.
    fn report(
        &self,
        heartbeat: u64,
        sent: &mut StatsSent,
        held_sent: &mut HeldSent,
    ) -> pb::DirectorReport {
        let p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        // Counters change every round; sending them with each heartbeat would
        // multiply the stream's traffic for nothing.
        let stats = (p.stats_round > sent.round)
            .then(|| p.stats.clone())
            .flatten()
            .and_then(|now| sent.next(now));
        sent.round = p.stats_round;
        let unhealthy: Vec<pb::BackendRef> = p
            .unhealthy
            .iter()
            .map(|(service, b)| pb::BackendRef {
                service: service.clone(),
                address: b.ip().to_string(),
                port: b.port().into(),
            })
            .collect();
        let mut report = pb::DirectorReport {
            node_id: self.config.node_id.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            heartbeat,
            applied_revision: p.applied_revision,
            errors: p.errors.clone(),
            foreign_services: p.foreign_services.clone(),
            changes_applied: p.changes_applied,
            stats,
            unhealthy,
            addresses: p.addresses.clone(),
            leaving: *self.leaving.borrow(),
            knows_leases_same: true,
            ..Default::default()
        };
        drop(p);
        let l = self.lock();
        let now = Instant::now();
        // What the kernel has, not what the lease says.
        let held = l.on_interface(now);
        report.released = vip_leases(l.released());
        drop(l);
        report.held_same = held_sent.knows && held_sent.last.as_ref() == Some(&held);
        if !report.held_same {
            report.held = vip_leases(held.iter().copied());
            held_sent.last = Some(held);
        }
        report
    }

    /// Acts on a controller's answer: its grants count from the send time
    /// of the heartbeat it acknowledges. A lease that holds other VIPs or
    /// epochs, or let one go, is saved before the next report (sent from
    /// this task) can tell the controller what the lease now says. One
    /// whose ends alone moved — nearly every answer — is saved in the
    /// background ([`BackgroundSave`]): a file a moment behind only ends
    /// the lease a moment early for a restarted process, and writing 1,000
    /// VIPs took this task 10–15 ms per answer under the VM's emulated CPU,
    /// which a configuration update arriving meanwhile waited out.
    /// `last`: the grants of this stream's previous answer, which an answer
    /// that says `leases_same` repeats.
    fn granted(
        &self,
        d: &pb::DirectorDesired,
        sent: &mut SentHeartbeats,
        last: &mut Arc<BTreeMap<IpAddr, u64>>,
    ) {
        let now = Instant::now();
        let at = sent.acked(d.heartbeat_ack);
        if !d.leases_same {
            *last = Arc::new(parse_vip_leases(&d.leases));
        }
        let lease = Duration::from_millis(u64::from(d.lease_ms));
        let voters: BTreeSet<u64> = d.voters.iter().copied().collect();
        let (changed, ends_on) = {
            let mut l = self.lock();
            let now_keep = (now, FORGET_AFTER);
            if d.superseded.is_empty()
                && l.renews_only(d.controller_id, (at, lease), last, &voters, now_keep)
            {
                // Only ends move, and only on (see `Lease::renews_only`).
                l.granted(d.controller_id, at, lease, last.clone(), voters);
                l.forget(now, FORGET_AFTER);
                (at.map(|_| false), true)
            } else {
                let changed = granted_in_full(&mut l, d, (at, lease), last, voters, now);
                (changed, false)
            }
        };
        match changed {
            Some(true) => {
                if let Err(e) = self.lease_file.save_current(&self.lease) {
                    tracing::warn!(error = %e, "saving the lease");
                }
            }
            Some(false) => self.saver.ask(),
            _ => {}
        }
        // Ends that only moved on are left for the VIP loop to read when it
        // renews the fence and the addresses: until then, the ends it has
        // are earlier ones (the safe side). Reading 1,000 leases took it
        // 1.3–1.5 ms of the VM's emulated CPU on every answer.
        if changed.is_some() && !ends_on {
            self.lease_changed.notify_one();
        }
        let members: BTreeSet<String> = d.controllers.iter().cloned().collect();
        if !members.is_empty() {
            self.targets.send_if_modified(|t| {
                let new = *t != members;
                if new {
                    tracing::info!(controllers = ?members, "the controllers named the cluster's members");
                    *t = members;
                }
                new
            });
        }
    }

    /// Publishes a configuration newer than the one published, for the
    /// reconciler and the checker (every controller sends each revision).
    /// `changed`: the services the update named, when it was a delta. It
    /// covers every change since the revision published: that came from
    /// this stream's previous update or a later one of another stream.
    fn configure(&self, from: &FromController, changed: Option<&BTreeSet<String>>) {
        let revision = from.revision;
        let previous = self.desired.borrow().clone();
        if previous.as_ref().is_some_and(|d| d.revision >= revision) {
            return;
        }
        let (services, refused) = accept(from.services(), changed, previous.as_ref());
        let (vips, delta) = match (changed, previous.as_ref()) {
            (Some(names), Some(p)) => {
                let vip = |all: &ServiceList, n: &str| by_name(all, n).map(|s| s.vip());
                let same = names
                    .iter()
                    .all(|n| vip(&p.services, n) == vip(&services, n));
                let vips = if same {
                    p.vips.clone()
                } else {
                    vips_of(&services)
                };
                (vips, Some((p.revision, Arc::new(names.clone()))))
            }
            _ => (vips_of(&services), None),
        };
        for (name, why) in refused.iter() {
            if changed.is_none_or(|c| c.contains(name)) {
                tracing::error!(revision, refused = %why, "refusing a service the controller sent");
            }
        }
        // The checker's targets stay as they are when the checks asked of
        // this director are the same and no local service changed (most
        // changes): making them walks every service, milliseconds of an
        // emulated CPU with 10,000 of them, in the path of every change.
        let asked = from.checks();
        let same_targets = match (changed, previous.as_ref()) {
            (Some(names), Some(p)) => {
                let local = |all: &ServiceList, n: &str| {
                    by_name(all, n).is_some_and(|s| s.mode == ForwardingMode::Local)
                };
                *p.asked == asked
                    && !names
                        .iter()
                        .any(|n| local(&p.services, n) || local(&services, n))
            }
            _ => false,
        };
        let asked = match previous.as_ref() {
            Some(p) if same_targets => p.asked.clone(),
            _ => Arc::new(asked),
        };
        let base = previous.as_ref().map(|p| p.revision);
        // Made here, not under the lock of the published configuration
        // (which every reader waits for), unless the race below needs them.
        let mut targets = (!same_targets).then(|| check_targets(&services, &asked));
        let below_quorum = match previous.as_ref() {
            Some(p) if *p.below_quorum == *from.below_quorum() => p.below_quorum.clone(),
            _ => Arc::new(from.below_quorum().clone()),
        };
        let flipped: Vec<(String, bool)> = match previous.as_ref() {
            Some(p) => p
                .below_quorum
                .symmetric_difference(&below_quorum)
                .map(|name| (name.clone(), !below_quorum.contains(name)))
                .collect(),
            None => Vec::new(),
        };
        let quorum = flipped
            .into_iter()
            .filter_map(|(name, up)| Some((by_name(&services, &name)?.vip()?, name, up)))
            .collect::<Vec<_>>();
        let published = self.desired.send_if_modified(|d| {
            if d.as_ref().is_some_and(|d| d.revision >= revision) {
                return false;
            }
            // Kept only when the revision published is still the one they
            // were made for (another stream may have published meanwhile).
            if targets.is_none() && d.as_ref().map(|d| d.revision) != base {
                targets = Some(check_targets(&services, &asked));
            }
            *d = Some(Desired {
                revision,
                services,
                refused: Arc::new(refused),
                vips,
                delta,
                below_quorum,
                asked,
            });
            true
        });
        if published {
            if let Some(targets) = targets {
                self.checks.send_replace(targets);
            }
            self.quorum_changed(quorum);
        }
    }

    /// Tells the quorum hook of the services whose VIP this director holds
    /// that went below quorum or back.
    fn quorum_changed(&self, changes: Vec<(IpAddr, String, bool)>) {
        let Some(hooks) = &self.hooks else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        let held = self.lock().added.clone();
        for (vip, service, up) in changes {
            if held.contains(&vip) {
                tracing::info!(service, %vip, up, "quorum changed");
                let _ = hooks.send(Event::Quorum(QuorumChange { service, vip, up }));
            }
        }
    }
}

/// How long the lease remembers a controller's grants after they ran out
/// ([`Lease::forget`]).
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// Takes a controller's answer `d` into the lease `l` (its grants `last`,
/// counted from `at` for `lease`) by reading what the lease holds before
/// and after: `Some(true)` when the epochs held or the drops changed,
/// `Some(false)` when only the ends moved, `None` when nothing did.
fn granted_in_full(
    l: &mut Lease,
    d: &pb::DirectorDesired,
    (at, lease): (Option<Instant>, Duration),
    last: &Arc<BTreeMap<IpAddr, u64>>,
    voters: BTreeSet<u64>,
    now: Instant,
) -> Option<bool> {
    let before = (l.holding(now), l.dropped.clone());
    l.granted(d.controller_id, at, lease, last.clone(), voters);
    l.supersede(d.controller_id, parse_vip_leases(&d.superseded), now);
    l.forget(now, FORGET_AFTER);
    let holding = l.holding(now);
    let epochs_moved = !same_epochs(&holding, &before.0);
    if epochs_moved {
        // When a hand-over or a failover took its time, this says
        // which controller's answer made the difference.
        let (held, was) = (epochs(&holding), epochs(&before.0));
        tracing::info!(controller = d.controller_id, ?held, before = ?was, "lease changed");
    }
    if epochs_moved || l.dropped != before.1 {
        Some(true)
    } else {
        (holding != before.0).then_some(false)
    }
}

/// One controller's stream.
struct Stream {
    shared: Arc<Shared>,
    /// The configuration as this controller sent it (kept across
    /// reconnections, to resume from).
    from: FromController,
}

impl Session for Stream {
    /// One stream with one controller; returns when it ends.
    async fn run(&mut self, addr: &str) -> Result<(), tonic::Status> {
        let sh = self.shared.clone();
        let (tx, rx) = mpsc::channel(8);
        let mut sent = SentHeartbeats::default();
        let mut heartbeat = 0;
        // A new stream may reach a controller that has no counters yet.
        let mut stats_sent = StatsSent::default();
        let mut held_sent = HeldSent::default();
        // The grants of this connection's last answer (see `granted`).
        let mut last_leases = Arc::default();
        // Connecting may take long (a TLS handshake on a slow host): the
        // deadline starts with the stream.
        let mut waiting = AckDeadline::new(sh.config.ack_deadline);
        let mut report_now = sh.report_now.subscribe();
        self.from.reconnected();
        let mut next = |(sent, waiting): (&mut SentHeartbeats, &mut AckDeadline),
                        held_sent: &mut HeldSent,
                        revision: u64| {
            heartbeat += 1;
            let now = Instant::now();
            sent.sent(heartbeat, now);
            waiting.sent(now);
            let mut report = sh.report(heartbeat, &mut stats_sent, held_sent);
            report.config_revision = revision;
            report
        };
        let first = next(
            (&mut sent, &mut waiting),
            &mut held_sent,
            self.from.revision,
        );
        let _ = tx.send(first).await;
        // The first update on this connection says whether it resumed.
        let mut first_update = true;
        // The largest message of the update under way (for the log).
        let mut largest = 0;
        let mut renewed = sh.config.tls.changed();
        let mut inbound = DirectorSyncClient::new(channel(addr, sh.config.tls.current().as_ref())?)
            .sync(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tracing::info!(controller = %addr, "connected");
        waiting.heard();
        waiting.sent(Instant::now());
        let mut ticker = tokio::time::interval(sh.config.heartbeat);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(d) => {
                        waiting.heard();
                        // The first answer: under systemd, the unit is up.
                        lb_proto::process::notify_ready("answered by the controllers");
                        if !d.continued {
                            let started = Instant::now();
                            waiting.at_least(Duration::from_millis(u64::from(d.lease_ms)));
                            held_sent.knows = d.knows_held_same;
                            sh.answers.send_modify(|n| *n.entry(addr.to_string()).or_default() += 1);
                            sh.granted(&d, &mut sent, &mut last_leases);
                            // With 1,000 VIPs, what a configuration update
                            // arriving meanwhile waits for.
                            tracing::debug!(
                                controller = %addr,
                                leases = d.leases.len(),
                                took_us = started.elapsed().as_micros() as u64,
                                "grants taken"
                            );
                        }
                        largest = largest.max(prost::Message::encoded_len(&d));
                        if let Some(update) = d.update {
                            let applied = self
                                .from
                                .take(d.revision, update)
                                .map_err(|e| tonic::Status::internal(e.to_string()))?;
                            if let Some(applied) = applied {
                                log_update(addr, d.revision, &applied, (first_update, largest));
                                first_update = false;
                                largest = 0;
                                let names = match &applied {
                                    Applied::Delta { names, .. } => Some(names),
                                    Applied::Snapshot { .. } => None,
                                };
                                sh.configure(&self.from, names);
                            }
                        }
                    }
                    None => return Ok(()),
                },
                // A renewed certificate counts from the next connection.
                Ok(()) = renewed.changed() => return Ok(()),
                _ = ticker.tick() => {
                    waiting.check(Instant::now())?;
                    let report = next((&mut sent, &mut waiting), &mut held_sent, self.from.revision);
                    if tx.send(report).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(()) = report_now.changed() => {
                    let report = next((&mut sent, &mut waiting), &mut held_sent, self.from.revision);
                    if tx.send(report).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Keeps one stream with each controller until `stop` turns true: the
/// listed ones, then the members the controllers name.
pub(super) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut streams: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let mut targets = shared.targets.subscribe();
    let mut stopping = stop.clone();
    loop {
        let want = targets.borrow_and_update().clone();
        streams.retain(|addr, task| {
            let keep = want.contains(addr);
            if !keep {
                tracing::info!(controller = %addr, "no longer a member: stream closed");
                task.abort();
            }
            keep
        });
        for addr in want {
            if streams.contains_key(&addr) {
                continue;
            }
            let mut stream = Stream {
                shared: shared.clone(),
                from: FromController::default(),
            };
            let stop = stop.clone();
            let a = addr.clone();
            let task = tokio::spawn(async move {
                // Retry fast: a lease is running out while too few answer.
                let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
                keep_connected(a, &mut stream, stop, backoff).await;
            });
            streams.insert(addr, task);
        }
        tokio::select! {
            r = targets.changed() => if r.is_err() { break },
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    for (_, task) in streams {
        let _ = task.await;
    }
}
