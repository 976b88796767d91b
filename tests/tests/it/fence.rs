//! The VIP fence on the host's kernel, at the default lease: a director
//! namespace keeps the VIP addresses, and only the fence's slot timeouts
//! decide whether a client in another namespace gets ARP replies and
//! answers for them — as when the agent is stalled and cannot take the
//! addresses off. Two VIPs whose leases end apart sit in two slots: each
//! stops at its own end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_director::fence::Fence;
use lb_testkit::netns::{can_create_namespaces, Topology};
use lb_testkit::require;

const VIP: &str = "10.81.0.100";
/// Held with a longer lease at the last renewal.
const LATER: &str = "10.81.0.101";

/// One ARP request from the client (`-f`: done at the first reply);
/// whether `vip`'s owner answered.
fn arp_answered(t: &Topology, vip: &str) -> anyhow::Result<bool> {
    let out = t.exec(
        "client",
        &[
            "busybox", "arping", "-f", "-c", "1", "-w", "1", "-I", "eth0", vip,
        ],
    )?;
    Ok(out.status.success())
}

/// Asks every 20 ms until `until`; the instants of answered requests.
fn answers_until(t: &Topology, until: Instant) -> anyhow::Result<Vec<Instant>> {
    let mut seen = Vec::new();
    while Instant::now() < until {
        let asked = Instant::now();
        if arp_answered(t, VIP)? {
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
    t.sh(
        "dir",
        &format!("ip addr add {VIP}/32 dev eth0 && ip addr add {LATER}/32 dev eth0"),
    )?;
    t.http_backend("dir", "dir", &format!("{VIP}:80"))?;
    let (vip, later): (IpAddr, IpAddr) = (VIP.parse()?, LATER.parse()?);
    // An IPv6 VIP too: its keys (address and raw NA target) must read back
    // as nft writes them.
    let v6: IpAddr = "2001:db8:81::100".parse()?;
    let guarded = BTreeSet::from([vip, later, v6]);
    // The default lease: 200 ms, renewed more often than every third of it.
    let lease = Duration::from_millis(200);
    let both = |left_later| BTreeMap::from([(vip, lease), (later, left_later), (v6, lease)]);
    // The fence writes its sets over a netlink socket opened in the
    // namespace of the thread that first writes: the director's.
    let (nft, ns) = (t.wrapped("dir", "nft")?, t.ns("dir"));
    let start = |guarded: BTreeSet<IpAddr>, held: BTreeMap<IpAddr, Duration>| {
        let (nft, ns) = (nft.clone(), ns.clone());
        std::thread::spawn(move || -> anyhow::Result<Fence> {
            lb_testkit::netns::enter(&ns)?;
            let mut fence = Fence::new(nft);
            fence.set(&guarded, &held)?;
            Ok(fence)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the fence's thread panicked"))?
    };
    let mut fence = start(guarded.clone(), both(lease))?;
    // A restarted agent's fence continues the tables it finds (made afresh,
    // they would drop the VIPs until their maps are written): the same
    // tables, by their kernel handles.
    let handles = || t.sh("dir", "nft -a list tables");
    let before = handles()?;
    start(guarded.clone(), both(lease))?;
    assert_eq!(handles()?, before, "the tables were made again");
    let renewals_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < renewals_end {
        fence.set(&guarded, &both(lease))?;
        assert!(arp_answered(&t, VIP)?, "a held VIP answers ARP");
        std::thread::sleep(Duration::from_millis(40));
    }
    let rules = t.sh("dir", "nft list table arp lbfabric_fence")?;
    assert!(
        rules.contains("10.81.0.100 : goto slot0") && rules.contains("10.81.0.101 : goto slot0"),
        "leases that end together share a slot: {rules}"
    );
    let rules = t.sh("dir", "nft list table inet lbfabric_fence")?;
    for held in [
        "2001:db8:81::100 : goto slot0",
        "0x20010db8008100000000000000000100 : goto slot0",
        "ipv4 timeout 200ms",
    ] {
        assert!(rules.contains(held), "{held} in {rules}");
    }
    assert_eq!(
        t.http_get("client", &format!("http://{VIP}/"), 2)?,
        ["dir", "dir"],
        "a held VIP is served"
    );
    // The agent stalls: the last renewal, then nothing. LATER's lease
    // (granted later, say) ends after the observation.
    fence.set(&guarded, &both(Duration::from_secs(3)))?;
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
    assert!(
        arp_answered(&t, LATER)?,
        "a VIP whose lease ends later still answers"
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
    fence.set(&guarded, &both(lease))?;
    assert_eq!(t.http_get("client", &format!("http://{VIP}/"), 1)?, ["dir"]);
    fence.remove()?;
    let tables = t.sh("dir", "nft list tables")?;
    assert!(!tables.contains("lbfabric_fence"), "{tables}");
    Ok(())
}
