//! The whole fabric with real traffic: three controllers, two directors in
//! their own network namespaces (each with its own IPVS table), realservers
//! and a client on one LAN, and what an operator cares about:
//! - services created with lbctl reach the owner's kernel (and the standby's,
//!   warm) exactly, and requests are balanced in NAT, DR and TUN;
//! - kill -9 of the owner's agent and its restart fail no request;
//! - killing the controller leader moves no VIP and fails no request;
//! - cutting the owner off from the controllers (nftables) moves the VIP
//!   without both directors ever holding it, and clients are served after;
//! - freezing the owner's host (SIGSTOP + link down) moves the VIP; the
//!   client's gap is measured and gratuitous ARPs are seen on the wire.
//!
//! Topology (all namespaces; the test process itself runs the controllers
//! on 10.0.0.1, plugged into the LAN):
//!
//! ```text
//!  lan 10.0.0.0/24: ctl .1 (controllers)  cl .2 (client)  d1 .11  d2 .12  rs1 .21  rs2 .22
//!  int 192.168.50.0/24:                   d1 .11  d2 .12  rs3 .23  rs4 .24 (NAT, via d1)
//!  VIPs: 10.0.0.100 DR, 10.0.0.101 TUN (rs1, rs2), 10.0.0.102 NAT (rs3, rs4),
//!        10.0.0.103 tcp 80,443 marked 1 (fwmark, DR, rs1, rs2)
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{signal, Proc};
use lb_proto::pki::Role;
use lb_testkit::netns::Topology;
use lb_testkit::{agent_tls, bin, lbctl_ok, start_cluster_at, wait_for, ControllerProc};

const DR_VIP: &str = "10.0.0.100";
const TUN_VIP: &str = "10.0.0.101";
const NAT_VIP: &str = "10.0.0.102";
const MARK_VIP: &str = "10.0.0.103";
const VIPS: [&str; 4] = [DR_VIP, TUN_VIP, NAT_VIP, MARK_VIP];

struct Fabric {
    t: Topology,
    dir: tempfile::TempDir,
    controllers: Vec<ControllerProc>,
    /// `--controller` for the agents and lbctl: every node.
    addrs: String,
    /// A wait timed out: show the logs when dropped, as after a panic.
    failed: std::cell::Cell<bool>,
    /// The port-80 HTTP backends of rs1 and rs2, with their PIDs.
    web: Vec<(&'static str, u32)>,
    /// The NAT backends of rs3 and rs4 (no realserver agent), with their PIDs.
    nat_web: Vec<(&'static str, u32)>,
    /// The realserver agents of rs1 and rs2, with their PIDs.
    agents: Vec<(&'static str, u32)>,
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if std::thread::panicking() || self.failed.get() {
            for node in ["d1", "d2"] {
                let log = std::fs::read_to_string(self.log(node)).unwrap_or_default();
                eprintln!("---- {node} log ----\n{log}");
            }
            for c in &self.controllers {
                let log = c.log_text();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("---- controller {} log (tail) ----\n{tail}", c.node_id);
            }
        }
    }
}

impl Fabric {
    /// Builds the topology and a three-node controller cluster with `controller_flags`.
    async fn new(controller_flags: &[&str]) -> anyhow::Result<Fabric> {
        Fabric::with_controllers(3, controller_flags).await
    }

    async fn with_controllers(count: u64, controller_flags: &[&str]) -> anyhow::Result<Fabric> {
        let ok = Command::new("modprobe").arg("ipip").status()?.success();
        anyhow::ensure!(ok, "modprobe ipip");
        let mut t = Topology::new();
        t.add_bridge("lan")?;
        t.add_bridge("int")?;
        t.plug_caller("lan", "lbc0", "10.0.0.1/24")?;
        for (ns, ip) in [
            ("cl", "10.0.0.2/24"),
            ("d1", "10.0.0.11/24"),
            ("d2", "10.0.0.12/24"),
            ("rs1", "10.0.0.21/24"),
            ("rs2", "10.0.0.22/24"),
        ] {
            t.add_ns(ns)?;
            t.plug(ns, "lan", "eth0", ip)?;
        }
        t.plug("d1", "int", "eth1", "192.168.50.11/24")?;
        t.plug("d2", "int", "eth1", "192.168.50.12/24")?;
        let mut nat_web = Vec::new();
        for (rs, ip) in [("rs3", "192.168.50.23/24"), ("rs4", "192.168.50.24/24")] {
            t.add_ns(rs)?;
            t.plug(rs, "int", "eth0", ip)?;
            // NAT replies must pass the director that rewrote the request.
            t.sh(rs, "ip route add default via 192.168.50.11")?;
            nat_web.push((rs, t.http_backend(rs, rs, "0.0.0.0:8080")?));
        }
        let mut web = Vec::new();
        for rs in ["rs1", "rs2"] {
            web.push((rs, t.http_backend(rs, rs, "0.0.0.0:80")?));
            t.http_backend(rs, rs, "0.0.0.0:443")?;
        }
        let dir = tempfile::tempdir()?;
        let controllers = start_cluster_at("10.0.0.1", count, dir.path(), controller_flags).await?;
        let addrs = controllers
            .iter()
            .map(|c| c.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        // rs1 and rs2 run the realserver agent: the DR, TUN and fwmark
        // services adopt them by label, and the agent puts the VIPs on lo /
        // tunl0 and sets the ARP and rp_filter sysctls.
        let agent = bin("lb-realserver");
        let agent = agent.to_str().unwrap_or_default().to_string();
        let state = dir.path().join("agents").to_string_lossy().into_owned();
        let mut agents = Vec::new();
        for (rs, rip) in [("rs1", "10.0.0.21"), ("rs2", "10.0.0.22")] {
            // The controllers listen on 10.0.0.1, so everything is mTLS:
            // each agent gets a certificate for its node id and address.
            let tls = agent_tls(&addrs, Role::Realserver, rs, &[rip.parse()?])?;
            let mut args = vec![
                agent.as_str(),
                "--state-dir",
                &state,
                "--controller",
                &addrs,
                "--node-id",
                rs,
                "--address",
                rip,
                "--labels",
                "pool=web",
            ];
            args.extend(tls.iter().map(String::as_str));
            let child = t.spawn(rs, &args)?;
            agents.push((rs, child.id()));
        }
        Ok(Fabric {
            t,
            dir,
            controllers,
            addrs,
            failed: std::cell::Cell::new(false),
            web,
            nat_web,
            agents,
        })
    }

    fn lbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        lbctl_ok(&self.addrs, args)
    }

    fn create_services(&self) -> anyhow::Result<()> {
        let rr = ["--scheduler", "rr"];
        // The realserver agents on rs1 and rs2 carry this label.
        let lan_rs = ["--selector", "pool=web"];
        let dr = [
            &[
                "service",
                "create",
                "dr",
                "--vip",
                "10.0.0.100:80/tcp",
                "--mode",
                "dr",
            ][..],
            &rr,
            &lan_rs,
        ]
        .concat();
        let tun = [
            &[
                "service",
                "create",
                "tun",
                "--vip",
                "10.0.0.101:80/tcp",
                "--mode",
                "tun",
            ][..],
            &rr,
            &lan_rs,
        ]
        .concat();
        let nat = [
            &[
                "service",
                "create",
                "nat",
                "--vip",
                "10.0.0.102:80/tcp",
                "--mode",
                "nat",
            ][..],
            &rr,
            &[
                "--realserver",
                "192.168.50.23:8080",
                "--realserver",
                "192.168.50.24:8080",
            ],
            // The NAT realservers route through d1.
            &["--prefer-director", "d1"],
        ]
        .concat();
        // One service for two ports, marked by the directors themselves.
        let fwm = [
            &[
                "service",
                "create",
                "fwm",
                "--fwmark",
                "1",
                "--mark-address",
                MARK_VIP,
                "--mark-ports",
                "80,443",
                "--mode",
                "dr",
            ][..],
            &rr,
            &lan_rs,
        ]
        .concat();
        for args in [dr, tun, nat, fwm] {
            self.lbctl(&args)?;
        }
        Ok(())
    }

    fn start_director(&self, node: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(node))?;
        let child = self
            .t
            .command(node, &bin("lb-director"))
            .args(["--controller", &self.addrs, "--node-id", node])
            .args(agent_tls(&self.addrs, Role::Director, node, &[])?)
            .args(["--interface", "eth0", "--sync-interface", "eth0"])
            .args(["--resync-ms", "1000"])
            // Its own lease file: the VM runs several fabrics, one after another.
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Proc(child))
    }

