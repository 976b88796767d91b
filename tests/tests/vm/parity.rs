//! keepalived parity with real traffic (issue #17): what an operator
//! importing a keepalived.conf relies on — quorum, hysteresis and the sorry
//! server — acting in the director's kernel and seen by clients.

use std::time::Duration;

use lb_testkit::fabric::*;
use lb_testkit::proc::signal;
use lb_testkit::{wait_for, words};

const QUORUM_VIP: &str = "10.0.0.104";

/// d1's IPVS lines for the quorum service, sorted.
fn quorum_table(f: &Fabric) -> Vec<String> {
    f.ipvs("d1")
        .into_iter()
        .filter(|l| l.contains(&format!("{QUORUM_VIP}:80")))
        .collect()
}

fn expect(dests: &[&str]) -> Vec<String> {
    let mut v = vec![format!("-A -t {QUORUM_VIP}:80 -s rr")];
    v.extend(
        dests
            .iter()
            .map(|d| format!("-a -t {QUORUM_VIP}:80 -r {d} -m -w 1")),
    );
    v.sort();
    v
}

/// Waits until d1's table for the service is `dests`.
async fn table_is(f: &Fabric, dests: &[&str], what: &str) -> anyhow::Result<()> {
    let want = expect(dests);
    let r = wait_for(Duration::from_secs(30), what, || async {
        (quorum_table(f) == want).then_some(())
    })
    .await;
    if r.is_err() {
        eprintln!("d1's table: {:#?}\nwanted: {want:#?}", quorum_table(f));
        f.failed.set(true);
    }
    r
}

/// Waits until lbctl shows the backend at `port` with `health`: the
/// controller has the verdict, so the table reflects it.
async fn health_is(f: &Fabric, port: u16, health: &str) -> anyhow::Result<()> {
    let what = format!("192.168.50.23:{port} {health} in lbctl realserver list");
    wait_for(Duration::from_secs(30), &what, || async {
        let list = f.lbctl(&["realserver", "list", "quorum"]).ok()?;
        list.lines()
            .any(|l| {
                l.contains(&format!("192.168.50.23:{port} ")) && l.contains(&format!(" {health} "))
            })
            .then_some(())
    })
    .await
}

/// The table stays `dests` for `checks` check intervals (a change that
/// would follow a verdict has had its time).
async fn table_stays(f: &Fabric, dests: &[&str], checks: u32) {
    let want = expect(dests);
    for _ in 0..checks * 4 {
        assert_eq!(quorum_table(f), want, "the table changed");
        tokio::time::sleep(Duration::from_millis(CHECK_MS / 4)).await;
    }
}

/// Answers to `count` requests from the client.
fn answers(f: &Fabric, count: usize) -> anyhow::Result<Vec<String>> {
    f.t.http_get("cl", &format!("http://{QUORUM_VIP}/"), count)
}

const CHECK_MS: u64 = 500;

