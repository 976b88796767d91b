//! The importers and exporters on fixture files written from the
//! keepalived.conf(5), lvs.cf(5) and ipvsadm(8) documentation.

use std::net::IpAddr;

use lb_proto::model::*;
use lbctl::export;
use lbctl::import::{self, Format, Imported};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn read(format: Format, name: &str) -> (Imported, Vec<Service>) {
    let imported = import::parse(format, name, &fixture(name)).unwrap();
    let services = imported.validate().unwrap();
    (imported, services)
}

/// A keepalived.conf text, imported and validated (the text is in the panic).
fn keepalived(name: &str, text: &str) -> Vec<Service> {
    import::parse(Format::Keepalived, name, text)
        .and_then(|i| i.validate())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn by_name<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {:?}", names(services)))
}

fn names(services: &[Service]) -> Vec<&str> {
    services.iter().map(|s| s.name.as_str()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn noted(imported: &Imported, line: usize, directive: &str) -> bool {
    imported
        .notes
        .iter()
        .any(|n| n.line == line && n.directive.starts_with(directive))
}

#[test]
fn keepalived_every_directive() {
    let (imported, services) = read(Format::Keepalived, "keepalived.conf");
    assert_eq!(
        names(&services),
        [
            "vs-192.0.2.10-80-tcp",
            "vs-192.0.2.11-443-tcp",
            "vs-192.0.2.20-25-tcp",
            "vs-192.0.2.53-53-udp",
            "fwmark-7",
            "app-vs-192.0.2.30-8000-tcp",
            "app-vs-192.0.2.31-8000-tcp",
            "app-vs-192.0.2.32-8000-tcp",
        ]
    );

    let web = by_name(&services, "vs-192.0.2.10-80-tcp");
    assert_eq!(web.mode, ForwardingMode::Nat);
    assert_eq!(web.scheduler, Scheduler::Wlc);
    assert_eq!(
        web.persistence,
        Some(Persistence {
            timeout_secs: 300,
            prefix_len: Some(24)
        })
    );
    assert_eq!(
        web.sorry_server,
        Some("198.51.100.99:8080".parse().unwrap())
    );
    assert_eq!((web.quorum, web.hysteresis), (2, 1));
    let weights: Vec<(IpAddr, u16, u16)> = web
        .realservers
        .iter()
        .map(|r| (r.address, r.port, r.weight))
        .collect();
    assert_eq!(
        weights,
        [(ip("198.51.100.1"), 8080, 3), (ip("198.51.100.2"), 8080, 1)]
    );
    let check = web.health_check.as_ref().unwrap();
    assert_eq!(
        check.probe,
        Probe::Http(HttpProbe {
            path: "/healthz".into(),
            status: vec![200],
            body_regex: None,
            digest: Some("9b4c5b5e0f1a2b3c4d5e6f708192a3b4".into()),
            host: None,
        })
    );
    // delay_loop 6, connect_timeout 3, nb_get_retry 2 (fall 3), connect_port.
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.rise, check.fall),
        (6000, 3000, 1, 3)
    );
    assert_eq!(check.port, 8081);
    assert!(check.inhibit_on_failure);
    // vrrp_instance VI_WEB (priority 150) on router LB1.
    assert_eq!(web.directors.preferred, ["lb1"]);

    let https = by_name(&services, "vs-192.0.2.11-443-tcp");
    assert_eq!(
        (https.mode, https.scheduler),
        (ForwardingMode::Dr, Scheduler::Sh)
    );
    assert_eq!(
        https.scheduler_flags.iter().copied().collect::<Vec<_>>(),
        [SchedulerFlag::ShPort]
    );
    let check = https.health_check.as_ref().unwrap();
    assert!(
        matches!(&check.probe, Probe::Https(p) if p.path == "/status" && p.status == [200, 204])
    );
    assert_eq!((check.interval_ms, check.fall), (10_000, 2));

    let mail = by_name(&services, "vs-192.0.2.20-25-tcp");
    assert_eq!(mail.mode, ForwardingMode::Tun);
    assert_eq!(mail.scheduler, Scheduler::Rr);
    let check = mail.health_check.as_ref().unwrap();
    assert_eq!(
        (&check.probe, check.timeout_ms, check.fall),
        (&Probe::Tcp, 2000, 4)
    );

    let dns = by_name(&services, "vs-192.0.2.53-53-udp");
    assert!(dns.one_packet);
    assert_eq!(
        dns.health_check.as_ref().unwrap().probe,
        Probe::Exec {
            command: "/usr/lib/lb/check-dns".into(),
            args: vec!["--server".into(), "192.0.2.151".into()],
        }
    );

    let marked = by_name(&services, "fwmark-7");
    assert_eq!(
        marked.address,
        VirtualAddress::Fwmark {
            mark: 7,
            family: Family::Inet
        }
    );
    assert_eq!(marked.scheduler, Scheduler::Wrr);
    assert_eq!(marked.realservers.len(), 2);
    assert_eq!(marked.realservers[0].port, 0);
    assert!(marked.health_check.is_none());

    // virtual_server_group APP: one address and a range of two.
    let group = by_name(&services, "app-vs-192.0.2.32-8000-tcp");
    assert_eq!(group.scheduler, Scheduler::Mh);
    assert_eq!(group.mode, ForwardingMode::Nat);
    assert_eq!(group.realservers[0].port, 9000);

    // What keepalived does that lbfabric does not, each with its line.
    for (line, directive) in [
        (5, "notification_email"),
        (8, "smtp_server"),
        (17, "advert_int"),
        (49, "alpha"),
        (50, "omega"),
        (63, "delay_before_retry"),
    ] {
        assert!(
            noted(&imported, line, directive),
            "no note for {line}: {directive}: {:#?}",
            imported.notes
        );
    }
}

