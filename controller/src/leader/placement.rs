//! VIP owner election: which director answers for each VIP.
//!
//! The leader runs [`Placement`]; the decision itself is [`step`] and
//! [`decide`], pure logic.
//! Rules:
//! - a director is *live* while the leader has heard from it within
//!   `fence + margin`; it holds a VIP only while its own lease (`fence` after
//!   the heartbeat the leader acknowledged) is fresh, so once the leader
//!   considers it dead it has already let go — two directors never hold one VIP;
//! - a director is eligible for a VIP when it is live, not leaving, matches
//!   every service's director selector, and passes each local service's
//!   check on the VIP (its own proxy: keepalived's `track_script`);
//! - ownership is sticky: a live, eligible owner keeps its VIP — except that
//!   a preferred director which has been live for `hold_down` takes its VIP
//!   back (preemption, like keepalived's `preempt_delay`);
//! - a VIP moves in one Raft write, to its next owner, whether the old one
//!   is silent or live (preemption, a selector it no longer matches, a
//!   director stopping): the two never hold it together because no
//!   controller grants the new epoch before the old one's grants have run
//!   out or the old owner has released it (`crate::grants`) — the old owner
//!   lets go as soon as a majority of controllers have applied the move, and
//!   its release lets them grant the new owner at once. A live owner that no
//!   director can replace keeps its VIP; one that no longer matches the
//!   selector loses it to nobody;
//! - otherwise the VIP goes to the first live eligible director in the
//!   services' preference list, else to the live eligible director owning the
//!   fewest VIPs (ties by name), spreading VIPs across directors;
//! - a new leader knows nobody's liveness yet, so it waits `fence + margin`
//!   before it moves anything.
//!
//! Assignments are committed through Raft with the epoch they replace, so a
//! decision made on stale state is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::metrics::MoveCause;
use crate::state::{Command, Needs, VipOwner};
use crate::timing::LeaseTiming;

/// A director as the leader sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub labels: BTreeMap<String, String>,
    pub live: bool,
    /// How long it has been live without a gap (zero when dead).
    pub live_for: Duration,
    /// It is stopping: it keeps what it has until someone else can take it,
    /// and gets nothing new.
    pub leaving: bool,
    /// The services whose check fails on it (see [`Needs::tracked`]).
    pub failing: BTreeSet<String>,
}

/// What to do with one VIP now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Keep,
    Assign(String),
    /// Take it from its live owner and give it to nobody (the owner no
    /// longer matches the services' selectors, and no director does).
    Release,
}

/// The next step for a VIP: `current` is its owner (`None` when nobody
/// owns it).
pub fn step(
    needs: &Needs,
    current: Option<&str>,
    candidates: &BTreeMap<String, Candidate>,
    load: &BTreeMap<String, usize>,
    timing: LeaseTiming,
) -> Step {
    let ok = |name: &str| candidates.get(name).is_some_and(|c| eligible(needs, c));
    let assign = || decide(needs, candidates, load).map_or(Step::Keep, Step::Assign);
    match current {
        Some(owner) if candidates.get(owner).is_some_and(|c| c.live) => {
            if !ok(owner) {
                // A stopping owner keeps its VIP while nobody else can take
                // it: a gap until its lease ends helps no one.
                let leaving = candidates.get(owner).is_some_and(|c| c.leaving);
                return match decide(needs, candidates, load) {
                    Some(next) => Step::Assign(next),
                    None if leaving => Step::Keep,
                    None => Step::Release,
                };
            }
            let preferred = needs.preferred.iter().find(|p| ok(p));
            match preferred {
                Some(p) if p != owner && candidates[p.as_str()].live_for >= timing.hold_down => {
                    Step::Assign(p.clone())
                }
                _ => Step::Keep,
            }
        }
        // Silent for fence + margin: its lease is over, move at once.
        Some(_) | None => assign(),
    }
}

