//! NAT services need the director to route: IPVS rewrites the destination of
//! incoming packets and the kernel must then forward them (and the replies).
//! The agent turns forwarding on when a NAT service needs it and never turns
//! it off, since other things on the host may rely on it.

use std::borrow::Borrow;

use lb_hostnet::sysctl;
use lb_proto::model::{Family, ForwardingMode, Service};

const IPV4: &str = "net.ipv4.ip_forward";
const IPV6: &str = "net.ipv6.conf.all.forwarding";

/// Enables IPv4/IPv6 forwarding as the NAT services require; returns errors.
pub fn ensure_for<S: Borrow<Service>>(services: &[S]) -> Vec<String> {
    let needs = |family| {
        services
            .iter()
            .map(Borrow::borrow)
            .any(|s: &Service| s.mode == ForwardingMode::Nat && s.family() == family)
    };
    [(needs(Family::Inet), IPV4), (needs(Family::Inet6), IPV6)]
        .into_iter()
        .filter(|(needed, _)| *needed)
        .filter_map(|(_, name)| enable(name).err())
        .collect()
}

fn enable(name: &str) -> Result<(), String> {
    if sysctl::read(name).map_err(|e| e.to_string())? == "1" {
        return Ok(());
    }
    sysctl::write(name, "1").map_err(|e| e.to_string())?;
    tracing::info!(sysctl = name, "enabled forwarding for NAT services");
    Ok(())
}
