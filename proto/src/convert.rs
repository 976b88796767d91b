//! Wire ⇄ domain conversions, and every input rule.
//!
//! `TryFrom<pb::…>` turns what a client sent into the domain model or a
//! [`FieldError`] that names the offending field (as a path of protobuf field
//! names, e.g. `service.realservers[1].weight`) and the rule it broke. Rules
//! that relate a realserver to its service live in [`check_realserver`], which
//! the controller also runs when a realserver is added to an existing service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::model::*;
use crate::pb;

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

/// Longest persistence timeout ipvsadm accepts: 31 days.
pub const MAX_PERSISTENCE_SECS: u32 = 31 * 24 * 3600;
const DEFAULT_INTERVAL_MS: u64 = 2_000;
const DEFAULT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;

/// Parses a vocabulary word; empty means `default`.
fn word<T: FromStr + Copy>(field: &str, value: &str, default: T, accepted: String) -> Result<T> {
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

fn ip(field: &str, value: &str) -> Result<IpAddr> {
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

fn port(field: &str, value: u32, allow_zero: bool) -> Result<u16> {
    let lowest = if allow_zero { 0 } else { 1 };
    match u16::try_from(value) {
        Ok(p) if u32::from(p) >= lowest => Ok(p),
        _ => Err(FieldError::new(
            field,
            format!("must be {lowest}..=65535, got {value}"),
        )),
    }
}

fn weight(field: &str, value: Option<u32>, default: u16) -> Result<u16> {
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

fn millis(field: &str, d: Option<prost_types::Duration>, default: u64) -> Result<u64> {
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
fn netmask(field: &str, value: &str, family: Family) -> Result<u8> {
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

impl TryFrom<pb::Service> for Service {
    type Error = FieldError;

    fn try_from(s: pb::Service) -> Result<Service> {
        check_name("service.name", &s.name)?;
        let mut mark_match = None;
        let address = match s.virtual_address {
            None => {
                return Err(FieldError::new(
                    "service.virtual_address",
                    "is required: set endpoint (VIP:port/proto) or fwmark",
                ))
            }
            Some(pb::service::VirtualAddress::Endpoint(e)) => VirtualAddress::Endpoint {
                address: unicast_ip("service.endpoint.address", &e.address)?,
                port: port("service.endpoint.port", e.port, false)?,
                protocol: word(
                    "service.endpoint.protocol",
                    &e.protocol,
                    Protocol::Tcp,
                    Protocol::words(),
                )?,
            },
            Some(pb::service::VirtualAddress::Fwmark(f)) => {
                if f.mark == 0 {
                    return Err(FieldError::new(
                        "service.fwmark.mark",
                        "must be 1..=4294967295, got 0",
                    ));
                }
                let family = word(
                    "service.fwmark.family",
                    &f.family,
                    Family::Inet,
                    Family::words(),
                )?;
                mark_match = fwmark_match(&f, family)?;
                VirtualAddress::Fwmark {
                    mark: f.mark,
                    family,
                }
            }
        };
        let family = address.family();
        let scheduler = word(
            "service.scheduler",
            &s.scheduler,
            Scheduler::Wlc,
            Scheduler::words(),
        )?;
        let mut scheduler_flags = BTreeSet::new();
        for (i, f) in s.scheduler_flags.iter().enumerate() {
            let field = format!("service.scheduler_flags[{i}]");
            let flag = SchedulerFlag::from_str(f).map_err(|_| {
                FieldError::new(
                    &field,
                    format!(
                        "unknown flag {f:?}; expected one of {}",
                        SchedulerFlag::words()
                    ),
                )
            })?;
            if flag.scheduler() != scheduler {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{flag} applies to scheduler {}, not {scheduler}",
                        flag.scheduler()
                    ),
                ));
            }
            scheduler_flags.insert(flag);
        }
        let mode = word(
            "service.mode",
            &s.mode,
            ForwardingMode::Dr,
            ForwardingMode::words(),
        )?;
        let tunnel_type = word(
            "service.tunnel_type",
            &s.tunnel_type,
            TunnelType::Ipip,
            TunnelType::words(),
        )?;
        if mode != ForwardingMode::Tun && !s.tunnel_type.is_empty() {
            return Err(FieldError::new(
                "service.tunnel_type",
                format!("only applies to mode tun, not {mode}"),
            ));
        }
        let persistence = match s.persistence {
            None => None,
            Some(p) if p.timeout_seconds == 0 && p.netmask.is_empty() => None,
            Some(p) => {
                if p.timeout_seconds == 0 {
                    return Err(FieldError::new(
                        "service.persistence.netmask",
                        "needs a persistence timeout (timeout_seconds > 0)",
                    ));
                }
                if p.timeout_seconds > MAX_PERSISTENCE_SECS {
                    return Err(FieldError::new(
                        "service.persistence.timeout_seconds",
                        format!(
                            "must be 1..={MAX_PERSISTENCE_SECS} (31 days), got {}",
                            p.timeout_seconds
                        ),
                    ));
                }
                let prefix_len = if p.netmask.is_empty() {
                    None
                } else {
                    Some(netmask("service.persistence.netmask", &p.netmask, family)?)
                };
                Some(Persistence {
                    timeout_secs: p.timeout_seconds,
                    prefix_len,
                })
            }
        };
        let one_packet = s.one_packet;
        if one_packet {
            if let VirtualAddress::Endpoint { protocol, .. } = address {
                if protocol != Protocol::Udp {
                    return Err(FieldError::new(
                        "service.one_packet",
                        format!("only applies to udp, not {protocol}"),
                    ));
                }
            }
        }
        let health_check = s.health_check.map(HealthCheck::try_from).transpose()?;
        let sorry_server = match s.sorry_server {
            None => None,
            Some(b) => {
                let addr = unicast_ip("service.sorry_server.address", &b.address)?;
                if Family::of(addr) != family {
                    return Err(FieldError::new(
                        "service.sorry_server.address",
                        format!("{addr} is {}, the service is {family}", Family::of(addr)),
                    ));
                }
                Some(SocketAddr::new(
                    addr,
                    port("service.sorry_server.port", b.port, true)?,
                ))
            }
        };
        if s.hysteresis > s.quorum {
            return Err(FieldError::new(
                "service.hysteresis",
                format!("must not exceed quorum {}, got {}", s.quorum, s.hysteresis),
            ));
        }
        let directors = match s.directors {
            None => DirectorPlacement::default(),
            Some(d) => {
                for (i, name) in d.preferred.iter().enumerate() {
                    if name.is_empty() {
                        return Err(FieldError::new(
                            format!("service.directors.preferred[{i}]"),
                            "is empty",
                        ));
                    }
                }
                DirectorPlacement {
                    selector: labels(
                        "service.directors.selector",
                        d.selector.into_iter().collect(),
                    )?,
                    preferred: d.preferred,
                }
            }
        };
        let mut service = Service {
            name: s.name,
            address,
            scheduler,
            scheduler_flags,
            mode,
            tunnel_type,
            persistence,
            one_packet,
            realservers: Vec::with_capacity(s.realservers.len()),
            realserver_selector: labels(
                "service.realserver_selector",
                s.realserver_selector.into_iter().collect(),
            )?,
            default_weight: weight("service.default_weight", s.default_weight, 1)?,
            health_check,
            sorry_server,
            quorum: s.quorum,
            hysteresis: s.hysteresis,
            directors,
            mark_match,
            create_revision: 0,
            mod_revision: 0,
        };
        for (i, rs) in s.realservers.into_iter().enumerate() {
            let field = format!("service.realservers[{i}]");
            let rs = realserver(&field, rs)?;
            let rs = check_realserver(&service, rs, &field)?;
            service.realservers.push(rs);
        }
        Ok(service)
    }
}

/// Most ports one fwmark service may mark; a longer list is a typo or a range.
const MAX_MARK_PORTS: usize = 64;

/// The packets a fwmark service marks itself, if it names an address.
fn fwmark_match(f: &pb::Fwmark, family: Family) -> Result<Option<MarkMatch>> {
    if f.address.is_empty() {
        if !f.protocol.is_empty() || !f.ports.is_empty() {
            return Err(FieldError::new(
                "service.fwmark.address",
                "is required when protocol or ports are set (the VIP whose packets get the mark)",
            ));
        }
        return Ok(None);
    }
    let address = unicast_ip("service.fwmark.address", &f.address)?;
    if Family::of(address) != family {
        return Err(FieldError::new(
            "service.fwmark.address",
            format!("must be an {family} address (service.fwmark.family), got {address}"),
        ));
    }
    let protocol = word(
        "service.fwmark.protocol",
        &f.protocol,
        Protocol::Tcp,
        Protocol::words(),
    )?;
    if f.ports.len() > MAX_MARK_PORTS {
        return Err(FieldError::new(
            "service.fwmark.ports",
            format!("has {} ports; at most {MAX_MARK_PORTS}", f.ports.len()),
        ));
    }
    let mut ports = Vec::with_capacity(f.ports.len());
    for (i, p) in f.ports.iter().enumerate() {
        let p = port(&format!("service.fwmark.ports[{i}]"), *p, false)?;
        if ports.contains(&p) {
            return Err(FieldError::new(
                format!("service.fwmark.ports[{i}]"),
                format!("repeats port {p}"),
            ));
        }
        ports.push(p);
    }
    ports.sort_unstable();
    Ok(Some(MarkMatch {
        address,
        protocol,
        ports,
    }))
}

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

impl TryFrom<pb::HealthCheck> for HealthCheck {
    type Error = FieldError;

    fn try_from(h: pb::HealthCheck) -> Result<HealthCheck> {
        let http = |h: &pb::HealthCheck| -> Result<HttpProbe> {
            let path = if h.http_path.is_empty() {
                "/".to_string()
            } else {
                h.http_path.clone()
            };
            if !path.starts_with('/') {
                return Err(FieldError::new(
                    "service.health_check.http_path",
                    format!("{path:?} must start with /"),
                ));
            }
            let mut status = Vec::new();
            for (i, code) in h.http_status.iter().enumerate() {
                match u16::try_from(*code) {
                    Ok(c) if (100..=599).contains(&c) => status.push(c),
                    _ => {
                        return Err(FieldError::new(
                            format!("service.health_check.http_status[{i}]"),
                            format!("must be an HTTP status 100..=599, got {code}"),
                        ))
                    }
                }
            }
            if status.is_empty() {
                status.push(200);
            }
            let digest = if h.http_digest.is_empty() {
                None
            } else if h.http_digest.len() == 32
                && h.http_digest.chars().all(|c| c.is_ascii_hexdigit())
            {
                Some(h.http_digest.to_ascii_lowercase())
            } else {
                return Err(FieldError::new(
                    "service.health_check.http_digest",
                    "must be an MD5 digest of 32 hex digits",
                ));
            };
            if !h.http_body_regex.is_empty() {
                if let Err(e) = regex::bytes::Regex::new(&h.http_body_regex) {
                    // The library's message spans lines; the first says what is wrong.
                    let why = e.to_string();
                    let why = why.lines().last().unwrap_or_default().trim().to_string();
                    return Err(FieldError::new(
                        "service.health_check.http_body_regex",
                        format!("is not a valid regular expression: {why}"),
                    ));
                }
            }
            Ok(HttpProbe {
                path,
                status,
                body_regex: (!h.http_body_regex.is_empty()).then(|| h.http_body_regex.clone()),
                digest,
                host: (!h.http_host.is_empty()).then(|| h.http_host.clone()),
            })
        };
        let probe = match h.r#type.as_str() {
            "tcp" => Probe::Tcp,
            "http" => Probe::Http(http(&h)?),
            "https" => Probe::Https(http(&h)?),
            "exec" => {
                if h.exec_command.is_empty() {
                    return Err(FieldError::new(
                        "service.health_check.exec_command",
                        "is required for type exec",
                    ));
                }
                // The agents run it without a shell or a PATH of their own.
                if !h.exec_command.starts_with('/') {
                    return Err(FieldError::new(
                        "service.health_check.exec_command",
                        format!("{:?} must be an absolute path", h.exec_command),
                    ));
                }
                Probe::Exec {
                    command: h.exec_command.clone(),
                    args: h.exec_args.clone(),
                }
            }
            "" => {
                return Err(FieldError::new(
                    "service.health_check.type",
                    "is required: tcp, http, https or exec",
                ))
            }
            other => {
                return Err(FieldError::new(
                    "service.health_check.type",
                    format!("unknown value {other:?}; expected one of tcp, http, https, exec"),
                ))
            }
        };
        let interval_ms = millis(
            "service.health_check.interval",
            h.interval,
            DEFAULT_INTERVAL_MS,
        )?;
        let timeout_ms = millis(
            "service.health_check.timeout",
            h.timeout,
            DEFAULT_TIMEOUT_MS.min(interval_ms),
        )?;
        if timeout_ms > interval_ms {
            return Err(FieldError::new(
                "service.health_check.timeout",
                format!("{timeout_ms}ms must not exceed the interval {interval_ms}ms"),
            ));
        }
        let count = |field: &str, v: Option<u32>, default: u32| -> Result<u32> {
            match v {
                None => Ok(default),
                Some(n) if (1..=100).contains(&n) => Ok(n),
                Some(n) => Err(FieldError::new(field, format!("must be 1..=100, got {n}"))),
            }
        };
        Ok(HealthCheck {
            probe,
            interval_ms,
            timeout_ms,
            rise: count("service.health_check.rise", h.rise, DEFAULT_RISE)?,
            fall: count("service.health_check.fall", h.fall, DEFAULT_FALL)?,
            port: port("service.health_check.port", h.port, true)?,
            inhibit_on_failure: h.inhibit_on_failure,
        })
    }
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

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> pb::Service {
        let virtual_address = Some(match s.address {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } => pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: address.to_string(),
                port: port.into(),
                protocol: protocol.to_string(),
            }),
            VirtualAddress::Fwmark { mark, family } => {
                let m = s.mark_match.as_ref();
                pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark,
                    family: family.to_string(),
                    address: m.map(|m| m.address.to_string()).unwrap_or_default(),
                    protocol: m.map(|m| m.protocol.to_string()).unwrap_or_default(),
                    ports: m
                        .map(|m| m.ports.iter().map(|&p| u32::from(p)).collect())
                        .unwrap_or_default(),
                })
            }
        });
        pb::Service {
            name: s.name.clone(),
            virtual_address,
            scheduler: s.scheduler.to_string(),
            scheduler_flags: s.scheduler_flags.iter().map(ToString::to_string).collect(),
            mode: s.mode.to_string(),
            tunnel_type: if s.mode == ForwardingMode::Tun {
                s.tunnel_type.to_string()
            } else {
                String::new()
            },
            persistence: s.persistence.map(|p| pb::Persistence {
                timeout_seconds: p.timeout_secs,
                netmask: p
                    .prefix_len
                    .map(|l| prefix_to_netmask(s.family(), l))
                    .unwrap_or_default(),
            }),
            one_packet: s.one_packet,
            realservers: s.realservers.iter().map(pb::RealServer::from).collect(),
            realserver_selector: s.realserver_selector.clone().into_iter().collect(),
            default_weight: Some(s.default_weight.into()),
            health_check: s.health_check.as_ref().map(pb::HealthCheck::from),
            sorry_server: s.sorry_server.map(|a| pb::Backend {
                address: a.ip().to_string(),
                port: a.port().into(),
            }),
            quorum: s.quorum,
            hysteresis: s.hysteresis,
            directors: Some(pb::DirectorPlacement {
                selector: s.directors.selector.clone().into_iter().collect(),
                preferred: s.directors.preferred.clone(),
            }),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
        }
    }
}

