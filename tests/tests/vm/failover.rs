//! Faults that must not matter, and planned changes, watched from the client
//! (harness: `lb_testkit::fabric`): the controller leader frozen; the
//! owner's agent stalled with its link up, then killed for good; the owner
//! stopped with SIGTERM; a service deleted, also while the agent is down.
//! Who answers is read off the wire (ARP replies the client captures) and
//! off the requests it makes, not off what agents report.
//!
//! The VM runs the controllers at ten times the default timers (lease 6 s,
//! margin 2 s, see `VM_CONTROLLER_TIMERS`); every window runs past lease +
//! margin after the fault.

use std::time::{Duration, Instant};

use lb_testkit::fabric::observe::{arp_replies, now_ms, overlaps, Capture};
use lb_testkit::fabric::*;
use lb_testkit::proc::{signal, Proc};
use lb_testkit::{wait_for, words};

async fn running() -> anyhow::Result<(Fabric, Proc, Proc)> {
    Fabric::running(&VM_CONTROLLER_TIMERS, &VM_DIRECTOR_HEARTBEAT).await
}

/// The controller leader frozen for 10 s (longer than the lease), then
/// resumed: no VIP lapses or moves, no request fails.
#[tokio::test]
async fn controller_leader_stop_moves_no_vip() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (f, _d1, _d2) = running().await?;
    let owners = f.owners()?;
    // A second try only when the VM itself froze for a lease (see
    // `Watched::lapsed_while_frozen`): that ends every lease by design.
    for attempt in 1..=2 {
        // 10 s frozen, then lease + margin (8 s) and more after SIGCONT.
        let w1 = f.vipwatch("d1", DR_VIP, 24)?;
        let w2 = f.vipwatch("d2", DR_VIP, 24)?;
        let probe = f.probe(&format!("http://{DR_VIP}/"), 24, 20)?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let leader = f.leader().await?;
        let pid = f.controllers[leader]
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the leader is not running"))?;
        signal(pid, "STOP");
        tokio::time::sleep(Duration::from_secs(10)).await;
        signal(pid, "CONT");
        let seen = probe.finish();
        let (h1, h2) = (w1.finish_all(), w2.finish_all());
        println!(
            "controller leader frozen 10 s: {}; d1 held {:?}, d2 held {:?}, the VM stalled {:?}",
            seen.summary(),
            h1.held,
            h2.held,
            h1.stalls
        );
        if f.void_if_frozen(attempt, &h1).await? {
            continue;
        }
        let story = f.lease_story("d1");
        assert!(
            seen.failed().is_empty(),
            "failed while the leader was frozen: {:?}",
            seen.failed()
        );
        assert_eq!(h1.held.len(), 1, "d1 let go of the VIP: {h1:?}\n{story}");
        assert!(h2.held.is_empty(), "d2 took the VIP: {h2:?}");
        assert_eq!(f.owners()?, owners, "a VIP moved");
        break;
    }
    Ok(())
}

