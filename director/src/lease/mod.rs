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
mod tests;
