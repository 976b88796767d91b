//! VIP addresses: held on the director's interface exactly while its lease
//! is fresh.
//!
//! The lease runs until `lease_ms` after the director *sent* the heartbeat the
//! leader acknowledged. The leader gives a VIP away only after `lease +
//! margin` without hearing from the owner, so by then the owner has already
//! dropped the address — even when it is cut off from the controllers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_hostnet::{Address, NetError, Rtnl};

/// What the director may hold, and until when.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub until: Option<Instant>,
    /// VIP → epoch, as last assigned by the leader.
    pub vips: BTreeMap<IpAddr, u64>,
}

impl Lease {
    /// The VIPs held at `now`: all of them while the lease is fresh, none after.
    pub fn held(&self, now: Instant) -> BTreeMap<IpAddr, u64> {
        match self.until {
            Some(until) if now < until => self.vips.clone(),
            _ => BTreeMap::new(),
        }
    }
}

/// Remembers when each heartbeat was sent, to start a lease at the ack.
#[derive(Debug, Default)]
pub struct SentHeartbeats(BTreeMap<u64, Instant>);

impl SentHeartbeats {
    pub fn sent(&mut self, seq: u64, at: Instant) {
        self.0.insert(seq, at);
        // Acks come in order; anything far behind will not be acknowledged.
        while self.0.len() > 64 {
            self.0.pop_first();
        }
    }

    /// The send time of an acknowledged heartbeat (and forgets older ones).
    pub fn acked(&mut self, seq: u64) -> Option<Instant> {
        let at = self.0.get(&seq).copied();
        self.0.retain(|s, _| *s > seq);
        at
    }
}

/// Lease end for an ack of a heartbeat sent at `sent`.
pub fn lease_until(sent: Instant, lease_ms: u32) -> Instant {
    sent + Duration::from_millis(u64::from(lease_ms))
}

/// Puts exactly the `held` VIPs among `managed` on interface `ifindex`;
/// addresses that are not VIPs of the configuration are never touched.
pub fn converge(
    rtnl: &Rtnl,
    ifindex: u32,
    managed: &BTreeSet<IpAddr>,
    held: &BTreeSet<IpAddr>,
) -> Result<(), NetError> {
    let on_iface: BTreeSet<IpAddr> = rtnl
        .addresses(ifindex)?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    let host_prefix = |addr: &IpAddr| if addr.is_ipv4() { 32 } else { 128 };
    for vip in held.iter().filter(|v| !on_iface.contains(v)) {
        rtnl.add_address(&Address {
            ifindex,
            addr: *vip,
            prefix_len: host_prefix(vip),
        })?;
        tracing::info!(vip = %vip, "VIP added");
    }
    for vip in on_iface
        .iter()
        .filter(|v| managed.contains(v) && !held.contains(v))
    {
        rtnl.del_address(&Address {
            ifindex,
            addr: *vip,
            prefix_len: host_prefix(vip),
        })?;
        tracing::info!(vip = %vip, "VIP removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_starts_at_the_send_of_the_acknowledged_heartbeat() {
        let t0 = Instant::now();
        let mut sent = SentHeartbeats::default();
        sent.sent(1, t0);
        sent.sent(2, t0 + Duration::from_millis(100));
        assert_eq!(sent.acked(2), Some(t0 + Duration::from_millis(100)));
        assert_eq!(
            sent.acked(1),
            None,
            "older heartbeats are forgotten at a newer ack"
        );
        let lease = Lease {
            until: Some(lease_until(t0, 600)),
            vips: BTreeMap::from([("10.0.0.1".parse().unwrap(), 3)]),
        };
        assert_eq!(lease.held(t0 + Duration::from_millis(599)).len(), 1);
        assert!(
            lease.held(t0 + Duration::from_millis(600)).is_empty(),
            "expired exactly at the fence"
        );
        assert!(Lease::default().held(t0).is_empty());
    }
}
