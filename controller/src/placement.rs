//! VIP owner election: which director answers for each VIP.
//!
//! The leader runs [`run`]; the decision itself is [`decide`], pure logic.
//! Rules:
//! - a director is *live* while the leader has heard from it within
//!   `fence + margin`; it holds a VIP only while its own lease (`fence` after
//!   the heartbeat the leader acknowledged) is fresh, so once the leader
//!   considers it dead it has already let go — two directors never hold one VIP;
//! - ownership is sticky: a live, eligible owner keeps its VIP — except that
//!   a preferred director which has been live for `hold_down` takes its VIP
//!   back (preemption, like keepalived's `preempt_delay`);
//! - a silent owner's VIP moves at once (its lease has run out); a *live*
//!   owner's VIP (preemption, or the owner no longer matches the selector) is
//!   first released — assigned to nobody — and given to the next owner only
//!   once the old one reports it let go, or after `fence + margin`, so the two
//!   never hold it together;
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_proto::model::Service;
use tokio::sync::watch;

use crate::app::App;
use crate::state::{Command, VipOwner};

/// Lease timing shared by the controller and its directors.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// A director drops a VIP this long after sending the last acknowledged heartbeat.
    pub fence: Duration,
    /// Extra wait before the leader gives a silent director's VIPs away.
    pub margin: Duration,
    /// How long a preferred director must have been live before it takes
    /// its VIP back from another live director.
    pub hold_down: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            fence: Duration::from_millis(600),
            margin: Duration::from_millis(200),
            hold_down: Duration::from_secs(10),
        }
    }
}

/// What the services on one VIP ask of its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub selectors: Vec<BTreeMap<String, String>>,
    pub preferred: Vec<String>,
}

/// The VIP addresses of the configuration and what each needs.
pub fn vips<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeMap<IpAddr, Needs> {
    let mut out: BTreeMap<IpAddr, Needs> = BTreeMap::new();
    for s in services {
        if let Some(address) = s.vip() {
            let needs = out.entry(address).or_default();
            needs.selectors.push(s.directors.selector.clone());
            for p in &s.directors.preferred {
                if !needs.preferred.contains(p) {
                    needs.preferred.push(p.clone());
                }
            }
        }
    }
    out
}

/// A director as the leader sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub labels: BTreeMap<String, String>,
    pub live: bool,
    /// How long it has been live without a gap (zero when dead).
    pub live_for: Duration,
    /// The VIPs it last reported holding.
    pub holds: BTreeSet<IpAddr>,
}

/// What to do with one VIP now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Keep,
    Assign(String),
    /// Take it from its live owner; assign it once that one has let go.
    Release,
    /// Released, and the old owner still holds it.
    Wait,
}

/// The next step for `vip`: `current` is its owner (`None` when nobody
/// owns it), `released` who gave it up and how long ago, when this leader
/// released it.
pub fn step(
    vip: IpAddr,
    needs: &Needs,
    current: Option<&str>,
    released: Option<(&str, Duration)>,
    candidates: &BTreeMap<String, Candidate>,
    load: &BTreeMap<String, usize>,
    timing: LeaseTiming,
) -> Step {
    let ok = |name: &str| candidates.get(name).is_some_and(|c| eligible(needs, c));
    let assign = || decide(needs, candidates, load).map_or(Step::Keep, Step::Assign);
    match current {
        Some(owner) if candidates.get(owner).is_some_and(|c| c.live) => {
            if !ok(owner) {
                return Step::Release;
            }
            let preferred = needs.preferred.iter().find(|p| ok(p));
            match preferred {
                Some(p) if p != owner && candidates[p.as_str()].live_for >= timing.hold_down => {
                    Step::Release
                }
                _ => Step::Keep,
            }
        }
        // Silent for fence + margin: its lease is over, move at once.
        Some(_) => assign(),
        None => {
            let still_held = released.is_some_and(|(old, since)| {
                since < timing.fence + timing.margin
                    && candidates
                        .get(old)
                        .is_some_and(|c| c.live && c.holds.contains(&vip))
            });
            if still_held {
                Step::Wait
            } else {
                assign()
            }
        }
    }
}

