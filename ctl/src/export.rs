//! Services → keepalived.conf or `ipvsadm -Sn` text, so an operator can diff
//! the fabric against what they ran before, or roll back to it.
//!
//! The text reads back through [`crate::import`] to the same services
//! (names ride along in `# lbfabric service NAME` comments in keepalived
//! files). What the target cannot say (label selectors, rise counts, drained
//! or disabled realservers in ipvsadm) comes back as notes, never silently.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use lb_proto::convert::prefix_to_netmask;
use lb_proto::model::{AdminState, ForwardingMode, Probe, RealServer, Service, VirtualAddress};

/// The text, and what it could not express.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub text: String,
    pub notes: Vec<String>,
}

/// keepalived writes seconds; `1.5`, `2`.
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}", ms as f64 / 1000.0)
    }
}

/// A free-text value as one keepalived word. Always quoted, so a value that
/// happens to be a keyword (or holds a space, brace or comment sign) stays an
/// argument. keepalived's quotes do not nest and end at the line's end: a
/// value with both kinds of quote, or a line break, cannot be written as is;
/// its double quotes become single ones and line breaks spaces, with a note.
fn word(value: &str, notes: &mut Vec<String>) -> String {
    let mut v = value.to_string();
    if v.contains(['\n', '\r']) {
        notes.push(format!("{value:?} holds a line break; written with spaces"));
        v = v.replace(['\n', '\r'], " ");
    }
    match (v.contains('"'), v.contains('\'')) {
        (false, _) => format!("\"{v}\""),
        (true, false) => format!("'{v}'"),
        (true, true) => {
            notes.push(format!(
                "{value:?} holds both kinds of quote; written with single quotes only"
            ));
            format!("\"{}\"", v.replace('"', "'"))
        }
    }
}

fn socket(addr: IpAddr, port: u16) -> String {
    if port == 0 {
        addr.to_string()
    } else {
        SocketAddr::new(addr, port).to_string()
    }
}

/// keepalived.conf for the director `director` (its router_id, and a
/// vrrp_instance for each VIP of a service that prefers it, priority by
/// rank), or for none.
pub fn keepalived(services: &[Service], director: Option<&str>) -> Exported {
    let mut out = Exported::default();
    let t = &mut out.text;
    let _ = writeln!(t, "# Written by lbctl export keepalived.");
    if let Some(d) = director {
        let _ = writeln!(t, "global_defs {{\n    router_id {d}\n}}\n");
        let mut vips: Vec<(IpAddr, usize)> = Vec::new();
        for s in services {
            let rank = s.directors.preferred.iter().position(|p| p == d);
            if let (Some(vip), Some(rank)) = (s.vip(), rank) {
                if !vips.iter().any(|(v, _)| *v == vip) {
                    vips.push((vip, rank));
                }
            }
        }
        for (i, (vip, rank)) in vips.iter().enumerate() {
            let state = if *rank == 0 { "MASTER" } else { "BACKUP" };
            let _ = writeln!(
                t,
                "vrrp_instance VI_{n} {{\n    state {state}\n    interface eth0 # adjust\n    virtual_router_id {n}\n    priority {p}\n    advert_int 1\n    virtual_ipaddress {{\n        {vip}\n    }}\n}}\n",
                n = i + 1,
                p = 150usize.saturating_sub(10 * rank).max(1),
            );
        }
    }
    for s in services {
        let t = &mut out.text;
        let _ = writeln!(t, "# lbfabric service {}", s.name);
        match s.address {
            VirtualAddress::Endpoint { address, port, .. } => {
                let _ = writeln!(t, "virtual_server {address} {port} {{");
            }
            VirtualAddress::Fwmark { mark, .. } => {
                let _ = writeln!(t, "virtual_server fwmark {mark} {{");
            }
        }
        if let Some(h) = &s.health_check {
            let _ = writeln!(t, "    delay_loop {}", secs(h.interval_ms));
        }
        let _ = writeln!(t, "    lb_algo {}", s.scheduler);
        let _ = writeln!(t, "    lb_kind {}", s.mode.as_str().to_ascii_uppercase());
        for f in &s.scheduler_flags {
            let _ = writeln!(t, "    {f}");
        }
        if let Some(p) = &s.persistence {
            let _ = writeln!(t, "    persistence_timeout {}", p.timeout_secs);
            if let Some(len) = p.prefix_len {
                let _ = writeln!(
                    t,
                    "    persistence_granularity {}",
                    prefix_to_netmask(s.family(), len)
                );
            }
        }
        if let VirtualAddress::Endpoint { protocol, .. } = s.address {
            let _ = writeln!(t, "    protocol {}", protocol.as_str().to_ascii_uppercase());
        }
        if s.one_packet {
            let _ = writeln!(t, "    ops");
        }
        if let Some(b) = s.sorry_server {
            let _ = writeln!(t, "    sorry_server {} {}", b.ip(), b.port());
        }
        if s.quorum > 0 {
            let _ = writeln!(t, "    quorum {}", s.quorum);
        }
        if s.hysteresis > 0 {
            let _ = writeln!(t, "    hysteresis {}", s.hysteresis);
        }
        for (rs, weight) in programmed(s, &mut out.notes) {
            let t = &mut out.text;
            let _ = writeln!(t, "    real_server {} {} {{", rs.address, rs.port);
            let _ = writeln!(t, "        weight {weight}");
            // `ipvsadm -Sn` leaves thresholds out; `ipvsadm -R` reads them.
            if rs.upper_threshold > 0 {
                let _ = writeln!(t, "        uthreshold {}", rs.upper_threshold);
            }
            if rs.lower_threshold > 0 {
                let _ = writeln!(t, "        lthreshold {}", rs.lower_threshold);
            }
            if let Some(h) = &s.health_check {
                if h.inhibit_on_failure {
                    let _ = writeln!(t, "        inhibit_on_failure");
                }
                checker(t, h, &mut out.notes);
            }
            let _ = writeln!(t, "    }}");
        }
        out.text.push_str("}\n\n");
        notes_for(s, &mut out.notes, true);
        if let Some(h) = &s.health_check {
            if h.rise != 1 {
                out.notes.push(format!(
                    "service {}: rise {} (keepalived puts a server back on its first success)",
                    s.name, h.rise
                ));
            }
        }
    }
    out
}

