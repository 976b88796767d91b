//! Unit tests of the replicated state's rules.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use lb_proto::model::{AdminState, RealServer, RealServerPatch, Service};
use lb_proto::pb;

use super::*;

pub(crate) fn service(name: &str, vip: &str) -> Service {
    Service::try_from(pb::Service {
        name: name.into(),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: vip.into(),
            port: 80,
            protocol: "tcp".into(),
        })),
        mode: "nat".into(),
        ..Default::default()
    })
    .unwrap()
}

pub(crate) fn rs(addr: &str, port: u16) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 0,
        admin_state: lb_proto::model::AdminState::Active,
    }
}

fn marked(name: &str, mark: u32, vip: &str, ports: &[u32]) -> Service {
    Service::try_from(pb::Service {
        name: name.into(),
        virtual_address: Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark,
            address: vip.into(),
            ports: ports.to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .unwrap()
}

pub(crate) fn agent(node: &str, addr: &str, pool: &str) -> Agent {
    Agent {
        node_id: node.into(),
        address: addr.parse().unwrap(),
        labels: [("pool".to_string(), pool.to_string())].into(),
        unhealthy: BTreeSet::new(),
        draining: false,
        drained: false,
        lost: false,
    }
}

/// A TCP check that flips on one result.
pub(crate) fn tcp_check() -> lb_proto::model::HealthCheck {
    lb_proto::model::HealthCheck {
        probe: lb_proto::model::Probe::Tcp,
        interval_ms: 1000,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
        port: 0,
        inhibit_on_failure: false,
    }
}

#[test]
fn agents_become_backends_by_selector() {
    let mut st = State::default();
    let mut web = service("web", "10.0.0.1");
    web.realserver_selector = [("pool".to_string(), "web".to_string())].into();
    web.default_weight = 3;
    web.health_check = Some(tcp_check());
    st.apply(Command::CreateService { service: web }).unwrap();
    st.apply(Command::CreateService {
        service: service("other", "10.0.0.2"),
    })
    .unwrap();
    let r = st
        .apply(Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "web"),
        })
        .unwrap();
    assert_eq!(r.revision, 3, "one event: web gained rs1");
    st.apply(Command::RegisterRealServer {
        agent: agent("rs2", "192.168.0.12", "web"),
    })
    .unwrap();
    let eff = st.effective(&st.services["web"]);
    let backends: Vec<(String, u16, u16)> = eff
        .realservers
        .iter()
        .map(|r| (r.address.to_string(), r.port, r.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("192.168.0.11".to_string(), 80, 3),
            ("192.168.0.12".to_string(), 80, 3)
        ]
    );
    assert!(st.effective(&st.services["other"]).realservers.is_empty());
    let backends = st.backends(&st.services["web"]);
    assert_eq!(backends[0].1.map(|a| a.node_id.as_str()), Some("rs1"));
    assert_eq!(backends[0].2, Health::Up);

    // A failing check takes the backend out, and back in when it passes.
    let mut sick = agent("rs1", "192.168.0.11", "web");
    sick.unhealthy.insert("web".into());
    st.apply(Command::RegisterRealServer { agent: sick })
        .unwrap();
    assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerRemoved);
    assert_eq!(st.effective(&st.services["web"]).realservers.len(), 1);
    assert_eq!(st.backends(&st.services["web"])[0].2, Health::Down);
    st.apply(Command::RegisterRealServer {
        agent: agent("rs1", "192.168.0.11", "web"),
    })
    .unwrap();
    assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerAdded);
    assert_eq!(st.effective(&st.services["web"]).realservers.len(), 2);

    // Re-registering unchanged changes nothing; relabelling drops it.
    let before = st.revision;
    st.apply(Command::RegisterRealServer {
        agent: agent("rs2", "192.168.0.12", "web"),
    })
    .unwrap();
    assert_eq!(st.revision, before);
    st.apply(Command::RegisterRealServer {
        agent: agent("rs2", "192.168.0.12", "db"),
    })
    .unwrap();
    let last = st.events.back().unwrap();
    assert_eq!(last.kind, EventKind::RealServerRemoved);
    assert_eq!(st.effective(&st.services["web"]).realservers.len(), 1);

    // One address, one agent.
    let before = st.clone();
    match st.apply(Command::RegisterRealServer {
        agent: agent("rs3", "192.168.0.11", "web"),
    }) {
        Err(Rejected::Invalid(e)) => assert_eq!(
            e.to_string(),
            "address: 192.168.0.11 is already registered by realserver agent rs1"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(st, before);
}

#[test]
fn a_drained_agent_keeps_its_backends_at_weight_zero() {
    let mut st = State::default();
    let mut web = service("web", "10.0.0.1");
    web.realserver_selector = [("pool".to_string(), "web".to_string())].into();
    st.apply(Command::CreateService { service: web }).unwrap();
    let unknown = st.apply(Command::SetAgentDrain {
        node_id: "rs1".into(),
        drain: true,
    });
    assert!(
        matches!(unknown, Err(Rejected::NotFound { .. })),
        "{unknown:?}"
    );
    st.apply(Command::RegisterRealServer {
        agent: agent("rs1", "192.168.0.11", "web"),
    })
    .unwrap();
    let state_of = |st: &State| st.effective(&st.services["web"]).realservers[0].admin_state;
    st.apply(Command::SetAgentDrain {
        node_id: "rs1".into(),
        drain: true,
    })
    .unwrap();
    assert_eq!(state_of(&st), AdminState::Draining);
    assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerUpdated);
    // The agent's next report does not undo the operator's drain.
    st.apply(Command::RegisterRealServer {
        agent: agent("rs1", "192.168.0.11", "web"),
    })
    .unwrap();
    assert_eq!(state_of(&st), AdminState::Draining);
    st.apply(Command::SetAgentDrain {
        node_id: "rs1".into(),
        drain: false,
    })
    .unwrap();
    assert_eq!(state_of(&st), AdminState::Active);
    // A stopping agent drains itself.
    let mut stopping = agent("rs1", "192.168.0.11", "web");
    stopping.draining = true;
    st.apply(Command::RegisterRealServer { agent: stopping })
        .unwrap();
    assert_eq!(state_of(&st), AdminState::Draining);
    // A lost agent drains until it reports again.
    let back = || Command::RegisterRealServer {
        agent: agent("rs1", "192.168.0.11", "web"),
    };
    st.apply(back()).unwrap();
    st.apply(Command::SetAgentLost {
        node_id: "rs1".into(),
    })
    .unwrap();
    assert_eq!(state_of(&st), AdminState::Draining);
    st.apply(back()).unwrap();
    assert_eq!(state_of(&st), AdminState::Active);
}