/// Quorum 3 over three weight-1 backends (director-checked, NAT): two
/// listeners killed put the sorry server alone in the table and clients get
/// its answer; restored, the backends return. Then quorum 2 with hysteresis
/// 1, walked over the band's edges in both directions, the table asserted at
/// each step.
#[tokio::test]
async fn quorum_sorry_server_and_hysteresis_act_in_the_kernel() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::with_controllers(1, &VM_CONTROLLER_TIMERS).await?;
    let ports = [8081u16, 8082, 8083];
    let mut pids = Vec::new();
    for (port, answer) in ports.iter().zip(["a", "b", "c"]) {
        pids.push(f.t.http_backend("rs3", answer, &format!("0.0.0.0:{port}"))?);
    }
    f.t.http_backend("rs4", "sorry", "0.0.0.0:8090")?;
    let check = format!(
        "--check tcp --check-interval {CHECK_MS}ms --check-timeout 400ms --check-fall 2 --check-rise 1"
    );
    f.lbctl(
        &[
            &words(&format!(
                "service create quorum --vip {QUORUM_VIP}:80/tcp --mode nat --scheduler rr \
             --realserver 192.168.50.23:8081 --realserver 192.168.50.23:8082 \
             --realserver 192.168.50.23:8083 --sorry-server 192.168.50.24:8090 --quorum 3 \
             --prefer-director d1"
            ))[..],
            &words(&check),
        ]
        .concat(),
    )?;
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let [a, b, c] = [
        "192.168.50.23:8081",
        "192.168.50.23:8082",
        "192.168.50.23:8083",
    ];
    let sorry = "192.168.50.24:8090";
    table_is(&f, &[a, b, c], "the three backends in d1's table").await?;
    wait_for(Duration::from_secs(30), "d1 holding the VIP", || async {
        let addrs = f.t.sh("d1", "ip -o -4 addr show dev eth0").ok()?;
        addrs.contains(&format!("{QUORUM_VIP}/32")).then_some(())
    })
    .await?;
    let served = answers(&f, 6)?;
    assert!(
        served.iter().all(|a| ["a", "b", "c"].contains(&a.as_str())),
        "{served:?}"
    );

    // Live weight 1 < quorum 3: the sorry server alone.
    signal(pids[0], "KILL");
    signal(pids[1], "KILL");
    table_is(&f, &[sorry], "the sorry server alone below quorum").await?;
    let served = answers(&f, 4)?;
    assert_eq!(served, ["sorry"; 4], "clients below quorum");
    let status = f.lbctl(&["status", "--service", "quorum"])?;
    println!("{status}");
    assert!(status.contains("below quorum (1 of 3)"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains(sorry) && l.contains("sorry server")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains(c) && l.contains("withheld")),
        "{status}"
    );

    // Restored: the backends, no sorry server.
    pids[0] = f.t.http_backend("rs3", "a", "0.0.0.0:8081")?;
    pids[1] = f.t.http_backend("rs3", "b", "0.0.0.0:8082")?;
    table_is(&f, &[a, b, c], "the backends back at quorum").await?;
    let served = answers(&f, 6)?;
    assert!(!served.iter().any(|a| a == "sorry"), "{served:?}");

    // Quorum 2, hysteresis 1: lost under 1, regained at 3.
    f.lbctl(&words("service update quorum --quorum 2 --hysteresis 1"))?;
    signal(pids[0], "KILL");
    signal(pids[1], "KILL");
    // Live weight 1: under the quorum, inside the band — c alone serves
    // (without the hysteresis the sorry server would).
    table_is(&f, &[c], "c alone, inside the band").await?;
    table_stays(&f, &[c], 4).await;
    assert_eq!(answers(&f, 3)?, ["c"; 3]);
    signal(pids[2], "KILL");
    table_is(&f, &[sorry], "the sorry server with no backend").await?;
    // Back up one by one: weight 1, then 2 (the quorum, not quorum +
    // hysteresis) keep the sorry server; 3 ends it.
    pids[0] = f.t.http_backend("rs3", "a", "0.0.0.0:8081")?;
    health_is(&f, 8081, "up").await?;
    table_stays(&f, &[sorry], 2).await;
    pids[1] = f.t.http_backend("rs3", "b", "0.0.0.0:8082")?;
    health_is(&f, 8082, "up").await?;
    table_stays(&f, &[sorry], 2).await;
    assert_eq!(answers(&f, 3)?, ["sorry"; 3]);
    pids[2] = f.t.http_backend("rs3", "c", "0.0.0.0:8083")?;
    table_is(&f, &[a, b, c], "quorum + hysteresis reached").await?;
    println!(
        "quorum 3: sorry server in and out; quorum 2 hysteresis 1: held inside the band both ways"
    );
    Ok(())
}

const SCHED_VIP: &str = "10.0.0.106";

/// Every scheduler Debian 12's kernel has (all but twos, which came in
/// 6.2), and the sh/mh flags, each a NAT service over rs3 and rs4, as
/// `ipvsadm -Sn` writes them: imported with `lbctl import ipvsadm` and
/// expected back from the director's kernel line for line.
fn scheduler_table() -> Vec<String> {
    let dests = |port: u16, w: [u16; 2]| {
        [
            format!(
                "-a -t {SCHED_VIP}:{port} -r 192.168.50.23:8080 -m -w {}",
                w[0]
            ),
            format!(
                "-a -t {SCHED_VIP}:{port} -r 192.168.50.24:8080 -m -w {}",
                w[1]
            ),
        ]
    };
    let services: [(&str, &str, [u16; 2]); 17] = [
        ("rr", "", [1, 1]),
        ("wrr", "", [3, 1]),
        ("lc", "", [1, 1]),
        ("wlc", "", [1, 1]),
        ("lblc", "", [1, 1]),
        ("lblcr", "", [1, 1]),
        ("dh", "", [1, 1]),
        ("sh", "", [1, 1]),
        ("sed", "", [1, 1]),
        ("nq", "", [1, 1]),
        ("fo", "", [1, 1]),
        ("ovf", "", [1, 1]),
        ("mh", "", [1, 1]),
        ("sh", " -b sh-fallback,sh-port", [1, 1]),
        ("mh", " -b mh-fallback,mh-port", [1, 1]),
        // Persistence: one client per realserver; then a /24 per realserver.
        ("rr", " -p 60", [1, 1]),
        ("rr", " -p 60 -M 255.255.255.0", [1, 1]),
    ];
    let mut lines = Vec::new();
    for (i, (sched, extra, w)) in services.iter().enumerate() {
        let port = 1001 + i as u16;
        lines.push(format!("-A -t {SCHED_VIP}:{port} -s {sched}{extra}"));
        lines.extend(dests(port, *w));
    }
    lines.sort();
    lines
}

