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
//!
//! The book keeps, for each VIP, the last grant given. A director's
//! heartbeat answer grants it all its VIPs again, every half second; with
//! 1,000 VIPs, rewriting 1,000 records and then checking them for a
//! withheld grant took 1.2–3.5 ms of the VM's emulated CPU per answer, in
//! the path of whatever change came then. So
//! a grant that gave a director every VIP it owns is kept as a
//! [`Renewal`]: its records point to it, and the next grant of the same
//! VIPs (nothing about them written since) only moves the renewal's time.
//! A record's time is the later of its own and its renewal's: exactly what
//! rewriting each record would have left, so the argument above is
//! unchanged (a unit test holds the book to the plain one, step by step).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The VIPs a director owns, with their epochs, as the streams share them.
pub type Owned = Arc<Vec<(IpAddr, u64)>>;

/// The last grant this controller gave for one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Given {
    epoch: u64,
    director: String,
    at: Instant,
    /// The director promised never to hold this epoch again: it is not
    /// granted any more, and a newer one need not wait for it.
    released: bool,
    /// Part of its director's [`Renewal`], whose time counts too.
    renewed: bool,
}

impl Given {
    /// Until when this record keeps `epoch` from being granted: an older
    /// epoch, last given `at` (within `wait`) and not released, may still
    /// be held.
    fn withholds(&self, at: Instant, epoch: u64, now: Instant, wait: Duration) -> Option<Instant> {
        let until = at + wait;
        (!self.released && self.epoch < epoch && now < until).then_some(until)
    }
}

/// A grant that gave a director every VIP it owned, renewed as a whole
/// while it owns the same ones (see the module docs).
#[derive(Debug)]
struct Renewal {
    owned: Owned,
    /// When the whole set was last granted.
    at: Instant,
    /// No record of `owned` was written since, other than by this renewal:
    /// until one is, granting `owned` again gives all of it.
    intact: bool,
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
    /// Each director's last grant of all its VIPs, while its records name it.
    renewals: HashMap<String, Renewal>,
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
            renewals: HashMap::new(),
            swept: now,
            freed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes when a release may have made a withheld grant due.
    pub fn freed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// When `g` was last given: its own time, or its renewal's if later.
    fn given_at(&self, g: &Given) -> Instant {
        match self.renewals.get(&g.director) {
            Some(r) if g.renewed => g.at.max(r.at),
            _ => g.at,
        }
    }

    /// Whether `director`'s renewal is of `owned` and intact.
    fn renews(&self, director: &str, owned: &Owned) -> bool {
        self.renewals
            .get(director)
            .is_some_and(|r| r.intact && (Arc::ptr_eq(&r.owned, owned) || r.owned == *owned))
    }

    /// The grants for `director`, which owns `owned` (VIP → epoch) in this
    /// controller's applied state, at `now`. A VIP whose older epoch may
    /// still be held elsewhere is left out until that has run out.
    pub fn grant(&mut self, director: &str, owned: &Owned, now: Instant) -> Vec<(IpAddr, u64)> {
        if now < self.quiet_until {
            return Vec::new();
        }
        if now >= self.swept + self.wait {
            self.forget_expired(now);
        }
        // The same VIPs as the director's last full grant, and no record of
        // them written since: each would be granted again (it is this
        // director's, for this epoch, not released), so only the time moves.
        if self.renews(director, owned) {
            if let Some(r) = self.renewals.get_mut(director) {
                r.at = now;
            }
            return owned.to_vec();
        }
        let mut out = Vec::with_capacity(owned.len());
        for &(vip, epoch) in owned.iter() {
            if let Some(g) = self.last.get(&vip) {
                let over = g.epoch > epoch || (g.released && g.epoch == epoch);
                let at = self.given_at(g);
                if over || g.withholds(at, epoch, now, self.wait).is_some() {
                    continue;
                }
            }
            self.record(vip, epoch, director, now, false);
            out.push((vip, epoch));
        }
        if out.len() == owned.len() {
            self.renew_as_one(director, owned, now);
        }
        out
    }

