//! The kernel's IP Virtual Server over generic netlink (family "IPVS",
//! version 1), through neli — never by running ipvsadm.
//!
//! [`wire`] has the kernel's numbers and byte layouts, [`service`] and
//! [`dest`] the two kinds of table entries, [`Ipvs`] the connection. Message
//! construction ([`request`]) is separate from sending so that unit tests can
//! compare the bytes with the uapi layouts. Resolving the family makes the
//! kernel load `ip_vs` on demand, so opening a client is also how a director
//! finds out that IPVS is there at all.

pub mod batch;
pub mod daemon;
pub mod dest;
mod exchange;
pub mod service;
pub mod stats;
pub mod wire;

use neli::consts::genl::NlAttrType;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::genl::{Genlmsghdr, GenlmsghdrBuilder, Nlattr};
use neli::router::synchronous::NlRouter;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;

pub use batch::Change;
pub use daemon::{SyncDaemon, SyncRole};
pub use dest::{Dest, DestSpec, Forward};
pub use service::{Service, ServiceKey, ServiceSpec};
pub use stats::Stats;
use wire::{Cmd, CmdAttr, DaemonAttr, DestAttr, InfoAttr, SvcAttr};

/// Generic netlink family name and version of IPVS.
pub const FAMILY: &str = "IPVS";
pub const FAMILY_VERSION: u8 = 1;

/// What went wrong talking to IPVS; every variant says which operation.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("opening a generic netlink socket: {0}")]
    Socket(String),
    #[error("IPVS is not available in this kernel (generic netlink family {FAMILY:?}): {0}")]
    NoFamily(String),
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
    #[error("{op}: the kernel's reply lacks {what}")]
    Reply {
        op: &'static str,
        what: &'static str,
    },
}

/// IPVS as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// (major, minor, patch), e.g. (1, 2, 1).
    pub version: (u8, u8, u8),
    /// Size of the connection hash table.
    pub conn_tab_size: u32,
}

impl Info {
    fn from_code(code: u32, conn_tab_size: u32) -> Info {
        Info {
            version: ((code >> 16) as u8, (code >> 8) as u8, code as u8),
            conn_tab_size,
        }
    }
}

type Message = Genlmsghdr<Cmd, CmdAttr>;

/// Builders of every request the director sends.
pub mod request {
    use super::*;

    fn message(cmd: Cmd, attrs: Vec<Nlattr<CmdAttr, Buffer>>) -> Result<Message, String> {
        GenlmsghdrBuilder::default()
            .cmd(cmd)
            .version(FAMILY_VERSION)
            .attrs(attrs.into_iter().collect::<GenlBuffer<CmdAttr, Buffer>>())
            .build()
            .map_err(|e| e.to_string())
    }

    pub fn get_info() -> Result<Genlmsghdr<Cmd, InfoAttr>, String> {
        GenlmsghdrBuilder::default()
            .cmd(Cmd::GetInfo)
            .version(FAMILY_VERSION)
            .attrs(GenlBuffer::new())
            .build()
            .map_err(|e| e.to_string())
    }

    pub fn new_service(spec: &ServiceSpec) -> Result<Message, String> {
        message(
            Cmd::NewService,
            vec![wire::nest(CmdAttr::Service, &spec.attrs()?)?],
        )
    }

    pub fn set_service(spec: &ServiceSpec) -> Result<Message, String> {
        message(
            Cmd::SetService,
            vec![wire::nest(CmdAttr::Service, &spec.attrs()?)?],
        )
    }

    pub fn del_service(key: &ServiceKey) -> Result<Message, String> {
        message(
            Cmd::DelService,
            vec![wire::nest(CmdAttr::Service, &key.attrs()?)?],
        )
    }

    pub fn get_services() -> Result<Message, String> {
        message(Cmd::GetService, Vec::new())
    }

    /// One service, by its key (not a dump).
    pub fn get_service(key: &ServiceKey) -> Result<Message, String> {
        message(
            Cmd::GetService,
            vec![wire::nest(CmdAttr::Service, &key.attrs()?)?],
        )
    }

    fn dest_message(
        cmd: Cmd,
        key: &ServiceKey,
        dest: Vec<Nlattr<DestAttr, Buffer>>,
    ) -> Result<Message, String> {
        message(
            cmd,
            vec![
                wire::nest(CmdAttr::Service, &key.attrs()?)?,
                wire::nest(CmdAttr::Dest, &dest)?,
            ],
        )
    }

    pub fn new_dest(key: &ServiceKey, dest: &DestSpec) -> Result<Message, String> {
        dest_message(Cmd::NewDest, key, dest.attrs()?)
    }

    pub fn set_dest(key: &ServiceKey, dest: &DestSpec) -> Result<Message, String> {
        dest_message(Cmd::SetDest, key, dest.attrs()?)
    }