#[test]
fn keepalived_files_of_two_directors_merge_by_priority() {
    let parts = ["keepalived.conf", "keepalived-lb2.conf"]
        .map(|f| import::parse(Format::Keepalived, f, &fixture(f)).unwrap());
    let merged = import::merge(parts.into());
    let services = merged.validate().unwrap();
    assert_eq!(services.len(), 8, "the mail service is in both files once");
    // lb2's file has no virtual server for VI_WEB's addresses, lb1's has:
    // they are not floating VIPs.
    assert!(
        services.iter().all(|s| s.mode != ForwardingMode::Local),
        "{:?}",
        names(&services)
    );
    // VI_WEB: lb1 150, lb2 100. VI_MAIL: lb1 90, lb2 120.
    assert_eq!(
        by_name(&services, "vs-192.0.2.10-80-tcp")
            .directors
            .preferred,
        ["lb1", "lb2"]
    );
    assert_eq!(
        by_name(&services, "vs-192.0.2.20-25-tcp")
            .directors
            .preferred,
        ["lb2", "lb1"]
    );
    assert!(by_name(&services, "fwmark-7")
        .directors
        .preferred
        .is_empty());
}

#[test]
fn keepalived_messy_formatting_reads_like_the_tidy_one() {
    let (imported, services) = read(Format::Keepalived, "keepalived-messy.conf");
    assert_eq!(
        names(&services),
        [
            "vs-10.1.0.1-80-tcp",
            "vs-10.1.0.2-8080-tcp",
            "vs-2001-db8--80-443-tcp"
        ]
    );
    let one = by_name(&services, "vs-10.1.0.1-80-tcp");
    assert_eq!(
        (one.mode, one.scheduler),
        (ForwardingMode::Dr, Scheduler::Rr)
    );
    let rs: Vec<(IpAddr, u16)> = one
        .realservers
        .iter()
        .map(|r| (r.address, r.weight))
        .collect();
    assert_eq!(rs, [(ip("10.1.0.11"), 2), (ip("10.1.0.12"), 2)]);
    let check = one.health_check.as_ref().unwrap();
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.fall),
        (2000, 1000, 3)
    );
    // A single-quoted path with a stray double quote in it.
    let two = by_name(&services, "vs-10.1.0.2-8080-tcp");
    assert_eq!(two.mode, ForwardingMode::Nat);
    assert!(matches!(&two.health_check.as_ref().unwrap().probe,
        Probe::Exec { command, args } if command == "/bin/check" && args == &["\"quoted", "arg"]));
    let v6 = by_name(&services, "vs-2001-db8--80-443-tcp");
    assert_eq!(v6.family(), Family::Inet6);
    assert_eq!(v6.directors.preferred, Vec::<String>::new());
    assert!(imported.notes.is_empty(), "{:#?}", imported.notes);
}

