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
    pb::IpvsStats { services }
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