    pub fn del_dest(key: &ServiceKey, dest: &DestSpec) -> Result<Message, String> {
        dest_message(Cmd::DelDest, key, dest.key_attrs()?)
    }

    pub fn new_daemon(daemon: &SyncDaemon) -> Result<Message, String> {
        message(
            Cmd::NewDaemon,
            vec![wire::nest(CmdAttr::Daemon, &daemon.attrs()?)?],
        )
    }

    /// The kernel stops a daemon by its role alone.
    pub fn del_daemon(role: SyncRole) -> Result<Message, String> {
        let state = wire::attr(DaemonAttr::State, role.state().to_ne_bytes().to_vec())?;
        message(Cmd::DelDaemon, vec![wire::nest(CmdAttr::Daemon, &[state])?])
    }

    pub fn get_daemons() -> Result<Message, String> {
        message(Cmd::GetDaemon, Vec::new())
    }

    pub fn get_dests(key: &ServiceKey) -> Result<Message, String> {
        message(
            Cmd::GetDest,
            vec![wire::nest(CmdAttr::Service, &key.attrs()?)?],
        )
    }
}

/// A generic netlink connection to IPVS in the caller's network namespace.
/// Calls block; async callers use `spawn_blocking`.
pub struct Ipvs {
    /// Reads and single changes, one at a time (see [`exchange`]).
    exchanger: std::sync::Mutex<exchange::Exchanger>,
    family: u16,
    batcher: batch::Batcher,
}

impl Ipvs {
    /// Connects and resolves the IPVS family (loading `ip_vs` if needed).
    pub fn open() -> Result<Ipvs, IpvsError> {
        // The router only resolves the family.
        let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| IpvsError::Socket(e.to_string()))?;
        let family = router
            .resolve_genl_family(FAMILY)
            .map_err(|e| IpvsError::NoFamily(e.to_string()))?;
        Ok(Ipvs {
            exchanger: std::sync::Mutex::new(
                exchange::Exchanger::open().map_err(IpvsError::Socket)?,
            ),
            family,
            batcher: batch::Batcher::open()?,
        })
    }

    /// Sends one request and collects the replies' payloads.
    fn exchange<T: NlAttrType>(
        &self,
        op: &'static str,
        object: String,
        msg: Result<Genlmsghdr<Cmd, T>, String>,
        flags: NlmF,
    ) -> Result<Vec<Genlmsghdr<Cmd, T>>, IpvsError> {
        let msg = msg.map_err(|detail| IpvsError::Netlink {
            op,
            object: object.clone(),
            detail,
        })?;
        let mut exchanger = self
            .exchanger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        exchanger
            .exchange(self.family, flags, msg)
            .map_err(|e| match e {
                exchange::Failure::Kernel(errno) => IpvsError::Kernel { op, object, errno },
                exchange::Failure::Netlink(detail) => IpvsError::Netlink { op, object, detail },
            })
    }

    /// Sends a change and waits for the kernel's acknowledgement.
    fn change(
        &self,
        op: &'static str,
        object: String,
        msg: Result<Message, String>,
    ) -> Result<(), IpvsError> {
        tracing::debug!(op, object = %object, "ipvs");
        self.exchange(op, object, msg, NlmF::ACK).map(|_| ())
    }

    /// Reads the IPVS version and connection table size.
    pub fn info(&self) -> Result<Info, IpvsError> {
        const OP: &str = "get info";
        let replies = self.exchange(OP, String::new(), request::get_info(), NlmF::empty())?;
        let reply = replies.first().ok_or(IpvsError::Reply {
            op: OP,
            what: "any message",
        })?;
        let attrs = reply.attrs().get_attr_handle();
        let raw = |t: InfoAttr| attrs.get_attribute(t).map(|a| a.nla_payload().as_ref());
        let version = raw(InfoAttr::Version)
            .and_then(wire::u32_ne)
            .ok_or(IpvsError::Reply {
                op: OP,
                what: "the version",
            })?;
        let size = raw(InfoAttr::ConnTabSize)
            .and_then(wire::u32_ne)
            .ok_or(IpvsError::Reply {
                op: OP,
                what: "the connection table size",
            })?;
        Ok(Info::from_code(version, size))
    }

    /// Sends one change and waits for the kernel's acknowledgement.
    pub fn apply(&self, c: Change) -> Result<(), IpvsError> {
        self.change(c.op, c.object, c.msg)
    }

    /// Sends changes in batches (see [`batch`]); each one's outcome, in order.
    pub fn apply_all(&self, changes: Vec<Change>) -> Vec<Result<(), IpvsError>> {
        self.batcher.send(self.family, changes)
    }

    pub fn add_service(&self, spec: &ServiceSpec) -> Result<(), IpvsError> {
        self.apply(Change::add_service(spec))
    }

    pub fn update_service(&self, spec: &ServiceSpec) -> Result<(), IpvsError> {
        self.apply(Change::update_service(spec))
    }

    pub fn delete_service(&self, key: &ServiceKey) -> Result<(), IpvsError> {
        self.apply(Change::delete_service(key))
    }

    /// Every service in this network namespace.
    pub fn services(&self) -> Result<Vec<Service>, IpvsError> {
        const OP: &str = "list services";
        let mut out = Vec::new();
        for reply in self.exchange(OP, String::new(), request::get_services(), NlmF::DUMP)? {
            out.push(parse_service(&reply).ok_or(IpvsError::Reply {
                op: OP,
                what: "a complete service",
            })?);
        }
        Ok(out)
    }

    /// One service, or `None` when the kernel has none with that key.
    pub fn service(&self, key: &ServiceKey) -> Result<Option<Service>, IpvsError> {
        const OP: &str = "get service";
        let replies = match self.exchange(
            OP,
            key.to_string(),
            request::get_service(key),
            NlmF::empty(),
        ) {
            // What the kernel answers for a key it has no service for.
            Err(IpvsError::Kernel { errno, .. })
                if errno == rustix::io::Errno::SRCH.raw_os_error() =>
            {
                return Ok(None)
            }
            r => r?,
        };
        let reply = replies.first().ok_or(IpvsError::Reply {
            op: OP,
            what: "any message",
        })?;
        parse_service(reply).map(Some).ok_or(IpvsError::Reply {
            op: OP,
            what: "a complete service",
        })
    }

    pub fn add_dest(&self, key: &ServiceKey, dest: &DestSpec) -> Result<(), IpvsError> {
        self.apply(Change::add_dest(key, dest))
    }

    pub fn update_dest(&self, key: &ServiceKey, dest: &DestSpec) -> Result<(), IpvsError> {
        self.apply(Change::update_dest(key, dest))
    }

    pub fn delete_dest(&self, key: &ServiceKey, dest: &DestSpec) -> Result<(), IpvsError> {
        self.apply(Change::delete_dest(key, dest))
    }

    /// The destinations of one service.
    pub fn dests(&self, key: &ServiceKey) -> Result<Vec<Dest>, IpvsError> {
        const OP: &str = "list destinations";
        let mut out = Vec::new();
        for reply in self.exchange(OP, key.to_string(), request::get_dests(key), NlmF::DUMP)? {
            out.push(parse_dest(&reply, key.af()).ok_or(IpvsError::Reply {
                op: OP,
                what: "a complete destination",
            })?);
        }
        Ok(out)
    }
}

