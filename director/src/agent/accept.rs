//! Which services of a configuration this director takes: each one the
//! controller sent, converted to the domain model and checked — or refused,
//! with the reason, keeping what it had. A delta converts only the services
//! it names; the rest are the previous revision's, shared.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use lb_hostnet::checks::{self, Target};
use lb_proto::model::{ForwardingMode, Service, VirtualAddress};
use lb_proto::pb;

use super::{Desired, ServiceList, Services};

/// The health checks this director runs: those the controller asks of it
/// (backends without a realserver agent), from the services' check specs,
/// and each local service's check against this host — its proxy, on
/// loopback — whose failure the controller reads as this director not
/// being fit to hold the VIP (keepalived's `track_script`).
pub(super) fn check_targets(services: &ServiceList, asked: &[pb::BackendRef]) -> Vec<Target> {
    let backends = asked.iter().filter_map(|b| {
        let s = by_name(services, &b.service)?;
        let backend = SocketAddr::new(b.address.parse().ok()?, u16::try_from(b.port).ok()?);
        checks::target(s, backend)
    });
    let local = services
        .iter()
        .filter(|s| s.mode == ForwardingMode::Local)
        .filter_map(|s| {
            let VirtualAddress::Endpoint { address, port, .. } = s.address else {
                return None;
            };
            let loopback = match address {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            let mut t = checks::target(s, SocketAddr::new(address, port))?;
            t.addr = SocketAddr::new(loopback, t.addr.port());
            Some(t)
        });
    backends.chain(local).collect()
}

/// The VIPs of `services`.
pub(super) fn vips_of(services: &ServiceList) -> Arc<BTreeSet<IpAddr>> {
    Arc::new(services.iter().filter_map(|s| s.vip()).collect())
}

/// The service named `name` in `services`, which are sorted by name (see
/// [`accept`]).
pub(super) fn by_name<'a>(services: &'a ServiceList, name: &str) -> Option<&'a Arc<Service>> {
    services.get(position(services, name).ok()?)
}

/// Where the service named `name` is in `services` (sorted by name), or
/// where it would go.
fn position(services: &ServiceList, name: &str) -> Result<usize, usize> {
    services.binary_search_by(|s| s.name.as_str().cmp(name))
}

/// The services of a configuration this director takes, by name, and
/// those it refuses with the reason. Only the services named in `changed`
/// are converted (all of them without it); the others stay as `previous`
/// has them, so a change to one of 10,000 services converts one. A refused
/// service keeps the version it had in `previous` (nothing in the kernel
/// changes for it), or is left out if it is new: a controller whose rules
/// this director does not share must not freeze the rest of the table, nor
/// have the refusal go unreported.
pub(super) fn accept(
    wire: &BTreeMap<String, pb::Service>,
    changed: Option<&BTreeSet<String>>,
    previous: Option<&Desired>,
) -> (Services, BTreeMap<String, String>) {
    if let (Some(changed), Some(previous)) = (changed, previous) {
        return accept_changes(wire, changed, previous);
    }
    let kept = |name: &str| by_name(&previous?.services, name).cloned();
    let mut refused = BTreeMap::new();
    let mut services = imbl::Vector::new();
    for (name, s) in wire {
        match Service::try_from(s.clone()) {
            Ok(s) => {
                refused.remove(name);
                services.push_back(Arc::new(s));
            }
            Err(e) => {
                refused.insert(name.clone(), format!("service {name} refused: {e}"));
                services.extend(kept(name));
            }
        }
    }
    (Arc::new(services), refused)
}

