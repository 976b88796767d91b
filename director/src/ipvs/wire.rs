//! IPVS generic netlink vocabulary, numbered as in the kernel's
//! `include/uapi/linux/ip_vs.h`, and the byte-level encoders for attributes.
//!
//! Layouts that matter (checked by the unit tests):
//! - addresses are `union nf_inet_addr`: 16 bytes, IPv4 in the first 4;
//! - ports and IPv4 persistence netmasks are big-endian (`__be16`, `__be32`);
//!   an IPv6 netmask is the prefix length as a host-order `u32`;
//! - service flags are `struct ip_vs_flags { __u32 flags; __u32 mask; }`, 8 bytes;
//! - everything else is host-order integers; names are NUL-terminated.

use std::net::IpAddr;

use neli::consts::genl::NlAttrType;
use neli::genl::{AttrTypeBuilder, Nlattr, NlattrBuilder};
use neli::neli_enum;
use neli::types::Buffer;

/// IPVS generic netlink commands (`IPVS_CMD_*`).
#[neli_enum(serialized_type = "u8")]
pub enum Cmd {
    Unspec = 0,
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    NewDaemon = 9,
    DelDaemon = 10,
    GetDaemon = 11,
    SetConfig = 12,
    GetConfig = 13,
    SetInfo = 14,
    GetInfo = 15,
    Zero = 16,
    Flush = 17,
}
impl neli::consts::genl::Cmd for Cmd {}

/// First-level attributes (`IPVS_CMD_ATTR_*`); every other kind nests in these.
#[neli_enum(serialized_type = "u16")]
pub enum CmdAttr {
    Unspec = 0,
    Service = 1,
    Dest = 2,
    Daemon = 3,
    TimeoutTcp = 4,
    TimeoutTcpFin = 5,
    TimeoutUdp = 6,
}
impl NlAttrType for CmdAttr {}

/// Service attributes (`IPVS_SVC_ATTR_*`).
#[neli_enum(serialized_type = "u16")]
pub enum SvcAttr {
    Unspec = 0,
    Af = 1,
    Protocol = 2,
    Addr = 3,
    Port = 4,
    Fwmark = 5,
    SchedName = 6,
    Flags = 7,
    Timeout = 8,
    Netmask = 9,
    Stats = 10,
    PeName = 11,
    Stats64 = 12,
}
impl NlAttrType for SvcAttr {}

/// Destination attributes (`IPVS_DEST_ATTR_*`).
#[neli_enum(serialized_type = "u16")]
pub enum DestAttr {
    Unspec = 0,
    Addr = 1,
    Port = 2,
    FwdMethod = 3,
    Weight = 4,
    UThresh = 5,
    LThresh = 6,
    ActiveConns = 7,
    InactConns = 8,
    PersistConns = 9,
    Stats = 10,
    AddrFamily = 11,
    Stats64 = 12,
    TunType = 13,
    TunPort = 14,
    TunFlags = 15,
}
impl NlAttrType for DestAttr {}

/// Sync daemon attributes (`IPVS_DAEMON_ATTR_*`).
#[neli_enum(serialized_type = "u16")]
pub enum DaemonAttr {
    Unspec = 0,
    State = 1,
    McastIfn = 2,
    SyncId = 3,
    SyncMaxlen = 4,
    McastGroup = 5,
    McastGroup6 = 6,
    McastPort = 7,
    McastTtl = 8,
}
impl NlAttrType for DaemonAttr {}

/// Counters (`IPVS_STATS_ATTR_*`), 64-bit in the `*_STATS64` nests.
#[neli_enum(serialized_type = "u16")]
pub enum StatsAttr {
    Unspec = 0,
    Conns = 1,
    Inpkts = 2,
    Outpkts = 3,
    Inbytes = 4,
    Outbytes = 5,
    Cps = 6,
    Inpps = 7,
    Outpps = 8,
    Inbps = 9,
    Outbps = 10,
    Pad = 11,
}
impl NlAttrType for StatsAttr {}

/// Info attributes (`IPVS_INFO_ATTR_*`) of a GET_INFO reply.
#[neli_enum(serialized_type = "u16")]
pub enum InfoAttr {
    Unspec = 0,
    Version = 1,
    ConnTabSize = 2,
}
impl NlAttrType for InfoAttr {}

/// `AF_INET`, `AF_INET6`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_*`.
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
pub const IPPROTO_SCTP: u16 = 132;

/// Service flags (`IP_VS_SVC_F_*`).
pub const SVC_F_PERSISTENT: u32 = 0x0001;
pub const SVC_F_HASHED: u32 = 0x0002;
pub const SVC_F_ONEPACKET: u32 = 0x0004;
/// Scheduler flags: sh/mh fallback, sh/mh port.
pub const SVC_F_SCHED1: u32 = 0x0008;
pub const SVC_F_SCHED2: u32 = 0x0010;
pub const SVC_F_SCHED3: u32 = 0x0020;

/// Forwarding methods (`IP_VS_CONN_F_*`), the low bits of `FWD_METHOD`.
pub const CONN_F_MASQ: u32 = 0x0000;
pub const CONN_F_TUNNEL: u32 = 0x0002;
pub const CONN_F_DROUTE: u32 = 0x0003;
pub const CONN_F_FWD_MASK: u32 = 0x0007;

/// Tunnel types (`IP_VS_CONN_F_TUNNEL_TYPE_*`).
pub const TUNNEL_TYPE_IPIP: u8 = 0;

pub fn family(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
pub fn inet_addr(addr: IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match addr {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// Reads a `union nf_inet_addr` of family `af`.
pub fn parse_inet_addr(af: u16, bytes: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET if bytes.len() >= 4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        AF_INET6 if bytes.len() >= 16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes[..16]);
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// A NUL-terminated string payload.
pub fn c_string(s: &str) -> Vec<u8> {
    let mut out = s.as_bytes().to_vec();
    out.push(0);
    out
}

/// Reads a NUL-terminated (or unterminated) string payload.
pub fn parse_c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn u16_ne(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?))
}

pub fn u16_be(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?))
}

pub fn u32_ne(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

pub fn u64_ne(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// One attribute with a raw payload.
pub fn attr<T: NlAttrType>(t: T, payload: Vec<u8>) -> Result<Nlattr<T, Buffer>, String> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(t)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .nla_payload(payload)
        .build()
        .map_err(|e| e.to_string())
}

/// An attribute holding `children`, as `nla_nest_start` would build it.
pub fn nest<T: NlAttrType, S: NlAttrType>(
    t: T,
    children: &[Nlattr<S, Buffer>],
) -> Result<Nlattr<T, Buffer>, String> {
    let mut parent = attr(t, Vec::new())?;
    for c in children {
        parent = parent.nest(c).map_err(|e| e.to_string())?;
    }
    Ok(parent)
}