    /// Waits until the realserver agents have prepared rs1 and rs2: the
    /// DR and fwmark VIPs on lo, the TUN VIP on tunl0, ARP suppressed.
    async fn realservers_ready(&self) -> anyhow::Result<()> {
        for rs in ["rs1", "rs2"] {
            wait_for(
                Duration::from_secs(30),
                "the realserver agent's host setup",
                || async {
                    let lo = self.t.sh(rs, "ip -o addr show dev lo").ok()?;
                    let tun = self.t.sh(rs, "ip -o addr show dev tunl0").ok()?;
                    let arp = self
                        .t
                        .sh(rs, "cat /proc/sys/net/ipv4/conf/eth0/arp_ignore")
                        .ok()?;
                    (lo.contains(&format!("{DR_VIP}/32"))
                        && lo.contains(&format!("{MARK_VIP}/32"))
                        && tun.contains(&format!("{TUN_VIP}/32"))
                        && arp.trim() == "1")
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    fn log(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.log"))
    }

    /// `ipvsadm -Sn` in namespace `ns`, sorted.
    fn ipvs(&self, ns: &str) -> Vec<String> {
        let out = self.t.sh(ns, "ipvsadm -Sn").unwrap_or_default();
        let mut lines: Vec<String> = out.lines().map(String::from).collect();
        lines.sort();
        lines
    }

    /// Which of `VIPS` namespace `ns` has on eth0.
    fn held(&self, ns: &str) -> Vec<&'static str> {
        let out = self
            .t
            .sh(ns, "ip -o -4 addr show dev eth0")
            .unwrap_or_default();
        VIPS.into_iter()
            .filter(|v| out.contains(&format!("inet {v}/32")))
            .collect()
    }

    async fn wait_held(&self, ns: &str, vips: &[&str], within: Duration) -> anyhow::Result<()> {
        let what = format!("{ns} to hold {vips:?}");
        let r = wait_for(within, &what, || async {
            let h = self.held(ns);
            vips.iter().all(|v| h.contains(v)).then_some(())
        })
        .await;
        self.failed.set(r.is_err());
        r
    }

    /// The owners (director, epoch) of every VIP, from `lbctl director list`.
    fn owners(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = self.lbctl(&["director", "list", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let mut owners = Vec::new();
        for d in v["directors"].as_array().into_iter().flatten() {
            for o in d["owns"].as_array().into_iter().flatten() {
                owners.push((
                    o["vip"].as_str().unwrap_or_default().to_string(),
                    d["nodeId"].as_str().unwrap_or_default().to_string(),
                    o["epoch"].to_string(),
                ));
            }
        }
        owners.sort();
        Ok(owners)
    }

    /// Requests from the client to `url` every `every_ms` for `seconds`.
    fn probe(&self, url: &str, seconds: u64, every_ms: u64) -> anyhow::Result<Probe> {
        let child = self
            .t
            .command("cl", &bin("lb-http"))
            .args([
                "probe",
                url,
                &seconds.to_string(),
                &every_ms.to_string(),
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Probe(Proc(child)))
    }

    /// Samples every 10 ms whether `ns` holds `vip`.
    fn vipwatch(&self, ns: &str, vip: &str, seconds: u64) -> anyhow::Result<Watch> {
        let child = self
            .t
            .command(ns, &bin("lb-http"))
            .args(["vipwatch", vip, &seconds.to_string(), "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Watch(Proc(child)))
    }

    /// Index of the node that leads now.
    async fn leader(&self) -> anyhow::Result<usize> {
        wait_for(Duration::from_secs(10), "a leader", || async {
            for (i, c) in self.controllers.iter().enumerate() {
                if c.status().await.is_some_and(|s| s.state == "leader") {
                    return Some(i);
                }
            }
            None
        })
        .await
    }
}

fn stdout_of(p: &mut Proc) -> String {
    let mut out = String::new();
    if let Some(mut s) = p.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let _ = p.0.wait();
    out
}

struct Probe(Proc);

/// What the client saw: requests in start order.
struct Seen {
    /// (start, Ok(body) | Err(why)), start in ms since the epoch.
    requests: Vec<(u128, Result<String, String>)>,
}

impl Probe {
    fn finish(mut self) -> Seen {
        let out = stdout_of(&mut self.0);
        let mut requests: Vec<(u128, Result<String, String>)> = out
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let start = parts.next()?.parse().ok()?;
                let kind = parts.next()?;
                let rest = parts.next().unwrap_or_default().to_string();
                Some((start, if kind == "OK" { Ok(rest) } else { Err(rest) }))
            })
            .collect();
        requests.sort_by_key(|r| r.0);
        Seen { requests }
    }
}

impl Seen {
    fn failed(&self) -> Vec<&(u128, Result<String, String>)> {
        self.requests.iter().filter(|r| r.1.is_err()).collect()
    }

    /// The longest stretch without service: from the first failed request's
    /// start to the start of the next request that succeeded (or of the
    /// last request, when none did before the probe ended).
    fn gap(&self) -> Duration {
        let mut worst = 0;
        let mut down_since = None;
        for (start, r) in &self.requests {
            match (r, down_since) {
                (Err(_), None) => down_since = Some(*start),
                (Ok(_), Some(since)) => {
                    worst = worst.max(start - since);
                    down_since = None;
                }
                _ => {}
            }
        }
        if let (Some(since), Some((last, _))) = (down_since, self.requests.last()) {
            worst = worst.max(last - since);
        }
        Duration::from_millis(worst as u64)
    }

    fn recovered(&self) -> bool {
        matches!(self.requests.last(), Some((_, Ok(_))))
    }

    fn summary(&self) -> String {
        format!(
            "{} requests, {} failed, longest gap {:?}",
            self.requests.len(),
            self.failed().len(),
            self.gap()
        )
    }
}

struct Watch(Proc);

impl Watch {
    /// Intervals [from, to) in ms during which the address was held.
    fn finish(mut self) -> Vec<(u128, u128)> {
        let out = stdout_of(&mut self.0);
        let mut held = Vec::new();
        let mut since = None;
        for line in out.lines() {
            let Some((t, what)) = line.split_once(' ') else {
                continue;
            };
            let Ok(t) = t.parse::<u128>() else { continue };
            match what {
                "1" => since = Some(t),
                "0" | "end" => {
                    if let Some(s) = since.take() {
                        held.push((s, t));
                    }
                }
                _ => {}
            }
        }
        held
    }
}

/// Overlaps between two sets of held intervals (both holding at once).
fn overlaps(a: &[(u128, u128)], b: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (s, e) = (a0.max(b0), a1.min(b1));
            if s < e {
                out.push((s, e));
            }
        }
    }
    out
}

/// From `lbctl director stats`: a service's CONNS and each realserver's.
fn service_conns(text: &str, service: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let mut lines = text
        .lines()
        .skip_while(|l| l.split_whitespace().next() != Some(service));
    let conns = |l: &str, at: usize| l.split_whitespace().nth(at)?.parse().ok();
    let total = conns(lines.next()?, 3)?;
    let realservers = lines
        .map_while(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.first() == Some(&"->")).then(|| Some((t.get(1)?.to_string(), conns(l, 4)?)))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((total, realservers))
}

/// Freezes the owner's host (link down, SIGSTOP) three times, alternating
/// between the two directors; each time the client's gap is measured with a
/// request every `every_ms` for `probe_secs`.
async fn host_loss_gaps(
    f: &Fabric,
    mut owner: (&str, Proc),
    mut standby: (&str, Proc),
    (probe_secs, every_ms): (u64, u64),
) -> anyhow::Result<Vec<Duration>> {
    let mut gaps = Vec::new();
    for round in 1..=3 {
        // A failover needs a standby: the previous round's frozen owner
        // must be back and reporting (its old stream's TCP retransmissions
        // may take a while after the link comes back).
        wait_for(
            Duration::from_secs(20),
            "the standby live again",
            || async {
                let list = f.lbctl(&["director", "list"]).ok()?;
                list.lines()
                    .any(|l| {
                        l.starts_with(&format!("{} ", standby.0)) && l.contains(" live  connected ")
                    })
                    .then_some(())
            },
        )
        .await?;
        let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, every_ms)?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // The link first: from that moment neither clients nor the
        // controllers reach the host, as when it dies; then its processes.
        f.t.sh(owner.0, "ip link set eth0 down")?;
        signal(owner.1 .0.id(), "STOP");
        // Room for a controller election on top (a new leader waits
        // lease + margin before it moves anything): slow, but not a failure.
        f.wait_held(standby.0, &[DR_VIP], Duration::from_secs(probe_secs - 2))
            .await?;
        let seen = probe.finish();
        println!(
            "failover {round} ({} -> {}): {}",
            owner.0,
            standby.0,
            seen.summary()
        );
        assert!(
            seen.recovered(),
            "failover {round}: clients not served again before the probe ended"
        );
        gaps.push(seen.gap());
        // The frozen host comes back: its agent sees the lease expired and
        // drops the VIP before the link is back; the VIP stays where it is.
        signal(owner.1 .0.id(), "CONT");
        wait_for(
            Duration::from_secs(10),
            "the old owner to drop the VIP",
            || async { f.held(owner.0).is_empty().then_some(()) },
        )
        .await?;
        f.t.sh(owner.0, "ip link set eth0 up")?;
        std::mem::swap(&mut owner, &mut standby);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(gaps)
}

/// `requests` balanced across `backends` (rr: each answers, alternately).
fn assert_balanced(answers: &[String], backends: [&str; 2], what: &str) {
    assert!(
        answers.iter().all(|a| backends.contains(&a.as_str())),
        "{what}: {answers:?}"
    );
    for pair in answers.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "{what}: rr did not alternate: {answers:?}"
        );
    }
}

/// Captures ARP on the client's interface until dropped; `lines` reads what was seen.
struct Capture(Proc);

impl Capture {
    fn start(f: &Fabric) -> anyhow::Result<Capture> {
        let tcpdump = lb_testkit::which("tcpdump").ok_or_else(|| anyhow::anyhow!("tcpdump"))?;
        let mut child =
            f.t.command("cl", &tcpdump)
                .args(["-l", "-n", "-i", "eth0", "arp"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
        // tcpdump says "listening on …" on stderr once capturing.
        let mut err = BufReader::new(
            child
                .stderr
                .take()
                .ok_or_else(|| anyhow::anyhow!("stderr"))?,
        );
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            anyhow::ensure!(err.read_line(&mut line)? > 0, "tcpdump did not start");
        }
        Ok(Capture(Proc(child)))
    }

    fn lines(mut self) -> Vec<String> {
        signal(self.0 .0.id(), "INT");
        stdout_of(&mut self.0).lines().map(String::from).collect()
    }
}

fn gratuitous_arps<'a>(lines: &'a [String], vip: &str) -> Vec<&'a String> {
    let who = format!("who-has {vip} tell {vip}");
    lines.iter().filter(|l| l.contains(&who)).collect()
}

/// Timers for the VM: it emulates its CPUs (TCG), tens of times slower than
/// the host, and a gRPC round trip there (over mTLS) can exceed the LAN
/// defaults' 50 ms Raft heartbeat, which openraft also uses as the
/// AppendEntries deadline. Everything is scaled up alike; the figures
/// printed are for these timers. The lease must outlast a leader change
/// plus the agents' reconnect, which under a loaded CI host took up to 3.4 s.
const VM_CONTROLLER_TIMERS: [&str; 8] = [
    "--raft-heartbeat-ms",
    "250",
    "--raft-election-ms",
    "800",
    "--lease-ms",
    "5000",
    "--lease-margin-ms",
    "500",
];
const VM_DIRECTOR_HEARTBEAT: [&str; 2] = ["--heartbeat-ms", "250"];

#[tokio::test]
async fn fabric_with_traffic() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::new(&VM_CONTROLLER_TIMERS).await?;
    f.create_services()?;
    let hb = VM_DIRECTOR_HEARTBEAT;
    // d1 first, so it owns every VIP; then d2 joins as warm standby.
    let mut d1 = f.start_director("d1", &hb)?;
    f.wait_held("d1", &VIPS, Duration::from_secs(30)).await?;
    let d2 = f.start_director("d2", &hb)?;
    f.realservers_ready().await?;
    let list = f.lbctl(&["realserver", "list", "dr"])?;
    println!("{list}");
    assert!(
        list.contains("agent rs1") && list.contains("agent rs2"),
        "the agents as the DR service's backends:\n{list}"
    );

