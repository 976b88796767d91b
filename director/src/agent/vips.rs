//! The VIP loop: keeps the interface's VIP addresses equal to what the
//! lease allows (adding one only once its services are programmed),
//! announces each VIP it takes, and runs the IPVS sync daemons.
//!
//! It records the addresses it put on the interface in the lease
//! (`Lease::added`, saved in the lease file), so that an address whose
//! service was deleted — or readdressed, also while the agent was down — is
//! still known to be its own and taken off.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_hostnet::{Link, Rtnl};
use tokio::sync::{watch, Notify};

use super::reconciler::QUIET_AFTER_CHANGE;
use super::{Desired, SyncConfig};
use crate::fence::Fence;
use crate::hook::{Event, Hooks, VipChange, VipState};
use crate::ipvs::{Ipvs, IpvsError, SyncDaemon, SyncRole};
use crate::lease::Lease;
use crate::lease_file::LeaseFile;
use crate::vip::{self, AnnounceConfig, Announcements, Lifetimes};

/// A fence refresh slower than this is redone (see [`Host::refresh_fence`]):
/// far beyond one `nft` run on a busy host (milliseconds natively, under a
/// second in the emulated VM), so only a stall pays for a second run.
const FENCE_REDO_AFTER: Duration = Duration::from_secs(1);

/// How often the VIP loop reads the interface's addresses to repair hand
/// edits, when nothing else made it.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A VIP loop round slower than this is reported as a stall.
const STALLED: Duration = Duration::from_secs(2);

/// How often the fence and the address lifetimes are renewed: every third
/// of the shortest lease `left` (`None`: nothing is held).
fn renewal_interval(left: &BTreeMap<IpAddr, Duration>) -> Option<Duration> {
    left.values().min().map(|d| *d / 3)
}

/// What each lease in `ends` has left now (those run out left out).
fn left(ends: &BTreeMap<IpAddr, Instant>) -> BTreeMap<IpAddr, Duration> {
    let now = Instant::now();
    ends.iter()
        .map(|(vip, until)| (*vip, until.saturating_duration_since(now)))
        .filter(|(_, left)| !left.is_zero())
        .collect()
}

/// What the VIP loop changes on the host.
pub(super) struct Host {
    pub(super) rtnl: Rtnl,
    pub(super) link: Link,
    /// A connection of its own, for the sync daemons (none with `--no-ipvs`).
    pub(super) ipvs: Option<Ipvs>,
    pub(super) announce: AnnounceConfig,
    pub(super) sync: Option<SyncConfig>,
    /// The kernel-enforced end of each lease (see [`crate::fence`]).
    pub(super) fence: Mutex<Fence>,
    /// When the kernel ends each VIP address (see [`Lifetimes`]).
    pub(super) lifetimes: Mutex<Lifetimes>,
    /// The operator's hook, told of each VIP taken or given up.
    pub(super) hooks: Option<Hooks>,
    pub(super) metrics: Arc<super::metrics::Metrics>,
}

