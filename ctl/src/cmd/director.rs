//! `lbctl director list|stats`: the leader's view of the directors.

use anyhow::bail;
use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::{api, output};

pub(crate) async fn list_directors(
    ctl: &mut Controller,
) -> anyhow::Result<pb::ListDirectorsResponse> {
    call!(
        ctl,
        ServiceAdminClient,
        list_directors,
        pb::ListDirectorsRequest {}
    )
}

pub(crate) async fn directors(ctl: &mut Controller, out: Output) -> anyhow::Result<()> {
    let resp = list_directors(ctl).await?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
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
    output::table(
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
    Ok(())
}

/// `lbctl director stats`: per director, one row per service and one per realserver.
pub(crate) async fn director_stats(
    ctl: &mut Controller,
    out: Output,
    node: Option<&str>,
    rate: bool,
) -> anyhow::Result<()> {
    let mut resp = list_directors(ctl).await?;
    if let Some(node) = node {
        resp.directors.retain(|d| d.node_id == node);
        if resp.directors.is_empty() {
            bail!("director {node} not found (see lbctl director list)");
        }
    }
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
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
            println!();
        }
        let Some(stats) = &d.stats else {
            println!("director {}: no counters reported yet", d.node_id);
            continue;
        };
        println!(
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
                    format!("  -> {}", output::endpoint(&r.address, r.port)),
                    r.active_conns.to_string(),
                    r.inactive_conns.to_string(),
                ];
                row.extend(figures(&r.counters));
                rows.push(row);
            }
        }
        output::table(headers, &rows);
    }
    Ok(())
}

pub(crate) fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}
