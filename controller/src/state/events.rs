//! The event log: one event per committed configuration change, in
//! revision order, kept for `WatchEvents` to resume from.

use std::collections::BTreeMap;
use std::sync::Arc;

use lb_proto::model::{RealServer, Service};
use serde::{Deserialize, Serialize};

use super::{Applied, State};

/// How many events are kept for `WatchEvents` to resume from.
pub const EVENT_HISTORY: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    ServiceCreated,
    ServiceUpdated,
    ServiceDeleted,
    RealServerAdded,
    RealServerUpdated,
    RealServerRemoved,
}

/// One committed change, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    pub service: Arc<Service>,
    pub realserver: Option<RealServer>,
}

/// Points `e` at its service's current version in `services` when it
/// holds that version (see [`State::share_versions`]).
pub fn share_version(services: &BTreeMap<String, Arc<Service>>, e: &mut Event) {
    if let Some(s) = services.get(&e.service.name) {
        if !Arc::ptr_eq(s, &e.service) && *s == e.service {
            e.service = Arc::clone(s);
        }
    }
}

/// The events a watcher asked for are no longer kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub oldest: u64,
}

impl State {
    /// A realserver event (and a revision) for each backend that a change
    /// added to, removed from or changed in a service, compared with
    /// `before` (the effective services before the change).
    pub(super) fn backend_events(&mut self, before: Vec<Service>) -> Applied {
        let mut last = Applied::none();
        for old in &before {
            self.settle_quorum(&old.name, false);
        }
        for old in before {
            let Some(current) = self.services.get(&old.name) else {
                continue;
            };
            let new = Arc::new(self.effective(current));
            let key = |r: &RealServer| (r.address, r.port);
            let mut changes: Vec<(EventKind, RealServer)> = Vec::new();
            for r in &old.realservers {
                match new.realservers.iter().find(|n| key(n) == key(r)) {
                    None => changes.push((EventKind::RealServerRemoved, r.clone())),
                    Some(n) if n != r => changes.push((EventKind::RealServerUpdated, n.clone())),
                    Some(_) => {}
                }
            }
            for n in &new.realservers {
                if !old.realservers.iter().any(|r| key(r) == key(n)) {
                    changes.push((EventKind::RealServerAdded, n.clone()));
                }
            }
            for (kind, rs) in changes {
                last = Applied {
                    revision: self.next_event(kind, &new, Some(rs)),
                    service: Some(Service::clone(&new)),
                };
            }
        }
        last
    }

    /// Points each event that holds a service's current version at the
    /// service itself, as applying the commands did: read back from the
    /// store or a snapshot, each is a copy of its own, and an import of
    /// 10,000 services would be held twice.
    pub fn share_versions(&mut self) {
        for e in self.events.iter_mut() {
            share_version(&self.services, e);
        }
    }

    /// Events from `from` on; `Compacted` when some of them are gone.
    pub fn events_since(&self, from: u64) -> Result<Vec<Event>, Compacted> {
        let oldest = self
            .events
            .front()
            .map_or(self.revision + 1, |e| e.revision);
        if from < oldest && from <= self.revision {
            return Err(Compacted { oldest });
        }
        Ok(self
            .events
            .iter()
            .filter(|e| e.revision >= from)
            .cloned()
            .collect())
    }

    pub(super) fn next_event(
        &mut self,
        kind: EventKind,
        service: &Arc<Service>,
        realserver: Option<RealServer>,
    ) -> u64 {
        self.revision += 1;
        self.events.push_back(Event {
            revision: self.revision,
            kind,
            service: Arc::clone(service),
            realserver,
        });
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
        self.revision
    }
}