impl Host {
    /// Addresses that go first, then the fence (which lets a VIP through
    /// before its address appears and stops it before the kernel would),
    /// then the addresses held, then sync daemons; returns the managed VIPs
    /// now on the interface and how many due lifetimes are left to renew,
    /// and puts those newly added in `added` (also when a later step fails:
    /// they are announced all the same). `ends` are the leases' ends: what
    /// is left of each is taken just before each step, so that a step that
    /// comes late (this process stalled half-way) does not hand the kernel
    /// a lease that has run out meanwhile. The fence is set when `fence`;
    /// the due address lifetimes are renewed when `renew` is given, until
    /// it says to give way.
    fn converge(
        &self,
        managed: &BTreeSet<IpAddr>,
        ends: &BTreeMap<IpAddr, Instant>,
        (ready, fence, renew): (&BTreeSet<IpAddr>, bool, Option<&dyn Fn() -> bool>),
        added: &mut Vec<IpAddr>,
    ) -> Result<(BTreeSet<IpAddr>, usize), String> {
        let index = self.link.index;
        let on = vip::on_interface(&self.rtnl, index).map_err(|e| e.to_string())?;
        let mut present: BTreeSet<IpAddr> = on.intersection(managed).copied().collect();
        vip::remove_unheld(&self.rtnl, index, managed, &left(ends), &mut present)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        if fence {
            self.refresh_fence(managed, ends)?;
        }
        let fenced = Instant::now();
        let held = left(ends);
        let interval = renewal_interval(&held).unwrap_or_default();
        let mut lifetimes = self
            .lifetimes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lifetimes.retain(&present);
        let due: BTreeSet<IpAddr> = held
            .iter()
            .filter(|(vip, left)| renew.is_some() && lifetimes.due(vip, fenced, **left, interval))
            .map(|(vip, _)| *vip)
            .collect();
        let give: BTreeMap<IpAddr, Duration> = held
            .iter()
            .map(|(vip, left)| (*vip, Lifetimes::lifetime(*left, interval)))
            .collect();
        let left_due = vip::put_held(
            &self.rtnl,
            index,
            (&give, ready, &due),
            (&mut present, added),
            (&mut lifetimes, renew.unwrap_or(&|| false)),
        )
        .map_err(|e| e.to_string())?;
        // With 1,000 VIPs a renewal is the director's largest periodic work.
        tracing::debug!(
            fence,
            due = due.len(),
            left_due,
            fence_us = (fenced - started).as_micros() as u64,
            addresses_us = fenced.elapsed().as_micros() as u64,
            "VIP addresses converged"
        );
        if let Some(sync) = &self.sync {
            self.converge_sync(sync, !held.is_empty())
                .map_err(|e| e.to_string())?;
        }
        Ok((present, left_due))
    }

    /// Sets the fence to the leases' `ends`. The kernel counts an element's
    /// timeout from when it applies the script, so a refresh that took
    /// long (this process stalled while `nft` ran) may have set a lease
    /// past its end by that long: it is done again at once, with what is
    /// left now.
    fn refresh_fence(
        &self,
        managed: &BTreeSet<IpAddr>,
        ends: &BTreeMap<IpAddr, Instant>,
    ) -> Result<(), String> {
        let mut fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        fence.set(managed, &left(ends)).map_err(|e| e.to_string())?;
        let took = started.elapsed();
        if took > FENCE_REDO_AFTER {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "the fence refresh was late: done again"
            );
            fence.set(managed, &left(ends)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn remove_fence(&self) {
        let mut fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = fence.remove() {
            tracing::warn!(error = %e, "removing the VIP fence");
        }
    }

    /// Backup always (to take over connections when a VIP moves here),
    /// master while this director holds a VIP.
    fn converge_sync(&self, sync: &SyncConfig, master: bool) -> Result<(), IpvsError> {
        let Some(ipvs) = &self.ipvs else {
            return Ok(()); // `--no-ipvs` rules out `--sync-interface`
        };
        let daemon = |role| SyncDaemon {
            role,
            interface: sync.interface.clone(),
            sync_id: sync.sync_id,
        };
        let mut want = vec![daemon(SyncRole::Backup)];
        if master {
            want.push(daemon(SyncRole::Master));
        }
        let running = ipvs.daemons()?;
        for d in running.iter().filter(|d| !want.contains(d)) {
            ipvs.stop_daemon(d.role)?;
            tracing::info!(daemon = %d, "sync daemon stopped");
        }
        for d in want.iter().filter(|d| !running.contains(d)) {
            ipvs.start_daemon(d)?;
            tracing::info!(daemon = %d, "sync daemon started");
        }
        Ok(())
    }

    fn announce(&self, vips: &[IpAddr]) {
        let Some(mac) = self.link.mac else {
            return; // loopback and other links without neighbours
        };
        for vip in vips {
            match lb_hostnet::announce::announce(self.link.index, mac, *vip) {
                Ok(()) => {
                    self.metrics.announced(*vip);
                    tracing::debug!(vip = %vip, "announced");
                }
                Err(e) => tracing::warn!(vip = %vip, error = %e, "announcing the VIP"),
            }
        }
    }
}

/// Records the managed VIPs on the interface in the lease (and its file),
/// and tells the hook of each VIP that came or went; when one went away,
/// every stream reports at once — a hand-over waits on that report.
fn record(
    lease: &Mutex<Lease>,
    present: BTreeSet<IpAddr>,
    (file, hooks): (&LeaseFile, Option<&Hooks>),
    report_now: &watch::Sender<u64>,
) {
    let removed = {
        let mut l = lease.lock().unwrap_or_else(PoisonError::into_inner);
        if l.added == present {
            return;
        }
        let gone: Vec<IpAddr> = l.added.difference(&present).copied().collect();
        if let Some(hooks) = hooks {
            let (master, backup) = (VipState::Master, VipState::Backup);
            let taken = present.difference(&l.added).map(|v| (*v, backup, master));
            for (vip, old, new) in taken.chain(gone.iter().map(|v| (*v, master, backup))) {
                let epoch = l.last_epoch(vip);
                let _ = hooks.send(Event::Vip(VipChange {
                    vip,
                    old,
                    new,
                    epoch,
                }));
            }
        }
        l.added = present;
        !gone.is_empty()
    };
    if let Err(e) = file.save_current(lease) {
        tracing::warn!(error = %e, "saving the lease");
    }
    if removed {
        report_now.send_modify(|n| *n += 1);
    }
}

/// Whether a new configuration has other VIPs than `read` (the VIPs of the
/// one read last); one with the same (most changes: a realserver, a
/// weight) is marked seen. The session keeps the VIPs' `Arc` while they
/// stay the same, so this is a pointer comparison: reading the lease again
/// for each such change cost milliseconds of an emulated CPU with 1,000
/// VIPs, right when the reconciler programs the change.
fn vips_changed(
    desired: &mut watch::Receiver<Option<Desired>>,
    read: &Option<Arc<BTreeSet<IpAddr>>>,
) -> bool {
    match desired.has_changed() {
        Ok(false) => false,
        Err(_) => true,
        Ok(true) => {
            let now = desired.borrow_and_update();
            let vips = now.as_ref().map(|d| &d.vips);
            match (vips, read) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
                (None, None) => false,
                _ => true,
            }
        }
    }
}

/// What one round wants: the VIPs this director guards (may ever hold),
/// those it holds with their lease end, and those whose services are in the
/// kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    /// The configuration's VIPs (see [`vips_changed`]).
    vips: Option<Arc<BTreeSet<IpAddr>>>,
    managed: BTreeSet<IpAddr>,
    held: BTreeMap<IpAddr, Instant>,
    ready: BTreeSet<IpAddr>,
    /// The first of the `held` leases to end.
    first_end: Option<Instant>,
}

