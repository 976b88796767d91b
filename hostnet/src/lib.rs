//! lb-hostnet: the host networking both agents change, through the kernel's
//! own interfaces — rtnetlink for links and addresses ([`Rtnl`], via neli),
//! `/proc/sys` for sysctls ([`sysctl`]). Everything acts on the calling
//! thread's network namespace. No shelling out to `ip` or `sysctl`.

mod rtnl;
pub mod sysctl;

pub use rtnl::{Address, NetError, Rtnl};