/// The owner's agent stalled (SIGSTOP) with its link up, then killed and
/// not restarted: the VIP moves to d2, the stalled host stops answering ARP
/// for it by its lease end — before d2 starts — and its address goes.
#[tokio::test]
async fn a_stalled_then_killed_agent_stops_answering_at_its_lease_end() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (f, d1, _d2) = running().await?;
    let (mac1, mac2) = (f.mac("d1")?, f.mac("d2")?);
    let capture = Capture::start(&f)?;
    let ask = f.arp_ask(DR_VIP, 30)?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), 30, 20)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(d1.0.id(), "STOP");
    let stopped = now_ms();
    let t0 = Instant::now();
    // The VIP moves once d1 has been silent for lease + margin and the
    // controllers' last grants to it have run out.
    f.wait_held("d2", &[DR_VIP], Duration::from_secs(25))
        .await?;
    println!("agent stalled: d2 holds the VIP {:?} later", t0.elapsed());
    // Killed and never restarted: the kernel ends what it held. The
    // address's lifetime outlasts the lease by four renewal intervals (8 s
    // here) and the kernel's whole second, counted from the last renewal
    // before SIGSTOP: d2 took over at least a lease and a margin (8 s)
    // after it.
    drop(d1);
    wait_for(
        Duration::from_secs(15),
        "the address gone from d1 (valid_lft)",
        || async { (!f.held("d1").contains(&DR_VIP)).then_some(()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(ask);
    let seen = probe.finish();
    let replies = arp_replies(&capture.lines(), DR_VIP);
    let last1 = replies.iter().filter(|r| r.1 == mac1).map(|r| r.0).max();
    let first2 = replies
        .iter()
        .filter(|r| r.1 == mac2 && r.0 > stopped)
        .map(|r| r.0)
        .min();
    println!(
        "agent stalled: {}; ARP replies: {} from d1, the last {:?} ms after SIGSTOP; {} from d2, the first {:?} ms after",
        seen.summary(),
        replies.iter().filter(|r| r.1 == mac1).count(),
        last1.map(|t| t as i128 - stopped as i128),
        replies.iter().filter(|r| r.1 == mac2).count(),
        first2.map(|t| t as i128 - stopped as i128),
    );
    let (Some(last1), Some(first2)) = (last1, first2) else {
        anyhow::bail!("expected ARP replies from both directors: {replies:?}");
    };
    assert!(
        last1 < first2,
        "d1 answered ARP after d2 had started: {replies:?}"
    );
    // The fence holds at most one lease (6 s) after the last renewal.
    assert!(
        last1 <= stopped + 6_500,
        "d1 answered {} ms after it stalled, past its lease",
        last1 - stopped
    );
    assert!(seen.recovered(), "clients not served by d2 at the end");
    Ok(())
}

/// SIGTERM to the owner with d2 live: the VIP is handed over with a short
/// gap and never held by both.
#[tokio::test]
async fn sigterm_hands_the_vips_over() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (f, mut d1, _d2) = running().await?;
    let w1 = f.vipwatch("d1", DR_VIP, 25)?;
    let w2 = f.vipwatch("d2", DR_VIP, 25)?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), 25, 20)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(d1.0.id(), "TERM");
    let t0 = Instant::now();
    let status = tokio::task::spawn_blocking(move || d1.0.wait()).await??;
    println!("d1 stopped in {:?} ({status})", t0.elapsed());
    f.wait_held("d2", &VIPS, Duration::from_secs(20)).await?;
    let seen = probe.finish();
    let (h1, h2) = (w1.finish(), w2.finish());
    println!(
        "SIGTERM hand-over: {}; d1 held {h1:?}, d2 held {h2:?}",
        seen.summary()
    );
    assert!(status.success(), "d1 did not stop cleanly: {status}");
    let both = overlaps(&h1, &h2);
    assert!(both.is_empty(), "both held {DR_VIP} during {both:?}");
    // The hand-over, not the lease: a failover by silence leaves a gap of
    // at least lease + margin (8 s here). The hand-over itself is two Raft
    // commits and a few report round trips, each of which takes seconds
    // under emulation when the VM is busy (1.7-3.9 s measured).
    assert!(
        seen.gap() < Duration::from_secs(6),
        "hand-over gap {:?}: as long as a failover by silence",
        seen.gap()
    );
    assert!(seen.recovered(), "clients not served by d2");
    assert!(
        !f.dir.path().join("state/director-d1.lease").exists(),
        "a lease file left after a hand-over"
    );
    Ok(())
}

/// A deleted service's VIP leaves the owner's interface at once, and also
/// when the agent was down while it was deleted.
#[tokio::test]
async fn a_deleted_services_vip_leaves_the_owner() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (f, d1, _d2) = running().await?;
    f.lbctl(&words("service delete tun"))?;
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), "TUN VIP gone from d1", || async {
        (!f.held("d1").contains(&TUN_VIP)).then_some(())
    })
    .await?;
    println!("service deleted: its VIP left d1 after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() <= Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    // The agent down (killed) while the service is deleted, started again
    // well within the address's lifetime.
    drop(d1);
    f.lbctl(&words("service delete nat"))?;
    let log_before = std::fs::read_to_string(f.log("d1"))?.len();
    let d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let t1 = Instant::now();
    wait_for(Duration::from_secs(15), "NAT VIP gone from d1", || async {
        (!f.held("d1").contains(&NAT_VIP)).then_some(())
    })
    .await?;
    println!(
        "service deleted while the agent was down: its VIP left d1 {:?} after the restart",
        t1.elapsed()
    );
    // Taken off by the agent (it recorded adding it), not by the kernel's
    // lifetime, which had seconds left.
    let said = std::fs::read_to_string(f.log("d1"))?;
    let said = said.get(log_before..).unwrap_or_default();
    assert!(
        said.contains(&format!("VIP removed vip={NAT_VIP}")),
        "the restarted agent did not remove {NAT_VIP}:\n{said}"
    );
    assert!(
        f.held("d1").contains(&DR_VIP),
        "the restarted agent let go of a VIP still configured"
    );
    // Its IPVS service too: the agent recorded programming it, so it is not
    // taken for an operator's own (foreign) service and left behind.
    let nat = format!("{NAT_VIP}:80");
    wait_for(
        Duration::from_secs(15),
        "NAT service gone from d1's IPVS",
        || async { (!f.ipvs("d1").iter().any(|l| l.contains(&nat))).then_some(()) },
    )
    .await?;
    let list = f.lbctl(&words("director list -o json"))?;
    assert!(
        !list.contains(&nat),
        "the deleted service is reported as foreign: {list}"
    );
    assert!(
        f.ipvs("d1")
            .iter()
            .any(|l| l.contains(&format!("{DR_VIP}:80"))),
        "the DR service went too: {:?}",
        f.ipvs("d1")
    );
    drop(d1);
    Ok(())
}
