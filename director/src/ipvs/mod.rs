//! The kernel's IP Virtual Server over generic netlink (family "IPVS",
//! version 1), through neli — never by running ipvsadm.
//!
//! Resolving the family makes the kernel load `ip_vs` on demand, so opening a
//! client is also how a director finds out that IPVS is there at all.

use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::genl::{Genlmsghdr, GenlmsghdrBuilder};
use neli::neli_enum;
use neli::nl::NlPayload;
use neli::router::synchronous::NlRouter;
use neli::types::GenlBuffer;
use neli::utils::Groups;

/// Generic netlink family name and version of IPVS (`include/uapi/linux/ip_vs.h`).
pub const FAMILY: &str = "IPVS";
pub const FAMILY_VERSION: u8 = 1;

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

/// Attributes of an `IPVS_CMD_GET_INFO` reply (`IPVS_INFO_ATTR_*`).
#[neli_enum(serialized_type = "u16")]
pub enum InfoAttr {
    Unspec = 0,
    Version = 1,
    ConnTabSize = 2,
}
impl neli::consts::genl::NlAttrType for InfoAttr {}

/// What went wrong talking to IPVS; every variant says which operation.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("opening a generic netlink socket: {0}")]
    Socket(String),
    #[error("IPVS is not available in this kernel (generic netlink family {FAMILY:?}): {0}")]
    NoFamily(String),
    #[error("{op}: {detail}")]
    Netlink { op: &'static str, detail: String },
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

/// A generic netlink connection to IPVS in the caller's network namespace.
pub struct Ipvs {
    router: NlRouter,
    family: u16,
}

impl Ipvs {
    /// Connects and resolves the IPVS family (loading `ip_vs` if needed).
    pub fn open() -> Result<Ipvs, IpvsError> {
        let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(|e| IpvsError::Socket(e.to_string()))?;
        let family = router
            .resolve_genl_family(FAMILY)
            .map_err(|e| IpvsError::NoFamily(e.to_string()))?;
        Ok(Ipvs { router, family })
    }

    /// Reads the IPVS version and connection table size.
    pub fn info(&self) -> Result<Info, IpvsError> {
        const OP: &str = "get info";
        let netlink = |e: &dyn std::fmt::Display| IpvsError::Netlink {
            op: OP,
            detail: e.to_string(),
        };
        let msg = GenlmsghdrBuilder::<Cmd, InfoAttr>::default()
            .cmd(Cmd::GetInfo)
            .version(FAMILY_VERSION)
            .attrs(GenlBuffer::new())
            .build()
            .map_err(|e| netlink(&e))?;
        let replies = self
            .router
            .send::<_, _, u16, Genlmsghdr<Cmd, InfoAttr>>(
                self.family,
                NlmF::empty(),
                NlPayload::Payload(msg),
            )
            .map_err(|e| netlink(&e))?;
        for reply in replies {
            let reply = reply.map_err(|e| netlink(&e))?;
            let Some(payload) = reply.get_payload() else {
                continue;
            };
            let attrs = payload.attrs().get_attr_handle();
            let version = attrs
                .get_attr_payload_as::<u32>(InfoAttr::Version)
                .map_err(|_| IpvsError::Reply {
                    op: OP,
                    what: "the version",
                })?;
            let size = attrs
                .get_attr_payload_as::<u32>(InfoAttr::ConnTabSize)
                .map_err(|_| IpvsError::Reply {
                    op: OP,
                    what: "the connection table size",
                })?;
            return Ok(Info::from_code(version, size));
        }
        Err(IpvsError::Reply {
            op: OP,
            what: "any message",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_code_is_major_minor_patch() {
        // ip_vs.h: IP_VS_VERSION_CODE 0x010201 is 1.2.1.
        assert_eq!(Info::from_code(0x010201, 4096).version, (1, 2, 1));
    }
}
