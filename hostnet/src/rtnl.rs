//! Links and addresses over rtnetlink.

use std::net::IpAddr;
use std::time::Duration;

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, Iff, Ifla, RtAddrFamily, RtScope, Rtm};
use neli::consts::socket::NlFamily;
use neli::err::RouterError;
use neli::nl::NlPayload;
use neli::router::synchronous::{NlRouter, NlRouterReceiverHandle};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, RtattrBuilder};
use neli::types::RtBuffer;
use neli::utils::Groups;

/// What went wrong; each variant names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening an rtnetlink socket: {0}")]
    Socket(String),
    #[error("{op} {object}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel {
        op: &'static str,
        object: String,
        errno: i32,
    },
    #[error("{op} {object}: {detail}")]
    Netlink {
        op: &'static str,
        object: String,
        detail: String,
    },
    #[error("no interface named {0}")]
    NoSuchLink(String),
    #[error("sysctl {name}: {detail}")]
    Sysctl { name: String, detail: String },
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// An interface: its index and, for Ethernet-like links, its MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
}

/// Requests [`Rtnl::put_addresses`] has on the way at once: their
/// acknowledgements must fit the socket's receive buffer.
const IN_FLIGHT: usize = 64;

/// An rtnetlink connection in the calling thread's network namespace.
pub struct Rtnl {
    router: NlRouter,
}

