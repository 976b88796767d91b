//! Turns command-line words into API messages. lbctl only splits syntax here;
//! the controller applies every rule, so errors name the same fields whether
//! a request came from lbctl, grpcurl or an agent.

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
