//! A whole service from the wire: every field and how they relate.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;

use super::realserver::{check_realserver, realserver};
use super::rules::*;
use super::{FieldError, Result};
use crate::model::*;
use crate::pb;

impl TryFrom<pb::Service> for Service {
    type Error = FieldError;

    fn try_from(s: pb::Service) -> Result<Service> {
        check_name("service.name", &s.name)?;
        let mut mark_match = None;
        let address = match s.virtual_address {
            None => {
                return Err(FieldError::new(
                    "service.virtual_address",
                    "is required: set endpoint (VIP:port/proto) or fwmark",
                ))
            }
            Some(pb::service::VirtualAddress::Endpoint(e)) => VirtualAddress::Endpoint {
                address: unicast_ip("service.endpoint.address", &e.address)?,
                // 0 (any port) only for a local service, checked below.
                port: port("service.endpoint.port", e.port, true)?,
                protocol: word(
                    "service.endpoint.protocol",
                    &e.protocol,
                    Protocol::Tcp,
                    Protocol::words(),
                )?,
            },
            Some(pb::service::VirtualAddress::Fwmark(f)) => {
                if f.mark == 0 {
                    return Err(FieldError::new(
                        "service.fwmark.mark",
                        "must be 1..=4294967295, got 0",
                    ));
                }
                let family = word(
                    "service.fwmark.family",
                    &f.family,
                    Family::Inet,
                    Family::words(),
                )?;
                mark_match = fwmark_match(&f, family)?;
                VirtualAddress::Fwmark {
                    mark: f.mark,
                    family,
                }
            }
        };
        let family = address.family();
        let scheduler = word(
            "service.scheduler",
            &s.scheduler,
            Scheduler::Wlc,
            Scheduler::words(),
        )?;
        let mut scheduler_flags = BTreeSet::new();
        for (i, f) in s.scheduler_flags.iter().enumerate() {
            let field = format!("service.scheduler_flags[{i}]");
            let flag = SchedulerFlag::from_str(f).map_err(|_| {
                FieldError::new(
                    &field,
                    format!(
                        "unknown flag {f:?}; expected one of {}",
                        SchedulerFlag::words()
                    ),
                )
            })?;
            if flag.scheduler() != scheduler {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{flag} applies to scheduler {}, not {scheduler}",
                        flag.scheduler()
                    ),
                ));
            }
            scheduler_flags.insert(flag);
        }
        let mode = word(
            "service.mode",
            &s.mode,
            ForwardingMode::Dr,
            ForwardingMode::words(),
        )?;
        if let VirtualAddress::Endpoint { port: 0, .. } = address {
            if mode != ForwardingMode::Local {
                return Err(FieldError::new(
                    "service.endpoint.port",
                    "must be 1..=65535, got 0",
                ));
            }
        }
        if mode == ForwardingMode::Local {
            local_rules(
                (&s.realservers, &s.realserver_selector),
                (s.sorry_server.is_some(), s.quorum),
                &address,
            )?;
        }
        let tunnel_type = word(
            "service.tunnel_type",
            &s.tunnel_type,
            TunnelType::Ipip,
            TunnelType::words(),
        )?;
        if mode != ForwardingMode::Tun && !s.tunnel_type.is_empty() {
            return Err(FieldError::new(
                "service.tunnel_type",
                format!("only applies to mode tun, not {mode}"),
            ));
        }
        let persistence = match s.persistence {
            None => None,
            Some(p) if p.timeout_seconds == 0 && p.netmask.is_empty() => None,
            Some(p) => {
                if p.timeout_seconds == 0 {
                    return Err(FieldError::new(
                        "service.persistence.netmask",
                        "needs a persistence timeout (timeout_seconds > 0)",
                    ));
                }
                if p.timeout_seconds > MAX_PERSISTENCE_SECS {
                    return Err(FieldError::new(
                        "service.persistence.timeout_seconds",
                        format!(
                            "must be 1..={MAX_PERSISTENCE_SECS} (31 days), got {}",
                            p.timeout_seconds
                        ),
                    ));
                }
                let prefix_len = if p.netmask.is_empty() {
                    None
                } else {
                    Some(netmask("service.persistence.netmask", &p.netmask, family)?)
                };
                Some(Persistence {
                    timeout_secs: p.timeout_seconds,
                    prefix_len,
                })
            }
        };
        let one_packet = s.one_packet;
        if one_packet {
            if let VirtualAddress::Endpoint { protocol, .. } = address {
                if protocol != Protocol::Udp {
                    return Err(FieldError::new(
                        "service.one_packet",
                        format!("only applies to udp, not {protocol}"),
                    ));
                }
            }
        }
        let health_check = s.health_check.map(HealthCheck::try_from).transpose()?;
        let sorry_server = match s.sorry_server {
            None => None,
            Some(b) => {
                let addr = unicast_ip("service.sorry_server.address", &b.address)?;
                if Family::of(addr) != family {
                    return Err(FieldError::new(
                        "service.sorry_server.address",
                        format!("{addr} is {}, the service is {family}", Family::of(addr)),
                    ));
                }
                Some(SocketAddr::new(
                    addr,
                    port("service.sorry_server.port", b.port, true)?,
                ))
            }
        };
        if mode == ForwardingMode::Local {
            local_check(&address, &health_check)?;
        }
        if s.hysteresis > s.quorum {
            return Err(FieldError::new(
                "service.hysteresis",
                format!("must not exceed quorum {}, got {}", s.quorum, s.hysteresis),
            ));
        }
        let directors = match s.directors {
            None => DirectorPlacement::default(),
            Some(d) => {
                for (i, name) in d.preferred.iter().enumerate() {
                    if name.is_empty() {
                        return Err(FieldError::new(
                            format!("service.directors.preferred[{i}]"),
                            "is empty",
                        ));
                    }
                }
                DirectorPlacement {
                    selector: labels(
                        "service.directors.selector",
                        d.selector.into_iter().collect(),
                    )?,
                    preferred: d.preferred,
                }
            }
        };
        let mut service = Service {
            name: s.name,
            address,
            scheduler,
            scheduler_flags,
            mode,
            tunnel_type,
            persistence,
            one_packet,
            realservers: Vec::with_capacity(s.realservers.len()),
            realserver_selector: labels(
                "service.realserver_selector",
                s.realserver_selector.into_iter().collect(),
            )?,
            default_weight: weight("service.default_weight", s.default_weight, 1)?,
            health_check,
            sorry_server,
            quorum: s.quorum,
            hysteresis: s.hysteresis,
            directors,
            mark_match,
            create_revision: 0,
            mod_revision: 0,
        };
        for (i, rs) in s.realservers.into_iter().enumerate() {
            let field = format!("service.realservers[{i}]");
            let rs = realserver(&field, rs)?;
            let rs = check_realserver(&service, rs, &field)?;
            service.realservers.push(rs);
        }
        Ok(service)
    }
}