#[test]
fn piranha_every_directive() {
    let (imported, services) = read(Format::Piranha, "lvs.cf");
    assert_eq!(names(&services), ["web", "ftp", "dns", "shop"]);
    assert!(
        services.iter().all(|s| s.mode == ForwardingMode::Dr),
        "network = direct"
    );

    let web = by_name(&services, "web");
    assert_eq!(
        web.address,
        VirtualAddress::Endpoint {
            address: ip("192.0.2.80"),
            port: 80,
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(
        web.persistence,
        Some(Persistence {
            timeout_secs: 300,
            prefix_len: Some(24)
        })
    );
    let rs: Vec<(IpAddr, u16, AdminState)> = web
        .realservers
        .iter()
        .map(|r| (r.address, r.weight, r.admin_state))
        .collect();
    assert_eq!(
        rs,
        [
            (ip("192.0.2.81"), 2, AdminState::Active),
            (ip("192.0.2.82"), 1, AdminState::Disabled),
        ]
    );
    assert_eq!(web.realservers[0].port, 80, "the virtual port");
    let check = web.health_check.as_ref().unwrap();
    assert!(matches!(&check.probe, Probe::Http(p) if p.path == "/index.html" && p.status == [200]));
    // timeout 6 and reentry 15 at a 2 s interval.
    assert_eq!((check.interval_ms, check.fall, check.rise), (2000, 3, 8));

    let ftp = by_name(&services, "ftp");
    assert_eq!(ftp.health_check.as_ref().unwrap().probe, Probe::Tcp);
    assert!(noted(&imported, 40, "send/expect"), "{:#?}", imported.notes);

    let dns = by_name(&services, "dns");
    assert!(matches!(&dns.health_check.as_ref().unwrap().probe,
        Probe::Exec { command, args } if command == "/usr/lib/lb/dig-check" && args == &["%h"]));

    let shop = by_name(&services, "shop");
    assert_eq!(
        shop.address,
        VirtualAddress::Fwmark {
            mark: 80,
            family: Family::Inet
        }
    );
    assert_eq!(
        shop.mark_match,
        Some(MarkMatch {
            address: ip("192.0.2.90"),
            protocol: Protocol::Tcp,
            ports: vec![443]
        })
    );
    assert_eq!(shop.persistence.unwrap().timeout_secs, 1800);
    for (line, directive) in [
        (2, "serial_no"),
        (3, "primary"),
        (7, "heartbeat 1"),
        (23, "load_monitor"),
        (28, "quiesce_server"),
        (56, "send_program"),
        (83, "virtual old"),
    ] {
        assert!(
            noted(&imported, line, directive),
            "no note for {line}: {directive}: {:#?}",
            imported.notes
        );
    }
}

#[test]
fn piranha_nat_and_tunnel_networks() {
    let (_, nat) = read(Format::Piranha, "lvs-nat.cf");
    assert_eq!(nat[0].mode, ForwardingMode::Nat);
    assert_eq!(nat[0].scheduler, Scheduler::Wrr);
    assert_eq!(nat[0].realservers[0].weight, 3);
    let (_, tun) = read(Format::Piranha, "lvs-tunnel.cf");
    assert_eq!(names(&tun), ["big-app"]);
    assert_eq!(tun[0].mode, ForwardingMode::Tun);
    let rs: Vec<IpAddr> = tun[0].realservers.iter().map(|r| r.address).collect();
    assert_eq!(rs, [ip("198.51.100.111"), ip("198.51.100.112")]);
}

/// import → export → import gives the same services.
#[test]
fn keepalived_round_trip() {
    for (file, director) in [
        ("keepalived.conf", Some("lb1")),
        ("keepalived-messy.conf", None),
    ] {
        let (_, first) = read(Format::Keepalived, file);
        let text = export::keepalived(&first, director).text;
        let again = keepalived("exported", &text);
        assert_eq!(
            first, again,
            "{file} did not survive the round trip:\n{text}"
        );
    }
    // Piranha's services, through keepalived (its disabled server aside).
    let (_, mut first) = read(Format::Piranha, "lvs-nat.cf");
    let text = export::keepalived(&first, None).text;
    let again = keepalived("exported", &text);
    // keepalived has no rise: a server is back on its first success.
    first[0].health_check.as_mut().unwrap().rise = 1;
    assert_eq!(first, again, "{text}");
}

#[test]
fn errors_name_file_line_and_directive() {
    let cases: &[(Format, &str, &str)] = &[
        (
            Format::Keepalived,
            "virtual_server 10.0.0.1 80 {\n  real_server 10.0.0.2 80 {\n    weight 1\n}\n",
            "f:1: virtual_server 10.0.0.1 80: its block is never closed (missing })",
        ),
        (
            Format::Keepalived,
            "virtual_server 10.0.0.1 80 {\n  real_server 10.0.0.2 80 {\n    weight heavy\n  }\n}\n",
            "f:3: weight heavy: \"heavy\" is not a whole number",
        ),
        (
            Format::Keepalived,
            "virtual_server group nope {\n}\n",
            "f:1: virtual_server group nope: no virtual_server_group nope is defined",
        ),
        (
            Format::Keepalived,
            "}\n",
            "f:1: }: closes a block that was never opened",
        ),
        (
            Format::Piranha,
            "network = bridged\n",
            "f:1: network bridged: unknown network \"bridged\"; expected nat, direct or tunnel",
        ),
        (
            Format::Ipvsadm,
            "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w lots\n",
            "f:2: -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w lots: -w \"lots\" is not a whole number",
        ),
        (
            Format::Ipvsadm,
            "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n",
            "f:1: -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1: no -A line before it adds vs-10.0.0.1-80-tcp",
        ),
        (
            Format::Ipvsadm,
            "-A -t web.example.com:http -s rr\n",
            "f:1: -A -t web.example.com:http -s rr: \"web.example.com\" is a host name, not an address: save the table with ipvsadm -Sn",
        ),
    ];
    for (format, text, want) in cases {
        let e = import::parse(*format, "f", text).unwrap_err();
        assert_eq!(e.to_string(), *want);
    }
    // A rule the controller enforces, reported at the service's line.
    let imported = import::parse(
        Format::Keepalived,
        "f",
        "\n\nvirtual_server 10.0.0.300 80 {\n lb_kind DR\n}\n",
    )
    .unwrap();
    let e = imported.validate().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "f:3: virtual_server 10.0.0.300 80: service.endpoint.address: \"10.0.0.300\""
        ),
        "{e}"
    );
    let imported = import::parse(
        Format::Keepalived,
        "f",
        "virtual_server 10.0.0.3 80 {\n lb_kind DR\n real_server 10.0.0.4 8080 {\n }\n}\n",
    )
    .unwrap();
    let e = imported.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("f:1: virtual_server 10.0.0.3 80: service.realservers[0].port"),
        "{e}"
    );
}

