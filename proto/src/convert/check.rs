//! Health checks from the wire.

use super::rules::*;
use super::{FieldError, Result};
use crate::model::*;
use crate::pb;

const KINDS: &str = "tcp, http, https, exec, udp, dns, ping";

/// Most bytes a UDP check sends or expects: one datagram on any link.
const MAX_DATAGRAM: usize = 1400;

/// Bytes from hex digits (the API's form of a UDP payload).
fn from_hex(field: &str, text: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = text
        .chars()
        .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| FieldError::new(field, format!("{text:?} must be hex digits")))?;
    if !digits.len().is_multiple_of(2) {
        return Err(FieldError::new(
            field,
            format!("{text:?} must have an even number of hex digits"),
        ));
    }
    if digits.len() / 2 > MAX_DATAGRAM {
        return Err(FieldError::new(
            field,
            format!(
                "must be at most {MAX_DATAGRAM} bytes, got {}",
                digits.len() / 2
            ),
        ));
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// A DNS check's query and expected answer.
fn dns(h: &pb::HealthCheck) -> Result<DnsProbe> {
    let query_type = if h.dns_type.is_empty() {
        DnsType::Soa
    } else {
        DnsType::parse(&h.dns_type).ok_or_else(|| {
            let all: Vec<&str> = DnsType::ALL.iter().map(|t| t.as_str()).collect();
            FieldError::new(
                "service.health_check.dns_type",
                format!(
                    "unknown type {:?}; expected one of {}",
                    h.dns_type,
                    all.join(", ")
                ),
            )
        })?
    };
    let name = if h.dns_name.is_empty() {
        ".".to_string()
    } else {
        h.dns_name.clone()
    };
    dns_name("service.health_check.dns_name", &name)?;
    let expect = (!h.dns_expect.is_empty()).then(|| h.dns_expect.clone());
    if let Some(e) = &expect {
        let field = "service.health_check.dns_expect";
        let fits = match query_type {
            DnsType::A => e.parse::<std::net::Ipv4Addr>().is_ok(),
            DnsType::Aaaa => e.parse::<std::net::Ipv6Addr>().is_ok(),
            DnsType::Soa => {
                return Err(FieldError::new(field, "is not supported for SOA queries"));
            }
            DnsType::Txt => true,
            _ => dns_name(field, e).is_ok(),
        };
        if !fits {
            return Err(FieldError::new(
                field,
                format!("{e:?} is not a {} record's value", query_type.as_str()),
            ));
        }
    }
    Ok(DnsProbe {
        query_type,
        name,
        expect,
    })
}

/// A domain name: "." or dot-separated labels of 1..=63 printable
/// characters, 253 in all.
fn dns_name(field: &str, name: &str) -> Result<()> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = name == "."
        || (!bare.is_empty()
            && bare.len() <= 253
            && bare
                .split('.')
                .all(|l| (1..=63).contains(&l.len()) && l.chars().all(|c| c.is_ascii_graphic())));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{name:?} is not a domain name (labels of 1-63 characters, 253 in all)"),
        ))
    }
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
            "udp" => Probe::Udp(UdpProbe {
                payload: from_hex("service.health_check.udp_payload", &h.udp_payload)?,
                expect: (!h.udp_expect.is_empty())
                    .then(|| from_hex("service.health_check.udp_expect", &h.udp_expect))
                    .transpose()?,
            }),
            "dns" => Probe::Dns(dns(&h)?),
            "ping" => Probe::Ping,
            "" => {
                return Err(FieldError::new(
                    "service.health_check.type",
                    format!("is required: one of {KINDS}"),
                ))
            }
            other => {
                return Err(FieldError::new(
                    "service.health_check.type",
                    format!("unknown value {other:?}; expected one of {KINDS}"),
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
