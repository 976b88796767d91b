//! The quorum lease's tests.

use super::*;

/// [`Lease::holding`] as it was written first (every grant sorted):
/// the merge must say the same.
fn holding_by_sorting(l: &Lease, now: Instant) -> BTreeMap<IpAddr, (u64, Instant)> {
    let voters: BTreeSet<u64> = l.voters.values().flatten().copied().collect();
    let need = l.majority();
    let mut all: Vec<((IpAddr, u64), Instant)> = Vec::new();
    for (id, g) in &l.grants {
        if voters.contains(id) && g.until > now {
            all.extend(g.vips.iter().map(|(vip, epoch)| ((*vip, *epoch), g.until)));
        }
    }
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = BTreeMap::new();
    for same in all.chunk_by(|a, b| a.0 == b.0) {
        if let (Some(((vip, epoch), _)), Some((_, end))) = (same.first(), same.get(need - 1)) {
            out.insert(*vip, (*epoch, *end));
        }
    }
    for (vip, (epoch, until)) in &l.inherited {
        if *until > now && out.get(vip).is_none_or(|(e, _)| e < epoch) {
            out.insert(*vip, (*epoch, *until));
        }
    }
    out.retain(|vip, (epoch, _)| l.dropped.get(vip).is_none_or(|d| *epoch > *d));
    out
}

/// A small deterministic generator (xorshift): the cases are the same
/// each run.
struct Gen(u64);

impl Gen {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A lease with grants from `controllers` controllers, each naming
    /// the voters `voters` picks, granting up to `vips` VIPs of the
    /// first `addresses` addresses (epochs 1–3), ending within 40 ms
    /// of `t0`.
    fn lease(
        &mut self,
        t0: Instant,
        controllers: u64,
        (vips, addresses): (u64, u64),
        voters: impl Fn(&mut Gen, u64) -> BTreeSet<u64>,
    ) -> Lease {
        let mut l = Lease::default();
        for id in 1..=controllers {
            let named = voters(self, id);
            l.voters.insert(id, named);
            let granted = (0..self.next(vips))
                .map(|_| (self.vip(addresses), 1 + self.next(3)))
                .collect();
            let until = t0 + MS * (self.next(40) as u32);
            l.grants.insert(
                id,
                Grant {
                    until,
                    vips: Arc::new(granted),
                },
            );
        }
        l
    }

    /// One of the first `addresses` VIPs.
    fn vip(&mut self, addresses: u64) -> IpAddr {
        IpAddr::from([10, 0, 0, self.next(addresses) as u8])
    }
}

#[test]
fn merging_the_grants_holds_what_sorting_them_held() {
    let t0 = Instant::now();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut nonempty = 0;
    for _ in 0..2000 {
        let controllers = 1 + g.next(5);
        let mut l = g.lease(t0, controllers, (8, 6), |g, id| {
            (1..=controllers)
                .filter(|v| *v != id || g.next(4) > 0)
                .collect()
        });
        if g.next(3) == 0 {
            let vip = g.vip(6);
            l.inherited.insert(vip, (1 + g.next(3), t0 + MS * 25));
        }
        if g.next(3) == 0 {
            let vip = g.vip(6);
            l.dropped.insert(vip, 1 + g.next(3));
        }
        let now = t0 + MS * (g.next(30) as u32);
        let held = l.holding(now);
        assert_eq!(held, holding_by_sorting(&l, now), "{l:?} at {:?}", now - t0);
        nonempty += usize::from(held.len() > 1);
    }
    // The cases reach majorities, not only empty leases.
    assert!(nonempty > 200, "{nonempty}");
}

