//! The director's IPVS client against the real kernel: what it writes is what
//! `ipvsadm` reads back, what it reads back is what it wrote, and kernel
//! errors name the operation, the object and the errno.

use super::{ipvsadm_save, sorted};
use lb_director::ipvs::wire::*;
use lb_director::ipvs::{DestSpec, Forward, Ipvs, IpvsError, ServiceKey, ServiceSpec};

/// A client of the VM's IPVS, with the table emptied.
fn emptied() -> Ipvs {
    let ipvs = Ipvs::open().expect("open IPVS");
    for s in ipvs.services().expect("dump") {
        ipvs.delete_service(&s.spec.key).expect("clear");
    }
    ipvs
}

#[test]
fn services_and_destinations_round_trip_through_the_kernel() {
    if !super::in_vm() {
        return;
    }
    let ipvs = emptied();
    let web = ServiceSpec {
        key: ServiceKey::Endpoint {
            addr: "10.9.0.1".parse().unwrap(),
            port: 80,
            protocol: IPPROTO_TCP,
        },
        scheduler: "wlc".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 30,
        netmask: 0xffff_ff00,
    };
    let mark = ServiceSpec {
        key: ServiceKey::Fwmark {
            mark: 7,
            af: AF_INET,
        },
        scheduler: "sh".into(),
        flags: SVC_F_SCHED1 | SVC_F_SCHED2,
        timeout: 0,
        netmask: ServiceSpec::full_netmask(AF_INET),
    };
    let v6 = ServiceSpec {
        key: ServiceKey::Endpoint {
            addr: "2001:db8::1".parse().unwrap(),
            port: 443,
            protocol: IPPROTO_UDP,
        },
        scheduler: "rr".into(),
        flags: SVC_F_ONEPACKET,
        timeout: 0,
        netmask: ServiceSpec::full_netmask(AF_INET6),
    };
    let nat = DestSpec {
        addr: "10.9.1.11".parse().unwrap(),
        port: 8080,
        forward: Forward::Masquerade,
        weight: 2,
        upper_threshold: 100,
        lower_threshold: 10,
    };
    let tun = DestSpec {
        addr: "10.9.1.13".parse().unwrap(),
        port: 0,
        forward: Forward::Tunnel,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 0,
    };
    let dr6 = DestSpec {
        addr: "2001:db8::11".parse().unwrap(),
        port: 443,
        forward: Forward::Route,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 0,
    };
    for s in [&web, &mark, &v6] {
        ipvs.add_service(s).expect("add service");
    }
    ipvs.add_dest(&web.key, &nat).expect("add nat dest");
    ipvs.add_dest(&mark.key, &tun).expect("add tunnel dest");
    ipvs.add_dest(&v6.key, &dr6).expect("add v6 dest");

    assert_eq!(
        ipvsadm_save(),
        sorted(&[
            "-A -t 10.9.0.1:80 -s wlc -p 30 -M 255.255.255.0",
            "-a -t 10.9.0.1:80 -r 10.9.1.11:8080 -m -w 2",
            "-A -f 7 -s sh -b sh-fallback,sh-port",
            "-a -f 7 -r 10.9.1.13:0 -i -w 1 --tun-type ipip",
            "-A -u [2001:db8::1]:443 -s rr -o",
            "-a -u [2001:db8::1]:443 -r [2001:db8::11]:443 -g -w 1",
        ])
    );

    // Reading back gives exactly what was written.
    let mut specs: Vec<ServiceSpec> = ipvs
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.spec)
        .collect();
    specs.sort_by_key(|s| s.key);
    let mut want = vec![web.clone(), mark.clone(), v6.clone()];
    want.sort_by_key(|s| s.key);
    assert_eq!(specs, want);
    let dests: Vec<DestSpec> = ipvs
        .dests(&web.key)
        .unwrap()
        .into_iter()
        .map(|d| d.spec)
        .collect();
    assert_eq!(dests, vec![nat.clone()]);
    assert_eq!(ipvs.dests(&mark.key).unwrap()[0].spec, tun);

    // Edits change only what they name.
    let web_rr = ServiceSpec {
        scheduler: "rr".into(),
        timeout: 60,
        ..web.clone()
    };
    ipvs.update_service(&web_rr).expect("update service");
    ipvs.update_dest(
        &web.key,
        &DestSpec {
            weight: 5,
            ..nat.clone()
        },
    )
    .expect("update dest");
    ipvs.delete_dest(&v6.key, &dr6).expect("delete dest");
    let save = ipvsadm_save();
    assert!(
        save.contains(&"-A -t 10.9.0.1:80 -s rr -p 60 -M 255.255.255.0".to_string()),
        "{save:?}"
    );
    assert!(
        save.contains(&"-a -t 10.9.0.1:80 -r 10.9.1.11:8080 -m -w 5".to_string()),
        "{save:?}"
    );
    assert!(!save.iter().any(|l| l.contains("2001:db8::11")), "{save:?}");
    assert!(
        save.contains(&"-a -f 7 -r 10.9.1.13:0 -i -w 1 --tun-type ipip".to_string()),
        "{save:?}"
    );

    // Kernel errors carry operation, object and errno.
    match ipvs.add_service(&web) {
        Err(IpvsError::Kernel { op, object, errno }) => {
            assert_eq!(
                (op, object.as_str(), errno),
                ("add service", "TCP 10.9.0.1:80", 17)
            );
        }
        other => panic!("duplicate add: {other:?}"),
    }
    let err = ipvs
        .delete_dest(&web.key, &tun)
        .expect_err("deleting a missing destination");
    assert!(
        err.to_string()
            .starts_with("delete destination TCP 10.9.0.1:80 -> 10.9.1.13:0: "),
        "{err}"
    );

    for s in [&web, &mark, &v6] {
        ipvs.delete_service(&s.key).expect("delete service");
    }
    assert!(ipvsadm_save().is_empty());
}

