//! The reconciler: makes the kernel's IPVS table match the desired one
//! ([`super::rounds`]): each new revision's changes at once, and every
//! `resync` period a sweep that reads the whole table back in slices (so
//! hand edits are repaired) and carries the counters and the foreign
//! services. It keeps the fwmark services' mark rules and records what it
//! did (and what it refused) for the next report. What it manages is kept
//! in the services file, so that a restarted agent still removes a service
//! deleted while it was down (see [`crate::services_file`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::rounds::{
    changed, own_addresses, programmed_vips, reconcile, Covered, Done, Round, SLICE,
};
use super::{Desired, Progress, Services};
use crate::ipvs::{Ipvs, ServiceKey};
use crate::marks::Marks;
use crate::reconcile::Counted;
use crate::services_file::ServicesFile;
use crate::{desired, stats};

/// A sweep under way: the keys still to read, and what it found so far.
#[derive(Default)]
struct Sweep {
    left: VecDeque<ServiceKey>,
    counted: BTreeMap<ServiceKey, Counted>,
    foreign: Vec<ServiceKey>,
    /// Its first slice lists the kernel's services.
    listed: bool,
}

impl Sweep {
    /// Every key lbfabric wants or manages (the kernel's join in the first slice).
    fn new(services: &[Arc<lb_proto::model::Service>], managed: &BTreeSet<ServiceKey>) -> Sweep {
        let mut keys: BTreeSet<ServiceKey> = managed.clone();
        keys.extend(services.iter().map(|s| desired::key(&s.address)));
        Sweep {
            left: keys.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Takes in what a slice read; true when the sweep has read everything.
    fn absorb(&mut self, done: &mut Done) -> bool {
        self.counted.append(&mut done.counted);
        self.foreign.extend(done.plan.foreign.iter().copied());
        if let Some(listed) = &done.listed {
            // The kernel's own (foreign, or left from before).
            let known: BTreeSet<ServiceKey> = self.left.iter().copied().collect();
            self.left.extend(
                listed
                    .iter()
                    .filter(|k| !known.contains(k) && !done.covered.contains(k)),
            );
        }
        self.left.is_empty()
    }

    fn next(&mut self) -> Round {
        let n = self.left.len().min(SLICE);
        let keys = self.left.drain(..n).collect();
        let list = !std::mem::replace(&mut self.listed, true);
        Round::Slice { keys, list }
    }
}

/// Operations that failed, by service key, until a round covering the
/// key succeeds (a VIP with a broken service is not announced).
type Broken = BTreeMap<ServiceKey, Vec<String>>;

pub(super) async fn run(
    (ipvs, file): (Ipvs, ServicesFile),
    resync: Duration,
    mut desired: watch::Receiver<Option<Desired>>,
    programmed: watch::Sender<BTreeSet<IpAddr>>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    let ipvs = Arc::new(ipvs);
    let marks = Arc::new(Mutex::new(Marks::new(vec!["nft".into()])));
    let mut managed: BTreeSet<ServiceKey> = file.load().unwrap_or_else(|e| {
        // Without it, a service deleted while the agent was down stays.
        tracing::warn!(error = %e, "ignoring the services file");
        BTreeSet::new()
    });
    // The services the kernel was last brought to (`None`: the next round
    // reads the whole table), the sweep under way, and when the next one
    // starts (counted from the end of the last, so that a slow sweep of a
    // large table does not run back to back).
    let mut last: Option<Services> = None;
    let mut sweep: Option<Sweep> = None;
    let mut sweep_at = Instant::now() + resync;
    let mut broken = Broken::new();
    loop {
        let current = desired.borrow_and_update().clone();
        let mut busy = false;
        if let Some(Desired {
            revision,
            services,
            refused,
        }) = current
        {
            let round = match &last {
                None => Some(Round::Full),
                Some(last) => {
                    let c = changed(last, &services);
                    if !c.is_empty() {
                        Some(Round::Changes(c))
                    } else if let Some(s) = sweep.as_mut() {
                        Some(s.next())
                    } else if Instant::now() >= sweep_at {
                        Some(sweep.insert(Sweep::new(&services, &managed)).next())
                    } else {
                        None
                    }
                }
            };
            if let Some(round) = round {
                busy = true;
                let began = Instant::now();
                let task = (
                    ipvs.clone(),
                    marks.clone(),
                    services.clone(),
                    managed.clone(),
                );
                let done = tokio::task::spawn_blocking(move || {
                    let (ipvs, marks, services, managed) = task;
                    reconcile(&ipvs, &marks, &services, round, &managed)
                })
                .await;
                tracing::debug!(
                    revision,
                    took_ms = began.elapsed().as_millis() as u64,
                    "reconcile round"
                );
                let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
                match done {
                    Ok(Ok(mut done)) => {
                        record(&mut broken, &done);
                        // A full round, or the last slice of a sweep, read
                        // every service: its counters and foreign list count.
                        let read = if matches!(done.covered, Covered::All) {
                            Some((std::mem::take(&mut done.counted), done.plan.foreign.clone()))
                        } else if sweep.as_mut().is_some_and(|s| s.absorb(&mut done)) {
                            sweep.take().map(|s| (s.counted, s.foreign))
                        } else {
                            None
                        };
                        if let Some((counted, foreign)) = read {
                            prog.stats = Some(Arc::new(stats::report(&services, &counted)));
                            prog.stats_round += 1;
                            prog.foreign_services =
                                foreign.iter().map(ToString::to_string).collect();
                            sweep_at = Instant::now() + resync;
                        }
                        prog.addresses = std::mem::take(&mut done.own);
                        let ready = programmed_vips(&services, &broken, done.marks_ok);
                        programmed.send_if_modified(|vips| {
                            let changed = *vips != ready;
                            *vips = ready;
                            changed
                        });
                        if managed != done.managed {
                            if let Err(e) = file.save(&done.managed) {
                                tracing::warn!(error = %e, "saving the services file");
                            }
                            managed = std::mem::take(&mut done.managed);
                        }
                        let (ops, failed) = (done.plan.ops.len(), done.failed.len());
                        if ops > 0 {
                            tracing::info!(revision, changes = ops, failed, "reconciled");
                        }
                        prog.changes_applied +=
                            (ops - failed) as u64 + u64::from(done.marks_changed);
                        prog.errors = refused
                            .values()
                            .cloned()
                            .chain(broken.values().flatten().cloned())
                            .chain(done.host_errors.iter().cloned())
                            .collect();
                        if prog.errors.is_empty() {
                            prog.applied_revision = revision;
                        }
                        last = Some(services);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reading the IPVS table failed");
                        prog.errors = vec![e.to_string()];
                        // Start over from the whole table.
                        last = None;
                        sweep = None;
                    }
                    Err(e) => {
                        prog.errors = vec![format!("reconcile task: {e}")];
                        last = None;
                        sweep = None;
                    }
                }
            }
        } else {
            // Nothing to program yet: wait for the first configuration.
            sweep_at = Instant::now() + resync;
        }
        // A sweep goes on slice after slice, with the changes in between.
        if busy && (sweep.is_some() || desired.has_changed().unwrap_or(false)) {
            tokio::task::yield_now().await;
            continue;
        }
        let due = tokio::time::sleep_until(sweep_at.into());
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = due => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps the failures of keys the round did not cover, and takes the
/// round's word for those it did.
fn record(broken: &mut Broken, done: &Done) {
    broken.retain(|k, _| !done.covered.contains(k));
    for (op, e) in &done.failed {
        broken
            .entry(op.key())
            .or_default()
            .push(format!("{op}: {e}"));
    }
}

/// Without IPVS (`--no-ipvs`) there is no table to program: every VIP of
/// the configuration is ready as soon as it arrives, and the report says
/// which revision that was.
pub(super) async fn vips_only(
    mut desired: watch::Receiver<Option<Desired>>,
    programmed: watch::Sender<BTreeSet<IpAddr>>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some(d) = current {
            let vips: BTreeSet<IpAddr> = d.services.iter().filter_map(|s| s.vip()).collect();
            programmed.send_if_modified(|ready| std::mem::replace(ready, vips.clone()) != vips);
            let own = own_addresses(&d.services);
            let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
            prog.addresses = own;
            prog.errors = d.refused.values().cloned().collect();
            if prog.errors.is_empty() {
                prog.applied_revision = d.revision;
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
