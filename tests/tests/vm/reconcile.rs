//! Reconciliation against the real kernel: the desired table is created,
//! hand edits with ipvsadm (-D, -d, -e) are repaired, a foreign service added
//! by hand is reported and left alone, and nothing needs doing once in sync.

use std::collections::BTreeSet;

use super::{ipvsadm, ipvsadm_save, sorted};
use lb_director::desired;
use lb_director::ipvs::Ipvs;
use lb_director::reconcile::{apply, observe, plan};
use lb_proto::model::Service;
use lb_proto::pb;

fn services() -> Vec<Service> {
    let web = pb::Service {
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
            netmask: String::new(),
        }),
        realservers: vec![
            pb::RealServer {
                address: "192.168.10.11".into(),
                port: 8080,
                weight: Some(2),
                ..Default::default()
            },
            pb::RealServer {
                address: "192.168.10.12".into(),
                port: 8080,
                admin_state: "draining".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let shop = pb::Service {
        name: "shop".into(),
        virtual_address: Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark: 80,
            ..Default::default()
        })),
        scheduler: "sh".into(),
        scheduler_flags: vec!["sh-port".into()],
        mode: "dr".into(),
        realservers: vec![pb::RealServer {
            address: "192.168.20.11".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![
        Service::try_from(web).unwrap(),
        Service::try_from(shop).unwrap(),
    ]
}

const WANT: &[&str] = &[
    "-A -t 10.10.1.30:80 -s wlc -p 30",
    "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 2",
    "-a -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 0",
    "-A -f 80 -s sh -b sh-port",
    "-a -f 80 -r 192.168.20.11:0 -g -w 1",
];

#[test]
fn hand_edits_are_repaired_and_foreign_services_left_alone() {
    if !super::in_vm() {
        return;
    }
    let ipvs = Ipvs::open().expect("open IPVS");
    let svcs = services();
    let want = desired::table(&svcs);
    let managed: BTreeSet<_> = want.keys().copied().collect();
    for s in ipvs.services().unwrap() {
        ipvs.delete_service(&s.spec.key).unwrap();
    }

    let first = plan(&want, &observe(&ipvs).unwrap(), &BTreeSet::new());
    assert!(apply(&ipvs, &first).is_empty());
    assert_eq!(ipvsadm_save(), sorted(WANT));

    // An operator's hand edits, and a service lbfabric does not own.
    ipvsadm("-D -t 10.10.1.30:80");
    ipvsadm("-e -f 80 -r 192.168.20.11 -g -w 9");
    ipvsadm("-A -t 10.99.0.1:80 -s rr");
    let repair = plan(&want, &observe(&ipvs).unwrap(), &managed);
    let ops: Vec<String> = repair.ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        ops,
        [
            "add service TCP 10.10.1.30:80",
            "add destination TCP 10.10.1.30:80 -> 192.168.10.11:8080",
            "add destination TCP 10.10.1.30:80 -> 192.168.10.12:8080",
            "update destination FWM 80 -> 192.168.20.11:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    );
    assert_eq!(
        repair
            .foreign
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["TCP 10.99.0.1:80"]
    );
    assert!(apply(&ipvs, &repair).is_empty());
    let mut with_foreign = WANT.to_vec();
    with_foreign.push("-A -t 10.99.0.1:80 -s rr");
    assert_eq!(ipvsadm_save(), sorted(&with_foreign));

    // In sync: nothing to do.
    assert!(plan(&want, &observe(&ipvs).unwrap(), &managed)
        .ops
        .is_empty());

    // A destination removed by hand comes back; a service dropped from the
    // configuration leaves the kernel; the foreign one stays.
    ipvsadm("-d -t 10.10.1.30:80 -r 192.168.10.12:8080");
    let only_web = desired::table(&svcs[..1]);
    let p = plan(&only_web, &observe(&ipvs).unwrap(), &managed);
    assert!(apply(&ipvs, &p).is_empty());
    assert_eq!(
        ipvsadm_save(),
        sorted(&[
            "-A -t 10.10.1.30:80 -s wlc -p 30",
            "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 2",
            "-a -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 0",
            "-A -t 10.99.0.1:80 -s rr",
        ])
    );
    ipvsadm("-C");
}
