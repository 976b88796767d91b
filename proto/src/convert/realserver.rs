//! Realservers, alone and against their service, and their patches.

use std::net::IpAddr;

use super::rules::*;
use super::{FieldError, Result};
use crate::model::*;
use crate::pb;

/// Parses a realserver on its own; [`check_realserver`] relates it to a service.
pub fn realserver(field: &str, rs: pb::RealServer) -> Result<RealServer> {
    let upper_threshold = rs.upper_threshold;
    let lower_threshold = rs.lower_threshold;
    if upper_threshold > 0 && lower_threshold > upper_threshold {
        return Err(FieldError::new(
            format!("{field}.lower_threshold"),
            format!("must not exceed upper_threshold {upper_threshold}, got {lower_threshold}"),
        ));
    }
    Ok(RealServer {
        address: unicast_ip(&format!("{field}.address"), &rs.address)?,
        port: port(&format!("{field}.port"), rs.port, true)?,
        weight: weight(&format!("{field}.weight"), rs.weight, 1)?,
        upper_threshold,
        lower_threshold,
        admin_state: word(
            &format!("{field}.admin_state"),
            &rs.admin_state,
            AdminState::Active,
            AdminState::words(),
        )?,
    })
}

/// Checks a realserver against its service and fills in a port of 0; rejects
/// a second realserver at the same address and port.
pub fn check_realserver(service: &Service, mut rs: RealServer, field: &str) -> Result<RealServer> {
    let family = service.family();
    if Family::of(rs.address) != family {
        return Err(FieldError::new(
            format!("{field}.address"),
            format!(
                "{} is {}, the service is {family}: address families cannot be mixed",
                rs.address,
                Family::of(rs.address)
            ),
        ));
    }
    if rs.port == 0 {
        rs.port = service.default_realserver_port();
    }
    let keeps_port = matches!(service.mode, ForwardingMode::Dr | ForwardingMode::Tun);
    if keeps_port && rs.port != service.default_realserver_port() {
        let must = match service.address {
            VirtualAddress::Endpoint { port, .. } => {
                format!("equal the VIP port {port} (or be omitted)")
            }
            VirtualAddress::Fwmark { .. } => "be omitted for a fwmark service".to_string(),
        };
        return Err(FieldError::new(
            format!("{field}.port"),
            format!(
                "mode {} cannot change the destination port: {} must {must}",
                service.mode, rs.port
            ),
        ));
    }
    if service.realserver(rs.address, rs.port).is_some() {
        return Err(FieldError::new(
            format!("{field}.address"),
            format!(
                "duplicate realserver {} in service {}",
                rs.endpoint(),
                service.name
            ),
        ));
    }
    Ok(rs)
}

impl TryFrom<&pb::UpdateRealServerRequest> for RealServerPatch {
    type Error = FieldError;

    fn try_from(r: &pb::UpdateRealServerRequest) -> Result<RealServerPatch> {
        let patch = RealServerPatch {
            weight: r.weight.map(|w| weight("weight", Some(w), 1)).transpose()?,
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
            admin_state: r
                .admin_state
                .as_deref()
                .map(|s| word("admin_state", s, AdminState::Active, AdminState::words()))
                .transpose()?,
        };
        if patch == RealServerPatch::default() {
            return Err(FieldError::new(
                "weight",
                "nothing to change: set weight, upper_threshold, lower_threshold or admin_state",
            ));
        }
        Ok(patch)
    }
}

/// Identifies a realserver in requests: address plus port (0 = the service's default).
pub fn realserver_key(address: &str, port_value: u32) -> Result<(IpAddr, u16)> {
    Ok((ip("address", address)?, port("port", port_value, true)?))
}

/// Applies a patch, keeping the threshold rule.
pub fn patch_realserver(rs: &RealServer, patch: &RealServerPatch) -> Result<RealServer> {
    let mut next = rs.clone();
    if let Some(w) = patch.weight {
        next.weight = w;
    }
    if let Some(u) = patch.upper_threshold {
        next.upper_threshold = u;
    }
    if let Some(l) = patch.lower_threshold {
        next.lower_threshold = l;
    }
    if let Some(a) = patch.admin_state {
        next.admin_state = a;
    }
    if next.upper_threshold > 0 && next.lower_threshold > next.upper_threshold {
        return Err(FieldError::new(
            "lower_threshold",
            format!(
                "must not exceed upper_threshold {}, got {}",
                next.upper_threshold, next.lower_threshold
            ),
        ));
    }
    Ok(next)
}

// ---- domain → wire ----
