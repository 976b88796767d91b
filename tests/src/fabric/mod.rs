//! The whole fabric, for tests and benchmarks in the VM: three controllers, two directors in
//! their own network namespaces (each with its own IPVS table), realservers
//! and a client on one LAN, and what an operator cares about:
//! - services created with lbctl reach the owner's kernel (and the standby's,
//!   warm) exactly, and requests are balanced in NAT, DR and TUN;
//! - kill -9 of the owner's agent and its restart (also by systemd, `unit.rs`) fail no request;
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

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::Topology;
use crate::proc::{signal, Proc};
use crate::{agent_tls, bin, lbctl_ok, start_cluster_at, wait_for, words, ControllerProc};
use lb_proto::pki::Role;

mod floating;
pub mod observe;
pub mod unit;

use observe::{Probe, Watch};

pub const DR_VIP: &str = "10.0.0.100";
pub const TUN_VIP: &str = "10.0.0.101";
pub const NAT_VIP: &str = "10.0.0.102";
pub const MARK_VIP: &str = "10.0.0.103";
pub const VIPS: [&str; 4] = [DR_VIP, TUN_VIP, NAT_VIP, MARK_VIP];

/// Timers for the VM: it emulates its CPUs (TCG), tens of times slower than
/// the host (a shell loop: 27 times), and a gRPC round trip there (over
/// mTLS) can exceed the LAN defaults' 50 ms Raft heartbeat, which openraft
/// also uses as the AppendEntries deadline: at 250 ms, quorum checks timed
/// out in bursts and spurious elections followed. So the Raft timers are
/// ten times the default (heartbeat 500 ms, election 1.5-3 s) and the lease
/// outlasts several such round trips: 6 s, margin 2 s (the defaults are
/// 200 ms and 50 ms). The leases do not wait for a new leader (every
/// controller grants them), so the lease only has to outlast a few lost
/// heartbeats. The directors report every 500 ms. The figures printed are
/// for these timers; `tests/it/floating.rs` runs the same faults at the
/// defaults on the host.
pub const VM_CONTROLLER_TIMERS: [&str; 8] = [
    "--raft-heartbeat-ms",
    "500",
    "--raft-election-ms",
    "1500",
    "--lease-ms",
    "6000",
    "--lease-margin-ms",
    "2000",
];
/// The VM's lease (`VM_CONTROLLER_TIMERS`) less a director heartbeat: a
/// host that did not run for this long may have seen its leases end, by
/// design (its clock ran on), whatever the controllers did.
pub const VM_FROZEN_MS: u128 = 6000 - 500;
/// The directors' report interval in the VM, and the hand-over limit on
/// SIGTERM scaled like the controllers' timers.
pub const VM_DIRECTOR_HEARTBEAT: [&str; 4] = ["--heartbeat-ms", "500", "--handover-ms", "30000"];

/// The port the directors and realserver agents serve metrics on, on
/// their LAN address (which the test process reaches).
pub const AGENT_METRICS_PORT: u16 = 9471;

/// Where director `node` (d1, d2) serves its metrics.
pub fn director_metrics(node: &str) -> anyhow::Result<String> {
    let ip = match node {
        "d1" => "10.0.0.11",
        "d2" => "10.0.0.12",
        other => anyhow::bail!("no director {other} in the fabric"),
    };
    Ok(format!("{ip}:{AGENT_METRICS_PORT}"))
}