/// Most ports one fwmark service may mark; a longer list is a typo or a range.
const MAX_MARK_PORTS: usize = 64;

/// The packets a fwmark service marks itself, if it names an address.
pub(crate) fn fwmark_match(f: &pb::Fwmark, family: Family) -> Result<Option<MarkMatch>> {
    if f.address.is_empty() {
        if !f.protocol.is_empty() || !f.ports.is_empty() {
            return Err(FieldError::new(
                "service.fwmark.address",
                "is required when protocol or ports are set (the VIP whose packets get the mark)",
            ));
        }
        return Ok(None);
    }
    let address = unicast_ip("service.fwmark.address", &f.address)?;
    if Family::of(address) != family {
        return Err(FieldError::new(
            "service.fwmark.address",
            format!("must be an {family} address (service.fwmark.family), got {address}"),
        ));
    }
    let protocol = word(
        "service.fwmark.protocol",
        &f.protocol,
        Protocol::Tcp,
        Protocol::words(),
    )?;
    if f.ports.len() > MAX_MARK_PORTS {
        return Err(FieldError::new(
            "service.fwmark.ports",
            format!("has {} ports; at most {MAX_MARK_PORTS}", f.ports.len()),
        ));
    }
    let mut ports = Vec::with_capacity(f.ports.len());
    for (i, p) in f.ports.iter().enumerate() {
        let p = port(&format!("service.fwmark.ports[{i}]"), *p, false)?;
        if ports.contains(&p) {
            return Err(FieldError::new(
                format!("service.fwmark.ports[{i}]"),
                format!("repeats port {p}"),
            ));
        }
        ports.push(p);
    }
    ports.sort_unstable();
    Ok(Some(MarkMatch {
        address,
        protocol,
        ports,
    }))
}

/// A local service is a VIP for a proxy on the director: nothing to
/// balance, and its check runs on each director, against the director.
fn local_rules(
    (realservers, selector): (
        &[pb::RealServer],
        &std::collections::HashMap<String, String>,
    ),
    (sorry_server, quorum): (bool, u32),
    address: &VirtualAddress,
) -> Result<()> {
    let none = |field: &str, set: bool| {
        if set {
            Err(FieldError::new(
                field,
                "does not apply to mode local: the director holding the VIP serves it",
            ))
        } else {
            Ok(())
        }
    };
    none("service.realservers", !realservers.is_empty())?;
    none("service.realserver_selector", !selector.is_empty())?;
    none("service.sorry_server", sorry_server)?;
    none("service.quorum", quorum > 0)?;
    none(
        "service.fwmark",
        matches!(address, VirtualAddress::Fwmark { .. }),
    )
}

/// A local service's check: one a director runs against itself.
fn local_check(address: &VirtualAddress, check: &Option<HealthCheck>) -> Result<()> {
    let Some(h) = check else {
        return Ok(());
    };
    if !matches!(
        h.probe,
        Probe::Tcp | Probe::Http(_) | Probe::Https(_) | Probe::Exec { .. }
    ) {
        return Err(FieldError::new(
            "service.health_check.type",
            format!(
                "{} does not apply to mode local: tcp, http, https or exec, which each director runs against itself",
                h.probe.kind()
            ),
        ));
    }
    let any_port = matches!(address, VirtualAddress::Endpoint { port: 0, .. });
    if any_port && h.port == 0 && !matches!(h.probe, Probe::Exec { .. }) {
        return Err(FieldError::new(
            "service.health_check.port",
            "is required when the service's port is 0 (any)",
        ));
    }
    Ok(())
}