/// The answers (backend names) to `count` requests from namespace `ns`.
fn from(f: &Fabric, ns: &str, port: u16, count: usize) -> anyhow::Result<Vec<String>> {
    f.t.http_get(ns, &format!("http://{SCHED_VIP}:{port}/"), count)
}

fn count(answers: &[String], name: &str) -> usize {
    answers.iter().filter(|a| *a == name).count()
}

/// Each scheduler the VM's kernel offers, programmed by the director from
/// `lbctl import ipvsadm` and read back with `ipvsadm -Sn`; rr, wrr, lc, sh
/// and mh distribute real requests as they should; persistence keeps one
/// client on its realserver across 20 connections, and a /24 netmask sends
/// a second client of the same /24 to the same one.
#[tokio::test]
async fn every_scheduler_reaches_the_kernel_and_balances_as_named() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::with_controllers(1, &VM_CONTROLLER_TIMERS).await?;
    // A second client on the LAN, in the same /24 as cl (10.0.0.2).
    f.t.add_ns("cl2")?;
    f.t.plug("cl2", "lan", "eth0", "10.0.0.3/24")?;
    let want = scheduler_table();
    let file = f.dir.path().join("schedulers.ipvsadm");
    std::fs::write(&file, want.join("\n") + "\n")?;
    let imported = f.lbctl(&["import", "ipvsadm", &file.to_string_lossy()])?;
    println!("{imported}");
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let table = |f: &Fabric| -> Vec<String> {
        f.ipvs("d1")
            .into_iter()
            .filter(|l| l.contains(&format!("{SCHED_VIP}:")))
            .collect()
    };
    let r = wait_for(
        Duration::from_secs(60),
        "every scheduler in d1's kernel",
        || async { (table(&f) == want).then_some(()) },
    )
    .await;
    if r.is_err() {
        eprintln!("d1: {:#?}\nwanted: {want:#?}", table(&f));
        f.failed.set(true);
    }
    r?;
    wait_for(Duration::from_secs(30), "d1 holding the VIP", || async {
        let addrs = f.t.sh("d1", "ip -o -4 addr show dev eth0").ok()?;
        addrs.contains(&format!("{SCHED_VIP}/32")).then_some(())
    })
    .await?;

    // rr alternates; wrr 3:1 gives 9 and 3 of 12.
    let rr = from(&f, "cl", 1001, 10)?;
    assert!(rr.windows(2).all(|p| p[0] != p[1]), "rr: {rr:?}");
    let wrr = from(&f, "cl", 1002, 12)?;
    assert_eq!(
        (count(&wrr, "rs3"), count(&wrr, "rs4")),
        (9, 3),
        "wrr: {wrr:?}"
    );
    // lc: a held connection on one realserver sends the next ones to the
    // other.
    let mut held =
        f.t.command("cl", &lb_testkit::bin("lb-http"))?
            // Under lb-http serve's 5 s read timeout.
            .args(["hold", &format!("http://{SCHED_VIP}:1003/"), "4"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.as_mut().expect("piped")),
        &mut first,
    )?;
    anyhow::ensure!(first.trim() == "open", "hold: {first:?}");
    let lc = from(&f, "cl", 1003, 6)?;
    let out = held.wait_with_output()?;
    let held_by = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace("OK ", "");
    println!("lc: the held connection on {held_by}, the next six on {lc:?}");
    assert!(
        ["rs3", "rs4"].contains(&held_by.as_str())
            && lc.iter().all(|a| *a == lc[0])
            && lc[0] != held_by,
        "lc: held by {held_by}, then {lc:?}"
    );
    // sh and mh: each client stays on one realserver.
    for (port, name) in [(1008, "sh"), (1013, "mh")] {
        for ns in ["cl", "cl2"] {
            let got = from(&f, ns, port, 6)?;
            assert!(
                got.iter().all(|a| *a == got[0]),
                "{name} from {ns}: {got:?}"
            );
        }
    }
    // Persistence: 20 connections from cl on one realserver (rr alone
    // alternates); with the /24 netmask, cl2 follows cl.
    let sticky = from(&f, "cl", 1016, 20)?;
    assert!(
        sticky.iter().all(|a| *a == sticky[0]),
        "persistent: {sticky:?}"
    );
    let other = from(&f, "cl2", 1016, 1)?;
    let grouped_cl = from(&f, "cl", 1017, 1)?;
    let grouped_cl2 = from(&f, "cl2", 1017, 5)?;
    println!(
        "persistence: cl on {}, cl2 on {} (/32); with /24: cl on {}, cl2 on {grouped_cl2:?}",
        sticky[0], other[0], grouped_cl[0]
    );
    assert!(
        grouped_cl2.iter().all(|a| *a == grouped_cl[0]),
        "netmask /24 did not group cl and cl2: {grouped_cl:?} {grouped_cl2:?}"
    );
    // Without the /24 grouping, rr would have sent cl2 elsewhere.
    assert_ne!(
        other[0], sticky[0],
        "cl2 on cl's realserver without a netmask"
    );
    Ok(())
}

