//! What the kernel should hold for lbfabric's services: the translation from
//! the domain model to IPVS table entries.
//!
//! Admin states map the way operators expect from keepalived: a *draining*
//! realserver stays in the table with weight 0 (existing connections finish,
//! no new ones), a *disabled* one is not in the table at all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_proto::model::{
    AdminState, Family, ForwardingMode, Protocol, SchedulerFlag, Service, VirtualAddress,
};

use crate::ipvs::wire::*;
use crate::ipvs::{DestSpec, Forward, ServiceKey, ServiceSpec};

/// One service and its destinations, keyed by (address, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub spec: ServiceSpec,
    pub dests: BTreeMap<(IpAddr, u16), DestSpec>,
}

/// A whole IPVS table (or the part of it lbfabric manages).
pub type Table = BTreeMap<ServiceKey, Entry>;

pub fn key(address: &VirtualAddress) -> ServiceKey {
    match *address {
        VirtualAddress::Endpoint {
            address,
            port,
            protocol,
        } => ServiceKey::Endpoint {
            addr: address,
            port,
            protocol: match protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
                Protocol::Sctp => IPPROTO_SCTP,
            },
        },
        VirtualAddress::Fwmark { mark, family } => ServiceKey::Fwmark {
            mark,
            af: match family {
                Family::Inet => AF_INET,
                Family::Inet6 => AF_INET6,
            },
        },
    }
}

pub fn service_spec(s: &Service) -> ServiceSpec {
    let key = key(&s.address);
    let mut flags = 0;
    if s.persistence.is_some() {
        flags |= SVC_F_PERSISTENT;
    }
    if s.one_packet {
        flags |= SVC_F_ONEPACKET;
    }
    for f in &s.scheduler_flags {
        flags |= match f {
            SchedulerFlag::ShFallback | SchedulerFlag::MhFallback => SVC_F_SCHED1,
            SchedulerFlag::ShPort | SchedulerFlag::MhPort => SVC_F_SCHED2,
        };
    }
    let prefix = s.persistence.and_then(|p| p.prefix_len);
    let netmask = match (key.af(), prefix) {
        (AF_INET6, Some(len)) => u32::from(len),
        (AF_INET6, None) => 128,
        (_, Some(len)) => u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0),
        (_, None) => u32::MAX,
    };
    ServiceSpec {
        key,
        scheduler: s.scheduler.to_string(),
        flags,
        timeout: s.persistence.map_or(0, |p| p.timeout_secs),
        netmask,
    }
}

pub fn dest_specs(s: &Service) -> BTreeMap<(IpAddr, u16), DestSpec> {
    let forward = match s.mode {
        ForwardingMode::Nat => Forward::Masquerade,
        // A local service has no table entry (see `table`).
        ForwardingMode::Dr | ForwardingMode::Local => Forward::Route,
        ForwardingMode::Tun => Forward::Tunnel,
    };
    s.realservers
        .iter()
        .filter(|rs| rs.admin_state != AdminState::Disabled)
        .map(|rs| {
            let weight = if rs.admin_state == AdminState::Draining {
                0
            } else {
                u32::from(rs.weight)
            };
            let d = DestSpec {
                addr: rs.address,
                port: rs.port,
                forward,
                weight,
                upper_threshold: rs.upper_threshold,
                lower_threshold: rs.lower_threshold,
            };
            (d.key(), d)
        })
        .collect()
}

/// The table for a set of services. A local service has no IPVS service:
/// a proxy on the director serves its VIP.
pub fn table<'a>(services: impl IntoIterator<Item = &'a Service>) -> Table {
    services
        .into_iter()
        .filter(|s| s.mode != ForwardingMode::Local)
        .map(|s| {
            let spec = service_spec(s);
            (
                spec.key,
                Entry {
                    spec,
                    dests: dest_specs(s),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use lb_proto::pb;

    use super::*;

    fn service(mutate: impl FnOnce(&mut pb::Service)) -> Service {
        let mut p = pb::Service {
            name: "web".into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: "10.10.1.30".into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            scheduler: "wlc".into(),
            mode: "nat".into(),
            persistence: Some(pb::Persistence {
                timeout_seconds: 30,
                netmask: "255.255.255.0".into(),
            }),
            realservers: vec![
                pb::RealServer {
                    address: "10.0.0.1".into(),
                    port: 8080,
                    weight: Some(3),
                    ..Default::default()
                },
                pb::RealServer {
                    address: "10.0.0.2".into(),
                    port: 8080,
                    admin_state: "draining".into(),
                    ..Default::default()
                },
                pb::RealServer {
                    address: "10.0.0.3".into(),
                    port: 8080,
                    admin_state: "disabled".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        mutate(&mut p);
        Service::try_from(p).unwrap()
    }

    #[test]
    fn persistence_and_admin_states() {
        let s = service(|_| {});
        let spec = service_spec(&s);
        assert_eq!(
            (spec.flags, spec.timeout, spec.netmask),
            (SVC_F_PERSISTENT, 30, 0xffff_ff00)
        );
        let dests = dest_specs(&s);
        let weights: Vec<(String, u32)> = dests
            .values()
            .map(|d| (d.addr.to_string(), d.weight))
            .collect();
        assert_eq!(
            weights,
            [("10.0.0.1".to_string(), 3), ("10.0.0.2".to_string(), 0)]
        );
        assert!(dests.values().all(|d| d.forward == Forward::Masquerade));
    }

    #[test]
    fn fwmark_ipv6_scheduler_flags_and_tunnel() {
        let s = service(|p| {
            p.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                mark: 9,
                family: "inet6".into(),
                ..Default::default()
            }));
            p.scheduler = "mh".into();
            p.scheduler_flags = vec!["mh-port".into(), "mh-fallback".into()];
            p.mode = "tun".into();
            p.persistence = None;
            p.realservers = vec![pb::RealServer {
                address: "2001:db8::5".into(),
                ..Default::default()
            }];
        });
        let spec = service_spec(&s);
        assert_eq!(
            spec.key,
            ServiceKey::Fwmark {
                mark: 9,
                af: AF_INET6
            }
        );
        assert_eq!(
            (spec.flags, spec.timeout, spec.netmask),
            (SVC_F_SCHED1 | SVC_F_SCHED2, 0, 128)
        );
        let d = dest_specs(&s).into_values().next().unwrap();
        assert_eq!((d.port, d.forward), (0, Forward::Tunnel));
    }
}
