//! The quorum lease: which VIPs this director may hold, and until when.
//!
//! Every controller answers each heartbeat with its grants (VIP → epoch)
//! from its own applied state. A grant counts until `lease_ms` after the
//! director *sent* the heartbeat it answers — the director's clock only, so
//! the director's side of a grant always ends before the controller's. A VIP
//! is held at one epoch while a **majority of the voters** have a fresh grant
//! for that epoch; the controllers' side of the argument that two directors
//! never both hold a VIP is in `lb_controller::grants`.
//!
//! An epoch a **majority** of the controllers report as *superseded* (the
//! VIP moved, was released, or is no longer configured) is dropped for
//! good: it is never held again, whatever grants are still fresh, and once
//! its address is off the interface the director says so (`released`),
//! which lets the controllers grant the next epoch at once instead of
//! waiting the lease out. Waiting for a majority rather than the first
//! (the leader, which applies a move first) keeps the VIP here until enough
//! controllers have applied the move to grant the new owner its majority
//! the moment the release arrives: a hand-over then costs a round trip, not
//! the followers' catching up. Holding on fresh grants meanwhile is safe
//! whatever the controllers say — the grants alone decide that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One controller's latest grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub until: Instant,
    /// Shared with the stream that took it: an answer that repeats the
    /// previous grants (nearly every one) costs no copy of 1,000 VIPs.
    pub vips: Arc<BTreeMap<IpAddr, u64>>,
}

/// What the director may hold, from every controller's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// Each controller's latest grants, by its Raft node id.
    pub grants: BTreeMap<u64, Grant>,
    /// The voters as each controller names them: the majority is counted
    /// over their union (membership changes one node at a time, so any
    /// two of these views overlap in a majority).
    pub voters: BTreeMap<u64, BTreeSet<u64>>,
    /// What a previous process of this node held, and until when (from the
    /// lease file): held on that authority alone until then.
    pub inherited: BTreeMap<IpAddr, (u64, Instant)>,
    /// VIP → the highest epoch let go of for good.
    pub dropped: BTreeMap<IpAddr, u64>,
    /// VIP → the highest epoch a controller reported superseded, and which
    /// controllers did (dropped once they are a majority).
    pub superseded: BTreeMap<IpAddr, (u64, BTreeSet<u64>)>,
    /// When each VIP was last dropped: its release is reported for a while
    /// even once no controller grants it any more (see [`Lease::forget`]).
    pub let_go: BTreeMap<IpAddr, Instant>,
    /// The VIP addresses this agent put on the interface and has not taken
    /// off yet: what the kernel has, kept across restarts so that a VIP
    /// deleted while the agent was down is still removed.
    pub added: BTreeSet<IpAddr>,
}

impl Lease {
    /// The VIPs held at `now`, with their epoch and until when the
    /// majority lasts (without further grants).
    pub fn holding(&self, now: Instant) -> BTreeMap<IpAddr, (u64, Instant)> {
        let voters: BTreeSet<u64> = self.voters.values().flatten().copied().collect();
        let need = self.majority();
        // This runs for every answer and every report (1,000 VIPs × each
        // controller): each fresh voter's grants are sorted by VIP already,
        // so they are merged — a handful of controllers — not sorted anew.
        let mut grants: Vec<_> = self
            .grants
            .iter()
            .filter(|(id, g)| voters.contains(id) && g.until > now)
            .map(|(_, g)| (g.vips.iter().peekable(), g.until))
            .collect();
        let mut held: Vec<(IpAddr, (u64, Instant))> = Vec::new();
        let mut ends: Vec<Instant> = Vec::with_capacity(grants.len());
        loop {
            let next = grants
                .iter_mut()
                .filter_map(|(g, _)| g.peek().map(|(vip, epoch)| (**vip, **epoch)))
                .min();
            let Some((vip, epoch)) = next else { break };
            ends.clear();
            for (g, until) in &mut grants {
                if g.next_if(|(v, e)| (**v, **e) == (vip, epoch)).is_some() {
                    ends.push(*until);
                }
            }
            // The majority lasts as long as its need-th longest grant.
            ends.sort_unstable_by(|a, b| b.cmp(a));
            let Some(end) = ends.get(need - 1) else {
                continue;
            };
            // A later epoch of the same VIP comes after an earlier one.
            match held.last_mut() {
                Some(last) if last.0 == vip => *last = (vip, (epoch, *end)),
                _ => held.push((vip, (epoch, *end))),
            }
        }
        let mut out: BTreeMap<IpAddr, (u64, Instant)> = held.into_iter().collect();
        for (vip, (epoch, until)) in &self.inherited {
            if *until > now && out.get(vip).is_none_or(|(e, _)| e < epoch) {
                out.insert(*vip, (*epoch, *until));
            }
        }
        out.retain(|vip, (epoch, _)| self.dropped.get(vip).is_none_or(|d| *epoch > *d));
        out
    }

