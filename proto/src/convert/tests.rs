//! The input rules, as a client meets them.

use super::*;
use crate::model::*;
use crate::pb;

use super::rules::*;

fn web() -> pb::Service {
    pb::Service {
        name: "web".into(),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: "10.10.1.30".into(),
            port: 80,
            protocol: "tcp".into(),
        })),
        scheduler: "wlc".into(),
        mode: "nat".into(),
        persistence: Some(pb::Persistence {
            timeout_seconds: 30,
            netmask: "255.255.255.0".into(),
        }),
        realservers: vec![pb::RealServer {
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn field_of(s: pb::Service) -> String {
    match Service::try_from(s) {
        Ok(_) => panic!("accepted invalid input"),
        Err(e) => e.field,
    }
}

fn set_mark(s: &mut pb::Service, address: &str, protocol: &str, ports: &[u32]) {
    s.mode = "dr".into();
    s.realservers.iter_mut().for_each(|r| r.port = 0);
    s.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
        mark: 7,
        family: String::new(),
        address: address.into(),
        protocol: protocol.into(),
        ports: ports.to_vec(),
    }));
}

#[test]
fn fwmark_match_is_parsed_sorted_and_round_trips() {
    let mut p = web();
    set_mark(&mut p, "10.0.0.1", "", &[443, 80]);
    let s = Service::try_from(p).unwrap();
    let m = s.mark_match.clone().unwrap();
    assert_eq!(m.to_string(), "10.0.0.1 tcp 80,443");
    assert_eq!(s.vip(), Some("10.0.0.1".parse().unwrap()));
    assert!(s.catches("10.0.0.1".parse().unwrap(), Protocol::Tcp, 443));
    assert!(!s.catches("10.0.0.1".parse().unwrap(), Protocol::Udp, 443));
    assert!(!s.catches("10.0.0.1".parse().unwrap(), Protocol::Tcp, 8080));
    let back = pb::Service::from(&s);
    assert_eq!(Service::try_from(back).unwrap(), s);

    // Without an address the operator marks packets; no VIP is placed.
    let mut p = web();
    set_mark(&mut p, "", "", &[]);
    let s = Service::try_from(p).unwrap();
    assert_eq!((s.vip(), s.mark_match), (None, None));
}

#[test]
fn valid_service_round_trips() {
    let s = Service::try_from(web()).unwrap();
    assert_eq!(
        s.persistence,
        Some(Persistence {
            timeout_secs: 30,
            prefix_len: Some(24)
        })
    );
    assert_eq!(s.realservers[0].weight, 1);
    let back = pb::Service::from(&s);
    assert_eq!(Service::try_from(back).unwrap(), s);
}

#[test]
fn defaults_follow_ipvsadm() {
    let mut p = web();
    p.scheduler.clear();
    p.mode.clear();
    p.realservers[0].port = 0;
    let s = Service::try_from(p).unwrap();
    assert_eq!((s.scheduler, s.mode), (Scheduler::Wlc, ForwardingMode::Dr));
    assert_eq!(s.realservers[0].port, 80, "port 0 takes the VIP port");
}