/// `ipvsadm -Sn` captured in the VM test bed (tests/tests/vm/import.rs):
/// written back it is the same table, and it reads back the same.
#[test]
fn ipvsadm_capture_round_trip() {
    let (imported, services) = read(Format::Ipvsadm, "ipvsadm-save.txt");
    assert!(imported.notes.is_empty(), "{:#?}", imported.notes);
    assert_eq!(services.len(), 19);
    let sctp = by_name(&services, "vs-10.20.1.3-5060-sctp");
    assert_eq!(sctp.persistence.unwrap().timeout_secs, 360);
    assert_eq!(sctp.mode, ForwardingMode::Nat);
    let v6 = by_name(&services, "fwmark-8-inet6");
    assert_eq!(v6.family(), Family::Inet6);
    let text = export::ipvsadm(&services).text;
    let sorted = |t: &str| {
        let mut v: Vec<String> = t.lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&text), sorted(&fixture("ipvsadm-save.txt")));
    let again = import::parse(Format::Ipvsadm, "exported", &text)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(services, again);
}

/// Found by the fuzzer: values with braces, spaces or quotes are quoted on
/// export and read back unchanged.
#[test]
fn awkward_values_survive_export() {
    let text = "virtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.0.2 80 {\n  HTTP_GET {\n   url {\n    path \"/a}b c#d\"\n    regex 'say \"hi\"'\n   }\n   virtualhost \"x y\"\n  }\n }\n}\n";
    let first = keepalived("f", text);
    let out = export::keepalived(&first, None);
    let again = keepalived("e", &out.text);
    assert_eq!(first, again, "{}", out.text);
    assert!(matches!(&again[0].health_check.as_ref().unwrap().probe,
        Probe::Http(p) if p.path == "/a}b c#d" && p.body_regex.as_deref() == Some("say \"hi\"")));
}