/// [`accept`] of a delta: the previous services with the `changed` ones
/// converted, added or taken out — the cost of the change, not of the
/// configuration (the rest is shared with the previous revision).
fn accept_changes(
    wire: &BTreeMap<String, pb::Service>,
    changed: &BTreeSet<String>,
    previous: &Desired,
) -> (Services, BTreeMap<String, String>) {
    let mut services = (*previous.services).clone();
    let mut refused = (*previous.refused).clone();
    for name in changed {
        let at = position(&services, name);
        let Some(s) = wire.get(name) else {
            refused.remove(name);
            if let Ok(i) = at {
                services.remove(i);
            }
            continue;
        };
        match Service::try_from(s.clone()) {
            Ok(s) => {
                refused.remove(name);
                match at {
                    Ok(i) => {
                        services.set(i, Arc::new(s));
                    }
                    Err(i) => services.insert(i, Arc::new(s)),
                }
            }
            // Keeps what it had (or stays left out).
            Err(e) => {
                refused.insert(name.clone(), format!("service {name} refused: {e}"));
            }
        }
    }
    (Arc::new(services), refused)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::agent) fn wire(name: &str, vip: &str, scheduler: &str) -> pb::Service {
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

    fn desired(
        wire: &[pb::Service],
        changed: Option<&[&str]>,
        previous: Option<&Desired>,
    ) -> Desired {
        let wire = wire.iter().map(|s| (s.name.clone(), s.clone())).collect();
        let changed: Option<BTreeSet<String>> =
            changed.map(|c| c.iter().map(|n| n.to_string()).collect());
        let (services, refused) = accept(&wire, changed.as_ref(), previous);
        Desired {
            revision: previous.map_or(1, |p| p.revision + 1),
            vips: vips_of(&services),
            services,
            refused: Arc::new(refused),
            delta: None,
            below_quorum: Arc::default(),
            asked: Arc::default(),
        }
    }

    #[test]
    fn a_refused_service_is_reported_and_keeps_its_previous_version() {
        let before = desired(
            &[wire("web", "10.0.0.1", "rr"), wire("api", "10.0.0.2", "rr")],
            None,
            None,
        );
        assert!(before.refused.is_empty());
        assert_eq!(before.services.len(), 2);
        // The controller now sends a scheduler this director does not know,
        // for one service, and a new service the same way.
        let now = desired(
            &[
                wire("web", "10.0.0.1", "nonesuch"),
                wire("api", "10.0.0.2", "wrr"),
                wire("new", "10.0.0.3", "nonesuch"),
            ],
            None,
            Some(&before),
        );
        let refused: Vec<&String> = now.refused.values().collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("service new refused: service.scheduler"));
        assert!(
            refused[1]
                .starts_with("service web refused: service.scheduler: unknown value \"nonesuch\""),
            "{refused:?}"
        );
        let names: Vec<&str> = now.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let web = &now.services[1];
        assert!(
            Arc::ptr_eq(web, &before.services[1]),
            "web keeps what it had"
        );
        assert_eq!(
            now.services[0].scheduler.to_string(),
            "wrr",
            "api is updated"
        );
        // A delta naming only api: web and new stay refused, unconverted.
        let later = desired(
            &[
                wire("web", "10.0.0.1", "nonesuch"),
                wire("api", "10.0.0.2", "rr"),
                wire("new", "10.0.0.3", "nonesuch"),
            ],
            Some(&["api"]),
            Some(&now),
        );
        assert_eq!(later.refused, now.refused);
        assert!(Arc::ptr_eq(&later.services[1], &before.services[1]));
        assert_eq!(later.services[0].scheduler.to_string(), "rr");
        // web fixed, new deleted: no refusal left.
        let fixed = desired(
            &[wire("web", "10.0.0.1", "sh"), wire("api", "10.0.0.2", "rr")],
            Some(&["web", "new"]),
            Some(&later),
        );
        assert!(fixed.refused.is_empty(), "{:?}", fixed.refused);
        assert_eq!(fixed.services[1].scheduler.to_string(), "sh");
        // A delta that adds a service between two and deletes one: the
        // order by name holds, and the untouched one is the same Arc.
        let moved = desired(
            &[wire("b", "10.0.0.4", "rr"), wire("web", "10.0.0.1", "sh")],
            Some(&["api", "b"]),
            Some(&fixed),
        );
        let names: Vec<&str> = moved.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "web"]);
        assert!(Arc::ptr_eq(&moved.services[1], &fixed.services[1]));
    }
}