fn eligible(needs: &Needs, c: &Candidate) -> bool {
    c.live
        && !c.leaving
        && needs.tracked.iter().all(|s| !c.failing.contains(s))
        && needs
            .selectors
            .iter()
            .all(|sel| sel.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
}

/// Who gets a VIP that has no live owner, or `None` when no director can
/// take it. (Whether a live owner keeps it is [`step`]'s call.)
pub fn decide(
    needs: &Needs,
    candidates: &BTreeMap<String, Candidate>,
    load: &BTreeMap<String, usize>,
) -> Option<String> {
    let ok = |name: &str| candidates.get(name).is_some_and(|c| eligible(needs, c));
    if let Some(p) = needs.preferred.iter().find(|p| ok(p)) {
        return Some(p.clone());
    }
    candidates
        .iter()
        .filter(|(_, c)| eligible(needs, c))
        .min_by_key(|(name, _)| (load.get(*name).copied().unwrap_or(0), name.to_string()))
        .map(|(name, _)| name.clone())
}

/// The placement loop's memory.
pub struct Placement {
    timing: LeaseTiming,
    /// When the last round ended, and until when rounds are skipped
    /// because this controller itself was stalled (see [`Placement::stalled`]).
    last_round: Option<Instant>,
    hold_until: Option<Instant>,
    /// What the last round that moved nothing decided on: while it is the
    /// same, so is the outcome, and the pass over every VIP is skipped.
    quiet: Option<Inputs>,
}

/// Everything a round's outcome depends on: the VIPs' needs and owners
/// (`SmData::placement_inputs` moves whenever a change may move them) and
/// what counts of each director — its labels, liveness, leaving, failing
/// local checks, and whether it has been live for `hold_down` (the only
/// way time enters [`step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    state: u64,
    directors: BTreeMap<String, Counts>,
}

/// What counts of one director for [`Inputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    labels: BTreeMap<String, String>,
    live: bool,
    leaving: bool,
    settled: bool,
    failing: BTreeSet<String>,
}

impl Inputs {
    fn of(state: u64, candidates: &BTreeMap<String, Candidate>, timing: LeaseTiming) -> Inputs {
        let directors = candidates
            .iter()
            .map(|(name, c)| {
                let counts = Counts {
                    labels: c.labels.clone(),
                    live: c.live,
                    leaving: c.leaving,
                    settled: c.live_for >= timing.hold_down,
                    failing: c.failing.clone(),
                };
                (name.clone(), counts)
            })
            .collect();
        Inputs { state, directors }
    }
}

impl Placement {
    pub fn new(timing: LeaseTiming) -> Self {
        Placement {
            timing,
            last_round: None,
            hold_until: None,
            quiet: None,
        }
    }

    /// True while this controller is catching up after a stall of its own.
    /// A round that comes later than its period plus the margin means the
    /// process did not run (CPU starvation, a frozen VM): the directors'
    /// reports of that time wait unread in its sockets, so the silence it
    /// would see is its own. It judges nobody until a lease has passed,
    /// time for every live director's next reports to be read.
    fn stalled(&mut self, now: Instant) -> bool {
        let late = self.last_round.is_some_and(|last| {
            now.duration_since(last) > self.timing.round() + self.timing.margin
        });
        if late {
            tracing::warn!(
                behind_ms = self
                    .last_round
                    .map_or(0, |l| now.duration_since(l).as_millis() as u64),
                "this controller was stalled: no VIP moves for a lease"
            );
            self.hold_until = Some(now + self.timing.fence);
        }
        self.hold_until.is_some_and(|until| now < until)
    }
}

impl super::Task for Placement {
    /// How late a dead owner's VIP may move beyond fence + margin. The round
    /// is cheap: a lock, a pass over the VIPs, no I/O unless something moves.
    fn period(&self) -> Duration {
        self.timing.round()
    }

    fn not_leading(&mut self, _app: &App) {
        self.last_round = None;
        self.quiet = None;
    }

    async fn round(&mut self, app: &App, since: Instant) {
        if !self.stalled(Instant::now()) && since.elapsed() >= self.timing.silence() {
            self.place(app).await;
        }
        // From the end: a slow commit is not a stall.
        self.last_round = Some(Instant::now());
    }
}

