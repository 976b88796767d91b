//! The scalar rules every message is built from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use super::{FieldError, Result};
use crate::model::*;

/// Longest persistence timeout ipvsadm accepts: 31 days.
pub const MAX_PERSISTENCE_SECS: u32 = 31 * 24 * 3600;
pub(crate) const DEFAULT_INTERVAL_MS: u64 = 2_000;
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 1_000;
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;

/// Parses a vocabulary word; empty means `default`.
pub(crate) fn word<T: FromStr + Copy>(
    field: &str,
    value: &str,
    default: T,
    accepted: String,
) -> Result<T> {
    if value.is_empty() {
        return Ok(default);
    }
    T::from_str(value).map_err(|_| {
        FieldError::new(
            field,
            format!("unknown value {value:?}; expected one of {accepted}"),
        )
    })
}

pub(crate) fn ip(field: &str, value: &str) -> Result<IpAddr> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    value
        .parse()
        .map_err(|_| FieldError::new(field, format!("{value:?} is not an IPv4 or IPv6 address")))
}

/// An address that can take unicast traffic (not 0.0.0.0, ::, multicast or broadcast).
pub fn unicast_ip(field: &str, value: &str) -> Result<IpAddr> {
    let addr = ip(field, value)?;
    let ok = match addr {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    if ok {
        Ok(addr)
    } else {
        Err(FieldError::new(
            field,
            format!("{addr} is not a unicast address"),
        ))
    }
}

pub(crate) fn port(field: &str, value: u32, allow_zero: bool) -> Result<u16> {
    let lowest = if allow_zero { 0 } else { 1 };
    match u16::try_from(value) {
        Ok(p) if u32::from(p) >= lowest => Ok(p),
        _ => Err(FieldError::new(
            field,
            format!("must be {lowest}..=65535, got {value}"),
        )),
    }
}

pub(crate) fn weight(field: &str, value: Option<u32>, default: u16) -> Result<u16> {
    match value {
        None => Ok(default),
        Some(w) => u16::try_from(w)
            .map_err(|_| FieldError::new(field, format!("must be 0..=65535, got {w}"))),
    }
}

/// Service and node names: 1..63 of `[a-z0-9-_.]`, starting with a letter or digit.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() {
        Err(FieldError::new(field, "is required"))
    } else if name.len() > 63 || !valid_chars || !starts_well {
        Err(FieldError::new(
            field,
            format!("{name:?} must be 1..63 characters of a-z 0-9 - _ . starting with a letter or digit"),
        ))
    } else {
        Ok(())
    }
}

pub fn labels(field: &str, map: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    for (k, v) in &map {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !ok_key {
            return Err(FieldError::new(
                field,
                format!("label key {k:?} must be 1..63 characters of A-Z a-z 0-9 - _ . /"),
            ));
        }
        if v.len() > 253 || v.chars().any(|c| c.is_control()) {
            return Err(FieldError::new(
                format!("{field}[{k}]"),
                "value must be at most 253 printable characters",
            ));
        }
    }
    Ok(map)
}

pub(crate) fn millis(field: &str, d: Option<prost_types::Duration>, default: u64) -> Result<u64> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Err(FieldError::new(field, "must be a positive duration"));
    }
    let ms = u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(u64::try_from(d.nanos).unwrap_or(0) / 1_000_000))
        .filter(|ms| *ms <= 3_600_000)
        .ok_or_else(|| FieldError::new(field, "must be at most 1h"))?;
    if ms == 0 {
        return Err(FieldError::new(field, "must be at least 1ms"));
    }
    Ok(ms)
}

/// Parses a persistence netmask: dotted IPv4 mask, or a prefix length (`24`, `/64`).
pub(crate) fn netmask(field: &str, value: &str, family: Family) -> Result<u8> {
    let bad = |why: &str| FieldError::new(field, format!("{value:?} {why}"));
    let digits = value.strip_prefix('/').unwrap_or(value);
    if let Ok(len) = digits.parse::<u8>() {
        if len == 0 || len > family.max_prefix() {
            return Err(bad(&format!(
                "is not a prefix length of 1..={} for {family}",
                family.max_prefix()
            )));
        }
        return Ok(len);
    }
    match (family, value.parse::<std::net::Ipv4Addr>()) {
        (Family::Inet, Ok(mask)) => {
            let bits = u32::from(mask);
            let len = bits.leading_ones();
            if bits == 0 || bits.checked_shl(len).unwrap_or(0) != 0 {
                Err(bad("is not a contiguous netmask"))
            } else {
                Ok(len as u8)
            }
        }
        (Family::Inet6, Ok(_)) => Err(bad(
            "is an IPv4 netmask; IPv6 services take a prefix length",
        )),
        _ => Err(bad("is neither a netmask nor a prefix length")),
    }
}
