//! VIP ownership: which director answers for each VIP, fenced by epoch.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_proto::model::{ForwardingMode, Service};
use serde::{Deserialize, Serialize};

use super::{Applied, CommandResult, Derived, Rejected, State};

/// The director that answers for a VIP, and the epoch it got it in. Epochs
/// only grow; a director presents its epoch so stale owners can be told apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipOwner {
    pub director: String,
    pub epoch: u64,
}

/// What the services on one VIP ask of its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub selectors: Vec<BTreeMap<String, String>>,
    pub preferred: Vec<String>,
    /// Local services with a check: a director on which one fails may not
    /// hold the VIP.
    pub tracked: Vec<String>,
}

/// The VIP addresses of the configuration and what each needs.
pub fn vips<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeMap<IpAddr, Needs> {
    let mut out: BTreeMap<IpAddr, Needs> = BTreeMap::new();
    for s in services {
        if let Some(address) = s.vip() {
            let needs = out.entry(address).or_default();
            needs.selectors.push(s.directors.selector.clone());
            if s.mode == ForwardingMode::Local && s.health_check.is_some() {
                needs.tracked.push(s.name.clone());
            }
            for p in &s.directors.preferred {
                if !needs.preferred.contains(p) {
                    needs.preferred.push(p.clone());
                }
            }
        }
    }
    out
}

impl State {
    /// Gives `vip` to `director` if its epoch is still `expected_epoch`.
    /// Not a configuration change: no revision, no event.
    pub(super) fn assign_vip(
        &mut self,
        vip: IpAddr,
        director: String,
        expected_epoch: u64,
    ) -> CommandResult {
        let actual = self.owners.get(&vip).map_or(0, |o| o.epoch);
        if actual != expected_epoch {
            return Err(Rejected::StaleEpoch {
                vip,
                expected: expected_epoch,
                actual,
            });
        }
        self.owners.insert(
            vip,
            VipOwner {
                director,
                epoch: actual + 1,
            },
        );
        Ok(Applied::none())
    }

    /// The VIPs `node` owns among those the configuration still has
    /// (`derived`: this state's), with their epochs.
    pub fn owned_by(&self, derived: &Derived, node: &str) -> Vec<(IpAddr, u64)> {
        self.owners
            .iter()
            .filter(|(vip, o)| o.director == node && derived.vips.contains_key(vip))
            .map(|(vip, o)| (*vip, o.epoch))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::state::tests::service;
    use crate::state::Command;

    #[test]
    fn the_derived_view_follows_the_revision() {
        let mut st = State::default();
        let mut derived = Derived::of(&st);
        st.apply(Command::CreateService {
            service: service("web", "10.0.0.1"),
        })
        .unwrap();
        st.apply(Command::AssignVip {
            vip: "10.0.0.1".parse().unwrap(),
            director: "d1".into(),
            expected_epoch: 0,
        })
        .unwrap();
        // Stale until updated: d1 owns nothing the configuration has.
        assert!(st.owned_by(&derived, "d1").is_empty());
        let web = BTreeSet::from(["web".to_string()]);
        derived.update(&st, &web);
        assert_eq!(
            st.owned_by(&derived, "d1"),
            [("10.0.0.1".parse().unwrap(), 1)]
        );
        st.apply(Command::DeleteService { name: "web".into() })
            .unwrap();
        derived.update(&st, &web);
        assert!(derived.vips.is_empty());
        assert!(st.owned_by(&derived, "d1").is_empty());
    }
}