#[test]
fn the_owners_checks_take_agentless_backends_out() {
    let mut st = State::default();
    let mut web = service("web", "10.0.0.1");
    web.realservers = vec![rs("192.168.0.11", 8080), rs("192.168.0.12", 8080)];
    st.apply(Command::CreateService {
        service: web.clone(),
    })
    .unwrap();
    // No check, nothing for the directors to do.
    assert!(st.director_checks().is_empty());
    web.health_check = Some(tcp_check());
    st.apply(Command::UpdateService {
        service: web,
        expected_mod_revision: 0,
    })
    .unwrap();
    let b11: SocketAddr = "192.168.0.11:8080".parse().unwrap();
    assert_eq!(st.director_checks().len(), 2);
    st.apply(Command::SetDirectorChecks {
        service: "web".into(),
        down: [b11].into(),
    })
    .unwrap();
    assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerRemoved);
    let eff = st.effective(&st.services["web"]);
    assert_eq!(eff.realservers.len(), 1);
    let health: Vec<Health> = st
        .backends(&st.services["web"])
        .iter()
        .map(|b| b.2)
        .collect();
    assert_eq!(health, [Health::Down, Health::Up]);
    // Still checked while out of the table.
    assert_eq!(st.director_checks().len(), 2);
    st.apply(Command::SetDirectorChecks {
        service: "web".into(),
        down: BTreeSet::new(),
    })
    .unwrap();
    assert_eq!(st.effective(&st.services["web"]).realservers.len(), 2);
    // With inhibit_on_failure a failing backend stays, at weight 0.
    let mut inhibit = Service::clone(&st.services["web"]);
    if let Some(h) = inhibit.health_check.as_mut() {
        h.inhibit_on_failure = true;
    }
    st.apply(Command::UpdateService {
        service: inhibit,
        expected_mod_revision: 0,
    })
    .unwrap();
    st.apply(Command::SetDirectorChecks {
        service: "web".into(),
        down: [b11].into(),
    })
    .unwrap();
    let eff = st.effective(&st.services["web"]);
    assert_eq!(eff.realservers.len(), 2);
    assert_eq!(eff.realservers[0].admin_state, AdminState::Draining);
    st.apply(Command::SetDirectorChecks {
        service: "web".into(),
        down: BTreeSet::new(),
    })
    .unwrap();
    // A host with an agent is its agent's to check...
    st.apply(Command::RegisterRealServer {
        agent: agent("rs1", "192.168.0.11", "db"),
    })
    .unwrap();
    assert_eq!(st.director_checks().len(), 1);
    // ...until the agent goes silent: then the directors' check decides,
    // and the backend is not drained.
    st.apply(Command::SetAgentLost {
        node_id: "rs1".into(),
    })
    .unwrap();
    assert_eq!(st.director_checks().len(), 2);
    let b = &st.backends(&st.services["web"])[0];
    assert_eq!((b.0.admin_state, b.2), (AdminState::Active, Health::Up));
}