fn eligible(needs: &Needs, c: &Candidate) -> bool {
    c.live
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

/// Keeps [`App::may_grant_leases`] current: on the leader, a quorum round
/// (`ensure_linearizable`) every `period`; the start of a round that
/// succeeds is when leadership was last known to hold.
pub async fn confirm_leadership(
    app: Arc<App>,
    timing: LeaseTiming,
    mut shutdown: watch::Receiver<bool>,
) {
    // A confirmation stays good for `margin`; renewing it every fifth of
    // that leaves room for slow rounds before the leader must withhold acks.
    let period = round_period(timing);
    loop {
        let confirmed = if app.require_leader().is_ok() {
            let started = Instant::now();
            let round = tokio::time::timeout(timing.margin, app.raft.ensure_linearizable()).await;
            matches!(round, Ok(Ok(_))).then_some(started)
        } else {
            None
        };
        {
            let mut c = app
                .leadership_confirmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match confirmed {
                Some(at) => *c = Some(at),
                None if app.require_leader().is_err() => *c = None,
                None => {} // a slow round: the previous confirmation ages out by itself
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|d| *d) => return,
        }
    }
}

/// A fifth of the margin, between 5 and 50 ms (10 ms at tuned timers, 40 ms
/// at the defaults): how often the leader renews its leadership
/// confirmation and looks for VIPs to move.
fn round_period(timing: LeaseTiming) -> Duration {
    (timing.margin / 5).clamp(Duration::from_millis(5), Duration::from_millis(50))
}

/// The leader's placement loop; idle on followers.
pub async fn run(app: Arc<App>, timing: LeaseTiming, mut shutdown: watch::Receiver<bool>) {
    let mut leader_since: Option<Instant> = None;
    // VIPs this leader took from a live owner: (old owner, when). Soft
    // state: a new leader waits fence + margin before anything, which
    // covers a release it did not see.
    let mut released: BTreeMap<IpAddr, (String, Instant)> = BTreeMap::new();
    // How late a dead owner's VIP may move beyond fence + margin. The round
    // is cheap: a lock, a pass over the VIPs, no I/O unless something moves.
    let period = round_period(timing);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|d| *d) => return,
        }
        if app.require_leader().is_err() {
            leader_since = None;
            released.clear();
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if since.elapsed() < timing.fence + timing.margin {
            continue;
        }
        for c in changes(&app, timing, &released) {
            let (vip, epoch) = (c.vip, c.expected_epoch + 1);
            match &c.to {
                Some(d) => tracing::info!(vip = %vip, director = %d, epoch, "assigning VIP"),
                None => tracing::info!(vip = %vip, from = ?c.from, epoch, "releasing VIP"),
            }
            let result = app
                .write(Command::AssignVip {
                    vip,
                    director: c.to.clone().unwrap_or_default(),
                    expected_epoch: c.expected_epoch,
                })
                .await;
            match (result, c.to) {
                (Err(e), _) => {
                    tracing::warn!(vip = %vip, error = %e, "VIP assignment not committed")
                }
                (Ok(_), Some(_)) => {
                    released.remove(&vip);
                }
                (Ok(_), None) => {
                    released.insert(vip, (c.from.unwrap_or_default(), Instant::now()));
                }
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
}

/// The ownership changes to make now.
fn changes(
    app: &App,
    timing: LeaseTiming,
    released: &BTreeMap<IpAddr, (String, Instant)>,
) -> Vec<Change> {
    let candidates: BTreeMap<String, Candidate> = {
        let seen = app
            .directors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.iter()
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
                        holds: d.held.iter().filter_map(|l| l.vip.parse().ok()).collect(),
                    },
                )
            })
            .collect()
    };
    let data = app.state.read();
    let vips = vips(data.state.services.values());
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
    for (vip, needs) in &vips {
        let expected_epoch = data.state.owners.get(vip).map_or(0, |o| o.epoch);
        let from = owner(vip).map(|o| o.director.clone());
        let gone = released
            .get(vip)
            .map(|(old, at)| (old.as_str(), at.elapsed()));
        let to = match step(
            *vip,
            needs,
            from.as_deref(),
            gone,
            &candidates,
            &load,
            timing,
        ) {
            Step::Keep | Step::Wait => continue,
            Step::Release => None,
            Step::Assign(chosen) => {
                *load.entry(chosen.clone()).or_default() += 1;
                Some(chosen)
            }
        };
        out.push(Change {
            vip: *vip,
            from,
            to,
            expected_epoch,
        });
    }
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
    fn sticky_while_live_then_moves() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let needs = Needs::default();
        let run = |d: &BTreeMap<String, Candidate>, load: &BTreeMap<String, usize>| {
            step(vip, &needs, Some("a"), None, d, load, timing())
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

    fn timing() -> LeaseTiming {
        LeaseTiming {
            fence: Duration::from_millis(600),
            margin: Duration::from_millis(200),
            hold_down: Duration::from_secs(10),
        }
    }

    fn live_for(secs: u64, holds: &[IpAddr]) -> Candidate {
        Candidate {
            live: true,
            live_for: Duration::from_secs(secs),
            holds: holds.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_returning_preferred_director_waits_out_the_hold_down_then_gets_a_clean_handoff() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let prefer_a = Needs {
            preferred: vec!["a".into()],
            ..Default::default()
        };
        let none = BTreeMap::new();
        let run = |d: &BTreeMap<String, Candidate>, current, released| {
            step(vip, &prefer_a, current, released, d, &none, timing())
        };
        // a came back 3 s ago: b keeps the VIP.
        let d = dirs(&[("a", live_for(3, &[])), ("b", live_for(60, &[vip]))]);
        assert_eq!(run(&d, Some("b"), None), Step::Keep);
        // 10 s: b must let go first — nobody owns it meanwhile.
        let d = dirs(&[("a", live_for(10, &[])), ("b", live_for(67, &[vip]))]);
        assert_eq!(run(&d, Some("b"), None), Step::Release);
        let since = Some(("b", Duration::from_millis(100)));
        assert_eq!(run(&d, None, since), Step::Wait, "b still reports it");
        let d = dirs(&[("a", live_for(10, &[])), ("b", live_for(67, &[]))]);
        assert_eq!(run(&d, None, since), Step::Assign("a".into()), "b let go");
        // b never reports (a lost stream): after fence + margin it is safe anyway.
        let d = dirs(&[("a", live_for(10, &[])), ("b", live_for(67, &[vip]))]);
        let later = Some(("b", Duration::from_millis(800)));
        assert_eq!(run(&d, None, later), Step::Assign("a".into()));
    }

    #[test]
    fn a_silent_owner_loses_its_vip_at_once_a_mismatched_live_one_releases_it() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let none = BTreeMap::new();
        let dead_b = Candidate {
            live: false,
            holds: [vip].into(),
            ..Default::default()
        };
        let d = dirs(&[("a", live_for(1, &[])), ("b", dead_b)]);
        let any = Needs::default();
        assert_eq!(
            step(vip, &any, Some("b"), None, &d, &none, timing()),
            Step::Assign("a".into())
        );
        let d = dirs(&[
            ("a", cand(true, &[("site", "fra")])),
            ("b", cand(true, &[("site", "ams")])),
        ]);
        let fra = Needs {
            selectors: vec![BTreeMap::from([("site".into(), "fra".into())])],
            ..Default::default()
        };
        assert_eq!(
            step(vip, &fra, Some("b"), None, &d, &none, timing()),
            Step::Release,
            "b is live: it lets go before a takes over"
        );
    }
}
