//! The reconciler: makes the kernel's IPVS table match the desired one
//! ([`super::rounds`]): each new revision's changes at once, and every
//! `resync` period a sweep that reads the whole table back in paced slices
//! (so hand edits are repaired) and carries the counters and the foreign
//! services. It keeps the fwmark services' mark rules and records what it
//! did (and what it refused) for the next report. What it manages is kept
//! in the services file, so that a restarted agent still removes a service
//! deleted while it was down (see [`crate::services_file`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::metrics::Metrics;
use super::rounds::{
    changed, changed_named, own_addresses, programmed_vips, reconcile, Changed, Covered, Done,
    Round, SLICE,
};
use super::{Desired, Progress, ServiceList, Services};
use crate::ipvs::{Ipvs, ServiceKey};
use crate::marks::Marks;
use crate::reconcile::Counted;
use crate::services_file::ServicesFile;
use crate::{desired, stats};

/// A sweep's slices are paced: after a slice that took `t`, the next
/// waits `t × SWEEP_SHARE`, so the drift repair takes at most a quarter of
/// the time (and of a CPU). Reading 10,000 services and 100,000
/// destinations back takes half a second natively but tens of seconds
/// under the VM's emulated CPU: unpaced, the sweep ran back to back there
/// and every change waited behind a slice.
const SWEEP_SHARE: u32 = 3;