impl Placement {
    async fn place(&mut self, app: &App) {
        let changes = changes(app, self.timing, &mut self.quiet);
        // All at once: Raft appends concurrent writes together, so a
        // hand-over of many VIPs takes one commit, not one per VIP.
        let writes = changes.iter().map(|c| {
            let epoch = c.expected_epoch + 1;
            match &c.to {
                Some(d) => tracing::info!(vip = %c.vip, director = %d, epoch, cause = c.cause.label(), "assigning VIP"),
                None => tracing::info!(vip = %c.vip, from = ?c.from, epoch, cause = c.cause.label(), "releasing VIP"),
            }
            app.write(Command::AssignVip {
                vip: c.vip,
                director: c.to.clone().unwrap_or_default(),
                expected_epoch: c.expected_epoch,
            })
        });
        let results = futures_util::future::join_all(writes).await;
        for (c, result) in changes.into_iter().zip(results) {
            match result {
                Ok(_) => app.metrics.moved(c.cause),
                Err(e) => tracing::warn!(vip = %c.vip, error = %e, "VIP assignment not committed"),
            }
        }
    }
}

/// One ownership change to commit.
struct Change {
    vip: IpAddr,
    /// The current owner, if any.
    from: Option<String>,
    /// The new owner; `None` releases the VIP.
    to: Option<String>,
    /// The epoch being replaced.
    expected_epoch: u64,
    cause: MoveCause,
}

/// Why `from` loses (or nobody had) the VIP that goes to `to`.
fn cause(
    needs: &Needs,
    from: Option<&str>,
    to: Option<&str>,
    candidates: &BTreeMap<String, Candidate>,
) -> MoveCause {
    let Some(owner) = from else {
        return MoveCause::Unowned;
    };
    match candidates.get(owner) {
        _ if to.is_none() => MoveCause::Released,
        Some(c) if c.live && c.leaving => MoveCause::OwnerLeaving,
        // Still fit for it: only a preferred director takes it then.
        Some(c) if c.live && eligible(needs, c) => MoveCause::Preempted,
        Some(c) if c.live => MoveCause::OwnerUnfit,
        _ => MoveCause::OwnerSilent,
    }
}

