//! Wire ⇄ domain conversions, and every input rule.
//!
//! `TryFrom<pb::…>` turns what a client sent into the domain model or a
//! [`FieldError`] that names the offending field (as a path of protobuf field
//! names, e.g. `service.realservers[1].weight`) and the rule it broke. Rules
//! that relate a realserver to its service live in [`check_realserver`], which
//! the controller also runs when a realserver is added to an existing service.
//!
//! - [`rules`]: the scalar rules (names, addresses, ports, weights, labels,
//!   durations, netmasks);
//! - [`service`]: a whole service, fwmark matches included;
//! - [`realserver`]: realservers and their patches, checked against their
//!   service;
//! - [`check`]: health checks;
//! - [`wire`]: the domain model back onto the wire (`From<&…> for pb::…`).

mod check;
mod realserver;
mod rules;
mod service;
mod wire;

pub use realserver::{check_realserver, patch_realserver, realserver, realserver_key};
pub use rules::{check_name, labels, unicast_ip, MAX_PERSISTENCE_SECS};
pub use wire::{parse_vip_leases, prefix_to_netmask, vip_leases};

/// Bad input: the field (a path of protobuf field names) and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {rule}")]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

type Result<T> = std::result::Result<T, FieldError>;

/// The path of a field of the `index`th service in a batch: `service.x` →
/// `services[index].x`.
pub fn batch_field(index: usize, field: &str) -> String {
    match field.strip_prefix("service") {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => {
            format!("services[{index}]{rest}")
        }
        _ => format!("services[{index}].{field}"),
    }
}

#[cfg(test)]
mod tests;
