//! VIP addresses: held on the director's interface exactly while its lease
//! ([`crate::lease`]) is fresh, and announced when taken.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_hostnet::{Address, NetError, Rtnl};

fn host_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The VIP addresses on interface `ifindex` now.
pub fn on_interface(rtnl: &Rtnl, ifindex: u32) -> Result<BTreeSet<IpAddr>, NetError> {
    Ok(rtnl
        .addresses(ifindex)?
        .into_iter()
        .map(|a| a.addr)
        .collect())
}

/// Takes off interface `ifindex` every VIP of `managed` that is not `held`
/// (addresses not in `managed` are never touched); `present` (what is on
/// the interface) loses them.
pub fn remove_unheld(
    rtnl: &Rtnl,
    ifindex: u32,
    managed: &BTreeSet<IpAddr>,
    held: &BTreeMap<IpAddr, Duration>,
    present: &mut BTreeSet<IpAddr>,
) -> Result<(), NetError> {
    let going: Vec<IpAddr> = present
        .iter()
        .filter(|v| managed.contains(v) && !held.contains_key(v))
        .copied()
        .collect();
    for vip in going {
        rtnl.del_address(&Address {
            ifindex,
            addr: vip,
            prefix_len: host_prefix(&vip),
        })?;
        tracing::info!(vip = %vip, "VIP removed");
        present.remove(&vip);
    }
    Ok(())
}

/// When the kernel ends each VIP address this agent gave a lifetime (its
/// `valid_lft`), so that a renewal renews only the addresses that need it.
///
/// An address gets its lease plus four renewal intervals, and is renewed
/// once it would no longer outlast its lease by two: every third renewal
/// under a long lease (the VM's), and about every tenth at the
/// default 200 ms one, whose lifetimes the kernel rounds up to a whole
/// second. When first due, an address still outlasts its lease by one
/// interval or more, so its renewal may wait half an interval for a gap in
/// the configuration changes (see [`put_held`]) and the address still
/// outlasts the lease. Renewing 1,000 addresses costs the kernel a walk of
/// the interface's address list each; it is a director's largest periodic
/// work. The price: a killed agent's address goes up to four renewal
/// intervals (four thirds of a lease) and a second after its lease end
/// (the fence stops the answers at the lease end all the same).
#[derive(Debug, Default)]
pub struct Lifetimes(BTreeMap<IpAddr, Instant>);

impl Lifetimes {
    /// The lifetime to give an address whose lease has `left`, when
    /// renewals come every `interval`.
    pub fn lifetime(left: Duration, interval: Duration) -> Duration {
        left + interval * 4
    }

    /// Whether `vip`'s address must be renewed at `now`, its lease having
    /// `left` (an address this process has not given a lifetime must).
    pub fn due(&self, vip: &IpAddr, now: Instant, left: Duration, interval: Duration) -> bool {
        self.0
            .get(vip)
            .is_none_or(|end| *end < now + left + interval * 2)
    }

    /// `vip`'s address was given `lifetime` at `at` (before the request:
    /// the kernel's end is no earlier).
    pub fn put(&mut self, vip: IpAddr, at: Instant, lifetime: Duration) {
        let secs = Duration::from_secs(lb_hostnet::lifetime_secs(lifetime));
        self.0.insert(vip, at + secs);
    }

    /// Forgets the addresses no longer on the interface.
    pub fn retain(&mut self, present: &BTreeSet<IpAddr>) {
        self.0.retain(|vip, _| present.contains(vip));
    }
}

