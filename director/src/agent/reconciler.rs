//! The reconciler: compares the desired IPVS table with the kernel's on
//! every new configuration and every `resync` period, applies the
//! difference, keeps the fwmark services' mark rules, and records what it
//! did (and what it refused) for the next report. What it manages is kept
//! in the services file, so that a restarted agent still removes a service
//! deleted while it was down (see [`crate::services_file`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lb_hostnet::Rtnl;
use lb_proto::model::Service;
use tokio::sync::watch;

use super::{Desired, Progress};
use crate::ipvs::{Ipvs, IpvsError, ServiceKey};
use crate::marks::{MarkChange, Marks};
use crate::reconcile::{apply, observe_counted, plan};
use crate::services_file::ServicesFile;
use crate::{desired, forwarding, stats};

/// The VIPs whose services were all programmed by a reconcile round (and,
/// for fwmark services naming their VIP, whose mark rules are in place).
fn programmed_vips(
    services: &[Service],
    failed: &[(crate::reconcile::Op, IpvsError)],
    marks_ok: bool,
) -> BTreeSet<IpAddr> {
    let broken: BTreeSet<ServiceKey> = failed.iter().map(|(op, _)| op.key()).collect();
    let ready = |s: &Service| {
        !broken.contains(&desired::key(&s.address)) && (s.mark_match.is_none() || marks_ok)
    };
    let vips: BTreeSet<IpAddr> = services.iter().filter_map(Service::vip).collect();
    vips.into_iter()
        .filter(|v| services.iter().filter(|s| s.vip() == Some(*v)).all(ready))
        .collect()
}

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
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some(Desired {
            revision,
            services,
            refused,
        }) = current
        {
            let ipvs = ipvs.clone();
            let marks = marks.clone();
            let previously = managed.clone();
            let round = tokio::task::spawn_blocking(move || {
                let want = desired::table(&services);
                let (observed, counted) = observe_counted(&ipvs)?;
                let counters = stats::report(&services, &counted);
                let p = plan(&want, &observed, &previously);
                let failed = apply(&ipvs, &p);
                let mut host_errors = forwarding::ensure_for(&services);
                // Rules after services: a mark with no IPVS service yet
                // would only send packets to the local stack.
                let marked = marks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .converge(&services);
                let marks_ok = marked.is_ok();
                let marks_changed = match marked {
                    Ok(change) => change != MarkChange::None,
                    Err(e) => {
                        host_errors.push(e.to_string());
                        false
                    }
                };
                let ready = programmed_vips(&services, &failed, marks_ok);
                let own = own_addresses(&services);
                Ok::<_, IpvsError>((
                    want.keys().copied().collect::<BTreeSet<_>>(),
                    p,
                    failed,
                    host_errors,
                    ready,
                    marks_changed,
                    counters,
                    own,
                ))
            })
            .await;
            let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
            match round {
                Ok(Ok((keys, p, failed, host_errors, ready, marks_changed, counters, own))) => {
                    prog.addresses = own;
                    prog.stats = Some(Arc::new(counters));
                    prog.stats_round += 1;
                    programmed.send_if_modified(|vips| {
                        let now = ready;
                        let changed = *vips != now;
                        *vips = now;
                        changed
                    });
                    if managed != keys {
                        if let Err(e) = file.save(&keys) {
                            tracing::warn!(error = %e, "saving the services file");
                        }
                        managed = keys;
                    }
                    if !p.ops.is_empty() {
                        tracing::info!(
                            revision,
                            changes = p.ops.len(),
                            failed = failed.len(),
                            "reconciled"
                        );
                    }
                    prog.changes_applied +=
                        (p.ops.len() - failed.len()) as u64 + u64::from(marks_changed);
                    prog.errors = refused
                        .iter()
                        .cloned()
                        .chain(failed.iter().map(|(op, e)| format!("{op}: {e}")))
                        .chain(host_errors.iter().cloned())
                        .collect();
                    prog.foreign_services = p.foreign.iter().map(ToString::to_string).collect();
                    if prog.errors.is_empty() {
                        prog.applied_revision = revision;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the IPVS table failed");
                    prog.errors = vec![e.to_string()];
                }
                Err(e) => prog.errors = vec![format!("reconcile task: {e}")],
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
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
            let vips: BTreeSet<IpAddr> = d.services.iter().filter_map(Service::vip).collect();
            programmed.send_if_modified(|ready| std::mem::replace(ready, vips.clone()) != vips);
            let own = own_addresses(&d.services);
            let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
            prog.addresses = own;
            prog.errors = d.refused;
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

/// This host's unicast addresses other than loopback, IPv6 link-local and
/// the services' VIPs (which move between directors).
fn own_addresses(services: &[Service]) -> Vec<String> {
    let vips: BTreeSet<IpAddr> = services.iter().filter_map(Service::vip).collect();
    let Ok(all) = Rtnl::open().and_then(|r| r.addresses(0)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = all
        .into_iter()
        .map(|a| a.addr)
        .filter(|a| !a.is_loopback() && !vips.contains(a))
        .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .map(|a| a.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}