#[test]
fn keepalived_status_code_ranges_are_read_and_written_as_keepalived_does() {
    let text = "virtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.0.2 80 {\n  HTTP_GET {\n   url {\n    path /\n    status_code 200-299 400-499 503 505\n   }\n  }\n }\n}\n";
    let first = keepalived("f", text);
    let Probe::Http(p) = &first[0].health_check.as_ref().unwrap().probe else {
        panic!("not an HTTP check: {first:?}")
    };
    assert_eq!(p.status.len(), 100 + 100 + 2);
    for (code, accepted) in [
        (200, true),
        (299, true),
        (300, false),
        (404, true),
        (502, false),
    ] {
        assert_eq!(p.status.contains(&code), accepted, "{code}");
    }
    let out = export::keepalived(&first, None);
    assert!(
        out.text.contains("status_code 200-299 400-499 503 505\n"),
        "{}",
        out.text
    );
    let again = keepalived("e", &out.text);
    assert_eq!(first, again);
    // A backwards range names the line and what is wrong with it.
    let err = import::parse(Format::Keepalived, "f", &text.replace("200-299", "299-200"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("f:7: status_code 299-200") && err.contains("the range starts above its end"),
        "{err}"
    );
}

#[test]
fn keepalived_notify_scripts_point_to_the_director_hook() {
    let text = "global_defs {\n router_id lb1\n}\nvrrp_instance VI_1 {\n priority 100\n virtual_ipaddress {\n  10.0.0.1\n }\n notify_master /etc/keepalived/master.sh\n notify_backup /etc/keepalived/backup.sh\n}\nvirtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.0.2 80 {\n }\n}\n";
    let imported = import::parse(Format::Keepalived, "f", text).unwrap();
    for line in [9, 10] {
        let note = imported
            .notes
            .iter()
            .find(|n| n.line == line)
            .unwrap_or_else(|| panic!("no note for line {line}: {:?}", imported.notes));
        assert!(note.to_string().contains("--on-vip-change"), "{note}");
    }
}

/// keepalived's sorry server, quorum and the UDP, DNS and ping checkers
/// carry over; the scripts lbfabric runs elsewhere are named by line.
#[test]
fn keepalived_sorry_quorum_udp_dns_ping_and_scripts() {
    let text = "\
vrrp_instance VI_1 {
    state MASTER
    virtual_router_id 51
    priority 100
    notify_master /etc/keepalived/master.sh
    virtual_ipaddress {
        10.0.0.53
    }
}
virtual_server 10.0.0.53 53 {
    protocol UDP
    lb_algo rr
    lb_kind DR
    sorry_server 10.0.9.9 53
    quorum 2
    hysteresis 1
    quorum_up /etc/keepalived/up.sh
    real_server 10.0.1.1 53 {
        UDP_CHECK {
            connect_timeout 2
            payload 0a0B
            require_reply 0C
            min_reply_length 2
        }
    }
    real_server 10.0.1.2 53 {
        UDP_CHECK {
            connect_timeout 2
            payload 0a0B
            require_reply 0C
        }
    }
}
virtual_server 10.0.0.53 5353 {
    protocol UDP
    lb_kind DR
    real_server 10.0.1.1 5353 {
        DNS_CHECK {
            type a
            name www.example.test
        }
    }
}
virtual_server 10.0.0.54 80 {
    lb_kind DR
    real_server 10.0.1.3 80 {
        PING_CHECK {
            retry 2
        }
    }
}
";
    let imported = import::parse(Format::Keepalived, "k.conf", text).unwrap();
    let services = imported.validate().unwrap();
    let udp = by_name(&services, "vs-10.0.0.53-53-udp");
    assert_eq!(udp.sorry_server, Some("10.0.9.9:53".parse().unwrap()));
    assert_eq!((udp.quorum, udp.hysteresis), (2, 1));
    let check = udp.health_check.as_ref().unwrap();
    assert_eq!(
        check.probe,
        Probe::Udp(lb_proto::model::UdpProbe {
            payload: vec![0x0a, 0x0b],
            expect: Some(vec![0x0c]),
        })
    );
    assert_eq!(check.timeout_ms, 2000);
    let dns = by_name(&services, "vs-10.0.0.53-5353-udp");
    assert_eq!(
        dns.health_check.as_ref().unwrap().probe,
        Probe::Dns(lb_proto::model::DnsProbe {
            query_type: lb_proto::model::DnsType::A,
            name: "www.example.test".into(),
            expect: None,
        })
    );
    let ping = by_name(&services, "vs-10.0.0.54-80-tcp");
    let check = ping.health_check.as_ref().unwrap();
    assert_eq!((&check.probe, check.fall), (&Probe::Ping, 3));
    // What has no equivalent in the file is named by its line.
    assert!(
        noted(&imported, 5, "notify_master"),
        "{:#?}",
        imported.notes
    );
    assert!(noted(&imported, 17, "quorum_up"), "{:#?}", imported.notes);
    assert!(
        noted(&imported, 23, "min_reply_length"),
        "{:#?}",
        imported.notes
    );
    // And back: the export writes the same checkers.
    let exported = export::keepalived(&services, None);
    for line in [
        "UDP_CHECK {",
        "payload 0A0B",
        "require_reply 0C",
        "DNS_CHECK {",
        "type A",
        "name \"www.example.test\"",
        "PING_CHECK {",
        "sorry_server 10.0.9.9 53",
        "quorum 2",
        "hysteresis 1",
    ] {
        assert!(exported.text.contains(line), "{line} in\n{}", exported.text);
    }
    let again = keepalived("again.conf", &exported.text);
    assert_eq!(again, services);
}

