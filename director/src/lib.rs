//! lb-director: makes the kernel do what the controller decided for each VIP.
//!
//! [`agent`] is the process: a session with the controller and a reconcile
//! loop. [`ipvs`] talks to the kernel's IP Virtual Server over generic netlink;
//! [`desired`] turns lbfabric services into IPVS table entries; [`reconcile`]
//! compares that with what the kernel holds and applies the difference;
//! [`forwarding`] turns on IP forwarding for NAT; [`stats`] carries the
//! kernel's counters into the report; [`marks`] keeps the nftables
//! rules that mark fwmark services' traffic; [`vip`] holds the VIP
//! addresses this director owns while its lease is fresh and schedules their
//! announcements (the frames themselves are built and sent by
//! `lb_hostnet::announce`); [`lease`] is the quorum lease from every
//! controller's grants, and [`fence`] the kernel's enforcement of its end
//! (nftables, through [`nft`]); [`lease_file`] lets a restarted agent
//! continue its node's lease, and [`services_file`] remove the services
//! deleted while it was down; the agent also runs the IPVS sync daemons
//! and the operator's [`hook`] when it takes or gives up a VIP.

pub mod agent;
pub mod desired;
pub mod fence;
pub mod forwarding;
pub mod hook;
pub mod ipvs;
pub mod lease;
pub mod lease_file;
pub mod marks;
pub mod nft;
pub mod reconcile;
pub mod services_file;
pub mod stats;
pub mod vip;