/// After a change, the sweep waits this long before its next slice:
/// changes come in bursts (a script, an import, an orchestrator), and a
/// slice between two of them competes with the second for the CPU (under
/// the VM's emulated CPU it doubled a change's p50 at 10,000 services).
/// Changes that keep coming defer the sweep for one resync period at most:
/// past that, slices go between them at their usual pace. The VIP loop's
/// renewal of address lifetimes waits for the same gap (see
/// `agent::vips`).
pub(super) const QUIET_AFTER_CHANGE: Duration = Duration::from_millis(200);

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
    fn new(services: &ServiceList, managed: &BTreeSet<ServiceKey>) -> Sweep {
        let mut keys: BTreeSet<ServiceKey> = managed.clone();
        keys.extend(services.iter().map(|s| desired::key(&s.address)));
        Sweep {
            left: keys.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Takes in what a slice read; true when the sweep has read everything.
    fn absorb(&mut self, done: &mut Done) -> bool {
        // What it did not get to comes next.
        for key in done.unread.drain(..).rev() {
            self.left.push_front(key);
        }
        // Inserted one by one: `append` merges the whole map each slice.
        self.counted.extend(std::mem::take(&mut done.counted));
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

    /// The next slice, with the configured services among its keys.
    fn next(&mut self, by_key: &ByKey) -> Round {
        let n = self.left.len().min(SLICE);
        let keys: Vec<ServiceKey> = self.left.drain(..n).collect();
        let want = keys
            .iter()
            .filter_map(|k| by_key.index.get(k).cloned())
            .collect();
        let list = !std::mem::replace(&mut self.listed, true);
        Round::Slice { keys, want, list }
    }
}

/// The configured services by IPVS key, for the sweep's slices: kept up to
/// date change by change ([`ByKey::follow`]), built whole only when a sweep
/// meets a configuration it did not follow. Rebuilt after every change, it
/// cost a walk over 10,000 services right behind each one.
#[derive(Default)]
struct ByKey {
    of: Option<Services>,
    index: BTreeMap<ServiceKey, Arc<lb_proto::model::Service>>,
}

impl ByKey {
    fn of(&mut self, services: &Services) -> &ByKey {
        if !self.of.as_ref().is_some_and(|o| Arc::ptr_eq(o, services)) {
            self.index = services
                .iter()
                .map(|s| (desired::key(&s.address), s.clone()))
                .collect();
            self.of = Some(services.clone());
        }
        self
    }

    /// `c` took the configuration `last` to `now`: the index follows if it
    /// was `last`'s.
    fn follow(&mut self, last: &Services, c: &Changed, now: &Services) {
        if !self.of.as_ref().is_some_and(|o| Arc::ptr_eq(o, last)) {
            return;
        }
        for s in &c.before {
            self.index.remove(&desired::key(&s.address));
        }
        for s in &c.now {
            self.index.insert(desired::key(&s.address), s.clone());
        }
        self.of = Some(now.clone());
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
    (progress, metrics): (Arc<Mutex<Progress>>, Arc<Metrics>),
    mut stop: watch::Receiver<bool>,
) {
    let ipvs = Arc::new(ipvs);
    let marks = Arc::new(Mutex::new(Marks::new(vec!["nft".into()])));
    let mut managed: Arc<BTreeSet<ServiceKey>> = Arc::new(file.load().unwrap_or_else(|e| {
        // Without it, a service deleted while the agent was down stays.
        tracing::warn!(error = %e, "ignoring the services file");
        BTreeSet::new()
    }));
    let mut by_key = ByKey::default();
    // The host side's last word: whether the mark rules are in place, and
    // its errors (kept between the rounds that check it).
    let mut marks_ok = true;
    let mut host_errors: Vec<String> = Vec::new();
    // The services the kernel was last brought to (`None`: the next round
    // reads the whole table), the sweep under way, and when the next one
    // starts (counted from the end of the last, so that a slow sweep of a
    // large table does not run back to back).
    let mut last: Option<(Services, u64)> = None;
    let mut sweep: Option<Sweep> = None;
    let mut sweep_at = Instant::now() + resync;
    // When the sweep's next slice is due (see [`SWEEP_SHARE`]).
    let mut slice_at = Instant::now();
    // Since when changes have kept the due slice back (see
    // [`QUIET_AFTER_CHANGE`]).
    let mut deferred_since: Option<Instant> = None;
    let mut broken = Broken::new();
    loop {
        let current = desired.borrow_and_update().clone();
        let mut busy = false;
        if let Some(Desired {
            revision,
            services,
            refused,
            delta,
            ..
        }) = current
        {
            let round = match &last {
                None => Some(Round::Full),
                Some((last, last_revision)) => {
                    let c = match &delta {
                        Some((from, names)) if from == last_revision => {
                            changed_named(last, &services, names)
                        }
                        _ => changed(last, &services),
                    };
                    if !c.is_empty() {
                        by_key.follow(last, &c, &services);
                        Some(Round::Changes(c))
                    } else if let Some(s) = sweep.as_mut() {
                        (Instant::now() >= slice_at).then(|| s.next(by_key.of(&services)))
                    } else if Instant::now() >= sweep_at {
                        let s = sweep.insert(Sweep::new(&services, &managed));
                        Some(s.next(by_key.of(&services)))
                    } else {
                        None
                    }
                }
            };
            if let Some(round) = round {
                busy = true;
                let changes = !matches!(round, Round::Slice { .. });
                // Realservers alone cannot make a VIP ready or not.
                let structural = round.host();
                let began = Instant::now();
                let task = (
                    ipvs.clone(),
                    marks.clone(),
                    services.clone(),
                    managed.clone(),
                );
                // A slice gives way to a change that arrives meanwhile.
                let news = desired.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let (ipvs, marks, services, managed) = task;
                    let interrupted = || news.has_changed().unwrap_or(false);
                    reconcile(&ipvs, &marks, &services, round, (&managed, &interrupted))
                })
                .await;
                let now = Instant::now();
                if !changes {
                    slice_at = now + began.elapsed() * SWEEP_SHARE;
                    deferred_since = None;
                } else {
                    let quiet = now + QUIET_AFTER_CHANGE;
                    let next = if sweep.is_some() { slice_at } else { sweep_at };
                    // Only a slice due within the quiet time is kept back.
                    if next < quiet {
                        let since = *deferred_since.get_or_insert(now);
                        if now.duration_since(since) < resync {
                            slice_at = slice_at.max(quiet);
                            sweep_at = sweep_at.max(quiet);
                        }
                    }
                }
                let took = began.elapsed();
                metrics.reconcile_seconds.observe(took.as_secs_f64());
                tracing::debug!(
                    revision,
                    took_ms = took.as_millis() as u64,
                    "reconcile round"
                );
                let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
                match done {
                    Ok(Ok(mut done)) => {
                        let broke = record(&mut broken, &done);
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
                            let all: Vec<&lb_proto::model::Service> =
                                services.iter().map(|s| &**s).collect();
                            prog.stats = Some(Arc::new(stats::report(&all, &counted)));
                            prog.stats_round += 1;
                            prog.foreign_services =
                                foreign.iter().map(ToString::to_string).collect();
                            sweep_at = Instant::now() + resync;
                        }
                        let mut marks_changed = false;
                        let mut ready_may_differ = structural || broke;
                        if let Some(host) = done.host.take() {
                            prog.addresses = host.own;
                            host_errors = host.errors;
                            marks_changed = host.marks_changed;
                            ready_may_differ |= marks_ok != host.marks_ok;
                            marks_ok = host.marks_ok;
                        }
                        // A walk over every service: only when a change,
                        // a failure or the mark rules may have moved a VIP.
                        if ready_may_differ {
                            let ready = programmed_vips(&services, &broken, marks_ok);
                            programmed.send_if_modified(|vips| {
                                let changed = *vips != ready;
                                *vips = ready;
                                changed
                            });
                        }
                        let (ops, failed) = (done.plan.ops.len(), done.failed.len());
                        if done.managed.update(&mut managed) {
                            if let Err(e) = file.save(&managed) {
                                tracing::warn!(error = %e, "saving the services file");
                            }
                        }
                        if ops > 0 {
                            tracing::info!(revision, changes = ops, failed, "reconciled");
                        }
                        metrics.operations(ops - failed, failed);
                        if !changes {
                            metrics.drift_repairs.inc_by((ops - failed) as u64);
                        }
                        prog.changes_applied += (ops - failed) as u64 + u64::from(marks_changed);
                        prog.errors = refused
                            .values()
                            .cloned()
                            .chain(broken.values().flatten().cloned())
                            .chain(host_errors.iter().cloned())
                            .collect();
                        if prog.errors.is_empty() {
                            prog.applied_revision = revision;
                        }
                        last = Some((services, revision));
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
        // A change goes at once; a sweep's slices are paced.
        if busy && desired.has_changed().unwrap_or(false) {
            tokio::task::yield_now().await;
            continue;
        }
        let next = if sweep.is_some() { slice_at } else { sweep_at };
        let due = tokio::time::sleep_until(next.into());
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = due => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps the failures of keys the round did not cover, and takes the
/// round's word for those it did; true when that changed anything.
fn record(broken: &mut Broken, done: &Done) -> bool {
    let before = broken.len();
    broken.retain(|k, _| !done.covered.contains(k));
    let changed = broken.len() != before || !done.failed.is_empty();
    for (op, e) in &done.failed {
        broken
            .entry(op.key())
            .or_default()
            .push(format!("{op}: {e}"));
    }
    changed
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
            let vips: BTreeSet<IpAddr> = (*d.vips).clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str) -> Arc<lb_proto::model::Service> {
        let wire = super::super::accept::tests::wire(name, vip, "rr");
        Arc::new(lb_proto::model::Service::try_from(wire).expect("valid"))
    }

    /// Followed change by change, the index equals one built from scratch:
    /// a service added, one removed, one moved to another address.
    #[test]
    fn the_index_by_key_follows_a_change_as_if_built_again() {
        let (a, b, c) = (
            service("a", "10.0.0.1"),
            service("b", "10.0.0.2"),
            service("c", "10.0.0.3"),
        );
        let last = Services::new(imbl::Vector::from(vec![a.clone(), b.clone(), c]));
        let mut followed = ByKey::default();
        followed.of(&last);
        let now = Services::new(imbl::Vector::from(vec![
            a,
            service("b", "10.0.0.9"),
            service("d", "10.0.0.4"),
        ]));
        let c = changed(&last, &now);
        followed.follow(&last, &c, &now);
        let mut built = ByKey::default();
        built.of(&now);
        assert_eq!(followed.index, built.index);
        assert!(followed.of.as_ref().is_some_and(|o| Arc::ptr_eq(o, &now)));
        // An index of another configuration is left to be built again.
        let mut other = ByKey::default();
        other.of(&now);
        other.follow(&last, &c, &now);
        assert_eq!(other.index, built.index);
    }
}