/// IPv4 prefixes print as dotted masks (as ipvsadm shows them), IPv6 as lengths.
pub fn prefix_to_netmask(family: Family, len: u8) -> String {
    match family {
        Family::Inet => {
            let bits = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            std::net::Ipv4Addr::from(bits).to_string()
        }
        Family::Inet6 => len.to_string(),
    }
}

impl From<&RealServer> for pb::RealServer {
    fn from(rs: &RealServer) -> pb::RealServer {
        pb::RealServer {
            address: rs.address.to_string(),
            port: rs.port.into(),
            weight: Some(rs.weight.into()),
            upper_threshold: rs.upper_threshold,
            lower_threshold: rs.lower_threshold,
            admin_state: rs.admin_state.to_string(),
        }
    }
}

impl From<&HealthCheck> for pb::HealthCheck {
    fn from(h: &HealthCheck) -> pb::HealthCheck {
        let duration = |ms: u64| prost_types::Duration {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        };
        let mut out = pb::HealthCheck {
            r#type: h.probe.kind().to_string(),
            interval: Some(duration(h.interval_ms)),
            timeout: Some(duration(h.timeout_ms)),
            rise: Some(h.rise),
            fall: Some(h.fall),
            port: h.port.into(),
            inhibit_on_failure: h.inhibit_on_failure,
            ..Default::default()
        };
        match &h.probe {
            Probe::Tcp => {}
            Probe::Http(p) | Probe::Https(p) => {
                out.http_path = p.path.clone();
                out.http_status = p.status.iter().map(|s| u32::from(*s)).collect();
                out.http_body_regex = p.body_regex.clone().unwrap_or_default();
                out.http_digest = p.digest.clone().unwrap_or_default();
                out.http_host = p.host.clone().unwrap_or_default();
            }
            Probe::Exec { command, args } => {
                out.exec_command = command.clone();
                out.exec_args = args.clone();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> pb::Service {
        pb::Service {
            name: "web".into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: "10.10.1.30".into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            scheduler: "wlc".into(),
            mode: "nat".into(),
            persistence: Some(pb::Persistence {
                timeout_seconds: 30,
                netmask: "255.255.255.0".into(),
            }),
            realservers: vec![pb::RealServer {
                address: "10.0.0.1".into(),
                port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn field_of(s: pb::Service) -> String {
        match Service::try_from(s) {
            Ok(_) => panic!("accepted invalid input"),
            Err(e) => e.field,
        }
    }

    fn set_mark(s: &mut pb::Service, address: &str, protocol: &str, ports: &[u32]) {
        s.mode = "dr".into();
        s.realservers.iter_mut().for_each(|r| r.port = 0);
        s.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark: 7,
            family: String::new(),
            address: address.into(),
            protocol: protocol.into(),
            ports: ports.to_vec(),
        }));
    }

    #[test]
    fn fwmark_match_is_parsed_sorted_and_round_trips() {
        let mut p = web();
        set_mark(&mut p, "10.0.0.1", "", &[443, 80]);
        let s = Service::try_from(p).unwrap();
        let m = s.mark_match.clone().unwrap();
        assert_eq!(m.to_string(), "10.0.0.1 tcp 80,443");
        assert_eq!(s.vip(), Some("10.0.0.1".parse().unwrap()));
        assert!(s.catches("10.0.0.1".parse().unwrap(), Protocol::Tcp, 443));
        assert!(!s.catches("10.0.0.1".parse().unwrap(), Protocol::Udp, 443));
        assert!(!s.catches("10.0.0.1".parse().unwrap(), Protocol::Tcp, 8080));
        let back = pb::Service::from(&s);
        assert_eq!(Service::try_from(back).unwrap(), s);

        // Without an address the operator marks packets; no VIP is placed.
        let mut p = web();
        set_mark(&mut p, "", "", &[]);
        let s = Service::try_from(p).unwrap();
        assert_eq!((s.vip(), s.mark_match), (None, None));
    }

    #[test]
    fn valid_service_round_trips() {
        let s = Service::try_from(web()).unwrap();
        assert_eq!(
            s.persistence,
            Some(Persistence {
                timeout_secs: 30,
                prefix_len: Some(24)
            })
        );
        assert_eq!(s.realservers[0].weight, 1);
        let back = pb::Service::from(&s);
        assert_eq!(Service::try_from(back).unwrap(), s);
    }

    #[test]
    fn defaults_follow_ipvsadm() {
        let mut p = web();
        p.scheduler.clear();
        p.mode.clear();
        p.realservers[0].port = 0;
        let s = Service::try_from(p).unwrap();
        assert_eq!((s.scheduler, s.mode), (Scheduler::Wlc, ForwardingMode::Dr));
        assert_eq!(s.realservers[0].port, 80, "port 0 takes the VIP port");
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = fn(&mut pb::Service);
        let cases: Vec<(&str, Mutation)> = vec![
            ("service.name", (|s| s.name = "Web!".into())),
            (
                "service.endpoint.address",
                (|s| {
                    if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                        e.address = "10.1".into()
                    }
                }),
            ),
            (
                "service.endpoint.port",
                (|s| {
                    if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                        e.port = 70000
                    }
                }),
            ),
            ("service.scheduler", (|s| s.scheduler = "fastest".into())),
            (
                "service.scheduler_flags[0]",
                (|s| s.scheduler_flags = vec!["sh-port".into()]),
            ),
            (
                "service.realservers[0].weight",
                (|s| s.realservers[0].weight = Some(70000)),
            ),
            (
                "service.realservers[0].address",
                (|s| s.realservers[0].address = "2001:db8::1".into()),
            ),
            (
                "service.persistence.netmask",
                (|s| s.persistence.as_mut().unwrap().netmask = "255.0.255.0".into()),
            ),
            ("service.one_packet", (|s| s.one_packet = true)),
            ("service.tunnel_type", (|s| s.tunnel_type = "ipip".into())),
            (
                "service.fwmark.mark",
                (|s| {
                    s.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                        mark: 0,
                        ..Default::default()
                    }))
                }),
            ),
            (
                "service.fwmark.address",
                (|s| set_mark(s, "", "tcp", &[80])),
            ),
            (
                "service.fwmark.address",
                (|s| set_mark(s, "2001:db8::1", "", &[])),
            ),
            (
                "service.fwmark.protocol",
                (|s| set_mark(s, "10.0.0.1", "icmp", &[])),
            ),
            (
                "service.fwmark.ports[1]",
                (|s| set_mark(s, "10.0.0.1", "", &[80, 0])),
            ),
            (
                "service.fwmark.ports[2]",
                (|s| set_mark(s, "10.0.0.1", "", &[80, 443, 80])),
            ),
            (
                "service.realservers[1].address",
                (|s| s.realservers.push(s.realservers[0].clone())),
            ),
            ("service.realservers[0].port", (|s| s.mode = "dr".into())),
            (
                "service.health_check.rise",
                (|s| {
                    s.health_check = Some(pb::HealthCheck {
                        r#type: "tcp".into(),
                        rise: Some(0),
                        ..Default::default()
                    })
                }),
            ),
            (
                "service.health_check.http_body_regex",
                (|s| {
                    s.health_check = Some(pb::HealthCheck {
                        r#type: "http".into(),
                        http_body_regex: "ok(".into(),
                        ..Default::default()
                    })
                }),
            ),
            (
                "service.health_check.interval",
                (|s| {
                    s.health_check = Some(pb::HealthCheck {
                        r#type: "tcp".into(),
                        interval: Some(prost_types::Duration {
                            seconds: -1,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = web();
            mutate(&mut s);
            assert_eq!(field_of(s), field);
        }
    }

    #[test]
    fn netmask_forms() {
        assert_eq!(netmask("f", "255.255.255.0", Family::Inet), Ok(24));
        assert_eq!(netmask("f", "/16", Family::Inet), Ok(16));
        assert_eq!(netmask("f", "64", Family::Inet6), Ok(64));
        assert!(netmask("f", "33", Family::Inet).is_err());
        assert!(netmask("f", "0.0.0.0", Family::Inet).is_err());
        assert!(netmask("f", "255.255.255.0", Family::Inet6).is_err());
        assert_eq!(prefix_to_netmask(Family::Inet, 24), "255.255.255.0");
        assert_eq!(prefix_to_netmask(Family::Inet, 32), "255.255.255.255");
    }
}