    // 1. The configuration in both kernels, exactly; the VIPs only on the owner.
    let want = super::sorted(&[
        "-A -t 10.0.0.100:80 -s rr",
        "-a -t 10.0.0.100:80 -r 10.0.0.21:80 -g -w 1",
        "-a -t 10.0.0.100:80 -r 10.0.0.22:80 -g -w 1",
        "-A -t 10.0.0.101:80 -s rr",
        "-a -t 10.0.0.101:80 -r 10.0.0.21:80 -i -w 1 --tun-type ipip",
        "-a -t 10.0.0.101:80 -r 10.0.0.22:80 -i -w 1 --tun-type ipip",
        "-A -t 10.0.0.102:80 -s rr",
        "-a -t 10.0.0.102:80 -r 192.168.50.23:8080 -m -w 1",
        "-a -t 10.0.0.102:80 -r 192.168.50.24:8080 -m -w 1",
        "-A -f 1 -s rr",
        "-a -f 1 -r 10.0.0.21:0 -g -w 1",
        "-a -f 1 -r 10.0.0.22:0 -g -w 1",
    ]);
    assert_eq!(f.ipvs("d1"), want, "the owner's IPVS table");
    let status = f.lbctl(&["status"])?;
    println!("{status}");
    for vip in VIPS {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{vip} ")))
            .unwrap_or_default();
        assert!(
            line.contains(" d1 ") && line.contains("held"),
            "lbctl status for {vip}: {line:?}\n{status}"
        );
    }
    wait_for(
        Duration::from_secs(20),
        "d2's warm standby table",
        || async { (f.ipvs("d2") == want).then_some(()) },
    )
    .await?;
    assert!(
        f.held("d2").is_empty(),
        "the standby holds {:?}",
        f.held("d2")
    );
    let mark_443 = format!("{MARK_VIP}:443");
    for (vip, backends) in [
        (DR_VIP, ["rs1", "rs2"]),
        (TUN_VIP, ["rs1", "rs2"]),
        (NAT_VIP, ["rs3", "rs4"]),
        (MARK_VIP, ["rs1", "rs2"]),
        (mark_443.as_str(), ["rs1", "rs2"]),
    ] {
        let answers = f.t.http_get("cl", &format!("http://{vip}/"), 4)?;
        println!("{vip}: {answers:?}");
        assert_balanced(&answers, backends, vip);
    }
    // The owner's counters reach lbctl: 4 connections to the DR service, 2
    // per realserver (rr). IPVS folds its per-CPU counters every 2 s.
    let stats = wait_for(
        Duration::from_secs(20),
        "d1's counters in lbctl director stats",
        || async {
            let text = f.lbctl(&["director", "stats", "d1"]).ok()?;
            let dr = service_conns(&text, "dr")?;
            (dr.0 >= 4 && dr.1.len() == 2 && dr.1.iter().all(|(_, c)| *c >= 2)).then_some(text)
        },
    )
    .await?;
    println!("{stats}");
    // The same figures in the fabric view, attributed to the owner.
    let status = f.lbctl(&["status", "--stats"])?;
    println!("{status}");
    let row = status
        .lines()
        .find(|l| l.contains("(dr)"))
        .unwrap_or_default();
    assert!(row.contains("d1@") && row.contains("held"), "{status}");
    let v: serde_json::Value = serde_json::from_str(&f.lbctl(&["status", "-o", "json"])?)?;
    let dr = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"]["name"] == "dr"))
        .expect("service dr in lbctl status");
    assert_eq!(
        (&dr["owner"], &dr["held"]),
        (&"d1".into(), &true.into()),
        "{dr}"
    );
    // proto3 JSON writes 64-bit counters as strings.
    let conns = |c: &serde_json::Value| c["conns"].as_str().and_then(|s| s.parse::<u64>().ok());
    assert!(conns(&dr["counters"]) >= Some(4), "{dr}");
    let backends = dr["realservers"].as_array().expect("realservers");
    assert_eq!(backends.len(), 2, "{dr}");
    for b in backends {
        assert!(conns(&b["counters"]) >= Some(2), "{b}");
        assert_eq!(
            b["agent"].as_str().map(|a| a.starts_with("rs")),
            Some(true),
            "{b}"
        );
    }
    // The mark rule, on the owner and (warm) on the standby.
    for ns in ["d1", "d2"] {
        let rules = f.t.sh(ns, "nft list table inet lbfabric")?;
        assert!(
            rules.contains(&format!(
                "ip daddr {MARK_VIP} tcp dport {{ 80, 443 }} meta mark set 0x00000001"
            )),
            "{ns}'s mark rules:\n{rules}"
        );
    }
    println!("{}", f.t.sh("d1", "nft list table inet lbfabric")?);
    // Connection sync: master on the owner, backup on both; the standby
    // learns the owner's connections.
    let daemons = |ns| f.t.sh(ns, "ipvsadm -L --daemon").unwrap_or_default();
    wait_for(Duration::from_secs(10), "the sync daemons", || async {
        let (a, b) = (daemons("d1"), daemons("d2"));
        (a.contains("master sync daemon")
            && a.contains("backup sync daemon")
            && b.contains("backup sync daemon")
            && !b.contains("master"))
        .then_some(())
    })
    .await?;
    println!("d1: {}d2: {}", daemons("d1"), daemons("d2"));
    f.t.http_get("cl", &format!("http://{DR_VIP}/"), 6)?;
    let synced = wait_for(
        Duration::from_secs(10),
        "connections synced to d2",
        || async {
            let conns = f.t.sh("d2", "ipvsadm -Lnc").unwrap_or_default();
            conns.contains(&format!("{DR_VIP}:80")).then_some(conns)
        },
    )
    .await?;
    println!("d2 learned from d1:\n{synced}");

