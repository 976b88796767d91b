//! lb-director: makes the kernel do what the controller decided for each VIP.
//!
//! [`ipvs`] talks to the kernel's IP Virtual Server over generic netlink. The
//! reconcile loop, VIP ownership and gratuitous ARP arrive with issue #4.

pub mod ipvs;
