//! The domain model back onto the wire.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::*;
use crate::pb;

/// VIP leases — (address, epoch) — as the wire carries them.
pub fn vip_leases(list: impl IntoIterator<Item = (IpAddr, u64)>) -> Vec<pb::VipLease> {
    list.into_iter()
        .map(|(vip, epoch)| pb::VipLease {
            vip: vip.to_string(),
            epoch,
        })
        .collect()
}

/// The wire's VIP leases by address; one whose address does not parse
/// names nothing this side manages and is left out.
pub fn parse_vip_leases(list: &[pb::VipLease]) -> BTreeMap<IpAddr, u64> {
    list.iter()
        .filter_map(|l| Some((l.vip.parse().ok()?, l.epoch)))
        .collect()
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> pb::Service {
        let virtual_address = Some(match s.address {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } => pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: address.to_string(),
                port: port.into(),
                protocol: protocol.to_string(),
            }),
            VirtualAddress::Fwmark { mark, family } => {
                let m = s.mark_match.as_ref();
                pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark,
                    family: family.to_string(),
                    address: m.map(|m| m.address.to_string()).unwrap_or_default(),
                    protocol: m.map(|m| m.protocol.to_string()).unwrap_or_default(),
                    ports: m
                        .map(|m| m.ports.iter().map(|&p| u32::from(p)).collect())
                        .unwrap_or_default(),
                })
            }
        });
        pb::Service {
            name: s.name.clone(),
            virtual_address,
            scheduler: s.scheduler.to_string(),
            scheduler_flags: s.scheduler_flags.iter().map(ToString::to_string).collect(),
            mode: s.mode.to_string(),
            tunnel_type: if s.mode == ForwardingMode::Tun {
                s.tunnel_type.to_string()
            } else {
                String::new()
            },
            persistence: s.persistence.map(|p| pb::Persistence {
                timeout_seconds: p.timeout_secs,
                netmask: p
                    .prefix_len
                    .map(|l| prefix_to_netmask(s.family(), l))
                    .unwrap_or_default(),
            }),
            one_packet: s.one_packet,
            realservers: s.realservers.iter().map(pb::RealServer::from).collect(),
            realserver_selector: s.realserver_selector.clone().into_iter().collect(),
            default_weight: Some(s.default_weight.into()),
            health_check: s.health_check.as_ref().map(pb::HealthCheck::from),
            sorry_server: s.sorry_server.map(|a| pb::Backend {
                address: a.ip().to_string(),
                port: a.port().into(),
            }),
            quorum: s.quorum,
            hysteresis: s.hysteresis,
            directors: Some(pb::DirectorPlacement {
                selector: s.directors.selector.clone().into_iter().collect(),
                preferred: s.directors.preferred.clone(),
            }),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
        }
    }
}

/// IPv4 prefixes print as dotted masks (as ipvsadm shows them), IPv6 as lengths.
pub fn prefix_to_netmask(family: Family, len: u8) -> String {
    match family {
        Family::Inet => {
            let bits = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            std::net::Ipv4Addr::from(bits).to_string()
        }
        Family::Inet6 => len.to_string(),
    }
}

impl From<&RealServer> for pb::RealServer {
    fn from(rs: &RealServer) -> pb::RealServer {
        pb::RealServer {
            address: rs.address.to_string(),
            port: rs.port.into(),
            weight: Some(rs.weight.into()),
            upper_threshold: rs.upper_threshold,
            lower_threshold: rs.lower_threshold,
            admin_state: rs.admin_state.to_string(),
        }
    }
}

impl From<&HealthCheck> for pb::HealthCheck {
    fn from(h: &HealthCheck) -> pb::HealthCheck {
        let duration = |ms: u64| prost_types::Duration {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        };
        let mut out = pb::HealthCheck {
            r#type: h.probe.kind().to_string(),
            interval: Some(duration(h.interval_ms)),
            timeout: Some(duration(h.timeout_ms)),
            rise: Some(h.rise),
            fall: Some(h.fall),
            port: h.port.into(),
            inhibit_on_failure: h.inhibit_on_failure,
            ..Default::default()
        };
        match &h.probe {
            Probe::Tcp => {}
            Probe::Http(p) | Probe::Https(p) => {
                out.http_path = p.path.clone();
                out.http_status = p.status.iter().map(|s| u32::from(*s)).collect();
                out.http_body_regex = p.body_regex.clone().unwrap_or_default();
                out.http_digest = p.digest.clone().unwrap_or_default();
                out.http_host = p.host.clone().unwrap_or_default();
            }
            Probe::Exec { command, args } => {
                out.exec_command = command.clone();
                out.exec_args = args.clone();
            }
            Probe::Udp(u) => {
                out.udp_payload = hex(&u.payload);
                out.udp_expect = u.expect.as_deref().map(hex).unwrap_or_default();
            }
            Probe::Dns(d) => {
                out.dns_type = d.query_type.as_str().to_string();
                out.dns_name = d.name.clone();
                out.dns_expect = d.expect.clone().unwrap_or_default();
            }
            Probe::Ping => {}
        }
        out
    }
}

/// Lower-case hex, as the API carries UDP payloads.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
