//! VIP lease grants: what this controller tells each director it may hold.
//!
//! Every controller (the leader and each follower alike) serves the
//! directors' streams and grants leases from its **own applied state**:
//! a director that owns `(vip, epoch)` there gets that grant in the answer to
//! each heartbeat. The director holds a VIP while a **majority of the voters**
//! have a fresh grant for the same epoch, each counted from the moment the
//! director *sent* the heartbeat it answers (so the director's side always
//! ends first).
//!
//! The one rule this module enforces: a controller grants a VIP's newer
//! epoch only once every grant it gave for an older epoch has run out plus
//! the margin — or once the old owner has promised (in a report's
//! `released`) never to hold that epoch again and taken the address off.
//! A released epoch is never granted again by this controller, even while
//! its applied state still shows it (a follower that has not applied the
//! move yet): otherwise its next answer to the leaving director would
//! start the wait anew, and the new owner would miss this controller's
//! grant for a whole lease.
//!
//! Why two directors can never both hold a VIP: suppose D1 holds `(v, e)`
//! and D2 holds `(v, e')` with `e < e'` at the same instant. Each holds
//! through a majority of fresh grants; any two majorities of one voter set
//! share a controller C. C granted `(v, e')` only after its last `(v, e)`
//! grant had been out for `lease + margin`, and D1's use of that grant ended
//! at most `lease` after D1 sent the heartbeat — before C even answered it.
//! After applying `e'`, C's state never shows `e` again (epochs only grow),
//! so it grants no `(v, e)` afterwards. So C cannot have both grants fresh at
//! once: a contradiction. A released epoch is the same argument with D1's
//! promise in place of the wait. None of this needs the leader: a minority
//! of controllers, the leader included, may die or hang and every director
//! keeps its VIPs on the grants of the rest.
//!
//! A controller that (re)starts knows nothing of the grants it gave before;
//! it grants nothing for `lease + margin` after it starts, so whatever it
//! granted in a previous life has run out first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The last grant this controller gave for one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Given {
    epoch: u64,
    director: String,
    at: Instant,
    /// The director promised never to hold this epoch again: it is not
    /// granted any more, and a newer one need not wait for it.
    released: bool,
}

impl Given {
    /// Until when this record keeps `epoch` from being granted: an older
    /// epoch, given within `wait` and not released, may still be held.
    fn withholds(&self, epoch: u64, now: Instant, wait: Duration) -> Option<Instant> {
        let until = self.at + wait;
        (!self.released && self.epoch < epoch && now < until).then_some(until)
    }
}

/// This controller's grant book, one per process.
#[derive(Debug)]
pub struct Grants {
    /// Nothing is granted before this instant (see the module docs).
    quiet_until: Instant,
    /// How long after its last grant of an epoch the next may be granted:
    /// lease + margin.
    wait: Duration,
    last: BTreeMap<IpAddr, Given>,
    /// When records older than `wait` were last forgotten.
    swept: Instant,
    /// Bumped when a release lets a withheld grant go at once: the streams
    /// waiting on one answer then, not at their director's next heartbeat.
    freed: tokio::sync::watch::Sender<u64>,
}

