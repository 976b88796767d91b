//! The VIP loop: keeps the interface's VIP addresses equal to what the
//! lease allows (adding one only once its services are programmed),
//! announces each VIP it takes, and runs the IPVS sync daemons.
//!
//! It records the addresses it put on the interface in the lease
//! (`Lease::added`, saved in the lease file), so that an address whose
//! service was deleted — or readdressed, also while the agent was down — is
//! still known to be its own and taken off.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lb_hostnet::{Link, Rtnl};
use lb_proto::model::Service;
use tokio::sync::{watch, Notify};

use super::{Desired, SyncConfig};
use crate::ipvs::{Ipvs, IpvsError, SyncDaemon, SyncRole};
use crate::lease::Lease;
use crate::lease_file::LeaseFile;
use crate::vip::{converge, AnnounceConfig, Announcements};

/// The VIP addresses of the desired configuration.
fn managed_vips(desired: &Option<Desired>) -> BTreeSet<IpAddr> {
    desired
        .as_ref()
        .map(|d| d.services.iter().filter_map(Service::vip).collect())
        .unwrap_or_default()
}

/// What the VIP loop changes on the host.
pub(super) struct Host {
    pub(super) rtnl: Rtnl,
    pub(super) link: Link,
    /// A connection of its own, for the sync daemons.
    pub(super) ipvs: Ipvs,
    pub(super) announce: AnnounceConfig,
    pub(super) sync: Option<SyncConfig>,
}

impl Host {
    /// Addresses, then sync daemons; returns the VIPs newly added and the
    /// managed VIPs now on the interface.
    fn converge(
        &self,
        managed: &BTreeSet<IpAddr>,
        held: &BTreeSet<IpAddr>,
        ready: &BTreeSet<IpAddr>,
    ) -> Result<(Vec<IpAddr>, BTreeSet<IpAddr>), String> {
        let out = converge(&self.rtnl, self.link.index, managed, held, ready)
            .map_err(|e| e.to_string())?;
        if let Some(sync) = &self.sync {
            self.converge_sync(sync, !held.is_empty())
                .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// Backup always (to take over connections when a VIP moves here),
    /// master while this director holds a VIP.
    fn converge_sync(&self, sync: &SyncConfig, master: bool) -> Result<(), IpvsError> {
        let daemon = |role| SyncDaemon {
            role,
            interface: sync.interface.clone(),
            sync_id: sync.sync_id,
        };
        let mut want = vec![daemon(SyncRole::Backup)];
        if master {
            want.push(daemon(SyncRole::Master));
        }
        let running = self.ipvs.daemons()?;
        for d in running.iter().filter(|d| !want.contains(d)) {
            self.ipvs.stop_daemon(d.role)?;
            tracing::info!(daemon = %d, "sync daemon stopped");
        }
        for d in want.iter().filter(|d| !running.contains(d)) {
            self.ipvs.start_daemon(d)?;
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
                Ok(()) => tracing::debug!(vip = %vip, "announced"),
                Err(e) => tracing::warn!(vip = %vip, error = %e, "announcing the VIP"),
            }
        }
    }
}

/// Records the managed VIPs on the interface in the lease (and its file);
/// when one went away, every stream reports at once — a hand-over waits on
/// that report.
fn record(
    lease: &Mutex<Lease>,
    present: BTreeSet<IpAddr>,
    file: &LeaseFile,
    report_now: &watch::Sender<u64>,
) {
    let (saved, removed) = {
        let mut l = lease.lock().unwrap_or_else(PoisonError::into_inner);
        if l.added == present {
            return;
        }
        let removed = l.added.difference(&present).next().is_some();
        l.added = present;
        (l.clone(), removed)
    };
    if let Err(e) = file.save(&saved) {
        tracing::warn!(error = %e, "saving the lease");
    }
    if removed {
        report_now.send_modify(|n| *n += 1);
    }
}

/// Keeps the interface's VIP addresses equal to what the lease allows,
/// checking often enough that an expired lease drops the address within a
/// tick, and announces the VIPs it takes.
pub(super) async fn run(
    host: Host,
    desired: watch::Receiver<Option<Desired>>,
    programmed: watch::Receiver<BTreeSet<IpAddr>>,
    (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
    (lease_file, report_now): (LeaseFile, Arc<watch::Sender<u64>>),
    mut stop: watch::Receiver<bool>,
) -> bool {
    let host = Arc::new(host);
    let tick = Duration::from_millis(20);
    let mut last: Option<(BTreeSet<IpAddr>, BTreeSet<IpAddr>, BTreeSet<IpAddr>)> = None;
    let mut last_check = std::time::Instant::now();
    let mut announcements = Announcements::default();
    loop {
        let stopping = *stop.borrow();
        let now = std::time::Instant::now();
        // VIPs this agent (or the previous process) put on the interface
        // are its own to remove, even when no configuration names them now.
        let mut managed = managed_vips(&desired.borrow());
        let held: BTreeSet<IpAddr> = {
            let l = lease.lock().unwrap_or_else(PoisonError::into_inner);
            managed.extend(l.added.iter().copied());
            if stopping {
                BTreeSet::new()
            } else {
                l.held(now).into_keys().collect()
            }
        };
        let ready = programmed.borrow().clone();
        // Ask the kernel on every change, and every second to repair hand edits.
        let state = (managed, held, ready);
        let mut converged = false;
        if last.as_ref() != Some(&state)
            || stopping
            || last_check.elapsed() > Duration::from_secs(1)
        {
            let h = host.clone();
            let (m, hd, r) = state.clone();
            match tokio::task::spawn_blocking(move || h.converge(&m, &hd, &r)).await {
                Ok(Ok((added, present))) => {
                    for vip in added {
                        announcements.taken(vip, now, &host.announce);
                    }
                    record(&lease, present, &lease_file, &report_now);
                    last = Some(state.clone());
                    converged = true;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "VIP addresses"),
                Err(e) => tracing::warn!(error = %e, "VIP task"),
            }
            last_check = std::time::Instant::now();
        }
        if stopping {
            // Whether the VIPs are gone.
            return converged;
        }
        let due = announcements.due(now, &state.1, &host.announce);
        if !due.is_empty() {
            let h = host.clone();
            let _ = tokio::task::spawn_blocking(move || h.announce(&due)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = lease_changed.notified() => {}
            _ = stop.changed() => {}
        }
    }
}