fn checker(t: &mut String, h: &lb_proto::model::HealthCheck, notes: &mut Vec<String>) {
    let (kind, http) = match &h.probe {
        Probe::Tcp => ("TCP_CHECK", None),
        Probe::Http(p) => ("HTTP_GET", Some(p)),
        Probe::Https(p) => ("SSL_GET", Some(p)),
        Probe::Exec { .. } => ("MISC_CHECK", None),
        Probe::Udp(_) => ("UDP_CHECK", None),
        Probe::Dns(_) => ("DNS_CHECK", None),
        Probe::Ping => ("PING_CHECK", None),
    };
    let _ = writeln!(t, "        {kind} {{");
    if let Some(p) = http {
        let _ = writeln!(t, "            url {{");
        let _ = writeln!(t, "                path {}", word(&p.path, notes));
        if let Some(d) = &p.digest {
            let _ = writeln!(t, "                digest {}", word(d, notes));
        }
        if !p.status.is_empty() {
            let codes = crate::status::status_ranges(&p.status);
            let _ = writeln!(t, "                status_code {codes}");
        }
        if let Some(r) = &p.body_regex {
            let _ = writeln!(t, "                regex {}", word(r, notes));
        }
        let _ = writeln!(t, "            }}");
        if let Some(host) = &p.host {
            let _ = writeln!(t, "            virtualhost {}", word(host, notes));
        }
    }
    match &h.probe {
        Probe::Udp(u) => {
            if !u.payload.is_empty() {
                let _ = writeln!(t, "            payload {}", hex(&u.payload));
            }
            if let Some(e) = &u.expect {
                let _ = writeln!(t, "            require_reply {}", hex(e));
            }
        }
        Probe::Dns(d) => {
            let _ = writeln!(t, "            type {}", d.query_type.as_str());
            let _ = writeln!(t, "            name {}", word(&d.name, notes));
            if d.expect.is_some() {
                notes.push(format!(
                    "DNS_CHECK: keepalived has no expected answer ({} {})",
                    d.query_type.as_str(),
                    d.name
                ));
            }
        }
        _ => {}
    }
    if let Probe::Exec { command, args } = &h.probe {
        let mut line = command.clone();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        // One string: the program and its arguments.
        let _ = writeln!(t, "            misc_path {}", word(&line, notes));
        let _ = writeln!(t, "            misc_timeout {}", secs(h.timeout_ms));
    } else {
        if h.port != 0 {
            let _ = writeln!(t, "            connect_port {}", h.port);
        }
        let _ = writeln!(t, "            connect_timeout {}", secs(h.timeout_ms));
    }
    let _ = writeln!(t, "            retry {}", h.fall.saturating_sub(1));
    let _ = writeln!(t, "        }}");
}