#[test]
fn each_rule_names_its_field() {
    type Mutation = fn(&mut pb::Service);
    let cases: Vec<(&str, Mutation)> = vec![
        ("service.name", (|s| s.name = "Web!".into())),
        (
            "service.endpoint.address",
            (|s| {
                if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                    e.address = "10.1".into()
                }
            }),
        ),
        (
            "service.endpoint.port",
            (|s| {
                if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                    e.port = 70000
                }
            }),
        ),
        ("service.scheduler", (|s| s.scheduler = "fastest".into())),
        (
            "service.scheduler_flags[0]",
            (|s| s.scheduler_flags = vec!["sh-port".into()]),
        ),
        (
            "service.realservers[0].weight",
            (|s| s.realservers[0].weight = Some(70000)),
        ),
        (
            "service.realservers[0].address",
            (|s| s.realservers[0].address = "2001:db8::1".into()),
        ),
        (
            "service.persistence.netmask",
            (|s| s.persistence.as_mut().unwrap().netmask = "255.0.255.0".into()),
        ),
        ("service.one_packet", (|s| s.one_packet = true)),
        ("service.tunnel_type", (|s| s.tunnel_type = "ipip".into())),
        (
            "service.fwmark.mark",
            (|s| {
                s.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark: 0,
                    ..Default::default()
                }))
            }),
        ),
        (
            "service.fwmark.address",
            (|s| set_mark(s, "", "tcp", &[80])),
        ),
        (
            "service.fwmark.address",
            (|s| set_mark(s, "2001:db8::1", "", &[])),
        ),
        (
            "service.fwmark.protocol",
            (|s| set_mark(s, "10.0.0.1", "icmp", &[])),
        ),
        (
            "service.fwmark.ports[1]",
            (|s| set_mark(s, "10.0.0.1", "", &[80, 0])),
        ),
        (
            "service.fwmark.ports[2]",
            (|s| set_mark(s, "10.0.0.1", "", &[80, 443, 80])),
        ),
        (
            "service.realservers[1].address",
            (|s| s.realservers.push(s.realservers[0].clone())),
        ),
        ("service.realservers[0].port", (|s| s.mode = "dr".into())),
        (
            "service.health_check.rise",
            (|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "tcp".into(),
                    rise: Some(0),
                    ..Default::default()
                })
            }),
        ),
        (
            "service.health_check.http_body_regex",
            (|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "http".into(),
                    http_body_regex: "ok(".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "service.health_check.interval",
            (|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "tcp".into(),
                    interval: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut s = web();
        mutate(&mut s);
        assert_eq!(field_of(s), field);
    }
}

#[test]
fn netmask_forms() {
    assert_eq!(netmask("f", "255.255.255.0", Family::Inet), Ok(24));
    assert_eq!(netmask("f", "/16", Family::Inet), Ok(16));
    assert_eq!(netmask("f", "64", Family::Inet6), Ok(64));
    assert!(netmask("f", "33", Family::Inet).is_err());
    assert!(netmask("f", "0.0.0.0", Family::Inet).is_err());
    assert!(netmask("f", "255.255.255.0", Family::Inet6).is_err());
    assert_eq!(prefix_to_netmask(Family::Inet, 24), "255.255.255.0");
    assert_eq!(prefix_to_netmask(Family::Inet, 32), "255.255.255.255");
}

/// The UDP and DNS checks' own fields: hex payloads, a known record type,
/// a domain name, an expected value that fits the type.
#[test]
fn udp_and_dns_checks_name_their_bad_field() {
    let with = |h: pb::HealthCheck| {
        let mut s = web();
        s.health_check = Some(h);
        s
    };
    let udp = |payload: &str, expect: &str| pb::HealthCheck {
        r#type: "udp".into(),
        udp_payload: payload.into(),
        udp_expect: expect.into(),
        ..Default::default()
    };
    let dns = |t: &str, name: &str, expect: &str| pb::HealthCheck {
        r#type: "dns".into(),
        dns_type: t.into(),
        dns_name: name.into(),
        dns_expect: expect.into(),
        ..Default::default()
    };
    for (field, h) in [
        ("service.health_check.udp_payload", udp("0g", "")),
        ("service.health_check.udp_payload", udp("abc", "")),
        ("service.health_check.udp_expect", udp("", "zz")),
        ("service.health_check.dns_type", dns("AXFR", "", "")),
        ("service.health_check.dns_name", dns("A", "a..b", "")),
        (
            "service.health_check.dns_expect",
            dns("A", "www.test", "2001:db8::1"),
        ),
        ("service.health_check.dns_expect", dns("SOA", ".", "x")),
    ] {
        assert_eq!(field_of(with(h.clone())), field, "{h:?}");
    }
    // Defaults as keepalived's DNS_CHECK: SOA of the root.
    let s = Service::try_from(with(dns("", "", ""))).unwrap();
    let h = s.health_check.unwrap();
    assert_eq!(
        h.probe,
        Probe::Dns(DnsProbe {
            query_type: DnsType::Soa,
            name: ".".into(),
            expect: None
        })
    );
    let s = Service::try_from(with(udp("0A0b", "0c"))).unwrap();
    let back = pb::Service::from(&s).health_check.unwrap();
    assert_eq!(
        (back.udp_payload.as_str(), back.udp_expect.as_str()),
        ("0a0b", "0c")
    );
}

/// A local service: no realservers, selector, sorry server or quorum; any
/// port (0) only for it; a check each director can run on itself.
#[test]
fn local_services_have_their_own_rules() {
    let local = || {
        let mut s = web();
        s.mode = "local".into();
        s.realservers.clear();
        s.persistence = None;
        s
    };
    let any_port = |s: &mut pb::Service| {
        if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
            e.port = 0;
        }
    };
    let ok = Service::try_from(local()).unwrap();
    assert_eq!(ok.mode, ForwardingMode::Local);
    let mut s = local();
    any_port(&mut s);
    assert!(Service::try_from(s).is_ok(), "port 0 for a local service");
    let mut s = web();
    any_port(&mut s);
    assert_eq!(field_of(s), "service.endpoint.port");
    type Mutation = fn(&mut pb::Service);
    let cases: [(&str, Mutation); 5] = [
        ("service.realservers", |s| {
            s.realservers.push(pb::RealServer {
                address: "10.0.0.1".into(),
                ..Default::default()
            })
        }),
        ("service.realserver_selector", |s| {
            s.realserver_selector.insert("pool".into(), "web".into());
        }),
        ("service.quorum", |s| s.quorum = 1),
        ("service.health_check.type", |s| {
            s.health_check = Some(pb::HealthCheck {
                r#type: "ping".into(),
                ..Default::default()
            })
        }),
        ("service.health_check.port", |s| {
            if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                e.port = 0;
            }
            s.health_check = Some(pb::HealthCheck {
                r#type: "tcp".into(),
                ..Default::default()
            })
        }),
    ];
    for (field, mutate) in cases {
        let mut s = local();
        mutate(&mut s);
        assert_eq!(field_of(s), field);
    }
}