impl Grants {
    pub fn new(now: Instant, wait: Duration) -> Self {
        Grants {
            quiet_until: now + wait,
            wait,
            last: BTreeMap::new(),
            swept: now,
            freed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes when a release may have made a withheld grant due.
    pub fn freed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// The grants for `director`, which owns `owned` (VIP → epoch) in this
    /// controller's applied state, at `now`. A VIP whose older epoch may
    /// still be held elsewhere is left out until that has run out.
    pub fn grant(
        &mut self,
        director: &str,
        owned: &[(IpAddr, u64)],
        now: Instant,
    ) -> Vec<(IpAddr, u64)> {
        if now < self.quiet_until {
            return Vec::new();
        }
        if now >= self.swept + self.wait {
            self.forget_expired(now);
        }
        let mut out = Vec::with_capacity(owned.len());
        for &(vip, epoch) in owned {
            if let Some(g) = self.last.get(&vip) {
                let over = g.epoch > epoch || (g.released && g.epoch == epoch);
                if over || g.withholds(epoch, now, self.wait).is_some() {
                    continue;
                }
            }
            self.record(vip, epoch, director, now, false);
            out.push((vip, epoch));
        }
        out
    }

    /// When the first of `owned` that [`Grants::grant`] withholds at `now`
    /// may be granted (`None`: nothing is withheld), so that the stream can
    /// send it then rather than at the director's next heartbeat.
    pub fn due(&self, owned: &[(IpAddr, u64)], now: Instant) -> Option<Instant> {
        if now < self.quiet_until {
            return (!owned.is_empty()).then_some(self.quiet_until);
        }
        owned
            .iter()
            .filter_map(|(vip, epoch)| self.last.get(vip)?.withholds(*epoch, now, self.wait))
            .min()
    }

    /// `director` promises never to hold `(vip, epoch)` again and has taken
    /// the address off: the newer epoch need not wait for this one, and this
    /// one is not granted again. A promise about another director's grant,
    /// or an epoch other than the last one given, changes nothing (that
    /// grant's wait must run out); with no grant on record (none given
    /// within a wait) the promise is recorded as it is.
    pub fn released(&mut self, director: &str, vip: IpAddr, epoch: u64, now: Instant) {
        let ours = |g: &Given| g.epoch == epoch && g.director == director;
        let known = self.last.get(&vip);
        if known.is_none_or(ours) {
            if known.is_none_or(|g| !g.released) {
                self.freed.send_modify(|n| *n += 1);
            }
            self.record(vip, epoch, director, now, true);
        }
    }

    fn record(&mut self, vip: IpAddr, epoch: u64, director: &str, at: Instant, released: bool) {
        match self.last.get_mut(&vip) {
            // The usual case, every heartbeat for each of a director's VIPs:
            // its record rewritten in place (a new one cost an allocation
            // for the director's name, 1,000 per answer).
            Some(g) if g.director == director => {
                (g.epoch, g.at, g.released) = (epoch, at, released);
            }
            _ => {
                let director = director.to_string();
                self.last.insert(
                    vip,
                    Given {
                        epoch,
                        director,
                        at,
                        released,
                    },
                );
            }
        }
    }

    /// The VIPs' last grants older than any wait, forgotten (bounded memory
    /// when VIPs come and go).
    fn forget_expired(&mut self, now: Instant) {
        self.swept = now;
        let wait = self.wait;
        self.last.retain(|_, g| now < g.at + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn vip() -> IpAddr {
        "10.0.0.100".parse().unwrap()
    }

    #[test]
    fn nothing_is_granted_until_a_previous_life_s_grants_ran_out() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0, 800 * MS);
        assert!(g.grant("d1", &[(vip(), 1)], t0 + 799 * MS).is_empty());
        assert_eq!(g.due(&[(vip(), 1)], t0 + 799 * MS), Some(t0 + 800 * MS));
        assert_eq!(g.grant("d1", &[(vip(), 1)], t0 + 800 * MS), [(vip(), 1)]);
    }

    #[test]
    fn a_new_epoch_waits_for_the_old_one_s_last_grant() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        assert_eq!(g.grant("d1", &[(vip(), 1)], t0), [(vip(), 1)]);
        assert_eq!(g.grant("d1", &[(vip(), 1)], t0 + 100 * MS), [(vip(), 1)]);
        // Epoch 2 went to d2: withheld until 800 ms after the last epoch-1 grant.
        assert!(g.grant("d2", &[(vip(), 2)], t0 + 899 * MS).is_empty());
        assert_eq!(g.due(&[(vip(), 2)], t0 + 899 * MS), Some(t0 + 900 * MS));
        assert_eq!(g.grant("d2", &[(vip(), 2)], t0 + 900 * MS), [(vip(), 2)]);
        // A lagging view of epoch 1 is never granted after epoch 2.
        assert!(g.grant("d1", &[(vip(), 1)], t0 + 901 * MS).is_empty());
    }

    #[test]
    fn a_released_epoch_lets_the_next_be_granted_at_once() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        g.grant("d1", &[(vip(), 1)], t0);
        // A promise from another director, or for another epoch, counts for nothing.
        g.released("d2", vip(), 1, t0);
        g.released("d1", vip(), 0, t0);
        assert!(g.grant("d2", &[(vip(), 3)], t0 + 10 * MS).is_empty());
        g.released("d1", vip(), 1, t0 + 15 * MS);
        assert_eq!(g.due(&[(vip(), 3)], t0 + 15 * MS), None);
        assert_eq!(g.grant("d2", &[(vip(), 3)], t0 + 20 * MS), [(vip(), 3)]);
    }

    #[test]
    fn a_released_epoch_is_not_granted_again_by_a_controller_that_lags() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        assert_eq!(g.grant("d1", &[(vip(), 1)], t0), [(vip(), 1)]);
        // d1 let go of epoch 1; this controller has not applied the move to
        // epoch 2 yet and still shows d1 owning epoch 1.
        g.released("d1", vip(), 1, t0 + 10 * MS);
        assert!(g.grant("d1", &[(vip(), 1)], t0 + 20 * MS).is_empty());
        // Once applied, d2's epoch is granted at once: the wait did not restart.
        assert_eq!(g.grant("d2", &[(vip(), 2)], t0 + 30 * MS), [(vip(), 2)]);
        // A promise with no grant on record holds too.
        let other: IpAddr = "10.0.0.101".parse().unwrap();
        g.released("d1", other, 4, t0 + 40 * MS);
        assert!(g.grant("d1", &[(other, 4)], t0 + 50 * MS).is_empty());
        assert_eq!(g.grant("d2", &[(other, 5)], t0 + 50 * MS), [(other, 5)]);
    }

    #[test]
    fn old_records_are_forgotten() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        g.grant("d1", &[(vip(), 1)], t0);
        g.forget_expired(t0 + 799 * MS);
        assert_eq!(g.last.len(), 1);
        g.forget_expired(t0 + 800 * MS);
        assert!(g.last.is_empty());
    }
}