impl Wanted {
    fn read(
        desired: &mut watch::Receiver<Option<Desired>>,
        programmed: &mut watch::Receiver<BTreeSet<IpAddr>>,
        lease: &Mutex<Lease>,
        now: Instant,
    ) -> Wanted {
        // VIPs this agent (or the previous process) put on the interface
        // are its own to remove, even when no configuration names them now.
        let vips = desired.borrow_and_update().as_ref().map(|d| d.vips.clone());
        let mut managed: BTreeSet<IpAddr> = vips.as_deref().cloned().unwrap_or_default();
        let held: BTreeMap<IpAddr, Instant> = {
            let l = lease.lock().unwrap_or_else(PoisonError::into_inner);
            managed.extend(l.added.iter().copied());
            l.holding(now)
                .into_iter()
                .map(|(vip, (_, until))| (vip, until))
                .collect()
        };
        Wanted {
            vips,
            managed,
            first_end: held.values().min().copied(),
            held,
            ready: programmed.borrow_and_update().clone(),
        }
    }

    /// The same VIPs, whatever their lease ends.
    fn same_sets(&self, other: &Wanted) -> bool {
        self.managed == other.managed
            && self.ready == other.ready
            && self.held.keys().eq(other.held.keys())
    }
}

/// Keeps the interface's VIP addresses and the fence equal to what the
/// lease allows, checking often enough that an expired lease drops the
/// address within a tick, and announces the VIPs it takes. The fence and
/// the addresses' lifetimes are renewed every third of the shortest lease
/// left (up to half that later while configuration changes keep coming),
/// so the kernel ends them itself if this loop stalls.
///
/// On `stop`: with nothing held any more (handed over), the addresses and
/// the fence go and it returns true; otherwise they stay for the kernel to
/// end at the lease end (a restart continues them) and it returns false.
pub(super) async fn run(
    host: Host,
    mut desired: watch::Receiver<Option<Desired>>,
    mut programmed: watch::Receiver<BTreeSet<IpAddr>>,
    (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
    (lease_file, report_now): (LeaseFile, Arc<watch::Sender<u64>>),
    mut stop: watch::Receiver<bool>,
) -> bool {
    let host = Arc::new(host);
    let tick = Duration::from_millis(20);
    let mut last: Option<Wanted> = None;
    let mut last_check = Instant::now();
    let mut refresh_at = Instant::now();
    let mut refresh_by = refresh_at;
    let mut announcements = Announcements::default();
    let mut announce_at = Instant::now();
    let mut round = Instant::now();
    // What the lease allows changes only when a grant comes (the sessions
    // wake this loop), a lease runs out, the configuration's VIPs or the
    // programmed VIPs change, or this loop changed the interface: only then
    // is it read again. With 1,000 VIPs a reading costs milliseconds under
    // an emulated CPU; fifty a second took a quarter of one from the
    // reconciler.
    let mut woken = true;
    let mut retry = false;
    let mut wanted = Wanted::read(&mut desired, &mut programmed, &lease, Instant::now());
    // When the last configuration update came, and until when a renewal
    // of the address lifetimes that is due may still wait for a gap in
    // them (see `Lifetimes`).
    let mut updates = desired.clone();
    let mut last_update: Option<Instant> = None;
    let mut renew_by: Option<Instant> = None;
    let mut held: BTreeSet<IpAddr> = BTreeSet::new();
    loop {
        let stopping = *stop.borrow();
        let now = Instant::now();
        // A round far longer than a tick and a kernel update means this
        // process did not run (CPU starvation, a frozen host or VM): leases
        // may have ended meanwhile and the kernel dropped their addresses.
        // Said, since the operator otherwise sees a VIP flap with nothing
        // wrong elsewhere.
        let late = now.duration_since(round);
        if late > STALLED {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "this agent was stalled: VIP leases may have ended meanwhile"
            );
        }
        round = now;
        if updates.has_changed().unwrap_or(false) {
            updates.mark_unchanged();
            last_update = Some(now);
        }
        // The fence and the address lifetimes are renewed on time while no
        // configuration change comes, as the reconciler's sweep is: with
        // 1,000 VIPs a refresh took 3–4 ms of the VM's emulated CPUs, and
        // the changes that met it were among the slowest. A change that
        // keeps coming makes it wait up to half a renewal interval (see
        // `refresh_by`); the fence's slots then still have half a lease left.
        let quiet = last_update.is_none_or(|t| now.duration_since(t) >= QUIET_AFTER_CHANGE);
        let refresh = now >= refresh_at && (quiet || now >= refresh_by);
        // The session wakes this loop for grants that change what is held,
        // not for those that only move the ends on: those are read for a
        // refresh, which sets the kernel's ends from them.
        let stale = std::mem::take(&mut woken)
            || refresh
            || stopping
            || vips_changed(&mut desired, &wanted.vips)
            || programmed.has_changed().unwrap_or(true)
            || wanted.first_end.is_some_and(|end| now >= end);
        if stale {
            wanted = Wanted::read(&mut desired, &mut programmed, &lease, now);
            held = wanted.held.keys().copied().collect();
        }
        if stopping && !wanted.held.is_empty() {
            tracing::info!(vips = ?left(&wanted.held), "keeping the VIPs held until their lease ends: the kernel drops them then, unless a restarted agent continues the lease");
            let h = host.clone();
            let _ =
                tokio::task::spawn_blocking(move || h.refresh_fence(&wanted.managed, &wanted.held))
                    .await;
            return false;
        }
        // Ask the kernel on every change, before the fence or the lifetimes
        // run low, and every second to repair hand edits (every few while
        // changes keep coming: reading 1,000 addresses is not free either).
        let changed = (stale || retry) && !last.as_ref().is_some_and(|l| l.same_sets(&wanted));
        // Worked out only when a refresh or a change moves the next refresh
        // (1,000 leases read).
        let interval = (refresh || changed)
            .then(|| renewal_interval(&left(&wanted.held)))
            .flatten();
        // The address lifetimes that are due give way to configuration
        // changes (a burst from a script, an import, an orchestrator) within
        // the same budget: renewing 1,000 addresses took the VM's emulated
        // CPUs for half a second.
        if refresh && renew_by.is_none() {
            let half = interval.unwrap_or_default() / 2;
            renew_by = Some(refresh_by.min(now + half).max(now));
        }
        let renew = renew_by.is_some_and(|by| quiet || now >= by);
        let check = last_check.elapsed() > if quiet { CHECK_EVERY } else { 3 * CHECK_EVERY };
        if changed || refresh || renew || stopping || check {
            let h = host.clone();
            let w = wanted.clone();
            let (news, by) = (updates.clone(), renew_by);
            let done = tokio::task::spawn_blocking(move || {
                let mut added = Vec::new();
                // Until `by`, a renewal stops for a change that comes in.
                let gives_way = move || {
                    by.is_some_and(|by| Instant::now() < by) && news.has_changed().unwrap_or(false)
                };
                let r = h.converge(
                    &w.managed,
                    &w.held,
                    (
                        &w.ready,
                        refresh || changed,
                        renew.then_some(&gives_way as &dyn Fn() -> bool),
                    ),
                    &mut added,
                );
                (added, r)
            })
            .await;
            for vip in done.as_ref().map(|(added, _)| added).into_iter().flatten() {
                announcements.taken(*vip, now, &host.announce);
                announce_at = now;
            }
            match done.map(|(_, r)| r) {
                Ok(Ok((present, left_due))) => {
                    if renew && left_due == 0 {
                        renew_by = None;
                    }
                    record(
                        &lease,
                        present,
                        (&lease_file, host.hooks.as_ref()),
                        &report_now,
                    );
                    // Only a refresh moves the next one: the kernel's
                    // expiries are those of the last refresh.
                    if refresh || changed {
                        let interval = interval.unwrap_or(Duration::from_secs(1));
                        refresh_at = now + interval;
                        refresh_by = refresh_at + interval / 2;
                    }
                    last = Some(wanted.clone());
                    // What this did to the interface is read back next.
                    (woken, retry) = (true, false);
                    if stopping {
                        let h = host.clone();
                        let _ = tokio::task::spawn_blocking(move || h.remove_fence()).await;
                        return true;
                    }
                }
                Ok(Err(e)) => {
                    retry = true;
                    tracing::warn!(error = %e, "VIP addresses");
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(error = %e, "VIP task");
                }
            }
            last_check = Instant::now();
        }
        if stopping {
            return false;
        }
        if stale || now >= announce_at {
            let due = announcements.due(now, &held, &host.announce);
            announce_at = announcements
                .next_at()
                .unwrap_or(now + Duration::from_secs(3600));
            if !due.is_empty() {
                let h = host.clone();
                let _ = tokio::task::spawn_blocking(move || h.announce(&due)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = lease_changed.notified() => woken = true,
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(revision: u64, vips: &Arc<BTreeSet<IpAddr>>) -> Option<Desired> {
        Some(Desired {
            revision,
            services: Arc::default(),
            refused: Arc::default(),
            vips: vips.clone(),
            delta: None,
            below_quorum: Arc::default(),
            asked: Arc::default(),
        })
    }

    /// A new revision with the VIPs it had (the same `Arc`, or equal ones)
    /// leaves the lease unread; other VIPs, or a first configuration, do not.
    #[test]
    fn only_other_vips_make_the_loop_read_the_lease_again() {
        let one: Arc<BTreeSet<IpAddr>> = Arc::new(["10.0.0.1".parse().unwrap()].into());
        let (tx, mut rx) = watch::channel(None);
        tx.send_replace(desired(1, &one));
        assert!(vips_changed(&mut rx, &None), "the first configuration");
        let read = Some(one.clone());
        tx.send_replace(desired(2, &one));
        assert!(!vips_changed(&mut rx, &read), "a weight changed");
        assert!(!rx.has_changed().unwrap(), "and it is marked seen");
        tx.send_replace(desired(3, &Arc::new((*one).clone())));
        assert!(!vips_changed(&mut rx, &read), "equal VIPs, another Arc");
        let two = Arc::new(["10.0.0.2".parse().unwrap()].into());
        tx.send_replace(desired(4, &two));
        assert!(vips_changed(&mut rx, &read), "another VIP");
        assert!(!vips_changed(&mut rx, &read), "nothing new since");
    }
}
