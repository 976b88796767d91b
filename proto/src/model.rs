//! The domain model: what a virtual service *is*, once validated.
//!
//! Every value of these types has passed the rules in [`crate::convert`], so
//! the controller, the agents and the importers never re-check them. The types
//! are serde-serializable because they are what the Raft log replicates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A virtual service: where clients connect, how IPVS schedules, and the backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub address: VirtualAddress,
    pub scheduler: Scheduler,
    pub scheduler_flags: BTreeSet<SchedulerFlag>,
    pub mode: ForwardingMode,
    pub tunnel_type: TunnelType,
    pub persistence: Option<Persistence>,
    pub one_packet: bool,
    pub realservers: Vec<RealServer>,
    pub realserver_selector: BTreeMap<String, String>,
    pub default_weight: u16,
    pub health_check: Option<HealthCheck>,
    pub sorry_server: Option<SocketAddr>,
    pub quorum: u32,
    pub hysteresis: u32,
    pub directors: DirectorPlacement,
    /// fwmark services only: the packets the director marks itself (an
    /// nftables rule), and whose VIP address it owns. `None` = the operator
    /// marks packets, and no VIP address is placed for the service.
    #[serde(default)]
    pub mark_match: Option<MarkMatch>,
    /// Revision of the change that created the service (set by the controller).
    pub create_revision: u64,
    /// Revision of the last change to the service (set by the controller).
    pub mod_revision: u64,
}

impl Service {
    /// The address family every address of this service must belong to.
    pub fn family(&self) -> Family {
        self.address.family()
    }

    /// The port a realserver given with port 0 gets: the VIP's port, or 0
    /// (keep the packet's port) for fwmark services.
    pub fn default_realserver_port(&self) -> u16 {
        match self.address {
            VirtualAddress::Endpoint { port, .. } => port,
            VirtualAddress::Fwmark { .. } => 0,
        }
    }

    /// The VIP address a director must own for this service: the endpoint's
    /// address, or the marked address of a fwmark service.
    pub fn vip(&self) -> Option<IpAddr> {
        match self.address {
            VirtualAddress::Endpoint { address, .. } => Some(address),
            VirtualAddress::Fwmark { .. } => self.mark_match.as_ref().map(|m| m.address),
        }
    }

    /// Whether clients sending `protocol` to `address:port` reach this service.
    pub fn catches(&self, address: IpAddr, protocol: Protocol, port: u16) -> bool {
        match (&self.address, &self.mark_match) {
            (
                VirtualAddress::Endpoint {
                    address: a,
                    port: p,
                    protocol: pr,
                },
                _,
            ) => *a == address && *pr == protocol && *p == port,
            (VirtualAddress::Fwmark { .. }, Some(m)) => {
                m.address == address
                    && m.protocol == protocol
                    && (m.ports.is_empty() || m.ports.contains(&port))
            }
            (VirtualAddress::Fwmark { .. }, None) => false,
        }
    }

    pub fn realserver(&self, addr: IpAddr, port: u16) -> Option<&RealServer> {
        self.realservers
            .iter()
            .find(|rs| rs.address == addr && rs.port == port)
    }
}

/// What clients address: VIP:port/proto, or packets carrying a firewall mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VirtualAddress {
    Endpoint {
        address: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    Fwmark {
        mark: u32,
        family: Family,
    },
}

impl VirtualAddress {
    pub fn family(&self) -> Family {
        match self {
            VirtualAddress::Endpoint { address, .. } => Family::of(*address),
            VirtualAddress::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for VirtualAddress {
    /// `10.0.0.1:80/tcp`, `[2001:db8::1]:443/tcp`, `fwmark 7 (inet)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } => write!(f, "{}/{}", SocketAddr::new(*address, *port), protocol),
            VirtualAddress::Fwmark { mark, family } => write!(f, "fwmark {mark} ({family})"),
        }
    }
}

/// The traffic a fwmark service's director marks: packets to `address` with
/// `protocol` and one of `ports` (any port when empty), as in the classic
/// `iptables -t mangle ... -j MARK` line an LVS operator writes by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMatch {
    pub address: IpAddr,
    pub protocol: Protocol,
    /// Sorted, without duplicates.
    pub ports: Vec<u16>,
}

impl MarkMatch {
    /// Whether some packet matches both.
    pub fn overlaps(&self, other: &MarkMatch) -> bool {
        self.address == other.address
            && self.protocol == other.protocol
            && (self.ports.is_empty()
                || other.ports.is_empty()
                || self.ports.iter().any(|p| other.ports.contains(p)))
    }
}

impl fmt::Display for MarkMatch {
    /// `10.0.0.1 tcp 80,443`, `10.0.0.1 udp` (every port).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.address, self.protocol)?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            write!(f, " {}", ports.join(","))?;
        }
        Ok(())
    }
}

/// Declares a closed vocabulary whose wire form is a lower-case word.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// Every accepted word, for error messages and `--help`.
            pub fn words() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($word => Ok($name::$variant),)+ _ => Err(()) }
            }
        }
    };
}

vocabulary!(
    /// Transport protocol of an endpoint service.
    Protocol { Tcp = "tcp", Udp = "udp", Sctp = "sctp" }
);

vocabulary!(
    /// Address family.
    Family { Inet = "inet", Inet6 = "inet6" }
);

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    /// Longest prefix length of the family.
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::Inet => 32,
            Family::Inet6 => 128,
        }
    }
}