/// The ownership changes to make now. With 1,000 VIPs a pass costs
/// milliseconds under an emulated CPU, all under the state's read lock that
/// every write waits for: a round whose inputs are those of the last round
/// that moved nothing (`quiet`) moves nothing either, and skips it.
fn changes(app: &App, timing: LeaseTiming, quiet: &mut Option<Inputs>) -> Vec<Change> {
    let candidates: BTreeMap<String, Candidate> = {
        let fleet = app.fleet.lock();
        fleet
            .directors
            .iter()
            .map(|(name, d)| {
                let live = d.live(timing);
                (
                    name.clone(),
                    Candidate {
                        labels: d.labels.clone(),
                        live,
                        live_for: if live {
                            d.live_since.elapsed()
                        } else {
                            Duration::ZERO
                        },
                        leaving: d.leaving,
                        failing: d.failing.clone(),
                    },
                )
            })
            .collect()
    };
    let data = app.state.read();
    let inputs = Inputs::of(data.placement_inputs, &candidates, timing);
    if quiet.as_ref() == Some(&inputs) {
        return Vec::new();
    }
    let vips = &data.derived.vips;
    let owner = |vip: &IpAddr| -> Option<&VipOwner> {
        data.state
            .owners
            .get(vip)
            .filter(|o| !o.director.is_empty())
    };
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for vip in vips.keys() {
        if let Some(o) = owner(vip) {
            *load.entry(o.director.clone()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (vip, needs) in vips {
        let expected_epoch = data.state.owners.get(vip).map_or(0, |o| o.epoch);
        let from = owner(vip).map(|o| o.director.clone());
        let to = match step(needs, from.as_deref(), &candidates, &load, timing) {
            Step::Keep => continue,
            Step::Release => None,
            Step::Assign(chosen) => {
                *load.entry(chosen.clone()).or_default() += 1;
                Some(chosen)
            }
        };
        let cause = cause(needs, from.as_deref(), to.as_deref(), &candidates);
        out.push(Change {
            vip: *vip,
            from,
            to,
            expected_epoch,
            cause,
        });
    }
    *quiet = out.is_empty().then_some(inputs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(live: bool, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            live,
            ..Default::default()
        }
    }

    fn dirs(list: &[(&str, Candidate)]) -> BTreeMap<String, Candidate> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect()
    }

    #[test]
    fn a_leader_that_did_not_run_judges_nobody_for_a_lease() {
        let t = timing();
        let mut p = Placement::new(t);
        let mut now = Instant::now();
        assert!(!p.stalled(now), "the first round");
        let round = |p: &mut Placement, at: Instant| {
            let stalled = p.stalled(at);
            p.last_round = Some(at);
            stalled
        };
        now += t.round();
        assert!(!round(&mut p, now), "a round on time");
        now += t.round() + t.margin + Duration::from_millis(1);
        assert!(
            round(&mut p, now),
            "a round later than its period + the margin"
        );
        let late = now;
        while now + t.round() < late + t.fence {
            now += t.round();
            assert!(round(&mut p, now), "within a lease of the stall");
        }
        now += t.round();
        assert!(
            !round(&mut p, now),
            "a lease after the stall it judges again"
        );
    }

    #[test]
    fn sticky_while_live_then_moves() {
        let needs = Needs::default();
        let run = |d: &BTreeMap<String, Candidate>, load: &BTreeMap<String, usize>| {
            step(&needs, Some("a"), d, load, timing())
        };
        let d = dirs(&[("a", cand(true, &[])), ("b", cand(true, &[]))]);
        let load = BTreeMap::from([("b".to_string(), 0), ("a".to_string(), 5)]);
        assert_eq!(run(&d, &load), Step::Keep, "a live owner keeps its VIP");
        let d = dirs(&[("a", cand(false, &[])), ("b", cand(true, &[]))]);
        assert_eq!(run(&d, &load), Step::Assign("b".into()));
        let d = dirs(&[("a", cand(false, &[]))]);
        assert_eq!(run(&d, &load), Step::Keep, "nobody to move it to");
    }

    #[test]
    fn preference_then_least_loaded_then_name() {
        let d = dirs(&[
            ("a", cand(true, &[])),
            ("b", cand(true, &[])),
            ("c", cand(true, &[])),
        ]);
        let load = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        let prefer_b = Needs {
            preferred: vec!["x".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(decide(&prefer_b, &d, &load).as_deref(), Some("b"));
        assert_eq!(
            decide(&Needs::default(), &d, &load).as_deref(),
            Some("c"),
            "c owns nothing"
        );
        let even = BTreeMap::new();
        assert_eq!(decide(&Needs::default(), &d, &even).as_deref(), Some("a"));
    }

    #[test]
    fn selectors_restrict_candidates() {
        let d = dirs(&[
            ("a", cand(true, &[("site", "ams")])),
            ("b", cand(true, &[("site", "fra")])),
        ]);
        let needs = Needs {
            selectors: vec![BTreeMap::from([("site".into(), "fra".into())])],
            ..Default::default()
        };
        assert_eq!(
            decide(&needs, &d, &BTreeMap::new()).as_deref(),
            Some("b"),
            "a does not match the selector"
        );
    }

    /// A local service's check failing on the owner moves its VIP; failing
    /// everywhere, nobody holds it (keepalived's FAULT state).
    #[test]
    fn a_failing_local_check_makes_a_director_unfit() {
        let needs = Needs {
            tracked: vec!["proxy".into()],
            ..Default::default()
        };
        let failing = |live: bool| Candidate {
            failing: BTreeSet::from(["proxy".to_string()]),
            ..cand(live, &[])
        };
        let load = BTreeMap::new();
        let d = dirs(&[("a", failing(true)), ("b", cand(true, &[]))]);
        assert_eq!(
            step(&needs, Some("a"), &d, &load, timing()),
            Step::Assign("b".into())
        );
        // Another service's failure on a does not count for this VIP.
        let other = Needs::default();
        assert_eq!(step(&other, Some("a"), &d, &load, timing()), Step::Keep);
        let d = dirs(&[("a", failing(true)), ("b", failing(true))]);
        assert_eq!(step(&needs, Some("a"), &d, &load, timing()), Step::Release);
        assert_eq!(decide(&needs, &d, &load), None);
    }

    fn timing() -> LeaseTiming {
        LeaseTiming {
            fence: Duration::from_millis(600),
            margin: Duration::from_millis(200),
            hold_down: Duration::from_secs(10),
        }
    }

    /// A round may be skipped only while nothing it decides on moved:
    /// time counts only as a preferred director's hold-down running out.
    #[test]
    fn a_round_is_skipped_only_with_the_same_inputs() {
        let t = timing();
        let of = |state, c: Candidate| Inputs::of(state, &dirs(&[("d1", c)]), t);
        assert_eq!(of(1, live_for(1)), of(1, live_for(2)), "time alone");
        assert_ne!(of(1, live_for(1)), of(1, live_for(10)), "hold-down ran out");
        assert_ne!(of(1, live_for(1)), of(2, live_for(1)), "the VIPs or owners");
        assert_ne!(of(1, live_for(1)), of(1, cand(false, &[])), "liveness");
        let labelled = Candidate {
            labels: [("zone".to_string(), "a".to_string())].into(),
            ..live_for(1)
        };
        assert_ne!(of(1, live_for(1)), of(1, labelled), "labels");
    }

    fn live_for(secs: u64) -> Candidate {
        Candidate {
            live: true,
            live_for: Duration::from_secs(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_returning_preferred_director_waits_out_the_hold_down_then_takes_over() {
        let prefer_a = Needs {
            preferred: vec!["a".into()],
            ..Default::default()
        };
        let none = BTreeMap::new();
        let run = |d: &BTreeMap<String, Candidate>| step(&prefer_a, Some("b"), d, &none, timing());
        // a came back 3 s ago: b keeps the VIP.
        let d = dirs(&[("a", live_for(3)), ("b", live_for(60))]);
        assert_eq!(run(&d), Step::Keep);
        // 10 s: straight to a (the grants keep b and a from holding together).
        let d = dirs(&[("a", live_for(10)), ("b", live_for(67))]);
        assert_eq!(run(&d), Step::Assign("a".into()));
    }

    #[test]
    fn a_silent_or_stopping_or_mismatched_owner_loses_its_vip_to_the_next() {
        let none = BTreeMap::new();
        let dead_b = Candidate {
            live: false,
            ..Default::default()
        };
        let d = dirs(&[("a", live_for(1)), ("b", dead_b)]);
        let any = Needs::default();
        assert_eq!(
            step(&any, Some("b"), &d, &none, timing()),
            Step::Assign("a".into())
        );
        // A stopping owner hands over to a live director, and keeps the VIP
        // when there is none.
        let leaving = Candidate {
            leaving: true,
            ..live_for(60)
        };
        let d = dirs(&[("a", live_for(1)), ("b", leaving.clone())]);
        assert_eq!(
            step(&any, Some("b"), &d, &none, timing()),
            Step::Assign("a".into())
        );
        let d = dirs(&[("b", leaving)]);
        assert_eq!(step(&any, Some("b"), &d, &none, timing()), Step::Keep);
        let fra = Needs {
            selectors: vec![BTreeMap::from([("site".into(), "fra".into())])],
            ..Default::default()
        };
        let d = dirs(&[
            ("a", cand(true, &[("site", "fra")])),
            ("b", cand(true, &[("site", "ams")])),
        ]);
        assert_eq!(
            step(&fra, Some("b"), &d, &none, timing()),
            Step::Assign("a".into()),
            "b no longer matches"
        );
        let d = dirs(&[("b", cand(true, &[("site", "ams")]))]);
        assert_eq!(
            step(&fra, Some("b"), &d, &none, timing()),
            Step::Release,
            "no director matches: nobody answers for it"
        );
    }
}
