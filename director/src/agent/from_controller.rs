//! The configuration as one controller's stream carries it: a snapshot,
//! then deltas (the services that changed since the revision it holds),
//! each possibly split into parts (see the controller's `desired` module).
//!
//! Each stream keeps its own copy, because a delta applies on top of what
//! *that* controller sent; the copy outlives a reconnection, so that the
//! stream resumes from its revision (`DirectorReport.config_revision`). An
//! update is applied only once its last part arrived: a stream that breaks
//! half-way leaves the copy at its previous revision, whole.

use std::collections::{BTreeMap, BTreeSet};

use lb_proto::pb;

/// What a complete update did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    Snapshot {
        services: usize,
        parts: usize,
    },
    Delta {
        from: u64,
        changed: usize,
        removed: usize,
        /// Every service the delta named (changed or removed).
        names: BTreeSet<String>,
    },
}

/// An update that does not fit what this copy holds.
#[derive(Debug, thiserror::Error)]
#[error("a delta from revision {base} reached a copy at revision {held}")]
pub(super) struct OutOfStep {
    base: u64,
    held: u64,
}

#[derive(Debug, Default)]
pub(super) struct FromController {
    /// The revision of the copy (0: nothing yet).
    pub(super) revision: u64,
    services: BTreeMap<String, pb::Service>,
    /// Each service's checks.
    checks: BTreeMap<String, Vec<pb::BackendRef>>,
    /// The services below quorum.
    below_quorum: BTreeSet<String>,
    /// The parts of an update still incomplete.
    pending: Vec<pb::ConfigUpdate>,
}

impl FromController {
    /// A new connection: parts of an update the old one did not finish
    /// are dropped (the controller starts over from `revision`).
    pub(super) fn reconnected(&mut self) {
        self.pending.clear();
    }

    /// Takes one part of the update to `revision`; once the update is
    /// complete, applies it and says what it did.
    pub(super) fn take(
        &mut self,
        revision: u64,
        part: pb::ConfigUpdate,
    ) -> Result<Option<Applied>, OutOfStep> {
        let more = part.more;
        self.pending.push(part);
        if more {
            return Ok(None);
        }
        let parts = std::mem::take(&mut self.pending);
        let base = parts.first().map_or(0, |p| p.base_revision);
        if base != 0 && base != self.revision {
            return Err(OutOfStep {
                base,
                held: self.revision,
            });
        }
        let count = parts.len();
        if base == 0 {
            self.services.clear();
            self.checks.clear();
            self.below_quorum.clear();
        }
        let (mut changed, mut removed) = (0, 0);
        let mut names = BTreeSet::new();
        for p in parts {
            for name in p.removed {
                self.services.remove(&name);
                self.checks.remove(&name);
                self.below_quorum.remove(&name);
                names.insert(name);
                removed += 1;
            }
            for s in p.services {
                // The update carries exactly these services' checks and
                // quorum states.
                self.checks.remove(&s.name);
                self.below_quorum.remove(&s.name);
                names.insert(s.name.clone());
                self.services.insert(s.name.clone(), s);
                changed += 1;
            }
            for c in p.checks {
                self.checks.entry(c.service.clone()).or_default().push(c);
            }
            self.below_quorum.extend(p.below_quorum);
        }
        self.revision = revision;
        Ok(Some(match base {
            0 => Applied::Snapshot {
                services: changed,
                parts: count,
            },
            from => Applied::Delta {
                from,
                changed,
                removed,
                names,
            },
        }))
    }

    /// The services, by name.
    pub(super) fn services(&self) -> &BTreeMap<String, pb::Service> {
        &self.services
    }

    /// The services below quorum.
    pub(super) fn below_quorum(&self) -> &BTreeSet<String> {
        &self.below_quorum
    }

    /// Every service's checks.
    pub(super) fn checks(&self) -> Vec<pb::BackendRef> {
        self.checks.values().flatten().cloned().collect()
    }
}

/// Logs a complete configuration update: at info the first on a
/// connection (did it resume by delta, or start over?), else at debug.
pub(super) fn log_update(
    controller: &str,
    revision: u64,
    applied: &Applied,
    (first, largest_bytes): (bool, usize),
) {
    match (applied, first) {
        (
            Applied::Delta {
                from,
                changed,
                removed,
                ..
            },
            true,
        ) => tracing::info!(
            controller,
            from,
            revision,
            changed,
            removed,
            largest_bytes,
            "configuration resumed by delta"
        ),
        (Applied::Snapshot { services, parts }, true) => tracing::info!(
            controller,
            revision,
            services,
            parts,
            largest_bytes,
            "configuration received in full (snapshot)"
        ),
        (applied, false) => tracing::debug!(
            controller,
            revision,
            ?applied,
            largest_bytes,
            "configuration update"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, scheduler: &str) -> pb::Service {
        pb::Service {
            name: name.into(),
            scheduler: scheduler.into(),
            ..Default::default()
        }
    }

    fn check(service: &str, port: u32) -> pb::BackendRef {
        pb::BackendRef {
            service: service.into(),
            address: "10.0.0.1".into(),
            port,
        }
    }

    fn names(c: &FromController) -> Vec<(String, String, usize)> {
        let checks = c.checks();
        c.services()
            .values()
            .map(|s| {
                let n = checks.iter().filter(|c| c.service == s.name).count();
                (s.name.clone(), s.scheduler.clone(), n)
            })
            .collect()
    }

    #[test]
    fn snapshots_and_deltas_apply_whole_or_not_at_all() {
        let mut c = FromController::default();
        let first = pb::ConfigUpdate {
            services: vec![service("a", "rr"), service("b", "rr")],
            checks: vec![check("a", 80), check("a", 81)],
            more: true,
            ..Default::default()
        };
        assert_eq!(c.take(5, first).unwrap(), None, "not complete yet");
        assert_eq!(c.revision, 0);
        let last = pb::ConfigUpdate {
            services: vec![service("c", "rr")],
            ..Default::default()
        };
        assert_eq!(
            c.take(5, last).unwrap(),
            Some(Applied::Snapshot {
                services: 3,
                parts: 2
            })
        );
        assert_eq!(c.revision, 5);
        // A delta: a changes (and loses a check), b goes.
        let delta = pb::ConfigUpdate {
            base_revision: 5,
            services: vec![service("a", "wrr")],
            checks: vec![check("a", 80)],
            removed: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(
            c.take(7, delta).unwrap(),
            Some(Applied::Delta {
                from: 5,
                changed: 1,
                removed: 1,
                names: ["a".to_string(), "b".to_string()].into()
            })
        );
        assert_eq!(
            names(&c),
            [("a".into(), "wrr".into(), 1), ("c".into(), "rr".into(), 0)]
        );
        // A part left over from a broken connection is dropped.
        let broken = pb::ConfigUpdate {
            base_revision: 7,
            services: vec![service("x", "rr")],
            more: true,
            ..Default::default()
        };
        assert_eq!(c.take(9, broken).unwrap(), None);
        c.reconnected();
        // A delta on top of another revision is refused, the copy unchanged.
        let stray = pb::ConfigUpdate {
            base_revision: 6,
            ..Default::default()
        };
        let e = c.take(9, stray).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a delta from revision 6 reached a copy at revision 7"
        );
        assert_eq!(c.revision, 7);
        assert_eq!(names(&c).len(), 2);
    }
}
