//! The reconciler's rounds. A new revision costs what it changed: only the
//! services it names are read back and corrected ([`Round::Changes`]). The
//! drift repair reads the whole table, but in slices ([`Round::Slice`]) of
//! [`SLICE`] services spread over a sweep, so that a change never waits
//! behind a read of 10,000 services; the sweep also carries the counters
//! and the foreign services. The whole table at once ([`Round::Full`]) is
//! read only by the first round.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use lb_hostnet::Rtnl;
use lb_proto::model::Service;

use crate::desired::{self, Table};
use crate::forwarding;
use crate::ipvs::{Ipvs, IpvsError, ServiceKey};
use crate::marks::{MarkChange, Marks};
use crate::reconcile::{apply, observe_counted, observe_keys, plan, Counted, Op, Plan};

/// The services a sweep's slice reads back (each with its destinations).
pub(super) const SLICE: usize = 100;

/// What a new revision changed, found by comparing the services with the
/// last round's: a revision keeps the `Arc` of every service it did not
/// change ([`super::session::accept`]), so this is a pointer walk.
#[derive(Debug, Default)]
pub(super) struct Changed {
    /// The changed services as they were, and as they are now.
    pub(super) before: Vec<Arc<Service>>,
    pub(super) now: Vec<Arc<Service>>,
}

impl Changed {
    pub(super) fn is_empty(&self) -> bool {
        self.before.is_empty() && self.now.is_empty()
    }
}

pub(super) fn changed(last: &[Arc<Service>], now: &[Arc<Service>]) -> Changed {
    let mut out = Changed::default();
    let (mut a, mut b) = (last.iter().peekable(), now.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(x), Some(y)) if x.name == y.name => {
                if !Arc::ptr_eq(x, y) && x != y {
                    out.before.push(Arc::clone(x));
                    out.now.push(Arc::clone(y));
                }
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.name < y.name => {
                out.before.push(Arc::clone(x));
                a.next();
            }
            (Some(x), None) => {
                out.before.push(Arc::clone(x));
                a.next();
            }
            (_, Some(y)) => {
                out.now.push(Arc::clone(y));
                b.next();
            }
        }
    }
}

/// One reconcile round.
pub(super) enum Round {
    /// The whole table at once (the first round).
    Full,
    /// Only the services a new revision changed.
    Changes(Changed),
    /// A slice of the sweep: these keys read back and repaired; the first
    /// slice of a sweep also lists the kernel's services (`list`), so that
    /// the sweep covers the foreign ones and those left from before.
    Slice { keys: Vec<ServiceKey>, list: bool },
}

/// What a round did.
pub(super) struct Done {
    /// The keys the round covered, and lbfabric's keys after it.
    pub(super) covered: Covered,
    pub(super) managed: BTreeSet<ServiceKey>,
    pub(super) plan: Plan,
    pub(super) failed: Vec<(Op, IpvsError)>,
    pub(super) host_errors: Vec<String>,
    pub(super) marks_changed: bool,
    pub(super) marks_ok: bool,
    /// The counters read (full rounds and slices).
    pub(super) counted: BTreeMap<ServiceKey, Counted>,
    /// Every key the kernel has (a slice that listed them).
    pub(super) listed: Option<Vec<ServiceKey>>,
    pub(super) own: Vec<String>,
}

/// The keys a round read back and corrected.
pub(super) enum Covered {
    All,
    Keys(BTreeSet<ServiceKey>),
}

impl Covered {
    pub(super) fn contains(&self, key: &ServiceKey) -> bool {
        match self {
            Covered::All => true,
            Covered::Keys(k) => k.contains(key),
        }
    }
}

/// Runs one round (blocking: netlink and nft).
pub(super) fn reconcile(
    ipvs: &Ipvs,
    marks: &Mutex<Marks>,
    services: &[Arc<Service>],
    round: Round,
    managed: &BTreeSet<ServiceKey>,
) -> Result<Done, IpvsError> {
    let mut listed = None;
    let (covered, plan, counted, managed): Planned = match round {
        Round::Full => {
            let want = desired::table(services.iter().map(|s| &**s));
            let (observed, counted) = observe_counted(ipvs)?;
            let p = plan(&want, &observed, managed);
            (Covered::All, p, counted, want.keys().copied().collect())
        }
        Round::Changes(c) => {
            let want = desired::table(c.now.iter().map(|s| &**s));
            let keys = c
                .before
                .iter()
                .map(|s| desired::key(&s.address))
                .chain(want.keys().copied())
                .collect();
            let (keys, mut p, _, now) = for_keys(ipvs, want, keys, managed)?;
            // Foreign services are the sweep's to tell.
            p.foreign.clear();
            (keys, p, BTreeMap::new(), now)
        }
        Round::Slice { keys, list } => {
            if list {
                listed = Some(ipvs.services()?.into_iter().map(|s| s.spec.key).collect());
            }
            let keys: BTreeSet<ServiceKey> = keys.into_iter().collect();
            let want = desired::table(
                services
                    .iter()
                    .map(|s| &**s)
                    .filter(|s| keys.contains(&desired::key(&s.address))),
            );
            for_keys(ipvs, want, keys, managed)?
        }
    };
    let failed = apply(ipvs, &plan);
    let mut host_errors = forwarding::ensure_for(services);
    // Rules after services: a mark with no IPVS service yet would only send
    // packets to the local stack.
    let marked = marks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .converge(services);
    let marks_ok = marked.is_ok();
    let marks_changed = match marked {
        Ok(change) => change != MarkChange::None,
        Err(e) => {
            host_errors.push(e.to_string());
            false
        }
    };
    Ok(Done {
        covered,
        managed,
        own: own_addresses(services),
        plan,
        failed,
        host_errors,
        marks_changed,
        marks_ok,
        counted,
        listed,
    })
}