/// Puts the `held` VIPs (each with the lifetime to give its address) on
/// interface `ifindex`: those not there yet once they are `ready` (their
/// services are in the kernel — a VIP that attracts traffic before IPVS can
/// take it black-holes it), and renews the lifetimes of those already there
/// that are in `renew`, so the kernel deletes an address whose lease is
/// not renewed. The VIPs added go to `added` (to be announced), also when
/// another failed (the first failure is returned), and `present` gains
/// them; `lifetimes` records what each address was given.
///
/// The renewals stop when `gives_way` says so (a configuration change came
/// in); returns how many were left for later.
pub fn put_held(
    rtnl: &Rtnl,
    ifindex: u32,
    (held, ready, renew): (
        &BTreeMap<IpAddr, Duration>,
        &BTreeSet<IpAddr>,
        &BTreeSet<IpAddr>,
    ),
    (present, added): (&mut BTreeSet<IpAddr>, &mut Vec<IpAddr>),
    (lifetimes, gives_way): (&mut Lifetimes, &dyn Fn() -> bool),
) -> Result<usize, NetError> {
    // One already there keeps its lifetime renewed, ready or not: a
    // restarted agent continues what the previous process held before it
    // has programmed anything.
    let put: Vec<(Address, Option<Duration>)> = held
        .iter()
        .filter(|(vip, _)| match present.contains(vip) {
            true => renew.contains(vip),
            false => ready.contains(vip),
        })
        .map(|(vip, left)| {
            let a = Address {
                ifindex,
                addr: *vip,
                prefix_len: host_prefix(vip),
            };
            (a, Some(*left))
        })
        .collect();
    // New addresses first, at once: a VIP taken over must not wait.
    let (new, renewals): (Vec<_>, Vec<_>) = put
        .into_iter()
        .partition(|(a, _)| !present.contains(&a.addr));
    let mut failed = None;
    let mut record = |list: &[(Address, Option<Duration>)], at: Instant| {
        for ((a, lifetime), result) in list.iter().zip(rtnl.put_addresses(list)) {
            if result.is_ok() {
                lifetimes.put(a.addr, at, lifetime.unwrap_or_default());
            }
            match result {
                Ok(()) if present.insert(a.addr) => {
                    tracing::info!(vip = %a.addr, "VIP added");
                    added.push(a.addr);
                }
                Ok(()) => {}
                // The rest went on; the caller tries again.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    };
    let started = Instant::now();
    record(&new, started);
    // Renewals in small slices, each followed by a pause twice as long as
    // it took: renewing 1,000 addresses (a walk of the interface's address
    // list each, in the kernel) kept the VM's emulated CPUs busy for 100 ms
    // at once, and every configuration change that met it took twice as
    // long; slices of 64 still took 4–11 ms each there, and a change or a
    // reader of the IPVS table that met one waited that long. A change
    // that comes in stops them: the rest wait for a gap (the caller
    // decides when). Each slice's lifetimes are shortened by the time since
    // they were worked out, so that a late slice ends its addresses no
    // later.
    let (mut slices, mut slowest, mut done) = (0, Duration::ZERO, 0);
    let mut chunks = renewals.chunks(RENEWAL_SLICE).peekable();
    while let Some(slice) = chunks.next() {
        if gives_way() {
            break;
        }
        let at = Instant::now();
        let late = at - started;
        let slice: Vec<(Address, Option<Duration>)> = slice
            .iter()
            .map(|(a, lifetime)| (*a, lifetime.map(|l| l.saturating_sub(late))))
            .collect();
        record(&slice, at);
        let took = at.elapsed();
        (slices, slowest, done) = (slices + 1, slowest.max(took), done + slice.len());
        if chunks.peek().is_some() {
            std::thread::sleep((took * 2).min(RENEWAL_PAUSE_MAX));
        }
    }
    let left = renewals.len() - done;
    if slices > 0 || left > 0 {
        // To line a slow configuration change up with a renewal.
        tracing::debug!(
            renewed = done,
            left,
            slices,
            slowest_us = slowest.as_micros() as u64,
            took_us = started.elapsed().as_micros() as u64,
            "VIP lifetimes renewed"
        );
    }
    failed.map_or(Ok(left), Err)
}

/// How many address lifetimes [`put_held`] renews between two pauses.
const RENEWAL_SLICE: usize = 16;

/// The longest pause between two slices of renewals: a host so slow that
/// a slice takes 10 ms or more still renews 1,000 addresses (63 slices)
/// in about two seconds, within the one and a half renewal intervals by
/// which [`Lifetimes`] has an address still outlast its lease when it is
/// due (three seconds with the VM test bed's lease).
const RENEWAL_PAUSE_MAX: Duration = Duration::from_millis(20);

/// How a director announces a VIP it has just taken: a burst of
/// gratuitous ARPs / unsolicited NAs, then one every `refresh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceConfig {
    pub burst: u32,
    pub interval: Duration,
    /// `None`: no periodic refresh.
    pub refresh: Option<Duration>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            burst: 3,
            interval: Duration::from_millis(100),
            refresh: Some(Duration::from_secs(30)),
        }
    }
}

