//! The rules of the services themselves: unique names and virtual
//! addresses, no traffic claimed twice, realservers found by address and
//! port, batches applied whole or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use lb_proto::convert::{check_realserver, patch_realserver};
use lb_proto::model::{RealServer, RealServerPatch, Service, VirtualAddress};
use lb_proto::FieldError;

use super::{Applied, CommandResult, EventKind, Rejected, State};

impl State {
    /// `lbctl import`: several services at once.
    pub(super) fn apply_services(
        &mut self,
        services: Vec<Service>,
        replace: bool,
    ) -> CommandResult {
        // All or nothing: apply to a copy, keep it only if every service fits.
        let mut next = self.clone();
        // Built once: checking each service against all the others would
        // make an import of n services cost n².
        let mut claims = Claims::of(&next.services);
        let mut revision = 0;
        for (i, service) in services.into_iter().enumerate() {
            let name = service.name.clone();
            let before = next.services.get(&name).map(|s| s.address);
            let applied = if replace && before.is_some() {
                next.update_service_claimed(service, 0, &claims)
            } else {
                next.create_service_claimed(service, &claims)
            };
            revision = applied.map_err(|r| r.in_batch(i, &name))?.revision;
            if let Some(now) = next.services.get(&name) {
                claims.record(before, now);
            }
        }
        *self = next;
        Ok(Applied {
            revision,
            service: None,
        })
    }

    pub(super) fn create_service(&mut self, service: Service) -> CommandResult {
        let claims = Claims::of(&self.services);
        self.create_service_claimed(service, &claims)
    }

    fn create_service_claimed(&mut self, service: Service, claims: &Claims) -> CommandResult {
        self.check_unique(&service, None, claims)?;
        Ok(self.commit(EventKind::ServiceCreated, service, None))
    }

    pub(super) fn update_service(
        &mut self,
        service: Service,
        expected_mod_revision: u64,
    ) -> CommandResult {
        let claims = Claims::of(&self.services);
        self.update_service_claimed(service, expected_mod_revision, &claims)
    }

    fn update_service_claimed(
        &mut self,
        service: Service,
        expected_mod_revision: u64,
        claims: &Claims,
    ) -> CommandResult {
        let current = self.service(&service.name)?;
        if expected_mod_revision != 0 && expected_mod_revision != current.mod_revision {
            return Err(Rejected::Conflict {
                name: service.name,
                expected: expected_mod_revision,
                actual: current.mod_revision,
            });
        }
        let create_revision = current.create_revision;
        self.check_unique(&service, Some(&service.name), claims)?;
        let service = Service {
            create_revision,
            ..service
        };
        Ok(self.commit(EventKind::ServiceUpdated, service, None))
    }

    pub(super) fn delete_service(&mut self, name: String) -> CommandResult {
        let service = Arc::clone(self.stored(&name)?);
        self.services.remove(&name);
        self.below_quorum.remove(&name);
        Ok(Applied {
            revision: self.next_event(EventKind::ServiceDeleted, &service, None),
            service: Some(Service::clone(&service)),
        })
    }

    pub(super) fn add_realserver(
        &mut self,
        service: String,
        realserver: RealServer,
    ) -> CommandResult {
        let mut next = self.service(&service)?.clone();
        let rs = check_realserver(&next, realserver, "realserver").map_err(Rejected::Invalid)?;
        next.realservers.push(rs.clone());
        Ok(self.commit(EventKind::RealServerAdded, next, Some(rs)))
    }

    pub(super) fn update_realserver(
        &mut self,
        service: String,
        address: IpAddr,
        port: u16,
        patch: RealServerPatch,
    ) -> CommandResult {
        let mut next = self.service(&service)?.clone();
        let idx = realserver_index(&next, address, port)?;
        let rs = patch_realserver(&next.realservers[idx], &patch).map_err(Rejected::Invalid)?;
        next.realservers[idx] = rs.clone();
        Ok(self.commit(EventKind::RealServerUpdated, next, Some(rs)))
    }

    pub(super) fn remove_realserver(
        &mut self,
        service: String,
        address: IpAddr,
        port: u16,
    ) -> CommandResult {
        let mut next = self.service(&service)?.clone();
        let idx = realserver_index(&next, address, port)?;
        let rs = next.realservers.remove(idx);
        Ok(self.commit(EventKind::RealServerRemoved, next, Some(rs)))
    }