/// What a round read and plans: the keys it covers, the operations, the
/// counters read, and the keys lbfabric manages after it.
type Planned = (
    Covered,
    Plan,
    BTreeMap<ServiceKey, Counted>,
    BTreeSet<ServiceKey>,
);

/// Reads back the services with `keys` and plans what makes them `want`
/// (whose keys are among them); lbfabric manages, after it, what it did
/// before outside `keys`, and `want`'s.
fn for_keys(
    ipvs: &Ipvs,
    want: Table,
    keys: BTreeSet<ServiceKey>,
    managed: &BTreeSet<ServiceKey>,
) -> Result<Planned, IpvsError> {
    let (observed, counted) = observe_keys(ipvs, &keys)?;
    let previously: BTreeSet<ServiceKey> = managed.intersection(&keys).copied().collect();
    let p = plan(&want, &observed, &previously);
    let mut now: BTreeSet<ServiceKey> = managed.difference(&keys).copied().collect();
    now.extend(want.keys().copied());
    Ok((Covered::Keys(keys), p, counted, now))
}

/// The VIPs whose services are all programmed — none with a failed
/// operation (`broken`) — and, for fwmark services naming their VIP, whose
/// mark rules are in place.
pub(super) fn programmed_vips(
    services: &[Arc<Service>],
    broken: &BTreeMap<ServiceKey, Vec<String>>,
    marks_ok: bool,
) -> BTreeSet<IpAddr> {
    let ready = |s: &Service| {
        !broken.contains_key(&desired::key(&s.address)) && (s.mark_match.is_none() || marks_ok)
    };
    // One pass: a VIP is ready while every one of its services is.
    let mut vips: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for s in services {
        if let Some(vip) = s.vip() {
            *vips.entry(vip).or_insert(true) &= ready(s);
        }
    }
    vips.into_iter()
        .filter_map(|(vip, ok)| ok.then_some(vip))
        .collect()
}

/// This host's unicast addresses other than loopback, IPv6 link-local and
/// the services' VIPs (which move between directors).
pub(super) fn own_addresses(services: &[Arc<Service>]) -> Vec<String> {
    let vips: BTreeSet<IpAddr> = services.iter().filter_map(|s| s.vip()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str) -> Arc<Service> {
        let wire = super::super::session::tests::wire(name, vip, "rr");
        Arc::new(Service::try_from(wire).expect("valid"))
    }

    fn names(v: &[Arc<Service>]) -> Vec<&str> {
        v.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_new_revision_changes_only_the_services_it_names() {
        let (a, b, c) = (
            service("a", "10.0.0.1"),
            service("b", "10.0.0.2"),
            service("c", "10.0.0.3"),
        );
        let last = vec![a.clone(), b.clone(), c.clone()];
        // b moved to another VIP, c gone, d new; a kept (the same Arc), and
        // an equal copy of it counts as unchanged too.
        let b2 = service("b", "10.0.0.20");
        let now = vec![Arc::new((*a).clone()), b2, service("d", "10.0.0.4")];
        let c = changed(&last, &now);
        assert_eq!(names(&c.before), ["b", "c"]);
        assert_eq!(names(&c.now), ["b", "d"]);
        assert!(changed(&last, &last).before.is_empty());
    }

    #[test]
    fn a_vip_is_programmed_when_all_its_services_are() {
        let web = service("web", "10.0.0.1");
        let mut api = (*service("api", "10.0.0.1")).clone();
        if let lb_proto::model::VirtualAddress::Endpoint { port, .. } = &mut api.address {
            *port = 443;
        }
        let api = Arc::new(api);
        let dns = service("dns", "10.0.0.2");
        let all = [web.clone(), api.clone(), dns];
        let vips = |broken: &BTreeMap<ServiceKey, Vec<String>>| programmed_vips(&all, broken, true);
        let two: BTreeSet<IpAddr> =
            ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into();
        assert_eq!(vips(&BTreeMap::new()), two);
        let broken: BTreeMap<ServiceKey, Vec<String>> = [(
            desired::key(&api.address),
            vec!["add service: failed".into()],
        )]
        .into();
        assert_eq!(vips(&broken), ["10.0.0.2".parse().unwrap()].into());
    }
}
