//! `lbctl status`: the `ipvsadm -Ln` view across the fabric, with owners.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use super::director::or_dash;
use crate::cli::*;
use crate::{api, output};

/// `lbctl status`: the ipvsadm-like view of every service, then the VIPs.
pub(crate) async fn status(
    ctl: &mut Controller,
    out: Output,
    stats: bool,
    rate: bool,
) -> anyhow::Result<()> {
    let resp = call!(ctl, ServiceAdminClient, get_status, pb::GetStatusRequest {})?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.FabricStatus");
    }
    let figures: &[&str] = match (stats, rate) {
        (true, _) => &["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES"],
        (_, true) => &["CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS"],
        _ => &["ACTIVE", "INACT"],
    };
    let numbers = |c: &Option<pb::Counters>, active: u64, inactive: u64| -> Vec<String> {
        let c = c.unwrap_or_default();
        let v: Vec<u64> = match (stats, rate) {
            (true, _) => vec![
                c.conns,
                c.in_packets,
                c.out_packets,
                c.in_bytes,
                c.out_bytes,
            ],
            (_, true) => vec![
                c.conns_per_second,
                c.in_packets_per_second,
                c.out_packets_per_second,
                c.in_bytes_per_second,
                c.out_bytes_per_second,
            ],
            _ => vec![active, inactive],
        };
        v.iter().map(ToString::to_string).collect()
    };
    let mut headers = vec![
        "PROT",
        "VIRTUAL SERVICE / -> REALSERVER",
        "SCHED / FORWARD",
        "WEIGHT",
    ];
    headers.extend_from_slice(figures);
    headers.extend_from_slice(&["HEALTH", "STATE", "OWNER / SOURCE"]);
    let mut rows = Vec::new();
    for st in &resp.services {
        let Some(s) = &st.service else { continue };
        let (prot, address) = match &s.virtual_address {
            Some(pb::service::VirtualAddress::Endpoint(e)) => (
                e.protocol.to_ascii_uppercase(),
                output::endpoint(&e.address, e.port),
            ),
            Some(pb::service::VirtualAddress::Fwmark(f)) => ("FWM".to_string(), f.mark.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let mut sched = s.scheduler.clone();
        if !s.scheduler_flags.is_empty() {
            sched.push_str(&format!(" ({})", s.scheduler_flags.join(",")));
        }
        if let Some(p) = s.persistence.as_ref().filter(|p| p.timeout_seconds > 0) {
            sched.push_str(&format!(" persistent {}", p.timeout_seconds));
            if !p.netmask.is_empty() {
                sched.push_str(&format!(" mask {}", p.netmask));
            }
        }
        if s.one_packet {
            sched.push_str(" ops");
        }
        let owner = match (st.owner.as_str(), st.held) {
            ("", _) => "-".to_string(),
            (o, true) => format!("{o}@{} held", st.epoch),
            (o, false) => format!("{o}@{} taking", st.epoch),
        };
        let (active, inactive) = st.realservers.iter().fold((0, 0), |(a, i), b| {
            (
                a + u64::from(b.active_conns),
                i + u64::from(b.inactive_conns),
            )
        });
        let mut row = vec![
            prot,
            format!("{address} ({})", s.name),
            sched,
            String::new(),
        ];
        row.extend(numbers(&st.counters, active, inactive));
        row.extend([String::new(), String::new(), owner]);
        rows.push(row);
        let forward = match s.mode.as_str() {
            "nat" => "Masq",
            "tun" => "Tunnel",
            _ => "Route",
        };
        for b in &st.realservers {
            let Some(rs) = &b.realserver else { continue };
            let mut row = vec![
                String::new(),
                format!("  -> {}", output::endpoint(&rs.address, rs.port)),
                forward.to_string(),
                rs.weight.unwrap_or(1).to_string(),
            ];
            row.extend(numbers(
                &b.counters,
                u64::from(b.active_conns),
                u64::from(b.inactive_conns),
            ));
            row.extend([
                b.health.clone(),
                rs.admin_state.clone(),
                output::source(&b.agent),
            ]);
            rows.push(row);
        }
    }
    output::table(&headers, &rows);
    println!();
    let live = |name: &str| resp.live_directors.iter().any(|d| d == name);
    let rows: Vec<Vec<String>> = resp
        .vips
        .iter()
        .map(|v| {
            let state = match (v.owner.is_empty(), v.held) {
                (true, _) => "unassigned",
                (false, true) => "held",
                // Assigned, the owner not (yet) holding it: taking over, or gone.
                (false, false) if live(&v.owner) => "taking",
                (false, false) => "owner dead",
            };
            vec![
                v.vip.clone(),
                or_dash(v.owner.clone()),
                v.epoch.to_string(),
                state.to_string(),
                v.services.join(","),
            ]
        })
        .collect();
    output::table(&["VIP", "OWNER", "EPOCH", "STATE", "SERVICES"], &rows);
    println!(
        "revision {}, {} of {} directors live",
        resp.revision, resp.directors_live, resp.directors
    );
    for e in &resp.director_errors {
        println!("director {}: {}", e.director, e.error);
    }
    Ok(())
}