/// When each held VIP is next announced.
#[derive(Debug, Default)]
pub struct Announcements {
    /// VIP → (burst announcements still to send, when the next one is due).
    next: BTreeMap<IpAddr, (u32, Instant)>,
}

impl Announcements {
    /// A VIP was just added: announce it now, then the rest of the burst.
    pub fn taken(&mut self, vip: IpAddr, now: Instant, config: &AnnounceConfig) {
        self.next.insert(vip, (config.burst.max(1), now));
    }

    /// When the next announcement is due (`None`: none is).
    pub fn next_at(&self) -> Option<Instant> {
        self.next.values().map(|(_, at)| *at).min()
    }

    /// The VIPs to announce at `now`; forgets VIPs no longer `held`.
    pub fn due(
        &mut self,
        now: Instant,
        held: &BTreeSet<IpAddr>,
        config: &AnnounceConfig,
    ) -> Vec<IpAddr> {
        self.next.retain(|vip, _| held.contains(vip));
        let mut out = Vec::new();
        for (vip, (left, at)) in self.next.iter_mut() {
            if *at > now {
                continue;
            }
            out.push(*vip);
            if *left > 1 {
                *left -= 1;
                *at = now + config.interval;
            } else if let Some(refresh) = config.refresh {
                *at = now + refresh;
            } else {
                *at = now + Duration::from_secs(u64::from(u32::MAX));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_renewed_once_it_would_not_outlast_its_lease_by_two_renewals() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Lifetimes::default();
        // The VM's 6 s lease, renewed every 2 s: 14 s given.
        let (left, interval) = (ms(6000), ms(2000));
        assert!(l.due(&vip, t0, left, interval), "never given one");
        l.put(vip, t0, Lifetimes::lifetime(left, interval));
        assert!(!l.due(&vip, t0 + ms(2000), left, interval), "12 s > 10 s");
        assert!(!l.due(&vip, t0 + ms(4000), left, interval), "10 s = 10 s");
        assert!(l.due(&vip, t0 + ms(4500), left, interval), "9.5 s < 10 s");
        // First due at a renewal (every 2 s), it outlasts its lease by an
        // interval or more: after half an interval of waiting for a gap in
        // the changes, still by half an interval (the renewal's own time).
        let first_due = t0 + ms(6000);
        assert!(l.due(&vip, first_due, left, interval));
        let waited = first_due + interval / 2;
        assert!(l.0[&vip] >= waited + left + interval / 2);
        // The default 200 ms lease: the kernel's whole second lasts 10 renewals.
        let (left, interval) = (ms(200), ms(67));
        l.put(vip, t0, Lifetimes::lifetime(left, interval));
        assert!(!l.due(&vip, t0 + ms(600), left, interval));
        assert!(l.due(&vip, t0 + ms(700), left, interval));
        l.retain(&BTreeSet::new());
        assert!(l.due(&vip, t0, left, interval), "taken off: forgotten");
    }

    #[test]
    fn a_taken_vip_is_announced_in_a_burst_then_refreshed() {
        let cfg = AnnounceConfig {
            burst: 3,
            interval: Duration::from_millis(100),
            refresh: Some(Duration::from_secs(30)),
        };
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let held = BTreeSet::from([vip]);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Announcements::default();
        a.taken(vip, t0, &cfg);
        assert_eq!(a.due(t0, &held, &cfg), vec![vip], "at once");
        assert!(a.due(ms(50), &held, &cfg).is_empty());
        assert_eq!(a.due(ms(100), &held, &cfg), vec![vip]);
        assert_eq!(a.due(ms(200), &held, &cfg), vec![vip], "third of the burst");
        assert!(a.due(ms(300), &held, &cfg).is_empty(), "burst over");
        assert_eq!(a.due(ms(30_200), &held, &cfg), vec![vip], "refresh");
        assert!(
            a.due(ms(60_200), &BTreeSet::new(), &cfg).is_empty(),
            "a VIP let go is not announced"
        );
        assert!(a.due(ms(90_200), &held, &cfg).is_empty(), "and forgotten");
    }
}
