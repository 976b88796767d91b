//! lb-hostnet against a real kernel, in a network namespace of the test's
//! own: the test binary runs itself again inside the namespace (`ip netns
//! exec`) to make the changes, and the parent checks them with `ip`.

use std::process::Command;

use lb_hostnet::announce::announce;
use lb_hostnet::{sysctl, Address, NetError, Rtnl};
use lb_testkit::netns::{can_create_namespaces, Topology};
use lb_testkit::require;

/// Set in the child run inside the namespace.
const CHILD: &str = "LB_HOSTNET_TEST_CHILD";

fn rerun_inside(t: &Topology, ns: &str, test: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(ns)])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .expect("re-running the test inside the namespace");
    assert!(
        out.status.success(),
        "inside the namespace:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn child_changes() {
    let rtnl = Rtnl::open().unwrap();
    let idx = rtnl.link_index("a0").unwrap();
    rtnl.set_up(idx).unwrap();
    let v4 = Address {
        ifindex: idx,
        addr: "10.55.0.1".parse().unwrap(),
        prefix_len: 32,
    };
    let v6 = Address {
        ifindex: idx,
        addr: "2001:db8::55".parse().unwrap(),
        prefix_len: 128,
    };
    let gone = Address {
        ifindex: idx,
        addr: "10.55.0.2".parse().unwrap(),
        prefix_len: 32,
    };
    assert!(rtnl.add_address(&v4).unwrap(), "first add");
    assert!(!rtnl.add_address(&v4).unwrap(), "second add is a no-op");
    assert!(rtnl.add_address(&v6).unwrap());
    assert!(rtnl.add_address(&gone).unwrap());
    assert!(rtnl.del_address(&gone).unwrap());
    assert!(
        !rtnl.del_address(&gone).unwrap(),
        "deleting twice is a no-op"
    );
    let have = rtnl.addresses(idx).unwrap();
    assert!(
        have.contains(&v4) && have.contains(&v6) && !have.contains(&gone),
        "{have:?}"
    );
    // Many at once (more than one flight of requests), with lifetimes; a
    // bad one in the middle fails alone.
    let many: Vec<(Address, Option<std::time::Duration>)> = (0..150u32)
        .map(|i| {
            let a = Address {
                ifindex: idx,
                addr: std::net::Ipv4Addr::from(0x0a38_0000 + i).into(),
                prefix_len: if i == 70 { 33 } else { 32 },
            };
            (a, Some(std::time::Duration::from_secs(100)))
        })
        .collect();
    let results = rtnl.put_addresses(&many);
    assert_eq!(results.len(), 150);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 70, "address {i}: {r:?}");
    }
    let have = rtnl.addresses(idx).unwrap();
    let put = many.iter().filter(|(a, _)| have.contains(a)).count();
    assert_eq!(put, 149, "{have:?}");
    match rtnl.link_index("nope0") {
        Err(NetError::NoSuchLink(name)) => assert_eq!(name, "nope0"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sysctl::write("net.ipv4.conf.all.arp_ignore", "1").unwrap(),
        "0"
    );
    assert_eq!(
        sysctl::write(&sysctl::ipv4_conf("a0", "arp_announce"), "2").unwrap(),
        "0"
    );
    assert_eq!(sysctl::read("net.ipv4.conf.all.arp_ignore").unwrap(), "1");
    assert!(matches!(
        sysctl::read("net.ipv4.conf.nope0.arp_ignore"),
        Err(NetError::Sysctl { .. })
    ));
}

#[test]
fn addresses_links_and_sysctls_in_a_namespace() {
    if std::env::var_os(CHILD).is_some() {
        return child_changes();
    }
    if !require(can_create_namespaces(), "root and network namespaces") {
        return;
    }
    let mut t = Topology::new();
    t.add_ns("h").unwrap();
    t.sh("h", "ip link add a0 type veth peer name b0").unwrap();
    rerun_inside(&t, "h", "addresses_links_and_sysctls_in_a_namespace");

    let shown = t
        .sh("h", "ip -br addr show dev a0; ip -br link show a0")
        .unwrap();
    assert!(
        shown.contains("10.55.0.1/32") && shown.contains("2001:db8::55/128"),
        "{shown}"
    );
    assert!(!shown.contains("10.55.0.2"), "{shown}");
    // The lifetimes put_addresses gave (100 s, a few gone by now).
    let timed = t.sh("h", "ip -o addr show dev a0 to 10.56.0.0/16").unwrap();
    assert_eq!(timed.lines().count(), 149, "{timed}");
    assert!(
        timed
            .lines()
            .all(|l| l.contains("valid_lft 9") || l.contains("valid_lft 100sec")),
        "{timed}"
    );
    let link = t.sh("h", "ip -o link show a0").unwrap();
    let flags: Vec<&str> = link
        .split(['<', '>'])
        .nth(1)
        .unwrap_or("")
        .split(',')
        .collect();
    assert!(flags.contains(&"UP"), "a0 was not set up: {link}");
    let sys = t
        .sh(
            "h",
            "cat /proc/sys/net/ipv4/conf/all/arp_ignore /proc/sys/net/ipv4/conf/a0/arp_announce",
        )
        .unwrap();
    assert_eq!(sys.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
}

fn child_announces() {
    let rtnl = Rtnl::open().unwrap();
    let link = rtnl.link("a1").unwrap();
    let mac = link.mac.expect("a veth has a MAC");
    announce(link.index, mac, "10.56.0.100".parse().unwrap()).unwrap();
    announce(link.index, mac, "2001:db8:56::100".parse().unwrap()).unwrap();
    assert_eq!(rtnl.link("lo").unwrap().mac, None, "loopback has no MAC");
}

/// The neighbour entry `ns` has for `ip` on `dev`, as `ip neigh` prints it.
fn neighbour(t: &Topology, ns: &str, ip: &str, dev: &str) -> String {
    t.sh(ns, &format!("ip neigh show {ip} dev {dev}"))
        .unwrap()
        .trim()
        .to_string()
}

/// A neighbour that cached another MAC for the VIP switches to the
/// announcer's MAC on one gratuitous ARP / unsolicited NA.
#[test]
fn announcements_move_the_neighbours_entry() {
    if std::env::var_os(CHILD).is_some() {
        return child_announces();
    }
    if !require(can_create_namespaces(), "root and network namespaces") {
        return;
    }
    let mut t = Topology::new();
    t.add_ns("a").unwrap();
    t.add_ns("b").unwrap();
    t.link("a", "a1", "10.56.0.1/24", "b", "b1", "10.56.0.2/24")
        .unwrap();
    t.sh("a", "ip addr add 2001:db8:56::1/64 dev a1 nodad")
        .unwrap();
    t.sh("b", "ip addr add 2001:db8:56::2/64 dev b1 nodad")
        .unwrap();
    let old = "02:00:00:00:00:99";
    for ip in ["10.56.0.100", "2001:db8:56::100"] {
        t.sh(
            "b",
            &format!("ip neigh replace {ip} lladdr {old} dev b1 nud stale"),
        )
        .unwrap();
        assert!(neighbour(&t, "b", ip, "b1").contains(old));
    }
    let mac = t
        .sh("a", "cat /sys/class/net/a1/address")
        .unwrap()
        .trim()
        .to_string();
    rerun_inside(&t, "a", "announcements_move_the_neighbours_entry");
    for ip in ["10.56.0.100", "2001:db8:56::100"] {
        let entry = neighbour(&t, "b", ip, "b1");
        assert!(
            entry.contains(&mac),
            "{ip}: b still has `{entry}`, want the announcer's {mac}"
        );
    }
}
