//! What the directors program, computed once per revision and shared by
//! every director stream of this node, with a short history of which
//! services changed between the revisions computed.
//!
//! A director stream sends a snapshot once, then only the services that
//! changed since the revision it sent last (a delta): with 10,000 services
//! a change to one of them costs one service on the wire, not the whole
//! configuration (8 MB at 10,000 × 10 realservers, over gRPC's 4 MiB limit).
//! A director that reconnects names the revision it holds from this node;
//! while the history still covers it, it resumes by delta. The history
//! lives in memory only: a restarted controller sends snapshots.
//!
//! Updates are split into parts of at most [`PART_BYTES`] (a part holds
//! whole services), so that no message nears the limit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use lb_proto::pb;
use prost::Message;

use crate::state::State;

/// One service as the directors get it: its effective definition (agents'
/// backends, verdicts, admin states applied) and its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub service: pb::Service,
    pub checks: Vec<pb::BackendRef>,
}

/// Every service's unit at one revision, by name.
pub type Units = BTreeMap<String, Arc<Unit>>;

/// The services whose unit changed from one computed revision to the next.
struct Step {
    from: u64,
    to: u64,
    changed: BTreeSet<String>,
}

/// How much history is kept: enough for a director that missed a few
/// minutes of changes, bounded in memory whatever the change rate.
const KEPT_STEPS: usize = 1024;
const KEPT_NAMES: usize = 100_000;

/// The most a part of an update holds (encoded), well under gRPC's 4 MiB.
pub const PART_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    revision: u64,
    units: Arc<Units>,
    steps: VecDeque<Step>,
    names_kept: usize,
}

/// This node's desired view for directors, and its history.
#[derive(Default)]
pub struct DesiredView {
    inner: Mutex<Inner>,
}

/// Every service's unit in `state`.
fn units_of(state: &State) -> Units {
    let mut checks: BTreeMap<String, Vec<pb::BackendRef>> = BTreeMap::new();
    for (service, a) in state.director_checks() {
        checks
            .entry(service.clone())
            .or_default()
            .push(pb::BackendRef {
                service,
                address: a.ip().to_string(),
                port: a.port().into(),
            });
    }
    state
        .effective_services()
        .map(|s| {
            let unit = Unit {
                checks: checks.remove(&s.name).unwrap_or_default(),
                service: pb::Service::from(&s),
            };
            (s.name.clone(), Arc::new(unit))
        })
        .collect()
}

impl DesiredView {
    /// The units at `state`'s revision, computed if this is the first
    /// stream to ask for it. Unchanged units keep their `Arc`, so the
    /// revisions kept share them.
    pub fn at(&self, state: &State) -> (u64, Arc<Units>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.revision == state.revision && state.revision != 0 {
            return (inner.revision, inner.units.clone());
        }
        let mut now = units_of(state);
        let mut changed = BTreeSet::new();
        for (name, unit) in now.iter_mut() {
            match inner.units.get(name) {
                Some(old) if **old == **unit => *unit = old.clone(),
                _ => {
                    changed.insert(name.clone());
                }
            }
        }
        changed.extend(
            inner
                .units
                .keys()
                .filter(|n| !now.contains_key(*n))
                .cloned(),
        );
        // A revision going back (never, short of a bug) voids the history.
        if state.revision < inner.revision {
            inner.steps.clear();
            inner.names_kept = 0;
        } else if inner.revision != 0 {
            inner.names_kept += changed.len();
            let from = inner.revision;
            inner.steps.push_back(Step {
                from,
                to: state.revision,
                changed,
            });
        }
        while inner.steps.len() > KEPT_STEPS || inner.names_kept > KEPT_NAMES {
            match inner.steps.pop_front() {
                Some(s) => inner.names_kept -= s.changed.len(),
                None => break,
            }
        }
        inner.revision = state.revision;
        inner.units = Arc::new(now);
        (inner.revision, inner.units.clone())
    }

    /// The services that changed from revision `from` (one computed here)
    /// to `to`; `None` when the history no longer reaches back to `from`.
    pub fn changed(&self, from: u64, to: u64) -> Option<BTreeSet<String>> {
        if from == to {
            return Some(BTreeSet::new());
        }
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let start = inner.steps.iter().position(|s| s.from == from)?;
        let mut names = BTreeSet::new();
        for step in inner.steps.iter().skip(start) {
            names.extend(step.changed.iter().cloned());
            if step.to == to {
                return Some(names);
            }
        }
        None
    }
}

