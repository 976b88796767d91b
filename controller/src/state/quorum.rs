//! Quorum and the sorry server, with keepalived's semantics.
//!
//! A service's *live weight* is the sum of the weights of its backends in
//! service: active (not draining or drained) and not failing their check.
//! The service is *below quorum* once its live weight drops under
//! `quorum − hysteresis`, or to nothing at all, and is back once it reaches
//! `quorum + hysteresis`: the band between keeps a backend that flaps at
//! the edge from flapping the service. A new service starts below quorum
//! unless it already has `quorum + hysteresis`. A quorum of 0 counts as 1,
//! so a sorry server also takes over when no backend is left. Only
//! services with a quorum or a sorry server have the state.
//!
//! Below quorum with a sorry server, the directors program the sorry
//! server instead of the backends still in service (backends kept at
//! weight 0 stay, they only finish their connections). Without a sorry
//! server nothing changes in the table; the state shows in `lbctl status`.
//!
//! The state depends on history (the band), so it is part of the
//! replicated [`State`], changed only where a service's backends or
//! definition change: every controller reaches the same state.

use lb_proto::model::{AdminState, RealServer, Service};

use super::{Health, State};

impl State {
    /// The weight of `service`'s backends in service.
    pub fn live_weight(&self, service: &Service) -> u64 {
        self.backends(service)
            .iter()
            .filter(|(rs, _, h)| rs.admin_state == AdminState::Active && *h != Health::Down)
            .map(|(rs, _, _)| u64::from(rs.weight))
            .sum()
    }

    /// Updates whether the service `name` is below quorum, after its
    /// backends or its definition changed; `created`: it is new.
    pub(super) fn settle_quorum(&mut self, name: &str, created: bool) {
        // Only services that ask for it are tracked: an empty pool with
        // neither is plainly visible, and the set is stored with every
        // change to a service.
        let Some(service) = self
            .services
            .get(name)
            .filter(|s| s.quorum > 0 || s.sorry_server.is_some())
        else {
            self.below_quorum.remove(name);
            return;
        };
        let quorum = u64::from(service.quorum.max(1));
        let band = u64::from(service.hysteresis);
        let live = self.live_weight(service);
        let below = if created || self.below_quorum.contains(name) {
            live < quorum + band
        } else {
            live == 0 || live < quorum.saturating_sub(band)
        };
        if below {
            self.below_quorum.insert(name.to_string());
        } else {
            self.below_quorum.remove(name);
        }
    }

    /// The sorry server's realserver when `service` is below quorum and
    /// has one: what replaces its backends in service.
    pub fn sorry_in_use(&self, service: &Service) -> Option<RealServer> {
        let addr = service.sorry_server?;
        self.below_quorum
            .contains(&service.name)
            .then_some(RealServer {
                address: addr.ip(),
                port: addr.port(),
                weight: 1,
                upper_threshold: 0,
                lower_threshold: 0,
                admin_state: AdminState::Active,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::state::tests::{rs, service, tcp_check};
    use crate::state::{Command, State};

    /// The realservers the directors get, as "address:port weight".
    fn table(st: &State) -> Vec<String> {
        st.effective(&st.services["web"])
            .realservers
            .iter()
            .map(|r| format!("{}:{} {}", r.address, r.port, r.weight))
            .collect()
    }

    fn set_down(st: &mut State, down: &[&str]) {
        let down: BTreeSet<_> = down
            .iter()
            .map(|a| format!("{a}:80").parse().unwrap())
            .collect();
        st.apply(Command::SetDirectorChecks {
            service: "web".into(),
            down,
        })
        .expect("applies");
    }

    fn web(quorum: u32, hysteresis: u32) -> lb_proto::model::Service {
        let mut web = service("web", "10.0.0.1");
        web.realservers = vec![rs("10.2.0.1", 80), rs("10.2.0.2", 80), rs("10.2.0.3", 80)];
        web.health_check = Some(tcp_check());
        web.sorry_server = Some("10.9.0.9:8080".parse().unwrap());
        web.quorum = quorum;
        web.hysteresis = hysteresis;
        web
    }

    const ALL: [&str; 3] = ["10.2.0.1:80 1", "10.2.0.2:80 1", "10.2.0.3:80 1"];
    const SORRY: [&str; 1] = ["10.9.0.9:8080 1"];

    #[test]
    fn below_quorum_the_sorry_server_replaces_the_backends() {
        let mut st = State::default();
        st.apply(Command::CreateService { service: web(3, 0) })
            .unwrap();
        assert_eq!(table(&st), ALL);
        set_down(&mut st, &["10.2.0.1"]);
        assert_eq!(table(&st), SORRY);
        assert!(st.below_quorum.contains("web"));
        // The sorry server's arrival is an event like any backend change.
        let last = st.events.back().unwrap();
        assert_eq!(last.kind, crate::state::EventKind::RealServerAdded);
        assert_eq!(last.realserver.as_ref().unwrap().port, 8080);
        set_down(&mut st, &[]);
        assert_eq!(table(&st), ALL);
    }

    #[test]
    fn hysteresis_holds_the_state_inside_its_band() {
        let mut st = State::default();
        st.apply(Command::CreateService { service: web(2, 1) })
            .unwrap();
        assert_eq!(table(&st), ALL, "3 >= quorum + hysteresis: starts up");
        // Live weight 1: under the quorum, not under quorum - hysteresis.
        set_down(&mut st, &["10.2.0.1", "10.2.0.2"]);
        assert_eq!(table(&st), ["10.2.0.3:80 1"]);
        set_down(&mut st, &["10.2.0.1", "10.2.0.2", "10.2.0.3"]);
        assert_eq!(table(&st), SORRY);
        // Live weight 2 reaches the quorum, not quorum + hysteresis.
        set_down(&mut st, &["10.2.0.1"]);
        assert_eq!(table(&st), SORRY);
        set_down(&mut st, &[]);
        assert_eq!(table(&st), ALL);
    }

    #[test]
    fn no_quorum_set_means_the_sorry_server_covers_an_empty_pool() {
        let mut st = State::default();
        st.apply(Command::CreateService { service: web(0, 0) })
            .unwrap();
        set_down(&mut st, &["10.2.0.1", "10.2.0.2"]);
        assert_eq!(table(&st), ["10.2.0.3:80 1"]);
        set_down(&mut st, &["10.2.0.1", "10.2.0.2", "10.2.0.3"]);
        assert_eq!(table(&st), SORRY);
        // A definition change is settled too: a quorum the pool cannot
        // reach keeps the sorry server when a backend returns.
        st.apply(Command::UpdateService {
            service: web(3, 0),
            expected_mod_revision: 0,
        })
        .unwrap();
        set_down(&mut st, &["10.2.0.1"]);
        assert_eq!(table(&st), SORRY);
        st.apply(Command::DeleteService { name: "web".into() })
            .unwrap();
        assert!(st.below_quorum.is_empty());
    }
}
