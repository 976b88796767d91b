//! lb-hostnet: the host networking both agents change, through the kernel's
//! own interfaces — rtnetlink for links and addresses ([`Rtnl`], via neli),
//! `/proc/sys` for sysctls ([`sysctl`]), raw sockets for gratuitous ARP and
//! unsolicited NA ([`announce`]), nfnetlink for nf_tables set elements
//! ([`nftables`]) — and the health probes both agents run
//! ([`checks`]). Everything acts on the calling thread's network namespace.
//! No shelling out to `ip`, `sysctl` or `arping`.

pub mod announce;
pub mod checks;
pub mod nftables;
mod rtnl;
pub mod sysctl;

pub use rtnl::{lifetime_secs, Address, Link, NetError, Rtnl};
