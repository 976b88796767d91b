//! The director's metrics: events counted where they happen (reconcile
//! rounds, operations, drift repairs, announcements), and at scrape time
//! what the agent already keeps — the kernel's counters from the last full
//! read of the table (what `ipvsadm -Ln --stats` prints, by service name, as
//! node_exporter's IPVS collector gives them by address) and the time left
//! on each VIP's lease.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lb_proto::metrics::{
    duration_histogram, Collector, Counter, Counters, DescriptorEncoder, Histogram, Labels,
    Registry, Scrape, Unit,
};
use lb_proto::pb;

use super::Progress;
use crate::lease::Lease;

#[derive(Debug)]
pub(super) struct Metrics {
    pub(super) reconcile_seconds: Histogram,
    /// IPVS and mark-rule operations, by result (applied, failed).
    pub(super) operations: Counters,
    /// Operations of drift sweeps: the kernel had drifted from the
    /// configuration (a hand edit, another tool) and was put back.
    pub(super) drift_repairs: Counter,
    /// Gratuitous ARP / unsolicited NA bursts sent, by VIP.
    pub(super) announcements: Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_seconds: duration_histogram(),
            operations: Counters::default(),
            drift_repairs: Counter::default(),
            announcements: Counters::default(),
        }
    }
}

impl Metrics {
    pub(super) fn operations(&self, applied: usize, failed: usize) {
        for (result, n) in [("applied", applied), ("failed", failed)] {
            if n > 0 {
                self.operations
                    .get_or_create(&vec![("result", result.to_string())])
                    .inc_by(n as u64);
            }
        }
    }

    pub(super) fn announced(&self, vip: std::net::IpAddr) {
        self.announcements
            .get_or_create(&vec![("vip", vip.to_string())])
            .inc();
    }
}

/// The agent's registry: `metrics`, and the kernel's counters and leases
/// read from `progress` and `lease` at each scrape.
pub(super) fn registry(
    metrics: &Metrics,
    progress: Arc<Mutex<Progress>>,
    lease: Arc<Mutex<Lease>>,
) -> Registry {
    let mut r = lb_proto::metrics::registry();
    r.register_with_unit(
        "reconcile_duration",
        "Time of a reconcile round (a change, or a slice of the drift sweep)",
        Unit::Seconds,
        metrics.reconcile_seconds.clone(),
    );
    r.register(
        "reconcile_operations",
        "IPVS and mark-rule operations the reconciler made, by result",
        metrics.operations.clone(),
    );
    r.register(
        "drift_repairs",
        "Operations that put a drifted kernel table back (found by the periodic sweep)",
        metrics.drift_repairs.clone(),
    );
    r.register(
        "announcements",
        "Gratuitous ARP / unsolicited neighbour advertisement bursts sent, by VIP",
        metrics.announcements.clone(),
    );
    r.register_collector(Box::new(Observed { progress, lease }));
    r
}

#[derive(Debug)]
struct Observed {
    progress: Arc<Mutex<Progress>>,
    lease: Arc<Mutex<Lease>>,
}

/// Rows of one counter of every service and of every realserver.
type Rows = Vec<(Labels, u64)>;

fn rows(stats: &pb::IpvsStats, f: impl Fn(&pb::Counters) -> u64) -> (Rows, Rows) {
    let mut services = Vec::new();
    let mut backends = Vec::new();
    for s in &stats.services {
        let c = s.counters.unwrap_or_default();
        services.push((vec![("service", s.service.clone())], f(&c)));
        for rs in &s.realservers {
            let c = rs.counters.unwrap_or_default();
            let labels = vec![("service", s.service.clone()), ("realserver", backend(rs))];
            backends.push((labels, f(&c)));
        }
    }
    (services, backends)
}

fn backend(rs: &pb::RealServerStats) -> String {
    match rs.address.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, rs.port as u16).to_string(),
        Err(_) => format!("{}:{}", rs.address, rs.port),
    }
}

impl Collector for Observed {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut s = Scrape::new(encoder);
        let stats = self
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
            .clone();
        if let Some(stats) = stats {
            type Pick = fn(&pb::Counters) -> u64;
            let families: [(&str, &str, Option<Unit>, Pick); 5] = [
                ("ipvs_connections", "Connections scheduled", None, |c| {
                    c.conns
                }),
                ("ipvs_incoming_packets", "Packets in", None, |c| {
                    c.in_packets
                }),
                ("ipvs_outgoing_packets", "Packets out", None, |c| {
                    c.out_packets
                }),
                ("ipvs_incoming", "Bytes in", Some(Unit::Bytes), |c| {
                    c.in_bytes
                }),
                ("ipvs_outgoing", "Bytes out", Some(Unit::Bytes), |c| {
                    c.out_bytes
                }),
            ];
            for (name, help, unit, pick) in families {
                let (services, backends) = rows(&stats, pick);
                s.counters(
                    name,
                    &format!("{help}, per service (the kernel's totals)"),
                    unit.clone(),
                    services,
                )?;
                s.counters(
                    &name.replacen("ipvs_", "ipvs_backend_", 1),
                    &format!("{help}, per realserver (the kernel's totals)"),
                    unit,
                    backends,
                )?;
            }
            let conns = |f: fn(&pb::RealServerStats) -> u32| {
                stats
                    .services
                    .iter()
                    .flat_map(|s| s.realservers.iter().map(move |rs| (s, rs)))
                    .map(move |(s, rs)| {
                        let labels =
                            vec![("service", s.service.clone()), ("realserver", backend(rs))];
                        (labels, i64::from(f(rs)))
                    })
            };
            s.gauges(
                "ipvs_backend_connections_active",
                "Established connections to the realserver (ipvsadm ActiveConn)",
                None,
                conns(|rs| rs.active_conns),
            )?;
            s.gauges(
                "ipvs_backend_connections_inactive",
                "Connections to the realserver in other states (ipvsadm InActConn)",
                None,
                conns(|rs| rs.inactive_conns),
            )?;
        }
        let now = Instant::now();
        let holding = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holding(now);
        s.gauges(
            "vip_lease_remaining",
            "Time left on the quorum lease of each VIP this director holds",
            Some(Unit::Seconds),
            holding.iter().map(|(vip, (_, until))| {
                let left = until.saturating_duration_since(now).as_secs_f64();
                (vec![("vip", vip.to_string())], left)
            }),
        )?;
        s.gauges(
            "vip_held_epoch",
            "The epoch under which this director holds each VIP",
            None,
            holding
                .iter()
                .map(|(vip, (epoch, _))| (vec![("vip", vip.to_string())], *epoch)),
        )?;
        Ok(())
    }
}