#[test]
fn a_batch_applies_whole_or_not_at_all() {
    let mut st = State::default();
    st.apply(Command::CreateService {
        service: service("web", "10.0.0.1"),
    })
    .unwrap();
    let before = st.clone();
    // The second member clashes with web's VIP: nothing of the batch lands.
    let r = st.apply(Command::ApplyServices {
        services: vec![service("a", "10.0.0.2"), service("b", "10.0.0.1")],
        replace: false,
    });
    match r {
        Err(Rejected::AlreadyExists { what }) => {
            assert!(
                what.starts_with("services[1] (b): virtual address"),
                "{what}"
            )
        }
        other => panic!("accepted: {other:?}"),
    }
    assert_eq!(st, before);
    // An existing name is refused without replace...
    let r = st.apply(Command::ApplyServices {
        services: vec![service("web", "10.0.0.3")],
        replace: false,
    });
    assert!(matches!(r, Err(Rejected::AlreadyExists { .. })), "{r:?}");
    assert_eq!(st, before);
    // ...and replaced with it; every member gets its own revision and event.
    let applied = st
        .apply(Command::ApplyServices {
            services: vec![service("web", "10.0.0.3"), service("a", "10.0.0.2")],
            replace: true,
        })
        .unwrap();
    assert_eq!(applied.revision, before.revision + 2);
    assert_eq!(st.services["web"].vip(), Some("10.0.0.3".parse().unwrap()));
    assert_eq!(st.services["web"].create_revision, 1);
    assert_eq!(st.services["a"].create_revision, before.revision + 2);
    let kinds: Vec<EventKind> = st.events.iter().skip(1).map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::ServiceUpdated, EventKind::ServiceCreated]
    );
}

#[test]
fn marked_traffic_is_claimed_once() {
    let mut st = State::default();
    st.apply(Command::CreateService {
        service: marked("shop", 1, "10.0.0.9", &[80, 443]),
    })
    .unwrap();
    let before = st.clone();
    let clash = |st: &mut State, s: Service| match st.apply(Command::CreateService { service: s }) {
        Err(Rejected::Invalid(e)) => e.to_string(),
        other => panic!("accepted a clash: {other:?}"),
    };
    let e = clash(&mut st, marked("shop2", 2, "10.0.0.9", &[443, 8443]));
    assert!(
        e.starts_with("service.fwmark.address: marks 10.0.0.9 tcp 443,8443, which overlaps 10.0.0.9 tcp 80,443 marked for service shop"),
        "{e}"
    );
    let e = clash(&mut st, marked("all", 3, "10.0.0.9", &[]));
    assert!(e.contains("overlaps"), "{e}");
    let e = clash(&mut st, service("web", "10.0.0.9"));
    assert!(
        e.starts_with("service.endpoint: 10.0.0.9:80/tcp is marked (10.0.0.9 tcp 80,443) for fwmark service shop"),
        "{e}"
    );
    assert_eq!(st, before);

    // Other ports, another VIP, and a mark-only service are fine; an
    // update of the service itself does not clash with its old self.
    st.apply(Command::CreateService {
        service: marked("alt", 4, "10.0.0.9", &[8080]),
    })
    .unwrap();
    st.apply(Command::CreateService {
        service: service("web", "10.0.0.10"),
    })
    .unwrap();
    st.apply(Command::CreateService {
        service: marked("manual", 5, "", &[]),
    })
    .unwrap();
    st.apply(Command::UpdateService {
        service: marked("shop", 1, "10.0.0.9", &[80, 443, 8443]),
        expected_mod_revision: 0,
    })
    .unwrap();
    let e = clash(&mut st, marked("web2", 6, "10.0.0.10", &[80]));
    assert!(
        e.contains("includes 10.0.0.10:80/tcp, the VIP of service web"),
        "{e}"
    );
}

