//! The VIP fence on the host's kernel, at the default lease: a director
//! namespace keeps the VIP address, and only the fence's element timeouts
//! decide whether a client in another namespace gets ARP replies and
//! answers for it — as when the agent is stalled and cannot take the
//! address off.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_director::fence::Fence;
use lb_testkit::netns::{can_create_namespaces, Topology};
use lb_testkit::require;

const VIP: &str = "10.81.0.100";

/// One ARP request from the client (`-f`: done at the first reply);
/// whether the VIP's owner answered.
fn arp_answered(t: &Topology) -> anyhow::Result<bool> {
    let out = t.exec(
        "client",
        &[
            "busybox", "arping", "-f", "-c", "1", "-w", "1", "-I", "eth0", VIP,
        ],
    )?;
    Ok(out.status.success())
}

/// Asks every 20 ms until `until`; the instants of answered requests.
fn answers_until(t: &Topology, until: Instant) -> anyhow::Result<Vec<Instant>> {
    let mut seen = Vec::new();
    while Instant::now() < until {
        let asked = Instant::now();
        if arp_answered(t)? {
            seen.push(asked);
        }
        std::thread::sleep(Duration::from_millis(20).saturating_sub(asked.elapsed()));
    }
    Ok(seen)
}

#[test]
fn a_vip_whose_lease_is_not_renewed_stops_answering_at_the_lease_end() -> anyhow::Result<()> {
    if !require(
        can_create_namespaces()
            && lb_testkit::which("nft").is_some()
            && lb_testkit::which("busybox").is_some(),
        "root, network namespaces, nft and busybox (arping)",
    ) {
        return Ok(());
    }
    let mut t = Topology::new();
    t.add_ns("client")?;
    t.add_ns("dir")?;
    t.link(
        "client",
        "eth0",
        "10.81.0.1/24",
        "dir",
        "eth0",
        "10.81.0.2/24",
    )?;
    t.sh("dir", &format!("ip addr add {VIP}/32 dev eth0"))?;
    t.http_backend("dir", "dir", &format!("{VIP}:80"))?;
    let mut fence = Fence::new(t.wrapped("dir", "nft")?);
    let vip: IpAddr = VIP.parse()?;
    let guarded = BTreeSet::from([vip]);
    // The default lease: 200 ms, renewed more often than every third of it.
    let lease = Duration::from_millis(200);
    let renewals_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < renewals_end {
        fence.set(&guarded, &BTreeMap::from([(vip, lease)]))?;
        assert!(arp_answered(&t)?, "a held VIP answers ARP");
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(
        t.http_get("client", &format!("http://{VIP}/"), 2)?,
        ["dir", "dir"],
        "a held VIP is served"
    );
    // The agent stalls: the last renewal, then nothing.
    fence.set(&guarded, &BTreeMap::from([(vip, lease)]))?;
    let last_renewal = Instant::now();
    let lease_end = last_renewal + lease;
    let answers = answers_until(&t, lease_end + Duration::from_millis(1500))?;
    let late: Vec<Duration> = answers
        .iter()
        .filter(|a| **a > lease_end)
        .map(|a| a.duration_since(lease_end))
        .collect();
    let last = answers.last().map(|a| a.duration_since(last_renewal));
    println!(
        "fence: {} ARP answers after the last renewal, the last {last:?} after it (lease 200 ms); after the lease end: {late:?}",
        answers.len()
    );
    assert!(
        !answers.is_empty(),
        "the VIP answered nothing before its lease end"
    );
    assert!(
        late.is_empty(),
        "answered ARP after the lease end: {late:?}"
    );
    // Inbound traffic is dropped too, even from a client that still has
    // the MAC cached.
    let mac = t.sh("dir", "cat /sys/class/net/eth0/address")?;
    t.sh(
        "client",
        &format!("ip neigh replace {VIP} lladdr {} dev eth0", mac.trim()),
    )?;
    let got = t.http_get("client", &format!("http://{VIP}/"), 1)?;
    assert!(
        got.iter().all(|g| g.starts_with("ERR")),
        "served after the lease end: {got:?}"
    );
    // A renewal lets it answer again; removing the fence leaves the host as
    // it was.
    fence.set(&guarded, &BTreeMap::from([(vip, lease)]))?;
    assert_eq!(t.http_get("client", &format!("http://{VIP}/"), 1)?, ["dir"]);
    fence.remove()?;
    let tables = t.sh("dir", "nft list tables")?;
    assert!(!tables.contains("lbfabric_fence"), "{tables}");
    Ok(())
}