vocabulary!(
    /// IPVS schedulers shipped with Linux (`ip_vs_<name>` modules).
    Scheduler {
        Rr = "rr", Wrr = "wrr", Lc = "lc", Wlc = "wlc", Lblc = "lblc", Lblcr = "lblcr",
        Dh = "dh", Sh = "sh", Sed = "sed", Nq = "nq", Mh = "mh", Fo = "fo", Ovf = "ovf",
        Twos = "twos",
    }
);

vocabulary!(
    /// Scheduler flags (ipvsadm `-b`); the sh and mh schedulers read them.
    SchedulerFlag {
        ShFallback = "sh-fallback", ShPort = "sh-port",
        MhFallback = "mh-fallback", MhPort = "mh-port",
    }
);

impl SchedulerFlag {
    /// The scheduler that understands this flag.
    pub fn scheduler(self) -> Scheduler {
        match self {
            SchedulerFlag::ShFallback | SchedulerFlag::ShPort => Scheduler::Sh,
            SchedulerFlag::MhFallback | SchedulerFlag::MhPort => Scheduler::Mh,
        }
    }
}

vocabulary!(
    /// How the director forwards packets to realservers; `local`: it does
    /// not, a proxy on the director holding the VIP serves it (keepalived's
    /// floating VIP, `virtual_ipaddress` with a `track_script`).
    ForwardingMode { Nat = "nat", Dr = "dr", Tun = "tun", Local = "local" }
);

vocabulary!(
    /// Encapsulation for TUN forwarding.
    TunnelType { Ipip = "ipip" }
);

vocabulary!(
    /// Operator's intent for one realserver.
    AdminState { Active = "active", Draining = "draining", Disabled = "disabled" }
);

/// Client stickiness (ipvsadm `-p` and `-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    pub timeout_secs: u32,
    /// Clients sharing this prefix stick together; `None` = per client address.
    pub prefix_len: Option<u8>,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    pub address: IpAddr,
    /// 0 only for fwmark services (keep the packet's port).
    pub port: u16,
    pub weight: u16,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    pub admin_state: AdminState,
}

impl RealServer {
    /// `10.0.0.1:80`, `[2001:db8::1]:80`, or a bare address when the port is 0.
    pub fn endpoint(&self) -> String {
        if self.port == 0 {
            self.address.to_string()
        } else {
            SocketAddr::new(self.address, self.port).to_string()
        }
    }
}

/// A partial change to a realserver: only the `Some` fields change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServerPatch {
    pub weight: Option<u16>,
    pub upper_threshold: Option<u32>,
    pub lower_threshold: Option<u32>,
    pub admin_state: Option<AdminState>,
}

/// How a backend's health is probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// 0 = the realserver's port.
    pub port: u16,
    /// A failing backend gets weight 0 instead of leaving the table.
    #[serde(default)]
    pub inhibit_on_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    Tcp,
    Http(HttpProbe),
    Https(HttpProbe),
    Exec {
        command: String,
        args: Vec<String>,
    },
    // New kinds go at the end: stored states name a kind by its position.
    Udp(UdpProbe),
    Dns(DnsProbe),
    /// ICMP (or ICMPv6) echo to the backend's address.
    Ping,
}

impl Probe {
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http(_) => "http",
            Probe::Https(_) => "https",
            Probe::Exec { .. } => "exec",
            Probe::Udp(_) => "udp",
            Probe::Dns(_) => "dns",
            Probe::Ping => "ping",
        }
    }
}

/// keepalived's UDP_CHECK: `payload` is sent in one datagram; with
/// `expect`, the reply must start with those bytes, without it any reply
/// or silence passes and only an ICMP error (port unreachable) fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpProbe {
    pub payload: Vec<u8>,
    pub expect: Option<Vec<u8>>,
}

/// keepalived's DNS_CHECK: one query over UDP; the reply must answer it
/// (same id, NOERROR) with a record of the type asked, and with `expect`
/// one such record must hold that address or name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsProbe {
    pub query_type: DnsType,
    pub name: String,
    pub expect: Option<String>,
}

/// The record types a DNS check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsType {
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Ptr,
    Soa,
    Txt,
}

impl DnsType {
    pub const ALL: [DnsType; 8] = [
        DnsType::A,
        DnsType::Aaaa,
        DnsType::Cname,
        DnsType::Mx,
        DnsType::Ns,
        DnsType::Ptr,
        DnsType::Soa,
        DnsType::Txt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsType::A => "A",
            DnsType::Aaaa => "AAAA",
            DnsType::Cname => "CNAME",
            DnsType::Mx => "MX",
            DnsType::Ns => "NS",
            DnsType::Ptr => "PTR",
            DnsType::Soa => "SOA",
            DnsType::Txt => "TXT",
        }
    }

    /// The type's number on the wire.
    pub fn code(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Ptr => 12,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
        }
    }

    /// From its name, in any case.
    pub fn parse(name: &str) -> Option<DnsType> {
        DnsType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub path: String,
    pub status: Vec<u16>,
    pub body_regex: Option<String>,
    /// Lower-case hex MD5 of the body.
    pub digest: Option<String>,
    pub host: Option<String>,
}

/// Which directors may own the service's VIP, and which are preferred.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorPlacement {
    pub selector: BTreeMap<String, String>,
    pub preferred: Vec<String>,
}