const LOCAL_VIP: &str = "10.0.0.107";

/// A local service in the VM fabric (directors with IPVS): an HTTP server
/// on each director stands in for nginx; the VIP is on d1 and no IPVS
/// service exists for it; d1's server killed, the VIP moves to d2, which
/// serves the client. The client's gap is printed.
#[tokio::test]
async fn a_local_service_follows_the_directors_own_proxy() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::with_controllers(1, &VM_CONTROLLER_TIMERS).await?;
    let http = lb_testkit::bin("lb-http").to_string_lossy().into_owned();
    let proxy =
        f.t.server("d1", &[&http, "serve", "d1", "0.0.0.0:8088"], "ready")?;
    f.t.server("d2", &[&http, "serve", "d2", "0.0.0.0:8088"], "ready")?;
    f.lbctl(&words(&format!(
        "service create proxy --vip {LOCAL_VIP}:8088/tcp --mode local --prefer-director d1 \
         --check http --check-interval 500ms --check-timeout 400ms --check-fall 2 --check-rise 1"
    )))?;
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let holds = |f: &Fabric, ns: &str| {
        f.t.sh(ns, "ip -o -4 addr show dev eth0")
            .is_ok_and(|a| a.contains(&format!("{LOCAL_VIP}/32")))
    };
    wait_for(
        Duration::from_secs(30),
        "d1 holding the local VIP",
        || async { holds(&f, "d1").then_some(()) },
    )
    .await?;
    let _d2 = f.start_director("d2", &VM_DIRECTOR_HEARTBEAT)?;
    f.director_live("d2").await?;
    assert!(
        !f.ipvs("d1").iter().any(|l| l.contains(LOCAL_VIP)),
        "an IPVS service for a local service: {:?}",
        f.ipvs("d1")
    );
    let url = format!("http://{LOCAL_VIP}:8088/");
    assert_eq!(f.t.http_get("cl", &url, 2)?, ["d1", "d1"]);
    let probe = f.probe(&url, 20, 50)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(proxy, "KILL");
    let killed = std::time::Instant::now();
    wait_for(
        Duration::from_secs(30),
        "d2 holding the local VIP",
        || async { holds(&f, "d2").then_some(()) },
    )
    .await?;
    let moved = killed.elapsed();
    let served = wait_for(
        Duration::from_secs(30),
        "the client served by d2",
        || async {
            let got = f.t.http_get("cl", &url, 1).ok()?;
            (got == ["d2"]).then_some(got)
        },
    )
    .await?;
    let seen = probe.finish();
    println!(
        "local service: d1's proxy killed, the VIP on d2 {moved:?} later (VM timers: check \
         every 500 ms, lease 6 s); clients: {}; then {served:?}",
        seen.summary()
    );
    assert!(!holds(&f, "d1"), "d1 still holds the VIP");
    Ok(())
}