/// Reads go one request at a time on a socket the client keeps: a dump
/// larger than one datagram comes back whole, a service the kernel lacks
/// reads as none, and a refused request leaves nothing behind that the
/// next read would take for its own answer.
#[test]
fn reads_come_back_whole_and_each_answers_its_own_request() {
    if !super::in_vm() {
        return;
    }
    let ipvs = emptied();
    let big = ServiceSpec {
        key: ServiceKey::Endpoint {
            addr: "10.9.2.1".parse().unwrap(),
            port: 80,
            protocol: IPPROTO_TCP,
        },
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: ServiceSpec::full_netmask(AF_INET),
    };
    ipvs.add_service(&big).expect("add service");
    // 1,000 destinations: with their counters, several datagrams of a dump.
    let dests: Vec<DestSpec> = (0..1000u32)
        .map(|i| DestSpec {
            addr: std::net::Ipv4Addr::from(0x0a0a_0000 + i).into(),
            port: 80,
            forward: Forward::Route,
            weight: 1 + i % 7,
            upper_threshold: 0,
            lower_threshold: 0,
        })
        .collect();
    let added = ipvs.apply_all(
        dests
            .iter()
            .map(|d| lb_director::ipvs::Change::add_dest(&big.key, d))
            .collect(),
    );
    assert!(
        added.iter().all(|r| r.is_ok()),
        "{:?}",
        added.iter().find(|r| r.is_err())
    );
    let sorted_specs = |mut v: Vec<DestSpec>| {
        v.sort_by_key(|d| d.key());
        v
    };
    let read = ipvs.dests(&big.key).expect("dump destinations");
    assert_eq!(
        sorted_specs(read.into_iter().map(|d| d.spec).collect()),
        sorted_specs(dests.clone())
    );
    assert_eq!(ipvsadm_save().len(), 1001, "ipvsadm reads the same table");

    let missing = ServiceKey::Endpoint {
        addr: "10.9.2.2".parse().unwrap(),
        port: 80,
        protocol: IPPROTO_TCP,
    };
    assert!(ipvs
        .service(&missing)
        .expect("get a missing service")
        .is_none());
    // Refused, then read: each answer is its request's.
    for _ in 0..3 {
        let refused = ipvs.add_service(&big).expect_err("a duplicate service");
        assert!(
            matches!(refused, IpvsError::Kernel { errno: 17, .. }),
            "{refused:?}"
        );
        let got = ipvs.service(&big.key).expect("get").expect("the service");
        assert_eq!(got.spec, big);
        assert_eq!(ipvs.dests(&big.key).expect("dump").len(), 1000);
    }
    ipvs.delete_service(&big.key).expect("delete service");
    assert!(ipvsadm_save().is_empty());
}