fn family(addr: IpAddr) -> RtAddrFamily {
    match addr {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

/// An address lifetime as the kernel takes it: whole seconds, rounded up,
/// at least one.
pub fn lifetime_secs(lifetime: Duration) -> u64 {
    (lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0)).max(1)
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_addr(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetError> {
        let (router, _) = NlRouter::connect(NlFamily::Route, None, Groups::empty())
            .map_err(|e| NetError::Socket(e.to_string()))?;
        Ok(Rtnl { router })
    }

    fn request<P, R>(
        &self,
        op: &'static str,
        object: String,
        ty: Rtm,
        flags: NlmF,
        payload: P,
    ) -> Result<Vec<R>, NetError>
    where
        P: neli::Size + neli::ToBytes + std::fmt::Debug,
        R: neli::Size + neli::FromBytesWithInput<Input = usize> + std::fmt::Debug + Clone,
    {
        let replies = self.start(op, &object, ty, flags, payload)?;
        Self::finish(op, object, replies)
    }

    /// Sends a request; its replies come through the handle.
    fn start<P, R>(
        &self,
        op: &'static str,
        object: &str,
        ty: Rtm,
        flags: NlmF,
        payload: P,
    ) -> Result<NlRouterReceiverHandle<Rtm, R>, NetError>
    where
        P: neli::Size + neli::ToBytes + std::fmt::Debug,
    {
        self.router
            .send::<Rtm, P, Rtm, R>(ty, flags, NlPayload::Payload(payload))
            .map_err(|e| NetError::Netlink {
                op,
                object: object.to_string(),
                detail: e.to_string(),
            })
    }

    /// The replies to a request [`Rtnl::start`] sent, up to its acknowledgement.
    fn finish<R>(
        op: &'static str,
        object: String,
        replies: NlRouterReceiverHandle<Rtm, R>,
    ) -> Result<Vec<R>, NetError>
    where
        R: neli::Size + neli::FromBytesWithInput<Input = usize> + std::fmt::Debug + Clone,
    {
        let mut out = Vec::new();
        for reply in replies {
            match reply {
                Ok(msg) => {
                    if let NlPayload::Payload(p) = msg.nl_payload() {
                        out.push(p.clone());
                    }
                }
                Err(RouterError::Nlmsgerr(e)) => {
                    return Err(NetError::Kernel {
                        op,
                        object,
                        errno: -*e.error(),
                    });
                }
                Err(e) => {
                    return Err(NetError::Netlink {
                        op,
                        object,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The index of interface `name`.
    pub fn link_index(&self, name: &str) -> Result<u32, NetError> {
        self.link(name).map(|l| l.index)
    }

    /// Interface `name`: its index and hardware address.
    pub fn link(&self, name: &str) -> Result<Link, NetError> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()
            .map_err(|e| NetError::Netlink {
                op: "list links",
                object: String::new(),
                detail: e.to_string(),
            })?;
        let links: Vec<Ifinfomsg> =
            self.request("list links", String::new(), Rtm::Getlink, NlmF::DUMP, msg)?;
        links
            .iter()
            .find(|l| {
                l.rtattrs()
                    .get_attr_handle()
                    .get_attr_payload_as_with_len::<String>(Ifla::Ifname)
                    .is_ok_and(|n| n.trim_end_matches('\0') == name)
            })
            .and_then(|l| {
                let index = u32::try_from(*l.ifi_index()).ok()?;
                let handle = l.rtattrs().get_attr_handle();
                let mac = handle
                    .get_attribute(Ifla::Address)
                    .and_then(|a| <[u8; 6]>::try_from(a.rta_payload().as_ref()).ok())
                    // Loopback reports all zeros: nothing to announce with.
                    .filter(|m| m.iter().any(|b| *b != 0));
                Some(Link { index, mac })
            })
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// Sets an interface up.
    pub fn set_up(&self, ifindex: u32) -> Result<(), NetError> {
        let object = format!("link {ifindex}");
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(i32::try_from(ifindex).unwrap_or(i32::MAX))
            .ifi_flags(Iff::UP)
            .ifi_change(Iff::UP)
            .build()
            .map_err(|e| NetError::Netlink {
                op: "set link up",
                object: object.clone(),
                detail: e.to_string(),
            })?;
        self.request::<_, Ifinfomsg>("set link up", object, Rtm::Newlink, NlmF::ACK, msg)
            .map(|_| ())
    }

    /// Every address on `ifindex` (or on every interface when it is 0).
    pub fn addresses(&self, ifindex: u32) -> Result<Vec<Address>, NetError> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| NetError::Netlink {
                op: "list addresses",
                object: String::new(),
                detail: e.to_string(),
            })?;
        let all: Vec<Ifaddrmsg> = self.request(
            "list addresses",
            String::new(),
            Rtm::Getaddr,
            NlmF::DUMP,
            msg,
        )?;
        Ok(all
            .iter()
            .filter(|a| ifindex == 0 || *a.ifa_index() == ifindex)
            .filter_map(|a| {
                let handle = a.rtattrs().get_attr_handle();
                let raw = handle
                    .get_attribute(Ifa::Local)
                    .or_else(|| handle.get_attribute(Ifa::Address))?;
                Some(Address {
                    ifindex: *a.ifa_index(),
                    addr: parse_addr(raw.rta_payload().as_ref())?,
                    prefix_len: *a.ifa_prefixlen(),
                })
            })
            .collect())
    }

    fn addr_msg(op: &'static str, a: &Address) -> Result<Ifaddrmsg, NetError> {
        Self::addr_msg_for(op, a, None)
    }

    /// With `lifetime`, the address's preferred and valid lifetimes
    /// (IFA_CACHEINFO, whole seconds, rounded up): the kernel deletes it
    /// when they run out.
    fn addr_msg_for(
        op: &'static str,
        a: &Address,
        lifetime: Option<Duration>,
    ) -> Result<Ifaddrmsg, NetError> {
        let object = format!("{}/{} on {}", a.addr, a.prefix_len, a.ifindex);
        let err = |e: String| NetError::Netlink {
            op,
            object: object.clone(),
            detail: e,
        };
        let mut attrs = RtBuffer::new();
        for t in [Ifa::Local, Ifa::Address] {
            attrs.push(
                RtattrBuilder::default()
                    .rta_type(t)
                    .rta_payload(addr_bytes(a.addr))
                    .build()
                    .map_err(|e| err(e.to_string()))?,
            );
        }
        if let Some(lifetime) = lifetime {
            let secs = u32::try_from(lifetime_secs(lifetime)).unwrap_or(u32::MAX - 1);
            // struct ifa_cacheinfo: preferred, valid, cstamp, tstamp.
            let mut info = Vec::with_capacity(16);
            for field in [secs, secs, 0, 0] {
                info.extend_from_slice(&field.to_ne_bytes());
            }
            attrs.push(
                RtattrBuilder::default()
                    .rta_type(Ifa::Cacheinfo)
                    .rta_payload(info)
                    .build()
                    .map_err(|e| err(e.to_string()))?,
            );
        }
        // An IPv6 VIP must answer at once, not after duplicate address
        // detection: ownership is decided by the controller, not by DAD.
        let flags = if a.addr.is_ipv6() {
            IfaF::NODAD
        } else {
            IfaF::empty()
        };
        IfaddrmsgBuilder::default()
            .ifa_family(family(a.addr))
            .ifa_prefixlen(a.prefix_len)
            .ifa_flags(flags)
            .ifa_scope(RtScope::Universe)
            .ifa_index(a.ifindex)
            .rtattrs(attrs)
            .build()
            .map_err(|e| err(e.to_string()))
    }

    /// Adds an address; `Ok(false)` when it was already there.
    pub fn add_address(&self, a: &Address) -> Result<bool, NetError> {
        let msg = Self::addr_msg("add address", a)?;
        let object = format!("{}/{} on {}", a.addr, a.prefix_len, a.ifindex);
        match self.request::<_, Ifaddrmsg>(
            "add address",
            object,
            Rtm::Newaddr,
            NlmF::CREATE | NlmF::EXCL | NlmF::ACK,
            msg,
        ) {
            Ok(_) => Ok(true),
            Err(NetError::Kernel { errno: 17, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds addresses, or updates them, each with a lifetime (`None`:
    /// forever): the kernel deletes one once its lifetime runs out unless
    /// this is called again first. Up to 64 requests are sent before their
    /// acknowledgements are read: renewing the lifetimes of 1,000 VIPs one
    /// round trip at a time kept a director busy for a quarter of a second
    /// every renewal under the VM's emulated CPU. One result per address,
    /// in order.
    pub fn put_addresses(&self, list: &[(Address, Option<Duration>)]) -> Vec<Result<(), NetError>> {
        let mut out = Vec::with_capacity(list.len());
        for chunk in list.chunks(IN_FLIGHT) {
            let sent: Vec<_> = chunk
                .iter()
                .map(|(a, lifetime)| {
                    let object = format!("{}/{} on {}", a.addr, a.prefix_len, a.ifindex);
                    let msg = Self::addr_msg_for("put address", a, *lifetime)?;
                    let flags = NlmF::CREATE | NlmF::REPLACE | NlmF::ACK;
                    let replies = self.start::<_, Ifaddrmsg>(
                        "put address",
                        &object,
                        Rtm::Newaddr,
                        flags,
                        msg,
                    )?;
                    Ok((object, replies))
                })
                .collect();
            out.extend(sent.into_iter().map(|s| {
                let (object, replies) = s?;
                Self::finish("put address", object, replies).map(|_| ())
            }));
        }
        out
    }

    /// Removes an address; `Ok(false)` when it was not there.
    pub fn del_address(&self, a: &Address) -> Result<bool, NetError> {
        let msg = Self::addr_msg("delete address", a)?;
        let object = format!("{}/{} on {}", a.addr, a.prefix_len, a.ifindex);
        match self.request::<_, Ifaddrmsg>("delete address", object, Rtm::Deladdr, NlmF::ACK, msg) {
            Ok(_) => Ok(true),
            // EADDRNOTAVAIL
            Err(NetError::Kernel { errno: 99, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