    // 5. kill -9 of the owner's agent and its restart, under traffic.
    let owners = f.owners()?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), 5, 20)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log_before = std::fs::read_to_string(f.log("d1"))?.len();
    drop(d1);
    let restarted = Instant::now();
    d1 = f.start_director("d1", &hb)?;
    let seen = probe.finish();
    let said = std::fs::read_to_string(f.log("d1"))?;
    let said = &said[log_before..];
    assert!(
        said.contains("continuing the previous process's lease") && !said.contains("VIP removed"),
        "the restarted agent must continue its lease and keep the VIPs:\n{said}"
    );
    println!(
        "agent kill -9 + restart ({:?} ago): {}",
        restarted.elapsed(),
        seen.summary()
    );
    assert!(
        seen.failed().is_empty(),
        "failed during the agent restart: {:?}",
        seen.failed()
    );
    assert_eq!(f.ipvs("d1"), want, "the table after the agent restart");
    assert_eq!(f.owners()?, owners, "a VIP moved across the agent restart");

    // 6. The controller leader killed while traffic flows: nothing moves.
    let w1 = f.vipwatch("d1", DR_VIP, 5)?;
    let w2 = f.vipwatch("d2", DR_VIP, 5)?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), 5, 20)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = f.leader().await?;
    f.controllers[leader].kill();
    let killed = Instant::now();
    let new_leader = f.leader().await?;
    println!(
        "controller {} killed; node {} leads after {:?}",
        leader + 1,
        new_leader + 1,
        killed.elapsed()
    );
    let seen = probe.finish();
    let (h1, h2) = (w1.finish(), w2.finish());
    println!(
        "controller leader killed: {}; d1 held {h1:?}, d2 held {h2:?}",
        seen.summary()
    );
    assert!(
        seen.failed().is_empty(),
        "failed while the leader changed: {:?}",
        seen.failed()
    );
    assert_eq!(
        h1.len(),
        1,
        "d1 let go of the VIP during the leader change: {h1:?}"
    );
    assert!(
        h2.is_empty(),
        "d2 took the VIP during the leader change: {h2:?}"
    );
    assert_eq!(f.owners()?, owners, "a VIP moved when the leader changed");
    f.controllers[leader].restart()?;

    // 4. Partition: d1 cut from the controllers, not from clients. The
    // table and chains exist beforehand (loading nf_tables is slow in the
    // VM), so the cut is one quick rule change.
    f.t.sh(
        "d1",
        "nft add table inet cut
         nft add chain inet cut in '{ type filter hook input priority 0; }'
         nft add chain inet cut out '{ type filter hook output priority 0; }'",
    )?;
    // The watches outlast the slowest handover seen under TCG (~12 s after
    // the cut, when a controller election coincides), so "d2 held it" is
    // judged on the whole handover.
    let w1 = f.vipwatch("d1", DR_VIP, 20)?;
    let w2 = f.vipwatch("d2", DR_VIP, 20)?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), 15, 20)?;
    let capture = Capture::start(&f)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    f.t.sh(
        "d1",
        "nft add rule inet cut in ip saddr 10.0.0.1 drop; nft add rule inet cut out ip daddr 10.0.0.1 drop",
    )?;
    let cut = Instant::now();
    f.wait_held("d2", &[DR_VIP], Duration::from_secs(15))
        .await?;
    println!(
        "partition: the VIP reached d2 {:?} after the cut",
        cut.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.t.sh("d1", "nft delete table inet cut")?;
    let seen = probe.finish();
    let (h1, h2) = (w1.finish(), w2.finish());
    let both = overlaps(&h1, &h2);
    println!(
        "partition: {}; d1 held {h1:?}, d2 held {h2:?}",
        seen.summary()
    );
    assert!(
        both.is_empty(),
        "both directors held {DR_VIP} during {both:?}"
    );
    assert!(!h2.is_empty(), "the VIP never reached d2");
    let last = seen.requests.last().map(|r| r.1.clone());
    assert!(
        matches!(last, Some(Ok(_))),
        "clients not served after healing: {last:?}"
    );
    let arps = capture.lines();
    let garps = gratuitous_arps(&arps, DR_VIP);
    println!(
        "gratuitous ARPs for {DR_VIP} seen by the client:\n{}",
        garps
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        garps.len() >= 3,
        "expected a burst of gratuitous ARPs, saw {arps:#?}"
    );

    // 3. Host loss, measured three times: freeze the owner.
    let mut gaps = host_loss_gaps(&f, ("d2", d2), ("d1", d1), (17, 10)).await?;
    gaps.sort();
    println!("host-loss failover gaps (VM timers: fence 5000 ms, margin 500 ms, heartbeat 250 ms): {gaps:?}, p50 {:?}", gaps[1]);
    Ok(())
}

