//! Turns command-line words into API messages. lbctl only splits syntax here;
//! the controller applies every rule, so errors name the same fields whether
//! a request came from lbctl, grpcurl or an agent.

use crate::cli::{CheckFlags, ServiceFlags};
use anyhow::{bail, Context};
use lb_proto::pb;

/// `10.10.1.30:80/tcp`, `[2001:db8::1]:443/tcp`, `10.0.0.5:53/udp`; protocol defaults to tcp.
pub fn vip(text: &str) -> anyhow::Result<pb::Endpoint> {
    let (addr_port, protocol) = match text.rsplit_once('/') {
        Some((a, p)) => (a, p.to_string()),
        None => (text, String::new()),
    };
    let (address, port) = host_port(addr_port)
        .with_context(|| format!("--vip {text:?}: expected ADDRESS:PORT[/PROTOCOL]"))?;
    Ok(pb::Endpoint {
        address,
        port,
        protocol,
    })
}

/// `ADDRESS`, `ADDRESS:PORT`, `[V6]`, `[V6]:PORT`; a bare IPv6 address has no port.
pub fn address_port(text: &str) -> anyhow::Result<(String, u32)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .context("missing ] after the IPv6 address")?;
        let port = match after.strip_prefix(':') {
            Some(p) => number(p)?,
            None if after.is_empty() => 0,
            None => bail!("unexpected {after:?} after ]"),
        };
        return Ok((addr.to_string(), port));
    }
    match text.matches(':').count() {
        0 => Ok((text.to_string(), 0)),
        1 => host_port(text),
        _ => Ok((text.to_string(), 0)),
    }
}

/// A realserver argument, `ADDRESS[:PORT]`.
pub fn realserver(text: &str) -> anyhow::Result<(String, u32)> {
    address_port(text).with_context(|| format!("realserver {text:?}"))
}

fn host_port(text: &str) -> anyhow::Result<(String, u32)> {
    if text.starts_with('[') {
        return address_port(text);
    }
    let (addr, port) = text.rsplit_once(':').context("missing :PORT")?;
    Ok((addr.to_string(), number(port)?))
}

fn number(text: &str) -> anyhow::Result<u32> {
    text.parse()
        .with_context(|| format!("port {text:?} is not a number"))
}