/// A snapshot of `units` (`base`: None) or the delta from `base` naming
/// `changed`, in parts of at most [`PART_BYTES`].
pub fn update(units: &Units, base: Option<(u64, &BTreeSet<String>)>) -> Vec<pb::ConfigUpdate> {
    let base_revision = base.map_or(0, |(b, _)| b);
    let part = || pb::ConfigUpdate {
        base_revision,
        ..Default::default()
    };
    let mut current = part();
    let mut sending: Vec<&Unit> = Vec::new();
    match base {
        None => sending.extend(units.values().map(|u| &**u)),
        Some((_, changed)) => {
            for name in changed {
                match units.get(name) {
                    Some(u) => sending.push(u),
                    // Names are small: they all go in the first part.
                    None => current.removed.push(name.clone()),
                }
            }
        }
    }
    let mut parts = Vec::new();
    let mut size = 0;
    for unit in sending {
        let len = unit.service.encoded_len()
            + unit.checks.iter().map(Message::encoded_len).sum::<usize>()
            + 16;
        if size > 0 && size + len > PART_BYTES {
            parts.push(std::mem::replace(&mut current, part()));
            size = 0;
        }
        size += len;
        current.services.push(unit.service.clone());
        current.checks.extend(unit.checks.iter().cloned());
    }
    parts.push(current);
    let n = parts.len();
    for p in &mut parts[..n - 1] {
        p.more = true;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{rs, service};
    use crate::state::{Command, State};

    fn apply(st: &mut State, cmd: Command) {
        st.apply(cmd).expect("applies");
    }

    fn create(st: &mut State, i: u32, realservers: u32) {
        let mut s = service(
            &format!("s{i:05}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
        );
        s.realservers = (0..realservers)
            .map(|k| rs(&format!("10.2.{}.{}", k / 250, k % 250 + 1), 80))
            .collect();
        apply(st, Command::CreateService { service: s });
    }

    fn names(update: &[pb::ConfigUpdate]) -> (Vec<String>, Vec<String>) {
        let services = update
            .iter()
            .flat_map(|p| p.services.iter().map(|s| s.name.clone()))
            .collect();
        let removed = update.iter().flat_map(|p| p.removed.clone()).collect();
        (services, removed)
    }

    #[test]
    fn a_delta_names_only_what_changed_and_the_history_is_bounded() {
        let view = DesiredView::default();
        let mut st = State::default();
        create(&mut st, 1, 1);
        create(&mut st, 2, 1);
        let (r1, u1) = view.at(&st);
        assert_eq!(names(&update(&u1, None)).0, ["s00001", "s00002"]);
        create(&mut st, 3, 1);
        let name = "s00001".to_string();
        apply(&mut st, Command::DeleteService { name });
        let (r2, u2) = view.at(&st);
        assert!(
            Arc::ptr_eq(&u1["s00002"], &u2["s00002"]),
            "an unchanged unit is shared"
        );
        let changed = view.changed(r1, r2).expect("kept");
        assert_eq!(
            names(&update(&u2, Some((r1, &changed)))),
            (vec!["s00003".to_string()], vec!["s00001".to_string()])
        );
        // A revision never computed here, or one the history dropped: none.
        assert_eq!(view.changed(r1 + 1, r2), None);
        for i in 0..(KEPT_STEPS as u32 + 1) {
            create(&mut st, 10 + i, 0);
            view.at(&st);
        }
        assert_eq!(view.changed(r1, st.revision), None);
        assert!(view.changed(st.revision - 1, st.revision).is_some());
    }

    #[test]
    fn a_large_snapshot_comes_in_parts_under_the_limit() {
        let mut st = State::default();
        for i in 0..300 {
            create(&mut st, i, 500);
        }
        let (_, units) = DesiredView::default().at(&st);
        let parts = update(&units, None);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.encoded_len() <= PART_BYTES + 4096,
                "part {i}: {}",
                p.encoded_len()
            );
            assert_eq!(p.more, i + 1 < parts.len());
        }
        assert_eq!(names(&parts).0.len(), 300);
    }
}
