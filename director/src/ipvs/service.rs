//! IPVS virtual services: what a director asks the kernel for, and what it
//! reads back.

use std::fmt;
use std::net::IpAddr;

use neli::genl::Nlattr;
use neli::types::Buffer;

use super::stats::Stats;
use super::wire::*;

/// How the kernel identifies a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// `protocol` is an `IPPROTO_*` number.
    Endpoint {
        addr: IpAddr,
        port: u16,
        protocol: u16,
    },
    Fwmark {
        mark: u32,
        af: u16,
    },
}

impl ServiceKey {
    pub fn af(&self) -> u16 {
        match self {
            ServiceKey::Endpoint { addr, .. } => family(*addr),
            ServiceKey::Fwmark { af, .. } => *af,
        }
    }

    /// The identifying attributes (enough for SET/DEL and for destination commands).
    pub(super) fn attrs(&self) -> Result<Vec<Nlattr<SvcAttr, Buffer>>, String> {
        let mut out = vec![attr(SvcAttr::Af, self.af().to_ne_bytes().to_vec())?];
        match self {
            ServiceKey::Endpoint {
                addr,
                port,
                protocol,
            } => {
                out.push(attr(SvcAttr::Protocol, protocol.to_ne_bytes().to_vec())?);
                out.push(attr(SvcAttr::Addr, inet_addr(*addr))?);
                out.push(attr(SvcAttr::Port, port.to_be_bytes().to_vec())?);
            }
            ServiceKey::Fwmark { mark, .. } => {
                out.push(attr(SvcAttr::Fwmark, mark.to_ne_bytes().to_vec())?)
            }
        }
        Ok(out)
    }
}

impl fmt::Display for ServiceKey {
    /// As ipvsadm names services: `TCP 10.0.0.1:80`, `FWM 7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Endpoint {
                addr,
                port,
                protocol,
            } => {
                let p = match *protocol {
                    IPPROTO_TCP => "TCP",
                    IPPROTO_UDP => "UDP",
                    IPPROTO_SCTP => "SCTP",
                    _ => "PROTO?",
                };
                write!(f, "{p} {}", std::net::SocketAddr::new(*addr, *port))
            }
            ServiceKey::Fwmark { mark, af } => {
                write!(
                    f,
                    "FWM {mark}{}",
                    if *af == AF_INET6 { " IPv6" } else { "" }
                )
            }
        }
    }
}

/// A service as configured: everything `ipvsadm -A/-E` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` (persistent, one-packet, scheduler flags); never HASHED.
    pub flags: u32,
    /// Persistence timeout in seconds (0 when not persistent).
    pub timeout: u32,
    /// IPv4: the mask as a host-order number (0xffffff00 for /24); IPv6: the prefix length.
    pub netmask: u32,
}

impl ServiceSpec {
    /// The netmask value meaning "per client address" for the family.
    pub fn full_netmask(af: u16) -> u32 {
        if af == AF_INET6 {
            128
        } else {
            u32::MAX
        }
    }

    /// The attributes of a full service (NEW/SET_SERVICE).
    pub(super) fn attrs(&self) -> Result<Vec<Nlattr<SvcAttr, Buffer>>, String> {
        let mut out = self.key.attrs()?;
        out.push(attr(SvcAttr::SchedName, c_string(&self.scheduler))?);
        let mut flags = Vec::with_capacity(8);
        flags.extend_from_slice(&self.flags.to_ne_bytes());
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        out.push(attr(SvcAttr::Flags, flags)?);
        out.push(attr(SvcAttr::Timeout, self.timeout.to_ne_bytes().to_vec())?);
        let netmask = if self.key.af() == AF_INET6 {
            self.netmask.to_ne_bytes()
        } else {
            self.netmask.to_be_bytes()
        };
        out.push(attr(SvcAttr::Netmask, netmask.to_vec())?);
        Ok(out)
    }
}

/// A service as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub spec: ServiceSpec,
    pub stats: Stats,
}

/// Reads a service from the attributes nested in `IPVS_CMD_ATTR_SERVICE`.
pub(super) fn parse(
    attrs: &neli::attr::AttrHandle<
        '_,
        neli::types::GenlBuffer<SvcAttr, Buffer>,
        Nlattr<SvcAttr, Buffer>,
    >,
) -> Option<Service> {
    let raw = |t: SvcAttr| attrs.get_attribute(t).map(|a| a.nla_payload().as_ref());
    let af = u16_ne(raw(SvcAttr::Af)?)?;
    let key = match raw(SvcAttr::Fwmark).and_then(u32_ne).filter(|m| *m != 0) {
        Some(mark) => ServiceKey::Fwmark { mark, af },
        None => ServiceKey::Endpoint {
            addr: parse_inet_addr(af, raw(SvcAttr::Addr)?)?,
            port: u16_be(raw(SvcAttr::Port)?)?,
            protocol: u16_ne(raw(SvcAttr::Protocol)?)?,
        },
    };
    let flags = raw(SvcAttr::Flags).and_then(u32_ne).unwrap_or(0) & !SVC_F_HASHED;
    let netmask_bytes = raw(SvcAttr::Netmask)?;
    let netmask = if af == AF_INET6 {
        u32_ne(netmask_bytes)?
    } else {
        u32::from_be_bytes(netmask_bytes.get(..4)?.try_into().ok()?)
    };
    Some(Service {
        spec: ServiceSpec {
            key,
            scheduler: parse_c_string(raw(SvcAttr::SchedName)?),
            flags,
            timeout: raw(SvcAttr::Timeout).and_then(u32_ne).unwrap_or(0),
            netmask,
        },
        stats: Stats::parse_nested(raw(SvcAttr::Stats64), raw(SvcAttr::Stats)),
    })
}
