//! Rendering: aligned tables for people, protobuf JSON (as grpcurl prints it) for scripts.

pub mod fabric;
pub mod lists;

use lb_proto::pb;

/// Prints rows under headers with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn json<M: prost::Message>(msg: &M, full_name: &str) -> anyhow::Result<()> {
    outln!(
        "{}",
        serde_json::to_string_pretty(&lb_proto::json::to_json(msg, full_name)?)?
    );
    Ok(())
}

/// `10.10.1.30:80/tcp`, `[2001:db8::1]:443/tcp`, `fwmark 7/inet6`,
/// `fwmark 1/inet (10.10.1.40 tcp 80,443)` when the directors mark it.
pub fn virtual_address(s: &pb::Service) -> String {
    match &s.virtual_address {
        Some(pb::service::VirtualAddress::Endpoint(e)) => {
            format!("{}/{}", endpoint(&e.address, e.port), e.protocol)
        }
        Some(pb::service::VirtualAddress::Fwmark(f)) if !f.address.is_empty() => {
            let mut what = format!("{} {}", f.address, f.protocol);
            if !f.ports.is_empty() {
                let ports: Vec<String> = f.ports.iter().map(ToString::to_string).collect();
                what = format!("{what} {}", ports.join(","));
            }
            format!("fwmark {}/{} ({what})", f.mark, f.family)
        }
        Some(pb::service::VirtualAddress::Fwmark(f)) => format!("fwmark {}/{}", f.mark, f.family),
        None => "-".into(),
    }
}

pub fn endpoint(address: &str, port: u32) -> String {
    match (address.contains(':'), port) {
        (_, 0) => address.to_string(),
        (true, p) => format!("[{address}]:{p}"),
        (false, p) => format!("{address}:{p}"),
    }
}

pub fn persistence(s: &pb::Service) -> String {
    match &s.persistence {
        Some(p) if p.timeout_seconds > 0 && !p.netmask.is_empty() => {
            format!("{}s mask {}", p.timeout_seconds, p.netmask)
        }
        Some(p) if p.timeout_seconds > 0 => format!("{}s", p.timeout_seconds),
        _ => "-".into(),
    }
}

/// Which directors may hold the service's VIP, and which are preferred.
fn directors_lines(s: &pb::Service) {
    if let Some(d) = &s.directors {
        if !d.preferred.is_empty() {
            outln!("  preferred directors {}", d.preferred.join(","));
        }
        if !d.selector.is_empty() {
            let sel: Vec<String> = d.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            outln!("  director selector {}", sel.join(","));
        }
    }
}

/// The service's health check, one line (none: nothing).
fn check_line(s: &pb::Service) {
    if let Some(h) = &s.health_check {
        let secs = |d: &Option<prost_types::Duration>| {
            d.as_ref()
                .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
                .unwrap_or(0.0)
        };
        outln!(
            "  check {} every {}s timeout {}s rise {} fall {}",
            h.r#type,
            secs(&h.interval),
            secs(&h.timeout),
            h.rise.unwrap_or_default(),
            h.fall.unwrap_or_default()
        );
    }
}

/// The ipvsadm-like view of one service.
pub fn service_detail(s: &pb::Service, revision: u64) {
    outln!(
        "service {} (created at revision {}, changed at {}; fabric revision {revision})",
        s.name,
        s.create_revision,
        s.mod_revision
    );
    if s.mode == "local" {
        // No IPVS service: nothing to schedule, no realservers.
        let port = match &s.virtual_address {
            Some(pb::service::VirtualAddress::Endpoint(e)) if e.port == 0 => " (any port)",
            _ => "",
        };
        outln!("  {}{port}", virtual_address(s));
        outln!("  mode local: no IPVS service, a proxy on the director holding the VIP serves it");
        directors_lines(s);
        check_line(s);
        return;
    }
    let mut line = format!("  {} {}", virtual_address(s), s.scheduler);
    if !s.scheduler_flags.is_empty() {
        line.push_str(&format!(" flags {}", s.scheduler_flags.join(",")));
    }
    if let Some(p) = &s.persistence {
        if p.timeout_seconds > 0 {
            line.push_str(&format!(" persistent {}", p.timeout_seconds));
            if !p.netmask.is_empty() {
                line.push_str(&format!(" mask {}", p.netmask));
            }
        }
    }
    if s.one_packet {
        line.push_str(" ops");
    }
    outln!("{line}");
    let mode = if s.tunnel_type.is_empty() {
        s.mode.clone()
    } else {
        format!("{} ({})", s.mode, s.tunnel_type)
    };
    outln!(
        "  mode {mode}, default weight {}",
        s.default_weight.unwrap_or(1)
    );
    if !s.realserver_selector.is_empty() {
        let sel: Vec<String> = s
            .realserver_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outln!("  realserver selector {}", sel.join(","));
    }
    directors_lines(s);
    check_line(s);
    if let Some(b) = &s.sorry_server {
        outln!(
            "  sorry server {} below quorum {}",
            endpoint(&b.address, b.port),
            s.quorum
        );
    }
    outln!(
        "  -> {:<28} {:>6}  {:<9} {:>6} {:>6}",
        "RemoteAddress:Port",
        "Weight",
        "State",
        "Upper",
        "Lower"
    );
    for rs in &s.realservers {
        outln!(
            "  -> {:<28} {:>6}  {:<9} {:>6} {:>6}",
            endpoint(&rs.address, rs.port),
            rs.weight.unwrap_or(1),
            rs.admin_state,
            rs.upper_threshold,
            rs.lower_threshold
        );
    }
}

/// Where a backend comes from: listed in the service, or an agent's selector match.
pub fn source(agent: &str) -> String {
    if agent.is_empty() {
        "listed".to_string()
    } else {
        format!("agent {agent}")
    }
}