/// `2s`, `500ms`, `1.5s`, `1m`, `24h`, `30d`; a leading `-` is kept so the
/// controller can reject it by name.
pub fn duration(text: &str) -> anyhow::Result<prost_types::Duration> {
    let ms = lb_proto::process::duration_ms(text).map_err(anyhow::Error::msg)?;
    Ok(prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// `key=value`.
pub fn label(text: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .with_context(|| format!("label {text:?}: expected key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Writes the given flags onto a service message; absent flags leave fields alone.
pub(crate) fn apply_flags(svc: &mut pb::Service, f: &ServiceFlags) -> anyhow::Result<()> {
    if let Some(vip) = &f.vip {
        svc.virtual_address = Some(pb::service::VirtualAddress::Endpoint(self::vip(vip)?));
    }
    if let Some(mark) = f.fwmark {
        svc.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark,
            family: f.family.clone().unwrap_or_default(),
            address: f.mark_address.clone().unwrap_or_default(),
            protocol: f.mark_protocol.clone().unwrap_or_default(),
            ports: f.mark_ports.clone(),
        }));
    }
    set_given(&mut svc.scheduler, &f.scheduler);
    set_given(&mut svc.mode, &f.mode);
    set_given(&mut svc.tunnel_type, &f.tunnel_type);
    if !f.scheduler_flags.is_empty() {
        svc.scheduler_flags = f.scheduler_flags.clone();
    }
    if f.persistence.is_some() || f.netmask.is_some() {
        let p = svc.persistence.get_or_insert_with(Default::default);
        if let Some(t) = f.persistence {
            p.timeout_seconds = t;
            if t == 0 && f.netmask.is_none() {
                p.netmask.clear();
            }
        }
        set_given(&mut p.netmask, &f.netmask);
    }
    if let Some(o) = f.one_packet {
        svc.one_packet = o;
    }
    if f.default_weight.is_some() {
        svc.default_weight = f.default_weight;
    }
    if !f.selector.is_empty() {
        svc.realserver_selector = f
            .selector
            .iter()
            .map(|l| label(l))
            .collect::<anyhow::Result<_>>()?;
    }
    if !f.realservers.is_empty() {
        svc.realservers = f
            .realservers
            .iter()
            .map(|r| {
                let (address, port) =
                    address_port(r).with_context(|| format!("--realserver {r:?}"))?;
                Ok(pb::RealServer {
                    address,
                    port,
                    ..Default::default()
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(s) = &f.sorry_server {
        let (address, port) = address_port(s).with_context(|| format!("--sorry-server {s:?}"))?;
        svc.sorry_server = Some(pb::Backend { address, port });
    }
    if let Some(q) = f.quorum {
        svc.quorum = q;
    }
    if let Some(h) = f.hysteresis {
        svc.hysteresis = h;
    }
    if !f.director_selector.is_empty() || !f.prefer_director.is_empty() {
        let d = svc.directors.get_or_insert_with(Default::default);
        if !f.director_selector.is_empty() {
            d.selector = f
                .director_selector
                .iter()
                .map(|l| label(l))
                .collect::<anyhow::Result<_>>()?;
        }
        if !f.prefer_director.is_empty() {
            d.preferred = f.prefer_director.clone();
        }
    }
    apply_check(svc, &f.check)
}

/// Overwrites `field` with the flag's value when the flag was given.
fn set_given(field: &mut String, flag: &Option<String>) {
    if let Some(v) = flag {
        field.clone_from(v);
    }
}

pub(crate) fn apply_check(svc: &mut pb::Service, c: &CheckFlags) -> anyhow::Result<()> {
    if c.check.as_deref() == Some("none") {
        svc.health_check = None;
        return Ok(());
    }
    let any = c.check.is_some()
        || c.check_interval.is_some()
        || c.check_timeout.is_some()
        || c.check_rise.is_some()
        || c.check_fall.is_some()
        || c.check_port.is_some()
        || c.check_path.is_some()
        || !c.check_status.is_empty()
        || c.check_regex.is_some()
        || c.check_digest.is_some()
        || c.check_host.is_some()
        || c.check_command.is_some()
        || !c.check_args.is_empty()
        || c.check_udp_payload.is_some()
        || c.check_udp_expect.is_some()
        || c.check_dns_type.is_some()
        || c.check_dns_name.is_some()
        || c.check_dns_expect.is_some()
        || c.check_inhibit.is_some();
    if !any {
        return Ok(());
    }
    let h = svc.health_check.get_or_insert_with(Default::default);
    if let Some(t) = &c.check {
        h.r#type = t.clone();
    }
    if let Some(i) = &c.check_interval {
        h.interval = Some(duration(i).context("--check-interval")?);
    }
    if let Some(t) = &c.check_timeout {
        h.timeout = Some(duration(t).context("--check-timeout")?);
    }
    if c.check_rise.is_some() {
        h.rise = c.check_rise;
    }
    if c.check_fall.is_some() {
        h.fall = c.check_fall;
    }
    if let Some(p) = c.check_port {
        h.port = p;
    }
    set_given(&mut h.http_path, &c.check_path);
    set_given(&mut h.http_body_regex, &c.check_regex);
    set_given(&mut h.http_digest, &c.check_digest);
    set_given(&mut h.http_host, &c.check_host);
    set_given(&mut h.exec_command, &c.check_command);
    set_given(&mut h.udp_payload, &c.check_udp_payload);
    set_given(&mut h.udp_expect, &c.check_udp_expect);
    set_given(&mut h.dns_type, &c.check_dns_type);
    set_given(&mut h.dns_name, &c.check_dns_name);
    set_given(&mut h.dns_expect, &c.check_dns_expect);
    if !c.check_status.is_empty() {
        h.http_status = c.check_status.iter().flat_map(|s| s.0.clone()).collect();
    }
    if !c.check_args.is_empty() {
        h.exec_args = c.check_args.clone();
    }
    if let Some(i) = c.check_inhibit {
        h.inhibit_on_failure = i;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_forms() {
        let e = vip("10.10.1.30:80/tcp").unwrap();
        assert_eq!(
            (e.address.as_str(), e.port, e.protocol.as_str()),
            ("10.10.1.30", 80, "tcp")
        );
        let e = vip("[2001:db8::1]:443").unwrap();
        assert_eq!(
            (e.address.as_str(), e.port, e.protocol.as_str()),
            ("2001:db8::1", 443, "")
        );
        assert_eq!(
            vip("10.0.0.1:70000/udp").unwrap().port,
            70000,
            "range is the controller's rule"
        );
        assert!(vip("10.0.0.1").is_err());
        assert!(vip("10.0.0.1:http").is_err());
    }

    #[test]
    fn realserver_forms() {
        assert_eq!(address_port("10.0.0.1").unwrap(), ("10.0.0.1".into(), 0));
        assert_eq!(
            address_port("10.0.0.1:8080").unwrap(),
            ("10.0.0.1".into(), 8080)
        );
        assert_eq!(
            address_port("2001:db8::2").unwrap(),
            ("2001:db8::2".into(), 0)
        );
        assert_eq!(
            address_port("[2001:db8::2]:80").unwrap(),
            ("2001:db8::2".into(), 80)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration("1.5s").unwrap(),
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            duration("250ms").unwrap(),
            prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000
            }
        );
        assert_eq!(duration("-1s").unwrap().seconds, -1);
        assert!(duration("5").is_err());
    }
}