impl Ipvs {
    pub fn start_daemon(&self, daemon: &SyncDaemon) -> Result<(), IpvsError> {
        self.change(
            "start sync daemon",
            daemon.to_string(),
            request::new_daemon(daemon),
        )
    }

    pub fn stop_daemon(&self, role: SyncRole) -> Result<(), IpvsError> {
        self.change(
            "stop sync daemon",
            role.to_string(),
            request::del_daemon(role),
        )
    }

    /// The sync daemons running in this network namespace.
    pub fn daemons(&self) -> Result<Vec<SyncDaemon>, IpvsError> {
        const OP: &str = "list sync daemons";
        let mut out = Vec::new();
        for reply in self.exchange(OP, String::new(), request::get_daemons(), NlmF::DUMP)? {
            out.push(parse_daemon(&reply).ok_or(IpvsError::Reply {
                op: OP,
                what: "a complete sync daemon",
            })?);
        }
        Ok(out)
    }
}

/// Reads the daemon of a GET_DAEMON reply.
pub fn parse_daemon(reply: &Message) -> Option<SyncDaemon> {
    let attrs = reply.attrs().get_attr_handle();
    let nested = attrs
        .get_nested_attributes::<DaemonAttr>(CmdAttr::Daemon)
        .ok()?;
    daemon::SyncDaemon::parse(&nested)
}

pub(crate) fn dest_object(key: &ServiceKey, dest: &DestSpec) -> String {
    format!(
        "{key} -> {}",
        std::net::SocketAddr::new(dest.addr, dest.port)
    )
}

/// Reads the service of a GET_SERVICE reply.
pub fn parse_service(reply: &Message) -> Option<Service> {
    let attrs = reply.attrs().get_attr_handle();
    let nested = attrs
        .get_nested_attributes::<SvcAttr>(CmdAttr::Service)
        .ok()?;
    service::parse(&nested)
}

/// Reads the destination of a GET_DEST reply.
pub fn parse_dest(reply: &Message, service_af: u16) -> Option<Dest> {
    let attrs = reply.attrs().get_attr_handle();
    let nested = attrs
        .get_nested_attributes::<DestAttr>(CmdAttr::Dest)
        .ok()?;
    dest::parse(&nested, service_af)
}

#[cfg(test)]
mod tests;