pub struct Fabric {
    pub t: Topology,
    pub dir: tempfile::TempDir,
    pub controllers: Vec<ControllerProc>,
    /// `--controller` for the agents and lbctl: every node.
    pub addrs: String,
    /// A wait timed out: show the logs when dropped, as after a panic.
    pub failed: std::cell::Cell<bool>,
    /// The port-80 HTTP backends of rs1 and rs2, with their PIDs.
    pub web: Vec<(&'static str, u32)>,
    /// The NAT backends of rs3 and rs4 (no realserver agent), with their PIDs.
    pub nat_web: Vec<(&'static str, u32)>,
    /// The realserver agents of rs1 and rs2, with their PIDs.
    pub agents: Vec<(&'static str, u32)>,
    /// The directors program IPVS (false: [`Fabric::floating`]).
    pub ipvs: bool,
    /// How long a probe's request may go unanswered before it counts as
    /// failed (see [`Fabric::probe`]).
    pub probe_timeout: Duration,
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // LB_SHOW_LOGS=1 shows them after a passing test too (on stdout,
        // which the VM runner passes on).
        let asked = std::env::var_os("LB_SHOW_LOGS").is_some_and(|v| v == "1");
        if std::thread::panicking() || self.failed.get() || asked {
            for node in ["d1", "d2"] {
                let log = std::fs::read_to_string(self.log(node)).unwrap_or_default();
                eprintln!("---- {node} log ----\n{log}");
                if asked {
                    println!("---- {node} log ----\n{log}");
                }
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
    pub async fn new(controller_flags: &[&str]) -> anyhow::Result<Fabric> {
        Fabric::with_controllers(3, controller_flags).await
    }

    pub async fn with_controllers(count: u64, controller_flags: &[&str]) -> anyhow::Result<Fabric> {
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
        for (rs, ip) in [("rs3", "192.168.50.23/24"), ("rs4", "192.168.50.24/24")] {
            t.add_ns(rs)?;
            t.plug(rs, "int", "eth0", ip)?;
            // NAT replies must pass the director that rewrote the request.
            t.ip(Some(rs), "route add default via 192.168.50.11");
        }
        let pids = t.http_backends(&[
            ("rs3", "rs3", "0.0.0.0:8080"),
            ("rs4", "rs4", "0.0.0.0:8080"),
            ("rs1", "rs1", "0.0.0.0:80"),
            ("rs2", "rs2", "0.0.0.0:80"),
            ("rs1", "rs1", "0.0.0.0:443"),
            ("rs2", "rs2", "0.0.0.0:443"),
        ])?;
        let nat_web = vec![("rs3", pids[0]), ("rs4", pids[1])];
        let web = vec![("rs1", pids[2]), ("rs2", pids[3])];
        let dir = tempfile::tempdir()?;
        let controllers = start_cluster_at("10.0.0.1", count, dir.path(), controller_flags).await?;
        let addrs = crate::addresses(&controllers);
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
                "--metrics-listen",
            ];
            let metrics = format!("{rip}:{AGENT_METRICS_PORT}");
            args.push(&metrics);
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
            ipvs: true,
            probe_timeout: Duration::from_secs(2),
        })
    }

    /// A fabric of `controllers` ([`Fabric::with_controllers`]) with the
    /// services created, d1 owning every VIP (it starts first), d2 its warm
    /// standby with the same IPVS table, and the realserver agents' hosts
    /// prepared. Returns the two directors' processes.
    pub async fn running_with(
        controllers: u64,
        controller_flags: &[&str],
        director_flags: &[&str],
    ) -> anyhow::Result<(Fabric, Proc, Proc)> {
        let f = Fabric::with_controllers(controllers, controller_flags).await?;
        f.create_services()?;
        let d1 = f.start_director("d1", director_flags)?;
        f.wait_held("d1", &VIPS, Duration::from_secs(30)).await?;
        let d2 = f.start_director("d2", director_flags)?;
        f.realservers_ready().await?;
        let standby = wait_for(
            Duration::from_secs(20),
            "d2's warm standby table",
            || async { (f.ipvs("d2") == f.ipvs("d1")).then_some(()) },
        )
        .await;
        f.failed.set(standby.is_err());
        standby?;
        Ok((f, d1, d2))
    }

    /// [`Fabric::running_with`] three controllers.
    pub async fn running(
        controller_flags: &[&str],
        director_flags: &[&str],
    ) -> anyhow::Result<(Fabric, Proc, Proc)> {
        Fabric::running_with(3, controller_flags, director_flags).await
    }

    pub fn lbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        lbctl_ok(&self.addrs, args)
    }

    pub fn create_services(&self) -> anyhow::Result<()> {
        let rr = ["--scheduler", "rr"];
        // The realserver agents on rs1 and rs2 carry this label.
        let lan_rs = ["--selector", "pool=web"];
        let dr = [
            &words("service create dr --vip 10.0.0.100:80/tcp --mode dr")[..],
            &rr,
            &lan_rs,
        ]
        .concat();
        let tun = [
            &words("service create tun --vip 10.0.0.101:80/tcp --mode tun")[..],
            &rr,
            &lan_rs,
        ]
        .concat();
        let nat = [
            &words("service create nat --vip 10.0.0.102:80/tcp --mode nat")[..],
            &rr,
            &words("--realserver 192.168.50.23:8080 --realserver 192.168.50.24:8080"),
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
        // Four lbctl processes at once: each one's start-up and TLS
        // handshake costs most of a second under emulation.
        std::thread::scope(|s| {
            let addrs = &self.addrs;
            let calls = [dr, tun, nat, fwm].map(|args| s.spawn(move || lbctl_ok(addrs, &args)));
            calls.into_iter().try_for_each(|call| {
                call.join()
                    .map_err(|_| anyhow::anyhow!("lbctl thread panicked"))?
                    .map(drop)
            })
        })
    }

    pub fn start_director(&self, node: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        let metrics = director_metrics(node)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(node))?;
        let child = self
            .t
            .command(node, &bin("lb-director"))?
            .args(["--controller", &self.addrs, "--node-id", node])
            .args(agent_tls(&self.addrs, Role::Director, node, &[])?)
            .args(["--interface", "eth0"])
            .args(match self.ipvs {
                true => ["--sync-interface", "eth0", "--resync-ms", "1000"].as_slice(),
                false => ["--no-ipvs"].as_slice(),
            })
            // Its own lease file: the VM runs several fabrics, one after another.
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--metrics-listen", &metrics])
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
    pub async fn realservers_ready(&self) -> anyhow::Result<()> {
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

    pub fn log(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.log"))
    }

    /// The lines of `node`'s log that tell how its lease went: which
    /// controller's answer changed what it holds, the addresses it added
    /// and removed, its own stalls. For failure messages (the whole log is
    /// long and a CI excerpt cuts its middle).
    pub fn lease_story(&self, node: &str) -> String {
        let log = std::fs::read_to_string(self.log(node)).unwrap_or_default();
        log.lines()
            .filter(|l| {
                ["lease changed", "VIP added", "VIP removed", "stalled"]
                    .iter()
                    .any(|p| l.contains(p))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ipvsadm -Sn` in namespace `ns`, sorted.
    pub fn ipvs(&self, ns: &str) -> Vec<String> {
        let out = self.t.sh(ns, "ipvsadm -Sn").unwrap_or_default();
        let mut lines: Vec<String> = out.lines().map(String::from).collect();
        lines.sort();
        lines
    }

    /// Which of `VIPS` namespace `ns` has on eth0.
    pub fn held(&self, ns: &str) -> Vec<&'static str> {
        let out = self
            .t
            .sh(ns, "ip -o -4 addr show dev eth0")
            .unwrap_or_default();
        VIPS.into_iter()
            .filter(|v| out.contains(&format!("inet {v}/32")))
            .collect()
    }

    pub async fn wait_held(&self, ns: &str, vips: &[&str], within: Duration) -> anyhow::Result<()> {
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
    pub fn owners(&self) -> anyhow::Result<Vec<(String, String, String)>> {
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

    /// Requests from the client to `url` every `every_ms` for `seconds`. A
    /// request fails when no answer has come within `probe_timeout`: 2 s in
    /// the VM, where an answer through a busy VM (an election under way)
    /// took over 500 ms, while a VIP nobody holds leaves the connection
    /// unanswered.
    pub fn probe(&self, url: &str, seconds: u64, every_ms: u64) -> anyhow::Result<Probe> {
        let child = self
            .t
            .command("cl", &bin("lb-http"))?
            .args([
                "probe",
                url,
                &seconds.to_string(),
                &every_ms.to_string(),
                &self.probe_timeout.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Probe::start(Proc(child)))
    }

    /// Asks for `vip`'s MAC from the client every 20 ms for `seconds`.
    pub fn arp_ask(&self, vip: &str, seconds: u64) -> anyhow::Result<observe::ArpAsk> {
        let script = format!(
            "end=$(($(date +%s) + {seconds})); while [ $(date +%s) -lt $end ]; do \
             busybox arping -f -c 1 -w 1 -I eth0 {vip} >/dev/null 2>&1; sleep 0.02; done"
        );
        let child = self
            .t
            .command("cl", std::path::Path::new("sh"))?
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(observe::ArpAsk {
            _asking: Proc(child),
        })
    }

    /// The MAC address of `ns`'s eth0.
    pub fn mac(&self, ns: &str) -> anyhow::Result<String> {
        Ok(self
            .t
            .sh(ns, "cat /sys/class/net/eth0/address")?
            .trim()
            .to_string())
    }

    /// Samples every 10 ms whether `ns` holds `vip`.
    pub fn vipwatch(&self, ns: &str, vip: &str, seconds: u64) -> anyhow::Result<Watch> {
        let child = self
            .t
            .command(ns, &bin("lb-http"))?
            .args(["vipwatch", vip, &seconds.to_string(), "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Watch(Proc(child)))
    }

    /// Every controller answers, follows one leader and has applied the
    /// leader's configuration revision (a restarted one has caught up).
    pub async fn all_voters_answer(&self) -> anyhow::Result<()> {
        wait_for(
            Duration::from_secs(60),
            "every controller caught up",
            || async {
                let mut seen = Vec::new();
                for c in &self.controllers {
                    let s = c.status().await?;
                    s.has_leader.then_some(())?;
                    seen.push((s.leader_id, s.revision));
                }
                seen.windows(2).all(|w| w[0] == w[1]).then_some(())
            },
        )
        .await
    }

    /// True when a fault test's first `attempt` is void: d1's watch shows
    /// its gaps began while the VM itself was frozen for a lease
    /// ([`observe::Watched::lapsed_while_frozen`]), which ends every lease
    /// by design. Then waits for the cluster to be whole for the next try.
    pub async fn void_if_frozen(
        &self,
        attempt: u32,
        d1: &observe::Watched,
    ) -> anyhow::Result<bool> {
        if attempt != 1 || !d1.lapsed_while_frozen(VM_FROZEN_MS) {
            return Ok(false);
        }
        println!("void: the VM froze for a lease; again once the cluster is whole");
        self.all_voters_answer().await?;
        Ok(true)
    }

    /// Index of the node that leads now.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        wait_for(Duration::from_secs(30), "a leader", || async {
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

/// Freezes the owner's host (link down, SIGSTOP) `rounds` times,
/// alternating between the two directors; each time the client's gap is
/// measured with a request every `every_ms` for `probe_secs`.
pub async fn host_loss_gaps(
    f: &Fabric,
    mut owner: (&str, Proc),
    mut standby: (&str, Proc),
    (rounds, probe_secs, every_ms): (usize, u64, u64),
) -> anyhow::Result<Vec<Duration>> {
    let mut gaps = Vec::new();
    for round in 1..=rounds {
        // A failover needs a standby: the previous round's frozen owner
        // must be back and reporting (its old stream's TCP retransmissions
        // may take a while after the link comes back).
        f.director_live(standby.0).await?;
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
        anyhow::ensure!(
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
