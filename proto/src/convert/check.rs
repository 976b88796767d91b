//! Health checks from the wire.

use super::rules::*;
use super::{FieldError, Result};
use crate::model::*;
use crate::pb;

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
