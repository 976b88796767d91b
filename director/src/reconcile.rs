//! Desired vs observed IPVS table → the fewest operations that make the
//! kernel match, touching only what lbfabric manages.
//!
//! A kernel service is *managed* when its key is desired now or was desired
//! in the previous round (so removing a service from the configuration
//! removes it from the kernel); anything else is *foreign*: reported, never
//! changed. Nothing is ever flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::desired::{Entry, Table};
use crate::ipvs::{
    Change, Dest, DestSpec, Ipvs, IpvsError, Service, ServiceKey, ServiceSpec, Stats,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(ServiceSpec),
    UpdateService(ServiceSpec),
    DeleteService(ServiceKey),
    AddDest(ServiceKey, DestSpec),
    UpdateDest(ServiceKey, DestSpec),
    DeleteDest(ServiceKey, DestSpec),
}

impl Op {
    /// The service the operation changes.
    pub fn key(&self) -> ServiceKey {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => s.key,
            Op::DeleteService(k)
            | Op::AddDest(k, _)
            | Op::UpdateDest(k, _)
            | Op::DeleteDest(k, _) => *k,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = |d: &DestSpec| std::net::SocketAddr::new(d.addr, d.port);
        match self {
            Op::AddService(s) => write!(f, "add service {}", s.key),
            Op::UpdateService(s) => write!(f, "update service {}", s.key),
            Op::DeleteService(k) => write!(f, "delete service {k}"),
            Op::AddDest(k, d) => write!(f, "add destination {k} -> {}", dest(d)),
            Op::UpdateDest(k, d) => write!(f, "update destination {k} -> {}", dest(d)),
            Op::DeleteDest(k, d) => write!(f, "delete destination {k} -> {}", dest(d)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Kernel services lbfabric does not manage, left as they are.
    pub foreign: Vec<ServiceKey>,
}

/// Compares and returns the operations, in an order the kernel accepts:
/// services before their destinations, destinations before nothing else.
pub fn plan(desired: &Table, observed: &Table, previously: &BTreeSet<ServiceKey>) -> Plan {
    let mut out = Plan::default();
    for (key, want) in desired {
        match observed.get(key) {
            None => {
                out.ops.push(Op::AddService(want.spec.clone()));
                out.ops
                    .extend(want.dests.values().map(|d| Op::AddDest(*key, d.clone())));
            }
            Some(have) => {
                if have.spec != want.spec {
                    out.ops.push(Op::UpdateService(want.spec.clone()));
                }
                diff_dests(*key, want, have, &mut out.ops);
            }
        }
    }
    for key in observed.keys().filter(|k| !desired.contains_key(k)) {
        if previously.contains(key) {
            out.ops.push(Op::DeleteService(*key));
        } else {
            out.foreign.push(*key);
        }
    }
    out
}

fn diff_dests(key: ServiceKey, want: &Entry, have: &Entry, ops: &mut Vec<Op>) {
    for (dk, d) in &want.dests {
        match have.dests.get(dk) {
            None => ops.push(Op::AddDest(key, d.clone())),
            Some(h) if h != d => ops.push(Op::UpdateDest(key, d.clone())),
            Some(_) => {}
        }
    }
    for (dk, h) in &have.dests {
        if !want.dests.contains_key(dk) {
            ops.push(Op::DeleteDest(key, h.clone()));
        }
    }
}

/// Reads the whole table back from the kernel.
pub fn observe(ipvs: &Ipvs) -> Result<Table, IpvsError> {
    Ok(observe_counted(ipvs)?.0)
}

/// Reads back only the services with these keys (a change's, a sweep's
/// slice), with their counters: a change to one of 10,000 services costs a
/// few requests, not a dump of every service and its destinations. Stops
/// early once `enough` says so; returns what it read, and the keys read.
pub fn observe_keys(
    ipvs: &Ipvs,
    keys: &BTreeSet<ServiceKey>,
    enough: &dyn Fn() -> bool,
) -> Result<Observed, IpvsError> {
    let mut table = Table::new();
    let mut counted = BTreeMap::new();
    let mut read = BTreeSet::new();
    for key in keys {
        if !read.is_empty() && enough() {
            break;
        }
        read.insert(*key);
        let Some(s) = ipvs.service(key)? else {
            continue;
        };
        let dests = ipvs.dests(key)?;
        read_back(&mut table, &mut counted, s, dests);
    }
    Ok((table, counted, read))
}

/// What [`observe_keys`] read: the table, the counters, the keys.
pub type Observed = (Table, BTreeMap<ServiceKey, Counted>, BTreeSet<ServiceKey>);

/// Enters one service read from the kernel in the table and the counters.
fn read_back(
    table: &mut Table,
    counted: &mut BTreeMap<ServiceKey, Counted>,
    s: Service,
    dests: Vec<Dest>,
) {
    table.insert(
        s.spec.key,
        Entry {
            spec: s.spec.clone(),
            dests: dests
                .iter()
                .map(|d| (d.spec.key(), d.spec.clone()))
                .collect(),
        },
    );
    counted.insert(
        s.spec.key,
        Counted {
            stats: s.stats,
            dests,
        },
    );
}

/// The kernel's counters for one service and its destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub stats: Stats,
    pub dests: Vec<Dest>,
}

/// Reads the whole table back, with the counters of every entry (the same
/// dump carries both).
pub fn observe_counted(ipvs: &Ipvs) -> Result<(Table, BTreeMap<ServiceKey, Counted>), IpvsError> {
    let mut table = Table::new();
    let mut counted = BTreeMap::new();
    for s in ipvs.services()? {
        let dests = ipvs.dests(&s.spec.key)?;
        read_back(&mut table, &mut counted, s, dests);
    }
    Ok((table, counted))
}

impl Op {
    /// The request that carries the operation out.
    pub fn change(&self) -> Change {
        match self {
            Op::AddService(s) => Change::add_service(s),
            Op::UpdateService(s) => Change::update_service(s),
            Op::DeleteService(k) => Change::delete_service(k),
            Op::AddDest(k, d) => Change::add_dest(k, d),
            Op::UpdateDest(k, d) => Change::update_dest(k, d),
            Op::DeleteDest(k, d) => Change::delete_dest(k, d),
        }
    }
}

/// Carries out a plan, in batches (in order: a service before its
/// destinations); an operation that fails is reported and the rest go on
/// (the next round retries whatever still differs).
///
/// Each operation is logged when a round has at most [`LOGGED_EACH`] (the
/// usual change); a larger round (a table programmed from empty) logs each
/// at debug, and the round's summary and failures at info and warn —
/// writing 110,000 log lines would cost more than programming them.
pub fn apply(ipvs: &Ipvs, plan: &Plan) -> Vec<(Op, IpvsError)> {
    let each = plan.ops.len() <= LOGGED_EACH;
    let mut failed = Vec::new();
    let results = ipvs.apply_all(plan.ops.iter().map(Op::change).collect());
    for (op, result) in plan.ops.iter().zip(results) {
        match result {
            Ok(()) if each => tracing::info!(op = %op, "ipvs changed"),
            Ok(()) => tracing::debug!(op = %op, "ipvs changed"),
            Err(e) => {
                if each || failed.len() < LOGGED_EACH {
                    tracing::warn!(op = %op, error = %e, "ipvs change failed");
                }
                failed.push((op.clone(), e));
            }
        }
    }
    failed
}

/// The most operations of one round logged one by one at info.
pub const LOGGED_EACH: usize = 100;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ipvs::wire::*;
    use crate::ipvs::Forward;

    fn svc(last: u8, sched: &str) -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey::Endpoint {
                addr: [10, 0, 0, last].into(),
                port: 80,
                protocol: IPPROTO_TCP,
            },
            scheduler: sched.into(),
            flags: 0,
            timeout: 0,
            netmask: u32::MAX,
        }
    }

    fn dest(last: u8, weight: u32) -> DestSpec {
        DestSpec {
            addr: [10, 1, 0, last].into(),
            port: 80,
            forward: Forward::Masquerade,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn entry(spec: ServiceSpec, dests: &[DestSpec]) -> (ServiceKey, Entry) {
        (
            spec.key,
            Entry {
                spec,
                dests: dests
                    .iter()
                    .map(|d| (d.key(), d.clone()))
                    .collect::<BTreeMap<_, _>>(),
            },
        )
    }

    #[test]
    fn in_sync_means_no_operations() {
        let t: Table = [entry(svc(1, "rr"), &[dest(1, 1)])].into();
        assert_eq!(plan(&t, &t, &BTreeSet::new()), Plan::default());
    }

    #[test]
    fn minimal_operations_for_each_difference() {
        let desired: Table = [
            entry(svc(1, "wlc"), &[dest(1, 5), dest(2, 1)]),
            entry(svc(2, "rr"), &[dest(3, 1)]),
        ]
        .into();
        let observed: Table = [
            entry(svc(1, "rr"), &[dest(1, 1), dest(9, 1)]),
            entry(svc(3, "rr"), &[]),
            entry(svc(4, "rr"), &[]),
        ]
        .into();
        let previously = BTreeSet::from([svc(3, "rr").key]);
        let p = plan(&desired, &observed, &previously);
        assert_eq!(
            p.ops,
            vec![
                Op::UpdateService(svc(1, "wlc")),
                Op::UpdateDest(svc(1, "").key, dest(1, 5)),
                Op::AddDest(svc(1, "").key, dest(2, 1)),
                Op::DeleteDest(svc(1, "").key, dest(9, 1)),
                Op::AddService(svc(2, "rr")),
                Op::AddDest(svc(2, "").key, dest(3, 1)),
                Op::DeleteService(svc(3, "").key),
            ]
        );
        assert_eq!(
            p.foreign,
            vec![svc(4, "").key],
            "unmanaged services are reported, not deleted"
        );
    }
}