#[test]
fn a_batch_checks_each_member_against_the_ones_before_it() {
    let mut st = State::default();
    st.apply(Command::CreateService {
        service: service("web", "10.0.0.1"),
    })
    .unwrap();
    // web moves away and api takes its old address, in one batch.
    st.apply(Command::ApplyServices {
        services: vec![service("web", "10.0.0.2"), service("api", "10.0.0.1")],
        replace: true,
    })
    .unwrap();
    assert_eq!(st.services["api"].vip(), Some("10.0.0.1".parse().unwrap()));
    // A marked member claims traffic a later unmarked one asks for.
    let before = st.clone();
    let r = st.apply(Command::ApplyServices {
        services: vec![
            marked("shop", 1, "10.0.0.9", &[80]),
            service("late", "10.0.0.9"),
        ],
        replace: false,
    });
    match r {
        Err(Rejected::Invalid(e)) => assert!(
            e.to_string()
                .contains("is marked (10.0.0.9 tcp 80) for fwmark service shop"),
            "{e}"
        ),
        other => panic!("accepted a clash: {other:?}"),
    }
    // Two members with one address.
    let r = st.apply(Command::ApplyServices {
        services: vec![service("a", "10.0.0.5"), service("b", "10.0.0.5")],
        replace: false,
    });
    assert!(matches!(r, Err(Rejected::AlreadyExists { .. })), "{r:?}");
    assert_eq!(st, before);
}

#[test]
fn rejected_commands_change_nothing() {
    let mut st = State::default();
    st.apply(Command::CreateService {
        service: service("web", "10.0.0.1"),
    })
    .unwrap();
    let before = st.clone();
    let rejected = [
        Command::CreateService {
            service: service("web", "10.0.0.2"),
        },
        Command::CreateService {
            service: service("web2", "10.0.0.1"),
        },
        Command::DeleteService {
            name: "nope".into(),
        },
        Command::UpdateService {
            service: service("web", "10.0.0.1"),
            expected_mod_revision: 99,
        },
        Command::RemoveRealServer {
            service: "web".into(),
            address: "10.1.1.1".parse().unwrap(),
            port: 80,
        },
        Command::AddRealServer {
            service: "web".into(),
            realserver: rs("2001:db8::1", 80),
        },
    ];
    for cmd in rejected {
        assert!(st.apply(cmd.clone()).is_err(), "{cmd:?} was accepted");
        assert_eq!(st, before, "{cmd:?} changed the state");
    }
}

#[test]
fn revisions_and_events_follow_changes() {
    let mut st = State::default();
    let a = st
        .apply(Command::CreateService {
            service: service("web", "10.0.0.1"),
        })
        .unwrap();
    assert_eq!((a.revision, a.service.unwrap().create_revision), (1, 1));
    let b = st
        .apply(Command::AddRealServer {
            service: "web".into(),
            realserver: rs("10.1.1.1", 0),
        })
        .unwrap();
    let svc = b.service.unwrap();
    assert_eq!(svc.realservers[0].port, 80);
    assert_eq!(
        (b.revision, svc.create_revision, svc.mod_revision),
        (2, 1, 2)
    );
    st.apply(Command::UpdateRealServer {
        service: "web".into(),
        address: "10.1.1.1".parse().unwrap(),
        port: 0,
        patch: RealServerPatch {
            weight: Some(5),
            ..Default::default()
        },
    })
    .unwrap();
    st.apply(Command::DeleteService { name: "web".into() })
        .unwrap();
    let kinds: Vec<_> = st
        .events_since(1)
        .unwrap()
        .iter()
        .map(|e| (e.revision, e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, EventKind::ServiceCreated),
            (2, EventKind::RealServerAdded),
            (3, EventKind::RealServerUpdated),
            (4, EventKind::ServiceDeleted)
        ]
    );
    assert_eq!(st.events_since(5).unwrap(), vec![]);
}

#[test]
fn vip_assignment_is_fenced_by_epoch() {
    let mut st = State::default();
    let vip: IpAddr = "10.0.0.1".parse().unwrap();
    let assign = |d: &str, e| Command::AssignVip {
        vip,
        director: d.into(),
        expected_epoch: e,
    };
    st.apply(assign("a", 0)).unwrap();
    assert_eq!(
        st.owners[&vip],
        VipOwner {
            director: "a".into(),
            epoch: 1
        }
    );
    let before = st.clone();
    assert_eq!(
        st.apply(assign("b", 0)),
        Err(Rejected::StaleEpoch {
            vip,
            expected: 0,
            actual: 1
        })
    );
    assert_eq!(st, before, "a stale assignment changed the state");
    st.apply(assign("b", 1)).unwrap();
    assert_eq!(
        st.owners[&vip],
        VipOwner {
            director: "b".into(),
            epoch: 2
        }
    );
    assert_eq!(
        st.revision, 0,
        "ownership does not bump the configuration revision"
    );
}

#[test]
fn old_events_are_compacted() {
    let mut st = State::default();
    for i in 0..(EVENT_HISTORY + 5) {
        st.apply(Command::CreateService {
            service: service(
                &format!("s{i}"),
                &format!("10.0.{}.{}", i / 250, i % 250 + 1),
            ),
        })
        .unwrap();
    }
    assert_eq!(st.events_since(3), Err(Compacted { oldest: 6 }));
    assert_eq!(st.events_since(6).unwrap().len(), EVENT_HISTORY);
}
