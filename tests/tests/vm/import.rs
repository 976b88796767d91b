//! `lbctl import ipvsadm` on `ipvsadm -Sn` output captured from a real
//! kernel table with every scheduler the kernel ships and every forwarding
//! method; `lbctl export ipvsadm` writes the same lines back.

use lb_proto::model::{ForwardingMode, Scheduler, Service};
use lbctl::import::{self, Format};

use super::{in_vm, ipvsadm};

/// Every IPVS scheduler module Debian 12's kernel (6.1) has; `twos` came in 6.2.
const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf",
];

/// The table: one service per scheduler (methods taking turns), plus UDP
/// one-packet, SCTP, IPv6, fwmark (v4 and v6), persistence with a netmask
/// and scheduler flags. (Thresholds are set too; `ipvsadm -Sn` leaves them
/// out, so the import has none.)
fn table() -> Vec<String> {
    let methods = ["-m", "-g", "-i"];
    let mut cmds = Vec::new();
    for (i, sched) in SCHEDULERS.iter().enumerate() {
        let vip = format!("10.20.0.{}:80", i + 1);
        cmds.push(format!("-A -t {vip} -s {sched}"));
        let method = methods[i % 3];
        // DR and TUN keep the VIP's port; NAT may change it.
        let port = if method == "-m" { 8080 } else { 80 };
        for rs in 1..=2 {
            cmds.push(format!(
                "-a -t {vip} -r 192.168.20.{}:{port} {method} -w {}",
                10 * (i + 1) + rs,
                rs
            ));
        }
    }
    cmds.extend(
        [
            "-A -t 10.20.1.1:443 -s sh -b sh-fallback,sh-port -p 600 -M 255.255.255.0",
            "-a -t 10.20.1.1:443 -r 192.168.21.1:443 -g -w 3 -x 100 -y 50",
            "-A -u 10.20.1.2:53 -s rr -o",
            "-a -u 10.20.1.2:53 -r 192.168.21.2:53 -g -w 1",
            "--add-service --sctp-service 10.20.1.3:5060 --scheduler wlc --persistent",
            "-a --sctp-service 10.20.1.3:5060 -r 192.168.21.3:5060 -m -w 2",
            "-A -t [2001:db8:20::1]:80 -s mh -b mh-port",
            "-a -t [2001:db8:20::1]:80 -r [2001:db8:21::1]:80 -i -w 4",
            "-A -f 7 -s wrr -p 60",
            "-a -f 7 -r 192.168.21.7:0 -g -w 5",
            "-A -f 8 -6 -s lc",
            "-a -f 8 -6 -r [2001:db8:21::8]:0 -m -w 1",
        ]
        .map(String::from),
    );
    cmds
}

fn save() -> String {
    let out = std::process::Command::new("ipvsadm")
        .arg("-Sn")
        .output()
        .expect("ipvsadm");
    assert!(out.status.success(), "ipvsadm -Sn failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    v.sort_unstable();
    v
}

#[test]
fn ipvsadm_save_of_every_scheduler_and_method_imports_exactly() {
    if !in_vm() {
        return;
    }
    ipvsadm("-C");
    for cmd in table() {
        ipvsadm(&cmd);
    }
    let saved = save();
    println!("ipvsadm -Sn:\n{saved}");
    if let Ok(path) = std::env::var("LB_SAVE_IPVSADM_CAPTURE") {
        std::fs::write(&path, &saved).expect("writing the capture");
    }
    ipvsadm("-C");

    let imported = import::parse(Format::Ipvsadm, "ipvsadm-save", &saved).expect("parses");
    assert!(imported.notes.is_empty(), "{:#?}", imported.notes);
    let services: Vec<Service> = imported.validate().expect("valid");
    assert_eq!(services.len(), SCHEDULERS.len() + 6);

    // Each scheduler and method where the table put it.
    for (i, sched) in SCHEDULERS.iter().enumerate() {
        let name = format!("vs-10.20.0.{}-80-tcp", i + 1);
        let s = services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(s.scheduler, sched.parse::<Scheduler>().unwrap(), "{name}");
        let mode = [ForwardingMode::Nat, ForwardingMode::Dr, ForwardingMode::Tun][i % 3];
        assert_eq!(s.mode, mode, "{name}");
        let weights: Vec<u16> = s.realservers.iter().map(|r| r.weight).collect();
        assert_eq!(weights.iter().sum::<u16>(), 3, "{name}: {weights:?}");
    }

    // Written back, it is the kernel's own save, line for line.
    let exported = lbctl::export::ipvsadm(&services);
    assert!(exported.notes.is_empty(), "{:#?}", exported.notes);
    assert_eq!(sorted_lines(&exported.text), sorted_lines(&saved));
}
