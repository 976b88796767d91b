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