/// Host loss at the shipped timers and at tuned ones (issue #4's targets:
/// p50 ≤ 1 s at defaults, ≤ 0.3 s tuned). One controller: under software
/// emulation the three-node cluster's quorum round trips are what force the
/// other test's timers up, and a single node confirms its own leadership, so
/// the director timers can be the real ones. The directors, the kernel and
/// the client are the same as in the three-node test; the client asks every
/// 20 ms (a thread per request: at 10 ms the emulated CPU starves the agents
/// and their 600 ms leases lapse).
#[tokio::test]
async fn host_loss_gap_at_default_and_tuned_timers() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let runs: [(&str, &[&str], &[&str]); 2] = [
        (
            "defaults: lease 600 ms, margin 200 ms, heartbeat 200 ms",
            &[],
            &[],
        ),
        (
            "tuned: lease 200 ms, margin 50 ms, heartbeat 50 ms",
            &["--lease-ms", "200", "--lease-margin-ms", "50"],
            &["--heartbeat-ms", "50"],
        ),
    ];
    let mut results = Vec::new();
    for (timers, controller, director) in runs {
        let f = Fabric::with_controllers(1, controller).await?;
        f.create_services()?;
        let d1 = f.start_director("d1", director)?;
        f.wait_held("d1", &VIPS, Duration::from_secs(30)).await?;
        let d2 = f.start_director("d2", director)?;
        f.realservers_ready().await?;
        wait_for(
            Duration::from_secs(20),
            "d2's warm standby table",
            || async { (f.ipvs("d2") == f.ipvs("d1")).then_some(()) },
        )
        .await?;
        let mut gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (6, 20)).await?;
        gaps.sort();
        println!(
            "host-loss failover gaps ({timers}): {gaps:?}, p50 {:?}",
            gaps[1]
        );
        results.push((timers, gaps[1]));
    }
    for (timers, p50) in results {
        println!("p50 client gap, {timers}: {p50:?}");
    }
    Ok(())
}