#[test]
fn an_answer_that_only_renews_moves_no_epoch() {
    let t0 = Instant::now();
    let keep = MS * 4;
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    let mut quick = 0;
    for _ in 0..6000 {
        let controllers = 1 + g.next(4);
        let mut l = g.lease(t0, controllers, (6, 5), |g, _| {
            (1..=controllers).filter(|_| g.next(3) > 0).collect()
        });
        if g.next(4) == 0 {
            let vip = g.vip(5);
            l.inherited.insert(vip, (2, t0 + MS * 20));
        }
        if g.next(4) == 0 {
            let vip = g.vip(5);
            l.dropped.insert(vip, 1 + g.next(3));
            l.let_go.insert(vip, t0 + MS * (g.next(40) as u32));
        }
        let id = 1 + g.next(controllers + 1);
        // Its grant's own map (`leases_same`), or now and then another.
        let vips = match l.grants.get(&id) {
            Some(grant) if g.next(4) > 0 => grant.vips.clone(),
            _ => Arc::new((0..g.next(6)).map(|_| (g.vip(5), 1 + g.next(3))).collect()),
        };
        let voters: BTreeSet<u64> = match g.next(3) {
            0 => BTreeSet::new(),
            1 => l.voters.get(&id).cloned().unwrap_or_default(),
            _ => (1..=1 + g.next(4)).collect(),
        };
        let sent = (g.next(4) > 0).then(|| t0 + MS * (g.next(30) as u32));
        let lease = MS * 12;
        let now = t0 + MS * (g.next(40) as u32);
        if !l.renews_only(id, (sent, lease), &vips, &voters, (now, keep)) {
            continue;
        }
        quick += 1;
        // What the session's full comparison would have found.
        let before = (l.holding(now), l.dropped.clone());
        l.granted(id, sent, lease, vips, voters);
        l.supersede(id, [], now);
        l.forget(now, keep);
        let after = l.holding(now);
        assert!(
            same_epochs(&before.0, &after) && l.dropped == before.1,
            "{l:?}: {before:?} became {after:?}"
        );
    }
    // The cases reach the quick path often, not only by chance.
    assert!(quick > 300, "{quick}");
}

const MS: Duration = Duration::from_millis(1);

fn vip() -> IpAddr {
    "10.0.0.100".parse().unwrap()
}

fn three() -> BTreeSet<u64> {
    BTreeSet::from([1, 2, 3])
}

fn grant(l: &mut Lease, id: u64, sent: Instant, epoch: u64) {
    l.granted(
        id,
        Some(sent),
        600 * MS,
        BTreeMap::from([(vip(), epoch)]),
        three(),
    );
}

#[test]
fn a_vip_is_held_while_a_majority_of_grants_is_fresh() {
    let t0 = Instant::now();
    let mut l = Lease::default();
    grant(&mut l, 1, t0, 4);
    assert!(l.held(t0).is_empty(), "one of three is no majority");
    grant(&mut l, 2, t0 + 100 * MS, 4);
    assert_eq!(l.held(t0), BTreeMap::from([(vip(), 4)]));
    // The majority lasts as long as its shorter grant: 1's, at 600 ms.
    grant(&mut l, 3, t0 + 200 * MS, 4);
    assert_eq!(
        l.holding(t0)[&vip()].1,
        t0 + 700 * MS,
        "2 and 3 last longest"
    );
    assert_eq!(l.held(t0 + 699 * MS).len(), 1);
    assert!(l.held(t0 + 700 * MS).is_empty(), "only 3 is fresh then");
    // A grant from a controller that is not a voter does not count.
    let mut l = Lease::default();
    grant(&mut l, 1, t0, 4);
    grant(&mut l, 9, t0, 4);
    assert!(l.held(t0).is_empty());
}

#[test]
fn grants_for_different_epochs_do_not_add_up() {
    let t0 = Instant::now();
    let mut l = Lease::default();
    grant(&mut l, 1, t0, 4);
    grant(&mut l, 2, t0, 5);
    assert!(l.held(t0).is_empty());
    grant(&mut l, 3, t0, 5);
    assert_eq!(l.held(t0), BTreeMap::from([(vip(), 5)]));
}