    /// Makes the records of `owned`, all just given to `director` at `now`,
    /// its renewal; its previous one's time goes into the records that
    /// named it (VIPs it owned then and not now keep that time).
    fn renew_as_one(&mut self, director: &str, owned: &Owned, now: Instant) {
        self.end_renewal(director);
        for (vip, _) in owned.iter() {
            if let Some(g) = self.last.get_mut(vip) {
                g.renewed = true;
            }
        }
        let renewal = Renewal {
            owned: owned.clone(),
            at: now,
            intact: true,
        };
        self.renewals.insert(director.to_string(), renewal);
    }

    /// `director`'s renewal, if any, written into the records that name it.
    fn end_renewal(&mut self, director: &str) {
        let Some(r) = self.renewals.remove(director) else {
            return;
        };
        for (vip, _) in r.owned.iter() {
            match self.last.get_mut(vip) {
                Some(g) if g.renewed && g.director == director => {
                    g.at = g.at.max(r.at);
                    g.renewed = false;
                }
                _ => {}
            }
        }
    }

    /// When the first of `owned` that [`Grants::grant`] withholds at `now`
    /// may be granted (`None`: nothing is withheld), so that the stream can
    /// send it then rather than at the director's next heartbeat.
    pub fn due(&self, director: &str, owned: &Owned, now: Instant) -> Option<Instant> {
        if now < self.quiet_until {
            return (!owned.is_empty()).then_some(self.quiet_until);
        }
        // Renewed as one: each record is this director's, for its epoch.
        if self.renews(director, owned) {
            return None;
        }
        owned
            .iter()
            .filter_map(|(vip, epoch)| {
                let g = self.last.get(vip)?;
                g.withholds(self.given_at(g), *epoch, now, self.wait)
            })
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

    /// Writes the record of `vip`. The record it replaces leaves its
    /// renewal, which is then no longer intact; `at` is never earlier than
    /// that renewal's time (the clock only moves on).
    fn record(&mut self, vip: IpAddr, epoch: u64, director: &str, at: Instant, released: bool) {
        if let Some(g) = self.last.get(&vip).filter(|g| g.renewed) {
            if let Some(r) = self.renewals.get_mut(&g.director) {
                r.intact = false;
            }
        }
        match self.last.get_mut(&vip) {
            // The usual case, every heartbeat for each of a director's VIPs:
            // its record rewritten in place (a new one cost an allocation
            // for the director's name, 1,000 per answer).
            Some(g) if g.director == director => {
                (g.epoch, g.at, g.released, g.renewed) = (epoch, at, released, false);
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
                        renewed: false,
                    },
                );
            }
        }
    }

    /// The VIPs' last grants older than any wait, forgotten (bounded memory
    /// when VIPs and directors come and go).
    fn forget_expired(&mut self, now: Instant) {
        self.swept = now;
        let wait = self.wait;
        let gone: Vec<String> = self
            .renewals
            .iter()
            .filter(|(_, r)| now >= r.at + wait)
            .map(|(d, _)| d.clone())
            .collect();
        for director in gone {
            self.end_renewal(&director);
        }
        // What is left renewed counts from a renewal that has not run out.
        self.last.retain(|_, g| g.renewed || now < g.at + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn own(vips: &[(IpAddr, u64)]) -> Owned {
        Arc::new(vips.to_vec())
    }

    fn vip() -> IpAddr {
        "10.0.0.100".parse().unwrap()
    }

    #[test]
    fn nothing_is_granted_until_a_previous_life_s_grants_ran_out() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0, 800 * MS);
        assert!(g.grant("d1", &own(&[(vip(), 1)]), t0 + 799 * MS).is_empty());
        assert_eq!(
            g.due("d1", &own(&[(vip(), 1)]), t0 + 799 * MS),
            Some(t0 + 800 * MS)
        );
        assert_eq!(
            g.grant("d1", &own(&[(vip(), 1)]), t0 + 800 * MS),
            [(vip(), 1)]
        );
    }

    #[test]
    fn a_new_epoch_waits_for_the_old_one_s_last_grant() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        assert_eq!(g.grant("d1", &own(&[(vip(), 1)]), t0), [(vip(), 1)]);
        assert_eq!(
            g.grant("d1", &own(&[(vip(), 1)]), t0 + 100 * MS),
            [(vip(), 1)]
        );
        // Epoch 2 went to d2: withheld until 800 ms after the last epoch-1 grant.
        assert!(g.grant("d2", &own(&[(vip(), 2)]), t0 + 899 * MS).is_empty());
        assert_eq!(
            g.due("d2", &own(&[(vip(), 2)]), t0 + 899 * MS),
            Some(t0 + 900 * MS)
        );
        assert_eq!(
            g.grant("d2", &own(&[(vip(), 2)]), t0 + 900 * MS),
            [(vip(), 2)]
        );
        // A lagging view of epoch 1 is never granted after epoch 2.
        assert!(g.grant("d1", &own(&[(vip(), 1)]), t0 + 901 * MS).is_empty());
    }

    #[test]
    fn a_released_epoch_lets_the_next_be_granted_at_once() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        g.grant("d1", &own(&[(vip(), 1)]), t0);
        // A promise from another director, or for another epoch, counts for nothing.
        g.released("d2", vip(), 1, t0);
        g.released("d1", vip(), 0, t0);
        assert!(g.grant("d2", &own(&[(vip(), 3)]), t0 + 10 * MS).is_empty());
        g.released("d1", vip(), 1, t0 + 15 * MS);
        assert_eq!(g.due("d2", &own(&[(vip(), 3)]), t0 + 15 * MS), None);
        assert_eq!(
            g.grant("d2", &own(&[(vip(), 3)]), t0 + 20 * MS),
            [(vip(), 3)]
        );
    }

    #[test]
    fn a_released_epoch_is_not_granted_again_by_a_controller_that_lags() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        assert_eq!(g.grant("d1", &own(&[(vip(), 1)]), t0), [(vip(), 1)]);
        // d1 let go of epoch 1; this controller has not applied the move to
        // epoch 2 yet and still shows d1 owning epoch 1.
        g.released("d1", vip(), 1, t0 + 10 * MS);
        assert!(g.grant("d1", &own(&[(vip(), 1)]), t0 + 20 * MS).is_empty());
        // Once applied, d2's epoch is granted at once: the wait did not restart.
        assert_eq!(
            g.grant("d2", &own(&[(vip(), 2)]), t0 + 30 * MS),
            [(vip(), 2)]
        );
        // A promise with no grant on record holds too.
        let other: IpAddr = "10.0.0.101".parse().unwrap();
        g.released("d1", other, 4, t0 + 40 * MS);
        assert!(g.grant("d1", &own(&[(other, 4)]), t0 + 50 * MS).is_empty());
        assert_eq!(
            g.grant("d2", &own(&[(other, 5)]), t0 + 50 * MS),
            [(other, 5)]
        );
    }

    #[test]
    fn old_records_are_forgotten() {
        let t0 = Instant::now();
        let mut g = Grants::new(t0 - 800 * MS, 800 * MS);
        g.grant("d1", &own(&[(vip(), 1)]), t0);
        g.forget_expired(t0 + 799 * MS);
        assert_eq!(g.last.len(), 1);
        g.forget_expired(t0 + 800 * MS);
        assert!(g.last.is_empty());
        assert!(g.renewals.is_empty());
    }

    /// The book as it was before renewals: each grant rewrites the record
    /// of every VIP it gives.
    struct Plain {
        quiet_until: Instant,
        wait: Duration,
        last: BTreeMap<IpAddr, (u64, String, Instant, bool)>,
        swept: Instant,
    }

    impl Plain {
        fn withholds(&self, vip: &IpAddr, epoch: u64, now: Instant) -> Option<Instant> {
            let (e, _, at, released) = self.last.get(vip)?;
            (!released && *e < epoch && now < *at + self.wait).then_some(*at + self.wait)
        }

        fn grant(
            &mut self,
            director: &str,
            owned: &[(IpAddr, u64)],
            now: Instant,
        ) -> Vec<(IpAddr, u64)> {
            if now < self.quiet_until {
                return Vec::new();
            }
            if now >= self.swept + self.wait {
                self.swept = now;
                let wait = self.wait;
                self.last.retain(|_, g| now < g.2 + wait);
            }
            let mut out = Vec::new();
            for &(vip, epoch) in owned {
                if let Some((e, _, _, released)) = self.last.get(&vip) {
                    let over = *e > epoch || (*released && *e == epoch);
                    if over || self.withholds(&vip, epoch, now).is_some() {
                        continue;
                    }
                }
                self.last.insert(vip, (epoch, director.into(), now, false));
                out.push((vip, epoch));
            }
            out
        }

        fn due(&self, owned: &[(IpAddr, u64)], now: Instant) -> Option<Instant> {
            if now < self.quiet_until {
                return (!owned.is_empty()).then_some(self.quiet_until);
            }
            owned
                .iter()
                .filter_map(|(v, e)| self.withholds(v, *e, now))
                .min()
        }

        fn released(&mut self, director: &str, vip: IpAddr, epoch: u64, now: Instant) {
            let known = self.last.get(&vip);
            if known.is_none_or(|g| g.0 == epoch && g.1 == director) {
                self.last.insert(vip, (epoch, director.into(), now, true));
            }
        }
    }

    /// Random heartbeats, moves, releases and pauses, given to the book and
    /// to the plain one: every grant, every due time and every record (with
    /// its renewal's time) must be the same at every step.
    #[test]
    fn renewing_as_one_grants_what_rewriting_each_record_would() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let directors = ["d1", "d2", "d3"];
        let vips: Vec<IpAddr> = (1..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let wait = 800 * MS;
        let mut now = Instant::now();
        let mut book = Grants::new(now, wait);
        let mut plain = Plain {
            quiet_until: now + wait,
            wait,
            last: BTreeMap::new(),
            swept: now,
        };
        // Who owns each VIP at which epoch, and each director's last owned set.
        let mut owner: Vec<(usize, u64)> = (0..vips.len()).map(|i| (i % 3, 1)).collect();
        let mut sets: Vec<Owned> = vec![Owned::default(); directors.len()];
        let (mut renewed, mut granted) = (0, 0);
        for step in 0..20_000 {
            now += Duration::from_millis(match rand(20) {
                0 => 700 + rand(600),
                _ => rand(120),
            });
            match rand(10) {
                // A VIP moves to another director, at the next epoch.
                0 => {
                    let v = rand(vips.len() as u64) as usize;
                    owner[v] = ((owner[v].0 + 1 + rand(2) as usize) % 3, owner[v].1 + 1);
                }
                // A director lets go of an epoch (its own, an old one, or another's).
                1 => {
                    let v = rand(vips.len() as u64) as usize;
                    let d = directors[rand(3) as usize];
                    let epoch = owner[v].1.saturating_sub(rand(2));
                    book.released(d, vips[v], epoch, now);
                    plain.released(d, vips[v], epoch, now);
                }
                // A heartbeat answered, with the set shared since the last
                // one when it is the same (as the streams keep it), or anew.
                _ => {
                    let d = rand(3) as usize;
                    let owned: Vec<(IpAddr, u64)> = (0..vips.len())
                        .filter(|v| owner[*v].0 == d)
                        .map(|v| (vips[v], owner[v].1))
                        .collect();
                    if *sets[d] != owned || rand(4) == 0 {
                        sets[d] = Arc::new(owned);
                    }
                    let fast = book.renewals.get(directors[d]).is_some_and(|r| r.intact);
                    let given = book.grant(directors[d], &sets[d], now);
                    assert_eq!(
                        given,
                        plain.grant(directors[d], &sets[d], now),
                        "step {step}"
                    );
                    if fast && given.len() == sets[d].len() && !given.is_empty() {
                        renewed += 1;
                    }
                    granted += 1;
                }
            }
            for (d, set) in sets.iter().enumerate() {
                assert_eq!(
                    book.due(directors[d], set, now),
                    plain.due(set, now),
                    "step {step}"
                );
            }
            let records: BTreeMap<IpAddr, (u64, String, Instant, bool)> = book
                .last
                .iter()
                .map(|(v, g)| {
                    (
                        *v,
                        (g.epoch, g.director.clone(), book.given_at(g), g.released),
                    )
                })
                .collect();
            assert_eq!(records, plain.last, "step {step}");
        }
        // Both paths were taken, often.
        assert!(
            renewed > 1_000 && granted - renewed > 1_000,
            "{renewed} of {granted}"
        );
    }
}