/// A health check run by the realserver agents takes a stopped backend out
/// of the director's IPVS table and puts it back when it serves again; the
/// times and the client's failed requests are printed (issue #5, AC3).
#[tokio::test]
async fn a_failing_backend_leaves_the_ipvs_table_and_comes_back() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::with_controllers(1, &[]).await?;
    let (interval, fall, rise) = (500u64, 3u64, 2u64);
    f.lbctl(&[
        "service",
        "create",
        "web",
        "--vip",
        "10.0.0.100:80/tcp",
        "--mode",
        "dr",
        "--scheduler",
        "rr",
        "--selector",
        "pool=web",
        "--check",
        "http",
        "--check-interval",
        &format!("{interval}ms"),
        "--check-timeout",
        "300ms",
        "--check-fall",
        &fall.to_string(),
        "--check-rise",
        &rise.to_string(),
    ])?;
    let _d1 = f.start_director("d1", &[])?;
    f.wait_held("d1", &[DR_VIP], Duration::from_secs(30))
        .await?;
    let both = [
        "-a -t 10.0.0.100:80 -r 10.0.0.21:80 -g -w 1",
        "-a -t 10.0.0.100:80 -r 10.0.0.22:80 -g -w 1",
    ];
    let has = |f: &Fabric, line: &str| f.ipvs("d1").iter().any(|l| l == line);
    wait_for(
        Duration::from_secs(30),
        "both backends in d1's table",
        || async { both.iter().all(|l| has(&f, l)).then_some(()) },
    )
    .await?;
    wait_for(Duration::from_secs(30), "the VIP on rs1's lo", || async {
        let lo = f.t.sh("rs1", "ip -o addr show dev lo").ok()?;
        lo.contains(&format!("{DR_VIP}/32")).then_some(())
    })
    .await?;

    let probe = f.probe(&format!("http://{DR_VIP}/"), 12, 50)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (rs1, pid) = f.web[0];
    signal(pid, "KILL");
    let stopped = Instant::now();
    wait_for(Duration::from_secs(10), "rs1 out of d1's table", || async {
        (!has(&f, both[0])).then_some(())
    })
    .await?;
    let out = stopped.elapsed();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    f.web[0].1 = f.t.http_backend(rs1, rs1, "0.0.0.0:80")?;
    let restarted = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "rs1 back in d1's table",
        || async { has(&f, both[0]).then_some(()) },
    )
    .await?;
    let back = restarted.elapsed();
    let seen = probe.finish();

    // The same for realservers without an agent: the director checks them.
    f.lbctl(&[
        "service",
        "create",
        "nat",
        "--vip",
        "10.0.0.102:80/tcp",
        "--mode",
        "nat",
        "--scheduler",
        "rr",
        "--realserver",
        "192.168.50.23:8080",
        "--realserver",
        "192.168.50.24:8080",
        "--check",
        "http",
        "--check-interval",
        &format!("{interval}ms"),
        "--check-timeout",
        "300ms",
        "--check-fall",
        &fall.to_string(),
        "--check-rise",
        &rise.to_string(),
    ])?;
    let rs4 = "-a -t 10.0.0.102:80 -r 192.168.50.24:8080 -m -w 1";
    wait_for(Duration::from_secs(30), "rs4 in d1's table", || async {
        has(&f, rs4).then_some(())
    })
    .await?;
    let nat_probe = f.probe(&format!("http://{NAT_VIP}/"), 10, 50)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (rs4_name, pid) = f.nat_web[1];
    signal(pid, "KILL");
    let stopped = Instant::now();
    wait_for(Duration::from_secs(10), "rs4 out of d1's table", || async {
        (!has(&f, rs4)).then_some(())
    })
    .await?;
    let nat_out = stopped.elapsed();
    let list = f.lbctl(&["realserver", "list", "nat"])?;
    println!("{list}");
    assert!(
        list.lines()
            .any(|l| l.contains("192.168.50.24") && l.contains(" down ")),
        "{list}"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    f.nat_web[1].1 = f.t.http_backend(rs4_name, rs4_name, "0.0.0.0:8080")?;
    let restarted = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "rs4 back in d1's table",
        || async { has(&f, rs4).then_some(()) },
    )
    .await?;
    let nat_back = restarted.elapsed();
    let nat_seen = nat_probe.finish();
    println!(
        "director-side check, no agent (interval {interval} ms, fall {fall}, rise {rise}): rs4 out \
         {nat_out:?}, back {nat_back:?}; clients: {}",
        nat_seen.summary()
    );
    assert!(nat_seen.recovered(), "NAT clients not served at the end");

    // A NAT realserver's agent checks that replies go back through a
    // director: rs3 routes via d1 (fine), then via 192.168.50.12, where no
    // director runs in this test.
    let log = f.dir.path().join("rs3-agent.log");
    // rs3 reaches the controllers through d1; the way back needs a route.
    let route = ["route", "add", "192.168.50.0/24", "via", "10.0.0.11"];
    anyhow::ensure!(
        Command::new("ip").args(route).status()?.success(),
        "ip route add"
    );
    let agent = bin("lb-realserver");
    f.t.spawn(
        "rs3",
        &[
            "sh",
            "-c",
            &format!(
                "exec {} --state-dir {} --controller {} --node-id rs3 --address 192.168.50.23 --resync-ms 300 {} > {} 2>&1",
                agent.display(),
                f.dir.path().join("agents").display(),
                f.addrs,
                agent_tls(&f.addrs, Role::Realserver, "rs3", &["192.168.50.23".parse()?])?.join(" "),
                log.display()
            ),
        ],
    )?;
    let warned = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the default route goes via 192.168.50.12, not a director")
    };
    wait_for(
        Duration::from_secs(20),
        "rs3's agent registered",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("registered").then_some(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!warned(), "warned while routing via d1");
    f.t.sh("rs3", "ip route replace default via 192.168.50.12")?;
    let r = wait_for(
        Duration::from_secs(10),
        "the agent's NAT route warning",
        || async { warned().then_some(()) },
    )
    .await;
    if r.is_err() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("---- rs3 agent log ----\n{text}");
        let dirs = f
            .lbctl(&["director", "list", "-o", "json"])
            .unwrap_or_default();
        eprintln!("{dirs}");
    }
    r?;
    f.t.sh("rs3", "ip route replace default via 192.168.50.11")?;
    let _ = Command::new("ip")
        .args(["route", "del", "192.168.50.0/24"])
        .status();
    println!("rs3's agent warned about a default route that bypasses the directors");
    println!(
        "health check (interval {interval} ms, fall {fall}, rise {rise}): rs1 out of the table \
         {out:?} after its server stopped (interval x fall = {} ms), back {back:?} after it \
         served again (interval x rise = {} ms); clients, one request every 50 ms: {}",
        interval * fall,
        interval * rise,
        seen.summary()
    );
    assert!(seen.recovered(), "clients not served at the end");
    Ok(())
}

