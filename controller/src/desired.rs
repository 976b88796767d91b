//! What the directors program, sent as updates: a snapshot of every
//! service's unit, or a delta naming the units that changed since a
//! revision (the units and their history are the state machine's
//! [`crate::state::Derived`], kept up to date change by change).
//!
//! A director stream sends a snapshot once, then only the services that
//! changed since the revision it sent last (a delta): with 10,000 services
//! a change to one of them costs one service on the wire, not the whole
//! configuration (8 MB at 10,000 × 10 realservers, over gRPC's 4 MiB limit).
//! A director that reconnects names the revision it holds from this node;
//! while the history still covers it, it resumes by delta.
//!
//! Updates are split into parts of at most [`PART_BYTES`] (a part holds
//! whole services), so that no message nears the limit.

use std::collections::BTreeSet;

use lb_proto::pb;
use prost::Message;

use crate::state::{Unit, Units};

/// The most a part of an update holds (encoded), well under gRPC's 4 MiB.
pub const PART_BYTES: usize = 1 << 20;

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
        None => sending.extend(units.values()),
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
        if unit.below_quorum {
            current.below_quorum.push(unit.service.name.clone());
        }
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
    use crate::state::{Command, Derived, State};

    fn create(st: &mut State, d: &mut Derived, i: u32, realservers: u32) {
        let mut s = service(
            &format!("s{i:05}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
        );
        s.realservers = (0..realservers)
            .map(|k| rs(&format!("10.2.{}.{}", k / 250, k % 250 + 1), 80))
            .collect();
        let cmd = Command::CreateService { service: s };
        let touched = st.touches(&cmd);
        st.apply(cmd).expect("applies");
        d.update(st, &touched);
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
    fn a_delta_carries_the_changed_and_names_the_removed() {
        let mut st = State::default();
        let mut d = Derived::of(&st);
        create(&mut st, &mut d, 1, 1);
        create(&mut st, &mut d, 2, 1);
        let r1 = st.revision;
        assert_eq!(names(&update(&d.units, None)).0, ["s00001", "s00002"]);
        create(&mut st, &mut d, 3, 1);
        let cmd = Command::DeleteService {
            name: "s00001".to_string(),
        };
        let touched = st.touches(&cmd);
        st.apply(cmd).expect("applies");
        d.update(&st, &touched);
        let changed = d.changed(r1, st.revision).expect("kept");
        assert_eq!(
            names(&update(&d.units, Some((r1, &changed)))),
            (vec!["s00003".to_string()], vec!["s00001".to_string()])
        );
    }

    #[test]
    fn a_large_snapshot_comes_in_parts_under_the_limit() {
        let mut st = State::default();
        let mut d = Derived::of(&st);
        for i in 0..300 {
            create(&mut st, &mut d, i, 500);
        }
        let parts = update(&d.units, None);
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