    /// The VIPs held at `now`, with their epoch.
    pub fn held(&self, now: Instant) -> BTreeMap<IpAddr, u64> {
        epochs(&self.holding(now))
    }

    /// Controller `id`'s grants, answering a heartbeat sent at `sent`
    /// (`None`: the answer to a heartbeat already answered, whose time has
    /// been used; the grant keeps that end).
    pub fn granted(
        &mut self,
        id: u64,
        sent: Option<Instant>,
        lease: Duration,
        vips: impl Into<Arc<BTreeMap<IpAddr, u64>>>,
        voters: BTreeSet<u64>,
    ) {
        if !voters.is_empty() {
            self.voters.insert(id, voters);
        }
        let until = match (sent, self.grants.get(&id)) {
            (Some(at), _) => at + lease,
            (None, Some(g)) => g.until,
            (None, None) => return,
        };
        self.grants.insert(
            id,
            Grant {
                until,
                vips: vips.into(),
            },
        );
    }

    /// Whether controller `id`'s answer, granting again the very map its
    /// fresh grant holds (`vips`, an answer that says `leases_same`) from a
    /// heartbeat sent at `sent`, with the voters it named before and
    /// nothing superseded, can only move the ends of what is held at
    /// `now`, and leaves the drops as they are. Then the fresh grants and
    /// their VIPs stay what they were, and with them every majority.
    /// Nearly every answer is one; reading the lease before and after to
    /// compare cost the session a millisecond of the VM's emulated CPU per
    /// answer with 1,000 VIPs. Anything else — a drop that
    /// [`Lease::forget`] may end, a grant it would forget at `now` (its
    /// voters go with it), an end that would move back — is left to the
    /// full comparison.
    pub fn renews_only(
        &self,
        id: u64,
        (sent, lease): (Option<Instant>, Duration),
        vips: &Arc<BTreeMap<IpAddr, u64>>,
        voters: &BTreeSet<u64>,
        (now, keep): (Instant, Duration),
    ) -> bool {
        let Some(g) = self.grants.get(&id) else {
            return false;
        };
        self.dropped.is_empty()
            && g.until > now
            && Arc::ptr_eq(&g.vips, vips)
            && sent.is_none_or(|at| at + lease >= g.until)
            && (voters.is_empty() || self.voters.get(&id) == Some(voters))
            && self.grants.values().all(|g| g.until + keep > now)
    }

    /// Controller `id` says these epochs are over; once a majority of the
    /// voters has said so of an epoch, it is never held again.
    pub fn supersede(
        &mut self,
        id: u64,
        over: impl IntoIterator<Item = (IpAddr, u64)>,
        now: Instant,
    ) {
        let need = self.majority();
        for (vip, epoch) in over {
            let votes = self
                .superseded
                .entry(vip)
                .or_insert((epoch, BTreeSet::new()));
            // A newer epoch over implies the older ones: count afresh for it.
            if epoch > votes.0 {
                *votes = (epoch, BTreeSet::new());
            }
            if epoch == votes.0 {
                votes.1.insert(id);
            }
            if votes.1.len() >= need && self.dropped.get(&vip).is_none_or(|d| *d < votes.0) {
                self.dropped.insert(vip, votes.0);
                self.let_go.insert(vip, now);
            }
        }
    }