/// Long-lived requests from the client, each printing "OK BODY" or "ERR WHY".
fn hold_requests(f: &Fabric, count: usize, seconds: u64) -> anyhow::Result<Vec<Proc>> {
    let mut out = Vec::new();
    for _ in 0..count {
        let mut child =
            f.t.command("cl", &bin("lb-http"))
                .args(["hold", &format!("http://{DR_VIP}/"), &seconds.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
        // Wait for "open": the connection exists before the next one.
        let mut line = String::new();
        if let Some(out) = child.stdout.as_mut() {
            let mut byte = [0u8; 1];
            while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
                line.push(byte[0] as char);
            }
        }
        anyhow::ensure!(line == "open", "hold request did not connect: {line:?}");
        out.push(Proc(child));
    }
    Ok(out)
}

/// A graceful drain, by `lbctl realserver drain` and by SIGTERM to the
/// agent: long-lived connections finish without a reset, new connections
/// go to the other realserver, and on SIGTERM the agent removes the VIP only
/// after its connections are done (issue #5, AC4).
#[tokio::test]
async fn draining_finishes_connections_and_sends_new_ones_elsewhere() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let f = Fabric::with_controllers(1, &[]).await?;
    f.lbctl(&[
        "service",
        "create",
        "web",
        "--vip",
        "10.0.0.100:80/tcp",
        "--mode",
        "dr",
        "--scheduler",
        "rr",
        "--selector",
        "pool=web",
    ])?;
    let _d1 = f.start_director("d1", &[])?;
    f.wait_held("d1", &[DR_VIP], Duration::from_secs(30))
        .await?;
    let line = |w: u32| format!("-a -t 10.0.0.100:80 -r 10.0.0.21:80 -g -w {w}");
    let has = |f: &Fabric, l: &str| f.ipvs("d1").iter().any(|x| x == l);
    wait_for(Duration::from_secs(30), "rs1 in d1's table", || async {
        has(&f, &line(1)).then_some(())
    })
    .await?;
    wait_for(
        Duration::from_secs(30),
        "the VIP on both realservers",
        || async {
            let a = f.t.sh("rs1", "ip -o addr show dev lo").ok()?;
            let b = f.t.sh("rs2", "ip -o addr show dev lo").ok()?;
            (a.contains("10.0.0.100/32") && b.contains("10.0.0.100/32")).then_some(())
        },
    )
    .await?;

    // 1. lbctl realserver drain: weight 0, held connections finish.
    let held = hold_requests(&f, 2, 4)?;
    let said = f.lbctl(&["realserver", "drain", "rs1"])?;
    println!("{said}");
    wait_for(Duration::from_secs(10), "rs1 at weight 0", || async {
        has(&f, &line(0)).then_some(())
    })
    .await?;
    let fresh = f.t.http_get("cl", &format!("http://{DR_VIP}/"), 4)?;
    println!("new requests while rs1 drains: {fresh:?}");
    assert!(fresh.iter().all(|b| b == "rs2"), "{fresh:?}");
    let results: Vec<String> = held.into_iter().map(|mut p| stdout_of(&mut p)).collect();
    println!("long-lived requests across the drain: {results:?}");
    assert!(results.iter().any(|r| r.contains("OK rs1")), "{results:?}");
    assert!(
        results.iter().all(|r| r.contains("OK ")),
        "a connection was reset: {results:?}"
    );
    // Its connections done, the drained host takes the VIP off.
    wait_for(
        Duration::from_secs(10),
        "the VIP off the drained rs1",
        || async {
            let lo = f.t.sh("rs1", "ip -o addr show dev lo").ok()?;
            (!lo.contains("10.0.0.100/32")).then_some(())
        },
    )
    .await?;
    f.lbctl(&["realserver", "enable", "rs1"])?;
    wait_for(
        Duration::from_secs(10),
        "the VIP back on the enabled rs1",
        || async {
            let lo = f.t.sh("rs1", "ip -o addr show dev lo").ok()?;
            lo.contains("10.0.0.100/32").then_some(())
        },
    )
    .await?;
    wait_for(Duration::from_secs(10), "rs1 back at weight 1", || async {
        has(&f, &line(1)).then_some(())
    })
    .await?;

    // 2. SIGTERM to rs1's agent: it drains, waits for its connections,
    // then removes the VIP.
    let held = hold_requests(&f, 2, 3)?;
    let (_, agent) = f.agents[0];
    signal(agent, "TERM");
    let termed = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "rs1 at weight 0 after SIGTERM",
        || async { has(&f, &line(0)).then_some(()) },
    )
    .await?;
    let weight0 = termed.elapsed();
    let fresh = f.t.http_get("cl", &format!("http://{DR_VIP}/"), 4)?;
    assert!(fresh.iter().all(|b| b == "rs2"), "{fresh:?}");
    assert!(
        f.t.sh("rs1", "ip -o addr show dev lo")?
            .contains("10.0.0.100/32"),
        "the VIP left rs1 before its connections finished"
    );
    let results: Vec<String> = held.into_iter().map(|mut p| stdout_of(&mut p)).collect();
    assert!(
        results.iter().all(|r| r.contains("OK ")),
        "a connection was reset: {results:?}"
    );
    wait_for(Duration::from_secs(10), "the VIP gone from rs1", || async {
        let lo = f.t.sh("rs1", "ip -o addr show dev lo").ok()?;
        (!lo.contains("10.0.0.100/32")).then_some(())
    })
    .await?;
    println!(
        "SIGTERM drain: weight 0 after {weight0:?}, new requests {fresh:?}, long-lived {results:?}, \
         VIP removed {:?} after SIGTERM (connections held 3 s)",
        termed.elapsed()
    );
    Ok(())
}
