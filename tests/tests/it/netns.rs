//! The topology library on the host: namespaces, a bridge, veth links, HTTP
//! backends, and cleanup even when a test fails.

use std::process::Command;

use lb_testkit::netns::{can_create_namespaces, Topology};
use lb_testkit::require;

fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn hosts_on_a_bridge_reach_each_others_backends_and_vanish_after() -> anyhow::Result<()> {
    if !require(can_create_namespaces(), "root and network namespaces") {
        return Ok(());
    }
    let prefix;
    {
        let mut t = Topology::new();
        prefix = t.ns("");
        t.add_bridge("lan")?;
        for (host, ip) in [
            ("client", "10.77.0.2/24"),
            ("rs1", "10.77.0.11/24"),
            ("rs2", "10.77.0.12/24"),
        ] {
            t.add_ns(host)?;
            t.plug(host, "lan", "eth0", ip)?;
        }
        t.add_ns("far")?;
        t.link(
            "client",
            "eth1",
            "10.78.0.1/24",
            "far",
            "eth0",
            "10.78.0.2/24",
        )?;
        t.http_backend("rs1", "rs1", "0.0.0.0:80")?;
        t.http_backend("rs2", "rs2", "10.77.0.12:8080")?;
        t.http_backend("far", "far", "0.0.0.0:80")?;

        assert_eq!(
            t.http_get("client", "http://10.77.0.11/", 2)?,
            ["rs1", "rs1"]
        );
        assert_eq!(t.http_get("client", "http://10.77.0.12:8080/", 1)?, ["rs2"]);
        assert_eq!(t.http_get("client", "http://10.78.0.2/", 1)?, ["far"]);
        // Not routed: rs1 has no path to the far network.
        let lost = t.http_get("rs1", "http://10.78.0.2/", 1)?;
        assert!(lost[0].starts_with("ERR"), "{lost:?}");
        assert!(namespaces().iter().any(|n| n.starts_with(&prefix)));
    }
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    Ok(())
}

#[test]
fn cleanup_happens_when_a_test_panics() {
    if !require(can_create_namespaces(), "root and network namespaces") {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let mut t = Topology::new();
        *prefix.lock().unwrap() = t.ns("");
        t.add_ns("a").unwrap();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let prefix = prefix.lock().unwrap().clone();
    assert!(
        !namespaces().iter().any(|n| n.starts_with(&prefix)),
        "namespace survived a panic"
    );
}

/// A fwmark service that names its traffic gets it marked: the director's
/// `inet lbfabric` table marks packets to VIP tcp/443 (and nothing else), is
/// repaired after a hand edit, and is removed with the last such service.
#[test]
fn fwmark_rules_mark_the_named_traffic_and_are_repaired() -> anyhow::Result<()> {
    use lb_director::marks::{MarkChange, Marks};
    use lb_proto::model::Service;
    use lb_proto::pb;

    if !require(
        can_create_namespaces() && lb_testkit::which("nft").is_some(),
        "root, network namespaces and nft",
    ) {
        return Ok(());
    }
    let mut t = Topology::new();
    t.add_ns("client")?;
    t.add_ns("dir")?;
    t.link(
        "client",
        "eth0",
        "10.79.0.1/24",
        "dir",
        "eth0",
        "10.79.0.2/24",
    )?;
    t.http_backend("dir", "dir", "0.0.0.0:443")?;
    t.http_backend("dir", "dir", "0.0.0.0:8080")?;
    // Counts, after the mangle stage, the packets that arrive marked.
    t.sh(
        "dir",
        "nft add table inet probe && \
         nft add chain inet probe pre '{ type filter hook prerouting priority 0; }' && \
         nft add rule inet probe pre tcp dport 443 meta mark 0x50 counter && \
         nft add rule inet probe pre tcp dport 8080 meta mark 0x50 counter",
    )?;
    let shop = [Service::try_from(pb::Service {
        name: "shop".into(),
        virtual_address: Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark: 0x50,
            address: "10.79.0.2".into(),
            ports: vec![443, 80],
            ..Default::default()
        })),
        ..Default::default()
    })?];
    let mut marks = Marks::new(t.wrapped("dir", "nft")?);
    assert_eq!(marks.converge(&shop)?, MarkChange::Replaced);
    assert_eq!(marks.converge(&shop)?, MarkChange::None, "in sync");
    let listed = t.sh("dir", "nft list table inet lbfabric")?;
    assert!(
        listed.contains("ip daddr 10.79.0.2 tcp dport { 80, 443 } meta mark set 0x00000050"),
        "{listed}"
    );

    assert_eq!(
        t.http_get("client", "http://10.79.0.2:443/", 2)?,
        ["dir", "dir"]
    );
    assert_eq!(
        t.http_get("client", "http://10.79.0.2:8080/", 2)?,
        ["dir", "dir"]
    );
    let probe = t.sh("dir", "nft list chain inet probe pre")?;
    let counts: Vec<u64> = probe
        .lines()
        .filter_map(|l| l.split("packets ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    println!(
        "marked packets to 443: {}, to 8080: {}",
        counts[0], counts[1]
    );
    assert!(counts[0] >= 4, "requests to 443 were not marked: {probe}");
    assert_eq!(counts[1], 0, "requests to 8080 were marked: {probe}");

    // A hand edit is repaired on the next round.
    t.sh("dir", "nft flush chain inet lbfabric prerouting")?;
    assert_eq!(marks.converge(&shop)?, MarkChange::Replaced);
    let listed = t.sh("dir", "nft list table inet lbfabric")?;
    assert!(listed.contains("meta mark set 0x00000050"), "{listed}");

    // The last marked service gone: the table goes too.
    assert_eq!(marks.converge::<Service>(&[])?, MarkChange::Removed);
    let gone = t.exec("dir", &["nft", "list", "table", "inet", "lbfabric"])?;
    assert!(!gone.status.success(), "table left behind");
    assert_eq!(marks.converge::<Service>(&[])?, MarkChange::None);
    Ok(())
}
