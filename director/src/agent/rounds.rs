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

use super::accept::by_name;
use super::ServiceList;
use crate::desired::{self, Table};
use crate::forwarding;
use crate::ipvs::{Ipvs, IpvsError, ServiceKey};
use crate::marks::{MarkChange, Marks};
use crate::reconcile::{apply, observe_counted, observe_keys, plan, Counted, Op, Plan};

/// The services a sweep's slice reads back (each with its destinations):
/// a change that arrives meanwhile waits for one slice at most.
pub(super) const SLICE: usize = 50;

/// What a new revision changed, found by comparing the services with the
/// last round's: a revision keeps the `Arc` of every service it did not
/// change ([`super::accept::accept`]), so this is a pointer walk.
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

pub(super) fn changed(last: &ServiceList, now: &ServiceList) -> Changed {
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

/// [`changed`] when the services that may differ are known by name (a
/// delta from the revision `last` holds): a lookup each, not a walk.
pub(super) fn changed_named(
    last: &ServiceList,
    now: &ServiceList,
    names: &BTreeSet<String>,
) -> Changed {
    let mut out = Changed::default();
    for name in names {
        match (by_name(last, name), by_name(now, name)) {
            (Some(x), Some(y)) if !Arc::ptr_eq(x, y) && x != y => {
                out.before.push(Arc::clone(x));
                out.now.push(Arc::clone(y));
            }
            (Some(x), None) => out.before.push(Arc::clone(x)),
            (None, Some(y)) => out.now.push(Arc::clone(y)),
            _ => {}
        }
    }
    out
}

/// One reconcile round.
pub(super) enum Round {
    /// The whole table at once (the first round).
    Full,
    /// Only the services a new revision changed.
    Changes(Changed),
    /// A slice of the sweep: these keys read back and repaired to `want`
    /// (the configured services among them); the first slice of a sweep
    /// also lists the kernel's services (`list`), so that the sweep covers
    /// the foreign ones and those left from before, and checks the host's
    /// side (forwarding, mark rules, addresses) once per sweep.
    Slice {
        keys: Vec<ServiceKey>,
        want: Vec<Arc<Service>>,
        list: bool,
    },
}

impl Round {
    /// Whether the round also brings the host's side (forwarding sysctls,
    /// the fwmark rules, this host's addresses) in line: the first round, a
    /// change to more than realservers, and once per sweep — not every
    /// slice or weight change, each a walk over every service and an `nft`
    /// run.
    pub(super) fn host(&self) -> bool {
        match self {
            Round::Full => true,
            // Realservers alone (the usual change) touch none of it.
            Round::Changes(c) => {
                c.before.len() != c.now.len()
                    || c.before
                        .iter()
                        .zip(&c.now)
                        .any(|(a, b)| !backends_only(a, b))
            }
            Round::Slice { list, .. } => *list,
        }
    }
}

/// Whether two versions of a service differ in their realservers only.
fn backends_only(a: &Service, b: &Service) -> bool {
    let bare = |s: &Service| Service {
        realservers: Vec::new(),
        ..s.clone()
    };
    a.name == b.name && bare(a) == bare(b)
}

/// What lbfabric manages after a round: the whole set (a full round), or
/// the covered keys it no longer wants and those it wants.
pub(super) enum Managed {
    All(BTreeSet<ServiceKey>),
    Keys {
        gone: Vec<ServiceKey>,
        wanted: Vec<ServiceKey>,
    },
}

impl Managed {
    /// Brings `managed` up to date; true when it changed.
    pub(super) fn update(self, managed: &mut Arc<BTreeSet<ServiceKey>>) -> bool {
        match self {
            Managed::All(all) => {
                let changed = **managed != all;
                *managed = Arc::new(all);
                changed
            }
            Managed::Keys { gone, wanted } => {
                let stays_same = gone.iter().all(|k| !managed.contains(k))
                    && wanted.iter().all(|k| managed.contains(k));
                if stays_same {
                    return false;
                }
                let m = Arc::make_mut(managed);
                for k in &gone {
                    m.remove(k);
                }
                m.extend(wanted);
                true
            }
        }
    }
}

/// The host's side, as a round that checked it found it.
pub(super) struct Host {
    pub(super) errors: Vec<String>,
    pub(super) marks_changed: bool,
    pub(super) marks_ok: bool,
    pub(super) own: Vec<String>,
}

/// What a round did.
pub(super) struct Done {
    /// The keys the round covered, and lbfabric's keys after it.
    pub(super) covered: Covered,
    pub(super) managed: Managed,
    pub(super) plan: Plan,
    pub(super) failed: Vec<(Op, IpvsError)>,
    /// The host's side, when the round checked it ([`Round::host`]).
    pub(super) host: Option<Host>,
    /// The counters read (full rounds and slices).
    pub(super) counted: BTreeMap<ServiceKey, Counted>,
    /// Every key the kernel has (a slice that listed them).
    pub(super) listed: Option<Vec<ServiceKey>>,
    /// A slice's keys left unread (it gave way to a change).
    pub(super) unread: Vec<ServiceKey>,
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

/// Runs one round (blocking: netlink and nft). A slice stops reading at
/// the first service after `interrupted` says so (a change is waiting):
/// the keys it did not read are in [`Done::unread`], for a later slice.
pub(super) fn reconcile(
    ipvs: &Ipvs,
    marks: &Mutex<Marks>,
    services: &ServiceList,
    round: Round,
    (managed, interrupted): (&BTreeSet<ServiceKey>, &dyn Fn() -> bool),
) -> Result<Done, IpvsError> {
    let mut listed = None;
    let mut unread = Vec::new();
    let host = round.host();
    let (covered, plan, counted, managed): Planned = match round {
        Round::Full => {
            let want = desired::table(services.iter().map(|s| &**s));
            let (observed, counted) = observe_counted(ipvs)?;
            let p = plan(&want, &observed, managed);
            let all = Managed::All(want.keys().copied().collect());
            (Covered::All, p, counted, all)
        }
        Round::Changes(c) => {
            let want = desired::table(c.now.iter().map(|s| &**s));
            let keys = c
                .before
                .iter()
                .map(|s| desired::key(&s.address))
                .chain(want.keys().copied())
                .collect();
            let (keys, mut p, _, now) = for_keys(ipvs, want, keys, managed, &|| false)?;
            // Foreign services are the sweep's to tell.
            p.foreign.clear();
            (keys, p, BTreeMap::new(), now)
        }
        Round::Slice { keys, want, list } => {
            if list {
                listed = Some(ipvs.services()?.into_iter().map(|s| s.spec.key).collect());
            }
            let keys: BTreeSet<ServiceKey> = keys.into_iter().collect();
            let want = desired::table(want.iter().map(|s| &**s));
            let planned = for_keys(ipvs, want, keys.clone(), managed, interrupted)?;
            if let Covered::Keys(read) = &planned.0 {
                unread = keys.difference(read).copied().collect();
            }
            planned
        }
    };
    let failed = apply(ipvs, &plan);
    Ok(Done {
        covered,
        managed,
        plan,
        failed,
        host: host.then(|| host_side(marks, services)),
        counted,
        listed,
        unread,
    })
}

/// Forwarding for NAT services, then the fwmark rules (after the services:
/// a mark with no IPVS service yet would only send packets to the local
/// stack), then this host's addresses.
fn host_side(marks: &Mutex<Marks>, all: &ServiceList) -> Host {
    let services: Vec<&Service> = all.iter().map(|s| &**s).collect();
    let services = services.as_slice();
    let mut errors = forwarding::ensure_for(services);
    let marked = marks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .converge(services);
    let marks_ok = marked.is_ok();
    let marks_changed = match marked {
        Ok(change) => change != MarkChange::None,
        Err(e) => {
            errors.push(e.to_string());
            false
        }
    };
    Host {
        errors,
        marks_changed,
        marks_ok,
        own: own_addresses(all),
    }
}

/// What a round read and plans: the keys it covers, the operations, the
/// counters read, and what lbfabric manages after it.
type Planned = (Covered, Plan, BTreeMap<ServiceKey, Counted>, Managed);

/// Reads back the services with `keys` and plans what makes them `want`
/// (whose keys are among them); lbfabric manages, after it, what it did
/// before outside `keys`, and `want`'s. Costs the keys, not the table.
fn for_keys(
    ipvs: &Ipvs,
    mut want: Table,
    keys: BTreeSet<ServiceKey>,
    managed: &BTreeSet<ServiceKey>,
    enough: &dyn Fn() -> bool,
) -> Result<Planned, IpvsError> {
    let (observed, counted, keys) = observe_keys(ipvs, &keys, enough)?;
    // Only what was read back is compared.
    want.retain(|k, _| keys.contains(k));
    let previously: BTreeSet<ServiceKey> = keys
        .iter()
        .filter(|k| managed.contains(k))
        .copied()
        .collect();
    let p = plan(&want, &observed, &previously);
    let managed = Managed::Keys {
        gone: keys
            .iter()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect(),
        wanted: want.keys().copied().collect(),
    };
    Ok((Covered::Keys(keys), p, counted, managed))
}

/// The VIPs whose services are all programmed — none with a failed
/// operation (`broken`) — and, for fwmark services naming their VIP, whose
/// mark rules are in place.
pub(super) fn programmed_vips(
    services: &ServiceList,
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
pub(super) fn own_addresses(services: &ServiceList) -> Vec<String> {
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
        let wire = super::super::accept::tests::wire(name, vip, "rr");
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
        let last = ServiceList::from(vec![a.clone(), b.clone(), c.clone()]);
        // b moved to another VIP, c gone, d new; a kept (the same Arc), and
        // an equal copy of it counts as unchanged too.
        let b2 = service("b", "10.0.0.20");
        let now = ServiceList::from(vec![Arc::new((*a).clone()), b2, service("d", "10.0.0.4")]);
        let c = changed(&last, &now);
        assert_eq!(names(&c.before), ["b", "c"]);
        assert_eq!(names(&c.now), ["b", "d"]);
        assert!(changed(&last, &last).before.is_empty());
        // By name, from a delta's names (a superset, "a" among them): the same.
        let named: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
        let c = changed_named(&last, &now, &named);
        assert_eq!(names(&c.before), ["b", "c"]);
        assert_eq!(names(&c.now), ["b", "d"]);
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
        let all = ServiceList::from(vec![web.clone(), api.clone(), dns]);
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