    /// Stores a changed service under the next revision, with its event.
    fn commit(
        &mut self,
        kind: EventKind,
        mut service: Service,
        realserver: Option<RealServer>,
    ) -> Applied {
        let revision = self.revision + 1;
        if kind == EventKind::ServiceCreated {
            service.create_revision = revision;
        }
        service.mod_revision = revision;
        let stored = Arc::new(service);
        self.next_event(kind, &stored, realserver);
        self.services
            .insert(stored.name.clone(), Arc::clone(&stored));
        self.settle_quorum(&stored.name, kind == EventKind::ServiceCreated);
        Applied {
            revision,
            service: Some(Service::clone(&stored)),
        }
    }

    fn service(&self, name: &str) -> Result<&Service, Rejected> {
        self.stored(name).map(|s| &**s)
    }

    fn stored(&self, name: &str) -> Result<&Arc<Service>, Rejected> {
        self.services.get(name).ok_or_else(|| Rejected::NotFound {
            what: format!("service {name}"),
        })
    }

    /// A name and a virtual address belong to one service only, and no
    /// traffic is claimed by two services (`claims`: the services' as they
    /// are now).
    fn check_unique(
        &self,
        service: &Service,
        replacing: Option<&str>,
        claims: &Claims,
    ) -> Result<(), Rejected> {
        if replacing.is_none() && self.services.contains_key(&service.name) {
            return Err(Rejected::AlreadyExists {
                what: format!("service {}", service.name),
            });
        }
        if let Some(other) = claims
            .addresses
            .get(&service.address)
            .filter(|other| Some(other.as_str()) != replacing)
        {
            return Err(Rejected::AlreadyExists {
                what: format!("virtual address {} (service {other})", service.address),
            });
        }
        // A marked service may clash with any other; an unmarked one only
        // with the marked ones.
        let candidates: Box<dyn Iterator<Item = &Service>> = if service.mark_match.is_some() {
            Box::new(self.services.values().map(|s| &**s))
        } else {
            Box::new(
                claims
                    .marked
                    .iter()
                    .filter_map(|n| self.services.get(n).map(|s| &**s)),
            )
        };
        for other in
            candidates.filter(|s| s.name != service.name && Some(s.name.as_str()) != replacing)
        {
            if let Some(e) = mark_clash(service, other) {
                return Err(Rejected::Invalid(e));
            }
        }
        Ok(())
    }
}

/// Which service claims each virtual address, and which services claim
/// marked traffic: what a new or changed service is checked against.
#[derive(Debug, Default)]
struct Claims {
    addresses: BTreeMap<VirtualAddress, String>,
    marked: BTreeSet<String>,
}

impl Claims {
    fn of(services: &BTreeMap<String, Arc<Service>>) -> Self {
        let mut claims = Claims::default();
        for s in services.values() {
            claims.record(None, s);
        }
        claims
    }

    /// `now` was committed, at `before`'s address if it existed already.
    fn record(&mut self, before: Option<VirtualAddress>, now: &Service) {
        if let Some(old) = before.filter(|a| *a != now.address) {
            self.addresses.remove(&old);
        }
        self.addresses.insert(now.address, now.name.clone());
        if now.mark_match.is_some() {
            self.marked.insert(now.name.clone());
        } else {
            self.marked.remove(&now.name);
        }
    }
}

/// Traffic two services would both claim. IPVS looks a packet's mark up
/// before its address, so a fwmark service silently shadows an endpoint
/// service on marked traffic; two overlapping marks make the rule order decide.
fn mark_clash(service: &Service, other: &Service) -> Option<FieldError> {
    match (&service.mark_match, &other.mark_match, other.address) {
        (Some(mine), Some(theirs), _) if mine.overlaps(theirs) => Some(FieldError::new(
            "service.fwmark.address",
            format!(
                "marks {mine}, which overlaps {theirs} marked for service {}",
                other.name
            ),
        )),
        (
            Some(mine),
            _,
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            },
        ) if service.catches(address, protocol, port) => Some(FieldError::new(
            "service.fwmark.address",
            format!(
                "marks {mine}, which includes {}, the VIP of service {}",
                other.address, other.name
            ),
        )),
        (None, Some(theirs), _) => match service.address {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } if other.catches(address, protocol, port) => Some(FieldError::new(
                "service.endpoint",
                format!(
                    "{} is marked ({theirs}) for fwmark service {}",
                    service.address, other.name
                ),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// Finds a realserver; port 0 in a request means the service's default port.
fn realserver_index(service: &Service, address: IpAddr, port: u16) -> Result<usize, Rejected> {
    let port = if port == 0 {
        service.default_realserver_port()
    } else {
        port
    };
    service
        .realservers
        .iter()
        .position(|rs| rs.address == address && rs.port == port)
        .ok_or_else(|| Rejected::NotFound {
            what: format!(
                "realserver {} in service {}",
                std::net::SocketAddr::new(address, port),
                service.name
            ),
        })
}
