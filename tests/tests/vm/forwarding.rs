//! The three forwarding modes with real traffic: client and realserver
//! namespaces, a director namespace programmed with ipvsadm (the fixture for
//! the test bed; the director agent replaces it), requests to the VIP answered
//! alternately by both backends.

use lb_testkit::netns::Topology;

const VIP: &str = "10.0.3.100";

/// Sends `n` requests to the VIP and checks round-robin alternation.
fn assert_alternates(t: &Topology, url: &str) {
    let answers = t.http_get("client", url, 4).expect("client requests");
    println!("{url} -> {answers:?}");
    assert!(
        answers.iter().all(|a| a == "rs1" || a == "rs2"),
        "{answers:?}"
    );
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "rr did not alternate: {answers:?}");
    }
}

/// client, director and two realservers on one LAN; the director holds the VIP.
fn lan_with_director(t: &mut Topology) {
    t.add_bridge("lan").unwrap();
    for (host, ip) in [
        ("client", "10.0.3.2/24"),
        ("dir", "10.0.3.1/24"),
        ("rs1", "10.0.3.11/24"),
        ("rs2", "10.0.3.12/24"),
    ] {
        t.add_ns(host).unwrap();
        t.plug(host, "lan", "eth0", ip).unwrap();
    }
    t.ip(Some("dir"), &format!("addr add {VIP}/32 dev eth0"));
}

/// VIP on the realserver's `dev`, and the ARP settings that keep it from answering for the VIP.
fn realserver_holds_vip(t: &Topology, rs: &str, dev: &str) {
    t.sh(
        rs,
        &format!(
            "ip addr add {VIP}/32 dev {dev}
             sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1
             sysctl -qw net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2"
        ),
    )
    .unwrap();
}

/// The director schedules the VIP round-robin to rs1 and rs2 with `forward` (-g, -i).
fn director_balances(t: &Topology, forward: &str) {
    t.sh(
        "dir",
        &format!(
            "ipvsadm -A -t {VIP}:80 -s rr
             ipvsadm -a -t {VIP}:80 -r 10.0.3.11:80 {forward}
             ipvsadm -a -t {VIP}:80 -r 10.0.3.12:80 {forward}"
        ),
    )
    .unwrap();
}

#[test]
fn nat_balances_across_realservers() {
    if !super::in_vm() {
        return;
    }
    let mut t = Topology::new();
    // client -- dir (VIP on its client side) -- backend LAN with rs1, rs2 routed via dir
    for host in ["client", "dir"] {
        t.add_ns(host).unwrap();
    }
    t.link(
        "client",
        "eth0",
        "10.0.1.2/24",
        "dir",
        "eth0",
        "10.0.1.1/24",
    )
    .unwrap();
    t.add_bridge("back").unwrap();
    t.plug("dir", "back", "eth1", "10.0.2.1/24").unwrap();
    for (rs, ip) in [("rs1", "10.0.2.11/24"), ("rs2", "10.0.2.12/24")] {
        t.add_ns(rs).unwrap();
        t.plug(rs, "back", "eth0", ip).unwrap();
        t.ip(Some(rs), "route add default via 10.0.2.1");
        t.http_backend(rs, rs, "0.0.0.0:8080").unwrap();
    }
    t.sh(
        "dir",
        "ip addr add 10.0.1.100/32 dev eth0
         sysctl -qw net.ipv4.ip_forward=1
         ipvsadm -A -t 10.0.1.100:80 -s rr
         ipvsadm -a -t 10.0.1.100:80 -r 10.0.2.11:8080 -m
         ipvsadm -a -t 10.0.1.100:80 -r 10.0.2.12:8080 -m",
    )
    .unwrap();
    assert_alternates(&t, "http://10.0.1.100/");
}

#[test]
fn dr_balances_with_vip_on_realserver_loopback() {
    if !super::in_vm() {
        return;
    }
    let mut t = Topology::new();
    lan_with_director(&mut t);
    for rs in ["rs1", "rs2"] {
        realserver_holds_vip(&t, rs, "lo");
        t.http_backend(rs, rs, "0.0.0.0:80").unwrap();
    }
    director_balances(&t, "-g");
    assert_alternates(&t, &format!("http://{VIP}/"));
}

#[test]
fn tun_balances_with_vip_on_realserver_tunl0() {
    if !super::in_vm() {
        return;
    }
    // Loading ipip gives every network namespace a tunl0.
    let status = std::process::Command::new("modprobe")
        .arg("ipip")
        .status()
        .expect("modprobe");
    assert!(status.success(), "modprobe ipip");
    let mut t = Topology::new();
    lan_with_director(&mut t);
    for rs in ["rs1", "rs2"] {
        t.sh(
            rs,
            "ip link set tunl0 up
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.tunl0.rp_filter=0",
        )
        .unwrap();
        realserver_holds_vip(&t, rs, "tunl0");
        t.http_backend(rs, rs, "0.0.0.0:80").unwrap();
    }
    director_balances(&t, "-i");
    assert_alternates(&t, &format!("http://{VIP}/"));
}
