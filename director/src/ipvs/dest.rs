//! IPVS destinations (realservers) of a service.

use std::fmt;
use std::net::IpAddr;

use neli::genl::Nlattr;
use neli::types::Buffer;

use super::stats::Stats;
use super::wire::*;

/// How packets reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT (`-m`).
    Masquerade,
    /// Direct routing (`-g`).
    Route,
    /// IP-in-IP (`-i`).
    Tunnel,
}

impl Forward {
    fn code(self) -> u32 {
        match self {
            Forward::Masquerade => CONN_F_MASQ,
            Forward::Route => CONN_F_DROUTE,
            Forward::Tunnel => CONN_F_TUNNEL,
        }
    }

    fn from_code(code: u32) -> Option<Forward> {
        match code & CONN_F_FWD_MASK {
            CONN_F_MASQ => Some(Forward::Masquerade),
            CONN_F_DROUTE => Some(Forward::Route),
            CONN_F_TUNNEL => Some(Forward::Tunnel),
            _ => None,
        }
    }
}

impl fmt::Display for Forward {
    /// As `ipvsadm -Ln` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forward::Masquerade => "Masq",
            Forward::Route => "Route",
            Forward::Tunnel => "Tunnel",
        })
    }
}

/// A destination as configured: what `ipvsadm -a/-e` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

impl DestSpec {
    /// Address and port: how the kernel tells destinations of one service apart.
    pub fn key(&self) -> (IpAddr, u16) {
        (self.addr, self.port)
    }

    /// The identifying attributes (DEL_DEST).
    pub(super) fn key_attrs(&self) -> Result<Vec<Nlattr<DestAttr, Buffer>>, String> {
        Ok(vec![
            attr(DestAttr::Addr, inet_addr(self.addr))?,
            attr(DestAttr::Port, self.port.to_be_bytes().to_vec())?,
        ])
    }

    /// The attributes of a full destination (NEW/SET_DEST).
    pub(super) fn attrs(&self) -> Result<Vec<Nlattr<DestAttr, Buffer>>, String> {
        let mut out = self.key_attrs()?;
        out.push(attr(
            DestAttr::FwdMethod,
            self.forward.code().to_ne_bytes().to_vec(),
        )?);
        out.push(attr(DestAttr::Weight, self.weight.to_ne_bytes().to_vec())?);
        out.push(attr(
            DestAttr::UThresh,
            self.upper_threshold.to_ne_bytes().to_vec(),
        )?);
        out.push(attr(
            DestAttr::LThresh,
            self.lower_threshold.to_ne_bytes().to_vec(),
        )?);
        out.push(attr(
            DestAttr::AddrFamily,
            family(self.addr).to_ne_bytes().to_vec(),
        )?);
        if self.forward == Forward::Tunnel {
            out.push(attr(DestAttr::TunType, vec![TUNNEL_TYPE_IPIP])?);
        }
        Ok(out)
    }
}

/// A destination as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub spec: DestSpec,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Stats,
}

/// Reads a destination from the attributes nested in `IPVS_CMD_ATTR_DEST`;
/// `service_af` is the family to assume when the kernel omits ADDR_FAMILY.
pub(super) fn parse(
    attrs: &neli::attr::AttrHandle<
        '_,
        neli::types::GenlBuffer<DestAttr, Buffer>,
        Nlattr<DestAttr, Buffer>,
    >,
    service_af: u16,
) -> Option<Dest> {
    let raw = |t: DestAttr| attrs.get_attribute(t).map(|a| a.nla_payload().as_ref());
    let num = |t: DestAttr| raw(t).and_then(u32_ne).unwrap_or(0);
    let af = raw(DestAttr::AddrFamily)
        .and_then(u16_ne)
        .unwrap_or(service_af);
    Some(Dest {
        spec: DestSpec {
            addr: parse_inet_addr(af, raw(DestAttr::Addr)?)?,
            port: u16_be(raw(DestAttr::Port)?)?,
            forward: Forward::from_code(u32_ne(raw(DestAttr::FwdMethod)?)?)?,
            weight: num(DestAttr::Weight),
            upper_threshold: num(DestAttr::UThresh),
            lower_threshold: num(DestAttr::LThresh),
        },
        active_conns: num(DestAttr::ActiveConns),
        inactive_conns: num(DestAttr::InactConns),
        persistent_conns: num(DestAttr::PersistConns),
        stats: Stats::parse_nested(raw(DestAttr::Stats64), raw(DestAttr::Stats)),
    })
}