/// The realservers as a director programs them, with their weight: a
/// draining one at 0, a disabled one left out (and noted).
fn programmed<'a>(s: &'a Service, notes: &mut Vec<String>) -> Vec<(&'a RealServer, u16)> {
    let mut out = Vec::with_capacity(s.realservers.len());
    for rs in &s.realservers {
        match rs.admin_state {
            AdminState::Disabled => notes.push(format!(
                "service {}: realserver {} is disabled and left out",
                s.name,
                rs.endpoint()
            )),
            AdminState::Draining => out.push((rs, 0)),
            AdminState::Active => out.push((rs, rs.weight)),
        }
    }
    out
}

/// What neither target can say about a service.
fn notes_for(s: &Service, notes: &mut Vec<String>, keepalived: bool) {
    if !s.realserver_selector.is_empty() {
        notes.push(format!(
            "service {}: realservers adopted by label selector are not listed; only the service's own realservers are",
            s.name
        ));
    }
    if s.mark_match.is_some() {
        notes.push(format!(
            "service {}: the directors' nftables mark rule ({}) is not part of this format",
            s.name,
            s.mark_match
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ));
    }
    if !keepalived && s.health_check.is_some() {
        notes.push(format!("service {}: ipvsadm has no health checks", s.name));
    }
    if !keepalived && (s.sorry_server.is_some() || s.quorum > 0) {
        notes.push(format!(
            "service {}: ipvsadm has no sorry server or quorum",
            s.name
        ));
    }
}

/// `ipvsadm -Sn` lines: what the directors program for these services.
pub fn ipvsadm(services: &[Service]) -> Exported {
    let mut out = Exported::default();
    for s in services {
        if s.mode == ForwardingMode::Local {
            out.notes.push(format!(
                "service {}: mode local has no IPVS service (the VIP is for a proxy on the director)",
                s.name
            ));
            continue;
        }
        let vs = match s.address {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } => {
                let opt = match protocol.as_str() {
                    "tcp" => "-t",
                    "udp" => "-u",
                    _ => "--sctp-service",
                };
                format!("{opt} {}", socket(address, port))
            }
            VirtualAddress::Fwmark { mark, family } => match family.as_str() {
                "inet6" => format!("-f {mark} -6"),
                _ => format!("-f {mark}"),
            },
        };
        // In the order `ipvsadm -Sn` prints them.
        let mut line = format!("-A {vs} -s {}", s.scheduler);
        if let Some(p) = &s.persistence {
            let _ = write!(line, " -p {}", p.timeout_secs);
            if let Some(len) = p.prefix_len {
                let _ = write!(line, " -M {}", prefix_to_netmask(s.family(), len));
            }
        }
        if !s.scheduler_flags.is_empty() {
            let flags: Vec<&str> = s.scheduler_flags.iter().map(|f| f.as_str()).collect();
            let _ = write!(line, " -b {}", flags.join(","));
        }
        if s.one_packet {
            line.push_str(" -o");
        }
        let _ = writeln!(out.text, "{line}");
        let method = match s.mode {
            ForwardingMode::Nat => "-m",
            ForwardingMode::Dr => "-g",
            ForwardingMode::Tun => "-i",
            // No realservers (see above).
            ForwardingMode::Local => continue,
        };
        for (rs, weight) in programmed(s, &mut out.notes) {
            let mut line = format!(
                "-a {vs} -r {} {method} -w {weight}",
                SocketAddr::new(rs.address, rs.port)
            );
            // `ipvsadm -Sn` leaves thresholds out; `ipvsadm -R` reads them.
            if rs.upper_threshold > 0 {
                let _ = write!(line, " -x {}", rs.upper_threshold);
            }
            if rs.lower_threshold > 0 {
                let _ = write!(line, " -y {}", rs.lower_threshold);
            }
            if s.mode == ForwardingMode::Tun {
                let _ = write!(line, " --tun-type {}", s.tunnel_type);
            }
            let _ = writeln!(out.text, "{line}");
        }
        notes_for(s, &mut out.notes, false);
    }
    out
}

/// keepalived's hex strings (UDP_CHECK payload and require_reply).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