/// A VRRP-only keepalived.conf — nginx on two directors behind a floating
/// VIP, the most common keepalived setup — imports as local services whose
/// check is the tracked script, run by a shell, with the directors'
/// priorities as their preference.
#[test]
fn keepalived_vrrp_only_becomes_local_services() {
    let text = "\
global_defs {
    router_id lb1
}
vrrp_script chk_nginx {
    script \"killall -0 nginx\"
    interval 2
    timeout 1
    weight -20
    fall 3
    rise 2
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    virtual_ipaddress {
        192.168.1.100/24 dev eth0
        2001:db8::100
    }
    track_script {
        chk_nginx
    }
}
";
    let imported = import::parse(Format::Keepalived, "vrrp.conf", text).unwrap();
    let services = imported.validate().unwrap();
    assert_eq!(
        names(&services),
        ["vi_1-192.168.1.100", "vi_1-2001-db8--100"]
    );
    let s = by_name(&services, "vi_1-192.168.1.100");
    assert_eq!(s.mode, ForwardingMode::Local);
    assert_eq!(
        s.address,
        VirtualAddress::Endpoint {
            address: ip("192.168.1.100"),
            port: 0,
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(s.directors.preferred, ["lb1"]);
    let h = s.health_check.as_ref().unwrap();
    assert_eq!(
        h.probe,
        Probe::Exec {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "killall -0 nginx".into()],
        }
    );
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.rise, h.fall),
        (2000, 1000, 2, 3)
    );
    assert!(noted(&imported, 8, "weight"), "{:#?}", imported.notes);
    // A tracked script that is not defined is an error naming the line.
    let e = import::parse(
        Format::Keepalived,
        "bad.conf",
        "vrrp_instance V {\n virtual_ipaddress {\n 10.0.0.1\n }\n track_script {\n nope\n }\n}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bad.conf:6") && e.contains("no vrrp_script nope"),
        "{e}"
    );
}
