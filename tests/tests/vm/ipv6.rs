//! IPv6 through lb-director with real traffic (issue #17): a DR and a NAT
//! service on IPv6 VIPs, requests from the client namespace balanced over
//! their realservers, and the DR VIP moving to the standby when the owner
//! is cut off from the controllers, announced by an unsolicited neighbor
//! advertisement that the client's wire carries.

use std::time::{Duration, Instant};

use lb_testkit::fabric::observe::Capture;
use lb_testkit::fabric::*;
use lb_testkit::{bin, wait_for, words};

const DR6: &str = "fd00:10::100";
const NAT6: &str = "fd00:10::102";
const PORT: u16 = 8086;

/// The hosts' IPv6 addresses, beside their IPv4 ones (no duplicate address
/// detection: the addresses are usable at once). The NAT realservers route
/// back through d1, as for IPv4.
fn add_ipv6(f: &Fabric) -> anyhow::Result<()> {
    for (ns, dev, addr) in [
        ("cl", "eth0", "fd00:10::2"),
        ("d1", "eth0", "fd00:10::11"),
        ("d2", "eth0", "fd00:10::12"),
        ("rs1", "eth0", "fd00:10::21"),
        ("rs2", "eth0", "fd00:10::22"),
        ("d1", "eth1", "fd00:50::11"),
        ("d2", "eth1", "fd00:50::12"),
        ("rs3", "eth0", "fd00:50::23"),
        ("rs4", "eth0", "fd00:50::24"),
    ] {
        f.t.sh(ns, &format!("ip -6 addr add {addr}/64 dev {dev} nodad"))?;
    }
    for rs in ["rs3", "rs4"] {
        f.t.sh(rs, "ip -6 route add default via fd00:50::11")?;
    }
    // DR: the VIP on lo, where Linux does not answer neighbor solicitations
    // for it from eth0 (IPv6 answers only for the receiving interface's
    // addresses: no arp_ignore needed).
    for rs in ["rs1", "rs2"] {
        f.t.sh(rs, &format!("ip -6 addr add {DR6}/128 dev lo nodad"))?;
    }
    Ok(())
}

/// Whether `ns` has `vip` on eth0.
fn holds(f: &Fabric, ns: &str, vip: &str) -> bool {
    f.t.sh(ns, "ip -o -6 addr show dev eth0")
        .is_ok_and(|a| a.contains(&format!("{vip}/128")))
}

fn mac(f: &Fabric, ns: &str) -> anyhow::Result<String> {
    Ok(f.t
        .sh(ns, "cat /sys/class/net/eth0/address")?
        .trim()
        .to_string())
}

#[tokio::test]
async fn ipv6_dr_and_nat_balance_and_the_vip_moves_with_an_unsolicited_na() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::with_controllers(1, &VM_CONTROLLER_TIMERS).await?;
    add_ipv6(&f)?;
    let http = bin("lb-http").to_string_lossy().into_owned();
    let listen = format!("[::]:{PORT}");
    for ns in ["rs1", "rs2", "rs3", "rs4"] {
        f.t.server(ns, &[&http, "serve", ns, &listen], "ready")?;
    }
    f.lbctl(&words(&format!(
        "service create dr6 --vip [{DR6}]:{PORT}/tcp --mode dr --scheduler rr \
         --realserver [fd00:10::21]:{PORT} --realserver [fd00:10::22]:{PORT}"
    )))?;
    f.lbctl(&words(&format!(
        "service create nat6 --vip [{NAT6}]:80/tcp --mode nat --scheduler rr \
         --realserver [fd00:50::23]:{PORT} --realserver [fd00:50::24]:{PORT} --prefer-director d1"
    )))?;
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let within = Duration::from_secs(30);
    for vip in [DR6, NAT6] {
        wait_for(within, &format!("d1 holding {vip}"), || async {
            holds(&f, "d1", vip).then_some(())
        })
        .await?;
    }
    let _d2 = f.start_director("d2", &VM_DIRECTOR_HEARTBEAT)?;
    let want = [
        format!("-A -t [{DR6}]:{PORT} -s rr"),
        format!("-a -t [{DR6}]:{PORT} -r [fd00:10::21]:{PORT} -g -w 1"),
        format!("-A -t [{NAT6}]:80 -s rr"),
        format!("-a -t [{NAT6}]:80 -r [fd00:50::24]:{PORT} -m -w 1"),
    ];
    for ns in ["d1", "d2"] {
        let r = wait_for(within, &format!("{ns}'s IPv6 table"), || async {
            let table = f.ipvs(ns);
            want.iter().all(|l| table.contains(l)).then_some(())
        })
        .await;
        if r.is_err() {
            eprintln!("{ns}: {:#?}", f.ipvs(ns));
            f.failed.set(true);
        }
        r?;
    }

    // Both services balance real requests from the client.
    let dr = f.t.http_get("cl", &format!("http://[{DR6}]:{PORT}/"), 4)?;
    let nat = f.t.http_get("cl", &format!("http://[{NAT6}]/"), 4)?;
    println!("IPv6 DR: {dr:?}; IPv6 NAT: {nat:?}");
    for (got, a, b) in [(&dr, "rs1", "rs2"), (&nat, "rs3", "rs4")] {
        assert!(
            got.iter().all(|x| x == a || x == b) && got.windows(2).all(|p| p[0] != p[1]),
            "{got:?}"
        );
    }

    // Failover: d1 cut off from the controllers; d2 takes the DR VIP and
    // announces it.
    let capture = Capture::neighbor_advertisements(&f)?;
    f.prepare_cut("d1")?;
    f.cut("d1")?;
    let cut = Instant::now();
    let r = wait_for(
        Duration::from_secs(40),
        "d2 holding the IPv6 VIP",
        || async { holds(&f, "d2", DR6).then_some(()) },
    )
    .await;
    f.failed.set(r.is_err());
    r?;
    println!("IPv6: {DR6} reached d2 {:?} after the cut", cut.elapsed());
    let served = wait_for(within, "the client served through d2", || async {
        let got =
            f.t.http_get("cl", &format!("http://[{DR6}]:{PORT}/"), 2)
                .ok()?;
        got.iter().all(|x| x == "rs1" || x == "rs2").then_some(got)
    })
    .await?;
    println!("after the failover: {served:?}");
    f.heal("d1")?;
    let d2_mac = mac(&f, "d2")?;
    let lines = capture.lines();
    let na: Vec<&String> = lines
        .iter()
        // Unsolicited: to all nodes, not an answer to the client's solicitation.
        .filter(|l| {
            l.contains(&format!("tgt is {DR6}")) && l.contains(&d2_mac) && l.contains("> ff02::1:")
        })
        .collect();
    println!("unsolicited NAs for {DR6} from d2 ({d2_mac}):\n{na:#?}");
    assert!(
        !na.is_empty(),
        "no NA from d2 for {DR6} on the wire: {lines:#?}"
    );
    Ok(())
}
