//! The kernel's counters as the report carries them: per lbfabric service
//! (by name) and per realserver, the figures `ipvsadm -Ln --stats` and
//! `--rate` print. Foreign services are left out, like everywhere else.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use lb_proto::model::Service;
use lb_proto::pb;

use crate::desired;
use crate::ipvs::{ServiceKey, Stats};
use crate::reconcile::Counted;

/// The counters of `services` found in `counted`, in service order.
pub fn report<S: Borrow<Service>>(
    services: &[S],
    counted: &BTreeMap<ServiceKey, Counted>,
) -> pb::IpvsStats {
    let services = services
        .iter()
        .map(Borrow::borrow)
        .filter_map(|s: &Service| {
            let c = counted.get(&desired::key(&s.address))?;
            // The kernel lists destinations newest first; operators read by address.
            let mut dests: Vec<_> = c.dests.iter().collect();
            dests.sort_by_key(|d| d.spec.key());
            Some(pb::ServiceStats {
                service: s.name.clone(),
                counters: Some(counters(&c.stats)),
                realservers: dests
                    .into_iter()
                    .map(|d| pb::RealServerStats {
                        address: d.spec.addr.to_string(),
                        port: d.spec.port.into(),
                        active_conns: d.active_conns,
                        inactive_conns: d.inactive_conns,
                        persistent_conns: d.persistent_conns,
                        counters: Some(counters(&d.stats)),
                    })
                    .collect(),
            })
        })
        .collect();
    fit(
        pb::IpvsStats {
            services,
            ..Default::default()
        },
        REPORT_BUDGET,
    )
}

/// What changed from `base` (the counters sent before) to `now`, as a
/// delta: the services whose rows differ or are new, and those gone. Empty
/// when nothing moved (no traffic).
pub fn delta(base: &pb::IpvsStats, now: &pb::IpvsStats) -> pb::IpvsStats {
    let before: BTreeMap<&str, &pb::ServiceStats> = base
        .services
        .iter()
        .map(|s| (s.service.as_str(), s))
        .collect();
    let names: std::collections::BTreeSet<&str> =
        now.services.iter().map(|s| s.service.as_str()).collect();
    pb::IpvsStats {
        services: now
            .services
            .iter()
            .filter(|s| before.get(s.service.as_str()) != Some(s))
            .cloned()
            .collect(),
        delta: true,
        removed: before
            .keys()
            .filter(|n| !names.contains(*n))
            .map(|n| n.to_string())
            .collect(),
    }
}

/// The most a report's counters may take: far under the controllers' 4 MiB
/// limit on a director's message, whatever else the report carries.
pub const REPORT_BUDGET: usize = 2 * 1024 * 1024;

/// `stats`, or, when they take more than `budget` bytes (100,000
/// realservers with traffic), each service's totals without its
/// realservers' rows: a report over the limit would end the stream.
pub fn fit(mut stats: pb::IpvsStats, budget: usize) -> pb::IpvsStats {
    if prost::Message::encoded_len(&stats) <= budget {
        return stats;
    }
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            services = stats.services.len(),
            budget,
            "the counters of every realserver exceed the report's budget: reporting each service's totals only"
        );
    }
    for s in &mut stats.services {
        s.realservers.clear();
    }
    stats
}

fn counters(s: &Stats) -> pb::Counters {
    pb::Counters {
        conns: s.conns,
        in_packets: s.in_pkts,
        out_packets: s.out_pkts,
        in_bytes: s.in_bytes,
        out_bytes: s.out_bytes,
        conns_per_second: s.cps,
        in_packets_per_second: s.in_pps,
        out_packets_per_second: s.out_pps,
        in_bytes_per_second: s.in_bps,
        out_bytes_per_second: s.out_bps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_over_the_budget_keep_only_the_services_totals() {
        let service = |i: usize| pb::ServiceStats {
            service: format!("svc-{i}"),
            counters: Some(pb::Counters {
                conns: 1000 + i as u64,
                ..Default::default()
            }),
            realservers: (0..10)
                .map(|r| pb::RealServerStats {
                    address: format!("192.168.{r}.1"),
                    port: 8000,
                    active_conns: 7,
                    ..Default::default()
                })
                .collect(),
        };
        let stats = pb::IpvsStats {
            services: (0..100).map(service).collect(),
            ..Default::default()
        };
        let size = prost::Message::encoded_len(&stats);
        assert_eq!(
            fit(stats.clone(), size),
            stats,
            "within the budget: unchanged"
        );
        let cut = fit(stats.clone(), size - 1);
        assert_eq!(cut.services.len(), 100);
        assert!(cut.services.iter().all(|s| s.realservers.is_empty()));
        assert_eq!(cut.services[42].counters, stats.services[42].counters);
    }

    #[test]
    fn a_delta_carries_what_moved_and_names_what_went() {
        let row = |name: &str, conns: u64| pb::ServiceStats {
            service: name.into(),
            counters: Some(pb::Counters {
                conns,
                ..Default::default()
            }),
            ..Default::default()
        };
        let stats = |rows: Vec<pb::ServiceStats>| pb::IpvsStats {
            services: rows,
            ..Default::default()
        };
        let base = stats(vec![row("a", 1), row("b", 1), row("c", 1)]);
        let now = stats(vec![row("a", 1), row("b", 5), row("d", 0)]);
        let d = delta(&base, &now);
        assert!(d.delta);
        assert_eq!(d.services, [row("b", 5), row("d", 0)]);
        assert_eq!(d.removed, ["c"]);
        let same = delta(&now, &now);
        assert!(same.services.is_empty() && same.removed.is_empty());
    }
}