    /// How many controllers make a majority of the voters as they name them.
    fn majority(&self) -> usize {
        let voters: BTreeSet<u64> = self.voters.values().flatten().copied().collect();
        voters.len() / 2 + 1
    }

    /// What the kernel has — the addresses on the interface — each with
    /// the epoch this director last knew it at, for reports.
    pub fn on_interface(&self, now: Instant) -> Vec<(IpAddr, u64)> {
        let holding = self.holding(now);
        self.added
            .iter()
            .map(|vip| match holding.get(vip) {
                Some((epoch, _)) => (*vip, *epoch),
                None => (*vip, self.last_epoch(*vip)),
            })
            .collect()
    }

    /// The highest epoch of `vip` granted, inherited or dropped.
    pub fn last_epoch(&self, vip: IpAddr) -> u64 {
        let granted = self.grants.values().filter_map(|g| g.vips.get(&vip));
        let inherited = self.inherited.get(&vip).map(|(e, _)| e);
        granted
            .chain(inherited)
            .chain(self.dropped.get(&vip))
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The epochs let go of for good whose address is off the interface.
    pub fn released(&self) -> Vec<(IpAddr, u64)> {
        self.dropped
            .iter()
            .filter(|(vip, _)| !self.added.contains(vip))
            .map(|(vip, epoch)| (*vip, *epoch))
            .collect()
    }

    /// Forgets what no longer matters: grants run out long ago (and the
    /// voters those controllers named: a controller removed from the
    /// cluster must not keep the majority counted over a membership that
    /// is gone), dropped epochs of VIPs no controller grants any more.
    pub fn forget(&mut self, now: Instant, keep: Duration) {
        self.grants.retain(|_, g| g.until + keep > now);
        let grants = &self.grants;
        self.voters.retain(|id, _| grants.contains_key(id));
        self.inherited.retain(|_, (_, until)| *until > now);
        // What is left below only prunes drops and supersessions: with
        // none (nearly always) the walk over every grant is skipped.
        if self.dropped.is_empty() && self.superseded.is_empty() {
            self.let_go.clear();
            return;
        }
        let granted: BTreeSet<IpAddr> = self
            .grants
            .values()
            .flat_map(|g| g.vips.keys().copied())
            .collect();
        // A release is kept (and reported) for `keep` after the drop, not
        // only while some controller still grants the VIP: every
        // controller has often applied the move before the address is off,
        // and a release forgotten then would never reach the streams that
        // build their report a moment later — their controllers would make
        // the new owner wait the old grants out.
        let let_go = &self.let_go;
        let recent = |vip: &IpAddr| let_go.get(vip).is_some_and(|at| *at + keep > now);
        self.dropped
            .retain(|vip, _| granted.contains(vip) || self.added.contains(vip) || recent(vip));
        let dropped = &self.dropped;
        self.let_go.retain(|vip, _| dropped.contains_key(vip));
        self.superseded
            .retain(|vip, _| granted.contains(vip) || dropped.contains_key(vip));
    }
}

/// Whether two of [`Lease::holding`]'s answers hold the same VIPs at the
/// same epochs (their ends aside): [`epochs`] of each, compared without
/// making either map — a controller's every answer compares two of 1,000.
pub fn same_epochs(
    a: &BTreeMap<IpAddr, (u64, Instant)>,
    b: &BTreeMap<IpAddr, (u64, Instant)>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((v, (e, _)), (w, (f, _)))| (v, e) == (w, f))
}

/// What [`Lease::holding`] says, without the ends: VIP → epoch.
pub fn epochs(holding: &BTreeMap<IpAddr, (u64, Instant)>) -> BTreeMap<IpAddr, u64> {
    holding
        .iter()
        .map(|(vip, (epoch, _))| (*vip, *epoch))
        .collect()
}

/// Remembers when each heartbeat of one stream was sent, to start a grant
/// at the ack.
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

    /// The send time of an acknowledged heartbeat, the first time it is
    /// acknowledged (and forgets it and older ones).
    pub fn acked(&mut self, seq: u64) -> Option<Instant> {
        let at = self.0.get(&seq).copied();
        self.0.retain(|s, _| *s > seq);
        at
    }
}

#[cfg(test)]
mod tests {
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
}