#[test]
fn a_superseded_epoch_is_never_held_again_and_is_released_once_off() {
    let t0 = Instant::now();
    let mut l = Lease::default();
    grant(&mut l, 1, t0, 4);
    grant(&mut l, 2, t0, 4);
    l.added.insert(vip());
    l.supersede(1, [(vip(), 4)], t0);
    // Controller 1 applied the move first; 2 has not yet.
    assert_eq!(l.held(t0), BTreeMap::from([(vip(), 4)]), "one of three");
    assert!(l.released().is_empty());
    l.supersede(2, [(vip(), 3)], t0);
    assert_eq!(l.held(t0).len(), 1, "an older epoch is no vote for 4");
    l.supersede(2, [(vip(), 4)], t0);
    assert!(l.held(t0).is_empty(), "fresh grants notwithstanding");
    assert!(l.released().is_empty(), "the address is still on");
    assert_eq!(l.on_interface(t0), [(vip(), 4)]);
    l.added.remove(&vip());
    assert_eq!(l.released(), [(vip(), 4)]);
    // Every controller has applied the move: none grants the VIP now.
    // The release is still reported (to streams that report later).
    l.granted(1, Some(t0), 600 * MS, BTreeMap::new(), three());
    l.granted(2, Some(t0), 600 * MS, BTreeMap::new(), three());
    l.forget(t0 + 100 * MS, Duration::from_secs(10));
    assert_eq!(l.released(), [(vip(), 4)]);
    l.forget(t0 + Duration::from_secs(10), Duration::from_secs(10));
    assert!(l.released().is_empty(), "forgotten after a while");
    // The VIP comes back in a later epoch.
    grant(&mut l, 1, t0, 6);
    grant(&mut l, 2, t0, 6);
    assert_eq!(l.held(t0), BTreeMap::from([(vip(), 6)]));
}

#[test]
fn a_repeated_ack_keeps_the_grant_s_end_and_an_inherited_lease_holds_until_its_end() {
    let t0 = Instant::now();
    let mut l = Lease::default();
    grant(&mut l, 1, t0, 4);
    l.granted(1, None, 600 * MS, BTreeMap::new(), three());
    assert_eq!(l.grants[&1].until, t0 + 600 * MS);
    assert!(l.grants[&1].vips.is_empty(), "the newer answer's grants");
    l.inherited.insert(vip(), (4, t0 + 300 * MS));
    assert_eq!(l.held(t0 + 299 * MS), BTreeMap::from([(vip(), 4)]));
    assert!(l.held(t0 + 300 * MS).is_empty());
}

#[test]
fn a_controller_silent_for_long_no_longer_counts_in_the_membership() {
    let t0 = Instant::now();
    let mut l = Lease::default();
    // 3 was removed from the cluster; 1 and 2 name the voters {1, 2}.
    l.granted(3, Some(t0), 600 * MS, BTreeMap::new(), three());
    let two = BTreeSet::from([1, 2]);
    l.granted(
        1,
        Some(t0),
        600 * MS,
        BTreeMap::from([(vip(), 4)]),
        two.clone(),
    );
    assert!(l.held(t0).is_empty(), "one of {{1, 2, 3}}");
    let later = t0 + Duration::from_secs(20);
    l.forget(later, Duration::from_secs(10));
    l.granted(
        1,
        Some(later),
        600 * MS,
        BTreeMap::from([(vip(), 4)]),
        two.clone(),
    );
    l.granted(2, Some(later), 600 * MS, BTreeMap::from([(vip(), 4)]), two);
    assert_eq!(
        l.held(later),
        BTreeMap::from([(vip(), 4)]),
        "two of {{1, 2}}"
    );
    assert!(!l.voters.contains_key(&3));
}

#[test]
fn grants_start_at_the_send_of_the_acknowledged_heartbeat() {
    let t0 = Instant::now();
    let mut sent = SentHeartbeats::default();
    sent.sent(1, t0);
    sent.sent(2, t0 + 100 * MS);
    assert_eq!(sent.acked(2), Some(t0 + 100 * MS));
    assert_eq!(sent.acked(2), None, "used once");
    assert_eq!(sent.acked(1), None, "older heartbeats are forgotten");
}
