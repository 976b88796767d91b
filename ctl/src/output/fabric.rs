//! Tables of the fabric as the directors run it: `lbctl director list`,
//! `lbctl director stats` and `lbctl status`.

use lb_proto::pb;

use super::lists::or_dash;
use super::{endpoint, source, table};

/// `lbctl director list`.
pub fn directors(resp: &pb::ListDirectorsResponse) {
    let rows: Vec<Vec<String>> = resp
        .directors
        .iter()
        .map(|d| {
            let owns: Vec<String> = d
                .owns
                .iter()
                .map(|l| format!("{}@{}", l.vip, l.epoch))
                .collect();
            vec![
                d.node_id.clone(),
                if d.live { "live" } else { "dead" }.to_string(),
                if d.connected { "connected" } else { "lost" }.to_string(),
                format!("{:.1}s", d.last_seen_ms as f64 / 1000.0),
                d.applied_revision.to_string(),
                d.changes_applied.to_string(),
                or_dash(owns.join(",")),
                d.errors.len().to_string(),
                or_dash(d.foreign_services.join(",")),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "LIVE",
            "STREAM",
            "LAST SEEN",
            "APPLIED",
            "CHANGES",
            "OWNS",
            "ERRORS",
            "FOREIGN",
        ],
        &rows,
    );
}

/// `lbctl director stats`: per director, one row per service and one per realserver.
pub fn director_stats(resp: &pb::ListDirectorsResponse, rate: bool) {
    let figures = |c: &Option<pb::Counters>| -> Vec<String> {
        let c = c.unwrap_or_default();
        let v = if rate {
            [
                c.conns_per_second,
                c.in_packets_per_second,
                c.out_packets_per_second,
                c.in_bytes_per_second,
                c.out_bytes_per_second,
            ]
        } else {
            [
                c.conns,
                c.in_packets,
                c.out_packets,
                c.in_bytes,
                c.out_bytes,
            ]
        };
        v.iter().map(ToString::to_string).collect()
    };
    let headers: &[&str] = if rate {
        &[
            "SERVICE / REALSERVER",
            "ACTIVE",
            "INACT",
            "CPS",
            "INPPS",
            "OUTPPS",
            "INBPS",
            "OUTBPS",
        ]
    } else {
        &[
            "SERVICE / REALSERVER",
            "ACTIVE",
            "INACT",
            "CONNS",
            "INPKTS",
            "OUTPKTS",
            "INBYTES",
            "OUTBYTES",
        ]
    };
    for (i, d) in resp.directors.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        let Some(stats) = &d.stats else {
            outln!("director {}: no counters reported yet", d.node_id);
            continue;
        };
        outln!(
            "director {} (counters read {:.1}s ago)",
            d.node_id,
            d.stats_age_ms as f64 / 1000.0
        );
        let mut rows = Vec::new();
        for s in &stats.services {
            let (active, inactive) = s.realservers.iter().fold((0, 0), |(a, i), r| {
                (
                    a + u64::from(r.active_conns),
                    i + u64::from(r.inactive_conns),
                )
            });
            let mut row = vec![s.service.clone(), active.to_string(), inactive.to_string()];
            row.extend(figures(&s.counters));
            rows.push(row);
            for r in &s.realservers {
                let mut row = vec![
                    format!("  -> {}", endpoint(&r.address, r.port)),
                    r.active_conns.to_string(),
                    r.inactive_conns.to_string(),
                ];
                row.extend(figures(&r.counters));
                rows.push(row);
            }
        }
        table(headers, &rows);
    }
}

/// `lbctl status`: the ipvsadm-like view of every service, then the VIPs
/// and what the directors could not apply.
pub fn status(resp: &pb::FabricStatus, stats: bool, rate: bool) {
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
                endpoint(&e.address, e.port),
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
        let quorum = if st.below_quorum {
            format!("below quorum ({} of {})", st.live_weight, s.quorum.max(1))
        } else {
            String::new()
        };
        row.extend([quorum, String::new(), owner]);
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
                format!("  -> {}", endpoint(&rs.address, rs.port)),
                forward.to_string(),
                rs.weight.unwrap_or(1).to_string(),
            ];
            row.extend(numbers(
                &b.counters,
                u64::from(b.active_conns),
                u64::from(b.inactive_conns),
            ));
            let (state, from) = match (b.sorry_server, b.withheld) {
                (true, _) => ("in use".to_string(), "sorry server".to_string()),
                (_, true) => ("withheld".to_string(), source(&b.agent)),
                _ => (rs.admin_state.clone(), source(&b.agent)),
            };
            row.extend([b.health.clone(), state, from]);
            rows.push(row);
        }
    }
    table(&headers, &rows);
    outln!();
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
    table(&["VIP", "OWNER", "EPOCH", "STATE", "SERVICES"], &rows);
    outln!(
        "revision {}, {} of {} directors live",
        resp.revision,
        resp.directors_live,
        resp.directors
    );
    for e in &resp.director_errors {
        outln!("director {}: {}", e.director, e.error);
    }
}
