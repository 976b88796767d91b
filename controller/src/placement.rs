//! VIP owner election: which director answers for each VIP.
//!
//! The leader runs [`run`]; the decision itself is [`decide`], pure logic.
//! Rules:
//! - a director is *live* while the leader has heard from it within
//!   `fence + margin`; it holds a VIP only while its own lease (`fence` after
//!   the heartbeat the leader acknowledged) is fresh, so once the leader
//!   considers it dead it has already let go — two directors never hold one VIP;
//! - ownership is sticky: a live, eligible owner keeps its VIP;
//! - otherwise the VIP goes to the first live eligible director in the
//!   services' preference list, else to the live eligible director owning the
//!   fewest VIPs (ties by name), spreading VIPs across directors;
//! - a new leader knows nobody's liveness yet, so it waits `fence + margin`
//!   before it moves anything.
//!
//! Assignments are committed through Raft with the epoch they replace, so a
//! decision made on stale state is refused.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_proto::model::{Service, VirtualAddress};
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
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            fence: Duration::from_millis(600),
            margin: Duration::from_millis(200),
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
        if let VirtualAddress::Endpoint { address, .. } = s.address {
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
#[derive(Debug, Clone)]
pub struct Candidate {
    pub labels: BTreeMap<String, String>,
    pub live: bool,
}

fn eligible(needs: &Needs, c: &Candidate) -> bool {
    c.live
        && needs
            .selectors
            .iter()
            .all(|sel| sel.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
}

/// The owner the VIP should have, or `None` when no director can take it.
pub fn decide(
    needs: &Needs,
    current: Option<&str>,
    candidates: &BTreeMap<String, Candidate>,
    load: &BTreeMap<String, usize>,
) -> Option<String> {
    let ok = |name: &str| candidates.get(name).is_some_and(|c| eligible(needs, c));
    if let Some(owner) = current.filter(|o| ok(o)) {
        return Some(owner.to_string());
    }
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
    let period = Duration::from_millis(50);
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

/// The leader's placement loop; idle on followers.
pub async fn run(app: Arc<App>, timing: LeaseTiming, mut shutdown: watch::Receiver<bool>) {
    let mut leader_since: Option<Instant> = None;
    let period = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|d| *d) => return,
        }
        if app.require_leader().is_err() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if since.elapsed() < timing.fence + timing.margin {
            continue;
        }
        for (vip, director, expected_epoch) in changes(&app, timing) {
            tracing::info!(vip = %vip, director = %director, epoch = expected_epoch + 1, "assigning VIP");
            if let Err(e) = app
                .write(Command::AssignVip {
                    vip,
                    director,
                    expected_epoch,
                })
                .await
            {
                tracing::warn!(vip = %vip, error = %e, "VIP assignment not committed");
            }
        }
    }
}

/// The assignments to make now: (vip, director, epoch being replaced).
fn changes(app: &App, timing: LeaseTiming) -> Vec<(IpAddr, String, u64)> {
    let candidates: BTreeMap<String, Candidate> = {
        let seen = app
            .directors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.iter()
            .map(|(name, d)| {
                (
                    name.clone(),
                    Candidate {
                        labels: d.labels.clone(),
                        live: d.live(timing),
                    },
                )
            })
            .collect()
    };
    let data = app.state.read();
    let vips = vips(data.state.services.values());
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for vip in vips.keys() {
        if let Some(o) = data.state.owners.get(vip) {
            *load.entry(o.director.clone()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (vip, needs) in &vips {
        let current: Option<&VipOwner> = data.state.owners.get(vip);
        let Some(chosen) = decide(
            needs,
            current.map(|o| o.director.as_str()),
            &candidates,
            &load,
        ) else {
            continue;
        };
        if current.map(|o| o.director.as_str()) != Some(chosen.as_str()) {
            *load.entry(chosen.clone()).or_default() += 1;
            out.push((*vip, chosen, current.map_or(0, |o| o.epoch)));
        }
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
        }
    }

    fn dirs(list: &[(&str, Candidate)]) -> BTreeMap<String, Candidate> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect()
    }

    #[test]
    fn sticky_while_live_then_moves() {
        let needs = Needs::default();
        let d = dirs(&[("a", cand(true, &[])), ("b", cand(true, &[]))]);
        let load = BTreeMap::from([("b".to_string(), 0), ("a".to_string(), 5)]);
        assert_eq!(
            decide(&needs, Some("a"), &d, &load).as_deref(),
            Some("a"),
            "a live owner keeps its VIP"
        );
        let d = dirs(&[("a", cand(false, &[])), ("b", cand(true, &[]))]);
        assert_eq!(decide(&needs, Some("a"), &d, &load).as_deref(), Some("b"));
        let d = dirs(&[("a", cand(false, &[]))]);
        assert_eq!(
            decide(&needs, Some("a"), &d, &load),
            None,
            "nobody to move it to"
        );
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
        assert_eq!(decide(&prefer_b, None, &d, &load).as_deref(), Some("b"));
        assert_eq!(
            decide(&Needs::default(), None, &d, &load).as_deref(),
            Some("c"),
            "c owns nothing"
        );
        let even = BTreeMap::new();
        assert_eq!(
            decide(&Needs::default(), None, &d, &even).as_deref(),
            Some("a")
        );
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
            decide(&needs, Some("a"), &d, &BTreeMap::new()).as_deref(),
            Some("b"),
            "a no longer eligible"
        );
    }
}
